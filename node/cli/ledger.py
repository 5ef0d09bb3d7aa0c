"""`fedledger ledger status|blocks|block|verify|compare|suspicious`: inspect replicas, offline or live.

Local replicas are read straight from DIR/node.db, read-only (node.server.offline: never creates,
migrates or writes the file, so it is safe next to a running node). Every command reads inside one
read transaction, so it sees a single consistent snapshot even while the node commits blocks.
`compare` finds the first height where replicas differ by binary search on their common prefix
(node.store.compare). `suspicious` scores the latest readings with the committed device
fingerprints (node.store.suspicious) and lists the windows that look like another device.
"""

from __future__ import annotations

import argparse
import contextlib
import sqlite3
from pathlib import Path
from typing import Any

from node.cli.output import emit, fmt_time, table
from node.errors import ConfigError, StorageError
from node.ledger.keys import short_id
from node.net.http import HttpReplica, explorer_url, probe_status
from node.server.api import block_detail
from node.server.datadir import NodeConfig, pid_alive
from node.server.offline import offline_status, open_node
from node.store import suspicious as susp
from node.store.compare import Replica, StoreReplica, first_divergence, summary
from node.store.verify import verify_chain

DEFAULT_BLOCKS = 20


def open_replica(target: str, stack: contextlib.ExitStack) -> Replica:
    """A node URL is asked over HTTP; anything else is a node directory, read in one snapshot."""
    if "://" in target:
        return HttpReplica(target)
    node = stack.enter_context(open_node(target))
    return StoreReplica(target, node.config.node_id, node.store)


def describe_tx(tx: dict[str, Any]) -> str:
    body = tx.get("body") if isinstance(tx.get("body"), dict) else {}
    kind = tx.get("kind")
    try:
        if kind == "reading":
            return (f"device {short_id(body['device'])} seq {body['seq']} at {fmt_time(body['timestamp_ms'])}"
                    f"  {body['temperature_c']:.2f} C  {body['humidity_pct']:.1f} %")
        if kind == "register_device":
            return f"owner {short_id(body['owner'])} device {short_id(body['device'])} name {body['name']!r}"
    except (KeyError, TypeError, ValueError):
        pass
    parts = [f"signer {short_id(tx['signer'])}" if isinstance(tx.get("signer"), bytes) else ""]
    for k, v in body.items():
        if isinstance(v, bytes):
            v = v.hex()[:16]
        elif isinstance(v, (list, dict)):
            v = f"[{len(v)}]"
        parts.append(f"{k}={v}")
    return " ".join(p for p in parts if p)[:160]


# --- subcommands -------------------------------------------------------------------------------


def status_lines(st: dict[str, Any]) -> list[str]:
    """Human view of a status; tolerant of missing keys (a live node of another version)."""

    def g(key: str, width: int | None = None) -> str:
        v = st.get(key)
        return "?" if v is None else str(v)[:width]

    validators = st.get("validators") if isinstance(st.get("validators"), list) else []
    rejected = st.get("rejected") if isinstance(st.get("rejected"), dict) else {}
    head_time = st.get("head_time_ms")
    return table([
        ["node", f"{g('name')} ({g('node_id')})", "running" if st.get("running") else "stopped"],
        ["chain", g("chain_id"), f"genesis {g('genesis_hash', 16)}"],
        ["height", g("height"), f"head {g('head_hash', 16)}"
         + (f" at {fmt_time(head_time)}" if isinstance(head_time, int) else "")],
        ["validators", len(validators),
         " ".join(str(v.get("node_id")) for v in validators if isinstance(v, dict))],
        ["ledger", f"{g('txs')} txs", f"{g('readings')} readings, {g('devices')} devices"],
        ["peers", g("peers"), f"mempool {g('mempool')}"],
        ["rejected", sum(v for v in rejected.values() if isinstance(v, int)),
         " ".join(f"{k}={v}" for k, v in sorted(rejected.items()))],
        ["url", g("url"), ""],
        ["explorer", st.get("explorer", "?"), "" if st.get("running") else "(served while the node runs)"],
        *member_rows(st),
        *sync_rows(st.get("sync")),
        *training_rows(st.get("training")),
    ])


def member_rows(st: dict[str, Any]) -> list[list[Any]]:
    members = st.get("members") if isinstance(st.get("members"), list) else []
    ms = st.get("membership") if isinstance(st.get("membership"), dict) else {}
    by_role: dict[str, int] = {}
    for m in members:
        if isinstance(m, dict):
            by_role[str(m.get("role"))] = by_role.get(str(m.get("role")), 0) + 1
    rows: list[list[Any]] = []
    if members:
        rows.append(["members", len(members), " ".join(f"{r}={n}" for r, n in sorted(by_role.items()))])
    for r in ms.get("join_requests", [])[:5]:
        rows.append(["join request", f"{r.get('node_id')} {r.get('name')}",
                     f"as {r.get('role')} since height {r.get('height')}"])
    for v in ms.get("votes", [])[:5]:
        rows.append(["vote", f"{v.get('action')} {v.get('node_id')} as {v.get('role')}",
                     f"{v.get('counted')} of {v.get('needed')} needed"])
    for c in ms.get("scheduled", [])[:5]:
        rows.append(["scheduled", f"{c.get('action')} {c.get('node_id')} as {c.get('role')}",
                     f"from height {c.get('effective_height')}"])
    return rows


def sync_rows(sync: Any) -> list[list[Any]]:
    if not isinstance(sync, dict) or not sync.get("syncing"):
        return []
    rate = f"{sync.get('blocks_per_s')} blocks/s, {sync.get('readings_per_s')} readings/s"
    return [["sync", f"{sync.get('height')}/{sync.get('target_height')}", f"{rate} ({sync.get('mode')})"]]


def training_rows(training: Any) -> list[list[Any]]:
    """One row per run: its progress on the ledger and, on a live node, this node's part in it."""
    if not isinstance(training, dict) or not isinstance(training.get("runs"), list):
        return []
    local = training.get("local") if isinstance(training.get("local"), dict) else {}
    states = {r.get("run"): r for r in local.get("runs", []) if isinstance(r, dict)}
    rows: list[list[Any]] = []
    for r in training["runs"][-5:]:
        if not isinstance(r, dict):
            continue
        mine = states.get(r.get("run"), {})
        state = mine.get("state", "")
        if mine.get("error"):
            state += f": {str(mine['error'])[:80]}"
        handovers = r.get("handovers") if isinstance(r.get("handovers"), list) else []
        rows.append([
            "training",
            f"{str(r.get('run', ''))[:12]} {r.get('task')}/{r.get('strategy')}",
            f"round {r.get('committed_rounds')}/{r.get('rounds')}" + (f" ({state})" if state else "")
            + (f", coordinator {r.get('coordinator')}" if r.get("coordinator") else ""),
        ])
        for h in handovers[-5:]:
            if not isinstance(h, dict):
                continue
            what = ("moved its SuperLink" if h.get("restart") else f"took over from {h.get('from')}")
            rows.append(["  handover", f"round {h.get('round')} at height {h.get('height')}",
                         f"{h.get('to')} {what} (SuperLink {h.get('superlink')})"])
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    if not Path(args.dir).is_dir():
        raise ConfigError(f"{args.dir} is not a directory")
    cfg = NodeConfig.load(Path(args.dir))
    live = probe_status(cfg.local_url, cfg.node_id)
    if live is not None:
        st = {**live, "running": True}
    else:
        with open_node(args.dir) as node:
            st = offline_status(node)
        pid = pid_alive(Path(args.dir))
        if pid is not None:
            st["note"] = f"node.pid names live process {pid}, but {cfg.local_url} did not answer"
    with contextlib.suppress(ConfigError):  # a status without a usable URL shows none
        st["explorer"] = explorer_url(str(st.get("url") or cfg.url))
    human = status_lines(st)
    if st.get("note"):
        human.append(f"note: {st['note']}")
    emit(args, st, human)
    return 0


def cmd_blocks(args: argparse.Namespace) -> int:
    for name in ("from_", "to"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise ConfigError(f"--{name.rstrip('_')} must be a height >= 1, not {v}")
    if args.from_ is not None and args.to is not None and args.to < args.from_:
        raise ConfigError(f"--to {args.to} is below --from {args.from_}")
    with open_node(args.dir) as node:
        height = node.store.height()
        hi = height if args.to is None else min(args.to, height)
        lo = args.from_ if args.from_ is not None else max(1, hi - DEFAULT_BLOCKS + 1)
        blocks = node.store.block_rows(lo, hi)
    rows: list[list[Any]] = [["HEIGHT", "HASH", "ROUND", "TIME (UTC)", "PROPOSER", "TXS"]]
    rows += [[b["height"], b["hash"][:16], b["round"], fmt_time(b["time_ms"]), b["proposer"], b["num_txs"]]
             for b in blocks]
    human = table(rows) if blocks else []
    human.append(f"{len(blocks)} blocks shown (height {height})")
    emit(args, {"height": height, "blocks": blocks}, human)
    return 0


def cmd_block(args: argparse.Namespace) -> int:
    with open_node(args.dir) as node:
        block = node.store.block(args.height) if args.height >= 1 else None
        if block is None:
            raise StorageError(f"no block at height {args.height} (height is {node.store.height()})")
        commit = node.store.commit(args.height)
        n_validators = len(node.store.membership().validators_at(args.height))
    detail = block_detail(block, commit)
    for d, raw in zip(detail["txs"], block.txs, strict=True):
        if isinstance(raw.get("signer"), bytes):
            d["signer_id"] = short_id(raw["signer"])
        body = raw.get("body")
        if raw.get("kind") == "reading" and isinstance(body, dict) and isinstance(body.get("device"), bytes):
            d["device_id"] = short_id(body["device"])
    signers = [short_id(v.validator) for v in commit.precommits] if commit else []
    detail["commit_signers"] = signers
    h = block.header
    human = table([
        ["height", h.height, f"round {h.round}"],
        ["hash", block.hash.hex(), ""],
        ["prev_hash", h.prev_hash.hex(), ""],
        ["time", fmt_time(h.time_ms), f"({h.time_ms})"],
        ["proposer", short_id(h.proposer), ""],
        ["tx_root", h.tx_root.hex(), ""],
        ["last_commit", f"round {block.last_commit.round}, {len(block.last_commit.precommits)} precommits"
         if block.last_commit else "none (first block)", ""],
    ])
    human.append(f"transactions ({len(block.txs)}):")
    if block.txs:
        rows = [[i, t.get("kind"), d["id"][:16], describe_tx(t)]
                for i, (t, d) in enumerate(zip(block.txs, detail["txs"], strict=True))]
        human += ["  " + line for line in table(rows)]
    if commit:
        human.append(f"commit: round {commit.round}, {len(signers)}/{n_validators} precommits: "
                     + " ".join(signers))
    else:
        human.append("commit: none stored")
    emit(args, detail, human)
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with open_node(args.dir) as node:
        report = verify_chain(node.store, node.genesis())
    c = report.counts
    if report.ok:
        line = (f"ok: verified {c['blocks']} blocks, {c['txs']} txs, {c['readings']} readings and "
                f"{c['precommits']} precommits from genesis to height {report.height}")
    else:
        line = f"FAILED at height {report.first_bad_height}: {report.error}"
        if report.verified_height:
            line += f" (blocks 1..{report.verified_height} verified)"
    emit(args, {"dir": str(args.dir), **report.to_dict()}, [line])
    return 0 if report.ok else 1


def cmd_compare(args: argparse.Namespace) -> int:
    with contextlib.ExitStack() as stack:
        replicas = [open_replica(t, stack) for t in args.targets]
        common = min(r.height for r in replicas)
        diverge = first_divergence(replicas, common)
        out = {"agree": diverge is None, "common_height": common,
               "replicas": [summary(r, common) for r in replicas], "first_divergence": diverge}
    rows: list[list[Any]] = [["TARGET", "NODE", "HEIGHT", "HEAD", f"HASH AT {common}"]]
    rows += [[r["target"], r["node_id"], r["height"], r["head_hash"][:16], r["hash_at_common"][:16]]
             for r in out["replicas"]]
    human = table(rows)
    if diverge is None:
        human.append(f"agree: {len(replicas)} replicas hold the same blocks 1..{common}")
    elif diverge == 0:
        human.append("DIVERGE: the replicas have different genesis (different federations)")
    else:
        human.append(f"DIVERGE: first differing block at height {diverge} (common height {common})")
    emit(args, out, human)
    return 0 if diverge is None else 1


def cmd_suspicious(args: argparse.Namespace) -> int:
    with open_node(args.dir) as node:
        try:
            found = susp.suspicious(node.store, run=args.run, round=args.round, hours=args.hours,
                                    window_hours=args.window_hours, threshold=args.threshold)
        except susp.NoModel as exc:
            raise ConfigError(f"no device fingerprints to score with: {exc} (train them: fedledger train "
                              f"{args.dir} --task traceability --rounds 1)") from exc
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc
    f = found
    human = [f"fingerprints of run {f['run'][:12]} round {f['round']} ({len(f['fingerprints'])} of "
             f"{len(f['devices'])} devices); {f['readings']} readings of the latest {f['hours']} h, "
             f"{f['windows_scored']} windows of {f['window_hours']} h scored, threshold "
             f"{f['threshold']:g} nats/h"]
    if found["flagged"]:
        rows: list[list[Any]] = [["DEVICE", "FROM (UTC)", "TO (UTC)", "LOOKS LIKE", "SCORE (NATS/H)",
                                  "WINDOWS"]]
        rows += [[f["device"], fmt_time(f["start_ms"]), fmt_time(f["end_ms"]),
                  f["looks_like"] or "no known device", f["score"], f["windows"]] for f in found["flagged"]]
        human += table(rows)
        if found["flagged_total"] > len(found["flagged"]):
            human.append(f"... {found['flagged_total'] - len(found['flagged'])} more")
    else:
        human.append("nothing suspicious: every window looks most like the device that signed it")
    for c in found["copies"]:
        human.append(f"{c['device']} replays {c['copy_of']}'s readings (one-minute changes correlate "
                     f"{c['correlation']:.3f} at a lag of {c['lag_minutes']} min over {c['minutes']} "
                     f"minutes; committed later in {c['committed_later']} of them): not scored, and no "
                     "candidate")
    for p in found["tracking_pairs"]:
        human.append(f"{p['devices'][0]} and {p['devices'][1]} report the same readings (correlation "
                     f"{p['correlation']:.3f}, lag {p['lag_minutes']} min) and the ledger cannot tell "
                     "which came first")
    emit(args, found, human)
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def add_parser(sub: Any) -> None:
    p = sub.add_parser("ledger", help="inspect, verify and compare ledger replicas")
    lsub = p.add_subparsers(dest="ledger_command", metavar="SUBCOMMAND")
    lsub.required = True

    def cmd(name: str, help_: str, func: Any) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = lsub.add_parser(name, help=help_)
        c.add_argument("--json", action="store_true", help="print one JSON object")
        c.set_defaults(func=run, ledger_func=func)
        return c

    cmd("status", "the node's status (live if it runs, else from its node.db)", cmd_status).add_argument(
        "dir", metavar="DIR", help="node data directory")
    b = cmd("blocks", f"block summaries (default: the last {DEFAULT_BLOCKS})", cmd_blocks)
    b.add_argument("dir", metavar="DIR", help="node data directory")
    b.add_argument("--from", dest="from_", type=int, metavar="H", help="first height")
    b.add_argument("--to", type=int, metavar="H", help="last height")
    one = cmd("block", "one block: header, transactions, commit certificate", cmd_block)
    one.add_argument("dir", metavar="DIR", help="node data directory")
    one.add_argument("height", type=int, metavar="HEIGHT")
    cmd("verify", "re-verify the replica from genesis", cmd_verify).add_argument(
        "dir", metavar="DIR", help="node data directory")
    cmp_ = cmd("compare", "compare replicas' blocks on their common prefix", cmd_compare)
    cmp_.add_argument("targets", nargs="+", metavar="TARGET", help="node directory or URL (ws:// or http://)")
    su = cmd("suspicious", "devices and time windows whose readings look like another device (stolen keys)",
             cmd_suspicious)
    su.add_argument("dir", metavar="DIR", help="node data directory")
    su.add_argument("--task", choices=("traceability",), default="traceability",
                    help="the model that scores the readings (the device fingerprints)")
    su.add_argument("--run", metavar="RUNPREFIX", help="traceability run (default: the latest)")
    su.add_argument("--round", type=int, metavar="R", help="round (default: the latest committed)")
    su.add_argument("--hours", type=_positive, default=susp.DEFAULT_HOURS, metavar="H",
                    help=f"score the latest H hours of readings (default {susp.DEFAULT_HOURS}, "
                         f"at most {susp.MAX_HOURS})")
    su.add_argument("--window-hours", type=_positive, default=susp.DEFAULT_WINDOW_HOURS, metavar="W",
                    help=f"window length in hours (default {susp.DEFAULT_WINDOW_HOURS})")
    su.add_argument("--threshold", type=float, default=susp.THRESHOLD, metavar="NATS",
                    help=f"flag when another device is likelier by this many nats per hour (default "
                         f"{susp.THRESHOLD:g})")


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.ledger_func(args))
    except sqlite3.Error as exc:  # open_node converts these; this is the net for anything it missed
        raise StorageError(f"database error: {exc}") from exc
