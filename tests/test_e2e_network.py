"""Real node processes on localhost: replication, a crashed node, catch-up, tampering, a foreign peer.

The four-node federation is shared by the module (starting it is the slow part), but no test relies on
what another one did: each feeds the readings it needs, counts what changed during it (the feeder's and
the nodes' counters are cumulative), leaves every node running, and so passes alone (`pytest -k`) and in
any order."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from node.launch.federation import create_federation
from node.launch.feeder import Feeder, FeedStats
from node.launch.processes import NodeProcess, wait_until
from node.ledger.transactions import make_reading
from node.net.client import LedgerClient
from node.server.datadir import DB_FILE
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain
from tests.e2e import LocalFederation

pytestmark = pytest.mark.slow

# The feeder's devices belong to nodes 1-3, so node 4 can be killed without silencing a device.
FEEDING = [0, 1, 2]
VICTIM = 3


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    f = LocalFederation(tmp_path_factory.mktemp("fed") / "fed", 4)
    f.start()
    try:
        yield f
    finally:
        f.stop()


@pytest.fixture(scope="module")
def sensors(fed: LocalFederation) -> Feeder:
    """One feeder for the module: it keeps the devices' sequence numbers across tests."""
    return fed.feeder(targets=FEEDING)


def feed(fed: LocalFederation, sensors: Feeder, count: int) -> FeedStats:
    """Submit the next `count` readings; what this call added to the feeder's cumulative stats."""
    before = FeedStats(sensors.stats.submitted, sensors.stats.accepted, Counter(sensors.stats.rejected))
    after = fed.feed(sensors, count)
    return FeedStats(after.submitted - before.submitted, after.accepted - before.accepted,
                     after.rejected - before.rejected)


def readings(fed: LocalFederation) -> int:
    """Committed readings now; every node reaches at least this plus whatever is accepted from here."""
    return max(fed.status(i)["readings"] for i in FEEDING)


def test_four_nodes_replicate_identical_verified_ledgers(fed: LocalFederation, sensors: Feeder) -> None:
    before = readings(fed)
    stats = feed(fed, sensors, 400)
    assert stats.accepted == 400, stats.rejected
    fed.wait_readings(before + 400)
    common = min(fed.status(i)["height"] for i in range(4))
    assert common > 1
    assert len({fed.block_hash(i, common) for i in range(4)}) == 1


def test_bad_readings_are_rejected_with_reasons_and_counted(fed: LocalFederation, sensors: Feeder) -> None:
    before = readings(fed)
    stats = feed(fed, sensors, 20)  # so that a device is registered and has used a sequence number
    assert stats.accepted == 20, stats.rejected
    fed.wait_readings(before + 20, nodes=FEEDING)
    name = next(d for d, seq in sensors.seq.items() if seq > 0)
    node, key, seq = sensors.owner[name], sensors.keys[name], sensors.seq[name]
    chain = fed.genesis.chain_id
    replay = make_reading(key, chain, seq, 1_377_300_000_000, 22.0, 50.0)  # seq already committed
    forged = {**make_reading(key, chain, seq + 10_000, 1_377_300_000_000, 22.0, 50.0), "sig": bytes(64)}
    impossible = make_reading(key, chain, seq + 20_000, 1_377_300_000_000, 250.0, 50.0)
    counted_before = Counter(fed.status(node)["rejected"])

    async def submit() -> list[Any]:
        async with LedgerClient(fed.procs[node].url) as c:
            return await c.submit_many([replay, forged, impossible])

    results = asyncio.run(submit())
    assert [r.reason for r in results] == ["replayed_sequence", "bad_signature", "out_of_range"]
    counted = Counter(fed.status(node)["rejected"]) - counted_before
    assert counted == Counter(replayed_sequence=1, bad_signature=1, out_of_range=1)


def test_chain_keeps_finalizing_without_a_killed_node_which_then_catches_up(
    fed: LocalFederation, sensors: Feeder
) -> None:
    victim = fed.procs[VICTIM]
    before = readings(fed)
    victim.kill()  # kill -9: f = 1 of 4 may fail
    try:
        stats = feed(fed, sensors, 300)
        assert stats.accepted == 300, stats.rejected
        fed.wait_readings(before + 300, nodes=FEEDING)
        height = fed.status(0)["height"]
    finally:
        victim.start()  # whatever happened above, the next test finds four nodes
    assert wait_until(lambda: (s := victim.status()) is not None and s["height"] >= height, 60), (
        victim.log_tail()
    )
    assert fed.block_hash(VICTIM, height) == fed.block_hash(0, height)
    # and it takes part again: the chain moves on with it
    stats = feed(fed, sensors, 100)
    assert stats.accepted == 100, stats.rejected
    fed.wait_readings(before + 400)


def snapshot(db: Path, to: Path) -> Path:
    """A consistent copy of a running node's database (SQLite's online backup)."""
    with contextlib.closing(sqlite3.connect(db)) as src, contextlib.closing(sqlite3.connect(to)) as dst:
        src.backup(dst)
    return to


def test_tampering_with_a_stored_reading_fails_verify_at_its_height(
    fed: LocalFederation, sensors: Feeder, tmp_path: Path
) -> None:
    before = readings(fed)
    assert feed(fed, sensors, 20).accepted == 20
    fed.wait_readings(before + 20)
    # Copies, so that the federation keeps running for the other tests.
    copies = [snapshot(p.dir / DB_FILE, tmp_path / f"node{i}.db") for i, p in enumerate(fed.procs)]
    with contextlib.closing(sqlite3.connect(copies[1])) as c:
        query = "SELECT tx_id, height FROM readings ORDER BY height DESC LIMIT 1"
        tx_id, height = c.execute(query).fetchone()
        c.execute("UPDATE readings SET temperature_c = temperature_c + 5 WHERE tx_id = ?", (tx_id,))
        c.commit()
    for i, db in enumerate(copies):
        store = SqliteStore(db)
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
    out = subprocess.run(
        [sys.executable, "-m", "node", "launch", "--dir", str(tmp_path / "run"), "--duration", "6",
         "--rate", "300", "--no-train", "--json"],
        capture_output=True, text=True, timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = json.loads(out.stdout)
    assert summary["agree"] and summary["nodes_alive"] == 4
    assert summary["finalized_readings"] > 0 and summary["accepted"] == summary["submitted"]
    assert [n["explorer"] for n in summary["nodes"]] == [n["url"].replace("ws://", "http://") + "/"
                                                         for n in summary["nodes"]]
