"""The layout of a node's data directory: creating one (a key and a config), and loading what a
running node needs from it.

Creating never overwrites: a node key is an identity (and for an authority, a validator seat);
replacing it by accident cannot be undone, so a second init of the same directory fails and changes
nothing.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.errors import ConfigError, KeyFileError
from node.flower.auth import supernode_key
from node.flower.tls import superlink_cert
from node.ledger.keys import NodeKey
from node.net.addresses import WILDCARDS, advertise_url, check_host, format_host

KEY_FILE = "node.key"
CONFIG_FILE = "config.json"
GENESIS_FILE = "genesis.json"
DB_FILE = "node.db"
LOG_FILE = "node.log"
PID_FILE = "node.pid"

DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_LISTEN_PORT = 7600
# The one port rule (config files, init, `node run --port`, join): 0 would let the OS pick a port
# that no peer could be told about.
PORTS = range(1, 65536)


def check_port(port: object, what: str = "port") -> int:
    """`port` if it is a listen port number; ConfigError naming `what` otherwise."""
    if isinstance(port, bool) or not isinstance(port, int) or port not in PORTS:
        raise ConfigError(f"{what} must be a port number in {PORTS.start}..{PORTS.stop - 1}, not {port!r}")
    return port


@dataclass
class NodeConfig:
    name: str
    node_id: str
    public_key: str
    listen_host: str = DEFAULT_LISTEN_HOST
    listen_port: int = DEFAULT_LISTEN_PORT
    key_encrypted: bool = False
    bootstrap: list[str] = field(default_factory=list)
    # The URL peers dial (docs/multi-host.md); None: the listen address, which must then be routable.
    advertise: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return self.advertise or f"ws://{format_host(self.listen_host)}:{self.listen_port}"

    @property
    def local_url(self) -> str:
        """Where to reach this node from its own machine (a wildcard listen address means loopback)."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.listen_host, self.listen_host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.listen_port}"

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
                                   "key_encrypted", "bootstrap", "advertise") if k in d}
        try:
            cfg = NodeConfig(**known, extra={k: v for k, v in d.items() if k not in known})
        except TypeError as exc:
            raise ConfigError(f"{path} is missing fields: {exc}") from exc
        check_port(cfg.listen_port, f"{path}: listen_port")
        check_host(cfg.listen_host, f"{path}: listen_host")
        if cfg.advertise is not None:
            cfg.advertise = advertise_url(cfg.advertise, cfg.listen_port, f"{path}: advertise")
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
            **({"advertise": self.advertise} if self.advertise else {}),
            **self.extra,
        }
        tmp = data_dir / (CONFIG_FILE + ".tmp")
        tmp.write_text(json.dumps(d, indent=2) + "\n")
        tmp.replace(data_dir / CONFIG_FILE)


def read_passphrase(path: str | os.PathLike[str]) -> bytes:
    """The key passphrase in a file (a trailing newline is not part of it)."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read passphrase file {path}: {exc.strerror}") from exc
    data = data.rstrip(b"\r\n")
    if not data:
        raise ConfigError(f"passphrase file {path} is empty")
    return data


def init_node(
    directory: str | os.PathLike[str],
    name: str | None = None,
    passphrase: bytes | None = None,
    host: str = DEFAULT_LISTEN_HOST,
    port: int = DEFAULT_LISTEN_PORT,
    advertise: str | None = None,
) -> dict[str, Any]:
    """Create DIR/node.key (0600) and DIR/config.json; return the config written.

    `host` is the address bound; `advertise` (ws://HOST[:PORT] or HOST[:PORT]) the one peers dial."""
    d = Path(directory)
    key_path, config_path = d / KEY_FILE, d / CONFIG_FILE
    if key_path.exists():
        raise KeyFileError(f"{d} already holds a node key: {key_path} (refusing to overwrite)")
    if config_path.exists():
        raise ConfigError(f"{d} already holds a node config: {config_path} (refusing to overwrite)")
    if name is not None and not 1 <= len(name) <= 64:
        raise ConfigError("--name must be 1..64 characters")
    check_port(port, "--port")
    host = check_host(host, "--host")
    if advertise is not None:
        advertise = advertise_url(advertise, port)
    elif host in WILDCARDS:
        raise ConfigError(f"--host {host} listens on every interface, so it is no address a peer can dial: "
                          "add --advertise with this machine's address (e.g. --advertise 10.0.0.5)")
    try:
        d.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise ConfigError(f"cannot create directory {d}: {exc.strerror}") from exc
    key = NodeKey.generate()
    key.save(key_path, passphrase)
    config = {
        "name": name or f"node-{key.short_id[:8]}",
        "node_id": key.short_id,
        "public_key": key.public.hex(),
        "listen_host": host,
        "listen_port": port,
        "key_encrypted": passphrase is not None,
        **({"advertise": advertise} if advertise else {}),
    }
    # O_EXCL: a concurrent init must not clobber the config that matches its own key.
    try:
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot create {config_path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(config, indent=2) + "\n")
    # The Flower keys and certificate: SuperNode authentication key (its public half goes into
    # genesis or the join request) and the SuperLink's TLS certificate, for when it coordinates.
    supernode_key(d)
    superlink_cert(d, host if host not in ("", "0.0.0.0", "::") else "127.0.0.1")
    return config


def pid_alive(directory: Path) -> int | None:
    """The process id in DIR/node.pid if that process exists (it may not be the node any more)."""
    try:
        pid = int((directory / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid
