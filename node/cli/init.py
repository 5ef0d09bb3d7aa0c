"""`fedledger init DIR`: create a node identity (key + config) in a data directory.

Never overwrites (node.server.datadir.init_node): a second init on the same DIR fails and changes
nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from node.cli.output import port
from node.flower.auth import supernode_key
from node.net.addresses import format_host
from node.server.datadir import DEFAULT_LISTEN_HOST, DEFAULT_LISTEN_PORT, KEY_FILE, init_node, read_passphrase


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
        "--port", type=port, default=DEFAULT_LISTEN_PORT, help=f"listen port (default {DEFAULT_LISTEN_PORT})"
    )
    p.add_argument("--advertise", metavar="URL",
                   help="the address other machines dial, ws://HOST[:PORT] or HOST[:PORT] (default: the "
                        "listen address; needed with a wildcard --host such as 0.0.0.0)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def authority_spec(config: dict[str, Any], flower_key: bytes = b"") -> str:
    """This node as `fedledger genesis create --authority` takes it: NAME=PUBLIC_KEY@URL, then
    #TYPE:BASE64, its Flower SuperNode key (the OpenSSH line, its space as ':', so the spec stays
    one shell word)."""
    url = config.get("advertise") or f"ws://{format_host(config['listen_host'])}:{config['listen_port']}"
    spec = f"{config['name']}={config['public_key']}@{url}"
    return f"{spec}#{flower_key.decode().replace(' ', ':', 1)}" if flower_key else spec


def run(args: argparse.Namespace) -> int:
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    config = init_node(args.dir, args.name, passphrase, args.host, args.port, args.advertise)
    spec = authority_spec(config, supernode_key(Path(args.dir)).public)
    if args.json:
        print(json.dumps({"dir": str(args.dir), **config, "authority": spec}))
    else:
        print(f"Created node {config['name']} ({config['node_id']}) in {args.dir}")
        print(f"  public key  {config['public_key']}")
        print(f"  key file    {Path(args.dir) / KEY_FILE} (mode 0600{', encrypted' if passphrase else ''})")
        print(f"  listens on  {format_host(config['listen_host'])}:{config['listen_port']}")
        print(f"  advertises  {config.get('advertise') or 'the listen address'}")
        print(f"  genesis     --authority {spec}")
    return 0
