"""What a node does about a run whose coordinator changed or stopped: read on the ledger, signed
with the node's key. Runs on the node's event loop thread (the store is read there only); the
Flower processes are node/flower/training.py's.

* ``handover_due``: whether it is this authority's turn to take a stalled run over (the ledger's
  rule, node/ledger/handover.py, on this node's clock).
* ``make_handover``: the signed `run_handover` naming this node's SuperLink (address and
  certificate hash): taking a run over, or a coordinator moving its own SuperLink after its Flower
  processes died.
* ``plan_start``: how the coordinator's ServerApp starts. A fresh run publishes round 0. A run in
  progress resumes at its open round r from the model committed for r - 1, which every replica
  re-computes from the ledger. The rule for the updates already final for r: if they come from at
  least `min_nodes` nodes, the coordinator commits r from exactly those at once (no Flower round:
  the work was done before its predecessor stopped) and resumes at r + 1; otherwise every node is
  asked for round r again, and a node whose update is already final replies with that update
  instead of training (the ledger takes one update per node and round; federated/flower/fl_client.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from federated.aggregate import Update
from federated.round_metrics import deterministic_metrics
from federated.weights import decode_weights, encode_weights, weights_hash
from node.ledger.handover import RunControl, turn_of
from node.ledger.keys import NodeKey
from node.ledger.run_rules import committed_weights, min_nodes, round_aggregate
from node.ledger.storage import Store
from node.ledger.transactions import ModelUpdate, make_model_commit, make_run_handover, parse_tx

HANDOVER_MARGIN_MS = 500  # submit this long after our turn began, so most proposers' clocks agree


@dataclass(frozen=True)
class StartPlan:
    """Where the coordinator's ServerApp starts: at `resume_round` (0: a fresh run, which publishes
    round 0; r > 0: rounds r..R) from `weights`, the FLW1 model committed for round r - 1. With a
    `commit` (the open round committed from the ledger's updates), the ServerApp starts after it is
    final at r + 1 from `committed` (its model; None when that completes the run), and at r from
    `weights` if it is not final in time."""

    resume_round: int
    weights: bytes | None
    commit: dict[str, Any] | None = None
    committed: bytes | None = None


def handover_due(store: Store, ctl: RunControl, me: bytes, now_ms: int) -> bool:
    """Whether `me`, an authority other than the coordinator, may take the run over now."""
    if ctl.complete or ctl.coordinator == me or store.model_handover(ctl.run, ctl.open_round, me):
        return False
    turn = turn_of(store, ctl, me, store.height() + 1, now_ms)
    return turn is not None and now_ms >= turn + HANDOVER_MARGIN_MS


def make_handover(key: NodeKey, chain_id: str, ctl: RunControl, superlink: str, cert_sha256: str
                  ) -> dict[str, Any]:
    return make_run_handover(key, chain_id, ctl.run, ctl.open_round, superlink, bytes.fromhex(cert_sha256))


def open_round_updates(store: Store, run: bytes, round: int) -> list[tuple[bytes, ModelUpdate]]:
    """The final updates of (run, round), in tx id order (the order every aggregation uses)."""
    out = []
    for row in store.model_rows(run, "update"):
        if row.round != round:
            continue
        rec = store.tx(row.tx_id)
        assert rec is not None
        body = parse_tx(rec.raw).body
        assert isinstance(body, ModelUpdate)
        out.append((row.tx_id, body))
    return sorted(out, key=lambda u: u[0])


def plan_start(store: Store, key: NodeKey, chain_id: str, ctl: RunControl) -> StartPlan:
    req = ctl.request
    r = ctl.open_round
    if r == 0:
        return StartPlan(0, None)
    base = committed_weights(store, req, ctl.run, r - 1)
    if base is None:  # cannot happen on a replica that accepted the commit
        raise ValueError(f"the model of round {r - 1} cannot be re-computed from this replica")
    updates = open_round_updates(store, ctl.run, r)
    if len({u.node for _, u in updates}) < min_nodes(req):
        return StartPlan(r, encode_weights(base))
    # As every replica re-computes it: personal rows from their owners (run_rules.round_aggregate).
    model = round_aggregate(store, req, ctl.run, r,
                            [Update(uid, decode_weights(u.weights), u.num_examples) for uid, u in updates],
                            {uid: u.node for uid, u in updates}, req.strategy)
    metrics = deterministic_metrics([(uid, u.num_examples, u.metrics) for uid, u in updates])
    commit = make_model_commit(key, chain_id, ctl.run, req.task, r, req.strategy, [uid for uid, _ in updates],
                               weights_hash(model), metrics)
    return StartPlan(r, encode_weights(base), commit, None if r >= req.rounds else encode_weights(model))
