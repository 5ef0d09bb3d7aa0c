"""What the ledger needs of storage: the narrow `Store` interface that every store implements.

The ledger rules define it and node/store/ implements it (MemoryStore, SqliteStore), so the rules
never import a storage engine. Both implementations pass one contract test suite
(tests/test_store_contract.py), so code tested against MemoryStore behaves the same on disk.

Rules every implementation keeps:
- `commit_block(block, commit, delta)` is all-or-nothing and only accepts height() + 1, with a
  commit certificate for exactly that block. It does not validate the block: Ledger does.
- Returned objects are fresh values; mutating them never changes the store.
- Blobs are content addressed: put_blob returns sha256(data).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

from node.ledger.blocks import Block, Commit
from node.ledger.membership import Change, Membership
from node.ledger.state import DeviceRecord, MemberRecord, ModelRow, ReadingRow, StateDelta, TxRecord


class Store(Protocol):
    def initialize(self, genesis_hash: bytes, genesis_json: str, members: Sequence[MemberRecord]) -> None:
        """Record the genesis and its members once (the authorities among them are the first
        validator set); a second call must name the same genesis."""
        ...

    def genesis(self) -> tuple[bytes, str] | None:
        """(genesis hash, genesis JSON) or None before initialize."""
        ...

    def height(self) -> int:
        """Height of the last committed block; 0 when there is none."""
        ...

    def head_hash(self) -> bytes | None: ...

    def block(self, height: int) -> Block | None: ...

    def block_hash(self, height: int) -> bytes | None:
        """The hash recorded for `height` (an index; verify re-derives it from the block)."""
        ...

    def block_time(self, height: int) -> int | None:
        """The header time (ms) of the block at `height`, or None."""
        ...

    def block_by_hash(self, block_hash: bytes) -> Block | None: ...

    def commit(self, height: int) -> Commit | None: ...

    def block_parts(self, height: int) -> tuple[bytes, list[bytes], bytes] | None:
        """What block sync sends for `height`: blocks.block_row_bytes(block), each tx's
        encoding, and the commit certificate's encoding (SqliteStore returns its stored bytes)."""
        ...

    def block_rows(self, lo: int, hi: int) -> list[dict[str, Any]]:
        """The summaries of heights lo..hi (height, hash, round, time_ms, proposer as a short id,
        num_txs, prev_hash, hashes in hex), read without decoding any tx: what GET /blocks lists."""
        ...

    def tx(self, tx_id: bytes) -> TxRecord | None: ...

    def has_tx(self, tx_id: bytes) -> bool: ...

    def commit_block(self, block: Block, commit: Commit, delta: StateDelta, durable: bool = True) -> None:
        """durable=False (block sync): the write may be lost by a power failure, never torn; the
        block can be fetched again. Decided blocks and the consensus state are always durable."""
        ...

    def device(self, device: bytes) -> DeviceRecord | None: ...

    def devices(self) -> list[DeviceRecord]: ...

    def member(self, key: bytes) -> MemberRecord | None: ...

    def members(self) -> list[MemberRecord]: ...

    def membership(self) -> Membership:
        """The membership state after the last committed block (node/membership.py)."""
        ...

    def membership_history(self, limit: int | None = None) -> list[Change]:
        """Applied membership changes in the order they took effect; with `limit`, the latest."""
        ...

    def membership_history_size(self) -> int: ...

    def readings(
        self, device: bytes | None = None, *, height: int | None = None, limit: int | None = None
    ) -> list[ReadingRow]:
        """Committed readings in ledger order, optionally of one device and/or one height."""
        ...

    def latest_readings(self, device: bytes, limit: int) -> list[ReadingRow]:
        """The device's `limit` committed readings of highest sequence number, highest first (an
        index walk: what the explorer's device page shows, however long the device's history)."""
        ...

    def reading_counts(self, lo: int, hi: int) -> dict[int, int]:
        """How many readings each block of heights lo..hi holds (blocks with none are left out)."""
        ...

    def counts(self) -> dict[str, int]:
        """Sizes for status displays: blocks, txs, readings, devices."""
        ...

    def txs_of_kind(self, kind: str) -> list[TxRecord]:
        """Committed txs of one kind in ledger order (for the rare kinds: requests, votes)."""
        ...

    def model_commit(self, run: bytes, round: int) -> ModelRow | None: ...

    def model_update(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...

    def model_eval(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...

    def model_handover(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...

    def owner_readings(self, owner: bytes, max_height: int) -> list[tuple[bytes, bytes, int, int]]:
        """(tx id, device, seq, timestamp_ms) of the committed readings of `owner`'s devices at
        heights <= max_height, in (device, seq) order: what data provenance is computed from."""
        ...

    def device_readings(self, device: bytes, max_height: int) -> list[tuple[bytes, int, int, float, float]]:
        """(tx id, seq, timestamp_ms, temperature_c, humidity_pct) of `device`'s committed readings
        at heights <= max_height, in seq order: what a replica re-fits a numpy update from."""
        ...

    def model_rows(self, run: bytes | None = None, kind: str | None = None) -> list[ModelRow]:
        """Model update and commit index rows in ledger order, optionally of one run and/or kind."""
        ...

    def latest_model_row(self, run: bytes, kind: str) -> ModelRow | None:
        """The run's last index row of `kind` in ledger order (a commit: its highest round)."""
        ...

    def put_blob(self, data: bytes) -> bytes: ...

    def get_blob(self, blob_hash: bytes) -> bytes | None: ...

    def save_consensus_state(self, data: bytes) -> None:
        """Durably replace the consensus core's persisted state (must hit the disk before return)."""
        ...

    def load_consensus_state(self) -> bytes | None: ...

    def close(self) -> None: ...
