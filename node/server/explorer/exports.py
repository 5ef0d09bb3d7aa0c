"""The `.keras` download of a committed model (GET /model/RUN/ROUND/keras).

The node process never loads Keras, so the file is written by `fedledger model export` in a child
process: the command's own code path, which re-computes the weights from the updates the commit
names and checks them against the committed hash before it imports Keras. A GET costs the caller
nothing, so what it can make the node do is bounded here:

* one export at a time per node: a request for another model meanwhile is answered 503 (busy),
  one for the model being exported 202 (poll again);
* at most `burst` exports in a row, then one per `refill_s` (429 beyond); a cached file costs none;
* a timeout (the child's whole process group is killed), a size cap on the file, and a check that
  it is a Keras archive whose export reported the committed hash;
* a cache on disk, DIR/exports/, one file per task and model hash, at most `cache_files` files and
  `cache_bytes` bytes, the least recently served evicted first;
* a failed export is remembered for `failure_ttl_s`, so polling a model that cannot be exported
  does not start it again and again;
* without Keras in this environment nothing is started: 503 with the install hint.

No client value reaches the command line or a file name: routes.py looks the run and round up on
the ledger first, and the job carries what the ledger says (run id, round, task, model hash).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import importlib.util
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
import zipfile
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from node.net.peers import TokenBucket

log = logging.getLogger("fedledger.explorer")

EXPORTS_DIR = "exports"
WORK_DIR = ".work"  # the running export's output; only a checked file moves into the cache
KERAS_MEMBERS = ("config.json", "model.weights.h5")  # what every Keras 3 .keras archive holds
INSTALL_HINT = "pip install 'fedledger[federated]' (./scripts/launch sets up a .venv that has it)"
OUTPUT_CAP = 64 * 1024  # bytes of the child's stdout/stderr read back


@dataclass(frozen=True, slots=True)
class ExportLimits:
    timeout_s: float = 180.0  # importing TensorFlow alone takes 5-20 s on a loaded 2-core machine
    max_bytes: int = 16 * 1024 * 1024  # the paper's models are tens of KB
    cache_files: int = 32
    cache_bytes: int = 64 * 1024 * 1024
    burst: float = 3.0
    refill_s: float = 20.0
    failure_ttl_s: float = 60.0
    failures_kept: int = 64
    nice: int = 10  # the export yields the CPU to consensus


@dataclass(frozen=True, slots=True)
class ExportJob:
    """A committed model, as the ledger names it."""

    run: bytes
    round: int
    task: str
    model_hash: bytes

    @property
    def key(self) -> str:
        return f"{self.task}-{self.model_hash.hex()}"

    @property
    def filename(self) -> str:
        """What the browser saves it as."""
        return f"{self.task}-round{self.round}-run{self.run.hex()[:12]}.keras"


class State(enum.Enum):
    READY = "ready"
    EXPORTING = "exporting"
    BUSY = "busy"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    FAILED = "failed"
    NONE = "none"  # not exported yet, nothing under way (lookup only)


HTTP_STATUS = {State.READY: 200, State.EXPORTING: 202, State.BUSY: 503, State.RATE_LIMITED: 429,
               State.UNAVAILABLE: 503, State.FAILED: 500, State.NONE: 404}


@dataclass(frozen=True, slots=True)
class Answer:
    state: State
    detail: str = ""
    path: Path | None = None
    size: int = 0
    retry_after_s: int = 0

    @property
    def http_status(self) -> int:
        return HTTP_STATUS[self.state]

    def to_json(self) -> dict[str, object]:
        out: dict[str, object] = {"state": self.state.value, "detail": self.detail}
        if self.state is State.READY:
            out["size"] = self.size
        if self.retry_after_s:
            out["retry_after_s"] = self.retry_after_s
        return out


def keras_installed() -> bool:
    """Whether an export could import Keras here (a spec lookup: nothing is imported)."""
    return importlib.util.find_spec("keras") is not None


def export_command(data_dir: Path) -> Callable[[ExportJob, Path], list[str]]:
    """`fedledger model export` on this node's directory (it reads node.db read-only)."""

    def argv(job: ExportJob, out: Path) -> list[str]:
        return [sys.executable, "-m", "node", "model", "export", str(data_dir), "--task", job.task,
                "--run", job.run.hex(), "--round", str(job.round), "--out", str(out), "--json"]

    return argv


class KerasExports:
    """The download's cache and its single export slot. `request` is called on the event loop."""

    def __init__(
        self,
        cache_dir: Path,
        command: Callable[[ExportJob, Path], list[str]],
        limits: ExportLimits | None = None,
        *,
        keras_available: Callable[[], bool] = keras_installed,
        clock: Callable[[], float] = time.monotonic,
        counters: Counter[str] | None = None,
    ) -> None:
        self.dir = cache_dir
        self.command = command
        self.limits = limits or ExportLimits()
        self.keras_available = keras_available
        self.clock = clock
        self.budget = TokenBucket(1.0 / self.limits.refill_s, self.limits.burst, clock())
        self._current: tuple[ExportJob, asyncio.Task[None]] | None = None
        self._failures: OrderedDict[str, tuple[float, str]] = OrderedDict()
        # keras_export_{started,exported,failed,served,busy,rate_limited}: the node passes its own
        # counters, so they show in GET /status and as fedledger_node_events_total.
        self.counters = counters if counters is not None else Counter()
        # A previous process may have died mid-export: its output was never checked.
        shutil.rmtree(self.dir / WORK_DIR, ignore_errors=True)

    def _count(self, what: str) -> None:
        self.counters[f"keras_export_{what}"] += 1

    @property
    def counts(self) -> dict[str, int]:
        return {k.removeprefix("keras_export_"): n for k, n in self.counters.items()
                if k.startswith("keras_export_")}

    def path(self, job: ExportJob) -> Path:
        return self.dir / f"{job.key}.keras"

    def lookup(self, job: ExportJob) -> Answer:
        """Where `job` stands, without starting anything (the model page shows it)."""
        cached = self._cached(job)
        if cached is not None:
            return cached
        if self._current is not None and self._current[0] == job:
            return Answer(State.EXPORTING, "exporting", retry_after_s=2)
        failed = self._failed(job)
        if failed is not None:
            return failed
        if not self.keras_available():
            return Answer(State.UNAVAILABLE, f"this node has no Keras to export with: {INSTALL_HINT}")
        return Answer(State.NONE, "not exported yet")

    def request(self, job: ExportJob) -> Answer:
        """The file if it is cached; else start its export if the slot and the budget allow."""
        answer = self.lookup(job)
        if answer.state is State.READY:
            self._count("served")
            with contextlib.suppress(OSError):
                os.utime(answer.path)  # type: ignore[arg-type]  # most recently served: evicted last
            return answer
        if answer.state is not State.NONE:
            return answer
        if self._current is not None:
            self._count("busy")
            return Answer(State.BUSY, "another model is being exported; one export at a time per node",
                          retry_after_s=5)
        now = self.clock()
        if not self.budget.take(1, now):
            self._count("rate_limited")
            wait = (1 - self.budget.available(now)) / self.budget.rate
            return Answer(State.RATE_LIMITED, "too many exports on this node lately; cached models are "
                          "served at once", retry_after_s=max(1, math.ceil(wait)))
        self._count("started")
        task = asyncio.get_running_loop().create_task(self._export(job), name=f"export {job.key}")
        self._current = (job, task)
        return Answer(State.EXPORTING, "export started: the model is re-computed from the ledger and "
                      "written by `fedledger model export`", retry_after_s=2)

    def _cached(self, job: ExportJob) -> Answer | None:
        path = self.path(job)
        try:
            size = path.stat().st_size
        except OSError:
            return None
        if size > self.limits.max_bytes:  # not one this node wrote (it checks before caching)
            return None
        return Answer(State.READY, "ready", path=path, size=size)

    def _failed(self, job: ExportJob) -> Answer | None:
        seen = self._failures.get(job.key)
        if seen is None:
            return None
        until, detail = seen
        left = until - self.clock()
        if left <= 0:
            del self._failures[job.key]
            return None
        return Answer(State.FAILED, detail, retry_after_s=max(1, math.ceil(left)))

    def _fail(self, job: ExportJob, detail: str) -> None:
        self._count("failed")
        log.warning("export of %s round %d (model %s) failed: %s", job.task, job.round,
                    job.model_hash.hex()[:16], detail)
        self._failures[job.key] = (self.clock() + self.limits.failure_ttl_s, detail)
        self._failures.move_to_end(job.key)
        while len(self._failures) > self.limits.failures_kept:
            self._failures.popitem(last=False)

    async def _export(self, job: ExportJob) -> None:
        try:
            detail = await self._run(job)
            if detail is None:
                self._count("exported")
                log.info("exported %s round %d (model %s) to %s", job.task, job.round,
                         job.model_hash.hex()[:16], self.path(job))
                self._evict()
            else:
                self._fail(job, detail)
        except OSError as exc:
            self._fail(job, f"cannot run the export: {exc.strerror or exc}")
        finally:
            self._current = None
            shutil.rmtree(self.dir / WORK_DIR, ignore_errors=True)

    async def _run(self, job: ExportJob) -> str | None:
        """Run the export; None when its file is in the cache, else why not."""
        work = self.dir / WORK_DIR
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        out = work / f"{job.key}.keras"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
        with open(work / "stdout", "wb") as stdout, open(work / "stderr", "wb") as stderr:
            proc = await asyncio.create_subprocess_exec(
                *self.command(job, out), stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                env=env, start_new_session=True,  # its own process group: a timeout kills all of it
            )
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, proc.pid, self.limits.nice)
        try:
            rc = await asyncio.wait_for(proc.wait(), self.limits.timeout_s)
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.shield(proc.wait())
            if isinstance(exc, asyncio.CancelledError):
                raise
            return f"timed out after {self.limits.timeout_s:.0f} s"
        if rc != 0:
            return last_line(work / "stderr") or f"the export exited with status {rc}"
        return self._admit(job, out, work / "stdout")

    def _admit(self, job: ExportJob, out: Path, stdout: Path) -> str | None:
        """Move the export's file into the cache if it is what was asked for."""
        try:
            reported = json.loads(read_capped(stdout))
        except ValueError:
            return "the export printed no JSON result"
        if not isinstance(reported, dict) or reported.get("model_hash") != job.model_hash.hex():
            return "the export reported another model hash than the ledger's"
        try:
            size = out.stat().st_size
        except OSError:
            return "the export wrote no file"
        if size > self.limits.max_bytes:
            return f"the file is {size} bytes, over this node's cap of {self.limits.max_bytes}"
        try:
            with zipfile.ZipFile(out) as archive:
                names = set(archive.namelist())
        except (zipfile.BadZipFile, OSError):
            return "the export's file is not a .keras archive"
        if not set(KERAS_MEMBERS) <= names:
            return "the export's file is not a .keras archive"
        os.replace(out, self.path(job))
        return None

    def _evict(self) -> None:
        """Least recently served first, down to the file and byte caps."""
        files = []
        for p in self.dir.glob("*.keras"):
            with contextlib.suppress(OSError):
                st = p.stat()
                files.append((st.st_mtime, st.st_size, p))
        files.sort()
        total = sum(size for _, size, _ in files)
        while files and (len(files) > self.limits.cache_files or total > self.limits.cache_bytes):
            _, size, p = files.pop(0)
            with contextlib.suppress(OSError):
                p.unlink()
            total -= size

    @property
    def busy(self) -> bool:
        return self._current is not None

    async def close(self) -> None:
        """Stop a running export (its process group is killed) when the node stops."""
        if self._current is not None:
            task = self._current[1]
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def read_capped(path: Path, cap: int = OUTPUT_CAP) -> str:
    with open(path, "rb") as f:
        return f.read(cap).decode("utf-8", "replace")


def last_line(path: Path) -> str:
    """The last non-empty line of the child's stderr (the CLI's one-line error), bounded."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - OUTPUT_CAP))
            lines = [ln.strip() for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
