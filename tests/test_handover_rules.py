"""The ledger's coordinator handover rules (node/ledger/handover.py), through check_tx, the mempool
and real block commits: a run is taken over only once its open round expired on block times, by
the successor whose turn it is, for the open round, once per authority and round; from then on
only the new coordinator commits."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from federated.weights import encode_weights
from node.errors import InvalidBlock, Reason
from node.ledger.chain import Ledger
from node.ledger.handover import (
    DEFAULT_HANDOVER_TIMEOUT_S,
    PACE_FACTOR,
    START_FACTORS,
    START_FLOORS_S,
    run_control,
    successors,
)
from node.ledger.keys import NodeKey, short_id
from node.ledger.mempool import Mempool
from node.ledger.state import check_tx
from node.ledger.transactions import make_model_update, make_run_handover, make_train_request, tx_id
from node.store.models import lineage, models, runs
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain
from tests.factories import CHAIN_ID, commit_next, participant_key
from tests.test_model_txs import Run, open_run, weights

T = DEFAULT_HANDOVER_TIMEOUT_S * 1000


def handover(run: Run, key: NodeKey, round: int, port: int = 9100) -> dict:
    return make_run_handover(key, CHAIN_ID, run.run, round, f"127.0.0.1:{port}", bytes([port % 251]) * 32)


def check_at(run: Run, tx: dict, time_ms: int) -> Reason | None:
    return check_tx(run.ledger.store, tx, time_ms, run.ledger.params)


def progress_ms(run: Run) -> int:
    ctl = run_control(run.ledger.store, run.run)
    assert ctl is not None
    t = run.ledger.store.block_time(ctl.progress_height)
    assert t is not None
    return t


def expiry(run: Run) -> int:
    """When the run's open round expires: the first successor's turn."""
    ctl = run_control(run.ledger.store, run.run)
    assert ctl is not None
    return progress_ms(run) + ctl.expiry_timeout_ms()


def base(run: Run) -> int:
    ctl = run_control(run.ledger.store, run.run)
    assert ctl is not None
    return ctl.base_ms


def commit_round(run: Run, round: int, coordinator: NodeKey, seed: int = 0, at_ms: int | None = None) -> None:
    """Two participants' updates of `round` and the coordinator's commit (at `at_ms`), in two blocks."""
    base_hash = run.ledger.store.model_commit(run.run, round - 1).weights_hash
    ups = [run.update(participant_key(i), round, seed + i, base=base_hash) for i in range(2)]
    commit_next(run.ledger, run.keys, ups)
    commit_next(run.ledger, run.keys, [run.commit(round, ups, key=coordinator)], time_ms=at_ms)


def at(run: Run, time_ms: int, txs: list[dict]) -> None:
    commit_next(run.ledger, run.keys, txs, time_ms=time_ms)


def test_the_next_authority_takes_over_once_the_open_round_expired_on_block_times() -> None:
    run = open_run()  # the request, round 0 published and committed: round 1 open, 1 commit since
    old, new = run.keys[0], run.keys[1]
    due = progress_ms(run) + START_FLOORS_S[1] * 1000  # a starting coordinator's allowance
    assert due == expiry(run)
    tx = handover(run, new, 1)
    assert check_at(run, tx, due - 1) is Reason.HANDOVER_EARLY
    with pytest.raises(InvalidBlock, match="handover_early"):
        at(run, due - 1, [tx])
    assert check_at(run, tx, due) is None
    at(run, due, [tx])
    ctl = run_control(run.ledger.store, run.run)
    assert ctl is not None and ctl.coordinator == new.public and ctl.takeover_round == 1
    assert ctl.superlink == "127.0.0.1:9100" and ctl.superlink_cert == (bytes([9100 % 251]) * 32).hex()
    # The old coordinator's commit is refused from then on; the new one's is accepted.
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    commit_next(run.ledger, run.keys, ups)
    assert run.check(run.commit(1, ups, key=old)) is Reason.NOT_COORDINATOR
    with pytest.raises(InvalidBlock, match="not_coordinator"):
        commit_next(run.ledger, run.keys, [run.commit(1, ups, key=old)])
    assert run.check(run.commit(1, ups, key=new)) is None
    commit_next(run.ledger, run.keys, [run.commit(1, ups, key=new)])
    assert run.ledger.store.model_commit(run.run, 1).node == new.public
    assert [m.kind for m in run.ledger.store.model_rows(run.run)][-4:] == ["handover", "update", "update",
                                                                          "commit"]


def test_a_later_successor_waits_one_more_timeout_per_place() -> None:
    run = open_run()
    commit_round(run, 1, run.keys[0])  # round 2 open: the coordinator is past its start-up
    due = progress_ms(run) + T  # round 1 took 2 s here: the base is T
    assert base(run) == T
    order = successors([k.public for k in run.keys], run.keys[0].public)
    assert order == [k.public for k in run.keys[1:]]  # keys are sorted: the next ones in key order
    second, third = run.keys[2], run.keys[3]
    assert check_at(run, handover(run, second, 2), due) is Reason.HANDOVER_EARLY  # the first one's turn
    assert check_at(run, handover(run, second, 2), due + T) is None
    assert check_at(run, handover(run, third, 2), due + T) is Reason.HANDOVER_EARLY
    assert check_at(run, handover(run, third, 2), due + 2 * T) is None
    assert check_at(run, handover(run, participant_key(0), 2), due + 10 * T) is Reason.UNAUTHORIZED
    # The first successor was dead: the second takes the run over at its turn.
    at(run, due + T, [handover(run, second, 2)])
    assert run_control(run.ledger.store, run.run).coordinator == second.public


def test_the_coordinator_moves_its_own_superlink_once_per_round_and_gets_the_start_up_allowance() -> None:
    run = open_run(rounds=4)
    commit_round(run, 1, run.keys[0])
    coordinator = run.keys[0]
    restarted = handover(run, coordinator, 2, port=9300)
    assert check_at(run, restarted, progress_ms(run) + 1) is None  # no turn to wait for
    at(run, progress_ms(run) + 5000, [restarted])
    ctl = run_control(run.ledger.store, run.run)
    assert ctl.coordinator == coordinator.public and ctl.superlink == "127.0.0.1:9300"
    assert (ctl.takeover_round, ctl.expiry_timeout_ms()) == (2, START_FLOORS_S[0] * 1000)
    # Once per round: a second restart in the same round waits for the timeout like everyone.
    assert check_at(run, handover(run, coordinator, 2, port=9301), progress_ms(run) + 1) is \
        Reason.DUPLICATE_HANDOVER
    due = progress_ms(run) + START_FLOORS_S[0] * 1000
    assert check_at(run, handover(run, run.keys[1], 2), due - 1) is Reason.HANDOVER_EARLY
    assert check_at(run, handover(run, run.keys[1], 2), due) is None
    commit_round(run, 2, coordinator)
    assert check_at(run, handover(run, coordinator, 3, port=9302), progress_ms(run) + 1) is None


def test_a_handover_names_the_open_round_and_a_replay_is_refused() -> None:
    run = open_run()
    due = expiry(run)
    for wrong in (0, 2, 3):
        assert check_at(run, handover(run, run.keys[1], wrong), due) is Reason.WRONG_ROUND
    first = handover(run, run.keys[1], 1)
    at(run, due, [first])
    later = run.ledger.head_time_ms + 100 * T
    assert check_at(run, first, later) is Reason.DUPLICATE  # the same bytes again
    # Once the new coordinator committed round 1, a handover of round 1 is stale whoever signs it.
    commit_round(run, 1, run.keys[1])
    later = run.ledger.head_time_ms + 100 * T
    assert check_at(run, handover(run, run.keys[2], 1), later) is Reason.WRONG_ROUND
    assert check_at(run, handover(run, run.keys[2], 2), later) is None


def test_an_authority_takes_a_round_over_once_so_handovers_per_round_are_bounded() -> None:
    run = open_run()
    a, b, c = run.keys[0], run.keys[1], run.keys[2]
    at(run, expiry(run), [handover(run, b, 1)])
    # b took over at round 1 and committed nothing: it has the start-up allowance, then c's turn.
    at(run, expiry(run), [handover(run, c, 1)])
    # b is after c in key order: its turn comes two places later. Taking round 1 again is refused.
    order = successors([k.public for k in run.keys], c.public)
    place = order.index(b.public) + 1
    t = expiry(run) + (place - 1) * base(run)
    assert check_at(run, handover(run, b, 1, port=9200), t) is Reason.DUPLICATE_HANDOVER
    # The original coordinator never took round 1 over: it may, at its turn.
    place = order.index(a.public) + 1
    t = expiry(run) + (place - 1) * base(run)
    assert check_at(run, handover(run, a, 1), t - 1) is Reason.HANDOVER_EARLY
    assert check_at(run, handover(run, a, 1), t) is None


def test_the_open_round_expires_later_while_a_coordinator_starts_up() -> None:
    run = open_run(rounds=4, handover_timeout=40)
    t = 40_000
    ctl = run_control(run.ledger.store, run.run)
    assert (ctl.open_round, ctl.takeover_round, ctl.expiry_timeout_ms()) == (1, 0, START_FACTORS[1] * t)
    commit_round(run, 1, run.keys[0])
    assert run_control(run.ledger.store, run.run).expiry_timeout_ms() == t
    at(run, progress_ms(run) + t, [handover(run, run.keys[1], 2)])
    ctl = run_control(run.ledger.store, run.run)
    assert (ctl.open_round, ctl.takeover_round, ctl.expiry_timeout_ms()) == (2, 2, START_FACTORS[0] * t)
    commit_round(run, 2, run.keys[1])
    # Round 2 took 40 s (its wait for the handover included): the base is twice that.
    ctl = run_control(run.ledger.store, run.run)
    assert ctl.last_round_ms is not None and ctl.base_ms == PACE_FACTOR * ctl.last_round_ms > t
    assert ctl.expiry_timeout_ms() == START_FACTORS[1] * ctl.base_ms
    # With a short T, the floors hold a starting coordinator's allowance.
    quick = open_run(handover_timeout=5)
    assert run_control(quick.ledger.store, quick.run).expiry_timeout_ms() == START_FLOORS_S[1] * 1000


def test_the_timeout_follows_the_runs_own_pace_on_the_ledger() -> None:
    run = open_run(rounds=5)
    commit_round(run, 1, run.keys[0])
    slow = progress_ms(run) + 45_000  # round 2 takes 45 s: a loaded machine, a live coordinator
    commit_round(run, 2, run.keys[0], at_ms=slow)
    ctl = run_control(run.ledger.store, run.run)
    assert ctl.open_round == 3 and ctl.last_round_ms is not None and ctl.last_round_ms >= 45_000
    pace = PACE_FACTOR * ctl.last_round_ms
    assert ctl.base_ms == pace and ctl.expiry_timeout_ms() == pace
    # A round as slow as the last one is no reason to take the run over; twice as slow is.
    assert check_at(run, handover(run, run.keys[1], 3), slow + 50_000) is Reason.HANDOVER_EARLY
    assert check_at(run, handover(run, run.keys[1], 3), slow + pace - 1) is Reason.HANDOVER_EARLY
    assert check_at(run, handover(run, run.keys[1], 3), slow + pace) is None


def test_a_run_still_at_round_0_is_taken_over_and_the_new_coordinator_publishes_the_initial_model() -> None:
    run = open_run()
    req = make_train_request(run.keys[0], CHAIN_ID, "humidity", 2, "fedavg", {"handover_timeout": 5})
    commit_next(run.ledger, run.keys, [req])
    fresh = Run(run.ledger, run.keys, tx_id(req), run.initial_hash)
    t = fresh.ledger.head_time_ms + START_FLOORS_S[0] * 1000  # round 0: the floor of 4 x 5 s
    assert check_at(fresh, handover(fresh, run.keys[1], 0), t - 1) is Reason.HANDOVER_EARLY
    at(fresh, t, [handover(fresh, run.keys[1], 0)])

    def initial(key: NodeKey) -> dict:
        return make_model_update(key, CHAIN_ID, fresh.run, "humidity", 0, bytes(32),
                                 encode_weights(weights(99)), 1, {}, bytes(32))

    assert fresh.check(initial(run.keys[0])) is Reason.NOT_COORDINATOR
    ok = initial(run.keys[1])
    assert fresh.check(ok) is None
    commit_next(fresh.ledger, fresh.keys, [ok])
    assert fresh.check(fresh.commit(0, [ok], key=run.keys[0])) is Reason.NOT_COORDINATOR
    commit_next(fresh.ledger, fresh.keys, [fresh.commit(0, [ok], key=run.keys[1])])
    assert fresh.ledger.store.model_commit(fresh.run, 0).node == run.keys[1].public


def test_a_complete_run_is_not_handed_over() -> None:
    run = open_run(rounds=1)
    commit_round(run, 1, run.keys[0])
    late = run.ledger.head_time_ms + 100 * T
    assert check_at(run, handover(run, run.keys[1], 2), late) is Reason.WRONG_ROUND
    assert check_at(run, handover(run, run.keys[1], 1), late) is Reason.WRONG_ROUND


@pytest.mark.parametrize("value", [0, 4, 86_401, "30", True, 1.5])
def test_the_handover_timeout_is_bounded_in_the_train_request(value: object) -> None:
    run = open_run()
    req = make_train_request(run.keys[0], CHAIN_ID, "humidity", 2, "fedavg", {"handover_timeout": value})
    assert run.check(req) is Reason.MALFORMED
    ok = make_train_request(run.keys[0], CHAIN_ID, "humidity", 2, "fedavg", {"handover_timeout": 5})
    assert run.check(ok) is None


def test_an_early_handover_waits_in_the_mempool_until_its_turn() -> None:
    run = open_run()
    due = expiry(run)
    pool = Mempool(run.ledger.params)
    tx = handover(run, run.keys[1], 1)
    store = run.ledger.store
    assert pool.add(tx, store, due)[1] is None  # admitted on the local clock
    h = run.ledger.height + 1
    assert pool.reap(store, due - 1, h, 100) == []  # a proposer whose clock is behind leaves it
    assert len(pool) == 1
    assert pool.reap(store, due, h, 100) == [tx]


def test_a_chain_with_handovers_verifies_on_disk(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "node.db")
    run = open_run(store)
    at(run, expiry(run), [handover(run, run.keys[1], 1)])
    commit_round(run, 1, run.keys[1])
    report = verify_chain(store, run.ledger.genesis)
    assert report.ok, report.error
    # The views name each round's coordinator and the handover (model list/show, /run/RUN).
    (info,) = runs(store)
    assert [h.to_json()["round"] for h in info.handovers] == [1]
    assert info.current_coordinator == run.keys[1].public and info.coordinator == run.keys[0].public
    assert info.to_json()["handovers"][0]["from"] == short_id(run.keys[0].public)
    assert [m.coordinator for m in models(store, run.run)] == [run.keys[0].public, run.keys[1].public]
    shown = lineage(store, models(store, run.run)[1])
    assert shown["coordinator"] == short_id(run.keys[1].public) and shown["coordinator_since"]["round"] == 1
    rows = store.model_rows(run.run, "handover")
    assert len(rows) == 1 and store.latest_model_row(run.run, "handover") == rows[0]
    assert store.model_handover(run.run, 1, run.keys[1].public) == rows[0]
    # A tampered handover row is caught by verify.
    store.close()
    db = sqlite3.connect(tmp_path / "node.db")
    db.execute("UPDATE models SET round = 7 WHERE kind = 'handover'")
    db.commit()
    db.close()
    store = SqliteStore(tmp_path / "node.db", read_only=True)
    assert not verify_chain(store, run.ledger.genesis).ok
    store.close()


def test_a_version_2_ledger_is_migrated_in_place_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "node.db"
    store = SqliteStore(path)
    run = open_run(store)
    before = store.model_rows()
    store.close()
    # Make it what a version-2 node wrote: the models table without 'handover' among its kinds.
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE m2 (tx_id BLOB PRIMARY KEY REFERENCES txs(id), height INTEGER NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('update', 'commit', 'eval')), run BLOB NOT NULL,
            round INTEGER NOT NULL, node BLOB NOT NULL, weights_hash BLOB NOT NULL);
        INSERT INTO m2 SELECT * FROM models; DROP TABLE models; ALTER TABLE m2 RENAME TO models;
        UPDATE meta SET value = '2' WHERE key = 'schema_version';
    """)
    db.commit()
    db.close()
    ro = SqliteStore(path, read_only=True)  # read as it is
    assert ro.model_rows() == before
    ro.close()
    store = SqliteStore(path)
    assert store.model_rows() == before
    version = sqlite3.connect(path).execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    assert version == ("3",)
    # The migrated table takes handovers.
    migrated = Run(Ledger(store, run.ledger.genesis), run.keys, run.run, run.initial_hash)
    at(migrated, expiry(migrated), [handover(migrated, run.keys[1], 1)])
    assert len(store.model_rows(run.run, "handover")) == 1
    assert verify_chain(store, run.ledger.genesis).ok
    store.close()
