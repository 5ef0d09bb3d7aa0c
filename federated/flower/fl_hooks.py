"""The hook points where the ledger plugs into the Flower App. Stubs for now; see docs/flower.md.

Each hook runs inside a Flower app process (a fresh ``flwr-clientapp`` per message on a node, the
``flwr-serverapp`` on the coordinator), never inside the node process: to reach the node, use IPC
(the node's API) or files. The stubs below only touch files so the App runs without a ledger.

* ``load_rows(node_config) -> rows`` (ClientApp): the node's validated, committed readings
  ``(device, seq, timestamp_ms, temperature_c, humidity_pct)``.
* ``sign_update(node_config, update) -> dict`` (ClientApp): turn the new update into what travels to
  the strategy in the reply's ``update`` ConfigRecord (later: a signed ``model_update`` submitted to
  the node). Values must be ConfigRecord-compatible (str, int, float, bool, bytes or lists of one
  of them). Must contain ``weights-hash`` (hex).
* ``commit_round(run_config, server_round, strategy, updates, aggregate, metrics) -> dict``
  (ServerApp): record the round's aggregate and block until it is final; the next round starts only
  after it returns. Raise to fail the run.

The hook functions are looked up at call time (``fl_hooks.load_rows``), so a test or the node
wiring can also replace them by monkeypatching this module.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from federated.weights import encode_weights, weights_hash


@dataclass(frozen=True)
class AcceptedUpdate:
    """One train reply that passed the strategy's checks (what commit_round receives)."""

    update_id: bytes  # today the weights hash; later the model_update transaction id
    weights: list[np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    signed: dict[str, Any]  # the sign_update result carried in the reply
    node_id: int  # Flower's node id of the sender (not stable across SuperNode restarts)
    extra: dict[str, Any] = field(default_factory=dict)


# --- ClientApp side ---------------------------------------------------------------------------


def load_rows(node_config: Mapping[str, Any]) -> list[list[Any]]:
    """STUB: rows from a file named in node_config (the lead replaces this with a read of the
    node's SQLite replica under ``node_config["data-dir"]``).

    * ``rows-file``: a msgpack file holding a list of 5-element rows, or
    * ``rows-csv``: a bundled-format CSV(.gz), narrowed by ``devices`` (comma-separated),
      ``every`` (keep every n-th reading per device) and ``limit-per-device``.
    """
    if node_config.get("rows-file"):
        with open(str(node_config["rows-file"]), "rb") as f:
            rows = msgpack.unpackb(f.read(), raw=False)
        return [list(r) for r in rows]
    if node_config.get("rows-csv"):
        from federated.data import read_csv_rows

        devices_text = str(node_config.get("devices", ""))
        devices = [d.strip() for d in devices_text.split(",") if d.strip()] or None
        limit = int(node_config.get("limit-per-device", 0)) or None
        rows = read_csv_rows(
            str(node_config["rows-csv"]),
            devices=devices,
            every=int(node_config.get("every", 1)),
            limit_per_device=limit,
        )
        return [list(r) for r in rows]
    raise ValueError(
        "node config names no rows: set rows-file or rows-csv (until the replica reader is wired)"
    )


def sign_update(node_config: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """STUB: no signature yet, just the identity of the update and of the node.

    ``update`` has: task, round, base-hash (hex of the global weights trained from), weights
    (list of arrays), weights-hash (hex), num-examples, metrics (dict), rows-digest (hex sha256 of
    the rows used, a stand-in for the Merkle root of the reading ids).
    """
    return {
        "weights-hash": str(update["weights-hash"]),
        "node-dir": str(node_config.get("data-dir", "")),
        "rows-digest": str(update.get("rows-digest", "")),
    }


# --- ServerApp side ---------------------------------------------------------------------------


def commit_round(
    run_config: Mapping[str, Any],
    server_round: int,
    strategy: str,
    updates: Sequence[AcceptedUpdate],
    aggregate: Sequence[np.ndarray],
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """STUB: append one JSON line per round to run config ``commit-log`` and store the update and
    aggregate blobs (FLW1 encoding) content-addressed in ``<commit-log>.blobs/<hash>.flw``, so a
    verifier can recompute the aggregate. Returns the committed record. No-op when commit-log is "".

    The ledger version submits a ``model_commit`` and waits until it is final (or raises).
    """
    agg_blob = encode_weights(aggregate)
    record: dict[str, Any] = {
        "round": int(server_round),
        "task": str(run_config.get("task", "")),
        "strategy": strategy,
        "params": _params(run_config, strategy),
        "aggregate_hash": weights_hash(aggregate).hex(),
        "updates": [
            {
                "update_id": u.update_id.hex(),
                "weights_hash": weights_hash(u.weights).hex(),
                "num_examples": u.num_examples,
                "metrics": u.metrics,
                "signed": {k: v for k, v in u.signed.items() if not isinstance(v, bytes)},
                "flower_node_id": u.node_id,
            }
            for u in sorted(updates, key=lambda u: u.update_id)
        ],
        "metrics": dict(metrics),
    }
    log = str(run_config.get("commit-log", ""))
    if log:
        blobs = Path(log + ".blobs")
        blobs.mkdir(parents=True, exist_ok=True)
        _write_blob(blobs, record["aggregate_hash"], agg_blob)
        for u in updates:
            _write_blob(blobs, weights_hash(u.weights).hex(), encode_weights(u.weights))
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
    return record


def _params(run_config: Mapping[str, Any], strategy: str) -> dict[str, Any]:
    if strategy == "fedtrimmedavg":
        return {"beta": float(run_config.get("beta", 0.2))}
    if strategy == "krum":
        return {"f": int(run_config.get("krum-f", 0))}
    return {}


def _write_blob(directory: Path, hex_hash: str, blob: bytes) -> None:
    path = directory / f"{hex_hash}.flw"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
