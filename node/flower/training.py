"""The node's part in federated runs: start and stop its Flower processes as the ledger says.

A committed `train_request` starts a run. Every member that trains (authority or participant)
starts its long-lived trainer and a SuperNode that connects to the coordinator's SuperLink named
in the request; the coordinator (the request's signer) also starts that SuperLink and then
`flwr run` with our Flower App. The App's hooks submit the signed updates and commits back to the
nodes (federated/flower/fl_ledger.py). When the run's last round is committed the SuperNodes stop;
trainers stay warm for the next run.

Everything here is process management (node/flower/processes.py, supervise.py and run.py, which import
neither flwr nor TensorFlow) done on one worker thread, so the event loop never blocks on a process start.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from node.flower.auth import supernode_key
from node.flower.processes import SuperLinkProcess, SuperNodeProcess, TrainerProcess, find_command
from node.flower.run import RunHandle, register_supernodes, run_app, unregister_supernodes, write_connection
from node.flower.supervise import FlowerRuntimeError, ManagedProcess
from node.flower.tls import pin_superlink, superlink_cert
from node.ledger.blocks import Block
from node.ledger.keys import short_id
from node.ledger.membership import member_flower_keys
from node.ledger.runs import TRAINING_ROLES
from node.ledger.storage import Store
from node.ledger.transactions import ModelCommit, ModelEval, TrainRequest, Transaction
from node.net.addresses import format_host, local_host
from node.net.ports import LOCALHOST, free_port

log = logging.getLogger("fedledger.training")

PASSPHRASE_ENV = "FEDLEDGER_PASSPHRASE"  # read by federated/flower/fl_ledger.py
# After the last commit the SuperNode stays up for the run's final evaluate step, in which this
# node signs its held-out score of the last model (a model_eval), for at most this long.
FINAL_EVAL_S = 90.0
REPLY_GRACE_S = 5.0
STALL_S = 900.0  # no new commit of an active run for this long: stop its processes
CONNECTION = "fedledger"  # the coordinator's flwr CLI connection to its SuperLink
KEYS_CHECK_S = 2.0  # how often a coordinator compares its registered SuperNode keys with the ledger
REGISTRATION_WAIT_S = 300.0  # how long a SuperNode is retried while its key is not registered yet
SUPERNODE_SETTLE_S = 6.0  # an unregistered SuperNode exits within this after its port opens
SYNC_SLACK = 2  # start runs only when within this many blocks of the best peer
MAX_UNIX_PATH = 100  # AF_UNIX paths are limited to 108 bytes


def flower_missing() -> str | None:
    """Why this environment cannot train, or None."""
    try:
        find_command("flower-supernode")
    except FlowerRuntimeError:
        return 'Flower is not installed: pip install -e ".[federated]"'
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        return 'TensorFlow/Keras are not installed: pip install -e ".[federated]"'
    return None


def app_dir() -> Path:
    # find_spec on the package would import federated.flower's parent only; the App is a directory.
    spec = importlib.util.find_spec("federated")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "flower"


@dataclass
class LocalRun:
    run: bytes
    request: TrainRequest
    coordinator: bool
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


class Training:
    def __init__(
        self,
        node_dir: Path,
        public_key: bytes,
        store: Store,
        node_url: Callable[[], str],
        host: str,
        role: Callable[[], str],
        passphrase: bytes | None = None,
        genesis_flower_keys: dict[bytes, bytes] | None = None,
    ) -> None:
        self.dir = node_dir
        self.genesis_flower_keys = dict(genesis_flower_keys or {})
        self.public = public_key
        self.store = store
        self.node_url = node_url
        self.host = host
        self.role = role
        self.passphrase = passphrase
        self.runs: dict[bytes, LocalRun] = {}
        self.trainer: TrainerProcess | None = None
        self.unavailable = flower_missing()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="training")

    # --- ledger events (event loop thread) -------------------------------------------------------

    def on_block(self, block: Block) -> None:
        for tx in block.parsed_txs:
            if not isinstance(tx, Transaction):
                continue  # a committed block holds none; keeps the type checker honest
            body = tx.body
            if isinstance(body, TrainRequest):
                run = tx.id
                self.runs[run] = LocalRun(run, body, coordinator=tx.signer == self.public)
                log.info("train request %s: %s x%d (%s) by %s", run.hex()[:12], body.task, body.rounds,
                         body.strategy, short_id(tx.signer))
            elif isinstance(body, ModelCommit):
                lr = self.runs.get(body.run)
                if lr is not None:
                    lr.committed = max(lr.committed, body.round)
                    lr.progress_at = time.monotonic()
                    if body.round >= lr.request.rounds and lr.state in ("pending", "waiting", "starting",
                                                                        "running"):
                        lr.state = "done"
                        if lr.supernode is None:
                            self._submit(self._finish, lr)
                        else:
                            lr.finish_at = time.monotonic() + FINAL_EVAL_S
            elif isinstance(body, ModelEval) and body.node == self.public:
                lr = self.runs.get(body.run)
                if lr is not None and lr.finish_at is not None and body.round >= lr.request.rounds:
                    # Final on the ledger; the ClientApp's reply to the SuperLink follows right after.
                    lr.finish_at = min(lr.finish_at, time.monotonic() + REPLY_GRACE_S)

    def tick(self, caught_up: bool) -> None:
        """Called periodically: start runs once the replica is current, stop stalled ones."""
        now = time.monotonic()
        role = self.role()
        for lr in self.runs.values():
            if lr.finish_at is not None and now >= lr.finish_at:
                lr.finish_at = None
                self._submit(self._finish, lr)
            if lr.state in ("pending", "waiting") and caught_up:
                last = self.store.model_commit(lr.run, lr.request.rounds)
                if last is not None:
                    lr.state = "done"  # a run from the past, seen while syncing
                elif role not in TRAINING_ROLES:
                    # Re-checked every tick: a node admitted during the run joins its next round.
                    lr.state, lr.error = "waiting", f"this node's role ({role}) does not train"
                elif self.unavailable:
                    lr.state, lr.error = "skipped", self.unavailable
                    log.warning("run %s: cannot train here: %s", lr.run.hex()[:12], self.unavailable)
                else:
                    lr.state, lr.error, lr.progress_at = "starting", "", now
                    if lr.coordinator:
                        lr.wanted_keys = self.flower_keys()
                    self._submit(self._start, lr)
            elif lr.state in ("starting", "running") and role not in TRAINING_ROLES:
                lr.state, lr.error = "left", f"this node's role is now {role}"
                self._submit(self._finish, lr)
            elif (lr.coordinator and lr.state == "running" and lr.superlink is not None
                  and now - lr.keys_checked > KEYS_CHECK_S):
                lr.keys_checked = now
                wanted = self.flower_keys()
                if wanted != lr.wanted_keys:
                    lr.wanted_keys = wanted
                    self._submit(self._sync_keys, lr)  # a member joined or left: follow it
            elif (lr.state == "running" and lr.supernode is not None and not lr.supernode.alive
                  and lr.committed < 1 and now - lr.started < REGISTRATION_WAIT_S and not lr.restarting):
                # Admitted late: the SuperLink refused its key before the coordinator registered it.
                lr.restarting = True
                self._submit(self._restart_supernode, lr)
            if lr.state in ("starting", "running") and now - lr.progress_at > STALL_S:
                lr.state, lr.error = "stalled", f"no round committed for {STALL_S:.0f} s"
                self._submit(self._finish, lr)

    # --- process management (worker thread) ------------------------------------------------------

    def _submit(self, fn: Callable[[LocalRun], None], lr: LocalRun) -> None:
        with contextlib.suppress(RuntimeError):  # shutting down: close() stops everything anyway
            self._pool.submit(self._logged, fn, lr)

    @staticmethod
    def _logged(fn: Callable[[LocalRun], None], lr: LocalRun) -> None:
        try:
            fn(lr)
        except Exception:  # a worker-thread error must be seen, and must not kill the node
            log.exception("run %s: %s failed", lr.run.hex()[:12], fn.__name__)

    def _env(self) -> dict[str, str]:
        return {PASSPHRASE_ENV: self.passphrase.decode()} if self.passphrase else {}

    def _ensure_trainer(self, task: str) -> TrainerProcess:
        if self.trainer is not None and self.trainer.alive:
            return self.trainer
        workdir = self.dir / "trainer"
        workdir.mkdir(exist_ok=True)
        sock = workdir / "trainer.sock"
        if len(str(sock)) > MAX_UNIX_PATH:
            digest = hashlib.sha256(str(workdir).encode()).hexdigest()[:16]
            sock = Path(tempfile.gettempdir()) / f"fedledger-trainer-{digest}.sock"
        trainer = TrainerProcess(workdir, socket_path=sock, warm=[task])
        trainer.start(ready_timeout=180.0)
        self.trainer = trainer
        return trainer

    def flower_keys(self) -> dict[bytes, bytes]:
        """The Flower keys of the members that train now, from the ledger."""
        return member_flower_keys(self.store.membership_history(), self.store.members(),
                                  self.genesis_flower_keys, TRAINING_ROLES)

    def _sync_keys(self, lr: LocalRun) -> None:
        """Register exactly the current members' keys on the run's SuperLink: a new member's is
        added, a removed member's is unregistered (its SuperNode is refused from then on)."""
        if lr.superlink is None:
            return
        home = self.dir / "flower" / lr.run.hex()[:12] / "flwr-cli"
        wanted = dict(lr.wanted_keys)
        registered = dict(lr.registered)
        gone = [node for node, (key, _) in registered.items() if wanted.get(node) != key]
        if gone:
            unregister_supernodes(home, CONNECTION, [registered[node][1] for node in gone])
            for node in gone:
                del registered[node]
            lr.registered = dict(registered)
            log.info("run %s: unregistered the SuperNode keys of %s", lr.run.hex()[:12],
                     ", ".join(short_id(n) for n in gone))
        new = [node for node in wanted if node not in registered]
        if new:
            ids = register_supernodes(home, CONNECTION, [wanted[node] for node in new])
            registered.update({node: (wanted[node], node_id) for node, node_id in zip(new, ids, strict=True)})
            lr.registered = dict(registered)
            log.info("run %s: registered the SuperNode keys of %s", lr.run.hex()[:12],
                     ", ".join(short_id(n) for n in new))

    def _start_supernode(self, lr: LocalRun, make: Callable[[], SuperNodeProcess]) -> SuperNodeProcess:
        """A SuperNode exits when the SuperLink does not (yet) know its key: the coordinator
        registers the members' keys right after its SuperLink listens. Retry for a while."""
        deadline = time.monotonic() + REGISTRATION_WAIT_S
        while True:
            supernode = make()
            try:
                supernode.start()
            except FlowerRuntimeError:
                if time.monotonic() >= deadline:
                    raise
            settle = time.monotonic() + SUPERNODE_SETTLE_S
            while supernode.alive and time.monotonic() < settle:
                time.sleep(0.25)
            if supernode.alive:
                return supernode
            supernode.stop()  # its SuperExec may outlive it
            if time.monotonic() >= deadline:
                raise FlowerRuntimeError("the SuperLink refused this node's SuperNode key (not registered "
                                         "for a member)")
            log.info("run %s: SuperNode not admitted yet; retrying", lr.run.hex()[:12])
            time.sleep(2.0)

    def _restart_supernode(self, lr: LocalRun) -> None:
        try:
            if lr.make_supernode is not None and lr.supernode is not None and not lr.supernode.alive:
                lr.supernode.stop()
                lr.supernode = self._start_supernode(lr, lr.make_supernode)
        finally:
            lr.restarting = False

    def _start(self, lr: LocalRun) -> None:
        req = lr.request
        try:
            trainer = self._ensure_trainer(req.task)
            link = str(req.params.get("superlink", ""))
            host, _, port = link.rpartition(":")
            if not host or not port.isdigit():
                raise FlowerRuntimeError(f"train request names no SuperLink address (got {link!r})")
            pinned_hash = str(req.params.get("superlink_cert", ""))
            if not pinned_hash:
                raise FlowerRuntimeError("train request names no SuperLink certificate (superlink_cert); "
                                         "not connecting to an unauthenticated SuperLink")
            flower_dir = self.dir / "flower" / lr.run.hex()[:12]
            if lr.coordinator:
                # The request names the advertised address; the SuperLink binds where the node binds
                # (behind NAT, or on a wildcard, the advertised address is not a local interface).
                cert = superlink_cert(self.dir, host)
                if cert.sha256 != pinned_hash:
                    raise FlowerRuntimeError("this node's SuperLink certificate is not the one its train "
                                             "request names")
                superlink = SuperLinkProcess(flower_dir / "superlink", int(port), host=self.host,
                                             tls=(cert.cert, cert.key), supernode_auth=True)
                superlink.start()
                lr.superlink = superlink
                host = local_host(self.host)
                link = f"{format_host(host)}:{port}"
            # Connect only to the SuperLink the authorities finalized: its certificate must hash to
            # the request's, and the SuperNode and flwr CLI verify the SuperLink against exactly it.
            pinned = pin_superlink(host, int(port), pinned_hash, flower_dir / "superlink-pinned.crt")
            if lr.coordinator:
                write_connection(flower_dir / "flwr-cli", CONNECTION, link, pinned)
                self._sync_keys(lr)  # only members' SuperNodes may connect
            node_config = {"data-dir": str(self.dir), "node-url": self.node_url(), "trainer": trainer.address}
            auth = supernode_key(self.dir)

            def make() -> SuperNodeProcess:
                # The SuperNode dials out to the SuperLink; its own Runtime API, where its
                # ClientApps pull the round's message and push the reply, is for this host only.
                sn = SuperNodeProcess(flower_dir / "supernode", link, free_port(LOCALHOST), node_config,
                                      host=LOCALHOST, root_certificates=pinned, auth_key=auth.private)
                sn.extra_env = self._env()
                return sn

            lr.make_supernode = make
            lr.supernode = self._start_supernode(lr, make)
            if lr.coordinator:
                lr.flwr_run = run_app(app_dir(), link, self._run_config(lr, trainer), flower_dir / "flwr-cli",
                                      name=CONNECTION, root_certificates=pinned,
                                      on_exit=lambda handle: self._submit(self._on_run_exit, lr))
            if lr.state == "starting":
                lr.state = "running"
            log.info("run %s: Flower processes started (%s)", lr.run.hex()[:12],
                     "coordinator" if lr.coordinator else "participant")
        except (FlowerRuntimeError, OSError, ValueError) as exc:
            lr.state, lr.error = "failed", str(exc)
            log.error("run %s: could not start: %s", lr.run.hex()[:12], exc)
            self._finish(lr)

    def _run_config(self, lr: LocalRun, trainer: TrainerProcess) -> dict[str, Any]:
        req, p = lr.request, lr.request.params
        rc: dict[str, Any] = {
            "run": lr.run.hex(),
            "task": req.task,
            "strategy": req.strategy,
            "num-rounds": req.rounds,
            "min-nodes": int(p.get("min_nodes", 2)),
            "fraction-evaluate": float(p.get("fraction_evaluate", 0.0)),
            "trainer": trainer.address,
            "data-dir": str(self.dir),
            "node-url": self.node_url(),
            "seed": int(p.get("seed", 0)),
        }
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
        if "clip_norm" in p:
            rc["clip-norm"] = float(p["clip_norm"])
        return rc

    def _on_run_exit(self, lr: LocalRun) -> None:
        handle = lr.flwr_run
        if handle is None:
            return
        status = handle.wait(timeout=60)
        if status != 0 and lr.state in ("starting", "running"):
            lr.state, lr.error = "failed", handle.failure()
            log.error("run %s failed: %s", lr.run.hex()[:12], lr.error)
        self._finish(lr)

    def _finish(self, lr: LocalRun) -> None:
        """Stop the run's SuperNode, and on the coordinator its SuperLink once `flwr run` ended."""
        if lr.supernode is not None:
            lr.supernode.stop()
            lr.supernode = None
        if lr.superlink is not None and (lr.flwr_run is None or lr.flwr_run.done or lr.state != "done"):
            if lr.flwr_run is not None and not lr.flwr_run.done:
                lr.flwr_run.stop()
            lr.superlink.stop()
            lr.superlink = None

    # --- views and shutdown ------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        return {
            "available": self.unavailable is None,
            "unavailable": self.unavailable,
            "trainer": bool(self.trainer and self.trainer.alive),
            "runs": [
                {"run": lr.run.hex(), "task": lr.request.task, "state": lr.state, "error": lr.error,
                 "coordinator": lr.coordinator, "committed_round": lr.committed, "rounds": lr.request.rounds}
                for lr in self.runs.values()
            ],
        }

    def close(self) -> None:
        """Stop every process this node started (blocking; called at node shutdown)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        procs: list[ManagedProcess] = []
        for lr in self.runs.values():
            if lr.flwr_run is not None and not lr.flwr_run.done:
                lr.flwr_run.stop()
            procs += [p for p in (lr.supernode, lr.superlink) if p is not None]
        if self.trainer is not None:
            procs.append(self.trainer)
        for proc in procs:
            try:
                proc.stop()
            except OSError as exc:  # already gone
                log.debug("stopping %s: %s", proc.name, exc)
