"""`fedledger model list|show|export|evaluate`: the committed models of a replica, their lineage, a
self-contained file of any of them, and its score on any readings CSV.

Everything is read from DIR/node.db through the read-only view of node.server.offline (safe next to
a running node), inside one snapshot. `export` does not trust a stored aggregate: it re-computes the
committed weights from the updates the commit names (node.models.model_weights, which checks them
against the committed hash). A humidity model exports as a `.keras` file of its shared line or of
one device's own line (`--device`), which needs Keras, imported by `export` alone; traceability's
fingerprints export as JSON. `evaluate` scores with numpy (the humidity model is linear, the
fingerprints are numpy), so `list`, `show`, `evaluate` (and the node) stay TensorFlow-free.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import sqlite3
from pathlib import Path
from typing import Any

from federated.evaluation import headline
from federated.personal import run_devices
from node.cli.output import emit, fmt_time, table
from node.errors import LocalError, StorageError
from node.ledger.holdout import Split, split_of
from node.ledger.keys import short_id
from node.ledger.runs import TASKS
from node.server.offline import open_node
from node.store.models import ModelInfo, RunInfo, find_model, find_run, lineage, model_weights, models, runs

# Shown by `list`, in this order, when a commit carries them (the averaged metrics of its updates).
KEY_METRICS = ("loss", "train_rmse", "train_r2", "hours", "devices", "val_rmse", "val_accuracy")
INSTALL_HINT = "pip install 'fedledger[federated]' (./scripts/launch sets up a .venv that has it)"


class ModelNotFound(LocalError):
    """The run, task or round asked for is not on this replica."""


class ExportError(LocalError):
    """The model could not be written: no Keras, a bad or existing --out path, an I/O failure."""


# --- helpers -----------------------------------------------------------------------------------


def short_run(run: bytes | str) -> str:
    return (run.hex() if isinstance(run, bytes) else run)[:12]


def key_metrics(metrics: dict[str, float]) -> str:
    keys = [k for k in KEY_METRICS if k in metrics] or sorted(metrics)[:4]
    return " ".join(f"{k}={metrics[k]:.4g}" for k in keys)


def held_out(m: ModelInfo) -> str:
    """The round's score on held-out readings, aggregated over the nodes that signed one."""
    text = headline(m.task, m.holdout)
    return f"{text} ({int(m.holdout['nodes'])})" if text else "-"


def all_metrics(metrics: dict[str, float]) -> str:
    return " ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items()))


def run_line(r: RunInfo, names: dict[bytes, str]) -> str:
    q = r.request
    state = "complete" if r.complete else "in progress"
    done = f"{max(0, r.last_round)}/{q.rounds} rounds committed" if r.committed else "no model committed yet"

    def who(key: bytes) -> str:
        return short_id(key) + (f" ({names[key]})" if names.get(key) else "")

    moved = "".join(
        f"; round {h.round}: {who(h.coordinator)} "
        + ("moved its SuperLink" if h.previous == h.coordinator else f"took over from {who(h.previous)}")
        for h in r.handovers)
    return (f"run {short_run(r.run)} {q.task}/{q.strategy}: {done}, {state}; "
            f"requested by {who(r.coordinator)} at height {r.height}{moved}")


def since(handover: dict[str, Any] | None) -> str:
    """How the round's coordinator came to coordinate it, if by a handover."""
    if not handover:
        return ", the run's requester"
    where = f"round {handover['round']} (handover at height {handover['height']})"
    if handover["restart"]:
        return f", since it moved its SuperLink at {where}"
    return f", since it took the run over from {handover['from']} at {where}"


def select_model(store: Any, args: argparse.Namespace) -> ModelInfo:
    try:
        return find_model(store, args.task, args.round, args.run)
    except LookupError as exc:
        raise ModelNotFound(str(exc)) from exc


def run_device_list(info: RunInfo) -> list[str]:
    """The run's device list (its train_request's sorted device names): the personal rows of the
    model, traceability's labels."""
    try:
        devices = run_devices(info.request.task, info.request.params)
    except ValueError as exc:
        raise ExportError(f"run {short_run(info.run)} has a bad device list: {exc}") from exc
    if not devices:
        raise ExportError(f"run {short_run(info.run)} names no devices, so its model's rows are unknown")
    return devices


def check_out_path(out: Path, force: bool, suffix: str = ".keras") -> None:
    """Refuse early (before any work) what would fail or destroy something later."""
    if out.suffix != suffix:
        why = "Keras 3 saves only that format" if suffix == ".keras" else "fingerprints are JSON"
        raise ExportError(f"--out must end in {suffix} ({why}), got {out}")
    if out.is_dir():
        raise ExportError(f"{out} is a directory")
    if out.exists() and not force:
        raise ExportError(f"{out} already exists (use --force to overwrite it)")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent  # export creates missing directories: check the first that exists
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(f"cannot write {out}: {parent} is not a writable directory")


def keras_available() -> bool:
    return importlib.util.find_spec("keras") is not None


def write_model(task: str, weights: list[Any], out: Path, devices: list[str], device: int | None) -> None:
    """Write through a temporary file in the same directory, then rename: an existing file is
    replaced whole or not at all, and a failed export leaves no partial file behind."""
    if task == "humidity" and not keras_available():
        raise ExportError(f"export needs Keras, which is not installed here: {INSTALL_HINT}")
    try:
        from federated.export import export_fingerprints, export_keras
    except ImportError as exc:
        raise ExportError(f"export needs Keras/TensorFlow, which could not be imported ({exc}): "
                          f"{INSTALL_HINT}") from exc
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create {out.parent}: {exc.strerror or exc}") from exc
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{out.suffix}")
    try:
        if task == "humidity":
            export_keras(task, weights, tmp, device)
        else:
            export_fingerprints(weights, devices, tmp)
        os.replace(tmp, out)
    except ImportError as exc:
        raise ExportError(f"export needs Keras/TensorFlow, which could not be imported ({exc}): "
                          f"{INSTALL_HINT}") from exc
    except OSError as exc:
        raise ExportError(f"cannot write {out}: {exc.strerror or exc}") from exc
    except ValueError as exc:  # weights that do not fit the task's model
        raise ExportError(f"cannot build the {task} model from the committed weights: {exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


# --- subcommands -------------------------------------------------------------------------------


def cmd_list(args: argparse.Namespace) -> int:
    with open_node(args.dir) as node:
        store = node.store
        if args.run:
            try:
                chosen = [find_run(store, args.task, args.run)]
            except LookupError as exc:
                raise ModelNotFound(str(exc)) from exc
        else:
            chosen = [r for r in runs(store) if args.task is None or r.request.task == args.task]
        found = [m for r in chosen for m in models(store, r.run)]
        names = {m.key: m.name for m in store.members()}
        height = store.height()
    out = {"models": [m.to_json() for m in found], "runs": [r.to_json() for r in chosen]}
    rows: list[list[Any]] = [["RUN", "TASK", "ROUND", "MODEL", "HEIGHT", "UPDATES", "COORDINATOR",
                              "HELD-OUT (NODES)", "TRAINING METRICS", "TIME (UTC)"]]
    rows += [[short_run(m.run), m.task, m.round, m.weights_hash.hex()[:16], m.height, len(m.update_ids),
              short_id(m.coordinator), held_out(m), key_metrics(m.metrics) or "-", fmt_time(m.time_ms)]
             for m in found]
    human = table(rows) if found else []
    if not found:
        what = f"{args.task} models" if args.task else "models"
        where = f"in run {short_run(chosen[0].run)}" if args.run else f"on this ledger (height {height})"
        human.append(f"no {what} yet {where}")
    human += [run_line(r, names) for r in chosen]
    if found:
        human.append(f"next: fedledger model show {args.dir} --task {found[-1].task}")
    emit(args, out, human)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    with open_node(args.dir) as node:
        store = node.store
        model = select_model(store, args)
        lin = lineage(store, model)
        names = {short_id(m.key): m.name for m in store.members()}
    req = lin["request"]

    def who(node_id: str) -> str:
        return node_id + (f" ({names[node_id]})" if names.get(node_id) else "")

    params = " ".join(f"{k}={v}" for k, v in sorted(req["params"].items())) or "(defaults)"
    base = (f"{lin['base_model']} (round {model.round - 1})" if lin["base_model"]
            else "none: round 0 is the run's initial model")
    human = table([
        ["model", f"{model.task} round {model.round} of run {lin['run']}"],
        ["hash", lin["model_hash"]],
        ["committed", f"height {model.height} at {fmt_time(model.time_ms)}, tx {lin['commit_tx']}"],
        ["strategy", f"{model.strategy}, {len(lin['updates'])} update(s)"],
        ["coordinator", who(lin["coordinator"]) + since(lin.get("coordinator_since"))],
        ["request", f"{req['task']}, {req['rounds']} rounds, {req['strategy']}; {params}"],
        ["base", base],
        ["metrics", all_metrics(model.metrics) or "-"],
        ["held-out", (held_out(model) + f"; rule {lin['holdout_rule']}, {len(model.evaluations)} signed "
                      "evaluation(s)") if model.evaluations else "no evaluation on the ledger yet"],
        ["provenance", "verified: every replica re-computed each update's num_examples and readings_root "
                       "from its own readings at the update's data cut" if model.round else
                       "round 0 is the run's initial model (no data)"],
    ])
    moves = lin["request"].get("handovers") or []
    if moves:
        human.append(f"handovers of the run ({len(moves)}):")
        hrows: list[list[Any]] = [["ROUND", "HEIGHT", "FROM", "TO", "SUPERLINK"]]
        hrows += [[h["round"], h["height"], who(h["from"]),
                   who(h["to"]) + (" (moved its SuperLink)" if h["restart"] else ""), h["superlink"]]
                  for h in moves]
        human += ["  " + line for line in table(hrows)]
    human.append(f"updates ({len(lin['updates'])}):")
    rows: list[list[Any]] = [["NODE", "NAME", "TX", "HEIGHT", "DATA CUT", "EXAMPLES", "READINGS ROOT",
                              "PROVENANCE", "BASE", "METRICS"]]
    rows += [[u["node"], u["node_name"] or "-", u["tx"][:16], u["height"], u["data_cut"], u["num_examples"],
              u["readings_root"][:16], u["provenance"], u["base_model_hash"][:16],
              all_metrics(u["metrics"]) or "-"]
             for u in lin["updates"]]
    human += ["  " + line for line in table(rows)]
    if model.evaluations:
        human.append(f"held-out evaluations ({len(model.evaluations)}):")
        erows: list[list[Any]] = [["NODE", "TX", "HEIGHT", "DATA CUT", "EXAMPLES", "READINGS ROOT",
                                   "METRICS"]]
        erows += [[e["node"], e["tx"][:16], e["height"], e["data_cut"], e["num_examples"],
                   e["readings_root"][:16], all_metrics(e["metrics"])] for e in model.evaluations]
        human += ["  " + line for line in table(erows)]
    human.append(f"export: fedledger model export {args.dir} --task {model.task} --round {model.round} "
                 f"--run {short_run(model.run)} --out {model.task}-round{model.round}.keras")
    emit(args, lin, human)
    return 0


def committed_model(store: Any, args: argparse.Namespace) -> tuple[Any, Any, Any]:
    """The model `args` names, its run, and its weights re-computed from the ledger's updates."""
    model = select_model(store, args)
    info = find_run(store, run=model.run.hex())
    try:
        weights = model_weights(store, model)
    except ValueError as exc:
        raise StorageError(str(exc)) from exc
    return model, info, weights


def cmd_export(args: argparse.Namespace) -> int:
    out = Path(args.out)
    task = args.task
    check_out_path(out, args.force, ".keras" if task == "humidity" else ".json")
    if args.device and task != "humidity":
        raise ExportError("--device selects a humidity device's own line; fingerprints export all devices")
    with open_node(args.dir) as node:
        model, info, weights = committed_model(node.store, args)
    devices = run_device_list(info)
    device = None
    if args.device:
        if args.device not in devices:
            raise ModelNotFound(f"device {args.device!r} is not in run {short_run(info.run)}'s device list "
                                f"({', '.join(devices)})")
        device = devices.index(args.device)
    write_model(model.task, weights, out, devices, device)
    result: dict[str, Any] = {"path": str(out), "model_hash": model.weights_hash.hex(), "task": model.task,
                              "round": model.round, "run": model.run.hex(), "devices": devices}
    human = [f"wrote {out}: {model.task} round {model.round} of run {short_run(model.run)}, "
             f"model {model.weights_hash.hex()} (re-computed from {len(model.update_ids)} update(s))"]
    if model.task == "humidity":
        from federated.export import line_of

        _, _, personal = line_of(weights, device)
        part = (f"device {args.device}'s own line" if personal else
                "the shared line" + (f" ({args.device}'s row is not trained yet)" if args.device else ""))
        result.update({"device": args.device, "part": "personal" if personal else "shared"})
        human.append(f"{part}: input [[temperature_c, sin(2*pi*h/24), cos(2*pi*h/24), sin(4*pi*h/24), "
                     "cos(4*pi*h/24)]] with h the UTC hour of day -> output [[humidity_pct]]; load with "
                     "keras.models.load_model(path)")
    else:
        human.append("the fingerprints of " + ",".join(devices) + " (means and covariances of the hourly "
                     "feature vectors; format in the file)")
    emit(args, result, human)
    return 0


def ledger_training_rows(store: Any, names: set[str]) -> list[tuple[Any, ...]]:
    """The ledger's training readings (the held-out rule applied) of the named devices, as rows
    keyed by device name: what the device-mean baseline is taken from."""
    rows = []
    for dev in store.devices():
        if dev.name not in names:
            continue
        for r in store.readings(dev.device):
            if split_of(r.timestamp_ms) is Split.TRAIN:
                rows.append((dev.name, r.seq, r.timestamp_ms, r.temperature_c, r.humidity_pct))
    return rows


def load_csv(path: Path) -> list[tuple[Any, ...]]:
    from federated.data import read_csv_rows

    if not path.is_file():
        raise ModelNotFound(f"no CSV file at {path}")
    try:
        rows = read_csv_rows(path)
    except (KeyError, ValueError, OSError, EOFError, UnicodeDecodeError) as exc:
        raise ExportError(f"{path} is not a readings CSV (columns timestamp, epoch_s, device_id, "
                          f"temperature_c, humidity_pct): {type(exc).__name__}: {exc}") from exc
    if not rows:
        raise ExportError(f"{path} has no readings")
    return rows


def cmd_evaluate(args: argparse.Namespace) -> int:
    csv_path = Path(args.csv)
    rows = load_csv(csv_path)
    with open_node(args.dir) as node:
        model, info, weights = committed_model(node.store, args)
        train_rows = ledger_training_rows(node.store, {str(r[0]) for r in rows})
    devices = run_device_list(info)
    trace = model.task == "traceability"
    if trace:
        unknown = sorted({str(r[0]) for r in rows} - set(devices))
        if unknown:
            raise ExportError(f"{csv_path} has readings of devices the model does not know: "
                              f"{', '.join(unknown)} (its classes: {', '.join(devices)})")
    from federated import evaluation, fingerprint, tasks

    try:
        if trace:
            metrics = fingerprint.evaluate(weights, devices, rows, window_hours=args.window_hours)
            if "accuracy" not in metrics:
                raise ValueError("no window of enough readings (fingerprints need one-minute readings, "
                                 f"at least {fingerprint.MIN_READINGS} an hour, of at least 2 devices)")
        else:
            metrics = tasks.evaluate(model.task, weights, rows, classes=devices)
        if train_rows or trace:
            metrics.update(evaluation.baseline(model.task, train_rows, rows, devices if trace else None))
    except ValueError as exc:
        raise ExportError(f"cannot score {csv_path}: {exc}") from exc
    metrics["num_examples"] = float(len(rows))
    classes = devices if trace else []
    result = {"run": model.run.hex(), "task": model.task, "round": model.round,
              "model_hash": model.weights_hash.hex(), "csv": str(csv_path), "metrics": metrics,
              "devices": sorted({str(r[0]) for r in rows}),
              "baseline": ("chance, 1/classes" if classes else
                           "each device's mean humidity over its training readings on this ledger")}
    if trace:
        result["window_hours"] = args.window_hours
    human = [f"{model.task} round {model.round} of run {short_run(model.run)} (model "
             f"{model.weights_hash.hex()[:16]}) on {len(rows)} readings of {len(result['devices'])} "
             f"device(s) in {csv_path}:",
             "  " + (headline(model.task, metrics) or all_metrics(metrics)),
             "  " + all_metrics({k: v for k, v in metrics.items() if k != "num_examples"})]
    if not classes and "baseline_rmse" not in metrics:
        human.append("  no baseline: none of these devices has training readings on this ledger")
    emit(args, result, human)
    return 0


def add_parser(sub: Any) -> None:
    p = sub.add_parser("model", help="committed models: list them, show a lineage, export (.keras or JSON)")
    msub = p.add_subparsers(dest="model_command", metavar="SUBCOMMAND")
    msub.required = True

    def cmd(name: str, help_: str, func: Any, task_required: bool) -> argparse.ArgumentParser:
        c: argparse.ArgumentParser = msub.add_parser(name, help=help_)
        c.add_argument("dir", metavar="DIR", help="node data directory")
        c.add_argument("--task", choices=TASKS, required=task_required,
                       help="the task" + ("" if task_required else " (default: all)"))
        c.add_argument("--run", metavar="RUNPREFIX", help="run id or a unique hex prefix of it (default: "
                       + ("every run" if not task_required else "the task's latest run") + ")")
        c.add_argument("--json", action="store_true", help="print one JSON object")
        c.set_defaults(func=run, model_func=func)
        return c

    cmd("list", "one line per committed model", cmd_list, task_required=False)
    show = cmd("show", "lineage of one committed model: updates, nodes, readings roots, request", cmd_show,
               task_required=True)
    show.add_argument("--round", type=int, metavar="R", help="round (default: the latest committed)")
    exp = cmd("export", "re-compute a committed model from the ledger and write it (humidity: .keras, "
              "traceability: the fingerprints as .json)", cmd_export, task_required=True)
    exp.add_argument("--round", type=int, metavar="R", help="round (default: the latest committed)")
    exp.add_argument("--out", required=True, metavar="FILE",
                     help="where to write the model (humidity FILE.keras, traceability FILE.json)")
    exp.add_argument("--device", metavar="NAME",
                     help="humidity: export this device's own line (default: the shared line)")
    exp.add_argument("--force", action="store_true", help="overwrite FILE.keras if it exists")
    ev = cmd("evaluate", "score a committed model on a readings CSV, next to the baseline", cmd_evaluate,
             task_required=True)
    ev.add_argument("--round", type=int, metavar="R", help="round (default: the latest committed)")
    ev.add_argument("--csv", required=True, metavar="FILE",
                    help="readings CSV(.gz): timestamp, epoch_s, device_id, temperature_c, humidity_pct")
    ev.add_argument("--window-hours", type=_hours, default=1, metavar="H",
                    help="traceability: classify windows of H consecutive hours (default 1, as the ledger's "
                         "held-out scores; the paper's table uses 6)")


def _hours(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 168:
        raise argparse.ArgumentTypeError("must be 1..168 hours")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        return int(args.model_func(args))
    except sqlite3.Error as exc:  # open_node converts these; this is the net for anything it missed
        raise StorageError(f"database error: {exc}") from exc
