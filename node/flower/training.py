"""The node's part in federated runs: start and stop its Flower processes as the ledger says.

A committed `train_request` starts a run. Every member that trains (authority or participant)
starts its long-lived trainer and a SuperNode that connects to the coordinator's SuperLink named
in the request; the coordinator (the request's signer) also starts that SuperLink and then
`flwr run` with our Flower App. The App's hooks submit the signed updates and commits back to the
nodes (federated/flower/fl_ledger.py). When the run's last round is committed the SuperNodes stop;
trainers stay warm for the next run.

A run outlives its coordinator (node/ledger/handover.py, node/flower/takeover.py): when its open
round expires on the ledger, the authority whose turn it is signs a `run_handover` naming its own
SuperLink; once that is final every node stops what it ran for the run and starts again on the new
SuperLink, and the new coordinator's ServerApp resumes at the open round. A coordinator whose
Flower processes died (its node lives) moves its SuperLink by a handover to itself, once per
round; a node that restarts mid-run takes its part again (a coordinator through such a handover).

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
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from node.flower.auth import supernode_key
from node.flower.localrun import LocalRun, Superseded, moved, run_config
from node.flower.processes import (
    SuperLinkProcess,
    SuperNodeProcess,
    TrainerProcess,
    find_command,
)
from node.flower.registration import register_at_start, registered_at_start, sync_keys
from node.flower.run import RunHandle, run_app, write_connection
from node.flower.supervise import FlowerRuntimeError, ManagedProcess
from node.flower.takeover import StartPlan, handover_due, make_handover, plan_start
from node.flower.tls import pin_superlink, superlink_cert
from node.ledger.blocks import Block
from node.ledger.handover import RunControl, run_control
from node.ledger.keys import NodeKey, short_id
from node.ledger.membership import member_flower_keys
from node.ledger.runs import TRAINING_ROLES
from node.ledger.storage import Store
from node.ledger.transactions import ModelCommit, ModelEval, RunHandover, TrainRequest, Transaction
from node.net.addresses import format_host, local_host
from node.net.ports import LOCALHOST, free_port, port_free

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
SUPERNODE_RESTART_S = 10.0  # a SuperNode that exited during a run is started again at most this often
HANDOVER_CHECK_S = 1.0  # how often an authority checks whether a stalled run is its to take over
HANDOVER_RESEND_S = 10.0  # a handover not final after this long is submitted again (if still due)
COMMIT_WAIT_S = 60.0  # how long a new coordinator waits for its commit of the open round
ADMITTED = "SuperNode ID:"  # what flower-supernode logs once the SuperLink activated it
MAX_UNIX_PATH = 100  # AF_UNIX paths are limited to 108 bytes


def admitted(supernode: SuperNodeProcess) -> bool:
    """The SuperLink accepted the SuperNode (Flower logs the node id it got), since its start."""
    return ADMITTED in supernode.log_since_start()


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


class Training:
    def __init__(
        self,
        node_dir: Path,
        key: NodeKey,
        chain_id: str,
        store: Store,
        node_url: Callable[[], str],
        host: str,
        role: Callable[[], str],
        passphrase: bytes | None = None,
        genesis_flower_keys: dict[bytes, bytes] | None = None,
        submit: Callable[[list[dict[str, Any]]], list[tuple[bytes | None, str | None]]] | None = None,
        superlink_host: str | None = None,
    ) -> None:
        self.dir = node_dir
        self.genesis_flower_keys = dict(genesis_flower_keys or {})
        self.key = key
        self.public = key.public
        self.chain_id = chain_id
        self.store = store
        self.node_url = node_url
        self.host = host
        # The host this node's SuperLink is advertised on (a handover names it): where peers dial.
        self.superlink_host = superlink_host or local_host(host)
        self.role = role
        self.passphrase = passphrase
        self.submit_txs = submit
        self.runs: dict[bytes, LocalRun] = {}
        self.trainer: TrainerProcess | None = None
        self.unavailable = flower_missing()
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="training")
        self._stopping: list[threading.Thread] = []  # processes of earlier SuperLinks being stopped
        self._resume_runs()

    # --- ledger events (event loop thread) -------------------------------------------------------

    def _resume_runs(self) -> None:
        """At start: the runs still in progress on the ledger (a node that restarts mid-run takes its
        part again; a coordinator first moves its SuperLink by a handover to itself). Runs with no
        progress for STALL_S are left alone."""
        now_ms = int(time.time() * 1000)
        for rec in self.store.txs_of_kind(TrainRequest.KIND):
            ctl = run_control(self.store, rec.id)
            if ctl is None or ctl.complete:
                continue
            since = self.store.block_time(ctl.progress_height)
            if since is None or now_ms - since > STALL_S * 1000:
                continue
            lr = self._track(ctl)
            lr.committed = ctl.open_round - 1
            lr.self_handover = lr.coordinator and self.unavailable is None
            log.info("run %s in progress at round %d (coordinator %s)%s", rec.id.hex()[:12], ctl.open_round,
                     short_id(ctl.coordinator), ": moving its SuperLink" if lr.coordinator else "")

    def _track(self, ctl: RunControl) -> LocalRun:
        lr = LocalRun(ctl.run, ctl.request, ctl.coordinator == self.public, ctl.coordinator, ctl.superlink,
                      ctl.superlink_cert)
        self.runs[ctl.run] = lr
        return lr

    def on_block(self, block: Block) -> None:
        for tx in block.parsed_txs:
            if not isinstance(tx, Transaction):
                continue  # a committed block holds none; keeps the type checker honest
            body = tx.body
            if isinstance(body, TrainRequest):
                run = tx.id
                self.runs[run] = LocalRun(run, body, tx.signer == self.public, tx.signer,
                                          str(body.params.get("superlink", "")),
                                          str(body.params.get("superlink_cert", "")))
                log.info("train request %s: %s x%d (%s) by %s", run.hex()[:12], body.task, body.rounds,
                         body.strategy, short_id(tx.signer))
            elif isinstance(body, RunHandover):
                self._on_handover(body)
            elif isinstance(body, ModelCommit):
                lr = self.runs.get(body.run)
                if lr is not None:
                    lr.committed = max(lr.committed, body.round)
                    lr.progress_at = time.monotonic()
                    if body.round >= lr.request.rounds and lr.state not in ("done", "skipped", "left"):
                        lr.state, lr.switch, lr.self_handover = "done", False, False
                        if lr.supernode is None:
                            self._submit(self._finish, lr)
                        else:
                            lr.finish_at = time.monotonic() + FINAL_EVAL_S
            elif isinstance(body, ModelEval) and body.node == self.public:
                lr = self.runs.get(body.run)
                if lr is not None and lr.finish_at is not None and body.round >= lr.request.rounds:
                    # Final on the ledger; the ClientApp's reply to the SuperLink follows right after.
                    lr.finish_at = min(lr.finish_at, time.monotonic() + REPLY_GRACE_S)

    def _on_handover(self, body: RunHandover) -> None:
        lr = self.runs.get(body.run)
        if lr is None:
            ctl = run_control(self.store, body.run)
            if ctl is None:
                return
            lr = self._track(ctl)
            lr.committed = ctl.open_round - 1
        was = lr.coordinator_key
        lr.coordinator_key, lr.coordinator = body.authority, body.authority == self.public
        lr.superlink_address, lr.superlink_cert = body.superlink, body.superlink_cert.hex()
        lr.epoch += 1
        lr.progress_at = time.monotonic()
        lr.self_handover = False
        if lr.state not in ("done", "skipped", "left"):
            lr.switch = True
        what = "moved its SuperLink" if was == body.authority else f"took over from {short_id(was)}"
        log.info("run %s: %s %s at round %d (SuperLink %s)%s", body.run.hex()[:12], short_id(body.authority),
                 what, body.round, body.superlink, " - this node coordinates now" if lr.coordinator else "")

    def tick(self, caught_up: bool, synced: bool | None = None) -> None:
        """Called periodically: start runs once the replica is current (`caught_up`: within a
        couple of blocks of the best peer), follow handovers, take a stalled run over when it is
        this node's turn (only when `synced`: level with the best peer, so that a handover in the
        last blocks is not missed), stop stalled ones."""
        now = time.monotonic()
        role = self.role()
        synced = caught_up if synced is None else synced
        for lr in self.runs.values():
            if lr.finish_at is not None and now >= lr.finish_at:
                lr.finish_at = None
                self._submit(self._finish, lr)
            if synced and role == "authority" and not self.unavailable:
                self._check_handover(lr, now)
            if lr.switch and caught_up:
                lr.switch = False
                self._begin(lr, role, now)
            elif lr.state in ("pending", "waiting") and caught_up and not lr.self_handover:
                if self.store.model_commit(lr.run, lr.request.rounds) is not None:
                    lr.state = "done"  # a run from the past, seen while syncing
                else:
                    self._begin(lr, role, now)
            elif lr.active and role not in TRAINING_ROLES:
                lr.state, lr.error = "left", f"this node's role is now {role}"
                self._submit(self._finish, lr)
            elif (lr.coordinator and lr.state == "running" and lr.superlink is not None
                  and now - lr.keys_checked > KEYS_CHECK_S):
                lr.keys_checked = now
                if not lr.superlink.alive and not lr.self_handover:
                    log.warning("run %s: this coordinator's SuperLink exited; restarting it",
                                lr.run.hex()[:12])
                    lr.self_handover = True
                wanted = self.flower_keys()
                if wanted != lr.wanted_keys:
                    lr.wanted_keys = wanted
                    self._submit(self._sync_keys, lr)  # a member joined or left: follow it
            elif (lr.state == "running" and lr.supernode is not None and not lr.supernode.alive
                  and not lr.restarting and now - lr.supernode_restarted > SUPERNODE_RESTART_S):
                # Refused before the coordinator registered its key (admitted late), or lost its
                # SuperLink: start it again.
                lr.restarting, lr.supernode_restarted = True, now
                self._submit(self._restart_supernode, lr)
            if lr.active and now - lr.progress_at > STALL_S:
                lr.state, lr.error = "stalled", f"no round committed for {STALL_S:.0f} s"
                self._submit(self._finish, lr)

    def _begin(self, lr: LocalRun, role: str, now: float) -> None:
        """Start (or restart, after a handover) this node's part in the run."""
        if role not in TRAINING_ROLES:
            # Re-checked every tick: a node admitted during the run joins its next round.
            lr.state, lr.error = "waiting", f"this node's role ({role}) does not train"
            return
        if self.unavailable:
            lr.state, lr.error = "skipped", self.unavailable
            log.warning("run %s: cannot train here: %s", lr.run.hex()[:12], self.unavailable)
            return
        lr.state, lr.error, lr.progress_at, lr.plan = "starting", "", now, None
        if lr.coordinator:
            lr.wanted_keys = self.flower_keys()
            ctl = run_control(self.store, lr.run)
            if ctl is None or ctl.complete:
                lr.state = "done"
                return
            try:
                lr.plan = plan_start(self.store, self.key, self.chain_id, ctl)
            except ValueError as exc:
                lr.state, lr.error = "failed", str(exc)
                return
            if lr.plan.commit is not None:
                self._send(lr, [lr.plan.commit], f"round {ctl.open_round} from the updates on the ledger")
        epoch = lr.epoch
        self._submit(lambda run: self._start(run, epoch), lr)

    def _check_handover(self, lr: LocalRun, now: float) -> None:
        """Take the run over when it is this authority's turn; move the SuperLink of a run this node
        coordinates when its Flower processes died (a handover to itself, once per round)."""
        if lr.state in ("done", "skipped") or now - lr.handover_checked < HANDOVER_CHECK_S:
            return
        if not (lr.self_handover or not lr.coordinator):
            return
        lr.handover_checked = now
        ctl = run_control(self.store, lr.run)
        if ctl is None or ctl.complete:
            return
        now_ms = int(time.time() * 1000)
        since = self.store.block_time(ctl.progress_height)
        if since is None or now_ms - since > STALL_S * 1000:
            return  # abandoned long ago: a new train request is the way
        sent = lr.handover_sent.get(ctl.open_round)
        if sent is not None and now - sent < HANDOVER_RESEND_S:
            return
        if lr.coordinator:
            if self.store.model_handover(lr.run, ctl.open_round, self.public) is not None:
                lr.self_handover = False
                lr.state, lr.error = "failed", ("its Flower processes stopped twice in round "
                                                f"{ctl.open_round}; the next authority takes the run over "
                                                "once it expires")
                log.error("run %s: %s", lr.run.hex()[:12], lr.error)
                self._submit(self._finish, lr)
                return
        elif not handover_due(self.store, ctl, self.public, now_ms):
            return
        port_text = ctl.superlink.rpartition(":")[2]
        port = int(port_text) if lr.coordinator and port_text.isdigit() else 0
        if not port or not port_free(self.host, port):
            port = free_port(self.host)  # the same port if it is free (a firewall may be set for it)
        cert = superlink_cert(self.dir, self.superlink_host)
        address = f"{format_host(self.superlink_host)}:{port}"
        tx = make_handover(self.key, self.chain_id, ctl, address, cert.sha256)
        lr.handover_sent[ctl.open_round] = now
        why = "its Flower processes stopped" if lr.coordinator else (
            f"coordinator {short_id(ctl.coordinator)} committed no round {ctl.open_round} in time")
        self._send(lr, [tx], f"handover of round {ctl.open_round} to this node ({why})")

    def _send(self, lr: LocalRun, txs: list[dict[str, Any]], what: str) -> None:
        if self.submit_txs is None:
            log.error("run %s: cannot submit the %s: no submit function", lr.run.hex()[:12], what)
            return
        for _, reason in self.submit_txs(txs):
            if reason is not None:
                log.warning("run %s: the %s was refused: %s", lr.run.hex()[:12], what, reason)
                return
        log.info("run %s: submitted the %s", lr.run.hex()[:12], what)

    # --- process management (worker thread) ------------------------------------------------------

    def _submit(self, fn: Callable[[LocalRun], None], lr: LocalRun) -> None:
        with contextlib.suppress(RuntimeError):  # shutting down: close() stops everything anyway
            self._pool.submit(self._logged, fn, lr)

    @staticmethod
    def _logged(fn: Callable[[LocalRun], None], lr: LocalRun) -> None:
        try:
            fn(lr)
        except Exception:  # a worker-thread error must be seen, and must not kill the node
            log.exception("run %s: %s failed", lr.run.hex()[:12], getattr(fn, "__name__", "task"))

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
        """Register exactly the current members' keys on the run's SuperLink (registration.py)."""
        if lr.superlink is None:
            return
        home = self.dir / "flower" / lr.run.hex()[:12] / "flwr-cli"
        lr.registered = sync_keys(home, CONNECTION, dict(lr.wanted_keys), lr.registered, lr.run.hex()[:12])

    def _start_supernode(self, lr: LocalRun, make: Callable[[], SuperNodeProcess],
                         epoch: int | None = None) -> SuperNodeProcess:
        """A SuperNode exits when the SuperLink does not (yet) know its key: the coordinator
        registers the members' keys right after its SuperLink listens. Retry for a while (unless a
        handover moved the run meanwhile)."""
        deadline = time.monotonic() + REGISTRATION_WAIT_S
        while True:
            supernode = make()
            try:
                supernode.start()
            except FlowerRuntimeError:
                if time.monotonic() >= deadline:
                    raise
            settle = time.monotonic() + SUPERNODE_SETTLE_S
            while (supernode.alive and time.monotonic() < settle and not moved(lr, epoch)
                   and not admitted(supernode)):
                time.sleep(0.25)
            if supernode.alive:
                return supernode
            supernode.stop()  # its SuperExec may outlive it
            if moved(lr, epoch):
                raise Superseded("the run moved to another SuperLink")
            if time.monotonic() >= deadline:
                raise FlowerRuntimeError("the SuperLink refused this node's SuperNode key (not registered "
                                         "for a member)")
            log.info("run %s: SuperNode not admitted yet; retrying", lr.run.hex()[:12])
            time.sleep(2.0)

    def _restart_supernode(self, lr: LocalRun) -> None:
        epoch = lr.epoch
        try:
            if lr.make_supernode is not None and lr.supernode is not None and not lr.supernode.alive:
                lr.supernode.stop()
                lr.supernode = self._start_supernode(lr, lr.make_supernode, epoch)
        except Superseded:
            pass
        except FlowerRuntimeError as exc:
            log.warning("run %s: SuperNode restart failed: %s", lr.run.hex()[:12], exc)
        finally:
            lr.restarting = False

    def _start(self, lr: LocalRun, epoch: int) -> None:
        """Start this node's Flower processes for the run as the ledger has it now (after a handover:
        on the new coordinator's SuperLink; the coordinator: its SuperLink and ServerApp too)."""
        if moved(lr, epoch):
            return  # a later handover was applied: its own start follows in the queue
        self._stop_flower(lr)  # whatever ran on an earlier coordinator's SuperLink
        req = lr.request
        try:
            trainer = self._ensure_trainer(req.task)
            link = lr.superlink_address
            host, _, port = link.rpartition(":")
            if not host or not port.isdigit():
                raise FlowerRuntimeError(f"the run names no SuperLink address (got {link!r})")
            pinned_hash = lr.superlink_cert
            if not pinned_hash:
                raise FlowerRuntimeError("train request names no SuperLink certificate (superlink_cert); "
                                         "not connecting to an unauthenticated SuperLink")
            flower_dir = self.dir / "flower" / lr.run.hex()[:12]
            host = host.strip("[]")
            if lr.coordinator:
                # The ledger names the advertised address; the SuperLink binds where the node binds
                # (behind NAT, or on a wildcard, the advertised address is not a local interface).
                cert = superlink_cert(self.dir, host)
                if cert.sha256 != pinned_hash:
                    raise FlowerRuntimeError("this node's SuperLink certificate is not the one the ledger "
                                             "names for this run")
                superlink = SuperLinkProcess(flower_dir / "superlink", int(port), host=self.host,
                                             tls=(cert.cert, cert.key), supernode_auth=True)
                registering = register_at_start(superlink, flower_dir, lr.wanted_keys)
                superlink.start()
                lr.superlink, lr.registered = superlink, {}
                host = local_host(self.host)
                link = f"{format_host(host)}:{port}"
            # Connect only to the SuperLink the authorities finalized: its certificate must hash to
            # the ledger's, and the SuperNode and flwr CLI verify the SuperLink against exactly it.
            pinned = pin_superlink(host, int(port), pinned_hash, flower_dir / "superlink-pinned.crt",
                                   cancelled=lambda: moved(lr, epoch))
            if lr.coordinator:
                write_connection(flower_dir / "flwr-cli", CONNECTION, link, pinned)
                lr.registered = registered_at_start(registering, lr.wanted_keys, lr.run.hex()[:12])
                self._sync_keys(lr)  # only members' SuperNodes may connect (any the start missed)
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
            lr.supernode = self._start_supernode(lr, make, epoch)
            if lr.coordinator:
                self._start_server_app(lr, epoch, trainer, link, pinned, flower_dir)
            if lr.state == "starting" and not moved(lr, epoch):
                lr.state = "running"
            log.info("run %s: Flower processes started (%s, SuperLink %s)", lr.run.hex()[:12],
                     "coordinator" if lr.coordinator else "participant", lr.superlink_address)
        except Superseded:
            log.info("run %s: moved to another SuperLink while starting", lr.run.hex()[:12])
        except (FlowerRuntimeError, OSError, ValueError) as exc:
            if moved(lr, epoch):
                return
            lr.state, lr.error = "failed", str(exc)
            log.error("run %s: could not start: %s", lr.run.hex()[:12], exc)
            self._finish(lr)

    def _start_server_app(self, lr: LocalRun, epoch: int, trainer: TrainerProcess, link: str, pinned: Path,
                          flower_dir: Path) -> None:
        """`flwr run` of the App from where the plan says: a fresh run, or the open round from the
        model committed before it (after the open round's commit from the ledger, when there is one)."""
        plan = lr.plan or StartPlan(0, None)
        resume, weights = plan.resume_round, plan.weights
        if plan.commit is not None:
            deadline = time.monotonic() + COMMIT_WAIT_S
            while lr.committed < resume and time.monotonic() < deadline and not moved(lr, epoch):
                time.sleep(0.1)
            if moved(lr, epoch):
                raise Superseded("the run moved while its open round was being committed")
            if lr.committed >= resume:
                if plan.committed is None:
                    return  # that commit completed the run
                resume, weights = resume + 1, plan.committed
            else:
                log.warning("run %s: the commit of round %d from the ledger's updates is not final after "
                            "%.0f s; asking the nodes for it again", lr.run.hex()[:12], resume, COMMIT_WAIT_S)
        initial = None
        if resume > 0:
            assert weights is not None
            initial = flower_dir / f"resume-{resume}.flw"
            initial.write_bytes(weights)
        config = run_config(lr, trainer.address, self.dir, self.node_url(), resume, initial)
        handle = run_app(app_dir(), link, config, flower_dir / "flwr-cli", name=CONNECTION,
                         root_certificates=pinned, on_exit=lambda h: self._on_flwr_exit(lr, h, epoch))
        lr.flwr_run = handle
        if resume > 0:
            log.info("run %s: ServerApp resumes at round %d", lr.run.hex()[:12], resume)

    def _on_flwr_exit(self, lr: LocalRun, handle: RunHandle, epoch: int) -> None:
        """`flwr run` exited (called on its watcher thread): its final status (asking the SuperLink
        takes seconds, more when it is gone) is fetched here, not on the worker, which may be
        starting the run's processes again meanwhile."""
        if handle is not lr.flwr_run or moved(lr, epoch):
            return  # a run of an earlier SuperLink, stopped on purpose
        try:
            status = handle.wait(timeout=60)
        except FlowerRuntimeError:
            status = 1
        self._submit(lambda run: self._on_run_exit(run, handle, epoch, status), lr)

    def _on_run_exit(self, lr: LocalRun, handle: RunHandle, epoch: int, status: int) -> None:
        if handle is not lr.flwr_run or moved(lr, epoch):
            return  # a run of an earlier SuperLink, stopped on purpose
        if status != 0 and lr.active:
            if lr.coordinator and lr.committed < lr.request.rounds:
                # Its SuperLink died, or the ServerApp failed: move the SuperLink by a handover to
                # this node, once per round (tick); the restart resumes at the open round.
                lr.error = f"Flower run ended: {handle.failure()}"
                log.warning("run %s: %s; restarting this coordinator's Flower processes", lr.run.hex()[:12],
                            lr.error)
                lr.self_handover = True
                return
            lr.state, lr.error = "failed", handle.failure()
            log.error("run %s failed: %s", lr.run.hex()[:12], lr.error)
        self._finish(lr)

    def _stop_flower(self, lr: LocalRun) -> None:
        """Stop every Flower process of the run on this node, before it starts on another SuperLink:
        in the background (a SuperNode takes seconds to stop), except the SuperLink of this node as
        the run's coordinator, whose port the new one may take."""
        handle, lr.flwr_run = lr.flwr_run, None
        procs: list[ManagedProcess] = [p for p in (lr.supernode, lr.superlink) if p is not None]
        if lr.coordinator and lr.superlink is not None:
            # Its port is taken again at once. A SuperLink that died left a SuperExec and ServerApp
            # that have nothing left to do: killed, not asked.
            if lr.superlink.alive:
                lr.superlink.stop()
            else:
                lr.superlink.kill()
            procs.remove(lr.superlink)
        lr.supernode = lr.superlink = None

        def stop() -> None:
            if handle is not None and not handle.done:
                handle.stop()
            for proc in procs:
                proc.stop()

        if handle is not None or procs:
            thread = threading.Thread(target=stop, name="training-stop", daemon=True)
            thread.start()
            self._stopping = [t for t in self._stopping if t.is_alive()] + [thread]

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
                 "coordinator": lr.coordinator, "coordinator_id": short_id(lr.coordinator_key),
                 "superlink": lr.superlink_address, "handovers": lr.epoch,
                 "committed_round": lr.committed, "rounds": lr.request.rounds}
                for lr in self.runs.values()
            ],
        }

    def close(self) -> None:
        """Stop every process this node started (blocking; called at node shutdown)."""
        self._pool.shutdown(wait=True, cancel_futures=True)
        for thread in self._stopping:
            thread.join()
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
