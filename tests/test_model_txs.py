"""Model updates and commits on the ledger: every replica re-computes each aggregate."""

from __future__ import annotations

import numpy as np
import pytest

from federated.aggregate import Update, aggregate
from federated.weights import encode_weights, weights_hash
from node.errors import InvalidBlock, Reason
from node.ledger import Ledger
from node.state import check_tx
from node.store import MemoryStore
from node.transactions import make_model_commit, make_model_update, tx_id
from node.verify import verify_chain
from tests.factories import CHAIN_ID, commit_next, make_genesis, participant_key

ROOT = bytes(32)


def weights(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(1, 8)).astype(np.float32), rng.normal(size=(8,)).astype(np.float32)]


@pytest.fixture
def setup() -> tuple[Ledger, list, list]:  # type: ignore[type-arg]
    keys, genesis = make_genesis(4, n_participants=2)
    ledger = Ledger(MemoryStore(), genesis)
    parts = [participant_key(i) for i in range(2)]
    ups = [
        make_model_update(p, CHAIN_ID, "humidity", 1, ROOT, encode_weights(weights(i)), 100 + 50 * i,
                          {"loss": 0.5}, ROOT)
        for i, p in enumerate(parts)
    ]
    commit_next(ledger, keys, ups)
    return ledger, keys, ups


def fedavg_of(ups: list, strategy: str = "fedavg") -> bytes:  # type: ignore[type-arg]
    from federated.weights import decode_weights

    upd = [Update(tx_id(u), decode_weights(u["body"]["weights"]), u["body"]["num_examples"]) for u in ups]
    return weights_hash(aggregate(strategy, upd))


@pytest.mark.parametrize("strategy", ["fedavg", "fedmedian", "fedtrimmedavg", "krum"])
def test_a_commit_that_recomputes_is_accepted_and_survives_verify(setup, strategy: str) -> None:  # type: ignore[no-untyped-def]
    ledger, keys, ups = setup
    commit = make_model_commit(keys[0], CHAIN_ID, "humidity", 1, strategy, [tx_id(u) for u in ups],
                               fedavg_of(ups, strategy), {"loss": 0.4})
    assert check_tx(ledger.store, commit, 10**15, ledger.params) is None
    commit_next(ledger, keys, [commit])
    assert verify_chain(ledger.store, ledger.genesis).ok


def test_a_commit_whose_aggregate_differs_is_rejected_and_so_is_its_block(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, keys, ups = setup
    wrong = make_model_commit(keys[0], CHAIN_ID, "humidity", 1, "fedavg", [tx_id(u) for u in ups],
                              fedavg_of(ups[:1]), {})
    assert check_tx(ledger.store, wrong, 10**15, ledger.params) is Reason.AGGREGATE_MISMATCH
    with pytest.raises(InvalidBlock, match="aggregate_mismatch"):
        commit_next(ledger, keys, [wrong])


def test_a_commit_naming_an_unknown_or_foreign_round_update_is_rejected(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, keys, ups = setup
    unknown = make_model_commit(keys[0], CHAIN_ID, "humidity", 1, "fedavg", [bytes(32)], fedavg_of(ups), {})
    assert check_tx(ledger.store, unknown, 10**15, ledger.params) is Reason.UNKNOWN_UPDATE
    other_round = make_model_commit(keys[0], CHAIN_ID, "humidity", 2, "fedavg", [tx_id(u) for u in ups],
                                    fedavg_of(ups), {})
    assert check_tx(ledger.store, other_round, 10**15, ledger.params) is Reason.UNKNOWN_UPDATE


def test_only_an_authority_may_commit_a_model(setup) -> None:  # type: ignore[no-untyped-def]
    ledger, _, ups = setup
    commit = make_model_commit(participant_key(0), CHAIN_ID, "humidity", 1, "fedavg", [tx_id(u) for u in ups],
                               fedavg_of(ups), {})
    assert check_tx(ledger.store, commit, 10**15, ledger.params) is Reason.UNAUTHORIZED


def test_updates_and_their_commit_can_share_a_block() -> None:
    keys, genesis = make_genesis(4, n_participants=1)
    ledger = Ledger(MemoryStore(), genesis)
    up = make_model_update(participant_key(0), CHAIN_ID, "humidity", 1, ROOT, encode_weights(weights(7)), 10,
                           {}, ROOT)
    commit = make_model_commit(keys[1], CHAIN_ID, "humidity", 1, "fedavg", [tx_id(up)], fedavg_of([up]), {})
    commit_next(ledger, keys, [up, commit])
    assert verify_chain(ledger.store, genesis).ok


def test_update_weights_must_match_their_hash_and_decode() -> None:
    _, genesis = make_genesis(4, n_participants=1)
    ledger = Ledger(MemoryStore(), genesis)
    p = participant_key(0)
    good = make_model_update(p, CHAIN_ID, "humidity", 1, ROOT, encode_weights(weights(1)), 10, {}, ROOT)
    assert check_tx(ledger.store, good, 10**15, ledger.params) is None
    garbage = make_model_update(p, CHAIN_ID, "humidity", 1, ROOT, b"not weights", 10, {}, ROOT)
    assert check_tx(ledger.store, garbage, 10**15, ledger.params) is Reason.BAD_WEIGHTS
    no_examples = make_model_update(participant_key(0), CHAIN_ID, "humidity", 1, ROOT,
                                    encode_weights(weights(1)), 0, {}, ROOT)
    assert check_tx(ledger.store, no_examples, 10**15, ledger.params) is Reason.BAD_WEIGHTS
