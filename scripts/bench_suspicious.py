#!/usr/bin/env python3
"""What the explorer's suspicious view costs a node (a benchmark, not a test).

On a node directory whose ledger has a committed traceability model (e.g. node1 of `fedledger
launch --task traceability --rounds 1`), for the latest 24 h, 48 h and a week of readings:

* `compute_ms`: one computation of GET /suspicious (node.store.suspicious on a read-only snapshot,
  serialized), the median of `--repeat`; `read_ms`, its baseline: only reading the listed devices'
  latest readings through the store's index walk, which every computation does first;
* `us_per_reading` and `bound_estimate_ms`: that cost per reading scored, times the view's bound
  (64 devices x the hours x 60 readings an hour): an extrapolation, said as one;
* the event loop: the longest gap between 1 ms ticks of an asyncio loop while one computation runs,
  once through the view (its worker thread, as the node serves it) and once inline on the loop
  (the baseline: what serving it from the handler would cost), and their ratio.

    python scripts/bench_suspicious.py DIR [--json] [--repeat N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from federated.personal import run_devices
from node.ledger.run_rules import named_devices
from node.server.datadir import DB_FILE
from node.server.explorer.suspicious_view import SuspiciousView, compute, sqlite_reader
from node.store import suspicious as susp
from node.store.models import find_run
from node.store.sqlite import SqliteStore

HOURS = (24, 48, susp.MAX_HOURS)
BOUND_DEVICES = 64
READINGS_PER_HOUR = 60


def median_ms(fn: Callable[[], Any], repeat: int) -> float:
    fn()  # warm the page cache
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def read_only(store: SqliteStore, hours: int) -> int:
    """The baseline: what every computation reads before it scores anything."""
    info = find_run(store, "traceability")
    names = run_devices("traceability", info.request.params)
    n = 0
    for rec in named_devices(store, names):
        if rec is not None:
            n += len(store.latest_readings(rec.device, hours * susp.READINGS_PER_HOUR))
    return n


async def loop_gap(run: Callable[[], Any], done: Callable[[], bool]) -> float:
    """The longest gap (ms) between 1 ms ticks while `run` is started and until `done`."""
    worst = 0.0
    last = time.perf_counter()
    run()
    while True:
        await asyncio.sleep(0.001)
        now = time.perf_counter()
        worst = max(worst, now - last)
        last = now
        if done():
            return worst * 1000


def stalls(store: SqliteStore, hours: int) -> dict[str, float]:
    reader = sqlite_reader(store)
    assert reader is not None
    view = SuspiciousView(store, reader)
    state = {"done": False}

    def threaded() -> None:
        view.request(hours)

    def threaded_done() -> bool:
        return view.request(hours)[0] != 202

    def inline() -> None:
        with reader() as snap:
            compute(snap, hours)
        state["done"] = True

    thread_ms = asyncio.run(loop_gap(threaded, threaded_done))
    view.close()
    inline_ms = asyncio.run(loop_gap(inline, lambda: state["done"]))
    return {"loop_gap_thread_ms": round(thread_ms, 1), "loop_gap_inline_ms": round(inline_ms, 1),
            "inline_over_thread": round(inline_ms / thread_ms, 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path, help="node directory with a committed traceability model")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    store = SqliteStore(args.dir / DB_FILE, read_only=True)
    out: dict[str, Any] = {"dir": str(args.dir), "height": store.height(), "views": []}
    for hours in HOURS:
        with store.snapshot():
            answer = json.loads(compute(store, hours)[1])
            if answer["state"] != "ready":
                print(f"{args.dir}: {answer.get('detail')}", file=sys.stderr)
                return 1
            total = median_ms(lambda h=hours: compute(store, h), args.repeat)
            read = median_ms(lambda h=hours: read_only(store, h), args.repeat)
        per = total * 1000 / max(1, answer["readings"])
        bound = BOUND_DEVICES * hours * READINGS_PER_HOUR
        out["views"].append({
            "hours": hours, "devices": len(answer["devices"]), "readings": answer["readings"],
            "windows": answer["windows_scored"], "flagged": answer["flagged_total"],
            "compute_ms": round(total, 1), "read_ms": round(read, 1), "read_share": round(read / total, 2),
            "us_per_reading": round(per, 2), "bound_readings": bound,
            "bound_estimate_ms": round(per * bound / 1000), **stalls(store, hours),
        })
    store.close()
    if args.json:
        print(json.dumps(out))
    else:
        for v in out["views"]:
            print(f"{v['hours']:>4} h: {v['readings']} readings of {v['devices']} devices, "
                  f"{v['windows']} windows, {v['flagged']} flagged: {v['compute_ms']} ms "
                  f"({v['read_ms']} ms reading), {v['us_per_reading']} us/reading -> "
                  f"~{v['bound_estimate_ms']} ms at {v['bound_readings']} readings; loop gap "
                  f"{v['loop_gap_thread_ms']} ms in the thread, {v['loop_gap_inline_ms']} ms inline")
    return 0


if __name__ == "__main__":
    sys.exit(main())
