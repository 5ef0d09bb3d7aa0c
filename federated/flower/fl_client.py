"""The ClientApp: thin, one fresh flwr-clientapp process per message on every SuperNode.

It never imports TensorFlow: it loads the node's rows through ``fl_hooks.load_rows``, hands the
global weights and the rows to the node's long-lived trainer (``node_config["trainer"]``, a
TrainerClient address) and replies with the new weights, the metrics, and the ``fl_hooks.sign_update``
result. Traceability's fingerprints are numpy (federated/fingerprint.py): the ClientApp fits and
scores them itself, relative to every listed device's rows at the same data cut.

Node config keys: ``data-dir`` (the node's directory), ``node-url``, ``trainer``, and in
file mode what load_rows needs (rows-file, or rows-csv + devices/every/limit-per-device).
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated import evaluation, tasks
from federated.clipping import clip_update
from federated.flower import fl_hooks
from federated.flower.fl_records import (
    ARRAYS,
    CONFIG,
    METRICS,
    NUM_EXAMPLES,
    UPDATE,
    finite_metrics,
    train_config_from,
    weights_hex,
)
from federated.trainer import TrainerClient

app = ClientApp()

SIMULATION_KEYS = ("rows-csv", "every")

TRAINER_TIMEOUT = 900.0


class InProcessTrainer:
    """The trainer's interface on federated.tasks in this process: for Flower's Simulation Engine,
    whose Ray actors are long-lived (Keras is imported once per actor, models are cached), and
    which has no node trainer to hand the work to. Never used in a deployment (the SuperNodes
    fedledger starts always name their node's trainer)."""

    def __enter__(self) -> InProcessTrainer:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def train(self, task: str, weights: Any, rows: Any, config: Any, classes: Any,
              context_rows: Any = None) -> Any:
        return tasks.train(task, weights, rows, config, classes, context_rows)

    def evaluate(self, task: str, weights: Any, rows: Any, classes: Any,
                 context_rows: Any = None) -> dict[str, float]:
        return tasks.evaluate(task, weights, rows, classes, context_rows)


NUMPY_TASKS = ("traceability",)  # fitted and scored in this process: no trainer, no Keras


def _trainer(context: Context, task: str = "") -> TrainerClient | InProcessTrainer:
    if task in NUMPY_TASKS:
        return InProcessTrainer()
    address = context.node_config.get("trainer")
    if not address:
        if "partition-id" in context.node_config:  # Simulation Engine
            return InProcessTrainer()
        raise ValueError("node config has no 'trainer' address")
    return TrainerClient(str(address), timeout=TRAINER_TIMEOUT)


def _rows_config(context: Context) -> dict[str, Any]:
    """The node config, plus in the Simulation Engine (virtual nodes have only partition-id and
    num-partitions) the run config's file-mode keys, so every virtual node gets its partition."""
    config = dict(context.node_config)
    if "partition-id" in config:
        for key in SIMULATION_KEYS:
            config.setdefault(key, context.run_config.get(key, ""))
    return config


def _classes(config: ConfigRecord) -> list[str] | None:
    """The run's device list (fl_records: sent as `classes` for both tasks)."""
    value = config.get("classes")
    return [str(c) for c in value] if value else None


def _context_names(task: str, classes: list[str] | None) -> list[str]:
    """Traceability's fingerprints are relative to every listed device: load their rows too."""
    return list(classes or []) if task in NUMPY_TASKS else []


def _evaluation(config: ConfigRecord, trainer: Any, weights: Any, loaded: fl_hooks.LoadedRows,
                round: int, model_hash: str) -> dict[str, Any] | None:
    """This node's held-out score of the committed model of `round` (ledger mode, with held-out
    rows and training rows for the baseline), ready for fl_hooks to sign; else None."""
    if not config.get("run") or not loaded.holdout or not loaded.rows or round < 0:
        return None
    task = str(config["task"])

    def evaluate_fn(task: str, weights: Any, rows: Any, classes: Any) -> Any:
        return trainer.evaluate(task, weights, rows, classes, loaded.holdout_context or None)

    metrics = evaluation.score(task, evaluate_fn, weights, loaded.rows, loaded.holdout, _classes(config))
    return {
        "run": str(config["run"]),
        "task": task,
        "round": round,
        "model-hash": model_hash,
        "data-cut": loaded.data_cut,
        "num-examples": len(loaded.holdout),
        "holdout-root": loaded.holdout_root.hex(),
        "metrics": finite_metrics(metrics),
    }


def _reply_with(existing: dict[str, Any], msg: Message) -> Message:
    """The train reply carrying an update already on the ledger (fl_ledger.existing_update)."""
    content = RecordDict(
        {
            ARRAYS: ArrayRecord(existing["weights"]),
            METRICS: MetricRecord({NUM_EXAMPLES: int(existing["num-examples"]),
                                   **finite_metrics(existing["metrics"])}),
            UPDATE: ConfigRecord(existing["signed"]),
        }
    )
    return Message(content, reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    task = str(config["task"])
    # A round this node already answered on the ledger (its coordinator stopped after the update
    # was final): the same update again, never a second one.
    existing = fl_hooks.existing_update(context.node_config, config)
    if existing is not None:
        return _reply_with(existing, msg)
    weights = msg.content[ARRAYS].to_numpy_ndarrays()
    classes = _classes(config)
    loaded = fl_hooks.load_rows(_rows_config(context), _context_names(task, classes))
    server_round = int(config.get("server-round", 0))
    local = asdict(tasks.round_config(train_config_from(config), server_round))
    with _trainer(context, task) as trainer:
        # The base is the committed model of the previous round: score it on data nobody trained
        # on before training from it, and sign that score with the update.
        base_hash = str(config.get("base-hash", ""))
        scored = _evaluation(config, trainer, weights, loaded, server_round - 1, base_hash)
        if task in NUMPY_TASKS:
            result = trainer.train(task, weights, loaded.rows, local, classes, loaded.context or None)
        else:
            result = trainer.train(task, weights, loaded.rows, local, classes)
    new_weights = result.weights
    bound = float(config.get("clip-norm", 0.0))
    if bound > 0:
        # The run's bound: the ledger refuses an update further than this from its base model.
        new_weights = clip_update(new_weights, weights, bound)
    metrics = finite_metrics(result.metrics)
    # On the ledger the FedAvg weight is the size of the training set at the data cut, which every
    # authority re-computes (the trainer's own count leaves out its early-stopping split).
    num_examples = len(loaded.rows) if config.get("run") else result.num_examples
    update = {
        "run": str(config.get("run", "")),
        "task": task,
        "round": int(config.get("server-round", 0)),
        "base-hash": str(config.get("base-hash", "")),
        "weights": new_weights,
        "weights-hash": weights_hex(new_weights),
        "num-examples": num_examples,
        "metrics": metrics,
        "rows-digest": loaded.root.hex(),
        "data-cut": loaded.data_cut,
    }
    if scored is not None:
        update["evaluation"] = scored
    try:
        signed = fl_hooks.sign_update(context.node_config, update)
    except fl_hooks.UpdateExists:
        # Another ClientApp of this node signed the round first: answer with the update the
        # ledger kept.
        existing = fl_hooks.existing_update(context.node_config, config)
        if existing is None:
            raise
        return _reply_with(existing, msg)
    content = RecordDict(
        {
            ARRAYS: ArrayRecord(new_weights),
            METRICS: MetricRecord({NUM_EXAMPLES: int(num_examples), **metrics}),
            UPDATE: ConfigRecord(signed),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """File mode: the global model on all of the node's rows. Ledger mode: on its held-out rows,
    signed onto the ledger as a model_eval (the strategy asks for this after the last round; the
    earlier rounds are scored by the next round's train step)."""
    config = msg.content[CONFIG]
    task = str(config["task"])
    weights = msg.content[ARRAYS].to_numpy_ndarrays()
    classes = _classes(config)
    loaded = fl_hooks.load_rows(_rows_config(context), _context_names(task, classes))
    with _trainer(context, task) as trainer:
        if config.get("run"):
            scored = _evaluation(config, trainer, weights, loaded, int(config.get("server-round", 0)),
                                 weights_hex(weights))
            if scored is None:
                return Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 0})}), reply_to=msg)
            fl_hooks.sign_eval(context.node_config, scored)
            metrics, n = dict(scored["metrics"]), int(scored["num-examples"])
        else:
            if task in NUMPY_TASKS:
                metrics = trainer.evaluate(task, weights, loaded.rows, classes, loaded.context or None)
            else:
                metrics = trainer.evaluate(task, weights, loaded.rows, classes)
            n = len(loaded.rows)
    metrics = {k: v for k, v in finite_metrics(metrics).items() if k != "num_examples"}
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: n, **metrics})})
    return Message(content, reply_to=msg)
