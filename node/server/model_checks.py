"""The costly checks of model txs, run in a worker thread before the event loop sees the txs.

A `model_update` costs a replica a re-computation of its node's training set at the data cut
(node/ledger/provenance.py: 72 ms on a week of 8 rooms) and, for traceability, a re-fit of the
update from those readings (node/ledger/refit.py: 0.4 s). Run on the event loop, that is time in
which the node answers no vote, no peer and no client. So the runtime hands the model txs of a
client's submission, a peer's gossip or a proposal to this worker first. The worker checks them on
its own read-only snapshot of the replica, which fills the rules' caches (node/ledger/lru.py, safe
across threads). When the loop then checks them in the mempool or inside the proposal, the costly
parts are cache hits.

Only what the caches keep is computed here: the signature and, for a model tx whose run and base
are committed, the provenance and the refit. The verdict itself is always the loop's, on its own
view (the worker may be a block behind, and then it computes nothing that is wrong: every cached
result depends only on readings at or below the data cut, and on committed models). At most
MAX_PER_BATCH model txs of one message are warmed, one batch at a time: a peer cannot queue work
without end.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from node.errors import InvalidTransaction
from node.ledger import provenance, refit, runs
from node.ledger.mempool import MODEL_KINDS
from node.ledger.transactions import ModelEval, ModelUpdate, parse_tx
from node.store.sqlite import SqliteStore

log = logging.getLogger(__name__)

MAX_PER_BATCH = 16  # a round brings one update and one evaluation per member


def model_txs(raws: Iterable[Any]) -> list[dict[str, Any]]:
    """The model txs among raw txs (dicts with a `kind`), at most MAX_PER_BATCH."""
    out = [r for r in raws if isinstance(r, dict) and r.get("kind") in MODEL_KINDS]
    return out[:MAX_PER_BATCH]


class ModelChecks:
    def __init__(self, db_path: str | os.PathLike[str], chain_id: str,
                 counters: Counter[str] | None = None) -> None:
        self.db_path = db_path
        self.chain_id = chain_id
        # `model_checks_warmed` / `model_checks_failed` (the node's events, /status and /metrics),
        # counted on the loop once a batch is done.
        self.counters: Counter[str] = Counter() if counters is None else counters
        self._pool: ThreadPoolExecutor | None = None

    @property
    def warmed(self) -> int:
        return self.counters["model_checks_warmed"]

    @property
    def failed(self) -> int:
        return self.counters["model_checks_failed"]

    async def warm(self, raws: Iterable[Any]) -> None:
        """Check the model txs among `raws` in the worker (returns once done; nothing if none)."""
        todo = model_txs(raws)
        if not todo:
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(1, thread_name_prefix="model-checks")
        warmed, failed = await asyncio.get_running_loop().run_in_executor(self._pool, self.check, todo)
        self.counters["model_checks_warmed"] += warmed
        self.counters["model_checks_failed"] += failed

    def check(self, raws: list[dict[str, Any]]) -> tuple[int, int]:
        """Fill the caches for `raws` from a fresh read-only snapshot (one per batch: a read-only
        store's own caches are never invalidated); (checked, failed)."""
        try:
            store = SqliteStore(self.db_path, read_only=True)
        except Exception:  # the replica is being created or closed: the loop checks as before
            log.debug("model checks: no snapshot", exc_info=True)
            return 0, 1
        try:
            outcomes = [self._one(store, raw) for raw in raws]
        finally:
            store.close()
        return outcomes.count(True), outcomes.count(False)

    def _one(self, store: SqliteStore, raw: dict[str, Any]) -> bool | None:
        """True when checked, False when the check failed, None when not worth checking."""
        try:
            tx = parse_tx(raw)
        except InvalidTransaction:
            return None
        if not tx.signature_valid(self.chain_id):
            return None  # refused on the loop for it; nobody's readings are worth re-fitting for it
        body = tx.body
        try:
            if isinstance(body, ModelEval):
                provenance.check_eval_provenance(store, body)
            elif isinstance(body, ModelUpdate) and body.round > 0:
                req = runs.run_request(store, body.run)
                if (req is not None and req.task == body.task
                        and provenance.check_update_provenance(store, body) is None):
                    refit.check_refit(store, req, body)
            return True
        except Exception:  # never the loop's problem: it checks the tx itself
            log.warning("model checks: could not pre-check %s", tx.id.hex()[:12], exc_info=True)
            return False

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
