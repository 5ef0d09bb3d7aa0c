"""One contract, two stores: MemoryStore and SqliteStore must behave the same."""

import hashlib
import sqlite3

import pytest

from node.errors import StorageError
from node.ledger.blocks import block_from_parts, commit_from_bytes
from node.ledger.chain import Ledger
from node.ledger.state import StateDelta
from node.ledger.transactions import tx_id
from node.store.base import MemoryStore
from node.store.sqlite import SqliteStore
from tests.factories import commit_next, make_block, make_genesis, populated_ledger, readings_for


@pytest.fixture(params=["memory", "sqlite"])
def store(request, tmp_path):
    s = MemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "node.db")
    yield s
    s.close()


@pytest.fixture
def chain(store):
    keys, genesis = make_genesis(4)
    ledger = Ledger(store, genesis)
    devices = populated_ledger(ledger, keys, n_devices=2, n_blocks=2, per_block=3)
    return keys, genesis, ledger, devices


def test_block_parts_rebuild_the_same_block_and_certificate(chain, store):
    """What block sync sends (the stored bytes) rebuilds exactly the committed block."""
    for h in range(1, store.height() + 1):
        raw_block, raw_txs, raw_commit = store.block_parts(h)
        block = block_from_parts(raw_block, raw_txs)
        assert block.hash == store.block(h).hash and block.tx_ids == store.block(h).tx_ids
        assert block.txs == store.block(h).txs and block.last_commit == store.block(h).last_commit
        assert commit_from_bytes(raw_commit) == store.commit(h)
    assert store.block_parts(store.height() + 1) is None


def test_empty_store(store):
    assert store.height() == 0 and store.head_hash() is None
    assert store.block(1) is None and store.commit(1) is None and store.tx(b"x" * 32) is None
    assert store.genesis() is None and store.load_consensus_state() is None
    assert store.readings() == [] and store.members() == [] and store.devices() == []


def test_genesis_is_recorded_once(store):
    _, g = make_genesis(4)
    Ledger(store, g)
    Ledger(store, g)  # reopening with the same genesis is fine
    assert store.genesis() == (g.hash, g.to_json())
    assert [m.since_height for m in store.members()] == [0] * 4
    _, other = make_genesis(4, chain_id="other")
    with pytest.raises(StorageError, match="different genesis"):
        Ledger(store, other)


def test_blocks_commits_and_txs_read_back(chain, store):
    assert store.height() == 3
    for h in range(1, 4):
        b = store.block(h)
        assert b is not None and b.height == h
        assert store.block_hash(h) == b.hash and store.block_by_hash(b.hash) == b
        assert store.commit(h).block_id == b.hash
        for i, raw in enumerate(b.txs):
            rec = store.tx(tx_id(raw))
            assert rec is not None and (rec.height, rec.index, rec.raw) == (h, i, raw)
    assert store.head_hash() == store.block(3).hash
    assert store.block(2).last_commit == store.commit(1)


def test_devices_members_and_readings(chain, store):
    keys, _, _, devices = chain
    d0 = store.device(devices[0].public)
    assert d0.owner == keys[0].public and d0.last_seq == 5 and d0.registered_height == 1
    assert [d.device for d in store.devices()] == sorted(d.public for d in devices)
    assert store.member(keys[1].public).role == "authority" and store.member(devices[0].public) is None
    rows = store.readings()
    assert len(rows) == 12 and [r.height for r in rows] == sorted(r.height for r in rows)
    mine = store.readings(devices[1].public)
    assert [r.seq for r in mine] == list(range(6))
    assert len(store.readings(height=2)) == 6 and len(store.readings(limit=4)) == 4
    assert store.readings(devices[0].public, height=3, limit=1)[0].seq == 3


def test_latest_readings_and_reading_counts(chain, store):
    _, _, _, devices = chain
    latest = store.latest_readings(devices[1].public, 4)
    assert [r.seq for r in latest] == [5, 4, 3, 2]
    assert latest[0] == store.readings(devices[1].public)[-1]
    assert store.latest_readings(devices[1].public, 0) == [] and store.latest_readings(b"\0" * 32, 5) == []
    assert store.reading_counts(1, store.height()) == {2: 6, 3: 6}  # block 1 registers the devices
    assert store.reading_counts(3, 3) == {3: 6} and store.reading_counts(5, 9) == {}


def test_device_readings_up_to_a_height(chain, store):
    _, _, _, devices = chain
    full = store.readings(devices[1].public)
    got = store.device_readings(devices[1].public, 2)  # block 2: seqs 0..2 (block 1 registers)
    assert got == [(r.tx_id, r.seq, r.timestamp_ms, r.temperature_c, r.humidity_pct) for r in full[:3]]
    assert [r[1] for r in store.device_readings(devices[1].public, 99)] == list(range(6))
    assert store.device_readings(devices[1].public, 1) == [] and store.device_readings(b"\0" * 32, 9) == []


def test_commit_block_refuses_wrong_height_or_commit(chain, store):
    keys, _, ledger, _ = chain
    block, commit = make_block(ledger, keys)
    delta = ledger.validate_block(block)
    with pytest.raises(StorageError, match="not for block"):
        store.commit_block(block, store.commit(1), delta)
    with pytest.raises(StorageError, match="delta"):
        store.commit_block(block, commit, StateDelta(99))
    store.commit_block(block, commit, delta)
    with pytest.raises(StorageError, match="store is at height 4"):
        store.commit_block(block, commit, delta)
    assert store.height() == 4


def test_blobs_are_content_addressed(store):
    h = store.put_blob(b"weights")
    assert h == hashlib.sha256(b"weights").digest()
    assert store.put_blob(b"weights") == h and store.get_blob(h) == b"weights"
    assert store.get_blob(b"\x00" * 32) is None


def test_consensus_state_is_replaced(store):
    store.save_consensus_state(b"one")
    store.save_consensus_state(b"two")
    assert store.load_consensus_state() == b"two"


def test_sqlite_survives_reopen(tmp_path):
    keys, genesis = make_genesis(4)
    s = SqliteStore(tmp_path / "node.db")
    populated_ledger(Ledger(s, genesis), keys, n_blocks=1)
    s.save_consensus_state(b"state")
    head = s.head_hash()
    s.close()
    s2 = SqliteStore(tmp_path / "node.db")
    assert s2.head_hash() == head and s2.load_consensus_state() == b"state" and len(s2.readings()) == 6
    ledger = Ledger(s2, genesis)
    commit_next(ledger, keys)
    assert s2.height() == 3
    db = sqlite3.connect(tmp_path / "node.db")
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s2.close()


def snapshot(path):
    db = sqlite3.connect(path)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
    out = {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall(), key=repr) for t in tables}
    db.close()
    return out


def test_failure_mid_commit_leaves_sqlite_unchanged(tmp_path, monkeypatch):
    path = tmp_path / "node.db"
    keys, genesis = make_genesis(4)
    store = SqliteStore(path)
    ledger = Ledger(store, genesis)
    devices = populated_ledger(ledger, keys, n_blocks=1)
    before = snapshot(path)

    t = ledger.head_time_ms + 1000
    block, commit = make_block(ledger, keys, readings_for(devices[0], genesis.chain_id, 10, 2, t), time_ms=t)
    delta = ledger.validate_block(block)
    # Fail after the block, commit and tx rows are written: inside the readings insert.
    real = store._db

    class FailingReadings:
        def __getattr__(self, name):
            return getattr(real, name)

        def executemany(self, sql, rows):
            if "INSERT INTO readings" in sql:
                raise sqlite3.OperationalError("disk I/O error (injected)")
            return real.executemany(sql, rows)

    monkeypatch.setattr(store, "_db", FailingReadings())
    with pytest.raises(StorageError, match="rolled back"):
        store.commit_block(block, commit, delta)
    monkeypatch.setattr(store, "_db", real)
    assert snapshot(path) == before
    assert store.height() == 2 and store.device(devices[0].public).last_seq == 2
    # A constraint violation mid-way (reading of an unknown device) also rolls back everything.
    delta.device_seqs = {}
    delta.readings[0] = type(delta.readings[0])(**{**delta.readings[0].__dict__, "device": b"\x09" * 32})
    with pytest.raises(StorageError):
        store.commit_block(block, commit, delta)
    assert snapshot(path) == before
    store.close()


def test_block_rows_summarise_without_decoding_txs(chain, store):
    rows = store.block_rows(1, 10**6)
    assert [r["height"] for r in rows] == list(range(1, store.height() + 1))
    for r in rows:
        b = store.block(r["height"])
        assert r["hash"] == b.hash.hex() and r["num_txs"] == len(b.txs) and r["round"] == b.header.round
        assert r["prev_hash"] == b.header.prev_hash.hex() and r["time_ms"] == b.header.time_ms
    assert store.block_rows(2, 1) == [] and store.block_rows(store.height() + 1, store.height() + 5) == []
