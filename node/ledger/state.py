"""Ledger state and transaction validation: pure functions over a read-only view.

`check_tx(view, tx, block_time_ms, params)` says whether one tx is acceptable now and, if not,
why (a `Reason`). `apply_block(view, block, params)` folds a block's txs in order over an overlay
of the view, so later txs see earlier ones of the same block (register then read; two readings
of one device with increasing seq), and returns the `StateDelta` the store applies atomically.
Nothing here writes: the same code validates a proposal, a synced block and a whole replay.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol

from node.errors import BlockReason, InvalidBlock, InvalidTransaction, Reason
from node.ledger import membership as ms_rules
from node.ledger.blocks import Block
from node.ledger.evaluation import check_model_eval
from node.ledger.handover import check_run_handover
from node.ledger.membership import Change, Membership
from node.ledger.runs import ModelRow, check_model_commit, check_model_update, check_train_request
from node.ledger.transactions import (
    JoinRequest,
    MemberVote,
    ModelCommit,
    ModelEval,
    ModelUpdate,
    Reading,
    RegisterDevice,
    RunHandover,
    TrainRequest,
    Transaction,
    parse_tx,
)

__all__ = [
    "ChainParams",
    "DeviceRecord",
    "MemberRecord",
    "ModelRow",
    "OverlayView",
    "ReadingRow",
    "Reason",
    "StateDelta",
    "StateView",
    "TxRecord",
    "apply_block",
    "check_tx",
]

TEMPERATURE_RANGE_C = (-60.0, 100.0)
HUMIDITY_RANGE_PCT = (0.0, 100.0)


@dataclass(frozen=True)
class ChainParams:
    chain_id: str
    max_skew_ms: int
    admission: str = "votes"  # genesis admission policy: "votes" | "open"
    # False only when syncing blocks whose commit certificate was verified: more than 2/3 of the
    # authorities already checked every signature in them (node/sync.py, "certificates" mode).
    check_signatures: bool = True


@dataclass(frozen=True)
class DeviceRecord:
    device: bytes
    owner: bytes
    name: str
    last_seq: int | None  # None until the device's first reading is committed
    registered_height: int


@dataclass(frozen=True)
class MemberRecord:
    key: bytes
    role: str
    name: str
    since_height: int


@dataclass(frozen=True)
class ReadingRow:
    tx_id: bytes
    height: int
    device: bytes
    seq: int
    timestamp_ms: int
    temperature_c: float
    humidity_pct: float
    extra: dict[str, Any] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class TxRecord:
    id: bytes
    height: int
    index: int
    kind: str
    signer: bytes
    raw: dict[str, Any] = field(hash=False, compare=False)
    encoded: bytes = field(default=b"", hash=False, compare=False, repr=False)  # encode(raw), if known


@dataclass
class StateDelta:
    """Everything committing one block changes, for the store to apply in one transaction."""

    height: int
    txs: list[TxRecord] = field(default_factory=list)
    new_devices: list[DeviceRecord] = field(default_factory=list)
    device_seqs: dict[bytes, int] = field(default_factory=dict)  # device -> new last_seq
    readings: list[ReadingRow] = field(default_factory=list)
    new_members: list[MemberRecord] = field(default_factory=list)  # added, or with a new role
    removed_members: list[bytes] = field(default_factory=list)
    membership: Membership | None = None  # the new membership state, if the block changed it
    applied_changes: list[Change] = field(default_factory=list)  # appended to the membership history
    models: list[ModelRow] = field(default_factory=list)


class StateView(Protocol):
    """What validation needs to read. Stores implement it; OverlayView stacks a block on one."""

    def device(self, device: bytes) -> DeviceRecord | None: ...

    def devices(self) -> list[DeviceRecord]: ...

    def member(self, key: bytes) -> MemberRecord | None: ...

    def membership(self) -> Membership: ...

    def height(self) -> int:
        """The committed height under this view (a block being checked on it is height() + 1)."""
        ...

    def has_tx(self, tx_id: bytes) -> bool: ...

    def tx(self, tx_id: bytes) -> TxRecord | None: ...

    def model_commit(self, run: bytes, round: int) -> ModelRow | None: ...

    def model_update(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...

    def model_eval(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...

    def model_handover(self, run: bytes, round: int, node: bytes) -> ModelRow | None: ...

    def block_hash(self, height: int) -> bytes | None: ...

    def block_time(self, height: int) -> int | None: ...

    def latest_model_row(self, run: bytes, kind: str) -> ModelRow | None: ...

    def owner_readings(self, owner: bytes, max_height: int) -> list[tuple[bytes, bytes, int, int]]:
        """(tx id, device, seq, timestamp_ms) of the committed readings of `owner`'s devices at
        heights <= max_height, in (device, seq) order (node/ledger/provenance.py)."""
        ...

    def device_readings(self, device: bytes, max_height: int) -> list[tuple[bytes, int, int, float, float]]:
        """(tx id, seq, timestamp_ms, temperature_c, humidity_pct) of `device`'s committed readings
        at heights <= max_height, in seq order (node/ledger/refit.py)."""
        ...


class OverlayView:
    """A view plus the not yet committed effects of earlier txs in the same block.

    Creating one for a height first applies the membership changes that take effect at that
    height, so the block's txs (and a proposer reaping its mempool) see the members in force.
    """

    def __init__(self, base: StateView, height: int, admission: str = "votes") -> None:
        self.base = base
        self.admission = admission
        self.delta = StateDelta(height)
        self._devices: dict[bytes, DeviceRecord] = {}
        self._tx_ids: set[bytes] = set()
        self._models: dict[tuple[str, bytes, int, bytes], ModelRow] = {}
        self._members: dict[bytes, MemberRecord | None] = {}
        self._membership: Membership | None = None
        self._begin_height()

    def _begin_height(self) -> None:
        base = self.base.membership()
        new, applied = ms_rules.begin_height(base, self.delta.height)
        if new is not base:
            self._set_membership(new)
        self.delta.applied_changes.extend(applied)
        for change in applied:
            if change.action == "add":
                rec = MemberRecord(change.node, change.role, change.name, change.effective)
                self._members[change.node] = rec
                self.delta.new_members.append(rec)
            else:
                self._members[change.node] = None
                self.delta.removed_members.append(change.node)

    def _set_membership(self, new: Membership) -> None:
        self._membership = new
        self.delta.membership = new

    def device(self, device: bytes) -> DeviceRecord | None:
        rec = self._devices.get(device)
        return rec if rec is not None else self.base.device(device)

    def devices(self) -> list[DeviceRecord]:
        known = {d.device: d for d in self.base.devices()}
        known.update(self._devices)
        return [known[k] for k in sorted(known)]

    def member(self, key: bytes) -> MemberRecord | None:
        if key in self._members:
            return self._members[key]
        return self.base.member(key)

    def membership(self) -> Membership:
        return self._membership if self._membership is not None else self.base.membership()

    def height(self) -> int:
        return self.delta.height - 1

    def has_tx(self, tx_id: bytes) -> bool:
        return tx_id in self._tx_ids or self.base.has_tx(tx_id)

    def tx(self, tx_id: bytes) -> TxRecord | None:
        if tx_id in self._tx_ids:
            return next(t for t in self.delta.txs if t.id == tx_id)
        return self.base.tx(tx_id)

    def model_commit(self, run: bytes, round: int) -> ModelRow | None:
        for row in self.delta.models:
            if row.kind == "commit" and row.run == run and row.round == round:
                return row
        return self.base.model_commit(run, round)

    def model_update(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        row = self._models.get(("update", run, round, node))
        return row if row is not None else self.base.model_update(run, round, node)

    def model_eval(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        row = self._models.get(("eval", run, round, node))
        return row if row is not None else self.base.model_eval(run, round, node)

    def model_handover(self, run: bytes, round: int, node: bytes) -> ModelRow | None:
        row = self._models.get(("handover", run, round, node))
        return row if row is not None else self.base.model_handover(run, round, node)

    # A data cut is at most the committed height under the block (provenance.py), so the block's
    # own readings never count: these read the base.
    def block_hash(self, height: int) -> bytes | None:
        return self.base.block_hash(height)

    def block_time(self, height: int) -> int | None:
        return self.base.block_time(height)  # the block under check has none yet: check_tx has it

    def latest_model_row(self, run: bytes, kind: str) -> ModelRow | None:
        for row in reversed(self.delta.models):
            if row.run == run and row.kind == kind:
                return row
        return self.base.latest_model_row(run, kind)

    def owner_readings(self, owner: bytes, max_height: int) -> list[tuple[bytes, bytes, int, int]]:
        return self.base.owner_readings(owner, max_height)

    def device_readings(self, device: bytes, max_height: int) -> list[tuple[bytes, int, int, float, float]]:
        # A cut is at most the committed height under the block: the block's own readings are above it.
        return self.base.device_readings(device, max_height)

    def apply(self, tx: Transaction) -> None:
        """Record the effects of a tx already accepted by check_tx."""
        d = self.delta
        d.txs.append(TxRecord(tx.id, d.height, len(d.txs), tx.kind, tx.signer, tx.raw, tx.encoded))
        self._tx_ids.add(tx.id)
        body = tx.body
        if isinstance(body, ModelUpdate):
            row = ModelRow("update", tx.id, d.height, body.run, body.round, body.node, body.weights_hash)
            d.models.append(row)
            self._models[("update", body.run, body.round, body.node)] = row
        elif isinstance(body, ModelCommit):
            d.models.append(
                ModelRow("commit", tx.id, d.height, body.run, body.round, tx.signer, body.weights_hash)
            )
        elif isinstance(body, ModelEval):
            row = ModelRow("eval", tx.id, d.height, body.run, body.round, body.node, body.model_hash)
            d.models.append(row)
            self._models[("eval", body.run, body.round, body.node)] = row
        elif isinstance(body, RunHandover):
            row = ModelRow("handover", tx.id, d.height, body.run, body.round, body.authority,
                           body.superlink_cert)
            d.models.append(row)
            self._models[("handover", body.run, body.round, body.authority)] = row
        elif isinstance(body, JoinRequest):
            ms = ms_rules.record_join(self.membership(), body, tx.id, d.height, self.admission)
            self._set_membership(ms)
        elif isinstance(body, MemberVote):
            self._set_membership(ms_rules.record_vote(self.membership(), body, d.height))
        elif isinstance(body, RegisterDevice):
            rec = DeviceRecord(body.device, body.owner, body.name, None, d.height)
            d.new_devices.append(rec)
            self._devices[body.device] = rec
        elif isinstance(body, Reading):
            prev = self.device(body.device)
            assert prev is not None  # check_tx guarantees it
            self._devices[body.device] = DeviceRecord(
                prev.device, prev.owner, prev.name, body.seq, prev.registered_height
            )
            d.device_seqs[body.device] = body.seq
            d.readings.append(
                ReadingRow(
                    tx.id,
                    d.height,
                    body.device,
                    body.seq,
                    body.timestamp_ms,
                    body.temperature_c,
                    body.humidity_pct,
                    body.extra,
                )
            )


def check_tx(
    view: StateView, tx: Transaction | dict[str, Any], block_time_ms: int, params: ChainParams
) -> Reason | None:
    """None if `tx` may enter a block with time `block_time_ms` on top of `view`, else why not.

    Readings are checked in DESIGN.md's order (registered device, signature, sequence, timestamp,
    values), so the reason reported is the first rule broken in that order.
    """
    if not isinstance(tx, Transaction):
        try:
            tx = parse_tx(tx)
        except InvalidTransaction as exc:
            return exc.reason
    body = tx.body
    if isinstance(body, Reading):
        # No ledger lookup for duplicates on this hot path: a committed reading has raised its
        # device's last_seq to at least its own seq, so only a seq at or below it can be one.
        dev = view.device(body.device)
        if dev is None:
            return Reason.UNKNOWN_DEVICE
        if params.check_signatures and not tx.signature_valid(params.chain_id):
            return Reason.BAD_SIGNATURE
        if view.member(dev.owner) is None:
            return Reason.OWNER_REMOVED  # a removed member's devices stop with it
        if dev.last_seq is not None and body.seq <= dev.last_seq:
            return Reason.DUPLICATE if view.has_tx(tx.id) else Reason.REPLAYED_SEQUENCE
        if body.timestamp_ms > block_time_ms + params.max_skew_ms:
            return Reason.FUTURE_TIMESTAMP
        lo_t, hi_t = TEMPERATURE_RANGE_C
        lo_h, hi_h = HUMIDITY_RANGE_PCT
        finite = math.isfinite(body.temperature_c) and math.isfinite(body.humidity_pct)
        if not (finite and lo_t <= body.temperature_c <= hi_t and lo_h <= body.humidity_pct <= hi_h):
            return Reason.OUT_OF_RANGE
        return None
    if view.has_tx(tx.id):
        return Reason.DUPLICATE
    if params.check_signatures and not tx.signature_valid(params.chain_id):
        return Reason.BAD_SIGNATURE
    if isinstance(body, RegisterDevice):
        if view.member(body.owner) is None:
            return Reason.UNAUTHORIZED
        if view.device(body.device) is not None:
            return Reason.DEVICE_EXISTS
    elif isinstance(body, (TrainRequest, MemberVote)):
        m = view.member(tx.signer)
        if m is None or m.role != "authority":
            return Reason.UNAUTHORIZED
        if isinstance(body, TrainRequest):
            return check_train_request(body)
        return ms_rules.check_vote(view.membership(), view, body, view.height() + 1)
    elif isinstance(body, JoinRequest):
        return ms_rules.check_join(view.membership(), view, body)
    elif isinstance(body, ModelUpdate):
        return check_model_update(view, body)
    elif isinstance(body, ModelEval):
        return check_model_eval(view, body)  # type: ignore[arg-type]
    elif isinstance(body, ModelCommit):
        m = view.member(tx.signer)
        if m is None or m.role != "authority":
            return Reason.UNAUTHORIZED  # the coordinator is an authority (DESIGN.md section 5)
        return check_model_commit(view, body, tx.signer)
    elif isinstance(body, RunHandover):
        m = view.member(tx.signer)
        if m is None or m.role != "authority":
            return Reason.UNAUTHORIZED  # only an authority coordinates
        return check_run_handover(view, body, block_time_ms)
    return None


def apply_block(view: StateView, block: Block, params: ChainParams) -> StateDelta:
    """Validate every tx of `block` in order and return the delta; InvalidBlock(INVALID_TX) on the
    first tx that is not acceptable, naming its index and reason."""
    overlay = OverlayView(view, block.height, params.admission)
    for i, tx in enumerate(block.parsed_txs):
        if isinstance(tx, InvalidTransaction):
            raise InvalidBlock(BlockReason.INVALID_TX, block.height, f"tx {i}: {tx}") from tx
        reason = check_tx(overlay, tx, block.header.time_ms, params)
        if reason is not None:
            raise InvalidBlock(BlockReason.INVALID_TX, block.height, f"tx {i} ({tx.kind}): {reason.value}")
        overlay.apply(tx)
    return overlay.delta
