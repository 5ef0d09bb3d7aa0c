"""Starting and stopping node processes on this machine (used by launch and the end-to-end tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node.net.http import probe_status
from node.proc import ProcessTree
from node.server.datadir import NodeConfig

OUT_FILE = "node.out"


STATUS_TIMEOUT_S = 2.0


class NodeProcess:
    """A `fedledger node run DIR` child process."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir
        self.url = NodeConfig.load(data_dir).url
        self.proc: subprocess.Popen[bytes] | None = None
        self._tree: ProcessTree | None = None

    def start(self, detach: bool = False, extra_args: list[str] | None = None) -> None:
        out = open(self.dir / OUT_FILE, "ab")  # noqa: SIM115 (owned by the child from here on)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "node", "node", "run", str(self.dir), *(extra_args or [])],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=detach,  # --keep-running: the node outlives the launcher's terminal
        )
        out.close()
        self._tree = ProcessTree(self.proc, own_group=detach)

    @property
    def alive(self) -> bool:
        return self._tree is not None and self._tree.alive

    def status(self) -> dict[str, Any] | None:
        return probe_status(self.url, timeout=STATUS_TIMEOUT_S)

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = (self.dir / OUT_FILE).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (a clean shutdown: the node stops its own Flower processes), then SIGKILL the node
        and whatever of its process tree is left if that takes longer than `timeout`."""
        if self._tree is None:
            return None
        return self._tree.stop(timeout)

    def kill(self) -> None:
        """SIGKILL the node and every process it started (as a crash would leave them, they would
        otherwise outlive it)."""
        if self._tree is not None:
            self._tree.kill()


def wait_until(predicate: Any, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
