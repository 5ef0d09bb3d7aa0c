"""Personalised models on the ledger (node/ledger/run_rules.py round_aggregate): a run that names its
devices has one personal row per device; every replica takes row r from the update of device r's
owner (register_device), keeps it from the previous round if that owner sent none, and aggregates
only the other arrays with the run's strategy. A commit computed any other way is refused."""

from __future__ import annotations

from typing import Any

import numpy as np

from federated.aggregate import Personal, Update, aggregate
from federated.tasks import weight_shapes
from federated.weights import decode_weights, encode_weights, weights_hash
from node.errors import Reason
from node.ledger.chain import Ledger
from node.ledger.keys import NodeKey
from node.ledger.provenance import datasets
from node.ledger.state import check_tx
from node.ledger.transactions import (
    make_model_commit,
    make_model_update,
    make_register_device,
    make_train_request,
    tx_id,
)
from node.store.base import MemoryStore
from node.store.models import find_model, model_weights
from node.store.verify import verify_chain
from tests.factories import CHAIN_ID, commit_next, device_key, give_devices, make_genesis, participant_key
from tests.test_model_txs import NOW, ROOT

DEVICES = ["dev-4", "dev-5"]  # give_devices below: participant 0 owns dev-4, participant 1 dev-5


def model(seed: int, rows: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in weight_shapes("humidity", rows)]


class PersonalRun:
    def __init__(self, rows: int = 2, store: Any = None, **params: Any) -> None:
        self.keys, genesis = make_genesis(4, n_participants=2)
        self.ledger = Ledger(store or MemoryStore(), genesis)
        give_devices(self.ledger, self.keys, [*self.keys, participant_key(0), participant_key(1)],
                     [40, 55, 70, 85, 100, 130])
        self.req = make_train_request(self.keys[0], CHAIN_ID, "humidity", 3, "fedavg",
                                      {"devices": ",".join(DEVICES), **params})
        self.run = tx_id(self.req)
        self.weights = {0: model(99, rows)}
        self.initial = make_model_update(self.keys[0], CHAIN_ID, self.run, "humidity", 0, ROOT,
                                         encode_weights(self.weights[0]), 1, {}, ROOT)

    def start(self) -> None:
        commit0 = make_model_commit(self.keys[0], CHAIN_ID, self.run, "humidity", 0, "fedavg",
                                    [tx_id(self.initial)], weights_hash(self.weights[0]), {})
        commit_next(self.ledger, self.keys, [self.req, self.initial, commit0])

    def check(self, tx: dict) -> Reason | None:
        return check_tx(self.ledger.store, tx, NOW, self.ledger.params)

    def update(self, key: NodeKey, rnd: int, seed: int) -> dict:
        ds = datasets(self.ledger.store, key.public, self.ledger.height)
        base = weights_hash(self.weights[rnd - 1])
        return make_model_update(key, CHAIN_ID, self.run, "humidity", rnd, base, encode_weights(model(seed)),
                                 ds.train_examples, {}, ds.train_root, data_cut=self.ledger.height)

    def commit(self, rnd: int, ups: list[dict], weights: list[np.ndarray]) -> dict:
        return make_model_commit(self.keys[0], CHAIN_ID, self.run, "humidity", rnd, "fedavg",
                                 [tx_id(u) for u in ups], weights_hash(weights), {})


def updates_of(ups: list[dict]) -> tuple[list[Update], dict[bytes, bytes]]:
    return ([Update(tx_id(u), decode_weights(u["body"]["weights"]), u["body"]["num_examples"]) for u in ups],
            {tx_id(u): u["body"]["node"] for u in ups})


def test_rows_come_from_their_owners_and_a_plain_average_is_refused() -> None:
    run = PersonalRun()
    run.start()
    p0, p1, other = participant_key(0), participant_key(1), run.keys[1]  # keys[1] owns dev-1: no row
    ups = [run.update(p0, 1, 1), run.update(p1, 1, 2), run.update(other, 1, 3)]
    commit_next(run.ledger, run.keys, ups)
    updates, nodes = updates_of(ups)
    plain = aggregate("fedavg", updates)
    assert run.check(run.commit(1, ups, plain)) is Reason.AGGREGATE_MISMATCH
    owners = [p0.public, p1.public]
    personal = aggregate("fedavg", updates, Personal((2, 3), run.weights[0], owners, nodes))
    commit = run.commit(1, ups, personal)
    assert run.check(commit) is None
    commit_next(run.ledger, run.keys, [commit])
    run.weights[1] = personal
    # Row i is its owner's, whatever the third node wrote into it; the shared line is the average.
    for i, owner_update in enumerate(updates[:2]):
        for a in (2, 3):
            assert np.array_equal(personal[a][i], owner_update.weights[a][i])
    assert not np.array_equal(personal[0], updates[0].weights[0])

    # Round 2 without dev-5's owner: its row stays as committed in round 1.
    ups2 = [run.update(p0, 2, 4), run.update(other, 2, 5)]
    commit_next(run.ledger, run.keys, ups2)
    updates2, nodes2 = updates_of(ups2)
    agg2 = aggregate("fedavg", updates2, Personal((2, 3), personal, owners, nodes2))
    assert np.array_equal(agg2[2][1], personal[2][1]) and np.array_equal(agg2[3][1], personal[3][1])
    commit_next(run.ledger, run.keys, [run.commit(2, ups2, agg2)])

    # Every replica re-computes it: a replay verifies, and the read side re-aggregates the same bytes.
    assert verify_chain(run.ledger.store, run.ledger.genesis).ok
    m = find_model(run.ledger.store, "humidity", 2)
    assert weights_hash(model_weights(run.ledger.store, m)) == weights_hash(agg2)


def test_a_later_device_of_the_same_name_does_not_take_over_its_row() -> None:
    run = PersonalRun()
    run.start()
    # keys[2] registers a second "dev-4": the row stays participant 0's (the first registered).
    impostor = device_key(777, CHAIN_ID)
    commit_next(run.ledger, run.keys, [make_register_device(run.keys[2], CHAIN_ID, impostor.public, "dev-4")])
    ups = [run.update(participant_key(0), 1, 1), run.update(run.keys[2], 1, 9)]
    commit_next(run.ledger, run.keys, ups)
    updates, nodes = updates_of(ups)
    owners = [participant_key(0).public, participant_key(1).public]
    right = aggregate("fedavg", updates, Personal((2, 3), run.weights[0], owners, nodes))
    wrong = aggregate("fedavg", updates, Personal((2, 3), run.weights[0], [run.keys[2].public, owners[1]],
                                                  nodes))
    assert run.check(run.commit(1, ups, wrong)) is Reason.AGGREGATE_MISMATCH
    assert run.check(run.commit(1, ups, right)) is None


def test_round_0_has_one_row_per_listed_device() -> None:
    run = PersonalRun(rows=3)
    commit_next(run.ledger, run.keys, [run.req])
    assert run.check(run.initial) is Reason.SHAPE_MISMATCH
    good = PersonalRun()
    commit_next(good.ledger, good.keys, [good.req])
    assert good.check(good.initial) is None


def test_the_device_list_of_a_train_request_is_checked() -> None:
    run = PersonalRun()
    for task, params in (("humidity", {"devices": "dev-5,dev-4"}), ("humidity", {"devices": "dev-4,dev-4"}),
                         ("humidity", {"devices": "dev-4,,dev-5"}), ("traceability", {"classes": "dev-4"})):
        req = make_train_request(run.keys[0], CHAIN_ID, task, 2, "fedavg", params)
        assert run.check(req) is Reason.MALFORMED, params
    assert run.check(make_train_request(run.keys[0], CHAIN_ID, "traceability", 2, "fedavg",
                                        {"classes": "dev-4,dev-5"})) is None
