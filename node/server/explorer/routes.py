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
GET /model/RUN/ROUND          a committed model's lineage, whether this node re-computed it, and
                              where its download stands
GET /model/RUN/ROUND/keras    a humidity model as a .keras file (exports.py: written by `fedledger
                              model export` in a child process, bounded and cached); 202 while it
                              is being written, 503 when this node is busy or has no Keras, 429
                              when it has exported too much lately
GET /model/RUN/ROUND/json     a traceability model's fingerprints as JSON, the file `fedledger model
                              export --task traceability` writes (numpy, written here, cached)
GET /suspicious?hours=H       the stolen-key view: the windows of the latest H hours (6..168) whose
                              readings look like another device under the latest committed
                              fingerprints (suspicious_view.py: computed off the event loop, cached)
"""

from __future__ import annotations

import json
from collections import OrderedDict
from typing import Any, Protocol

from federated.evaluation import HEADLINE
from federated.export import fingerprints_text
from federated.personal import run_devices
from node.ledger.keys import short_id
from node.ledger.storage import Store
from node.ledger.transactions import TrainRequest, parse_tx
from node.net.gateway import HttpBody
from node.server.explorer.assets import asset
from node.server.explorer.exports import Answer, ExportJob, KerasExports, State
from node.server.explorer.suspicious_view import SuspiciousView
from node.store import suspicious as susp
from node.store.models import (
    ModelInfo,
    RunInfo,
    find_run,
    handovers,
    latest_runs,
    lineage,
    model_weights,
    models,
)

MAX_ACTIVITY_BLOCKS = 500
MAX_DEVICE_READINGS = 500
MAX_RUNS = 200
MAX_ROUNDS = 500
OWNER_UPDATES = 20
OWNER_RUNS = 10
VERIFIED_CACHE = 256  # a committed model never changes: one re-computation per model is enough
RUN_CACHE = 16  # runs whose rounds and held-out scores are kept (until the run gets a new tx)
MAX_ROUND = 10_000  # TrainRequest's bound on rounds
# What each task's held-out score is compared with, in words (the keys: federated/evaluation.py).
BASELINE_NAMES = {"humidity": "device-mean baseline", "traceability": "chance"}
KERAS_TYPE = "application/zip"  # a .keras file is a zip archive (config.json, model.weights.h5, ...)
# What each task's committed model downloads as (federated/export.py): humidity a Keras file written
# in a child process (exports.py), traceability its fingerprints as JSON, written here (numpy).
DOWNLOAD_FORMAT = {"humidity": "keras", "traceability": "json"}
FINGERPRINTS_CACHE = 8  # JSON files of up to ~200 KB (64 devices), one per model hash


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
    def __init__(self, node: ExplorerNode, exports: KerasExports | None = None,
                 suspicious: SuspiciousView | None = None) -> None:
        self.node = node
        self.exports = exports  # None: this node serves no .keras downloads
        self.suspicious = suspicious if suspicious is not None else SuspiciousView(node.store)
        self._verified: OrderedDict[bytes, dict[str, Any]] = OrderedDict()
        self._runs: OrderedDict[bytes, tuple[tuple[int, int], list[ModelInfo]]] = OrderedDict()
        self._fingerprints: OrderedDict[bytes, bytes] = OrderedDict()

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
            run = hex_key(parts[1], "run id")
            view = run_view(store, run, self._models(store, run), last_param(query, MAX_ROUNDS, MAX_ROUNDS))
            return (404, {"error": "no training run with that id"}) if view is None else (200, view)
        if len(parts) in (3, 4) and parts[0] == "model" and parts[3:] in ([], ["keras"], ["json"]):
            run = hex_key(parts[1], "run id")
            round_ = int(parts[2])
            if not 0 <= round_ <= MAX_ROUND:
                raise ValueError(f"round must be between 0 and {MAX_ROUND}")
            model = next((m for m in self._models(store, run) if m.round == round_), None)
            if model is None:
                return 404, {"error": f"no committed model for round {round_} of that run"}
            fmt = DOWNLOAD_FORMAT.get(model.task, "keras")
            if len(parts) == 4:
                if parts[3] != fmt:
                    return 404, {"error": f"a {model.task} model downloads as {fmt}: {download_url(model)}"}
                if fmt == "json":
                    return self._fingerprints_download(store, model)
                return self._download(ExportJob(model.run, model.round, model.task, model.weights_hash))
            recomputed = self._recomputed(store, model)
            return 200, {**lineage(store, model), **scored_by(model.task), "recomputed": recomputed,
                         "download": self._download_state(model, recomputed)}
        if parts == ["suspicious"]:
            hours = int(query.get("hours", str(susp.DEFAULT_HOURS)))
            if not susp.DEFAULT_WINDOW_HOURS <= hours <= susp.MAX_HOURS:
                raise ValueError(f"hours must be between {susp.DEFAULT_WINDOW_HOURS} and {susp.MAX_HOURS}")
            return self.suspicious.request(hours)
        return None

    def close(self) -> None:
        self.suspicious.close()

    def _models(self, store: Store, run: bytes) -> list[ModelInfo]:
        """The run's committed models with their held-out scores, as `fedledger model list` shows
        them (node.store.models.models). Committed rows only ever grow, so the counts of the run's
        commits and evaluations say whether the cached answer is still the ledger's."""
        mark = (len(store.model_rows(run, "commit")), len(store.model_rows(run, "eval")))
        cached = self._runs.get(run)
        if cached is not None and cached[0] == mark:
            self._runs.move_to_end(run)
            return cached[1]
        if not mark[0]:
            return []  # not cached: ids clients make up must not push real runs out
        found = models(store, run)
        self._runs[run] = (mark, found)
        while len(self._runs) > RUN_CACHE:
            self._runs.popitem(last=False)
        return found

    def _download_state(self, model: ModelInfo, recomputed: dict[str, Any]) -> dict[str, Any]:
        fmt = DOWNLOAD_FORMAT.get(model.task, "keras")
        where = {"format": fmt, "url": download_url(model), "filename": download_name(model)}
        if fmt == "json":
            if not recomputed["ok"]:
                return {"state": State.FAILED.value, "detail": recomputed["detail"], **where}
            cached = self._fingerprints.get(model.weights_hash)
            if cached is not None:
                return {"state": State.READY.value, "detail": "ready", "size": len(cached), **where}
            return {"state": State.NONE.value, "detail": "written by this node on request from the "
                    "re-computed fingerprints (numpy, no Keras)", **where}
        if self.exports is None:
            return {"state": State.UNAVAILABLE.value, "detail": "this node serves no downloads", **where}
        job = ExportJob(model.run, model.round, model.task, model.weights_hash)
        return {**self.exports.lookup(job).to_json(), **where}

    def _fingerprints_download(self, store: Store, model: ModelInfo) -> tuple[int, Any]:
        """The fingerprints' JSON export, written here: re-computing the weights from the named
        updates (checked against the committed hash) and writing the JSON is numpy and a few
        milliseconds; the file is kept per model hash."""
        data = self._fingerprints.get(model.weights_hash)
        if data is None:
            try:
                weights = model_weights(store, model)
            except ValueError as exc:
                return 500, {"state": State.FAILED.value, "detail": str(exc), "error": str(exc)}
            devices = run_devices(model.task, find_run(store, run=model.run.hex()).request.params)
            data = fingerprints_text(weights, devices).encode()
            self._fingerprints[model.weights_hash] = data
            while len(self._fingerprints) > FINGERPRINTS_CACHE:
                self._fingerprints.popitem(last=False)
        else:
            self._fingerprints.move_to_end(model.weights_hash)
        return 200, HttpBody("application/json", data, cache_control="private, max-age=86400", headers=(
            ("Content-Disposition", f'attachment; filename="{download_name(model)}"'),))

    def _download(self, job: ExportJob) -> tuple[int, Any]:
        if self.exports is None:
            return json_body(Answer(State.UNAVAILABLE, "this node serves no downloads"))
        answer = self.exports.request(job)
        if answer.state is State.READY and answer.path is not None:
            try:
                data = answer.path.read_bytes()
            except OSError:  # evicted between the lookup and the read
                return json_body(Answer(State.BUSY, "the cached file went away; ask again", retry_after_s=1))
            return 200, HttpBody(KERAS_TYPE, data, cache_control="private, max-age=86400", headers=(
                ("Content-Disposition", f'attachment; filename="{job.filename}"'),))
        return json_body(answer)

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


def download_url(model: ModelInfo) -> str:
    return f"/model/{model.run.hex()}/{model.round}/{DOWNLOAD_FORMAT.get(model.task, 'keras')}"


def download_name(model: ModelInfo) -> str:
    """What the browser saves a model's download as (a .keras file's name is ExportJob.filename)."""
    ext = DOWNLOAD_FORMAT.get(model.task, "keras")
    return f"{model.task}-round{model.round}-run{model.run.hex()[:12]}.{ext}"


def json_body(answer: Answer) -> tuple[int, HttpBody]:
    """A download that is not (yet) a file: JSON, with Retry-After when asking again makes sense."""
    body = {**answer.to_json(), **({"error": answer.detail} if answer.http_status >= 400 else {})}
    headers = (("Retry-After", str(answer.retry_after_s)),) if answer.retry_after_s else ()
    return answer.http_status, HttpBody("application/json", json.dumps(body).encode(), headers=headers)


def run_view(store: Store, run: bytes, found: list[ModelInfo], last: int) -> dict[str, Any] | None:
    """One run and its latest `last` committed rounds: the held-out score aggregated over the
    nodes' signed model_evals (`holdout`, with the baseline), and the training metrics the commit
    carries (`metrics`, the averages of the updates' own)."""
    rec = store.tx(run)
    if rec is None or rec.kind != TrainRequest.KIND:
        return None
    request = parse_tx(rec.raw).body
    assert isinstance(request, TrainRequest)
    info = RunInfo(run, rec.height, rec.signer, request, [m.round for m in found],
                   tuple(handovers(store, run, rec.signer)))
    rounds = [{"round": m.round, "height": m.height, "commit_tx": m.commit_id.hex(),
               "model_hash": m.weights_hash.hex(), "updates": len(m.update_ids), "metrics": dict(m.metrics),
               "holdout": dict(m.holdout), "evaluations": len(m.evaluations),
               "coordinator": short_id(m.coordinator)} for m in found[-last:]]
    return {**info.to_json(), **scored_by(request.task), "models": rounds}


def scored_by(task: str) -> dict[str, str]:
    """Which held-out metric the page plots for `task`, and its baseline's key and name."""
    key, base = HEADLINE.get(task, ("", ""))
    return {"holdout_metric": key, "baseline_metric": base, "baseline": BASELINE_NAMES.get(task, "")}
