"""Read-only views of the training runs and models on a replica (status, `fedledger model`, launch).

Everything comes from committed transactions, so any replica answers the same; the weights of a
committed model are re-computed from the updates it names (the same deterministic aggregation
every authority ran before the commit was final).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from federated import evaluation
from federated.aggregate import Update
from federated.weights import Weights, decode_weights, weights_hash
from node.ledger.holdout import RULE as HOLDOUT_RULE
from node.ledger.keys import short_id
from node.ledger.run_rules import round_aggregate
from node.ledger.storage import Store
from node.ledger.transactions import ModelCommit, ModelEval, ModelUpdate, RunHandover, TrainRequest, parse_tx


@dataclass(frozen=True)
class HandoverInfo:
    """A run handed to another coordinator (or a coordinator moving its own SuperLink), at a round."""

    round: int  # the run's open round when it was handed over
    height: int
    time_ms: int
    tx: bytes
    previous: bytes  # the coordinator before
    coordinator: bytes  # the coordinator from then on
    superlink: str

    def to_json(self) -> dict[str, Any]:
        return {"round": self.round, "height": self.height, "time_ms": self.time_ms, "tx": self.tx.hex(),
                "from": short_id(self.previous), "to": short_id(self.coordinator),
                "superlink": self.superlink, "restart": self.previous == self.coordinator}


def handovers(store: Store, run: bytes, first: bytes) -> list[HandoverInfo]:
    """The run's handovers in ledger order (`first`: the request's signer)."""
    out: list[HandoverInfo] = []
    previous = first
    for row in store.model_rows(run, "handover"):
        rec = store.tx(row.tx_id)
        assert rec is not None
        body = parse_tx(rec.raw).body
        assert isinstance(body, RunHandover)
        out.append(HandoverInfo(body.round, row.height, store.block_time(row.height) or 0, row.tx_id,
                                previous, body.authority, body.superlink))
        previous = body.authority
    return out


@dataclass(frozen=True)
class RunInfo:
    run: bytes
    height: int
    coordinator: bytes  # who signed the request (the run's first coordinator)
    request: TrainRequest
    committed: list[int]  # committed rounds, 0 = the initial model
    handovers: tuple[HandoverInfo, ...] = ()

    @property
    def last_round(self) -> int:
        return max(self.committed, default=-1)

    @property
    def complete(self) -> bool:
        return self.last_round >= self.request.rounds

    @property
    def current_coordinator(self) -> bytes:
        return self.handovers[-1].coordinator if self.handovers else self.coordinator

    def to_json(self) -> dict[str, Any]:
        r = self.request
        return {
            "run": self.run.hex(),
            "task": r.task,
            "strategy": r.strategy,
            "rounds": r.rounds,
            "committed_rounds": max(0, self.last_round),
            "complete": self.complete,
            "coordinator": short_id(self.current_coordinator),
            "requested_by": short_id(self.coordinator),
            "handovers": [h.to_json() for h in self.handovers],
            "height": self.height,
            "params": dict(r.params),
        }


def runs(store: Store) -> list[RunInfo]:
    return latest_runs(store, None)[0]


def latest_runs(store: Store, last: int | None) -> tuple[list[RunInfo], int]:
    """The `last` training runs (all if None) in ledger order, and how many there are: rounds are
    looked up only for those listed (/status must not do work for the whole history)."""
    out = []
    recs = store.txs_of_kind(TrainRequest.KIND)
    for rec in recs if last is None else recs[-last:]:
        out.append(run_info(store, rec))
    return out, len(recs)


def run_info(store: Store, rec: Any) -> RunInfo:
    """The run of train_request record `rec`."""
    body = parse_tx(rec.raw).body
    assert isinstance(body, TrainRequest)
    rounds = [m.round for m in store.model_rows(rec.id, "commit")]
    return RunInfo(rec.id, rec.height, rec.signer, body, rounds, tuple(handovers(store, rec.id, rec.signer)))


def find_run(store: Store, task: str | None = None, run: str | None = None) -> RunInfo:
    """The run named by a hex prefix (which must be of `task` if given), else the latest run of
    `task`, else the latest run."""
    all_runs = runs(store)
    if run:
        found = [r for r in all_runs if r.run.hex().startswith(run.lower())]
        if task is not None and found:
            of_task = [r for r in found if r.request.task == task]
            if not of_task:
                raise LookupError(f"run {run!r} is a {found[0].request.task} run, not {task}")
            found = of_task
        if len(found) != 1:
            raise LookupError(f"{'no' if not found else 'more than one'} run matches {run!r}")
        return found[0]
    found = [r for r in all_runs if task is None or r.request.task == task]
    if not found:
        raise LookupError(f"no training run{f' of task {task!r}' if task else ''} on this ledger")
    return found[-1]


@dataclass(frozen=True)
class ModelInfo:
    run: bytes
    task: str
    round: int
    strategy: str
    weights_hash: bytes
    height: int
    time_ms: int
    commit_id: bytes
    update_ids: tuple[bytes, ...]
    metrics: dict[str, float]
    # The nodes' signed scores on their held-out readings, aggregated (federated/evaluation.py).
    holdout: dict[str, float] = field(default_factory=dict)
    evaluations: tuple[dict[str, Any], ...] = ()
    coordinator: bytes = b""  # who committed it: the run's coordinator at that round

    def to_json(self) -> dict[str, Any]:
        return {
            "run": self.run.hex(),
            "task": self.task,
            "round": self.round,
            "strategy": self.strategy,
            "model_hash": self.weights_hash.hex(),
            "height": self.height,
            "time_ms": self.time_ms,
            "commit_tx": self.commit_id.hex(),
            "coordinator": short_id(self.coordinator) if self.coordinator else None,
            "updates": len(self.update_ids),
            "metrics": dict(self.metrics),
            "holdout": dict(self.holdout),
            "evaluations": [dict(e) for e in self.evaluations],
        }


def evaluations(store: Store, run: bytes | None = None) -> dict[tuple[bytes, int], list[dict[str, Any]]]:
    """The committed model_evals per (run, round), in ledger order."""
    out: dict[tuple[bytes, int], list[dict[str, Any]]] = {}
    for row in store.model_rows(run, "eval"):
        rec = store.tx(row.tx_id)
        assert rec is not None
        body = parse_tx(rec.raw).body
        assert isinstance(body, ModelEval)
        out.setdefault((body.run, body.round), []).append({
            "tx": row.tx_id.hex(), "node": short_id(body.node), "height": row.height,
            "data_cut": body.data_cut, "num_examples": body.num_examples,
            "readings_root": body.readings_root.hex(), "metrics": dict(body.metrics),
        })
    return out


def models(store: Store, run: bytes | None = None) -> list[ModelInfo]:
    out = []
    evals = evaluations(store, run)
    for row in store.model_rows(run, "commit"):
        rec = store.tx(row.tx_id)
        assert rec is not None
        body = parse_tx(rec.raw).body
        assert isinstance(body, ModelCommit)
        time_ms = store.block_time(row.height)
        scored = evals.get((body.run, body.round), [])
        holdout = evaluation.aggregate(
            body.task, [(bytes.fromhex(e["tx"]), e["num_examples"], e["metrics"]) for e in scored]
        )
        out.append(ModelInfo(body.run, body.task, body.round, body.strategy, body.weights_hash, row.height,
                             time_ms or 0, row.tx_id, body.update_ids, dict(body.metrics), holdout,
                             tuple(scored), body.coordinator))
    return out


def find_model(store: Store, task: str | None, round: int | None, run: str | None = None) -> ModelInfo:
    """The committed model of `round` (default: the latest) of the chosen run (see find_run)."""
    info = find_run(store, task, run)
    found = models(store, info.run)
    if not found:
        raise LookupError(f"run {info.run.hex()[:12]} has no committed model yet")
    if round is None:
        return found[-1]
    for m in found:
        if m.round == round:
            return m
    raise LookupError(f"run {info.run.hex()[:12]} ({info.request.task}) has no committed round {round}; "
                      f"committed: {[m.round for m in found]}")


def updates_of(store: Store, model: ModelInfo) -> list[tuple[bytes, int, ModelUpdate]]:
    """(tx id, height, body) of every update the model names, in the commit's order."""
    out = []
    for uid in model.update_ids:
        rec = store.tx(uid)
        assert rec is not None  # the ledger only accepted the commit because they exist
        body = parse_tx(rec.raw).body
        assert isinstance(body, ModelUpdate)
        out.append((uid, rec.height, body))
    return out


def model_weights(store: Store, model: ModelInfo) -> Weights:
    """Re-compute the committed weights from the named updates and check their hash."""
    ups = updates_of(store, model)
    if model.round == 0:
        weights = decode_weights(ups[0][2].weights)
    else:
        info = find_run(store, run=model.run.hex())
        weights = round_aggregate(
            store, info.request, model.run, model.round,
            [Update(uid, decode_weights(b.weights), b.num_examples) for uid, _, b in ups],
            {uid: b.node for uid, _, b in ups}, model.strategy,
        )
    if weights_hash(weights) != model.weights_hash:
        raise ValueError(f"re-computed round {model.round} weights differ from the commit (damaged replica?)")
    return weights


def lineage(store: Store, model: ModelInfo) -> dict[str, Any]:
    names = {m.key: m.name for m in store.members()}
    info = find_run(store, run=model.run.hex())
    took_over = [h for h in info.handovers if h.round <= model.round]
    return {
        **model.to_json(),
        "coordinator": short_id(model.coordinator),
        # How the committer came to coordinate this round: the latest handover at or before it.
        "coordinator_since": took_over[-1].to_json() if took_over else None,
        "request": info.to_json(),
        "base_model": None if model.round == 0 else _base_hash(store, model),
        "updates": [
            {
                "tx": uid.hex(),
                "height": height,
                "node": short_id(b.node),
                "node_name": names.get(b.node, ""),
                "base_model_hash": b.base_model_hash.hex(),
                "weights_hash": b.weights_hash.hex(),
                "num_examples": b.num_examples,
                "readings_root": b.readings_root.hex(),
                "data_cut": b.data_cut,
                # Every replica re-computed num_examples and readings_root from its own readings
                # before accepting the update (node/ledger/provenance.py); round 0 trains on nothing.
                "provenance": "verified" if model.round > 0 else "initial model, no data",
                "metrics": dict(b.metrics),
            }
            for uid, height, b in updates_of(store, model)
        ],
        "holdout_rule": HOLDOUT_RULE,
    }


def _base_hash(store: Store, model: ModelInfo) -> str | None:
    prev = store.model_commit(model.run, model.round - 1)
    return prev.weights_hash.hex() if prev else None


def common_holdout_curve(store: Store, run: bytes) -> dict[str, Any] | None:
    """Every committed round of `run` scored on one and the same set: the held-out readings
    (node/ledger/holdout.py) of the run's listed devices on this replica now, with the baseline
    from their training readings. The nodes' own signed scores (`holdout` of each model) are each
    taken at that round's data cut, so a streaming federation scores later rounds on more, and
    later, hours; this curve compares the rounds on equal terms. Numpy only (the humidity model is
    linear, the fingerprints are numpy); reads every reading of the listed devices, so it is for
    the CLI and the launcher, not for the node's request path. None without a device list."""
    from federated import tasks
    from federated.personal import run_devices
    from node.ledger.holdout import Split, split_of
    from node.ledger.run_rules import named_devices

    info = find_run(store, run=run.hex())
    task = info.request.task
    names = run_devices(task, info.request.params)
    if not names:
        return None
    train: list[tuple[Any, ...]] = []
    held: list[tuple[Any, ...]] = []
    for name, dev in zip(names, named_devices(store, names), strict=True):
        if dev is None:
            continue
        for r in store.readings(dev.device):
            row = (name, r.seq, r.timestamp_ms, r.temperature_c, r.humidity_pct)
            side = split_of(r.timestamp_ms)
            if side is Split.TRAIN:
                train.append(row)
            elif side is Split.HOLDOUT:
                held.append(row)
    if not held or not train:
        return None
    points = []
    for m in models(store, run):
        try:
            metrics = tasks.evaluate(task, model_weights(store, m), held, names, held)
            metrics.update(evaluation.baseline(task, train, held, names))
        except ValueError:
            continue
        points.append({"round": m.round, "metrics": metrics})
    return {"task": task, "holdout_readings": len(held), "devices": names, "rounds": points}
