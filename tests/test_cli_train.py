"""`fedledger train`: what it refuses before anything runs, and what it puts in the request."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node.cli.main import main
from node.launch.federation import create_federation
from node.launch.train_request import request_params
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey
from node.ledger.transactions import make_register_device
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE
from node.store.sqlite import SqliteStore
from tests.factories import commit_next, device_key


def test_train_needs_a_running_node_and_a_federation_dir(tmp_path: Path, capsys: Any) -> None:
    _, nodes = create_federation(tmp_path / "fed", 2)
    assert main(["train", str(nodes[0].dir), "--task", "humidity"]) == 1
    assert "is not running" in capsys.readouterr().err
    assert main(["train", str(tmp_path), "--task", "humidity"]) == 1
    assert "not a node directory" in capsys.readouterr().err
    assert main(["train", str(nodes[0].dir), "--task", "weather"]) == 2  # argparse: unknown task
    assert main(["train", str(nodes[0].dir), "--task", "humidity", "--rounds", "0"]) == 1


def test_request_params_name_every_training_member_and_the_devices_as_classes(tmp_path: Path) -> None:
    _, nodes = create_federation(tmp_path / "fed", 3)
    node_dir = nodes[0].dir
    genesis = Genesis.load(node_dir / GENESIS_FILE)
    keys = sorted((NodeKey.load(n.dir / KEY_FILE) for n in nodes), key=lambda k: k.public)
    store = SqliteStore(node_dir / DB_FILE)
    regs = [make_register_device(keys[0], genesis.chain_id, device_key(i).public, f"room_{i}")
            for i in (2, 1)]
    commit_next(Ledger(store, genesis), keys, regs)
    store.close()

    params = request_params(node_dir, "traceability")
    assert params["min_nodes"] == 3 and params["superlink"].startswith("127.0.0.1:")
    assert params["classes"] == "room_1,room_2"
    assert "classes" not in request_params(node_dir, "humidity")
