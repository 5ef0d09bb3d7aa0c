"""Streams sensor readings into their owners' nodes: registers the devices, then signs each reading
with its device key (per-device sequence numbers) and submits it to the node that owns the device."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import RemoteError
from node.launch.sensors import RawReading, device_key
from node.ledger.keys import NodeKey
from node.ledger.transactions import make_reading, make_register_device
from node.net.client import LedgerClient, TxResult
from node.server.datadir import KEY_FILE


class RegistrationRefused(RemoteError):
    """A node refused to register the devices it is to own (other than "already registered")."""


@dataclass(frozen=True)
class Target:
    """A node the feeder submits to: its data directory (for the owner key) and its URL."""

    dir: Path
    url: str


@dataclass
class FeedStats:
    submitted: int = 0
    accepted: int = 0
    rejected: Counter[str] = field(default_factory=Counter)

    def add(self, results: list[TxResult]) -> None:
        self.submitted += len(results)
        for r in results:
            if r.accepted:
                self.accepted += 1
            else:
                self.rejected[r.reason or "unknown"] += 1


class Feeder:
    def __init__(self, targets: list[Target], chain_id: str, devices: list[str]) -> None:
        if not targets:
            raise ValueError("no nodes to feed")
        self.targets = targets
        self.chain_id = chain_id
        # Devices are spread over the nodes round-robin: each node owns and trains on its own.
        self.owner = {d: i % len(targets) for i, d in enumerate(devices)}
        self.keys = {d: device_key(targets[self.owner[d]].dir, d) for d in devices}
        self.seq: dict[str, int] = dict.fromkeys(devices, 0)
        self.stats = FeedStats()

    def devices_of(self, node_index: int) -> list[str]:
        return [d for d, i in self.owner.items() if i == node_index]

    async def register_devices(self) -> None:
        for i, t in enumerate(self.targets):
            names = self.devices_of(i)
            if not names:
                continue
            owner = NodeKey.load(t.dir / KEY_FILE)
            txs = [make_register_device(owner, self.chain_id, self.keys[d].public, d) for d in names]
            async with LedgerClient(t.url) as c:
                results = await c.submit_many(txs)
            bad = [(d, r.reason) for d, r in zip(names, results, strict=True) if not r.accepted]
            # Already registered (a second run on the same federation) is fine.
            bad = [(d, why) for d, why in bad if why not in ("device_exists", "duplicate")]
            if bad:
                raise RegistrationRefused(f"node {t.url} refused device registrations: {bad}")

    def sign(self, r: RawReading) -> tuple[int, dict[str, object]]:
        self.seq[r.device] += 1
        tx = make_reading(self.keys[r.device], self.chain_id, self.seq[r.device], r.timestamp_ms,
                          r.temperature_c, r.humidity_pct)
        return self.owner[r.device], tx

    async def stream(
        self,
        source: Iterator[RawReading],
        rate: float,
        stop: asyncio.Event,
        limit: int | None = None,
        on_batch: Callable[[FeedStats], None] | None = None,
    ) -> FeedStats:
        """Submit readings at about `rate` per second (0 = as fast as accepted) until the source
        ends, `limit` readings were sent or `stop` is set."""
        clients = [LedgerClient(t.url) for t in self.targets]
        for c in clients:
            await c.__aenter__()
        try:
            tick = 0.1
            per_tick = max(1, int(rate * tick)) if rate > 0 else 500
            started = time.monotonic()
            sent = 0
            exhausted = False
            while not stop.is_set() and not exhausted:
                batches: list[list[dict[str, object]]] = [[] for _ in self.targets]
                for _ in range(per_tick):
                    if limit is not None and sent >= limit:
                        exhausted = True
                        break
                    try:
                        raw = next(source)
                    except StopIteration:
                        exhausted = True
                        break
                    if raw.device not in self.owner:
                        continue
                    node, tx = self.sign(raw)
                    batches[node].append(tx)
                    sent += 1
                results = await asyncio.gather(
                    *(c.submit_many(b) for c, b in zip(clients, batches, strict=True))
                )
                for res in results:
                    self.stats.add(res)
                if on_batch is not None:
                    on_batch(self.stats)
                if rate > 0:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(stop.wait(), ahead)
        finally:
            for c in clients:
                await c.__aexit__()
        return self.stats
