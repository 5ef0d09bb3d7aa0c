"""`fedledger ledger status|blocks|block|verify|compare`: inspect replicas, offline or live.

Local replicas are read straight from DIR/node.db through a read-only SQLite connection
(`mode=ro`: never creates, migrates or writes the file, so it is safe next to a running node;
WAL lets readers and the node's writer proceed together). Every command reads inside one read
transaction, so it sees a single consistent snapshot even while the node commits blocks.

`compare` relies on the hash chain: a block hash commits to its parent, so two replicas with
the same hash at height H hold the same blocks 1..H. Agreement is therefore monotone in H and
the first divergent height is found by binary search on the common prefix. Committed blocks are
final (BFT), so a live node's growing height does not disturb the search below the common height.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from node.errors import ConfigError, FedledgerError, RemoteError, StorageError
from node.ledger.genesis import Genesis
from node.ledger.keys import short_id
from node.server.api import block_detail, membership_status
from node.server.datadir import DB_FILE, GENESIS_FILE, PID_FILE, NodeConfig
from node.store.models import runs
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain

DEFAULT_BLOCKS = 20
PROBE_TIMEOUT_S = 1.0  # `ledger status`: is the node up?
HTTP_TIMEOUT_S = 5.0  # `ledger compare` against node URLs
REQUIRED_TABLES = frozenset({"meta", "blocks", "commits", "txs", "readings", "devices", "members"})


class NodeUnreachable(RemoteError):
    """A node URL that did not answer, or answered with something that is not its JSON API."""


# --- reading a local replica -------------------------------------------------------------------


class ReadOnlyStore(SqliteStore):
    """SqliteStore's read methods on a `mode=ro` connection (SqliteStore.__init__ writes: it sets
    WAL, creates the schema and stamps the version, which an inspection tool must never do)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._init_caches()  # one snapshot per command, so the parent's caches stay valid
        if not os.path.isfile(self.path):
            raise StorageError(f"no ledger database at {self.path} (has the node ever run?)")
        uri = "file:" + quote(os.path.abspath(self.path)) + "?mode=ro"
        try:
            self._db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False,
                                       timeout=5)
            tables = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.path} read-only: {exc}") from exc
        if not tables >= REQUIRED_TABLES:
            raise StorageError(f"{self.path} is not a fedledger ledger database")

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[ReadOnlyStore]:
        """One read transaction: every read inside sees the same committed state."""
        self._db.execute("BEGIN")
        try:
            yield self
        finally:
            with contextlib.suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def block_rows(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """block_summary() of heights lo..hi from the indexed columns, without decoding any txs."""
        rows = self._db.execute(
            "SELECT height, hash, round, time_ms, proposer, num_txs, prev_hash FROM blocks"
            " WHERE height BETWEEN ? AND ? ORDER BY height",
            (lo, hi),
        )
        return [
            {"height": r[0], "hash": bytes(r[1]).hex(), "round": r[2], "time_ms": r[3],
             "proposer": short_id(bytes(r[4])), "num_txs": r[5], "prev_hash": bytes(r[6]).hex()}
            for r in rows
        ]


class LocalNode:
    """A node directory: its config, its genesis and a read-only view of its node.db."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.dir = Path(directory)
        if not self.dir.is_dir():
            raise ConfigError(f"{self.dir} is not a directory")
        self.config = NodeConfig.load(self.dir)
        self.store = ReadOnlyStore(self.dir / DB_FILE)

    def genesis(self) -> Genesis:
        """genesis.json, which the node runs with; the copy in node.db if that file is gone."""
        path = self.dir / GENESIS_FILE
        if path.exists():
            return Genesis.load(path)
        stored = self.store.genesis()
        if stored is None:
            raise StorageError(f"{self.dir} has no {GENESIS_FILE} and its node.db holds no genesis")
        return Genesis.from_json(stored[1])

    def genesis_hash(self) -> bytes:
        stored = self.store.genesis()
        if stored is None:
            raise StorageError(f"{self.store.path} holds no genesis")
        return stored[0]

    def close(self) -> None:
        self.store.close()


@contextlib.contextmanager
def open_node(directory: str | os.PathLike[str]) -> Iterator[LocalNode]:
    node = LocalNode(directory)
    try:
        with node.store.snapshot():
            yield node
    except sqlite3.Error as exc:  # a corrupt page, a vanished file: an error, not a traceback
        raise StorageError(f"reading {node.store.path} failed: {exc}") from exc
    finally:
        node.close()


def offline_status(node: LocalNode) -> dict[str, Any]:
    """The keys of the API's /status, built from the replica alone (no process to ask)."""
    store, cfg = node.store, node.config
    genesis = node.genesis()
    counts = store.counts()
    member = store.member(bytes.fromhex(cfg.public_key)) if cfg.public_key else None
    head = store.head_hash() or node.genesis_hash()
    top = store.block_rows(store.height(), store.height())
    return {
        "node_id": cfg.node_id,
        "name": cfg.name,
        "public_key": cfg.public_key,
        "role": member.role if member else "observer",
        "chain_id": genesis.chain_id,
        "genesis_hash": node.genesis_hash().hex(),
        "height": store.height(),
        "head_hash": head.hex(),
        "head_time_ms": top[0]["time_ms"] if top else genesis.genesis_time_ms,
        "validators": [{"node_id": short_id(k), "public_key": k.hex()}
                       for k in store.membership().validators_at(store.height() + 1)],
        "peers": 0,
        "peer_ids": [],
        "mempool": 0,
        "readings": counts["readings"],
        "txs": counts["txs"],
        "devices": counts["devices"],
        "rejected": {},
        "url": cfg.url,
        "running": False,
        "training": {"runs": [r.to_json() for r in runs(store)], "local": None},
        **membership_status(store),
    }


# --- talking to a node over HTTP ---------------------------------------------------------------


def http_base(url: str) -> str:
    """ws://h:p or http://h:p (any path) -> http://h:p."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "http": "http", "wss": "https", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ConfigError(f"{url!r} is not a node URL (ws://host:port or http://host:port)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{url!r} has a bad port") from exc
    return f"{scheme}://{parts.netloc}"


def local_url(cfg: NodeConfig) -> str:
    """Where to reach the node in DIR from this machine (a wildcard listen address means loopback)."""
    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(cfg.listen_host, cfg.listen_host)
    return f"http://{f'[{host}]' if ':' in host else host}:{cfg.listen_port}"


def get_json(base: str, path: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
    url = base + path
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200]
        raise NodeUnreachable(f"{url} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NodeUnreachable(f"cannot reach {url}: {reason}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise NodeUnreachable(f"{url} did not answer with JSON") from exc


def tx_committed(base: str, txid: bytes) -> bool:
    """Whether the node at `base` holds `txid` in a committed block."""
    try:
        get_json(base, f"/tx/{txid.hex()}")
        return True
    except FedledgerError:
        return False


def probe_status(cfg: NodeConfig) -> dict[str, Any] | None:
    """/status of the node in DIR if it is up and really is that node; None otherwise."""
    try:
        st = get_json(local_url(cfg), "/status", PROBE_TIMEOUT_S)
    except NodeUnreachable:
        return None
    if not isinstance(st, dict) or st.get("node_id") != cfg.node_id:
        return None  # something else owns the port
    return st


def pid_alive(directory: Path) -> int | None:
    try:
        pid = int((directory / PID_FILE).read_text().strip())
        os.kill(pid, 0)
    except (OSError, ValueError):
        return None
    return pid


# --- replicas for compare ----------------------------------------------------------------------


class Replica:
    """What `compare` needs of a replica: its identity, its head, and the hash at a height."""

    target: str
    node_id: str
    height: int
    head_hash: str
    genesis_hash: str

    def __init__(self) -> None:
        self._hashes: dict[int, str] = {}

    def hash_at(self, height: int) -> str:
        if height == 0:
            return self.genesis_hash
        if height not in self._hashes:
            self._hashes[height] = self._fetch_hash(height)
        return self._hashes[height]

    def _fetch_hash(self, height: int) -> str:
        raise NotImplementedError

    def to_dict(self, common: int) -> dict[str, Any]:
        return {"target": self.target, "node_id": self.node_id, "height": self.height,
                "head_hash": self.head_hash, "genesis_hash": self.genesis_hash,
                "hash_at_common": self.hash_at(common)}


class SqliteReplica(Replica):
    """A node directory, read inside the snapshot `open_node` holds."""

    def __init__(self, target: str, node: LocalNode) -> None:
        super().__init__()
        self.target, self.node = target, node
        self.node_id = node.config.node_id
        self.height = node.store.height()
        self.genesis_hash = node.genesis_hash().hex()
        self.head_hash = (node.store.head_hash() or bytes.fromhex(self.genesis_hash)).hex()

    def _fetch_hash(self, height: int) -> str:
        h = self.node.store.block_hash(height)
        if h is None:
            raise StorageError(f"{self.target}: no block at height {height} below its head {self.height}")
        return h.hex()


class HttpReplica(Replica):
    """A running node asked through its HTTP API (/status, /blocks)."""

    def __init__(self, target: str) -> None:
        super().__init__()
        self.target = target
        self.base = http_base(target)
        st = get_json(self.base, "/status")
        try:
            self.node_id, self.height = str(st["node_id"]), int(st["height"])
            self.head_hash, self.genesis_hash = str(st["head_hash"]), str(st["genesis_hash"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NodeUnreachable(f"{self.base}/status is not a fedledger node status") from exc

    def _fetch_hash(self, height: int) -> str:
        got = get_json(self.base, f"/blocks?from={height}&to={height}")
        blocks = got.get("blocks") if isinstance(got, dict) else None
        if not blocks or not isinstance(blocks[0], dict) or blocks[0].get("height") != height:
            raise NodeUnreachable(f"{self.base} returned no block {height} below its reported height")
        return str(blocks[0]["hash"])


def open_replica(target: str, stack: contextlib.ExitStack) -> Replica:
    if "://" in target:
        return HttpReplica(target)
    return SqliteReplica(target, stack.enter_context(open_node(target)))


def first_divergence(replicas: Sequence[Replica], common: int) -> int | None:
    """Lowest height <= common where the replicas' hashes differ (0: different genesis), or None."""

    def agree(h: int) -> bool:
        return len({r.hash_at(h) for r in replicas}) == 1

    if agree(common):
        return None
    if not agree(0):
        return 0
    lo, hi = 0, common  # invariant: agree(lo) and not agree(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if agree(mid):
            lo = mid
        else:
            hi = mid
    return hi


# --- output helpers ----------------------------------------------------------------------------


def fmt_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def emit(args: argparse.Namespace, obj: dict[str, Any], human: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(obj))
    else:
        print("\n".join(human))


def table(rows: Sequence[Sequence[Any]]) -> list[str]:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells]


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
        rows.append([
            "training",
            f"{str(r.get('run', ''))[:12]} {r.get('task')}/{r.get('strategy')}",
            f"round {r.get('committed_rounds')}/{r.get('rounds')}" + (f" ({state})" if state else ""),
        ])
    return rows


def cmd_status(args: argparse.Namespace) -> int:
    if not Path(args.dir).is_dir():
        raise ConfigError(f"{args.dir} is not a directory")
    cfg = NodeConfig.load(Path(args.dir))
    live = probe_status(cfg)
    if live is not None:
        st = {**live, "running": True}
    else:
        with open_node(args.dir) as node:
            st = offline_status(node)
        pid = pid_alive(Path(args.dir))
        if pid is not None:
            st["note"] = f"node.pid names live process {pid}, but {local_url(cfg)} did not answer"
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
               "replicas": [r.to_dict(common) for r in replicas], "first_divergence": diverge}
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


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.ledger_func(args))
    except sqlite3.Error as exc:  # open_node converts these; this is the net for anything it missed
        raise StorageError(f"database error: {exc}") from exc
