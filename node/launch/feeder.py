"""Streams sensor readings into their owners' nodes: registers the devices, then signs each reading
with its device key (per-device sequence numbers) and submits it to the node that owns the device.

A node that dies is an event, not an error (issue 14): its lane goes down, the other nodes' devices
keep streaming, the dead node's devices' readings wait unsigned (bounded; the oldest are dropped
beyond that, and counted), and the feeder reconnects every second. No signed reading is lost or
duplicated: every signed reading is kept until the ledger shows it committed (`GET /devices` for
`last_seq`, `GET /device/KEY` for the readings themselves: one the ledger skipped is counted as
lost), and when a node comes back the ones it may have lost are sent again as the same signed
bytes (a node that had them finalized refuses them as `replayed_sequence`, or `duplicate` if they
are pending: both are fine, and each costs the connection 0.1 of the 100 misbehaviour points that
end it, node/net/peers.py). Sequence numbers stay strictly increasing per device, so the committed
ones of a device have no gaps beyond what was never signed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import NodeUnreachable, RemoteError
from node.launch.sensors import RawReading, device_key
from node.ledger.keys import NodeKey
from node.ledger.transactions import make_reading, make_register_device
from node.net.client import LedgerClient, TxResult
from node.net.http import get_json
from node.server.datadir import KEY_FILE

RECONNECT_S = 1.0  # a down node is dialled again this often
CONFIRM_S = 1.0  # how often the committed sequence numbers are read from a live node
MAX_WAITING = 20_000  # unsigned readings kept per down node; the oldest are dropped beyond that
MAX_UNCONFIRMED = 20_000  # signed readings per device not yet seen committed; beyond, signing waits
MAX_DEVICE_READINGS = 500  # what GET /device/KEY?last=N lists at most
CONFIRM_MARGIN = 200  # readings a device may get committed between two confirmation requests
ALREADY_FINAL = frozenset({"replayed_sequence", "duplicate"})  # a resent reading the node already has


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
    signed: Counter[str] = field(default_factory=Counter)  # per device: its last signed sequence number
    resent: int = 0  # signed readings sent again after their node came back
    resent_already_final: int = 0  # of those, the ones the node already had
    dropped_while_down: int = 0  # readings of a down node's devices dropped unsigned (over MAX_WAITING)
    lost: int = 0  # signed readings the ledger skipped (a higher one was committed first): none, we hope
    lost_by_device: Counter[str] = field(default_factory=Counter)

    def add(self, results: list[TxResult]) -> None:
        self.submitted += len(results)
        for r in results:
            if r.accepted:
                self.accepted += 1
            else:
                self.rejected[r.reason or "unknown"] += 1


@dataclass
class Lane:
    """One node: its client connection, whether it is up, its devices' readings waiting for it."""

    index: int
    target: Target
    client: LedgerClient | None = None
    up: bool = False
    down_since: float | None = None
    retry_at: float = 0.0
    waiting: deque[RawReading] = field(default_factory=deque)
    downs: int = 0


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
        # Signed readings not yet seen committed, per device: seq -> the signed tx.
        self.unconfirmed: dict[str, dict[int, dict[str, Any]]] = {d: {} for d in devices}
        self.committed: dict[str, int] = dict.fromkeys(devices, 0)  # last committed seq per device
        self.lanes = [Lane(i, t) for i, t in enumerate(targets)]
        self.events: list[str] = []  # node down / back, for a display to show
        self._confirmed_at = 0.0
        self._by_key = {k.public.hex(): d for d, k in self.keys.items()}

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

    def sign(self, r: RawReading) -> tuple[int, dict[str, Any]]:
        self.seq[r.device] += 1
        tx = make_reading(self.keys[r.device], self.chain_id, self.seq[r.device], r.timestamp_ms,
                          r.temperature_c, r.humidity_pct)
        self.unconfirmed[r.device][self.seq[r.device]] = tx
        self.stats.signed[r.device] = self.seq[r.device]
        return self.owner[r.device], tx

    # --- lanes ---------------------------------------------------------------------------------

    def lane_states(self) -> list[dict[str, Any]]:
        return [{"node": lane.index, "url": lane.target.url, "up": lane.up, "waiting": len(lane.waiting),
                 "downs": lane.downs} for lane in self.lanes]

    def _event(self, text: str) -> None:
        self.events.append(text)

    async def _connect(self, lane: Lane) -> bool:
        client = LedgerClient(lane.target.url)
        try:
            await client.__aenter__()
        except NodeUnreachable:
            lane.retry_at = time.monotonic() + RECONNECT_S
            return False
        lane.client, lane.up = client, True
        return True

    async def _down(self, lane: Lane, why: str) -> None:
        if lane.client is not None:
            with contextlib.suppress(Exception):  # it is gone already
                await lane.client.__aexit__()
        lane.client, lane.up = None, False
        lane.down_since = time.monotonic()
        lane.retry_at = lane.down_since + RECONNECT_S
        lane.downs += 1
        self._event(f"node{lane.index + 1} ({lane.target.url}) is down: {why}; its devices' readings wait, "
                    "the other nodes' keep streaming")

    async def _send(self, lane: Lane, txs: list[dict[str, Any]], resend: bool = False) -> None:
        if not txs or lane.client is None:
            return
        try:
            results = await lane.client.submit_many(txs)
        except NodeUnreachable as exc:
            await self._down(lane, str(exc))
            return
        if resend:
            self.stats.resent += len(results)
            self.stats.resent_already_final += sum(1 for r in results if r.reason in ALREADY_FINAL)
            self.stats.add([r for r in results if r.reason not in ALREADY_FINAL])
        else:
            self.stats.add(results)

    def _lost(self, lane: Lane) -> list[dict[str, Any]]:
        """The signed readings of the lane's devices not seen committed, oldest first per device."""
        out = []
        for d in self.devices_of(lane.index):
            last = self.committed[d]
            out += [tx for seq, tx in sorted(self.unconfirmed[d].items()) if seq > last]
        return out

    async def _reconnect(self, lane: Lane) -> None:
        if not await self._connect(lane):
            return
        if lane.down_since is None:
            return  # closed at the end of a stream, not down
        await self._confirm(force=True)
        lost = self._lost(lane)
        down = time.monotonic() - (lane.down_since or time.monotonic())
        await self._send(lane, lost, resend=True)
        if lane.up:
            lane.down_since = None
            self._event(f"node{lane.index + 1} is back after {down:.1f} s: {len(lost)} signed reading(s) it "
                        f"may have lost sent again, {len(lane.waiting)} waiting reading(s) follow")

    async def _confirm(self, force: bool = False) -> None:
        """Read the committed sequence numbers from a live node; forget what they cover."""
        now = time.monotonic()
        if not force and now - self._confirmed_at < CONFIRM_S:
            return
        self._confirmed_at = now
        for lane in self.lanes:
            if not lane.up:
                continue
            try:
                found = await asyncio.to_thread(get_json, lane.target.url, "/devices")
            except NodeUnreachable:
                continue
            for dev in found.get("devices", []):
                name = self._by_key.get(str(dev.get("device")))
                seq = dev.get("last_seq")
                if name is not None and isinstance(seq, int) and seq > self.committed[name]:
                    self.committed[name] = seq
            for name, pending in self.unconfirmed.items():
                if pending and min(pending) <= self.committed[name]:
                    await self._settle_device(lane, name, self.committed[name])
            return

    async def _settle_device(self, lane: Lane, name: str, last: int) -> None:
        """The device's committed sequence number rose to `last`: its signed readings up to it are
        committed, or lost (the ledger takes any increasing number, and refuses a lower one for
        good once a higher one is in). Which, the device's latest readings on the ledger say."""
        pending = self.unconfirmed[name]
        covered = sorted(s for s in pending if s <= last)
        if not covered:
            return
        # More than the jump: readings keep being committed between the two requests.
        window = min(MAX_DEVICE_READINGS, last - covered[0] + 1 + CONFIRM_MARGIN)
        try:
            view = await asyncio.to_thread(get_json, lane.target.url,
                                           f"/device/{self.keys[name].public.hex()}?last={window}")
            on_ledger = {int(r["seq"]) for r in view.get("readings", [])}
        except (NodeUnreachable, KeyError, TypeError, ValueError):
            return  # asked again at the next confirmation
        lowest = min(on_ledger, default=last + 1)
        for s in covered:
            if s in on_ledger:
                del pending[s]
            elif s > lowest:
                self.stats.lost += 1
                self.stats.lost_by_device[name] += 1
                del pending[s]
            elif window >= MAX_DEVICE_READINGS:
                del pending[s]  # too far behind to tell (more than the API lists): taken as committed
            # else: below what was listed, newer readings came in between; asked again next time

    def pending(self) -> int:
        """Signed readings not yet seen committed."""
        return sum(len(v) for v in self.unconfirmed.values())

    # --- the stream ----------------------------------------------------------------------------

    def _take(self, lane: Lane, raw: RawReading, batch: list[dict[str, Any]]) -> None:
        """Sign `raw` for an up lane, or keep it waiting (unsigned) while its node is down or its
        device has too many signed readings not yet committed."""
        if lane.up and not lane.waiting and len(self.unconfirmed[raw.device]) < MAX_UNCONFIRMED:
            batch.append(self.sign(raw)[1])
            return
        if len(lane.waiting) >= MAX_WAITING:
            lane.waiting.popleft()
            self.stats.dropped_while_down += 1
        lane.waiting.append(raw)

    def _drain_waiting(self, lane: Lane, batch: list[dict[str, Any]], most: int) -> None:
        while lane.waiting and most > 0 and len(self.unconfirmed[lane.waiting[0].device]) < MAX_UNCONFIRMED:
            batch.append(self.sign(lane.waiting.popleft())[1])
            most -= 1

    async def stream(
        self,
        source: Iterator[RawReading],
        rate: float,
        stop: asyncio.Event,
        limit: int | None = None,
        on_batch: Callable[[FeedStats], None] | None = None,
    ) -> FeedStats:
        """Submit readings at about `rate` per second (0 = as fast as accepted) until the source
        ends, `limit` readings were taken from it or `stop` is set. Nodes may die and come back
        meanwhile (see the module docstring)."""
        for lane in self.lanes:
            if not lane.up and lane.down_since is None and not await self._connect(lane):
                await self._down(lane, "not reachable at the start")
        try:
            tick = 0.1
            per_tick = max(1, int(rate * tick)) if rate > 0 else 500
            started = time.monotonic()
            sent = 0
            exhausted = False
            while not stop.is_set() and not exhausted:
                now = time.monotonic()
                for lane in self.lanes:
                    if not lane.up and now >= lane.retry_at:
                        await self._reconnect(lane)
                batches: list[list[dict[str, Any]]] = [[] for _ in self.lanes]
                for lane in self.lanes:
                    if lane.up:
                        self._drain_waiting(lane, batches[lane.index], per_tick)
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
                    lane = self.lanes[self.owner[raw.device]]
                    self._take(lane, raw, batches[lane.index])
                    sent += 1
                await asyncio.gather(*(self._send(lane, batch)
                                       for lane, batch in zip(self.lanes, batches, strict=True) if batch))
                await self._confirm()
                if on_batch is not None:
                    on_batch(self.stats)
                if rate > 0:
                    ahead = sent / rate - (time.monotonic() - started)
                    if ahead > 0:
                        with contextlib.suppress(asyncio.TimeoutError):
                            await asyncio.wait_for(stop.wait(), ahead)
        finally:
            await self._close()
        return self.stats

    async def settle(self, timeout: float, resend_after: float = 5.0) -> bool:
        """After the stream: sign and send what waits for nodes that are back, and wait until every
        signed reading is seen committed, sending again (same bytes) what a live node may have lost.
        True when nothing signed is left unconfirmed (or waiting) within `timeout`."""
        deadline = time.monotonic() + timeout
        # Sent again only when nothing got committed for `resend_after` seconds: a node refuses a
        # reading it already holds as `duplicate` and charges the connection for it (0.1 point).
        last_progress, progress = time.monotonic(), -1
        try:
            while True:
                for lane in self.lanes:
                    if not lane.up and time.monotonic() >= lane.retry_at:
                        await self._reconnect(lane)
                    if lane.up and lane.waiting:
                        batch: list[dict[str, Any]] = []
                        self._drain_waiting(lane, batch, 500)
                        await self._send(lane, batch)
                await self._confirm(force=True)
                if not self.pending() and not any(lane.waiting for lane in self.lanes):
                    return True
                if time.monotonic() >= deadline:
                    return False
                if sum(self.committed.values()) != progress:
                    progress, last_progress = sum(self.committed.values()), time.monotonic()
                elif time.monotonic() - last_progress >= resend_after:
                    last_progress = time.monotonic()
                    for lane in self.lanes:
                        if lane.up:
                            await self._send(lane, self._lost(lane), resend=True)
                await asyncio.sleep(0.5)
        finally:
            await self._close()

    async def _close(self) -> None:
        """Close the connections (a lane that was down stays down: `down_since` says so)."""
        for lane in self.lanes:
            if lane.client is not None:
                with contextlib.suppress(Exception):
                    await lane.client.__aexit__()
            lane.client, lane.up, lane.retry_at = None, False, 0.0
