"""`fedledger join PEER_URL DIR`: join a running federation from one peer address.

1. Create the node identity in DIR if there is none (a key is an identity: never replaced).
2. Fetch genesis from the peer (GET /genesis), check its hash (and `--genesis-hash` when given),
   and record it with the peer as bootstrap address. A DIR that already belongs to another
   federation is refused.
3. Run the node: it dials the peer, learns the others by peer exchange and syncs the ledger in
   batches from all of them (node/sync.py), verifying commit certificates (`--sync full`: every
   transaction too). Progress is printed.
4. Once caught up, sign and submit a `join_request` for `--role` (unless the ledger already holds
   one, or the node already has that role), print the node id and the command the authorities
   run to approve it, and keep running as a node. Admission is printed when it takes effect.

Later restarts are `fedledger node run DIR`. Ctrl-C / SIGTERM stops the node cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from node.cli.output import port
from node.errors import ConfigError, FedledgerError, RemoteError
from node.flower.auth import supernode_key
from node.ledger.genesis import Genesis
from node.ledger.membership import OPEN_ROLES
from node.ledger.transactions import ROLES, make_join_request, tx_id
from node.net.addresses import advertise_url, check_host
from node.net.http import get_json, http_base
from node.net.ports import free_ports
from node.net.sync import SYNC_MODES
from node.server.datadir import (
    CONFIG_FILE,
    GENESIS_FILE,
    KEY_FILE,
    LOG_FILE,
    PID_FILE,
    NodeConfig,
    init_node,
    read_passphrase,
)
from node.server.logs import LOG_FORMATS

CONNECT_TIMEOUT_S = 60.0
PROGRESS_S = 1.0


class JoinRefused(RemoteError):
    """The federation could not be joined (a wrong or mismatched genesis, a refused request)."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("join", help="join a running federation through one of its nodes, and run the node")
    p.add_argument("peer", metavar="PEER_URL", help="a node of the federation, e.g. ws://10.0.0.5:7600")
    p.add_argument("dir", type=Path, metavar="DIR", help="node data directory (created if missing)")
    p.add_argument("--role", choices=ROLES, default="participant",
                   help="role to ask for (default participant)")
    p.add_argument("--genesis-hash", metavar="HEX",
                   help="refuse to join unless the federation has this genesis hash")
    p.add_argument("--name", help="node name for a new identity (default node-<short id>)")
    p.add_argument("--host", default="127.0.0.1",
                   help="listen address for a new identity (default 127.0.0.1)")
    p.add_argument("--port", type=port, help="listen port for a new identity (default: a free port)")
    p.add_argument("--advertise", metavar="URL",
                   help="for a new identity: the address other machines dial, ws://HOST[:PORT] or "
                        "HOST[:PORT] (default: the listen address)")
    p.add_argument("--sync", choices=SYNC_MODES, default=None,
                   help="certificates (default): verify each block's commit certificate; full: every tx too")
    p.add_argument("--passphrase-file",
                   help="key passphrase file (encrypts a new key, unlocks an existing one)")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    p.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="node.log: text (default) or json, one object per line")
    p.add_argument("--json", action="store_true", help="print one JSON object per event instead of text")
    p.set_defaults(func=run)


def fetch_genesis(peer: str, expected_hash: str | None) -> Genesis:
    """The peer's genesis, checked: its hash as we compute it must be what the peer says and, if
    given, what the user expects."""
    base = http_base(peer)
    answer = get_json(base, "/genesis", timeout=10.0)
    if not isinstance(answer, dict) or not isinstance(answer.get("genesis"), dict):
        raise JoinRefused(f"{base}/genesis did not answer with a genesis (is {peer} a fedledger node?)")
    genesis = Genesis.from_json(json.dumps(answer["genesis"]))
    computed = genesis.hash.hex()
    if answer.get("genesis_hash") != computed:
        claimed = answer.get("genesis_hash")
        raise JoinRefused(f"{peer} sent a genesis whose hash is {computed}, but claims {claimed}")
    if expected_hash is not None and expected_hash.lower() != computed:
        raise JoinRefused(
            f"genesis hash mismatch: the federation at {peer} has {computed}, you asked for "
            f"{expected_hash.lower()}; refusing to join"
        )
    return genesis


def prepare_dir(args: argparse.Namespace, genesis: Genesis, passphrase: bytes | None) -> NodeConfig:
    directory: Path = args.dir
    gpath = directory / GENESIS_FILE
    if gpath.exists():
        mine = Genesis.load(gpath)
        if mine.hash != genesis.hash:
            raise JoinRefused(
                f"{directory} already belongs to federation {mine.chain_id} (genesis "
                f"{mine.hash.hex()[:16]}); {args.peer} runs {genesis.chain_id} "
                f"(genesis {genesis.hash.hex()[:16]})"
            )
    if not (directory / KEY_FILE).exists():
        if (directory / CONFIG_FILE).exists():
            raise ConfigError(f"{directory} has a {CONFIG_FILE} but no {KEY_FILE}")
        port = args.port if args.port is not None else free_ports(1, args.host)[0]
        init_node(directory, args.name, passphrase, args.host, port, args.advertise)
    cfg = NodeConfig.load(directory)
    if not gpath.exists():
        genesis.save(gpath)
    if args.peer not in cfg.bootstrap:
        cfg.bootstrap = [args.peer, *cfg.bootstrap]
    if args.sync is not None:
        cfg.extra["sync_mode"] = args.sync
    cfg.save(directory)
    return cfg


class Reporter:
    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.tty = sys.stdout.isatty() and not as_json

    def event(self, name: str, text: str, **fields: Any) -> None:
        if self.as_json:
            print(json.dumps({"event": name, **fields}), flush=True)
        else:
            if self.tty:
                print("\r\033[K", end="")
            print(text, flush=True)

    def progress(self, text: str) -> None:
        if self.as_json:
            return
        if self.tty:
            print(f"\r\033[K{text}", end="", flush=True)
        else:
            print(text, flush=True)


async def follow_join(node: Any, role: str, out: Reporter) -> None:
    """Sync, request, report admission; returns only when the node stops."""
    from node.server.runtime import wall_ms

    store, me = node.store, node.key.public
    started = time.monotonic()
    # 1. catch up with the federation
    last_print = 0.0
    while True:
        sync = node.sync_status()
        target = sync["target_height"]
        if target > 0 and store.height() >= target and node.net.peers():
            break
        now = time.monotonic()
        if now - started > CONNECT_TIMEOUT_S and not node.net.peers():
            out.event("waiting", f"no peer reachable yet after {CONNECT_TIMEOUT_S:.0f} s; still trying "
                      f"(see {node.dir / LOG_FILE})", peers=0)
            started = now
        if now - last_print >= PROGRESS_S and target > 0:
            out.progress(f"syncing: height {store.height()}/{target}, {sync['blocks_per_s']} blocks/s, "
                         f"{sync['readings_per_s']} readings/s ({sync['mode']})")
            last_print = now
        await asyncio.sleep(0.2)
    sync = node.sync_status()
    out.event("synced", f"synced to height {store.height()} in {sync['elapsed_s']:.1f} s "
              f"({sync['blocks']} blocks, {sync['readings']} readings, {sync['readings_per_s']} readings/s, "
              f"{sync['mode']})", height=store.height(), **{k: sync[k] for k in (
                  "blocks", "readings", "elapsed_s", "blocks_per_s", "readings_per_s", "mode")})
    # 2. ask to join, unless the ledger already says so
    member = store.member(me)
    ms = store.membership()
    if member is not None and member.role == role:
        out.event("member", f"already a member as {role} (since height {member.since_height})", role=role,
                  since_height=member.since_height)
    else:
        pending = ms.request(me)
        if pending is None or pending.role != role:
            tx = make_join_request(node.key, node.genesis.chain_id, role, node.config.name, node.url,
                                   supernode_key(node.dir).public)
            _, reason = node.accept_tx(tx)
            if reason is not None:
                raise JoinRefused(f"the join request was refused: {reason}")
            while not store.has_tx(tx_id(tx)):
                await asyncio.sleep(0.2)
            out.event("requested", f"join request {tx_id(tx).hex()[:12]} is on the ledger "
                      f"(height {store.height()})", tx=tx_id(tx).hex(), height=store.height())
        vset = node.ledger.validators_at(store.height() + 1)
        needed = vset.quorum
        if node.genesis.admission == "open" and role in OPEN_ROLES:
            how = "the federation's admission is open: no votes needed"
        else:
            how = (f"ask {needed} of the {vset.n} authorities to run:\n"
                   f"  fedledger member approve {node.key.short_id} AUTHORITY_DIR")
        who = f"node {node.key.short_id} ({node.key.public.hex()})"
        out.event("pending", f"{who} asks to join as {role}; {how}",
                  node_id=node.key.short_id, public_key=node.key.public.hex(), role=role, votes_needed=needed,
                  approve=f"fedledger member approve {node.key.short_id} AUTHORITY_DIR")
        # 3. wait for the change to take effect
        while True:
            member = store.member(me)
            if member is not None and member.role == role:
                break
            await asyncio.sleep(0.3)
        out.event("admitted", f"admitted as {role} from height {member.since_height}", role=role,
                  since_height=member.since_height, at_ms=wall_ms())
    out.event("running", f"node {node.config.name} running at {node.url}; Ctrl-C stops it; "
              f"restart later with: fedledger node run {node.dir}", url=node.url)


def run(args: argparse.Namespace) -> int:
    from node.cli.node_run import setup_logging
    from node.server.runtime import Node

    if args.genesis_hash is not None:
        text = args.genesis_hash.strip().lower()
        if len(text) != 64 or any(c not in "0123456789abcdef" for c in text):
            raise ConfigError("--genesis-hash must be 64 hex characters")
    # Checked before anything is fetched or created: a bad address must not leave a half-made DIR.
    args.host = check_host(args.host)
    if args.advertise is not None:
        advertise_url(args.advertise, args.port or 1)
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    out = Reporter(args.json)
    genesis = fetch_genesis(args.peer, args.genesis_hash)
    out.event("genesis", f"federation {genesis.chain_id}, genesis {genesis.hash.hex()} "
              f"({len(genesis.authorities)} genesis authorities, admission {genesis.admission})",
              chain_id=genesis.chain_id, genesis_hash=genesis.hash.hex())
    cfg = prepare_dir(args, genesis, passphrase)
    node = Node(args.dir, passphrase=passphrase)
    setup_logging(args.dir, args.log_level, console=False, log_format=args.log_format)
    out.event("started", f"node {cfg.name} ({cfg.node_id}) on {node.config.url}, data in {args.dir}",
              node_id=cfg.node_id, dir=str(args.dir), url=node.config.url)
    pid_file = args.dir / PID_FILE
    failure: list[BaseException] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        pid_file.write_text(f"{os.getpid()}\n")

        async def joiner() -> None:
            try:
                await follow_join(node, args.role, out)
            except FedledgerError as exc:
                failure.append(exc)
                node.stop()

        task = asyncio.create_task(joiner())
        try:
            await node.run()
        finally:
            task.cancel()

    try:
        asyncio.run(main())
    finally:
        pid_file.unlink(missing_ok=True)
    if failure:
        raise failure[0]
    return 0
