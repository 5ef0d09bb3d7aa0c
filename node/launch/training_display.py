"""The training part of `fedledger launch`: start a run from node1 and follow it on every replica."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

from federated.evaluation import headline
from node.errors import FedledgerError
from node.launch.display import Display, LaunchOptions
from node.launch.processes import NodeProcess
from node.launch.train_request import request_params, run_progress, submit_request
from node.server.datadir import DB_FILE
from node.store.models import common_holdout_curve, models
from node.store.sqlite import SqliteStore

METRIC_KEYS = ("train_rmse", "loss", "hours", "devices")
# After the last commit the nodes still sign their held-out scores of the last model (a few seconds).
FINAL_EVAL_WAIT_S = 100.0


def key_metrics(metrics: dict[str, float]) -> str:
    shown = [f"{k}={metrics[k]:.4g}" for k in METRIC_KEYS if k in metrics]
    return " ".join(shown) or "-"


def round_line(m: dict[str, Any]) -> str:
    """The held-out score of the round's model (aggregated over nodes, with its baseline), then
    the nodes' training metrics (their early-stopping split of their own training rows)."""
    held = m.get("holdout") or {}
    text = headline(m["task"], held)
    scored = f"{text} over {int(held['nodes'])} node(s)" if text else "holdout: not scored yet"
    return f"{scored} | training: {key_metrics(m['metrics'])}"


class TrainingWatch:
    def __init__(self, opts: LaunchOptions, procs: list[NodeProcess]) -> None:
        self.opts = opts
        self.procs = procs
        self.run: bytes | None = None
        self.error = ""
        self.finished = False
        self.committed = -1  # rounds committed on node1
        self._reported = -1
        self._scored: set[int] = set()
        self._complete: list[bool] = [False] * len(procs)
        self._complete_at: float | None = None

    @property
    def coordinator_dir(self) -> Path:
        return self.procs[0].dir

    def start(self) -> None:
        """Blocking: sign the train request with node1's key and wait until it is final."""
        try:
            params = request_params(self.coordinator_dir, self.opts.task)
            self.run = submit_request(self.coordinator_dir, self.opts.task, self.opts.rounds,
                                      self.opts.strategy, params)
        except FedledgerError as exc:
            self.fail(str(exc))

    def fail(self, why: str) -> None:
        if not self.finished:
            self.error, self.finished = why, True

    def observe(self, statuses: list[dict[str, Any] | None]) -> None:
        if self.run is None or self.finished:
            return
        for i, st in enumerate(statuses):
            if st is None:
                continue
            ledger, local = run_progress(st, self.run)
            if ledger is not None:
                self._complete[i] = bool(ledger["complete"])
                if i == 0:
                    self.committed = int(ledger["committed_rounds"])
            if local is not None and local.get("state") in ("failed", "stalled", "skipped"):
                self.fail(f"node{i + 1}: run {local['state']}: {local.get('error')}")
        if all(self._complete):
            self._complete_at = self._complete_at or time.monotonic()
            last = self.rounds()[-1:]
            scored = bool(last) and len(last[0].get("evaluations", [])) >= last[0]["updates"]
            if scored or time.monotonic() - self._complete_at > FINAL_EVAL_WAIT_S:
                self.finished = True

    def rounds(self) -> list[dict[str, Any]]:
        """Committed models of the run on node1's replica, with the wall time of each round (from
        the block times of consecutive commits)."""
        if self.run is None:
            return []
        store = SqliteStore(self.coordinator_dir / DB_FILE, read_only=True)
        try:
            found = [m.to_json() for m in models(store, self.run)]
        finally:
            store.close()
        for prev, cur in itertools.pairwise(found):
            cur["seconds"] = round((cur["time_ms"] - prev["time_ms"]) / 1000, 2)
        return found

    def news(self) -> list[str]:
        if self.committed <= self._reported and len(self._scored) > self.committed:
            return []
        out = []
        for m in self.rounds():
            if m["round"] > self._reported and m["round"] >= 1:
                out.append(f"round {m['round']}/{self.opts.rounds} committed at height {m['height']} "
                           f"({m['updates']} updates, {m.get('seconds', 0):.1f} s): "
                           + key_metrics(m["metrics"]))
            # A round's scores arrive with the next round's updates (the last one's after it): show
            # them once that round is committed, or at the end, so every node's score is in.
            last = m["round"] >= self.opts.rounds
            ready = m["round"] < self.committed or (last and len(m.get("evaluations", [])) >= m["updates"])
            if ready and m.get("holdout") and m["round"] not in self._scored:
                self._scored.add(m["round"])
                out.append(f"round {m['round']} model on held-out readings: " + round_line(m).split(" | ")[0])
            self._reported = max(self._reported, m["round"])
        return out

    def progress(self) -> str:
        if self.run is None:
            return ""
        done = max(self.committed, 0)
        return f" | {self.opts.task} round {done}/{self.opts.rounds}" + (" done" if self.finished else "")

    def summary(self) -> dict[str, Any]:
        per_node = []
        for p in self.procs:
            st = p.status()
            ledger = run_progress(st, self.run)[0] if st is not None and self.run is not None else None
            per_node.append({"dir": str(p.dir),
                             "committed_rounds": ledger["committed_rounds"] if ledger else None,
                             "complete": bool(ledger and ledger["complete"])})
        rounds = self.rounds()
        trained = [r for r in rounds if r["round"] >= 1]
        common = None
        if self.run is not None:
            store = SqliteStore(self.coordinator_dir / DB_FILE, read_only=True)
            try:
                common = common_holdout_curve(store, self.run)
            finally:
                store.close()
        return {
            "run": self.run.hex() if self.run else None,
            "task": self.opts.task,
            "strategy": self.opts.strategy,
            "rounds_requested": self.opts.rounds,
            "rounds": rounds,
            "round_seconds_mean": (round(sum(r["seconds"] for r in trained) / len(trained), 2)
                                   if trained else None),
            "complete_on_every_replica": all(n["complete"] for n in per_node) and not self.error,
            "common_holdout": common,
            "replicas": per_node,
            "error": self.error or None,
        }


def learning_curve(task: str, rounds: list[dict[str, Any]]) -> str:
    """One line: the held-out metric per round, and the last round's baseline."""
    key, base = ("rmse", "baseline_rmse") if task == "humidity" else ("accuracy", "baseline_accuracy")
    scored = [r for r in rounds if key in (r.get("holdout") or {})]
    if not scored:
        return ""
    points = ", ".join(f"round {r['round']} {r['holdout'][key]:.4g}" for r in scored)
    last = scored[-1]["holdout"]
    what = "device-mean baseline" if task == "humidity" else "chance"
    return (f"learning curve, held-out {key} (readings no node trained on): {points}; "
            f"{what} {last.get(base, float('nan')):.4g}")


def common_curve(common: dict[str, Any] | None) -> str:
    """One line: every round on the same held-out readings (node.store.models.common_holdout_curve)."""
    if not common or not common["rounds"]:
        return ""
    task = common["task"]
    key, base = ("rmse", "baseline_rmse") if task == "humidity" else ("accuracy", "baseline_accuracy")
    pts = [p for p in common["rounds"] if key in p["metrics"]]
    if not pts:
        return ""
    points = ", ".join(f"round {p['round']} {p['metrics'][key]:.4g}" for p in pts)
    what = "device-mean baseline" if task == "humidity" else "chance"
    unit = "one-hour windows, " if task == "traceability" else ""
    return (f"every round on the same {common['holdout_readings']} held-out readings ({unit}the final cut): "
            f"{key} {points}; {what} {pts[-1]['metrics'].get(base, float('nan')):.4g}")


def print_training(t: dict[str, Any], root: Path, out: Display) -> None:
    out.say("")
    if t["run"] is None:
        out.say(f"Training did not start: {t['error']}")
        return
    out.say(f"Training run {t['run'][:12]}: {t['task']} with {t['strategy']}, "
            f"{len([r for r in t['rounds'] if r['round'] >= 1])}/{t['rounds_requested']} rounds committed")
    for r in t["rounds"]:
        what = "initial model" if r["round"] == 0 else f"{r['updates']} updates, {r.get('seconds', 0):.1f} s"
        out.say(f"  round {r['round']}: model {r['model_hash'][:16]} at height {r['height']} ({what})")
        out.say(f"    {round_line(r) if r['round'] else round_line(r).split(' | ')[0]}")
    if t["complete_on_every_replica"]:
        out.say("  every round is committed on every replica")
    else:
        out.say(f"  NOT complete on every replica: {t['error'] or t['replicas']}")
    last = max((r["round"] for r in t["rounds"]), default=0)
    curve = learning_curve(t["task"], t["rounds"])
    if curve:
        out.say("  " + curve + " (each round at its own data cut)")
    common = common_curve(t.get("common_holdout"))
    if common:
        out.say("  " + common)
    out.say("Models are on the ledger (weights inside the updates, re-computed by every authority):")
    out.say(f"  fedledger model list {root}/node1")
    out.say(f"  fedledger model show {root}/node1 --task {t['task']} --round {last}")
    out.say(f"  fedledger model export {root}/node1 --task {t['task']} --round {last} "
            f"--out {t['task']}.{'keras' if t['task'] == 'humidity' else 'json'}")
    if t["task"] == "traceability":
        out.say(f"  fedledger ledger suspicious {root}/node1     # readings that look like another device")
