"""A node whose signed consensus state cannot be made durable stops, says why and sends nothing
(issue 11, finding 5). A real node process in-process, its store made to fail."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.errors import StorageError
from node.launch.federation import create_federation
from node.ledger.keys import NodeKey
from node.ledger.transactions import make_register_device
from node.server.datadir import DB_FILE
from node.server.runtime import Node
from node.store.sqlite import SqliteStore


def test_a_failed_write_of_the_signed_state_stops_the_node_with_a_clear_error(tmp_path: Path) -> None:
    _, (made,) = create_federation(tmp_path / "fed", 1)
    node = Node(made.dir)
    sent: list[object] = []

    def disk_full(data: bytes) -> None:
        raise StorageError("database or disk is full")

    node.store.save_consensus_state = disk_full  # type: ignore[method-assign]
    node.net.broadcast = lambda *a: sent.append(a)  # type: ignore[method-assign]

    async def scenario() -> None:
        running = asyncio.create_task(node.run())
        for _ in range(100):
            if node._loop is not None:
                break
            await asyncio.sleep(0.05)
        device = NodeKey.generate()
        node.accept_txs([make_register_device(node.key, node.genesis.chain_id, device.public, "d0")])
        with pytest.raises(StorageError, match="stopped signing"):
            await asyncio.wait_for(running, 20)

    asyncio.run(scenario())
    assert node.consensus.halted and [t for t, _ in sent if t != "status"] == []  # no proposal, no vote
    reopened = SqliteStore(made.dir / DB_FILE, read_only=True)
    assert reopened.height() == 0 and reopened.load_consensus_state() is None
    reopened.close()
