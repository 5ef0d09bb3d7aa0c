#!/usr/bin/env python3
"""Run the deterministic consensus simulator over many seeds, or replay one seed with a trace.

    python scripts/simulate.py --seeds 200 --validators 4 --byzantine 1 --json
    python scripts/simulate.py --seed 17 --trace

Exit status 1 on any safety violation or liveness failure (the failing seeds are printed, each
replayable with --seed N --trace).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.sim.byzantine import Behaviour
from node.sim.runner import run_seed


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=positive, default=100, help="number of seeds to run (default 100)")
    ap.add_argument("--first-seed", type=int, default=0, help="first seed of the range (default 0)")
    ap.add_argument("--seed", type=int, help="run only this seed")
    ap.add_argument("--validators", type=int, default=4, help="number of validators, 4 to 10 (default 4)")
    ap.add_argument("--byzantine", type=int, default=1, help="Byzantine validators, at most f (default 1)")
    ap.add_argument("--behaviour", choices=[b.value for b in Behaviour], help="force one Byzantine behaviour")
    ap.add_argument("--membership", action="store_true",
                    help="a fifth node is voted in as an authority, then a genesis authority is voted out")
    ap.add_argument("--trace", action="store_true", help="print a readable trace (with --seed)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if not 4 <= args.validators <= 10:
        ap.error("--validators must be between 4 and 10")
    f = (args.validators - 1) // 3
    if not 0 <= args.byzantine <= f:
        ap.error(f"--byzantine must be between 0 and f = {f} for {args.validators} validators")

    seeds = [args.seed] if args.seed is not None else range(args.first_seed, args.first_seed + args.seeds)
    behaviours = [Behaviour(args.behaviour)] * args.byzantine if args.behaviour else None
    trace = print if args.trace else None
    started = time.perf_counter()
    results = []
    for seed in seeds:
        r = run_seed(seed, args.validators, args.byzantine, behaviours=behaviours, trace=trace,
                     joiners=1 if args.membership else 0)
        results.append(r)
        if not args.json and (not r.ok or args.seed is not None):
            status = "ok" if r.ok else "FAIL"
            print(f"seed {seed}: {status} heights={r.heights} faults=[{r.faults}] byzantine={r.byzantine} "
                  f"steps={r.steps} sim={r.sim_ms}ms wall={r.wall_s}s")
            for v in r.safety_violations:
                print(f"  safety: {v}")
            if r.liveness_failure:
                print(f"  liveness: {r.liveness_failure}")
            if r.membership_failure:
                print(f"  membership: {r.membership_failure}")
    failed = [r for r in results if not r.ok]
    summary = {
        "seeds": len(results),
        "validators": args.validators,
        "byzantine": args.byzantine,
        "safety_violations": sum(len(r.safety_violations) for r in results),
        "liveness_failures": sum(1 for r in results if r.liveness_failure),
        "membership_failures": sum(1 for r in results if r.membership_failure),
        "failed_seeds": [r.seed for r in failed],
        "min_height": min(min(h for h in r.heights) for r in results),
        "max_height": max(max(r.heights) for r in results),
        "steps": sum(r.steps for r in results),
        "messages": sum(r.messages for r in results),
        "behaviours": dict(Counter(b for r in results for b in r.byzantine)),
        "fault_mixes": dict(Counter(r.faults.split(" ", 1)[1] if " " in r.faults else "delay only"
                                    for r in results).most_common(8)),
        "wall_s": round(time.perf_counter() - started, 2),
    }
    if args.json:
        print(json.dumps(summary, indent=2, sort_keys=True))
    else:
        print(f"{summary['seeds']} seeds, {args.validators} validators, {args.byzantine} Byzantine: "
              f"{summary['safety_violations']} safety violations, {summary['liveness_failures']} liveness "
              f"failures, heights {summary['min_height']}..{summary['max_height']}, {summary['wall_s']} s")
        if failed:
            print("replay a failure with: python scripts/simulate.py --seed N --trace "
                  f"--validators {args.validators} --byzantine {args.byzantine}"
                  + (" --membership" if args.membership else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
