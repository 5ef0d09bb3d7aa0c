"""`fedledger launch`: the main job (see node/launch/launcher.py)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from federated.aggregate import STRATEGIES
from node.cli.output import non_negative, positive_int, positive_seconds
from node.errors import ConfigError
from node.launch.display import LaunchOptions
from node.ledger.runs import TASKS
from node.server.logs import LOG_FORMATS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "launch",
        help="create and run a local federation fed with sensor readings",
        description="Create a fresh federation of authority nodes in a new directory, start them, stream "
        "signed sensor readings into them with live progress, then summarise and stop.",
    )
    p.add_argument("--nodes", type=int, default=4, help="number of authority nodes (default 4)")
    p.add_argument("--dir", type=Path, help="new directory for the federation (default ./fedledger-run-TIME)")
    p.add_argument("--duration", type=positive_seconds, metavar="SECONDS",
                   help="stop streaming after this long")
    p.add_argument("--keep-running", action="store_true", help="leave the nodes running at the end")
    p.add_argument("--csv", type=Path, metavar="FILE",
                   help="replay this CSV (timestamp, device_id, temperature_c, humidity_pct; .gz ok); "
                   "default: the bundled slice of real building data")
    p.add_argument("--simulated", action="store_true", help="use simulated sensors instead of a CSV")
    p.add_argument("--devices", type=positive_int, default=8, help="number of devices to use (default 8)")
    p.add_argument("--rate", type=non_negative, default=200.0,
                   help="readings per second, 0 = max (default 200)")
    p.add_argument("--json", action="store_true", help="print only a JSON summary at the end")
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="the nodes' logs (DIR/nodeN/node.log): text (default) or json, one object per line")
    t = p.add_argument_group("federated training (needs the `federated` extra; on by default)")
    t.add_argument("--task", default="humidity", choices=TASKS, help="learning task (default humidity)")
    t.add_argument("--rounds", type=int, default=3, help="federated rounds (default 3)")
    t.add_argument("--strategy", default="fedavg", choices=STRATEGIES, help="aggregation (default fedavg)")
    t.add_argument("--no-train", action="store_true", help="only replicate readings, no training")
    t.add_argument("--train-after", type=non_negative, default=10.0, metavar="SECONDS",
                   help="stream readings this long before the train request (default 10)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from node.launch.launcher import run_launch  # imported here so `fedledger --help` stays fast

    if args.rounds < 1 and not args.no_train:
        raise ConfigError("--rounds must be at least 1 (or use --no-train)")
    return run_launch(LaunchOptions(
        nodes=args.nodes, dir=args.dir, duration=args.duration, keep_running=args.keep_running,
        csv=args.csv, simulated=args.simulated, devices=args.devices, rate=args.rate, json=args.json,
        task=args.task, rounds=0 if args.no_train else args.rounds, strategy=args.strategy,
        train_after=args.train_after, log_format=args.log_format,
    ))
