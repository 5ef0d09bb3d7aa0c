"""Data provenance (issue 13.1) and the held-out rule (issue 12.1): an update's num_examples and
readings_root, and an evaluation's, are re-computed by every replica from its own readings at the
update's data cut, through the real validation and commit path; the held-out rule is one pure
function that the ClientApp side applies the same way."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from federated.data import MAIN_SLICE, read_csv_rows
from federated.flower.fl_ledger import NodeLink
from federated.weights import encode_weights
from node.errors import InvalidBlock, Reason
from node.ledger import holdout
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.holdout import GUARD_MS, WINDOW_MS, Split, split_of
from node.ledger.keys import NodeKey
from node.ledger.provenance import datasets, datasets_of, root_of
from node.ledger.state import check_tx
from node.ledger.transactions import make_model_eval, make_model_update, make_train_request, tx_id
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, init_node
from node.store.base import MemoryStore
from node.store.sqlite import SqliteStore
from tests.factories import (
    CHAIN_ID,
    GENESIS_TIME_MS,
    commit_next,
    give_devices,
    make_genesis,
    participant_key,
)
from tests.test_model_txs import NOW, Run, open_run, weights

# --- the held-out rule -------------------------------------------------------------------------


def test_one_window_in_every_five_is_held_out_with_a_guard_around_it() -> None:
    for block in range(-3, 400):
        held = [w for w in range(block * 5, block * 5 + 5) if holdout.window_held_out(w)]
        assert len(held) == 1
    positions = Counter(next(w % 5 for w in range(b * 5, b * 5 + 5) if holdout.window_held_out(w))
                        for b in range(400))
    assert len(positions) == 5 and min(positions.values()) > 40  # no fixed phase
    w = next(w for w in range(10, 100) if holdout.window_held_out(w) and not holdout.window_held_out(w + 1))
    start, end = w * WINDOW_MS, (w + 1) * WINDOW_MS
    assert split_of(start) is Split.HOLDOUT and split_of(end - 1) is Split.HOLDOUT
    assert split_of(end) is Split.GUARD and split_of(end + GUARD_MS - 1) is Split.GUARD
    assert split_of(end + GUARD_MS) is Split.TRAIN


def test_the_bundled_slice_has_a_held_out_window_per_device_and_no_training_row_next_to_one() -> None:
    rows = read_csv_rows(MAIN_SLICE)
    by_device: dict[str, Counter[Split]] = {}
    for r in rows:
        by_device.setdefault(r[0], Counter())[split_of(r[2])] += 1
    assert len(by_device) == 8
    for counts in by_device.values():
        total = sum(counts.values())
        assert 0.15 < counts[Split.HOLDOUT] / total < 0.25 and counts[Split.TRAIN] / total > 0.7
    held = np.array(sorted(r[2] for r in rows if split_of(r[2]) is Split.HOLDOUT))
    for r in rows:
        if split_of(r[2]) is Split.TRAIN:  # no training reading within the guard of a held-out one
            i = np.searchsorted(held, r[2])
            near = [abs(int(held[j]) - r[2]) for j in (i - 1, i) if 0 <= j < len(held)]
            assert min(near) >= GUARD_MS


# --- updates: num_examples and readings_root re-computed --------------------------------------


def forged(run: Run, key: NodeKey, *, n: int | None = None, root: bytes | None = None,
           cut: int | None = None) -> dict:
    cut = run.ledger.height if cut is None else cut
    ds = datasets(run.ledger.store, key.public, min(cut, run.ledger.height))
    return make_model_update(key, CHAIN_ID, run.run, "humidity", 1, run.initial_hash,
                             encode_weights(weights(5)), ds.train_examples if n is None else n, {"loss": 0.5},
                             ds.train_root if root is None else root, data_cut=cut)


@pytest.mark.parametrize("store", ["memory", "sqlite"])
def test_forged_figures_are_refused_through_validation_and_commit(store: str, tmp_path: Path) -> None:
    run = open_run(MemoryStore() if store == "memory" else SqliteStore(tmp_path / "node.db"))
    p0 = participant_key(0)
    own = datasets(run.ledger.store, p0.public, run.ledger.height)
    everything = [r.tx_id for r in run.ledger.store.readings()]
    cases = [
        (forged(run, p0, n=10**12), Reason.NUM_EXAMPLES_MISMATCH),  # issue 13's inflated weight
        (forged(run, p0, n=own.train_examples + own.holdout_examples), Reason.NUM_EXAMPLES_MISMATCH),
        (forged(run, p0, root=root_of(everything)), Reason.READINGS_ROOT_MISMATCH),  # others' readings
        (forged(run, p0, root=own.holdout_root), Reason.READINGS_ROOT_MISMATCH),  # trained on held-out
        (forged(run, p0, cut=run.ledger.height + 1), Reason.BAD_DATA_CUT),  # data not final yet
        (forged(run, p0, n=own.train_examples, cut=0), Reason.BAD_DATA_CUT),
    ]
    # A member with no readings at its cut (height 1 only registered the devices) cannot declare
    # any weight at all: the attack of issue 13, where 10^12 examples took FedAvg over.
    cases.append((forged(run, run.keys[3], n=10**12, cut=1), Reason.NUM_EXAMPLES_MISMATCH))
    for tx, reason in cases:
        assert run.check(tx) is reason
        with pytest.raises(InvalidBlock, match=reason.value):
            commit_next(run.ledger, run.keys, [tx])
    honest = forged(run, p0)
    assert run.check(honest) is None
    commit_next(run.ledger, run.keys, [honest])
    body = run.ledger.store.tx(tx_id(honest)).raw["body"]
    assert body["num_examples"] == own.train_examples > 0 and body["data_cut"] == run.ledger.height - 1


def test_round_zero_names_no_data() -> None:
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    req = make_train_request(keys[0], CHAIN_ID, "humidity", 1)
    commit_next(ledger, keys, [req])

    def initial(root: bytes = bytes(32), cut: int = 0) -> dict:
        return make_model_update(keys[0], CHAIN_ID, tx_id(req), "humidity", 0, bytes(32),
                                 encode_weights(weights(1)), 1, {}, root, data_cut=cut)

    def check(tx: dict) -> Reason | None:
        return check_tx(ledger.store, tx, NOW, ledger.params)

    assert check(initial(cut=1)) is Reason.BAD_DATA_CUT
    assert check(initial(root=b"\x01" * 32)) is Reason.READINGS_ROOT_MISMATCH
    assert check(initial()) is None


def test_sqlite_and_memory_stores_give_the_same_sets() -> None:
    figures = []
    for store in (MemoryStore(), SqliteStore(":memory:")):
        run = open_run(store)
        members = (*run.keys, participant_key(0))
        figures.append([datasets(store, k.public, run.ledger.height) for k in members])
    assert figures[0] == figures[1]
    assert all(d.train_examples > 0 and d.holdout_examples > 0 for d in figures[0])


# --- evaluations ----------------------------------------------------------------------------


def test_model_eval_rules() -> None:
    run = open_run()
    p0 = participant_key(0)
    cut = run.ledger.height
    ds = datasets(run.ledger.store, p0.public, cut)
    metrics = {"mse": 4.0, "rmse": 2.0, "baseline_mse": 9.0, "baseline_rmse": 3.0}

    def ev(round: int = 0, model: bytes | None = None, n: int | None = None, root: bytes | None = None,
           key: NodeKey = p0) -> dict:
        return make_model_eval(key, CHAIN_ID, run.run, "humidity", round,
                               run.initial_hash if model is None else model, cut,
                               ds.holdout_examples if n is None else n,
                               ds.holdout_root if root is None else root, metrics)

    assert run.check(ev(round=1)) is Reason.UNKNOWN_MODEL  # round 1 is not committed
    assert run.check(ev(model=b"\x05" * 32)) is Reason.UNKNOWN_MODEL  # not the committed weights
    assert run.check(ev(n=ds.holdout_examples + 1)) is Reason.NUM_EXAMPLES_MISMATCH
    assert run.check(ev(root=ds.train_root)) is Reason.READINGS_ROOT_MISMATCH  # scored on training data
    assert run.check(ev(key=NodeKey.generate())) is Reason.UNAUTHORIZED
    good = ev()
    assert run.check(good) is None
    commit_next(run.ledger, run.keys, [good])
    row = run.ledger.store.model_eval(run.run, 0, p0.public)
    assert row is not None and row.weights_hash == run.initial_hash
    again = make_model_eval(p0, CHAIN_ID, run.run, "humidity", 0, run.initial_hash, cut, ds.holdout_examples,
                            ds.holdout_root, {"mse": 1.0})
    assert run.check(again) is Reason.DUPLICATE_EVAL


# --- the ClientApp side selects the same rows ------------------------------------------------


def test_the_clientapp_trains_on_exactly_the_set_the_ledger_verifies(tmp_path: Path) -> None:
    d = tmp_path / "node"
    init_node(d, name="node", port=1)
    me = NodeKey.load(d / KEY_FILE)
    keys, base = make_genesis(4)
    genesis = Genesis(chain_id=CHAIN_ID, genesis_time_ms=GENESIS_TIME_MS, authorities=base.authorities,
                      participants=(GenesisMember(me.public, "me", "participant"),))
    genesis.save(d / GENESIS_FILE)
    store = SqliteStore(d / DB_FILE)
    ledger = Ledger(store, genesis)
    give_devices(ledger, keys, [me, keys[1]], [90, 60])
    loaded = NodeLink(d).own_rows()
    ds = datasets(store, me.public, ledger.height)
    assert loaded.data_cut == ledger.height
    assert (len(loaded.rows), loaded.root) == (ds.train_examples, ds.train_root)
    assert (len(loaded.holdout), loaded.holdout_root) == (ds.holdout_examples, ds.holdout_root)
    assert all(split_of(r[2]) is Split.TRAIN for r in loaded.rows)
    assert all(split_of(r[2]) is Split.HOLDOUT for r in loaded.holdout)
    assert {r[0] for r in loaded.rows} == {"dev-0"}  # only its own device
    assert datasets_of(store.owner_readings(me.public, ledger.height), ledger.height) == ds
    store.close()


def test_a_ledger_of_the_previous_schema_is_refused_with_one_clear_error(tmp_path: Path) -> None:
    import sqlite3

    from node.errors import StorageError

    path = tmp_path / "node.db"
    SqliteStore(path).close()
    db = sqlite3.connect(path)
    db.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")  # a ledger of before data cuts
    db.commit()
    db.close()
    for read_only in (False, True):
        with pytest.raises(StorageError, match="schema 1, this one reads 3"):
            SqliteStore(path, read_only=read_only)
