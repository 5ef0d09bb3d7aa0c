"""Whatever a user gets wrong reaches them as one line on stderr and a non-zero exit, never a
traceback; and options that several commands share (the port) follow one rule with one message."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from node.cli.main import EXIT_FAILED, EXIT_USAGE, main
from node.errors import FedledgerError, RemoteError
from node.launch import feeder as feeder_mod
from node.launch.feeder import Feeder, RegistrationRefused, Target
from node.net.client import TxResult
from node.server.datadir import init_node

REPO = Path(__file__).resolve().parent.parent
BAD_PORTS = ["0", "65536", "-1", "http", "7600.5"]


def one_error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fedledger") and ": error: " in lines[0], lines[0]
    return rc, lines[0]


@pytest.fixture
def node_dir(tmp_path: Path) -> Path:
    d = tmp_path / "n1"
    init_node(d, name="n1", port=7601)
    return d


@pytest.mark.parametrize("bad", BAD_PORTS)
def test_every_command_that_takes_a_port_refuses_a_bad_one_alike(
    bad: str, tmp_path: Path, node_dir: Path, capsys: Any
) -> None:
    messages = []
    for argv in (
        ["init", str(tmp_path / "fresh"), f"--port={bad}"],
        ["node", "run", str(node_dir), f"--port={bad}"],
        ["join", "ws://127.0.0.1:1", str(tmp_path / "joiner"), f"--port={bad}"],
    ):
        rc, line = one_error_line(capsys, argv)
        assert rc == EXIT_USAGE
        messages.append(line.split(": error: ", 1)[1].split(" (see fedledger", 1)[0])
    # one rule, one message, whichever command
    assert len(set(messages)) == 1
    assert messages[0].startswith(f"argument --port: {bad!r} is not a port number in 1..65535")
    assert not (tmp_path / "fresh").exists() and not (tmp_path / "joiner").exists()


def test_the_edges_of_the_port_range_are_accepted(tmp_path: Path, capsys: Any) -> None:
    for port in ("1", "65535"):
        assert main(["init", str(tmp_path / port), "--port", port]) == 0


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["frobnicate"],
        ["init"],
        ["ledger"],
        ["ledger", "blocks"],
        ["ledger", "block", "DIR", "high"],
        ["train", "DIR", "--task", "weather"],
        ["launch", "--duration", "0"],
        ["launch", "--devices", "0"],
        ["launch", "--rate", "-5"],
        ["launch", "--train-after", "soon"],
        ["member", "approve"],
    ],
)
def test_usage_errors_are_one_line_and_exit_2(argv: list[str], capsys: Any) -> None:
    rc, line = one_error_line(capsys, argv)
    assert rc == EXIT_USAGE
    assert "--help" in line


def test_failures_are_one_line_and_exit_1(tmp_path: Path, node_dir: Path, capsys: Any) -> None:
    missing = str(tmp_path / "nowhere")
    for argv in (
        ["init", str(node_dir)],  # never overwrites a key
        ["node", "run", missing],
        ["ledger", "status", missing],
        ["ledger", "blocks", str(node_dir)],  # a node that never ran has no node.db
        ["ledger", "compare", "ws://127.0.0.1:1"],  # nobody listens there
        ["ledger", "compare", "ftp://x"],
        ["member", "list", missing],
        ["model", "list", missing],
        ["train", str(node_dir), "--task", "humidity"],
        ["join", "ws://127.0.0.1:1", str(tmp_path / "joiner")],
        ["join", "not a url", str(tmp_path / "joiner")],
        ["launch", "--rounds", "0"],
        ["launch", "--nodes", "0", "--no-train"],
        ["init", str(tmp_path / "x"), "--passphrase-file", missing],
    ):
        rc, line = one_error_line(capsys, argv)
        assert rc == EXIT_FAILED, (argv, line)


def test_refused_device_registrations_are_a_remote_error_not_a_crash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    init_node(tmp_path / "n1", name="n1", port=7601)

    class RefusingClient:
        def __init__(self, url: str) -> None:
            self.url = url

        async def __aenter__(self) -> RefusingClient:
            return self

        async def __aexit__(self, *exc: object) -> None:
            return None

        async def submit_many(self, txs: list[dict[str, Any]]) -> list[TxResult]:
            return [TxResult(None, False, "unauthorized") for _ in txs]

    monkeypatch.setattr(feeder_mod, "LedgerClient", RefusingClient)
    feeder = Feeder([Target(tmp_path / "n1", "ws://127.0.0.1:7601")], "chain", ["dev-1"])
    with pytest.raises(RegistrationRefused, match="unauthorized") as info:
        asyncio.run(feeder.register_devices())
    assert isinstance(info.value, RemoteError)


def test_launch_reports_a_refused_registration_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    from node.launch import launcher

    def refuse(opts: Any) -> int:
        raise RegistrationRefused("node ws://127.0.0.1:1 refused device registrations: [('dev-1', 'x')]")

    monkeypatch.setattr(launcher, "run_launch", refuse)
    rc, line = one_error_line(capsys, ["launch", "--no-train"])
    assert rc == EXIT_FAILED and "refused device registrations" in line


def test_every_command_error_is_in_the_one_tree() -> None:
    from node.cli import join, member, model
    from node.launch import train_request

    for cls in (join.JoinRefused, member.VoteRefused, model.ModelNotFound, model.ExportError,
                train_request.TrainingFailed, RegistrationRefused):
        assert issubclass(cls, FedledgerError), cls


def test_the_real_command_line_prints_one_line(tmp_path: Path) -> None:
    """`python -m node`, as a user runs it: a bad port, then a missing directory."""
    for argv, code in (
        (["init", str(tmp_path / "n"), "--port", "99999"], EXIT_USAGE),
        (["ledger", "verify", str(tmp_path / "missing")], EXIT_FAILED),
    ):
        proc = subprocess.run([sys.executable, "-m", "node", *argv], capture_output=True, text=True,
                              timeout=60, cwd=REPO)
        assert proc.returncode == code, proc.stderr
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.splitlines()) == 1, proc.stderr
