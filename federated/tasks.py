"""The paper's two learning tasks on (temperature, humidity) readings.

* ``humidity``: humidity_pct from temperature_c and the time of day, personalised: every device of
  the run's device list has its own line (a personal kernel row and bias, trained only by the
  device's owner) and the federation trains one shared line on every device's readings, used for
  devices the model has no row for. Keras, Adam with an exponentially decaying learning rate, MSE;
  every training row trains (see ``train``).
* ``traceability``: which device produced a window of readings, by generative per-device
  fingerprints (pure numpy, federated/fingerprint.py).

Rows are plain sequences ``(device, seq, timestamp_ms, temperature_c, humidity_pct)`` as a node reads
them from its SQLite replica (the ClientApp names devices by their registered names, as the run's
device list does). Keras is imported lazily so that constants, ``prepare`` and ``TrainResult`` are
available to processes that must stay TensorFlow-free (the ClientApp, the node).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from federated import fingerprint
from federated.weights import Weights, canonical_array

if TYPE_CHECKING:
    import keras

TASKS = ("humidity", "traceability")

# Fixed standardisation constants: mean and population std of the bundled main slice
# node/launch/data/smart_building_8dev_2d.csv.gz (23,036 rows, 8 devices, 48 h; computed once with numpy,
# rounded to 4 decimals). They are constants rather than statistics of each node's data so that
# every node and every round uses the same normalisation without sharing any readings, and so a
# committed model means the same thing everywhere.
TEMP_MEAN = 23.3539
TEMP_STD = 1.0924
HUM_MEAN = 54.2605
HUM_STD = 4.1649

Row = Sequence[Any]  # (device, seq, timestamp_ms, temperature_c, humidity_pct)


# Each round's local learning rate is the run's times ROUND_DECAY^(round - 1), a server-side decay
# (round_config): every round restarts Adam from the global model, and at a constant rate each
# restart kicked the converged lines away again (held-out R^2 0.808-0.826 over rounds 2-5 on the
# full data, 0.827-0.829 with the decay).
ROUND_DECAY = 0.5
HOUR_FEATURES = 4  # sin and cos of the first two harmonics of the hour of day (UTC)
FEATURES = 1 + HOUR_FEATURES  # standardised temperature first
DAY_MS = 86_400_000


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyperparameters (the ``config`` of a train request)."""

    epochs: int = 20
    # The humidity model is linear (below); 256 rows a step and lr 0.01 converge within a round's
    # epochs on a node's week of readings. The full data, 8 rooms: with 64 and 0.01 the held-out
    # R^2 moved 0.81-0.83 from round to round (gradient noise); with 0.003 and the old split,
    # training stopped short (0.64).
    batch_size: int = 256
    learning_rate: float = 0.01
    decay_steps: int = 100
    decay_rate: float = 0.9
    patience: int = 3
    val_fraction: float = 0.2  # kept for old configs; humidity trains on every row (see train)
    seed: int = 0

    @classmethod
    def from_any(cls, config: TrainConfig | Mapping[str, Any] | None) -> TrainConfig:
        """Build from a mapping; unknown keys are an error (a typo must not train with defaults)."""
        if config is None:
            return cls()
        if isinstance(config, TrainConfig):
            return config
        names = {f.name: f.type for f in fields(cls)}
        unknown = set(config) - set(names)
        if unknown:
            raise ValueError(f"unknown training config key(s): {', '.join(sorted(unknown))}")
        values: dict[str, Any] = {}
        for key, value in config.items():
            default = getattr(cls(), key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ValueError(f"config {key} must be a number, got {value!r}")
            values[key] = int(value) if isinstance(default, int) else float(value)
        cfg = cls(**values)
        cfg.check()
        return cfg

    def check(self) -> None:
        if self.epochs < 1 or self.batch_size < 1 or self.decay_steps < 1 or self.patience < 0:
            raise ValueError(f"invalid training config {asdict(self)}")
        if not (0.0 < self.val_fraction < 1.0) or not (0.0 < self.decay_rate <= 1.0):
            raise ValueError(f"invalid training config {asdict(self)}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"invalid learning rate {self.learning_rate}")


def round_config(config: TrainConfig | Mapping[str, Any] | None, round: int) -> TrainConfig:
    """The local config of federated round `round` (1-based): the learning rate decayed by round."""
    cfg = TrainConfig.from_any(config)
    return replace(cfg, learning_rate=cfg.learning_rate * ROUND_DECAY ** max(0, round - 1))


@dataclass
class TrainResult:
    weights: Weights
    num_examples: int
    metrics: dict[str, float]


def _keras() -> Any:
    # Quiet TensorFlow's C++ logging unless the caller chose otherwise; must precede the import.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    return keras


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {', '.join(TASKS)}")


def check_classes(classes: Sequence[Hashable] | None, minimum: int = 2) -> list[Hashable]:
    """The run's device list (traceability: the label space): strictly sorted, so row (label) i
    means the same device on every node (the run's train_request names them)."""
    if classes is None or len(classes) < minimum:
        what = "traceability needs" if minimum > 1 else "a personalised model needs"
        raise ValueError(f"{what} the run's sorted list of at least {minimum} device id(s)")
    out = list(classes)
    try:
        ordered = all(a < b for a, b in itertools.pairwise(out))  # type: ignore[operator]
    except TypeError as exc:
        raise ValueError("device ids must be mutually comparable (all bytes or all str)") from exc
    if not ordered:
        raise ValueError("classes must be sorted and unique")
    return out


def _sorted_rows(rows: Sequence[Row]) -> list[Row]:
    for r in rows:
        if len(r) != 5:
            raise ValueError(f"a row must be (device, seq, timestamp_ms, temperature, humidity), got {r!r}")
    try:
        return sorted(rows, key=lambda r: (r[2], r[0], r[1]))
    except TypeError as exc:
        raise ValueError("rows have inconsistent field types") from exc


def hour_features(timestamp_ms: np.ndarray) -> np.ndarray:
    """(n, 4): sin and cos of the hour of day (UTC) and of its second harmonic."""
    angle = (np.asarray(timestamp_ms, np.float64) % DAY_MS) / DAY_MS * 2.0 * math.pi
    return np.stack([np.sin(angle), np.cos(angle), np.sin(2 * angle), np.cos(2 * angle)], axis=1)


def prepare(
    task: str, rows: Sequence[Row], classes: Sequence[Hashable] | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """humidity: features x (n, 5) (standardised temperature, hour of day), device index d (n,)
    into `classes` (the run's device list; -1 for a device not in it) and the standardised humidity
    y (n, 1), in chronological order (float32; d int32)."""
    _check_task(task)
    if task != "humidity":
        raise ValueError("only humidity has Keras features; traceability is federated/fingerprint.py")
    ordered = _sorted_rows(rows)
    if not ordered:
        raise ValueError("no rows")
    try:
        th = np.array([(float(r[2]), float(r[3]), float(r[4])) for r in ordered], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("timestamp, temperature and humidity must be numbers") from exc
    if not np.all(np.isfinite(th)):
        raise ValueError("rows contain non-finite temperature or humidity")
    index = {c: i for i, c in enumerate(check_classes(classes, 1))}
    d = np.array([index.get(r[0], -1) for r in ordered], dtype=np.int32)
    t = (th[:, 1] - TEMP_MEAN) / TEMP_STD
    x = np.concatenate([t.reshape(-1, 1), hour_features(th[:, 0])], axis=1).astype(np.float32)
    y = ((th[:, 2] - HUM_MEAN) / HUM_STD).astype(np.float32).reshape(-1, 1)
    return x, d, y


def _num_classes(task: str, num_classes: int | None) -> int:
    minimum = 2 if task == "traceability" else 1
    if num_classes is None or num_classes < minimum:
        raise ValueError(f"{task} needs the number of devices of the run's list (at least {minimum})")
    return int(num_classes)


# Layer names of the humidity model, in the order of its weights list: the shared line, then each
# device's line (federated/personal.py: arrays 2 and 3 are personal).
_LAYERS = ("shared_line", "device_kernel", "device_bias")


def build_model(task: str, num_classes: int | None = None, seed: int = 0) -> keras.Model:
    """The humidity model in standardised units: inputs (features (n, 5), device index (n, 1)),
    outputs (the device's own line, the shared line). Weights (``get_weights``/``set_weights``
    here): shared kernel (5, 1), shared bias (1,), device kernels (D, 5), device biases (D, 1).

    Linear on purpose: on the full data a shared hidden layer (FedPer's body, 16+16 ReLU) reached
    held-out R^2 0.26-0.57 centralized and below 0 federated, a line per device 0.82; humidity a
    day later is a room's line in temperature and hour of day, and what a hidden layer adds is
    the week's weather. Device lines start at zero: a device without a trained row is predicted
    by the shared line (``predict``).
    """
    _check_task(task)
    if task != "humidity":
        raise ValueError("traceability is not a Keras model (federated/fingerprint.py)")
    k = _keras()
    nd = _num_classes(task, num_classes)
    x = k.Input(shape=(FEATURES,), name="features")
    d = k.Input(shape=(1,), dtype="int32", name="device")
    shared = k.layers.Dense(1, kernel_initializer=k.initializers.GlorotUniform(seed=seed * 1000),
                            name=_LAYERS[0])(x)
    w = k.layers.Flatten()(k.layers.Embedding(nd, FEATURES, embeddings_initializer="zeros",
                                              name=_LAYERS[1])(d))
    b = k.layers.Flatten()(k.layers.Embedding(nd, 1, embeddings_initializer="zeros", name=_LAYERS[2])(d))
    own = k.layers.Add(name="own_line")([k.layers.Dot(axes=1)([x, w]), b])
    return k.Model([x, d], [own, shared], name=f"fedledger_{task}")


def get_weights(model: keras.Model) -> Weights:
    shared, kernel, bias = (model.get_layer(n) for n in _LAYERS)
    return [canonical_array(v) for v in (*shared.get_weights(), *kernel.get_weights(), *bias.get_weights())]


def weight_shapes(task: str, num_classes: int) -> list[tuple[int, ...]]:
    if task == "traceability":
        return fingerprint.shapes(num_classes)
    return [(FEATURES, 1), (1,), (num_classes, FEATURES), (num_classes, 1)]


def initial_weights(task: str, num_classes: int | None = None, seed: int = 0) -> Weights:
    """Weights of a freshly built model: the round-0 global model of a run."""
    _check_task(task)
    nd = _num_classes(task, num_classes)
    if task == "traceability":
        return fingerprint.initial_weights(nd)
    return get_weights(build_model(task, nd, seed))


# --- compiled model cache -------------------------------------------------------------------------
# Building and compiling (and the first tf.function trace) dominate a small training call, and
# creating a new model per request leaks memory in long-lived processes (FLOWER.md). One compiled
# model per (number of devices, optimizer hyperparameters) is reused; weights and optimizer state
# are reset on every call, so requests do not influence each other.
_cache: dict[tuple[Any, ...], keras.Model] = {}
_cache_lock = threading.RLock()
_MAX_CACHED = 8


def _compiled(task: str, nc: int | None, cfg: TrainConfig) -> keras.Model:
    key = (task, nc, cfg.learning_rate, cfg.decay_steps, cfg.decay_rate)
    model = _cache.get(key)
    if model is not None:
        return model
    k = _keras()
    if len(_cache) >= _MAX_CACHED:
        _cache.pop(next(iter(_cache)))
    model = build_model(task, nc, seed=cfg.seed)
    schedule = k.optimizers.schedules.ExponentialDecay(
        initial_learning_rate=cfg.learning_rate, decay_steps=cfg.decay_steps, decay_rate=cfg.decay_rate
    )
    model.compile(optimizer=k.optimizers.Adam(learning_rate=schedule), loss=["mse", "mse"])
    _cache[key] = model
    return model


def _set_weights(model: keras.Model, weights: Sequence[np.ndarray]) -> None:
    ws = [canonical_array(w) for w in weights]
    expected = [tuple(w.shape) for w in get_weights(model)]
    got = [tuple(w.shape) for w in ws]
    if expected != got:
        raise ValueError(f"weights do not fit the model: expected shapes {expected}, got {got}")
    shared, kernel, bias = (model.get_layer(n) for n in _LAYERS)
    shared.set_weights(ws[:2])
    kernel.set_weights(ws[2:3])
    bias.set_weights(ws[3:4])


def _reset_optimizer(model: keras.Model) -> None:
    # A fresh Adam per call: zero moments and the iteration counter (which also restarts the
    # learning-rate schedule). The optimizer is built lazily, so there may be nothing to reset.
    for v in model.optimizer.variables:
        if "learning_rate" not in v.path:
            v.assign(np.zeros(v.shape, dtype=v.dtype))


def predict(weights: Sequence[np.ndarray], x: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Standardised humidity of features `x` for device indices `d` (numpy, what the Keras model
    computes): each device's own line where it has a trained row, else the shared line (devices not
    in the run's list, or whose owner has not trained yet)."""
    kernel, bias, dk, db = (np.asarray(w, np.float64) for w in weights)
    x = np.asarray(x, np.float64)
    shared = x @ kernel[:, 0] + bias[0]
    if dk.ndim != 2 or dk.shape[1] != x.shape[1]:
        raise ValueError("weights do not fit the humidity model")
    trained = np.any(dk != 0, axis=1) | (db[:, 0] != 0)
    safe = np.clip(d, 0, len(dk) - 1)
    own = np.einsum("nf,nf->n", x, dk[safe]) + db[safe, 0]
    use_own = (d >= 0) & trained[safe]
    return np.where(use_own, own, shared)


def _humidity_metrics(pred_std: np.ndarray, y_std: np.ndarray) -> dict[str, float]:
    p = pred_std * HUM_STD + HUM_MEAN
    t = y_std.reshape(-1).astype(np.float64) * HUM_STD + HUM_MEAN
    mse = float(np.mean((p - t) ** 2))
    ss_tot = float(np.sum((t - t.mean()) ** 2))
    r2 = 1.0 - float(np.sum((p - t) ** 2)) / ss_tot if ss_tot > 0 else 0.0
    return {"mse": mse, "rmse": math.sqrt(mse), "r2": r2}


def train(
    task: str,
    model_weights: Sequence[np.ndarray],
    rows: Sequence[Row],
    config: TrainConfig | Mapping[str, Any] | None = None,
    classes: Sequence[Hashable] | None = None,
    context_rows: Sequence[Row] | None = None,
) -> TrainResult:
    """Train locally from the global `model_weights` on `rows`; `classes` is the run's device list.

    humidity: every row trains (no chronological split): a day later humidity is best predicted
    by the newest readings (a line per device fitted without a week's newest 20 % scores held-out
    R^2 0.49, with them 0.82), and a linear model of 6 parameters per device does not overfit a
    week of minutes. Early stopping watches the training loss (patience epochs without a gain of
    0.1 %) and keeps the best epoch. Only the rows of this node's devices and the shared line get
    gradients, so every other device's row comes back unchanged. num_examples is the number of
    rows (the FedAvg weight). Metrics: ``loss`` (the summed MSE of both lines, standardised),
    ``epochs`` and ``train_rmse``/``train_r2`` of the own lines in %RH (training rows: for
    stopping, not a score; the score is held out, federated/evaluation.py).

    traceability: the fingerprints of this node's devices (federated/fingerprint.py), relative to
    `context_rows` (every device of the list at the same cut; default: `rows`).
    """
    _check_task(task)
    cfg = TrainConfig.from_any(config)
    if task == "traceability":
        cls = check_classes(classes)
        weights = fingerprint.fit(cls, rows, rows if context_rows is None else context_rows, len(rows),
                                  base=model_weights)
        own = [i for i, d in enumerate(cls) if d in {r[0] for r in rows}]
        hours = float(round(float(np.sum(weights[2][own], dtype=np.float64) * len(rows))))
        return TrainResult(weights, len(rows), {"hours": hours, "devices": float(len(own))})
    cls = check_classes(classes, 1)
    x, d, y = prepare(task, rows, cls)
    if np.any(d < 0):
        missing = sorted({str(r[0]) for r in rows if r[0] not in set(cls)})
        raise ValueError(f"readings of device(s) not in the run's device list: {', '.join(missing[:3])}")
    k = _keras()
    with _cache_lock:
        model = _compiled(task, len(cls), cfg)
        _set_weights(model, model_weights)
        _reset_optimizer(model)
        k.utils.set_random_seed(cfg.seed)
        stop = k.callbacks.EarlyStopping(monitor="loss", patience=cfg.patience, min_delta=1e-3,
                                         restore_best_weights=True)
        hist = model.fit([x, d], [y, y], epochs=cfg.epochs, batch_size=cfg.batch_size, shuffle=True,
                         callbacks=[stop], verbose=0)
        best = stop.best_epoch if stop.best_weights is not None else len(hist.history["loss"]) - 1
        weights = get_weights(model)
    fitted = _humidity_metrics(predict(weights, x, d), y)
    metrics = {"loss": float(hist.history["loss"][best]), "epochs": float(len(hist.history["loss"])),
               "train_rmse": fitted["rmse"], "train_r2": fitted["r2"]}
    return TrainResult(weights=weights, num_examples=len(x), metrics=metrics)


def evaluate(
    task: str,
    weights: Sequence[np.ndarray],
    rows: Sequence[Row],
    classes: Sequence[Hashable] | None = None,
    context_rows: Sequence[Row] | None = None,
) -> dict[str, float]:
    """Metrics of `weights` on all of `rows` (numpy; no Keras needed): humidity mse, rmse, r2 in %RH
    (devices not in `classes` predicted by the shared line; ``personal_share`` = the share of rows
    predicted by a device's own line); traceability accuracy of one-hour windows
    (fingerprint.evaluate, relative to `context_rows` too). Also ``num_examples``."""
    _check_task(task)
    if task == "traceability":
        return fingerprint.evaluate(weights, check_classes(classes), rows, context_rows or ())
    cls = check_classes(classes, 1)
    if len(weights) != 4 or tuple(np.shape(weights[2])) != (len(cls), FEATURES):
        raise ValueError(f"weights do not fit the humidity model of {len(cls)} device(s)")
    x, d, y = prepare(task, rows, cls)
    pred = predict(weights, x, d)
    out = _humidity_metrics(pred, y)
    trained = np.any(np.asarray(weights[2]) != 0, axis=1) | (np.asarray(weights[3])[:, 0] != 0)
    out["personal_share"] = float(np.mean((d >= 0) & trained[np.clip(d, 0, len(cls) - 1)]))
    out["num_examples"] = float(len(x))
    return out
