"""The architecture's import rules, checked in fresh interpreters."""

from __future__ import annotations

import subprocess
import sys

import pytest


def modules_after(code: str) -> set[str]:
    """Top-level modules that `code` loads beyond what a bare interpreter has already loaded."""
    script = f"import sys\nbefore = set(sys.modules)\n{code}\nprint('\\n'.join(set(sys.modules) - before))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


def test_the_node_process_never_imports_tensorflow_keras_or_flower() -> None:
    loaded = modules_after(
        "import node.server.runtime, node.cli.main, node.launch.launcher, federated.aggregate, federated.trainer"
    )
    assert not loaded & {"tensorflow", "keras", "flwr"}


@pytest.mark.parametrize("module", ["consensus.tendermint", "consensus.votes", "consensus.validators"])
def test_consensus_is_pure(module: str) -> None:
    loaded = modules_after(f"import {module}")
    assert not loaded & {"asyncio", "socket", "sqlite3", "websockets", "random", "time", "node"}
