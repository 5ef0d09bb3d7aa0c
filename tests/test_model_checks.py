"""Model txs are checked off the event loop first (node/server/model_checks.py): the worker's
re-fit on its own read-only snapshot fills the caches, so the loop's own check of the same update
re-fits nothing, and its verdict is the same."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated.weights import Weights, canonical_array, encode_weights, weights_hash
from node.errors import Reason
from node.ledger import provenance, refit
from node.ledger.provenance import datasets
from node.ledger.state import check_tx
from node.ledger.transactions import make_model_update, make_reading
from node.server.model_checks import MAX_PER_BATCH, ModelChecks, model_txs
from node.store.sqlite import SqliteStore
from tests.factories import CHAIN_ID, device_key
from tests.test_refit import Run


@pytest.fixture
def run(tmp_path: Path) -> Run:
    return Run(SqliteStore(tmp_path / "node.db"))


def update(run: Run, node: int, weights: Weights) -> dict[str, Any]:
    key = run.keys[node]
    ds = datasets(run.ledger.store, key.public, run.cut)
    return make_model_update(key, CHAIN_ID, run.run, "traceability", 1, weights_hash(run.w0),
                             encode_weights(weights), ds.train_examples, {}, ds.train_root, data_cut=run.cut)


def refits_by_thread(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    # The rules' caches are per process: an earlier test's run (the same deterministic ledger) may
    # have left these very verdicts in them.
    refit._verdicts.clear()
    provenance._cache.clear()
    counts: dict[str, int] = {}
    real = refit.refit

    def counted(*args: Any) -> Any:
        name = threading.current_thread().name
        counts[name] = counts.get(name, 0) + 1
        return real(*args)

    monkeypatch.setattr(refit, "refit", counted)
    return counts


def test_the_worker_re_fits_and_the_loop_only_reads_its_verdict(run: Run, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    counts = refits_by_thread(monkeypatch)
    honest = update(run, 1, run.honest(1))
    moved = [np.array(a) for a in run.honest(2)]
    moved[0] *= 2.0
    bad = update(run, 2, [canonical_array(a) for a in moved])
    checks = ModelChecks(tmp_path / "node.db", CHAIN_ID)
    asyncio.run(checks.warm([honest, bad]))
    checks.close()
    assert checks.warmed == 2 and checks.failed == 0
    assert sum(n for name, n in counts.items() if name.startswith("model-checks")) == 2
    now = run.ledger.head_time_ms + 1000
    assert check_tx(run.ledger.store, honest, now, run.ledger.params) is None
    assert check_tx(run.ledger.store, bad, now, run.ledger.params) is Reason.REFIT_MISMATCH
    assert counts.get(threading.main_thread().name, 0) == 0  # the loop re-fitted nothing


def test_only_model_txs_with_a_valid_signature_cost_the_worker(run: Run, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    counts = refits_by_thread(monkeypatch)
    forged = update(run, 1, run.honest(1))
    forged["sig"] = bytes(64)
    reading = make_reading(device_key(0), CHAIN_ID, 1, run.ledger.head_time_ms, 21.0, 40.0)
    checks = ModelChecks(tmp_path / "node.db", CHAIN_ID)
    asyncio.run(checks.warm([forged, reading, "junk", {"kind": "model_update"}]))
    checks.close()
    assert counts == {} and checks.warmed == 0
    assert model_txs([{"kind": "model_eval"}] * 40) == [{"kind": "model_eval"}] * MAX_PER_BATCH


def test_a_missing_replica_is_no_error(tmp_path: Path) -> None:
    checks = ModelChecks(tmp_path / "absent" / "node.db", CHAIN_ID)
    asyncio.run(checks.warm([{"kind": "model_update"}]))
    checks.close()
    assert checks.failed == 1
