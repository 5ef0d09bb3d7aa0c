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
        """valid(v) of the paper: a deterministic function of the ledger and the value (the core
        caches it for the height), so it never depends on this node's clock."""
        ...

    def timely(self, height: int, round: int, value: Any) -> bool:
        """Whether a value proposed fresh in `round` (validRound -1) is acceptable to this node's
        clock now. Asked once, when prevoting on that proposal (lines 22-27) and never cached; not
        asked for a re-proposal with a polka (lines 28-33), for locking or for deciding, so a value
        timed at the edge of the clock skew costs at most a nil prevote, never a stalled height
        (the rule CometBFT's proposer-based timestamps follow)."""
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
