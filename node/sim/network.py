"""A simulated network and clock: delay, loss, duplication, reordering, partitions."""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Faults:
    """The fault mix of one run (chosen from the seed)."""

    min_delay_ms: int = 1
    max_delay_ms: int = 20
    loss: float = 0.0
    duplication: float = 0.0
    partitions: bool = False
    crashes: bool = False
    byzantine: int = 0

    def describe(self) -> str:
        parts = [f"delay={self.min_delay_ms}-{self.max_delay_ms}ms"]
        if self.loss:
            parts.append(f"loss={self.loss:.2f}")
        if self.duplication:
            parts.append(f"dup={self.duplication:.2f}")
        if self.partitions:
            parts.append("partitions")
        if self.crashes:
            parts.append("crashes")
        if self.byzantine:
            parts.append(f"byzantine={self.byzantine}")
        return " ".join(parts)


@dataclass(order=True)
class _Scheduled:
    at_ms: int
    seq: int
    fn: Callable[[], None] = field(compare=False)
    label: str = field(compare=False, default="")


class Scheduler:
    """Simulated time: a heap of callbacks. Ties are broken by insertion order (deterministic)."""

    def __init__(self) -> None:
        self.now_ms = 0
        self._heap: list[_Scheduled] = []
        self._seq = 0

    def at(self, at_ms: int, fn: Callable[[], None], label: str = "") -> None:
        self._seq += 1
        heapq.heappush(self._heap, _Scheduled(max(at_ms, self.now_ms), self._seq, fn, label))

    def after(self, delay_ms: int, fn: Callable[[], None], label: str = "") -> None:
        self.at(self.now_ms + delay_ms, fn, label)

    def run_one(self) -> str | None:
        if not self._heap:
            return None
        item = heapq.heappop(self._heap)
        self.now_ms = item.at_ms
        item.fn()
        return item.label

    def __len__(self) -> int:
        return len(self._heap)


class Network:
    """Delivers messages between named endpoints with the current fault settings.

    Partitions drop messages between groups; loss drops at random. Both are "while faulty" only:
    the gossip layer of the simulated nodes re-sends what matters, as a real gossip layer does,
    so after healing every message of a correct node reaches every correct node.
    """

    def __init__(self, scheduler: Scheduler, rng: random.Random, faults: Faults) -> None:
        self.scheduler = scheduler
        self.rng = rng
        self.faults = faults
        self.faulty = True
        self.groups: list[set[int]] | None = None
        self.delivered = 0
        self.dropped = 0

    def partition(self, groups: list[set[int]]) -> None:
        self.groups = groups

    def heal(self) -> None:
        self.groups = None
        self.faulty = False

    def connected(self, a: int, b: int) -> bool:
        if self.groups is None:
            return True
        return any(a in g and b in g for g in self.groups)

    def send(self, src: int, dst: int, deliver: Callable[[Any], None], payload: Any) -> None:
        if not self.connected(src, dst):
            self.dropped += 1
            return
        f = self.faults
        if self.faulty and f.loss and self.rng.random() < f.loss:
            self.dropped += 1
            return
        copies = 2 if self.faulty and f.duplication and self.rng.random() < f.duplication else 1
        for _ in range(copies):
            # Independent random delays reorder messages between the same two nodes.
            delay = self.rng.randint(f.min_delay_ms, f.max_delay_ms)
            self.scheduler.after(delay, lambda: self._arrive(deliver, payload), f"msg {src}->{dst}")

    def _arrive(self, deliver: Callable[[Any], None], payload: Any) -> None:
        self.delivered += 1
        deliver(payload)
