"""Deterministic aggregation and its verification. Pure numpy: no TensorFlow needed."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from federated.aggregate import STRATEGIES, Personal, Update, aggregate, krum_scores, verify_aggregate
from federated.weights import encode_weights


def _u(uid: int, values: list[float], n: int = 1) -> Update:
    # Two layers so per-layer handling is exercised: a (len,) vector and a 0-d scalar.
    return Update(bytes([uid]), [np.array(values, np.float32), np.array(sum(values), np.float32)], n)


def test_fedavg_weighted_by_num_examples() -> None:
    ups = [_u(1, [0.0, 10.0], 1), _u(2, [4.0, 2.0], 3)]
    agg = aggregate("fedavg", ups)
    assert agg[0].dtype == np.float32
    assert np.array_equal(agg[0], np.array([3.0, 4.0], np.float32))
    assert np.array_equal(agg[1], np.array(7.0, np.float32))


def test_fedmedian_coordinate_wise_unweighted() -> None:
    ups = [_u(1, [1.0, 100.0], 1000), _u(2, [2.0, -5.0]), _u(3, [50.0, 0.0])]
    assert np.array_equal(aggregate("fedmedian", ups)[0], np.array([2.0, 0.0], np.float32))
    # Even count: mean of the two middle values.
    ups.append(_u(4, [3.0, 1.0]))
    assert np.array_equal(aggregate("fedmedian", ups)[0], np.array([2.5, 0.5], np.float32))


def test_fedtrimmedavg_cuts_beta_n_from_each_tail() -> None:
    ups = [_u(i, [float(v), 0.0]) for i, v in enumerate([1, 2, 3, 4, 1000])]
    # beta 0.2 of 5 -> cut 1 each side: mean(2, 3, 4) = 3
    assert aggregate("fedtrimmedavg", ups)[0][0] == 3.0
    # beta 0 -> plain unweighted mean
    assert aggregate("fedtrimmedavg", ups, beta=0.0)[0][0] == np.float32(1010 / 5)
    with pytest.raises(ValueError, match="beta"):
        aggregate("fedtrimmedavg", ups, beta=0.5)


def test_krum_rejects_an_outlier_and_matches_definition() -> None:
    rng = np.random.default_rng(0)
    honest = [Update(bytes([i]), [rng.normal(0, 0.01, 20).astype(np.float32)], 10) for i in range(5)]
    attacker = Update(b"\xff", [np.full(20, 50.0, np.float32)], 10_000)
    ups = [*honest, attacker]
    chosen = aggregate("krum", ups, f=1)
    assert any(np.array_equal(chosen[0], h.weights[0]) for h in honest)
    assert not np.array_equal(chosen[0], attacker.weights[0])
    # FedAvg is dragged to the attacker (it is the point of Krum).
    assert float(np.abs(aggregate("fedavg", ups)[0]).mean()) > 40
    # Scores: n=6, f=1 -> sum of the 3 nearest squared distances; the attacker scores worst.
    scores = dict(krum_scores(ups, f=1))
    flat = {u.update_id: u.weights[0].astype(np.float64) for u in ups}
    for uid, score in scores.items():
        d = sorted(float(np.sum((flat[uid] - flat[o]) ** 2)) for o in flat if o != uid)
        assert score == pytest.approx(sum(d[:3]), rel=1e-12)
    assert max(scores, key=lambda k: scores[k]) == b"\xff"


def test_multi_krum_averages_the_m_best_scored_updates_by_their_weight() -> None:
    honest = [_u(1, [1.0, 1.0], 1), _u(2, [1.2, 0.8], 3), _u(3, [0.9, 1.1], 2)]
    attacker = _u(4, [-40.0, 40.0], 1000)
    ups = [attacker, *honest]
    got = aggregate("krum", ups, f=1, m=3)
    assert np.array_equal(got[0], aggregate("fedavg", honest)[0])  # the outlier is left out
    assert np.array_equal(aggregate("krum", ups, f=1, m=1)[0], aggregate("krum", ups, f=1)[0])
    assert np.array_equal(aggregate("krum", ups, f=1, m=9)[0], aggregate("fedavg", ups)[0])  # m > n: all
    for bad in (0, -1, True, 1.5):
        with pytest.raises(ValueError, match="m must"):
            aggregate("krum", ups, m=bad)


def test_krum_ties_go_to_smallest_update_id() -> None:
    ups = [_u(9, [1.0, 1.0]), _u(3, [1.0, 1.0]), _u(5, [1.0, 1.0])]
    assert all(s == 0.0 for _, s in krum_scores(ups))
    assert np.array_equal(aggregate("krum", ups)[0], np.array([1.0, 1.0], np.float32))


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_order_independent_and_bit_stable(strategy: str) -> None:
    rng = np.random.default_rng(1)
    ups = [
        Update(
            rng.bytes(8),
            [rng.normal(size=(3, 5)).astype(np.float32), rng.normal(size=5).astype(np.float32)],
            int(rng.integers(1, 500)),
        )
        for _ in range(5)
    ]
    encodings = {encode_weights(aggregate(strategy, list(p))) for p in itertools.permutations(ups)}
    assert len(encodings) == 1
    # Accepts plain tuples and float64 inputs (canonicalised to float32 as on the wire).
    as_tuples = [(u.update_id, [w.astype(np.float64) for w in u.weights], u.num_examples) for u in ups]
    assert encode_weights(aggregate(strategy, as_tuples)) in encodings


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_verify_accepts_honest_and_rejects_tampered(strategy: str) -> None:
    rng = np.random.default_rng(2)
    ups = [Update(bytes([i]), [rng.normal(size=(4, 3)).astype(np.float32)], 10 + i) for i in range(5)]
    claimed = aggregate(strategy, ups)
    assert verify_aggregate(strategy, ups, claimed)
    tampered = [w.copy() for w in claimed]
    tampered[0][1, 2] = np.nextafter(tampered[0][1, 2], np.float32(np.inf))  # one ulp
    assert not verify_aggregate(strategy, ups, tampered)
    assert not verify_aggregate(strategy, ups[:-1], claimed) or strategy == "krum"
    assert not verify_aggregate(strategy, ups, [*claimed, np.zeros(1, np.float32)])
    assert not verify_aggregate(strategy, ups, [np.full((4, 3), np.nan, np.float32)])


def test_verify_rejects_wrong_strategy_and_bad_params() -> None:
    ups = [_u(1, [0.0, 1.0], 1), _u(2, [10.0, 3.0], 3), _u(3, [0.5, 1.0], 1)]
    avg = aggregate("fedavg", ups)
    assert not verify_aggregate("fedmedian", ups, avg)
    assert not verify_aggregate("nope", ups, avg)
    assert not verify_aggregate("fedavg", ups, avg, beta=0.1)


@pytest.mark.parametrize(
    ("updates", "match"),
    [
        ([], "no updates"),
        ([_u(1, [1.0, 2.0]), _u(1, [1.0, 2.0])], "duplicate"),
        ([_u(1, [1.0, 2.0]), _u(2, [1.0, 2.0, 3.0])], "shapes"),
        ([_u(1, [1.0, 2.0], 0)], "positive"),
        ([("id", [np.zeros(2, np.float32)], 1)], "bytes"),
        ([_u(1, [float("nan"), 2.0])], "NaN"),
    ],
)
def test_bad_updates_raise(updates: list[Update], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        aggregate("fedavg", updates)


def test_unknown_strategy_or_param_raises() -> None:
    with pytest.raises(ValueError, match="unknown strategy"):
        aggregate("fedprox", [_u(1, [1.0])])
    with pytest.raises(ValueError, match="unknown parameter"):
        aggregate("krum", [_u(1, [1.0])], num_malicious=1)


def test_light_modules_do_not_import_tensorflow() -> None:
    # The node re-checks aggregates and ClientApps talk to the trainer: neither may pay for TF.
    code = (
        "import sys, federated.aggregate, federated.weights, federated.trainer, federated.tasks;"
        "bad = [m for m in ('tensorflow', 'keras', 'flwr') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


# --- personal rows (federated/aggregate.py Personal) --------------------------------------------


def _pm(uid: int, shared: float, rows: list[float], n: int = 1) -> Update:
    """A model of one shared array (2,) and one personal array of 3 device rows (3, 2)."""
    personal = np.array([[v, v] for v in rows], np.float32)
    return Update(bytes([uid]), [np.full(2, shared, np.float32), personal], n)


BASE = [np.zeros(2, np.float32), np.full((3, 2), -1.0, np.float32)]


def test_personal_rows_come_from_their_owners_and_the_rest_from_the_strategy() -> None:
    ups = [_pm(1, 1.0, [5, 6, 7], 1), _pm(2, 3.0, [8, 9, 10], 3)]
    nodes = {bytes([1]): b"A", bytes([2]): b"B"}
    # Row 0 is A's device, row 1 B's, row 2 belongs to C, who sent no update: it keeps the base.
    personal = Personal((1,), BASE, [b"A", b"B", b"C"], nodes)
    agg = aggregate("fedavg", ups, personal)
    assert np.array_equal(agg[0], np.full(2, 2.5, np.float32))  # (1*1 + 3*3) / 4
    assert np.array_equal(agg[1], np.array([[5, 5], [9, 9], [-1, -1]], np.float32))
    assert verify_aggregate("fedavg", ups, agg, personal)
    # B rewriting A's row changes nothing: only the owner's row counts.
    forged = [ups[0], _pm(2, 3.0, [999, 9, 999], 3)]
    assert np.array_equal(aggregate("fedavg", forged, personal)[1], agg[1])
    # Robust strategies see only the shared arrays.
    assert np.array_equal(aggregate("fedmedian", ups, personal)[1], agg[1])
    assert np.array_equal(aggregate("krum", ups, personal, f=0)[1], agg[1])


def test_personal_rows_without_owners_average_the_updates_that_changed_them() -> None:
    a = _pm(1, 0.0, [5, -1, -1], 1)
    b = _pm(2, 0.0, [7, 9, -1], 3)
    agg = aggregate("fedavg", [a, b], Personal((1,), BASE))
    assert np.array_equal(agg[1], np.array([[6.5, 6.5], [9, 9], [-1, -1]], np.float32))


def test_personal_rows_refuse_what_cannot_be_aggregated() -> None:
    ups = [_pm(1, 1.0, [5, 6, 7])]
    with pytest.raises(ValueError, match="owners"):
        aggregate("fedavg", ups, Personal((1,), BASE, [b"A", b"B"], {bytes([1]): b"A"}))
    with pytest.raises(ValueError, match="node of every update"):
        aggregate("fedavg", ups, Personal((1,), BASE, [b"A", b"B", b"C"], {}))
    with pytest.raises(ValueError, match="base"):
        aggregate("fedavg", ups, Personal((1,), [BASE[0]], None))
    with pytest.raises(ValueError, match="personal arrays"):
        aggregate("fedavg", ups, Personal((0, 5), BASE))
    assert not verify_aggregate("fedavg", ups, ups[0].weights, Personal((1,), BASE, [b"A"], {}))
