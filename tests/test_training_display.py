"""What `launch` prints about a run's rounds: the held-out score per round and the learning curve."""

from __future__ import annotations

from node.launch.training_display import common_curve, learning_curve, round_line


def rnd(r: int, rmse: float | None, baseline: float = 2.0) -> dict:
    holdout = {} if rmse is None else {"rmse": rmse, "mse": rmse**2, "baseline_rmse": baseline, "r2": 0.1,
                                       "nodes": 4.0, "num_examples": 100.0}
    return {"round": r, "task": "humidity", "holdout": holdout, "metrics": {"train_rmse": 3.0}}


def test_round_line_puts_the_held_out_score_before_the_training_metrics() -> None:
    line = round_line(rnd(1, 1.5))
    assert line.startswith("holdout rmse=1.5 (device-mean baseline 2) r2=0.1 over 4 node(s) | training: ")
    assert "train_rmse=3" in line
    assert round_line(rnd(2, None)).startswith("holdout: not scored yet | training: ")


def test_learning_curve_lists_scored_rounds_and_the_last_baseline() -> None:
    got = learning_curve("humidity", [rnd(0, 4.0), rnd(1, 2.0), rnd(2, 1.5, 1.8), rnd(3, None)])
    assert got == ("learning curve, held-out rmse (readings no node trained on): round 0 4, round 1 2, "
                   "round 2 1.5; device-mean baseline 1.8")
    assert learning_curve("humidity", [rnd(1, None)]) == ""
    trace = [{"round": 1, "task": "traceability", "holdout": {"accuracy": 0.75, "baseline_accuracy": 0.125}}]
    assert learning_curve("traceability", trace).endswith("round 1 0.75; chance 0.125")


def test_the_common_curve_scores_every_round_on_the_same_readings() -> None:
    points = ((0, 5.29), (1, 3.83), (2, 3.33))
    common = {"task": "humidity", "holdout_readings": 4764,
              "rounds": [{"round": r, "metrics": {"rmse": v, "baseline_rmse": 3.8}} for r, v in points]}
    assert common_curve(common) == ("every round on the same 4764 held-out readings (the final cut): rmse "
                                    "round 0 5.29, round 1 3.83, round 2 3.33; device-mean baseline 3.8")
    assert common_curve(None) == "" and common_curve({**common, "rounds": []}) == ""
