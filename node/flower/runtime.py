"""Starting and stopping the Flower deployment processes of a node (and its trainer).

Runs in the node process, so it imports neither flwr nor TensorFlow: it only starts commands.

* ``SuperLinkProcess``   -- ``flower-superlink`` (coordinator only; one HTTP port for Fleet, Control
  and Runtime APIs).
* ``SuperNodeProcess``   -- ``flower-supernode`` with this node's ``--node-config``.
* ``TrainerProcess``     -- ``python -m federated.trainer --socket PATH`` (Keras stays loaded there).
* ``run_app``            -- ``flwr run APP_DIR NAME --stream --run-config ...`` as a child process.
* ``free_port``          -- a free TCP port on 127.0.0.1.

Every child gets its own session (process group), its own ``FLWR_HOME``, a log file in its workdir,
``FLWR_DISABLE_UPDATE_CHECK=1``, ``FLWR_TELEMETRY_ENABLED=0``, ``TF_CPP_MIN_LOG_LEVEL=3`` and the
venv's bin directory first on ``PATH`` (Flower spawns flower-superexec, flwr-serverapp and
flwr-clientapp by name). ``stop()`` sends SIGTERM to the process, waits for it and every descendant
it has been seen with (SuperLink's SuperExec and the ServerApp run in their own session, so the
process group is not enough), then SIGKILLs whatever is left. Stop SuperNodes before the SuperLink
(``stop_all`` does).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

DEFAULT_BIN_DIR = Path(sys.executable).parent  # the venv's bin (not resolved: keep the venv)
LOCALHOST = "127.0.0.1"


class FlowerRuntimeError(RuntimeError):
    """A command is missing, or a process failed to start or exited early (message has its log tail)."""


# --- helpers ---------------------------------------------------------------------------------------


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free right now (another process may still take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(host: str, port: int) -> bool:
    """True when `port` can be bound on `host` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def toml_value(value: Any) -> str:
    """One TOML value (what --node-config and --run-config take)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        s = str(value)
        return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    raise TypeError(f"cannot express {value!r} as a Flower config value (str, int, float, bool)")


def config_arg(config: Mapping[str, Any]) -> str:
    """``{"data-dir": "/x", "n": 1}`` -> ``data-dir="/x" n=1`` (Flower's space-separated TOML pairs).
    Keys must be bare TOML keys; values without spaces are safest (Flower splits on spaces)."""
    parts = []
    for key, value in config.items():
        if not key or not all(c.isalnum() or c in "-_" for c in key):
            raise ValueError(f"config key {key!r} must be a bare TOML key ([A-Za-z0-9_-]+)")
        text = toml_value(value)
        if " " in text:
            raise ValueError(f"config value for {key!r} must not contain spaces: {text}")
        parts.append(f"{key}={text}")
    return " ".join(parts)


def flower_env(
    flwr_home: Path, bin_dir: Path = DEFAULT_BIN_DIR, extra: Mapping[str, str] | None = None
) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "FLWR_HOME": str(flwr_home),
            "FLWR_DISABLE_UPDATE_CHECK": "1",
            "FLWR_TELEMETRY_ENABLED": "0",
            "TF_CPP_MIN_LOG_LEVEL": "3",
            "PYTHONUNBUFFERED": "1",
            "PATH": os.pathsep.join([str(bin_dir), env.get("PATH", "")]),
        }
    )
    env.update(extra or {})
    return env


def find_command(name: str, bin_dir: Path = DEFAULT_BIN_DIR) -> str:
    found = shutil.which(name, path=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]))
    if found is None:
        raise FlowerRuntimeError(
            f"command {name!r} not found in {bin_dir} or on PATH; install Flower into this environment: "
            f'{Path(sys.executable).parent / "pip"} install "flwr==1.41.*"'
        )
    return found


def _proc_stats() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, starttime) of every live (non-zombie) process, from Linux /proc."""
    out: dict[int, tuple[int, int, str]] = {}
    proc = Path("/proc")
    if not proc.is_dir():
        return out
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # after the ")" that closes the command name: state ppid pgrp session ... starttime (22nd field)
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) < 20 or fields[0] in ("Z", "X"):
            continue
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[19])
    return out


def group_pids(pgid: int) -> list[int]:
    """Live PIDs in process group `pgid` (Linux /proc; empty elsewhere)."""
    return sorted(pid for pid, (_, g, _) in _proc_stats().items() if g == pgid)


def descendants(pid: int) -> dict[int, str]:
    """Live descendants of `pid` (children, grandchildren, ...) -> their start time. Flower's
    SuperExec runs in its own session, so the process group alone does not cover the tree."""
    stats = _proc_stats()
    children: dict[int, list[int]] = {}
    for p, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(p)
    out: dict[int, str] = {}
    todo = list(children.get(pid, []))
    while todo:
        p = todo.pop()
        if p not in out:
            out[p] = stats[p][2]
            todo.extend(children.get(p, []))
    return out


def alive_pids(tracked: dict[int, str]) -> list[int]:
    """The tracked (pid -> start time) processes that still run (a reused PID does not count)."""
    stats = _proc_stats()
    return sorted(p for p, start in tracked.items() if p in stats and stats[p][2] == start)


# --- managed processes -----------------------------------------------------------------------------


class ManagedProcess:
    """A child in its own session with a log file; see the module docstring."""

    name = "process"

    def __init__(self, workdir: Path | str, bin_dir: Path = DEFAULT_BIN_DIR) -> None:
        self.workdir = Path(workdir)
        self.bin_dir = Path(bin_dir)
        self.flwr_home = self.workdir / "flwr-home"
        self.log_path = self.workdir / f"{self.name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at: float | None = None
        self._tree: dict[int, str] = {}  # descendants seen so far (pid -> start time)
        self.extra_env: dict[str, str] = {}  # added to the child's environment (and its children's)

    # subclasses
    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        return True

    def listen_ports(self) -> list[tuple[str, int]]:
        """Ports the process will listen on: they must be free before it starts (otherwise the
        readiness check would see someone else's listener; a second SuperLink on a taken port
        does not even exit)."""
        return []

    def start(self, ready_timeout: float = 60.0) -> ManagedProcess:
        if self.alive:
            return self
        for host, port in self.listen_ports():
            if not port_free(host, port):
                raise FlowerRuntimeError(f"{self.name}: port {host}:{port} is already in use")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with open(self.log_path, "ab") as out:
            out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
            out.flush()
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=flower_env(self.flwr_home, self.bin_dir, self.extra_env),
                start_new_session=True,  # own process group: stop() can reap Flower's grandchildren
            )
        self.started_at = time.monotonic()
        deadline = time.monotonic() + ready_timeout
        while True:
            if self.proc.poll() is not None:
                raise FlowerRuntimeError(
                    f"{self.name} exited early with status {self.proc.returncode}; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            if self.is_ready():
                return self
            if time.monotonic() > deadline:
                self.stop()
                raise FlowerRuntimeError(
                    f"{self.name} not ready after {ready_timeout:.0f} s; log {self.log_path}:\n"
                    + log_tail(self.log_path)
                )
            time.sleep(0.1)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _refresh_tree(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._tree.update(descendants(self.proc.pid))

    def remaining_pids(self) -> list[int]:
        """This process's group and every descendant seen so far that still runs."""
        if self.proc is None:
            return []
        self._refresh_tree()
        return sorted(set(group_pids(self.proc.pid)) | set(alive_pids(self._tree)))

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM the process, wait up to `timeout` for it and all its descendants (Flower's SuperExec
        and app processes, some in their own sessions) to exit, then SIGKILL what is left."""
        if self.proc is None:
            return None
        pgid = self.proc.pid
        self._refresh_tree()
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self._refresh_tree()  # children started while shutting down
            if self.proc.poll() is not None and not self.remaining_pids():
                break
            time.sleep(0.1)
        if self.proc.poll() is None or self.remaining_pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
            for pid in alive_pids(self._tree):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(5)
        return self.proc.returncode

    def log_tail(self, lines: int = 25) -> str:
        return log_tail(self.log_path, lines)

    def __enter__(self) -> ManagedProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class SuperLinkProcess(ManagedProcess):
    """``flower-superlink --insecure --port P --disable-runtime-dependency-installation``."""

    name = "superlink"

    def __init__(
        self,
        workdir: Path | str,
        port: int,
        host: str = LOCALHOST,
        database: Path | str | None = None,
        bin_dir: Path = DEFAULT_BIN_DIR,
    ) -> None:
        super().__init__(workdir, bin_dir)
        self.host = host
        self.port = int(port)
        self.database = database

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        argv = [
            find_command("flower-superlink", self.bin_dir),
            "--insecure",
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.database is not None:
            argv += ["--database", str(self.database)]
        return argv

    def is_ready(self) -> bool:
        return port_open(self.host, self.port)

    def listen_ports(self) -> list[tuple[str, int]]:
        return [(self.host, self.port)]


class SuperNodeProcess(ManagedProcess):
    """``flower-supernode --insecure --superlink ADDR --port Q --node-config '...'``.

    `node_config` reaches the ClientApp as ``context.node_config``; values are str/int/float/bool
    without spaces. Ready when its own Runtime API port listens (registration with the SuperLink
    follows within a poll interval; the ServerApp waits for nodes with a deadline anyway).
    """

    name = "supernode"

    def __init__(
        self,
        workdir: Path | str,
        superlink_address: str,
        port: int,
        node_config: Mapping[str, Any],
        host: str = LOCALHOST,
        bin_dir: Path = DEFAULT_BIN_DIR,
    ) -> None:
        super().__init__(workdir, bin_dir)
        self.superlink_address = superlink_address
        self.host = host
        self.port = int(port)
        self.node_config = dict(node_config)
        config_arg(self.node_config)  # validate now, not at start

    def command(self) -> list[str]:
        return [
            find_command("flower-supernode", self.bin_dir),
            "--insecure",
            "--superlink",
            self.superlink_address,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--node-config",
            config_arg(self.node_config),
        ]

    def is_ready(self) -> bool:
        return port_open(self.host, self.port)

    def listen_ports(self) -> list[tuple[str, int]]:
        return [(self.host, self.port)]


class TrainerProcess(ManagedProcess):
    """``python -m federated.trainer --socket WORKDIR/trainer.sock`` (the node's Keras process).

    Ready when it answers a ping (it prints ``ready`` after importing nothing heavy; Keras is loaded
    on the first request, or at start with `warm`)."""

    name = "trainer"

    def __init__(
        self,
        workdir: Path | str,
        socket_path: Path | str | None = None,
        warm: Sequence[str] = (),
        rows_dir: Path | str | None = None,
        bin_dir: Path = DEFAULT_BIN_DIR,
        python: str | None = None,
    ) -> None:
        super().__init__(workdir, bin_dir)
        self.socket_path = Path(socket_path) if socket_path else self.workdir / "trainer.sock"
        self.warm = list(warm)
        self.rows_dir = rows_dir
        self.python = python or sys.executable

    @property
    def address(self) -> str:
        return f"unix:{self.socket_path}"

    def command(self) -> list[str]:
        argv = [self.python, "-m", "federated.trainer", "--socket", str(self.socket_path)]
        for task in self.warm:
            argv += ["--warm", task]
        if self.rows_dir is not None:
            argv += ["--rows-dir", str(self.rows_dir)]
        return argv

    def is_ready(self) -> bool:
        if not self.socket_path.exists():
            return False
        from federated.trainer import TrainerClient, TrainerError  # TF-free

        try:
            with TrainerClient(self.socket_path, timeout=2.0) as client:
                client.ping()
            return True
        except TrainerError:
            return False


def stop_all(
    supernodes: Iterable[ManagedProcess] = (),
    superlink: ManagedProcess | None = None,
    others: Iterable[ManagedProcess] = (),
    timeout: float = 10.0,
) -> None:
    """SuperNodes first (in parallel), then the SuperLink, then the rest (trainers)."""

    def stop_parallel(procs: Iterable[ManagedProcess]) -> None:
        threads = [threading.Thread(target=p.stop, args=(timeout,)) for p in procs]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    stop_parallel(supernodes)
    if superlink is not None:
        superlink.stop(timeout)
    stop_parallel(others)


# --- flwr run --------------------------------------------------------------------------------------


def write_connection(flwr_home: Path | str, name: str, superlink_address: str, insecure: bool = True) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection (the default)."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    path.write_text(
        "[superlink]\n"
        f"default = {toml_value(name)}\n\n"
        f"[superlink.{name}]\n"
        f"address = {toml_value(superlink_address)}\n"
        f"insecure = {toml_value(insecure)}\n",
        encoding="utf-8",
    )
    return path


class RunHandle:
    """A running ``flwr run ... --stream``; its output goes to `log_path`.

    Flower's CLI exits 0 even when the ServerApp raised (the stream just ends), so the exit status
    of a run is derived from both the CLI's exit code and the run's final status on the SuperLink
    (``flwr ls --run-id ID --format json``): ``wait()`` returns 0 only for ``finished:completed``.
    """

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        log_path: Path,
        argv: list[str],
        flwr_home: Path,
        connection: str,
        bin_dir: Path = DEFAULT_BIN_DIR,
    ) -> None:
        self.proc = proc
        self.log_path = log_path
        self.argv = argv
        self.flwr_home = flwr_home
        self.connection = connection
        self.bin_dir = bin_dir
        self.started_at = time.monotonic()
        self.ended_at: float | None = None
        self.final_status: dict[str, Any] | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def cli_returncode(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and self.ended_at is None:
            self.ended_at = time.monotonic()
        return rc

    @property
    def done(self) -> bool:
        return self.cli_returncode is not None

    @property
    def elapsed(self) -> float:
        end = self.ended_at if self.ended_at is not None else time.monotonic()
        return end - self.started_at

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def run_id(self) -> int | None:
        """The run id flwr printed ("Successfully started run ID"), once it has."""
        import re

        m = re.search(r"started run (\d+)", self.output())
        return int(m.group(1)) if m else None

    def status(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """The run's record from the SuperLink (keys: status, status-details, elapsed, ...), or None
        when there is no run id yet or the SuperLink cannot be asked."""
        import json

        rid = self.run_id()
        if rid is None:
            return None
        try:
            out = subprocess.run(
                [
                    find_command("flwr", self.bin_dir),
                    "ls",
                    self.connection,
                    "--run-id",
                    str(rid),
                    "--format",
                    "json",
                ],
                env=flower_env(self.flwr_home, self.bin_dir),
                capture_output=True,
                text=True,
                timeout=timeout,
                stdin=subprocess.DEVNULL,
            )
            runs = json.loads(out.stdout).get("runs") or []
        except (OSError, subprocess.TimeoutExpired, ValueError, AttributeError):
            return None
        return runs[0] if runs else None

    @property
    def exit_status(self) -> int | None:
        """None while running; 0 = CLI exited 0 and the run finished:completed; else non-zero."""
        rc = self.cli_returncode
        if rc is None:
            return None
        if rc != 0:
            return rc
        status = (self.final_status or {}).get("status", "")
        return 0 if status == "finished:completed" else 1

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the CLI, fetch the run's final status; return `exit_status`. Raises
        FlowerRuntimeError (with the log tail) on timeout; the run keeps going (see stop())."""
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired as exc:
            raise FlowerRuntimeError(
                f"flwr run still running after {timeout} s; log {self.log_path}:\n" + log_tail(self.log_path)
            ) from exc
        _ = self.cli_returncode
        if self.final_status is None:
            self.final_status = self.status()
        status = self.exit_status
        assert status is not None
        return status

    def failure(self) -> str:
        """A readable reason for a non-zero exit status (status details and log tail)."""
        details = (self.final_status or {}).get("status-details") or "(no run status)"
        return f"run {self.run_id()}: {details}; log {self.log_path}:\n{log_tail(self.log_path)}"

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the CLI and ask the SuperLink to stop the run (``flwr stop RUN_ID``)."""
        rid = self.run_id()
        if self.proc.poll() is None and rid is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                subprocess.run(
                    [find_command("flwr", self.bin_dir), "stop", str(rid), self.connection],
                    env=flower_env(self.flwr_home, self.bin_dir),
                    capture_output=True,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                )
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.cli_returncode


def run_app(
    app_dir: Path | str,
    superlink_address: str,
    run_config: Mapping[str, Any],
    flwr_home: Path | str,
    name: str = "fedledger",
    log_path: Path | str | None = None,
    bin_dir: Path = DEFAULT_BIN_DIR,
    on_exit: Callable[[RunHandle], None] | None = None,
) -> RunHandle:
    """Start ``flwr run APP_DIR NAME --stream --run-config '...'`` against `superlink_address`.

    Writes ``$FLWR_HOME/config.toml`` (connection `name`) first. Output streams to `log_path`
    (default ``FLWR_HOME/run.log``). ``handle.wait()`` gives the exit status: 0 only when the CLI
    exited 0 and the SuperLink reports the run ``finished:completed`` (the ServerApp returned, so
    every round was committed). `on_exit` is called from a watcher thread when the CLI exits.
    """
    home = Path(flwr_home)
    write_connection(home, name, superlink_address)
    app = Path(app_dir)
    if not (app / "pyproject.toml").is_file():
        raise FlowerRuntimeError(f"{app} is not a Flower App directory (no pyproject.toml)")
    log = Path(log_path) if log_path is not None else home / "run.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    argv = [find_command("flwr", bin_dir), "run", str(app), name, "--stream"]
    if run_config:
        argv += ["--run-config", config_arg(run_config)]
    with open(log, "ab") as out:
        out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(argv)}\n".encode())
        out.flush()
        proc = subprocess.Popen(
            argv,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            cwd=home,
            env=flower_env(home, bin_dir),
            start_new_session=True,
        )
    handle = RunHandle(proc, log, argv, home, name, bin_dir)
    if on_exit is not None:

        def watch() -> None:
            proc.wait()
            on_exit(handle)

        threading.Thread(target=watch, name="flwr-run-watch", daemon=True).start()
    return handle
