"""The node's API on its one port: read-only HTTP GET endpoints returning JSON, and the websocket
client protocol (path /client) for submitting transactions.

GET /status                       this node: ids, height, head, validators, peers, counters
GET /blocks?from=H&to=H           block summaries (at most 200 per request)
GET /block/H                      one block with its transactions and commit certificate
GET /tx/ID                        one committed transaction (ID in hex)
GET /peers                        connected peers
GET /devices                      registered devices and their last sequence numbers
GET /members                      members with roles; open join requests, votes, scheduled changes
GET /genesis                      the federation's genesis (what `fedledger join` fetches) and its hash
GET /finality?last=K              the latest K finality latencies (ms from submission to this node
                                  until its commit), for txs submitted to this node
"""

from __future__ import annotations

import json
import statistics
import time
from typing import TYPE_CHECKING, Any

from node.ledger import membership
from node.ledger.blocks import Block, Commit
from node.ledger.keys import short_id
from node.ledger.transactions import tx_id
from node.net import wire
from node.store.base import Store
from node.store.models import runs

if TYPE_CHECKING:
    from node.server.runtime import Node

MAX_BLOCKS_PER_REQUEST = 200


def hexify(obj: Any) -> Any:
    """JSON view of ledger values: bytes as hex strings."""
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, dict):
        return {str(k): hexify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [hexify(v) for v in obj]
    return obj


def block_summary(block: Block) -> dict[str, Any]:
    h = block.header
    return {
        "height": h.height,
        "hash": block.hash.hex(),
        "round": h.round,
        "time_ms": h.time_ms,
        "proposer": short_id(h.proposer),
        "num_txs": len(block.txs),
        "prev_hash": h.prev_hash.hex(),
    }


def block_detail(block: Block, commit: Commit | None) -> dict[str, Any]:
    return {
        **block_summary(block),
        "header": hexify(block.header.to_dict()),
        "txs": [{"id": tx_id(t).hex(), **hexify(t)} for t in block.txs],
        "last_commit": hexify(block.last_commit.to_dict()) if block.last_commit else None,
        "commit": hexify(commit.to_dict()) if commit else None,
    }


def membership_status(store: Store) -> dict[str, Any]:
    """`members` (who is in, with roles) and `membership` (requests, votes, scheduled changes)."""
    view = membership.to_json(store.membership(), store.members(), store.height())
    return {"members": view.pop("members"), "membership": view}


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1]


class NodeApi:
    def __init__(self, node: Node) -> None:
        self.node = node

    def status(self) -> dict[str, Any]:
        n = self.node
        store = n.store
        counts = store.counts()
        vset = n.ledger.validators_at(store.height() + 1)
        lat = list(n.latencies_ms)
        rejected = {k.split(":", 1)[1]: v for k, v in n.counters.items() if k.startswith("rejected:")}
        return {
            "node_id": n.key.short_id,
            "name": n.config.name,
            "public_key": n.key.public.hex(),
            "role": n.role,
            "chain_id": n.genesis.chain_id,
            "genesis_hash": n.ledger.genesis_hash.hex(),
            "height": store.height(),
            "head_hash": (store.head_hash() or n.ledger.genesis_hash).hex(),
            "head_time_ms": n.ledger.head_time_ms,
            "consensus": {"height": n.core.height, "round": n.core.round, "step": n.core.step_.name.lower()},
            "validators": [{"node_id": short_id(k), "public_key": k.hex()} for k in vset.members],
            "peers": len(n.net.peers()),
            "peer_ids": [p.short_id for p in n.net.peers()],
            "mempool": len(n.mempool),
            "readings": counts["readings"],
            "txs": counts["txs"],
            "devices": counts["devices"],
            "rejected": rejected,
            "counters": dict(n.counters),
            "finalized_txs_since_start": n.finalized_txs,
            "finality_ms": {"p50": percentile(lat, 50), "p99": percentile(lat, 99), "samples": len(lat),
                            "count": n.latency_count},
            "url": n.url,
            "uptime_s": round(time.time() - n.started_at, 1),
            "network": n.net.stats(),
            "training": {"runs": [r.to_json() for r in runs(store)], "local": n.training.status()},
            "sync": n.sync_status(),
            **membership_status(store),
        }

    def handle_http(self, path: str, query: dict[str, str]) -> tuple[int, Any] | None:
        store = self.node.store
        parts = [p for p in path.split("/") if p]
        try:
            if parts == ["status"] or not parts:
                return 200, self.status()
            if parts == ["genesis"]:
                # What `fedledger join` fetches: the exact file this federation runs with.
                return 200, {"chain_id": self.node.genesis.chain_id,
                             "genesis_hash": self.node.ledger.genesis_hash.hex(),
                             "genesis": json.loads(self.node.genesis.to_json())}
            if parts == ["members"]:
                return 200, membership_status(store)
            if parts == ["blocks"]:
                hi = int(query.get("to", store.height()))
                lo = int(query.get("from", max(1, hi - 19)))
                if lo < 1 or hi < lo:
                    return 400, {"error": "need 1 <= from <= to"}
                hi = min(hi, store.height(), lo + MAX_BLOCKS_PER_REQUEST - 1)
                blocks = [store.block(h) for h in range(lo, hi + 1)]
                return 200, {"height": store.height(), "blocks": [block_summary(b) for b in blocks if b]}
            if len(parts) == 2 and parts[0] == "block":
                h = int(parts[1])
                block = store.block(h)
                if block is None:
                    return 404, {"error": f"no block at height {h} (height is {store.height()})"}
                return 200, block_detail(block, store.commit(h))
            if len(parts) == 2 and parts[0] == "tx":
                rec = store.tx(bytes.fromhex(parts[1]))
                if rec is None:
                    return 404, {"error": "no committed transaction with that id"}
                return 200, {"id": rec.id.hex(), "height": rec.height, "index": rec.index, "kind": rec.kind,
                             "signer": rec.signer.hex(), "tx": hexify(rec.raw)}
            if parts == ["peers"]:
                now = time.time()
                return 200, {"peers": [hexify(p.to_json(now)) for p in self.node.net.peers()]}
            if parts == ["finality"]:
                k = int(query.get("last", 1000))
                lat = list(self.node.latencies_ms)
                return 200, {"count": self.node.latency_count, "ms": lat[-k:] if k > 0 else []}
            if parts == ["devices"]:
                return 200, {"devices": [
                    {"device": d.device.hex(), "id": short_id(d.device), "owner": short_id(d.owner),
                     "name": d.name, "last_seq": d.last_seq, "registered_height": d.registered_height}
                    for d in store.devices()
                ]}
        except ValueError as exc:
            return 400, {"error": f"bad request: {exc}"}
        return None

    def handle_client(self, type_: str, payload: Any) -> tuple[str, Any] | None:
        if type_ == wire.SUBMIT_TX:
            txid, reason = self.node.accept_tx(payload)
            return wire.TX_RESULT, {"id": txid, "accepted": reason is None, "reason": reason}
        if type_ == wire.SUBMIT_TXS:
            results = self.node.accept_txs(payload)
            return wire.TX_RESULTS, [{"id": i, "accepted": r is None, "reason": r} for i, r in results]
        return wire.ERROR, {"reason": "unsupported", "detail": f"clients cannot send {type_}"}
