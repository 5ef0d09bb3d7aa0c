"""The two tasks on a small slice of the bundled real data, a federated round by hand, and export.

Kept small (a few hundred rows per node, a few epochs) so the file runs in well under a minute.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from federated import tasks
from federated.aggregate import Update, aggregate, verify_aggregate
from federated.data import HOLDOUT_SLICE, MAIN_SLICE, read_csv_rows
from federated.export import export_keras
from federated.weights import weights_hash

NODE_A = ["room_510", "room_621"]
NODE_B = ["room_644", "room_734"]
EVERY = 12  # one reading every 12 minutes over the 48 h: 240 rows per device


def _rows(devices: list[str], path: Path = MAIN_SLICE, every: int = EVERY) -> list[tuple]:
    return read_csv_rows(path, devices, every=every)


def test_normalisation_constants_match_the_bundled_slice() -> None:
    rows = read_csv_rows(MAIN_SLICE)
    th = np.array([(r[3], r[4]) for r in rows])
    assert len(rows) == 23_036
    assert th[:, 0].mean() == pytest.approx(tasks.TEMP_MEAN, abs=1e-4)
    assert th[:, 0].std() == pytest.approx(tasks.TEMP_STD, abs=1e-4)
    assert th[:, 1].mean() == pytest.approx(tasks.HUM_MEAN, abs=1e-4)
    assert th[:, 1].std() == pytest.approx(tasks.HUM_STD, abs=1e-4)


def test_prepare_is_chronological_and_uses_the_global_label_space() -> None:
    rows = _rows(NODE_A, every=100)
    shuffled = list(reversed(rows))
    x1, y1 = tasks.prepare("traceability", rows, classes=sorted(NODE_A + NODE_B))
    x2, y2 = tasks.prepare("traceability", shuffled, classes=sorted(NODE_A + NODE_B))
    assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
    assert set(y1.tolist()) == {0, 1}  # room_510, room_621 are the first two of the sorted four
    x, y = tasks.prepare("humidity", rows)
    assert x.shape == (len(rows), 1) and y.shape == (len(rows), 1) and x.dtype == np.float32
    with pytest.raises(ValueError, match="not in classes"):
        tasks.prepare("traceability", rows, classes=["room_510", "room_999"])
    with pytest.raises(ValueError, match="sorted"):
        tasks.prepare("traceability", rows, classes=["room_621", "room_510"])
    with pytest.raises(ValueError, match="unknown task"):
        tasks.prepare("pressure", rows)
    with pytest.raises(ValueError, match="unknown training config"):
        tasks.TrainConfig.from_any({"epoch": 3})


@pytest.mark.federated
def test_initial_weights_are_seeded() -> None:
    a = tasks.initial_weights("humidity", seed=3)
    assert weights_hash(a) == weights_hash(tasks.initial_weights("humidity", seed=3))
    assert weights_hash(a) != weights_hash(tasks.initial_weights("humidity", seed=4))


@pytest.mark.federated
def test_federated_humidity_round_by_hand() -> None:
    """Two nodes train from the same global model, FedAvg, evaluate on the held-out day."""
    cfg = {"epochs": 4, "batch_size": 32, "seed": 1}
    global_w = tasks.initial_weights("humidity", seed=0)
    holdout = read_csv_rows(HOLDOUT_SLICE, NODE_A + NODE_B, every=EVERY)
    before = tasks.evaluate("humidity", global_w, holdout)

    for _round in range(2):
        updates = []
        for i, devices in enumerate((NODE_A, NODE_B)):
            res = tasks.train("humidity", global_w, _rows(devices), cfg)
            assert res.num_examples == round(0.8 * 2 * 240)
            assert all(math.isfinite(v) for v in res.metrics.values())
            assert {"loss", "val_loss", "val_rmse", "val_r2", "epochs"} <= set(res.metrics)
            updates.append(Update(bytes([i]), res.weights, res.num_examples))
        new_w = aggregate("fedavg", updates)
        assert verify_aggregate("fedavg", updates, new_w)
        global_w = new_w

    after = tasks.evaluate("humidity", global_w, holdout)
    assert all(math.isfinite(v) for v in after.values())
    assert after["rmse"] == pytest.approx(math.sqrt(after["mse"]))
    assert after["num_examples"] == len(holdout)
    # Training from the untrained model must not make the held-out error worse.
    assert after["mse"] < before["mse"]


@pytest.mark.federated
def test_traceability_two_devices_is_learnable() -> None:
    classes = sorted(NODE_A)
    w0 = tasks.initial_weights("traceability", num_classes=2)
    res = tasks.train("traceability", w0, _rows(NODE_A), {"epochs": 5, "batch_size": 32}, classes=classes)
    assert res.num_examples == round(0.8 * 480)
    assert res.metrics["val_accuracy"] > 0.6
    held = tasks.evaluate("traceability", res.weights, _rows(NODE_A, HOLDOUT_SLICE), classes=classes)
    assert held["accuracy"] > 0.6 and math.isfinite(held["loss"])


@pytest.mark.federated
def test_train_rejects_weights_of_another_model() -> None:
    with pytest.raises(ValueError, match="do not fit"):
        tasks.train("humidity", tasks.initial_weights("traceability", 2), _rows(NODE_A, every=100))


@pytest.mark.federated
@pytest.mark.parametrize("task", tasks.TASKS)
def test_export_load_predict(task: str, tmp_path: Path) -> None:
    import keras

    classes = sorted(NODE_A) if task == "traceability" else None
    nc = len(classes) if classes else None
    rows = _rows(NODE_A, every=60)
    res = tasks.train(task, tasks.initial_weights(task, nc), rows, {"epochs": 1}, classes=classes)
    path = export_keras(task, res.weights, tmp_path / f"{task}.keras", num_classes=nc)
    model = keras.models.load_model(path)

    raw = np.array([(r[3], r[4]) for r in rows], dtype=np.float32)
    x_std, _ = tasks.prepare(task, rows, classes)  # same chronological order as `rows`
    core = tasks.build_model(task, nc)
    core.set_weights(res.weights)
    expected = np.asarray(core(x_std, training=False))
    if task == "humidity":
        got = model.predict(raw[:, :1], verbose=0)
        assert got.shape == (len(rows), 1)
        np.testing.assert_allclose(got, expected * tasks.HUM_STD + tasks.HUM_MEAN, rtol=1e-4, atol=1e-3)
        assert 20 < float(np.median(got)) < 90  # physical units (% RH), not standardised
    else:
        got = model.predict(raw, verbose=0)
        assert got.shape == (len(rows), 2)
        np.testing.assert_allclose(got, expected, atol=1e-4)
        np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-4)
    with pytest.raises(ValueError, match=r"\.keras"):
        export_keras(task, res.weights, tmp_path / "model.h5", num_classes=nc)
