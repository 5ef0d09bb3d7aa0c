"""Held-out scores of a model next to a baseline a user understands, and their aggregation over nodes.

* humidity: mse, rmse, r2 of the model on the held-out rows, and ``baseline_mse``/``baseline_rmse``
  of predicting each device's mean humidity over the training rows (a device with no training rows
  falls back to the mean of all training rows). A model worth federating beats that baseline.
* traceability: accuracy and loss, and ``baseline_accuracy`` = chance, 1 / number of classes.

``aggregate`` combines per-node scores weighted by their number of examples, with ``math.fsum`` in a
fixed order, so every replica shows the same learning curve. No TensorFlow here: the model's
own metrics come from a trainer (``evaluate_fn``), the baselines are numpy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

Row = Sequence[Any]  # (device, seq, timestamp_ms, temperature_c, humidity_pct)
EvaluateFn = Callable[[str, Any, Sequence[Row], Sequence[Hashable] | None], Mapping[str, float]]

HEADLINE = {"humidity": ("rmse", "baseline_rmse"), "traceability": ("accuracy", "baseline_accuracy")}


def device_means(rows: Sequence[Row]) -> tuple[dict[Any, float], float | None]:
    """Mean humidity per device of `rows`, and over all of them (None without rows)."""
    sums: dict[Any, list[float]] = {}
    for r in rows:
        sums.setdefault(r[0], []).append(float(r[4]))
    means = {d: math.fsum(v) / len(v) for d, v in sums.items()}
    total = [float(r[4]) for r in rows]
    return means, (math.fsum(total) / len(total) if total else None)


def baseline(task: str, train_rows: Sequence[Row], holdout_rows: Sequence[Row],
             classes: Sequence[Hashable] | None = None) -> dict[str, float]:
    if task == "traceability":
        if not classes:
            raise ValueError("traceability needs its classes for the chance baseline")
        return {"baseline_accuracy": 1.0 / len(classes)}
    means, overall = device_means(train_rows)
    if overall is None:
        raise ValueError("no training rows to take device means from")
    err = [(float(r[4]) - means.get(r[0], overall)) ** 2 for r in holdout_rows]
    if not err:
        raise ValueError("no held-out rows")
    mse = math.fsum(err) / len(err)
    return {"baseline_mse": mse, "baseline_rmse": math.sqrt(mse)}


def score(task: str, evaluate_fn: EvaluateFn, weights: Any, train_rows: Sequence[Row],
          holdout_rows: Sequence[Row], classes: Sequence[Hashable] | None = None) -> dict[str, float]:
    """The model's metrics on `holdout_rows` plus the baseline (see the module docstring)."""
    metrics = {k: float(v) for k, v in evaluate_fn(task, weights, holdout_rows, classes).items()
               if k != "num_examples"}
    metrics.update(baseline(task, train_rows, holdout_rows, classes))
    return metrics


def aggregate(task: str, items: Sequence[tuple[bytes, int, Mapping[str, float]]]) -> dict[str, float]:
    """Per-node scores (sort key, examples, metrics) -> one score weighted by examples. Mean
    squared errors are averaged and the RMSEs taken from them (the pooled RMSE over all held-out
    rows); other metrics are example-weighted means. ``num_examples`` is the total."""
    items = sorted(items, key=lambda t: t[0])
    total = sum(n for _, n, _ in items)
    if not items or total <= 0:
        return {}
    keys = set(items[0][2])
    for _, _, m in items[1:]:
        keys &= set(m)
    out = {k: math.fsum(n * float(m[k]) for _, n, m in items) / total for k in sorted(keys)}
    if task == "humidity":
        for mse, rmse in (("mse", "rmse"), ("baseline_mse", "baseline_rmse")):
            if mse in out:
                out[rmse] = math.sqrt(out[mse])
    out["num_examples"] = float(total)
    out["nodes"] = float(len(items))
    return out


def headline(task: str, metrics: Mapping[str, float]) -> str:
    """`rmse=1.23 (baseline 2.34)` / `accuracy=0.81 (chance 0.5)`, or "" without a score."""
    key, base = HEADLINE.get(task, ("", ""))
    if key not in metrics:
        return ""
    text = f"holdout {key}={metrics[key]:.4g}"
    if base in metrics:
        text += f" ({'chance' if task == 'traceability' else 'device-mean baseline'} {metrics[base]:.4g})"
    if task == "humidity" and "r2" in metrics:
        text += f" r2={metrics['r2']:.3g}"
    return text
