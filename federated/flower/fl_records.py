"""Run settings and the record layout shared by the ServerApp and the ClientApp.

Message layout (RecordDict keys):

* instruction (server -> node), train and evaluate: ``arrays`` (ArrayRecord, the global weights in
  layer order) and ``config`` (ConfigRecord: ``server-round``, ``task``, the TrainConfig keys,
  ``classes`` = the run's device list (both tasks: the personal rows; traceability's labels),
  ``base-hash`` = hex weights hash of the global weights).
* train reply: ``arrays`` (ArrayRecord, the new weights), ``metrics`` (MetricRecord with the int
  ``num-examples`` and the trainer's float metrics) and ``update`` (ConfigRecord: whatever
  ``fl_hooks.sign_update`` returned; it must hold ``weights-hash``).
* evaluate reply: ``metrics`` (MetricRecord with ``num-examples`` and the evaluation metrics).

No TensorFlow here; flwr only for the record types.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from federated.aggregate import STRATEGIES
from federated.personal import parse_devices
from federated.tasks import TASKS
from federated.weights import weights_hash

ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
UPDATE = "update"
NUM_EXAMPLES = "num-examples"

# run-config key -> federated.tasks.TrainConfig field, forwarded to every ClientApp.
TRAIN_KEYS = {
    "epochs": "epochs",
    "batch-size": "batch_size",
    "learning-rate": "learning_rate",
    "patience": "patience",
    "seed": "seed",
}


def _get(rc: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value = rc.get(key, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or isinstance(value, bool) is not (kind is bool):
        raise ValueError(f"run config {key!r} must be {kind.__name__}, got {value!r}")
    return value


@dataclass(frozen=True)
class RunSettings:
    """The typed view of a run's ``context.run_config`` (defaults: federated/flower/pyproject.toml)."""

    task: str = "humidity"
    strategy: str = "fedavg"
    num_rounds: int = 3
    min_nodes: int = 2
    fraction_evaluate: float = 1.0
    round_timeout: float = 300.0
    node_wait_timeout: float = 120.0
    trainer: str = ""
    initial_weights: str = ""
    seed: int = 0
    classes: tuple[str, ...] = ()  # the run's device list (run config `classes` or `devices`)
    beta: float = 0.2
    krum_f: int = 0
    krum_m: int = 1  # Multi-Krum: the best-scored updates averaged (1: Krum)
    clip_norm: float = 0.0  # > 0: every update is clipped to this L2 distance from its base model
    commit_log: str = ""
    run: str = ""  # the train_request id (hex): ledger mode
    data_dir: str = ""  # the coordinator's node directory (ledger mode)
    # > 0: a run taken over (or restarted) at this ledger round, from `initial-weights`: the
    # committed model of the round before (node/flower/takeover.py).
    resume_round: int = 0
    train_config: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def from_run_config(cls, rc: Mapping[str, Any]) -> RunSettings:
        d = cls()
        # traceability names its devices `classes`, humidity `devices` (the ledger's params).
        classes_text = _get(rc, "classes", str, "") or _get(rc, "devices", str, "")
        s = cls(
            task=_get(rc, "task", str, d.task),
            strategy=_get(rc, "strategy", str, d.strategy),
            num_rounds=_get(rc, "num-rounds", int, d.num_rounds),
            min_nodes=_get(rc, "min-nodes", int, d.min_nodes),
            fraction_evaluate=_get(rc, "fraction-evaluate", float, d.fraction_evaluate),
            round_timeout=_get(rc, "round-timeout", float, d.round_timeout),
            node_wait_timeout=_get(rc, "node-wait-timeout", float, d.node_wait_timeout),
            trainer=_get(rc, "trainer", str, d.trainer),
            initial_weights=_get(rc, "initial-weights", str, d.initial_weights),
            seed=_get(rc, "seed", int, d.seed),
            classes=tuple(_devices(classes_text)),
            beta=_get(rc, "beta", float, d.beta),
            krum_f=_get(rc, "krum-f", int, d.krum_f),
            krum_m=_get(rc, "krum-m", int, d.krum_m),
            clip_norm=_get(rc, "clip-norm", float, d.clip_norm),
            commit_log=_get(rc, "commit-log", str, d.commit_log),
            run=_get(rc, "run", str, d.run),
            data_dir=_get(rc, "data-dir", str, d.data_dir),
            resume_round=_get(rc, "resume-round", int, d.resume_round),
            train_config=tuple((field, rc[key]) for key, field in TRAIN_KEYS.items() if key in rc),
        )
        if s.task not in TASKS:
            raise ValueError(f"run config task {s.task!r}: expected one of {', '.join(TASKS)}")
        if s.strategy not in STRATEGIES:
            raise ValueError(f"run config strategy {s.strategy!r}: expected one of {', '.join(STRATEGIES)}")
        if s.num_rounds < 1 or s.min_nodes < 1:
            raise ValueError("num-rounds and min-nodes must be >= 1")
        if not (math.isfinite(s.clip_norm) and s.clip_norm >= 0):
            raise ValueError("clip-norm must be a finite number >= 0 (0: no clipping)")
        if s.round_timeout <= 0 or s.node_wait_timeout <= 0:
            raise ValueError("round-timeout and node-wait-timeout must be > 0")
        if s.run and not s.data_dir:
            raise ValueError("a ledger run (run config 'run') needs the coordinator's 'data-dir'")
        if not 0 <= s.resume_round <= s.num_rounds:
            raise ValueError("resume-round must be in 0..num-rounds")
        if s.resume_round > 0 and not s.initial_weights:
            raise ValueError("a resumed run (resume-round > 0) starts from initial-weights: the model "
                             "committed for the round before")
        if s.task == "traceability" and len(s.classes) < 2:
            raise ValueError("traceability needs run config classes='dev1,dev2,...' (at least 2)")
        if s.task == "humidity" and not s.classes:
            raise ValueError("humidity needs run config devices='dev1,dev2,...': the devices with their "
                             "own line")
        return s

    @property
    def round_offset(self) -> int:
        """Rounds committed before this ServerApp started (the first one it runs is offset + 1)."""
        return max(self.resume_round - 1, 0)

    @property
    def num_classes(self) -> int | None:
        """The number of devices of the run's list: the personal rows (and traceability's labels)."""
        return len(self.classes) or None

    @property
    def aggregation_params(self) -> dict[str, Any]:
        """Keyword parameters of ``federated.aggregate.aggregate`` for this strategy."""
        if self.strategy == "fedtrimmedavg":
            return {"beta": self.beta}
        if self.strategy == "krum":
            return {"f": self.krum_f, "m": self.krum_m}
        return {}

    def instruction_config(self) -> dict[str, Any]:
        """The ConfigRecord content sent with every train/evaluate instruction (Flower adds
        ``server-round``; the strategy adds ``base-hash``)."""
        out: dict[str, Any] = {"task": self.task, **dict(self.train_config)}
        if self.run:
            out["run"] = self.run
        if self.classes:
            out["classes"] = list(self.classes)
        if self.clip_norm > 0:
            out["clip-norm"] = self.clip_norm
        return out


def _devices(text: str) -> list[str]:
    try:
        return parse_devices(text) if text.strip() else []
    except ValueError as exc:
        raise ValueError(f"run config device list: {exc}") from exc


def train_config_from(config: Mapping[str, Any]) -> dict[str, Any]:
    """The TrainConfig part of an instruction's ConfigRecord."""
    fields = set(TRAIN_KEYS.values())
    return {k: config[k] for k in config if k in fields}


def finite_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Only finite numeric metrics (a MetricRecord refuses other types; NaN would poison averages)."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v)):
            out[str(k)] = float(v)
    return out


def weights_hex(weights: Sequence[np.ndarray]) -> str:
    return weights_hash(weights).hex()
