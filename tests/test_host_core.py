"""The host core (node/host/) on a recording fake of its I/O: the order contract a node and the
simulator both rely on (persist before broadcast, commit before the next height, the commit
delay), mempool admission, the commit path's refusals and a halt mid-step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from consensus.events import SignedState, StartHeight
from consensus.messages import Message, Proposal, Vote
from node.errors import InvalidBlock, StorageError
from node.host.core import JOIN_REQUEST_BURST, JOIN_REQUESTS_PER_S, ConsensusHost, HostConfig
from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.keys import NodeKey
from node.ledger.mempool import Mempool
from node.ledger.state import StateDelta
from node.ledger.transactions import Transaction, make_join_request, make_register_device
from node.store.base import MemoryStore
from tests.factories import GENESIS_TIME_MS, device_key, make_block, make_genesis

CONFIG = HostConfig(max_block_txs=2, commit_delay_ms=7)


class RecordingIO:
    """HostIO that writes every call into one trace, and runs timers only when told to."""

    def __init__(self) -> None:
        self.now = GENESIS_TIME_MS + 60_000
        self.trace: list[tuple[str, Any]] = []
        self.timers: list[tuple[int, Callable[[], None]]] = []
        self.on_persist: Callable[[SignedState], None] | None = None

    def now_ms(self) -> int:
        return self.now

    def call_later(self, delay_ms: int, callback: Callable[[], None]) -> None:
        self.trace.append(("timer", delay_ms))
        self.timers.append((delay_ms, callback))

    def persist_signed_state(self, state: SignedState) -> None:
        self.trace.append(("persist", state))
        if self.on_persist is not None:
            self.on_persist(state)

    def broadcast(self, message: Message) -> None:
        self.trace.append(("broadcast", message))

    def gossip_txs(self, txs: list[Transaction]) -> None:
        self.trace.append(("gossip_txs", [t.id for t in txs]))

    def committed(self, block: Block, commit: Commit, delta: StateDelta, synced: bool) -> None:
        self.trace.append(("committed", (block.height, synced)))

    def rejected(self, block: Block, error: InvalidBlock, synced: bool) -> None:
        self.trace.append(("rejected", (block.height, synced)))

    def height_started(self, height: int) -> None:
        self.trace.append(("height_started", height))

    def halted(self, error: Exception) -> None:
        self.trace.append(("halted", error))

    def fire(self, delay_ms: int) -> None:
        """Run the pending timers of exactly this delay (in the order they were set)."""
        due = [t for t in self.timers if t[0] == delay_ms]
        self.timers = [t for t in self.timers if t[0] != delay_ms]
        for _, callback in due:
            callback()

    def kinds(self) -> list[str]:
        return [k for k, _ in self.trace]


def solo() -> tuple[ConsensusHost, RecordingIO, list[NodeKey]]:
    """One authority: it decides alone, so a whole height runs inside one step."""
    keys, genesis = make_genesis(1)
    ledger = Ledger(MemoryStore(), genesis)
    io = RecordingIO()
    host = ConsensusHost(ledger, Mempool(ledger.params), keys[0], io, CONFIG)
    return host, io, keys


def registrations(keys: list[NodeKey], n: int) -> list[dict[str, Any]]:
    return [make_register_device(keys[0], "test-chain", device_key(i).public, f"d{i}") for i in range(n)]


def test_every_signed_message_is_persisted_before_it_is_broadcast() -> None:
    host, io, keys = solo()
    host.start()
    host.accept_txs(registrations(keys, 1))
    sent = [(i, m) for i, (k, m) in enumerate(io.trace) if k == "broadcast"]
    assert {type(m) for _, m in sent} == {Proposal, Vote}
    for i, msg in sent:
        persisted = [s for k, s in io.trace[:i] if k == "persist"]
        assert persisted and msg in persisted[-1].signed, f"{msg} left before it was persisted"


def test_a_decided_block_is_committed_then_the_next_height_starts_after_the_commit_delay() -> None:
    host, io, keys = solo()
    host.start()
    host.accept_txs(registrations(keys, 1))
    assert host.ledger.height == 1  # decided and committed inside the step
    kinds = io.kinds()
    committed_at = kinds.index("committed")
    assert "broadcast" in kinds[:committed_at]
    assert io.trace[committed_at + 1] == ("timer", CONFIG.commit_delay_ms)  # then, and only then
    assert host.core.height == 1 and "height_started" not in kinds
    io.fire(CONFIG.commit_delay_ms)
    assert host.core.height == 2 and io.trace[-1] == ("height_started", 2)


def test_proposals_hold_at_most_max_block_txs() -> None:
    host, _, keys = solo()
    host.start()
    host.accept_txs(registrations(keys, 5))
    block = host.ledger.store.block(1)
    assert block is not None and len(block.txs) == CONFIG.max_block_txs
    assert len(host.mempool) == 5 - CONFIG.max_block_txs  # committed txs leave the mempool


def test_client_txs_are_gossiped_and_wake_the_core_but_peer_txs_are_not_relayed() -> None:
    host, io, keys = solo()
    host.start()
    [a, b] = registrations(keys, 2)
    assert host.core.waiting_for_txs
    [(id_b, reason)] = host.accept_txs([b], from_peer=True)
    assert reason is None
    assert "gossip_txs" not in io.kinds() and host.ledger.height == 1  # TxsAvailable woke the proposer
    io.trace.clear()
    io.fire(CONFIG.commit_delay_ms)
    [(id_a, reason)] = host.accept_txs([a])
    assert reason is None
    assert ("gossip_txs", [id_a]) in io.trace and id_a != id_b
    assert host.ledger.height == 2


def test_admission_refusals_are_counted_with_their_reason() -> None:
    host, io, keys = solo()
    [(txid, reason)] = host.accept_txs([{"kind": "nonsense"}])
    assert txid is None and reason == "malformed" and host.counters["rejected:malformed"] == 1
    reg = registrations(keys, 1)[0]
    bad = {**reg, "sig": bytes(64)}
    [(_, reason)] = host.accept_txs([bad])
    assert reason is not None and host.counters[f"rejected:{reason}"] == 1
    assert len(host.mempool) == 0 and "gossip_txs" not in io.kinds()


def test_a_synced_block_that_fails_validation_is_refused_counted_and_reported() -> None:
    host, io, keys = solo()
    block, commit = make_block(host.ledger, keys)
    forged = Commit(commit.height, commit.round, bytes(32), commit.precommits)
    assert host.commit(block, forged, synced=True) is None
    assert io.trace[-1] == ("rejected", (1, True)) and host.ledger.height == 0
    assert any(k.startswith("rejected_block:") for k in host.counters)
    assert host.commit(block, commit, synced=True) is not None
    assert io.trace[-1] == ("committed", (1, True))
    host.start_next_height()
    assert host.core.height == 2 and io.trace[-1] == ("height_started", 2)


def test_a_host_halted_between_persist_and_send_sends_nothing_more() -> None:
    host, io, keys = solo()
    io.on_persist = lambda state: host.halt()  # the process dies right after its first fsync
    host.start()
    host.accept_txs(registrations(keys, 1))
    kinds = io.kinds()
    assert kinds.count("persist") == 1 and "broadcast" not in kinds and "committed" not in kinds
    before = len(io.trace)
    host.step(StartHeight(1))
    assert len(io.trace) == before  # a dead process takes no more events


def test_timers_set_before_a_halt_fire_into_nothing() -> None:
    host, io, keys = solo()
    host.start()
    host.accept_txs(registrations(keys, 1))
    assert io.timers  # the commit delay is running
    host.halt()
    io.fire(CONFIG.commit_delay_ms)
    assert host.core.height == 1 and "height_started" not in io.kinds()


def test_block_times_never_go_back_even_when_the_clock_does() -> None:
    host, io, keys = solo()
    host.start()
    host.accept_txs(registrations(keys, 1))
    first = host.ledger.head_time_ms
    io.fire(CONFIG.commit_delay_ms)
    io.now = first - 1000  # behind the last proposer's clock, within the allowed skew
    host.accept_txs(registrations(keys, 2)[1:])
    block = host.ledger.store.block(2)
    assert block is not None and block.header.time_ms == first


def test_a_signed_state_that_cannot_be_made_durable_stops_the_host_before_anything_is_sent() -> None:
    """Issue 11, finding 5: the failed write was swallowed, the core counted the vote as signed and
    re-gossip sent it later; after a kill -9 the node could sign a conflicting one."""
    host, io, keys = solo()

    def disk_full(state: SignedState) -> None:
        raise StorageError("disk I/O error")

    io.on_persist = disk_full
    host.start()
    host.accept_txs(registrations(keys, 1))
    kinds = io.kinds()
    assert "broadcast" not in kinds and kinds.count("persist") == 1
    assert kinds[-1] == "halted" and host.halted
    assert host.gossip_messages() == []  # the unpersisted proposal is never re-sent either
    host.accept_txs(registrations(keys, 2)[1:])
    assert io.kinds() == kinds  # nothing more runs


def test_a_block_that_cannot_be_written_stops_the_host_instead_of_skipping_the_height() -> None:
    host, io, keys = solo()
    host.start()

    def broken(*args: object, **kwargs: object) -> None:
        raise StorageError("database is locked")

    host.ledger.store.commit_block = broken  # type: ignore[method-assign]
    host.accept_txs(registrations(keys, 1))
    assert host.halted and io.kinds()[-1] == "halted" and "committed" not in io.kinds()


def test_join_requests_from_fresh_keys_are_admitted_at_a_node_wide_rate_before_they_are_parsed() -> None:
    """Issue 11, join flood (found by scripts/adversary.py): join requests cost nothing to make, and
    a client loop of them from many connections kept a node's event loop busy parsing and checking
    them, so honest readings fell to a tenth. They are now admitted at a node-wide rate, refused
    before parsing beyond it, and admitted again as the budget refills."""
    host, io, _ = solo()
    flood = [make_join_request(NodeKey.generate(), "test-chain", "participant", f"j{i}", f"ws://h{i}:1")
             for i in range(300)]
    results = host.accept_txs(flood)
    admitted = [r for r in results if r[1] is None]
    limited = [r for r in results if r[1] == "rate_limited"]
    assert 0 < len(admitted) <= JOIN_REQUEST_BURST and len(admitted) + len(limited) == len(flood)
    assert all(txid is None for txid, _ in limited)  # refused before parsing: no id computed
    assert host.counters["rejected:rate_limited"] == len(limited)
    io.now += 1000  # a second later the budget has refilled by its rate
    later = [make_join_request(NodeKey.generate(), "test-chain", "participant", f"k{i}", f"ws://k{i}:1")
             for i in range(100)]
    again = [r for r in host.accept_txs(later) if r[1] is None]
    assert 0 < len(again) <= JOIN_REQUESTS_PER_S + 1
