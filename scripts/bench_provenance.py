"""Cost of the data-provenance check of a model_update (issue 13.1), on a real SQLite ledger.

Builds a ledger of real readings (the bundled 48 h slice by default, or `--csv` with `--limit`
readings, e.g. the full data), 8 devices owned 2 per authority by 4 authorities, certified blocks
of 2,000 readings; then measures, per update:

* `cold_ms`: re-computing one node's training and held-out sets at a data cut from the replica
  (the SQL range scan of its devices' readings, the held-out rule, two Merkle roots), uncached;
* `check_ms`: the whole mempool check of a model_update (signature, run rules, provenance) once
  that cut is cached, which is what the proposal's re-validation and later updates of the same
  cut pay;
* `refit_ms`: the traceability refit rule (node/ledger/refit.py) on one node's honest update,
  uncached: reading its devices' and every listed device's readings at the cut from the replica
  and fitting the fingerprints again, next to `fit_ms`, the fit alone on rows already in memory
  (what the node's ClientApp pays to train, without loading its rows);
* `loop_gap_worker_ms_max` / `loop_gap_inline_ms_median`: the longest gap between 1 ms ticks of an
  asyncio loop while one such update is checked, warmed first in the node's worker thread
  (node/server/model_checks.py) and then checked on the loop, against checked on the loop alone.

    python scripts/bench_provenance.py --json
    python scripts/bench_provenance.py --csv ../shared/data/smart_building_th.csv.gz --limit 100000 --json
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from federated import fingerprint
from federated.data import MAIN_SLICE, read_csv_rows
from federated.weights import encode_weights
from node.ledger import provenance, refit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.keys import NodeKey
from node.ledger.signer import sign_commit
from node.ledger.state import check_tx
from node.ledger.transactions import (
    _VERIFIED,
    make_model_commit,
    make_model_update,
    make_reading,
    make_register_device,
    make_train_request,
    parse_tx,
    tx_id,
)
from node.server.model_checks import ModelChecks
from node.store.sqlite import SqliteStore

CHAIN = "bench-provenance"
BLOCK_READINGS = 2000
W = [np.zeros((1, 4), dtype=np.float32)]


def key_from(label: str) -> NodeKey:
    return NodeKey.from_seed(hashlib.sha256(label.encode()).digest())


def commit(ledger: Ledger, keys: list[NodeKey], txs: list[dict[str, Any]], time_ms: int) -> None:
    h = ledger.height + 1
    block = ledger.make_next_block(ledger.validators_at(h).proposer(h, 0), 0, time_ms, txs)
    ledger.commit(block, sign_commit(keys, CHAIN, h, 0, block.hash), verify_txs=False, durable=False)


def build(path: Path, csv: Path, limit: int | None) -> tuple[Ledger, list[NodeKey], int]:
    rows = read_csv_rows(csv)
    devices = sorted({r[0] for r in rows})[:8]
    rows = [r for r in rows if r[0] in devices][:limit]
    keys = sorted((key_from(f"bench/authority/{i}") for i in range(4)), key=lambda k: k.public)
    now = max(r[2] for r in rows) + 60_000
    genesis = Genesis(chain_id=CHAIN, genesis_time_ms=min(r[2] for r in rows),
                      authorities=tuple(GenesisMember(k.public, f"a{i}") for i, k in enumerate(keys)))
    ledger = Ledger(SqliteStore(path), genesis)
    dev_keys = {d: key_from(f"bench/device/{d}") for d in devices}
    owner = {d: keys[i % 4] for i, d in enumerate(devices)}
    commit(ledger, keys, [make_register_device(owner[d], CHAIN, dev_keys[d].public, d) for d in devices], now)
    seq = dict.fromkeys(devices, 0)
    batch: list[dict[str, Any]] = []
    for dev, _, ts, t, h in rows:
        seq[dev] += 1
        batch.append(make_reading(dev_keys[dev], CHAIN, seq[dev], ts, t, h))
        if len(batch) == BLOCK_READINGS:
            commit(ledger, keys, batch, now)
            batch = []
    if batch:
        commit(ledger, keys, batch, now)
    return ledger, keys, len(rows)


async def loop_gap_ms(work: Any) -> float:
    """The longest gap between 1 ms ticks of this event loop while `work()` (a coroutine) runs."""
    gaps = [0.0]
    done = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not done.is_set():
            await asyncio.sleep(0.001)
            now = time.perf_counter()
            gaps.append((now - last) * 1000)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.01)
    await work()
    done.set()
    await ticker
    return max(gaps)


def loop_gaps(db: Path, store: Any, raws: list[dict[str, Any]], now_ms: int, params: Any,
              repeat: int) -> tuple[list[float], list[float]]:
    """(worker, inline) samples of the longest event-loop gap while one node's traceability update
    is checked: warmed in the node's worker thread (node/server/model_checks.py) then checked on the
    loop, against checked on the loop alone; caches cleared before each."""
    thread: list[float] = []
    inline: list[float] = []

    def clear() -> None:
        refit._verdicts.clear()
        provenance._cache.clear()

    async def in_worker(raw: dict[str, Any]) -> None:
        checks = ModelChecks(db, CHAIN)
        await checks.warm([raw])
        checks.close()
        assert check_tx(store, raw, now_ms, params) is None

    async def on_loop(raw: dict[str, Any]) -> None:
        assert check_tx(store, raw, now_ms, params) is None

    for raw in raws:
        for _ in range(repeat):
            clear()
            thread.append(asyncio.run(loop_gap_ms(lambda raw=raw: in_worker(raw))))
            clear()
            inline.append(asyncio.run(loop_gap_ms(lambda raw=raw: on_loop(raw))))
    return thread, inline


def traceability_costs(ledger: Ledger, keys: list[NodeKey], repeat: int,
                       db: Path) -> tuple[list[float], list[float], list[float], list[float]]:
    """(refit ms, fit ms, loop gap with the worker ms, loop gap inline ms) samples: a traceability
    run over every device of the ledger, each node's honest update re-fitted by the replica with its
    caches cleared, the same fit on rows in memory, and the event loop's longest stall while the
    update is checked with and without the node's worker thread."""
    store = ledger.store
    names = sorted(d.name for d in store.devices())
    coord = keys[0]
    req = make_train_request(coord, CHAIN, "traceability", 1, params={"classes": ",".join(names)})
    w0 = fingerprint.initial_weights(len(names))
    init = make_model_update(coord, CHAIN, tx_id(req), "traceability", 0, bytes(32), encode_weights(w0), 1,
                             {}, bytes(32))
    commit0 = make_model_commit(coord, CHAIN, tx_id(req), "traceability", 0, "fedavg", [tx_id(init)],
                                init["body"]["weights_hash"], {})
    commit(ledger, keys, [req, init, commit0], ledger.head_time_ms)
    cut = ledger.height
    request = parse_tx(req).body
    refit_ms: list[float] = []
    fit_ms: list[float] = []
    raws: list[dict[str, Any]] = []
    for k in keys:
        ds = provenance.datasets(store, k.public, cut)
        def update(weights: list[np.ndarray], k: NodeKey = k, ds: provenance.DataSets = ds) -> Any:
            tx = make_model_update(k, CHAIN, tx_id(req), "traceability", 1, init["body"]["weights_hash"],
                                   encode_weights(weights), ds.train_examples, {}, ds.train_root,
                                   data_cut=cut)
            return parse_tx(tx).body

        upd = update(refit.refit(store, request, update(w0), w0))
        raws.append(make_model_update(k, CHAIN, tx_id(req), "traceability", 1, init["body"]["weights_hash"],
                                      upd.weights, ds.train_examples, {}, ds.train_root, data_cut=cut))
        for _ in range(repeat):
            refit._verdicts.clear()
            t = time.perf_counter()
            verdict = refit.check_refit(store, request, upd)
            refit_ms.append((time.perf_counter() - t) * 1000)
            assert verdict is None, verdict
        own = refit._training_rows(store, [d for d in store.devices() if d.owner == k.public], cut)
        context = refit._training_rows(store, store.devices(), cut)
        for _ in range(repeat):
            t = time.perf_counter()
            fingerprint.fit(names, own, context, ds.train_examples, base=w0)
            fit_ms.append((time.perf_counter() - t) * 1000)
    thread, inline = loop_gaps(db, store, raws, ledger.head_time_ms + 1000, ledger.params, repeat)
    return refit_ms, fit_ms, thread, inline


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--csv", type=Path, default=MAIN_SLICE)
    ap.add_argument("--limit", type=int, default=None, help="at most this many readings")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        ledger, keys, n = build(Path(tmp) / "node.db", args.csv, args.limit)
        built_s = time.perf_counter() - t0
        store = ledger.store
        coord = keys[0]
        req = make_train_request(coord, CHAIN, "humidity", 1)
        init = make_model_update(coord, CHAIN, tx_id(req), "humidity", 0, bytes(32), encode_weights(W), 1, {},
                                 bytes(32))
        commit0 = make_model_commit(coord, CHAIN, tx_id(req), "humidity", 0, "fedavg", [tx_id(init)],
                                    init["body"]["weights_hash"], {})
        commit(ledger, keys, [req, init, commit0], ledger.head_time_ms)
        cut = ledger.height
        cold, check = [], []
        sizes = {}
        for k in keys:
            for _ in range(args.repeat):
                provenance._cache.clear()
                t = time.perf_counter()
                ds = provenance.datasets(store, k.public, cut)
                cold.append((time.perf_counter() - t) * 1000)
            sizes[k.public.hex()[:8]] = {"train": ds.train_examples, "holdout": ds.holdout_examples}
            upd = make_model_update(k, CHAIN, tx_id(req), "humidity", 1, init["body"]["weights_hash"],
                                    encode_weights(W), ds.train_examples, {}, ds.train_root, data_cut=cut)
            for _ in range(args.repeat):
                t = time.perf_counter()
                reason = check_tx(store, upd, ledger.head_time_ms, ledger.params)
                check.append((time.perf_counter() - t) * 1000)
                _VERIFIED.clear()  # pay the signature check every time, as a fresh replica does
            assert reason is None, reason
        refit_ms, fit_ms, gap_thread, gap_inline = traceability_costs(ledger, keys, args.repeat,
                                                                      Path(tmp) / "node.db")
        out = {
            "csv": str(args.csv), "readings": n, "blocks": ledger.height, "build_s": round(built_s, 1),
            "per_node": sizes,
            "cold_ms_median": round(statistics.median(cold), 2), "cold_ms_max": round(max(cold), 2),
            "check_ms_median": round(statistics.median(check), 3),
            "refit_ms_median": round(statistics.median(refit_ms), 1), "refit_ms_max": round(max(refit_ms), 1),
            "fit_ms_median": round(statistics.median(fit_ms), 1),
            "refit_over_fit": round(statistics.median(refit_ms) / statistics.median(fit_ms), 2),
            "loop_gap_worker_ms_max": round(max(gap_thread), 1),
            "loop_gap_inline_ms_median": round(statistics.median(gap_inline), 1),
        }
        store.close()
    print(json.dumps(out, indent=2) if args.json else
          f"{n} readings: provenance per update {out['cold_ms_median']} ms cold (max {out['cold_ms_max']}), "
          f"whole update check {out['check_ms_median']} ms with the cut cached; traceability refit "
          f"{out['refit_ms_median']} ms (max {out['refit_ms_max']}) against the fit alone "
          f"{out['fit_ms_median']} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
