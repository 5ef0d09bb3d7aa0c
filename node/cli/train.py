"""`fedledger train DIR --task T --rounds R [--strategy S]`: start a federated run from an authority.

The command signs a `train_request` with the key in DIR (so DIR's node becomes the run's
coordinator), submits it to that running node, waits until it is final and then follows the run's
rounds on the ledger until the last one is committed (or `--no-wait`). The request records the
SuperLink address the coordinator will open, the number of nodes a round needs, the hyperparameters
and, for traceability, the class list (the registered devices), so every node runs the same thing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from federated.aggregate import STRATEGIES
from node.cli.output import port
from node.errors import ConfigError
from node.launch.train_request import TUNABLE, TrainingFailed, request_params, run_progress, submit_request
from node.ledger.handover import DEFAULT_HANDOVER_TIMEOUT_S
from node.ledger.runs import TASKS
from node.net.http import get_json, probe_status
from node.server.datadir import DB_FILE, GENESIS_FILE, NodeConfig, read_passphrase
from node.store.models import models
from node.store.sqlite import SqliteStore

POLL_S = 0.5


def add_parser(sub: Any) -> None:
    p = sub.add_parser("train", help="start a federated training run (from an authority's node)")
    p.add_argument("dir", type=Path, metavar="DIR", help="an authority's node directory (its node must run)")
    p.add_argument("--task", required=True, choices=TASKS)
    p.add_argument("--rounds", type=int, default=3, help="number of rounds (default 3)")
    p.add_argument("--strategy", default="fedavg", choices=STRATEGIES)
    p.add_argument("--min-nodes", type=int, help="updates a round needs (default: every training member)")
    p.add_argument("--epochs", type=int, help="local epochs per round (default 4)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--learning-rate", type=float)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--beta", type=float, help="fedtrimmedavg: share trimmed at each end")
    p.add_argument("--krum-f", type=int, help="krum: number of Byzantine updates tolerated")
    p.add_argument("--krum-m", type=int, help="krum: average this many best-scored updates (Multi-Krum; "
                   "default 1, Krum); at most min-nodes minus krum-f keeps f outliers out")
    p.add_argument("--superlink-port", type=port, metavar="PORT",
                   help="the port of this coordinator's SuperLink, e.g. one opened in a firewall "
                        "(default: a free one)")
    p.add_argument("--clip-norm", type=float, help="bound on an update's L2 distance from its base model; "
                   "nodes clip to it and the ledger refuses updates beyond it")
    p.add_argument("--handover-timeout", type=int, metavar="SECONDS",
                   help="an open round not committed this long after the last one, or twice the last "
                        "round's time if that is longer (more while a coordinator starts up), lets the "
                        f"next authority take the run over (default {DEFAULT_HANDOVER_TIMEOUT_S}, 5..86400)")
    p.add_argument("--evaluate", action="store_true", help="also run Flower's federated evaluation step")
    p.add_argument("--passphrase-file", help="file holding the key passphrase, if the key is encrypted")
    p.add_argument("--no-wait", action="store_true", help="return once the request is final")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up following after SECONDS")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=run)


def overrides(args: argparse.Namespace) -> dict[str, Any]:
    """The train request params set on the command line."""
    given = {name: getattr(args, name) for name in TUNABLE if getattr(args, name, None) is not None}
    if args.evaluate:
        given["fraction_evaluate"] = 1.0
    return given


def follow(directory: Path, run: bytes, timeout: float, quiet: bool = False) -> dict[str, Any]:
    """Poll DIR's node until the run's last round is committed; raise if its node reports failure."""
    base = NodeConfig.load(directory).local_url
    deadline = time.monotonic() + timeout
    shown = -1
    while True:
        status = get_json(base, "/status")
        ledger, local = run_progress(status, run)
        if ledger is not None and ledger["committed_rounds"] != shown and not quiet:
            shown = ledger["committed_rounds"]
            print(f"run {run.hex()[:12]}: round {shown}/{ledger['rounds']} committed "
                  f"(height {status.get('height')})", file=sys.stderr)
        if ledger is not None and ledger["complete"]:
            return ledger
        if local is not None and local.get("state") in ("failed", "stalled", "skipped"):
            raise TrainingFailed(f"run {run.hex()[:12]} {local['state']}: {local.get('error')}")
        if time.monotonic() > deadline:
            raise TrainingFailed(f"run {run.hex()[:12]} not complete after {timeout:.0f} s")
        time.sleep(POLL_S)


def run(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not (directory / GENESIS_FILE).exists():
        raise ConfigError(f"{directory} is not a node directory of a federation")
    if args.rounds < 1:
        raise ConfigError("--rounds must be at least 1")
    cfg = NodeConfig.load(directory)
    if probe_status(cfg.local_url, cfg.node_id) is None:
        raise ConfigError(f"the node in {directory} is not running (fedledger node run {directory})")
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    params = request_params(directory, args.task, overrides(args), superlink_port=args.superlink_port)
    run_id = submit_request(directory, args.task, args.rounds, args.strategy, params, passphrase)
    if not args.json:
        print(f"run {run_id.hex()} started: {args.task}, {args.rounds} rounds, {args.strategy}, "
              f"{params['min_nodes']} nodes, SuperLink {params['superlink']}")
    if args.no_wait:
        if args.json:
            print(json.dumps({"run": run_id.hex(), "params": params}))
        return 0
    summary = follow(directory, run_id, args.timeout, quiet=args.json)
    store = SqliteStore(directory / DB_FILE, read_only=True)  # a fresh view after the run
    try:
        committed = [m.to_json() for m in models(store, run_id)]
    finally:
        store.close()
    if args.json:
        print(json.dumps({"run": run_id.hex(), "summary": summary, "models": committed}, sort_keys=True))
    else:
        for m in committed:
            metrics = " ".join(f"{k}={v:.4g}" for k, v in sorted(m["metrics"].items()))
            print(f"round {m['round']}: model {m['model_hash'][:16]} at height {m['height']} {metrics}")
        print(f"next: fedledger model list {directory}")
    return 0
