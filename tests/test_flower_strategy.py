"""The Flower App's pieces without a deployment: the strategy mixin on hand-built Message replies,
run settings, the process-runtime helpers and the import rules (no TensorFlow in the ClientApp,
no flwr in the node)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flwr", reason="needs the federated extra (pip install -e '.[federated]')")

from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict

from federated.aggregate import aggregate
from federated.flower import fl_hooks
from federated.flower.fl_records import RunSettings
from federated.flower.fl_strategy import (
    STRATEGY_CLASSES,
    NodesUnavailable,
    RoundFailed,
    deterministic_metrics,
    make_strategy,
)
from federated.weights import encode_weights, weights_hash
from node.flower.processes import config_arg, toml_value

SHAPES = [(1, 4), (4,), (4, 1), (1,)]


def weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(np.float32) for s in SHAPES]


def instruction(node_id: int, global_w: list[np.ndarray]) -> Message:
    content = RecordDict({"arrays": ArrayRecord(global_w), "config": ConfigRecord({"task": "humidity"})})
    return Message(content, dst_node_id=node_id, message_type=MessageType.TRAIN)


def reply(
    node_id: int,
    w: list[np.ndarray],
    n: Any = 100,
    *,
    signed_hash: str | None = None,
    drop: str | None = None,
    metrics: dict[str, float] | None = None,
) -> Message:
    records: dict[str, Any] = {
        "arrays": ArrayRecord(w),
        "metrics": MetricRecord({"num-examples": n, **(metrics or {"loss": 0.5, "val_mse": 1.0})}),
        "update": ConfigRecord(
            {"weights-hash": signed_hash or weights_hash(w).hex(), "node-dir": f"/n{node_id}"}
        ),
    }
    if drop:
        del records[drop]
    return Message(RecordDict(records), reply_to=instruction(node_id, weights(0)))


def error_reply(node_id: int) -> Message:
    from flwr.app import Error

    return Message(Error(code=0, reason="boom"), reply_to=instruction(node_id, weights(0)))


@pytest.fixture(autouse=True)
def task_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    """Outside a Flower process, instruction Messages need the process' task identity (what
    flwr-serverapp sets at start; an internal of flwr 1.41)."""
    from flwr.supercore.task_identity import TaskIdentity

    monkeypatch.setattr(TaskIdentity, "_run_id", 1)
    monkeypatch.setattr(TaskIdentity, "_node_id", 0)
    monkeypatch.setattr(TaskIdentity, "_task_id", 1)


class FakeGrid:
    def __init__(self, n: int) -> None:
        self.n = n

    def get_node_ids(self) -> list[int]:
        return list(range(1, self.n + 1))


@pytest.fixture
def commits(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    calls: list[dict[str, Any]] = []

    def fake_commit(run_config, server_round, strategy, updates, agg, metrics):  # type: ignore[no-untyped-def]
        calls.append(
            {
                "round": server_round,
                "strategy": strategy,
                "updates": list(updates),
                "aggregate": agg,
                "metrics": metrics,
            }
        )
        return {"round": server_round}

    monkeypatch.setattr(fl_hooks, "commit_round", fake_commit)
    return calls


def prepared(name: str, **kw: Any) -> Any:
    strategy = make_strategy(name, min_nodes=2, node_wait_timeout=1.0, **kw)
    arrays = ArrayRecord(weights(0))
    list(strategy.configure_train(1, arrays, ConfigRecord({"task": "humidity"}), FakeGrid(2)))
    return strategy


@pytest.mark.parametrize("name", sorted(STRATEGY_CLASSES))
def test_aggregate_train_uses_our_deterministic_aggregate(name: str, commits: list[dict[str, Any]]) -> None:
    params = {"beta": 0.2} if name == "fedtrimmedavg" else {"f": 0} if name == "krum" else {}
    strategy = prepared(name, aggregation_params=params)
    ws = [weights(i) for i in (1, 2, 3)]
    replies = [reply(10 + i, w, n=50 * (i + 1)) for i, w in enumerate(ws)]
    arrays, metrics = strategy.aggregate_train(1, iter(replies))  # a generator, as Flower passes it
    expected = aggregate(name, [(weights_hash(w), w, 50 * (i + 1)) for i, w in enumerate(ws)], **params)
    assert encode_weights(arrays.to_numpy_ndarrays()) == encode_weights(expected)
    assert len(commits) == 1 and commits[0]["strategy"] == name
    assert [u.update_id for u in commits[0]["updates"]] == sorted(weights_hash(w) for w in ws)
    assert encode_weights(commits[0]["aggregate"]) == encode_weights(expected)
    assert metrics["num-examples"] == 300.0

    # Arrival order does not matter: same bytes, same metrics.
    again = prepared(name, aggregation_params=params)
    arrays2, metrics2 = again.aggregate_train(
        1, list(reversed([reply(10 + i, w, n=50 * (i + 1)) for i, w in enumerate(ws)]))
    )
    assert encode_weights(arrays2.to_numpy_ndarrays()) == encode_weights(expected)
    assert dict(metrics2) == dict(metrics)


def test_bad_replies_are_dropped_not_aggregated(commits: list[dict[str, Any]]) -> None:
    strategy = prepared("fedavg")
    good = [weights(1), weights(2)]
    bad_shape = [np.zeros((2, 2), np.float32), *weights(3)[1:]]
    replies = [
        reply(1, good[0], n=100),
        reply(2, good[1], n=300),
        error_reply(3),
        reply(4, weights(4), drop="update"),
        reply(5, weights(5), signed_hash="00" * 32),
        reply(6, weights(6), n=0),
        reply(7, weights(7), n=2.5),
        reply(8, bad_shape),
        reply(9, good[0], n=100),  # the same update twice
    ]
    arrays, _ = strategy.aggregate_train(1, replies)
    expected = aggregate(
        "fedavg", [(weights_hash(good[0]), good[0], 100), (weights_hash(good[1]), good[1], 300)]
    )
    assert encode_weights(arrays.to_numpy_ndarrays()) == encode_weights(expected)
    reasons = dict(strategy.rejected[1])
    assert set(reasons) == {3, 4, 5, 6, 7, 8, 9}
    assert "boom" in reasons[3] and "update" in reasons[4] and "weights-hash" in reasons[5]
    assert "shapes" in reasons[8] and "duplicate" in reasons[9]
    assert len(commits[0]["updates"]) == 2


def test_too_few_valid_updates_fail_the_round(commits: list[dict[str, Any]]) -> None:
    strategy = prepared("fedavg")
    with pytest.raises(RoundFailed, match="1 valid update"):
        strategy.aggregate_train(1, [reply(1, weights(1)), error_reply(2)])
    assert commits == []


def test_sampling_waits_with_a_deadline() -> None:
    strategy = make_strategy("fedavg", min_nodes=3, node_wait_timeout=0.3)
    with pytest.raises(NodesUnavailable, match="only 2"):
        list(strategy.configure_train(1, ArrayRecord(weights(0)), ConfigRecord({}), FakeGrid(2)))


def test_configure_train_sends_the_base_hash() -> None:
    strategy = make_strategy("fedavg", min_nodes=2, node_wait_timeout=1.0)
    msgs = list(
        strategy.configure_train(1, ArrayRecord(weights(0)), ConfigRecord({"task": "humidity"}), FakeGrid(2))
    )
    assert len(msgs) == 2
    assert msgs[0].content["config"]["base-hash"] == weights_hash(weights(0)).hex()
    assert msgs[0].content["config"]["server-round"] == 1


def test_aggregate_evaluate_is_a_weighted_mean() -> None:
    strategy = prepared("fedavg")
    replies = [
        reply(1, weights(1), n=100, metrics={"mse": 2.0}),
        reply(2, weights(2), n=300, metrics={"mse": 4.0}),
    ]
    metrics = strategy.aggregate_evaluate(1, replies)
    assert metrics["mse"] == pytest.approx(3.5) and metrics["num-examples"] == 400.0


def test_deterministic_metrics_only_common_keys() -> None:
    m = deterministic_metrics([(b"b", 1, {"a": 1.0, "x": 5.0}), (b"a", 3, {"a": 3.0})])
    assert m == {"a": 2.5, "num-examples": 4.0}


def test_run_settings() -> None:
    s = RunSettings.from_run_config(
        {
            "task": "traceability",
            "classes": "d1, d2",
            "strategy": "krum",
            "krum-f": 1,
            "krum-m": 3,
            "epochs": 2,
            "num-rounds": 2,
        }
    )
    assert s.num_classes == 2 and s.aggregation_params == {"f": 1, "m": 3}
    assert s.instruction_config() == {"task": "traceability", "epochs": 2, "classes": ["d1", "d2"]}
    with pytest.raises(ValueError, match="strategy"):
        RunSettings.from_run_config({"strategy": "fedsum"})
    with pytest.raises(ValueError, match="classes"):
        RunSettings.from_run_config({"task": "traceability"})
    with pytest.raises(ValueError, match="num-rounds"):
        RunSettings.from_run_config({"num-rounds": True})


def test_commit_round_stub_writes_a_line_and_blobs(tmp_path: Any) -> None:
    from federated.flower.fl_hooks import AcceptedUpdate
    from federated.weights import decode_weights

    log = tmp_path / "commits.jsonl"
    ws = [weights(1), weights(2)]
    ups = [
        AcceptedUpdate(weights_hash(w), w, 10, {"loss": 1.0}, {"weights-hash": weights_hash(w).hex()}, i)
        for i, w in enumerate(ws)
    ]
    agg = aggregate("fedavg", [(u.update_id, u.weights, u.num_examples) for u in ups])
    rec = fl_hooks.commit_round(
        {"commit-log": str(log), "task": "humidity"}, 1, "fedavg", ups, agg, {"loss": 1.0}
    )
    assert log.read_text().count("\n") == 1
    blob = (tmp_path / "commits.jsonl.blobs" / f"{rec['aggregate_hash']}.flw").read_bytes()
    assert encode_weights(decode_weights(blob)) == encode_weights(agg)


def test_config_arg_is_flower_toml() -> None:
    assert (
        config_arg({"data-dir": "/a/b", "n": 2, "x": 0.5, "ok": True}) == 'data-dir="/a/b" n=2 x=0.5 ok=true'
    )
    assert toml_value('a"b') == '"a\\"b"'
    with pytest.raises(ValueError):
        config_arg({"bad key": 1})
    with pytest.raises(ValueError):
        config_arg({"k": "has space"})


def _loaded_after(code: str) -> set[str]:
    script = f"import sys\nbefore = set(sys.modules)\n{code}\nprint('\\n'.join(set(sys.modules) - before))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


def test_import_rules() -> None:
    flower_control = "import node.flower.processes, node.flower.run, node.flower.supervise, node.proc"
    assert not _loaded_after(flower_control) & {"flwr", "tensorflow", "keras"}
    assert not _loaded_after(
        "import federated.flower.fl_client, federated.flower.fl_server, federated.flower.fl_strategy"
    ) & {"tensorflow", "keras"}


def test_simulation_partitions_give_whole_devices_then_time_slices() -> None:
    from federated.data import MAIN_SLICE, read_csv_rows

    devices = sorted({r[0] for r in read_csv_rows(MAIN_SLICE, every=8)})

    def part(i: int, n: int) -> list[list[Any]]:
        return fl_hooks.partition_rows({"partition-id": i, "num-partitions": n, "every": 8})

    four = [part(i, 4) for i in range(4)]
    assert [sorted({r[0] for r in p}) for p in four] == [devices[i::4] for i in range(4)]
    sixteen = [part(i, 16) for i in range(16)]
    for i, rows in enumerate(sixteen):
        assert rows and {r[0] for r in rows} == {devices[i % len(devices)]}
    first_device = sixteen[0] + sixteen[8]
    assert len(first_device) == len({(r[0], r[1]) for r in first_device})  # slices do not overlap
    assert sum(map(len, sixteen)) == sum(map(len, four))
