#!/usr/bin/env python3
"""Round wall time of fedledger against a plain Flower deployment (a benchmark, not a test).

One run does both, on the same model (fedledger's humidity MLP, federated.tasks), the same rows,
the same number of nodes and rounds, FedAvg and no federated evaluate step on both sides:

  1. fedledger: ``fedledger launch --nodes N --rounds R --task humidity --json`` in WORK/fedledger.
     The nodes stream the bundled readings (--rate per second) all along, as a live deployment
     ingests while it trains; after --train-after seconds node1 requests the run. Each node trains
     through its long-lived trainer on its committed readings and puts its signed update on the
     ledger; node1 commits the aggregate. A round's wall time is the gap between the block times
     of two consecutive model commits (round 1: since round 0's).
  2. plain Flower: the exact rows each fedledger node trained on in each round are dumped to
     WORK/plain/rows/nodeK/round-R.msgpack: the node's training set at the data cut of its signed
     model_update for that round (its committed readings of its own devices minus the held-out
     hours, node/ledger/provenance.py), checked against the update's num_examples and readings
     root (the rows grow from round to round while readings stream). The
     plain ClientApp trains on the file of the round it is asked for. A SuperLink and N SuperNodes
     (node/flower/processes.py, as fedledger starts them) then run scripts/bench_fl_plain, a Flower
     App written like Flower's TensorFlow quickstart: every flwr-clientapp process imports Keras
     and builds the model. Its ServerApp times each round (the gaps between FedAvg's evaluate_fn
     calls) into a JSON file.

So both sides train on the same rows, node by node and round by round (the JSON's num_examples
and same_training_rows show it). What differs is the rest of the machine: the fedledger rounds run
while its nodes keep ingesting readings and running consensus; the plain side runs alone. The
bundled slice (23,036 readings) lasts about 115 s at the default rate: a run whose rounds go on
longer trains on a frozen ledger from then on, and `fedledger launch` (node/launch.py) then polls
its nodes' /status without pausing between polls, which takes CPU from the fedledger side.

    python scripts/bench_fl.py --json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import psutil
import tomli  # a flwr dependency; tomllib is 3.11+ and the project supports 3.10

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from node.flower.logs import log_tail
from node.flower.processes import SuperLinkProcess, SuperNodeProcess
from node.flower.run import run_app
from node.flower.supervise import FlowerRuntimeError, stop_all
from node.ledger.provenance import partition, root_of
from node.net.ports import free_port
from node.proc import alive, cpu_seconds, peak_rss_bytes, stop_processes

REPO = Path(__file__).resolve().parent.parent
PLAIN_APP = Path(__file__).resolve().parent / "bench_fl_plain"
FEDLEDGER_APP_TOML = REPO / "federated" / "flower" / "pyproject.toml"
TASK = "humidity"
DEVICES = 8  # fedledger launch streams 8 devices of the bundled slice, spread over the nodes
# The humidity model has one line per device of the run's list (federated/personal.py): launch's
# run lists the bundled slice's 8 rooms, and so does the plain App.
DEVICE_NAMES = "room_442,room_510,room_621,room_644,room_648,room_722,room_734,room_748"
TARGET_RATIO = 1.10  # the target: fedledger adds at most 10 % to a round
SAMPLE_S = 0.25

Log = Callable[[str], None]


class BenchError(RuntimeError):
    """One side of the benchmark failed; the message says which and why."""


# --- pure helpers ----------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3, help="federated rounds on each side (default 3)")
    ap.add_argument("--nodes", type=int, default=4, help=f"nodes / SuperNodes, 1-{DEVICES} (default 4)")
    ap.add_argument("--rate", type=float, default=200.0,
                    help="fedledger: readings streamed per second, 0 = max (default 200)")
    ap.add_argument("--train-after", type=float, default=10.0, metavar="SECONDS",
                    help="fedledger: seconds of streaming before the train request (default 10)")
    ap.add_argument("--dir", type=Path, help="work directory, new or empty (default: a temporary one)")
    ap.add_argument("--keep", action="store_true",
                    help="keep the temporary work directory (a --dir, or a failed run's, is always kept)")
    ap.add_argument("--timeout", type=float, default=1800.0, metavar="SECONDS",
                    help="give up on either side after this long (default 1800)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout (table on stderr)")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")
    if not 1 <= args.nodes <= DEVICES:
        # launch spreads 8 devices over the nodes; a node without devices has no rows to train on
        ap.error(f"--nodes must be between 1 and {DEVICES} (the number of streamed devices)")
    if args.rate < 0 or not math.isfinite(args.rate):
        ap.error("--rate must be >= 0 (0 = as fast as the nodes accept)")
    if args.train_after < 0 or not math.isfinite(args.train_after):
        ap.error("--train-after must be >= 0")
    if args.timeout <= 0:
        ap.error("--timeout must be positive")
    if args.dir is not None:
        d = args.dir.resolve()
        if " " in str(d):
            # Flower splits --node-config / --run-config on spaces, and the paths go in there
            ap.error(f"--dir must not contain spaces: {d}")
        if d.exists() and (not d.is_dir() or any(d.iterdir())):
            ap.error(f"--dir {d} exists and is not an empty directory")
    return args


def mean(values: Sequence[float]) -> float | None:
    return statistics.fmean(values) if values else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def rnd(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def round_stats(seconds: Sequence[float]) -> dict[str, Any]:
    """Mean over all rounds, and over rounds 2.. (round 1 pays for first spawns and traces)."""
    return {"rounds_s": [round(s, 2) for s in seconds], "mean_s": mean(seconds),
            "mean_excl_first_s": mean(seconds[1:])}


def fedledger_round_seconds(summary: Mapping[str, Any], rounds: int) -> list[float]:
    """Per-round seconds of rounds 1..`rounds` from `fedledger launch --json`'s training summary."""
    t = summary.get("training")
    if not isinstance(t, Mapping):
        raise BenchError("fedledger: the launch summary has no training section")
    if t.get("error") or not t.get("complete_on_every_replica"):
        raise BenchError(f"fedledger: training did not complete: {t.get('error') or t.get('replicas')}")
    by_round = {int(r["round"]): r for r in t.get("rounds", []) if isinstance(r, Mapping) and "round" in r}
    missing = [r for r in range(1, rounds + 1) if r not in by_round or "seconds" not in by_round[r]]
    if missing:
        raise BenchError(f"fedledger: rounds {missing} are not committed with a round time")
    return [float(by_round[r]["seconds"]) for r in range(1, rounds + 1)]


def plain_round_seconds(timing: Mapping[str, Any], rounds: int, nodes: int) -> list[float]:
    """Per-round seconds from the plain ServerApp's timing file; every round needs every node."""
    secs, replies = timing.get("round_seconds", {}), timing.get("replies", {})
    missing = [r for r in range(1, rounds + 1) if str(r) not in secs]
    if missing:
        raise BenchError(f"plain Flower: no time for rounds {missing}")
    short = {r: replies.get(str(r), 0) for r in range(1, rounds + 1) if replies.get(str(r), 0) < nodes}
    if short:
        raise BenchError(f"plain Flower: rounds without a reply from all {nodes} nodes: {short}")
    return [float(secs[str(r)]) for r in range(1, rounds + 1)]


def train_defaults(pyproject: Path = FEDLEDGER_APP_TOML) -> dict[str, Any]:
    """The hyperparameters fedledger's runs use (its App's run-config defaults; `fedledger launch`
    sends none of its own), as the plain App's run-config keys."""
    cfg = tomli.loads(pyproject.read_text())["tool"]["flwr"]["app"]["config"]
    return {"local-epochs": int(cfg["epochs"]), "batch-size": int(cfg["batch-size"]),
            "learning-rate": float(cfg["learning-rate"]), "patience": int(cfg["patience"]),
            "seed": int(cfg["seed"])}


def classify(argv: Sequence[str]) -> str:
    """The process type of a command line, for the peak-RSS table."""
    names = [Path(a).name for a in argv[:2]]
    for cmd, kind in (("flower-superlink", "superlink"), ("flower-supernode", "supernode"),
                      ("flower-superexec", "superexec"), ("flwr-serverapp", "serverapp"),
                      ("flwr-clientapp", "clientapp")):
        if cmd in names:
            return kind
    if "-m" in argv[:3]:
        module = argv[argv.index("-m") + 1] if argv.index("-m") + 1 < len(argv) else ""
        if module == "federated.trainer":
            return "trainer"
        if module in ("federated.flower.fl_superlink", "federated.flower.fl_supernode"):
            return module.rsplit("_", 1)[1]  # Flower's SuperLink / SuperNode behind fedledger's entry point
        if module == "node":
            return "launch" if "launch" in argv else "node"
    if "fedledger" in names:
        return "launch" if "launch" in argv else "fedledger-cli"
    if "flwr" in names:
        return "flwr-cli"
    return f"other ({names[0]})" if names else "other"


def own_readings(node_dir: Path) -> list[tuple[Any, ...]]:
    """The node's committed readings of the devices it owns, as (tx id, device, seq, timestamp_ms,
    name, temperature, humidity, height), read without the node's secret key."""
    public = bytes.fromhex(json.loads((node_dir / "config.json").read_text())["public_key"])
    db = sqlite3.connect(f"file:{node_dir / 'node.db'}?mode=ro", uri=True, timeout=10)
    try:
        cur = db.execute(
            "SELECT r.tx_id, r.device, r.seq, r.timestamp_ms, d.name, r.temperature_c, r.humidity_pct,"
            " r.height FROM readings r JOIN devices d ON d.device = r.device WHERE d.owner = ?",
            (public,),
        )
        return [(bytes(t), bytes(dev), *rest) for t, dev, *rest in cur]
    finally:
        db.close()


def training_rows(readings: Sequence[tuple[Any, ...]], num_examples: int, readings_root: str,
                  data_cut: int) -> list[list[Any]]:
    """The rows a fedledger update trained on: its node's readings up to the update's data cut,
    split by the ledger's held-out rule (node/ledger/provenance.py), as fedledger's ClientApp
    selected them; checked against the update's verified num_examples and readings root."""
    train, _ = partition([r for r in readings if r[7] <= data_cut])
    if len(train) != num_examples or root_of([r[0] for r in train]).hex() != readings_root:
        raise BenchError(f"the node's training set at cut {data_cut} ({len(train)} rows) is not the "
                         f"update's ({num_examples} rows, root {readings_root[:16]})")
    return [[r[4], r[2], r[3], r[5], r[6]] for r in train]


def request_time_ms(node_dir: Path, run_hex: str) -> int | None:
    """Block time (ms) of the train_request that started the run, from the node's replica."""
    db = sqlite3.connect(f"file:{node_dir / 'node.db'}?mode=ro", uri=True, timeout=10)
    try:
        row = db.execute("SELECT b.time_ms FROM txs t JOIN blocks b ON b.height = t.height WHERE t.id = ?",
                         (bytes.fromhex(run_hex),)).fetchone()
    finally:
        db.close()
    return int(row[0]) if row else None


# --- process sampling ------------------------------------------------------------------------------


class Sampler:
    """Peak RSS (node.proc.peak_rss_bytes: VmHWM on Linux, so a sample late in a process's life still
    sees its peak) and CPU time of every descendant of this process, by process type and benchmark
    phase. It also remembers every process it saw, so the end can check that none is left."""

    def __init__(self, interval: float = SAMPLE_S) -> None:
        self.interval = interval
        self.phase = "setup"
        self.seen: dict[psutil.Process, dict[str, Any]] = {}  # psutil.Process: pid and creation time
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="rss-sampler", daemon=True)

    def start(self) -> Sampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def sample(self) -> None:
        cmdlines: dict[int, list[str]] = {}
        procs: list[tuple[psutil.Process, int]] = []
        for proc in psutil.Process().children(recursive=True):
            try:
                cmdline, ppid = proc.cmdline(), proc.ppid()
            except psutil.Error:  # gone, or a zombie
                continue
            if cmdline:
                cmdlines[proc.pid] = cmdline
                procs.append((proc, ppid))
        for proc, ppid in procs:
            peak, cpu = peak_rss_bytes(proc.pid), cpu_seconds(proc.pid)
            if peak is None or cpu is None:
                continue
            info = self.seen.setdefault(proc, {"phase": self.phase, "peak_kb": 0, "cpu_s": 0.0})
            # Classified at every sample: a child caught between fork and exec still shows its parent's
            # command line (a ClientApp forks to run `file`, for one), and would count as a second one.
            same_as_parent = cmdlines.get(ppid) == cmdlines[proc.pid]
            info["kind"] = "other (fork)" if same_as_parent else classify(cmdlines[proc.pid])
            info["cpu_s"] = cpu
            info["peak_kb"] = max(info["peak_kb"], peak // 1024)

    def by_kind(self, phase: str) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for info in self.seen.values():
            if info["phase"] != phase or info["peak_kb"] == 0:
                continue
            k = out.setdefault(info["kind"], {"peak_rss_mb": 0.0, "processes": 0, "cpu_s": 0.0})
            k["peak_rss_mb"] = max(k["peak_rss_mb"], round(info["peak_kb"] / 1024, 1))
            k["processes"] += 1
            k["cpu_s"] = round(k["cpu_s"] + info["cpu_s"], 1)
        return dict(sorted(out.items()))

    def alive_processes(self) -> list[psutil.Process]:
        return sorted((p for p in self.seen if alive(p)), key=lambda p: p.pid)

    def alive(self) -> list[int]:
        return [p.pid for p in self.alive_processes()]


def kill_leftovers(procs: Sequence[psutil.Process], log: Log) -> None:
    """Only processes this benchmark started (seen as its descendants; psutil checks that a PID
    still names the process we saw)."""
    survivors = stop_processes(procs)
    log(f"killed {len(procs)} leftover process(es): {[p.pid for p in procs]}"
        + (f"; still running: {survivors}" if survivors else ""))


# --- the two sides ---------------------------------------------------------------------------------


def fedledger_command() -> list[str]:
    exe = Path(sys.executable).parent / "fedledger"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "node"]


def run_fedledger(args: argparse.Namespace, root: Path, log: Log) -> dict[str, Any]:
    cmd = [*fedledger_command(), "launch", "--dir", str(root), "--nodes", str(args.nodes),
           "--rounds", str(args.rounds), "--task", TASK, "--rate", f"{args.rate:g}",
           "--train-after", f"{args.train_after:g}", "--json"]
    log_path = root.parent / "fedledger-launch.log"
    log(f"fedledger: {' '.join(cmd)}")
    t0 = time.monotonic()
    with open(log_path, "wb") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, cwd=REPO)
        try:
            out, _ = proc.communicate(timeout=args.timeout)
        except subprocess.TimeoutExpired:
            # launch stops its feed and its nodes on SIGINT (as on Ctrl-C); kill only if it hangs
            proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
            raise BenchError(f"fedledger: not finished after {args.timeout:g} s; log {log_path}:\n"
                             + log_tail(log_path)) from None
    wall = time.monotonic() - t0
    try:
        summary = json.loads(out)
    except ValueError:
        summary = None
    if proc.returncode != 0 or not isinstance(summary, dict):
        training = summary.get("training") if isinstance(summary, dict) else None
        why = training.get("error") if isinstance(training, dict) else None
        raise BenchError(f"fedledger launch exited with status {proc.returncode}"
                         f"{f' ({why})' if why else ''}; log {log_path}:\n{log_tail(log_path)}\n"
                         f"stdout tail: {out.decode(errors='replace')[-1500:]}")
    seconds = fedledger_round_seconds(summary, args.rounds)
    t = summary["training"]
    by_round = {r["round"]: r for r in t["rounds"]}
    requested = request_time_ms(root / "node1", t["run"]) if t.get("run") else None
    last_ms = by_round[args.rounds]["time_ms"]
    trained = range(1, args.rounds + 1)
    return {
        "seconds": seconds,
        "launch_s": wall,
        "request_to_round0_s": (by_round[0]["time_ms"] - requested) / 1000 if requested and 0 in by_round
        else None,
        "request_to_last_commit_s": (last_ms - requested) / 1000 if requested else None,
        "num_examples": [int(by_round[r]["metrics"].get("num-examples", 0)) for r in trained],
        "train_rmse": [by_round[r]["metrics"].get("train_rmse") for r in trained],
        "readings_finalized": summary.get("finalized_readings"),
        "run": t.get("run"),
    }


Updates = dict[int, dict[str, tuple[int, str, int]]]  # round -> node -> (num_examples, readings root, cut)


def fedledger_updates(node_dir: Path, run: str, rounds: int) -> Updates:
    """Each round's model_updates of the run, from `fedledger model show --json` on `node_dir`."""
    out: Updates = {}
    for r in range(1, rounds + 1):
        cmd = [*fedledger_command(), "model", "show", str(node_dir), "--task", TASK, "--run", run,
               "--round", str(r), "--json"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=REPO,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise BenchError(f"fedledger: {' '.join(cmd)} did not answer in 120 s") from exc
        try:
            lineage = json.loads(proc.stdout)
            out[r] = {u["node_name"]: (int(u["num_examples"]), str(u["readings_root"]), int(u["data_cut"]))
                      for u in lineage["updates"]}
        except (ValueError, KeyError, TypeError) as exc:
            raise BenchError(f"fedledger: no updates for round {r} from {' '.join(cmd)} "
                             f"(status {proc.returncode}): {proc.stderr[-500:]}") from exc
    return out


def dump_rows(fed_root: Path, nodes: int, out_dir: Path, updates: Updates) -> list[list[int]]:
    """WORK/plain/rows/nodeK/round-R.msgpack: the rows node K's fedledger update of round R trained
    on. Returns the row counts, per round, per node."""
    counts: list[list[int]] = [[] for _ in updates]
    for k in range(1, nodes + 1):
        name = f"node{k}"
        readings = own_readings(fed_root / name)
        (out_dir / name).mkdir(parents=True, exist_ok=True)
        for i, r in enumerate(sorted(updates)):
            if name not in updates[r]:
                raise BenchError(f"fedledger: round {r} has no update from {name}")
            rows = training_rows(readings, *updates[r][name])
            (out_dir / name / f"round-{r}.msgpack").write_bytes(msgpack.packb(rows, use_bin_type=True))
            counts[i].append(len(rows))
    return counts


def run_plain(args: argparse.Namespace, root: Path, rows_dirs: Sequence[Path], log: Log) -> dict[str, Any]:
    timing_file = root / "rounds.json"
    run_config = {"task": TASK, "num-server-rounds": args.rounds, "min-nodes": args.nodes,
                  "fraction-evaluate": 0.0, "timing-file": str(timing_file), "devices": DEVICE_NAMES,
                  **train_defaults()}
    link = SuperLinkProcess(root / "superlink", free_port())
    supernodes: list[SuperNodeProcess] = []
    t0 = time.monotonic()
    try:
        log("plain Flower: starting the SuperLink and the SuperNodes")
        link.start()
        for k, path in enumerate(rows_dirs, 1):
            sn = SuperNodeProcess(root / f"node{k}", link.address, free_port(), {"rows-dir": str(path)},
                                  stock_clientapp=True)
            supernodes.append(sn)
            sn.start()
        setup_s = time.monotonic() - t0
        log(f"plain Flower: flwr run {PLAIN_APP.name} ({args.rounds} rounds, {args.nodes} nodes)")
        run = run_app(PLAIN_APP, link.address, run_config, flwr_home=root / "flwr-cli", name="benchplain")
        try:
            status = run.wait(timeout=args.timeout)
        except FlowerRuntimeError as exc:
            run.stop()
            raise BenchError(f"plain Flower: {exc}") from exc
        total_s = time.monotonic() - t0
        if status != 0:
            tails = "\n".join(f"--- {p.log_path}:\n{p.log_tail(15)}" for p in [link, *supernodes])
            raise BenchError(f"plain Flower run failed: {run.failure()}\n{tails}")
        try:
            timing = json.loads(timing_file.read_text())
        except (OSError, ValueError) as exc:
            raise BenchError(f"plain Flower: no timing file from the ServerApp ({exc})") from exc
        seconds = plain_round_seconds(timing, args.rounds, args.nodes)
    finally:
        t_stop = time.monotonic()
        stop_all(supernodes, link)
        stop_s = time.monotonic() - t_stop
    trained = range(1, args.rounds + 1)
    return {
        "seconds": seconds,
        "setup_s": setup_s,
        "run_s": run.elapsed,
        "total_s": total_s,
        "stop_s": stop_s,
        "serverapp_s": timing.get("serverapp_seconds"),
        "num_examples": [int(timing["num_examples"].get(str(r), 0)) for r in trained],
        "train_rmse": [timing["train_metrics"].get(str(r), {}).get("train_rmse") for r in trained],
    }


# --- report ----------------------------------------------------------------------------------------


def build_result(args: argparse.Namespace, fed: Mapping[str, Any], plain: Mapping[str, Any],
                 rows: Sequence[Sequence[int]], peaks: Mapping[str, Any], work: Path,
                 wall_s: float) -> dict[str, Any]:
    p, f = round_stats(plain["seconds"]), round_stats(fed["seconds"])
    r = ratio(f["mean_s"], p["mean_s"])
    # Both weigh an update by its whole training set (every row trains; the ledger verifies
    # fedledger's figure).
    same_rows = (list(fed["num_examples"]) == [sum(per_node) for per_node in rows]
                 and list(plain["num_examples"]) == [sum(per_node) for per_node in rows])
    return {
        "plain_round_s": rnd(p["mean_s"]),
        "fedledger_round_s": rnd(f["mean_s"]),
        "ratio": rnd(r, 3),
        "plain_round_s_excl_first": rnd(p["mean_excl_first_s"]),
        "fedledger_round_s_excl_first": rnd(f["mean_excl_first_s"]),
        "ratio_excl_first": rnd(ratio(f["mean_excl_first_s"], p["mean_excl_first_s"]), 3),
        "plain_rounds_s": p["rounds_s"],
        "fedledger_rounds_s": f["rounds_s"],
        "target_ratio": TARGET_RATIO,
        "within_target": r is not None and r <= TARGET_RATIO,
        "rounds": args.rounds,
        "nodes": args.nodes,
        "rows_per_node": [list(per_node) for per_node in rows],  # per round, per node
        "same_training_rows": same_rows,
        "rows_note": "in each round, plain Flower's node K trains on the rows fedledger's node K trained on "
                     "(its training set at the data cut of its signed update: its committed readings of "
                     "its own devices minus the held-out hours); they grow from round to round while "
                     "readings stream; num_examples summed over the nodes: the whole training sets on "
                     "both sides (the humidity model trains on every row)",
        "num_examples": {"plain": list(plain["num_examples"]), "fedledger": list(fed["num_examples"]),
                         "training_rows": [sum(per_node) for per_node in rows]},
        "train_rmse": {"plain": [rnd(v, 3) for v in plain["train_rmse"]],
                       "fedledger": [rnd(v, 3) for v in fed["train_rmse"]]},
        "plain": {"setup_s": rnd(plain["setup_s"]), "flwr_run_s": rnd(plain["run_s"]),
                  "total_s": rnd(plain["total_s"]), "stop_s": rnd(plain["stop_s"]),
                  "serverapp_s": rnd(plain["serverapp_s"])},
        "fedledger": {"launch_s": rnd(fed["launch_s"]),
                      "request_to_round0_s": rnd(fed["request_to_round0_s"]),
                      "request_to_last_commit_s": rnd(fed["request_to_last_commit_s"]),
                      "readings_finalized": fed["readings_finalized"], "run": fed["run"]},
        "peak_rss_mb": peaks,
        "config": {"task": TASK, "strategy": "fedavg", "fraction_evaluate": 0.0, **train_defaults(),
                   "rate": args.rate, "train_after": args.train_after, "devices": DEVICES,
                   "cores": os.cpu_count(), "timeout": args.timeout},
        "dir": str(work),
        "wall_s": round(wall_s, 1),
        # the cores are shared: a busy machine during either side skews the ratio
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }


def fmt(x: float | None, spec: str = ".2f") -> str:
    return "-" if x is None else format(x, spec)


def render_table(res: Mapping[str, Any]) -> str:
    lines = [f"{'round':<22}{'plain Flower (s)':>18}{'fedledger (s)':>16}{'ratio':>8}"]
    for i, (p, f) in enumerate(zip(res["plain_rounds_s"], res["fedledger_rounds_s"], strict=True), 1):
        lines.append(f"{i:<22}{fmt(p):>18}{fmt(f):>16}{fmt(ratio(f, p), '.3f'):>8}")
    lines.append(f"{'mean':<22}{fmt(res['plain_round_s']):>18}{fmt(res['fedledger_round_s']):>16}"
                 f"{fmt(res['ratio'], '.3f'):>8}")
    lines.append(f"{'mean excl. round 1':<22}{fmt(res['plain_round_s_excl_first']):>18}"
                 f"{fmt(res['fedledger_round_s_excl_first']):>16}{fmt(res['ratio_excl_first'], '.3f'):>8}")
    verdict = "within" if res["within_target"] else "NOT within"
    lines.append(f"target: fedledger/plain <= {res['target_ratio']:.2f} per round: {verdict}")
    lines.append("")
    ne = res["num_examples"]
    lines.append(f"nodes {res['nodes']}, rounds {res['rounds']}, rows per node and round "
                 f"{res['rows_per_node']} (what each fedledger node trained on)")
    same = res.get("same_training_rows")
    note = "" if same is None else " (the same rows)" if same else " (NOT the same rows: see rows_note)"
    lines.append(f"training rows per round: plain {ne['plain']}, fedledger {ne['fedledger']}{note}")
    pl, fl = res["plain"], res["fedledger"]
    lines.append(f"plain Flower: SuperLink+SuperNodes up {fmt(pl['setup_s'])} s, "
                 f"flwr run {fmt(pl['flwr_run_s'])} s, total {fmt(pl['total_s'])} s, "
                 f"stop {fmt(pl['stop_s'])} s")
    lines.append(f"fedledger: launch {fmt(fl['launch_s'])} s, train request to round 0 "
                 f"{fmt(fl['request_to_round0_s'])} s, to the last commit "
                 f"{fmt(fl['request_to_last_commit_s'])} s")
    lines.append("")
    peaks = res["peak_rss_mb"]
    kinds = sorted(set(peaks.get("plain", {})) | set(peaks.get("fedledger", {})))
    lines.append(f"{'peak RSS MB (procs, CPU s)':<28}{'plain Flower':>22}{'fedledger':>22}")
    for kind in kinds:
        cells = []
        for side in ("plain", "fedledger"):
            k = peaks.get(side, {}).get(kind)
            cells.append(f"{k['peak_rss_mb']:.0f} ({k['processes']}, {k['cpu_s']:.0f})" if k else "-")
        lines.append(f"{kind:<28}{cells[0]:>22}{cells[1]:>22}")
    return "\n".join(lines)


# --- main ------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)

    def log(msg: str) -> None:
        print(f"[bench_fl {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    started = time.monotonic()
    temp = args.dir is None
    work = (Path(tempfile.mkdtemp(prefix="fedledger-bench-fl-")) if temp else args.dir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    log(f"work directory {work}")
    load_start = [round(x, 2) for x in os.getloadavg()]
    sampler = Sampler().start()
    ok = False
    try:
        sampler.phase = "fedledger"
        fed = run_fedledger(args, work / "fedledger", log)
        log(f"fedledger rounds (s): {[round(s, 2) for s in fed['seconds']]}")
        sampler.phase = "rows"  # fedledger model show: not part of either side's footprint
        updates = fedledger_updates(work / "fedledger" / "node1", fed["run"], args.rounds)
        rows_dir = work / "plain" / "rows"
        rows = dump_rows(work / "fedledger", args.nodes, rows_dir, updates)
        log(f"rows per node that fedledger trained on, by round: {rows}")
        sampler.phase = "plain"
        plain = run_plain(args, work / "plain", [rows_dir / f"node{k}" for k in range(1, args.nodes + 1)],
                          log)
        log(f"plain Flower rounds (s): {[round(s, 2) for s in plain['seconds']]}")
        ok = True
    except (BenchError, FlowerRuntimeError, OSError, sqlite3.Error) as exc:
        log(f"FAILED: {exc}")
    finally:
        sampler.stop()
        sampler.sample()
        leftover = sampler.alive_processes()
        if leftover:
            # a bug in the shutdown of one side: the timings stand, but say so loudly
            log(f"WARNING: {len(leftover)} process(es) still running after both sides stopped")
            kill_leftovers(leftover, log)
    if not ok:
        log(f"work directory kept for the logs: {work}")
        return 1
    peaks = {"plain": sampler.by_kind("plain"), "fedledger": sampler.by_kind("fedledger")}
    res = build_result(args, fed, plain, rows, peaks, work, time.monotonic() - started)
    res["leftover_processes"] = len(leftover)
    res["loadavg_start"] = load_start
    print(render_table(res), file=sys.stderr if args.json else sys.stdout, flush=True)
    if args.json:
        print(json.dumps(res, indent=2))
    if temp and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
