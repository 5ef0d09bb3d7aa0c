"""SqliteStore: the node's on-disk Store, one SQLite database per node (node.db).

Opened in WAL mode with foreign keys on and synchronous=FULL: every commit (a block, or the
consensus state the core persists before it votes) is on disk when the call returns, which the
double-sign protection relies on. A block and every state change it causes are written in one
BEGIN IMMEDIATE ... COMMIT; any failure rolls all of it back.

Schema (also in docs/schema.md; keys, hashes and signatures are raw BLOBs, use hex() in sqlite3):

    meta(key TEXT PRIMARY KEY, value TEXT)              -- 'genesis_hash' (hex), 'genesis' (JSON)
    blocks(height INTEGER PRIMARY KEY, hash BLOB UNIQUE, round, prev_hash, time_ms, proposer,
           tx_root, last_commit_hash, num_txs,
           raw BLOB)                                    -- msgpack {header, last_commit}; txs below
    commits(height PRIMARY KEY -> blocks, round, block_id, num_precommits, raw BLOB)
    txs(id BLOB PRIMARY KEY, height -> blocks, idx, kind, signer, raw BLOB)  -- raw = wire tx
    devices(device BLOB PRIMARY KEY, owner, name, last_seq, registered_height -> blocks)
    readings(tx_id PRIMARY KEY -> txs, height -> blocks, device -> devices, seq, timestamp_ms,
             temperature_c REAL, humidity_pct REAL, extra BLOB)   -- UNIQUE(device, seq)
    members(key BLOB PRIMARY KEY, role, name, since_height)       -- since_height 0 = genesis
    membership(id = 1, height, raw BLOB)   -- node/membership.py state after block `height`
    membership_history(seq INTEGER PRIMARY KEY, node, action, role, name, decided, effective,
                       flower_key)
                                           -- applied changes, appended in the order they took effect
    models(tx_id PRIMARY KEY -> txs, height, kind 'update'|'commit'|'eval'|'handover', run, round,
           node, weights_hash)  -- one commit per (run, round), one update, eval and handover per
                                -- (run, round, node); an eval's weights_hash is the model it scored,
                                -- a handover's the new coordinator's SuperLink certificate hash
    blobs(hash BLOB PRIMARY KEY, data BLOB)                       -- hash = sha256(data)
    consensus_state(id INTEGER PRIMARY KEY CHECK (id = 1), raw BLOB)

A block's transactions live only in `txs` (the block row holds header and last commit), so each
byte of the ledger is stored once; devices, readings and members are derived state that
`fedledger ledger verify` re-derives from the blocks and compares.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from typing import Any
from urllib.parse import quote

from node.errors import CodecError, InvalidBlock, StorageError
from node.ledger.blocks import Block, Commit, Header, block_row_bytes
from node.ledger.codec import decode, encode
from node.ledger.keys import short_id
from node.ledger.membership import Change, Membership
from node.ledger.state import DeviceRecord, MemberRecord, ModelRow, ReadingRow, StateDelta, TxRecord
from node.store.base import check_commit_args, default_membership

# 2: model_update carries data_cut, model_eval txs and 'eval' rows in models (issue 12/13). A
# ledger of version 1 holds updates that no longer parse: it cannot be opened, only re-created.
# 3: run_handover txs and 'handover' rows in models (issue 14). A version-2 ledger holds none and
# is valid as it is: a writable open widens the models table's kinds and stamps 3; a read-only
# open reads it unchanged.
SCHEMA_VERSION = "3"
READABLE_VERSIONS = ("2", SCHEMA_VERSION)

_HISTORY_COLUMNS = "node, action, role, name, decided, effective, flower_key"

# The index of a run's transactions: updates, commits, evaluations and coordinator handovers.
MODELS_TABLE = """CREATE TABLE IF NOT EXISTS {name} (
    tx_id BLOB PRIMARY KEY REFERENCES txs(id),
    height INTEGER NOT NULL REFERENCES blocks(height),
    kind TEXT NOT NULL CHECK (kind IN ('update', 'commit', 'eval', 'handover')),
    run BLOB NOT NULL,
    round INTEGER NOT NULL,
    node BLOB NOT NULL,
    weights_hash BLOB NOT NULL
);
"""
MODELS_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS models_commit ON models(run, round) WHERE kind = 'commit';
CREATE UNIQUE INDEX IF NOT EXISTS models_update ON models(run, round, node) WHERE kind = 'update';
CREATE UNIQUE INDEX IF NOT EXISTS models_eval ON models(run, round, node) WHERE kind = 'eval';
CREATE UNIQUE INDEX IF NOT EXISTS models_handover ON models(run, round, node) WHERE kind = 'handover';
CREATE INDEX IF NOT EXISTS models_run ON models(run, kind, height);
"""

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS blocks (
    height INTEGER PRIMARY KEY,
    hash BLOB NOT NULL UNIQUE,
    round INTEGER NOT NULL,
    prev_hash BLOB NOT NULL,
    time_ms INTEGER NOT NULL,
    proposer BLOB NOT NULL,
    tx_root BLOB NOT NULL,
    last_commit_hash BLOB NOT NULL,
    num_txs INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS commits (
    height INTEGER PRIMARY KEY REFERENCES blocks(height),
    round INTEGER NOT NULL,
    block_id BLOB NOT NULL,
    num_precommits INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS txs (
    id BLOB PRIMARY KEY,
    height INTEGER NOT NULL REFERENCES blocks(height),
    idx INTEGER NOT NULL,
    kind TEXT NOT NULL,
    signer BLOB NOT NULL,
    raw BLOB NOT NULL,
    UNIQUE (height, idx)
);
CREATE INDEX IF NOT EXISTS txs_kind ON txs(kind, height);
CREATE TABLE IF NOT EXISTS devices (
    device BLOB PRIMARY KEY,
    owner BLOB NOT NULL,
    name TEXT NOT NULL,
    last_seq INTEGER,
    registered_height INTEGER NOT NULL REFERENCES blocks(height)
);
CREATE TABLE IF NOT EXISTS readings (
    tx_id BLOB PRIMARY KEY REFERENCES txs(id),
    height INTEGER NOT NULL REFERENCES blocks(height),
    device BLOB NOT NULL REFERENCES devices(device),
    seq INTEGER NOT NULL,
    timestamp_ms INTEGER NOT NULL,
    temperature_c REAL NOT NULL,
    humidity_pct REAL NOT NULL,
    extra BLOB,
    UNIQUE (device, seq)
);
CREATE INDEX IF NOT EXISTS readings_height ON readings(height);
CREATE TABLE IF NOT EXISTS members (
    key BLOB PRIMARY KEY,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    since_height INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS membership (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    height INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS membership_history (
    seq INTEGER PRIMARY KEY,
    node BLOB NOT NULL,
    action TEXT NOT NULL,
    role TEXT NOT NULL,
    name TEXT NOT NULL,
    decided INTEGER NOT NULL,
    effective INTEGER NOT NULL,
    flower_key BLOB NOT NULL
);
""" + MODELS_TABLE.format(name="models") + MODELS_INDEXES + """
CREATE TABLE IF NOT EXISTS blobs (hash BLOB PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS consensus_state (id INTEGER PRIMARY KEY CHECK (id = 1), raw BLOB NOT NULL);
"""


# The tables a file must have to be read as a ledger (a read-only open cannot create them).
REQUIRED_TABLES = frozenset({"meta", "blocks", "commits", "txs", "readings", "devices", "members"})


class SqliteStore:
    """Store on one SQLite file. One writer (the node's event loop thread) at a time.

    `read_only=True` opens an existing file with `mode=ro` for inspection tools and the Flower
    apps: it never creates, migrates or writes the file (the writable open sets WAL, creates the
    schema and stamps the version), so it is safe next to a running node; WAL lets such readers and
    the node's writer proceed together. Writes on it fail with StorageError. Its caches are filled
    on first use and never invalidated, so use one read-only store per `snapshot()` or command.
    """

    def __init__(self, path: str | os.PathLike[str], read_only: bool = False) -> None:
        self.path = os.fspath(path)
        self._init_caches()
        if read_only:
            self._db = self._open_read_only()
            return
        try:
            # isolation_level=None: we issue BEGIN IMMEDIATE ourselves so a block is one transaction.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA foreign_keys=ON")
            self._db.execute("PRAGMA synchronous=FULL")
            # A block of 2000 readings writes about 1.3 MB into B-trees keyed by random tx ids:
            # a 32 MB page cache and checkpoints every 32 MB of WAL (not the default 4 MB) keep
            # catch-up of a large ledger from slowing down as it grows (scripts/bench_sync.py).
            self._db.execute("PRAGMA cache_size=-32768")
            self._db.execute("PRAGMA wal_autocheckpoint=8000")
            self._db.executescript(SCHEMA)
            self._db.execute(
                "INSERT OR IGNORE INTO meta(key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,)
            )
            found = self._one("SELECT value FROM meta WHERE key = 'schema_version'")
            if found is not None and found[0] == "2":
                self._migrate_from_2()
                found = (SCHEMA_VERSION,)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.path}: {exc}") from exc
        if found is None or found[0] != SCHEMA_VERSION:
            self._db.close()
            raise StorageError(_version_error(self.path, found[0] if found else "?"))

    def _open_read_only(self) -> sqlite3.Connection:
        if not os.path.isfile(self.path):
            raise StorageError(f"no ledger database at {self.path} (has the node ever run?)")
        uri = "file:" + quote(os.path.abspath(self.path)) + "?mode=ro"
        try:
            db = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False, timeout=5)
            tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open database {self.path} read-only: {exc}") from exc
        if not tables >= REQUIRED_TABLES:
            db.close()
            raise StorageError(f"{self.path} is not a fedledger ledger database")
        try:
            found = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.Error as exc:
            db.close()
            raise StorageError(f"cannot read {self.path}: {exc}") from exc
        if found is not None and found[0] not in READABLE_VERSIONS:
            db.close()
            raise StorageError(_version_error(self.path, found[0]))
        return db

    def _migrate_from_2(self) -> None:
        """Version 2 to 3: the models table takes 'handover' rows (SQLite cannot alter a CHECK, so
        the table is copied), in one transaction."""
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(MODELS_TABLE.format(name="models_v3"))
            db.execute("INSERT INTO models_v3 SELECT tx_id, height, kind, run, round, node, weights_hash"
                       " FROM models")
            db.execute("DROP TABLE models")
            db.execute("ALTER TABLE models_v3 RENAME TO models")
            for statement in MODELS_INDEXES.strip().split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[SqliteStore]:
        """One read transaction: every read inside sees the same committed state, even while the
        node commits blocks."""
        self._db.execute("BEGIN")
        try:
            yield self
        finally:
            with suppress(sqlite3.Error):
                self._db.execute("ROLLBACK")

    def _init_caches(self) -> None:
        # Every reading looks up its device and that device's owner (mempool admission, proposal
        # validation, sync): keep both in memory; commit_block drops the entries it changes.
        self._device_cache: dict[bytes, DeviceRecord | None] = {}
        self._member_cache: dict[bytes, MemberRecord | None] = {}
        self._membership: Membership | None = None

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"cannot start a write transaction on {self.path}: {exc}") from exc
        try:
            yield self._db
        except BaseException as exc:
            self._db.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StorageError(f"write to {self.path} failed and was rolled back: {exc}") from exc
            raise
        else:
            try:
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._db.execute("ROLLBACK")
                raise StorageError(f"commit to {self.path} failed: {exc}") from exc

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        return self._db.execute(sql, args).fetchone()

    def initialize(self, genesis_hash: bytes, genesis_json: str, members: Sequence[MemberRecord]) -> None:
        initial = default_membership(members).to_bytes()
        current = self.genesis()
        if current is not None:
            if current[0] != genesis_hash:
                raise StorageError(f"{self.path} already holds a different genesis ({current[0].hex()[:16]})")
            if self._one("SELECT 1 FROM membership") is None:
                # A database from before membership votes had any effect: its state is genesis'.
                with self._write() as db:
                    db.execute("INSERT INTO membership(id, height, raw) VALUES (1, 0, ?)", (initial,))
            return
        with self._write() as db:
            db.execute("INSERT INTO meta(key, value) VALUES ('genesis_hash', ?)", (genesis_hash.hex(),))
            db.execute("INSERT INTO meta(key, value) VALUES ('genesis', ?)", (genesis_json,))
            db.executemany(
                "INSERT INTO members(key, role, name, since_height) VALUES (?, ?, ?, ?)",
                [(m.key, m.role, m.name, m.since_height) for m in members],
            )
            db.execute("INSERT INTO membership(id, height, raw) VALUES (1, 0, ?)", (initial,))

    def genesis(self) -> tuple[bytes, str] | None:
        h = self._one("SELECT value FROM meta WHERE key = 'genesis_hash'")
        g = self._one("SELECT value FROM meta WHERE key = 'genesis'")
        if h is None or g is None:
            return None
        return bytes.fromhex(h[0]), g[0]

    def height(self) -> int:
        row = self._one("SELECT MAX(height) FROM blocks")
        return row[0] or 0

    def head_hash(self) -> bytes | None:
        row = self._one("SELECT hash FROM blocks ORDER BY height DESC LIMIT 1")
        return bytes(row[0]) if row else None

    def block(self, height: int) -> Block | None:
        row = self._one("SELECT raw FROM blocks WHERE height = ?", (height,))
        if row is None:
            return None
        try:
            d = decode(row[0])
            if not isinstance(d, dict) or set(d) != {"header", "last_commit"}:
                raise CodecError("stored block row is not {header, last_commit}")
            txs = [
                decode(r[0])
                for r in self._db.execute("SELECT raw FROM txs WHERE height = ? ORDER BY idx", (height,))
            ]
            return Block.from_wire({"header": d["header"], "txs": txs, "last_commit": d["last_commit"]})
        except (CodecError, InvalidBlock) as exc:
            raise StorageError(f"stored block {height} in {self.path} is corrupt: {exc}") from exc

    def block_parts(self, height: int) -> tuple[bytes, list[bytes], bytes] | None:
        # The stored bytes as they are: serving a block decodes and encodes nothing.
        row = self._one(
            "SELECT b.raw, c.raw FROM blocks b JOIN commits c ON c.height = b.height WHERE b.height = ?",
            (height,),
        )
        if row is None:
            return None
        txs = [bytes(r[0]) for r in self._db.execute("SELECT raw FROM txs WHERE height = ? ORDER BY idx",
                                                     (height,))]
        return bytes(row[0]), txs, bytes(row[1])

    def block_hash(self, height: int) -> bytes | None:
        row = self._one("SELECT hash FROM blocks WHERE height = ?", (height,))
        return bytes(row[0]) if row else None

    def block_time(self, height: int) -> int | None:
        row = self._one("SELECT time_ms FROM blocks WHERE height = ?", (height,))
        return int(row[0]) if row else None

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

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        row = self._one("SELECT height FROM blocks WHERE hash = ?", (block_hash,))
        return None if row is None else self.block(row[0])

    def commit(self, height: int) -> Commit | None:
        row = self._one("SELECT raw FROM commits WHERE height = ?", (height,))
        if row is None:
            return None
        try:
            return Commit.from_dict(decode(row[0]))
        except (CodecError, InvalidBlock) as exc:
            raise StorageError(f"stored commit {height} in {self.path} is corrupt: {exc}") from exc

    def tx(self, tx_id: bytes) -> TxRecord | None:
        row = self._one("SELECT id, height, idx, kind, signer, raw FROM txs WHERE id = ?", (tx_id,))
        if row is None:
            return None
        try:
            raw = decode(row[5])
        except CodecError as exc:
            raise StorageError(f"stored tx {tx_id.hex()} in {self.path} is corrupt: {exc}") from exc
        return TxRecord(bytes(row[0]), row[1], row[2], row[3], bytes(row[4]), raw)

    def has_tx(self, tx_id: bytes) -> bool:
        return self._one("SELECT 1 FROM txs WHERE id = ?", (tx_id,)) is not None

    def commit_block(self, block: Block, commit: Commit, delta: StateDelta, durable: bool = True) -> None:
        if not durable:
            # WAL with synchronous=NORMAL: no fsync per commit, and still never a torn database.
            # The next durable write (a decided block, the consensus state) syncs the WAL, and
            # with it every synced block before it.
            self._db.execute("PRAGMA synchronous=NORMAL")
        try:
            self._commit_block(block, commit, delta)
        finally:
            if not durable:
                self._db.execute("PRAGMA synchronous=FULL")
            for d in delta.new_devices:
                self._device_cache.pop(d.device, None)
            for dev in delta.device_seqs:
                self._device_cache.pop(dev, None)
            if delta.new_members or delta.removed_members:
                self._member_cache.clear()
            if delta.membership is not None:
                self._membership = None

    def _commit_block(self, block: Block, commit: Commit, delta: StateDelta) -> None:
        with self._write() as db:
            # Re-read the height inside the write lock: another connection may have written.
            check_commit_args(self.height(), block, commit, delta)
            self._insert_block(db, block, commit)
            db.executemany(
                "INSERT INTO txs(id, height, idx, kind, signer, raw) VALUES (?, ?, ?, ?, ?, ?)",
                [(t.id, t.height, t.index, t.kind, t.signer, t.encoded or encode(t.raw)) for t in delta.txs],
            )
            db.executemany(
                "INSERT INTO devices(device, owner, name, last_seq, registered_height)"
                " VALUES (?, ?, ?, ?, ?)",
                [(d.device, d.owner, d.name, d.last_seq, d.registered_height) for d in delta.new_devices],
            )
            for dev, seq in delta.device_seqs.items():
                cur = db.execute("UPDATE devices SET last_seq = ? WHERE device = ?", (seq, dev))
                if cur.rowcount != 1:
                    raise StorageError(f"reading for unknown device {dev.hex()}")
            db.executemany(
                "INSERT INTO readings(tx_id, height, device, seq, timestamp_ms, temperature_c, humidity_pct,"
                " extra) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        r.tx_id,
                        r.height,
                        r.device,
                        r.seq,
                        r.timestamp_ms,
                        r.temperature_c,
                        r.humidity_pct,
                        None if r.extra is None else encode(r.extra),
                    )
                    for r in delta.readings
                ],
            )
            db.executemany("DELETE FROM members WHERE key = ?", [(k,) for k in delta.removed_members])
            db.executemany(
                "INSERT OR REPLACE INTO members(key, role, name, since_height) VALUES (?, ?, ?, ?)",
                [(m.key, m.role, m.name, m.since_height) for m in delta.new_members],
            )
            if delta.membership is not None:
                db.execute(
                    "INSERT OR REPLACE INTO membership(id, height, raw) VALUES (1, ?, ?)",
                    (delta.height, delta.membership.to_bytes()),
                )
            self._append_history(db, delta.applied_changes)
            db.executemany(
                "INSERT INTO models(tx_id, height, kind, run, round, node, weights_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(m.tx_id, m.height, m.kind, m.run, m.round, m.node, m.weights_hash) for m in delta.models],
            )

    def _insert_block(self, db: sqlite3.Connection, block: Block, commit: Commit) -> None:
        h: Header = block.header
        raw = block_row_bytes(block)
        db.execute(
            "INSERT INTO blocks(height, hash, round, prev_hash, time_ms, proposer, tx_root, last_commit_hash,"
            " num_txs, raw) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                h.height,
                block.hash,
                h.round,
                h.prev_hash,
                h.time_ms,
                h.proposer,
                h.tx_root,
                h.last_commit_hash,
                len(block.txs),
                raw,
            ),
        )
        db.execute(
            "INSERT INTO commits(height, round, block_id, num_precommits, raw) VALUES (?, ?, ?, ?, ?)",
            (commit.height, commit.round, commit.block_id, len(commit.precommits), encode(commit.to_dict())),
        )

    def device(self, device: bytes) -> DeviceRecord | None:
        # Every reading looks its device up (mempool admission, proposal validation): keep them in
        # memory; commit_block drops the entries it changes.
        if device in self._device_cache:
            return self._device_cache[device]
        row = self._one(
            "SELECT device, owner, name, last_seq, registered_height FROM devices WHERE device = ?", (device,)
        )
        rec = None if row is None else DeviceRecord(bytes(row[0]), bytes(row[1]), row[2], row[3], row[4])
        if len(self._device_cache) >= 100_000:
            self._device_cache.clear()
        self._device_cache[device] = rec
        return rec

    def devices(self) -> list[DeviceRecord]:
        rows = self._db.execute(
            "SELECT device, owner, name, last_seq, registered_height FROM devices ORDER BY device"
        )
        return [DeviceRecord(bytes(r[0]), bytes(r[1]), r[2], r[3], r[4]) for r in rows]

    def member(self, key: bytes) -> MemberRecord | None:
        if key in self._member_cache:
            return self._member_cache[key]
        row = self._one("SELECT key, role, name, since_height FROM members WHERE key = ?", (key,))
        rec = None if row is None else MemberRecord(bytes(row[0]), row[1], row[2], row[3])
        if len(self._member_cache) >= 10_000:
            self._member_cache.clear()
        self._member_cache[key] = rec
        return rec

    def membership(self) -> Membership:
        if self._membership is None:
            try:
                row = self._one("SELECT raw FROM membership WHERE id = 1")
            except sqlite3.OperationalError:  # a read-only replica of an older schema
                row = None
            # No row: a replica written before membership existed, so genesis' state holds.
            self._membership = (
                default_membership(self.members()) if row is None else Membership.from_bytes(bytes(row[0]))
            )
        return self._membership

    @staticmethod
    def _append_history(db: sqlite3.Connection, changes: Sequence[Change]) -> None:
        db.executemany(
            "INSERT INTO membership_history(node, action, role, name, decided, effective, flower_key)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(c.node, c.action, c.role, c.name, c.decided, c.effective, c.flower_key) for c in changes],
        )

    def membership_history(self, limit: int | None = None) -> list[Change]:
        try:
            if limit is None:
                rows = self._db.execute(
                    f"SELECT {_HISTORY_COLUMNS} FROM membership_history ORDER BY seq"
                ).fetchall()
            else:
                rows = self._db.execute(
                    f"SELECT {_HISTORY_COLUMNS} FROM membership_history ORDER BY seq DESC LIMIT ?",
                    (max(limit, 0),),
                ).fetchall()[::-1]
        except sqlite3.OperationalError:  # a read-only replica from before membership existed
            return []
        return [Change(bytes(r[0]), r[1], r[2], r[3], r[4], r[5], bytes(r[6])) for r in rows]

    def membership_history_size(self) -> int:
        try:
            return int(self._one("SELECT COUNT(*) FROM membership_history")[0])
        except sqlite3.OperationalError:
            return 0

    def members(self) -> list[MemberRecord]:
        rows = self._db.execute("SELECT key, role, name, since_height FROM members ORDER BY key")
        return [MemberRecord(bytes(r[0]), r[1], r[2], r[3]) for r in rows]

    def readings(
        self, device: bytes | None = None, *, height: int | None = None, limit: int | None = None
    ) -> list[ReadingRow]:
        sql = (
            "SELECT r.tx_id, r.height, r.device, r.seq, r.timestamp_ms, r.temperature_c, r.humidity_pct,"
            " r.extra"
            " FROM readings r LEFT JOIN txs t ON t.id = r.tx_id WHERE 1=1"
        )
        args: list[Any] = []
        if device is not None:
            sql += " AND r.device = ?"
            args.append(device)
        if height is not None:
            sql += " AND r.height = ?"
            args.append(height)
        sql += " ORDER BY r.height, t.idx, r.rowid"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        return [self._reading(r) for r in self._db.execute(sql, args)]

    def _reading(self, r: Sequence[Any]) -> ReadingRow:
        try:
            extra = None if r[7] is None else decode(r[7])
        except CodecError as exc:
            raise StorageError(f"stored reading {bytes(r[0]).hex()} is corrupt: {exc}") from exc
        return ReadingRow(bytes(r[0]), r[1], bytes(r[2]), r[3], r[4], r[5], r[6], extra)

    def latest_readings(self, device: bytes, limit: int) -> list[ReadingRow]:
        # UNIQUE(device, seq) is the index this walks backwards.
        rows = self._db.execute(
            "SELECT tx_id, height, device, seq, timestamp_ms, temperature_c, humidity_pct, extra"
            " FROM readings WHERE device = ? ORDER BY seq DESC LIMIT ?",
            (device, max(limit, 0)),
        )
        return [self._reading(r) for r in rows]

    def reading_counts(self, lo: int, hi: int) -> dict[int, int]:
        rows = self._db.execute(
            "SELECT height, COUNT(*) FROM readings WHERE height BETWEEN ? AND ? GROUP BY height", (lo, hi)
        )
        return {r[0]: r[1] for r in rows}

    def counts(self) -> dict[str, int]:
        return {
            table: self._one(f"SELECT COUNT(*) FROM {table}")[0]
            for table in ("blocks", "txs", "readings", "devices")
        }

    def txs_of_kind(self, kind: str) -> list[TxRecord]:
        rows = self._db.execute(
            "SELECT id, height, idx, kind, signer, raw FROM txs WHERE kind = ? ORDER BY height, idx", (kind,)
        )
        try:
            return [TxRecord(bytes(r[0]), r[1], r[2], r[3], bytes(r[4]), decode(r[5])) for r in rows]
        except CodecError as exc:
            raise StorageError(f"a stored {kind} tx in {self.path} is corrupt: {exc}") from exc

    _MODEL_COLS = "m.kind, m.tx_id, m.height, m.run, m.round, m.node, m.weights_hash"

    def _model_row(self, sql: str, args: Sequence[Any]) -> ModelRow | None:
        row = self._one(f"SELECT {self._MODEL_COLS} FROM models m WHERE {sql}", args)
        return None if row is None else _model(row)

    def model_commit(self, run: bytes, round: int) -> ModelRow | None:
        return self._model_row("kind = 'commit' AND run = ? AND round = ?", (run, round))

    def model_update(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        return self._model_row("kind = 'update' AND run = ? AND round = ? AND node = ?", (run, round, node))

    def model_eval(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        return self._model_row("kind = 'eval' AND run = ? AND round = ? AND node = ?", (run, round, node))

    def model_handover(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        return self._model_row("kind = 'handover' AND run = ? AND round = ? AND node = ?", (run, round, node))

    def owner_readings(self, owner: bytes, max_height: int) -> list[tuple[bytes, bytes, int, int]]:
        # One range scan of the (device, seq) UNIQUE index per device: a join lets SQLite scan
        # every reading of the ledger instead.
        devices = [bytes(r[0]) for r in self._db.execute(
            "SELECT device FROM devices WHERE owner = ? ORDER BY device", (owner,))]
        out: list[tuple[bytes, bytes, int, int]] = []
        for dev in devices:
            out += [(bytes(r[0]), dev, r[1], r[2]) for r in self._db.execute(
                "SELECT tx_id, seq, timestamp_ms FROM readings WHERE device = ? AND height <= ? ORDER BY seq",
                (dev, max_height))]
        return out

    def device_readings(self, device: bytes, max_height: int) -> list[tuple[bytes, int, int, float, float]]:
        return [(bytes(r[0]), r[1], r[2], r[3], r[4]) for r in self._db.execute(
            "SELECT tx_id, seq, timestamp_ms, temperature_c, humidity_pct FROM readings"
            " WHERE device = ? AND height <= ? ORDER BY seq", (device, max_height))]

    def model_rows(self, run: bytes | None = None, kind: str | None = None) -> list[ModelRow]:
        sql = f"SELECT {self._MODEL_COLS} FROM models m JOIN txs t ON t.id = m.tx_id WHERE 1=1"
        args: list[Any] = []
        if run is not None:
            sql += " AND m.run = ?"
            args.append(run)
        if kind is not None:
            sql += " AND m.kind = ?"
            args.append(kind)
        sql += " ORDER BY m.height, t.idx"
        return [_model(r) for r in self._db.execute(sql, args)]

    def latest_model_row(self, run: bytes, kind: str) -> ModelRow | None:
        row = self._one(
            f"SELECT {self._MODEL_COLS} FROM models m JOIN txs t ON t.id = m.tx_id"
            " WHERE m.run = ? AND m.kind = ? ORDER BY m.height DESC, t.idx DESC LIMIT 1", (run, kind))
        return None if row is None else _model(row)

    def put_blob(self, data: bytes) -> bytes:
        h = hashlib.sha256(data).digest()
        with self._write() as db:
            db.execute("INSERT OR IGNORE INTO blobs(hash, data) VALUES (?, ?)", (h, bytes(data)))
        return h

    def get_blob(self, blob_hash: bytes) -> bytes | None:
        row = self._one("SELECT data FROM blobs WHERE hash = ?", (blob_hash,))
        return None if row is None else bytes(row[0])

    def save_consensus_state(self, data: bytes) -> None:
        # synchronous=FULL (set at open) makes this COMMIT fsync before returning.
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO consensus_state(id, raw) VALUES (1, ?)", (bytes(data),))

    def load_consensus_state(self) -> bytes | None:
        row = self._one("SELECT raw FROM consensus_state WHERE id = 1")
        return None if row is None else bytes(row[0])

    def close(self) -> None:
        self._db.close()


def _version_error(path: str, found: str) -> str:
    return (f"{path} was written by another fedledger version (schema {found}, this one reads "
            f"{SCHEMA_VERSION}): its transactions do not parse here; re-create the node")


def _model(r: Sequence[Any]) -> ModelRow:
    return ModelRow(r[0], bytes(r[1]), r[2], bytes(r[3]), r[4], bytes(r[5]), bytes(r[6]))
