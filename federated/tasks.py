"""The paper's two learning tasks on (temperature, humidity) readings.

* ``humidity``: regress humidity_pct from temperature_c (small MLP, MSE, Adam with an
  exponentially decaying learning rate, early stopping on validation loss with best weights
  restored).
* ``traceability``: classify which device produced a (temperature, humidity) reading (MLP with
  batch normalisation, sparse categorical cross-entropy, 80/20 chronological split, validation
  accuracy reported).

Rows are plain sequences ``(device, seq, timestamp_ms, temperature_c, humidity_pct)`` as a node reads
them from its SQLite replica (``device`` is the device public key bytes there; tests use the CSV's
device id strings). Keras is imported lazily so that constants, ``prepare`` and ``TrainResult`` are
available to processes that must stay TensorFlow-free (the ClientApp, the node).
"""

from __future__ import annotations

import itertools
import math
import os
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING, Any

import numpy as np

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


@dataclass(frozen=True)
class TrainConfig:
    """Local training hyperparameters (the ``config`` of a train request)."""

    epochs: int = 20
    batch_size: int = 64
    # 0.003 rather than Keras' usual 0.01: on the bundled slice 0.01 overfits a node's first hours
    # within one or two epochs (held-out humidity MSE 10.7 after FedAvg vs 4.5 with 0.003).
    learning_rate: float = 0.003
    decay_steps: int = 100
    decay_rate: float = 0.9
    patience: int = 3
    val_fraction: float = 0.2
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


def check_classes(classes: Sequence[Hashable] | None) -> list[Hashable]:
    """The global label space: non-empty, strictly sorted, so label i means the same device on
    every node (the ledger's registered devices, sorted)."""
    if classes is None or len(classes) < 2:
        raise ValueError("traceability needs the sorted list of at least 2 registered device ids")
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
    # Chronological order (ties broken by device, seq) so the 80/20 split is "train on the past,
    # validate on the most recent readings", identical whatever order the replica returned.
    try:
        return sorted(rows, key=lambda r: (r[2], r[0], r[1]))
    except TypeError as exc:
        raise ValueError("rows have inconsistent field types") from exc


def prepare(
    task: str, rows: Sequence[Row], classes: Sequence[Hashable] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Features and targets in chronological order, standardised with the fixed constants.

    humidity: x (n, 1) standardised temperature, y (n, 1) standardised humidity (float32).
    traceability: x (n, 2) standardised (temperature, humidity), y (n,) int32 index into `classes`.
    """
    _check_task(task)
    ordered = _sorted_rows(rows)
    if not ordered:
        raise ValueError("no rows")
    try:
        th = np.array([(float(r[3]), float(r[4])) for r in ordered], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError("temperature and humidity must be numbers") from exc
    if not np.all(np.isfinite(th)):
        raise ValueError("rows contain non-finite temperature or humidity")
    t = (th[:, 0] - TEMP_MEAN) / TEMP_STD
    h = (th[:, 1] - HUM_MEAN) / HUM_STD
    if task == "humidity":
        return t.astype(np.float32).reshape(-1, 1), h.astype(np.float32).reshape(-1, 1)
    index = {c: i for i, c in enumerate(check_classes(classes))}
    try:
        y = np.array([index[r[0]] for r in ordered], dtype=np.int32)
    except KeyError as exc:
        raise ValueError(f"reading from device {exc.args[0]!r} that is not in classes") from exc
    return np.stack([t, h], axis=1).astype(np.float32), y


def chronological_split(n: int, val_fraction: float = 0.2) -> int:
    """Number of training rows: the first (1 - val_fraction) of n, at least one of each side."""
    n_val = round(n * val_fraction)
    n_val = min(max(n_val, 1), n - 1)
    if n < 2:
        raise ValueError(f"need at least 2 rows to split, got {n}")
    return n - n_val


def _num_classes(task: str, num_classes: int | None) -> int:
    if task == "humidity":
        return 1
    if num_classes is None or num_classes < 2:
        raise ValueError("traceability needs num_classes >= 2")
    return int(num_classes)


def build_model(task: str, num_classes: int | None = None, seed: int = 0) -> keras.Model:
    """The task's uncompiled model in standardised units.

    Initialisers are seeded per layer (not only the global seed), so the initial global model of a
    run is the same on every node and process given the same seed and Keras version.
    """
    _check_task(task)
    k = _keras()
    nc = _num_classes(task, num_classes)

    def init(i: int) -> Any:
        return k.initializers.GlorotUniform(seed=seed * 1000 + i)

    if task == "humidity":
        layers = [
            k.Input(shape=(1,)),
            k.layers.Dense(32, activation="relu", kernel_initializer=init(0)),
            k.layers.Dense(32, activation="relu", kernel_initializer=init(1)),
            k.layers.Dense(1, kernel_initializer=init(2)),
        ]
    else:
        layers = [
            k.Input(shape=(2,)),
            k.layers.Dense(64, kernel_initializer=init(0)),
            # momentum 0.9, not Keras' 0.99: a federated round is only tens of steps, and with 0.99
            # the moving statistics used at inference would still be mostly their initial values.
            k.layers.BatchNormalization(momentum=0.9),
            k.layers.Activation("relu"),
            k.layers.Dense(32, kernel_initializer=init(1)),
            k.layers.BatchNormalization(momentum=0.9),
            k.layers.Activation("relu"),
            k.layers.Dense(nc, activation="softmax", kernel_initializer=init(2)),
        ]
    return k.Sequential(layers, name=f"fedledger_{task}")


def initial_weights(task: str, num_classes: int | None = None, seed: int = 0) -> Weights:
    """Weights of a freshly built model: the round-0 global model of a run."""
    return [canonical_array(w) for w in build_model(task, num_classes, seed).get_weights()]


# --- compiled model cache -------------------------------------------------------------------------
# Building and compiling (and the first tf.function trace) dominate a small training call, and
# creating a new model per request leaks memory in long-lived processes (FLOWER.md). One compiled
# model per (task, num_classes, optimizer hyperparameters) is reused; weights and optimizer state
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
    if task == "humidity":
        model.compile(optimizer=k.optimizers.Adam(learning_rate=schedule), loss="mse")
    else:
        model.compile(
            optimizer=k.optimizers.Adam(learning_rate=schedule),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
        )
    _cache[key] = model
    return model


def _set_weights(model: keras.Model, weights: Sequence[np.ndarray]) -> None:
    ws = [canonical_array(w) for w in weights]
    expected = [tuple(v.shape) for v in model.weights]
    got = [tuple(w.shape) for w in ws]
    if expected != got:
        raise ValueError(f"weights do not fit the model: expected shapes {expected}, got {got}")
    model.set_weights(ws)


def _reset_optimizer(model: keras.Model) -> None:
    # A fresh Adam per call: zero moments and the iteration counter (which also restarts the
    # learning-rate schedule). The optimizer is built lazily, so there may be nothing to reset.
    for v in model.optimizer.variables:
        if "learning_rate" not in v.path:
            v.assign(np.zeros(v.shape, dtype=v.dtype))


def _predict(model: keras.Model, x: np.ndarray) -> np.ndarray:
    # A direct call (not predict()) avoids tracing a predict function for small inputs.
    out = [np.asarray(model(x[i : i + 4096], training=False)) for i in range(0, len(x), 4096)]
    return np.concatenate(out).astype(np.float64)


def _metrics(task: str, model: keras.Model, x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    pred = _predict(model, x)
    if task == "humidity":
        p = pred[:, 0] * HUM_STD + HUM_MEAN
        t = y[:, 0].astype(np.float64) * HUM_STD + HUM_MEAN
        mse = float(np.mean((p - t) ** 2))
        ss_tot = float(np.sum((t - t.mean()) ** 2))
        r2 = 1.0 - float(np.sum((p - t) ** 2)) / ss_tot if ss_tot > 0 else 0.0
        return {"mse": mse, "rmse": math.sqrt(mse), "r2": r2}
    probs = np.clip(pred[np.arange(len(y)), y], 1e-7, 1.0)
    return {
        "accuracy": float(np.mean(np.argmax(pred, axis=1) == y)),
        "loss": float(-np.mean(np.log(probs))),
    }


def train(
    task: str,
    model_weights: Sequence[np.ndarray],
    rows: Sequence[Row],
    config: TrainConfig | Mapping[str, Any] | None = None,
    classes: Sequence[Hashable] | None = None,
) -> TrainResult:
    """Train locally from the global `model_weights` on `rows` (chronological 80/20 split).

    num_examples is the number of training rows (the FedAvg weight). Metrics: ``loss`` (training
    loss of the restored best epoch), ``val_loss``, ``epochs``, and the validation metrics of the
    returned weights with a ``val_`` prefix (humidity: val_mse, val_rmse, val_r2 in % RH units;
    traceability: val_accuracy, val_loss).
    """
    _check_task(task)
    cfg = TrainConfig.from_any(config)
    cls = check_classes(classes) if task == "traceability" else None
    x, y = prepare(task, rows, cls)
    n_train = chronological_split(len(x), cfg.val_fraction)
    k = _keras()
    with _cache_lock:
        model = _compiled(task, len(cls) if cls else None, cfg)
        _set_weights(model, model_weights)
        _reset_optimizer(model)
        k.utils.set_random_seed(cfg.seed)
        stop = k.callbacks.EarlyStopping(monitor="val_loss", patience=cfg.patience, restore_best_weights=True)
        hist = model.fit(
            x[:n_train],
            y[:n_train],
            validation_data=(x[n_train:], y[n_train:]),
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            shuffle=True,
            callbacks=[stop],
            verbose=0,
        )
        best = stop.best_epoch if stop.best_weights is not None else len(hist.history["loss"]) - 1
        metrics = {
            "loss": float(hist.history["loss"][best]),
            "epochs": float(len(hist.history["loss"])),
        }
        val = _metrics(task, model, x[n_train:], y[n_train:])
        metrics.update({f"val_{key}": v for key, v in val.items()})
        if task == "humidity":
            metrics["val_loss"] = float(hist.history["val_loss"][best])
        weights = [canonical_array(w) for w in model.get_weights()]
    return TrainResult(weights=weights, num_examples=n_train, metrics=metrics)


def evaluate(
    task: str,
    weights: Sequence[np.ndarray],
    rows: Sequence[Row],
    classes: Sequence[Hashable] | None = None,
) -> dict[str, float]:
    """Metrics of `weights` on all of `rows`: humidity mse, rmse, r2 (de-standardised, % RH);
    traceability accuracy, loss (cross-entropy). Also ``num_examples``."""
    _check_task(task)
    cls = check_classes(classes) if task == "traceability" else None
    x, y = prepare(task, rows, cls)
    with _cache_lock:
        model = _compiled(task, len(cls) if cls else None, TrainConfig())
        _set_weights(model, weights)
        out = _metrics(task, model, x, y)
    out["num_examples"] = float(len(x))
    return out
