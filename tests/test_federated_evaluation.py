"""federated/evaluation.py: the baselines next to every held-out score, and the aggregation over nodes."""

from __future__ import annotations

import math

import pytest

from federated import evaluation


def test_the_humidity_baseline_predicts_each_devices_training_mean() -> None:
    train = [("a", 1, 0, 20.0, 40.0), ("a", 2, 0, 20.0, 50.0), ("b", 1, 0, 20.0, 60.0)]
    held = [("a", 3, 0, 20.0, 47.0), ("b", 2, 0, 20.0, 58.0), ("c", 1, 0, 20.0, 50.0)]
    got = evaluation.baseline("humidity", train, held)
    # a's mean 45, b's 60, c unknown: the mean of all training rows, 50
    mse = (2.0**2 + 2.0**2 + 0.0) / 3
    assert got == {"baseline_mse": pytest.approx(mse), "baseline_rmse": pytest.approx(math.sqrt(mse))}
    chance = evaluation.baseline("traceability", train, held, ["a", "b", "c", "d"])
    assert chance == {"baseline_accuracy": 0.25}
    with pytest.raises(ValueError, match="no training rows"):
        evaluation.baseline("humidity", [], held)


def test_score_adds_the_baseline_to_the_models_metrics() -> None:
    def fake_evaluate(task, weights, rows, classes):
        return {"mse": 1.0, "rmse": 1.0, "r2": 0.5, "num_examples": float(len(rows))}

    got = evaluation.score("humidity", fake_evaluate, [], [("a", 1, 0, 20.0, 40.0)],
                           [("a", 2, 0, 20.0, 42.0)])
    assert got == {"mse": 1.0, "rmse": 1.0, "r2": 0.5, "baseline_mse": 4.0, "baseline_rmse": 2.0}


def test_aggregate_pools_mean_squared_errors_weighted_by_examples() -> None:
    items = [(b"\x02", 300, {"mse": 4.0, "rmse": 2.0, "baseline_mse": 9.0, "r2": 0.0}),
             (b"\x01", 100, {"mse": 1.0, "rmse": 1.0, "baseline_mse": 1.0, "r2": 0.4})]
    got = evaluation.aggregate("humidity", items)
    assert got["mse"] == pytest.approx(3.25) and got["rmse"] == pytest.approx(math.sqrt(3.25))
    assert got["baseline_rmse"] == pytest.approx(math.sqrt(7.0)) and got["r2"] == pytest.approx(0.1)
    assert (got["num_examples"], got["nodes"]) == (400.0, 2.0)
    assert evaluation.aggregate("humidity", list(reversed(items))) == got  # order independent
    assert evaluation.aggregate("humidity", []) == {}
