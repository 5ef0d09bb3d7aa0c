"""End to end on localhost: a trainer, a SuperLink and two SuperNodes (real Flower processes), the
fedledger Flower App run for 2 rounds of the humidity task with fedavg on real data slices.

Takes about 40-50 s on a 2-core machine (Flower polls every 1-3 s; see docs/flower.md).
"""

from __future__ import annotations

import json
import math
import re
import time
from pathlib import Path

import psutil
import pytest

from federated import tasks
from federated.aggregate import Personal, aggregate, verify_aggregate
from federated.data import MAIN_SLICE
from federated.weights import decode_weights, encode_weights, weights_hash
from node.flower.processes import SuperLinkProcess, SuperNodeProcess, TrainerProcess
from node.flower.run import run_app
from node.flower.supervise import stop_all
from node.flower.tls import pin_superlink, superlink_cert
from node.net.ports import free_port
from node.proc import alive

APP_DIR = Path(__file__).resolve().parent.parent / "federated" / "flower"
NODE_DEVICES = ["room_510,room_621", "room_644,room_734"]
DEVICES = "room_510,room_621,room_644,room_734"  # the run's device list: a line per device


@pytest.mark.slow
@pytest.mark.federated
@pytest.mark.timeout(300)
def test_two_rounds_of_humidity_on_two_supernodes(tmp_path: Path) -> None:
    trainer = TrainerProcess(tmp_path / "trainer", warm=["humidity"])
    superlink: SuperLinkProcess | None = None
    supernodes: list[SuperNodeProcess] = []
    seen: set[psutil.Process] = set()  # every process of the deployment we saw
    commit_log = tmp_path / "commits.jsonl"
    try:
        trainer.start(ready_timeout=120)
        # TLS as a ledger run does it: a self-signed certificate, pinned by its hash.
        cert = superlink_cert(tmp_path / "coordinator")
        superlink = SuperLinkProcess(tmp_path / "superlink", free_port(), tls=(cert.cert, cert.key)).start()
        pinned = pin_superlink(superlink.host, superlink.port, cert.sha256, tmp_path / "pinned.crt")
        for i, devices in enumerate(NODE_DEVICES):
            node_dir = tmp_path / f"node{i}"
            node_config = {
                "data-dir": str(node_dir),
                "trainer": trainer.address,
                "rows-csv": str(MAIN_SLICE),
                "devices": devices,
                "every": 4,  # one reading every ~48 min over the 2 days
                "limit-per-device": 150,  # 300 rows per node
            }
            supernodes.append(SuperNodeProcess(node_dir, superlink.address, free_port(), node_config,
                                               root_certificates=pinned).start())

        started = time.monotonic()
        run = run_app(
            APP_DIR,
            superlink.address,
            {
                "task": "humidity",
                "devices": DEVICES,
                "strategy": "fedavg",
                "num-rounds": 2,
                "min-nodes": 2,
                "trainer": trainer.address,
                "commit-log": str(commit_log),
                "epochs": 4,
                "round-timeout": 120.0,
                "node-wait-timeout": 60.0,
            },
            tmp_path / "cli",
            root_certificates=pinned,
        )
        status = run.wait(timeout=240)
        wall = time.monotonic() - started
        assert status == 0, run.failure()
        assert run.final_status is not None and run.final_status["status"] == "finished:completed"

        # Every ClientApp was fedledger's installed one (fl_clientapp.py): stock flwr-clientapp
        # unpacks the app bundle into $FLWR_HOME/apps and imports the code it names.
        for sn in supernodes:
            unpacked = list((sn.flwr_home / "apps").glob("*")) if (sn.flwr_home / "apps").exists() else []
            assert not unpacked, f"a SuperNode unpacked the app bundle: {unpacked}"

        lines = [json.loads(line) for line in commit_log.read_text().splitlines()]
        assert [rec["round"] for rec in lines] == [1, 2]
        blobs = Path(str(commit_log) + ".blobs")
        base = None
        # The round-0 model the ServerApp got from the trainer (seeded, the same in every process).
        model = tasks.initial_weights("humidity", 4, seed=0)
        for rec in lines:
            assert rec["strategy"] == "fedavg" and rec["task"] == "humidity"
            assert len(rec["updates"]) == 2
            assert {u["signed"]["node-dir"] for u in rec["updates"]} == {
                str(tmp_path / "node0"),
                str(tmp_path / "node1"),
            }
            updates = []
            for u in rec["updates"]:
                w = decode_weights((blobs / f"{u['weights_hash']}.flw").read_bytes())
                assert weights_hash(w).hex() == u["weights_hash"] == u["update_id"]
                assert u["num_examples"] > 100
                assert all(math.isfinite(v) for v in u["metrics"].values())
                updates.append((bytes.fromhex(u["update_id"]), w, u["num_examples"]))
            agg = decode_weights((blobs / f"{rec['aggregate_hash']}.flw").read_bytes())
            # Without a ledger, a device's row comes from the node whose update changed it.
            personal = Personal((2, 3), model, None)
            assert encode_weights(agg) == encode_weights(aggregate("fedavg", updates, personal))
            assert verify_aggregate("fedavg", updates, agg, personal)
            for _, w, _ in updates:
                own = [r for r in range(4) if not (w[2][r] == model[2][r]).all()]
                assert len(own) == 2, own  # each node trained its own two devices' rows, nothing else
            model = agg
            assert rec["metrics"]["num-examples"] == sum(n for _, _, n in updates)
            assert all(math.isfinite(v) for v in rec["metrics"].values())
            assert rec["aggregate_hash"] != base  # the model moved
            base = rec["aggregate_hash"]

        out = run.output()
        per_round = [float(x) for x in re.findall(r"fedledger round \d+: train\+commit ([0-9.]+) s", out)]
        total = re.search(r"Strategy execution finished in ([0-9.]+)s", out)
        print(
            f"\nflwr run wall {wall:.1f} s; strategy {total.group(1) if total else '?'} s for 2 rounds "
            f"(train+evaluate); train+commit per round {per_round}"
        )
    finally:
        for p in [trainer, superlink, *supernodes]:
            if p is not None and p.alive:
                root = psutil.Process(p.pid)
                seen.update([root, *root.children(recursive=True)])  # incl. each SuperExec (its own session)
        t_stop = time.monotonic()
        stop_all(supernodes, superlink, [trainer])
        print(f"stop_all took {time.monotonic() - t_stop:.1f} s")
    for p in [trainer, superlink, *supernodes]:
        assert p is not None and not p.alive
    assert len(seen) >= 4 + 3  # 4 processes + 3 SuperExecs at least
    leftover = sorted(p.pid for p in seen if alive(p))
    assert not leftover, f"processes left: {leftover}"
    assert all(not p.remaining_pids() for p in [trainer, superlink, *supernodes] if p is not None)
