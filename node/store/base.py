"""The in-memory store, and what both stores share.

Everything the node persists goes through `Store` (node/ledger/storage.py, where its rules are
written). MemoryStore here and SqliteStore (sqlite.py) both implement it and pass one contract
test suite (tests/test_store_contract.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

from node.errors import StorageError
from node.ledger.blocks import Block, Commit, block_row_bytes
from node.ledger.codec import encode
from node.ledger.keys import short_id
from node.ledger.membership import Change, Membership, initial_membership
from node.ledger.state import DeviceRecord, MemberRecord, ModelRow, ReadingRow, StateDelta, TxRecord
from node.ledger.transactions import Transaction


def default_membership(members: Sequence[MemberRecord]) -> Membership:
    return initial_membership(m.key for m in members if m.role == "authority")


def check_commit_args(current_height: int, block: Block, commit: Commit, delta: StateDelta) -> None:
    """Preconditions of commit_block shared by the implementations."""
    h = block.height
    if h != current_height + 1:
        raise StorageError(f"cannot commit block {h}: store is at height {current_height}")
    if commit.height != h or commit.block_id != block.hash:
        raise StorageError(f"commit certificate is not for block {h} {block.hash.hex()[:16]}")
    if delta.height != h:
        raise StorageError(f"state delta is for height {delta.height}, block is {h}")


class MemoryStore:
    """Dict-backed Store for tests, the simulator and chain verification replays."""

    def __init__(self) -> None:
        self._genesis: tuple[bytes, str] | None = None
        self._blocks: list[Block] = []
        self._commits: list[Commit] = []
        self._by_hash: dict[bytes, int] = {}
        self._txs: dict[bytes, TxRecord] = {}
        self._devices: dict[bytes, DeviceRecord] = {}
        self._members: dict[bytes, MemberRecord] = {}
        self._membership: Membership | None = None
        self._history: list[Change] = []
        self._readings: list[ReadingRow] = []
        self._models: list[ModelRow] = []
        self._model_index: dict[tuple[str, bytes, int, bytes | None], ModelRow] = {}
        self._blobs: dict[bytes, bytes] = {}
        self._consensus: bytes | None = None

    def initialize(self, genesis_hash: bytes, genesis_json: str, members: Sequence[MemberRecord]) -> None:
        if self._genesis is not None:
            if self._genesis[0] != genesis_hash:
                raise StorageError("store already holds a different genesis")
            return
        self._genesis = (genesis_hash, genesis_json)
        self._members = {m.key: m for m in members}
        self._membership = default_membership(members)

    def genesis(self) -> tuple[bytes, str] | None:
        return self._genesis

    def height(self) -> int:
        return len(self._blocks)

    def head_hash(self) -> bytes | None:
        return self._blocks[-1].hash if self._blocks else None

    def block(self, height: int) -> Block | None:
        return self._blocks[height - 1] if 1 <= height <= len(self._blocks) else None

    def block_hash(self, height: int) -> bytes | None:
        b = self.block(height)
        return b.hash if b else None

    def block_time(self, height: int) -> int | None:
        b = self.block(height)
        return b.header.time_ms if b else None

    def block_by_hash(self, block_hash: bytes) -> Block | None:
        h = self._by_hash.get(block_hash)
        return None if h is None else self.block(h)

    def commit(self, height: int) -> Commit | None:
        return self._commits[height - 1] if 1 <= height <= len(self._commits) else None

    def block_parts(self, height: int) -> tuple[bytes, list[bytes], bytes] | None:
        block, commit = self.block(height), self.commit(height)
        if block is None or commit is None:
            return None
        txs = [p.encoded if isinstance(p, Transaction) else encode(raw)
               for p, raw in zip(block.parsed_txs, block.txs, strict=True)]
        return block_row_bytes(block), txs, encode(commit.to_dict())

    def block_rows(self, lo: int, hi: int) -> list[dict[str, Any]]:
        rows = []
        for block in self._blocks[max(lo, 1) - 1 : max(hi, 0)]:
            h = block.header
            rows.append({"height": h.height, "hash": block.hash.hex(), "round": h.round, "time_ms": h.time_ms,
                         "proposer": short_id(h.proposer), "num_txs": len(block.txs),
                         "prev_hash": h.prev_hash.hex()})
        return rows

    def tx(self, tx_id: bytes) -> TxRecord | None:
        return self._txs.get(tx_id)

    def has_tx(self, tx_id: bytes) -> bool:
        return tx_id in self._txs

    def commit_block(self, block: Block, commit: Commit, delta: StateDelta, durable: bool = True) -> None:
        check_commit_args(self.height(), block, commit, delta)
        # Check everything that could fail before mutating anything: all-or-nothing.
        for rec in delta.new_devices:
            if rec.device in self._devices:
                raise StorageError(f"device {rec.device.hex()} already registered")
        known = set(self._devices) | {r.device for r in delta.new_devices}
        for dev in [*delta.device_seqs, *(r.device for r in delta.readings)]:
            if dev not in known:
                raise StorageError(f"reading for unknown device {dev.hex()}")
        for t in delta.txs:
            if t.id in self._txs:
                raise StorageError(f"tx {t.id.hex()} already stored")
        for m in delta.models:
            if _model_key(m) in self._model_index:
                raise StorageError(f"model {m.kind} for round {m.round} already stored")
        self._blocks.append(block)
        self._commits.append(commit)
        self._by_hash[block.hash] = block.height
        self._txs.update((t.id, t) for t in delta.txs)
        self._devices.update((r.device, r) for r in delta.new_devices)
        for dev, seq in delta.device_seqs.items():
            r = self._devices[dev]
            self._devices[dev] = DeviceRecord(r.device, r.owner, r.name, seq, r.registered_height)
        self._readings.extend(delta.readings)
        for key in delta.removed_members:
            self._members.pop(key, None)
        self._members.update((m.key, m) for m in delta.new_members)
        if delta.membership is not None:
            self._membership = delta.membership
        self._history.extend(delta.applied_changes)
        self._models.extend(delta.models)
        self._model_index.update((_model_key(m), m) for m in delta.models)

    def device(self, device: bytes) -> DeviceRecord | None:
        return self._devices.get(device)

    def devices(self) -> list[DeviceRecord]:
        return sorted(self._devices.values(), key=lambda d: d.device)

    def member(self, key: bytes) -> MemberRecord | None:
        return self._members.get(key)

    def members(self) -> list[MemberRecord]:
        return sorted(self._members.values(), key=lambda m: m.key)

    def membership(self) -> Membership:
        if self._membership is None:
            raise StorageError("store is not initialized")
        return self._membership

    def membership_history(self, limit: int | None = None) -> list[Change]:
        if limit is None:
            return list(self._history)
        return self._history[len(self._history) - limit:] if limit > 0 else []

    def membership_history_size(self) -> int:
        return len(self._history)

    def readings(
        self, device: bytes | None = None, *, height: int | None = None, limit: int | None = None
    ) -> list[ReadingRow]:
        out = [
            r
            for r in self._readings
            if (device is None or r.device == device) and (height is None or r.height == height)
        ]
        return out[:limit] if limit is not None else out

    def latest_readings(self, device: bytes, limit: int) -> list[ReadingRow]:
        mine = [r for r in self._readings if r.device == device]
        return sorted(mine, key=lambda r: r.seq, reverse=True)[: max(limit, 0)]

    def reading_counts(self, lo: int, hi: int) -> dict[int, int]:
        out: dict[int, int] = {}
        for r in self._readings:
            if lo <= r.height <= hi:
                out[r.height] = out.get(r.height, 0) + 1
        return out

    def counts(self) -> dict[str, int]:
        return {
            "blocks": len(self._blocks),
            "txs": len(self._txs),
            "readings": len(self._readings),
            "devices": len(self._devices),
        }

    def txs_of_kind(self, kind: str) -> list[TxRecord]:
        return sorted((t for t in self._txs.values() if t.kind == kind), key=lambda t: (t.height, t.index))

    def model_commit(self, run: bytes, round: int) -> ModelRow | None:
        return self._model_index.get(("commit", run, round, None))

    def model_update(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        return self._model_index.get(("update", run, round, node))

    def model_eval(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        return self._model_index.get(("eval", run, round, node))

    def model_handover(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        return self._model_index.get(("handover", run, round, node))

    def owner_readings(self, owner: bytes, max_height: int) -> list[tuple[bytes, bytes, int, int]]:
        mine = {d for d, rec in self._devices.items() if rec.owner == owner}
        out = [(r.tx_id, r.device, r.seq, r.timestamp_ms) for r in self._readings
               if r.device in mine and r.height <= max_height]
        return sorted(out, key=lambda r: (r[1], r[2]))

    def device_readings(self, device: bytes, max_height: int) -> list[tuple[bytes, int, int, float, float]]:
        out = [(r.tx_id, r.seq, r.timestamp_ms, r.temperature_c, r.humidity_pct) for r in self._readings
               if r.device == device and r.height <= max_height]
        return sorted(out, key=lambda r: r[1])

    def model_rows(self, run: bytes | None = None, kind: str | None = None) -> list[ModelRow]:
        return [m for m in self._models if (run is None or m.run == run) and (kind is None or m.kind == kind)]

    def latest_model_row(self, run: bytes, kind: str) -> ModelRow | None:
        return next((m for m in reversed(self._models) if m.run == run and m.kind == kind), None)

    def put_blob(self, data: bytes) -> bytes:
        h = hashlib.sha256(data).digest()
        self._blobs[h] = bytes(data)
        return h

    def get_blob(self, blob_hash: bytes) -> bytes | None:
        return self._blobs.get(blob_hash)

    def save_consensus_state(self, data: bytes) -> None:
        self._consensus = bytes(data)

    def load_consensus_state(self) -> bytes | None:
        return self._consensus

    def close(self) -> None:
        pass


def _model_key(m: ModelRow) -> tuple[str, bytes, int, bytes | None]:
    # One commit per (run, round) whoever signs it; one update, eval and handover per (run, round, node).
    return (m.kind, m.run, m.round, None if m.kind == "commit" else m.node)
