#!/usr/bin/env python3
"""Ledger throughput and finality latency of a local federation (a benchmark, not a test).

Starts N authority node processes on localhost; this process is the load generator. It registers
devices, pre-signs readings (signing is not what is measured), then:
  1. max load: submits as fast as the nodes accept (backing off while mempools are over a bound)
     and measures finalized readings/s on the ledger, and each node's CPU and peak RSS;
  2. half load: submits at half the measured rate and measures finality latency (p50/p99, from
     submission to commit at the receiving node).
In the same run it measures Ed25519 verifications per second on one core, with the node's own
verify path, and reports throughput against the verification bound
(verifications/s/core x cores / authorities): every authority verifies every reading.

    python scripts/bench_ledger.py --json
    python scripts/bench_ledger.py --json --unsealed   # baseline: peer frames not sealed

`--unsealed` measures what the sealed peer sessions (ChaCha20-Poly1305 on every frame) cost: the
nodes run as `bench_ledger.py --unsealed-node DIR`, the normal node in a process where a session's
seal and open pass frames through unchanged (the handshake still runs). Benchmark-only: nothing
in node/ can turn sealing off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.launch.federation import create_federation
from node.launch.feeder import Feeder, Target
from node.launch.processes import NodeProcess, wait_until
from node.ledger.keys import NodeKey, verify
from node.ledger.transactions import make_reading, signed_part, tx_sign_kind
from node.net.client import LedgerClient, batch_frames
from node.net.http import get_json
from node.proc import cpu_seconds as proc_cpu_seconds
from node.proc import mib, peak_rss_bytes
from node.server.api import MAX_FINALITY_SAMPLES

MEMPOOL_BOUND = 8000


def verify_rate(seconds: float = 2.0) -> float:
    """Verifications per second on one core, through node.keys.verify (what a node runs per tx)."""
    key = NodeKey.generate()
    txs = [make_reading(key, "bench", i, 1_700_000_000_000 + i, 21.5, 48.25) for i in range(2000)]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for tx in txs:
            ok = verify(tx["signer"], tx["sig"], tx_sign_kind(tx["kind"]), "bench", signed_part(tx))
            assert ok
        n += len(txs)
    return n / (time.perf_counter() - start)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a node (it runs for the whole benchmark)."""
    seconds = proc_cpu_seconds(pid)
    if seconds is None:
        raise RuntimeError(f"node process {pid} is gone")
    return seconds


def peak_rss_mb(pid: int) -> float | None:
    return mib(peak_rss_bytes(pid))


def readings_on(proc: NodeProcess) -> int:
    return get_json(proc.url, "/status")["readings"]


async def submit(clients: list[LedgerClient], batches: list[list[tuple[bytes, int]]], rate: float,
                 seconds: float, procs: list[NodeProcess]) -> tuple[int, int]:
    """Send round-robin batches to every node, at `rate` readings/s (0 = max) for `seconds`;
    returns (readings sent, batches used per node)."""
    sent, start, i = 0, time.monotonic(), 0
    last_check = 0.0
    while time.monotonic() - start < seconds and i < len(batches[0]):
        if rate == 0 and time.monotonic() - last_check > 0.25:
            last_check = time.monotonic()
            mem = await asyncio.to_thread(lambda: max(get_json(p.url, "/status")["mempool"] for p in procs))
            if mem > MEMPOOL_BOUND:
                await asyncio.sleep(0.05)
                continue
        results = await asyncio.gather(*(c.submit_frames([b[i]], window=1)
                                          for c, b in zip(clients, batches, strict=True)))
        bad = sum(1 for res in results for r in res if not r.accepted)
        if bad:
            reasons = [r.reason for res in results for r in res if not r.accepted]
            raise SystemExit(f"{bad} readings refused at submission: {reasons[:5]}")
        sent += sum(b[i][1] for b in batches)
        i += 1
        if rate > 0:
            ahead = sent / rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)
    return sent, i


def unsealed_node(data_dir: Path) -> int:
    """The benchmark's baseline node: the real node, with every peer frame sent as it is."""
    import signal

    from node.cli.node_run import setup_logging
    from node.net.session import Session
    from node.server.runtime import Node

    def plain(self: Session, data: bytes) -> bytes:
        return bytes(data)

    Session.seal = plain  # type: ignore[method-assign]
    Session.open = plain  # type: ignore[method-assign]
    node = Node(data_dir)
    setup_logging(data_dir, "info", console=False)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        await node.run()

    asyncio.run(run())
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--devices", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=20.0, help="length of the max-load phase")
    ap.add_argument("--half-seconds", type=float, default=10.0, help="length of the half-load phase")
    ap.add_argument("--readings", type=int, default=120_000, help="readings to pre-sign")
    ap.add_argument("--dir", type=Path, help="federation directory (default: a temporary one)")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--unsealed", action="store_true", help="baseline: nodes that do not seal peer frames")
    ap.add_argument("--unsealed-node", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.unsealed_node:
        return unsealed_node(args.unsealed_node)
    log = (lambda *a: print(*a, file=sys.stderr)) if args.json else print

    cores = os.cpu_count() or 1
    log("measuring Ed25519 verification rate on one core...")
    vps = verify_rate()
    bound = vps * cores / args.nodes
    root = args.dir or Path(tempfile.mkdtemp(prefix="fedledger-bench-")) / "fed"
    genesis, made = create_federation(root, args.nodes)
    procs = [NodeProcess(n.dir) for n in made]
    for p in procs:
        p.start(argv=[sys.executable, __file__, "--unsealed-node", str(p.dir)] if args.unsealed else None)
    try:
        ok = wait_until(lambda: all((s := p.status()) and s["peers"] >= args.nodes - 1 for p in procs), 60)
        if not ok:
            raise SystemExit("nodes did not come up:\n" + "\n".join(p.log_tail() for p in procs))
        names = [f"bench-{i:03d}" for i in range(args.devices)]
        feeder = Feeder([Target(p.dir, p.url) for p in procs], genesis.chain_id, names)
        asyncio.run(feeder.register_devices())
        wait_until(lambda: len(get_json(procs[0].url, "/devices")["devices"]) >= len(names), 60)

        log(f"pre-signing {args.readings} readings...")
        per_node: list[list[dict[str, Any]]] = [[] for _ in procs]
        t0 = int(time.time() * 1000) - 3_600_000
        for k in range(args.readings):
            name = names[k % len(names)]
            feeder.seq[name] += 1
            temp, hum = 20 + (k % 50) / 10, 40 + (k % 300) / 10
            tx = make_reading(feeder.keys[name], genesis.chain_id, feeder.seq[name], t0 + k, temp, hum)
            per_node[feeder.owner[name]].append(tx)
        # Frames are encoded before the clock starts: the load generator shares the 2 cores. The
        # max-load phase gets big frames; the half-load phase small ones sent steadily, so the
        # latency measured is the ledger's, not that of the generator's bursts.
        split = [len(txs) * 3 // 4 for txs in per_node]
        batches = [list(batch_frames(txs[:k], 500)) for txs, k in zip(per_node, split, strict=True)]
        half_batches = [list(batch_frames(txs[k:], 25)) for txs, k in zip(per_node, split, strict=True)]

        async def run_phases() -> dict[str, Any]:
            clients = [LedgerClient(p.url) for p in procs]
            for c in clients:
                await c.__aenter__()
            try:
                # warm-up then max load
                first = [b[:2] for b in batches]
                rest = [b[2:] for b in batches]
                await submit(clients, first, 0, 5, procs)
                await asyncio.sleep(2)
                r0, c0, w0 = readings_on(procs[0]), [cpu_seconds(p.proc.pid) for p in procs], time.monotonic()
                log(f"max load for {args.seconds:g} s...")
                sent, _ = await submit(clients, rest, 0, args.seconds, procs)
                r1, c1, w1 = readings_on(procs[0]), [cpu_seconds(p.proc.pid) for p in procs], time.monotonic()
                finalized = (r1 - r0) / (w1 - w0)
                cpu = [(b - a) / (w1 - w0) for a, b in zip(c0, c1, strict=True)]
                # drain, then half load
                wait_until(lambda: all(get_json(p.url, "/status")["mempool"] == 0 for p in procs), 60, 0.3)
                half = half_batches
                counts0 = [get_json(p.url, "/finality?last=1")["count"] for p in procs]
                log(f"half load ({finalized / 2:.0f}/s) for {args.half_seconds:g} s...")
                await submit(clients, half, finalized / 2, args.half_seconds, procs)
                wait_until(lambda: all(get_json(p.url, "/status")["mempool"] == 0 for p in procs), 60, 0.3)
                lat: list[float] = []
                for p, c0_ in zip(procs, counts0, strict=True):
                    d = get_json(p.url, f"/finality?last={MAX_FINALITY_SAMPLES}")
                    new = d["count"] - c0_
                    lat += d["ms"][-new:] if new > 0 else []
                return {"finalized": finalized, "sent": sent, "cpu": cpu, "lat": lat}
            finally:
                for c in clients:
                    await c.__aexit__()

        res = asyncio.run(run_phases())
        lat = sorted(res["lat"])
        q = statistics.quantiles(lat, n=100, method="inclusive") if len(lat) > 1 else [float("nan")] * 99
        heights = [get_json(p.url, "/status")["height"] for p in procs]
        out = {
            "nodes": args.nodes,
            "cores": cores,
            "finalized_per_s": round(res["finalized"], 1),
            "latency_p50_ms": round(q[49], 1),
            "latency_p99_ms": round(q[98], 1),
            "latency_samples": len(lat),
            "half_load_per_s": round(res["finalized"] / 2, 1),
            "verify_per_s_per_core": round(vps, 1),
            "verification_bound_per_s": round(bound, 1),
            "bound_ratio": round(res["finalized"] / bound, 3),
            "node_cpu_cores": [round(c, 2) for c in res["cpu"]],
            "node_peak_rss_mb": [peak_rss_mb(p.proc.pid) for p in procs],
            "heights": heights,
            "sealed": not args.unsealed,
        }
    finally:
        for p in procs:
            p.stop()
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
