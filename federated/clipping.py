"""Update norm and clipping, the same numbers on every machine.

A run may bound how far one update moves the model: the L2 norm of (update - base) over all
arrays must be at most the run's `clip_norm`. Every authority checks the bound on the weights in
the model_update (node/ledger/run_rules.py), and an honest ClientApp clips its update to it before
signing, so the bound caps what any one node can contribute (norm clipping against scaled or
boosted updates).

Deterministic like federated/aggregate.py: float64 from the float32 canonical arrays, only
correctly rounded operations (elementwise `-` and `*`, `math.fsum`, `math.sqrt`), so the norm is
the same bits wherever it is computed. Pure numpy, no TensorFlow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from federated.weights import Weights, canonical_array


def update_norm(weights: Sequence[np.ndarray], base: Sequence[np.ndarray]) -> float:
    """L2 norm of `weights - base` over all arrays; ValueError if their shapes differ."""
    if len(weights) != len(base):
        raise ValueError(f"{len(weights)} arrays against a base of {len(base)}")
    parts: list[float] = []
    for w, b in zip(weights, base, strict=True):
        w64 = np.asarray(w, dtype=np.float32).astype(np.float64)
        b64 = np.asarray(b, dtype=np.float32).astype(np.float64)
        if w64.shape != b64.shape:
            raise ValueError(f"array of shape {w64.shape} against a base of shape {b64.shape}")
        d = (w64 - b64).ravel()
        parts.append(math.fsum((d * d).tolist()))
    return math.sqrt(math.fsum(parts))


def clip_update(weights: Sequence[np.ndarray], base: Sequence[np.ndarray], bound: float) -> Weights:
    """`weights` moved towards `base` so that update_norm(result, base) <= bound (float32 arrays).

    Unchanged (canonicalised) when already within the bound. The float32 cast can round the
    scaled delta a hair above the bound, so the scale shrinks until the checked norm is within it.
    """
    if not (isinstance(bound, int | float) and math.isfinite(bound) and bound > 0):
        raise ValueError(f"clip bound must be a positive finite number, got {bound!r}")
    out = [canonical_array(w) for w in weights]
    norm = update_norm(out, base)
    if norm <= bound:
        return out
    base64 = [np.asarray(b, dtype=np.float32).astype(np.float64) for b in base]
    scale = bound / norm
    for _ in range(64):
        clipped = [
            canonical_array(b + (w.astype(np.float64) - b) * scale) for w, b in zip(out, base64, strict=True)
        ]
        if update_norm(clipped, base) <= bound:
            return clipped
        scale *= 1.0 - 1e-6
    return [canonical_array(b) for b in base]  # the delta rounds away entirely: the base is within any bound
