"""Supervising one child process: start it with a bounded log, wait until it is ready, stop its
whole process tree.

Every child gets its own session (process group) and its stdout and stderr pumped into a rotating
``NAME.log`` in its workdir (node/flower/logs.py). ``stop()`` sends SIGTERM to the process, waits for
it and every descendant it has been seen with (Flower's SuperExec and the ServerApp run in their own
sessions, so the process group is not enough; node/proc.py tracks them with psutil), then SIGKILLs
whatever is left. Stop SuperNodes before the SuperLink (``stop_all`` does).
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from node.errors import LocalError
from node.flower.logs import LOG_BACKUPS, LOG_MAX_BYTES, LogPump, RotatingLog, log_tail
from node.net.ports import port_free
from node.proc import ProcessTree, child_environment

READY_POLL_S = 0.1


class FlowerRuntimeError(LocalError):
    """A command is missing, or a process failed to start or exited early (message has its log tail)."""


def start_logged(
    argv: list[str], log_path: Path, cwd: Path, env: dict[str, str],
    max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS,
) -> tuple[subprocess.Popen[bytes], LogPump]:
    """Start `argv` in its own session with its output pumped into the rotating log `log_path`."""
    log = RotatingLog(log_path, max_bytes, backups)
    log.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
    pump = LogPump(log)
    try:
        proc = subprocess.Popen(
            argv,
            stdout=pump.fd,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=cwd,
            env=child_environment(env),  # our children exit when the node dies (watch_parent)
            start_new_session=True,  # own process group: stop() can reap Flower's grandchildren
        )
    except OSError:
        pump.abandon()
        raise
    return proc, pump.started()


class ManagedProcess:
    """A child in its own session with a rotating log; see the module docstring.

    Subclasses give the command line, the environment, the ports it will listen on and when it
    counts as ready."""

    name = "process"

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir)
        self.log_path = self.workdir / f"{self.name}.log"
        self.log_max_bytes = LOG_MAX_BYTES
        self.log_backups = LOG_BACKUPS
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self.extra_env: dict[str, str] = {}  # added to the child's environment (and its children's)
        self._tree: ProcessTree | None = None
        self._pump: LogPump | None = None
        self._log_offset = 0

    # subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.extra_env}

    def is_ready(self) -> bool:
        return True

    def listen_ports(self) -> list[tuple[str, int]]:
        """Ports the process will listen on: they must be free before it starts (otherwise the
        readiness check would see someone else's listener; a second SuperLink on a taken port
        does not even exit)."""
        return []

    def prepare(self) -> None:
        """Make what the process needs on disk before it starts."""
        self.workdir.mkdir(parents=True, exist_ok=True)

    def start(self, ready_timeout: float = 60.0) -> ManagedProcess:
        if self.alive:
            return self
        for host, port in self.listen_ports():
            if not port_free(host, port):
                raise FlowerRuntimeError(f"{self.name}: port {host}:{port} is already in use")
        self.prepare()
        try:
            self._log_offset = self.log_path.stat().st_size
        except OSError:
            self._log_offset = 0
        self.proc, self._pump = start_logged(self.command(), self.log_path, self.workdir, self.environment(),
                                             self.log_max_bytes, self.log_backups)
        self._tree = ProcessTree(self.proc, own_group=True)
        self.started_at = time.monotonic()
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                self._pump.join()  # its last words
                raise FlowerRuntimeError(
                    f"{self.name} exited early with status {self.proc.returncode}; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            if self.is_ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise FlowerRuntimeError(
                    f"{self.name} not ready after {ready_timeout:.0f} s; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            self._tree.refresh()
            time.sleep(READY_POLL_S)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def remaining_pids(self) -> list[int]:
        """This process and every descendant seen so far that still runs."""
        return self._tree.remaining_pids() if self._tree is not None else []

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process, wait up to `timeout` for it and all its descendants (Flower's SuperExec
        and app processes, some in their own sessions) to exit, then SIGKILL what is left."""
        if self.proc is None or self._tree is None:
            return None
        status = self._tree.stop(timeout)
        if self._pump is not None:
            self._pump.join()
        return status

    def kill(self) -> None:
        """SIGKILL the process and every descendant seen (what is left of one that died)."""
        if self._tree is not None:
            self._tree.kill()
        if self._pump is not None:
            self._pump.join()

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)

    def log_since_start(self, limit: int = 1 << 20) -> str:
        """What the process logged since its latest start (at most `limit` bytes; after a rotation,
        the current log file)."""
        try:
            with open(self.log_path, "rb") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(self._log_offset if self._log_offset <= size else 0)
                return fh.read(limit).decode(errors="replace")
        except OSError:
            return ""

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def stop_all(
    supernodes: Iterable[ManagedProcess] = (),
    superlink: ManagedProcess | None = None,
    others: Iterable[ManagedProcess] = (),
    timeout: float = 10.0,
) -> None:
    """SuperNodes first (in parallel), then the SuperLink, then the rest (trainers)."""

    def stop_parallel(procs: Iterable[ManagedProcess]) -> None:
        threads = [threading.Thread(target=p.stop, args=(timeout,)) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    stop_parallel(supernodes)
    if superlink is not None:
        superlink.stop(timeout)
    stop_parallel(others)
