"""Training runs on the ledger: the rules that tie train requests, model updates and commits.

A `train_request` (from an authority) opens a run; its tx id is the run id and its signer is the
run's coordinator, until a `run_handover` names another (handover.py). Round 0 is the initial
model: the coordinator publishes it as a `model_update` and commits it alone, so every later model
has a lineage that ends on the ledger.
For rounds 1..R every member that trains submits at most one `model_update` whose base is exactly
the weights committed for the previous round; the coordinator's `model_commit` for the round
names the updates it aggregated, and every replica re-computes that aggregation before it accepts
the commit. Rounds are committed in order and once.

Pure functions over a read-only view, like the rest of node/state.py.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Protocol

from federated.aggregate import STRATEGIES, Update
from federated.weights import decode_weights, weights_hash
from node.errors import Reason
from node.ledger import handover, refit, run_rules
from node.ledger.provenance import check_update_provenance
from node.ledger.run_rules import round_aggregate
from node.ledger.transactions import ModelCommit, ModelUpdate, TrainRequest, parse_tx

TASKS = ("humidity", "traceability")  # federated/tasks.py; repeated so the node never imports Keras code
TRAINING_ROLES = ("authority", "participant")

# What a train request may set, with the type each value must have. Unknown keys are refused so a
# typo cannot silently fall back to a default on some nodes.
PARAM_TYPES: dict[str, tuple[type, ...]] = {
    "superlink": (str,),
    "min_nodes": (int,),
    "epochs": (int,),
    "batch_size": (int,),
    "learning_rate": (float, int),
    "patience": (int,),
    "seed": (int,),
    "beta": (float, int),
    "krum_f": (int,),
    "krum_m": (int,),  # Multi-Krum: how many best-scored updates are averaged (default 1)
    "fraction_evaluate": (float, int),
    "classes": (str,),  # traceability: the run's device list (federated/personal.py)
    "devices": (str,),  # humidity: the devices with a personal line
    "clip_norm": (float, int),
    "superlink_cert": (str,),  # hex SHA-256 of the SuperLink's TLS certificate (node/flower/tls.py)
    "handover_timeout": (int,),  # seconds; when the authorities take a stalled run over (handover.py)
}


@dataclass(frozen=True)
class ModelRow:
    """Index row of a model_update or model_commit (the tx itself is in the txs table)."""

    kind: str  # "update" | "commit" | "eval"
    tx_id: bytes
    height: int
    run: bytes
    round: int
    node: bytes  # the update's or evaluation's node, or the commit's coordinator
    weights_hash: bytes  # an eval's: the committed model it scored


class RunView(Protocol):
    def member(self, key: bytes) -> Any: ...

    def tx(self, tx_id: bytes) -> Any: ...

    def model_commit(self, run: bytes, round: int) -> ModelRow | None: ...

    def model_update(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...

    def latest_model_row(self, run: bytes, kind: str) -> ModelRow | None: ...

    def devices(self) -> list[Any]: ...


def run_request(view: RunView, run: bytes) -> TrainRequest | None:
    rec = view.tx(run)
    if rec is None or rec.kind != TrainRequest.KIND:
        return None
    body = parse_tx(rec.raw).body
    assert isinstance(body, TrainRequest)
    return body


def check_train_request(body: TrainRequest) -> Reason | None:
    if body.task not in TASKS or body.strategy not in STRATEGIES:
        return Reason.MALFORMED
    for key, value in body.params.items():
        types = PARAM_TYPES.get(key)
        if types is None or isinstance(value, bool) or not isinstance(value, types):
            return Reason.MALFORMED
    return run_rules.check_run_params(body.params, body.task) or handover.check_timeout_param(body.params)


def check_model_update(view: RunView, body: ModelUpdate) -> Reason | None:
    member = view.member(body.node)
    if member is None or member.role not in TRAINING_ROLES:
        return Reason.UNAUTHORIZED
    if hashlib.sha256(body.weights).digest() != body.weights_hash or body.num_examples < 1:
        return Reason.BAD_WEIGHTS
    req = run_request(view, body.run)
    if req is None or req.task != body.task:
        return Reason.UNKNOWN_RUN
    if body.round == 0 and body.node != handover.current_coordinator(view, body.run, req):
        return Reason.NOT_COORDINATOR  # only the coordinator publishes the initial model
    if body.round > req.rounds:
        return Reason.WRONG_ROUND
    if view.model_commit(body.run, body.round) is not None:
        return Reason.ROUND_COMMITTED
    if body.round > 0:
        base = view.model_commit(body.run, body.round - 1)
        if base is None:
            return Reason.WRONG_ROUND
        if base.weights_hash != body.base_model_hash:
            return Reason.BASE_MISMATCH
    if view.model_update(body.run, body.round, body.node) is not None:
        return Reason.DUPLICATE_UPDATE
    if (reason := run_rules.check_update_weights(view, req, body)) is not None:
        return reason
    # Last: the rules that read the node's readings (num_examples and readings_root re-computed,
    # then, for a deterministic task, the whole update re-fitted from them).
    if (reason := check_update_provenance(view, body)) is not None:  # type: ignore[arg-type]
        return reason
    return refit.check_refit(view, req, body)


def check_model_commit(view: RunView, body: ModelCommit, signer: bytes) -> Reason | None:
    """Every replica re-computes the aggregation from the updates on its own ledger; a commit is
    valid only if that gives exactly the committed weights (bytes of the canonical encoding)."""
    ids = body.update_ids
    if not ids or len(set(ids)) != len(ids):
        return Reason.MALFORMED
    req = run_request(view, body.run)
    if req is None or req.task != body.task:
        return Reason.UNKNOWN_RUN
    if signer != handover.current_coordinator(view, body.run, req):
        return Reason.NOT_COORDINATOR  # never the request's signer once the run was handed over
    if body.strategy != req.strategy:
        return Reason.MALFORMED
    if body.round > req.rounds:
        return Reason.WRONG_ROUND
    if view.model_commit(body.run, body.round) is not None:
        return Reason.ROUND_COMMITTED
    if body.round > 0 and view.model_commit(body.run, body.round - 1) is None:
        return Reason.WRONG_ROUND
    updates: list[Update] = []
    hashes: list[bytes] = []
    nodes: list[bytes] = []
    node_of: dict[bytes, bytes] = {}
    for uid in ids:
        row = view.tx(uid)
        if row is None or row.kind != ModelUpdate.KIND:
            return Reason.UNKNOWN_UPDATE
        upd = parse_tx(row.raw).body
        assert isinstance(upd, ModelUpdate)
        if upd.run != body.run or upd.round != body.round:
            return Reason.UNKNOWN_UPDATE
        # The weight is the ledger's num_examples, never a figure from outside the ledger.
        updates.append(Update(uid, decode_weights(upd.weights), upd.num_examples))
        hashes.append(upd.weights_hash)
        nodes.append(upd.node)
        node_of[uid] = upd.node
    quorum = run_rules.check_quorum(req, body.round, nodes)
    if quorum is not None:
        return quorum
    if body.round == 0:
        # The initial model is published, not aggregated.
        if len(updates) != 1:
            return Reason.MALFORMED
        committed = hashes[0]
    else:
        try:
            model = round_aggregate(view, req, body.run, body.round, updates, node_of, body.strategy)
        except ValueError:
            return Reason.AGGREGATE_MISMATCH
        committed = weights_hash(model)
        if committed == body.weights_hash:
            run_rules.remember(committed, model)  # the next round's updates are checked against it
    if committed != body.weights_hash:
        return Reason.AGGREGATE_MISMATCH
    return None
