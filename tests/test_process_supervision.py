"""Process trees (node/proc.py), rotating logs (node/flower/logs.py, node.log) and ManagedProcess
(node/flower/supervise.py) on small Python children: no Flower needed, a few seconds."""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from node.cli.node_run import setup_logging
from node.errors import LocalError
from node.flower.logs import LogPump, RotatingLog, backup_path, log_tail, read_log
from node.flower.supervise import FlowerRuntimeError, ManagedProcess
from node.launch.federation import create_federation
from node.launch.processes import OUT_FILE, OUT_MAX_BYTES, NodeProcess, wait_until
from node.proc import ProcessTree, alive, cpu_seconds, mib, peak_rss_bytes, rss_bytes, stop_processes
from node.server.datadir import LOG_FILE

# A child that starts a grandchild in its own session (as Flower's SuperLink starts SuperExec),
# prints the grandchild's pid, then waits.
PARENT = """
import subprocess, sys, time
g = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print(g.pid, flush=True)
time.sleep(60)
"""
IGNORES_TERM = """
import signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("up", flush=True)
time.sleep(60)
"""


def spawn(code: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)


def test_stop_ends_a_grandchild_in_its_own_session() -> None:
    child = spawn(PARENT)
    assert child.stdout is not None
    grandchild = psutil.Process(int(child.stdout.readline()))
    tree = ProcessTree(child, own_group=True)
    assert grandchild.pid in tree.remaining_pids()
    assert tree.stop(timeout=10) is not None
    assert not alive(grandchild)
    assert tree.remaining_pids() == []


def test_the_orphans_of_a_dead_child_are_still_found_and_stopped() -> None:
    child = spawn(PARENT)
    assert child.stdout is not None
    grandchild = psutil.Process(int(child.stdout.readline()))
    tree = ProcessTree(child, own_group=True)
    tree.refresh()
    child.kill()
    child.wait()  # the grandchild is re-parented: no children() walk from the child finds it now
    assert tree.remaining_pids() == [grandchild.pid]
    tree.stop(timeout=10)
    assert not alive(grandchild)


def test_a_child_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    child = spawn(IGNORES_TERM)
    assert child.stdout is not None and child.stdout.readline() == b"up\n"
    tree = ProcessTree(child, own_group=True)
    t0 = time.monotonic()
    assert tree.stop(timeout=1.0) == -9
    assert 1.0 <= time.monotonic() - t0 < 8
    assert not tree.alive


def test_memory_and_cpu_of_this_process() -> None:
    rss, peak, cpu = rss_bytes(), peak_rss_bytes(), cpu_seconds()
    assert rss is not None and peak is not None and cpu is not None
    assert 1 << 20 < rss <= peak  # more than 1 MiB, and the peak is at least the current size
    assert cpu > 0
    assert mib(3 * 1024 * 1024 + 100_000) == 3.1 and mib(None) is None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    assert rss_bytes(gone.pid) is None and peak_rss_bytes(gone.pid) is None and cpu_seconds(gone.pid) is None


# --- logs ------------------------------------------------------------------------------------------


def test_a_rotating_log_never_holds_more_than_its_bound(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = RotatingLog(path, max_bytes=100, backups=2)
    for i in range(50):
        log.write(f"line {i:03d} ".encode() * 3 + b"\n")  # 28 bytes a line
    log.close()
    # 3 lines (84 bytes) a file: a 4th would overflow it, so the file rotates before it
    assert [backup_path(path, i).stat().st_size for i in (1, 2)] == [84, 84]
    assert path.stat().st_size == 56  # 50 = 16 x 3 + 2
    assert not backup_path(path, 3).exists()
    kept = read_log(path)
    assert kept.endswith("line 049 \n") and "line 000" not in kept  # oldest dropped, order kept
    assert log_tail(path, 2).splitlines()[-1] == "line 049 " * 3


def test_log_tail_reaches_into_the_backup_just_after_a_rotation(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    log = RotatingLog(path, max_bytes=20, backups=1)
    log.write(b"first\nsecond\nthird\n")  # 19 bytes
    log.write(b"fourth\n")  # rotates first
    log.close()
    assert path.read_bytes() == b"fourth\n"
    assert log_tail(path, 3) == "second\nthird\nfourth"


def test_a_pump_copies_everything_a_child_writes_and_ends_with_it(tmp_path: Path) -> None:
    pump = LogPump(RotatingLog(tmp_path / "c.log", max_bytes=1000, backups=3))
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdout.write('x' * 2500 + '\\nend\\n')"],
                             stdout=pump.fd, stderr=subprocess.STDOUT)
    pump.started()
    child.wait()
    assert pump.join(timeout=10)
    assert read_log(tmp_path / "c.log") == "x" * 2500 + "\nend\n"  # split only because it is > 1000
    assert all(p.stat().st_size <= 1000 for p in tmp_path.glob("c.log*"))
    assert (tmp_path / "c.log.2").exists()


class Chatty(ManagedProcess):
    """Prints `lines` lines, then waits to be stopped."""

    name = "chatty"

    def __init__(self, workdir: Path, lines: int, code: str = "") -> None:
        super().__init__(workdir)
        self.lines = lines
        self.code = code

    def command(self) -> list[str]:
        return [sys.executable, "-c", self.code or
                f"import time\nfor i in range({self.lines}): print(f'line {{i:05d}}', flush=True)\n"
                "time.sleep(60)"]

    def is_ready(self) -> bool:
        return self.log_path.exists() and f"line {self.lines - 1:05d}" in self.log_tail(1)


def test_a_managed_process_log_rotates_at_its_size_bound(tmp_path: Path) -> None:
    proc = Chatty(tmp_path, lines=500)  # 11 bytes a line, 5,500 bytes
    proc.log_max_bytes, proc.log_backups = 1000, 2
    with proc:
        assert proc.log_tail(1) == "line 00499"
    assert not proc.alive and proc.remaining_pids() == []
    files = sorted(tmp_path.glob("chatty.log*"))
    assert [p.name for p in files] == ["chatty.log", "chatty.log.1", "chatty.log.2"]
    assert all(p.stat().st_size <= 1000 for p in files)
    assert "line 00000" not in read_log(proc.log_path)


def test_a_process_that_exits_early_fails_with_its_last_words(tmp_path: Path) -> None:
    proc = Chatty(tmp_path, lines=1, code="import sys; print('no config here'); sys.exit(3)")
    with pytest.raises(FlowerRuntimeError, match="exited early with status 3") as err:
        proc.start(ready_timeout=20)
    assert "no config here" in str(err.value)
    assert isinstance(err.value, LocalError)


def test_node_log_rotates(tmp_path: Path) -> None:
    root = logging.getLogger()
    before, level = list(root.handlers), root.level
    try:
        setup_logging(tmp_path, "info", console=False, max_bytes=2000, backups=2)
        for i in range(200):
            logging.getLogger("fedledger.test").info("message %d %s", i, "x" * 40)
    finally:
        for h in root.handlers[len(before):]:
            h.close()
        root.handlers[:] = before
        root.setLevel(level)
    log = tmp_path / LOG_FILE
    files = [log, backup_path(log, 1), backup_path(log, 2)]
    assert all(p.exists() and p.stat().st_size <= 2000 for p in files)
    assert not backup_path(log, 3).exists()
    assert "message 199" in log.read_text()



@pytest.mark.slow
def test_a_launched_node_keeps_info_in_its_rotating_log_and_node_out_stays_bounded(tmp_path: Path) -> None:
    """node.out (the child's stderr) cannot rotate under a running child: the node writes info only
    to node.log, and an oversized node.out is set aside when the node is next started."""
    _, (made,) = create_federation(tmp_path / "fed", 1)
    out = made.dir / OUT_FILE
    out.write_bytes(b"x" * (OUT_MAX_BYTES + 1))
    node = NodeProcess(made.dir)
    node.start()
    try:
        assert wait_until(lambda: node.status() is not None, 60), node.log_tail()
    finally:
        node.stop()
    assert (made.dir / (OUT_FILE + ".1")).stat().st_size == OUT_MAX_BYTES + 1
    assert "listening on" in (made.dir / LOG_FILE).read_text()
    assert "listening on" not in out.read_text()
    assert "--- node.log" in node.log_tail()


def test_kill_ends_a_tree_with_descendants() -> None:
    # kill() and stop_processes() once named a local `alive`, shadowing alive(): NameError as
    # soon as there was a descendant to look at.
    child = spawn(PARENT)
    assert child.stdout is not None
    grandchild = psutil.Process(int(child.stdout.readline()))
    tree = ProcessTree(child, own_group=True)
    tree.refresh()
    assert tree.kill() == []
    assert not alive(grandchild) and not tree.alive
    other = spawn(PARENT)
    assert other.stdout is not None
    other_child = psutil.Process(int(other.stdout.readline()))
    assert stop_processes([psutil.Process(other.pid), other_child], timeout=5) == []
    other.wait()
    assert not alive(other_child)
