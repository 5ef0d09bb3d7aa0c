"""The two tasks on a small slice of the bundled real data, a federated round by hand, and export.

Kept small (a few hundred rows per node, a few epochs) so the file runs in well under a minute.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from federated import fingerprint, tasks
from federated.aggregate import Personal, Update, aggregate, verify_aggregate
from federated.data import HOLDOUT_SLICE, MAIN_SLICE, read_csv_rows
from federated.export import export_fingerprints, export_keras, features
from federated.personal import personal_arrays
from federated.weights import weights_hash

NODE_A = ["room_510", "room_621"]
NODE_B = ["room_644", "room_734"]
DEVICES = sorted(NODE_A + NODE_B)
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


def test_prepare_is_chronological_and_indexes_the_run_device_list() -> None:
    rows = _rows(NODE_A, every=100)
    x1, d1, y1 = tasks.prepare("humidity", rows, DEVICES)
    x2, d2, y2 = tasks.prepare("humidity", list(reversed(rows)), DEVICES)
    assert np.array_equal(x1, x2) and np.array_equal(d1, d2) and np.array_equal(y1, y2)
    assert x1.shape == (len(rows), tasks.FEATURES) and y1.shape == (len(rows), 1) and x1.dtype == np.float32
    assert set(d1.tolist()) == {0, 1}  # room_510, room_621 are the first two of the sorted four
    # The hour features are the sines of the UTC hour of day.
    hour = (rows[0][2] % 86_400_000) / 3_600_000
    first = x1[np.argmin([r[2] for r in rows])]
    assert first[1] == pytest.approx(math.sin(2 * math.pi * hour / 24), abs=1e-6)
    assert first[4] == pytest.approx(math.cos(4 * math.pi * hour / 24), abs=1e-6)
    _, unknown, _ = tasks.prepare("humidity", rows, ["room_510", "room_999"])
    assert set(unknown.tolist()) == {0, -1}  # not in the list: the shared line predicts it
    with pytest.raises(ValueError, match="sorted"):
        tasks.prepare("humidity", rows, ["room_621", "room_510"])
    with pytest.raises(ValueError, match="unknown task"):
        tasks.prepare("pressure", rows)
    with pytest.raises(ValueError, match="unknown training config"):
        tasks.TrainConfig.from_any({"epoch": 3})


def test_round_config_decays_the_learning_rate_by_round() -> None:
    cfg = tasks.TrainConfig(learning_rate=0.01)
    assert tasks.round_config(cfg, 1).learning_rate == 0.01
    assert tasks.round_config(cfg, 3).learning_rate == pytest.approx(0.01 * tasks.ROUND_DECAY**2)
    assert tasks.round_config({"epochs": 2}, 0).epochs == 2


@pytest.mark.federated
def test_initial_weights_are_seeded_and_personal_rows_start_untrained() -> None:
    a = tasks.initial_weights("humidity", 4, seed=3)
    assert weights_hash(a) == weights_hash(tasks.initial_weights("humidity", 4, seed=3))
    assert weights_hash(a) != weights_hash(tasks.initial_weights("humidity", 4, seed=4))
    assert [w.shape for w in a] == tasks.weight_shapes("humidity", 4)
    assert all(not np.any(a[i]) for i in personal_arrays("humidity"))  # rows of zeros: untrained


@pytest.mark.federated
def test_federated_personalised_humidity_round_by_hand() -> None:
    """Two nodes train from the same global model; the shared line is averaged, each device's line
    comes from its owner; the result beats the device-mean baseline on the held-out day."""
    cfg = {"epochs": 6, "seed": 1}
    owners = [b"B" if d in NODE_B else b"A" for d in DEVICES]
    global_w = tasks.initial_weights("humidity", len(DEVICES), seed=0)
    holdout = read_csv_rows(HOLDOUT_SLICE, DEVICES, every=EVERY)
    before = tasks.evaluate("humidity", global_w, holdout, DEVICES)
    assert before["personal_share"] == 0.0  # nothing trained: every row is the shared line's

    for rnd in range(1, 3):
        updates, nodes = [], {}
        for node, devices in ((b"A", NODE_A), (b"B", NODE_B)):
            res = tasks.train("humidity", global_w, _rows(devices), tasks.round_config(cfg, rnd), DEVICES)
            assert res.num_examples == 2 * 240  # every row trains
            assert all(math.isfinite(v) for v in res.metrics.values())
            assert {"loss", "epochs", "train_rmse", "train_r2"} <= set(res.metrics)
            # Only this node's device rows moved: the others are exactly the base model's.
            others = [i for i, d in enumerate(DEVICES) if d not in devices]
            assert np.array_equal(res.weights[2][others], global_w[2][others])
            uid = bytes([rnd]) + node
            updates.append(Update(uid, res.weights, res.num_examples))
            nodes[uid] = node
        personal = Personal(personal_arrays("humidity"), global_w, owners, nodes)
        new_w = aggregate("fedavg", updates, personal)
        assert verify_aggregate("fedavg", updates, new_w, personal)
        for i, d in enumerate(DEVICES):  # each row is its owner's
            owner_update = updates[0] if d in NODE_A else updates[1]
            assert np.array_equal(new_w[2][i], owner_update.weights[2][i])
        global_w = new_w

    after = tasks.evaluate("humidity", global_w, holdout, DEVICES)
    assert after["personal_share"] == 1.0
    assert after["rmse"] == pytest.approx(math.sqrt(after["mse"]))
    assert after["num_examples"] == len(holdout)
    assert after["mse"] < before["mse"]
    means = {d: np.mean([r[4] for r in _rows([d])]) for d in DEVICES}
    baseline = np.mean([(r[4] - means[r[0]]) ** 2 for r in holdout])
    assert after["mse"] < baseline, (after, baseline)


@pytest.mark.federated
def test_predict_matches_the_keras_model() -> None:
    w = [w + 0.1 * i for i, w in enumerate(tasks.initial_weights("humidity", 2))]
    rows = _rows(["room_510", "room_999"], every=200)
    x, d, _ = tasks.prepare("humidity", rows, ["room_510", "room_621"])
    model = tasks.build_model("humidity", 2)
    tasks._set_weights(model, w)
    own, shared = (np.asarray(o)[:, 0] for o in model([x, np.clip(d, 0, 1).reshape(-1, 1)]))
    expected = np.where(d >= 0, own, shared)
    np.testing.assert_allclose(tasks.predict(w, x, d), expected, rtol=1e-5, atol=1e-5)


def test_traceability_fingerprints_tell_two_devices_apart() -> None:
    classes = sorted(NODE_A)
    rows = read_csv_rows(MAIN_SLICE, classes)  # one-minute readings: the features need them
    w0 = tasks.initial_weights("traceability", num_classes=2)
    res = tasks.train("traceability", w0, rows, {}, classes=classes)
    assert res.num_examples == len(rows) and res.metrics["devices"] == 2 and res.metrics["hours"] > 80
    held = read_csv_rows(HOLDOUT_SLICE, classes)
    m = tasks.evaluate("traceability", res.weights, held, classes=classes)
    assert m["accuracy"] > 0.8 and m["windows"] >= 40 and m["window_hours"] == 1


def test_train_rejects_weights_of_another_model() -> None:
    with pytest.raises(ValueError, match=r"do not fit|fingerprint weights"):
        tasks.train("traceability", tasks.initial_weights("traceability", 3), _rows(NODE_A, every=100),
                    classes=NODE_A)


@pytest.mark.federated
def test_export_load_predict(tmp_path: Path) -> None:
    import keras

    rows = _rows(NODE_A, every=60)
    res = tasks.train("humidity", tasks.initial_weights("humidity", 2), rows, {"epochs": 2}, classes=NODE_A)
    x, _, _ = tasks.prepare("humidity", rows, NODE_A)
    ordered = sorted(rows, key=lambda r: (r[2], r[0], r[1]))
    inputs = features([r[3] for r in ordered], [r[2] for r in ordered])
    for device in (None, 1):
        path = export_keras("humidity", res.weights, tmp_path / f"h{device}.keras", device)
        got = keras.models.load_model(path).predict(inputs, verbose=0)[:, 0]
        idx = np.full(len(x), -1 if device is None else device, np.int32)
        expected = tasks.predict(res.weights, x, idx) * tasks.HUM_STD + tasks.HUM_MEAN
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-3)
        assert 20 < float(np.median(got)) < 90  # physical units (% RH), not standardised
    with pytest.raises(ValueError, match=r"\.keras"):
        export_keras("humidity", res.weights, tmp_path / "model.h5")


def test_fingerprints_export_as_json(tmp_path: Path) -> None:
    rows = read_csv_rows(MAIN_SLICE, DEVICES)
    w = tasks.train("traceability", tasks.initial_weights("traceability", 4), rows, classes=DEVICES).weights
    doc = json.loads(export_fingerprints(w, DEVICES, tmp_path / "fp.json").read_text())
    assert doc["devices"] == DEVICES and doc["features"] == list(fingerprint.FEATURES)
    model = fingerprint.Fingerprints.of(w, DEVICES)
    for i, d in enumerate(DEVICES):
        np.testing.assert_allclose(doc["fingerprints"][d]["mean"], model.means[i], rtol=1e-6)
    with pytest.raises(ValueError, match="json"):
        export_fingerprints(w, DEVICES, tmp_path / "fp.keras")


def test_a_hostile_fingerprint_row_is_no_fingerprint_not_a_crash() -> None:
    """A committed row is whatever its owner signed (only finiteness is checked on the ledger):
    negative counts, a covariance that is not positive definite or overflows are no fingerprint."""
    rows = read_csv_rows(MAIN_SLICE, DEVICES)
    w = tasks.train("traceability", tasks.initial_weights("traceability", 4), rows, classes=DEVICES).weights
    bad = [np.array(a, np.float32) for a in w]
    bad[2][0] = -1.0  # a negative count
    bad[4][1] = -bad[4][1]  # outer products that make no covariance
    bad[3][2] = 3e38  # a mean whose square overflows
    model = fingerprint.Fingerprints.of(bad, DEVICES)
    assert model.known.tolist() == [False, False, False, True]
    held = read_csv_rows(HOLDOUT_SLICE, DEVICES)
    m = tasks.evaluate("traceability", bad, held, DEVICES)
    assert 0.0 <= m["accuracy"] <= 1.0


def test_two_hostile_rooms_cannot_move_the_others_relative_to_the_building() -> None:
    """The context is the median of the listed devices' hour vectors: two of eight devices whose
    readings say anything (here 100 in every feature) move the honest ones' relative vectors by no
    more than the honest spread. With the mean they moved every honest vector by 25."""
    rng = np.random.default_rng(3)
    devices = [f"room_{i}" for i in range(8)]
    feats = {d: {7: rng.normal(0.0, 0.1, fingerprint.F)} for d in devices}
    clean = fingerprint.relative(feats, devices)
    for hostile in devices[-2:]:
        feats[hostile] = {7: np.full(fingerprint.F, 100.0)}
    attacked = fingerprint.relative(feats, devices)
    spread = max(float(np.ptp([feats[d][7][k] for d in devices[:-2]])) for k in range(fingerprint.F))
    for d in devices[:-2]:
        assert float(np.max(np.abs(attacked[d][7] - clean[d][7]))) <= spread


def test_a_device_replaying_anothers_hours_counts_once_in_the_building() -> None:
    """Copies (federated/copies.py) are one device's readings twice: in the median they would
    count their original twice. An hour within SAME_HOUR of one already counted counts once, so two
    copier rooms leave the others' relative vectors exactly as without them."""
    rng = np.random.default_rng(5)
    devices = [f"room_{i}" for i in range(8)]
    honest = devices[:6]
    feats = {d: {h: rng.normal(0.0, 1.0, fingerprint.F) for h in range(24)} for d in honest}
    alone = fingerprint.relative(feats, honest)
    for copier, victim in zip(devices[6:], honest[:2], strict=True):
        feats[copier] = {h: v + rng.uniform(-0.01, 0.01, fingerprint.F) for h, v in feats[victim].items()}
    copied = fingerprint.relative(feats, devices)
    for d in honest:
        for h in range(24):
            np.testing.assert_array_equal(copied[d][h], alone[d][h])
    # Rooms merely alike are rooms: twice SAME_HOUR away from another, one still counts.
    feats = {d: {0: np.full(fingerprint.F, float(i))} for i, d in enumerate(honest)}
    feats["room_6"] = {0: feats["room_5"][0] + 2 * fingerprint.SAME_HOUR}
    assert fingerprint.relative(feats, devices)["room_0"][0][0] == -3.0  # the median of 0-5 and 5.1


def test_windows_are_scored_after_the_buildings_shift_since_the_fit_is_taken_out() -> None:
    """Every room moved by the same vector since the fit (rooms of the context that changed
    character move all the others): the median of the devices' moves is taken out, so each room
    scores as it did; one room that moved on its own does not move the others."""
    rows = read_csv_rows(MAIN_SLICE, DEVICES)
    w = tasks.train("traceability", tasks.initial_weights("traceability", 4), rows, classes=DEVICES).weights
    model = fingerprint.Fingerprints.of(w, DEVICES)
    rel = fingerprint.relative(fingerprint.hourly_features(rows), DEVICES)
    move = np.linspace(-1.0, 1.0, fingerprint.F)
    moved = {d: {h: v + move for h, v in hours.items()} for d, hours in rel.items()}
    shift = fingerprint.building_shift(model, rel)
    np.testing.assert_allclose(fingerprint.building_shift(model, moved) - shift, move, atol=1e-9)
    before = fingerprint.windows(model, fingerprint.recentred(model, rel), 6, 1)
    after = fingerprint.windows(model, fingerprint.recentred(model, moved), 6, 1)
    assert [x.best() for x in after] == [x.best() for x in before]
    assert fingerprint.accuracy(model, fingerprint.windows(model, moved, 6, 1)) < \
        fingerprint.accuracy(model, after)  # not taken out, the move costs windows
    # One device alone moving far leaves the shift where the others put it.
    alone = dict(rel)
    alone[DEVICES[0]] = {h: v + 100.0 for h, v in rel[DEVICES[0]].items()}
    assert float(np.max(np.abs(fingerprint.building_shift(model, alone) - shift))) < 1.0
    # Too few devices to tell the building from a device: no shift.
    two = {d: rel[d] for d in DEVICES[:2]}
    assert not np.any(fingerprint.building_shift(model, two))
