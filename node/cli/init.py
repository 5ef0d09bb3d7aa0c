"""`fedledger init DIR`: create a node identity (key + config) in a data directory.

Never overwrites: a node key is an identity (and for an authority, a validator seat); replacing
it by accident cannot be undone, so a second init on the same DIR fails and changes nothing.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from node.errors import ConfigError, KeyFileError
from node.ledger.keys import NodeKey

KEY_FILE = "node.key"
CONFIG_FILE = "config.json"
DEFAULT_LISTEN_HOST = "127.0.0.1"
DEFAULT_LISTEN_PORT = 7600


def add_parser(sub: Any) -> None:
    p: argparse.ArgumentParser = sub.add_parser("init", help="create a node identity in DIR")
    p.add_argument("dir", metavar="DIR", help="node data directory (created if missing)")
    p.add_argument("--name", help="human-readable node name (default: node-<short id>)")
    p.add_argument(
        "--passphrase-file",
        metavar="FILE",
        help="encrypt node.key with the passphrase in FILE (trailing newline ignored)",
    )
    p.add_argument("--host", default=DEFAULT_LISTEN_HOST, help=f"listen host (default {DEFAULT_LISTEN_HOST})")
    p.add_argument(
        "--port", type=int, default=DEFAULT_LISTEN_PORT, help=f"listen port (default {DEFAULT_LISTEN_PORT})"
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def read_passphrase(path: str) -> bytes:
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
) -> dict[str, Any]:
    """Create DIR/node.key (0600) and DIR/config.json; return the config written."""
    d = Path(directory)
    key_path, config_path = d / KEY_FILE, d / CONFIG_FILE
    if key_path.exists():
        raise KeyFileError(f"{d} already holds a node key: {key_path} (refusing to overwrite)")
    if config_path.exists():
        raise ConfigError(f"{d} already holds a node config: {config_path} (refusing to overwrite)")
    if name is not None and not 1 <= len(name) <= 64:
        raise ConfigError("--name must be 1..64 characters")
    if not 0 < port < 65536:
        raise ConfigError("--port must be in 1..65535")
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
    }
    # O_EXCL: a concurrent init must not clobber the config that matches its own key.
    try:
        fd = os.open(config_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except OSError as exc:
        raise ConfigError(f"cannot create {config_path}: {exc.strerror}") from exc
    with os.fdopen(fd, "w") as fh:
        fh.write(json.dumps(config, indent=2) + "\n")
    return config


def run(args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    config = init_node(args.dir, args.name, passphrase, args.host, args.port)
    if args.json:
        print(json.dumps({"dir": str(args.dir), **config}))
    else:
        print(f"Created node {config['name']} ({config['node_id']}) in {args.dir}")
        print(f"  public key  {config['public_key']}")
        print(f"  key file    {Path(args.dir) / KEY_FILE} (mode 0600{', encrypted' if passphrase else ''})")
        print(f"  listens on  {config['listen_host']}:{config['listen_port']}")
    return 0
