"""Driving ``flwr run``: the CLI connection file, the run as a child process, its final status.

``run_app`` starts ``flwr run APP_DIR NAME --stream --run-config ...`` (supervised like the other
Flower processes: own session, rotating log, the whole tree stopped); ``RunHandle`` follows it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from node.flower.logs import LogPump, log_tail, read_log
from node.flower.processes import DEFAULT_BIN_DIR, config_arg, find_command, flower_env, toml_value
from node.flower.supervise import FlowerRuntimeError, start_logged
from node.proc import ProcessTree

RUN_ID = re.compile(r"started run (\d+)")


def write_connection(flwr_home: Path | str, name: str, superlink_address: str,
                     root_certificates: Path | None = None) -> Path:
    """Write ``$FLWR_HOME/config.toml`` with one SuperLink connection (the default): TLS verified
    against `root_certificates`, or insecure without it."""
    home = Path(flwr_home)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.toml"
    security = (
        "insecure = true\n" if root_certificates is None
        else f"root-certificates = {toml_value(str(root_certificates))}\n"
    )
    path.write_text(
        "[superlink]\n"
        f"default = {toml_value(name)}\n\n"
        f"[superlink.{name}]\n"
        f"address = {toml_value(superlink_address)}\n" + security,
        encoding="utf-8",
    )
    return path


class RunHandle:
    """A running ``flwr run ... --stream``; its output goes to `log_path` (rotating).

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
        pump: LogPump | None = None,
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
        self._pump = pump
        self._tree = ProcessTree(proc, own_group=True)
        self._run_id: int | None = None

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
        """What is kept of the CLI's output (the log and its backups)."""
        return read_log(self.log_path)

    def run_id(self) -> int | None:
        """The run id flwr printed ("Successfully started run ID"), once it has. Remembered, since
        the line may rotate out of the log on a long run."""
        if self._run_id is None:
            m = RUN_ID.search(self.output())
            self._run_id = int(m.group(1)) if m else None
        return self._run_id

    def _drain(self) -> None:
        """The CLI has exited: wait for its last output to reach the log."""
        if self._pump is not None:
            self._pump.join()

    def status(self, timeout: float = 30.0) -> dict[str, Any] | None:
        """The run's record from the SuperLink (keys: status, status-details, elapsed, ...), or None
        when there is no run id yet or the SuperLink cannot be asked."""
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
        self._drain()
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
        """Ask the SuperLink to stop the run (``flwr stop RUN_ID``), then stop the CLI's tree."""
        rid = self.run_id()
        if self.proc.poll() is None and rid is not None:
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # the tree is stopped below anyway
                subprocess.run(
                    [find_command("flwr", self.bin_dir), "stop", str(rid), self.connection],
                    env=flower_env(self.flwr_home, self.bin_dir),
                    capture_output=True,
                    timeout=timeout,
                    stdin=subprocess.DEVNULL,
                )
        self._tree.stop(timeout)
        self._drain()
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
    root_certificates: Path | None = None,
) -> RunHandle:
    """Start ``flwr run APP_DIR NAME --stream --run-config '...'`` against `superlink_address`.

    Writes ``$FLWR_HOME/config.toml`` (connection `name`) first. Output goes to `log_path`
    (default ``FLWR_HOME/run.log``). ``handle.wait()`` gives the exit status: 0 only when the CLI
    exited 0 and the SuperLink reports the run ``finished:completed`` (the ServerApp returned, so
    every round was committed). `on_exit` is called from a watcher thread when the CLI exits.
    """
    home = Path(flwr_home)
    write_connection(home, name, superlink_address, root_certificates)
    app = Path(app_dir)
    if not (app / "pyproject.toml").is_file():
        raise FlowerRuntimeError(f"{app} is not a Flower App directory (no pyproject.toml)")
    log = Path(log_path) if log_path is not None else home / "run.log"
    argv = [find_command("flwr", bin_dir), "run", str(app), name, "--stream"]
    if run_config:
        argv += ["--run-config", config_arg(run_config)]
    proc, pump = start_logged(argv, log, home, flower_env(home, bin_dir))
    handle = RunHandle(proc, log, argv, home, name, bin_dir, pump)
    if on_exit is not None:

        def watch() -> None:
            proc.wait()
            on_exit(handle)

        threading.Thread(target=watch, name="flwr-run-watch", daemon=True).start()
    return handle


# --- SuperNode authentication: the coordinator registers the members' keys -------------------


def _register_tool(flwr_home: Path, name: str, args: list[str], bin_dir: Path,
                   timeout: float) -> list[dict[str, Any]]:
    """Run federated/flower/fl_register.py (one process for all keys: flwr's import is paid once)."""
    argv = [str(bin_dir / "python"), "-m", "federated.flower.fl_register", name, *args]
    try:
        done = subprocess.run(argv, cwd=flwr_home, env=flower_env(flwr_home, bin_dir), capture_output=True,
                              text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise FlowerRuntimeError(f"SuperNode key {args[0]} did not finish in {timeout:.0f} s") from exc
    lines = []
    for line in done.stdout.splitlines():
        with contextlib.suppress(json.JSONDecodeError):
            item = json.loads(line)
            if isinstance(item, dict):
                lines.append(item)
    if done.returncode != 0 or len(lines) != len(args) - 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit {done.returncode}"]
        raise FlowerRuntimeError(f"SuperNode key {args[0]} failed: {tail[0][:300]}")
    return lines


def register_supernodes(flwr_home: Path | str, name: str, public_keys: list[bytes],
                        bin_dir: Path = DEFAULT_BIN_DIR, timeout: float = 180.0) -> list[int]:
    """Register OpenSSH public keys on the SuperLink of connection `name` (run with
    --enable-supernode-auth): a SuperNode holding one of their private halves may connect.
    Returns Flower's node ids, in order."""
    if not public_keys:
        return []
    home = Path(flwr_home)
    keys = home / "supernode-keys"
    keys.mkdir(parents=True, exist_ok=True)
    paths = []
    for key in public_keys:
        path = keys / f"{hashlib.sha256(key).hexdigest()[:16]}.pub"
        path.write_bytes(key)
        paths.append(str(path))
    out = _register_tool(home, name, ["register", *paths], bin_dir, timeout)
    return [int(item["node-id"]) for item in out]


def unregister_supernodes(flwr_home: Path | str, name: str, node_ids: list[int],
                          bin_dir: Path = DEFAULT_BIN_DIR, timeout: float = 180.0) -> None:
    """Unregister SuperNodes by Flower node id: they are refused from now on."""
    if node_ids:
        _register_tool(Path(flwr_home), name, ["unregister", *map(str, node_ids)], bin_dir, timeout)
