"""A node read from its data directory without asking its process: config, genesis and a read-only
view of node.db, inside one read snapshot (safe beside the running node), and the /status the API
would answer, built from the replica alone."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from node.errors import ConfigError, StorageError
from node.ledger.genesis import Genesis
from node.ledger.keys import short_id
from node.server.api import membership_status
from node.server.datadir import DB_FILE, GENESIS_FILE, NodeConfig
from node.store.models import runs
from node.store.sqlite import SqliteStore


class OfflineNode:
    """A node directory: its config, its genesis and a read-only view of its node.db."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise ConfigError(f"{self.dir} is not a directory")
        self.config = NodeConfig.load(self.dir)
        self.store = SqliteStore(self.dir / DB_FILE, read_only=True)

    def genesis(self) -> Genesis:
        """genesis.json, which the node runs with; the copy in node.db if that file is gone."""
        path = self.dir / GENESIS_FILE
        if path.exists():
            return Genesis.load(path)
        stored = self.store.genesis()
        if stored is None:
            raise StorageError(f"{self.dir} has no {GENESIS_FILE} and its node.db holds no genesis")
        return Genesis.from_json(stored[1])

    def genesis_hash(self) -> bytes:
        stored = self.store.genesis()
        if stored is None:
            raise StorageError(f"{self.store.path} holds no genesis")
        return stored[0]

    def close(self) -> None:
        self.store.close()


@contextlib.contextmanager
def open_node(directory: str | os.PathLike[str]) -> Iterator[OfflineNode]:
    """The node in DIR, read inside one snapshot of its node.db."""
    node = OfflineNode(directory)
    try:
        with node.store.snapshot():
            yield node
    except sqlite3.Error as exc:  # a corrupt page, a vanished file: an error, not a traceback
        raise StorageError(f"reading {node.store.path} failed: {exc}") from exc
    finally:
        node.close()


def offline_status(node: OfflineNode) -> dict[str, Any]:
    """The keys of the API's /status, built from the replica alone (no process to ask)."""
    store, cfg = node.store, node.config
    genesis = node.genesis()
    counts = store.counts()
    member = store.member(bytes.fromhex(cfg.public_key)) if cfg.public_key else None
    head = store.head_hash() or node.genesis_hash()
    top = store.block_rows(store.height(), store.height())
    return {
        "node_id": cfg.node_id,
        "name": cfg.name,
        "public_key": cfg.public_key,
        "role": member.role if member else "observer",
        "chain_id": genesis.chain_id,
        "genesis_hash": node.genesis_hash().hex(),
        "height": store.height(),
        "head_hash": head.hex(),
        "head_time_ms": top[0]["time_ms"] if top else genesis.genesis_time_ms,
        "validators": [{"node_id": short_id(k), "public_key": k.hex()}
                       for k in store.membership().validators_at(store.height() + 1)],
        "peers": 0,
        "peer_ids": [],
        "mempool": 0,
        "readings": counts["readings"],
        "txs": counts["txs"],
        "devices": counts["devices"],
        "rejected": {},
        "url": cfg.url,
        "running": False,
        "training": {"runs": [r.to_json() for r in runs(store)], "local": None},
        **membership_status(store),
    }
