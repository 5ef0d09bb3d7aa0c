"""Starting a federated run from an authority's node directory, as `fedledger train` and
`fedledger launch` do: the `train_request` params completed from the replica, the request signed
with the directory's key and submitted to its running node (which becomes the run's coordinator),
and the run's progress as a node's /status reports it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from node.errors import ConfigError, RemoteError
from node.flower.tls import superlink_cert
from node.ledger.genesis import Genesis
from node.ledger.handover import DEFAULT_HANDOVER_TIMEOUT_S
from node.ledger.keys import NodeKey
from node.ledger.runs import TRAINING_ROLES
from node.ledger.transactions import MAX_MAP_STR, make_train_request, tx_id
from node.net.addresses import format_host, local_host, url_host
from node.net.client import LedgerClient, TxResult
from node.net.http import probe_status, tx_committed
from node.net.ports import free_port, port_free
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, NodeConfig
from node.store.sqlite import SqliteStore

POLL_S = 0.5
# The run's params a caller may set (`fedledger train`'s options); the others come from the replica.
TUNABLE = frozenset(
    {"min_nodes", "epochs", "batch_size", "learning_rate", "seed", "beta", "krum_f", "krum_m",
     "fraction_evaluate",
     "clip_norm", "handover_timeout"}
)


class TrainingFailed(RemoteError):
    """The run could not be started or did not finish."""


def request_params(directory: Path, task: str, overrides: Mapping[str, Any] | None = None,
                   superlink_port: int | None = None) -> dict[str, Any]:
    """The train_request params, completed from the replica (SuperLink address, min nodes, classes)
    and then set from `overrides` (TUNABLE keys). The SuperLink port is `superlink_port` if given
    (it must be free where the SuperLink binds), else one free now."""
    cfg = NodeConfig.load(directory)
    store = SqliteStore(directory / DB_FILE, read_only=True)
    try:
        members = [m for m in store.members() if m.role in TRAINING_ROLES]
        devices = sorted(d.name for d in store.devices())
    finally:
        store.close()
    # Every participant dials the SuperLink, so the request names the host this node advertises to
    # its peers; the port must be free where the SuperLink will bind (the node's listen host).
    host = local_host(url_host(cfg.url))  # an old config's wildcard: this machine only
    if superlink_port is None:
        superlink_port = free_port(cfg.listen_host)
    elif superlink_port == cfg.listen_port or not port_free(cfg.listen_host, superlink_port):
        raise ConfigError(f"SuperLink port {superlink_port} is not free on {cfg.listen_host}")
    # The coordinator's SuperLink certificate (made here on first use, valid for the advertised
    # host): its hash in the request is what every SuperNode pins (node/flower/tls.py).
    cert = superlink_cert(directory, host)
    params: dict[str, Any] = {"superlink": f"{format_host(host)}:{superlink_port}",
                              "superlink_cert": cert.sha256, "min_nodes": len(members),
                              "handover_timeout": DEFAULT_HANDOVER_TIMEOUT_S}
    # The run's device list: one personal row per device (federated/personal.py), traceability's
    # labels. Every registered device, by name, once.
    names = sorted(set(devices))
    if len(names) < (2 if task == "traceability" else 1):
        raise ConfigError(f"{task} needs at least {2 if task == 'traceability' else 1} registered "
                          "device(s) on the ledger")
    if any("," in d or " " in d or not d for d in names):
        raise ConfigError("device names with commas or spaces cannot name a run's devices")
    listed = ",".join(names)
    if len(listed) > MAX_MAP_STR:
        raise ConfigError(f"the device names take {len(listed)} characters; a train request's device "
                          f"list holds at most {MAX_MAP_STR} (register fewer devices or shorter names)")
    params["classes" if task == "traceability" else "devices"] = listed
    for name, value in (overrides or {}).items():
        if name not in TUNABLE:
            raise ConfigError(f"{name} is not a train request parameter one may set")
        params[name] = value
    return params


def submit_request(directory: Path, task: str, rounds: int, strategy: str, params: dict[str, Any],
                   passphrase: bytes | None = None, timeout: float = 60.0) -> bytes:
    """Sign and submit the request to DIR's node; return the run id once it is final."""
    cfg = NodeConfig.load(directory)
    if probe_status(cfg.local_url, cfg.node_id) is None:
        raise ConfigError(f"the node in {directory} is not running (fedledger node run {directory})")
    key = NodeKey.load(directory / KEY_FILE, passphrase)
    chain_id = Genesis.load(directory / GENESIS_FILE).chain_id
    tx = make_train_request(key, chain_id, task, rounds, strategy, params)

    async def send() -> TxResult:
        async with LedgerClient(cfg.local_url) as client:
            return await client.submit(tx)

    result = asyncio.run(send())
    if not result.accepted:
        hint = " (only an authority may start a run)" if result.reason == "unauthorized" else ""
        raise TrainingFailed(f"the node refused the train request: {result.reason}{hint}")
    run = tx_id(tx)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if tx_committed(cfg.local_url, run):
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
