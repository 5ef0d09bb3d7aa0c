"""A minimal application and signer for driving the consensus core by hand in unit tests."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

from consensus.events import Action, Broadcast, Decide, PersistState, ScheduleTimeout
from consensus.messages import Proposal, Vote, VoteType
from consensus.validators import ValidatorSet

KEYS = [bytes([i]) * 32 for i in range(1, 11)]


def vid(value: bytes) -> bytes:
    return hashlib.sha256(value).digest()


@dataclass
class FakeApp:
    vset: ValidatorSet
    pending: bool = True
    invalid: set[bytes] = field(default_factory=set)
    untimely: set[bytes] = field(default_factory=set)
    proposed: int = 0

    def validators(self, height: int) -> ValidatorSet:
        return self.vset

    def propose(self, height: int, round: int) -> bytes:
        self.proposed += 1
        return f"block h={height} r={round} #{self.proposed}".encode()

    def valid(self, height: int, value: bytes) -> bool:
        return value not in self.invalid

    def timely(self, height: int, round: int, value: bytes) -> bool:
        return value not in self.untimely

    def value_id(self, value: bytes) -> bytes:
        return vid(value)

    def has_pending(self) -> bool:
        return self.pending


@dataclass
class FakeSigner:
    public_key: bytes

    def sign_vote(self, vote: Vote) -> Vote:
        return replace(vote, signature=b"sig")

    def sign_proposal(self, proposal: Proposal) -> Proposal:
        return replace(proposal, signature=b"sig")


def vote(t: VoteType, h: int, r: int, block: bytes | None, who: int) -> Vote:
    return Vote(t, h, r, vid(block) if block is not None else None, KEYS[who], b"sig")


def proposal(h: int, r: int, value: bytes, valid_round: int, who: int) -> Proposal:
    return Proposal(h, r, value, vid(value), valid_round, KEYS[who], b"sig")


def broadcasts(actions: list[Action]) -> list[Proposal | Vote]:
    return [a.message for a in actions if isinstance(a, Broadcast)]


def votes_of(actions: list[Action], t: VoteType) -> list[Vote]:
    return [m for m in broadcasts(actions) if isinstance(m, Vote) and m.type is t]


def timeouts(actions: list[Action]) -> list[ScheduleTimeout]:
    return [a for a in actions if isinstance(a, ScheduleTimeout)]


def decisions(actions: list[Action]) -> list[Decide]:
    return [a for a in actions if isinstance(a, Decide)]


def persisted(actions: list[Action]) -> list[PersistState]:
    return [a for a in actions if isinstance(a, PersistState)]
