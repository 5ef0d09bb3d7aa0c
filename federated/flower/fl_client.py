"""The ClientApp: thin, one fresh flwr-clientapp process per message on every SuperNode.

It never imports TensorFlow: it loads the node's rows through ``fl_hooks.load_rows``, hands the
global weights and the rows to the node's long-lived trainer (``node_config["trainer"]``, a
TrainerClient address) and replies with the new weights, the metrics, and the ``fl_hooks.sign_update``
result. Node config keys: ``data-dir`` (the node's directory), ``node-url``, ``trainer``, and in
file mode what load_rows needs (rows-file, or rows-csv + devices/every/limit-per-device).
"""

from __future__ import annotations

from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated import evaluation
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

    def train(self, task: str, weights: Any, rows: Any, config: Any, classes: Any) -> Any:
        from federated import tasks

        return tasks.train(task, weights, rows, config, classes)

    def evaluate(self, task: str, weights: Any, rows: Any, classes: Any) -> dict[str, float]:
        from federated import tasks

        return tasks.evaluate(task, weights, rows, classes)


def _trainer(context: Context) -> TrainerClient | InProcessTrainer:
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
    value = config.get("classes")
    return [str(c) for c in value] if value else None


def _evaluation(config: ConfigRecord, trainer: Any, weights: Any, loaded: fl_hooks.LoadedRows,
                round: int, model_hash: str) -> dict[str, Any] | None:
    """This node's held-out score of the committed model of `round` (ledger mode, with held-out
    rows and training rows for the baseline), ready for fl_hooks to sign; else None."""
    if not config.get("run") or not loaded.holdout or not loaded.rows or round < 0:
        return None
    task = str(config["task"])
    metrics = evaluation.score(task, trainer.evaluate, weights, loaded.rows, loaded.holdout, _classes(config))
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
    loaded = fl_hooks.load_rows(_rows_config(context))
    server_round = int(config.get("server-round", 0))
    with _trainer(context) as trainer:
        # The base is the committed model of the previous round: score it on data nobody trained
        # on before training from it, and sign that score with the update.
        base_hash = str(config.get("base-hash", ""))
        scored = _evaluation(config, trainer, weights, loaded, server_round - 1, base_hash)
        result = trainer.train(task, weights, loaded.rows, train_config_from(config), _classes(config))
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
    weights = msg.content[ARRAYS].to_numpy_ndarrays()
    loaded = fl_hooks.load_rows(_rows_config(context))
    with _trainer(context) as trainer:
        if config.get("run"):
            scored = _evaluation(config, trainer, weights, loaded, int(config.get("server-round", 0)),
                                 weights_hex(weights))
            if scored is None:
                return Message(RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: 0})}), reply_to=msg)
            fl_hooks.sign_eval(context.node_config, scored)
            metrics, n = dict(scored["metrics"]), int(scored["num-examples"])
        else:
            metrics = trainer.evaluate(str(config["task"]), weights, loaded.rows, _classes(config))
            n = len(loaded.rows)
    metrics = {k: v for k, v in finite_metrics(metrics).items() if k != "num_examples"}
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: n, **metrics})})
    return Message(content, reply_to=msg)
