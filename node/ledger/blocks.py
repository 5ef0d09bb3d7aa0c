"""Blocks, headers and commit certificates, their wire form and certificate verification.

Block hash = digest(header dict): the header commits to the txs through tx_root (the Merkle root
of tx ids) and to the previous height's finality proof through last_commit_hash, so one hash
pins the whole block. A Commit is the set of PRECOMMIT votes that made a block final; any node
can check it offline against the validator set of that height.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from consensus.messages import Vote, VoteType
from consensus.validators import ValidatorSet
from node.errors import BlockReason, CodecError, InvalidBlock, InvalidTransaction
from node.ledger import merkle
from node.ledger.codec import decode, digest, encode
from node.ledger.keys import verify_vote
from node.ledger.transactions import Transaction, parse_encoded_tx, parse_tx, tx_id

EMPTY_HASH = hashlib.sha256(b"").digest()
MAX_BLOCK_TXS = 10_000

HEADER_FIELDS = (
    "chain_id",
    "height",
    "round",
    "prev_hash",
    "time_ms",
    "proposer",
    "tx_root",
    "last_commit_hash",
)


@dataclass(frozen=True)
class Header:
    chain_id: str
    height: int
    round: int
    prev_hash: bytes
    time_ms: int
    proposer: bytes
    tx_root: bytes
    last_commit_hash: bytes

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in HEADER_FIELDS}

    @cached_property
    def hash(self) -> bytes:
        return digest(self.to_dict())

    @staticmethod
    def from_dict(d: Any, height_hint: int | None = None) -> Header:
        if not isinstance(d, dict) or set(d) != set(HEADER_FIELDS):
            raise _malformed(height_hint, f"header must have exactly the fields {', '.join(HEADER_FIELDS)}")
        h = Header(**d)
        if not isinstance(h.chain_id, str) or not h.chain_id:
            raise _malformed(height_hint, "header chain_id must be a non-empty string")
        for name in ("height", "round", "time_ms"):
            v = getattr(h, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _malformed(height_hint, f"header {name} must be a non-negative integer")
        for name in ("prev_hash", "proposer", "tx_root", "last_commit_hash"):
            v = getattr(h, name)
            if not isinstance(v, bytes) or len(v) != 32:
                raise _malformed(height_hint, f"header {name} must be 32 bytes")
        return h


@dataclass(frozen=True)
class Commit:
    """Commit certificate: PRECOMMITs for (height, round, block_id) from > 2/3 of the validators."""

    height: int
    round: int
    block_id: bytes
    precommits: tuple[Vote, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "height": self.height,
            "round": self.round,
            "block_id": self.block_id,
            "precommits": [v.to_wire() for v in self.precommits],
        }

    @cached_property
    def hash(self) -> bytes:
        return digest(self.to_dict())

    @staticmethod
    def from_dict(d: Any) -> Commit:
        hint = d.get("height") if isinstance(d, dict) and isinstance(d.get("height"), int) else None
        if not isinstance(d, dict) or set(d) != {"height", "round", "block_id", "precommits"}:
            raise _malformed(
                hint, "commit must have exactly height, round, block_id, precommits", commit=True
            )
        for name in ("height", "round"):
            v = d[name]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise _malformed(hint, f"commit {name} must be a non-negative integer", commit=True)
        if not isinstance(d["block_id"], bytes) or len(d["block_id"]) != 32:
            raise _malformed(hint, "commit block_id must be 32 bytes", commit=True)
        pcs = d["precommits"]
        if not isinstance(pcs, list) or len(pcs) > 10_000:
            raise _malformed(hint, "commit precommits must be a list", commit=True)
        return Commit(d["height"], d["round"], d["block_id"], tuple(_vote_from_wire(v, hint) for v in pcs))


def _vote_from_wire(v: Any, hint: int | None) -> Vote:
    if not isinstance(v, dict) or set(v) != {"type", "height", "round", "block_id", "validator", "signature"}:
        raise _malformed(hint, "precommit must be a vote map", commit=True)
    try:
        vote = Vote.from_wire(v)
    except (ValueError, TypeError, KeyError) as exc:
        raise _malformed(hint, f"bad vote: {exc}", commit=True) from exc
    ok = (
        type(vote.height) is int  # not bool: `round: false` must not pass as round 0
        and type(vote.round) is int
        and vote.height >= 0
        and vote.round >= 0
        and (vote.block_id is None or isinstance(vote.block_id, bytes))
        and isinstance(vote.validator, bytes)
        and isinstance(vote.signature, bytes)
    )
    if not ok:
        raise _malformed(hint, "precommit has fields of the wrong type", commit=True)
    return vote


@dataclass(frozen=True)
class Block:
    header: Header
    txs: tuple[dict[str, Any], ...]
    last_commit: Commit | None = field(default=None)

    @property
    def hash(self) -> bytes:
        return self.header.hash

    @property
    def height(self) -> int:
        return self.header.height

    @cached_property
    def wire_bytes(self) -> bytes:
        """Canonical encoding of to_wire(), computed once (the signed state persists the locked
        and valid blocks at every vote)."""
        return encode(self.to_wire())

    @cached_property
    def parsed_txs(self) -> tuple[Transaction | InvalidTransaction, ...]:
        """Each tx parsed once per block object (parsing computes the tx id, an encode); a
        malformed tx is kept as its error so validation can name it."""
        out: list[Transaction | InvalidTransaction] = []
        for raw in self.txs:
            try:
                out.append(parse_tx(raw))
            except InvalidTransaction as exc:
                out.append(exc)
        return tuple(out)

    @cached_property
    def tx_ids(self) -> tuple[bytes, ...]:
        """Ids of the txs (raises CodecError if one cannot even be encoded)."""
        return tuple(p.id if isinstance(p, Transaction) else tx_id(raw)
                     for p, raw in zip(self.parsed_txs, self.txs, strict=True))

    def to_wire(self) -> dict[str, Any]:
        return {
            "header": self.header.to_dict(),
            "txs": list(self.txs),
            "last_commit": self.last_commit.to_dict() if self.last_commit else None,
        }

    @staticmethod
    def from_wire(d: Any) -> Block:
        """Structural checks only; Ledger.validate_block decides whether the block is acceptable."""
        if not isinstance(d, dict) or set(d) != {"header", "txs", "last_commit"}:
            raise _malformed(None, "block must have exactly header, txs, last_commit")
        hdr = d["header"]
        hint = hdr.get("height") if isinstance(hdr, dict) and isinstance(hdr.get("height"), int) else None
        header = Header.from_dict(hdr, hint)
        txs = d["txs"]
        if not isinstance(txs, list) or len(txs) > MAX_BLOCK_TXS:
            raise _malformed(hint, f"txs must be a list of at most {MAX_BLOCK_TXS}")
        if not all(isinstance(t, dict) for t in txs):
            raise _malformed(hint, "every tx must be a map")
        lc = None if d["last_commit"] is None else Commit.from_dict(d["last_commit"])
        return Block(header, tuple(txs), lc)


def block_from_parts(raw_block: bytes, raw_txs: Sequence[bytes]) -> Block:
    """A block as block sync receives it: the canonical encoding of {header, last_commit} and
    each tx's encoding, as the serving replica stores them. Tx ids are the hashes of those bytes
    (transactions.parse_encoded_tx), so nothing is re-encoded; a certified block never holds a
    malformed tx, so one makes the whole block malformed."""
    try:
        d = decode(raw_block)
    except CodecError as exc:
        raise _malformed(None, f"undecodable block: {exc}") from exc
    if not isinstance(d, dict) or set(d) != {"header", "last_commit"}:
        raise _malformed(None, "block must have exactly header and last_commit")
    hdr = d["header"]
    hint = hdr.get("height") if isinstance(hdr, dict) and isinstance(hdr.get("height"), int) else None
    header = Header.from_dict(hdr, hint)
    if len(raw_txs) > MAX_BLOCK_TXS:
        raise _malformed(hint, f"txs must be a list of at most {MAX_BLOCK_TXS}")
    parsed: list[Transaction] = []
    for i, raw in enumerate(raw_txs):
        try:
            parsed.append(parse_encoded_tx(raw))
        except InvalidTransaction as exc:
            raise _malformed(hint, f"tx {i}: {exc}") from exc
    lc = None if d["last_commit"] is None else Commit.from_dict(d["last_commit"])
    block = Block(header, tuple(t.raw for t in parsed), lc)
    # Fill the cached properties from the parse: computing them again would re-encode every tx.
    block.__dict__["parsed_txs"] = tuple(parsed)
    block.__dict__["tx_ids"] = tuple(t.id for t in parsed)
    return block


def commit_from_bytes(raw: bytes) -> Commit:
    try:
        d = decode(raw)
    except CodecError as exc:
        raise _malformed(None, f"undecodable commit: {exc}", commit=True) from exc
    return Commit.from_dict(d)


def block_row_bytes(block: Block) -> bytes:
    """The canonical encoding of {header, last_commit}: how stores keep a block and sync sends it."""
    lc = block.last_commit.to_dict() if block.last_commit else None
    return encode({"header": block.header.to_dict(), "last_commit": lc})


def _malformed(height: int | None, detail: str, *, commit: bool = False) -> InvalidBlock:
    return InvalidBlock(BlockReason.BAD_COMMIT if commit else BlockReason.MALFORMED, height, detail)


def tx_root(txs: Sequence[dict[str, Any]]) -> bytes:
    return merkle.root([tx_id(t) for t in txs])


def commit_hash(commit: Commit | None) -> bytes:
    return EMPTY_HASH if commit is None else commit.hash


def make_block(
    chain_id: str,
    height: int,
    round: int,
    prev_hash: bytes,
    time_ms: int,
    proposer: bytes,
    txs: Sequence[dict[str, Any]],
    last_commit: Commit | None,
) -> Block:
    """Assemble a block for a proposer, computing tx_root and last_commit_hash."""
    header = Header(
        chain_id=chain_id,
        height=height,
        round=round,
        prev_hash=prev_hash,
        time_ms=time_ms,
        proposer=proposer,
        tx_root=tx_root(txs),
        last_commit_hash=commit_hash(last_commit),
    )
    return Block(header, tuple(txs), last_commit)


def canonical_commit(
    commit: Commit, vset: ValidatorSet, chain_id: str, block_id: bytes, height: int
) -> Commit:
    """The certificate as it is stored and forwarded: exactly the valid PRECOMMITs for (height,
    commit.round, block_id), one per validator, sorted by validator key.

    Raises InvalidBlock(BAD_COMMIT) when fewer than a quorum remain, or when the certificate lists
    more entries than there are validators: padding is refused before a single signature is paid
    for, so checking any certificate costs at most one verification per validator."""
    if commit.height != height:
        raise InvalidBlock(BlockReason.BAD_COMMIT, height, f"commit is for height {commit.height}")
    if commit.block_id != block_id:
        raise InvalidBlock(BlockReason.BAD_COMMIT, height, "commit is for a different block")
    if len(commit.precommits) > vset.n:
        raise InvalidBlock(BlockReason.BAD_COMMIT, height,
                           f"{len(commit.precommits)} precommits for {vset.n} validators")
    valid: dict[bytes, Vote] = {}
    for v in commit.precommits:
        if v.validator in valid or v.validator not in vset:
            continue
        if (
            v.type != VoteType.PRECOMMIT
            or v.height != height
            or v.round != commit.round
            or v.block_id != block_id
        ):
            continue
        if verify_vote(chain_id, v):
            valid[v.validator] = v
    if len(valid) < vset.quorum:
        raise InvalidBlock(
            BlockReason.BAD_COMMIT,
            height,
            f"only {len(valid)} valid precommits of {vset.n} validators, need {vset.quorum}",
        )
    return Commit(height, commit.round, block_id, tuple(valid[k] for k in sorted(valid)))


def verify_commit(commit: Commit, vset: ValidatorSet, chain_id: str, block_id: bytes, height: int) -> None:
    """Raise InvalidBlock(BAD_COMMIT) unless `commit` is a canonical certificate (canonical_commit)
    of > 2/3 of `vset` for (height, commit.round, block_id): no junk, duplicate or foreign entry, and
    in validator order. For certificates fixed by a hash (a block's last_commit)."""
    if canonical_commit(commit, vset, chain_id, block_id, height) != commit:
        raise InvalidBlock(BlockReason.BAD_COMMIT, height,
                           "commit certificate is not canonical (invalid, duplicate or unsorted entries)")
