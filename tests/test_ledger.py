"""Ledger.validate_block / commit rules, and verify_chain catching tampering at the right height."""

import dataclasses
import sqlite3

import pytest

from node.errors import BlockReason, InvalidBlock
from node.ledger.blocks import Block, Header
from node.ledger.blocks import make_block as raw_make_block
from node.ledger.chain import Ledger
from node.ledger.codec import decode, encode
from node.ledger.transactions import make_reading
from node.store.base import MemoryStore
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain
from tests.factories import (
    CHAIN_ID,
    commit_next,
    key_for,
    make_block,
    make_genesis,
    populated_ledger,
    sign_commit,
)


@pytest.fixture
def setup():
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    devices = populated_ledger(ledger, keys, n_devices=1, n_blocks=1, per_block=2)
    return keys, genesis, ledger, devices


def with_header(block: Block, **changes) -> Block:
    return dataclasses.replace(block, header=dataclasses.replace(block.header, **changes))


def rejects(ledger, block, reason, **kw):
    with pytest.raises(InvalidBlock) as ei:
        ledger.validate_block(block, **kw)
    assert ei.value.reason is reason, ei.value
    assert ei.value.height == block.height or reason in (BlockReason.BAD_HEIGHT, BlockReason.WRONG_CHAIN)


def test_valid_next_block(setup):
    keys, _, ledger, _ = setup
    block, commit = make_block(ledger, keys)
    assert ledger.validate_block(block).height == 3
    ledger.commit(block, commit)
    assert ledger.height == 3 and ledger.head_hash == block.hash


def test_header_rules(setup):
    keys, _, ledger, _ = setup
    block, _ = make_block(ledger, keys)
    rejects(ledger, with_header(block, chain_id="other"), BlockReason.WRONG_CHAIN)
    rejects(ledger, with_header(block, height=4), BlockReason.BAD_HEIGHT)
    rejects(ledger, with_header(block, prev_hash=b"\x00" * 32), BlockReason.BAD_PREV_HASH)
    rejects(
        ledger,
        with_header(
            block, proposer=keys[0].public if block.header.proposer != keys[0].public else keys[1].public
        ),
        BlockReason.BAD_PROPOSER,
    )
    rejects(ledger, with_header(block, time_ms=ledger.head_time_ms - 1), BlockReason.BAD_TIME)
    assert not ledger.timely(block, now_ms=block.header.time_ms - ledger.params.max_skew_ms - 1)
    assert ledger.timely(block, now_ms=block.header.time_ms - ledger.params.max_skew_ms)
    rejects(ledger, with_header(block, tx_root=b"\x00" * 32), BlockReason.BAD_TX_ROOT)
    rejects(ledger, with_header(block, last_commit_hash=b"\x00" * 32), BlockReason.BAD_LAST_COMMIT)


def test_proposer_rotates_with_round(setup):
    keys, _, ledger, _ = setup
    block, commit = make_block(ledger, keys, round=2)
    assert block.header.proposer == ledger.validators_at(3).proposer(3, 2)
    ledger.commit(block, commit)


def test_last_commit_must_certify_the_previous_block(setup):
    keys, _, ledger, _ = setup
    prev = ledger.head_hash
    weak = sign_commit(keys[:2], CHAIN_ID, 2, 0, prev)
    h = ledger.height + 1
    proposer = ledger.validators_at(h).proposer(h, 0)
    block = raw_make_block(CHAIN_ID, h, 0, prev, ledger.head_time_ms + 1, proposer, [], weak)
    rejects(ledger, block, BlockReason.BAD_LAST_COMMIT)
    missing = raw_make_block(CHAIN_ID, h, 0, prev, ledger.head_time_ms + 1, proposer, [], None)
    rejects(ledger, missing, BlockReason.BAD_LAST_COMMIT)


def test_block_one_has_no_last_commit():
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    block, commit = make_block(ledger, keys)
    assert block.header.prev_hash == genesis.hash and block.last_commit is None
    bogus = sign_commit(keys, CHAIN_ID, 0, 0, genesis.hash)
    with_lc = raw_make_block(
        CHAIN_ID, 1, 0, genesis.hash, block.header.time_ms, block.header.proposer, [], bogus
    )
    rejects(ledger, with_lc, BlockReason.BAD_LAST_COMMIT)
    ledger.commit(block, commit)


def test_invalid_tx_rejects_the_block_and_commit_needs_a_quorum(setup):
    keys, _, ledger, devices = setup
    replay = make_reading(devices[0], CHAIN_ID, 0, ledger.head_time_ms, 20.0, 50.0)
    block, _ = make_block(ledger, keys, [replay])
    rejects(ledger, block, BlockReason.INVALID_TX)
    block, _ = make_block(ledger, keys)
    with pytest.raises(InvalidBlock) as ei:
        ledger.commit(block, sign_commit(keys[:2], CHAIN_ID, block.height, 0, block.hash))
    assert ei.value.reason is BlockReason.BAD_COMMIT
    assert ledger.height == 2


def test_mempool_check_uses_committed_state(setup):
    _, _, ledger, devices = setup
    assert (
        ledger.check_tx(make_reading(devices[0], CHAIN_ID, 2, ledger.head_time_ms, 20.0, 50.0), 0) is not None
    )
    ok = make_reading(devices[0], CHAIN_ID, 2, ledger.head_time_ms, 20.0, 50.0)
    assert ledger.check_tx(ok, ledger.head_time_ms) is None


# --- verify_chain -----------------------------------------------------------------------------


@pytest.fixture
def sqlite_chain(tmp_path):
    keys, genesis = make_genesis(4)
    path = tmp_path / "node.db"
    store = SqliteStore(path)
    ledger = Ledger(store, genesis)
    populated_ledger(ledger, keys, n_devices=2, n_blocks=4, per_block=2)  # heights 1..5
    yield genesis, store, path
    store.close()


def test_untouched_replica_verifies(sqlite_chain):
    genesis, store, _ = sqlite_chain
    report = verify_chain(store, genesis)
    assert report.ok and report.height == 5 and report.verified_height == 5
    assert report.counts == {"blocks": 5, "txs": 18, "readings": 16, "precommits": 20}
    assert report.to_dict()["first_bad_height"] is None


def tamper(path, sql, *args):
    db = sqlite3.connect(path)
    db.execute(sql, args)
    db.commit()
    db.close()


def test_tampered_reading_row_is_caught_at_its_height(sqlite_chain):
    genesis, store, path = sqlite_chain
    tamper(
        path,
        "UPDATE readings SET temperature_c = 99.0 WHERE rowid = (SELECT rowid FROM readings"
        " WHERE height = 4 LIMIT 1)",
    )
    report = verify_chain(store, genesis)
    assert not report.ok and report.first_bad_height == 4 and report.verified_height == 3
    assert "readings" in report.error


def test_tampered_raw_tx_bytes_are_caught_at_their_height(sqlite_chain):
    genesis, store, path = sqlite_chain
    db = sqlite3.connect(path)
    tx_id, raw = db.execute(
        "SELECT id, raw FROM txs WHERE height = 3 AND kind = 'reading' LIMIT 1"
    ).fetchone()
    db.close()
    tx = decode(raw)
    tx["body"]["temperature_c"] = 35.0
    tamper(path, "UPDATE txs SET raw = ? WHERE id = ?", encode(tx), tx_id)
    report = verify_chain(store, genesis)
    assert not report.ok and report.first_bad_height == 3
    assert "tx_root" in report.error


def test_undecodable_raw_tx_bytes_are_caught(sqlite_chain):
    genesis, store, path = sqlite_chain
    tamper(path, "UPDATE txs SET raw = x'c1' WHERE height = 2 AND idx = 0")
    assert verify_chain(store, genesis).first_bad_height == 2


@pytest.mark.parametrize(
    "sql, height",
    [
        ("DELETE FROM readings WHERE height = 5", 5),
        ("UPDATE devices SET last_seq = 100", 1),
        ("UPDATE blocks SET hash = x'00' WHERE height = 2", 2),
        ("UPDATE commits SET raw = x'80' WHERE height = 3", 3),
        ("UPDATE txs SET kind = 'model_commit' WHERE height = 4 AND idx = 1", 4),
    ],
)
def test_other_tampering(sqlite_chain, sql, height):
    genesis, store, path = sqlite_chain
    tamper(path, sql)
    report = verify_chain(store, genesis)
    assert not report.ok and report.first_bad_height == height, report


def test_wrong_genesis_is_height_zero(sqlite_chain):
    _, store, _ = sqlite_chain
    _, other = make_genesis(4, chain_id="other")
    assert verify_chain(store, other).first_bad_height == 0


def test_memory_store_forged_block_is_caught():
    keys, genesis = make_genesis(4)
    store = MemoryStore()
    ledger = Ledger(store, genesis)
    commit_next(ledger, keys)
    commit_next(ledger, keys)
    b = store._blocks[1]
    store._blocks[1] = Block(Header(**{**b.header.to_dict(), "time_ms": 1}), b.txs, b.last_commit)
    report = verify_chain(store, genesis)
    assert report.first_bad_height == 2
    assert key_for(keys, keys[0].public) is keys[0]
