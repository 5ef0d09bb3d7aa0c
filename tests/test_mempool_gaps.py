"""A proposer keeps each device's readings in sequence (node/ledger/mempool.py): a reading after a
gap in its device's sequence waits for the missing ones for a while. Without it, a node that
missed some gossip (it restarted) committed a device's later readings first and the earlier ones,
held by the other nodes, were refused for good: tests/test_launch_node_death.py lost 11-15 signed
readings per device that way."""

from __future__ import annotations

from node.ledger.chain import Ledger
from node.ledger.mempool import GAP_WAIT_MS, Mempool
from node.ledger.transactions import parse_tx
from node.store.base import MemoryStore
from tests.factories import commit_next, make_genesis, populated_ledger, readings_for


def seqs(txs: list[dict]) -> list[int]:
    return [parse_tx(t).body.seq for t in txs]


def test_a_reading_after_a_gap_waits_for_its_predecessors_then_all_go_in_order() -> None:
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    (dev, *_) = populated_ledger(ledger, keys, n_devices=1, n_blocks=1, per_block=3)  # seqs 0..2
    t = ledger.head_time_ms + 1000
    later = readings_for(dev, ledger.chain_id, 5, 2, t)  # 5, 6: 3 and 4 missing here
    missing = readings_for(dev, ledger.chain_id, 3, 2, t)
    pool = Mempool(ledger.params)
    for tx in later:
        assert pool.add(tx, ledger.store, t)[1] is None
    h = ledger.height + 1
    assert pool.reap(ledger.store, t + 500, h, 100) == []  # 3 and 4 may be on their way
    for tx in missing:
        assert pool.add(tx, ledger.store, t + 600)[1] is None
    first = pool.reap(ledger.store, t + 700, h, 100)
    assert seqs(first) == [3, 4]  # in arrival order 5, 6 still follow a gap in this pass
    commit_next(ledger, keys, first, time_ms=t + 700)
    pool.remove([parse_tx(x).id for x in first])
    assert seqs(pool.reap(ledger.store, t + 800, h + 1, 100)) == [5, 6]


def test_a_device_that_really_skipped_numbers_waits_only_so_long() -> None:
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    (dev, *_) = populated_ledger(ledger, keys, n_devices=1, n_blocks=1, per_block=3)
    t = ledger.head_time_ms + 1000
    (skipped,) = readings_for(dev, ledger.chain_id, 9, 1, t)
    pool = Mempool(ledger.params)
    assert pool.add(skipped, ledger.store, t)[1] is None
    h = ledger.height + 1
    assert pool.reap(ledger.store, t + GAP_WAIT_MS - 1, h, 100) == []
    assert seqs(pool.reap(ledger.store, t + GAP_WAIT_MS, h, 100)) == [9]
