"""Export a (committed) model for use outside fedledger.

* humidity: a self-contained ``.keras`` file of one line: the shared part, or with ``device`` the
  named device's own line (its personal rows). It works in physical units: the task's fixed
  standardisation is folded in as a ``Normalization`` layer in front and a ``Rescaling`` layer
  behind, so a user needs neither fedledger nor the constants. Input ``[[temperature_c,
  sin(2 pi h / 24), cos(2 pi h / 24), sin(4 pi h / 24), cos(4 pi h / 24)]]`` with h the hour of day
  in UTC (fractional), output ``[[humidity_pct]]``. Keras has no built-in layer for the sines, and
  a Lambda layer would need the user to trust code in the file, so the hour features are inputs.
* traceability: a JSON file of the fingerprints (federated/fingerprint.py): per device its mean
  and covariance over the hourly feature vectors, the shrinkage and the feature definitions. Pure
  numpy: no Keras.

Only built-in Keras layers are used, so ``keras.models.load_model(path)`` needs no custom objects.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from federated import fingerprint, tasks


def line_of(weights: Sequence[np.ndarray], device_index: int | None) -> tuple[np.ndarray, float, bool]:
    """(kernel (5,), bias, personal) of the shared line or of device `device_index`'s own line; a
    device whose owner never trained its row gets the shared line (personal False), as
    ``tasks.predict`` does."""
    kernel, bias, dk, db = (np.asarray(w, np.float64) for w in weights)
    if device_index is not None:
        if not 0 <= device_index < len(dk):
            raise ValueError(f"device index {device_index} is not a row of the model")
        if np.any(dk[device_index] != 0) or db[device_index, 0] != 0:
            return dk[device_index], float(db[device_index, 0]), True
    return kernel[:, 0], float(bias[0]), False


def export_keras(task: str, weights: Sequence[np.ndarray], path: str | Path,
                 device_index: int | None = None) -> Path:
    """Write the humidity model's shared line, or device `device_index`'s line, as a Keras 3
    ``.keras`` file at `path`; returns the path."""
    if task != "humidity":
        raise ValueError("only humidity exports as .keras; traceability exports its fingerprints as JSON")
    out = Path(path)
    if out.suffix != ".keras":
        raise ValueError(f"Keras 3 saves only to a .keras path, got {out}")
    kernel, bias, _ = line_of(weights, device_index)
    k = tasks._keras()
    mean = [tasks.TEMP_MEAN] + [0.0] * tasks.HOUR_FEATURES
    variance = [tasks.TEMP_STD**2] + [1.0] * tasks.HOUR_FEATURES
    dense = k.layers.Dense(1, name="line")
    model = k.Sequential([
        k.Input(shape=(tasks.FEATURES,), name="temperature_c_and_hour_features"),
        k.layers.Normalization(mean=mean, variance=variance, name="standardise"),
        dense,
        k.layers.Rescaling(scale=tasks.HUM_STD, offset=tasks.HUM_MEAN, name="humidity_pct"),
    ], name="fedledger_humidity_export")
    dense.set_weights([kernel.astype(np.float32).reshape(-1, 1), np.array([bias], np.float32)])
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    return out


def features(temperature_c: Sequence[float], timestamp_ms: Sequence[int]) -> np.ndarray:
    """The exported humidity model's input rows for temperatures taken at these times."""
    t = np.asarray(temperature_c, np.float64).reshape(-1, 1)
    return np.concatenate([t, tasks.hour_features(np.asarray(timestamp_ms))], axis=1).astype(np.float32)


def fingerprints_json(weights: Sequence[np.ndarray], devices: Sequence[str]) -> dict[str, Any]:
    """The committed fingerprints as plain JSON (see the module docstring)."""
    model = fingerprint.Fingerprints.of(weights, devices)
    w = [np.asarray(a, np.float64) for a in weights]
    pooled = w[0] / w[1][0] if w[1][0] > 0 else np.zeros_like(w[0])
    prints = {}
    for i, name in enumerate(devices):
        if not model.known[i]:
            prints[name] = None
            continue
        mu = w[3][i] / w[2][i]
        own = w[4][i] / w[2][i] - np.outer(mu, mu)
        prints[name] = {"mean": mu.tolist(), "covariance": own.tolist()}
    return {
        "format": "fedledger-fingerprints-1",
        "features": list(fingerprint.FEATURES),
        "feature_notes": "per clock hour (UTC, epoch-aligned) of one device's one-minute readings, minus the "
                         "mean of the same hour over the listed devices; log_* are natural logs of the mean "
                         "absolute first (d1) and second (d2) differences and of standard deviations, with "
                         "the floors of federated/fingerprint.py",
        "score": "log-likelihood of a window = sum over its hours of log N(x; mean, (1-shrink) covariance + "
                 "shrink pooled_covariance + ridge I); the best-scoring device wins",
        "shrink": fingerprint.SHRINK,
        "ridge": fingerprint.RIDGE,
        "pooled_covariance": pooled.tolist(),
        "devices": list(devices),
        "fingerprints": prints,
    }


def fingerprints_text(weights: Sequence[np.ndarray], devices: Sequence[str]) -> str:
    """The export file's text (what `fedledger model export --task traceability` writes, and the
    explorer's download serves)."""
    return json.dumps(fingerprints_json(weights, devices), indent=1) + "\n"


def export_fingerprints(weights: Sequence[np.ndarray], devices: Sequence[str], path: str | Path) -> Path:
    out = Path(path)
    if out.suffix != ".json":
        raise ValueError(f"fingerprints export to a .json path, got {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(fingerprints_text(weights, devices), encoding="utf-8")
    return out
