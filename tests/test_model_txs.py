"""Training runs on the ledger: a train request opens a run, round 0 publishes the initial model,
every later round's updates must build on the previous commit, and every replica re-computes each
aggregate before it accepts the commit."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated.aggregate import Update, aggregate
from federated.weights import decode_weights, encode_weights, weights_hash
from node.errors import InvalidBlock, Reason
from node.ledger.chain import Ledger
from node.ledger.keys import NodeKey
from node.ledger.provenance import datasets
from node.ledger.state import check_tx
from node.ledger.transactions import make_model_commit, make_model_update, make_train_request, tx_id
from node.store.base import MemoryStore
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain
from tests.factories import CHAIN_ID, commit_next, give_devices, make_genesis, participant_key

ROOT = bytes(32)
NOW = 10**15


def weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(8,)).astype(np.float32)]


@dataclass
class Run:
    ledger: Ledger
    keys: list[NodeKey]
    run: bytes
    initial_hash: bytes

    @property
    def coordinator(self) -> NodeKey:
        return self.keys[0]

    def update(self, key: NodeKey, round: int, seed: int, base: bytes | None = None) -> dict:
        """An update whose num_examples and readings_root are the node's training set at the
        current height, as every replica re-computes them."""
        cut = self.ledger.height
        ds = datasets(self.ledger.store, key.public, cut)
        return make_model_update(key, CHAIN_ID, self.run, "humidity", round,
                                 self.initial_hash if base is None else base,
                                 encode_weights(weights(seed)), ds.train_examples, {"loss": 0.5},
                                 ds.train_root, data_cut=cut)

    def commit(self, round: int, ups: list[dict], strategy: str = "fedavg", key: NodeKey | None = None,
               **params: Any) -> dict:
        agg = aggregate_hash(ups, strategy, **params)
        return make_model_commit(key or self.coordinator, CHAIN_ID, self.run, "humidity", round, strategy,
                                 [tx_id(u) for u in ups], agg, {"loss": 0.4})

    def check(self, tx: dict) -> Reason | None:
        return check_tx(self.ledger.store, tx, NOW, self.ledger.params)


def aggregate_hash(ups: list[dict], strategy: str = "fedavg", **params: Any) -> bytes:
    upd = [Update(tx_id(u), decode_weights(u["body"]["weights"]), u["body"]["num_examples"]) for u in ups]
    return weights_hash(aggregate(strategy, upd, **params))


def open_run(store: Any = None, strategy: str = "fedavg", rounds: int = 3, **params: Any) -> Run:
    keys, genesis = make_genesis(4, n_participants=2)
    ledger = Ledger(store or MemoryStore(), genesis)
    # Every member that trains owns a device with a different number of readings, so the FedAvg
    # weights (the verified training-set sizes) differ.
    give_devices(ledger, keys, [*keys, participant_key(0), participant_key(1)], [40, 55, 70, 85, 100, 130])
    req = make_train_request(keys[0], CHAIN_ID, "humidity", rounds, strategy, params)
    initial = make_model_update(keys[0], CHAIN_ID, tx_id(req), "humidity", 0, ROOT,
                                encode_weights(weights(99)), 1, {}, ROOT)
    run = Run(ledger, keys, tx_id(req), initial["body"]["weights_hash"])
    commit0 = run.commit(0, [initial], strategy)
    # All three in one block: later txs of a block see earlier ones.
    commit_next(ledger, keys, [req, initial, commit0])
    return run


def test_train_request_rules() -> None:
    keys, genesis = make_genesis(4, n_participants=2)
    ledger = Ledger(MemoryStore(), genesis)

    def check(tx: dict) -> Reason | None:
        return check_tx(ledger.store, tx, NOW, ledger.params)

    assert check(make_train_request(keys[1], CHAIN_ID, "traceability", 2, "krum", {"krum_f": 1})) is None
    assert check(make_train_request(participant_key(0), CHAIN_ID, "humidity", 2)) is Reason.UNAUTHORIZED
    assert check(make_train_request(keys[0], CHAIN_ID, "weather", 2)) is Reason.MALFORMED
    assert check(make_train_request(keys[0], CHAIN_ID, "humidity", 2, "fedsgd")) is Reason.MALFORMED
    multi = {"krum_f": 1, "krum_m": 3}
    assert check(make_train_request(keys[1], CHAIN_ID, "humidity", 2, "krum", multi)) is None
    for params in ({"epoch": 3}, {"epochs": "3"}, {"epochs": True}, {"krum_m": 0}, {"krum_m": 1.5},
                   {"krum_f": -1}):
        assert check(make_train_request(keys[0], CHAIN_ID, "humidity", 2, params=params)) is Reason.MALFORMED


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum"])
def test_a_round_that_recomputes_is_committed_and_survives_verify(strategy: str) -> None:
    params = {"fedtrimmedavg": {"beta": 0.1}, "krum": {"krum_f": 0},
              "multikrum": {"krum_f": 1, "krum_m": 2}}.get(strategy, {})
    agg = {"fedtrimmedavg": {"beta": 0.1}, "krum": {"f": 0}, "multikrum": {"f": 1, "m": 2}}.get(strategy, {})
    strategy = "krum" if strategy == "multikrum" else strategy
    run = open_run(strategy=strategy, **params)
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    ups.append(run.update(run.keys[1], 1, 7))
    commit_next(run.ledger, run.keys, ups)
    commit = run.commit(1, ups, strategy, **agg)
    assert run.check(commit) is None
    commit_next(run.ledger, run.keys, [commit])
    assert run.ledger.store.model_commit(run.run, 1).weights_hash == commit["body"]["weights_hash"]
    kinds = [m.kind for m in run.ledger.store.model_rows(run.run)]
    assert kinds == ["update", "commit", "update", "update", "update", "commit"]
    assert verify_chain(run.ledger.store, run.ledger.genesis).ok


def test_a_multi_krum_run_is_recomputed_with_its_m() -> None:
    run = open_run(strategy="krum", krum_f=1, krum_m=2)
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    ups.append(run.update(run.keys[1], 1, 7))
    commit_next(run.ledger, run.keys, ups)
    assert run.check(run.commit(1, ups, "krum", f=1)) is Reason.AGGREGATE_MISMATCH  # Krum's pick alone
    assert run.check(run.commit(1, ups, "krum", f=1, m=2)) is None


def test_updates_must_build_on_the_previous_commit_once_per_node_and_round() -> None:
    run = open_run()
    p0, p1 = participant_key(0), participant_key(1)
    assert run.check(run.update(p0, 1, 1, base=bytes(32))) is Reason.BASE_MISMATCH
    assert run.check(run.update(p0, 2, 1)) is Reason.WRONG_ROUND  # round 1 not committed yet
    assert run.check(run.update(p0, 4, 1)) is Reason.WRONG_ROUND  # the run has 3 rounds
    assert run.check(run.update(p0, 0, 1)) is Reason.NOT_COORDINATOR  # only the coordinator seeds round 0
    foreign = make_model_update(p0, CHAIN_ID, bytes(32), "humidity", 1, run.initial_hash,
                                encode_weights(weights(1)), 10, {}, ROOT)
    assert run.check(foreign) is Reason.UNKNOWN_RUN
    first = run.update(p0, 1, 1)
    commit_next(run.ledger, run.keys, [first])
    assert run.check(run.update(p0, 1, 2)) is Reason.DUPLICATE_UPDATE
    with pytest.raises(InvalidBlock, match="duplicate_update"):
        commit_next(run.ledger, run.keys, [run.update(p1, 1, 3), run.update(p1, 1, 4)])
    second = run.update(p1, 1, 3)
    commit_next(run.ledger, run.keys, [second, run.commit(1, [first, second])])
    assert run.check(run.update(run.keys[2], 1, 5)) is Reason.ROUND_COMMITTED  # too late
    round1 = run.ledger.store.model_commit(run.run, 1).weights_hash
    assert run.check(run.update(p0, 2, 6, base=round1)) is None
    assert run.check(run.update(p0, 2, 6)) is Reason.BASE_MISMATCH  # trained from the initial model


def test_a_commit_whose_aggregate_differs_is_rejected_and_so_is_its_block() -> None:
    run = open_run()
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    commit_next(run.ledger, run.keys, ups)
    wrong = make_model_commit(run.coordinator, CHAIN_ID, run.run, "humidity", 1, "fedavg",
                              [tx_id(u) for u in ups], aggregate_hash(ups[:1]), {})
    assert run.check(wrong) is Reason.AGGREGATE_MISMATCH
    with pytest.raises(InvalidBlock, match="aggregate_mismatch"):
        commit_next(run.ledger, run.keys, [wrong])
    assert run.check(run.commit(1, ups, "fedmedian")) is Reason.MALFORMED  # not the run's strategy


def test_commit_rules_unknown_updates_order_and_who_commits() -> None:
    run = open_run()
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    commit_next(run.ledger, run.keys, ups)
    unknown = make_model_commit(run.coordinator, CHAIN_ID, run.run, "humidity", 1, "fedavg", [bytes(32)],
                                aggregate_hash(ups), {})
    assert run.check(unknown) is Reason.UNKNOWN_UPDATE
    assert run.check(run.commit(2, ups)) is Reason.WRONG_ROUND
    assert run.check(run.commit(1, ups, key=run.keys[1])) is Reason.NOT_COORDINATOR  # another authority
    assert run.check(run.commit(1, ups, key=participant_key(0))) is Reason.UNAUTHORIZED
    commit_next(run.ledger, run.keys, [run.commit(1, ups)])
    again = make_model_commit(run.coordinator, CHAIN_ID, run.run, "humidity", 1, "fedavg",
                              [tx_id(u) for u in ups], aggregate_hash(ups), {"loss": 0.1})
    assert run.check(again) is Reason.ROUND_COMMITTED
    other_round = run.commit(2, ups)  # round 1 updates named in round 2
    assert run.check(other_round) is Reason.UNKNOWN_UPDATE


def test_sqlite_replica_indexes_models_and_verify_catches_an_edited_index(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "node.db")
    run = open_run(store)
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    commit_next(run.ledger, run.keys, [*ups, run.commit(1, ups)])
    assert verify_chain(store, run.ledger.genesis).ok
    assert [m.round for m in store.model_rows(run.run, "commit")] == [0, 1]
    assert store.model_update(run.run, 1, participant_key(1).public) is not None
    db = sqlite3.connect(tmp_path / "node.db")
    db.execute("UPDATE models SET weights_hash = ? WHERE kind = 'commit' AND round = 1", (bytes(32),))
    db.commit()
    db.close()
    report = verify_chain(store, run.ledger.genesis)
    # Height 4: two blocks of devices and readings come before the request and round 0's block.
    assert not report.ok and report.first_bad_height == 4 and "models" in (report.error or "")
