"""GET /suspicious?hours=H: the explorer's stolen-key view (node/store/suspicious.py), computed off
the event loop, cached, and bounded.

Scoring the latest hours of every listed device against the committed fingerprints reads up to
64 devices x H hours of readings through the store's index walk and runs numpy over them: tens
of milliseconds on a small federation, seconds at the bounds (64 devices, a week). A page polls
every 2 s and a GET costs the caller nothing, so:

* the answer is computed in one worker thread on its own read-only connection (one read snapshot),
  never on the event loop, and never for a poll: one computation at a time per node;
* it is cached per `hours` (at most `entries` values, the least recently asked dropped first) with
  the head height its snapshot saw, and recomputed only when the head has moved and the cached
  answer is at least `min_interval_s` old, and at least `1 / busy_share` times as old as its
  computation took (a computation of seconds, at the bounds, keeps the worker busy a fifth of the
  time at most, however the page polls); until then, and while a new one is computed, the cached
  answer is served (it names its height);
* computations started are paced by a token bucket (`burst`, then one per `refill_s`) over all
  hours values, so cycling through them buys no more work than polling one;
* the answer is serialized once per computation; a poll costs a dict lookup and the send.

The first request for an hours value answers 202 (computing, Retry-After); one that arrives when
the bucket is empty 429. No traceability model committed yet is an answer (state "no_model"), not
an error: the page shows its empty state.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from node.ledger.storage import Store
from node.net.gateway import HttpBody
from node.net.peers import TokenBucket
from node.store import suspicious as susp
from node.store.sqlite import SqliteStore

log = logging.getLogger("fedledger.explorer")

LISTED = 200  # flagged spans in one answer (with the total): the page is a table, not an export
Reader = Callable[[], AbstractContextManager[Store]]


@dataclass(frozen=True, slots=True)
class Limits:
    min_interval_s: float = 5.0  # at most one computation per hours value per 5 s, and only on a new head
    busy_share: float = 0.2  # ... and per 5 times its own duration
    burst: float = 3.0
    refill_s: float = 5.0
    entries: int = 8
    retry_after_s: int = 1


@dataclass(frozen=True, slots=True)
class Entry:
    height: int  # the head height of the snapshot the answer was computed on
    at: float  # when the computation started (monotonic)
    status: int
    body: bytes
    took_s: float = 0.0  # how long it took


def sqlite_reader(store: Store) -> Reader | None:
    """Read-only snapshots of a SQLite replica for the worker thread (its own connection: the
    node's connection belongs to the event loop's thread and its write transactions). None for
    other stores (in-memory ones, in tests): the view then computes on the caller's thread."""
    if not isinstance(store, SqliteStore):
        return None
    path = store.path

    @contextmanager
    def read() -> Iterator[Store]:
        reader = SqliteStore(path, read_only=True)
        try:
            with reader.snapshot():
                yield reader
        finally:
            reader.close()

    return read


def compute(store: Store, hours: int) -> tuple[int, bytes]:
    """(head height of the snapshot, the answer as sent) for `hours` on `store`; serialized here,
    off the event loop, as strict JSON (a non-finite number is an error, not `Infinity`)."""
    height = store.height()
    started = time.perf_counter()
    base = {"height": height, "hours": hours}
    try:
        found = susp.suspicious(store, hours=hours, limit=LISTED)
        answer = {**base, **found, "state": "ready",
                  "compute_ms": round((time.perf_counter() - started) * 1000, 1)}
    except susp.NoModel as exc:
        answer = {**base, "state": "no_model", "detail": f"no device fingerprints to score with: {exc}",
                  "train": "fedledger train DIR --task traceability --rounds 1"}
    return height, json.dumps(answer, separators=(",", ":"), allow_nan=False).encode()


class SuspiciousView:
    """The cache and the single worker. `request` is called on the event loop's thread only; the
    worker only computes and hands back its result through a Future."""

    def __init__(
        self,
        store: Store,
        reader: Reader | None = None,
        limits: Limits | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        counters: Counter[str] | None = None,
    ) -> None:
        self.store = store
        self.reader = reader if reader is not None else sqlite_reader(store)
        self.limits = limits or Limits()
        self.clock = clock
        self.budget = TokenBucket(1.0 / self.limits.refill_s, self.limits.burst, clock())
        self.counters = counters if counters is not None else Counter()
        self._cache: OrderedDict[int, Entry] = OrderedDict()
        self._running: tuple[int, float, Future[tuple[int, bytes, float]]] | None = None
        self._closed = False
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()  # close() may come from another thread (the node's shutdown)

    def _count(self, what: str) -> None:
        self.counters[f"suspicious_{what}"] += 1

    def request(self, hours: int) -> tuple[int, HttpBody]:
        """The cached answer for `hours` (starting its computation when it is due), or 202/429."""
        if self._closed:
            return self._wait(503, "unavailable", "the node is stopping", self.limits.retry_after_s)
        self._collect()
        now = self.clock()
        entry = self._cache.get(hours)
        if entry is not None:
            self._cache.move_to_end(hours)
        due = entry is None or (
            now - entry.at >= max(self.limits.min_interval_s, entry.took_s / self.limits.busy_share)
            and entry.height != self.store.height())
        if due and self._running is None:
            if self.budget.take(1, now):
                self._start(hours, now)
                self._collect()  # computed inline (no reader): the answer is already here
                entry = self._cache.get(hours, entry)
            elif entry is None:
                self._count("rate_limited")
                wait = (1 - self.budget.available(now)) / self.budget.rate
                return self._wait(429, "rate_limited", "too many different views asked for lately; the ones "
                                  "computed are served at once", max(1, math.ceil(wait)))
        if entry is not None:
            return entry.status, HttpBody("application/json", entry.body)
        busy = self._running is not None and self._running[0] != hours
        return self._wait(202, "computing", "another view is being computed; ask again" if busy else
                          "scoring the latest readings against the committed fingerprints; ask again",
                          self.limits.retry_after_s)

    def _wait(self, status: int, state: str, detail: str, retry: int) -> tuple[int, HttpBody]:
        body = {"state": state, "detail": detail, "retry_after_s": retry}
        if status >= 400:
            body["error"] = detail
        return status, HttpBody("application/json", json.dumps(body).encode(),
                                headers=(("Retry-After", str(retry)),))

    def _start(self, hours: int, now: float) -> None:
        self._count("started")
        if self.reader is None:
            done: Future[tuple[int, bytes, float]] = Future()
            try:
                started = time.perf_counter()
                height, body = compute(self.store, hours)
                done.set_result((height, body, time.perf_counter() - started))
            except Exception as exc:  # reported as the answer, as the worker's are
                done.set_exception(exc)
            self._running = (hours, now, done)
            return
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="suspicious")
            self._running = (hours, now, self._pool.submit(self._compute_read, self.reader, hours))

    @staticmethod
    def _compute_read(reader: Reader, hours: int) -> tuple[int, bytes, float]:
        started = time.perf_counter()
        with reader() as store:
            height, body = compute(store, hours)
        return height, body, time.perf_counter() - started

    def _collect(self) -> None:
        """Move a finished computation's answer into the cache."""
        if self._running is None or not self._running[2].done():
            return
        hours, at, future = self._running
        self._running = None
        try:
            height, body, took = future.result()
            status = 200
            self._count("computed")
        except Exception as exc:  # a damaged replica or a bug: an answer, logged, not a crash
            log.warning("suspicious view (%d h) failed: %s: %s", hours, type(exc).__name__, exc)
            self._count("failed")
            detail = f"computing the view failed: {type(exc).__name__}: {str(exc)[:300]}"
            height, status, took = self.store.height(), 500, 0.0
            body = json.dumps({"state": "failed", "detail": detail, "error": detail, "hours": hours}).encode()
        self._cache[hours] = Entry(height, at, status, body, took)
        self._cache.move_to_end(hours)
        while len(self._cache) > self.limits.entries:
            self._cache.popitem(last=False)

    def close(self) -> None:
        """Wait for a running computation (bounded by the view's bounds) and stop the worker."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
