"""The ServerApp: one federated run on the coordinator's SuperLink (spawned as flwr-serverapp).

Reads everything from ``context.run_config`` (see fl_records.RunSettings), gets the round-0 weights
from the coordinator's long-lived trainer (``trainer``; no Keras in this process) or from an
``initial-weights`` FLW1 file (recovery after a lost run), and runs the selected ledger strategy
with explicit timeouts. Any failure (no nodes, a round without enough valid updates, a commit that
fails) raises, so the run -- and ``flwr run --stream`` -- ends with an error.
"""

from __future__ import annotations

import os
import time
from logging import INFO
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.common.logger import log
from flwr.serverapp import Grid, ServerApp

from federated.flower import fl_hooks
from federated.flower.fl_records import RunSettings
from federated.flower.fl_strategy import make_strategy
from federated.trainer import TrainerClient
from federated.weights import decode_weights, weights_hash
from node.proc import watch_parent

app = ServerApp()


def initial_weights(settings: RunSettings) -> list:
    if settings.initial_weights:
        return decode_weights(Path(settings.initial_weights).read_bytes())
    if not settings.trainer:
        # Simulation Engine (no node trainer): build the model here; a deployment always names one.
        from federated import tasks

        return tasks.initial_weights(settings.task, settings.num_classes, settings.seed)
    with TrainerClient(settings.trainer, timeout=settings.round_timeout) as client:
        return client.initial_weights(settings.task, settings.num_classes, settings.seed)


@app.main()
def main(grid: Grid, context: Context) -> None:
    # Flower stops an idle ServerApp whose SuperExec is gone, not one blocked in our strategy (on
    # the ledger, the trainer): a coordinator killed with SIGKILL must not leave it running.
    watch_parent(parent=os.getppid())
    settings = RunSettings.from_run_config(context.run_config)
    weights = initial_weights(settings)
    if settings.resume_round == 0:
        fl_hooks.publish_initial(context.run_config, settings.task, weights)
    # else: a run taken over or restarted at resume-round, from the model committed for the round
    # before; rounds resume-round..num-rounds are left (node/flower/takeover.py).
    first = settings.round_offset + 1
    log(
        INFO,
        "fedledger run: task=%s strategy=%s rounds=%d..%d initial=%s",
        settings.task,
        settings.strategy,
        first,
        settings.num_rounds,
        weights_hash(weights).hex()[:16],
    )
    strategy = make_strategy(
        settings.strategy,
        run_config=dict(context.run_config),
        aggregation_params=settings.aggregation_params,
        min_nodes=settings.min_nodes,
        node_wait_timeout=settings.node_wait_timeout,
        fraction_evaluate=settings.fraction_evaluate,
        round_offset=settings.round_offset,
    )
    t0 = time.monotonic()
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(weights),
        num_rounds=settings.num_rounds - settings.round_offset,
        timeout=settings.round_timeout,
        train_config=ConfigRecord(settings.instruction_config()),
        evaluate_config=ConfigRecord(settings.instruction_config()),
    )
    missing = [r for r in range(first, settings.num_rounds + 1) if r not in strategy.commits]
    if missing:
        raise RuntimeError(f"rounds not committed: {missing}")
    for r, secs in sorted(strategy.round_seconds.items()):
        log(INFO, "fedledger round %d: train+commit %.2f s", r, secs)
    log(INFO, "fedledger run finished: rounds %d..%d in %.2f s", first, settings.num_rounds,
        time.monotonic() - t0)
