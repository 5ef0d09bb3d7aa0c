"""`fedledger genesis create`: the genesis of a federation whose authorities run on several machines.

Each host runs `fedledger init DIR --host H --advertise URL`, which prints the node as
`--authority NAME=PUBLIC_KEY@URL`; one operator collects those lines, creates the genesis with them
and copies the file to every host's DIR/genesis.json. The URLs are part of genesis, so a node finds
the others from the file alone (docs/multi-host.md).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from node.errors import ConfigError
from node.ledger.genesis import ADMISSION_POLICIES, Genesis, GenesisMember
from node.ledger.transactions import valid_flower_key
from node.net.addresses import advertise_url

KEY_HEX = 64


def member_spec(text: str, role: str) -> GenesisMember:
    """NAME=PUBLIC_KEY_HEX[@ws://HOST:PORT][#FLOWER_KEY] as `fedledger init` prints it."""
    name, eq, rest = text.partition("=")
    if not eq or not name:
        raise ConfigError(f"--{role} must be NAME=PUBLIC_KEY[@URL] (as `fedledger init` prints it), "
                          f"not {text!r}")
    rest, hashsign, flower = rest.partition("#")
    flower_key = flower.replace(":", " ", 1).encode()
    if hashsign and not valid_flower_key(flower_key):
        raise ConfigError(f"--{role} {name}: after '#' must come the node's Flower key as `fedledger init` "
                          "prints it (TYPE:BASE64)")
    key_hex, at, url = rest.partition("@")
    if len(key_hex) != KEY_HEX or any(c not in "0123456789abcdefABCDEF" for c in key_hex):
        raise ConfigError(f"--{role} {name}: the public key must be {KEY_HEX} hex characters")
    if at and not url:
        raise ConfigError(f"--{role} {name}: nothing after '@' (give ws://HOST:PORT or leave the '@' out)")
    if at:
        # No port default here: the URL says where the node listens, so it must name the port.
        if not url.rpartition(":")[2].isdigit():
            raise ConfigError(f"--{role} {name}: the URL must end in :PORT, not {url!r}")
        url = advertise_url(url, 1, f"--{role} {name}")
    return GenesisMember(bytes.fromhex(key_hex), name, "authority" if role == "authority" else "participant",
                         url, flower_key if hashsign else b"")


def add_parser(sub: Any) -> None:
    p = sub.add_parser("genesis", help="create the genesis of a federation across machines")
    gsub = p.add_subparsers(dest="genesis_command", metavar="SUBCOMMAND")
    gsub.required = True
    c = gsub.add_parser("create", help="write a genesis file from the authorities' `fedledger init` lines")
    c.add_argument("--authority", action="append", required=True, metavar="NAME=KEY@URL",
                   help="one genesis authority, as `fedledger init` prints it (repeatable)")
    c.add_argument("--participant", action="append", default=[], metavar="NAME=KEY[@URL]",
                   help="one genesis participant (repeatable)")
    c.add_argument("--chain-id", help="the federation's name (default fedledger-<unix time>)")
    c.add_argument("--admission", choices=ADMISSION_POLICIES, default="votes",
                   help="how participants and observers join: votes (default) or open")
    c.add_argument("--empty-blocks", action="store_true",
                   help="create blocks while there are no transactions")
    c.add_argument("--out", type=Path, required=True, metavar="FILE",
                   help="where to write the genesis (never overwritten); copy it to each DIR/genesis.json")
    c.add_argument("--json", action="store_true", help="print the result as JSON")
    c.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    authorities = tuple(member_spec(a, "authority") for a in args.authority)
    participants = tuple(member_spec(a, "participant") for a in args.participant)
    now_ms = int(time.time() * 1000)
    genesis = Genesis(
        chain_id=args.chain_id or f"fedledger-{now_ms // 1000}",
        genesis_time_ms=now_ms,
        authorities=authorities,
        participants=participants,
        create_empty_blocks=args.empty_blocks,
        admission=args.admission,
    )
    try:
        genesis.save(args.out)
    except OSError as exc:
        raise ConfigError(f"cannot write {args.out}: {exc.strerror}") from exc
    out = {"file": str(args.out), "chain_id": genesis.chain_id, "genesis_hash": genesis.hash.hex(),
           "authorities": len(authorities), "participants": len(participants)}
    if args.json:
        print(json.dumps(out))
    else:
        print(f"Wrote {args.out}: federation {genesis.chain_id}, {len(authorities)} authorities, "
              f"{len(participants)} participants")
        print(f"  genesis hash  {genesis.hash.hex()}")
        print("  copy it to every authority's DIR/genesis.json, then run `fedledger node run DIR` on each;")
        print(f"  others join with: fedledger join ws://HOST:PORT DIR --genesis-hash {genesis.hash.hex()}")
    return 0
