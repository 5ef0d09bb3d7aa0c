"""ServerApp of the plain Flower benchmark app: FedAvg's own ``start`` loop, as in the quickstart.

The only addition is a clock: Flower calls ``evaluate_fn`` once before round 1 and once at the end
of every round, so the gaps between those calls are the round wall times (train step, FedAvg,
and the skipped evaluate step). They go to the run config's ``timing-file`` after every round, so
a failed run still leaves what it measured. The run fails (the ServerApp raises) when a round did
not get a reply from every node: FedAvg itself would carry on silently with fewer.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

# Not re-exported by flwr.serverapp.strategy; it is FedAvg's default metric aggregation (flwr 1.41).
from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

from federated import tasks

app = ServerApp()


class RoundClock:
    """evaluate_fn and train_metrics_aggr_fn of the strategy: round times and reply counts."""

    def __init__(self, path: str) -> None:
        self.path = Path(path) if path else None
        self.started = time.monotonic()
        self.marks: dict[int, float] = {}
        self.replies: dict[int, int] = {}
        self.num_examples: dict[int, int] = {}
        self.metrics: dict[int, dict[str, float]] = {}

    def aggregate_train_metrics(self, records: list[RecordDict], key: str) -> MetricRecord:
        server_round = len(self.marks)  # rounds are sequential: marks holds 0 .. this round - 1
        self.replies[server_round] = len(records)
        self.num_examples[server_round] = sum(
            int(next(iter(r.metric_records.values()))[key]) for r in records
        )
        out = aggregate_metricrecords(records, key)
        self.metrics[server_round] = {k: float(v) for k, v in out.items() if isinstance(v, int | float)}
        return out

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        self.marks[server_round] = time.monotonic()
        self.dump()
        return None

    def round_seconds(self) -> dict[int, float]:
        return {r: self.marks[r] - self.marks[r - 1] for r in sorted(self.marks) if r - 1 in self.marks}

    def dump(self) -> None:
        if self.path is None:
            return
        data: dict[str, Any] = {
            "round_seconds": {str(r): s for r, s in self.round_seconds().items()},
            "replies": {str(r): n for r, n in self.replies.items()},
            "num_examples": {str(r): n for r, n in self.num_examples.items()},
            "train_metrics": {str(r): m for r, m in self.metrics.items()},
            "serverapp_seconds": time.monotonic() - self.started,
        }
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.path)


@app.main()
def main(grid: Grid, context: Context) -> None:
    rc = context.run_config
    clock = RoundClock(str(rc["timing-file"]))
    num_rounds = int(rc["num-server-rounds"])
    min_nodes = int(rc["min-nodes"])
    # The quickstart builds the model here for its initial weights; federated.tasks gives the very
    # weights fedledger's trainer hands its ServerApp for round 0. Flower's FedAvg then averages
    # every array, the device lines too (fedledger takes each from its owner): the same work per
    # round, which is what this App measures, not the same model.
    devices = str(rc["devices"]).split(",")
    arrays = ArrayRecord(tasks.initial_weights(str(rc["task"]), len(devices), seed=int(rc["seed"])))
    strategy = FedAvg(
        fraction_train=float(rc["fraction-train"]),
        fraction_evaluate=float(rc["fraction-evaluate"]),
        min_train_nodes=min_nodes,
        min_evaluate_nodes=min_nodes,
        min_available_nodes=min_nodes,
        train_metrics_aggr_fn=clock.aggregate_train_metrics,
    )
    strategy.start(
        grid=grid,
        initial_arrays=arrays,
        num_rounds=num_rounds,
        timeout=float(rc["round-timeout"]),
        evaluate_fn=clock,
    )
    replies = {r: clock.replies.get(r, 0) for r in range(1, num_rounds + 1)}
    short = {r: n for r, n in replies.items() if n < min_nodes}
    if short:
        raise RuntimeError(f"rounds without a reply from all {min_nodes} nodes (round: replies): {short}")
