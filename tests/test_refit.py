"""Every replica re-fits a traceability update from its node's committed readings and refuses one
that differs (node/ledger/refit.py): scaled, flipped or noisy statistics, another device's
fingerprint copied into the node's own row, a fit of readings that are not on the ledger. The
honest fit passes, clipped to the run's clip_norm when the run sets one; on both stores."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated import fingerprint, tasks
from federated.clipping import clip_update
from federated.data import MAIN_SLICE, read_csv_rows
from federated.flower.fl_ledger import NodeLink
from federated.weights import Weights, canonical_array, encode_weights, weights_hash
from node.errors import Reason
from node.ledger import refit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.holdout import Split, split_of
from node.ledger.keys import NodeKey
from node.ledger.mempool import MAX_MODEL_REFUSALS, Mempool
from node.ledger.provenance import datasets
from node.ledger.state import check_tx
from node.ledger.transactions import (
    make_model_commit,
    make_model_update,
    make_reading,
    make_register_device,
    make_train_request,
    tx_id,
)
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, init_node
from node.store.base import MemoryStore
from node.store.sqlite import SqliteStore
from tests.factories import CHAIN_ID, commit_next, device_key, make_genesis

ROOMS = ["room_510", "room_621", "room_644", "room_722"]  # room i owned by authority i
HOUR = 3_600_000
ZERO = bytes(32)


class Run:
    """A ledger holding the rooms' bundled minutes and round 0 of a traceability run."""

    def __init__(self, store: Any, params: dict[str, Any] | None = None) -> None:
        main = read_csv_rows(MAIN_SLICE, ROOMS)
        first = min(r[2] for r in main)
        self.keys, genesis = make_genesis(4, genesis_time_ms=first - 60_000)
        self.ledger = Ledger(store, genesis)
        devices = {name: device_key(i) for i, name in enumerate(ROOMS)}
        regs = [make_register_device(self.keys[i], CHAIN_ID, devices[n].public, n)
                for i, n in enumerate(ROOMS)]
        commit_next(self.ledger, self.keys, regs, time_ms=first - 30_000)
        seq: dict[str, int] = defaultdict(int)
        by_hour: dict[int, list[Any]] = defaultdict(list)
        for r in main:
            by_hour[r[2] // HOUR].append(r)
        for hour in sorted(by_hour):
            txs = []
            for name, _, ts, t, h in by_hour[hour]:
                seq[name] += 1
                txs.append(make_reading(devices[name], CHAIN_ID, seq[name], ts, t, h))
            at = max(self.ledger.head_time_ms + 1, by_hour[hour][-1][2])
            commit_next(self.ledger, self.keys, txs, time_ms=at)
        self.req = make_train_request(self.keys[0], CHAIN_ID, "traceability", 1, "fedavg",
                                      {"classes": ",".join(ROOMS), **(params or {})})
        self.run = tx_id(self.req)
        self.w0 = fingerprint.initial_weights(len(ROOMS))
        init = make_model_update(self.keys[0], CHAIN_ID, self.run, "traceability", 0, ZERO,
                                 encode_weights(self.w0), 1, {}, ZERO)
        commit0 = make_model_commit(self.keys[0], CHAIN_ID, self.run, "traceability", 0, "fedavg",
                                    [tx_id(init)], weights_hash(self.w0), {})
        commit_next(self.ledger, self.keys, [self.req, init, commit0])
        self.cut = self.ledger.height
        self.rows = [r for r in main if split_of(r[2]) is Split.TRAIN]

    def honest(self, node: int) -> Weights:
        """Node `node`'s fit, as its ClientApp makes it from the same committed readings."""
        mine = [r for r in self.rows if r[0] == ROOMS[node]]
        return fingerprint.fit(ROOMS, mine, self.rows, len(mine), base=self.w0)

    def check(self, node: int, weights: Weights) -> Reason | None:
        key = self.keys[node]
        ds = datasets(self.ledger.store, key.public, self.cut)
        tx = make_model_update(key, CHAIN_ID, self.run, "traceability", 1, weights_hash(self.w0),
                               encode_weights(weights), ds.train_examples, {}, ds.train_root,
                               data_cut=self.cut)
        return check_tx(self.ledger.store, tx, self.ledger.head_time_ms + 1000, self.ledger.params)


@pytest.fixture(scope="module")
def run() -> Run:
    return Run(MemoryStore())


def scaled_shared(w: Weights, factor: float) -> Weights:
    out = [np.array(a) for a in w]
    out[0], out[1] = out[0] * factor, out[1] * factor
    return [canonical_array(a) for a in out]


def test_the_honest_fit_is_accepted(run: Run) -> None:
    for node in range(4):
        assert run.check(node, run.honest(node)) is None


def test_model_attacks_are_refused(run: Run) -> None:
    honest = run.honest(3)
    flipped = [canonical_array(-4.0 * a) if i < 2 else a for i, a in enumerate(honest)]
    rng = np.random.default_rng(0)
    noisy = [canonical_array(a + rng.normal(0.0, 1e-3, a.shape)) for a in honest]
    for attack in (scaled_shared(honest, 10.0), flipped, noisy):
        assert run.check(3, attack) is Reason.REFIT_MISMATCH


def test_a_copied_fingerprint_is_refused(run: Run) -> None:
    """Node 4 commits room_510's statistics (node 1's device) as its own device's row."""
    mine, victim = run.honest(3), run.honest(0)
    mimic = [np.array(a) for a in mine]
    for i in fingerprint.PERSONAL_ARRAYS:
        mimic[i][3] = victim[i][0]
    assert run.check(3, [canonical_array(a) for a in mimic]) is Reason.REFIT_MISMATCH


def test_a_fit_of_readings_that_are_not_on_the_ledger_is_refused(run: Run) -> None:
    shifted = [(r[0], r[1], r[2], r[3] + 0.5, r[4]) for r in run.rows]
    mine = [r for r in shifted if r[0] == ROOMS[3]]
    forged = fingerprint.fit(ROOMS, mine, shifted, len(mine), base=run.w0)
    assert run.check(3, forged) is Reason.REFIT_MISMATCH


def test_float32_rounding_is_within_the_tolerance(run: Run) -> None:
    honest = run.honest(2)
    nudged = [canonical_array(np.nextafter(a, np.float32(np.inf))) for a in honest]  # one ulp up
    assert refit.deviation(nudged, honest) <= refit.TOLERANCE
    assert run.check(2, nudged) is None


def test_a_clipped_run_expects_the_clipped_fit(tmp_path: Any) -> None:
    clipped_run = Run(SqliteStore(tmp_path / "node.db"), {"clip_norm": 0.01})
    honest = clipped_run.honest(1)
    clipped = clip_update(honest, clipped_run.w0, 0.01)
    assert clipped_run.check(1, clipped) is None
    # Unclipped, the fit is further than clip_norm from its base: the norm rule refuses it first.
    assert clipped_run.check(1, honest) is Reason.NORM_EXCEEDED
    assert clipped_run.check(1, scaled_shared(clipped, 0.5)) is Reason.REFIT_MISMATCH


def test_the_clientapps_fit_of_its_ledger_rows_is_what_every_replica_re_fits(tmp_path: Path) -> None:
    """The ClientApp's own path (federated/flower/fl_client.py): NodeLink.own_rows with the run's
    device list as context, tasks.train, the data cut it loaded; its update passes check_tx on a
    SQLite replica, and the same update with one device row moved does not."""
    d = tmp_path / "node"
    init_node(d, name="node", port=1)
    me = NodeKey.load(d / KEY_FILE)
    main = read_csv_rows(MAIN_SLICE, ROOMS)
    first = min(r[2] for r in main)
    keys, base = make_genesis(4, genesis_time_ms=first - 60_000)
    genesis = Genesis(chain_id=CHAIN_ID, genesis_time_ms=first - 60_000, authorities=base.authorities,
                      participants=(GenesisMember(me.public, "me", "participant"),))
    genesis.save(d / GENESIS_FILE)
    ledger = Ledger(SqliteStore(d / DB_FILE), genesis)
    owners = [me, *keys[1:4]]
    devices = {name: device_key(i) for i, name in enumerate(ROOMS)}
    regs = [make_register_device(owners[i], CHAIN_ID, devices[n].public, n) for i, n in enumerate(ROOMS)]
    commit_next(ledger, keys, regs, time_ms=first - 30_000)
    seq: dict[str, int] = defaultdict(int)
    txs = []
    for name, _, ts, t, h in main:
        seq[name] += 1
        txs.append(make_reading(devices[name], CHAIN_ID, seq[name], ts, t, h))
    for i in range(0, len(txs), 2000):
        batch = txs[i:i + 2000]
        newest = max(tx["body"]["timestamp_ms"] for tx in batch)
        commit_next(ledger, keys, batch, time_ms=max(ledger.head_time_ms + 1, newest))
    req = make_train_request(keys[0], CHAIN_ID, "traceability", 1, "fedavg", {"classes": ",".join(ROOMS)})
    w0 = fingerprint.initial_weights(len(ROOMS))
    init = make_model_update(keys[0], CHAIN_ID, tx_id(req), "traceability", 0, ZERO, encode_weights(w0), 1,
                             {}, ZERO)
    commit0 = make_model_commit(keys[0], CHAIN_ID, tx_id(req), "traceability", 0, "fedavg", [tx_id(init)],
                                weights_hash(w0), {})
    commit_next(ledger, keys, [req, init, commit0])
    loaded = NodeLink(d).own_rows(ROOMS)
    result = tasks.train("traceability", w0, loaded.rows, {}, ROOMS, loaded.context or None)

    def update(weights: Weights) -> dict[str, Any]:
        return make_model_update(me, CHAIN_ID, tx_id(req), "traceability", 1, weights_hash(w0),
                                 encode_weights(weights), len(loaded.rows), {}, loaded.root,
                                 data_cut=loaded.data_cut)

    now = ledger.head_time_ms + 1000
    assert check_tx(ledger.store, update(result.weights), now, ledger.params) is None
    moved = [np.array(a) for a in result.weights]
    moved[3][0] += 0.01  # its own device's sums
    assert check_tx(ledger.store, update(moved), now, ledger.params) is Reason.REFIT_MISMATCH
    ledger.store.close()


def test_a_member_cannot_make_a_replica_re_fit_without_end(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each distinct update costs a re-fit (0.4 s on a week of 8 rooms): the mempool takes one
    pending update per member, run and round, and after MAX_MODEL_REFUSALS refused ones refuses
    that member's further ones for the round unchecked."""
    calls = []
    real = refit.check_refit

    def counted(*args: Any) -> Reason | None:
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(refit, "check_refit", counted)
    pool = Mempool(run.ledger.params)
    key = run.keys[3]
    ds = datasets(run.ledger.store, key.public, run.cut)
    honest = run.honest(3)
    now = run.ledger.head_time_ms + 1000

    def update(weights: Weights) -> dict[str, Any]:
        return make_model_update(key, CHAIN_ID, run.run, "traceability", 1, weights_hash(run.w0),
                                 encode_weights(weights), ds.train_examples, {}, ds.train_root,
                                 data_cut=run.cut)

    reasons = [pool.add(update(scaled_shared(honest, 1.0 + i / 10)), run.ledger.store, now)[1]
               for i in range(1, 21)]
    assert reasons[:MAX_MODEL_REFUSALS] == [Reason.REFIT_MISMATCH] * MAX_MODEL_REFUSALS
    assert set(reasons[MAX_MODEL_REFUSALS:]) == {Reason.RATE_LIMITED}
    assert len(calls) == MAX_MODEL_REFUSALS  # 20 updates, 3 re-fits
    # Another member is not affected; its honest update is pending, and a second one of its is not
    # even checked.
    other = run.keys[2]
    ds2 = datasets(run.ledger.store, other.public, run.cut)

    def update2(weights: Weights) -> dict[str, Any]:
        return make_model_update(other, CHAIN_ID, run.run, "traceability", 1, weights_hash(run.w0),
                                 encode_weights(weights), ds2.train_examples, {}, ds2.train_root,
                                 data_cut=run.cut)

    assert pool.add(update2(run.honest(2)), run.ledger.store, now)[1] is None
    before = len(calls)
    second = update2(scaled_shared(run.honest(2), 2.0))
    assert pool.add(second, run.ledger.store, now)[1] is Reason.DUPLICATE_UPDATE
    assert len(calls) == before
