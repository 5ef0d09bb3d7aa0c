"""Process trees and process memory, through psutil (so on every OS psutil supports).

* ``ProcessTree``  -- a child we started (a ``subprocess.Popen``) and every descendant seen so far;
  ``stop()`` asks the child to exit, waits for the whole tree, then kills whatever is left.
* ``rss_bytes``, ``peak_rss_bytes``, ``cpu_seconds`` -- what the benchmarks and the trainer report.
* ``watch_parent`` -- in a child a node started (trainer, SuperLink, SuperNode): exit when that
  node is gone, so a node killed with SIGKILL leaves none of its processes behind.

Used by the Flower process supervision (node/flower/), the local launcher's node processes
(node/launch/processes.py), the trainer and the benchmarks; it imports nothing of ours.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable
from pathlib import Path

import psutil

log = logging.getLogger("fedledger.proc")

POLL_S = 0.1
KILL_WAIT_S = 5.0  # after SIGKILL: the kernel reaps at once unless a process is stuck in I/O
PARENT_ENV = "FEDLEDGER_PARENT_PID"  # set by the node for the children it starts (watch_parent)
PARENT_POLL_S = 1.0
PARENT_GONE_GRACE_S = 10.0  # after the SIGTERM to itself, before it exits hard


def alive(p: psutil.Process) -> bool:
    """Alive and not a zombie. is_running() checks the creation time too, so a reused PID is
    not mistaken for the process we saw."""
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.Error:
        return []


class ProcessTree:
    """`popen` and every descendant it has been seen with.

    Descendants are remembered because the tree changes under us: Flower's SuperExec and app
    processes run in their own sessions (the process group does not reach them), and a process
    whose parent exits is re-parented (to init or a subreaper), so a children() walk at stop time
    would miss it. Every refresh() adds what runs now; stop() refreshes while it waits.
    """

    def __init__(self, popen: subprocess.Popen[bytes], own_group: bool = False) -> None:
        self.popen = popen
        self.own_group = own_group  # started with start_new_session: its PID is its process group
        self._root: psutil.Process | None
        try:
            self._root = psutil.Process(popen.pid)
        except psutil.NoSuchProcess:  # exited (and was reaped) before we looked
            self._root = None
        self._seen: set[psutil.Process] = set()  # psutil.Process hashes by (pid, creation time)

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None  # poll() also reaps our own child

    def refresh(self) -> None:
        parents = [p for p in (self._root, *self._seen) if p is not None and alive(p)]
        for parent in parents:
            self._seen.update(_children(parent))

    def descendants(self) -> list[psutil.Process]:
        """Descendants seen so far that still run (refreshed first)."""
        self.refresh()
        return sorted((p for p in self._seen if alive(p)), key=lambda p: p.pid)

    def remaining_pids(self) -> list[int]:
        """The child (while it runs) and every descendant seen so far that still runs."""
        own = [self.popen.pid] if self.alive else []
        return sorted({*own, *(p.pid for p in self.descendants())})

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the child (it shuts its own children down), wait up to `timeout` for it and
        every descendant, then kill() what is left. Descendants still running once the child has
        exited are orphans: they get their own SIGTERM. Returns the child's exit status."""
        self.refresh()
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.terminate()
        orphans_told = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rest = self.descendants()
            if not self.alive:
                if not rest:
                    return self.popen.returncode
                if not orphans_told:
                    orphans_told = True
                    for p in rest:
                        with contextlib.suppress(psutil.Error):
                            p.terminate()
            time.sleep(POLL_S)
        self.kill()
        return self.popen.returncode

    def kill(self) -> list[int]:
        """SIGKILL the child and every descendant still running; wait for them. Returns the PIDs
        that survived (logged as a warning: a process we could not stop is never left silently)."""
        self.refresh()
        victims = [p for p in self._seen if alive(p)]
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.kill()
        for p in victims:
            with contextlib.suppress(psutil.Error):
                p.kill()
        if self.own_group and os.name == "posix":
            # a grandchild forked after the last refresh whose parent already died is in no tree we
            # know, but it is still in the child's process group
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.popen.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(KILL_WAIT_S)
        # Not named `alive`: that would shadow the function above, in this whole method's scope.
        _, survivors = psutil.wait_procs(victims, timeout=KILL_WAIT_S)
        left = sorted(p.pid for p in survivors if alive(p))
        if self.popen.poll() is None:
            left = sorted({self.popen.pid, *left})
        if left:
            log.warning("processes still running after SIGKILL (tree of pid %d): %s", self.popen.pid, left)
        return left


def child_environment(env: dict[str, str]) -> dict[str, str]:
    """`env` for a child of this process that watches it (watch_parent)."""
    return {**env, PARENT_ENV: str(os.getpid())}


def watch_parent(poll_s: float = PARENT_POLL_S, parent: int | None = None) -> bool:
    """In a child started with child_environment() (or whose `parent` pid is given): a daemon
    thread that notices when the parent is gone (this process was re-parented: the node died
    without stopping it, e.g. under SIGKILL), then SIGTERMs this process, so it shuts down as if the
    node had stopped it (Flower's own processes take their children with them), and exits hard if
    that has not happened within PARENT_GONE_GRACE_S. Returns whether it watches. The variable is
    removed from this process's environment so that its own children do not inherit it."""
    raw = os.environ.pop(PARENT_ENV, "")
    if parent is None:
        if not raw.isdigit():
            return False
        parent = int(raw)
    if os.getppid() != parent:  # gone before we looked
        os.kill(os.getpid(), signal.SIGTERM)
        return True

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        log.warning("parent process %d is gone; stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(PARENT_GONE_GRACE_S)
        os._exit(1)

    threading.Thread(target=watch, name="watch-parent", daemon=True).start()
    return True


def stop_processes(procs: Iterable[psutil.Process], timeout: float = 3.0) -> list[int]:
    """SIGTERM `procs`, SIGKILL those alive after `timeout`; the PIDs still running after that."""
    procs = [p for p in procs if alive(p)]
    for p in procs:
        with contextlib.suppress(psutil.Error):
            p.terminate()
    _, lingering = psutil.wait_procs(procs, timeout=timeout)
    for p in lingering:
        with contextlib.suppress(psutil.Error):
            p.kill()
    _, survivors = psutil.wait_procs(lingering, timeout=KILL_WAIT_S)
    return sorted(p.pid for p in survivors if alive(p))


# --- memory and CPU --------------------------------------------------------------------------------


def _process(pid: int | None) -> psutil.Process:
    return psutil.Process(pid if pid is not None else os.getpid())


def rss_bytes(pid: int | None = None) -> int | None:
    """Resident set size now of `pid` (default: this process), or None when it is gone."""
    try:
        return int(_process(pid).memory_info().rss)
    except psutil.Error:
        return None


def peak_rss_bytes(pid: int | None = None) -> int | None:
    """Peak resident set size of `pid` (default: this process) over its life so far, or None.

    psutil has no portable peak: Windows reports it (peak_wset); on Linux it is VmHWM in
    /proc/PID/status, read here and nowhere else. Elsewhere the current RSS is returned, a lower
    bound (callers that sample keep the maximum).
    """
    try:
        p = _process(pid)
        info = p.memory_info()
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, ValueError):
                for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024
        return int(getattr(info, "peak_wset", info.rss))
    except psutil.Error:
        return None


def cpu_seconds(pid: int | None = None) -> float | None:
    """User + system CPU time of `pid` (default: this process), or None when it is gone."""
    try:
        t = _process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(t.user + t.system)


def mib(n: int | None, digits: int = 1) -> float | None:
    """Bytes as MiB, rounded (what the benchmarks' "..._mb" keys hold)."""
    return None if n is None else round(n / (1024 * 1024), digits)
