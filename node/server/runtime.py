"""A running node: the host core (node/host/) on real timers, the wall clock, the SQLite ledger and
the peer network. This module owns the I/O; every decision is made by consensus/ and node/ledger/,
and the order of persist, broadcast and commit by node/host/core.py (the simulator runs the same).

What the I/O adds to that contract: the signed state is written with synchronous=FULL before
persist_signed_state returns, so it is on disk before the message it records reaches the network.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

from consensus.events import Event, MessageReceived, SignedState
from consensus.messages import Message, Proposal, Vote
from consensus.tendermint import Tendermint
from node.errors import CodecError, ConfigError, InvalidBlock, ProtocolViolation, StorageError
from node.flower.training import SYNC_SLACK, Training
from node.host.core import ConsensusHost, HostConfig, TxResult
from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey, short_id, verify_proposal, verify_vote
from node.ledger.mempool import Mempool
from node.ledger.state import StateDelta
from node.ledger.transactions import Transaction
from node.net import wire
from node.net.addresses import check_host, format_host, local_host, url_host
from node.net.consensus_wire import (
    decode_signed_state,
    encode_signed_state,
    message_to_wire,
    proposal_from_wire,
)
from node.net.gateway import HttpBody
from node.net.sync import DEFAULT_MODE as DEFAULT_SYNC_MODE
from node.net.sync import SYNC_MODES, Answer, BlockSync, SyncStats, decode_items, first_height
from node.net.transport import PeerInfo, PeerNetwork
from node.server.api import MAX_STATUS_LIST, NodeApi, capped, membership_status
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, NodeConfig
from node.server.explorer.exports import EXPORTS_DIR, KerasExports, export_command
from node.server.logs import block_line, committed_rounds, training_round_line
from node.server.metrics import CONTENT_TYPE, ChainMetrics, NodeMetrics
from node.server.model_checks import ModelChecks
from node.store.models import latest_runs
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


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


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
        self.host = check_host(host or self.config.listen_host)
        self.port = self.config.listen_port if port is None else port
        self.bootstrap = list(bootstrap if bootstrap is not None else self.config.bootstrap)
        # A genesis made for several machines names where its members listen: dial those too, so
        # the genesis file is all a host needs to find the federation.
        own = {self.config.url}
        for m in self.genesis.members():
            if m.url and m.key != self.key.public and m.url not in own and m.url not in self.bootstrap:
                self.bootstrap.append(m.url)
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
        self.chain_metrics = ChainMetrics()
        # Block time of the head, for the interval to the next block (none before block 1).
        self._last_block_time_ms: int | None = self.ledger.head_time_ms if self.store.height() else None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self.fatal: StorageError | None = None  # why the host halted, raised by run() once stopped
        self._progress_mark: tuple[int, int, int] = (0, 0, 0)
        self._progress_at = time.monotonic()
        self._outbox: list[bytes] = []  # encoded client txs waiting to be gossiped
        config = HostConfig(MAX_BLOCK_TXS, COMMIT_DELAY_MS, verify_synced_txs=self.sync_mode == "full")
        self.consensus = ConsensusHost(self.ledger, self.mempool, self.key, self, config,
                                       restored=self._restored_state(), counters=self.counters, log=log)
        # The Flower apps run on this machine: they reach the node where it binds, not where it is
        # advertised (behind NAT the advertised address need not route back to this machine).
        self.training = Training(
            self.dir, self.key, self.genesis.chain_id, self.store, lambda: self.local_url, self.host,
            lambda: self.role, passphrase,
            genesis_flower_keys={m.key: m.flower_key for m in self.genesis.members()},
            submit=self._submit_own, superlink_host=local_host(url_host(self.config.url)))
        # The explorer's .keras downloads: written by `fedledger model export` in a child process
        # (this process never loads Keras), one at a time, cached under DIR/exports/.
        self.exports = KerasExports(self.dir / EXPORTS_DIR, export_command(self.dir), counters=self.counters)
        self.api = NodeApi(self, self.exports, counters=self.counters)
        # Model txs are checked off the loop first (provenance, refit), then admitted on it.
        self.model_checks = ModelChecks(self.dir / DB_FILE, self.genesis.chain_id, self.counters)
        self.prometheus = NodeMetrics(self)
        self.net = PeerNetwork(
            self.key,
            self.genesis.chain_id,
            self.ledger.genesis_hash,
            self.host,
            self.port,
            self.bootstrap,
            self._on_peer_message,
            http_handler=self.api.handle_http,
            client_handler=self._on_client,
            role=self.role,
            advertise_url=self.config.advertise,
        )

    # --- consensus wiring ---------------------------------------------------------------------
    def _restored_state(self) -> SignedState | None:
        raw = self.store.load_consensus_state()
        if raw is None:
            return None
        try:
            return decode_signed_state(raw)
        except CodecError as exc:
            raise ConfigError(
                f"{self.dir / DB_FILE}: {exc}; refusing to start (it could double-sign)"
            ) from exc

    @property
    def core(self) -> Tendermint:
        return self.consensus.core

    @property
    def role(self) -> str:
        m = self.store.member(self.key.public)
        return m.role if m is not None else "observer"

    def step(self, event: Event) -> None:
        self.consensus.step(event)

    # --- HostIO (node/host/hostio.py): the real world the host core runs in ---------------------
    def now_ms(self) -> int:
        return wall_ms()

    def call_later(self, delay_ms: int, callback: Callable[[], None]) -> None:
        assert self._loop is not None
        self._loop.call_later(delay_ms / 1000, callback)

    def persist_signed_state(self, state: SignedState) -> None:
        self.store.save_consensus_state(encode_signed_state(state))

    def broadcast(self, message: Message) -> None:
        type_, payload = message_to_wire(message)
        self.net.broadcast(type_, payload)

    def _submit_own(self, txs: list[dict[str, Any]]) -> list[tuple[bytes | None, str | None]]:
        """Txs this node signs itself (a run handover, a commit of a run it took over), admitted
        and gossiped as a client's would be."""
        return self.consensus.accept_txs(txs)

    def gossip_txs(self, txs: list[Transaction]) -> None:
        """Client txs new to this node: timed until they commit, and gossiped in batches."""
        now = time.monotonic()
        for tx in txs:
            self._submitted[tx.id] = now
        self._outbox.extend(tx.encoded for tx in txs)
        if len(self._outbox) >= wire.MAX_TX_BATCH // 2:
            self._flush_txs()

    def committed(self, block: Block, commit: Commit, delta: StateDelta, synced: bool) -> None:
        now = time.monotonic()
        now_ms = wall_ms()
        ids = block.tx_ids
        self.finalized_txs += len(ids)
        measured: list[float] = []
        for i in ids:
            t0 = self._submitted.pop(i, None)
            if t0 is not None:
                seconds = now - t0
                measured.append(seconds)
                self.latencies_ms.append(seconds * 1000)
                self.latency_count += 1
                self.chain_metrics.finality.observe(seconds)
        previous = self._last_block_time_ms
        self.chain_metrics.on_block(block, commit, len(delta.readings), synced, previous, now_ms)
        self._last_block_time_ms = block.header.time_ms
        if not synced:  # a catch-up logs one line per batch (_sync_loop), not thousands
            h = block.header
            msg, fields = block_line(
                h.height, len(ids), len(delta.readings), commit.round, short_id(h.proposer),
                None if previous is None else (h.time_ms - previous) / 1000,
                max(0, now_ms - h.time_ms) / 1000, measured)
            log.info(msg, extra={"fields": fields})
        if delta.models:
            self._on_model_commits(block)
        self.training.on_block(block)
        self._on_membership(block)

    def _on_model_commits(self, block: Block) -> None:
        """A log line and the training metrics per committed round (rare: one per round)."""
        for r in committed_rounds(self.store, block):
            self.chain_metrics.on_training_round(r.task, r.metrics, r.duration_s)
            msg, fields = training_round_line(r)
            log.info(msg, extra={"fields": fields})

    def rejected(self, block: Block, error: InvalidBlock, synced: bool) -> None:
        pass  # counted and logged by the host; block sync penalises the peer that sent it

    def height_started(self, height: int) -> None:
        self._send_status()

    def halted(self, error: Exception) -> None:
        self.fatal = StorageError(f"{self.dir}: {error}; the node stopped signing and exits (nothing "
                                  "undurable was sent); free the disk or fix the database, then restart")
        self.stop()

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
                p = proposal_from_wire(payload)
                if self._proposal_ok(p):
                    await self.model_checks.warm(p.value.txs)
                    self.step(MessageReceived(p))
            elif type_ == wire.TX:
                await self.model_checks.warm([payload])
                self.accept_txs([payload], relay_from=peer.key)
            elif type_ == wire.TXS:
                if isinstance(payload, list):
                    await self.model_checks.warm(payload)
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
            raise  # the transport scores the sender by the offence's reason (node/net/peers.py)

    def _relevant(self, height: int) -> bool:
        return self.core.height <= height <= self.core.height + 1

    def _on_vote(self, vote: Vote) -> None:
        if not self._relevant(vote.height):
            self.counters["stale_consensus_message"] += 1
            return
        if not verify_vote(self.genesis.chain_id, vote):
            self.counters["bad_signature:vote"] += 1
            raise ProtocolViolation("bad_signature", "vote")
        self._check_validator(vote.validator, vote.height, "vote")
        self.step(MessageReceived(vote))

    def _check_validator(self, key: bytes, height: int, what: str) -> None:
        """A correct peer relays only what its core recorded, so only messages of validators of
        that height (known here up to two heights above the head, and relevant heights are at
        most one above the core's): anything else costs the peer that sent it, before the core."""
        if key not in self.ledger.validators_at(height):
            self.counters[f"not_a_validator:{what}"] += 1
            raise ProtocolViolation("not_a_validator", f"{what} of height {height} by {short_id(key)}")

    async def _on_client(self, type_: str, payload: Any) -> tuple[str, Any] | None:
        """A client's frame (node/net/gateway.py): its model txs are checked off the loop first."""
        if type_ == wire.SUBMIT_TX:
            await self.model_checks.warm([payload])
        elif type_ == wire.SUBMIT_TXS and isinstance(payload, list):
            await self.model_checks.warm(payload)
        return self.api.handle_client(type_, payload)

    def _on_proposal(self, p: Proposal) -> None:
        if self._proposal_ok(p):
            self.step(MessageReceived(p))

    def _proposal_ok(self, p: Proposal) -> bool:
        """Whether the core should see `p`: relevant, its block under its id, signed by a validator
        of its height. Raises ProtocolViolation for what costs the sender."""
        if not self._relevant(p.height):
            self.counters["stale_consensus_message"] += 1
            return False
        if p.value.hash != p.value_id:
            # The signature covers only the id: whoever sent this paired a genuine signature with
            # another block. Dropped before the core sees it (issue 11, finding 1), sender scored.
            self.counters["forged_proposal"] += 1
            raise ProtocolViolation("forged_proposal", f"block {p.value.hash.hex()[:12]} under id "
                                    f"{p.value_id.hex()[:12]}")
        if not verify_proposal(self.genesis.chain_id, p):
            self.counters["bad_signature:proposal"] += 1
            raise ProtocolViolation("bad_signature", "proposal")
        self._check_validator(p.proposer, p.height, "proposal")
        return True

    def accept_tx(self, raw: Any, relay_from: bytes | None = None) -> TxResult:
        """Mempool admission for one tx from a client or a peer."""
        return self.accept_txs([raw], relay_from)[0]

    def accept_txs(self, raws: list[Any], relay_from: bytes | None = None) -> list[TxResult]:
        """Mempool admission (node/host/core.py); txs new to this node that came from a client are
        gossiped on.

        Txs from peers are not relayed again: the peer network is a full mesh (peer exchange dials
        every advertised node), the proposal carries its txs anyway, and a node that stalls
        re-gossips its mempool (see _status_loop).
        """
        return self.consensus.accept_txs(raws, from_peer=relay_from is not None)

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
        """Answer GET_BLOCKS (at most wire.MAX_BLOCKS_BATCH heights) within the peer's serving
        budget (node/net/peers.py ServeBudget): past it, the answer is empty and the peer scored."""
        now = time.monotonic()
        budget = peer.state.serving
        grant = budget.grant(now)
        if grant is None:
            self.counters["blocks_refused:serve_budget"] += 1
            self.net.send(peer.key, wire.BLOCKS, [])
            budget.charge(0, 0, now)
            raise ProtocolViolation("serve_budget", "asked for blocks faster than it may")
        max_blocks, max_bytes = grant
        out: list[dict[str, Any]] = []
        size = 0
        last = min(payload["to"], self.store.height(), payload["from"] + max_blocks - 1)
        for h in range(payload["from"], last + 1):
            parts = self.store.block_parts(h)
            if parts is None:
                break
            raw_block, raw_txs, raw_commit = parts
            item = len(raw_block) + len(raw_commit) + sum(len(t) + 3 for t in raw_txs)
            if out and size + item > min(SYNC_BATCH_BYTES, max_bytes):
                break  # keeps the frame under the limit; the peer asks for the rest
            size += item
            out.append({"block": raw_block, "txs": raw_txs, "commit": raw_commit})
        budget.charge(len(out), size, now)
        self.counters["blocks_served"] += len(out)
        self.net.send(peer.key, wire.BLOCKS, out)

    def _on_blocks(self, peer: PeerInfo, items: list[dict[str, Any]]) -> None:
        answer = self.sync.classify(peer.key, first_height(items), len(items))
        if answer is Answer.LATE:
            self.counters["sync_late_answer"] += 1
            return
        if answer is Answer.UNREQUESTED:
            # Checked on the first header alone: decoding every block and tx of a frame nobody
            # asked for would let any peer spend this node's CPU (issue 11, finding 6).
            self.counters["sync_unrequested"] += 1
            raise ProtocolViolation("unrequested_blocks", f"{len(items)} blocks nobody asked this peer for")
        try:
            decoded = decode_items(items)
        except InvalidBlock as exc:
            self.counters["sync_malformed"] += 1
            self.sync.penalise(peer.key, time.monotonic())
            log.info("malformed blocks from %s: %s", peer.short_id, exc)
            return
        if self.sync.on_blocks(peer.key, decoded, time.monotonic()):
            self.counters["sync_unproven_height"] += 1
            raise ProtocolViolation("unproven_height", "no blocks inside the height it announced")
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
                    delta = self.consensus.commit(block, commit, synced=True)
                    if self.consensus.halted:
                        return  # a storage failure: run() stops the node and reports it
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
                if self.store.height() >= batch[0][0].height:  # at least one of the batch applied
                    log.info("synced blocks %d..%d from %s (target %d)", batch[0][0].height,
                             self.store.height(), short_id(peer), self.sync.target,
                             extra={"fields": {"event": "blocks_synced", "from": batch[0][0].height,
                                               "to": self.store.height(), "target": self.sync.target}})
                self._request_blocks()
                await asyncio.sleep(0)
            if applied_any:
                self.consensus.start_next_height()
            self._request_blocks()

    def sync_status(self) -> dict[str, Any]:
        return {**self.sync_stats.to_dict(self.store.height(), max(self.sync.target, self.store.height())),
                "disproven_claims": self.sync.disproven}

    # --- what the API shows (node/server/api.py's NodeView) ------------------------------------
    def status(self) -> dict[str, Any]:
        """GET /status: this node's ids, ledger head, consensus position, peers and counters."""
        store = self.store
        counts = store.counts()
        vset = self.ledger.validators_at(store.height() + 1)
        lat = list(self.latencies_ms)
        rejected = {k.split(":", 1)[1]: v for k, v in self.counters.items() if k.startswith("rejected:")}
        peers = self.net.peers()
        peer_ids, _ = capped([p.short_id for p in peers], MAX_STATUS_LIST)
        run_list, run_count = latest_runs(store, MAX_STATUS_LIST)
        return {
            "node_id": self.key.short_id,
            "name": self.config.name,
            "public_key": self.key.public.hex(),
            "role": self.role,
            "chain_id": self.genesis.chain_id,
            "genesis_hash": self.ledger.genesis_hash.hex(),
            "height": store.height(),
            "head_hash": (store.head_hash() or self.ledger.genesis_hash).hex(),
            "head_time_ms": self.ledger.head_time_ms,
            "consensus": {"height": self.core.height, "round": self.core.round,
                          "step": self.core.step_.name.lower()},
            "validators": [{"node_id": short_id(k), "public_key": k.hex()} for k in vset.members],
            "peers": len(peers),
            "peer_ids": peer_ids,  # "peers" counts them all
            "mempool": len(self.mempool),
            "readings": counts["readings"],
            "txs": counts["txs"],
            "devices": counts["devices"],
            "rejected": rejected,
            "counters": dict(self.counters),
            "finalized_txs_since_start": self.finalized_txs,
            "finality_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "samples": len(lat),
                            "count": self.latency_count},
            "url": self.url,
            "uptime_s": round(time.time() - self.started_at, 1),
            "network": self.net.stats(),
            "training": {"runs": [r.to_json() for r in run_list], "runs_total": run_count,
                         "local": self.training.status()},
            "sync": self.sync_status(),
            **membership_status(store, MAX_STATUS_LIST),
        }

    def peers_json(self) -> list[dict[str, Any]]:
        now = time.time()
        # "height": what the peer last announced (a claim until its blocks prove it; see node/net/sync.py).
        return [{**p.to_json(now), "height": self.sync.peer_heights.get(p.key)} for p in self.net.peers()]

    def device_refusals(self, device: bytes) -> dict[str, int]:
        return self.consensus.refusals.of(device)

    def metrics(self) -> HttpBody:
        return HttpBody(CONTENT_TYPE, self.prometheus.render())

    def finality(self, last: int) -> dict[str, Any]:
        """The latest `last` finality latencies (ms), and how many were ever measured."""
        lat = list(self.latencies_ms)
        return {"count": self.latency_count, "ms": lat[-last:] if last > 0 else []}

    # --- background loops ---------------------------------------------------------------------
    async def _status_loop(self) -> None:
        while not self._stop.is_set():
            self._send_status()
            connected = {p.key for p in self.net.peers()}
            for key in [k for k in self.sync.peer_heights if k not in connected]:
                self.sync.peer_gone(key)
            best_peer = self.sync.target
            height = self.store.height()
            self.training.tick(caught_up=height >= best_peer - SYNC_SLACK, synced=height >= best_peer)
            mark = (self.core.height, self.core.round, int(self.core.step_))
            now = time.monotonic()
            if mark != self._progress_mark:
                self._progress_mark, self._progress_at = mark, now
            elif now - self._progress_at >= REGOSSIP_AFTER_S:
                # Stuck: peers may have missed messages (a restart, a dropped frame). Re-send what
                # the core says matters for this height, as the paper's gossip assumption requires.
                for msg in self.consensus.gossip_messages():
                    self.broadcast(msg)
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
        self.consensus.start()
        loops = [asyncio.create_task(self._status_loop()), asyncio.create_task(self._tx_gossip_loop()),
                 asyncio.create_task(self._sync_loop())]
        try:
            await self._stop.wait()
        finally:
            for task in loops:
                task.cancel()
            await self.net.stop()
            await self.exports.close()
            await asyncio.to_thread(self.api.explorer.close)  # the suspicious view's worker
            await asyncio.to_thread(self.training.close)
            await asyncio.to_thread(self.model_checks.close)
            height = self.store.height()
            self.store.close()
            log.info("node %s stopped at height %d", self.key.short_id, height)
        if self.fatal is not None:
            raise self.fatal

    def stop(self) -> None:
        self._stop.set()

    @property
    def url(self) -> str:
        return self.net.url

    @property
    def local_url(self) -> str:
        """This node's HTTP base as its own machine reaches it."""
        return f"http://{format_host(local_host(self.host))}:{self.net.port}"
