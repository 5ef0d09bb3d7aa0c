"""Starting and stopping node processes on this machine (used by launch and the end-to-end tests)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from node.server.datadir import NodeConfig

OUT_FILE = "node.out"


def http_url(node_url: str) -> str:
    return "http://" + node_url.split("://", 1)[-1].rstrip("/")


def get_json(node_url: str, path: str, timeout: float = 2.0) -> Any:
    with urllib.request.urlopen(http_url(node_url) + path, timeout=timeout) as resp:
        return json.loads(resp.read())


def try_status(node_url: str, timeout: float = 2.0) -> dict[str, Any] | None:
    try:
        return get_json(node_url, "/status", timeout)
    except (OSError, urllib.error.URLError, ValueError):
        return None


class NodeProcess:
    """A `fedledger node run DIR` child process."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.url = NodeConfig.load(data_dir).url
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, detach: bool = False, extra_args: list[str] | None = None) -> None:
        out = open(self.dir / OUT_FILE, "ab")  # noqa: SIM115 (owned by the child from here on)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "node", "run", str(self.dir), *(extra_args or [])],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=detach,  # --keep-running: the node outlives the launcher's terminal
        )
        out.close()

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def status(self) -> dict[str, Any] | None:
        return try_status(self.url)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.dir / OUT_FILE).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (clean shutdown), SIGKILL if it does not exit in time."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
