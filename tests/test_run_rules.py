"""The run's rules on the ledger (node/ledger/run_rules.py), through check_tx and block commits:
a quorum of distinct nodes per round, the round-0 model's shapes, finite weights, an optional
bound on the update norm, and the ledger's num_examples as the only aggregation weight."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from federated.aggregate import Update, aggregate
from federated.clipping import clip_update, update_norm
from federated.weights import decode_weights, encode_weights, weights_hash
from node.errors import InvalidBlock, Reason
from node.ledger import run_rules
from node.ledger.provenance import datasets
from node.ledger.transactions import make_model_commit, make_model_update, make_train_request, tx_id
from node.store.verify import verify_chain
from tests.factories import CHAIN_ID, commit_next, participant_key
from tests.test_model_txs import Run, open_run, weights


def update_with(run: Run, key, round: int, blob: bytes, base: bytes | None = None) -> dict:  # type: ignore[no-untyped-def]
    """An update of `blob` whose figures are the node's training set now, as replicas recompute."""
    cut = run.ledger.height
    ds = datasets(run.ledger.store, key.public, cut)
    return make_model_update(key, CHAIN_ID, run.run, "humidity", round,
                             run.initial_hash if base is None else base, blob, ds.train_examples,
                             {"loss": 0.5}, ds.train_root, data_cut=cut)


def with_nan(w: list[np.ndarray]) -> bytes:
    """An FLW1 blob of `w` whose first value is NaN (encode_weights refuses to write one)."""
    blob = bytearray(encode_weights(w))
    first_value = 8 + 2 + 4 * w[0].ndim  # magic + count, dtype + ndim, shape
    blob[first_value:first_value + 4] = struct.pack("<f", float("nan"))
    return bytes(blob)


def test_a_round_of_the_coordinators_update_alone_is_refused() -> None:
    run = open_run()  # min_nodes defaults to 2, as the coordinator's strategy does
    own = run.update(run.coordinator, 1, 1)
    commit_next(run.ledger, run.keys, [own])
    alone = run.commit(1, [own])
    assert run.check(alone) is Reason.TOO_FEW_UPDATES
    with pytest.raises(InvalidBlock, match="too_few_updates"):
        commit_next(run.ledger, run.keys, [alone])
    other = run.update(participant_key(0), 1, 2)
    commit_next(run.ledger, run.keys, [other])
    commit_next(run.ledger, run.keys, [run.commit(1, [own, other])])
    assert run.ledger.store.model_commit(run.run, 1) is not None


def test_min_nodes_comes_from_the_train_request() -> None:
    run = open_run(min_nodes=3)
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    commit_next(run.ledger, run.keys, ups)
    assert run.check(run.commit(1, ups)) is Reason.TOO_FEW_UPDATES
    third = run.update(run.keys[1], 1, 5)
    commit_next(run.ledger, run.keys, [third])
    assert run.check(run.commit(1, [*ups, third])) is None


def test_run_rule_params_are_checked_in_the_train_request() -> None:
    run = open_run()
    for params in ({"min_nodes": 0}, {"min_nodes": 5000}, {"clip_norm": 0}, {"clip_norm": -1.5},
                   {"superlink_cert": "ab"}, {"superlink_cert": "G" * 64}):
        req = make_train_request(run.coordinator, CHAIN_ID, "humidity", 2, "fedavg", params)
        assert run.check(req) is Reason.MALFORMED, params
    ok = make_train_request(run.coordinator, CHAIN_ID, "humidity", 2, "fedavg",
                            {"min_nodes": 1, "clip_norm": 2, "superlink_cert": "0a" * 32})
    assert run.check(ok) is None


def test_a_nan_update_is_refused_as_non_finite() -> None:
    run = open_run()
    nan = update_with(run, participant_key(0), 1, with_nan(weights(1)))
    assert run.check(nan) is Reason.NON_FINITE
    with pytest.raises(InvalidBlock, match="non_finite"):
        commit_next(run.ledger, run.keys, [nan])
    inf = bytearray(encode_weights(weights(2)))
    inf[-4:] = struct.pack("<f", float("inf"))
    assert run.check(update_with(run, participant_key(0), 1, bytes(inf))) is Reason.NON_FINITE
    assert run.check(update_with(run, participant_key(0), 1, b"FLW1junk")) is Reason.BAD_WEIGHTS


def test_an_update_whose_shapes_differ_from_round_0_is_refused() -> None:
    run = open_run()  # round 0: arrays (1, 8) and (8,)
    rng = np.random.default_rng(3)
    for other in (
        [rng.normal(size=(1, 4)).astype(np.float32), rng.normal(size=(4,)).astype(np.float32)],
        [rng.normal(size=(1, 8)).astype(np.float32)],
        [*weights(4), np.zeros((2,), np.float32)],
    ):
        bad = update_with(run, participant_key(0), 1, encode_weights(other))
        assert run.check(bad) is Reason.SHAPE_MISMATCH
    # Two wrong-shaped updates of the same shape agreed with each other: the ledger used to
    # accept both and let them be aggregated into a model of another architecture.
    odd = [[np.full((2, 2), float(i), np.float32)] for i in range(2)]
    ups = [update_with(run, participant_key(i), 1, encode_weights(w)) for i, w in enumerate(odd)]
    with pytest.raises(InvalidBlock, match="shape_mismatch"):
        commit_next(run.ledger, run.keys, ups)


def test_clip_norm_bounds_the_update_and_clipped_updates_pass_in_every_round() -> None:
    run = open_run(clip_norm=0.5)
    base = decode_weights(encode_weights(weights(99)))  # the round-0 model of open_run
    far = [w + 1.0 for w in base]
    assert update_norm(far, base) > 0.5
    assert run.check(update_with(run, participant_key(0), 1, encode_weights(far))) is Reason.NORM_EXCEEDED
    clipped = [clip_update([w + 0.1 * (i + 1) for w in base], base, 0.5) for i in range(2)]
    assert all(update_norm(c, base) <= 0.5 for c in clipped)
    ups = [update_with(run, participant_key(i), 1, encode_weights(c))
           for i, c in enumerate(clipped)]
    commit_next(run.ledger, run.keys, ups)
    commit_next(run.ledger, run.keys, [run.commit(1, ups)])
    round1 = aggregate("fedavg", [Update(tx_id(u), c, u["body"]["num_examples"])
                                  for u, c in zip(ups, clipped, strict=True)])
    # Round 2 is bounded around round 1's aggregate, which the replica re-computes (from the
    # ledger, not the cache) when it has not seen it.
    run_rules._MODELS.clear()
    r1 = weights_hash(round1)
    behind = [w - 1.0 for w in base]
    assert update_norm(behind, base) > 0.5 and update_norm(behind, round1) > 0.5
    too_far = update_with(run, participant_key(0), 2, encode_weights(behind), base=r1)
    assert run.check(too_far) is Reason.NORM_EXCEEDED
    fine = update_with(run, participant_key(0), 2, encode_weights(clip_update(behind, round1, 0.5)), base=r1)
    assert run.check(fine) is None
    assert verify_chain(run.ledger.store, run.ledger.genesis).ok  # a replay applies the same rules


def test_the_aggregate_is_weighted_by_the_ledgers_num_examples() -> None:
    """A commit computed with any other weight than the updates' num_examples is refused."""
    run = open_run()
    ups = [update_with(run, participant_key(i), 1, encode_weights(weights(i)))
           for i in range(2)]
    commit_next(run.ledger, run.keys, ups)
    replied = aggregate("fedavg", [Update(tx_id(u), weights(i), 10**6 if i else 100)
                                   for i, u in enumerate(ups)])
    wrong = make_model_commit(run.coordinator, CHAIN_ID, run.run, "humidity", 1, "fedavg",
                              [tx_id(u) for u in ups], weights_hash(replied), {})
    assert run.check(wrong) is Reason.AGGREGATE_MISMATCH
    assert run.check(run.commit(1, ups)) is None


def test_clip_update_is_within_the_bound_and_leaves_small_updates_alone() -> None:
    base = weights(1)
    small = [w + 1e-3 for w in base]
    unchanged = clip_update(small, base, 10.0)
    assert [a.tobytes() for a in unchanged] == [a.astype(np.float32).tobytes() for a in small]
    rng = np.random.default_rng(0)
    for bound in (1e-3, 0.1, 3.0):
        big = [w + rng.normal(scale=100, size=w.shape) for w in base]
        out = clip_update(big, base, bound)
        assert update_norm(out, base) <= bound
        assert update_norm(out, base) > bound * 0.999  # scaled, not zeroed
    with pytest.raises(ValueError):
        clip_update(base, base, 0.0)
    with pytest.raises(ValueError):
        update_norm(base, base[:1])
