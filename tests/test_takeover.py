"""What a node does about a run it takes over (node/flower/takeover.py): it takes it when its turn
comes on its own clock, and its ServerApp starts from the ledger: the open round committed at once
from the updates already final when they come from min_nodes nodes (a commit every replica accepts),
else the open round asked again from the model committed before it."""

from __future__ import annotations

from federated.weights import decode_weights, weights_hash
from node.flower.takeover import HANDOVER_MARGIN_MS, handover_due, make_handover, plan_start
from node.ledger.handover import run_control
from node.ledger.run_rules import committed_weights
from node.ledger.state import check_tx
from tests.factories import CHAIN_ID, commit_next, participant_key
from tests.test_handover_rules import T, expiry
from tests.test_model_txs import open_run


def test_the_successor_takes_the_run_over_when_its_turn_comes_on_its_clock() -> None:
    run = open_run()
    store = run.ledger.store
    ctl = run_control(store, run.run)
    assert ctl is not None
    turn = expiry(run)
    first, second = run.keys[1].public, run.keys[2].public
    assert not handover_due(store, ctl, first, turn)  # a margin for proposers' clocks
    assert handover_due(store, ctl, first, turn + HANDOVER_MARGIN_MS)
    assert not handover_due(store, ctl, second, turn + HANDOVER_MARGIN_MS)  # one timeout later
    assert not handover_due(store, ctl, run.keys[0].public, turn + 100 * T)  # the coordinator itself
    tx = make_handover(run.keys[1], CHAIN_ID, ctl, "127.0.0.1:9400", "ab" * 32)
    assert check_tx(store, tx, turn + HANDOVER_MARGIN_MS, run.ledger.params) is None
    commit_next(run.ledger, run.keys, [tx], time_ms=turn + HANDOVER_MARGIN_MS)
    ctl = run_control(store, run.run)
    assert not handover_due(store, ctl, first, turn + 100 * T)  # it coordinates now


def test_the_open_round_is_committed_from_the_ledger_when_min_nodes_updates_are_final() -> None:
    run = open_run(rounds=3)  # min_nodes 2
    ups = [run.update(participant_key(0), 1, 1), run.update(participant_key(1), 1, 2)]
    commit_next(run.ledger, run.keys, ups)
    store = run.ledger.store
    new = run.keys[1]
    t = expiry(run)
    ctl = run_control(store, run.run)
    commit_next(run.ledger, run.keys, [make_handover(new, CHAIN_ID, ctl, "127.0.0.1:9401", "cd" * 32)],
                time_ms=t)
    plan = plan_start(store, new, CHAIN_ID, run_control(store, run.run))
    assert plan.commit is not None and plan.resume_round == 1
    # The base is round 0's model; after the commit the ServerApp starts at round 2 from round 1's.
    assert plan.weights is not None and weights_hash(decode_weights(plan.weights)) == run.initial_hash
    assert check_tx(store, plan.commit, t + 1000, run.ledger.params) is None  # every replica agrees
    commit_next(run.ledger, run.keys, [plan.commit])
    req = run_control(store, run.run).request
    model = committed_weights(store, req, run.run, 1)
    assert plan.committed is not None
    assert weights_hash(decode_weights(plan.committed)) == weights_hash(model)
    assert store.model_commit(run.run, 1).node == new.public


def test_too_few_final_updates_ask_the_nodes_for_the_open_round_again() -> None:
    run = open_run(rounds=3, min_nodes=3)
    two = [run.update(participant_key(0), 1, 1), run.update(participant_key(1), 1, 2)]
    commit_next(run.ledger, run.keys, two)
    plan = plan_start(run.ledger.store, run.keys[0], CHAIN_ID, run_control(run.ledger.store, run.run))
    assert plan.commit is None and plan.resume_round == 1
    assert weights_hash(decode_weights(plan.weights)) == run.initial_hash


def test_a_fresh_run_publishes_round_0() -> None:
    from node.ledger.transactions import make_train_request, tx_id

    run = open_run()
    req = make_train_request(run.keys[0], CHAIN_ID, "humidity", 2, "fedavg", {})
    commit_next(run.ledger, run.keys, [req])
    plan = plan_start(run.ledger.store, run.keys[0], CHAIN_ID, run_control(run.ledger.store, tx_id(req)))
    assert (plan.resume_round, plan.weights, plan.commit) == (0, None, None)


def test_a_personalised_round_is_committed_from_the_ledger_with_its_owners_rows() -> None:
    """A run that names its devices: the takeover's commit takes each device's row from its owner's
    update (run_rules.round_aggregate), as every replica re-computes it; a plain strategy average
    of the whole model would be refused with aggregate_mismatch."""
    from tests.test_personal_rows import PersonalRun

    run = PersonalRun()
    run.start()
    store = run.ledger.store
    ups = [run.update(participant_key(0), 1, 1), run.update(participant_key(1), 1, 2)]
    commit_next(run.ledger, run.keys, ups)
    t = expiry(run)  # type: ignore[arg-type]
    new = run.keys[1]
    ctl = run_control(store, run.run)
    commit_next(run.ledger, run.keys, [make_handover(new, CHAIN_ID, ctl, "127.0.0.1:9402", "ef" * 32)],
                time_ms=t)
    plan = plan_start(store, new, CHAIN_ID, run_control(store, run.run))
    assert plan.commit is not None
    assert check_tx(store, plan.commit, t + 1000, run.ledger.params) is None
