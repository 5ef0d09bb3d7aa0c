#!/usr/bin/env python3
"""What the held-out evaluation adds to a node's round (a benchmark, not a test).

In every round a node first scores the previous round's committed model on its held-out readings
(federated/flower/fl_client.py `_evaluation`), then trains. This measures both steps for one node
in one run, on the rows a node of `fedledger launch` holds (2 of the bundled slice's 8 rooms over
48 h: its training set and held-out hours by the ledger's rule; traceability also reads every
listed device's rows as context):

* humidity: a round trip to a long-lived trainer (`python -m federated.trainer`, Keras loaded once),
  `evaluate` against `train`, as the ClientApp calls them;
* traceability: the fingerprints in the ClientApp's own process (numpy), `evaluate` against `fit`.

The signed `model_eval` travels in the same submission as the update (one more transaction in the
block; its provenance check hits the cache the update's filled, 0.2 ms, docs/federated.md), and a
run ends with one more Flower round trip for the last model; neither is measured here.

    python scripts/bench_eval.py --json [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federated import evaluation, tasks
from federated.data import MAIN_SLICE, read_csv_rows
from federated.trainer import TrainerClient, wait_for_trainer
from node.ledger.holdout import Split, split_of

DEVICES = ["room_442", "room_510", "room_621", "room_644", "room_648", "room_722", "room_734", "room_748"]
NODE = ["room_442", "room_648"]  # node 1 of 4 in launch: devices 0 and 4 of the sorted list


def split(rows: list[Any]) -> tuple[list[Any], list[Any]]:
    train = [r for r in rows if split_of(r[2]) is Split.TRAIN]
    held = [r for r in rows if split_of(r[2]) is Split.HOLDOUT]
    return train, held


def timed(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    out = fn()  # warm: the first call traces or compiles
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="timed calls per step (median; default 5)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    all_rows = [list(r) for r in read_csv_rows(MAIN_SLICE, DEVICES)]
    mine = [r for r in all_rows if r[0] in NODE]
    train, held = split(mine)
    ctx_train, ctx_held = split(all_rows)
    result: dict[str, Any] = {"node_devices": NODE, "training_rows": len(train), "holdout_rows": len(held),
                              "repeat": args.repeat}

    with tempfile.TemporaryDirectory(prefix="fleval") as d:
        sock = Path(d) / "t.sock"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen([sys.executable, "-m", "federated.trainer", "--socket", str(sock),
                                 "--warm", "humidity"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=env)
        try:
            wait_for_trainer(f"unix:{sock}", timeout=180)
            with TrainerClient(f"unix:{sock}", timeout=600) as client:
                w0 = client.initial_weights("humidity", len(DEVICES))
                cfg = {"epochs": 20}
                t_train, res = timed(lambda: client.train("humidity", w0, train, cfg, DEVICES), args.repeat)
                t_eval, _ = timed(lambda: evaluation.score("humidity", client.evaluate, res.weights, train,
                                                           held, DEVICES), args.repeat)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    result["humidity"] = {"train_s": round(t_train, 4), "evaluate_s": round(t_eval, 4),
                          "evaluate_share_of_train": round(t_eval / t_train, 4)}

    w = tasks.initial_weights("traceability", len(DEVICES))
    t_fit, fit = timed(lambda: tasks.train("traceability", w, train, None, DEVICES, ctx_train), args.repeat)
    t_ev, _ = timed(lambda: evaluation.score(
        "traceability", lambda task, wt, rows, cls: tasks.evaluate(task, wt, rows, cls, ctx_held),
        fit.weights, train, held, DEVICES), args.repeat)
    result["traceability"] = {"train_s": round(t_fit, 4), "evaluate_s": round(t_ev, 4),
                              "evaluate_share_of_train": round(t_ev / t_fit, 4)}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for task in ("humidity", "traceability"):
            r = result[task]
            print(f"{task}: train {r['train_s'] * 1000:.1f} ms, evaluate {r['evaluate_s'] * 1000:.1f} ms "
                  f"({r['evaluate_share_of_train']:.1%} of train)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
