"""The Flower deployment processes of a node (and its trainer), and how they are invoked.

Runs in the node process, so it imports neither flwr nor TensorFlow: it only starts commands.

* ``SuperLinkProcess``   -- ``flower-superlink`` (coordinator only; one HTTP port for Fleet, Control
  and Runtime APIs).
* ``SuperNodeProcess``   -- ``flower-supernode`` with this node's ``--node-config``.
* ``TrainerProcess``     -- ``python -m federated.trainer --socket PATH`` (Keras stays loaded there).

Every one gets its own ``FLWR_HOME``, ``FLWR_DISABLE_UPDATE_CHECK=1``, ``FLWR_TELEMETRY_ENABLED=0``,
``TF_CPP_MIN_LOG_LEVEL=3`` and the venv's bin directory first on ``PATH`` (Flower spawns
flower-superexec, flwr-serverapp and flwr-clientapp by name); supervision (session, rotating log,
stopping the tree) is node/flower/supervise.py's.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from node.flower.supervise import FlowerRuntimeError, ManagedProcess
from node.net.ports import LOCALHOST, port_open

DEFAULT_BIN_DIR = Path(sys.executable).parent  # the venv's bin (not resolved: keep the venv)
# The SuperLink registers the SuperNode keys a JSON file names as soon as it listens (read by
# federated/flower/fl_superlink.py, which repeats the name: the node never imports the Flower App).
REGISTER_ENV = "FEDLEDGER_REGISTER_KEYS"


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


class FlowerProcess(ManagedProcess):
    """A process with its own ``FLWR_HOME`` (WORKDIR/flwr-home) and Flower's environment."""

    def __init__(self, workdir: Path | str, bin_dir: Path = DEFAULT_BIN_DIR) -> None:
        super().__init__(workdir)
        self.bin_dir = Path(bin_dir)
        self.flwr_home = self.workdir / "flwr-home"

    def environment(self) -> dict[str, str]:
        return flower_env(self.flwr_home, self.bin_dir, self.extra_env)

    def prepare(self) -> None:
        super().prepare()
        self.flwr_home.mkdir(parents=True, exist_ok=True)


class SuperLinkProcess(FlowerProcess):
    """``flower-superlink --insecure --port P --disable-runtime-dependency-installation``, run as
    ``python -m federated.flower.fl_superlink`` (Control and Runtime APIs for this host only)."""

    name = "superlink"

    def __init__(
        self,
        workdir: Path | str,
        port: int,
        host: str = LOCALHOST,
        database: Path | str | None = None,
        bin_dir: Path = DEFAULT_BIN_DIR,
        tls: tuple[Path, Path] | None = None,
        supernode_auth: bool = False,
    ) -> None:
        super().__init__(workdir, bin_dir)
        self.host = host
        self.port = int(port)
        self.database = database
        self.tls = tls  # (certificate, key) PEM files; None: --insecure
        self.supernode_auth = supernode_auth  # only SuperNodes registered through the Control API
        self.python = str(self.bin_dir / "python")

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def command(self) -> list[str]:
        if self.tls is None:
            security = ["--insecure"]
        else:
            # The certificate is self-signed: it is its own CA, and the SuperLink's own SuperExec
            # verifies the Runtime API against it.
            cert, key = self.tls
            security = ["--ssl-certfile", str(cert), "--ssl-keyfile", str(key),
                        "--ssl-ca-certfile", str(cert)]
        # Flower's SuperLink behind fedledger's guard: the Control and Runtime APIs share the Fleet
        # API's port, and only the Fleet API may be served off this host (fl_superlink.py).
        find_command("flower-superlink", self.bin_dir)  # a clear error when Flower is missing
        argv = [
            self.python,
            "-m",
            "federated.flower.fl_superlink",
            *security,
            "--host",
            self.host,
            "--port",
            str(self.port),
            "--disable-runtime-dependency-installation",
        ]
        if self.database is not None:
            argv += ["--database", str(self.database)]
        if self.supernode_auth:
            argv.append("--enable-supernode-auth")
        return argv

    def is_ready(self) -> bool:
        return port_open(self.host, self.port)

    def listen_ports(self) -> list[tuple[str, int]]:
        return [(self.host, self.port)]


class SuperNodeProcess(FlowerProcess):
    """``flower-supernode --insecure --superlink ADDR --port Q --node-config '...'``.

    Its own Runtime API (``--host``/``--port``, where its ClientApps pull their messages) is for
    this host only: keep `host` on loopback.

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
        root_certificates: Path | None = None,
        auth_key: Path | None = None,
        stock_clientapp: bool = False,
    ) -> None:
        super().__init__(workdir, bin_dir)
        self.superlink_address = superlink_address
        # Only scripts/bench_fl.py's plain-Flower baseline runs Flower's own flwr-clientapp, which
        # unpacks and runs the app bundle's code: that is what a plain deployment does.
        self.stock_clientapp = stock_clientapp
        self.root_certificates = root_certificates  # verify the SuperLink against it; None: --insecure
        self.auth_key = auth_key  # the SuperNode authentication key (node/flower/auth.py)
        self.host = host
        self.port = int(port)
        self.node_config = dict(node_config)
        config_arg(self.node_config)  # validate now, not at start
        self.guard_dir = self.workdir / "guard-bin"

    def prepare(self) -> None:
        super().prepare()
        if self.stock_clientapp:
            return
        # SuperExec starts `flwr-clientapp` by name for every message: this one, first on PATH,
        # runs fedledger's installed ClientApp and never code from the app bundle (fl_clientapp.py).
        self.guard_dir.mkdir(parents=True, exist_ok=True)
        script = self.guard_dir / "flwr-clientapp"
        script.write_text(f"#!{self.bin_dir / 'python'}\n"
                          "import sys\nfrom federated.flower.fl_clientapp import main\nsys.exit(main())\n",
                          encoding="utf-8")
        script.chmod(0o755)

    def environment(self) -> dict[str, str]:
        env = super().environment()
        if not self.stock_clientapp:
            env["PATH"] = os.pathsep.join([str(self.guard_dir), env.get("PATH", "")])
        return env

    def command(self) -> list[str]:
        if self.root_certificates is None:
            security = ["--insecure"]
        else:
            security = ["--root-certificates", str(self.root_certificates)]
        if self.auth_key is not None:
            security += ["--auth-supernode-private-key", str(self.auth_key)]
        find_command("flower-supernode", self.bin_dir)  # a clear error when Flower is missing
        # Flower's SuperNode, stopping when this node is gone (federated/flower/fl_supernode.py).
        return [
            str(self.bin_dir / "python"),
            "-m",
            "federated.flower.fl_supernode",
            *security,
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


class TrainerProcess(FlowerProcess):
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
