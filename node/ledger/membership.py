"""Membership on the ledger: join requests, authority votes, and changes that take effect at H+2.

One immutable `Membership` value holds what the members table cannot: the open join requests,
the open vote tallies, the decided changes that are not in effect yet, and the validator set in
force from each height on. Every function here is pure and returns a new value; the ledger folds
them over the blocks (node/state.py) and the store keeps the latest value next to the block that
produced it. Applied changes are not part of the value: they grow with every admitted member, so
the store appends them to a history of its own (`StateDelta.applied_changes`), and a block that
changes membership rewrites a value whose size is bounded by the caps below, not by history.

Rules (DESIGN.md sections 1-2, CometBFT's H+2):
- `join_request` (signed by the joining node) asks for a role. Anyone may ask; a later request of
  the same node replaces its earlier one. With the genesis admission policy `open`, a request for
  `participant` or `observer` is decided by itself; `authority` always needs votes.
- `member_vote` (signed by an authority in force at the vote's height) votes to `add` a node that
  has asked for that role, or to `remove` a member. A change is decided at the height H of the
  block where more than 2/3 of the authorities in force at H have voted for it, and takes effect
  at H + 2: block H + 1 is already being agreed by the old set when H commits, so every replica
  knows the set for a height before it is needed. Votes of an authority that is removed stop
  counting; when the authority set changes, open tallies are re-counted against the new set.
- Removing the last authority is refused (the chain would have nobody to finalise it).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from consensus.validators import ValidatorSet
from node.errors import CodecError, Reason
from node.ledger.codec import decode, encode
from node.ledger.keys import short_id
from node.ledger.transactions import JoinRequest, MemberVote

EFFECT_DELAY = 2  # a change decided at H takes effect at H + 2
OPEN_ROLES = ("participant", "observer")  # what the open admission policy admits without votes
# A join request costs its sender one signature with a fresh key: the ledger bounds how many are
# open at once, and forgets one that no vote decided within the TTL (issue 11, finding 3).
MAX_OPEN_JOIN_REQUESTS = 1_000
JOIN_REQUEST_TTL_BLOCKS = 50_000


@dataclass(frozen=True)
class JoinRecord:
    node: bytes
    role: str
    name: str
    url: str
    height: int
    tx_id: bytes
    flower_key: bytes = b""  # from the join request; kept into the Change that admits the node


@dataclass(frozen=True)
class Tally:
    node: bytes
    action: str  # "add" | "remove"
    role: str
    voters: tuple[bytes, ...]  # sorted

    @property
    def key(self) -> tuple[bytes, str, str]:
        return (self.node, self.action, self.role)


@dataclass(frozen=True)
class Change:
    node: bytes
    action: str
    role: str
    name: str
    decided: int  # height of the block that decided it
    effective: int  # first height at which it holds
    flower_key: bytes = b""  # an add: the joining node's Flower key (its join request's)


@dataclass(frozen=True)
class ValidatorEpoch:
    from_height: int
    keys: tuple[bytes, ...]  # sorted


@dataclass(frozen=True)
class Membership:
    epochs: tuple[ValidatorEpoch, ...]
    requests: tuple[JoinRecord, ...] = ()
    tallies: tuple[Tally, ...] = ()
    scheduled: tuple[Change, ...] = ()

    # --- queries ---------------------------------------------------------------------------------

    def validators_at(self, height: int) -> tuple[bytes, ...]:
        """The authority keys that decide `height` (known up to two heights above the head)."""
        keys = self.epochs[0].keys
        for e in self.epochs:
            if e.from_height > height:
                break
            keys = e.keys
        return keys

    @property
    def latest_validators(self) -> tuple[bytes, ...]:
        """The set after every decided change, including those not yet in effect."""
        return self.epochs[-1].keys

    def request(self, node: bytes) -> JoinRecord | None:
        return next((r for r in self.requests if r.node == node), None)

    def tally(self, node: bytes, action: str, role: str) -> Tally | None:
        return next((t for t in self.tallies if t.key == (node, action, role)), None)

    def pending_change(self, node: bytes) -> Change | None:
        return next((c for c in self.scheduled if c.node == node), None)

    def changes_at(self, height: int) -> list[Change]:
        return [c for c in self.scheduled if c.effective == height]

    # --- encoding (stored by the store next to the block that produced it) -----------------------

    def to_dict(self) -> dict[str, Any]:
        return {
            "epochs": [{"from": e.from_height, "keys": list(e.keys)} for e in self.epochs],
            "requests": [_without_empty_key(r) for r in self.requests],
            "tallies": [{**dataclasses.asdict(t), "voters": list(t.voters)} for t in self.tallies],
            "scheduled": [_without_empty_key(c) for c in self.scheduled],
        }

    def to_bytes(self) -> bytes:
        return encode(self.to_dict())

    @staticmethod
    def from_bytes(raw: bytes) -> Membership:
        try:
            d = decode(raw)
            return Membership(
                epochs=tuple(ValidatorEpoch(e["from"], tuple(e["keys"])) for e in d["epochs"]),
                requests=tuple(JoinRecord(**r) for r in d["requests"]),
                tallies=tuple(Tally(t["node"], t["action"], t["role"], tuple(t["voters"]))
                              for t in d["tallies"]),
                scheduled=tuple(Change(**c) for c in d["scheduled"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise CodecError(f"stored membership state is corrupt: {exc}") from exc


def _without_empty_key(rec: JoinRecord | Change) -> dict[str, Any]:
    # A record without a Flower key encodes as before the field existed: stored states stay equal.
    d = dataclasses.asdict(rec)
    if not d["flower_key"]:
        del d["flower_key"]
    return d


def member_flower_keys(history: Iterable[Change], members: Iterable[Any], genesis_keys: dict[bytes, bytes],
                       roles: tuple[str, ...]) -> dict[bytes, bytes]:
    """The Flower keys of the current members in `roles` (members: records with .key and .role):
    the key of the change that last admitted the member (`history`: the applied changes, oldest
    first), else its genesis entry's. A member without a key has none (its SuperNode cannot
    authenticate)."""
    admitted = {c.node: c.flower_key for c in history if c.action == "add"}
    out: dict[bytes, bytes] = {}
    for m in members:
        if m.role in roles:
            key = admitted.get(m.key) or genesis_keys.get(m.key, b"")
            if key:
                out[m.key] = key
    return out


def initial_membership(authorities: Iterable[bytes]) -> Membership:
    return Membership(epochs=(ValidatorEpoch(1, tuple(sorted(set(authorities)))),))


class MemberLookup(Protocol):
    """What the checks need of the members table: the current role of a key, or None."""

    def member(self, key: bytes) -> Any: ...


# --- checks ----------------------------------------------------------------------------------------


def check_join(ms: Membership, view: MemberLookup, body: JoinRequest) -> Reason | None:
    current = view.member(body.node)
    if current is not None and current.role == body.role:
        return Reason.ALREADY_MEMBER
    if ms.pending_change(body.node) is not None:
        return Reason.CHANGE_PENDING
    if ms.request(body.node) is None and len(ms.requests) >= MAX_OPEN_JOIN_REQUESTS:
        return Reason.JOIN_REQUESTS_FULL
    return None


def check_vote(ms: Membership, view: MemberLookup, body: MemberVote, height: int) -> Reason | None:
    """Whether an authority's vote may enter block `height` (its signer is checked by the caller)."""
    if body.voter not in ms.validators_at(height):
        return Reason.UNAUTHORIZED
    if ms.pending_change(body.node) is not None:
        return Reason.CHANGE_PENDING
    current = view.member(body.node)
    if body.action == "add":
        if current is not None and current.role == body.role:
            return Reason.ALREADY_MEMBER
        req = ms.request(body.node)
        if req is None or req.role != body.role:
            return Reason.NO_JOIN_REQUEST
    else:
        if current is None or current.role != body.role:
            return Reason.NOT_MEMBER
        if body.role == "authority" and set(ms.latest_validators) <= {body.node}:
            return Reason.LAST_AUTHORITY
    tally = ms.tally(body.node, body.action, body.role)
    if tally is not None and body.voter in tally.voters:
        return Reason.DUPLICATE_VOTE
    return None


# --- transitions -----------------------------------------------------------------------------------


def record_join(ms: Membership, body: JoinRequest, tx_id: bytes, height: int, admission: str) -> Membership:
    rec = JoinRecord(body.node, body.role, body.name, body.url, height, tx_id, body.flower_key)
    ms = dataclasses.replace(ms, requests=_sorted_requests([*_without(ms.requests, body.node), rec]))
    if admission == "open" and body.role in OPEN_ROLES:
        ms = _decide(ms, body.node, "add", body.role, height)
    return ms


def record_vote(ms: Membership, body: MemberVote, height: int) -> Membership:
    old = ms.tally(body.node, body.action, body.role)
    voters = tuple(sorted({*(old.voters if old else ()), body.voter}))
    tally = Tally(body.node, body.action, body.role, voters)
    others = tuple(t for t in ms.tallies if t.key != tally.key)
    ms = dataclasses.replace(ms, tallies=tuple(sorted((*others, tally), key=lambda t: t.key)))
    return _decide_if_quorum(ms, tally, height)


def begin_height(ms: Membership, height: int) -> tuple[Membership, list[Change]]:
    """Expire undecided join requests, then apply the changes that take effect at `height`, before
    its block's transactions. Returns the new value (`ms` itself when nothing changed) and the
    changes applied (the caller updates the members table with them)."""
    expired = {r.node for r in ms.requests if height - r.height >= JOIN_REQUEST_TTL_BLOCKS}
    if expired:
        ms = dataclasses.replace(
            ms,
            requests=tuple(r for r in ms.requests if r.node not in expired),
            tallies=tuple(t for t in ms.tallies if not (t.action == "add" and t.node in expired)),
        )
    due = ms.changes_at(height)
    if not due:
        return ms, []
    ms = dataclasses.replace(ms, scheduled=tuple(c for c in ms.scheduled if c.effective != height))
    if any(c.role == "authority" for c in due):
        # Votes of removed authorities no longer count; open tallies are re-counted against the
        # set now in force, which can decide a change nobody has to vote on again.
        in_force = set(ms.validators_at(height))
        tallies = tuple(
            Tally(t.node, t.action, t.role, tuple(v for v in t.voters if v in in_force)) for t in ms.tallies
        )
        ms = dataclasses.replace(ms, tallies=tuple(t for t in tallies if t.voters))
        for t in ms.tallies:
            ms = _decide_if_quorum(ms, t, height)
    return ms, due


def _decide_if_quorum(ms: Membership, tally: Tally, height: int) -> Membership:
    in_force = ms.validators_at(height)
    counted = len(set(tally.voters) & set(in_force))
    if counted < ValidatorSet.of(in_force).quorum:  # "more than 2/3 of the current authorities"
        return ms
    if ms.pending_change(tally.node) is not None:
        return ms  # another change of this node was decided first; this tally waits
    return _decide(ms, tally.node, tally.action, tally.role, height)


def _decide(ms: Membership, node: bytes, action: str, role: str, height: int) -> Membership:
    req = ms.request(node)
    name = req.name if req is not None else ""
    flower_key = req.flower_key if req is not None and action == "add" else b""
    change = Change(node, action, role, name, height, height + EFFECT_DELAY, flower_key)
    tallies = tuple(t for t in ms.tallies if t.node != node)
    requests = _without(ms.requests, node) if action == "add" else ms.requests
    epochs = ms.epochs
    keys = set(ms.latest_validators)
    if action == "add" and role == "authority":
        keys.add(node)
    else:
        # A removal, or a role change of an authority to another role, leaves the set.
        keys.discard(node)
    new_keys = tuple(sorted(keys))
    if new_keys != ms.latest_validators:
        epoch = ValidatorEpoch(change.effective, new_keys)
        same_block = epochs[-1].from_height == change.effective  # two changes decided in one block
        epochs = (*epochs[:-1], epoch) if same_block else (*epochs, epoch)
    return dataclasses.replace(
        ms, tallies=tallies, requests=requests, scheduled=(*ms.scheduled, change), epochs=epochs
    )


def _without(requests: tuple[JoinRecord, ...], node: bytes) -> tuple[JoinRecord, ...]:
    return tuple(r for r in requests if r.node != node)


def _sorted_requests(requests: Iterable[JoinRecord]) -> tuple[JoinRecord, ...]:
    return tuple(sorted(requests, key=lambda r: r.node))


# --- views (API /status, `ledger status`, `member list`) ------------------------------------------


def to_json(
    ms: Membership, members: Iterable[Any], height: int, history: Iterable[Change] = ()
) -> dict[str, Any]:
    """Members in force after `height` and what is under way, with keys as hex and short ids;
    `history` is the applied changes to list (the caller bounds it)."""
    in_force = ms.validators_at(height + 1)
    quorum = ValidatorSet.of(in_force).quorum

    def ident(key: bytes) -> dict[str, str]:
        return {"node_id": short_id(key), "public_key": key.hex()}

    return {
        "members": [{**ident(m.key), "name": m.name, "role": m.role, "since_height": m.since_height}
                    for m in members],
        "join_requests": [{**ident(r.node), "role": r.role, "name": r.name, "url": r.url, "height": r.height,
                           "tx": r.tx_id.hex()} for r in ms.requests],
        "votes": [{**ident(t.node), "action": t.action, "role": t.role,
                   "voters": [short_id(v) for v in t.voters],
                   "counted": len(set(t.voters) & set(in_force)), "needed": quorum} for t in ms.tallies],
        "scheduled": [{**ident(c.node), "action": c.action, "role": c.role, "name": c.name,
                       "decided_height": c.decided, "effective_height": c.effective} for c in ms.scheduled],
        "history": [{**ident(c.node), "action": c.action, "role": c.role, "name": c.name,
                     "decided_height": c.decided, "effective_height": c.effective} for c in history],
        "validator_sets": [{"from_height": e.from_height, "validators": [short_id(k) for k in e.keys]}
                           for e in ms.epochs],
    }
