"""The coordinator's strategy in ledger mode weights every update by its num_examples on the
ledger: a Flower reply that names a final update but claims another number of examples still
aggregates to what every authority re-computes, and that commit is accepted by the ledger."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="needs the federated extra (pip install -e '.[federated]')")

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from federated.aggregate import Update, aggregate
from federated.flower import fl_hooks
from federated.flower.fl_strategy import make_strategy
from federated.weights import decode_weights, encode_weights, weights_hash
from node.errors import Reason
from node.ledger.transactions import make_model_commit, tx_id
from node.server.datadir import DB_FILE, GENESIS_FILE, init_node
from node.store.sqlite import SqliteStore
from tests.factories import CHAIN_ID, commit_next, participant_key
from tests.test_flower_strategy import FakeGrid, instruction, task_identity  # noqa: F401 (fixture)
from tests.test_model_txs import open_run, weights


def test_a_reply_with_another_num_examples_aggregates_with_the_ledgers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = tmp_path / "coordinator"
    init_node(node, name="coordinator", port=1)
    store = SqliteStore(node / DB_FILE)
    run = open_run(store)
    run.ledger.genesis.save(node / GENESIS_FILE)
    # Each participant owns a device with a different number of readings: the verified sizes differ.
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    ledger_n = [u["body"]["num_examples"] for u in ups]
    assert ledger_n[0] != ledger_n[1]
    commit_next(run.ledger, run.keys, ups)

    committed: list[dict[str, Any]] = []

    def record_commit(run_config, server_round, strategy, updates, agg, metrics):  # type: ignore[no-untyped-def]
        committed.append({"updates": list(updates), "aggregate": agg})
        return {"round": server_round}

    monkeypatch.setattr(fl_hooks, "commit_round", record_commit)  # the node's /client is not running
    strategy = make_strategy("fedavg", run_config={"run": run.run.hex(), "data-dir": str(node)},
                             min_nodes=2, node_wait_timeout=1.0)
    initial = ArrayRecord(decode_weights(encode_weights(weights(99))))
    list(strategy.configure_train(1, initial, ConfigRecord({"task": "humidity"}), FakeGrid(2)))

    def reply(i: int, claimed_n: int) -> Message:
        w = decode_weights(ups[i]["body"]["weights"])
        content = RecordDict({
            "arrays": ArrayRecord(w),
            "metrics": MetricRecord({"num-examples": claimed_n, "loss": 0.5}),
            "update": ConfigRecord({"weights-hash": weights_hash(w).hex(), "tx-id": tx_id(ups[i]).hex()}),
        })
        return Message(content, reply_to=instruction(10 + i, weights(0)))

    # Node 1 (or whoever answers in its place) claims 10^12 examples for its public update.
    arrays, _ = strategy.aggregate_train(1, [reply(0, 100), reply(1, 10**12)])
    expected = aggregate("fedavg", [Update(tx_id(u), decode_weights(u["body"]["weights"]), n)
                                    for u, n in zip(ups, ledger_n, strict=True)])
    got = [np.asarray(a) for a in arrays.to_numpy_ndarrays()]
    assert encode_weights(got) == encode_weights(expected)
    assert ({u.update_id: u.num_examples for u in committed[0]["updates"]}
            == {tx_id(u): n for u, n in zip(ups, ledger_n, strict=True)})
    commit = make_model_commit(run.coordinator, CHAIN_ID, run.run, "humidity", 1, "fedavg",
                               [u.update_id for u in committed[0]["updates"]], weights_hash(got), {})
    assert run.check(commit) is None
    commit_next(run.ledger, run.keys, [commit])
    assert run.ledger.store.model_commit(run.run, 1) is not None

    # A reply naming an update that is not on the ledger is dropped, whatever it claims.
    strategy2 = make_strategy("fedavg", run_config={"run": run.run.hex(), "data-dir": str(node)},
                              min_nodes=1, node_wait_timeout=1.0)
    list(strategy2.configure_train(1, initial, ConfigRecord({"task": "humidity"}), FakeGrid(2)))
    fake = reply(0, 100)
    fake.content.config_records["update"]["tx-id"] = "00" * 32
    assert "not on the ledger" in str(strategy2.check_train_reply(fake))
    assert run.check(run.commit(1, ups)) is Reason.ROUND_COMMITTED
    store.close()


def test_the_strategy_takes_personal_rows_from_owners_as_the_ledger_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In ledger mode the strategy reads the devices' owners from the coordinator's replica, and its
    aggregate of a personalised model is exactly what the ledger accepts."""
    from tests.test_personal_rows import PersonalRun

    node = tmp_path / "coordinator"
    init_node(node, name="coordinator", port=1)
    run = PersonalRun(store=SqliteStore(node / DB_FILE))
    run.start()
    run.ledger.genesis.save(node / GENESIS_FILE)
    # Both owners and a third node that owns none of the listed devices but writes every row.
    ups = [run.update(participant_key(0), 1, 1), run.update(participant_key(1), 1, 2),
           run.update(run.keys[1], 1, 3)]
    commit_next(run.ledger, run.keys, ups)
    monkeypatch.setattr(fl_hooks, "commit_round", lambda *args: {})  # the node's /client is not running
    strategy = make_strategy("fedavg", node_wait_timeout=1.0, min_nodes=2, run_config={
        "run": run.run.hex(), "data-dir": str(node), "task": "humidity", "devices": "dev-4,dev-5"})
    list(strategy.configure_train(1, ArrayRecord(run.weights[0]), ConfigRecord({"task": "humidity"}),
                                  FakeGrid(3)))

    def reply(i: int) -> Message:
        w = decode_weights(ups[i]["body"]["weights"])
        content = RecordDict({
            "arrays": ArrayRecord(w),
            "metrics": MetricRecord({"num-examples": ups[i]["body"]["num_examples"]}),
            "update": ConfigRecord({"weights-hash": weights_hash(w).hex(), "tx-id": tx_id(ups[i]).hex()}),
        })
        return Message(content, reply_to=instruction(10 + i, run.weights[0]))

    arrays, _ = strategy.aggregate_train(1, [reply(0), reply(1), reply(2)])
    got = [np.asarray(a) for a in arrays.to_numpy_ndarrays()]
    assert np.array_equal(got[2][0], decode_weights(ups[0]["body"]["weights"])[2][0])
    assert np.array_equal(got[2][1], decode_weights(ups[1]["body"]["weights"])[2][1])
    commit = run.commit(1, ups, got)
    assert run.check(commit) is None
    commit_next(run.ledger, run.keys, [commit])
