"""The ledger rule for `model_eval`: a node's signed score of a committed model on its held-out readings.

Every committed round's global model is scored by the nodes that train, each on its own held-out
readings (node/ledger/holdout.py), which no node trained on in any round. A `model_eval` names the
round, the committed weights it scored, its data cut, and the size and Merkle root of the held-out
set at that cut, which every replica re-computes (node/ledger/provenance.py): the learning curve
on the ledger is attributable to its signers and tied to data the ledger can name. The metric
values themselves are the signer's word (computing them needs the model, i.e. Keras, which the
node never imports); anyone can re-score with `fedledger model evaluate`.
"""

from __future__ import annotations

from typing import Any, Protocol

from node.errors import Reason
from node.ledger.provenance import ProvenanceView, check_eval_provenance
from node.ledger.runs import TRAINING_ROLES, ModelRow, RunView, run_request
from node.ledger.transactions import ModelEval


class EvalView(RunView, ProvenanceView, Protocol):
    def model_eval(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...


def check_model_eval(view: EvalView, body: ModelEval) -> Reason | None:
    member: Any = view.member(body.node)
    if member is None or member.role not in TRAINING_ROLES:
        return Reason.UNAUTHORIZED
    req = run_request(view, body.run)
    if req is None or req.task != body.task:
        return Reason.UNKNOWN_RUN
    commit = view.model_commit(body.run, body.round)
    if commit is None or commit.weights_hash != body.model_hash:
        return Reason.UNKNOWN_MODEL
    if view.model_eval(body.run, body.round, body.node) is not None:
        return Reason.DUPLICATE_EVAL
    return check_eval_provenance(view, body)
