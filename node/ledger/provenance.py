"""Data provenance of model updates and evaluations, re-computed by every replica.

The training set of a node's update is fixed by the ledger, not declared by the node: it is that
node's devices' committed readings at heights up to the update's `data_cut`, minus the held-out
readings of node/ledger/holdout.py; the held-out set at that cut is what its evaluations score on.
Each set is committed to by its size and the RFC 6962 Merkle root of its reading tx ids in
(device key, sequence number) order, an order every store gives the same way. An authority
re-computes both from its own replica and refuses an update (or evaluation) whose figures differ,
so nobody can inflate the FedAvg weight `num_examples` or claim readings it does not own.

The ClientApp side (federated/flower/fl_ledger.py) selects its training rows with the same
`partition`, so what a node trains on is exactly what the ledger checks.

Readings at heights <= data_cut never change once committed, so results are cached per
(block hash at the cut, owner, cut): a replica checks each update at mempool admission and again
inside the block that carries it, and several updates of one round share nothing else.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from node.errors import Reason
from node.ledger import merkle
from node.ledger.holdout import Split, split_of
from node.ledger.lru import Lru
from node.ledger.transactions import ModelEval, ModelUpdate

NO_DATA_ROOT = bytes(32)  # the readings_root of round 0's initial model, trained on nothing
MAX_CACHED = 256

R = TypeVar("R", bound=Sequence[Any])


class ProvenanceView(Protocol):
    def height(self) -> int: ...

    def block_hash(self, height: int) -> bytes | None: ...

    def owner_readings(self, owner: bytes, max_height: int) -> list[tuple[bytes, bytes, int, int]]:
        """(tx id, device, seq, timestamp_ms) of the committed readings of `owner`'s devices at
        heights <= max_height."""
        ...


@dataclass(frozen=True)
class DataSets:
    cut: int
    train_examples: int
    train_root: bytes
    holdout_examples: int
    holdout_root: bytes


def root_of(ids: Sequence[bytes]) -> bytes:
    return merkle.root(list(ids)) if ids else NO_DATA_ROOT


def partition(rows: Iterable[R]) -> tuple[list[R], list[R]]:
    """(training rows, held-out rows) of rows shaped (tx id, device, seq, timestamp_ms, ...),
    each in (device, seq) order; guard rows are dropped."""
    train: list[R] = []
    held: list[R] = []
    for r in sorted(rows, key=lambda r: (r[1], r[2])):
        side = split_of(int(r[3]))
        if side is Split.TRAIN:
            train.append(r)
        elif side is Split.HOLDOUT:
            held.append(r)
    return train, held


def named_row(r: Sequence[Any]) -> list[Any]:
    """A reading row (tx id, device, seq, timestamp_ms, device name, temperature, humidity) as the
    tasks take it: (device name, seq, timestamp_ms, temperature, humidity). The ClientApp's rows
    and a replica's re-fit (node/ledger/refit.py) are made the same way."""
    return [r[4], r[2], r[3], r[5], r[6]]


def datasets_of(rows: Iterable[Sequence[Any]], cut: int) -> DataSets:
    train, held = partition(rows)
    return DataSets(cut, len(train), root_of([bytes(r[0]) for r in train]),
                    len(held), root_of([bytes(r[0]) for r in held]))


_cache: Lru[tuple[bytes, bytes, int], DataSets] = Lru(MAX_CACHED)


def datasets(view: ProvenanceView, owner: bytes, cut: int) -> DataSets:
    """The training and held-out sets of `owner` at `cut` (<= the view's committed height)."""
    anchor = view.block_hash(cut)
    key = (anchor or b"", owner, cut)
    if anchor is not None:
        found = _cache.get(key)
        if found is not None:
            return found
    ds = datasets_of(view.owner_readings(owner, cut), cut)
    if anchor is not None:
        _cache.put(key, ds)
    return ds


def _cut_ok(view: ProvenanceView, cut: int) -> bool:
    return 1 <= cut <= view.height()


def check_update_provenance(view: ProvenanceView, body: ModelUpdate) -> Reason | None:
    if body.round == 0:
        # The initial model is built, not trained: it names no data.
        if body.data_cut != 0:
            return Reason.BAD_DATA_CUT
        return None if body.readings_root == NO_DATA_ROOT else Reason.READINGS_ROOT_MISMATCH
    if not _cut_ok(view, body.data_cut):
        return Reason.BAD_DATA_CUT
    ds = datasets(view, body.node, body.data_cut)
    if body.num_examples != ds.train_examples:
        return Reason.NUM_EXAMPLES_MISMATCH
    if body.readings_root != ds.train_root:
        return Reason.READINGS_ROOT_MISMATCH
    return None


def check_eval_provenance(view: ProvenanceView, body: ModelEval) -> Reason | None:
    if not _cut_ok(view, body.data_cut):
        return Reason.BAD_DATA_CUT
    ds = datasets(view, body.node, body.data_cut)
    if body.num_examples != ds.holdout_examples:
        return Reason.NUM_EXAMPLES_MISMATCH
    if body.readings_root != ds.holdout_root:
        return Reason.READINGS_ROOT_MISMATCH
    return None
