"""Pending transactions: admitted after validation against the committed state, reaped in arrival
order into blocks, and dropped once committed or no longer valid.

A proposer keeps each device's readings in sequence: a reading whose sequence number is more than
one above its device's last is left out of a block for up to GAP_WAIT_MS after this node admitted
it, since its predecessors may be on their way. The ledger takes any increasing sequence number,
so a node that missed some gossip (it restarted, say) would otherwise commit a device's later
readings first, and the earlier ones that other nodes hold would then be refused for good
(`replayed_sequence`): signed readings lost. A device that really skipped numbers waits that long."""

from __future__ import annotations

from collections import Counter
from typing import Any

from node.errors import InvalidTransaction, Reason
from node.ledger.state import ChainParams, OverlayView, StateView, check_tx
from node.ledger.transactions import Reading, Transaction, parse_tx

DEFAULT_MAX_TXS = 50_000
# Join requests are free to make (a fresh key each) and the ledger takes few: the mempool keeps at
# most this many, one per joining node, so a flood of them cannot crowd out readings.
MAX_PENDING_JOIN_REQUESTS = 256
# Refusals that a later block may lift: such txs stay pending when a block is built without them.
WAITING = frozenset({Reason.FUTURE_TIMESTAMP, Reason.UNKNOWN_DEVICE, Reason.HANDOVER_EARLY})
GAP_WAIT_MS = 3000  # how long a reading after a gap in its device's sequence waits for the missing ones
# A model_update or model_eval is one per node, run and round on the ledger, and checking one can
# cost a replica a re-fit of the node's readings (node/ledger/refit.py: 0.4 s on a week of 8 rooms)
# on its event loop. So at most one of each is pending per signer, run and round, and once a
# signer has had MAX_MODEL_REFUSALS of them refused for a run and round, its further ones are
# refused unchecked (`rate_limited`): a member cannot make every replica re-fit without end.
MODEL_KINDS = frozenset({"model_update", "model_eval"})
MAX_MODEL_REFUSALS = 3
MAX_MODEL_KEYS = 4096  # (signer, run, round) refusal counts kept, oldest dropped first
# Refused before the signer is known to be who it claims (a forged signature), or a re-send of the
# same tx: not the signer's doing.
_NOT_COUNTED = frozenset({Reason.BAD_SIGNATURE, Reason.DUPLICATE, Reason.MALFORMED})


class Mempool:
    def __init__(self, params: ChainParams, max_txs: int = DEFAULT_MAX_TXS) -> None:
        self.params = params
        self.max_txs = max_txs
        self._txs: dict[bytes, Transaction] = {}  # insertion order = arrival order
        self._joins: dict[bytes, bytes] = {}  # joining node -> id of its pending join_request
        self._since: dict[bytes, int] = {}  # tx id -> when it was admitted (ms, this node's clock)
        self._model_slots: dict[tuple[str, bytes, bytes, int], bytes] = {}  # -> id of the pending one
        self._model_refusals: dict[tuple[bytes, bytes, int], int] = {}  # insertion order = age
        self.rejected: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._txs)

    def __contains__(self, tx_id: object) -> bool:
        return tx_id in self._txs

    def add(self, raw: Any, view: StateView, now_ms: int) -> tuple[bytes | None, Reason | None]:
        """Admit a transaction; returns (tx id, None) or (tx id or None, rejection reason)."""
        try:
            tx = raw if isinstance(raw, Transaction) else parse_tx(raw)
        except InvalidTransaction as exc:
            self.rejected[exc.reason.value] += 1
            return None, exc.reason
        if tx.id in self._txs:
            return tx.id, None  # already pending: gossip brings the same tx many times
        if len(self._txs) >= self.max_txs:
            self.rejected[Reason.MEMPOOL_FULL.value] += 1
            return tx.id, Reason.MEMPOOL_FULL
        if tx.kind == "join_request":
            if tx.signer in self._joins:
                self.rejected[Reason.DUPLICATE.value] += 1
                return tx.id, Reason.DUPLICATE  # one pending request per node
            if len(self._joins) >= MAX_PENDING_JOIN_REQUESTS:
                self.rejected[Reason.MEMPOOL_FULL.value] += 1
                return tx.id, Reason.MEMPOOL_FULL
        slot = self._model_slot(tx)
        if slot is not None:
            if slot in self._model_slots:
                self.rejected[Reason.DUPLICATE_UPDATE.value] += 1
                return tx.id, Reason.DUPLICATE_UPDATE  # its node's other one is pending
            if self._model_refusals.get(slot[1:], 0) >= MAX_MODEL_REFUSALS:
                self.rejected[Reason.RATE_LIMITED.value] += 1
                return tx.id, Reason.RATE_LIMITED
        reason = check_tx(view, tx, now_ms, self.params)
        if reason is not None:
            self.rejected[reason.value] += 1
            if slot is not None and reason not in _NOT_COUNTED:
                self._count_refusal(slot[1:])
            return tx.id, reason
        self._txs[tx.id] = tx
        self._since[tx.id] = now_ms
        if tx.kind == "join_request":
            self._joins[tx.signer] = tx.id
        if slot is not None:
            self._model_slots[slot] = tx.id
        return tx.id, None

    @staticmethod
    def _model_slot(tx: Transaction) -> tuple[str, bytes, bytes, int] | None:
        if tx.kind not in MODEL_KINDS:
            return None
        body: Any = tx.body
        return tx.kind, tx.signer, body.run, body.round

    def _count_refusal(self, key: tuple[bytes, bytes, int]) -> None:
        self._model_refusals[key] = self._model_refusals.pop(key, 0) + 1
        if len(self._model_refusals) > MAX_MODEL_KEYS:
            del self._model_refusals[next(iter(self._model_refusals))]

    def reap(self, view: StateView, block_time_ms: int, height: int, max_txs: int) -> list[dict[str, Any]]:
        """Transactions for a new block: in arrival order, each valid on top of the ones before it.
        Those that can never become valid again are dropped."""
        overlay = OverlayView(view, height, self.params.admission)
        out: list[dict[str, Any]] = []
        dead: list[bytes] = []
        for tx_id, tx in self._txs.items():
            if len(out) >= max_txs:
                break
            if self._after_gap(overlay, tx, block_time_ms):
                continue  # its device's earlier readings may still come
            reason = check_tx(overlay, tx, block_time_ms, self.params)
            if reason is None:
                overlay.apply(tx)
                out.append(tx.raw)
            elif reason not in WAITING:
                # A timestamp ahead of the block time, a device registered in a later block or a
                # handover before its signer's turn can become valid; everything else (replay,
                # duplicate, bad signature) cannot.
                dead.append(tx_id)
                self.rejected[reason.value] += 1
        self.remove(dead)
        return out

    def _after_gap(self, view: StateView, tx: Transaction, block_time_ms: int) -> bool:
        """A reading whose device's previous sequence number is not committed (nor earlier in the
        block), admitted less than GAP_WAIT_MS ago."""
        body = tx.body
        if not isinstance(body, Reading):
            return False
        if block_time_ms - self._since.get(tx.id, block_time_ms) >= GAP_WAIT_MS:
            return False
        dev = view.device(body.device)
        return dev is not None and dev.last_seq is not None and body.seq > dev.last_seq + 1

    def remove(self, tx_ids: list[bytes] | set[bytes]) -> None:
        for tx_id in tx_ids:
            self._since.pop(tx_id, None)
            tx = self._txs.pop(tx_id, None)
            if tx is not None and tx.kind == "join_request":
                self._joins.pop(tx.signer, None)
            slot = None if tx is None else self._model_slot(tx)
            if slot is not None and self._model_slots.get(slot) == tx_id:
                del self._model_slots[slot]

    def pending(self) -> list[Transaction]:
        return list(self._txs.values())
