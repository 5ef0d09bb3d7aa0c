"""The message log of one height: proposals and votes, counted by distinct validator."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from consensus.messages import Proposal, Vote, VoteType

# An equivocating proposer could flood a round with values; a few are kept so that a decision on one
# of them can still be recognised here (anything beyond that arrives through block sync).
MAX_PROPOSALS_PER_ROUND = 8


# A validator that votes for several values in one round is Byzantine; its votes still count for
# each value, as the paper counts messages (safety holds: two quorums for different values would
# need a correct validator in both). Beyond a few values per validator the rest are ignored.
MAX_VALUES_PER_VALIDATOR = 3
# Each validator's first vote always counts (a correct validator votes once per round and type);
# the extra values equivocators bring in open new entries only while the round holds fewer than
# this many beyond those, so f Byzantine validators cannot grow the table with random block ids.
MAX_EXTRA_VALUES_PER_ROUND = 32


@dataclass
class VoteSet:
    """Votes of one (round, type), counted per value by distinct validator."""

    by_value: dict[bytes | None, dict[bytes, Vote]] = field(default_factory=dict)
    first: dict[bytes, Vote] = field(default_factory=dict)
    values_of: Counter[bytes] = field(default_factory=Counter)

    def add(self, vote: Vote) -> Vote | None:
        """Adds `vote`; returns the validator's earlier vote if this one equivocates. Caps are checked
        before anything is created: a refused vote leaves no entry behind."""
        voters = self.by_value.get(vote.block_id)
        if voters is not None and vote.validator in voters:
            return None  # the same vote again
        earlier = self.first.get(vote.validator)
        if earlier is not None and (
            self.values_of[vote.validator] >= MAX_VALUES_PER_VALIDATOR
            or (voters is None and self._extra_values() >= MAX_EXTRA_VALUES_PER_ROUND)
        ):
            return earlier
        if voters is None:
            voters = self.by_value[vote.block_id] = {}
        if earlier is None:
            self.first[vote.validator] = vote
        voters[vote.validator] = vote
        self.values_of[vote.validator] += 1
        return earlier

    def _extra_values(self) -> int:
        """Entries that no validator's first vote names (nil aside): what only equivocators opened."""
        firsts = {v.block_id for v in self.first.values()}
        return sum(1 for b in self.by_value if b is not None and b not in firsts)

    def count(self, block_id: bytes | None) -> int:
        voters = self.by_value.get(block_id)
        return len(voters) if voters else 0

    def total(self) -> int:
        """Distinct validators that voted at all (the "2f+1 of any value" of lines 34 and 47)."""
        return len(self.first)

    def for_block(self, block_id: bytes | None) -> tuple[Vote, ...]:
        return tuple(self.by_value.get(block_id, {}).values())

    def blocks_with(self, threshold: int) -> list[bytes]:
        return [b for b, voters in self.by_value.items() if b is not None and len(voters) >= threshold]

    def all_votes(self) -> list[Vote]:
        return [v for voters in self.by_value.values() for v in voters.values()]


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
