"""The layout of a node's data directory and loading what a running node needs from it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError

KEY_FILE = "node.key"
CONFIG_FILE = "config.json"
GENESIS_FILE = "genesis.json"
DB_FILE = "node.db"
LOG_FILE = "node.log"
PID_FILE = "node.pid"


@dataclass
class NodeConfig:
    name: str
    node_id: str
    public_key: str
    listen_host: str = "127.0.0.1"
    listen_port: int = 7600
    key_encrypted: bool = False
    bootstrap: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"ws://{self.listen_host}:{self.listen_port}"

    @staticmethod
    def load(data_dir: Path) -> NodeConfig:
        path = data_dir / CONFIG_FILE
        if not path.exists():
            raise ConfigError(f"{data_dir} is not a node directory (no {CONFIG_FILE}); create one with "
                              f"`fedledger init {data_dir}`")
        try:
            d = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        if not isinstance(d, dict):
            raise ConfigError(f"{path} must hold a JSON object")
        known = {k: d[k] for k in ("name", "node_id", "public_key", "listen_host", "listen_port",
                                   "key_encrypted", "bootstrap") if k in d}
        try:
            cfg = NodeConfig(**known, extra={k: v for k, v in d.items() if k not in known})
        except TypeError as exc:
            raise ConfigError(f"{path} is missing fields: {exc}") from exc
        port = cfg.listen_port
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise ConfigError(f"{path}: listen_port must be an integer port number, not {port!r}")
        if not isinstance(cfg.bootstrap, list) or not all(isinstance(u, str) for u in cfg.bootstrap):
            raise ConfigError(f"{path}: bootstrap must be a list of ws:// URLs")
        return cfg

    def save(self, data_dir: Path) -> None:
        d = {
            "name": self.name,
            "node_id": self.node_id,
            "public_key": self.public_key,
            "listen_host": self.listen_host,
            "listen_port": self.listen_port,
            "key_encrypted": self.key_encrypted,
            "bootstrap": self.bootstrap,
            **self.extra,
        }
        tmp = data_dir / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        tmp.replace(data_dir / CONFIG_FILE)
