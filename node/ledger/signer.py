"""The consensus core's Signer, backed by the node key; and commit certificates signed directly
with known keys (test factories and benchmarks that build a chain without running consensus)."""

from __future__ import annotations

from collections.abc import Sequence

from consensus.messages import Proposal, Vote, VoteType
from node.ledger.blocks import Commit
from node.ledger.keys import NodeKey, sign_proposal, sign_vote


class KeySigner:
    def __init__(self, key: NodeKey, chain_id: str) -> None:
        self.key = key
        self.chain_id = chain_id

    @property
    def public_key(self) -> bytes:
        return self.key.public

    def sign_vote(self, vote: Vote) -> Vote:
        return sign_vote(self.key, self.chain_id, vote)

    def sign_proposal(self, proposal: Proposal) -> Proposal:
        return sign_proposal(self.key, self.chain_id, proposal)


def sign_commit(
    signers: Sequence[NodeKey], chain_id: str, height: int, round: int, block_id: bytes
) -> Commit:
    """A commit certificate with a PRECOMMIT from each of `signers`."""
    votes = tuple(
        sign_vote(k, chain_id, Vote(VoteType.PRECOMMIT, height, round, block_id, k.public)) for k in signers
    )
    return Commit(height, round, block_id, votes)
