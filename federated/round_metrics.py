"""A round's metrics: the weighted mean of its updates' metrics, the same bytes on every machine.

Used by the ServerApp's strategy (federated/flower/fl_strategy.py) and by a node that commits an
open round straight from the updates already on the ledger after taking a run over
(node/flower/takeover.py), so both compute a commit's metrics alike. No Flower, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

NUM_EXAMPLES = "num-examples"


def deterministic_metrics(items: list[tuple[bytes, int, Mapping[str, float]]]) -> dict[str, float]:
    """Weighted (by num-examples) mean of every metric that all items carry, in update-id order
    with math.fsum: the same bytes on every machine. ``num-examples`` becomes the total."""
    items = sorted(items, key=lambda t: t[0])
    if not items:
        return {}
    keys = set(items[0][2])
    for _, _, m in items[1:]:
        keys &= set(m)
    total = sum(n for _, n, _ in items)
    out: dict[str, float] = {}
    for k in sorted(keys):
        if k == NUM_EXAMPLES:
            continue
        out[k] = math.fsum(float(n) * float(m[k]) for _, n, m in items) / float(total)
    out[NUM_EXAMPLES] = float(total)
    return out
