"""The run's own rules, enforced by every authority on every model_update and model_commit.

A train_request fixes, for the whole run:

* `min_nodes` (default 2, what the coordinator's strategy waits for): a committed round 1..R names
  updates of at least that many distinct nodes (`too_few_updates`), so a coordinator cannot
  commit a round made of its own update;
* the model's shape: round 0's published model. Every later update has exactly its arrays and
  shapes (`shape_mismatch`), and only finite values (`non_finite`);
* optionally `clip_norm`: the L2 norm of (update - base model) is at most that bound
  (`norm_exceeded`). Honest ClientApps clip to it before signing (federated/clipping.py).

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

from federated.aggregate import Update, aggregate
from federated.clipping import update_norm
from federated.weights import decode_weights, weights_hash
from node.errors import Reason
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
    if req.strategy == "krum" and "krum_f" in req.params:
        return {"f": int(req.params["krum_f"])}
    return {}


def check_run_params(params: dict[str, Any]) -> Reason | None:
    """Values of the rule params a train_request may set (their types are checked in runs.py)."""
    n = params.get("min_nodes", DEFAULT_MIN_NODES)
    if not 1 <= n <= MAX_UPDATE_IDS:
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
        return None  # round 0 defines the model
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

_MODELS: dict[bytes, list[np.ndarray]] = {}


def remember(model_hash: bytes, weights: Sequence[np.ndarray]) -> None:
    """Keep the weights that hash to `model_hash` (checked by the caller), read-only."""
    if model_hash in _MODELS:
        return
    if len(_MODELS) >= MAX_CACHED_MODELS:
        del _MODELS[next(iter(_MODELS))]  # oldest first
    frozen = []
    for w in weights:
        a = np.array(w, dtype=np.float32)
        a.setflags(write=False)
        frozen.append(a)
    _MODELS[model_hash] = frozen


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
    for uid in commit.update_ids:
        urec = view.tx(uid)
        if urec is None:
            return None
        upd = parse_tx(urec.raw).body
        assert isinstance(upd, ModelUpdate)
        updates.append(Update(uid, decode_weights(upd.weights), upd.num_examples))
    if round == 0:
        weights = list(updates[0].weights)
    else:
        weights = aggregate(commit.strategy, updates, **aggregation_params(req))
    if weights_hash(weights) != row.weights_hash:
        return None  # cannot happen for a commit the ledger accepted
    remember(row.weights_hash, weights)
    return _MODELS[row.weights_hash]
