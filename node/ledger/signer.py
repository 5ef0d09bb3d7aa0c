"""The consensus core's Signer, backed by the node key."""

from __future__ import annotations

from consensus.messages import Proposal, Vote
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
