"""Byzantine validators: a correct core underneath, its outgoing messages distorted.

They sign with their real key (bypassing the core's double-sign guard), so what they send is
exactly what a compromised authority could send.
"""

from __future__ import annotations

import random
from dataclasses import replace
from enum import Enum

from consensus.messages import Message, Proposal, Vote, VoteType
from node.ledger.keys import NodeKey, sign_vote


class Behaviour(str, Enum):
    SILENT = "silent"  # says nothing at all
    EQUIVOCATE = "equivocate"  # different proposals / votes to different peers
    DOUBLE_VOTE = "double_vote"  # two conflicting votes to everybody
    BAD_SIGNATURE = "bad_signature"  # forged and corrupted signatures
    FUTURE_ROUNDS = "future_rounds"  # votes for far-away rounds to drag others along
    # Issue 11's attacks; a seed draws only from SEEDED_BEHAVIOURS, so older seeds replay as they
    # did: these run when forced (scripts/simulate.py --behaviour NAME, tests/test_simulation.py).
    FORGED_PROPOSAL = "forged_proposal"  # its proposal's signature on another block, to half the peers
    SKEW_EDGE = "skew_edge"  # its blocks timed at the edge of the clock skew of correct nodes
    # Its proposals carry a padded last_commit (junk precommits past the quorum, a duplicate),
    # correctly hashed into the header and signed: a block no correct node may accept.
    PADDED_CERTIFICATE = "padded_certificate"


SEEDED_BEHAVIOURS = (Behaviour.SILENT, Behaviour.EQUIVOCATE, Behaviour.DOUBLE_VOTE,
                     Behaviour.BAD_SIGNATURE, Behaviour.FUTURE_ROUNDS)


class Byzantine:
    def __init__(self, behaviour: Behaviour, key: NodeKey, chain_id: str, rng: random.Random) -> None:
        self.behaviour = behaviour
        self.key = key
        self.chain_id = chain_id
        self.rng = rng

    def _vote(self, v: Vote, block_id: bytes | None) -> Vote:
        return sign_vote(self.key, self.chain_id, replace(v, block_id=block_id, signature=b""))

    def _other_id(self, block_id: bytes | None) -> bytes | None:
        if block_id is None:
            return self.rng.randbytes(32)
        return None if self.rng.random() < 0.5 else self.rng.randbytes(32)

    def distort(
        self, msg: Message, peers: list[int], alt_proposal: Proposal | None
    ) -> list[tuple[int, Message]]:
        """What to send to whom instead of broadcasting `msg` honestly."""
        b = self.behaviour
        if b is Behaviour.SILENT:
            return []
        half = set(self.rng.sample(peers, len(peers) // 2))
        if b is Behaviour.EQUIVOCATE:
            if isinstance(msg, Proposal):
                other: Message = alt_proposal if alt_proposal is not None else msg
            else:
                other = self._vote(msg, self._other_id(msg.block_id))
            return [(p, other if p in half else msg) for p in peers]
        if b is Behaviour.DOUBLE_VOTE:
            if isinstance(msg, Proposal):
                out: list[tuple[int, Message]] = [(p, msg) for p in peers]
                if alt_proposal is not None:
                    out += [(p, alt_proposal) for p in peers]
                return out
            other = self._vote(msg, self._other_id(msg.block_id))
            return [(p, m) for p in peers for m in (msg, other)]
        if b is Behaviour.FORGED_PROPOSAL:
            if isinstance(msg, Proposal) and alt_proposal is not None:
                forged = replace(msg, value=alt_proposal.value)  # id and signature of the genuine one
                return [(p, forged if p in half else msg) for p in peers]
            return [(p, msg) for p in peers]
        if b is Behaviour.PADDED_CERTIFICATE:
            if isinstance(msg, Proposal) and alt_proposal is not None:
                return [(p, alt_proposal) for p in peers]  # cluster.py padded the certificate
            return [(p, msg) for p in peers]
        if b is Behaviour.SKEW_EDGE:
            # Its blocks are timed at the skew edge (cluster.py); it prevotes with the others so that
            # the ones whose clock accepts the block lock on it, and withholds its precommits so
            # that only those locked nodes and the one that refused the block remain.
            if isinstance(msg, Vote) and msg.type is VoteType.PRECOMMIT:
                return []
            return [(p, msg) for p in peers]
        if b is Behaviour.BAD_SIGNATURE:
            forged = replace(msg, signature=self.rng.randbytes(64))
            if isinstance(msg, Vote):
                forged = replace(forged, block_id=self._other_id(msg.block_id))
            return [(p, forged) for p in peers] + [(p, msg) for p in peers if self.rng.random() < 0.5]
        # FUTURE_ROUNDS
        out = [(p, msg) for p in peers]
        if isinstance(msg, Vote):
            far = replace(msg, round=msg.round + self.rng.randint(1, 50), type=VoteType.PRECOMMIT)
            out += [(p, self._vote(far, None)) for p in peers]
        return out
