"""`fedledger launch` survives a node's death (issue 14, item 4), with real processes: one node is
killed with SIGKILL under load while launch streams readings, and restarted. Launch shows it down,
keeps streaming the other nodes' devices, reconnects the node's devices when it is back, and exits 0;
every device's committed sequence numbers are exactly 1..(its last signed one): nothing signed was
lost or finalized twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from node.launch.processes import NodeProcess, wait_until
from node.ledger.genesis import Genesis
from node.server.datadir import DB_FILE, GENESIS_FILE, PID_FILE
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain

pytestmark = pytest.mark.slow

VICTIM = "node3"


def test_a_node_killed_under_load_is_shown_down_reconnected_and_no_signed_reading_is_lost(
    tmp_path: Path,
) -> None:
    root = tmp_path / "run"
    launch = subprocess.Popen(
        [sys.executable, "-m", "node", "launch", "--dir", str(root), "--no-train", "--duration", "40",
         "--rate", "300", "--json"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    restarted: NodeProcess | None = None
    try:
        victim = root / VICTIM
        assert wait_until(lambda: (victim / PID_FILE).exists(), 90), "launch did not start the nodes"
        proc = NodeProcess(victim)

        def finalized(n: int) -> bool:
            st = proc.status()
            return st is not None and st["readings"] >= n

        assert wait_until(lambda: finalized(1500), 90), "no readings finalized"
        pid = int((victim / PID_FILE).read_text().split()[0])
        os.kill(pid, signal.SIGKILL)  # under load, mid-launch
        assert wait_until(lambda: proc.status() is None, 10)
        time.sleep(4)  # the others keep finalizing meanwhile
        restarted = NodeProcess(victim)
        restarted.start()
        out, _ = launch.communicate(timeout=300)
    finally:
        if launch.poll() is None:
            launch.kill()
            launch.communicate()
    try:
        assert launch.returncode == 0, out[-4000:]
        summary = json.loads(out[out.index("{"):])
        events = summary["node_events"]
        assert any(e.startswith(f"{VICTIM} (") and "is down" in e for e in events), events
        assert any(e.startswith(f"{VICTIM} is back") for e in events), events
        assert summary["nodes_alive"] == 4 and summary["agree"], summary
        assert summary["lost"] == 0, summary
        # Launch signed each device's readings 1..signed and saw every one committed.
        devices = summary["devices"]
        assert len(devices) == 8 and all(d["unconfirmed"] == 0 for d in devices.values()), devices
        assert all(d["committed"] == d["signed"] > 0 for d in devices.values()), devices
        victims = [name for name, d in devices.items() if d["node"] == 3]
        # Every replica, the restarted one included, holds every signed reading exactly once.
        stores = {p.name: SqliteStore(p / DB_FILE, read_only=True) for p in sorted(root.glob("node*"))}
        try:
            heads = set()
            for name, store in stores.items():
                report = verify_chain(store, Genesis.load(root / name / GENESIS_FILE))
                assert report.ok, (name, report.error)
            store = stores["node1"]
            for dev in store.devices():
                seqs = [r.seq for r in store.readings(dev.device)]
                # No gap, no reading twice: exactly what launch signed for the device.
                assert seqs == list(range(1, devices[dev.name]["signed"] + 1)), (dev.name, len(seqs))
            assert victims and all(devices[v]["signed"] > 0 for v in victims)
            common = min(s.height() for s in stores.values())
            heads = {s.block_hash(common) for s in stores.values()}
            assert len(heads) == 1
        finally:
            for s in stores.values():
                s.close()
    finally:
        if restarted is not None:
            restarted.stop()
