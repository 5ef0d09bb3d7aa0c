"""Runs that survive their coordinator (issue 14), with real node and Flower processes: a 4-round
run whose coordinator loses only its SuperLink in round 2 finishes under the same coordinator after
it moved its SuperLink; a 4-round run whose coordinator node is killed with SIGKILL in round 2
finishes under the next authority, and the old coordinator, restarted, catches up and agrees.
Every replica holds the same commits and lineage and verifies; no round is committed twice."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from node.launch.processes import wait_until
from node.ledger.genesis import Genesis
from node.ledger.handover import DEFAULT_HANDOVER_TIMEOUT_S, run_control
from node.ledger.transactions import ModelUpdate, parse_tx
from node.server.datadir import DB_FILE, GENESIS_FILE
from node.store.models import models
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain
from tests.e2e import LocalFederation

pytestmark = [pytest.mark.slow, pytest.mark.federated]

ROUNDS = 4
TIMEOUT_S = DEFAULT_HANDOVER_TIMEOUT_S  # the runs' handover_timeout floor; the pace rule adds the rest
RUN_TIMEOUT_S = 420


def fedledger(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    pytest.importorskip("flwr", reason="Flower is not installed")
    f = LocalFederation(tmp_path_factory.mktemp("failover"), 4)
    f.start()
    try:
        f.feed(f.feeder(devices=4), 1200)  # one device per node
        f.wait_readings(1200)
        yield f
    finally:
        f.stop()
        for p in f.procs:
            p.kill()  # a node killed by a test is gone already; its restarted self is not


def start_run(fed: LocalFederation, coordinator: int = 0) -> bytes:
    out = fedledger("train", str(fed.procs[coordinator].dir), "--task", "humidity", "--rounds", str(ROUNDS),
                    "--min-nodes", "3", "--epochs", "1", "--handover-timeout", str(TIMEOUT_S), "--no-wait",
                    "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    return bytes.fromhex(json.loads(out.stdout)["run"])


def ledger_run(fed: LocalFederation, i: int, run: bytes) -> dict[str, Any] | None:
    st = fed.procs[i].status()
    if st is None:
        return None
    return next((r for r in st["training"]["runs"] if r["run"] == run.hex()), None)


@contextlib.contextmanager
def replica(p: Any) -> Iterator[SqliteStore]:
    store = SqliteStore(p.dir / DB_FILE, read_only=True)
    try:
        yield store
    finally:
        store.close()


def wait_round(fed: LocalFederation, i: int, run: bytes, round: int, timeout: float = RUN_TIMEOUT_S) -> None:
    assert wait_until(lambda: (r := ledger_run(fed, i, run)) is not None and r["committed_rounds"] >= round,
                      timeout, 0.5), f"round {round} not committed on node{i + 1}: {ledger_run(fed, i, run)}"


def round_2_open_with_updates(fed: LocalFederation, run: bytes) -> None:
    """Round 1 committed and round 2 under way (an update of it is final): 'the middle of round 2'."""
    wait_round(fed, 1, run, 1)

    def updating() -> bool:
        with replica(fed.procs[1]) as store:
            return any(m.round == 2 for m in store.model_rows(run, "update"))

    assert wait_until(updating, 120, 0.2), "no round-2 update"


def flower_processes(node_dir: Path) -> list[str]:
    """This node's trainer and Flower processes still running (their command lines name its dir)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if str(node_dir) in cmd and "node run" not in cmd and "pytest" not in cmd:
            found.append(f"{p.pid} {cmd[:160]}")
    return found


def check_replicas(fed: LocalFederation, run: bytes) -> list[Any]:
    """Every replica verifies from genesis and holds the same commits and lineage of the run; each
    round is committed once, on a model trained from the previous commit."""
    replicas = []
    for p in fed.procs:
        with replica(p) as store:
            report = verify_chain(store, Genesis.load(p.dir / GENESIS_FILE))
            assert report.ok, (p.dir, report.error)
            found = models(store, run)
            assert [m.round for m in found] == list(range(ROUNDS + 1)), [m.round for m in found]
            for m in found[1:]:
                prev = store.model_commit(run, m.round - 1)
                for uid in m.update_ids:
                    body = parse_tx(store.tx(uid).raw).body
                    assert isinstance(body, ModelUpdate) and body.base_model_hash == prev.weights_hash
            lineage = [(m.round, m.weights_hash, m.height, m.update_ids,
                        store.model_commit(run, m.round).node) for m in found]
            handovers = [(h.round, h.node, h.height) for h in store.model_rows(run, "handover")]
            replicas.append((lineage, handovers))
    assert all(r == replicas[0] for r in replicas)
    out = fedledger("ledger", "compare", *(str(p.dir) for p in fed.procs))
    assert out.returncode == 0, out.stdout + out.stderr
    return replicas[0]


def test_a_coordinator_whose_superlink_dies_moves_it_and_finishes_the_run(fed: LocalFederation) -> None:
    run = start_run(fed)
    round_2_open_with_updates(fed, run)
    coordinator = fed.procs[0]
    superlinks = [p for p in psutil.process_iter(["cmdline"])
                  if "fl_superlink" in " ".join(p.info["cmdline"] or [])
                  and str(coordinator.dir) in " ".join(p.info["cmdline"] or [])]
    assert len(superlinks) == 1, superlinks
    os.kill(superlinks[0].pid, signal.SIGKILL)
    for i in range(4):
        wait_round(fed, i, run, ROUNDS)
    lineage, handovers = check_replicas(fed, run)
    node1 = bytes.fromhex(coordinator.status()["public_key"])
    # One handover, of node1 to itself at round 2 (it moved its SuperLink); every round committed by it.
    assert [(r, n) for r, n, _ in handovers] == [(2, node1)], handovers
    assert [c for *_, c in lineage] == [node1] * (ROUNDS + 1)


def test_a_killed_coordinator_is_replaced_and_catches_up_when_it_returns(fed: LocalFederation) -> None:
    run = start_run(fed)
    round_2_open_with_updates(fed, run)
    coordinator = fed.procs[0]
    assert coordinator.proc is not None
    killed_at = time.monotonic()
    os.kill(coordinator.proc.pid, signal.SIGKILL)  # the node only: its children are on their own
    # Its trainer and Flower processes notice their parent is gone and exit.
    left = lambda: flower_processes(coordinator.dir)  # noqa: E731
    assert wait_until(lambda: not left(), 30, 0.5), left()
    for i in (1, 2, 3):
        wait_round(fed, i, run, ROUNDS)
    took = time.monotonic() - killed_at
    with replica(fed.procs[1]) as store:
        ctl = run_control(store, run)
        assert ctl is not None and ctl.complete
        old = store.tx(run).signer
        assert ctl.coordinator != old
    # The old coordinator comes back: it catches up, sees the handover and does not restart its run.
    coordinator.start()
    assert wait_until(lambda: (s := coordinator.status()) is not None
                      and s["height"] >= fed.status(1)["height"], 120), coordinator.log_tail()
    lineage, handovers = check_replicas(fed, run)
    assert [r for r, _, _ in handovers] == [2] and handovers[0][1] == ctl.coordinator
    assert [c for *_, c in lineage] == [old, old, ctl.coordinator, ctl.coordinator, ctl.coordinator]
    local = ledger_run(fed, 0, run)
    assert local is not None and local["complete"] and local["coordinator"] != local["requested_by"]
    # It does not fight the new coordinator: no SuperLink of its own for the run.
    mine = [r for r in coordinator.status()["training"]["local"]["runs"] if r["run"] == run.hex()]
    assert all(not r["coordinator"] for r in mine), mine
    assert not [p for p in flower_processes(coordinator.dir) if "fl_superlink" in p]
    # The CLI names the coordinator of each round and the handover.
    status = fedledger("ledger", "status", str(fed.procs[1].dir))
    assert "handover" in status.stdout, status.stdout
    show = fedledger("model", "show", str(fed.procs[1].dir), "--task", "humidity", "--round", "3")
    assert "coordinator" in show.stdout and "handover" in show.stdout, show.stdout
    print(f"failover: {took:.1f} s from the kill to round {ROUNDS} on the other replicas")
