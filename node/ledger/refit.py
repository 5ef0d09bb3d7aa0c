"""Re-fitting updates whose local training is a deterministic function of the ledger's readings.

A traceability update (federated/fingerprint.py) is sufficient statistics of the node's training
readings at its data cut, relative to every listed device's training readings at the same cut.
Both sets are on every replica, so there is exactly one honest update, and every authority re-fits
it from its own replica and refuses an update that differs (`refit_mismatch`). Whatever a node
does to its weights (scale, flip or noise the shared statistics, commit another device's
fingerprint as its own device's) is refused; what is left to a malicious member is the readings its
own devices sign (data poisoning), which the strategy and the suspicious view have to face.

Humidity trains a Keras model by SGD from the previous round's model: its result is neither
reproducible bit for bit across machines nor cheap to re-run, so those updates are bounded by the
run's rules (clip_norm, the strategy) instead.

The verdict is cached per (update weights, node, anchor of the cut, base model): a replica checks
an update at mempool admission and again in the block that carries it, and readings at heights
<= cut never change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from federated import fingerprint
from federated.clipping import clip_update
from federated.weights import decode_weights
from node.errors import Reason
from node.ledger import run_rules
from node.ledger.lru import Lru
from node.ledger.provenance import named_row, partition
from node.ledger.transactions import ModelUpdate, TrainRequest

REFITTED_TASKS = ("traceability",)
# Relative to each array's largest magnitude. The same float64 sums rounded to float32 agree to
# about 1e-7 (another machine's numpy may order a sum differently); an attack that moves a
# statistic by less than 1e-4 of its largest value moves no window's likelihood noticeably.
TOLERANCE = 1e-4
MAX_CACHED = 256

Row = list[Any]  # (device name, seq, timestamp_ms, temperature_c, humidity_pct), as the ClientApp loads it

_verdicts: Lru[tuple[bytes, bytes, int, bytes, bytes], Reason | None] = Lru(MAX_CACHED)


def applies(req: TrainRequest, body: ModelUpdate) -> bool:
    return req.task in REFITTED_TASKS and body.round > 0


def _training_rows(view: Any, devices: Sequence[Any], cut: int) -> list[Row]:
    """The training rows (the held-out rule applied) of `devices` at `cut`, named by device name,
    in (device key, seq) order: what node/flower's ClientApp loads (fl_ledger.NodeLink.own_rows)."""
    found = [(tid, dev.device, seq, ts, dev.name, t, h)
             for dev in devices for tid, seq, ts, t, h in view.device_readings(dev.device, cut)]
    train, _ = partition(found)
    return [named_row(r) for r in train]


def refit(view: Any, req: TrainRequest, body: ModelUpdate, base: Sequence[np.ndarray]) -> list[np.ndarray]:
    """The honest update of `body.node` at `body.data_cut` (num_examples already verified); ValueError
    where no honest update exists (readings of a device the run does not list)."""
    names = run_rules.devices_of(req)
    own = sorted((d for d in view.devices() if d.owner == body.node), key=lambda d: d.device)
    rows = _training_rows(view, own, body.data_cut)
    listed = [d for d in run_rules.named_devices(view, names) if d is not None]
    context = _training_rows(view, sorted(listed, key=lambda d: d.device), body.data_cut)
    # As the ClientApp trains (federated/tasks.py train): no context rows means its own rows.
    weights = fingerprint.fit(names, rows, context or rows, body.num_examples, base=base)
    bound = run_rules.clip_norm(req)
    return clip_update(weights, base, bound) if bound is not None else weights


def deviation(weights: Sequence[np.ndarray], expected: Sequence[np.ndarray]) -> float:
    """The largest difference of an array from the expected one, relative to that array's largest
    magnitude."""
    worst = 0.0
    for w, e in zip(weights, expected, strict=True):
        a, b = np.asarray(w, np.float64), np.asarray(e, np.float64)
        if a.shape != b.shape:
            return float("inf")
        if a.size:
            worst = max(worst, float(np.max(np.abs(a - b))) / max(float(np.max(np.abs(b))), 1e-30))
    return worst


def check_refit(view: Any, req: TrainRequest, body: ModelUpdate) -> Reason | None:
    """None if the update is the re-fit of its node's readings (or its task is not re-fitted)."""
    if not applies(req, body):
        return None
    key = (body.weights_hash, body.node, body.data_cut, view.block_hash(body.data_cut) or b"",
           body.base_model_hash)
    found, cached = _verdicts.lookup(key)
    if found:
        return cached
    base = run_rules.committed_weights(view, req, body.run, body.round - 1)
    if base is None:
        return Reason.WRONG_ROUND
    try:
        expected = refit(view, req, body, base)
        off = deviation(decode_weights(body.weights), expected)
        verdict = None if off <= TOLERANCE else Reason.REFIT_MISMATCH
    except ValueError:
        verdict = Reason.REFIT_MISMATCH
    _verdicts.put(key, verdict)
    return verdict
