"""What the core asks of the application (the ledger) and of the signer (the node key).

Both are called synchronously from inside `Tendermint.step`; they must be deterministic for a
given ledger state so that the core stays a pure function of its inputs.
"""

from __future__ import annotations

from typing import Any, Protocol

from consensus.messages import Proposal, Vote
from consensus.validators import ValidatorSet


class Application(Protocol):
    def validators(self, height: int) -> ValidatorSet:
        """The validator set that decides `height`."""
        ...

    def propose(self, height: int, round: int) -> Any:
        """getValue() of the paper: a new block for `height` built on the committed chain."""
        ...

    def valid(self, height: int, value: Any) -> bool:
        """valid(v) of the paper."""
        ...

    def value_id(self, value: Any) -> bytes:
        """id(v): the block hash."""
        ...

    def has_pending(self) -> bool:
        """Whether the chain should grow now (consulted only when empty blocks are off): pending
        txs, or anything else that needs a block, such as a decided validator-set change."""
        ...


class Signer(Protocol):
    @property
    def public_key(self) -> bytes: ...

    def sign_vote(self, vote: Vote) -> Vote: ...

    def sign_proposal(self, proposal: Proposal) -> Proposal: ...
