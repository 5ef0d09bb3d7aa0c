#!/usr/bin/env python3
"""Fuzz the parsers that face the network, at volume (issue 11): frames, transactions, blocks and
certificates, the handshake, and the node API (HTTP GET and /client) on a small real ledger.

    python scripts/fuzz.py --target all --inputs 1000000 --json     # spread over the targets
    python scripts/fuzz.py --target frame --inputs 50000 --seed 7

Targets and their contract live in scripts/fuzz_targets.py: for every input only the target's
documented error classes may escape, and one input may not take more than MAX_PEAK_BYTES of
transient memory (tracemalloc peak, measured on a sample of the inputs), nor the whole run grow
the process by more than --max-rss-growth-mb. Anything else is a finding: it is printed, its input
saved under --corpus/<target>/, and the run goes on.

Engine: atheris (libFuzzer, coverage-guided; `pip install atheris`) when it imports, each target
in its own process, with a structure-aware mutator (tree mutations of the msgpack inside, nested
encodings included) mixed with libFuzzer's own byte mutations. Without atheris, the same mutator
runs seeded and without coverage feedback. Either way the run ends by keeping a few dozen small
inputs per target (libFuzzer's corpus merged to a minimal covering set, then the smallest first)
under --corpus (default tests/fuzz_corpus), which tests/test_fuzz_corpus.py replays.

Progress goes to stderr; the summary (inputs, findings and time per target, inputs/s) to stdout,
as a table or with --json as one object.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ALL_TARGETS = ("frame", "tx", "block", "commit", "handshake", "http", "client")
# How many inputs each target gets of --inputs with --target all: the frame decoder fronts every
# peer message and the block/tx parsers sit behind it, so they get more than the API endpoints.
WEIGHTS = {"frame": 3, "tx": 2, "block": 2, "commit": 1, "handshake": 1, "http": 1, "client": 1}
MEMORY_SAMPLE = 97  # one input in this many runs under tracemalloc (it slows allocation ~3x)
KEEP_PER_TARGET = 40
KEEP_MAX_BYTES = 8 * 1024
MAX_MUTANT = 256 * 1024  # a tree mutant's encoding, before it is cut to the fuzzer's max length


# -- the mutator ----------------------------------------------------------------------------------

_INTS = (0, 1, -1, 2, 127, 128, 255, 256, 65535, 65536, 2**31 - 1, 2**31, 2**32, 2**53, 2**63 - 1, 2**63,
         2**64 - 1, -(2**31), -(2**63))
_STRS = ("", "a", "x" * 300, "ws://", "wss://a", "\x00", "é" * 70, "/../", "%00", "1e9", "-1", "NaN",
         "status", "block", "tx", "hello", "proof", "submit_tx", "submit_txs", "vote", "proposal")
_HUGE_HEADERS = (b"\xdb\xff\xff\xff\xff", b"\xc6\xff\xff\xff\xff", b"\xdd\xff\xff\xff\xff",
                 b"\xdf\xff\xff\xff\xff", b"\xc9\xff\xff\xff\xff\x01", b"\xda\xff\xff", b"\xde\xff\xff",
                 b"\xcf\xff\xff\xff\xff\xff\xff\xff\xff", b"\xd3\x80\x00\x00\x00\x00\x00\x00\x00",
                 b"\xca\x7f\xc0\x00\x00", b"\xcb\x7f\xf0\x00\x00\x00\x00\x00\x00", b"\xc1", b"\xd4\x01\x00")


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, max_bin_len=1 << 22, max_str_len=1 << 22,
                           max_array_len=1 << 17, max_map_len=1 << 17)


def _pack(obj: Any, rng: random.Random) -> bytes:
    if rng.random() < 0.3:
        obj = _shuffle_maps(obj, rng)  # non-canonical key order
    return msgpack.packb(obj, use_bin_type=True, use_single_float=rng.random() < 0.05)


def _shuffle_maps(obj: Any, rng: random.Random, depth: int = 0) -> Any:
    if depth > 40:
        return obj
    if isinstance(obj, dict):
        items = list(obj.items())
        rng.shuffle(items)
        return {k: _shuffle_maps(v, rng, depth + 1) for k, v in items}
    if isinstance(obj, list):
        return [_shuffle_maps(v, rng, depth + 1) for v in obj]
    return obj


def _nodes(obj: Any, path: tuple[Any, ...] = (), depth: int = 0) -> list[tuple[Any, ...]]:
    out = [path]
    if depth > 12:
        return out
    if isinstance(obj, dict):
        for k, v in list(obj.items())[:64]:
            out += _nodes(v, (*path, k), depth + 1)
    elif isinstance(obj, list):
        for i, v in enumerate(obj[:64]):
            out += _nodes(v, (*path, i), depth + 1)
    return out


def _get(obj: Any, path: tuple[Any, ...]) -> Any:
    for p in path:
        obj = obj[p]
    return obj


def _set(obj: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    parent = _get(obj, path[:-1])
    parent[path[-1]] = value
    return obj


def _scalar(rng: random.Random) -> Any:
    return rng.choice((None, True, False, rng.choice(_INTS), rng.choice(_STRS), b"", b"\x00" * 32,
                       rng.randbytes(64), 1.5, -0.0, math.inf, math.nan, [], {}, [None], {"": 0}))


def _mutate_value(v: Any, rng: random.Random, pool: list[bytes], depth: int = 0) -> Any:
    r = rng.random()
    if isinstance(v, bool) or v is None:
        return _scalar(rng)
    if isinstance(v, int):
        return rng.choice(_INTS) if r < 0.6 else (v + rng.choice((-1, 1)) if r < 0.8 else _scalar(rng))
    if isinstance(v, float):
        whole = int(v) if math.isfinite(v) else 0
        return rng.choice((math.nan, math.inf, -math.inf, 0.0, 1e308, float(whole), whole))
    if isinstance(v, bytes):
        if depth < 3 and r < 0.4 and v:
            try:  # a nested encoding (proposal.block, blocks[].txs): mutate inside it
                return _mutate_tree(v, rng, pool, depth + 1)
            except Exception:
                pass
        if r < 0.6 and v:
            b = bytearray(v)
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b)
        return rng.choice((b"", v[: rng.randrange(len(v) + 1)], v + b"\x00", v * 2, rng.randbytes(32),
                           rng.randbytes(64), rng.choice(pool)))
    if isinstance(v, str):
        return rng.choice(_STRS) if r < 0.7 else (v * rng.randint(2, 50) if v else _scalar(rng))
    if isinstance(v, dict):
        keys = list(v)
        if r < 0.3 and keys:
            del v[rng.choice(keys)]
        elif r < 0.55:
            v[rng.choice((rng.choice(_STRS), 0, 1, True, None, b"k", 1.0, "p", "t", "v"))] = _scalar(rng)
        elif r < 0.7 and keys:
            k = rng.choice(keys)
            v[rng.choice((k.upper() if isinstance(k, str) else 1, b"x", 7))] = v.pop(k)
        else:
            return _scalar(rng)
        return v
    if isinstance(v, list):
        if r < 0.25 and v:
            del v[rng.randrange(len(v))]
        elif r < 0.5 and v:
            # Copies of one element, as many as fit in the input size: the copies alias one object,
            # so the tree mutation stops after this (growing the aliased element again would
            # multiply the encoding, and the mutator itself would run out of memory).
            elem = v[rng.randrange(len(v))]
            room = MAX_MUTANT // max(1, len(msgpack.packb(elem, use_bin_type=True)))
            v.extend([elem] * min(rng.choice((1, 2, 65, 2001)), room))
            raise _Grown(v)
        elif r < 0.65:
            v.append(_scalar(rng))
        elif r < 0.75:
            return [v]
        else:
            return _scalar(rng)
        return v
    return _scalar(rng)


class _Grown(Exception):  # control flow, not an error
    """A list was extended by aliased copies: stop mutating this tree."""

    def __init__(self, value: Any) -> None:
        self.value = value


def _mutate_tree(data: bytes, rng: random.Random, pool: list[bytes], depth: int = 0) -> bytes:
    obj = _unpack(data)
    for _ in range(rng.choice((1, 1, 1, 2, 3))):
        nodes = _nodes(obj)
        path = rng.choice(nodes)
        if rng.random() < 0.05:
            nest = rng.choice((10, 63, 64, 65, 200))
            value: Any = _get(obj, path)
            for _ in range(nest):
                value = [value]
        elif rng.random() < 0.1 and pool:
            try:  # splice: a subtree of another input
                other = _unpack(rng.choice(pool))
                value = _get(other, rng.choice(_nodes(other)))
            except Exception:
                value = _scalar(rng)
        else:
            try:
                value = _mutate_value(_get(obj, path), rng, pool, depth)
            except _Grown as grown:
                obj = _set(obj, path, grown.value)
                break
        obj = _set(obj, path, value)
    out = _pack(obj, rng)
    if len(out) > MAX_MUTANT:
        raise ValueError("mutant too large")  # the caller mutates the bytes instead
    return out


def _mutate_bytes(data: bytes, rng: random.Random, pool: list[bytes]) -> bytes:
    b = bytearray(data)
    for _ in range(rng.choice((1, 1, 2, 4, 8))):
        r = rng.random()
        pos = rng.randrange(len(b) + 1)
        if r < 0.3 and b:
            b[min(pos, len(b) - 1)] ^= 1 << rng.randrange(8)
        elif r < 0.45 and b:
            b[min(pos, len(b) - 1)] = rng.choice((0x00, 0xff, 0x7f, 0x80, 0xc0, 0xc1, 0xc4, 0xd9, 0xdc, 0xde))
        elif r < 0.55:
            del b[pos:]  # truncation
        elif r < 0.65:
            b[pos:pos] = rng.choice(_HUGE_HEADERS)
        elif r < 0.75 and pool:
            other = rng.choice(pool)
            start = rng.randrange(len(other) + 1)
            b[pos:] = other[start:]  # splice
        elif r < 0.85 and b:
            end = min(len(b), pos + rng.randint(1, 64))
            b[pos:pos] = b[pos:end] * rng.randint(1, 8)
        else:
            del b[pos:pos + rng.randint(1, 16)]
    return bytes(b)


def mutate(data: bytes, rng: random.Random, pool: list[bytes], max_size: int) -> bytes:
    out = data
    if rng.random() < 0.6:
        try:
            out = _mutate_tree(data, rng, pool)
        except Exception:  # not msgpack (any more): mutate the bytes
            out = _mutate_bytes(data, rng, pool)
    else:
        out = _mutate_bytes(data, rng, pool)
    return out[:max_size]


# -- one target in this process -------------------------------------------------------------------


class Worker:
    """Runs inputs through one target, keeps its counters and findings, saves finding inputs."""

    def __init__(self, target: str, out_dir: Path, stats_path: Path, max_rss_growth_mb: int) -> None:
        import fuzz_targets as ft
        import psutil

        self.ft = ft
        self.target = target
        self.out_dir = out_dir
        self.stats_path = stats_path
        self.inputs = 0
        self.findings: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.max_peak = 0
        self.proc = psutil.Process()
        self.rss_max_growth = 0
        self.max_rss_growth = max_rss_growth_mb * 1024 * 1024
        self.t0 = self.last_report = time.monotonic()
        ft.env()  # build the ledger before measuring memory
        self.rss0 = self.proc.memory_info().rss
        for s in ft.seeds(target):
            self.one(s)

    def one(self, data: bytes) -> None:
        self.inputs += 1
        sampled = self.inputs % MEMORY_SAMPLE == 0
        if sampled:
            tracemalloc.start()
        finding = self.ft.check(self.target, data)
        if sampled:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            self.max_peak = max(self.max_peak, peak)
            if finding is None and peak > self.ft.MAX_PEAK_BYTES:
                detail = f"peak {peak} bytes for {len(data)} bytes in"
                finding = self.ft.Finding(self.target, "memory", detail, "tracemalloc peak")
        if self.inputs % 5000 == 0:
            growth = self.proc.memory_info().rss - self.rss0
            self.rss_max_growth = max(self.rss_max_growth, growth)
            if growth > self.max_rss_growth and finding is None:
                finding = self.ft.Finding(self.target, "memory", f"RSS grew {growth >> 20} MiB", "rss growth")
                self.rss0 = self.proc.memory_info().rss  # report each further growth once more
        if finding is not None:
            self._record(finding, data)
        now = time.monotonic()
        if now - self.last_report > 10:
            self.last_report = now
            self.write_stats()
            rate = self.inputs / max(now - self.t0, 1e-9)
            print(f"[{self.target}] {self.inputs} inputs, {len(self.findings)} findings, {rate:.0f}/s",
                  file=sys.stderr, flush=True)

    def _record(self, finding: Any, data: bytes) -> None:
        key = finding.key()
        entry = self.findings.get(key)
        if entry is None:
            name = f"finding-{hashlib.sha1(data).hexdigest()[:16]}"
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / name).write_bytes(data)
            entry = {"kind": finding.kind, "where": finding.where, "error": finding.error, "input": name,
                     "count": 0}
            self.findings[key] = entry
            print(f"[{self.target}] FINDING {finding.kind}: {finding.where}: {finding.error}",
                  file=sys.stderr, flush=True)
        entry["count"] += 1

    def write_stats(self) -> None:
        wall = time.monotonic() - self.t0
        self.stats_path.write_text(json.dumps({
            "target": self.target, "inputs": self.inputs, "wall_s": round(wall, 1),
            "inputs_per_s": round(self.inputs / max(wall, 1e-9)),
            "findings": list(self.findings.values()), "max_tracemalloc_peak_bytes": self.max_peak,
            "max_rss_growth_bytes": self.rss_max_growth,
        }))


def run_worker(args: argparse.Namespace) -> None:
    """One target in this process: atheris if it imports, else the seeded mutation loop."""
    try:
        import atheris
    except ImportError:
        atheris = None
    work = Path(args.work)
    out = work / "findings" / args.worker
    stats = work / f"{args.worker}.json"
    if atheris is not None:
        with atheris.instrument_imports(include=["node", "consensus"]):
            import fuzz_targets  # noqa: F401 - imported to instrument node/ and consensus/
    worker = Worker(args.worker, out, stats, args.max_rss_growth_mb)
    seed_dir = work / "seeds" / args.worker
    pool = [p.read_bytes() for p in sorted(seed_dir.iterdir())]
    rng = random.Random(args.seed)
    if atheris is None or args.engine == "mutate":
        run_plain(worker, pool, rng, args.inputs, work / "corpus" / args.worker)
        return
    budget = args.inputs

    def test_one_input(data: bytes) -> None:
        worker.one(data)
        if worker.inputs >= budget:
            worker.write_stats()
            sys.stderr.flush()
            os._exit(0)  # libFuzzer would print its own stats and exit; we end at our count

    def custom_mutator(data: bytes, max_size: int, seed: int) -> bytes:
        r = random.Random(seed)
        if r.random() < 0.5:
            return atheris.Mutate(data, max_size)
        return mutate(data, r, pool, max_size)

    corpus = work / "corpus" / args.worker
    corpus.mkdir(parents=True, exist_ok=True)
    argv = [sys.argv[0], f"-seed={args.seed or 1}", f"-max_len={worker.ft.MAX_INPUT}", "-rss_limit_mb=4096",
            "-timeout=30", "-print_final_stats=1", f"-artifact_prefix={work}/", str(corpus), str(seed_dir)]
    atheris.Setup(argv, test_one_input, custom_mutator=custom_mutator)
    atheris.Fuzz()


def run_plain(worker: Worker, pool: list[bytes], rng: random.Random, budget: int, corpus: Path) -> None:
    """Without coverage: mutate seeds and kept inputs; keep an input whose outcome (finding, error
    class and message head) is new, a cheap stand-in for new coverage."""
    import fuzz_targets as ft

    corpus.mkdir(parents=True, exist_ok=True)
    live = list(pool)
    seen: set[str] = set()
    while worker.inputs < budget:
        data = mutate(rng.choice(live), rng, live, ft.MAX_INPUT)
        sig = _outcome(ft, worker.target, data)
        worker.one(data)
        if sig not in seen and len(seen) < 2000:
            seen.add(sig)
            live.append(data)
            (corpus / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)
    worker.write_stats()


def _outcome(ft: Any, target: str, data: bytes) -> str:
    try:
        ft.TARGETS[target].run(data)
    except Exception as exc:
        return f"{type(exc).__name__}:{str(exc)[:40]}"
    return "ok"


# -- the driver -----------------------------------------------------------------------------------


def split_inputs(targets: list[str], total: int) -> dict[str, int]:
    w = sum(WEIGHTS[t] for t in targets)
    return {t: max(1, total * WEIGHTS[t] // w) for t in targets}


def write_seeds(work: Path, targets: list[str], corpus: Path) -> None:
    import fuzz_targets as ft

    for t in targets:
        d = work / "seeds" / t
        d.mkdir(parents=True, exist_ok=True)
        inputs = ft.seeds(t) + [p.read_bytes() for p in ft.corpus_files(t)] + [
            p.read_bytes() for p in ((corpus / t).iterdir() if (corpus / t).is_dir() else ())]
        for data in inputs:
            (d / hashlib.sha1(data).hexdigest()[:16]).write_bytes(data)


def keep_corpus(work: Path, target: str, corpus: Path, python: str) -> int:
    """Keep a few dozen small inputs that cover what the run found: libFuzzer's merge picks a
    minimal covering set, then the smallest go to corpus/<target>/ with every finding's input."""
    found = work / "corpus" / target
    if not found.is_dir():
        return 0
    merged = work / "merged" / target
    merged.mkdir(parents=True, exist_ok=True)
    try:
        import atheris  # noqa: F401

        subprocess.run([python, __file__, "--merge", target, "--work", str(work)], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
    except (ImportError, subprocess.TimeoutExpired):
        pass
    small = sorted((p for p in (merged.iterdir() if any(merged.iterdir()) else found.iterdir())
                    if p.stat().st_size <= KEEP_MAX_BYTES), key=lambda p: (p.stat().st_size, p.name))
    # Spread over the sizes, not the smallest only: the tiny ones stop at the first check, the
    # larger ones are the shapes that got deep into the parser.
    step = max(1, len(small) // KEEP_PER_TARGET)
    pick = small[::step]
    dest = corpus / target
    dest.mkdir(parents=True, exist_ok=True)
    have = {p.name for p in dest.iterdir()}
    n = 0
    for p in pick:
        if len(have) >= KEEP_PER_TARGET:
            break
        name = hashlib.sha1(p.read_bytes()).hexdigest()[:16]
        if name not in have:
            shutil.copyfile(p, dest / name)
            have.add(name)
            n += 1
    for p in (work / "findings" / target).glob("finding-*") if (work / "findings" / target).is_dir() else ():
        shutil.copyfile(p, dest / p.name)
        n += 1
    return n


def run_merge(args: argparse.Namespace) -> None:
    import atheris

    with atheris.instrument_imports(include=["node", "consensus"]):
        import fuzz_targets as ft
    work = Path(args.work)
    target = args.merge

    def test_one_input(data: bytes) -> None:
        ft.check(target, data)

    atheris.Setup([sys.argv[0], "-merge=1", f"-max_len={ft.MAX_INPUT}", str(work / "merged" / target),
                   str(work / "corpus" / target)], test_one_input)
    atheris.Fuzz()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", default="all", help=f"one of {', '.join(ALL_TARGETS)}, or all")
    ap.add_argument("--inputs", type=int, default=100_000, help="inputs in total (split over targets)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--corpus", type=Path, default=ROOT / "tests" / "fuzz_corpus",
                    help="where interesting inputs are kept (and read back as seeds)")
    ap.add_argument("--engine", choices=("auto", "mutate"), default="auto",
                    help="auto: atheris if installed; mutate: the built-in mutator without coverage")
    ap.add_argument("--max-rss-growth-mb", type=int, default=1024)
    ap.add_argument("--no-keep", action="store_true", help="do not add inputs to --corpus")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--merge", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        run_worker(args)
        return 0
    if args.merge:
        run_merge(args)
        return 0
    targets = list(ALL_TARGETS) if args.target == "all" else [args.target]
    if any(t not in ALL_TARGETS for t in targets):
        ap.error(f"unknown target {args.target!r}")
    try:
        import atheris  # noqa: F401

        engine = "atheris" if args.engine == "auto" else "mutate"
    except ImportError:
        engine = "mutate"
    budget = split_inputs(targets, args.inputs)
    t0 = time.monotonic()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="fedledger-fuzz-run-") as tmp:
        work = Path(tmp)
        os.environ["FEDLEDGER_FUZZ_TMP"] = tmp  # the workers' ledgers go here (scripts/fuzz_targets.py)
        write_seeds(work, targets, args.corpus)
        for i, t in enumerate(targets):
            print(f"== {t}: {budget[t]} inputs ({engine})", file=sys.stderr, flush=True)
            cmd = [sys.executable, __file__, "--worker", t, "--work", str(work), "--inputs", str(budget[t]),
                   "--seed", str(args.seed + i), "--engine", args.engine,
                   "--max-rss-growth-mb", str(args.max_rss_growth_mb)]
            ts = time.monotonic()
            rc = subprocess.run(cmd, check=False).returncode
            stats_path = work / f"{t}.json"
            stats: dict[str, Any] = {"inputs": 0, "findings": []}
            if stats_path.exists():
                stats = json.loads(stats_path.read_text())
            stats["exit_code"] = rc
            stats["wall_s"] = round(time.monotonic() - ts, 1)
            if rc != 0:  # the process itself died (libFuzzer's RSS limit, a timeout, a signal)
                stats["findings"].append({"kind": "process", "where": f"worker exited {rc}", "error": "",
                                          "count": 1})
            if not args.no_keep:
                stats["kept"] = keep_corpus(work, t, args.corpus, sys.executable)
            results[t] = stats
    wall = time.monotonic() - t0
    total = sum(r["inputs"] for r in results.values())
    summary = {
        "engine": engine, "seed": args.seed, "inputs": total, "wall_s": round(wall, 1),
        "inputs_per_s": round(total / max(wall, 1e-9)),
        "findings": sum(len(r["findings"]) for r in results.values()),
        "targets": results,
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"{'target':<10} {'inputs':>10} {'findings':>8} {'wall s':>8} {'inputs/s':>9}")
        for t, r in results.items():
            print(f"{t:<10} {r['inputs']:>10} {len(r['findings']):>8} {r['wall_s']:>8} "
                  f"{r.get('inputs_per_s', 0):>9}")
            for f in r["findings"]:
                print(f"    {f['kind']}: {f['where']}: {f['error']} (x{f['count']})")
        print(f"{'total':<10} {total:>10} {summary['findings']:>8} {summary['wall_s']:>8} "
              f"{summary['inputs_per_s']:>9}")
    return 1 if summary["findings"] else 0


if __name__ == "__main__":
    sys.exit(main())
