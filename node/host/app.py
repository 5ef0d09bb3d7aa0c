"""The ledger as the consensus core's Application (consensus/app.py): what this node proposes,
which proposals it accepts, and whether the chain should grow."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from consensus.validators import ValidatorSet
from node.errors import InvalidBlock
from node.host.hostio import Clock
from node.ledger.blocks import Block
from node.ledger.chain import Ledger
from node.ledger.mempool import Mempool


class LedgerApp:
    def __init__(
        self,
        ledger: Ledger,
        mempool: Mempool,
        proposer: bytes,
        clock: Clock,
        *,
        max_block_txs: int,
        counters: Counter[str],
        log: logging.Logger,
    ) -> None:
        self.ledger = ledger
        self.mempool = mempool
        self.proposer = proposer
        self.clock = clock
        self.max_block_txs = max_block_txs
        self.counters = counters
        self.log = log

    def validators(self, height: int) -> ValidatorSet:
        return self.ledger.validators_at(height)

    def proposal_time_ms(self) -> int:
        # Block times never go backwards, even when this node's clock is behind the last proposer's.
        return max(self.clock.now_ms(), self.ledger.head_time_ms)

    def build(self, height: int, round: int, time_ms: int) -> Block:
        """The next block at `time_ms`, filled from the mempool in arrival order."""
        txs = self.mempool.reap(self.ledger.store, time_ms, height, self.max_block_txs)
        return self.ledger.make_next_block(self.proposer, round, time_ms, txs)

    def propose(self, height: int, round: int) -> Block:
        return self.build(height, round, self.proposal_time_ms())

    def valid(self, height: int, value: Any) -> bool:
        if not isinstance(value, Block):
            return False
        try:
            self.ledger.validate_block(value)
        except InvalidBlock as exc:
            self.counters[f"invalid_proposal:{exc.reason.value}"] += 1
            self.log.warning("invalid proposal at height %s: %s", height, exc)
            return False
        return True

    def timely(self, height: int, round: int, value: Any) -> bool:
        if self.ledger.timely(value, self.clock.now_ms()):
            return True
        self.counters["untimely_proposal"] += 1
        self.log.info("proposal at height %s round %s is timed beyond the clock skew", height, round)
        return False

    def value_id(self, value: Any) -> bytes:
        return value.hash

    def has_pending(self) -> bool:
        # A decided membership change needs its two blocks even on an idle federation.
        return len(self.mempool) > 0 or bool(self.ledger.store.membership().scheduled)
