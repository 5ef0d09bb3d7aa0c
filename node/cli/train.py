"""`fedledger train DIR --task T --rounds R [--strategy S]`: start a federated run from an authority.

The command signs a `train_request` with the key in DIR (so DIR's node becomes the run's
coordinator), submits it to that running node, waits until it is final and then follows the run's
rounds on the ledger until the last one is committed (or `--no-wait`). The request records the
SuperLink address the coordinator will open, the number of nodes a round needs, the hyperparameters
and, for traceability, the class list (the registered devices), so every node runs the same thing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from federated.aggregate import STRATEGIES
from node.cli.init import read_passphrase
from node.cli.ledger import ReadOnlyStore, get_json, local_url, probe_status, tx_committed
from node.errors import ConfigError, FedledgerError
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey
from node.ledger.runs import TASKS, TRAINING_ROLES
from node.ledger.transactions import make_train_request, tx_id
from node.net.client import LedgerClient
from node.net.ports import free_port
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, NodeConfig

POLL_S = 0.5


class TrainingFailed(FedledgerError):
    """The run could not be started or did not finish."""


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
    p.add_argument("--evaluate", action="store_true", help="also run Flower's federated evaluation step")
    p.add_argument("--passphrase-file", help="file holding the key passphrase, if the key is encrypted")
    p.add_argument("--no-wait", action="store_true", help="return once the request is final")
    p.add_argument("--timeout", type=float, default=1800.0, help="give up following after SECONDS")
    p.add_argument("--json", action="store_true", help="print one JSON object at the end")
    p.set_defaults(func=run)


def request_params(directory: Path, task: str, args: argparse.Namespace | None = None) -> dict[str, Any]:
    """The train_request params, completed from the replica: SuperLink address, min nodes, classes."""
    cfg = NodeConfig.load(directory)
    store = ReadOnlyStore(directory / DB_FILE)
    try:
        members = [m for m in store.members() if m.role in TRAINING_ROLES]
        devices = sorted(d.name for d in store.devices())
    finally:
        store.close()
    host = cfg.listen_host if cfg.listen_host not in ("", "0.0.0.0", "::") else "127.0.0.1"
    params: dict[str, Any] = {"superlink": f"{host}:{free_port(host)}", "min_nodes": len(members)}
    if task == "traceability":
        if len(devices) < 2:
            raise ConfigError("traceability needs at least 2 registered devices on the ledger")
        if any("," in d or " " in d for d in devices):
            raise ConfigError("device names with commas or spaces cannot be traceability classes")
        params["classes"] = ",".join(devices)
    if args is not None:
        for name in ("min_nodes", "epochs", "batch_size", "learning_rate", "seed", "beta", "krum_f"):
            value = getattr(args, name, None)
            if value is not None:
                params[name] = value
        if getattr(args, "evaluate", False):
            params["fraction_evaluate"] = 1.0
    return params


def submit_request(directory: Path, task: str, rounds: int, strategy: str, params: dict[str, Any],
                   passphrase: bytes | None = None, timeout: float = 60.0) -> bytes:
    """Sign and submit the request to DIR's node; return the run id once it is final."""
    cfg = NodeConfig.load(directory)
    if probe_status(cfg) is None:
        raise ConfigError(f"the node in {directory} is not running (fedledger node run {directory})")
    key = NodeKey.load(directory / KEY_FILE, passphrase)
    chain_id = Genesis.load(directory / GENESIS_FILE).chain_id
    tx = make_train_request(key, chain_id, task, rounds, strategy, params)

    async def send() -> Any:
        async with LedgerClient(local_url(cfg)) as client:
            return await client.submit(tx)

    result = asyncio.run(send())
    if not result.accepted:
        hint = " (only an authority may start a run)" if result.reason == "unauthorized" else ""
        raise TrainingFailed(f"the node refused the train request: {result.reason}{hint}")
    run = tx_id(tx)
    deadline = time.monotonic() + timeout
    base = local_url(cfg)
    while time.monotonic() < deadline:
        if tx_committed(base, run):
            return run
        time.sleep(POLL_S)
    raise TrainingFailed(f"the train request {run.hex()[:12]} was not final after {timeout:.0f} s")


def run_progress(status: dict[str, Any], run: bytes) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(the run on the ledger, this node's part in it) from a /status answer."""
    training = status.get("training") or {}
    local_runs = (training.get("local") or {}).get("runs", [])
    ledger = next((r for r in training.get("runs", []) if r.get("run") == run.hex()), None)
    local = next((r for r in local_runs if r.get("run") == run.hex()), None)
    return ledger, local


def follow(directory: Path, run: bytes, timeout: float, quiet: bool = False) -> dict[str, Any]:
    """Poll DIR's node until the run's last round is committed; raise if its node reports failure."""
    base = local_url(NodeConfig.load(directory))
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
    if probe_status(NodeConfig.load(directory)) is None:
        raise ConfigError(f"the node in {directory} is not running (fedledger node run {directory})")
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    params = request_params(directory, args.task, args)
    run_id = submit_request(directory, args.task, args.rounds, args.strategy, params, passphrase)
    if not args.json:
        print(f"run {run_id.hex()} started: {args.task}, {args.rounds} rounds, {args.strategy}, "
              f"{params['min_nodes']} nodes, SuperLink {params['superlink']}")
    if args.no_wait:
        if args.json:
            print(json.dumps({"run": run_id.hex(), "params": params}))
        return 0
    summary = follow(directory, run_id, args.timeout, quiet=args.json)
    from node.cli.ledger import ReadOnlyStore as Store  # fresh view after the run
    from node.store.models import models

    store = Store(directory / DB_FILE)
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
