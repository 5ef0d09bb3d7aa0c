"""Simulated fedledger nodes: the node's own host core (node/host/) driving real consensus cores
over real ledgers (in-memory stores) with real Ed25519 signatures, on a simulated clock and network."""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from consensus.events import Event, MessageReceived, SignedState
from consensus.messages import Message, Proposal
from consensus.tendermint import Tendermint, TimeoutConfig
from node.errors import InvalidBlock
from node.host.core import ConsensusHost, HostConfig
from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.keys import NodeKey, verify_proposal, verify_vote
from node.ledger.mempool import Mempool
from node.ledger.state import StateDelta
from node.ledger.transactions import Transaction, make_reading, make_register_device
from node.sim.byzantine import Behaviour, Byzantine
from node.sim.invariants import SafetyMonitor
from node.sim.network import Faults, Network, Scheduler
from node.store.base import MemoryStore

CHAIN_ID = "sim"
SIM_TIMEOUTS = TimeoutConfig(300, 100, 100, 50, 100, 50)
SIM_HOST = HostConfig(max_block_txs=20, commit_delay_ms=5)
SYNC_BATCH = 20
LOG = logging.getLogger("fedledger.sim")
LOG.addHandler(logging.NullHandler())  # a seed's invalid proposals are counted, not printed


@dataclass
class SimNode:
    """One simulated process: the node's real host core (node/host/) on the simulated clock,
    network and persistence. It implements node.host.hostio.HostIO; what a real process would
    lose in a crash (the host, its timers, anything not yet sent) dies with `crash()`."""

    index: int
    key: NodeKey
    cluster: Cluster
    byzantine: Byzantine | None = None
    alive: bool = True
    epoch: int = 0
    persisted: SignedState | None = None
    consensus: ConsensusHost | None = None
    counters: Counter[str] = field(default_factory=Counter)
    clock_offset_ms: int = 0  # this process's clock against the simulated true time

    def __post_init__(self) -> None:
        self.store = MemoryStore()
        self.ledger = Ledger(self.store, self.cluster.genesis)
        self.mempool = Mempool(self.ledger.params)

    @property
    def correct(self) -> bool:
        return self.byzantine is None

    @property
    def core(self) -> Tendermint | None:
        return self.consensus.core if self.consensus is not None else None

    # --- lifecycle ----------------------------------------------------------------------------
    def boot(self) -> None:
        self.alive = True
        self.consensus = ConsensusHost(self.ledger, self.mempool, self.key, self, SIM_HOST,
                                       restored=self.persisted, counters=self.counters, log=LOG)
        if self.byzantine is not None and self.byzantine.behaviour is Behaviour.SKEW_EDGE:
            # A test-only Byzantine build of the proposer: every block it proposes is timed as far
            # ahead as the skew bound allows on a clock that is right, so correct nodes whose
            # clock runs behind find it untimely while the others prevote it.
            skew = self.cluster.genesis.max_clock_skew_ms

            def at_the_edge() -> int:
                return max(self.cluster.now_ms + skew - 1, self.ledger.head_time_ms)

            self.consensus.app.proposal_time_ms = at_the_edge  # type: ignore[method-assign]
        self.consensus.start()

    def crash(self) -> None:
        self.cluster.trace(f"node {self.index} crashes at height {self.store.height() + 1}")
        self.alive = False
        self.epoch += 1  # timers of the dead process never fire
        if self.consensus is not None:
            self.consensus.halt()  # and whatever its current step had still to do is lost
        self.consensus = None

    def restart(self) -> None:
        if self.alive:
            return
        self.cluster.trace(f"node {self.index} restarts from persisted state at height "
                           f"{self.store.height() + 1}")
        self.boot()

    # --- inputs -------------------------------------------------------------------------------
    def step(self, event: Event) -> None:
        if self.alive and self.consensus is not None:
            self.consensus.step(event)

    def receive(self, msg: Message) -> None:
        if not self.alive:
            return
        if not self.cluster.signature_ok(msg):
            self.counters["bad_signature"] += 1
            return
        self.step(MessageReceived(msg))

    def receive_tx(self, tx: dict[str, Any]) -> None:
        if self.alive and self.consensus is not None:
            self.consensus.accept_txs([tx])

    # --- HostIO: the simulated world the host core runs in -------------------------------------
    def now_ms(self) -> int:
        return self.cluster.now_ms + self.clock_offset_ms

    def call_later(self, delay_ms: int, callback: Callable[[], None]) -> None:
        epoch = self.epoch

        def fire() -> None:
            if epoch == self.epoch:
                callback()

        self.cluster.scheduler.after(delay_ms, fire, f"timer {self.index}")

    def persist_signed_state(self, state: SignedState) -> None:
        self.persisted = state
        if self.cluster.maybe_crash_after_persist(self):
            self.cluster.trace(f"node {self.index} crashed between persisting and sending")

    def broadcast(self, message: Message) -> None:
        peers = [n.index for n in self.cluster.nodes if n.index != self.index]
        if self.byzantine is None:
            self.cluster.monitor.on_signed(self.index, message)
            sends: list[tuple[int, Message]] = [(p, message) for p in peers]
        else:
            sends = self.byzantine.distort(message, peers, self._alt_proposal(message))
        for p, m in sends:
            self.cluster.send(self.index, p, m)

    def gossip_txs(self, txs: list[Transaction]) -> None:
        pass  # tx gossip is not under test: Cluster.submit_tx hands every tx to every node

    def committed(self, block: Block, commit: Commit, delta: StateDelta, synced: bool) -> None:
        if self.correct:
            self.cluster.monitor.on_commit(self.index, block.height, block.hash)
        self.cluster.trace(f"node {self.index} commits height {block.height} ({_how(synced)}, round "
                           f"{commit.round}, {len(block.txs)} txs) {block.hash.hex()[:12]}")

    def rejected(self, block: Block, error: InvalidBlock, synced: bool) -> None:
        if self.correct:
            self.cluster.monitor.fail(f"validity: node {self.index} could not commit {_how(synced)} block "
                                      f"{block.height}: {error}")

    def height_started(self, height: int) -> None:
        pass

    def halted(self, error: Exception) -> None:
        self.crash()  # what a fail-stopped process is to its peers

    def _alt_proposal(self, msg: Message) -> Proposal | None:
        """The second proposal a Byzantine proposer sends: another valid block for the position."""
        if not isinstance(msg, Proposal) or self.byzantine is None or self.consensus is None:
            return None
        app = self.consensus.app
        if self.byzantine.behaviour is Behaviour.PADDED_CERTIFICATE:
            return self._padded_proposal(msg)
        block = app.build(msg.height, msg.round, app.proposal_time_ms() + 1)
        p = Proposal(msg.height, msg.round, block, block.hash, msg.valid_round, self.key.public)
        return self.consensus.signer.sign_proposal(p)

    def _padded_proposal(self, msg: Proposal) -> Proposal | None:
        """The same block with its last_commit padded past the quorum: junk precommits in the
        names of real validators and a duplicate of a genuine one, the header hashing the padded
        certificate, the proposal signed. Valid-looking to a node that stops checking at quorum."""
        assert self.consensus is not None and self.byzantine is not None
        lc = msg.value.last_commit
        if lc is None or not lc.precommits:
            return None
        rng = self.byzantine.rng
        keys = [n.key.public for n in self.cluster.nodes]
        junk = tuple(replace(rng.choice(lc.precommits), validator=rng.choice(keys),
                             signature=rng.randbytes(64)) for _ in range(2 * len(keys)))
        padded = replace(lc, precommits=(*lc.precommits, lc.precommits[0], *junk))
        block = self.ledger.make_next_block(self.key.public, msg.round, msg.value.header.time_ms,
                                            list(msg.value.txs), last_commit=padded)
        p = Proposal(msg.height, msg.round, block, block.hash, msg.valid_round, self.key.public)
        return self.consensus.signer.sign_proposal(p)

    # --- gossip and block sync ----------------------------------------------------------------
    def gossip(self) -> None:
        """What a real gossip layer keeps doing: re-send the messages that matter for the current
        height (the core says which) and tell peers how far its ledger is."""
        if not self.alive or self.consensus is None:
            return
        if self.correct:
            for msg in self.consensus.gossip_messages():
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
        consensus = self.consensus
        if not self.alive or consensus is None:
            return
        applied = False
        for block, commit in batch:
            if block.height != self.store.height() + 1:
                continue
            if consensus.commit(block, commit, synced=True) is None:
                break
            applied = True
        if applied:
            consensus.start_next_height()


def _how(synced: bool) -> str:
    return "synced" if synced else "decided"


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
        if Behaviour.SKEW_EDGE in (behaviours or []):
            # Correct clocks that disagree by up to +-150 ms (their own generator: the seed's main
            # one stays as it was), so the skew-edge blocks split the correct validators.
            clocks = random.Random(f"clocks/{seed}")
            for node in self.nodes:
                if node.byzantine is None:
                    node.clock_offset_ms = clocks.randint(-150, 150)
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
