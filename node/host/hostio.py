"""What the host core needs from the world, as small interfaces (injected, never imported).

A node process implements them with the wall clock, the asyncio loop, SQLite and the peer
network; the simulator with its scheduler, in-memory state and simulated network.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from consensus.events import SignedState
from consensus.messages import Message
from node.errors import InvalidBlock
from node.ledger.blocks import Block, Commit
from node.ledger.state import StateDelta
from node.ledger.transactions import Transaction


class Clock(Protocol):
    def now_ms(self) -> int:
        """Milliseconds since the Unix epoch: block times are taken and checked against it."""
        ...


class Timers(Protocol):
    def call_later(self, delay_ms: int, callback: Callable[[], None]) -> None:
        """Run `callback` once, `delay_ms` from now, unless this process has died by then."""
        ...


class Network(Protocol):
    def broadcast(self, message: Message) -> None:
        """Hand a signed consensus message to every peer (best effort: gossip re-sends it)."""
        ...

    def gossip_txs(self, txs: list[Transaction]) -> None:
        """Pass on txs new to this node that a client submitted here."""
        ...


class SignedStateLog(Protocol):
    def persist_signed_state(self, state: SignedState) -> None:
        """Make `state` durable before returning: a message it records leaves only afterwards.
        Raising means it is not durable: the host halts (see Listener.halted)."""
        ...


class Listener(Protocol):
    """What the host tells the process around it; none of it feeds back into consensus."""

    def committed(self, block: Block, commit: Commit, delta: StateDelta, synced: bool) -> None: ...

    def rejected(self, block: Block, error: InvalidBlock, synced: bool) -> None: ...

    def height_started(self, height: int) -> None: ...

    def halted(self, error: Exception) -> None:
        """The signed state could not be made durable: the host has stopped signing for good, and
        the process must stop with `error` (fail-stop; a restart resumes from what is durable)."""
        ...


class HostIO(Clock, Timers, Network, SignedStateLog, Listener, Protocol):
    """Everything at once: a node process (and the simulated one) implements all of it."""
