"""Comparing replicas of one ledger: do they hold the same blocks, and where do they first differ?

Relies on the hash chain: a block hash commits to its parent, so two replicas with the same hash at
height H hold the same blocks 1..H. Agreement is therefore monotone in H and the first divergent
height is found by binary search on the common prefix. Committed blocks are final (BFT), so a live
node's growing height does not disturb the search below the common height.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from node.errors import StorageError
from node.ledger.storage import Store


class Replica(Protocol):
    """What a comparison needs of a replica: its identity, its head and the hash at a height (hex)."""

    target: str
    node_id: str
    height: int
    head_hash: str
    genesis_hash: str

    def hash_at(self, height: int) -> str:
        """The block hash at `height` (the genesis hash at 0)."""
        ...


class StoreReplica:
    """A replica read from a store (a node directory's node.db, inside one read snapshot)."""

    def __init__(self, target: str, node_id: str, store: Store) -> None:
        stored = store.genesis()
        if stored is None:
            raise StorageError(f"{target}: the replica holds no genesis")
        self.target, self.node_id, self.store = target, node_id, store
        self.height = store.height()
        self.genesis_hash = stored[0].hex()
        self.head_hash = (store.head_hash() or stored[0]).hex()
        self._hashes: dict[int, str] = {}

    def hash_at(self, height: int) -> str:
        if height == 0:
            return self.genesis_hash
        if height not in self._hashes:
            h = self.store.block_hash(height)
            if h is None:
                raise StorageError(f"{self.target}: no block at height {height} below its head {self.height}")
            self._hashes[height] = h.hex()
        return self._hashes[height]


def summary(replica: Replica, common: int) -> dict[str, Any]:
    return {"target": replica.target, "node_id": replica.node_id, "height": replica.height,
            "head_hash": replica.head_hash, "genesis_hash": replica.genesis_hash,
            "hash_at_common": replica.hash_at(common)}


def first_divergence(replicas: Sequence[Replica], common: int) -> int | None:
    """Lowest height <= common where the replicas' hashes differ (0: different genesis), or None."""

    def agree(h: int) -> bool:
        return len({r.hash_at(h) for r in replicas}) == 1

    if agree(common):
        return None
    if not agree(0):
        return 0
    lo, hi = 0, common  # invariant: agree(lo) and not agree(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if agree(mid):
            lo = mid
        else:
            hi = mid
    return hi
