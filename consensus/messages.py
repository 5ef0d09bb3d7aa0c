"""Consensus messages as the paper names them: PROPOSAL, PREVOTE, PRECOMMIT.

The core treats block values as opaque: it sees a value and its id (the block hash). Signatures
are opaque bytes too; the host signs outgoing messages (through the signer it hands the core)
and verifies incoming ones before they reach the core.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import IntEnum
from typing import Any


class Step(IntEnum):
    PROPOSE = 0
    PREVOTE = 1
    PRECOMMIT = 2


class VoteType(IntEnum):
    PREVOTE = 1
    PRECOMMIT = 2

    @property
    def kind(self) -> bytes:
        """Signing domain of this vote type (see node/codec.py sign_bytes)."""
        return b"prevote" if self is VoteType.PREVOTE else b"precommit"


@dataclass(frozen=True)
class Vote:
    """PREVOTE(h, r, id(v) or nil) / PRECOMMIT(h, r, id(v) or nil); block_id None means nil."""

    type: VoteType
    height: int
    round: int
    block_id: bytes | None
    validator: bytes
    signature: bytes = b""

    def signing_fields(self) -> dict[str, Any]:
        """The fields a vote signature covers (everything but the signature)."""
        return {
            "type": int(self.type),
            "height": self.height,
            "round": self.round,
            "block_id": self.block_id,
            "validator": self.validator,
        }

    def to_wire(self) -> dict[str, Any]:
        return {**self.signing_fields(), "signature": self.signature}

    @staticmethod
    def from_wire(d: dict[str, Any]) -> Vote:
        return Vote(
            type=VoteType(d["type"]),
            height=d["height"],
            round=d["round"],
            block_id=d["block_id"],
            validator=d["validator"],
            signature=d["signature"],
        )

    def signed(self, signature: bytes) -> Vote:
        return replace(self, signature=signature)


@dataclass(frozen=True)
class Proposal:
    """PROPOSAL(h, r, v, validRound). The signature covers the value's id, not the value itself."""

    height: int
    round: int
    value: Any = field(compare=False, repr=False)
    value_id: bytes
    valid_round: int
    proposer: bytes
    signature: bytes = b""

    def signing_fields(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "round": self.round,
            "block_id": self.value_id,
            "valid_round": self.valid_round,
            "proposer": self.proposer,
        }

    def signed(self, signature: bytes) -> Proposal:
        return replace(self, signature=signature)


Message = Proposal | Vote


def sender(msg: Message) -> bytes:
    return msg.proposer if isinstance(msg, Proposal) else msg.validator
