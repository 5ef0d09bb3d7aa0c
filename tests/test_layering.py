"""The architecture's import rules, checked where import-linter cannot see: what fresh interpreters and a
running node process actually load. The static rules are the [tool.importlinter] contracts in
pyproject.toml; these tests check the effect of the lazy and dynamic imports those contracts let through."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from node.launch.federation import create_federation
from node.launch.processes import NodeProcess, wait_until

REPO = Path(__file__).resolve().parent.parent
LIBRARY = ("node", "consensus", "federated")

# What TensorFlow and Flower leave in a process's memory map once imported: TensorFlow's own shared
# libraries, and gRPC's extension (every flwr import pulls in grpc).
TRAINING_LIBRARIES = ("libtensorflow", "_pywrap_tensorflow", "cygrpc")


def modules_after(code: str) -> set[str]:
    """Top-level modules that `code` loads beyond what a bare interpreter has already loaded."""
    script = f"import sys\nbefore = set(sys.modules)\n{code}\nprint('\\n'.join(set(sys.modules) - before))"
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    return {m.split(".")[0] for m in out.stdout.split()}


def test_the_node_process_never_imports_tensorflow_keras_or_flower() -> None:
    loaded = modules_after(
        "import node.server.runtime, node.cli.main, node.launch.launcher, "
        "federated.aggregate, federated.trainer"
    )
    assert not loaded & {"tensorflow", "keras", "flwr"}


@pytest.mark.parametrize("module", ["consensus.tendermint", "consensus.votes", "consensus.validators"])
def test_consensus_is_pure(module: str) -> None:
    loaded = modules_after(f"import {module}")
    assert not loaded & {"asyncio", "socket", "sqlite3", "websockets", "random", "time", "node"}


def imported_roots(path: Path) -> set[str]:
    """First components of every module `path` imports, wherever the import statement is (lazy ones too)."""
    roots = set()
    for n in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(n, ast.Import):
            roots.update(a.name.split(".")[0] for a in n.names)
        elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module:
            roots.add(n.module.split(".")[0])
    return roots


def test_the_library_never_imports_tests_or_scripts() -> None:
    # import-linter checks this in ./scripts/test; this keeps the rule in a plain pytest run too.
    offenders = {
        str(p.relative_to(REPO)): sorted(imported_roots(p) & {"tests", "scripts"})
        for pkg in LIBRARY for p in sorted((REPO / pkg).rglob("*.py"))
    }
    assert {f: r for f, r in offenders.items() if r} == {}


def mapped_files(pid: int) -> set[str]:
    return {m.path for m in psutil.Process(pid).memory_maps()}


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_running_node_maps_no_tensorflow_or_flower_library(tmp_path: Path) -> None:
    _, (made,) = create_federation(tmp_path / "fed", 1)
    node = NodeProcess(made.dir)
    node.start()
    try:
        assert wait_until(lambda: node.status() is not None, 60), node.log_tail()
        status = node.status()
        assert status is not None and status["node_id"] == made.node_id  # it is this node, and it serves
        assert node.proc is not None
        maps = mapped_files(node.proc.pid)
        # The check sees the node's shared libraries (NumPy's, for the ledger's aggregation rules)...
        assert any("_multiarray_umath" in p for p in maps), sorted(maps)
        # ...and none of the training stack's.
        assert [p for p in maps if any(lib in p for lib in TRAINING_LIBRARIES)] == []
    finally:
        node.stop()


@pytest.mark.slow
@pytest.mark.federated
@pytest.mark.timeout(120)
def test_the_map_check_sees_tensorflow_and_flower_where_they_are_loaded() -> None:
    """The control for the test above: a process that imports them shows every name it looks for."""
    code = "import tensorflow, flwr; print('ready', flush=True); input()"
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        maps = mapped_files(proc.pid)
        assert {lib for lib in TRAINING_LIBRARIES if any(lib in p for p in maps)} == set(TRAINING_LIBRARIES)
    finally:
        proc.kill()
        proc.wait()
