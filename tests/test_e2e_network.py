"""Real node processes on localhost: replication, a crashed node, catch-up, tampering, a foreign peer."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from node.launch.federation import create_federation
from node.launch.processes import NodeProcess, wait_until
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain
from tests.e2e import LocalFederation

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> LocalFederation:
    f = LocalFederation(tmp_path_factory.mktemp("fed") / "fed", 4)
    f.start()
    # One feeder for the whole story (it keeps the devices' sequence numbers); its devices belong
    # to nodes 1-3, so node 4 can be killed without silencing a device.
    f.sensors = f.feeder(targets=[0, 1, 2])  # type: ignore[attr-defined]
    yield f
    f.stop()


def test_four_nodes_replicate_identical_verified_ledgers(fed: LocalFederation) -> None:
    stats = fed.feed(fed.sensors, 400)  # type: ignore[attr-defined]
    assert stats.accepted == 400, stats.rejected
    fed.wait_readings(400)
    heights = [fed.status(i)["height"] for i in range(4)]
    common = min(heights)
    assert common > 1
    assert len({fed.block_hash(i, common) for i in range(4)}) == 1


def test_bad_readings_are_rejected_with_reasons_and_counted(fed: LocalFederation) -> None:
    import asyncio

    from node.ledger.transactions import make_reading
    from node.net.client import LedgerClient

    feeder = fed.sensors  # type: ignore[attr-defined]
    name = next(iter(feeder.owner))
    node = feeder.owner[name]
    key = feeder.keys[name]
    seq = feeder.seq[name]
    replay = make_reading(key, fed.genesis.chain_id, seq, 1_377_300_000_000, 22.0, 50.0)  # seq already used
    forged = make_reading(key, fed.genesis.chain_id, seq + 10_000, 1_377_300_000_000, 22.0, 50.0)
    forged = {**forged, "sig": bytes(64)}
    impossible = make_reading(key, fed.genesis.chain_id, seq + 20_000, 1_377_300_000_000, 250.0, 50.0)

    async def go() -> list:  # type: ignore[type-arg]
        async with LedgerClient(fed.procs[node].url) as c:
            return await c.submit_many([replay, forged, impossible])

    results = asyncio.run(go())
    assert [r.reason for r in results] == ["replayed_sequence", "bad_signature", "out_of_range"]
    rejected = fed.status(node)["rejected"]
    assert rejected.get("replayed_sequence", 0) >= 1 and rejected.get("bad_signature", 0) >= 1
    assert rejected.get("out_of_range", 0) >= 1 and "duplicate" not in rejected


def test_chain_keeps_finalizing_without_a_killed_node_which_then_catches_up(fed: LocalFederation) -> None:
    before = fed.status(0)["readings"]
    fed.procs[3].kill()  # kill -9: f = 1 of 4 may fail
    stats = fed.feed(fed.sensors, 300)  # type: ignore[attr-defined]
    assert stats.accepted == 700, stats.rejected
    fed.wait_readings(before + 300, nodes=[0, 1, 2])
    height = fed.status(0)["height"]

    fed.procs[3].start()
    assert wait_until(lambda: (s := fed.procs[3].status()) is not None and s["height"] >= height, 60), (
        fed.procs[3].log_tail()
    )
    assert fed.block_hash(3, height) == fed.block_hash(0, height)
    # and it takes part again: the chain moves on with it
    stats = fed.feed(fed.sensors, 100)  # type: ignore[attr-defined]
    assert stats.accepted == 400 + 300 + 100
    fed.wait_readings(before + 400)


def test_tampering_with_a_stored_reading_fails_verify_at_its_height(fed: LocalFederation) -> None:
    fed.stop()
    db = fed.procs[1].dir / "node.db"
    with sqlite3.connect(db) as c:
        query = "SELECT tx_id, height FROM readings ORDER BY height DESC LIMIT 1"
        tx_id, height = c.execute(query).fetchone()
        c.execute("UPDATE readings SET temperature_c = temperature_c + 5 WHERE tx_id = ?", (tx_id,))
    for i, p in enumerate(fed.procs):
        store = SqliteStore(p.dir / "node.db")
        try:
            report = verify_chain(store, fed.genesis)
        finally:
            store.close()
        if i == 1:
            assert not report.ok and report.first_bad_height == height, report
        else:
            assert report.ok, report


def test_a_peer_of_another_federation_is_refused(tmp_path: Path) -> None:
    ours = LocalFederation(tmp_path / "ours", 1)
    ours.start()
    try:
        _, (stranger,) = create_federation(tmp_path / "theirs", 1)
        intruder = NodeProcess(stranger.dir)
        intruder.start(extra_args=["--bootstrap", ours.procs[0].url])
        try:
            def refused() -> bool:
                s = ours.procs[0].status() or {}
                return s.get("network", {}).get("handshake_refusals", {}).get("wrong_federation", 0) > 0

            assert wait_until(refused, 30), ours.procs[0].status()
            assert ours.status(0)["peers"] == 0
            assert (intruder.status() or {}).get("peers") == 0
        finally:
            intruder.stop()
    finally:
        ours.stop()


def test_launch_runs_a_federation_and_reports_agreeing_replicas(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-m", "node", "launch", "--dir", str(tmp_path / "run"), "--duration", "6",
         "--rate", "300", "--no-train", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["agree"] and summary["nodes_alive"] == 4
    assert summary["finalized_readings"] > 0 and summary["accepted"] == summary["submitted"]
