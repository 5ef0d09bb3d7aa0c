"""Consensus messages and the persisted signed state to and from wire maps (see node/wire.py for
the envelope checks that run before these)."""

from __future__ import annotations

from typing import Any

from consensus.events import SignedState
from consensus.messages import Message, Proposal, Step, Vote
from node.errors import CodecError, InvalidBlock, ProtocolViolation
from node.ledger import codec
from node.ledger.blocks import Block


def proposal_to_wire(p: Proposal) -> dict[str, Any]:
    return {**p.signing_fields(), "signature": p.signature, "block": p.value.wire_bytes}


def proposal_from_wire(m: dict[str, Any]) -> Proposal:
    """A Proposal whose block is structurally sound; the core checks block hash == block_id."""
    try:
        block = Block.from_wire(codec.decode(m["block"]))
    except (InvalidBlock, CodecError) as exc:
        raise ProtocolViolation("malformed_block", f"proposal carries a malformed block: {exc}") from exc
    return Proposal(
        height=m["height"],
        round=m["round"],
        value=block,
        value_id=m["block_id"],
        valid_round=m["valid_round"],
        proposer=m["proposer"],
        signature=m["signature"],
    )


def message_to_wire(msg: Message) -> tuple[str, dict[str, Any]]:
    if isinstance(msg, Proposal):
        return "proposal", proposal_to_wire(msg)
    return "vote", msg.to_wire()


def encode_signed_state(s: SignedState) -> bytes:
    return codec.encode(
        {
            "height": s.height,
            "round": s.round,
            "step": int(s.step),
            "locked_round": s.locked_round,
            "locked_value": s.locked_value.wire_bytes if s.locked_value is not None else None,
            "valid_round": s.valid_round,
            "valid_value": s.valid_value.wire_bytes if s.valid_value is not None else None,
            "signed": [
                list(message_to_wire(m)) for m in s.signed
            ],
            "proof": [v.to_wire() for v in s.proof],
            "round_proof": [v.to_wire() for v in s.round_proof],
        }
    )


def decode_signed_state(data: bytes) -> SignedState:
    """Inverse of encode_signed_state. Raises CodecError if the stored bytes are corrupt: the node
    then refuses to start rather than risk signing against a state it cannot read."""
    d = codec.decode(data)
    try:
        signed: list[Message] = []
        for kind, m in d["signed"]:
            signed.append(proposal_from_wire(m) if kind == "proposal" else Vote.from_wire(m))
        return SignedState(
            height=d["height"],
            round=d["round"],
            step=Step(d["step"]),
            locked_round=d["locked_round"],
            locked_value=_block(d["locked_value"]),
            valid_round=d["valid_round"],
            valid_value=_block(d["valid_value"]),
            signed=tuple(signed),
            proof=tuple(Vote.from_wire(v) for v in d["proof"]),
            # States persisted before round proofs were kept have none: nothing to give back.
            round_proof=tuple(Vote.from_wire(v) for v in d.get("round_proof", [])),
        )
    except (KeyError, TypeError, ValueError, InvalidBlock, ProtocolViolation) as exc:
        raise CodecError(f"persisted consensus state is unreadable: {exc}") from exc


def _block(data: bytes | None) -> Block | None:
    return None if data is None else Block.from_wire(codec.decode(data))
