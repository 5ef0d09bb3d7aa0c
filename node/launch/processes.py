"""Starting and stopping node processes on this machine (used by launch and the end-to-end tests)."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from node.net.http import probe_status
from node.proc import ProcessTree
from node.server.datadir import LOG_FILE, NodeConfig

OUT_FILE = "node.out"  # the child's stderr: warnings, errors, a crash's traceback (info is in node.log)
OUT_MAX_BYTES = 1024 * 1024  # past this, node.out becomes node.out.1 when the node is next started


STATUS_TIMEOUT_S = 2.0


class NodeProcess:
    """A `fedledger node run DIR` child process."""

    def __init__(self, data_dir: Path, prefix: list[str] | None = None) -> None:
        self.dir = data_dir
        # Run the node under a wrapper, e.g. ["ip", "netns", "exec", NS] for a host of its own.
        self.prefix = list(prefix or [])
        self.url = NodeConfig.load(data_dir).url
        self.proc: subprocess.Popen[bytes] | None = None
        self._tree: ProcessTree | None = None

    def start(self, detach: bool = False, extra_args: list[str] | None = None,
              argv: list[str] | None = None) -> None:
        """`argv`: a command line to run instead of `python -m node node run DIR --quiet` (a
        benchmark's or the adversary harness's test-only build of the node)."""
        path = self.dir / OUT_FILE
        with contextlib.suppress(OSError):
            if path.stat().st_size > OUT_MAX_BYTES:
                path.replace(path.with_name(OUT_FILE + ".1"))
        out = open(path, "ab")  # noqa: SIM115 (owned by the child from here on)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        argv = argv or [sys.executable, "-m", "node", "node", "run", str(self.dir), "--quiet",
                        *(extra_args or [])]
        self.proc = subprocess.Popen(
            [*self.prefix, *argv],
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
        """The end of node.log (what the node was doing) and of node.out (warnings, a traceback)."""
        parts = []
        for name in (LOG_FILE, OUT_FILE):
            try:
                text = (self.dir / name).read_text(errors="replace")
            except OSError:
                continue
            if text.strip():
                parts.append(f"--- {name}\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(parts)

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
