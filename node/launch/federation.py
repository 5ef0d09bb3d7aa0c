"""Creating a local federation: N node directories sharing one genesis, on free ports."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from node.errors import ConfigError
from node.flower.auth import supernode_key
from node.ledger.genesis import Genesis, GenesisMember, Timeouts
from node.net.ports import free_ports
from node.server.datadir import GENESIS_FILE, NodeConfig, init_node

# Fast enough for a local federation on one machine, slow enough for a loaded 2-core box.
LOCAL_TIMEOUTS = Timeouts(
    propose_ms=800, propose_delta_ms=400, prevote_ms=300, prevote_delta_ms=200,
    precommit_ms=300, precommit_delta_ms=200,
)


@dataclass(frozen=True)
class LocalNode:
    name: str
    dir: Path
    url: str
    node_id: str


def create_federation(
    root: Path,
    nodes: int = 4,
    chain_id: str | None = None,
    host: str = "127.0.0.1",
    timeouts: Timeouts = LOCAL_TIMEOUTS,
    create_empty_blocks: bool = False,
) -> tuple[Genesis, list[LocalNode]]:
    """Make ROOT/node1..nodeN, each with its key, config (port, bootstrap = the other nodes) and
    the shared genesis listing all of them as authorities."""
    if nodes < 1:
        raise ConfigError("a federation needs at least one node")
    if root.exists() and any(root.iterdir()):
        raise ConfigError(f"{root} exists and is not empty: choose a new directory with --dir")
    root.mkdir(parents=True, exist_ok=True)
    ports = free_ports(nodes, host)
    made: list[LocalNode] = []
    members: list[GenesisMember] = []
    for i, port in enumerate(ports, start=1):
        d = root / f"node{i}"
        cfg = init_node(d, name=f"node{i}", host=host, port=port)
        # Each first authority's Flower key goes into genesis (init made it): the coordinator
        # registers exactly the members' keys on its SuperLink.
        members.append(GenesisMember(bytes.fromhex(cfg["public_key"]), f"node{i}",
                                     flower_key=supernode_key(d).public))
        made.append(LocalNode(f"node{i}", d, f"ws://{host}:{port}", cfg["node_id"]))
    genesis = Genesis(
        chain_id=chain_id or f"fedledger-local-{int(time.time())}",
        genesis_time_ms=int(time.time() * 1000),
        authorities=tuple(members),
        timeouts=timeouts,
        create_empty_blocks=create_empty_blocks,
    )
    for n in made:
        genesis.save(n.dir / GENESIS_FILE)
        cfg = NodeConfig.load(n.dir)
        cfg.bootstrap = [m.url for m in made if m.dir != n.dir]
        cfg.save(n.dir)
    return genesis, made
