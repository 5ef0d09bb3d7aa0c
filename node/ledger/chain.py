"""Ledger: the rules for extending one replica's chain by one block.

`validate_block` answers "may this block be height head+1?" without writing; `commit` also checks
the block's commit certificate and applies block + state atomically through the store. The
consensus core calls validate_block on proposals (its "block validated" event) and commit when
it decides; block sync calls commit for every fetched block.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from consensus.validators import ValidatorSet
from node.errors import BlockReason, CodecError, InvalidBlock
from node.ledger import merkle
from node.ledger.blocks import Block, Commit, canonical_commit, commit_hash, make_block, verify_commit
from node.ledger.genesis import Genesis
from node.ledger.state import ChainParams, MemberRecord, Reason, StateDelta, apply_block, check_tx
from node.ledger.storage import Store


class Ledger:
    def __init__(self, store: Store, genesis: Genesis) -> None:
        self.store = store
        self.genesis = genesis
        self.genesis_hash = genesis.hash
        self.chain_id = genesis.chain_id
        self.params = ChainParams(genesis.chain_id, genesis.max_clock_skew_ms, genesis.admission)
        # Blocks synced under a verified commit certificate skip per-tx signature checks.
        self.certified_params = dataclasses.replace(self.params, check_signatures=False)
        self._vsets: dict[tuple[bytes, ...], ValidatorSet] = {}
        self._validated: dict[bytes, tuple[bytes, StateDelta]] = {}
        self._head_time: tuple[int, int] = (-1, 0)
        store.initialize(
            self.genesis_hash,
            genesis.to_json(),
            [MemberRecord(m.key, m.role, m.name, 0) for m in genesis.members()],
        )

    def validators_at(self, height: int) -> ValidatorSet:
        """The validator set that decides `height`: genesis' authorities, changed by decided
        membership votes from their effective height (H+2) on. Known up to head + 2."""
        keys = self.store.membership().validators_at(height)
        vset = self._vsets.get(keys)
        if vset is None:  # a handful of distinct sets over a chain's life
            vset = self._vsets[keys] = ValidatorSet.of(keys)
        return vset

    @property
    def height(self) -> int:
        return self.store.height()

    @property
    def head_hash(self) -> bytes:
        """Hash the next block must name as prev_hash: the genesis hash before block 1."""
        return self.store.head_hash() or self.genesis_hash

    @property
    def head_time_ms(self) -> int:
        h = self.height
        if h == 0:
            return self.genesis.genesis_time_ms
        # Cached per height: loading a block from SQLite decodes all its txs.
        if self._head_time[0] != h:
            b = self.store.block(h)
            assert b is not None, "store height and blocks disagree"
            self._head_time = (h, b.header.time_ms)
        return self._head_time[1]

    def check_tx(self, tx: dict[str, Any], now_ms: int) -> Reason | None:
        """Mempool admission against committed state (a block's own ordering is checked later)."""
        return check_tx(self.store, tx, now_ms, self.params)

    def make_next_block(
        self,
        proposer: bytes,
        round: int,
        time_ms: int,
        txs: Sequence[dict[str, Any]],
        last_commit: Commit | None = None,
    ) -> Block:
        """Assemble the block for head+1; last_commit defaults to the stored certificate of head."""
        h = self.height + 1
        if last_commit is None and h > 1:
            last_commit = self.store.commit(h - 1)
        return make_block(self.chain_id, h, round, self.head_hash, time_ms, proposer, txs, last_commit)

    def validate_block(
        self, block: Block, *, certified: bool = False
    ) -> StateDelta:
        """Raise InvalidBlock unless `block` may be committed as head+1; return its state delta.

        Deterministic: the local clock has no say here (see timely). `certified`: the caller has verified a
        commit certificate for this block, so tx signatures are taken as checked by the
        authorities that signed it; every other rule is still applied.
        """
        hdr = block.header
        h = self.height + 1
        if hdr.chain_id != self.chain_id:
            raise InvalidBlock(BlockReason.WRONG_CHAIN, hdr.height, f"chain {hdr.chain_id!r}")
        if hdr.height != h:
            raise InvalidBlock(BlockReason.BAD_HEIGHT, hdr.height, f"expected height {h}")
        if hdr.prev_hash != self.head_hash:
            raise InvalidBlock(BlockReason.BAD_PREV_HASH, h, "prev_hash is not the hash of the head")
        expected = self.validators_at(h).proposer(h, hdr.round)
        if hdr.proposer != expected:
            raise InvalidBlock(BlockReason.BAD_PROPOSER, h, f"round {hdr.round} belongs to another proposer")
        if hdr.time_ms < self.head_time_ms:
            raise InvalidBlock(BlockReason.BAD_TIME, h, "block time is before the previous block's")
        try:
            root = merkle.root(list(block.tx_ids))
        except CodecError as exc:
            raise InvalidBlock(BlockReason.MALFORMED, h, f"unencodable tx: {exc}") from exc
        if hdr.tx_root != root:
            raise InvalidBlock(BlockReason.BAD_TX_ROOT, h, "tx_root does not match the transactions")
        self._check_last_commit(block)
        cached = self._validated.get(block.hash)
        if cached is not None and cached[0] == self.head_hash:
            return cached[1]
        if certified:
            return apply_block(self.store, block, self.certified_params)
        delta = apply_block(self.store, block, self.params)
        # A proposal is validated when it arrives and again when it is committed, on the same
        # head: keep the result (a few blocks' worth) instead of re-checking every tx.
        if len(self._validated) >= 8:
            del self._validated[next(iter(self._validated))]
        self._validated[block.hash] = (self.head_hash, delta)
        return delta

    def timely(self, block: Block, now_ms: int) -> bool:
        """Whether `block`'s time is at most the allowed clock skew ahead of `now_ms` (the local
        clock). Not part of validity: consensus asks it only of fresh proposals (consensus/app.py)."""
        return block.header.time_ms <= now_ms + self.params.max_skew_ms

    def _check_last_commit(self, block: Block) -> None:
        h = block.height
        if block.header.last_commit_hash != commit_hash(block.last_commit):
            raise InvalidBlock(BlockReason.BAD_LAST_COMMIT, h, "last_commit_hash does not match last_commit")
        if h == 1:
            if block.last_commit is not None:
                raise InvalidBlock(BlockReason.BAD_LAST_COMMIT, h, "block 1 cannot carry a last commit")
            return
        if block.last_commit is None:
            raise InvalidBlock(BlockReason.BAD_LAST_COMMIT, h, f"missing commit certificate for {h - 1}")
        try:
            verify_commit(
                block.last_commit, self.validators_at(h - 1), self.chain_id, block.header.prev_hash, h - 1
            )
        except InvalidBlock as exc:
            raise InvalidBlock(BlockReason.BAD_LAST_COMMIT, h, exc.detail) from exc

    def canonical_commit(self, block: Block, commit: Commit) -> Commit:
        """`commit` checked to finalise `block`, reduced to the canonical certificate that is stored."""
        return canonical_commit(commit, self.validators_at(block.height), self.chain_id, block.hash,
                                block.height)

    def commit(
        self, block: Block, commit: Commit, *, verify_txs: bool = True, durable: bool = True
    ) -> StateDelta:
        """Check `commit` finalises `block`, validate the block, apply it all atomically.

        verify_txs=False is block sync's "certificates" mode: the certificate is checked, then
        every rule but the per-tx signature checks (see validate_block). durable=False: see
        Store.commit_block (block sync)."""
        # A decided certificate is in arrival order, a synced one may carry junk: store neither as is,
        # since the next block carries this one and a fresh node must check it (issue 11, finding 4).
        commit = self.canonical_commit(block, commit)
        delta = self.validate_block(block, certified=not verify_txs)
        self.store.commit_block(block, commit, delta, durable=durable)
        self._head_time = (block.height, block.header.time_ms)  # the next block's lower bound
        return delta
