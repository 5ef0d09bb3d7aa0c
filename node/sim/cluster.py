"""Simulated fedledger nodes: real consensus cores, real ledgers (in-memory stores), real
Ed25519 signatures, on a simulated clock and network."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from consensus.events import (
    Action,
    Broadcast,
    Decide,
    MessageReceived,
    Misbehaviour,
    PersistState,
    ScheduleTimeout,
    SignedState,
    StartHeight,
    TimeoutFired,
    TxsAvailable,
)
from consensus.messages import Message, Proposal
from consensus.tendermint import Tendermint, TimeoutConfig
from consensus.validators import ValidatorSet
from node.errors import InvalidBlock
from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.keys import NodeKey, verify_proposal, verify_vote
from node.ledger.mempool import Mempool
from node.ledger.signer import KeySigner
from node.ledger.transactions import make_reading, make_register_device, tx_id
from node.sim.byzantine import Behaviour, Byzantine
from node.sim.invariants import SafetyMonitor
from node.sim.network import Faults, Network, Scheduler
from node.store.base import MemoryStore

CHAIN_ID = "sim"
SIM_TIMEOUTS = TimeoutConfig(300, 100, 100, 50, 100, 50)
MAX_BLOCK_TXS = 20
SYNC_BATCH = 20


class SimApp:
    """The Application the core sees: the node's ledger and mempool at simulated time."""

    def __init__(self, node: SimNode) -> None:
        self.node = node

    def validators(self, height: int) -> ValidatorSet:
        return self.node.ledger.validators_at(height)

    def propose(self, height: int, round: int, time_bump: int = 0) -> Block:
        ledger = self.node.ledger
        time_ms = max(self.node.cluster.now_ms, ledger.head_time_ms) + time_bump
        txs = self.node.mempool.reap(ledger.store, time_ms, height, MAX_BLOCK_TXS)
        return ledger.make_next_block(self.node.key.public, round, time_ms, txs)

    def valid(self, height: int, value: Any) -> bool:
        try:
            self.node.ledger.validate_block(value, now_ms=self.node.cluster.now_ms)
        except InvalidBlock:
            return False
        return True

    def value_id(self, value: Any) -> bytes:
        return value.hash

    def has_pending(self) -> bool:
        return len(self.node.mempool) > 0 or bool(self.node.store.membership().scheduled)


@dataclass
class SimNode:
    index: int
    key: NodeKey
    cluster: Cluster
    byzantine: Byzantine | None = None
    alive: bool = True
    epoch: int = 0
    persisted: SignedState | None = None
    core: Tendermint | None = None
    counters: Counter[str] = field(default_factory=Counter)

    def __post_init__(self) -> None:
        self.store = MemoryStore()
        self.ledger = Ledger(self.store, self.cluster.genesis)
        self.mempool = Mempool(self.ledger.params)
        self.app = SimApp(self)
        self.signer = KeySigner(self.key, CHAIN_ID)

    @property
    def correct(self) -> bool:
        return self.byzantine is None

    # --- lifecycle ----------------------------------------------------------------------------
    def boot(self) -> None:
        self.alive = True
        self.core = Tendermint(
            self.app, self.signer, self.store.height() + 1, SIM_TIMEOUTS, restored=self.persisted
        )
        self.execute(self.core.start())

    def crash(self) -> None:
        self.cluster.trace(f"node {self.index} crashes at height {self.store.height() + 1}")
        self.alive = False
        self.epoch += 1  # timers of the dead process never fire
        self.core = None

    def restart(self) -> None:
        if self.alive:
            return
        self.cluster.trace(f"node {self.index} restarts from persisted state at height "
                           f"{self.store.height() + 1}")
        self.boot()

    # --- inputs -------------------------------------------------------------------------------
    def step(self, event: Any) -> None:
        if self.alive and self.core is not None:
            self.execute(self.core.step(event))

    def receive(self, msg: Message) -> None:
        if not self.alive:
            return
        if not self.cluster.signature_ok(msg):
            self.counters["bad_signature"] += 1
            return
        self.step(MessageReceived(msg))

    def receive_tx(self, tx: dict[str, Any]) -> None:
        if not self.alive:
            return
        was_empty = len(self.mempool) == 0
        _, reason = self.mempool.add(tx, self.store, self.cluster.now_ms)
        if reason is None and was_empty and len(self.mempool) > 0:
            self.step(TxsAvailable())

    # --- outputs ------------------------------------------------------------------------------
    def execute(self, actions: list[Action]) -> None:
        for i, a in enumerate(actions):
            if not self.alive:
                return
            if isinstance(a, PersistState):
                self.persisted = a.state
                if self.cluster.maybe_crash_after_persist(self):
                    self.cluster.trace(f"node {self.index} crashed between persisting and sending "
                                       f"({len(actions) - i - 1} actions lost)")
                    return
            elif isinstance(a, Broadcast):
                self.broadcast(a.message)
            elif isinstance(a, ScheduleTimeout):
                epoch = self.epoch
                ev = TimeoutFired(a.step, a.height, a.round)
                self.cluster.scheduler.after(
                    a.delay_ms, lambda ev=ev, epoch=epoch: self._timer(epoch, ev), f"timeout {self.index}"
                )
            elif isinstance(a, Decide):
                self.decide(a)
            elif isinstance(a, Misbehaviour):
                self.counters[f"misbehaviour:{a.reason}"] += 1

    def _timer(self, epoch: int, event: Any) -> None:
        if epoch == self.epoch:
            self.step(event)

    def broadcast(self, msg: Message) -> None:
        peers = [n.index for n in self.cluster.nodes if n.index != self.index]
        if self.byzantine is None:
            self.cluster.monitor.on_signed(self.index, msg)
            sends: list[tuple[int, Message]] = [(p, msg) for p in peers]
        else:
            sends = self.byzantine.distort(msg, peers, self._alt_proposal(msg))
        for p, m in sends:
            self.cluster.send(self.index, p, m)

    def _alt_proposal(self, msg: Message) -> Proposal | None:
        if not isinstance(msg, Proposal) or self.byzantine is None:
            return None
        block = self.app.propose(msg.height, msg.round, time_bump=1)
        p = Proposal(msg.height, msg.round, block, block.hash, msg.valid_round, self.key.public)
        return self.signer.sign_proposal(p)

    def decide(self, a: Decide) -> None:
        h = a.height
        if self.store.height() < h:
            commit = Commit(h, a.round, a.value_id, tuple(a.precommits))
            self.apply(a.value, commit, how="decided")
        self.cluster.scheduler.after(
            self.cluster.commit_delay_ms,
            lambda epoch=self.epoch: self._timer(epoch, StartHeight(self.store.height() + 1)),
            f"start-height {self.index}",
        )

    def apply(self, block: Block, commit: Commit, how: str) -> bool:
        try:
            self.ledger.commit(block, commit)
        except InvalidBlock as exc:
            if self.correct:
                self.cluster.monitor.fail(f"validity: node {self.index} could not commit {how} block "
                                          f"{block.height}: {exc}")
            return False
        self.mempool.remove([tx_id(tx) for tx in block.txs])
        if self.correct:
            self.cluster.monitor.on_commit(self.index, block.height, block.hash)
        self.cluster.trace(f"node {self.index} commits height {block.height} ({how}, round "
                           f"{commit.round}, {len(block.txs)} txs) {block.hash.hex()[:12]}")
        return True

    # --- gossip and block sync ----------------------------------------------------------------
    def gossip(self) -> None:
        """What a real gossip layer keeps doing: re-send the messages that matter for the current
        height (the core says which) and tell peers how far its ledger is."""
        if not self.alive or self.core is None:
            return
        if self.correct:
            for msg in self.core.gossip_messages():
                for n in self.cluster.nodes:
                    if n.index != self.index:
                        self.cluster.send(self.index, n.index, msg)
        for n in self.cluster.nodes:
            if n.index != self.index:
                self.cluster.send_status(self.index, n.index, self.store.height())

    def on_status(self, peer: int, peer_height: int) -> None:
        """A peer is behind: serve it a batch of committed blocks with their certificates."""
        if not self.alive or peer_height >= self.store.height():
            return
        batch = [
            (self.store.block(h), self.store.commit(h))
            for h in range(peer_height + 1, min(self.store.height(), peer_height + SYNC_BATCH) + 1)
        ]
        self.cluster.send_blocks(self.index, peer, batch)

    def on_blocks(self, batch: list[tuple[Block, Commit]]) -> None:
        if not self.alive:
            return
        applied = False
        for block, commit in batch:
            if block.height != self.store.height() + 1:
                continue
            if not self.apply(block, commit, how="synced"):
                break
            applied = True
        if applied:
            self.step(StartHeight(self.store.height() + 1))


class Cluster:
    def __init__(
        self,
        seed: int,
        validators: int,
        faults: Faults,
        behaviours: list[Behaviour] | None = None,
        trace: Callable[[str], None] | None = None,
        joiners: int = 0,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.faults = faults
        self.scheduler = Scheduler()
        self.network = Network(self.scheduler, self.rng, faults)
        self.monitor = SafetyMonitor()
        self._trace = trace
        self.commit_delay_ms = 5
        self.crash_after_persist = 0.0
        # Joiners run a replica from genesis but are not authorities until the ledger says so.
        keys = [NodeKey.from_seed(bytes([i + 1]) * 32) for i in range(validators + joiners)]
        self.genesis = Genesis(
            chain_id=CHAIN_ID,
            genesis_time_ms=0,
            authorities=tuple(GenesisMember(k.public, f"v{i}") for i, k in enumerate(keys[:validators])),
            timeouts=SIM_TIMEOUTS,
            max_clock_skew_ms=1000,
        )
        self.nodes = [SimNode(i, k, self) for i, k in enumerate(keys)]
        for i, b in enumerate(behaviours or []):
            node = self.nodes[validators - 1 - i]
            node.byzantine = Byzantine(b, node.key, CHAIN_ID, random.Random(seed * 1000 + i))
        self._sig_cache: dict[tuple[Any, ...], bool] = {}
        self.devices = [NodeKey.from_seed(bytes([200 + i]) * 32) for i in range(3)]
        self._seq = [0] * len(self.devices)

    @property
    def now_ms(self) -> int:
        return self.scheduler.now_ms

    def trace(self, line: str) -> None:
        if self._trace is not None:
            self._trace(f"[{self.now_ms:>7} ms] {line}")

    def correct_nodes(self) -> list[SimNode]:
        return [n for n in self.nodes if n.correct]

    # --- network ------------------------------------------------------------------------------
    def signature_ok(self, msg: Message) -> bool:
        # Verification is deterministic: one result per distinct signed message serves every node.
        key = (type(msg), tuple(msg.signing_fields().items()), msg.signature)
        ok = self._sig_cache.get(key)
        if ok is None:
            ok = verify_proposal(CHAIN_ID, msg) if isinstance(msg, Proposal) else verify_vote(CHAIN_ID, msg)
            self._sig_cache[key] = ok
        return ok

    def send(self, src: int, dst: int, msg: Message) -> None:
        self.network.send(src, dst, self.nodes[dst].receive, msg)

    def send_status(self, src: int, dst: int, height: int) -> None:
        self.network.send(src, dst, lambda h: self.nodes[dst].on_status(src, h), height)

    def send_blocks(self, src: int, dst: int, batch: list[tuple[Block, Commit]]) -> None:
        self.network.send(src, dst, self.nodes[dst].on_blocks, batch)

    def maybe_crash_after_persist(self, node: SimNode) -> bool:
        if not self.network.faulty or not self.crash_after_persist or not node.correct:
            return False
        if self.rng.random() >= self.crash_after_persist:
            return False
        node.crash()
        self.scheduler.after(self.rng.randint(50, 1000), node.restart, f"restart {node.index}")
        return True

    # --- workload -----------------------------------------------------------------------------
    def submit_tx(self, tx: dict[str, Any]) -> None:
        """Mempool gossip is not what is under test: every node gets every tx, with a delay."""
        for n in self.nodes:
            delay = self.rng.randint(self.faults.min_delay_ms, self.faults.max_delay_ms)
            self.scheduler.after(delay, lambda n=n: n.receive_tx(tx), f"tx -> {n.index}")

    def register_devices(self) -> None:
        owner = self.nodes[0].key
        for i, d in enumerate(self.devices):
            self.submit_tx(make_register_device(owner, CHAIN_ID, d.public, f"sensor-{i}"))

    def submit_reading(self) -> None:
        i = self.rng.randrange(len(self.devices))
        self._seq[i] += 1
        temp = round(self.rng.uniform(18, 28), 2)
        hum = round(self.rng.uniform(30, 70), 2)
        self.submit_tx(make_reading(self.devices[i], CHAIN_ID, self._seq[i], self.now_ms, temp, hum))

    def every(self, period_ms: int, fn: Callable[[], None], label: str, until_ms: int) -> None:
        def tick() -> None:
            fn()
            if self.now_ms + period_ms <= until_ms:
                self.scheduler.after(period_ms, tick, label)

        self.scheduler.after(period_ms, tick, label)

    # --- queries ------------------------------------------------------------------------------
    def heights(self) -> list[int]:
        return [n.store.height() for n in self.nodes]

    def min_correct_height(self) -> int:
        return min(n.store.height() for n in self.correct_nodes())
