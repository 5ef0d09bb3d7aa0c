"""A run as one node sees it (node/flower/training.py keeps one per run on the ledger): the current
coordinator and its SuperLink, this node's state and processes for the run, and the handovers it
follows; and the run config the coordinator's ServerApp gets."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.flower.processes import SuperLinkProcess, SuperNodeProcess
from node.flower.run import RunHandle
from node.flower.supervise import FlowerRuntimeError
from node.flower.takeover import StartPlan
from node.ledger.transactions import TrainRequest


class Superseded(FlowerRuntimeError):
    """A start was overtaken by a handover: the run's processes start again for the new SuperLink."""


@dataclass
class LocalRun:
    run: bytes
    request: TrainRequest
    coordinator: bool  # this node coordinates the run now (the request's signer, or a handover's)
    coordinator_key: bytes
    superlink_address: str  # HOST:PORT of the current coordinator's SuperLink
    superlink_cert: str  # the hex SHA-256 of its certificate, which SuperNodes pin
    # pending, waiting (not admitted to train yet), starting, running, done, failed, stalled,
    # skipped (this node cannot train), left (its membership ended during the run)
    state: str = "pending"
    error: str = ""
    started: float = field(default_factory=time.monotonic)
    progress_at: float = field(default_factory=time.monotonic)
    committed: int = -1  # last committed round seen
    supernode: SuperNodeProcess | None = None
    superlink: SuperLinkProcess | None = None
    flwr_run: RunHandle | None = None
    finish_at: float | None = None  # set at the last commit: when to stop waiting for the final evaluation
    # coordinator: the members' Flower keys registered on its SuperLink, node -> (key, Flower node id)
    registered: dict[bytes, tuple[bytes, int]] = field(default_factory=dict)
    wanted_keys: dict[bytes, bytes] = field(default_factory=dict)  # read on the event loop thread
    keys_checked: float = 0.0
    make_supernode: Callable[[], SuperNodeProcess] | None = None
    restarting: bool = False
    supernode_restarted: float = 0.0
    # Handovers (node/ledger/handover.py, node/flower/takeover.py):
    epoch: int = 0  # handovers applied; a new one restarts this node's Flower processes of the run
    switch: bool = False  # a handover is final: restart on the current coordinator's SuperLink
    self_handover: bool = False  # coordinator whose Flower side died: move its SuperLink first
    handover_sent: dict[int, float] = field(default_factory=dict)  # open round -> when we sent ours
    handover_checked: float = 0.0
    plan: StartPlan | None = None  # coordinator: where its ServerApp starts

    @property
    def active(self) -> bool:
        return self.state in ("starting", "running")


def moved(lr: LocalRun, epoch: int | None) -> bool:
    """A handover was applied since `epoch`: what was started for it is stale."""
    return epoch is not None and lr.epoch != epoch


def run_config(lr: LocalRun, trainer: str, data_dir: Path, node_url: str, resume: int = 0,
               initial: Path | None = None) -> dict[str, Any]:
    """The App's run config for the coordinator's `flwr run` (federated/flower/pyproject.toml);
    a run resumed at round `resume` starts from the FLW1 file `initial`."""
    req, p = lr.request, lr.request.params
    rc: dict[str, Any] = {
        "run": lr.run.hex(),
        "task": req.task,
        "strategy": req.strategy,
        "num-rounds": req.rounds,
        "min-nodes": int(p.get("min_nodes", 2)),
        "fraction-evaluate": float(p.get("fraction_evaluate", 0.0)),
        "trainer": trainer,
        "data-dir": str(data_dir),
        "node-url": node_url,
        "seed": int(p.get("seed", 0)),
    }
    if resume > 0 and initial is not None:
        rc["resume-round"] = resume
        rc["initial-weights"] = str(initial)
    for key, flower_key in (("epochs", "epochs"), ("batch_size", "batch-size"), ("patience", "patience")):
        if key in p:
            rc[flower_key] = int(p[key])
    if "learning_rate" in p:
        rc["learning-rate"] = float(p["learning_rate"])
    for key in ("classes", "devices"):  # the run's device list (federated/personal.py)
        if key in p:
            rc[key] = str(p[key])
    if "beta" in p:
        rc["beta"] = float(p["beta"])
    if "krum_f" in p:
        rc["krum-f"] = int(p["krum_f"])
    if "krum_m" in p:
        rc["krum-m"] = int(p["krum_m"])
    if "clip_norm" in p:
        rc["clip-norm"] = float(p["clip_norm"])
    return rc
