#!/usr/bin/env python3
"""How long a run stalls when its coordinator dies (a benchmark, not a test; issue 14).

One run: 4 authority node processes on this machine, real readings (4 devices of the bundled
slice, one per node), then `fedledger train` of R humidity rounds from node1 with min_nodes 3 (so
that the 3 survivors can go on). In round K (default 2), once an update of that round is final
(the round is under way), node1's node process is killed with SIGKILL (with --superlink-only:
only its SuperLink, the node lives). The run then goes on under the next authority (or under node1
on a new SuperLink) until its last round.

Reported, all from the block times of the run's commits and handovers on node2's replica, against
the wall time of the kill (one machine, one clock):

  failover_s   the kill to the next committed round;
  round_s      the median duration of the run's rounds that no failover touched (the killed round
               and the first round a new coordinator trains, which pays its Flower start-up, are
               left out), the rounds' own gaps between consecutive commits;
  ratio        failover_s / round_s (the goal: under 2);

and what the failover time is made of: waiting for the round to expire (the rule, on block
times: the longer of --handover-timeout and twice the last round's duration after the last
commit), the handover becoming final, and the commit after it (at once from the updates already
on the ledger when they come from min_nodes nodes; else a Flower round under the new
coordinator). `first_trained_s` is the kill to the first round trained under the new coordinator,
which includes starting its Flower processes.

    python scripts/bench_failover.py --json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.launch.federation import create_federation
from node.launch.feeder import Feeder, Target
from node.launch.processes import NodeProcess, wait_until
from node.launch.sensors import BUNDLED_CSV, csv_devices, csv_readings
from node.ledger.handover import DEFAULT_HANDOVER_TIMEOUT_S
from node.net.http import get_json
from node.proc import stop_processes

NODES = 4
READINGS = 1600
GOAL_RATIO = 2.0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of the run (default 5)")
    ap.add_argument("--kill-round", type=int, default=2, help="the round in which node1 dies (default 2)")
    ap.add_argument("--handover-timeout", type=int, default=DEFAULT_HANDOVER_TIMEOUT_S, metavar="SECONDS",
                    help=f"the run's handover_timeout (default {DEFAULT_HANDOVER_TIMEOUT_S})")
    ap.add_argument("--epochs", type=int, default=1, help="local epochs per round (default 1)")
    ap.add_argument("--superlink-only", action="store_true",
                    help="kill only node1's SuperLink (its node lives and moves its SuperLink)")
    ap.add_argument("--dir", type=Path, help="work directory (default: a temporary one, removed)")
    ap.add_argument("--timeout", type=float, default=900.0, help="give up after this long (default 900)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args(argv)
    if args.rounds < 3 or not 2 <= args.kill_round < args.rounds:
        ap.error("need --rounds >= 3 and 2 <= --kill-round < --rounds (rounds on both sides of the kill)")
    return args


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run_events(db: Path, run: bytes) -> dict[str, Any]:
    """The run's commits (round -> (block time ms, coordinator)) and handovers on a replica."""
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = con.execute(
            "SELECT m.kind, m.round, b.time_ms, m.node, m.height FROM models m"
            " JOIN blocks b ON b.height = m.height"
            " WHERE m.run = ? AND m.kind IN ('commit', 'handover', 'update') ORDER BY m.height",
            (run,)).fetchall()
    finally:
        con.close()
    commits = {r: (t, bytes(n).hex()[:16], h) for kind, r, t, n, h in rows if kind == "commit"}
    handovers = [{"round": r, "time_ms": t, "to": bytes(n).hex()[:16], "height": h}
                 for kind, r, t, n, h in rows if kind == "handover"]
    updates: dict[int, int] = {}
    for kind, r, _, _, _ in rows:
        if kind == "update":
            updates[r] = updates.get(r, 0) + 1
    return {"commits": commits, "handovers": handovers, "updates": updates}


def analyse(ev: dict[str, Any], rounds: int, kill_round: int, killed_ms: int, timeout_s: int,
            updates_at_kill: int) -> dict[str, Any]:
    commits = ev["commits"]
    durations = {r: (commits[r][0] - commits[r - 1][0]) / 1000 for r in range(1, rounds + 1)
                 if r in commits and r - 1 in commits}
    after = sorted(r for r, (t, _, _) in commits.items() if t >= killed_ms)
    first = after[0]
    failover_s = (commits[first][0] - killed_ms) / 1000
    handover = next((h for h in ev["handovers"] if h["time_ms"] >= killed_ms), None)
    # The first round the new coordinator trained: the one after the round it committed from the
    # ledger at once, if it did, else the first it committed.
    direct = handover is not None and first == handover["round"] and \
        commits[first][0] - handover["time_ms"] < 5000
    trained = first + 1 if direct else first
    startup = {trained} if handover is not None else set()
    untouched = {r: s for r, s in durations.items() if r not in ({kill_round} | startup)}
    round_s = statistics.median(untouched.values()) if untouched else None
    last_before = max((t for t, _, _ in commits.values() if t < killed_ms), default=killed_ms)
    res: dict[str, Any] = {
        "failover_s": round(failover_s, 2),
        "round_s": None if round_s is None else round(round_s, 2),
        "ratio": None if not round_s else round(failover_s / round_s, 2),
        "goal_ratio": GOAL_RATIO,
        "handover_timeout_s": timeout_s,
        "expiry_after_last_commit_s": None if handover is None else round(
            (handover["time_ms"] - last_before) / 1000, 2),
        "killed_s_after_last_commit": round((killed_ms - last_before) / 1000, 2),
        "updates_of_killed_round_final_at_kill": updates_at_kill,
        "next_commit_round": first,
        "next_commit_from_ledger_updates": direct,
        "first_trained_round": trained if trained in commits else None,
        "first_trained_s": round((commits[trained][0] - killed_ms) / 1000, 2) if trained in commits else None,
        "round_durations_s": {str(r): round(s, 2) for r, s in sorted(durations.items())},
        "rounds_for_round_s": sorted(untouched),
        "coordinators": {str(r): c for r, (_, c, _) in sorted(commits.items())},
        "handovers": ev["handovers"],
    }
    if handover is not None:
        res["breakdown_s"] = {  # kill to handover: the expiry wait (a node), noticing (a SuperLink)
            "kill_to_handover": round((handover["time_ms"] - killed_ms) / 1000, 2),
            "handover_to_next_commit": round((commits[first][0] - handover["time_ms"]) / 1000, 2),
        }
    return res


def own_processes(root: Path) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if str(root) in " ".join(p.info["cmdline"] or []) and p.pid != os.getpid():
                found.append(p)
        except psutil.Error:
            continue
    return found


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    tmp = None
    if args.dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-failover-")
        root = Path(tmp.name)
    else:
        root = args.dir.resolve()
        root.mkdir(parents=True, exist_ok=True)
    genesis, nodes = create_federation(root / "fed", NODES)
    procs = [NodeProcess(n.dir) for n in nodes]
    result: dict[str, Any] = {"mode": "superlink" if args.superlink_only else "node", "rounds": args.rounds,
                              "kill_round": args.kill_round, "nodes": NODES, "min_nodes": NODES - 1}
    t_start = time.monotonic()
    try:
        for p in procs:
            p.start()
        if not wait_until(lambda: all((s := p.status()) and s["peers"] >= NODES - 1 for p in procs), 90):
            raise RuntimeError("the nodes did not connect")
        names = csv_devices(BUNDLED_CSV, limit=NODES)
        feeder = Feeder([Target(p.dir, p.url) for p in procs], genesis.chain_id, names)

        async def feed() -> None:
            await feeder.register_devices()
            assert wait_until(lambda: len(get_json(procs[0].url, "/devices")["devices"]) >= NODES, 30)
            source = csv_readings(BUNDLED_CSV, devices=set(names))
            await feeder.stream(source, 0, asyncio.Event(), limit=READINGS)

        asyncio.run(feed())
        if not wait_until(lambda: all((s := p.status()) and s["readings"] >= READINGS for p in procs), 60):
            raise RuntimeError("the readings were not finalized")
        out = subprocess.run(
            [sys.executable, "-m", "node", "train", str(procs[0].dir), "--task", "humidity",
             "--rounds", str(args.rounds), "--min-nodes", str(NODES - 1), "--epochs", str(args.epochs),
             "--handover-timeout", str(args.handover_timeout), "--no-wait", "--json"],
            capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"train failed: {out.stderr[-2000:]}")
        run = bytes.fromhex(json.loads(out.stdout)["run"])
        log(f"run {run.hex()[:12]}: {args.rounds} rounds, handover_timeout {args.handover_timeout} s")
        db = procs[1].dir / "node.db"

        def at_kill_point() -> bool:
            ev = run_events(db, run)
            return args.kill_round - 1 in ev["commits"] and ev["updates"].get(args.kill_round, 0) >= 1

        if not wait_until(at_kill_point, args.timeout, 0.1):
            raise RuntimeError(f"round {args.kill_round} never got under way")
        updates_at_kill = run_events(db, run)["updates"].get(args.kill_round, 0)
        if args.superlink_only:
            victims = [p for p in own_processes(procs[0].dir) if "fl_superlink" in " ".join(p.cmdline())]
            if len(victims) != 1:
                raise RuntimeError(f"expected node1's one SuperLink, found {len(victims)}")
            pid = victims[0].pid
        else:
            assert procs[0].proc is not None
            pid = procs[0].proc.pid
        killed_ms = int(time.time() * 1000)
        os.kill(pid, signal.SIGKILL)
        log(f"killed node1's {'SuperLink' if args.superlink_only else 'node'} (pid {pid}) in round "
            f"{args.kill_round}, {updates_at_kill} update(s) of it final")

        if not wait_until(lambda: args.rounds in run_events(db, run)["commits"], args.timeout, 0.5):
            raise RuntimeError(f"the run did not finish; node2's log:\n{procs[1].log_tail()}")
        ev = run_events(db, run)
        result.update(analyse(ev, args.rounds, args.kill_round, killed_ms, args.handover_timeout,
                              updates_at_kill))
        result["wall_s"] = round(time.monotonic() - t_start, 1)
        result["load_average"] = [round(x, 2) for x in os.getloadavg()]
    finally:
        for p in procs:
            p.stop()
        for p in procs:
            p.kill()
        left = stop_processes(own_processes(root))
        if left:
            log(f"processes still running: {left}")
        if tmp is not None:
            tmp.cleanup()
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        for k, v in result.items():
            print(f"{k}: {v}")
    ratio = result.get("ratio")
    log(f"failover {result.get('failover_s')} s, round {result.get('round_s')} s, ratio {ratio} "
        f"(goal < {GOAL_RATIO})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
