"""The ledger side of the Flower App: what the hooks do when a run comes from a `train_request`.

Runs inside Flower's app processes on the node's own machine (a fresh ``flwr-clientapp`` per
message, the ``flwr-serverapp`` on the coordinator), started by that node. They reach the node two
ways: its SQLite replica, opened read-only (WAL lets readers run beside the node's writer), for
everything that is already final; and its websocket client API for submitting signed
transactions. The node key is read from the node directory (the passphrase, if any, comes from
the ``FEDLEDGER_PASSPHRASE`` environment variable the node passes to its Flower processes).
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from federated.flower.fl_errors import UpdateExists
from federated.weights import decode_weights
from node.ledger import run_rules
from node.ledger.codec import decode
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey
from node.ledger.provenance import named_row, partition, root_of
from node.ledger.transactions import (
    ModelUpdate,
    make_model_commit,
    make_model_eval,
    make_model_update,
    parse_tx,
    tx_id,
)
from node.net.client import LedgerClient
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, NodeConfig
from node.store.sqlite import SqliteStore

PASSPHRASE_ENV = "FEDLEDGER_PASSPHRASE"
FINALITY_TIMEOUT_S = 120.0
POLL_S = 0.1


class LedgerHookError(RuntimeError):
    """The node refused a transaction, or it did not become final in time."""


@dataclass(frozen=True)
class LedgerRows:
    """A node's training and held-out sets at one data cut (node/ledger/provenance.py)."""

    rows: list[list[Any]]  # training rows: (device name, seq, timestamp_ms, temperature_c, humidity_pct)
    reading_ids: list[bytes]
    holdout: list[list[Any]]
    holdout_ids: list[bytes]
    data_cut: int
    # Every listed device's training and held-out rows at the same cut, when asked for (the
    # fingerprints' context, federated/fingerprint.py).
    context: list[list[Any]] = field(default_factory=list)
    holdout_context: list[list[Any]] = field(default_factory=list)

    @property
    def root(self) -> bytes:
        return root_of(self.reading_ids)

    @property
    def holdout_root(self) -> bytes:
        return root_of(self.holdout_ids)


class NodeLink:
    """One node as seen from a Flower app process: its key, chain, replica and URL."""

    def __init__(self, data_dir: str | os.PathLike[str], node_url: str = "") -> None:
        self.dir = Path(data_dir)
        self.config = NodeConfig.load(self.dir)
        passphrase = os.environ.get(PASSPHRASE_ENV)
        self.key = NodeKey.load(self.dir / KEY_FILE, passphrase.encode() if passphrase else None)
        self.chain_id = Genesis.load(self.dir / GENESIS_FILE).chain_id
        self.url = node_url or self.config.url

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(f"file:{self.dir / DB_FILE}?mode=ro", uri=True, timeout=10)

    # --- reading the replica ---------------------------------------------------------------------

    def own_rows(self, context_names: Sequence[str] = ()) -> LedgerRows:
        """The committed readings of the devices this node owns, up to the committed height (the
        data cut), split by the ledger's held-out rule with the very function every authority
        uses to re-compute num_examples and readings_root. Only readings that passed every
        validation rule are in the table, so these are the validated rows. With `context_names`,
        also the rows of those devices (each name's first registered device, as the ledger picks
        owners) at the same cut, split the same way."""
        db = self._db()
        try:
            db.execute("BEGIN")  # one snapshot: the cut and the rows agree
            cut = int(db.execute("SELECT COALESCE(MAX(height), 0) FROM blocks").fetchone()[0])
            devices = db.execute("SELECT device, name FROM devices WHERE owner = ? ORDER BY device",
                                 (self.key.public,)).fetchall()
            found = self._readings(db, devices, cut)
            context: list[tuple[Any, ...]] = []
            if context_names:
                marks = ",".join("?" * len(context_names))
                named = db.execute("SELECT device, name, registered_height FROM devices"
                                   f" WHERE name IN ({marks})", list(context_names)).fetchall()
                first: dict[str, tuple[int, bytes]] = {}
                for dev, name, height in named:
                    if name not in first or (height, bytes(dev)) < first[name]:
                        first[name] = (height, bytes(dev))
                context = self._readings(db, [(dev, name) for name, (_, dev) in sorted(first.items())], cut)
        finally:
            db.close()
        train, held = partition(found)
        ctx_train, ctx_held = partition(context)
        return LedgerRows(
            [named_row(r) for r in train], [r[0] for r in train],
            [named_row(r) for r in held], [r[0] for r in held], cut,
            [named_row(r) for r in ctx_train], [named_row(r) for r in ctx_held],
        )

    @staticmethod
    def _readings(db: sqlite3.Connection, devices: Sequence[tuple[Any, str]],
                  cut: int) -> list[tuple[Any, ...]]:
        found: list[tuple[Any, ...]] = []
        for dev, name in devices:  # one range scan of the (device, seq) index each
            cur = db.execute(
                "SELECT tx_id, seq, timestamp_ms, temperature_c, humidity_pct FROM readings"
                " WHERE device = ? AND height <= ? ORDER BY seq",
                (dev, cut),
            )
            found += [(bytes(tid), bytes(dev), seq, ts, name, t, h) for tid, seq, ts, t, h in cur]
        return found

    def device_owners(self, names: Sequence[str]) -> list[bytes | None]:
        """The ledger's owner of each named device (node/ledger/run_rules.py, the same function)."""
        store = SqliteStore(self.dir / DB_FILE, read_only=True)
        try:
            return run_rules.device_owners(store, names)
        finally:
            store.close()

    def has_eval(self, run: bytes, round: int) -> bool:
        db = self._db()
        try:
            row = db.execute(
                "SELECT 1 FROM models WHERE kind = 'eval' AND run = ? AND round = ? AND node = ?",
                (run, round, self.key.public),
            ).fetchone()
        finally:
            db.close()
        return row is not None

    def own_update(self, run: bytes, round: int) -> tuple[bytes, ModelUpdate] | None:
        """This node's final model_update of (run, round): its tx id and body."""
        db = self._db()
        try:
            row = db.execute(
                "SELECT t.id, t.raw FROM models m JOIN txs t ON t.id = m.tx_id"
                " WHERE m.kind = 'update' AND m.run = ? AND m.round = ? AND m.node = ?",
                (run, round, self.key.public),
            ).fetchone()
        finally:
            db.close()
        if row is None:
            return None
        body = parse_tx(decode(bytes(row[1]))).body
        assert isinstance(body, ModelUpdate)
        return bytes(row[0]), body

    def committed_tx(self, txid: bytes) -> tuple[str, dict[str, Any]] | None:
        db = self._db()
        try:
            row = db.execute("SELECT kind, raw FROM txs WHERE id = ?", (txid,)).fetchone()
        finally:
            db.close()
        return None if row is None else (row[0], decode(bytes(row[1])))

    def wait_final(self, txid: bytes, timeout: float = FINALITY_TIMEOUT_S) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.committed_tx(txid)
            if found is not None:
                return found[1]
            if time.monotonic() >= deadline:
                raise LedgerHookError(f"tx {txid.hex()[:16]} not final after {timeout:.0f} s")
            time.sleep(POLL_S)

    # --- submitting ----------------------------------------------------------------------------

    def submit_and_wait(self, txs: Sequence[dict[str, Any]], timeout: float = FINALITY_TIMEOUT_S) -> None:
        async def send() -> list[Any]:
            async with LedgerClient(self.url) as client:
                return await client.submit_many(list(txs))

        for tx, result in zip(txs, asyncio.run(send()), strict=True):
            # "duplicate": already in the mempool or on the ledger (a retried message); still wait.
            if not result.accepted and result.reason != "duplicate":
                raise LedgerHookError(f"node refused {tx['kind']}: {result.reason}")
        for tx in txs:
            self.wait_final(tx_id(tx), timeout)


# --- the hooks' ledger versions --------------------------------------------------------------


def load_rows(node_config: Mapping[str, Any], context_names: Sequence[str] = ()) -> LedgerRows:
    link = NodeLink(str(node_config["data-dir"]), str(node_config.get("node-url", "")))
    return link.own_rows(context_names)


def device_owners(run_config: Mapping[str, Any], names: Sequence[str]) -> list[bytes | None]:
    return NodeLink(str(run_config["data-dir"]), str(run_config.get("node-url", ""))).device_owners(names)


def eval_tx(link: NodeLink, evaluation: Mapping[str, Any]) -> dict[str, Any] | None:
    """The signed model_eval for `evaluation` (run, task, round, model-hash, data-cut, num-examples,
    holdout-root, metrics), or None when this node already scored that round."""
    run = bytes.fromhex(str(evaluation["run"]))
    if link.has_eval(run, int(evaluation["round"])):
        return None
    return make_model_eval(
        link.key,
        link.chain_id,
        run,
        str(evaluation["task"]),
        int(evaluation["round"]),
        bytes.fromhex(str(evaluation["model-hash"])),
        int(evaluation["data-cut"]),
        int(evaluation["num-examples"]),
        bytes.fromhex(str(evaluation["holdout-root"])),
        {k: float(v) for k, v in evaluation["metrics"].items()},
    )


def sign_eval(node_config: Mapping[str, Any], evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """Sign and submit this node's score of a committed model; wait until it is final."""
    link = NodeLink(str(node_config["data-dir"]), str(node_config.get("node-url", "")))
    tx = eval_tx(link, evaluation)
    if tx is not None:
        link.submit_and_wait([tx])
    return {"eval-tx": tx_id(tx).hex() if tx is not None else ""}


def sign_update(
    node_config: Mapping[str, Any], update: Mapping[str, Any], readings_root: bytes, weights_blob: bytes
) -> dict[str, Any]:
    """Sign the update as this node, submit it (with the node's score of the base model, if
    any) and wait until it is final: the strategy only accepts updates it can find on the ledger."""
    link = NodeLink(str(node_config["data-dir"]), str(node_config.get("node-url", "")))
    metrics = {k: float(v) for k, v in update["metrics"].items()}
    tx = make_model_update(
        link.key,
        link.chain_id,
        bytes.fromhex(str(update["run"])),
        str(update["task"]),
        int(update["round"]),
        bytes.fromhex(str(update["base-hash"])),
        weights_blob,
        int(update["num-examples"]),
        metrics,
        readings_root,
        data_cut=int(update["data-cut"]),
    )
    evaluation = update.get("evaluation")
    ev = eval_tx(link, evaluation) if evaluation else None
    run, round = bytes.fromhex(str(update["run"])), int(update["round"])
    if link.own_update(run, round) is not None:
        raise UpdateExists(f"this node's update of round {round} is already final")
    _submit_update(link, tx, ev, run, round)
    return {
        "weights-hash": str(update["weights-hash"]),
        "tx-id": tx_id(tx).hex(),
        "node": link.key.public.hex(),
        "readings-root": readings_root.hex(),
    }


def _submit_update(link: NodeLink, tx: dict[str, Any], ev: dict[str, Any] | None, run: bytes,
                   round: int, timeout: float = FINALITY_TIMEOUT_S) -> None:
    """Submit the update (and the evaluation signed with it) and wait until it is final; raise
    UpdateExists as soon as another update of this node for the round is final instead (two
    ClientApps of the node raced for the round: the ledger keeps the first)."""

    async def send() -> list[Any]:
        async with LedgerClient(link.url) as client:
            return await client.submit_many([tx] if ev is None else [ev, tx])

    results = asyncio.run(send())
    for sent, result in zip([tx] if ev is None else [ev, tx], results, strict=True):
        if result.accepted or result.reason == "duplicate":
            continue
        if sent is tx and result.reason == "duplicate_update":
            raise UpdateExists(f"this node's update of round {round} is already final")
        if sent is not tx and result.reason == "duplicate_eval":
            continue  # scored by the other ClientApp
        raise LedgerHookError(f"node refused {sent['kind']}: {result.reason}")
    txid = tx_id(tx)
    deadline = time.monotonic() + timeout
    while link.committed_tx(txid) is None:
        other = link.own_update(run, round)
        if other is not None and other[0] != txid:
            raise UpdateExists(f"this node's update of round {round} is already final")
        if time.monotonic() >= deadline:
            raise LedgerHookError(f"tx {txid.hex()[:16]} not final after {timeout:.0f} s")
        time.sleep(POLL_S)


def existing_update(node_config: Mapping[str, Any], run_hex: str, round: int, base_hex: str
                    ) -> dict[str, Any] | None:
    """This node's final update of (run, round), as the ClientApp replies with it, or None.

    The rule for a round that was open when its coordinator stopped: a node that already has a
    final update for it replies with that update instead of training again (the ledger takes one
    update per node and round). It must build on the base the new coordinator sends, which is the
    committed model of the round before on every replica."""
    link = NodeLink(str(node_config["data-dir"]), str(node_config.get("node-url", "")))
    found = link.own_update(bytes.fromhex(run_hex), round)
    if found is None:
        return None
    txid, body = found
    if body.base_model_hash.hex() != base_hex:
        raise LedgerHookError(f"this node's final update of round {round} builds on "
                              f"{body.base_model_hash.hex()[:16]}, not on the base sent {base_hex[:16]}")
    return {
        "weights": decode_weights(body.weights),
        "num-examples": body.num_examples,
        "metrics": dict(body.metrics),
        "signed": {"weights-hash": body.weights_hash.hex(), "tx-id": txid.hex(),
                   "node": link.key.public.hex(), "readings-root": body.readings_root.hex()},
    }


def check_update(
    run_config: Mapping[str, Any], server_round: int, signed: Mapping[str, Any], weights_hash: bytes
) -> str | tuple[int, bytes]:
    """Why an update must not be aggregated, or its num_examples on the ledger (the weight to
    aggregate it with) and its node (the owner its personal rows are checked against): it has to
    be a final model_update of this run and round on the coordinator's replica, carrying exactly
    these weights. The ledger has already checked its signature, its signer's membership, its base
    model and the run's rules."""
    link = NodeLink(str(run_config["data-dir"]), str(run_config.get("node-url", "")))
    try:
        txid = bytes.fromhex(str(signed.get("tx-id", "")))
    except ValueError:
        return "update names no transaction"
    found = link.committed_tx(txid)
    if found is None:
        return f"update {txid.hex()[:16]} is not on the ledger"
    kind, raw = found
    if kind != ModelUpdate.KIND:
        return f"transaction {txid.hex()[:16]} is a {kind}, not a model_update"
    body = parse_tx(raw).body
    assert isinstance(body, ModelUpdate)
    if body.run.hex() != str(run_config["run"]) or body.round != server_round:
        return f"update {txid.hex()[:16]} belongs to another run or round"
    if body.weights_hash != weights_hash:
        return f"update {txid.hex()[:16]} on the ledger has other weights than the reply"
    return body.num_examples, body.node


def publish_initial(run_config: Mapping[str, Any], task: str, weights_blob: bytes) -> str:
    """Round 0: the coordinator publishes the initial model and commits it alone, so every
    model of the run has a lineage that starts on the ledger. Returns its weights hash (hex)."""
    link = NodeLink(str(run_config["data-dir"]), str(run_config.get("node-url", "")))
    run = bytes.fromhex(str(run_config["run"]))
    update = make_model_update(
        link.key, link.chain_id, run, task, 0, bytes(32), weights_blob, 1, {}, bytes(32)
    )
    wh = update["body"]["weights_hash"]
    commit = make_model_commit(
        link.key,
        link.chain_id,
        run,
        task,
        0,
        str(run_config.get("strategy", "fedavg")),
        [tx_id(update)],
        wh,
        {},
    )
    link.submit_and_wait([update])  # the mempool checks a commit against final updates only
    link.submit_and_wait([commit])
    return bytes(wh).hex()


def commit_round(
    run_config: Mapping[str, Any],
    server_round: int,
    strategy: str,
    task: str,
    update_ids: Sequence[bytes],
    aggregate_hash: bytes,
    metrics: Mapping[str, float],
) -> dict[str, Any]:
    link = NodeLink(str(run_config["data-dir"]), str(run_config.get("node-url", "")))
    tx = make_model_commit(
        link.key,
        link.chain_id,
        bytes.fromhex(str(run_config["run"])),
        task,
        server_round,
        strategy,
        list(update_ids),
        aggregate_hash,
        {k: float(v) for k, v in metrics.items()},
    )
    link.submit_and_wait([tx])
    return {
        "round": server_round,
        "tx-id": tx_id(tx).hex(),
        "aggregate_hash": aggregate_hash.hex(),
        "updates": [u.hex() for u in update_ids],
        "metrics": dict(metrics),
    }
