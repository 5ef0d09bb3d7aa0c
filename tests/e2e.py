"""Helpers for end-to-end tests with real node processes on localhost."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from node.launch.federation import create_federation
from node.launch.feeder import Feeder, FeedStats, Target
from node.launch.processes import NodeProcess, wait_until
from node.launch.sensors import BUNDLED_CSV, csv_devices, csv_readings
from node.ledger.genesis import Genesis
from node.net.http import get_json


class LocalFederation:
    def __init__(self, root: Path, nodes: int = 4, node_args: list[str] | None = None) -> None:
        self.genesis, made = create_federation(root, nodes)
        self.procs = [NodeProcess(n.dir) for n in made]
        self.node_args = node_args or []  # extra `fedledger node run` options

    def start(self) -> None:
        for p in self.procs:
            p.start(extra_args=self.node_args)
        ok = wait_until(lambda: all((s := p.status()) and s["peers"] >= len(self.procs) - 1
                                    for p in self.procs), 60)
        assert ok, "nodes did not connect:\n" + "\n".join(p.log_tail() for p in self.procs)

    def stop(self) -> None:
        """Every node at once: each waits for its own Flower processes to stop (seconds after a
        training run), and one after another those waits add up."""
        with ThreadPoolExecutor(max(1, len(self.procs))) as pool:
            list(pool.map(lambda p: p.stop(), self.procs))

    def status(self, i: int) -> dict[str, Any]:
        s = self.procs[i].status()
        assert s is not None, f"node {i} does not answer:\n{self.procs[i].log_tail()}"
        return s

    def feeder(self, targets: list[int] | None = None, devices: int = 4) -> Feeder:
        names = csv_devices(BUNDLED_CSV, limit=devices)
        idx = targets if targets is not None else range(len(self.procs))
        targets = [Target(self.procs[i].dir, self.procs[i].url) for i in idx]
        return Feeder(targets, self.genesis.chain_id, names)

    def feed(self, feeder: Feeder, count: int) -> FeedStats:
        """Register (idempotent) and submit the feeder's next `count` real readings as fast as they
        are accepted; returns the feeder's cumulative stats."""
        async def go() -> FeedStats:
            await feeder.register_devices()
            assert wait_until(
                lambda: len(get_json(self.procs[0].url, "/devices")["devices"]) >= len(feeder.owner), 30
            )
            if not hasattr(feeder, "source"):
                source = csv_readings(BUNDLED_CSV, devices=set(feeder.owner))
                feeder.source = source  # type: ignore[attr-defined]
            source = feeder.source  # type: ignore[attr-defined]
            return await feeder.stream(source, 0, asyncio.Event(), limit=count)

        return asyncio.run(go())

    def wait_readings(self, n: int, nodes: list[int] | None = None, timeout: float = 60) -> None:
        idx = nodes if nodes is not None else range(len(self.procs))
        ok = wait_until(
            lambda: all((s := self.procs[i].status()) and s["readings"] >= n for i in idx), timeout
        )
        assert ok, f"readings did not reach {n}: {[self.procs[i].status() for i in idx]}"

    def block_hash(self, i: int, height: int) -> str:
        return get_json(self.procs[i].url, f"/block/{height}")["hash"]


def load_genesis(root: Path) -> Genesis:
    return Genesis.load(root / "node1" / "genesis.json")
