"""Federated training end to end with real processes: `fedledger launch` runs 4 nodes, each node
trains on its own committed readings through Flower, and every round is committed on every replica."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from node.ledger.genesis import Genesis
from node.ledger.transactions import ModelUpdate, parse_tx
from node.server.datadir import DB_FILE, GENESIS_FILE
from node.store.models import models, runs
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain

pytestmark = [pytest.mark.slow, pytest.mark.federated]


def leftover_processes(marker: str) -> list[str]:
    out = subprocess.run(["pgrep", "-af", marker], capture_output=True, text=True)
    return [line for line in out.stdout.splitlines() if "pgrep" not in line]


def test_launch_trains_two_rounds_committed_and_verified_on_every_replica(tmp_path: Path) -> None:
    root = tmp_path / "run"
    out = subprocess.run(
        [sys.executable, "-m", "node", "launch", "--dir", str(root), "--rounds", "2", "--train-after", "5",
         "--rate", "300", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    training = summary["training"]
    assert training["complete_on_every_replica"], training
    assert [r["round"] for r in training["rounds"]] == [0, 1, 2]
    assert all(r["updates"] == 4 for r in training["rounds"][1:])  # every node contributed
    # The last model is scored by every node on held-out readings (signed model_evals on the
    # ledger, aggregated by launch), next to the device-mean baseline.
    last = training["rounds"][-1]["holdout"]
    assert last["nodes"] == 4 and last["num_examples"] > 0 and last["rmse"] > 0 and last["baseline_rmse"] > 0
    assert last["personal_share"] == 1.0  # every device is predicted by its own line
    # Every round also scored on one held-out set (the final cut's), for a comparable curve.
    common = training["common_holdout"]
    assert [p["round"] for p in common["rounds"]] == [0, 1, 2] and common["holdout_readings"] > 0
    assert common["rounds"][2]["metrics"]["rmse"] < common["rounds"][0]["metrics"]["rmse"]

    replicas = []
    for node_dir in sorted(root.glob("node*")):
        store = SqliteStore(node_dir / DB_FILE)
        try:
            report = verify_chain(store, Genesis.load(node_dir / GENESIS_FILE))  # re-computes every commit
            assert report.ok, (node_dir, report.error)
            (run,) = runs(store)
            assert run.complete and run.request.task == "humidity"
            committed = [(m.round, m.weights_hash, m.height, m.update_ids) for m in models(store, run.run)]
            # Each update trained from the previous commit, on readings of its own node only.
            for m in models(store, run.run)[1:]:
                prev = store.model_commit(run.run, m.round - 1)
                for uid in m.update_ids:
                    rec = store.tx(uid)
                    body = parse_tx(rec.raw).body
                    assert isinstance(body, ModelUpdate) and body.base_model_hash == prev.weights_hash
                    assert body.num_examples > 0 and body.readings_root != bytes(32)
                    assert 0 < body.data_cut < rec.height  # trained on final readings only
            replicas.append(committed)
        finally:
            store.close()
    assert len(replicas) == 4 and all(r == replicas[0] for r in replicas)
    assert leftover_processes(str(root)) == []
