"""Per-peer bookkeeping: rate limits, misbehaviour score and counters; node-wide: back-off bans
and the peer-exchange address book. Pure: the clock is passed in.

The transport asks `PeerState.admit(nbytes, now)` before it decodes a frame, reports what went
wrong with `penalize(reason, now)`, and disconnects when that returns True. A peer cut off for
misbehaviour goes on the `BanList` (by node key and by address) for a period that doubles per
offence. Addresses learnt by peer exchange go through the `AddressBook`, bounded per announcing
peer and in total. Keeping this free of asyncio lets tests drive hours of simulated traffic in
microseconds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Final

from node.net import wire

# Misbehaviour points per offence. Malformed input is never an honest accident between two
# correct implementations of one protocol, so five malformed frames (5 x 20) end the connection.
# Rate-limit drops cost little: an honest peer can burst during a catch-up, a flood cannot last.
# A handler error not attributable to the peer (a local bug) costs almost nothing, but a peer
# that keeps hitting the same crash path is still cut off eventually.
DEFAULT_PENALTIES: Final[dict[str, float]] = {
    "oversize": 20.0,
    "codec": 20.0,
    "protocol_violation": 20.0,
    "text_frame": 20.0,
    "rate_limited": 2.0,
    "remote_error": 10.0,
    # Consensus messages a correct peer never sends: it relays only what it verified itself.
    "bad_signature": 20.0,
    "forged_proposal": 50.0,
    "malformed_block": 20.0,
    "unproven_height": 20.0,
    "not_a_validator": 20.0,
    "unrequested_blocks": 20.0,
    # Asking for more than the serving budget: an honest syncer (two requests in flight per peer)
    # stays far below it, a loop of GET_BLOCKS does not.
    "serve_budget": 5.0,
    # A client over its tx quota, or with a bigger batch than a client may send.
    "client_quota": 2.0,
    "client_batch_too_large": 20.0,
    # Txs a client submitted that the ledger refused, by reason (`client_tx:<reason>`, node/net/
    # gateway.py). A forged signature is never an honest mistake and costs every node a signature
    # check: ten end the connection. A re-sent reading (a sensor gateway re-submitting after a
    # reconnect what may not have been finalized) is an honest event and nearly free, but not free:
    # committed readings are public, and each replay costs a signature check too.
    "client_tx:bad_signature": 10.0,
    "client_tx:wrong_chain": 10.0,
    "client_tx:malformed": 5.0,
    "client_tx:unknown_device": 1.0,
    "client_tx:replayed_sequence": 0.1,
    "client_tx:duplicate": 0.1,
    # A join request beyond the node-wide join budget (node/host/core.py): a joiner sends one, a
    # client sending them by the hundred is flooding.
    "client_tx:rate_limited": 1.0,
    "client_tx:mempool_full": 0.0,
    "client_tx:halted": 0.0,
    "handler_error": 1.0,
    # A sealed frame that does not open: the link is unusable after it, so it is closed at once.
    "bad_seal": 100.0,
}
DEFAULT_THRESHOLD: Final = 100.0
DEFAULT_DECAY_PER_S: Final = 0.5  # slow: a peer misbehaving once a minute is still cut off


class TokenBucket:
    """Classic token bucket: `rate` tokens per second, at most `burst` banked."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("token bucket rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self._tokens = burst
        self._last = now

    def _refill(self, now: float) -> None:
        # max(): a clock that steps backwards must not drain the bucket.
        elapsed = max(0.0, now - self._last)
        self._tokens = min(self.burst, self._tokens + elapsed * self.rate)
        self._last = max(self._last, now)

    def available(self, now: float) -> float:
        self._refill(now)
        return self._tokens

    def take(self, amount: float, now: float) -> bool:
        self._refill(now)
        if amount > self._tokens:
            return False
        self._tokens -= amount
        return True

    def charge(self, amount: float, now: float) -> None:
        """Take `amount` even if it is more than is banked: a debt the refill pays back first (for
        costs known only after the work, such as the bytes of a block read from disk)."""
        self._refill(now)
        self._tokens -= amount


@dataclass(frozen=True, slots=True)
class RateLimits:
    """Per-peer limits on inbound frames. A single frame larger than `bytes_burst` is always refused,
    so `bytes_burst` should be at least the frame size limit."""

    messages_per_s: float = 500.0
    messages_burst: float = 1000.0
    bytes_per_s: float = 8 * 1024 * 1024
    bytes_burst: float = 16 * 1024 * 1024


class RateLimiter:
    """Two buckets, one for frames and one for bytes; a frame passes only if both have room."""

    __slots__ = ("bytes", "messages")

    def __init__(self, limits: RateLimits, now: float) -> None:
        self.messages = TokenBucket(limits.messages_per_s, limits.messages_burst, now)
        self.bytes = TokenBucket(limits.bytes_per_s, limits.bytes_burst, now)

    def allow(self, nbytes: int, now: float) -> bool:
        # Check both before taking from either, so a refused frame costs no tokens.
        if self.messages.available(now) < 1 or self.bytes.available(now) < nbytes:
            return False
        self.messages.take(1, now)
        self.bytes.take(nbytes, now)
        return True


@dataclass(frozen=True, slots=True)
class ServeLimits:
    """What one peer may make this node read and send for it per second, answering GET_BLOCKS.
    Without it a peer asking 500 times a second had up to 2 MiB read and sent for each request.
    An honest catch-up (README: up to 24,000 readings or 12 full blocks a second, or a few
    thousand empty ones, spread over every peer) stays below it."""

    blocks_per_s: float = 4000.0
    blocks_burst: float = 8000.0
    bytes_per_s: float = 32 * 1024 * 1024
    bytes_burst: float = 64 * 1024 * 1024


class ServeBudget:
    """Block-sync serving budget of one peer: a bucket of blocks and one of bytes."""

    __slots__ = ("blocks", "bytes")

    def __init__(self, limits: ServeLimits, now: float) -> None:
        self.blocks = TokenBucket(limits.blocks_per_s, limits.blocks_burst, now)
        self.bytes = TokenBucket(limits.bytes_per_s, limits.bytes_burst, now)

    def grant(self, now: float) -> tuple[int, int] | None:
        """(blocks, bytes) one answer may hold now, or None: answer with nothing."""
        blocks, nbytes = int(self.blocks.available(now)), int(self.bytes.available(now))
        if blocks < 1 or nbytes < 1:
            return None
        return blocks, nbytes

    def charge(self, blocks: int, nbytes: int, now: float) -> None:
        # An answer costs at least one block: an empty one was still a request to serve.
        self.blocks.charge(max(1, blocks), now)
        self.bytes.charge(nbytes, now)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """Per /client connection: txs admitted per second and per frame. Above what one node admits
    (README: about 2,400 readings/s finalized by the whole federation), so an honest client never
    meets it; a client that keeps going past it is scored and cut off."""

    txs_per_s: float = 5000.0
    txs_burst: float = 10_000.0
    max_txs_per_frame: int = wire.MAX_CLIENT_TX_BATCH  # what node.net.client sends at most


class MisbehaviourScore:
    """Points for offences, decaying linearly over time; over `threshold` means disconnect."""

    __slots__ = ("_last", "_value", "decay_per_s", "reasons", "threshold")

    def __init__(self, now: float, threshold: float = DEFAULT_THRESHOLD,
                 decay_per_s: float = DEFAULT_DECAY_PER_S) -> None:
        self.threshold = threshold
        self.decay_per_s = decay_per_s
        self._value = 0.0
        self._last = now
        self.reasons: Counter[str] = Counter()

    def value(self, now: float) -> float:
        elapsed = max(0.0, now - self._last)
        self._value = max(0.0, self._value - elapsed * self.decay_per_s)
        self._last = max(self._last, now)
        return self._value

    def add(self, points: float, reason: str, now: float) -> bool:
        """Record an offence; True when the score now exceeds the threshold."""
        self._value = self.value(now) + points
        self.reasons[reason] += 1
        return self._value > self.threshold

    @property
    def exceeded(self) -> bool:
        return self._value > self.threshold


@dataclass
class Counters:
    """Traffic counters (per peer, and once more for the whole node)."""

    frames_in: int = 0
    frames_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    rejected: Counter[str] = field(default_factory=Counter)  # inbound frames refused, by reason
    dropped_out: Counter[str] = field(default_factory=Counter)  # outbound frames not sent, by reason

    def to_json(self) -> dict[str, Any]:
        return {
            "frames_in": self.frames_in,
            "frames_out": self.frames_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "rejected": dict(self.rejected),
            "dropped_out": dict(self.dropped_out),
        }


class PeerState:
    """Everything the transport tracks about one connection besides the socket itself."""

    __slots__ = ("counters", "limiter", "penalties", "score", "serving", "totals")

    def __init__(
        self,
        now: float,
        limits: RateLimits | None = None,
        *,
        threshold: float = DEFAULT_THRESHOLD,
        decay_per_s: float = DEFAULT_DECAY_PER_S,
        penalties: dict[str, float] | None = None,
        totals: Counters | None = None,
        serve_limits: ServeLimits | None = None,
    ) -> None:
        self.limiter = RateLimiter(limits or RateLimits(), now)
        self.serving = ServeBudget(serve_limits or ServeLimits(), now)  # what it may ask us to send
        self.score = MisbehaviourScore(now, threshold, decay_per_s)
        self.penalties = penalties if penalties is not None else DEFAULT_PENALTIES
        self.counters = Counters()
        # The node-wide counters, updated alongside: peers come and go, the totals must not.
        self.totals = totals if totals is not None else Counters()

    def received(self, nbytes: int) -> None:
        for c in (self.counters, self.totals):
            c.frames_in += 1
            c.bytes_in += nbytes

    def sent(self, nbytes: int) -> None:
        for c in (self.counters, self.totals):
            c.frames_out += 1
            c.bytes_out += nbytes

    def dropped(self, reason: str) -> None:
        for c in (self.counters, self.totals):
            c.dropped_out[reason] += 1

    def admit(self, nbytes: int, now: float) -> bool:
        """Rate limit one inbound frame (before it is decoded). False: drop it, and it was penalized."""
        if self.limiter.allow(nbytes, now):
            return True
        self.penalize("rate_limited", now)
        return False

    def penalize(self, reason: str, now: float, default: float = 10.0) -> bool:
        """Count a rejected frame and score it; True when the peer should be disconnected."""
        for c in (self.counters, self.totals):
            c.rejected[reason] += 1
        return self.score.add(self.penalties.get(reason, default), reason, now)

    def to_json(self, now: float) -> dict[str, Any]:
        return {**self.counters.to_json(), "score": round(self.score.value(now), 2)}


class BanList:
    """Back-off bans: the n-th offence of a node key or an address bans it for base * 2^(n-1)
    seconds, capped. An entry is forgotten `cap` seconds after its ban ended, so a peer that once
    misbehaved and then behaved for that long starts over at `base`. At most `max_entries` are
    kept (addresses are cheap for an attacker): when full, the entry whose ban ends first goes."""

    def __init__(self, base: float = 60.0, cap: float = 24 * 3600.0, max_entries: int = 4096) -> None:
        if base <= 0 or cap < base or max_entries < 1:
            raise ValueError("ban base must be positive, cap at least base, max_entries at least 1")
        self.base = base
        self.cap = cap
        self.max_entries = max_entries
        self._entries: dict[Hashable, tuple[int, float]] = {}  # id -> (offences, banned until)

    def ban(self, ids: Iterable[Hashable], now: float) -> float:
        """Record one offence against each id; returns the longest ban it imposed (seconds)."""
        longest = 0.0
        for ident in ids:
            offences, until = self._entries.pop(ident, (0, 0.0))
            if now > until + self.cap:
                offences = 0
            offences += 1
            duration = min(self.cap, self.base * 2 ** min(offences - 1, 60))
            if len(self._entries) >= self.max_entries:
                del self._entries[min(self._entries, key=lambda k: self._entries[k][1])]
            self._entries[ident] = (offences, now + duration)
            longest = max(longest, duration)
        return longest

    def banned_for(self, ident: Hashable, now: float) -> float:
        """Seconds left of `ident`'s ban; 0.0 when it is not banned."""
        entry = self._entries.get(ident)
        if entry is None:
            return 0.0
        if now > entry[1] + self.cap:
            del self._entries[ident]
            return 0.0
        return max(0.0, entry[1] - now)

    def offences(self, ident: Hashable) -> int:
        entry = self._entries.get(ident)
        return entry[0] if entry else 0

    def active(self, now: float) -> int:
        return sum(until > now for _, until in self._entries.values())

    def __len__(self) -> int:
        return len(self._entries)


class AddressBook:
    """Dial targets learnt by peer exchange: who announced each, bounded per peer and in total.

    A peer can name at most `per_peer` addresses at a time and the book holds at most `max_urls`,
    so one peer cannot fill the node's dial slots with arbitrary URLs; an address several peers
    announced ranks above one a single peer did (`votes`). An address whose dial failed is not
    dialled again for `hold` seconds, however often it is announced. A peer's announcements are
    forgotten when it disconnects."""

    def __init__(self, per_peer: int = 32, max_urls: int = 256, hold: float = 60.0) -> None:
        self.per_peer = per_peer
        self.max_urls = max_urls
        self.hold = hold
        self._by_url: dict[str, set[bytes]] = {}
        self._by_peer: dict[bytes, set[str]] = {}
        self._failed: dict[str, float] = {}  # url -> when its last dial failed

    def announce(self, peer: bytes, url: str) -> bool:
        """Record that `peer` announced `url`; False when a bound refused it (ignore the url)."""
        mine = self._by_peer.setdefault(peer, set())
        if url in mine:
            return True
        if len(mine) >= self.per_peer:
            return False
        if url not in self._by_url and len(self._by_url) >= self.max_urls:
            return False
        mine.add(url)
        self._by_url.setdefault(url, set()).add(peer)
        return True

    def forget_peer(self, peer: bytes) -> None:
        for url in self._by_peer.pop(peer, ()):
            who = self._by_url.get(url)
            if who is not None:
                who.discard(peer)
                if not who:
                    del self._by_url[url]
                    self._failed.pop(url, None)

    def votes(self, url: str) -> int:
        return len(self._by_url.get(url, ()))

    def failed(self, url: str, now: float) -> None:
        if url in self._by_url:  # bounded with the book: only addresses it holds are remembered
            self._failed[url] = now

    def succeeded(self, url: str) -> None:
        self._failed.pop(url, None)

    def dialable(self, url: str, now: float) -> bool:
        when = self._failed.get(url)
        return when is None or now - when >= self.hold

    def __len__(self) -> int:
        return len(self._by_url)
