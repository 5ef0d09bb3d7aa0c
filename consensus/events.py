"""What goes into the core (events) and what comes out (actions).

Contract for the host that executes actions: execute them in the order given. A `PersistState`
always precedes the `Broadcast` of the message it records; the host must make it durable (fsync)
before the message leaves the process. After a `Decide` the core waits: the host commits the
block durably, then feeds `StartHeight(height + 1)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from consensus.messages import Message, Step, Vote


# --- events -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class MessageReceived:
    """A PROPOSAL or vote whose signature the host has already verified."""

    message: Message


@dataclass(frozen=True)
class TimeoutFired:
    step: Step
    height: int
    round: int


@dataclass(frozen=True)
class TxsAvailable:
    """The mempool went from empty to non-empty (only matters when empty blocks are off)."""


@dataclass(frozen=True)
class StartHeight:
    """The block of height - 1 is durably committed (by consensus or by block sync): start `height`."""

    height: int


Event = MessageReceived | TimeoutFired | TxsAvailable | StartHeight


# --- actions ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PersistState:
    """Durably record what this node signed (and its locks) before any of it is sent."""

    state: SignedState


@dataclass(frozen=True)
class Broadcast:
    message: Message


@dataclass(frozen=True)
class ScheduleTimeout:
    step: Step
    height: int
    round: int
    delay_ms: int


@dataclass(frozen=True)
class Decide:
    """decision[h] = value: commit it with its certificate (2f+1 precommits for value_id in `round`)."""

    height: int
    round: int
    value: Any = field(repr=False)
    value_id: bytes
    precommits: tuple[Vote, ...] = field(repr=False)


@dataclass(frozen=True)
class Misbehaviour:
    """A peer sent something a correct validator never sends (for counters, scores and evidence)."""

    sender: bytes
    reason: str
    messages: tuple[Message, ...] = ()


Action = PersistState | Broadcast | ScheduleTimeout | Decide | Misbehaviour


# --- persisted state ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SignedState:
    """Everything a restarted node needs so that it never contradicts what it already signed.

    `signed` holds this node's own signed messages of `height`; `proof` the 2f+1 prevotes behind
    `valid_value` (the polka it locked on), which the host verified when they arrived;
    `round_proof` the votes that brought it to `round` (the 2f+1 precommits that ended an earlier
    round, and the current round's votes of others): peers still in the earlier round need them
    to follow, and after a restart this node is the only one that may still hold them.
    """

    height: int
    round: int
    step: Step
    locked_round: int
    locked_value: Any = field(repr=False)
    valid_round: int
    valid_value: Any = field(repr=False)
    signed: tuple[Message, ...] = field(repr=False)
    proof: tuple[Vote, ...] = field(default=(), repr=False)
    round_proof: tuple[Vote, ...] = field(default=(), repr=False)
