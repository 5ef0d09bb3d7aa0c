"""Joining a running federation, with real processes: `fedledger join`, authority votes, catch-up,
training in the next round, and an authority voted out while the chain keeps finalising."""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from node.launch.feeder import Feeder, Target
from node.launch.processes import wait_until
from node.launch.sensors import BUNDLED_CSV, csv_devices, csv_readings
from node.ledger.keys import NodeKey
from node.ledger.transactions import ModelUpdate, make_member_vote, parse_tx
from node.net.client import LedgerClient
from node.net.http import get_json
from node.server.datadir import DB_FILE, KEY_FILE
from node.store.models import models, runs
from node.store.sqlite import SqliteStore
from tests.e2e import LocalFederation

pytestmark = pytest.mark.slow


def fedledger(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "node", *args], capture_output=True, text=True,
                          timeout=timeout)


class Joiner:
    """`fedledger join --json` as a child process; its events arrive on a queue."""

    def __init__(self, peer: str, directory: Path, *extra: str, prefix: list[str] | None = None) -> None:
        self.dir = directory
        self.proc = subprocess.Popen(
            [*(prefix or []), sys.executable, "-m", "node", "join", peer, str(directory), "--json", *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        self.events: queue.Queue[dict[str, Any]] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("{"):
                self.events.put(json.loads(line))

    def wait_for(self, name: str, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                ev = self.events.get(timeout=0.5)
            except queue.Empty:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read() if self.proc.stderr else ""
                    raise AssertionError(f"join exited {self.proc.returncode}: {err}") from None
                continue
            self.seen.append(ev)
            if ev["event"] == name:
                return ev
        raise AssertionError(f"no {name!r} event within {timeout} s; saw {self.seen}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def feed_own(feeder: Feeder, url: str, count: int) -> None:
    """Register the feeder's devices at `url`, wait until they are on that replica, stream."""

    async def go() -> None:
        await feeder.register_devices()
        def registered() -> set[str]:
            return {d["name"] for d in get_json(url, "/devices")["devices"]}

        assert wait_until(lambda: registered() >= set(feeder.owner), 30)
        stats = await feeder.stream(csv_readings(BUNDLED_CSV, devices=set(feeder.owner)), 0, asyncio.Event(),
                                    limit=count)
        assert stats.accepted == count, stats.rejected

    asyncio.run(go())


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    f = LocalFederation(tmp_path_factory.mktemp("join") / "fed", 4)
    f.start()
    f.sensors = f.feeder(devices=4)  # type: ignore[attr-defined]
    stats = f.feed(f.sensors, 1200)  # type: ignore[attr-defined]
    assert stats.accepted == 1200, stats.rejected
    f.wait_readings(1200)
    yield f
    f.stop()


def test_a_join_with_the_wrong_genesis_hash_is_refused(fed: LocalFederation, tmp_path: Path) -> None:
    out = fedledger("join", fed.procs[0].url, str(tmp_path / "stranger"), "--genesis-hash", "ab" * 32)
    assert out.returncode == 1
    assert "genesis hash mismatch" in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "stranger" / "genesis.json").exists()  # nothing was joined


@pytest.mark.federated
def test_a_fifth_node_joins_syncs_trains_and_an_authority_is_voted_out(
    fed: LocalFederation, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    node5 = tmp_path / "node5"
    joiner = Joiner(fed.procs[1].url, node5, "--name", "node5")  # any member will do as the peer
    try:
        pending = joiner.wait_for("pending", 120)
        synced = next(e for e in joiner.seen if e["event"] == "synced")
        assert synced["height"] >= 1 and synced["readings"] >= 1200
        node_id, needed = pending["node_id"], pending["votes_needed"]
        assert needed == 3
        url5 = json.loads((node5 / "config.json").read_text())
        url5 = f"ws://127.0.0.1:{url5['listen_port']}"
        key5 = NodeKey.load(node5 / KEY_FILE)

        # A vote from a node that is no authority: the CLI refuses, and so does every node.
        out = fedledger("member", "approve", node_id, str(node5))
        assert out.returncode == 1 and "only authorities vote" in out.stderr
        self_vote = make_member_vote(key5, fed.genesis.chain_id, key5.public, "participant", "add")

        async def submit(tx: dict[str, Any]) -> Any:
            async with LedgerClient(fed.procs[0].url) as c:
                return await c.submit(tx)

        result = asyncio.run(submit(self_vote))
        assert not result.accepted and result.reason == "unauthorized"
        assert fed.status(0)["rejected"].get("unauthorized", 0) >= 1

        # Three of the four authorities approve; the last vote decides, effective two blocks on.
        outs = [fedledger("member", "approve", node_id, str(p.dir), "--json") for p in fed.procs[:3]]
        assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
        votes = [json.loads(o.stdout) for o in outs]
        assert [v.get("decided") for v in votes] == [False, False, True]
        admitted = joiner.wait_for("admitted", 60)
        assert admitted["since_height"] == votes[2]["effective_height"]
        t_admitted = time.monotonic()
        status1 = fed.status(0)
        assert {m["node_id"]: m["role"] for m in status1["members"]}[node_id] == "participant"

        # The new participant gets sensors of its own, then a run: it must contribute round 1.
        names = csv_devices(BUNDLED_CSV, limit=6)[4:6]
        feeder5 = Feeder([Target(node5, url5)], fed.genesis.chain_id, names)
        feed_own(feeder5, url5, 300)
        assert wait_until(lambda: get_json(url5, "/status")["readings"] >= 1500, 60)
        train = fedledger("train", str(fed.procs[0].dir), "--task", "humidity", "--rounds", "1",
                          "--epochs", "2", "--json", timeout=900)
        assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-3000:]
        t_round = time.monotonic()
        result_run = json.loads(train.stdout)
        store = SqliteStore(node5 / DB_FILE, read_only=True)
        try:
            (run,) = runs(store)
            round1 = models(store, run.run)[1]
            signers = {parse_tx(store.tx(u).raw).body.node for u in round1.update_ids}  # type: ignore[union-attr]
            assert key5.public in signers and len(signers) == 5
            upd = next(parse_tx(store.tx(u).raw).body for u in round1.update_ids
                       if parse_tx(store.tx(u).raw).body.node == key5.public)  # type: ignore[union-attr]
            assert isinstance(upd, ModelUpdate) and upd.num_examples > 0
        finally:
            store.close()
        assert result_run["summary"]["complete"]

        # The joined replica is identical to the others and re-verifies from genesis.
        verify = fedledger("ledger", "verify", str(node5), "--json")
        assert verify.returncode == 0 and json.loads(verify.stdout)["ok"], verify.stdout + verify.stderr
        compare = fedledger("ledger", "compare", str(node5), *[str(p.dir) for p in fed.procs], "--json")
        assert compare.returncode == 0, compare.stdout + compare.stderr

        # Remove authority node4: 3 of 4 vote, the set shrinks to 3 and the chain goes on.
        node4_id = fed.status(3)["node_id"]
        outs = [fedledger("member", "remove", node4_id, str(p.dir), "--json") for p in fed.procs[:3]]
        assert all(o.returncode == 0 for o in outs), [o.stderr for o in outs]
        effective = json.loads(outs[2].stdout)["effective_height"]
        assert wait_until(lambda: fed.status(0)["height"] >= effective, 60)
        validators = [v["node_id"] for v in fed.status(0)["validators"]]
        assert len(validators) == 3 and node4_id not in validators
        before, readings_before = fed.status(0)["height"], fed.status(0)["readings"]
        feeder = fed.sensors  # type: ignore[attr-defined]
        # node4's devices stop with its membership: feed only the devices of nodes 1-3.
        for name, owner in list(feeder.owner.items()):
            if owner == 3:
                del feeder.owner[name]
        stats = fed.feed(feeder, 200)
        assert stats.rejected.get("owner_removed", 0) == 0
        assert wait_until(lambda: fed.status(0)["readings"] >= readings_before + 200, 60)
        assert fed.status(0)["height"] > before
        top = fed.status(0)["height"]
        block = get_json(fed.procs[0].url, f"/block/{top}")
        assert block["commit"] is not None
        signers_top = {v["validator"] for v in block["commit"]["precommits"]}
        assert fed.status(3)["public_key"] not in signers_top
        assert wait_until(lambda: get_json(url5, "/status")["height"] >= top, 60)
        print(f"\njoin -> admitted {t_admitted - t0:.1f} s, join -> round 1 committed with node5 "
              f"{t_round - t0:.1f} s, synced {synced['readings']} readings in {synced['elapsed_s']} s")
    finally:
        joiner.stop()
