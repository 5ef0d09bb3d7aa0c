"""The ClientApp: thin, one fresh flwr-clientapp process per message on every SuperNode.

It never imports TensorFlow: it loads the node's rows through ``fl_hooks.load_rows``, hands the
global weights and the rows to the node's long-lived trainer (``node_config["trainer"]``, a
TrainerClient address) and replies with the new weights, the metrics, and the ``fl_hooks.sign_update``
result. Node config keys: ``data-dir`` (the node's directory), ``node-url``, ``trainer``, and in
file mode what load_rows needs (rows-file, or rows-csv + devices/every/limit-per-device).
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

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

TRAINER_TIMEOUT = 900.0


def _trainer(context: Context) -> TrainerClient:
    address = context.node_config.get("trainer")
    if not address:
        raise ValueError("node config has no 'trainer' address")
    return TrainerClient(str(address), timeout=TRAINER_TIMEOUT)


def _classes(config: ConfigRecord) -> list[str] | None:
    value = config.get("classes")
    return [str(c) for c in value] if value else None


@app.train()
def train(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    task = str(config["task"])
    weights = msg.content[ARRAYS].to_numpy_ndarrays()
    loaded = fl_hooks.load_rows(context.node_config)
    with _trainer(context) as trainer:
        result = trainer.train(task, weights, loaded.rows, train_config_from(config), _classes(config))
    metrics = finite_metrics(result.metrics)
    update = {
        "run": str(config.get("run", "")),
        "task": task,
        "round": int(config.get("server-round", 0)),
        "base-hash": str(config.get("base-hash", "")),
        "weights": result.weights,
        "weights-hash": weights_hex(result.weights),
        "num-examples": result.num_examples,
        "metrics": metrics,
        "rows-digest": loaded.root.hex(),
    }
    signed = fl_hooks.sign_update(context.node_config, update)
    content = RecordDict(
        {
            ARRAYS: ArrayRecord(result.weights),
            METRICS: MetricRecord({NUM_EXAMPLES: int(result.num_examples), **metrics}),
            UPDATE: ConfigRecord(signed),
        }
    )
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    config = msg.content[CONFIG]
    weights = msg.content[ARRAYS].to_numpy_ndarrays()
    rows = fl_hooks.load_rows(context.node_config).rows
    with _trainer(context) as trainer:
        metrics = trainer.evaluate(str(config["task"]), weights, rows, _classes(config))
    metrics = {k: v for k, v in finite_metrics(metrics).items() if k != "num_examples"}
    content = RecordDict({METRICS: MetricRecord({NUM_EXAMPLES: len(rows), **metrics})})
    return Message(content, reply_to=msg)
