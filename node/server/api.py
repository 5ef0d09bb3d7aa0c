"""The node's API on its one port: read-only HTTP GET endpoints returning JSON, and the websocket
client protocol (path /client) for submitting transactions.

GET /status                       this node: ids, height, head, validators, peers, counters
GET /blocks?from=H&to=H           block summaries (at most 200 per request)
GET /block/H                      one block with its transactions and commit certificate
GET /tx/ID                        one committed transaction (ID in hex)
GET /peers                        connected peers
GET /devices                      registered devices and their last sequence numbers
GET /members?last=N               members with roles; open join requests, votes, scheduled and applied
                                  changes: each list its latest N (default 200, at most 1000) with totals
GET /genesis                      the federation's genesis (what `fedledger join` fetches) and its hash
GET /metrics                      Prometheus metrics, text format (docs/metrics.md)
GET /finality?last=K              the latest K finality latencies (ms from submission to this node
                                  until its commit), for txs submitted to this node
GET /                             the explorer page (node/server/explorer/), and the views it reads:
                                  /activity, /device/KEY, /runs, /run/RUN, /model/RUN/ROUND, a
                                  model's file (/model/RUN/ROUND/keras or /json) and /suspicious
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any, Protocol

from node.host.core import TxResult
from node.ledger import membership
from node.ledger.blocks import Block, Commit
from node.ledger.codec import hexify
from node.ledger.genesis import Genesis
from node.ledger.keys import short_id
from node.ledger.storage import Store
from node.ledger.transactions import tx_id
from node.net import wire
from node.net.gateway import HttpBody
from node.server.explorer.exports import KerasExports
from node.server.explorer.routes import ExplorerApi
from node.server.explorer.suspicious_view import SuspiciousView

MAX_BLOCKS_PER_REQUEST = 200
MAX_HEIGHT = 2**63 - 1  # SQLite's INTEGER: a larger height is no height, not a server error
MAX_FINALITY_SAMPLES = 20_000
# /status is polled by every tool and must stay cheap however big the federation or its history:
# each list in it shows at most this many entries, with the full count beside it.
MAX_STATUS_LIST = 50
# GET /members: open admission lets members, requests (up to 1,000 open) and applied changes grow
# with history, so each list is capped too; 1,000 covers every open join request at once.
DEFAULT_MEMBERS_LIST = 200
MAX_MEMBERS_LIST = 1_000


def capped(items: list[Any], limit: int | None) -> tuple[list[Any], int]:
    """The last `limit` items (the most recent, as lists here grow by appending) and the total."""
    if limit is None or len(items) <= limit:
        return items, len(items)
    return items[-limit:], len(items)


def bounded_int(text: str, name: str, lo: int, hi: int) -> int:
    """A query or path number from a client, checked before it reaches storage (ValueError: 400)."""
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError(f"{name} must be between {lo} and {hi}")
    return value


class NodeView(Protocol):
    """What the API needs of a running node (node/server/runtime.py's Node): the API reads the
    ledger through `store` and asks the node for everything else."""

    @property
    def store(self) -> Store: ...

    @property
    def genesis(self) -> Genesis: ...

    def status(self) -> dict[str, Any]:
        """GET /status, assembled by the node."""
        ...

    def peers_json(self) -> list[dict[str, Any]]: ...

    def finality(self, last: int) -> dict[str, Any]: ...

    def accept_txs(self, raws: list[Any]) -> list[TxResult]: ...

    def device_refusals(self, device: bytes) -> dict[str, int]: ...
    def metrics(self) -> HttpBody:
        """GET /metrics: the Prometheus text exposition."""
        ...


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


def membership_status(store: Store, limit: int | None = None) -> dict[str, Any]:
    """`members` (who is in, with roles) and `membership` (requests, votes, scheduled changes).
    With `limit`, each list keeps its latest `limit` entries and `membership.totals` the counts."""
    history = store.membership_history(limit)
    view = membership.to_json(store.membership(), store.members(), store.height(), history)
    if limit is None:
        return {"members": view.pop("members"), "membership": view}
    totals: dict[str, int] = {}
    for name in list(view):
        if isinstance(view[name], list):
            view[name], totals[name] = capped(view[name], limit)
    totals["history"] = store.membership_history_size()
    return {"members": view.pop("members"), "membership": {**view, "totals": totals}}


class NodeApi:
    def __init__(self, node: NodeView, exports: KerasExports | None = None,
                 counters: Counter[str] | None = None) -> None:
        self.node = node
        # counters: the node's own (GET /status, fedledger_node_events_total), for the explorer's
        # suspicious_* events.
        self.explorer = ExplorerApi(node, exports, SuspiciousView(node.store, counters=counters))

    def handle_http(self, path: str, query: dict[str, str]) -> tuple[int, Any] | None:
        store = self.node.store
        parts = [p for p in path.split("/") if p]
        page = self.explorer.page(parts)
        if page is not None:
            return page
        try:
            if parts == ["status"]:
                return 200, self.node.status()
            if parts == ["genesis"]:
                # What `fedledger join` fetches: the exact file this federation runs with.
                genesis = self.node.genesis
                return 200, {"chain_id": genesis.chain_id, "genesis_hash": genesis.hash.hex(),
                             "genesis": json.loads(genesis.to_json())}
            if parts == ["members"]:
                last = bounded_int(query.get("last", str(DEFAULT_MEMBERS_LIST)), "last", 1, MAX_MEMBERS_LIST)
                return 200, membership_status(store, last)
            if parts == ["blocks"]:
                hi = bounded_int(query.get("to", str(store.height())), "to", 0, MAX_HEIGHT)
                lo = bounded_int(query.get("from", str(max(1, hi - 19))), "from", 0, MAX_HEIGHT)
                if lo < 1 or hi < lo:
                    return 400, {"error": "need 1 <= from <= to"}
                hi = min(hi, store.height(), lo + MAX_BLOCKS_PER_REQUEST - 1)
                # From the indexed columns: decoding 200 full blocks (up to 10,000 txs each) per
                # request would let one client keep the event loop busy.
                return 200, {"height": store.height(), "blocks": store.block_rows(lo, hi)}
            if len(parts) == 2 and parts[0] == "block":
                h = bounded_int(parts[1], "height", 0, MAX_HEIGHT)
                block = store.block(h)
                if block is None:
                    return 404, {"error": f"no block at height {h} (height is {store.height()})"}
                commit = store.commit(h)
                signers = [short_id(v.validator) for v in commit.precommits] if commit else []
                return 200, {**block_detail(block, commit), "commit_signers": signers,
                             "validators": len(store.membership().validators_at(h))}
            if len(parts) == 2 and parts[0] == "tx":
                txid = bytes.fromhex(parts[1])
                if len(txid) != 32:
                    raise ValueError("a tx id is 32 bytes (64 hex digits)")
                rec = store.tx(txid)
                if rec is None:
                    return 404, {"error": "no committed transaction with that id"}
                return 200, {"id": rec.id.hex(), "height": rec.height, "index": rec.index, "kind": rec.kind,
                             "signer": rec.signer.hex(), "tx": hexify(rec.raw)}
            if parts == ["peers"]:
                return 200, {"peers": hexify(self.node.peers_json())}
            if parts == ["metrics"]:
                return 200, self.node.metrics()
            if parts == ["finality"]:
                return 200, self.node.finality(bounded_int(query.get("last", "1000"), "last", 1,
                                                           MAX_FINALITY_SAMPLES))
            if parts == ["devices"]:
                return 200, {"devices": [
                    {"device": d.device.hex(), "id": short_id(d.device), "owner": short_id(d.owner),
                     "name": d.name, "last_seq": d.last_seq, "registered_height": d.registered_height}
                    for d in store.devices()
                ]}
            explored = self.explorer.handle(parts, query)
            if explored is not None:
                return explored
        except ValueError as exc:
            return 400, {"error": f"bad request: {exc}"}
        return None

    def handle_client(self, type_: str, payload: Any) -> tuple[str, Any] | None:
        if type_ == wire.SUBMIT_TX:
            [(txid, reason)] = self.node.accept_txs([payload])
            return wire.TX_RESULT, {"id": txid, "accepted": reason is None, "reason": reason}
        if type_ == wire.SUBMIT_TXS:
            results = self.node.accept_txs(payload)
            return wire.TX_RESULTS, [{"id": i, "accepted": r is None, "reason": r} for i, r in results]
        return wire.ERROR, {"reason": "unsupported", "detail": f"clients cannot send {type_}"}
