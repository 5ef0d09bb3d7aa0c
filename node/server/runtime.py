"""A running node: the consensus core driven by real timers, the SQLite ledger, the mempool and the
peer network. This module owns the I/O; every decision is made by consensus/ and node/ledger.py.

Order contract with the core (consensus/events.py): actions run in order; the persisted signed
state is written (synchronous=FULL) before the message it records is handed to the network; a
decided block is committed before the next height starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from pathlib import Path
from typing import Any

from consensus.events import (
    Action,
    Broadcast,
    Decide,
    Event,
    MessageReceived,
    Misbehaviour,
    PersistState,
    ScheduleTimeout,
    StartHeight,
    TimeoutFired,
    TxsAvailable,
)
from consensus.messages import Proposal, Vote
from consensus.tendermint import Tendermint
from consensus.validators import ValidatorSet
from node.errors import CodecError, ConfigError, InvalidBlock, InvalidTransaction, ProtocolViolation, Reason
from node.flower.training import SYNC_SLACK, Training
from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey, verify_proposal, verify_vote
from node.ledger.mempool import Mempool
from node.ledger.signer import KeySigner
from node.ledger.state import StateDelta
from node.ledger.transactions import parse_tx
from node.net import wire
from node.net.consensus_wire import (
    decode_signed_state,
    encode_signed_state,
    message_to_wire,
    proposal_from_wire,
)
from node.net.sync import DEFAULT_MODE as DEFAULT_SYNC_MODE
from node.net.sync import SYNC_MODES, BlockSync, SyncStats, decode_items
from node.net.transport import PeerInfo, PeerNetwork
from node.server.api import NodeApi
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, NodeConfig
from node.store.sqlite import SqliteStore

log = logging.getLogger("fedledger.node")

MAX_BLOCK_TXS = 2000
SYNC_BATCH_BYTES = 2 * 1024 * 1024  # a blocks frame stays well under the 4 MiB frame limit
SYNC_IDLE_S = 10.0  # a catch-up starting this long after the last synced block is measured anew
STATUS_PERIOD_S = 0.5
REGOSSIP_AFTER_S = 1.0  # re-send consensus messages when the height/round has not moved this long
COMMIT_DELAY_MS = 10  # collect straggling precommits before the next height (CometBFT's commit timeout)
LATENCY_SAMPLES = 20_000
TX_FLUSH_S = 0.02  # client txs are gossiped in batches at most this late


def wall_ms() -> int:
    return int(time.time() * 1000)


class Node:
    """One fedledger node process."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        passphrase: bytes | None = None,
        host: str | None = None,
        port: int | None = None,
        bootstrap: list[str] | None = None,
        sync_mode: str | None = None,
    ) -> None:
        self.dir = Path(data_dir)
        self.config = NodeConfig.load(self.dir)
        self.key = NodeKey.load(self.dir / KEY_FILE, passphrase)
        if self.key.public.hex() != self.config.public_key:
            raise ConfigError(f"{self.dir / KEY_FILE} does not match the public key in its config.json")
        gpath = self.dir / GENESIS_FILE
        if not gpath.exists():
            raise ConfigError(f"{self.dir} has no {GENESIS_FILE}: create a federation with "
                              "`fedledger launch` or join one with `fedledger join PEER_URL DIR`")
        self.genesis = Genesis.load(gpath)
        self.store = SqliteStore(self.dir / DB_FILE)
        self.ledger = Ledger(self.store, self.genesis)
        self.mempool = Mempool(self.ledger.params)
        self.counters: Counter[str] = Counter()
        self.started_at = time.time()
        self.host = host or self.config.listen_host
        self.port = self.config.listen_port if port is None else port
        self.bootstrap = list(bootstrap if bootstrap is not None else self.config.bootstrap)
        self.sync_mode = sync_mode or str(self.config.extra.get("sync_mode", DEFAULT_SYNC_MODE))
        if self.sync_mode not in SYNC_MODES:
            raise ConfigError(f"sync mode must be one of {', '.join(SYNC_MODES)}, not {self.sync_mode!r}")
        self.sync = BlockSync()
        self.sync_stats = SyncStats(self.sync_mode, start_height=self.store.height())
        self._sync_wake = asyncio.Event()
        self._submitted: dict[bytes, float] = {}
        self.latencies_ms: deque[float] = deque(maxlen=LATENCY_SAMPLES)
        self.finalized_txs = 0
        self.latency_count = 0  # samples ever taken (the deque keeps the latest)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._progress_mark: tuple[int, int, int] = (0, 0, 0)
        self._progress_at = time.monotonic()
        self._outbox: list[bytes] = []  # encoded client txs waiting to be gossiped
        self.core = self._make_core()
        self.training = Training(self.dir, self.key.public, self.store, lambda: self.url, self.host,
                                 lambda: self.role, passphrase)
        self.api = NodeApi(self)
        self.net = PeerNetwork(
            self.key,
            self.genesis.chain_id,
            self.ledger.genesis_hash,
            self.host,
            self.port,
            self.bootstrap,
            self._on_peer_message,
            http_handler=self.api.handle_http,
            client_handler=self.api.handle_client,
            role=self.role,
        )

    # --- consensus wiring ---------------------------------------------------------------------
    def _make_core(self) -> Tendermint:
        height = self.store.height() + 1
        raw = self.store.load_consensus_state()
        restored = None
        if raw is not None:
            try:
                restored = decode_signed_state(raw)
            except CodecError as exc:
                raise ConfigError(
                    f"{self.dir / DB_FILE}: {exc}; refusing to start (it could double-sign)"
                ) from exc
        timeouts = self.genesis.timeouts
        signer = KeySigner(self.key, self.genesis.chain_id)
        return Tendermint(self, signer, height, timeouts, self.genesis.create_empty_blocks, restored)

    @property
    def role(self) -> str:
        m = self.store.member(self.key.public)
        return m.role if m is not None else "observer"

    # Application (consensus/app.py)
    def validators(self, height: int) -> ValidatorSet:
        return self.ledger.validators_at(height)

    def propose(self, height: int, round: int) -> Block:
        time_ms = max(wall_ms(), self.ledger.head_time_ms)
        txs = self.mempool.reap(self.store, time_ms, height, MAX_BLOCK_TXS)
        return self.ledger.make_next_block(self.key.public, round, time_ms, txs)

    def valid(self, height: int, value: Any) -> bool:
        if not isinstance(value, Block):
            return False
        try:
            self.ledger.validate_block(value, now_ms=wall_ms())
        except InvalidBlock as exc:
            self.counters[f"invalid_proposal:{exc.reason.value}"] += 1
            log.warning("invalid proposal at height %s: %s", height, exc)
            return False
        return True

    def value_id(self, value: Any) -> bytes:
        return value.hash

    def has_pending(self) -> bool:
        # A decided membership change needs its two blocks even on an idle federation.
        return len(self.mempool) > 0 or bool(self.store.membership().scheduled)

    # --- driving the core ---------------------------------------------------------------------
    def step(self, event: Event) -> None:
        self.execute(self.core.step(event))

    def execute(self, actions: list[Action]) -> None:
        for a in actions:
            if isinstance(a, PersistState):
                self.store.save_consensus_state(encode_signed_state(a.state))
            elif isinstance(a, Broadcast):
                type_, payload = message_to_wire(a.message)
                self.net.broadcast(type_, payload)
            elif isinstance(a, ScheduleTimeout):
                ev = TimeoutFired(a.step, a.height, a.round)
                assert self._loop is not None
                self._loop.call_later(a.delay_ms / 1000, self.step, ev)
            elif isinstance(a, Decide):
                self._on_decide(a)
            elif isinstance(a, Misbehaviour):
                self.counters[f"misbehaviour:{a.reason}"] += 1

    def _on_decide(self, a: Decide) -> None:
        if self.store.height() < a.height:
            commit = Commit(a.height, a.round, a.value_id, tuple(a.precommits))
            if self._apply(a.value, commit) is None:
                return
        assert self._loop is not None
        self._loop.call_later(COMMIT_DELAY_MS / 1000, self._start_next_height)

    def _start_next_height(self) -> None:
        self.step(StartHeight(self.store.height() + 1))
        self._send_status()

    def _apply(self, block: Block, commit: Commit, *, synced: bool = False) -> StateDelta | None:
        """Commit a decided or synced block; its state delta, or None if it was refused."""
        try:
            # A decided block was fully validated as a proposal; a synced one as the mode says.
            delta = self.ledger.commit(block, commit, verify_txs=not synced or self.sync_mode == "full",
                                       durable=not synced)
        except InvalidBlock as exc:
            self.counters[f"rejected_block:{exc.reason.value}"] += 1
            log.error("could not commit block %s: %s", block.height, exc)
            return None
        now = time.monotonic()
        ids = list(block.tx_ids)
        self.mempool.remove(ids)
        self.finalized_txs += len(ids)
        for i in ids:
            t0 = self._submitted.pop(i, None)
            if t0 is not None:
                self.latencies_ms.append((now - t0) * 1000)
                self.latency_count += 1
        log.log(logging.DEBUG if synced else logging.INFO, "committed height %d (%d txs, round %d)",
                block.height, len(ids), commit.round)
        self.training.on_block(block)
        self._on_membership(block)
        return delta

    def _on_membership(self, block: Block) -> None:
        """Keep what this node tells peers about itself in step with the ledger."""
        if self.net.role != self.role:
            log.info("role on the ledger is now %s (height %d)", self.role, block.height)
            self.net.role = self.role

    # --- peers --------------------------------------------------------------------------------
    async def _on_peer_message(self, peer: PeerInfo, type_: str, payload: Any) -> None:
        try:
            if type_ == wire.VOTE:
                self._on_vote(Vote.from_wire(payload))
            elif type_ == wire.PROPOSAL:
                self._on_proposal(proposal_from_wire(payload))
            elif type_ == wire.TX:
                self.accept_txs([payload], relay_from=peer.key)
            elif type_ == wire.TXS:
                self.accept_txs(payload, relay_from=peer.key)
            elif type_ == wire.STATUS:
                self._on_status(peer, payload)
            elif type_ == wire.GET_BLOCKS:
                self._serve_blocks(peer, payload)
            elif type_ == wire.BLOCKS:
                self._on_blocks(peer, payload)
        except ProtocolViolation as exc:
            self.counters[f"peer_error:{type_}"] += 1
            log.info("dropped %s from %s: %s", type_, peer.short_id, exc)

    def _relevant(self, height: int) -> bool:
        return self.core.height <= height <= self.core.height + 1

    def _on_vote(self, vote: Vote) -> None:
        if not self._relevant(vote.height):
            self.counters["stale_consensus_message"] += 1
            return
        if not verify_vote(self.genesis.chain_id, vote):
            self.counters["bad_signature:vote"] += 1
            return
        self.step(MessageReceived(vote))

    def _on_proposal(self, p: Proposal) -> None:
        if not self._relevant(p.height):
            self.counters["stale_consensus_message"] += 1
            return
        if not verify_proposal(self.genesis.chain_id, p):
            self.counters["bad_signature:proposal"] += 1
            return
        self.step(MessageReceived(p))

    def accept_tx(self, raw: Any, relay_from: bytes | None = None) -> tuple[bytes | None, str | None]:
        """Mempool admission for one tx from a client or a peer."""
        return self.accept_txs([raw], relay_from)[0]

    def accept_txs(
        self, raws: list[Any], relay_from: bytes | None = None
    ) -> list[tuple[bytes | None, str | None]]:
        """Mempool admission; txs new to this node that came from a client are gossiped on.

        Txs from peers are not relayed again: the peer network is a full mesh (peer exchange dials
        every advertised node), the proposal carries its txs anyway, and a node that stalls
        re-gossips its mempool (see _status_loop).
        """
        was_empty = len(self.mempool) == 0
        results: list[tuple[bytes | None, str | None]] = []
        fresh: list[Any] = []
        now = wall_ms()
        for raw in raws:
            try:
                tx = parse_tx(raw)
            except InvalidTransaction as exc:
                self.counters[f"rejected:{exc.reason.value}"] += 1
                results.append((None, exc.reason.value))
                continue
            if tx.id in self.mempool:
                results.append((tx.id, None))
                continue
            txid, reason = self.mempool.add(tx, self.store, now)
            if reason is not None:
                if relay_from is not None and reason in (Reason.DUPLICATE, Reason.REPLAYED_SEQUENCE):
                    # Gossip racing the block that already carried the tx here: not a rejection.
                    self.counters["gossip_already_committed"] += 1
                else:
                    self.counters[f"rejected:{reason.value}"] += 1
                results.append((txid, reason.value))
                continue
            results.append((txid, None))
            if relay_from is None:
                self._submitted[tx.id] = time.monotonic()
                fresh.append(tx.encoded)
        self._outbox.extend(fresh)
        if len(self._outbox) >= wire.MAX_TX_BATCH // 2:
            self._flush_txs()
        if was_empty and len(self.mempool) > 0:
            self.step(TxsAvailable())
        return results

    def _flush_txs(self) -> None:
        while self._outbox:
            batch, self._outbox = self._outbox[: wire.MAX_TX_BATCH], self._outbox[wire.MAX_TX_BATCH :]
            self.net.broadcast_frame(wire.TXS, wire.encode_txs_frame(batch))

    async def _tx_gossip_loop(self) -> None:
        while not self._stop.is_set():
            self._flush_txs()
            await asyncio.sleep(TX_FLUSH_S)

    def _send_status(self) -> None:
        self.net.broadcast(wire.STATUS, {"height": self.store.height(), "head_hash": self.ledger.head_hash})

    def _on_status(self, peer: PeerInfo, payload: dict[str, Any]) -> None:
        self.sync.peer_height(peer.key, payload["height"])
        self._request_blocks()

    # --- block sync (node/sync.py decides what to fetch from whom) ------------------------------
    def _request_blocks(self) -> None:
        height = self.store.height()
        if self.sync.target <= height:
            return
        st = self.sync_stats
        idle = st.last_applied_at is None or time.monotonic() - st.last_applied_at > SYNC_IDLE_S
        if not self.sync.in_flight and not self.sync.fetched and idle:
            self.sync_stats = SyncStats(self.sync_mode, start_height=height)  # a new catch-up
        for r in self.sync.requests(height, time.monotonic()):
            self.net.send(r.peer, wire.GET_BLOCKS, {"from": r.lo, "to": r.hi})

    def _serve_blocks(self, peer: PeerInfo, payload: dict[str, Any]) -> None:
        out: list[dict[str, Any]] = []
        size = 0
        for h in range(payload["from"], min(payload["to"], self.store.height()) + 1):
            parts = self.store.block_parts(h)
            if parts is None:
                break
            raw_block, raw_txs, raw_commit = parts
            size += len(raw_block) + len(raw_commit) + sum(len(t) + 3 for t in raw_txs)
            if out and size > SYNC_BATCH_BYTES:
                break  # keeps the frame under the limit; the peer asks for the rest
            out.append({"block": raw_block, "txs": raw_txs, "commit": raw_commit})
        self.counters["blocks_served"] += len(out)
        self.net.send(peer.key, wire.BLOCKS, out)

    def _on_blocks(self, peer: PeerInfo, items: list[dict[str, Any]]) -> None:
        try:
            decoded = decode_items(items)
        except InvalidBlock as exc:
            self.counters["sync_malformed"] += 1
            self.sync.penalise(peer.key, time.monotonic())
            log.info("malformed blocks from %s: %s", peer.short_id, exc)
            return
        self.sync.on_blocks(peer.key, decoded, time.monotonic())
        self._sync_wake.set()

    async def _sync_loop(self) -> None:
        """Apply fetched batches in height order, one batch per turn of the event loop, so
        consensus, clients and status keep being served during a long catch-up."""
        while not self._stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._sync_wake.wait(), 0.2)
            self._sync_wake.clear()
            applied_any = False
            while (ready := self.sync.take_ready(self.store.height())) is not None:
                peer, batch = ready
                t0 = time.perf_counter()
                for block, commit in batch:
                    delta = self._apply(block, commit, synced=True)
                    if delta is None:
                        self.counters["sync_bad_block"] += 1
                        self.sync_stats.failures += 1
                        self.sync.penalise(peer, time.monotonic())
                        break
                    self.counters["blocks_synced"] += 1
                    st = self.sync_stats
                    st.blocks += 1
                    st.txs += len(block.txs)
                    st.readings += len(delta.readings)
                    st.last_applied_at = time.monotonic()
                    applied_any = True
                self.sync_stats.busy_s += time.perf_counter() - t0
                self._request_blocks()
                await asyncio.sleep(0)
            if applied_any:
                self.step(StartHeight(self.store.height() + 1))
                self._send_status()
            self._request_blocks()

    def sync_status(self) -> dict[str, Any]:
        return self.sync_stats.to_dict(self.store.height(), max(self.sync.target, self.store.height()))

    # --- background loops ---------------------------------------------------------------------
    async def _status_loop(self) -> None:
        while not self._stop.is_set():
            self._send_status()
            connected = {p.key for p in self.net.peers()}
            for key in [k for k in self.sync.peer_heights if k not in connected]:
                self.sync.peer_gone(key)
            best_peer = self.sync.target
            self.training.tick(caught_up=self.store.height() >= best_peer - SYNC_SLACK)
            mark = (self.core.height, self.core.round, int(self.core.step_))
            now = time.monotonic()
            if mark != self._progress_mark:
                self._progress_mark, self._progress_at = mark, now
            elif now - self._progress_at >= REGOSSIP_AFTER_S:
                # Stuck: peers may have missed messages (a restart, a dropped frame). Re-send what
                # the core says matters for this height, as the paper's gossip assumption requires.
                for msg in self.core.gossip_messages():
                    type_, payload = message_to_wire(msg)
                    self.net.broadcast(type_, payload)
                pending = [t.raw for t in self.mempool.pending()[: wire.MAX_TX_BATCH]]
                if pending:
                    self.net.broadcast(wire.TXS, pending)
                self._progress_at = now
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._stop.wait(), STATUS_PERIOD_S)

    async def run(self) -> None:
        """Serve until stop() is called (the CLI wires SIGINT/SIGTERM to it)."""
        self._loop = asyncio.get_running_loop()
        await self.net.start()
        log.info("node %s listening on %s (height %d)", self.key.short_id, self.net.url, self.store.height())
        self.execute(self.core.start())
        loops = [asyncio.create_task(self._status_loop()), asyncio.create_task(self._tx_gossip_loop()),
                 asyncio.create_task(self._sync_loop())]
        try:
            await self._stop.wait()
        finally:
            for task in loops:
                task.cancel()
            await self.net.stop()
            await asyncio.to_thread(self.training.close)
            height = self.store.height()
            self.store.close()
            log.info("node %s stopped at height %d", self.key.short_id, height)

    def stop(self) -> None:
        self._stop.set()

    @property
    def url(self) -> str:
        return self.net.url
