"""The hook points where the ledger plugs into the Flower App; see docs/flower.md.

Each hook runs inside a Flower app process (a fresh ``flwr-clientapp`` per message on a node, the
``flwr-serverapp`` on the coordinator), never inside the node process. Two modes:

* ledger mode, for runs a node starts from a committed ``train_request`` (the run config's ``run``
  holds its id): the hooks call ``fl_ledger``, which reads the node's replica and submits signed
  transactions to the node;
* file mode, for experiments without a ledger (the deployment test, plain Flower use): rows from
  files named in the node config, commits appended to a JSON-lines ``commit-log``.

* ``load_rows(node_config, context_names=()) -> LoadedRows`` (ClientApp): the node's validated,
  committed readings ``(device, seq, timestamp_ms, temperature_c, humidity_pct)`` and the root over
  their ids; with `context_names`, also those devices' rows (the fingerprints' context).
* ``sign_update(node_config, update) -> dict`` (ClientApp): what travels to the strategy in the
  reply's ``update`` ConfigRecord (ConfigRecord-compatible values; must contain ``weights-hash``).
  In ledger mode the update may carry an ``evaluation`` of its base model, signed with it.
* ``existing_update(node_config, config) -> dict | None`` (ClientApp): the node's update of the
  round if it is already final (a run taken over mid-round): the node replies with it.
* ``sign_eval(node_config, evaluation) -> dict`` (ClientApp): the node's signed score of a
  committed model on its held-out readings (the last round's, from the evaluate step).
* ``check_update(run_config, round, signed, weights_hash) -> str | (int, bytes) | None`` (ServerApp):
  why an update must not be aggregated (str), or the ledger's ``num_examples`` for it (the only
  weight it is aggregated with) and its node, or None (file mode: no ledger figure).
* ``device_owners(run_config, names) -> list | None`` (ServerApp): the node owning each device of
  the run's list on the ledger (whose update a personal row is taken from); None in file mode,
  where a row comes from the updates that changed it.
* ``publish_initial(run_config, task, weights) -> str`` (ServerApp): record round 0's model.
* ``commit_round(run_config, server_round, strategy, updates, aggregate, metrics) -> dict``
  (ServerApp): record the round's aggregate and block until it is final; the next round starts only
  after it returns. Raise to fail the run.

The hook functions are looked up at call time (``fl_hooks.load_rows``), so a test can replace them
by monkeypatching this module.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from federated.flower.fl_errors import UpdateExists as UpdateExists  # raised by sign_update
from federated.weights import encode_weights, weights_hash


@dataclass(frozen=True)
class LoadedRows:
    rows: list[list[Any]]  # the training set
    root: bytes  # ledger: Merkle root of the readings' tx ids; file mode: sha256 of the rows
    # Ledger mode only (node/ledger/provenance.py): the held-out set at the same data cut, which
    # no node trains on, and the cut itself. File mode trains on every row it is given.
    holdout: list[list[Any]] = field(default_factory=list)
    holdout_root: bytes = bytes(32)
    data_cut: int = 0
    # The listed devices' rows (training side and held-out side), if asked for.
    context: list[list[Any]] = field(default_factory=list)
    holdout_context: list[list[Any]] = field(default_factory=list)


def ledger_mode(config: Mapping[str, Any]) -> bool:
    return bool(config.get("run"))


@dataclass(frozen=True)
class AcceptedUpdate:
    """One train reply that passed the strategy's checks (what commit_round receives)."""

    update_id: bytes  # the model_update tx id (ledger mode) or the weights hash (file mode)
    weights: list[np.ndarray]
    num_examples: int
    metrics: dict[str, float]
    signed: dict[str, Any]  # the sign_update result carried in the reply
    node_id: int  # Flower's node id of the sender (not stable across SuperNode restarts)
    extra: dict[str, Any] = field(default_factory=dict)
    node: bytes | None = None  # ledger mode: the update's node on the ledger


# --- ClientApp side ---------------------------------------------------------------------------


def load_rows(node_config: Mapping[str, Any], context_names: Sequence[str] = ()) -> LoadedRows:
    """The node's rows. File mode when the node config names a rows file, else the node's replica.
    `context_names`: devices whose rows are wanted too (file mode: every row of the CSV of those
    devices)."""
    if "partition-id" in node_config or node_config.get("rows-file") or node_config.get("rows-csv"):
        rows = partition_rows(node_config) if "partition-id" in node_config else load_file_rows(node_config)
        digest = hashlib.sha256(msgpack.packb(rows, use_bin_type=True)).digest()
        context: list[list[Any]] = []
        if context_names and (node_config.get("rows-csv") or "partition-id" in node_config):
            from federated.data import MAIN_SLICE, read_csv_rows

            path = str(node_config.get("rows-csv") or MAIN_SLICE)
            context = [list(r) for r in read_csv_rows(path, devices=list(context_names),
                                                      every=int(node_config.get("every") or 1))]
        return LoadedRows(rows, digest, context=context or rows)
    if not node_config.get("data-dir"):
        raise ValueError("node config names neither a node directory (data-dir) nor rows-file/rows-csv")
    from federated.flower import fl_ledger

    found = fl_ledger.load_rows(node_config, context_names)
    return LoadedRows(found.rows, found.root, found.holdout, found.holdout_root, found.data_cut,
                      found.context, found.holdout_context)


def partition_rows(node_config: Mapping[str, Any]) -> list[list[Any]]:
    """Virtual node `partition-id` of `num-partitions`: whole devices while there are at least as
    many devices as partitions (as in the paper, where a device belongs to one node), otherwise
    an equal time slice of one device. Rows from `rows-csv` (default: the bundled slice)."""
    from federated.data import MAIN_SLICE, read_csv_rows

    pid, n = int(node_config["partition-id"]), int(node_config["num-partitions"])
    path = str(node_config.get("rows-csv") or MAIN_SLICE)
    rows = [list(r) for r in read_csv_rows(path, every=int(node_config.get("every") or 1))]
    devices = sorted({r[0] for r in rows})
    if not devices or not 0 <= pid < n:
        raise ValueError(f"partition {pid} of {n}: no rows in {path}")
    if n <= len(devices):
        mine = set(devices[pid::n])
        return [r for r in rows if r[0] in mine]
    device = devices[pid % len(devices)]
    sharing = len(range(pid % len(devices), n, len(devices)))  # partitions on this device
    own = [r for r in rows if r[0] == device]
    k = pid // len(devices)
    return own[k * len(own) // sharing : (k + 1) * len(own) // sharing]


def load_file_rows(node_config: Mapping[str, Any]) -> list[list[Any]]:
    """Rows from a file named in node_config:

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
    raise ValueError("node config names no rows: set rows-file or rows-csv")


def sign_update(node_config: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` has: run (hex, "" in file mode), task, round, base-hash (hex of the global weights
    trained from), weights (list of arrays), weights-hash (hex), num-examples, metrics (dict),
    rows-digest (hex: the Merkle root of the reading ids in ledger mode).

    Ledger mode: a signed model_update, final on the ledger before this returns. File mode: just
    the identity of the update and of the node.
    """
    if ledger_mode(update):
        from federated.flower import fl_ledger

        blob = encode_weights(update["weights"])
        return fl_ledger.sign_update(node_config, update, bytes.fromhex(str(update["rows-digest"])), blob)
    return {
        "weights-hash": str(update["weights-hash"]),
        "node-dir": str(node_config.get("data-dir", "")),
        "rows-digest": str(update.get("rows-digest", "")),
    }


def existing_update(node_config: Mapping[str, Any], config: Mapping[str, Any]) -> dict[str, Any] | None:
    """Ledger mode: this node's final update of the instruction's run and round (weights,
    num-examples, metrics and the ``signed`` record), which it replies with instead of training
    again; None when it has none (and always in file mode)."""
    if not ledger_mode(config):
        return None
    from federated.flower import fl_ledger

    return fl_ledger.existing_update(node_config, str(config["run"]), int(config.get("server-round", 0)),
                                     str(config.get("base-hash", "")))


def sign_eval(node_config: Mapping[str, Any], evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """Ledger mode: this node's signed model_eval (see fl_ledger.eval_tx), final before this
    returns. File mode: nothing to record."""
    if not ledger_mode(evaluation):
        return {}
    from federated.flower import fl_ledger

    return fl_ledger.sign_eval(node_config, evaluation)


# --- ServerApp side ---------------------------------------------------------------------------


def check_update(
    run_config: Mapping[str, Any], server_round: int, signed: Mapping[str, Any], weights_hash_: bytes
) -> str | tuple[int, bytes] | None:
    """Why an accepted-looking reply must still be dropped (ledger mode: its model_update is not
    final on the coordinator's replica for this run and round, or carries other weights), else in
    ledger mode the update's num_examples and node on the ledger: the reply's own figure is never
    used, since every authority re-computes the aggregate with the ledger's."""
    if not ledger_mode(run_config):
        return None
    from federated.flower import fl_ledger

    return fl_ledger.check_update(run_config, server_round, signed, weights_hash_)


def device_owners(run_config: Mapping[str, Any], names: Sequence[str]) -> list[bytes | None] | None:
    """Ledger mode: each listed device's owner node on the coordinator's replica; file mode None."""
    if not ledger_mode(run_config):
        return None
    from federated.flower import fl_ledger

    return fl_ledger.device_owners(run_config, names)


def publish_initial(run_config: Mapping[str, Any], task: str, weights: Sequence[np.ndarray]) -> str:
    """Round 0's model (hex weights hash). Ledger mode: published and committed on the ledger."""
    if not ledger_mode(run_config):
        return weights_hash(weights).hex()
    from federated.flower import fl_ledger

    return fl_ledger.publish_initial(run_config, task, encode_weights(weights))


def commit_round(
    run_config: Mapping[str, Any],
    server_round: int,
    strategy: str,
    updates: Sequence[AcceptedUpdate],
    aggregate: Sequence[np.ndarray],
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    """Ledger mode: submit the round's ``model_commit`` and wait until it is final (or raise).

    File mode: append one JSON line per round to run config ``commit-log`` and store the update and
    aggregate blobs (FLW1 encoding) content-addressed in ``<commit-log>.blobs/<hash>.flw``, so a
    verifier can recompute the aggregate. Returns the committed record. No-op when commit-log is "".
    """
    if ledger_mode(run_config):
        from federated.flower import fl_ledger

        ordered = sorted(updates, key=lambda u: u.update_id)
        return fl_ledger.commit_round(
            run_config, server_round, strategy, str(run_config.get("task", "")),
            [u.update_id for u in ordered], weights_hash(aggregate), metrics,
        )
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
        return {"f": int(run_config.get("krum-f", 0)), "m": int(run_config.get("krum-m", 1))}
    return {}


def _write_blob(directory: Path, hex_hash: str, blob: bytes) -> None:
    path = directory / f"{hex_hash}.flw"
    if not path.exists():
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
