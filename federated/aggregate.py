"""Deterministic aggregation of model updates, re-checkable by every authority.

Pure numpy on purpose: the node's consensus process imports this module to recompute a committed
aggregate before voting, and must not pay (or risk) a TensorFlow/Flower import.

An update is ``(update_id, weights, num_examples)``. The result must be *bit-identical* on every
machine, so:

* updates are sorted by ``update_id`` first (Flower hands replies over in arrival order);
* inputs are canonicalised to float32 exactly as ``encode_weights`` does, so aggregating decoded
  blobs and in-memory arrays gives the same answer;
* arithmetic is float64 with only correctly rounded IEEE operations (elementwise ``+ * /``,
  sorting, ``math.fsum``), accumulated in an explicit Python loop in that sorted order. numpy's
  ``sum``/``mean`` reductions are avoided because their pairwise/SIMD summation order is an
  implementation detail that may change between numpy builds;
* the result is cast to float32 once, at the end.

What Flower's built-in strategies compute (flwr ``serverapp/strategy``, the Message-API ones in
flwr 1.2x-1.41; read from the adap/flower sources) and how ours relates:

``FedAvg`` (``strategy_utils.aggregate_arrayrecords``)
    factors ``n_i / sum(n)`` as Python floats, then ``acc += w_i * factor`` in the arrays' own
    dtype (float32) in reply (arrival) order. Ours: same weighted mean, but ``sum(n_i * w_i) / N``
    in float64 in update_id order, one final rounding. Values agree to float32 rounding (~1 ulp);
    theirs depends on arrival order, ours does not.
``FedMedian``
    unweighted ``np.median(np.stack(layers), axis=0)`` (mean of the two middle values when n is
    even), in float32. Ours: the same definition via an explicit sort; identical results (halving
    is exact, so float32 vs float64 middle-mean rounds the same barring overflow).
``FedTrimmedAvg`` (``trim_mean``, after scipy)
    unweighted; cuts ``int(beta * n)`` values from each tail per coordinate (``np.partition``),
    ``np.mean`` of the rest in float32; default ``beta = 0.2``. Ours: same cut rule and default,
    mean in float64 with a fixed summation order; may differ from theirs by ~1 ulp.
``Krum`` (``MultiKrum`` with ``num_nodes_to_select=1``; parameter ``num_malicious_nodes`` = f)
    squared distances via ``|x|^2 + |y|^2 - 2 x.y`` (a matrix product: cancellation, and BLAS
    summation order varies by machine); neighbours = ``argsort(row)[1 : k + 1]`` with
    ``k = max(1, n - f - 2)``, which assumes the node itself sorts first (not guaranteed when
    two updates are identical); winner ``argmin`` in arrival order; result = the winner's arrays
    (weighted average of one). Ours: same ``k`` rule and same result, but distances as
    ``fsum((x - y)**2)`` (exactly rounded, order-free), the node itself excluded by index, and
    ties broken by the smallest ``update_id``.

Known intentional differences from Flower therefore are only ordering and rounding; which
update Krum picks can differ only on (near-)ties, where Flower's choice is arrival-order dependent.

Personalised models (``Personal``): some arrays hold one row per device of the run's device list
(a device's own regression line, its fingerprint). The strategy aggregates only the other, shared
arrays; row r of a personal array comes from the update of the node that owns device r (the
ledger's ``register_device``), or stays as in the base model (the previous round's) when that node
sent no update. Without owners (experiments without a ledger) row r is the example-weighted mean
of the updates that changed it, or the base row. Which arrays are personal is the task's
(``federated/personal.py``).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from federated.weights import Weights, canonical_array, encode_weights


class Update(NamedTuple):
    update_id: bytes
    weights: Sequence[np.ndarray]
    num_examples: int


UpdateLike = Update | tuple[bytes, Sequence[np.ndarray], int]

STRATEGIES = ("fedavg", "fedmedian", "fedtrimmedavg", "krum")
DEFAULT_BETA = 0.2


@dataclass(frozen=True)
class Personal:
    """How to aggregate the per-device rows of a personalised model (see the module docstring).

    ``arrays``: indices of the personal arrays (first dimension = the run's devices). ``base``: the
    model the round's updates started from. ``owners``: per device row, the node that owns it (None:
    nobody, the row stays), or None for the experiments' rule (rows taken from the updates that
    changed them). ``nodes``: the node of every update id (needed with owners).
    """

    arrays: tuple[int, ...]
    base: Sequence[np.ndarray]
    owners: Sequence[bytes | None] | None = None
    nodes: Mapping[bytes, bytes] | None = None


def _prepare(updates: Sequence[UpdateLike]) -> list[tuple[bytes, list[np.ndarray], int]]:
    """Validate, canonicalise to float32 and sort by update_id."""
    if not updates:
        raise ValueError("no updates to aggregate")
    out: list[tuple[bytes, list[np.ndarray], int]] = []
    for u in updates:
        uid, weights, n = u
        if not isinstance(uid, bytes):
            raise ValueError(f"update_id must be bytes, got {type(uid).__name__}")
        if isinstance(n, bool) or not isinstance(n, int | np.integer) or n <= 0:
            raise ValueError(f"update {uid.hex()}: num_examples must be a positive int, got {n!r}")
        out.append((uid, [canonical_array(w) for w in weights], int(n)))
    out.sort(key=lambda t: t[0])
    for a, b in itertools.pairwise(out):
        if a[0] == b[0]:
            # Counting one update twice would silently reweight the aggregate.
            raise ValueError(f"duplicate update_id {a[0].hex()}")
    shapes = [w.shape for w in out[0][1]]
    for uid, ws, _ in out[1:]:
        if [w.shape for w in ws] != shapes:
            raise ValueError(f"update {uid.hex()}: array shapes differ from the other updates")
    return out


def _to_f32(arrays: list[np.ndarray]) -> Weights:
    return [np.asarray(a, dtype=np.float32, order="C") for a in arrays]


def _fedavg(ups: list[tuple[bytes, list[np.ndarray], int]]) -> Weights:
    total = sum(n for _, _, n in ups)
    result = []
    for layer in range(len(ups[0][1])):
        acc = np.zeros(ups[0][1][layer].shape, dtype=np.float64)
        for _, ws, n in ups:
            acc += ws[layer].astype(np.float64) * float(n)
        result.append(acc / float(total))
    return _to_f32(result)


def _sorted_stack(ups: list[tuple[bytes, list[np.ndarray], int]], layer: int) -> np.ndarray:
    # Sorting each coordinate's values makes the result independent of update order by
    # construction; np.sort only permutes values, so it is exact.
    return np.sort(np.stack([ws[layer].astype(np.float64) for _, ws, _ in ups]), axis=0)


def _fedmedian(ups: list[tuple[bytes, list[np.ndarray], int]]) -> Weights:
    n = len(ups)
    result = []
    for layer in range(len(ups[0][1])):
        s = _sorted_stack(ups, layer)
        if n % 2:
            result.append(s[n // 2])
        else:
            result.append((s[n // 2 - 1] + s[n // 2]) * 0.5)
    return _to_f32(result)


def _fedtrimmedavg(ups: list[tuple[bytes, list[np.ndarray], int]], beta: float = DEFAULT_BETA) -> Weights:
    if not isinstance(beta, int | float) or not 0.0 <= float(beta) < 0.5:
        raise ValueError(f"beta must be in [0, 0.5), got {beta!r}")
    n = len(ups)
    cut = int(float(beta) * n)  # Flower's (and scipy's) rule
    keep = n - 2 * cut
    if keep <= 0:
        raise ValueError(f"beta={beta} trims all {n} updates")
    result = []
    for layer in range(len(ups[0][1])):
        s = _sorted_stack(ups, layer)
        acc = np.zeros(s.shape[1:], dtype=np.float64)
        for row in s[cut : n - cut]:
            acc += row
        result.append(acc / float(keep))
    return _to_f32(result)


def krum_scores(updates: Sequence[UpdateLike], f: int = 0) -> list[tuple[bytes, float]]:
    """Krum score of every update, in update_id order: the sum of squared L2 distances to its
    ``max(1, n - f - 2)`` nearest other updates (Blanchard et al. 2017)."""
    ups = _prepare(updates)
    return _krum_scores(ups, f)


def _krum_scores(ups: list[tuple[bytes, list[np.ndarray], int]], f: int) -> list[tuple[bytes, float]]:
    if isinstance(f, bool) or not isinstance(f, int | np.integer) or f < 0:
        raise ValueError(f"f must be a non-negative int, got {f!r}")
    n = len(ups)
    if n == 1:
        return [(ups[0][0], 0.0)]
    flat = [np.concatenate([w.ravel() for w in ws]).astype(np.float64) for _, ws, _ in ups]
    dist = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            d = flat[i] - flat[j]
            # fsum is correctly rounded, so the distance does not depend on summation order.
            dist[i][j] = dist[j][i] = math.fsum((d * d).tolist())
    k = max(1, n - int(f) - 2)
    scores = []
    for i in range(n):
        others = sorted(dist[i][j] for j in range(n) if j != i)
        scores.append((ups[i][0], math.fsum(others[:k])))
    return scores


def _krum(ups: list[tuple[bytes, list[np.ndarray], int]], f: int = 0, m: int = 1) -> Weights:
    """Krum (m = 1): the update with the lowest score. Multi-Krum (m > 1, Blanchard et al. 2017):
    the num_examples-weighted mean of the m updates with the lowest scores (all of them if fewer),
    so up to f outliers are left out while m - 1 more honest updates are averaged in."""
    if isinstance(m, bool) or not isinstance(m, int | np.integer) or m < 1:
        raise ValueError(f"m must be a positive int, got {m!r}")
    scores = _krum_scores(ups, f)
    # sorted() is stable and `ups` is sorted by update_id: ties go to the smallest id.
    chosen = sorted(range(len(scores)), key=lambda i: scores[i][1])[:int(m)]
    if len(chosen) == 1:
        return _to_f32(ups[chosen[0]][1])
    return _fedavg([ups[i] for i in sorted(chosen)])


_IMPLS: dict[str, Callable[..., Weights]] = {
    "fedavg": _fedavg,
    "fedmedian": _fedmedian,
    "fedtrimmedavg": _fedtrimmedavg,
    "krum": _krum,
}
_PARAMS: dict[str, frozenset[str]] = {
    "fedavg": frozenset(),
    "fedmedian": frozenset(),
    "fedtrimmedavg": frozenset({"beta"}),
    "krum": frozenset({"f", "m"}),
}


def _personal_rows(ups: list[tuple[bytes, list[np.ndarray], int]],
                   personal: Personal) -> dict[int, np.ndarray]:
    base = [canonical_array(w) for w in personal.base]
    shapes = [w.shape for w in ups[0][1]]
    if [w.shape for w in base] != shapes:
        raise ValueError("the base model's shapes differ from the updates'")
    if len(set(personal.arrays)) != len(personal.arrays) or not all(
        0 <= i < len(shapes) and len(shapes[i]) >= 1 for i in personal.arrays
    ):
        raise ValueError(f"personal arrays {personal.arrays} do not index per-row arrays of the model")
    rows = {shapes[i][0] for i in personal.arrays}
    if len(rows) != 1:
        raise ValueError("personal arrays differ in their number of device rows")
    n_rows = rows.pop()
    if personal.owners is not None:
        if len(personal.owners) != n_rows:
            raise ValueError(f"{len(personal.owners)} device owners for {n_rows} personal rows")
        nodes = personal.nodes or {}
        if any(uid not in nodes for uid, _, _ in ups):
            raise ValueError("the node of every update is needed to take personal rows from owners")
    out: dict[int, np.ndarray] = {}
    for i in personal.arrays:
        result = base[i].astype(np.float64)
        for r in range(n_rows):
            if personal.owners is not None:
                owner = personal.owners[r]
                holders = [(w[i][r], n) for uid, w, n in ups if owner is not None and nodes[uid] == owner]
            else:
                holders = [(w[i][r], n) for _, w, n in ups if not np.array_equal(w[i][r], base[i][r])]
            if holders:
                acc = np.zeros(result[r].shape, np.float64)
                for row, n in holders:  # update_id order, as everywhere here
                    acc += row.astype(np.float64) * float(n)
                result[r] = acc / float(sum(n for _, n in holders))
        out[i] = result
    return out


def aggregate(strategy: str, updates: Sequence[UpdateLike], personal: Personal | None = None,
              **params: Any) -> Weights:
    """Aggregate `updates` with `strategy` (one of STRATEGIES). Deterministic and order independent.

    Parameters: fedtrimmedavg ``beta`` (default 0.2), krum ``f`` (assumed Byzantine updates,
    default 0) and ``m`` (Multi-Krum: how many of the best-scored updates to average, default 1).
    Unknown strategies or parameters raise ValueError: they come from the ledger and
    a typo must not silently select a default. With `personal`, the strategy aggregates the shared
    arrays and the personal rows follow their owners (see ``Personal``).
    """
    impl = _IMPLS.get(strategy)
    if impl is None:
        raise ValueError(f"unknown strategy {strategy!r}; expected one of {', '.join(STRATEGIES)}")
    unknown = set(params) - _PARAMS[strategy]
    if unknown:
        raise ValueError(f"unknown parameter(s) for {strategy}: {', '.join(sorted(unknown))}")
    ups = _prepare(updates)
    if personal is None or not personal.arrays:
        return impl(ups, **params)
    rows = _personal_rows(ups, personal)
    shared = [i for i in range(len(ups[0][1])) if i not in rows]
    if shared:
        part = impl([(uid, [w[i] for i in shared], n) for uid, w, n in ups], **params)
    else:
        impl([(uid, [np.zeros(1, np.float32)], n) for uid, _, n in ups], **params)  # checks params
        part = []
    merged = dict(zip(shared, part, strict=True))
    merged.update({i: np.asarray(r, dtype=np.float32, order="C") for i, r in rows.items()})
    return [merged[i] for i in range(len(ups[0][1]))]


def verify_aggregate(
    strategy: str, updates: Sequence[UpdateLike], claimed: Sequence[np.ndarray],
    personal: Personal | None = None, **params: Any
) -> bool:
    """True iff recomputing the aggregate gives exactly `claimed` (byte-equal encodings).

    Malformed updates, parameters or claims are a failed verification, not an exception: an
    authority must be able to reject a bad block without crashing.
    """
    try:
        expected = encode_weights(aggregate(strategy, updates, personal, **params))
        return expected == encode_weights(claimed)
    except (ValueError, TypeError):
        return False
