"""Block sync: which heights to fetch from which peer, and the batches waiting to be applied.

A node that is behind (a fresh joiner, or one that was offline) fetches committed blocks with
their commit certificates from every peer that has them: consecutive ranges go to different
peers, several requests are in flight at once, and batches that arrive out of order wait until
the ones below them are applied, strictly in height order. A peer that times out or sends a
block that fails verification loses its requests and is left out for a while; another peer gets
the range.

A height a peer announces is a claim, not a fact: it steers requests, and it counts towards the
sync target (how far behind this node thinks it is) only until the peer fails to back it. A peer
that answers a range inside its claim with nothing, or not at all, has its claim cut to the height
it has proven (the last block it delivered), and its claims above that are ignored for a while
that doubles with each failure: a peer announcing height 2^63 - 1 cannot keep a node "syncing".

Sans-I/O like the consensus core: time is an argument, the runtime sends the requests and applies
the batches (node/server/runtime.py).

Modes (how much a node re-checks of a synced block, DESIGN.md section 4):
- ``certificates``: the commit certificate (more than 2/3 of the authorities in force at that
  height precommitted it), the hash chain, the tx Merkle root and every ledger rule, but not the
  signature of each tx: the authorities that certified the block checked them all. This is what
  makes catch-up fast; ``fedledger ledger verify`` re-checks everything later.
- ``full``: everything, every tx signature included, as if the block were a fresh proposal.
"""

from __future__ import annotations

import enum
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from node.errors import CodecError, InvalidBlock
from node.ledger.blocks import Block, Commit, block_from_parts, commit_from_bytes
from node.ledger.codec import decode

SYNC_MODES = ("certificates", "full")
DEFAULT_MODE = "certificates"
BATCH_BLOCKS = 16  # heights per request; the server also stops at SYNC_BATCH_BYTES
PER_PEER = 2  # requests in flight per peer
MAX_AHEAD = 256  # heights fetched beyond the applied head at most (bounds memory)
REQUEST_TIMEOUT_S = 15.0
PENALTY_S = 10.0  # a peer that failed us is not asked again for this long
DISTRUST_S = 30.0  # claims above what a peer proved are ignored this long after it failed one ...
MAX_DISTRUST_S = 600.0  # ... doubling per failure up to this
MAX_RETIRED = 1024  # requests dropped without an answer (timeout, penalty) whose answer may still come


class Answer(enum.Enum):
    """What a BLOCKS frame is, judged before any block in it is decoded."""

    REQUESTED = "requested"  # it continues a request in flight to that peer, within its range
    LATE = "late"  # the answer to a request this node gave up on: dropped, not the peer's fault
    UNREQUESTED = "unrequested"  # nobody asked that peer for it: an offence


@dataclass(frozen=True)
class Request:
    peer: bytes
    lo: int
    hi: int
    sent_at: float


@dataclass
class SyncStats:
    """Progress since the node started (or since it fell behind again)."""

    mode: str
    started_at: float = field(default_factory=time.monotonic)
    start_height: int = 0
    blocks: int = 0
    txs: int = 0
    readings: int = 0
    failures: int = 0
    timeouts: int = 0
    busy_s: float = 0.0  # time spent verifying and applying
    last_applied_at: float | None = None

    def to_dict(self, height: int, target: int, now: float | None = None) -> dict[str, Any]:
        now = time.monotonic() if now is None else now
        # Rates over the catch-up itself: from the first request to the last block applied (to
        # now while blocks are still coming).
        end = now if target > height or self.last_applied_at is None else self.last_applied_at
        elapsed = max(end - self.started_at, 1e-9)
        return {
            "mode": self.mode,
            "syncing": target > height,
            "height": height,
            "target_height": target,
            "start_height": self.start_height,
            "blocks": self.blocks,
            "readings": self.readings,
            "txs": self.txs,
            "elapsed_s": round(elapsed, 3),
            "busy_s": round(self.busy_s, 3),
            "blocks_per_s": round(self.blocks / elapsed, 1),
            "readings_per_s": round(self.readings / elapsed, 1),
            "failures": self.failures,
            "timeouts": self.timeouts,
        }


class BlockSync:
    def __init__(
        self,
        batch: int = BATCH_BLOCKS,
        per_peer: int = PER_PEER,
        max_ahead: int = MAX_AHEAD,
        timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self.batch = batch
        self.per_peer = per_peer
        self.max_ahead = max_ahead
        self.timeout_s = timeout_s
        self.peer_heights: dict[bytes, int] = {}
        self.in_flight: dict[int, Request] = {}  # by first height
        self.fetched: dict[int, tuple[bytes, list[tuple[Block, Commit]]]] = {}  # first height -> batch
        self.penalised: dict[bytes, float] = {}  # peer -> until
        self.proven: dict[bytes, int] = {}  # peer -> highest height it delivered a block for
        self.distrusted: dict[bytes, tuple[float, float]] = {}  # peer -> (until, current period)
        self.disproven = 0  # claims cut back because the peer did not back them
        self.retired: OrderedDict[tuple[bytes, int], int] = OrderedDict()  # (peer, lo) -> hi
        self._next_peer = 0
        # Heights per request, learnt from answers: a server stops at a byte budget, so with big
        # blocks a 16-block range comes back one block at a time. Asking for what a peer will
        # send keeps consecutive heights on different peers instead of queued behind one.
        self.span = batch

    # --- inputs ----------------------------------------------------------------------------------

    def peer_height(self, peer: bytes, height: int, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        distrust = self.distrusted.get(peer)
        if distrust is not None and now < distrust[0]:
            height = min(height, self.proven.get(peer, 0))
        self.peer_heights[peer] = height

    def peer_gone(self, peer: bytes) -> None:
        # `distrusted` and `proven` stay: a peer that reconnects does not start with a clean slate.
        self.peer_heights.pop(peer, None)
        for lo in [lo for lo, r in self.in_flight.items() if r.peer == peer]:
            del self.in_flight[lo]

    @property
    def target(self) -> int:
        return max(self.peer_heights.values(), default=0)

    def requests(self, height: int, now: float) -> list[Request]:
        """New requests to send, given the applied height: ranges not in flight or fetched,
        within MAX_AHEAD of the head, each to a peer that has it and has a free slot."""
        self._expire(now)
        target = self.target
        out: list[Request] = []
        lo = height + 1
        limit = min(target, height + self.max_ahead)
        load = {p: 0 for p in self.peer_heights}
        for r in self.in_flight.values():
            load[r.peer] = load.get(r.peer, 0) + 1
        while lo <= limit:
            busy = self._covering(lo)
            if busy is not None:
                lo = busy + 1
                continue
            hi = min(lo + self.span - 1, limit)
            hi = self._before_next_covered(lo, hi)
            peer = self._pick_peer(hi, load, now)
            if peer is None:
                break
            req = Request(peer, lo, hi, now)
            self.in_flight[lo] = req
            load[peer] += 1
            out.append(req)
            lo = hi + 1
        return out

    def classify(self, peer: bytes, first: int | None, count: int) -> Answer:
        """Whether a BLOCKS frame of `count` items from `peer`, the first for height `first`, answers
        a request made to it. Asked before the items are decoded: an unasked-for frame costs the
        sender, not this node's CPU. An empty frame answers any request in flight to the peer; a
        frame whose first block has no readable height is left to decoding if the peer owes one."""
        asked = any(r.peer == peer for r in self.in_flight.values())
        if count == 0:
            if asked:
                return Answer.REQUESTED
            return Answer.LATE if any(p == peer for p, _ in self.retired) else Answer.UNREQUESTED
        if first is None:  # a malformed first block: decoding reports it if the peer owes an answer
            return Answer.REQUESTED if asked else Answer.UNREQUESTED
        req = self.in_flight.get(first)
        if req is not None and req.peer == peer:
            return Answer.REQUESTED if count <= req.hi - req.lo + 1 else Answer.UNREQUESTED
        hi = self.retired.pop((peer, first), None)
        if hi is not None and count <= hi - first + 1:
            return Answer.LATE
        return Answer.UNREQUESTED

    def on_blocks(self, peer: bytes, items: Sequence[tuple[Block, Commit]], now: float) -> bool:
        """A peer answered. The batch must continue a request made to that peer; a partial answer
        (the server caps a batch by bytes) leaves the rest of the range to be asked again. True
        when the answer disproved the height the peer claimed (the caller scores the peer)."""
        if not items:
            # The peer has nothing inside the range it claimed to have: the claim was false.
            asked = [lo for lo, r in self.in_flight.items() if r.peer == peer]
            for lo in asked:
                self._retire(self.in_flight.pop(lo))
            self.penalised[peer] = now + PENALTY_S
            if asked:
                self._disprove(peer, now)
            return bool(asked)
        lo = items[0][0].height
        req = self.in_flight.get(lo)
        if req is None or req.peer != peer:
            return False  # unasked for, or late after a timeout: ignore
        del self.in_flight[lo]
        heights = [b.height for b, _ in items]
        if heights != list(range(lo, lo + len(items))) or heights[-1] > req.hi:
            self.penalise(peer, now)
            return False
        self.fetched[lo] = (peer, list(items))
        self.proven[peer] = max(self.proven.get(peer, 0), heights[-1])
        asked = req.hi - req.lo + 1
        self.span = len(items) if len(items) < asked else min(self.batch, 2 * self.span)
        return False

    def penalise(self, peer: bytes, now: float) -> None:
        """The peer sent something that failed verification: drop what we hold from it."""
        self.penalised[peer] = now + PENALTY_S
        for lo in [lo for lo, (p, _) in self.fetched.items() if p == peer]:
            del self.fetched[lo]
        for lo in [lo for lo, r in self.in_flight.items() if r.peer == peer]:
            self._retire(self.in_flight.pop(lo))

    def take_ready(self, height: int) -> tuple[bytes, list[tuple[Block, Commit]]] | None:
        """The fetched batch that starts right above `height`, if any (drops stale ones)."""
        for lo in [lo for lo, (_, items) in self.fetched.items() if lo + len(items) - 1 <= height]:
            del self.fetched[lo]
        for lo, (peer, items) in list(self.fetched.items()):
            if lo <= height + 1 <= lo + len(items) - 1:
                del self.fetched[lo]
                return peer, [it for it in items if it[0].height > height]
        return None

    # --- helpers ---------------------------------------------------------------------------------

    def _retire(self, req: Request) -> None:
        """Remember a request given up on, so its answer, if it still comes, is not an offence."""
        self.retired[(req.peer, req.lo)] = req.hi
        self.retired.move_to_end((req.peer, req.lo))
        while len(self.retired) > MAX_RETIRED:
            self.retired.popitem(last=False)

    def _disprove(self, peer: bytes, now: float) -> None:
        """Cut the peer's claim back to what it proved, and ignore higher ones for a while."""
        _, period = self.distrusted.get(peer, (0.0, DISTRUST_S / 2))
        period = min(2 * period, MAX_DISTRUST_S)
        self.distrusted[peer] = (now + period, period)
        if peer in self.peer_heights:
            self.peer_heights[peer] = min(self.peer_heights[peer], self.proven.get(peer, 0))
        self.disproven += 1

    def _expire(self, now: float) -> None:
        for lo, r in list(self.in_flight.items()):
            if now - r.sent_at > self.timeout_s:
                self._retire(self.in_flight.pop(lo))
                self.penalised[r.peer] = now + PENALTY_S
                self._disprove(r.peer, now)
        for p, until in list(self.penalised.items()):
            if until <= now:
                del self.penalised[p]

    def _covering(self, h: int) -> int | None:
        """The last height of an in-flight or fetched range holding h, or None."""
        for lo, r in self.in_flight.items():
            if lo <= h <= r.hi:
                return r.hi
        for lo, (_, items) in self.fetched.items():
            if lo <= h <= lo + len(items) - 1:
                return lo + len(items) - 1
        return None

    def _before_next_covered(self, lo: int, hi: int) -> int:
        starts = [s for s in (*self.in_flight, *self.fetched) if lo < s <= hi]
        return min(starts) - 1 if starts else hi

    def _pick_peer(self, hi: int, load: dict[bytes, int], now: float) -> bytes | None:
        """Round-robin over peers that have height `hi`, are not penalised and have a free slot."""
        peers = sorted(self.peer_heights)
        for i in range(len(peers)):
            p = peers[(self._next_peer + i) % len(peers)]
            if self.peer_heights[p] >= hi and p not in self.penalised and load.get(p, 0) < self.per_peer:
                self._next_peer = (self._next_peer + i + 1) % len(peers)
                return p
        return None


def first_height(payload: list[dict[str, Any]]) -> int | None:
    """The height of a `blocks` payload's first block, read from its header alone (no tx, no
    certificate decoded); None if the frame is empty or the first block is malformed."""
    if not payload:
        return None
    try:
        d = decode(payload[0]["block"])
    except CodecError:
        return None
    header = d.get("header") if isinstance(d, dict) else None
    height = header.get("height") if isinstance(header, dict) else None
    return height if type(height) is int else None


def decode_items(payload: list[dict[str, Any]]) -> list[tuple[Block, Commit]]:
    """A `blocks` payload (node/wire.py) as blocks and certificates; InvalidBlock if malformed."""
    return [(block_from_parts(e["block"], e["txs"]), commit_from_bytes(e["commit"])) for e in payload]


__all__ = ["SYNC_MODES", "Answer", "BlockSync", "InvalidBlock", "Request", "SyncStats", "decode_items",
           "first_height"]
