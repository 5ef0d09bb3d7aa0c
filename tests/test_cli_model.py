"""`fedledger model list|show|export|evaluate` on a real SQLite replica holding a humidity run (rounds
0..2, the personalised humidity model's weights, one device row per trainer) and a one-round
traceability run (fingerprints fitted on the bundled slice), built block by block."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated import fingerprint, tasks
from federated.aggregate import Personal, Update, aggregate
from federated.data import MAIN_SLICE, read_csv_rows
from federated.personal import personal_arrays, run_devices
from federated.weights import Weights, canonical_array, encode_weights, weights_hash
from node.cli import model as cli_model
from node.cli.main import main
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis
from node.ledger.holdout import Split, split_of
from node.ledger.keys import NodeKey, short_id
from node.ledger.provenance import datasets
from node.ledger.transactions import (
    make_model_commit,
    make_model_eval,
    make_model_update,
    make_reading,
    make_train_request,
    tx_id,
)
from node.server.datadir import DB_FILE, GENESIS_FILE, init_node
from node.store.sqlite import SqliteStore
from tests.factories import (
    CHAIN_ID,
    commit_next,
    give_devices,
    make_genesis,
    participant_key,
    populated_ledger,
)

ZERO = bytes(32)
HUMIDITY_DEVICES = ["dev-0", "dev-1", "dev-2"]  # give_devices: trainer i owns dev-i
TRACE_DEVICES = ["dev-0", "dev-1"]


@dataclass
class Fed:
    dir: Path
    humidity_run: bytes = b""
    trace_run: bytes = b""
    # humidity: committed weights and update tx ids per round; node of each update
    weights: dict[int, Weights] = field(default_factory=dict)
    update_ids: dict[int, list[bytes]] = field(default_factory=dict)
    update_nodes: dict[bytes, bytes] = field(default_factory=dict)
    readings_roots: dict[bytes, bytes] = field(default_factory=dict)
    trace_weights: Weights = field(default_factory=list)
    devices: list[NodeKey] = field(default_factory=list)  # dev-0, dev-1, dev-2
    # humidity: the model_evals signed per round, (node, held-out examples, metrics)
    evals: dict[int, list[tuple[bytes, int, dict[str, float]]]] = field(default_factory=dict)


def eval_metrics(rnd: int, i: int) -> dict[str, float]:
    mse = 4.0 / rnd + i
    return {"mse": mse, "rmse": mse ** 0.5, "r2": 0.2 * rnd - 0.1 * i, "baseline_mse": 6.25,
            "baseline_rmse": 2.5}


def perturbed(weights: Weights, seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return [canonical_array(w + rng.normal(scale=0.05, size=w.shape)) for w in weights]


def commit_minutes(led: Ledger, keys: list[NodeKey], devices: list[NodeKey], first_seqs: list[int]) -> None:
    """dev-0 and dev-1 sign a bundled room's minutes each (fingerprints need minute readings; the
    fixture's own are 7 minutes apart), in blocks of 1,000."""
    rooms = ["room_510", "room_621"]
    seq = dict(zip(rooms, first_seqs, strict=True))
    txs = []
    for name, _, ts, t, h in read_csv_rows(MAIN_SLICE, rooms):
        txs.append(make_reading(devices[rooms.index(name)], CHAIN_ID, seq[name], ts, t, h))
        seq[name] += 1
    for i in range(0, len(txs), 1000):
        commit_next(led, keys, txs[i:i + 1000])


def fingerprints_of(led: Ledger, devices: list[NodeKey], trainer: int, base: Weights, n: int) -> Weights:
    """Trainer `trainer`'s update as its ClientApp fits it: the fingerprint of its device from the
    training rows on the ledger, relative to both listed devices' (the replicas re-fit it)."""
    rows = [(TRACE_DEVICES[i], seq, ts, t, h)
            for i, dev in enumerate(devices[:len(TRACE_DEVICES)])
            for _, seq, ts, t, h in led.store.device_readings(dev.public, led.height)
            if split_of(ts) is Split.TRAIN]
    mine = [r for r in rows if r[0] == TRACE_DEVICES[trainer]]
    assert len(mine) == n
    return fingerprint.fit(TRACE_DEVICES, mine, rows, n, base=base)


def train_run(led: Ledger, keys: list[NodeKey], fed: Fed, task: str, rounds: int, params: dict[str, Any],
              initial: Weights, trainers: list[NodeKey]) -> bytes:
    """Open a run, commit round 0 and `rounds` fedavg rounds of updates from `trainers`; personal
    rows are aggregated as every replica does: from their devices' owners."""
    coord = keys[0]
    req = make_train_request(coord, CHAIN_ID, task, rounds, "fedavg", params)
    run = tx_id(req)
    init = make_model_update(coord, CHAIN_ID, run, task, 0, ZERO, encode_weights(initial), 1, {}, ZERO)
    commit0 = make_model_commit(coord, CHAIN_ID, run, task, 0, "fedavg", [tx_id(init)], weights_hash(initial),
                                {})
    commit_next(led, keys, [req, init, commit0])
    current = initial
    if task == "humidity":
        fed.weights[0], fed.update_ids[0] = initial, [tx_id(init)]
    for rnd in range(1, rounds + 1):
        ups, updates = [], []
        for i, k in enumerate(trainers):
            ds = datasets(led.store, k.public, led.height)  # the training set every replica re-computes
            n = ds.train_examples
            w = (perturbed(current, 100 * rnd + i) if task == "humidity"
                 else fingerprints_of(led, fed.devices, i, current, n))
            up = make_model_update(k, CHAIN_ID, run, task, rnd, weights_hash(current), encode_weights(w), n,
                                   {"loss": 1.0 / rnd + i / 10, "val_rmse": 2.0 + i, "epochs": 3.0},
                                   ds.train_root, data_cut=led.height)
            ups.append(up)
            updates.append(Update(tx_id(up), w, n))
            fed.update_nodes[tx_id(up)] = k.public
            fed.readings_roots[tx_id(up)] = ds.train_root
        commit_next(led, keys, ups)
        devices = run_devices(task, params)  # a run without a device list has no personal rows
        owners = [trainers[int(d.split("-")[1])].public for d in devices]
        personal = Personal(personal_arrays(task), current, owners, fed.update_nodes) if devices else None
        current = aggregate("fedavg", updates, personal)
        commit = make_model_commit(coord, CHAIN_ID, run, task, rnd, "fedavg", [u.update_id for u in updates],
                                   weights_hash(current), {"loss": 1.0 / rnd, "val_rmse": 2.5})
        commit_next(led, keys, [commit])
        if task == "humidity":
            fed.weights[rnd], fed.update_ids[rnd] = current, [u.update_id for u in updates]
            evals = []
            for i, k in enumerate(trainers):  # each node scores the committed model on its held-out rows
                ds = datasets(led.store, k.public, led.height)
                evals.append(make_model_eval(k, CHAIN_ID, run, task, rnd, weights_hash(current), led.height,
                                             ds.holdout_examples, ds.holdout_root, eval_metrics(rnd, i)))
                fed.evals.setdefault(rnd, []).append((k.public, ds.holdout_examples, eval_metrics(rnd, i)))
            commit_next(led, keys, evals)
    if task == "traceability":
        fed.trace_weights = current
    return run


def node_dir(path: Path, genesis: Genesis) -> tuple[Path, SqliteStore]:
    init_node(path, name=path.name, port=1)
    genesis.save(path / GENESIS_FILE)
    return path, SqliteStore(path / DB_FILE)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Fed:
    keys, genesis = make_genesis(4, n_participants=2)
    d, store = node_dir(tmp_path_factory.mktemp("model") / "node1", genesis)
    led = Ledger(store, genesis)
    populated_ledger(led, keys, n_devices=2, n_blocks=2)  # heights 1..3: devices "device-0", "device-1"
    out = Fed(d)
    trainers = [keys[1], participant_key(0), participant_key(1)]
    # heights 4..5: "dev-0".."dev-2", one per trainer, 7 minutes apart over 8-12 hours
    out.devices = give_devices(led, keys, trainers, [70, 85, 100])
    out.humidity_run = train_run(led, keys, out, "humidity", 2,
                                 {"epochs": 2, "min_nodes": 3, "devices": ",".join(HUMIDITY_DEVICES)},
                                 tasks.initial_weights("humidity", 3), trainers)
    commit_minutes(led, keys, out.devices, [71, 86])
    out.trace_run = train_run(led, keys, out, "traceability", 1, {"classes": ",".join(TRACE_DEVICES)},
                              tasks.initial_weights("traceability", 2), trainers[:2])
    store.close()
    return out


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(["model", *argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.out, cap.err


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    rc, out, err = run_cli(capsys, *argv, "--json")
    assert rc == 0, err
    return json.loads(out)


# --- list --------------------------------------------------------------------------------------


def test_list_shows_every_committed_model_and_run(fed: Fed, capsys: Any) -> None:
    got = run_json(capsys, "list", str(fed.dir))
    ms = got["models"]
    assert [(m["task"], m["round"]) for m in ms] == [("humidity", 0), ("humidity", 1), ("humidity", 2),
                                                     ("traceability", 0), ("traceability", 1)]
    hum = ms[:3]
    assert all(m["run"] == fed.humidity_run.hex() for m in hum)
    assert [m["model_hash"] for m in hum] == [weights_hash(fed.weights[r]).hex() for r in range(3)]
    assert [m["updates"] for m in hum] == [1, 3, 3]
    assert hum[2]["metrics"] == {"loss": 0.5, "val_rmse": 2.5}
    assert hum[0]["height"] < hum[1]["height"] < hum[2]["height"]
    runs = {r["task"]: r for r in got["runs"]}
    assert runs["humidity"]["complete"] and runs["humidity"]["committed_rounds"] == 2
    assert runs["traceability"]["params"] == {"classes": "dev-0,dev-1"}

    only = run_json(capsys, "list", str(fed.dir), "--task", "traceability")
    assert [m["round"] for m in only["models"]] == [0, 1] and len(only["runs"]) == 1
    by_run = run_json(capsys, "list", str(fed.dir), "--run", fed.humidity_run.hex()[:8])
    assert [m["round"] for m in by_run["models"]] == [0, 1, 2]

    rc, out, _ = run_cli(capsys, "list", str(fed.dir))
    assert rc == 0
    assert "RUN" in out and "MODEL" in out and weights_hash(fed.weights[2]).hex()[:16] in out
    assert "loss=0.5 val_rmse=2.5" in out and f"run {fed.humidity_run.hex()[:12]} humidity/fedavg" in out


def test_list_of_an_empty_ledger_says_so(tmp_path: Path, capsys: Any) -> None:
    keys, genesis = make_genesis(4)
    d, store = node_dir(tmp_path / "empty", genesis)
    populated_ledger(Ledger(store, genesis), keys, n_blocks=1)
    store.close()
    rc, out, _ = run_cli(capsys, "list", str(d))
    assert rc == 0 and out.strip() == "no models yet on this ledger (height 2)"
    assert run_json(capsys, "list", str(d)) == {"models": [], "runs": []}


# --- show --------------------------------------------------------------------------------------


def test_show_gives_the_lineage_of_the_latest_round_by_default(fed: Fed, capsys: Any) -> None:
    lin = run_json(capsys, "show", str(fed.dir), "--task", "humidity")
    assert (lin["run"], lin["round"], lin["strategy"]) == (fed.humidity_run.hex(), 2, "fedavg")
    assert lin["model_hash"] == weights_hash(fed.weights[2]).hex()
    assert lin["base_model"] == weights_hash(fed.weights[1]).hex()
    assert lin["request"]["params"] == {"epochs": 2, "min_nodes": 3, "devices": "dev-0,dev-1,dev-2"}
    assert [u["tx"] for u in lin["updates"]] == [u.hex() for u in fed.update_ids[2]]
    names = {short_id(participant_key(0).public): "participant-0", short_id(participant_key(1).public):
             "participant-1"}
    for u in lin["updates"]:
        uid = bytes.fromhex(u["tx"])
        assert u["node"] == short_id(fed.update_nodes[uid])
        assert u["readings_root"] == fed.readings_roots[uid].hex()
        assert u["base_model_hash"] == lin["base_model"]
        assert names.get(u["node"], u["node_name"]) == u["node_name"]
    # Each trainer owns one device; its update's weight is the training part of that device's
    # readings (the held-out hours and their 10-minute guards left out), as the ledger verified.
    assert [u["num_examples"] for u in lin["updates"]] == [50, 65, 71]
    assert all(u["provenance"] == "verified" and u["data_cut"] > 0 for u in lin["updates"])

    first = run_json(capsys, "show", str(fed.dir), "--task", "humidity", "--round", "0")
    assert first["base_model"] is None and len(first["updates"]) == 1
    assert first["updates"][0]["node"] == first["coordinator"]

    rc, out, _ = run_cli(capsys, "show", str(fed.dir), "--task", "humidity", "--round", "1")
    assert rc == 0
    assert "participant-1" in out and fed.update_ids[1][0].hex()[:16] in out
    assert f"{weights_hash(fed.weights[0]).hex()} (round 0)" in out and "epochs=2 min_nodes=3" in out
    assert "devices=dev-0,dev-1,dev-2" in out


def test_each_device_row_of_a_committed_model_is_its_owners(fed: Fed) -> None:
    """Every row of a committed round is its device owner's update's row; the ledger accepted
    these commits (commit_next raises on a refused one), and refuses a plain FedAvg of the rows."""
    round2 = fed.weights[2]
    ups = {fed.update_nodes[u]: u for u in fed.update_ids[2]}
    store = SqliteStore(fed.dir / DB_FILE, read_only=True)
    try:
        owner = {d.name: d.owner for d in store.devices()}
        for i, name in enumerate(HUMIDITY_DEVICES):
            rec = store.tx(ups[owner[name]])
            assert rec is not None
            from federated.weights import decode_weights
            from node.ledger.transactions import parse_tx

            row = decode_weights(parse_tx(rec.raw).body.weights)[2][i]  # type: ignore[union-attr]
            assert np.array_equal(round2[2][i], row)
    finally:
        store.close()


def test_held_out_scores_on_the_ledger_are_aggregated_per_round(fed: Fed, capsys: Any) -> None:
    """The nodes' signed model_evals are on the ledger, and list/show aggregate them per round,
    weighted by each node's held-out examples (the pooled MSE), next to the baseline."""
    got = run_json(capsys, "list", str(fed.dir), "--task", "humidity")
    for m in got["models"]:
        scored = fed.evals.get(m["round"], [])
        if not scored:
            assert m["holdout"] == {} and m["evaluations"] == []
            continue
        total = sum(n for _, n, _ in scored)
        mse = sum(n * e["mse"] for _, n, e in scored) / total
        assert m["holdout"]["num_examples"] == total and m["holdout"]["nodes"] == 3
        assert m["holdout"]["mse"] == pytest.approx(mse)
        assert m["holdout"]["rmse"] == pytest.approx(mse ** 0.5)
        assert m["holdout"]["baseline_rmse"] == pytest.approx(2.5)
        assert sorted(e["node"] for e in m["evaluations"]) == sorted(short_id(k) for k, _, _ in scored)
    # The learning curve improves in this fixture (mse 4/round + i): round 2 beats round 1.
    assert got["models"][2]["holdout"]["rmse"] < got["models"][1]["holdout"]["rmse"]
    rc, out, _ = run_cli(capsys, "list", str(fed.dir), "--task", "humidity")
    assert rc == 0 and "HELD-OUT" in out and "device-mean baseline 2.5" in out
    rc, out, _ = run_cli(capsys, "show", str(fed.dir), "--task", "humidity")
    assert rc == 0 and "held-out evaluations (3)" in out and "provenance" in out and "verified" in out


def write_csv(path: Path, rows: list[tuple[str, int, float, float]]) -> None:
    lines = ["timestamp,epoch_s,device_id,temperature_c,humidity_pct"]
    lines += [f"2013-08-30T00:00:00Z,{t},{d},{temp},{hum}" for d, t, temp, hum in rows]
    path.write_text("\n".join(lines) + "\n")


def test_evaluate_scores_a_committed_model_on_a_csv(fed: Fed, tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("keras", reason="needs the federated extra (pip install -e '.[federated]')")
    csv = tmp_path / "readings.csv"
    rows = [("dev-0", 1_377_820_800 + 60 * i, 20.0 + i / 7, 44.0 + (i % 9)) for i in range(30)]
    rows += [("dev-1", 1_377_820_800 + 60 * i, 22.0 + i / 9, 50.0 - (i % 5)) for i in range(20)]
    write_csv(csv, rows)
    got = run_json(capsys, "evaluate", str(fed.dir), "--task", "humidity", "--round", "1", "--csv", str(csv))
    # Independently: the round-1 model's predictions, and each device's mean training humidity on the ledger.
    hum = np.array([r[3] for r in rows])
    pred = humidity_predict(fed.weights[1], rows)
    store = SqliteStore(fed.dir / DB_FILE, read_only=True)
    means = {}
    for dev in store.devices():
        train = [r.humidity_pct for r in store.readings(dev.device)
                 if split_of(r.timestamp_ms) is Split.TRAIN]
        if train:
            means[dev.name] = sum(train) / len(train)
    store.close()
    base = np.array([means[r[0]] for r in rows])
    m = got["metrics"]
    assert got["round"] == 1 and got["model_hash"] == weights_hash(fed.weights[1]).hex()
    assert m["num_examples"] == 50
    assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean((pred - hum) ** 2))), rel=1e-4)
    assert m["baseline_rmse"] == pytest.approx(float(np.sqrt(np.mean((base - hum) ** 2))), rel=1e-9)
    rc, out, _ = run_cli(capsys, "evaluate", str(fed.dir), "--task", "humidity", "--csv", str(csv))
    assert rc == 0 and "humidity round 2" in out and "device-mean baseline" in out

    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    rc, stdout, err = run_cli(capsys, "evaluate", str(fed.dir), "--task", "humidity", "--csv", str(bad))
    assert (rc, stdout) == (1, "") and "is not a readings CSV" in err and err.count("\n") == 1
    assert m["personal_share"] == 1.0  # both devices are in the run's list: their own lines
    other = tmp_path / "other.csv"
    write_csv(other, [("dev-9", 1_377_820_800 + 60 * i, 22.0, 50.0) for i in range(5)])
    got = run_json(capsys, "evaluate", str(fed.dir), "--task", "humidity", "--csv", str(other))
    assert got["metrics"]["personal_share"] == 0.0  # a device the model has no row for: the shared line
    rc, _, err = run_cli(capsys, "evaluate", str(fed.dir), "--task", "traceability", "--csv", str(other))
    assert rc == 1 and "devices the model does not know: dev-9" in err


# --- export ------------------------------------------------------------------------------------


def humidity_predict(weights: Weights, rows: list[tuple[str, int, float, float]],
                     line: str | None = None) -> np.ndarray:
    """%RH the Keras model predicts for CSV rows (device, epoch_s, temperature, humidity): by each
    row's device's own line (`line` None), by device `line`'s own line, or by the shared line
    (`line` "shared")."""
    model = tasks.build_model("humidity", len(HUMIDITY_DEVICES))
    tasks._set_weights(model, weights)
    t = np.array([[(r[2] - tasks.TEMP_MEAN) / tasks.TEMP_STD] for r in rows])
    x = np.concatenate([t, tasks.hour_features(np.array([r[1] * 1000 for r in rows]))], axis=1)
    names = [r[0] if line is None else line for r in rows]
    idx = np.array([[HUMIDITY_DEVICES.index(n) if n in HUMIDITY_DEVICES else 0] for n in names], np.int32)
    own, shared = (np.asarray(o)[:, 0] for o in model([x.astype(np.float32), idx]))
    return (shared if line == "shared" else own) * tasks.HUM_STD + tasks.HUM_MEAN


def test_export_writes_a_keras_file_with_the_recomputed_weights(fed: Fed, tmp_path: Path,
                                                                 capsys: Any) -> None:
    keras = pytest.importorskip("keras", reason="needs the federated extra (pip install -e '.[federated]')")
    from federated.export import features

    out = tmp_path / "sub" / "humidity.keras"
    got = run_json(capsys, "export", str(fed.dir), "--task", "humidity", "--round", "1", "--out", str(out),
                   "--device", "dev-1")
    assert got == {"path": str(out), "model_hash": weights_hash(fed.weights[1]).hex(), "task": "humidity",
                   "round": 1, "run": fed.humidity_run.hex(), "devices": HUMIDITY_DEVICES,
                   "device": "dev-1", "part": "personal"}
    assert [p.name for p in out.parent.iterdir()] == ["humidity.keras"]  # no temporary left over
    rows = [("dev-1", 1_377_820_800 + 3600 * i, t, 0.0) for i, t in enumerate([18.0, 21.5, 23.4, 26.0, 30.0])]
    x = features([r[2] for r in rows], [r[1] * 1000 for r in rows])
    loaded = keras.models.load_model(out)
    pred = np.asarray(loaded.predict(x, verbose=0))[:, 0]
    np.testing.assert_allclose(pred, humidity_predict(fed.weights[1], rows, "dev-1"), rtol=1e-5, atol=1e-4)
    assert not np.allclose(pred, humidity_predict(fed.weights[1], rows, "dev-0"), atol=1e-3)  # another device
    assert not np.allclose(pred, humidity_predict(fed.weights[2], rows, "dev-1"), atol=1e-3)  # another round

    # An existing file is kept unless --force; then the default (latest) round's shared line replaces it.
    before = out.read_bytes()
    rc, stdout, err = run_cli(capsys, "export", str(fed.dir), "--task", "humidity", "--out", str(out))
    assert rc == 1 and stdout == "" and "already exists" in err and "--force" in err
    assert out.read_bytes() == before
    rc, stdout, err = run_cli(capsys, "export", str(fed.dir), "--task", "humidity", "--out", str(out),
                              "--force")
    assert rc == 0, err
    assert f"wrote {out}: humidity round 2" in stdout and weights_hash(fed.weights[2]).hex() in stdout
    assert "the shared line" in stdout
    np.testing.assert_allclose(np.asarray(keras.models.load_model(out).predict(x, verbose=0))[:, 0],
                               humidity_predict(fed.weights[2], rows, "shared"), rtol=1e-5, atol=1e-4)


def test_export_of_the_fingerprints_is_json(fed: Fed, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "fingerprints.json"
    got = run_json(capsys, "export", str(fed.dir), "--task", "traceability", "--out", str(out))
    assert got["round"] == 1 and got["devices"] == TRACE_DEVICES
    doc = json.loads(out.read_text())
    model = fingerprint.Fingerprints.of(fed.trace_weights, TRACE_DEVICES)
    assert doc["devices"] == TRACE_DEVICES and doc["features"] == list(fingerprint.FEATURES)
    for i, name in enumerate(TRACE_DEVICES):
        np.testing.assert_allclose(doc["fingerprints"][name]["mean"], model.means[i], rtol=1e-6)
    rc, _, err = run_cli(capsys, "export", str(fed.dir), "--task", "traceability", "--out",
                         str(tmp_path / "f.keras"))
    assert rc == 1 and "must end in .json" in err


# --- errors ------------------------------------------------------------------------------------


def test_errors_are_one_line_and_exit_1(fed: Fed, tmp_path: Path, capsys: Any,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    d = str(fed.dir)
    out = str(tmp_path / "m.keras")
    cases = [
        (["show", d, "--task", "humidity", "--round", "7"], "has no committed round 7; committed: [0, 1, 2]"),
        (["export", d, "--task", "humidity", "--round", "7", "--out", out], "has no committed round 7"),
        (["show", d, "--task", "humidity", "--run", "ffff"], "no run matches 'ffff'"),
        (["show", d, "--task", "humidity", "--run", fed.trace_run.hex()[:10]], "is a traceability run"),
        (["list", d, "--run", "ffff"], "no run matches 'ffff'"),
        (["list", str(tmp_path / "nowhere")], "is not a directory"),
        (["show", str(tmp_path), "--task", "humidity"], "is not a node directory"),
        (["export", d, "--task", "humidity", "--out", str(tmp_path / "m.h5")], "must end in .keras"),
        (["export", d, "--task", "humidity", "--out", str(tmp_path)], "must end in .keras"),
        (["export", d, "--task", "humidity", "--device", "dev-7", "--out", out], "is not in run"),
    ]
    blocker = tmp_path / "file"
    blocker.write_text("x")
    cases.append((["export", d, "--task", "humidity", "--out", str(blocker / "m.keras")],
                  "is not a writable directory"))
    for argv, message in cases:
        rc, stdout, err = run_cli(capsys, *argv)
        assert (rc, stdout) == (1, ""), argv
        assert message in err and err.startswith("fedledger model: error: ") and err.count("\n") == 1, err
    monkeypatch.setattr(cli_model, "keras_available", lambda: False)
    rc, _, err = run_cli(capsys, "export", d, "--task", "humidity", "--out", out)
    assert rc == 1 and "Keras, which is not installed" in err
    assert not Path(out).exists()
