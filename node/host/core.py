"""The host loop of one consensus core: it executes the core's actions, commits decided and
synced blocks, and admits transactions to the mempool. I/O-free: the clock, timers, network and
durable storage come in through node/host/hostio.py.

Order contract (consensus/events.py), kept here once for the node and the simulator:
1. actions run in the order the core returns them;
2. a PersistState is durable (SignedStateLog returned) before the next action runs, so before the
   Broadcast of anything it records: a restarted node never contradicts what peers may have seen;
3. a decided block is committed durably before the next height starts, and the next height
   starts `commit_delay_ms` after the decision (CometBFT's commit timeout: straggling precommits
   still reach the peers that need them for the certificate).
A halted host (the process died, or its signed state could not be made durable) executes nothing
more, not even the rest of the current step, and offers nothing to gossip.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from functools import partial
from typing import Any

from consensus.events import (
    Action,
    Broadcast,
    Decide,
    Event,
    Misbehaviour,
    PersistState,
    ScheduleTimeout,
    SignedState,
    StartHeight,
    TimeoutFired,
    TxsAvailable,
)
from consensus.messages import Message
from consensus.tendermint import Tendermint
from node.errors import InvalidBlock, InvalidTransaction, Reason, StorageError
from node.host.app import LedgerApp
from node.host.hostio import HostIO
from node.host.refusals import DeviceRefusals
from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.keys import NodeKey
from node.ledger.mempool import Mempool
from node.ledger.signer import KeySigner
from node.ledger.state import StateDelta
from node.ledger.transactions import Reading, Transaction, parse_tx

LOG = logging.getLogger("fedledger.node")
# Join requests are free to make (a fresh key each) and a federation takes a handful: this node
# admits at most this many per second, from clients and peers together, and refuses the rest before
# parsing them, so a flood of them from any number of connections costs one dict lookup each.
JOIN_REQUESTS_PER_S = 5.0
JOIN_REQUEST_BURST = 20

TxResult = tuple[bytes | None, str | None]  # (tx id if it parsed, rejection reason or None)


@dataclass(frozen=True)
class HostConfig:
    max_block_txs: int
    commit_delay_ms: int
    verify_synced_txs: bool = True  # block sync's "full" mode: re-check every tx signature


class ConsensusHost:
    """One process's consensus: the core, its application adapter and the action executor."""

    def __init__(
        self,
        ledger: Ledger,
        mempool: Mempool,
        key: NodeKey,
        io: HostIO,
        config: HostConfig,
        *,
        restored: SignedState | None = None,
        counters: Counter[str] | None = None,
        log: logging.Logger = LOG,
    ) -> None:
        self.ledger = ledger
        self.mempool = mempool
        self.io = io
        self.config = config
        self.refusals = DeviceRefusals()
        self.counters: Counter[str] = Counter() if counters is None else counters
        self.log = log
        self.halted = False
        self._join_tokens = float(JOIN_REQUEST_BURST)
        self._join_refill_ms: int | None = None
        self.app = LedgerApp(ledger, mempool, key.public, io, max_block_txs=config.max_block_txs,
                             counters=self.counters, log=log)
        self.signer = KeySigner(key, ledger.chain_id)
        genesis = ledger.genesis
        self.core = Tendermint(self.app, self.signer, ledger.height + 1, genesis.timeouts,
                               genesis.create_empty_blocks, restored)

    # --- driving the core ---------------------------------------------------------------------
    def start(self) -> None:
        """Begin (or, from the restored signed state, resume) the height after the ledger's head."""
        self.execute(self.core.start())

    def step(self, event: Event) -> None:
        if not self.halted:
            self.execute(self.core.step(event))

    def halt(self) -> None:
        """The process died: no further action runs, and timers already set fire into nothing."""
        self.halted = True

    def _fail_stop(self, what: str, exc: Exception) -> None:
        self.halt()
        self.log.critical("%s: %s; this node stops signing", what, exc)
        self.io.halted(exc)

    def gossip_messages(self) -> list[Message]:
        """What to re-send to peers (the core decides), nothing once halted."""
        return [] if self.halted else self.core.gossip_messages()

    def execute(self, actions: list[Action]) -> None:
        for a in actions:
            if self.halted:
                return
            if isinstance(a, PersistState):
                try:
                    self.io.persist_signed_state(a.state)
                except Exception as exc:
                    # The core already counts this vote as signed, and sending it (now, or by
                    # re-gossip later) without it on disk lets a restart sign a conflicting one.
                    # Fail-stop: nothing more of this host runs (issue 11, finding 5).
                    self._fail_stop("could not persist the signed consensus state", exc)
                    return
            elif isinstance(a, Broadcast):
                self.io.broadcast(a.message)
            elif isinstance(a, ScheduleTimeout):
                event = TimeoutFired(a.step, a.height, a.round)
                self.io.call_later(a.delay_ms, partial(self.step, event))
            elif isinstance(a, Decide):
                self._decide(a)
            elif isinstance(a, Misbehaviour):
                self.counters[f"misbehaviour:{a.reason}"] += 1

    def _decide(self, a: Decide) -> None:
        if self.ledger.height < a.height:  # block sync may have brought it first
            commit = Commit(a.height, a.round, a.value_id, tuple(a.precommits))
            if self.commit(a.value, commit) is None:
                return
        self.io.call_later(self.config.commit_delay_ms, self.start_next_height)

    def start_next_height(self) -> None:
        """The ledger's head is durable (decided or synced): consensus moves to the next height."""
        if self.halted:
            return
        height = self.ledger.height + 1
        self.step(StartHeight(height))
        self.io.height_started(height)

    # --- the commit path ----------------------------------------------------------------------
    def commit(self, block: Block, commit: Commit, *, synced: bool = False) -> StateDelta | None:
        """Commit a decided or synced block; its state delta, or None if it was refused."""
        try:
            # A decided block was fully validated as a proposal; a synced one as the config says.
            delta = self.ledger.commit(block, commit, verify_txs=not synced or self.config.verify_synced_txs,
                                       durable=not synced)
        except InvalidBlock as exc:
            self.counters[f"rejected_block:{exc.reason.value}"] += 1
            self.log.error("could not commit block %s: %s", block.height, exc)
            self.io.rejected(block, exc, synced)
            return None
        except StorageError as exc:
            # Not the block's fault: the ledger cannot be written. Carrying on would leave a decided
            # height uncommitted (or a catch-up silently ended): stop, and say why.
            self._fail_stop(f"could not write block {block.height}", exc)
            return None
        self.mempool.remove(list(block.tx_ids))
        # The node's info line per block (with its latencies) is the server's; the simulator's is this.
        self.log.debug("committed height %d (%d txs, round %d)", block.height, len(block.tx_ids),
                       commit.round)
        self.io.committed(block, commit, delta, synced)
        return delta

    def _take_join(self, now_ms: int) -> bool:
        """One token of the node-wide join-request budget (JOIN_REQUESTS_PER_S), if there is one."""
        last = self._join_refill_ms if self._join_refill_ms is not None else now_ms
        elapsed_s = max(0, now_ms - last) / 1000  # a clock that steps back refills nothing
        refill = elapsed_s * JOIN_REQUESTS_PER_S
        self._join_tokens = min(float(JOIN_REQUEST_BURST), self._join_tokens + refill)
        self._join_refill_ms = max(last, now_ms)
        if self._join_tokens < 1:
            return False
        self._join_tokens -= 1
        return True

    def _refused(self, tx: Transaction, reason: Reason) -> None:
        body = tx.body
        if isinstance(body, Reading) and self.ledger.store.device(body.device) is not None:
            self.refusals.add(body.device, reason.value)

    # --- mempool admission --------------------------------------------------------------------
    def accept_txs(self, raws: list[Any], *, from_peer: bool = False) -> list[TxResult]:
        """Admit txs to the mempool; those new to this node that came from a client are passed to
        the network's tx gossip. The core hears TxsAvailable when the mempool went non-empty."""
        if self.halted:  # the process is stopping: take nothing it could not finalize
            return [(None, "halted") for _ in raws]
        was_empty = len(self.mempool) == 0
        results: list[TxResult] = []
        fresh: list[Transaction] = []
        now = self.io.now_ms()
        for raw in raws:
            if isinstance(raw, dict) and raw.get("kind") == "join_request" and not self._take_join(now):
                self.counters["rejected:rate_limited"] += 1
                results.append((None, "rate_limited"))
                continue
            try:
                tx = parse_tx(raw)
            except InvalidTransaction as exc:
                self.counters[f"rejected:{exc.reason.value}"] += 1
                results.append((None, exc.reason.value))
                continue
            if tx.id in self.mempool:
                results.append((tx.id, None))
                continue
            txid, reason = self.mempool.add(tx, self.ledger.store, now)
            if reason is not None:
                if from_peer and reason in (Reason.DUPLICATE, Reason.REPLAYED_SEQUENCE):
                    # Gossip racing the block that already carried the tx here: not a rejection.
                    self.counters["gossip_already_committed"] += 1
                else:
                    self.counters[f"rejected:{reason.value}"] += 1
                    self._refused(tx, reason)
                results.append((txid, reason.value))
                continue
            results.append((txid, None))
            if not from_peer:
                fresh.append(tx)
        if fresh:
            self.io.gossip_txs(fresh)
        if was_empty and len(self.mempool) > 0:
            self.step(TxsAvailable())
        return results
