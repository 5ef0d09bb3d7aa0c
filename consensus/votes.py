"""The message log of one height: proposals and votes, counted by distinct validator."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from consensus.messages import Proposal, Vote, VoteType

# An equivocating proposer could flood a round with values; a few are kept so that a decision on one
# of them can still be recognised here (anything beyond that arrives through block sync).
MAX_PROPOSALS_PER_ROUND = 8


@dataclass
class VoteSet:
    """Votes of one (round, type). The first vote of each validator counts; a later different
    vote from the same validator is an equivocation and does not count."""

    votes: dict[bytes, Vote] = field(default_factory=dict)
    tally: Counter[bytes | None] = field(default_factory=Counter)

    def add(self, vote: Vote) -> Vote | None:
        """Adds `vote`; returns the conflicting earlier vote if this one equivocates."""
        earlier = self.votes.get(vote.validator)
        if earlier is not None:
            return earlier if earlier.block_id != vote.block_id else None
        self.votes[vote.validator] = vote
        self.tally[vote.block_id] += 1
        return None

    def count(self, block_id: bytes | None) -> int:
        return self.tally[block_id]

    def total(self) -> int:
        return len(self.votes)

    def for_block(self, block_id: bytes | None) -> tuple[Vote, ...]:
        return tuple(v for v in self.votes.values() if v.block_id == block_id)

    def blocks_with(self, threshold: int) -> list[bytes]:
        return [b for b, c in self.tally.items() if b is not None and c >= threshold]


@dataclass
class RoundLog:
    """Everything received for one round of the current height."""

    proposals: dict[bytes, Proposal] = field(default_factory=dict)
    first_proposal: Proposal | None = None
    prevotes: VoteSet = field(default_factory=VoteSet)
    precommits: VoteSet = field(default_factory=VoteSet)
    senders: set[bytes] = field(default_factory=set)

    def votes(self, vote_type: VoteType) -> VoteSet:
        return self.prevotes if vote_type is VoteType.PREVOTE else self.precommits

    def add_proposal(self, proposal: Proposal) -> Proposal | None:
        """Keeps every distinct proposal of the round's proposer (a decision may need any of them);
        returns an earlier different proposal when the proposer equivocates."""
        self.senders.add(proposal.proposer)
        if proposal.value_id in self.proposals or len(self.proposals) >= MAX_PROPOSALS_PER_ROUND:
            return None
        self.proposals[proposal.value_id] = proposal
        if self.first_proposal is None:
            self.first_proposal = proposal
            return None
        return self.first_proposal
