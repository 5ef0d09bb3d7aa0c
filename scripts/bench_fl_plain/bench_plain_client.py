"""ClientApp of the plain Flower benchmark app, shaped like Flower's TensorFlow quickstart.

As in the quickstart, this module imports Keras and every message builds, compiles and trains a
fresh model in the flwr-clientapp process that Flower spawns for that message. That per-message
TensorFlow import is the cost fedledger's long-lived trainer avoids, so it is kept on purpose.
The model and the training loop are fedledger's own (federated.tasks), so only the runtime path
differs. Node config: ``rows-dir``, holding ``round-R.msgpack`` per round: a msgpack list of
(device, seq, timestamp_ms, temperature_c, humidity_pct) rows, the very rows the same fedledger
node trained on in round R (dumped by scripts/bench_fl.py). Where the quickstart loads its
partition by ``partition-id``, this loads the file of the round it is asked for.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import keras
import msgpack
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from federated import tasks

app = ClientApp()


def load_data(context: Context, server_round: int) -> list[list[Any]]:
    path = Path(str(context.node_config["rows-dir"])) / f"round-{server_round}.msgpack"
    with open(path, "rb") as f:
        return [list(r) for r in msgpack.unpackb(f.read(), raw=False)]


def train_config(run_config: Any) -> dict[str, Any]:
    return {
        "epochs": int(run_config["local-epochs"]),
        "batch_size": int(run_config["batch-size"]),
        "learning_rate": float(run_config["learning-rate"]),
        "patience": int(run_config["patience"]),
        "seed": int(run_config["seed"]),
    }


def devices(context: Context) -> list[str]:
    """The run's device list: the humidity model has one line per device (federated/personal.py)."""
    return str(context.run_config["devices"]).split(",")


def finite(metrics: dict[str, Any]) -> dict[str, float]:
    # A MetricRecord refuses non-numbers, and a NaN would poison the weighted mean.
    return {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and math.isfinite(v)}


@app.train()
def train(msg: Message, context: Context) -> Message:
    # The quickstart resets Keras state first; in a fresh process this is nearly free.
    keras.backend.clear_session()
    rows = load_data(context, int(msg.content["config"]["server-round"]))
    weights = msg.content["arrays"].to_numpy_ndarrays()
    config = tasks.round_config(train_config(context.run_config), int(msg.content["config"]["server-round"]))
    result = tasks.train(str(context.run_config["task"]), weights, rows, config, devices(context))
    metrics = {**finite(result.metrics), "num-examples": int(result.num_examples)}
    content = RecordDict({"arrays": ArrayRecord(result.weights), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    keras.backend.clear_session()
    rows = load_data(context, int(msg.content["config"]["server-round"]))
    weights = msg.content["arrays"].to_numpy_ndarrays()
    metrics = tasks.evaluate(str(context.run_config["task"]), weights, rows, devices(context))
    metrics = {k: v for k, v in finite(metrics).items() if k != "num_examples"}
    content = RecordDict({"metrics": MetricRecord({**metrics, "num-examples": len(rows)})})
    return Message(content=content, reply_to=msg)
