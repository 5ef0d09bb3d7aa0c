#!/usr/bin/env python3
"""Catch-up speed: a fresh node syncs a ledger of real readings from running peers (a benchmark).

One run:
  1. builds a ledger of --readings real, signed readings (the Smart Building data, ../shared/data
     by default, else the bundled slice) in blocks of --per-block, certified by the 4 authorities
     of a new local federation, and gives every authority a copy of it;
  2. starts --peers of those authorities as real node processes (they serve blocks; the chain is
     idle, so they do nothing else);
  3. for each mode (certificates, then full), starts a fresh observer node process
     (`fedledger node run DIR --sync MODE`) that knows the peers, waits until it holds the whole
     ledger, and reads its own measurement of the catch-up (first request to last block applied)
     from /status; then re-verifies the synced replica from genesis (`fedledger ledger verify`,
     timed: `verify_s`);
  4. measures, in the same run, Ed25519 verifications per second on one core: the bound of full
     mode, where the syncing node checks every reading's signature.

    python scripts/bench_sync.py --json                 # 100,000 readings (about 2 minutes)
    python scripts/bench_sync.py --readings 20000 --csv node/launch/data/smart_building_8dev_2d.csv.gz

Prints a table (progress on stderr), or with --json one object with readings_per_s_certificates,
readings_per_s_full, blocks_per_s_certificates, blocks_per_s_full and the details.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.errors import ConfigError
from node.launch.federation import create_federation
from node.launch.processes import NodeProcess, wait_until
from node.launch.sensors import BUNDLED_CSV, CsvStats, csv_readings, device_key
from node.ledger.blocks import Block
from node.ledger.chain import Ledger
from node.ledger.codec import sign_prefix
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey, verify_message
from node.ledger.signer import sign_commit
from node.ledger.transactions import make_reading, make_register_device, parse_tx, tx_sign_kind
from node.net.http import get_json
from node.net.ports import free_ports
from node.proc import mib, peak_rss_bytes
from node.server.datadir import DB_FILE, GENESIS_FILE, KEY_FILE, NodeConfig, init_node
from node.store.sqlite import SqliteStore

REPO = Path(__file__).resolve().parent.parent
SHARED_CSV = REPO.parent / "shared" / "data" / "smart_building_th.csv.gz"
TARGET_READINGS_PER_S = 20_000  # issue 5: certificate-only sync
MODES = ("certificates", "full")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=100_000, help="readings in the ledger (default 100000)")
    ap.add_argument("--per-block", type=int, default=2000, help="readings per block (default 2000)")
    ap.add_argument("--devices", type=int, default=16, help="devices taken from the CSV (default 16)")
    ap.add_argument("--peers", type=int, default=4, help="serving nodes, 1 to 4 (default 4)")
    ap.add_argument("--csv", type=Path,
                    help=f"readings CSV (default {SHARED_CSV} if present, else the bundled slice)")
    ap.add_argument("--modes", default=",".join(MODES), help="comma-separated (default certificates,full)")
    ap.add_argument("--dir", type=Path, help="work directory (default: a new temporary one, removed after)")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds a sync may take (default 900)")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    args = ap.parse_args(argv)
    if args.readings < 1:
        ap.error("--readings must be at least 1")
    if not 1 <= args.per_block <= 2000:
        ap.error("--per-block must be between 1 and 2000 (the node's block size)")
    if not 1 <= args.peers <= 4:
        ap.error("--peers must be between 1 and 4")
    if args.devices < 1:
        ap.error("--devices must be at least 1")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        ap.error(f"--modes takes a comma-separated subset of {', '.join(MODES)}")
    args.modes = modes
    if args.csv is None:
        args.csv = SHARED_CSV if SHARED_CSV.exists() else BUNDLED_CSV
    if not args.csv.is_file():
        ap.error(f"--csv {args.csv} does not exist")
    if args.dir is not None and args.dir.exists() and any(args.dir.iterdir()):
        ap.error(f"--dir {args.dir} must be new or empty")
    return args


# --- building the ledger ----------------------------------------------------------------------------


def build_ledger(root: Path, args: argparse.Namespace) -> tuple[Genesis, list[Path], dict[str, Any]]:
    """A local federation whose node1 holds the whole ledger; returns (genesis, node dirs, facts)."""
    # Blocks get times in the past (one second apart, ending now) so the chain can go on live.
    n_blocks = -(-args.readings // args.per_block) + 1
    genesis, made = create_federation(root / "fed", 4, chain_id=f"bench-sync-{int(time.time())}")
    dirs = [n.dir for n in made]
    keys = [NodeKey.load(d / KEY_FILE) for d in dirs]
    start_ms = int(time.time() * 1000) - 1000 * (n_blocks + 10)
    genesis_path = dirs[0] / GENESIS_FILE
    # Re-date genesis: it must be older than the first block.
    g = dataclasses.replace(genesis, genesis_time_ms=start_ms - 1000)
    for d in dirs:
        (d / GENESIS_FILE).unlink()
        g.save(d / GENESIS_FILE)
    genesis = g
    assert Genesis.load(genesis_path).hash == genesis.hash

    stats = CsvStats()
    source = csv_readings(args.csv, stats)
    names: list[str] = []
    rows: list[Any] = []
    t0 = time.perf_counter()
    for r in source:
        if r.device not in names:
            if len(names) >= args.devices:
                continue
            names.append(r.device)
        rows.append(r)
        if len(rows) >= args.readings:
            break
    if len(rows) < args.readings:
        raise ConfigError(f"{args.csv} has only {len(rows)} usable readings of {len(names)} devices; "
                          f"asked for {args.readings} (use the full data in ../shared/data or --devices)")
    owner = {name: i % len(dirs) for i, name in enumerate(names)}
    dev_keys = {name: device_key(dirs[owner[name]], name) for name in names}
    log(f"signing {len(rows)} readings of {len(names)} devices from {args.csv.name} ...")
    seq = dict.fromkeys(names, 0)
    txs: list[dict[str, Any]] = []
    for r in rows:
        seq[r.device] += 1
        # The data's timestamps are from 2013: every reading is in the past of every block.
        txs.append(make_reading(dev_keys[r.device], genesis.chain_id, seq[r.device], r.timestamp_ms,
                                r.temperature_c, r.humidity_pct))
    signed_s = time.perf_counter() - t0
    store = SqliteStore(dirs[0] / DB_FILE)
    ledger = Ledger(store, genesis)
    regs = [make_register_device(keys[owner[n]], genesis.chain_id, dev_keys[n].public, n) for n in names]
    batches = [regs] + [txs[i:i + args.per_block] for i in range(0, len(txs), args.per_block)]
    log(f"certifying {len(batches)} blocks ...")
    t1 = time.perf_counter()
    for i, batch in enumerate(batches):
        h = ledger.height + 1
        proposer = ledger.validators_at(h).proposer(h, 0)
        block: Block = ledger.make_next_block(proposer, 0, start_ms + 1000 * i, batch)
        commit = sign_commit(keys, genesis.chain_id, h, 0, block.hash)
        # Signed here moments ago: the benchmark's own builder need not re-verify each reading.
        ledger.commit(block, commit, verify_txs=False, durable=False)
    store.close()
    built_s = time.perf_counter() - t1
    for d in dirs[1:]:
        shutil.copy(dirs[0] / DB_FILE, d / DB_FILE)
    size_mb = (dirs[0] / DB_FILE).stat().st_size / 1e6
    facts = {"readings": len(rows), "devices": len(names), "blocks": len(batches), "db_mb": round(size_mb, 1),
             "csv": str(args.csv), "csv_bad_rows": sum(stats.bad_rows.values()), "sign_s": round(signed_s, 2),
             "certify_s": round(built_s, 2)}
    log(f"ledger: {len(batches)} blocks, {len(rows)} readings, {size_mb:.1f} MB")
    return genesis, dirs, facts


def checkpoint(db: Path) -> None:
    """Fold the WAL into the database file so copies of it are complete."""
    con = sqlite3.connect(db)
    try:
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        con.close()


# --- syncing ------------------------------------------------------------------------------------------


def sync_once(root: Path, genesis: Genesis, peers: list[NodeProcess], mode: str, height: int,
              timeout: float) -> dict[str, Any]:
    d = root / f"fresh-{mode}"
    port = free_ports(1)[0]
    init_node(d, name=f"fresh-{mode}", port=port)
    genesis.save(d / GENESIS_FILE)
    cfg = NodeConfig.load(d)
    cfg.bootstrap = [p.url for p in peers]
    cfg.save(d)
    proc = NodeProcess(d)
    t0 = time.monotonic()
    proc.start(extra_args=["--sync", mode, "--log-level", "warning"])
    try:
        last = [0.0]

        def done() -> bool:
            st = proc.status()
            if st is None:
                if not proc.alive:
                    raise RuntimeError(f"the syncing node exited:\n{proc.log_tail()}")
                return False
            if time.monotonic() - last[0] > 2:
                s = st.get("sync", {})
                log(f"  {mode}: height {st['height']}/{height}, {s.get('readings_per_s')} readings/s")
                last[0] = time.monotonic()
            return bool(st["height"] >= height)

        if not wait_until(done, timeout, interval=0.1):
            raise RuntimeError(f"{mode} sync did not reach height {height} in {timeout:.0f} s:\n"
                               f"{proc.log_tail()}")
        wall = time.monotonic() - t0
        st = get_json(proc.url, "/status")
        sync = st["sync"]
        peak_rss = _peak_rss_mb(proc)
    finally:
        proc.stop()
    # `fedledger ledger verify` as a user runs it, in its own process: this one has checked the
    # same signatures before and would answer from its caches.
    t1 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "node", "ledger", "verify", str(d), "--json"],
                         capture_output=True, text=True, timeout=timeout)
    verify_s = time.perf_counter() - t1
    failed = {"ok": False, "error": out.stderr[-500:]}
    report = json.loads(out.stdout) if out.stdout.startswith("{") else failed
    if out.returncode != 0 or not report.get("ok"):
        raise RuntimeError(f"the replica synced in {mode} mode does not verify: {report.get('error')}")
    store = SqliteStore(d / DB_FILE)
    try:
        head = store.head_hash()
    finally:
        store.close()
    return {
        "mode": mode,
        "readings_per_s": sync["readings_per_s"],
        "blocks_per_s": sync["blocks_per_s"],
        "sync_s": sync["elapsed_s"],
        "busy_s": sync["busy_s"],
        "wall_s": round(wall, 2),  # process start to caught up (includes start-up and connecting)
        "blocks": sync["blocks"],
        "readings": sync["readings"],
        "failures": sync["failures"],
        "timeouts": sync["timeouts"],
        "peak_rss_mb": peak_rss,
        "verified": bool(report["ok"]),
        "verify_s": round(verify_s, 2),
        "head_hash": head.hex() if head else None,
    }


def _peak_rss_mb(proc: NodeProcess) -> float | None:
    return mib(peak_rss_bytes(proc.proc.pid)) if proc.proc is not None else None


def verify_rate(seconds: float = 2.0) -> float:
    """Ed25519 verifications per second on one core, on the node's own path for a tx signature."""
    key = NodeKey.generate()
    txs = [parse_tx(make_reading(key, "bench", i, 1_700_000_000_000 + i, 21.5, 48.25)) for i in range(2000)]
    prefix = sign_prefix(tx_sign_kind("reading"), "bench")
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for tx in txs:
            assert verify_message(tx.signer, tx.sig, prefix + tx.signed_encoded)
        n += len(txs)
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    root = args.dir or Path(tempfile.mkdtemp(prefix="fedledger-bench-sync-"))
    root.mkdir(parents=True, exist_ok=True)
    procs: list[NodeProcess] = []
    try:
        genesis, dirs, facts = build_ledger(root, args)
        height = facts["blocks"]
        for d in dirs:
            checkpoint(d / DB_FILE)
        procs = [NodeProcess(d) for d in dirs[: args.peers]]
        for p in procs:
            p.start(extra_args=["--log-level", "warning"])
        if not wait_until(lambda: all((s := p.status()) and s["height"] == height for p in procs), 60):
            raise RuntimeError("the serving nodes did not start:\n" + "\n".join(p.log_tail() for p in procs))
        # Leave the peers a moment to connect to each other, then measure.
        wait_until(lambda: all((s := p.status()) and s["peers"] >= len(procs) - 1 for p in procs), 30)
        results = {}
        for mode in args.modes:
            log(f"syncing a fresh node ({mode}) from {len(procs)} peers ...")
            results[mode] = sync_once(root, genesis, procs, mode, height, args.timeout)
            log(f"  {mode}: {results[mode]['readings_per_s']:.0f} readings/s, "
                f"{results[mode]['blocks_per_s']:.1f} blocks/s")
        heads = {r["head_hash"] for r in results.values()}
        if len(heads) != 1:
            raise RuntimeError(f"the synced replicas disagree: {heads}")
        vps = verify_rate()
    except (ConfigError, RuntimeError) as exc:
        print(f"bench_sync: error: {exc}", file=sys.stderr)
        return 1
    finally:
        for p in procs:
            p.stop()
        if args.dir is None:
            shutil.rmtree(root, ignore_errors=True)
    out: dict[str, Any] = {
        "ledger": facts, "peers": len(procs), "modes": results, "verify_per_s_per_core": round(vps, 1),
        "target_readings_per_s": TARGET_READINGS_PER_S,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
    }
    for mode, r in results.items():
        out[f"readings_per_s_{mode}"] = r["readings_per_s"]
        out[f"blocks_per_s_{mode}"] = r["blocks_per_s"]
    if "certificates" in results and "full" in results and results["full"]["readings_per_s"]:
        out["certificates_vs_full"] = round(results["certificates"]["readings_per_s"]
                                            / results["full"]["readings_per_s"], 2)
    if "full" in results:
        out["full_vs_verify_bound"] = round(results["full"]["readings_per_s"] / vps, 2)
    if args.json:
        print(json.dumps(out, indent=2, sort_keys=True))
    else:
        print(f"ledger: {facts['readings']} readings in {facts['blocks']} blocks ({facts['db_mb']} MB), "
              f"{len(procs)} serving peers")
        print(f"{'mode':<14}{'readings/s':>12}{'blocks/s':>10}{'sync s':>8}{'wall s':>8}{'RSS MB':>8}")
        for mode, r in results.items():
            print(f"{mode:<14}{r['readings_per_s']:>12.0f}{r['blocks_per_s']:>10.1f}{r['sync_s']:>8.2f}"
                  f"{r['wall_s']:>8.2f}{r['peak_rss_mb'] or 0:>8.0f}")
        print(f"Ed25519 verifications/s on one core: {vps:.0f}; target {TARGET_READINGS_PER_S} readings/s "
              "(certificates)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
