"""The run's own rules, enforced by every authority on every model_update and model_commit.

A train_request fixes, for the whole run:

* `min_nodes` (default 2, what the coordinator's strategy waits for): a committed round 1..R names
  updates of at least that many distinct nodes (`too_few_updates`), so a coordinator cannot
  commit a round made of its own update;
* the model's shape: round 0's published model. Every later update has exactly its arrays and
  shapes (`shape_mismatch`), and only finite values (`non_finite`);
* optionally `clip_norm`: the L2 norm of (update - base model) is at most that bound
  (`norm_exceeded`). Honest ClientApps clip to it before signing (federated/clipping.py);
* its device list, if it names one (`devices` for humidity, `classes` for traceability; sorted
  distinct names, else `malformed`; federated/personal.py, and the Flower app runs the
  personalised models only with one): the model has one personal row per listed device (round
  0's personal arrays have exactly that many rows, else `shape_mismatch`), and when a round is
  aggregated, row r is taken from the
  update of the node that owns device r on the ledger (the first device registered under that
  name), or kept from the previous round's model if that node sent none: a node cannot change
  another owner's device.

The aggregation weight of an update is its `num_examples` on the ledger; runs.py re-computes with
nothing else, and the coordinator's strategy takes the same figure from its replica.

Pure, like the rest of node/ledger: the weights come from the ledger's own txs. The weights of a
committed model are content-addressed by their hash, so a small cache keyed by it is sound.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from federated.aggregate import Personal, Update, aggregate
from federated.clipping import update_norm
from federated.personal import personal_arrays, run_devices
from federated.weights import decode_weights, weights_hash
from node.errors import Reason
from node.ledger.lru import Lru
from node.ledger.transactions import MAX_UPDATE_IDS, ModelCommit, ModelUpdate, TrainRequest, parse_tx

DEFAULT_MIN_NODES = 2  # node/flower/training.py runs with the same default
MAX_CACHED_MODELS = 16


def min_nodes(req: TrainRequest) -> int:
    return int(req.params.get("min_nodes", DEFAULT_MIN_NODES))


def clip_norm(req: TrainRequest) -> float | None:
    value = req.params.get("clip_norm")
    return None if value is None else float(value)


def aggregation_params(req: TrainRequest) -> dict[str, Any]:
    """The run's keyword parameters of federated.aggregate.aggregate."""
    if req.strategy == "fedtrimmedavg" and "beta" in req.params:
        return {"beta": float(req.params["beta"])}
    if req.strategy == "krum":
        return {key: int(req.params[name]) for key, name in (("f", "krum_f"), ("m", "krum_m"))
                if name in req.params}
    return {}


def devices_of(req: TrainRequest) -> list[str]:
    """The run's device list (checked valid when the request was accepted)."""
    return run_devices(req.task, req.params)


def check_run_params(params: dict[str, Any], task: str = "") -> Reason | None:
    """Values of the rule params a train_request may set (their types are checked in runs.py)."""
    try:
        devices = run_devices(task, params)
    except ValueError:
        return Reason.MALFORMED
    if task == "traceability" and len(devices) == 1:
        return Reason.MALFORMED  # one label cannot be told apart from anything
    n = params.get("min_nodes", DEFAULT_MIN_NODES)
    if not 1 <= n <= MAX_UPDATE_IDS:
        return Reason.MALFORMED
    f, m = params.get("krum_f", 0), params.get("krum_m", 1)
    if not (0 <= f < MAX_UPDATE_IDS and 1 <= m <= MAX_UPDATE_IDS):
        return Reason.MALFORMED
    bound = params.get("clip_norm")
    if bound is not None and not (math.isfinite(bound) and bound > 0):
        return Reason.MALFORMED
    cert = params.get("superlink_cert")
    if cert is not None and not (len(cert) == 64 and all(c in "0123456789abcdef" for c in cert)):
        return Reason.MALFORMED
    return None


def check_update_weights(view: Any, req: TrainRequest, body: ModelUpdate) -> Reason | None:
    """The weights of an update (whose hash already matches) against the run's model and bound."""
    try:
        weights = decode_weights(body.weights, finite=False)
    except ValueError:
        return Reason.BAD_WEIGHTS
    if not all(np.all(np.isfinite(w)) for w in weights):
        return Reason.NON_FINITE
    if body.round == 0:
        # Round 0 defines the model, with one personal row per listed device.
        rows = len(devices_of(req))
        for i in personal_arrays(req.task) if rows else ():
            if i >= len(weights) or weights[i].ndim < 1 or weights[i].shape[0] != rows:
                return Reason.SHAPE_MISMATCH
        return None
    initial = committed_weights(view, req, body.run, 0)
    if initial is None:
        return Reason.WRONG_ROUND
    if [w.shape for w in weights] != [w.shape for w in initial]:
        return Reason.SHAPE_MISMATCH
    bound = clip_norm(req)
    if bound is not None:
        base = committed_weights(view, req, body.run, body.round - 1)
        if base is None:
            return Reason.WRONG_ROUND
        if update_norm(weights, base) > bound:
            return Reason.NORM_EXCEEDED
    return None


def check_quorum(req: TrainRequest, round: int, nodes: Iterable[bytes]) -> Reason | None:
    """A committed round 1..R aggregates updates of at least min_nodes distinct nodes."""
    if round > 0 and len(set(nodes)) < min_nodes(req):
        return Reason.TOO_FEW_UPDATES
    return None


# --- the weights of committed models ---------------------------------------------------------


def named_devices(view: Any, names: Sequence[str]) -> list[Any]:
    """The device each name stands for in a run's list: of the devices registered under a name, the
    first (lowest registration height, then key); None for a name nobody registered.
    Registrations are never undone, so once a name has a device it keeps it."""
    first: dict[str, Any] = {}
    wanted = set(names)
    for dev in view.devices():
        if dev.name in wanted:
            seen = first.get(dev.name)
            if seen is None or (dev.registered_height, dev.device) < (seen.registered_height, seen.device):
                first[dev.name] = dev
    return [first.get(n) for n in names]


def device_owners(view: Any, names: Sequence[str]) -> list[bytes | None]:
    """The owner node of each named device (named_devices), None for an unregistered name."""
    return [None if dev is None else dev.owner for dev in named_devices(view, names)]


def round_aggregate(view: Any, req: TrainRequest, run: bytes, round: int,
                    updates: Sequence[Update], nodes: dict[bytes, bytes], strategy: str) -> list[np.ndarray]:
    """The aggregate of round `round` >= 1 from `updates` (whose nodes are `nodes`), as every
    replica computes it: the run's strategy on the shared arrays, the personal rows from their
    owners' updates or the previous round's model. ValueError if it cannot be computed."""
    arrays = personal_arrays(req.task)
    names = devices_of(req)
    if not arrays or not names:
        return aggregate(strategy, updates, **aggregation_params(req))
    base = committed_weights(view, req, run, round - 1)
    if base is None:
        raise ValueError(f"round {round - 1} of the run is not committed")
    owners = device_owners(view, names)
    return aggregate(strategy, updates, Personal(arrays, base, owners, nodes), **aggregation_params(req))


_MODELS: Lru[bytes, list[np.ndarray]] = Lru(MAX_CACHED_MODELS)


def remember(model_hash: bytes, weights: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Keep the weights that hash to `model_hash` (checked by the caller), read-only; returns them."""
    cached = _MODELS.get(model_hash)
    if cached is not None:
        return cached
    frozen = []
    for w in weights:
        a = np.array(w, dtype=np.float32)
        a.setflags(write=False)
        frozen.append(a)
    _MODELS.put(model_hash, frozen)
    return frozen


def committed_weights(view: Any, req: TrainRequest, run: bytes, round: int) -> list[np.ndarray] | None:
    """The weights committed for (run, round), re-computed from the ledger's updates, or None."""
    row = view.model_commit(run, round)
    if row is None:
        return None
    cached = _MODELS.get(row.weights_hash)
    if cached is not None:
        return cached
    rec = view.tx(row.tx_id)
    if rec is None:
        return None
    commit = parse_tx(rec.raw).body
    assert isinstance(commit, ModelCommit)
    updates: list[Update] = []
    nodes: dict[bytes, bytes] = {}
    for uid in commit.update_ids:
        urec = view.tx(uid)
        if urec is None:
            return None
        upd = parse_tx(urec.raw).body
        assert isinstance(upd, ModelUpdate)
        updates.append(Update(uid, decode_weights(upd.weights), upd.num_examples))
        nodes[uid] = upd.node
    if round == 0:
        weights = list(updates[0].weights)
    else:
        weights = round_aggregate(view, req, run, round, updates, nodes, commit.strategy)
    if weights_hash(weights) != row.weights_hash:
        return None  # cannot happen for a commit the ledger accepted
    return remember(row.weights_hash, weights)
