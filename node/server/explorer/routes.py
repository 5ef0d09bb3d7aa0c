"""The JSON views the explorer page reads besides the node's API (GET /status, /blocks, /block/H,
/tx/ID, /peers, /devices, /members). Each is bounded: a `last` parameter has a hard cap, and no view
walks the whole history of the ledger.

GET /activity?last=K          the latest K blocks (<= 500): time, txs and readings of each
GET /device/KEY?last=N        a device (KEY: its public key in hex), its latest N readings (<= 500),
                              the readings this node refused for it by reason, and the latest
                              model updates of its owner
GET /runs?last=N              the latest N training runs (<= 200)
GET /run/RUN?last=N           one run (RUN: its id in hex) and its latest N committed rounds (<= 500)
                              with their metrics
GET /model/RUN/ROUND          a committed model's lineage, and whether this node re-computed it
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Protocol

from node.ledger.keys import short_id
from node.ledger.storage import Store
from node.ledger.transactions import ModelCommit, TrainRequest, parse_tx
from node.server.explorer.assets import asset
from node.store.models import ModelInfo, RunInfo, handovers, latest_runs, lineage, model_weights

MAX_ACTIVITY_BLOCKS = 500
MAX_DEVICE_READINGS = 500
MAX_RUNS = 200
MAX_ROUNDS = 500
OWNER_UPDATES = 20
OWNER_RUNS = 10
VERIFIED_CACHE = 256  # a committed model never changes: one re-computation per model is enough
MAX_ROUND = 10_000  # TrainRequest's bound on rounds


class ExplorerNode(Protocol):
    @property
    def store(self) -> Store: ...

    def device_refusals(self, device: bytes) -> dict[str, int]:
        """Readings this node refused for `device` at admission, by reason."""
        ...


def last_param(query: dict[str, str], default: int, cap: int) -> int:
    value = int(query.get("last", str(default)))
    if not 1 <= value <= cap:
        raise ValueError(f"last must be between 1 and {cap}")
    return value


def hex_key(text: str, what: str) -> bytes:
    raw = bytes.fromhex(text)
    if len(raw) != 32:
        raise ValueError(f"a {what} is 32 bytes (64 hex digits)")
    return raw


class ExplorerApi:
    def __init__(self, node: ExplorerNode) -> None:
        self.node = node
        self._verified: OrderedDict[bytes, dict[str, Any]] = OrderedDict()

    def page(self, parts: list[str]) -> tuple[int, Any] | None:
        """GET / (the page) and GET /explorer/NAME (its files)."""
        if not parts:
            body = asset("index.html")
        elif len(parts) == 2 and parts[0] == "explorer":
            body = asset(parts[1])
        else:
            return None
        return None if body is None else (200, body)

    def handle(self, parts: list[str], query: dict[str, str]) -> tuple[int, Any] | None:
        """ValueError (a bad number or id) is the caller's 400."""
        store = self.node.store
        if parts == ["activity"]:
            return 200, activity(store, last_param(query, 200, MAX_ACTIVITY_BLOCKS))
        if len(parts) == 2 and parts[0] == "device":
            key = hex_key(parts[1], "device key")
            view = device_view(store, key, last_param(query, 200, MAX_DEVICE_READINGS))
            if view is None:
                return 404, {"error": "no registered device with that key"}
            view["refused"] = self.node.device_refusals(key)
            return 200, view
        if parts == ["runs"]:
            listed, total = latest_runs(store, last_param(query, 50, MAX_RUNS))
            return 200, {"runs": [r.to_json() for r in reversed(listed)], "total": total}
        if len(parts) == 2 and parts[0] == "run":
            view = run_view(store, hex_key(parts[1], "run id"), last_param(query, MAX_ROUNDS, MAX_ROUNDS))
            return (404, {"error": "no training run with that id"}) if view is None else (200, view)
        if len(parts) == 3 and parts[0] == "model":
            run = hex_key(parts[1], "run id")
            round_ = int(parts[2])
            if not 0 <= round_ <= MAX_ROUND:
                raise ValueError(f"round must be between 0 and {MAX_ROUND}")
            model = model_info(store, run, round_)
            if model is None:
                return 404, {"error": f"no committed model for round {round_} of that run"}
            return 200, {**lineage(store, model), "recomputed": self._recomputed(store, model)}
        return None

    def _recomputed(self, store: Store, model: ModelInfo) -> dict[str, Any]:
        """Re-aggregate the named updates here and compare with the committed hash, as every
        authority did before the commit was final (once per model: the ledger does not change)."""
        done = self._verified.get(model.commit_id)
        if done is None:
            try:
                model_weights(store, model)
                done = {"ok": True, "detail": f"re-computed from {len(model.update_ids)} update(s): the "
                        "weights hash matches the commit"}
            except ValueError as exc:
                done = {"ok": False, "detail": str(exc)}
            self._verified[model.commit_id] = done
            while len(self._verified) > VERIFIED_CACHE:
                self._verified.popitem(last=False)
        return done


def activity(store: Store, last: int) -> dict[str, Any]:
    height = store.height()
    lo = max(1, height - last + 1)
    counts = store.reading_counts(lo, height) if height else {}
    blocks = [{"height": b["height"], "time_ms": b["time_ms"], "txs": b["num_txs"],
               "readings": counts.get(b["height"], 0)} for b in store.block_rows(lo, height)]
    return {"height": height, "blocks": blocks}


def device_view(store: Store, key: bytes, last: int) -> dict[str, Any] | None:
    rec = store.device(key)
    if rec is None:
        return None
    owner = store.member(rec.owner)
    readings = store.latest_readings(key, last)
    # The owner's updates in the latest runs only: the whole history of updates is unbounded.
    recent, _ = latest_runs(store, OWNER_RUNS)
    updates = [m for r in recent for m in store.model_rows(r.run, "update") if m.node == rec.owner]
    updates = updates[-OWNER_UPDATES:]
    return {
        "device": key.hex(), "id": short_id(key), "name": rec.name, "last_seq": rec.last_seq,
        "registered_height": rec.registered_height,
        "owner": {"public_key": rec.owner.hex(), "node_id": short_id(rec.owner),
                  "name": owner.name if owner else "", "role": owner.role if owner else "removed"},
        "readings": [{"tx": r.tx_id.hex(), "height": r.height, "seq": r.seq, "timestamp_ms": r.timestamp_ms,
                      "temperature_c": r.temperature_c, "humidity_pct": r.humidity_pct}
                     for r in reversed(readings)],  # oldest first, as a chart wants them
        "owner_updates": [{"tx": m.tx_id.hex(), "height": m.height, "run": m.run.hex(), "round": m.round}
                          for m in reversed(updates)],
    }


def run_view(store: Store, run: bytes, last: int) -> dict[str, Any] | None:
    rec = store.tx(run)
    if rec is None or rec.kind != TrainRequest.KIND:
        return None
    request = parse_tx(rec.raw).body
    assert isinstance(request, TrainRequest)
    commits = store.model_rows(run, "commit")
    info = RunInfo(run, rec.height, rec.signer, request, [m.round for m in commits],
                   tuple(handovers(store, run, rec.signer)))
    rounds = []
    for row in commits[-last:]:
        rec = store.tx(row.tx_id)
        assert rec is not None  # the index row exists because the tx was committed
        body = parse_tx(rec.raw).body
        assert isinstance(body, ModelCommit)
        rounds.append({"round": body.round, "height": row.height, "commit_tx": row.tx_id.hex(),
                       "model_hash": body.weights_hash.hex(), "updates": len(body.update_ids),
                       "coordinator": short_id(body.coordinator), "metrics": dict(body.metrics)})
    return {**info.to_json(), "models": rounds}


def model_info(store: Store, run: bytes, round_: int) -> ModelInfo | None:
    row = store.model_commit(run, round_)
    if row is None:
        return None
    rec = store.tx(row.tx_id)
    assert rec is not None
    body = parse_tx(rec.raw).body
    assert isinstance(body, ModelCommit)
    block = store.block_rows(row.height, row.height)
    return ModelInfo(body.run, body.task, body.round, body.strategy, body.weights_hash, row.height,
                     block[0]["time_ms"] if block else 0, row.tx_id, body.update_ids, dict(body.metrics),
                     coordinator=body.coordinator)
