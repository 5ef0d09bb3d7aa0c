"""`fedledger member approve|remove|list`: an authority's vote on who is in the federation.

approve NODE_ID DIR   sign, with DIR's key, a vote to admit NODE_ID in the role its join request
                      asks for, submit it to DIR's running node and wait until it is final
remove NODE_ID DIR    the same, to remove a member
list DIR              members, open join requests, vote tallies and scheduled changes

NODE_ID is the 16-hex short id `fedledger join` prints, or the 64-hex public key. A change takes
effect two blocks after the block in which more than 2/3 of the authorities have voted for it
(node/membership.py); the command says how many votes are in and how many are needed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from pathlib import Path
from typing import Any

from node.cli.output import emit, table
from node.errors import ConfigError, RemoteError
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey, short_id
from node.ledger.membership import EFFECT_DELAY, Membership, to_json
from node.ledger.state import MemberRecord
from node.ledger.transactions import ROLES, make_member_vote, tx_id
from node.net.client import LedgerClient, TxResult
from node.net.http import get_json, probe_status, tx_committed
from node.server.datadir import GENESIS_FILE, KEY_FILE, NodeConfig, read_passphrase
from node.server.offline import open_node

POLL_S = 0.3


class VoteRefused(RemoteError):
    """The node refused the vote, or it did not become final in time."""


def add_parser(sub: Any) -> None:
    p = sub.add_parser("member", help="approve, remove and list the federation's members (authorities vote)")
    msub = p.add_subparsers(dest="member_command", metavar="SUBCOMMAND")
    msub.required = True
    for name, help_ in (("approve", "vote to admit a node that asked to join"),
                        ("remove", "vote to remove a member")):
        c = msub.add_parser(name, help=help_)
        c.add_argument("node_id", metavar="NODE_ID", help="short id (16 hex) or public key (64 hex)")
        c.add_argument("dir", type=Path, metavar="DIR",
                       help="an authority's node directory (its node must run)")
        c.add_argument("--role", choices=ROLES,
                       help="approve: the role to admit (default: the one the node asked for)")
        c.add_argument("--passphrase-file", help="file holding the key passphrase, if the key is encrypted")
        c.add_argument("--no-wait", action="store_true", help="return once the node accepted the vote")
        c.add_argument("--timeout", type=float, default=60.0,
                       help="seconds to wait for finality (default 60)")
        c.add_argument("--json", action="store_true", help="print one JSON object")
        c.set_defaults(func=run_vote, action="add" if name == "approve" else "remove")
    ls = msub.add_parser("list", help="members, join requests, votes and scheduled changes of a replica")
    ls.add_argument("dir", type=Path, metavar="DIR", help="node data directory")
    ls.add_argument("--json", action="store_true", help="print one JSON object")
    ls.set_defaults(func=run_list)


def resolve(node_id: str, candidates: list[bytes], what: str) -> bytes:
    """The one key among `candidates` that NODE_ID names (full key or short id)."""
    text = node_id.strip().lower()
    if len(text) not in (16, 64) or any(c not in "0123456789abcdef" for c in text):
        raise ConfigError(f"NODE_ID must be a 16-hex short id or a 64-hex public key, not {node_id!r}")
    for key in candidates:
        if text in (key.hex(), short_id(key)):
            return key
    raise ConfigError(f"no {what} with id {node_id} on this replica")


def plan_vote(ms: Membership, members: list[MemberRecord], node_id: str, action: str,
              role: str | None) -> tuple[bytes, str]:
    """(node key, role) the vote is about, checked against the replica for a clear early error."""
    if action == "add":
        key = resolve(node_id, [r.node for r in ms.requests], "open join request")
        req = ms.request(key)
        assert req is not None
        return key, role or req.role
    key = resolve(node_id, [m.key for m in members], "member")
    member = next(m for m in members if m.key == key)
    if role is not None and role != member.role:
        raise ConfigError(f"{node_id} has the role {member.role}, not {role}")
    return key, member.role


def run_vote(args: argparse.Namespace) -> int:
    directory: Path = args.dir
    if not (directory / GENESIS_FILE).exists():
        raise ConfigError(f"{directory} is not a node directory of a federation (no {GENESIS_FILE})")
    cfg = NodeConfig.load(directory)
    if probe_status(cfg.local_url, cfg.node_id) is None:
        raise ConfigError(f"the node in {directory} is not running (fedledger node run {directory})")
    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    key = NodeKey.load(directory / KEY_FILE, passphrase)
    with open_node(directory) as node:
        store = node.store
        ms, members, height = store.membership(), store.members(), store.height()
        me = store.member(key.public)
    if me is None or me.role != "authority" or key.public not in ms.validators_at(height + 1):
        role = me.role if me is not None else "not a member"
        raise VoteRefused(f"{directory}'s node ({key.short_id}) is {role}: only authorities vote on members")
    target, role = plan_vote(ms, members, args.node_id, args.action, args.role)
    chain_id = Genesis.load(directory / GENESIS_FILE).chain_id
    tx = make_member_vote(key, chain_id, target, role, args.action)
    base = cfg.local_url

    async def send() -> TxResult:
        async with LedgerClient(base) as client:
            return await client.submit(tx)

    result = asyncio.run(send())
    if not result.accepted and result.reason != "duplicate":
        raise VoteRefused(f"the node refused the vote: {result.reason}")
    txid = tx_id(tx)
    out: dict[str, Any] = {"vote": txid.hex(), "node_id": short_id(target), "action": args.action,
                           "role": role, "voter": key.short_id, "final": False}
    if not args.no_wait:
        deadline = time.monotonic() + args.timeout
        while not tx_committed(base, txid):
            if time.monotonic() > deadline:
                raise VoteRefused(f"vote {txid.hex()[:12]} was not final after {args.timeout:.0f} s")
            time.sleep(POLL_S)
        out["final"] = True
        out.update(_outcome(get_json(base, "/members"), target, args.action, role))
    emit(args, out, _vote_lines(out))
    return 0


def _outcome(view: dict[str, Any], target: bytes, action: str, role: str) -> dict[str, Any]:
    """Where the change stands after our vote: decided (and from when) or how many votes are in."""
    ms = view.get("membership", {})
    hexkey = target.hex()
    for c in (*ms.get("scheduled", []), *ms.get("history", [])):
        if c.get("public_key") == hexkey and c.get("action") == action and c.get("role") == role:
            return {"decided": True, "effective_height": c.get("effective_height")}
    for t in ms.get("votes", []):
        if t.get("public_key") == hexkey and t.get("action") == action and t.get("role") == role:
            return {"decided": False, "votes": t.get("counted"), "needed": t.get("needed")}
    return {"decided": False}


def _vote_lines(out: dict[str, Any]) -> list[str]:
    verb = "admit" if out["action"] == "add" else "remove"
    lines = [f"vote {out['vote'][:12]} by {out['voter']}: {verb} {out['node_id']} as {out['role']}"]
    if not out["final"]:
        lines.append("submitted (not waiting for finality)")
    elif out.get("decided"):
        lines.append(f"decided: in effect from height {out.get('effective_height')}")
    elif "votes" in out:
        lines.append(f"final: {out['votes']} of the {out['needed']} votes needed are in")
    return lines


def run_list(args: argparse.Namespace) -> int:
    with open_node(args.dir) as node:
        store = node.store
        view = to_json(store.membership(), store.members(), store.height())
        view["height"] = store.height()
    rows: list[list[Any]] = [["NODE", "NAME", "ROLE", "SINCE"]]
    rows += [[m["node_id"], m["name"], m["role"], m["since_height"]] for m in view["members"]]
    human = table(rows)
    for r in view["join_requests"]:
        human.append(f"join request: {r['node_id']} {r['name']} as {r['role']} (height {r['height']}, "
                     f"{r['url']}): fedledger member approve {r['node_id']} AUTHORITY_DIR")
    for t in view["votes"]:
        human.append(f"votes: {t['action']} {t['node_id']} as {t['role']}: {t['counted']} of {t['needed']} "
                     f"({', '.join(t['voters'])})")
    for c in view["scheduled"]:
        human.append(f"scheduled: {c['action']} {c['node_id']} as {c['role']} from height "
                     f"{c['effective_height']} (decided at {c['decided_height']}, +{EFFECT_DELAY})")
    if args.json:
        print(json.dumps(view))
    else:
        print("\n".join(human))
    return 0
