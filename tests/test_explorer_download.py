"""The explorer's .keras download (node/server/explorer/exports.py) with a stand-in for `fedledger
model export`: one export at a time, a budget of exports, a timeout that kills the export's whole
process group, a size cap, a check of what it wrote, a bounded cache, a clean refusal without
Keras, and the HTTP answers of GET /model/RUN/ROUND/keras (hostile paths never start anything).
The real command is exercised by tests/test_explorer_browser.py on a launched federation."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import zipfile
from pathlib import Path
from typing import Any

import psutil

from node.net.gateway import HttpBody
from node.server.api import NodeApi
from node.server.explorer.exports import (
    WORK_DIR,
    ExportJob,
    ExportLimits,
    KerasExports,
    State,
    export_command,
)
from tests.test_explorer_api import replica  # noqa: F401  (the module fixture: a replica with a run)

# Stands in for `python -m node model export ... --out OUT --json`: MODE picks how it behaves, and
# it leaves its PID (and a grandchild's, in "hang") in PIDS so a test can check they are gone.
FAKE = r"""
import json, os, subprocess, sys, time, zipfile
mode, out, model_hash, pids = sys.argv[1:5]
kids = []
if mode == "hang":
    kids.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"]).pid)
with open(pids, "a") as f:
    f.write(" ".join(str(p) for p in [os.getpid(), *kids]) + "\n")
if mode in ("hang", "slow"):
    time.sleep(120 if mode == "hang" else 1.0)
if mode == "fail":
    print("some TensorFlow noise", file=sys.stderr)
    print("error: cannot build the humidity model from the committed weights", file=sys.stderr)
    sys.exit(1)
if mode == "big":
    open(out, "wb").write(b"\0" * 5000)
elif mode == "notzip":
    open(out, "wb").write(b"not a zip at all")
elif mode != "nofile":
    with zipfile.ZipFile(out, "w") as z:
        for name in ("metadata.json", "config.json", "model.weights.h5"):
            z.writestr(name, name + model_hash)
print(json.dumps({"path": out, "model_hash": "00" * 32 if mode == "otherhash" else model_hash}))
"""


def job(n: int, task: str = "humidity") -> ExportJob:
    return ExportJob(bytes([n]) * 32, n, task, bytes([100 + n]) * 32)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Harness:
    def __init__(self, tmp: Path, modes: dict[int, str] | None = None, keras: bool = True,
                 **limits: Any) -> None:
        self.pids = tmp / "pids"
        self.modes = modes or {}
        self.clock = Clock()
        self.keras = keras
        self.ex = KerasExports(tmp / "exports", self.command, ExportLimits(**limits),
                               keras_available=lambda: self.keras, clock=self.clock)

    def command(self, j: ExportJob, out: Path) -> list[str]:
        return [sys.executable, "-c", FAKE, self.modes.get(j.round, "ok"), str(out), j.model_hash.hex(),
                str(self.pids)]

    def spawned(self) -> list[int]:
        if not self.pids.exists():
            return []
        return [int(p) for line in self.pids.read_text().split("\n") for p in line.split()]

    async def until_done(self, timeout: float = 30.0) -> None:
        for _ in range(int(timeout / 0.02)):
            if not self.ex.busy:
                return
            await asyncio.sleep(0.02)
        raise AssertionError("the export did not finish")

    def cached(self) -> list[str]:
        return sorted(p.name for p in self.ex.dir.glob("*.keras"))


async def until(predicate: Any, timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("timed out waiting")


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_a_model_is_exported_once_then_served_from_the_cache(tmp_path: Path) -> None:
    hx = Harness(tmp_path, {1: "slow"})

    async def go() -> None:
        first = hx.ex.request(job(1))
        assert first.state is State.EXPORTING and first.http_status == 202 and first.retry_after_s >= 1
        again = hx.ex.request(job(1))  # polling while it runs starts nothing more
        assert again.state is State.EXPORTING
        await hx.until_done()
        ready = hx.ex.request(job(1))
        assert ready.state is State.READY and ready.http_status == 200 and ready.path is not None
        with zipfile.ZipFile(ready.path) as z:
            assert "config.json" in z.namelist()
        assert hx.ex.request(job(1)).state is State.READY

    asyncio.run(go())
    assert len(hx.spawned()) == 1 and hx.ex.counts["started"] == 1 and hx.ex.counts["served"] == 2
    assert hx.cached() == [f"humidity-{job(1).model_hash.hex()}.keras"]
    assert not (hx.ex.dir / WORK_DIR).exists()


def test_one_export_at_a_time_and_closing_the_node_kills_it(tmp_path: Path) -> None:
    hx = Harness(tmp_path, {1: "hang"})

    async def go() -> None:
        assert hx.ex.request(job(1)).state is State.EXPORTING
        other = hx.ex.request(job(2))
        assert other.state is State.BUSY and other.http_status == 503 and other.retry_after_s > 0
        await until(lambda: len(hx.spawned()) == 2)  # the stand-in has started its grandchild
        await hx.ex.close()

    asyncio.run(go())
    assert all(gone(p) for p in hx.spawned())
    assert hx.cached() == [] and hx.ex.counts.get("started") == 1


def test_a_hung_export_times_out_its_whole_group_dies_and_the_failure_is_remembered(tmp_path: Path) -> None:
    hx = Harness(tmp_path, {1: "hang"}, timeout_s=3.0, failure_ttl_s=60.0)

    async def go() -> None:
        assert hx.ex.request(job(1)).state is State.EXPORTING
        await hx.until_done()
        assert len(hx.spawned()) == 2  # the stand-in and its grandchild were up before the timeout
        failed = hx.ex.request(job(1))
        assert failed.state is State.FAILED and failed.http_status == 500 and "timed out" in failed.detail
        assert failed.retry_after_s == 60
        hx.clock.t += 61  # remembered for failure_ttl_s, then tried again
        assert hx.ex.request(job(1)).state is State.EXPORTING
        await until(lambda: len(hx.spawned()) == 4)
        await hx.ex.close()

    asyncio.run(go())
    pids = hx.spawned()
    assert len(pids) == 4 and all(gone(p) for p in pids)  # both exports and both grandchildren
    assert hx.ex.counts["started"] == 2 and hx.ex.counts["failed"] == 1
    assert hx.cached() == [] and not (hx.ex.dir / WORK_DIR).exists()


def test_only_a_checked_keras_archive_of_the_committed_hash_enters_the_cache(tmp_path: Path) -> None:
    modes = {1: "fail", 2: "big", 3: "notzip", 4: "otherhash", 5: "nofile"}
    hx = Harness(tmp_path, modes, max_bytes=1000, burst=10)
    expected = {1: "error: cannot build the humidity model", 2: "over this node's cap of 1000",
                3: "not a .keras archive", 4: "another model hash", 5: "wrote no file"}

    async def go() -> None:
        for n in modes:
            assert hx.ex.request(job(n)).state is State.EXPORTING
            await hx.until_done()
            answer = hx.ex.request(job(n))
            assert answer.state is State.FAILED and expected[n] in answer.detail, (n, answer)

    asyncio.run(go())
    assert hx.cached() == [] and not (hx.ex.dir / WORK_DIR).exists()


def test_exports_beyond_the_budget_wait_but_cached_files_are_still_served(tmp_path: Path) -> None:
    hx = Harness(tmp_path, burst=2, refill_s=30.0)

    async def go() -> None:
        for n in (1, 2):
            assert hx.ex.request(job(n)).state is State.EXPORTING
            await hx.until_done()
        limited = hx.ex.request(job(3))
        assert limited.state is State.RATE_LIMITED and limited.http_status == 429
        assert limited.retry_after_s == 30
        assert hx.ex.request(job(1)).state is State.READY  # costs nothing
        hx.clock.t += 30
        assert hx.ex.request(job(3)).state is State.EXPORTING
        await hx.until_done()

    asyncio.run(go())
    assert len(hx.spawned()) == 3 and hx.ex.counts["rate_limited"] == 1


def test_the_cache_keeps_the_most_recently_served_files(tmp_path: Path) -> None:
    hx = Harness(tmp_path, burst=10, cache_files=2)

    async def go() -> None:
        for n in (1, 2):
            hx.ex.request(job(n))
            await hx.until_done()
        os.utime(hx.ex.path(job(1)), (1, 1))
        os.utime(hx.ex.path(job(2)), (2, 2))
        assert hx.ex.request(job(1)).state is State.READY  # served: now the most recent
        hx.ex.request(job(3))
        await hx.until_done()

    asyncio.run(go())
    assert hx.cached() == sorted(hx.ex.path(job(n)).name for n in (1, 3))


def test_without_keras_nothing_starts_but_a_cached_file_is_served(tmp_path: Path) -> None:
    hx = Harness(tmp_path)

    async def go() -> None:
        hx.ex.request(job(1))
        await hx.until_done()
        hx.keras = False
        assert hx.ex.request(job(1)).state is State.READY
        refused = hx.ex.request(job(2))
        assert refused.state is State.UNAVAILABLE and refused.http_status == 503
        assert "pip install" in refused.detail
        assert hx.ex.lookup(job(2)).state is State.UNAVAILABLE

    asyncio.run(go())
    assert len(hx.spawned()) == 1


def test_a_previous_processs_unchecked_output_is_dropped_on_start(tmp_path: Path) -> None:
    work = tmp_path / "exports" / WORK_DIR
    work.mkdir(parents=True)
    (work / "humidity-x.keras").write_bytes(b"half written")
    Harness(tmp_path)
    assert not work.exists()


# --- over HTTP (the routes) --------------------------------------------------------------------


def test_the_download_route_answers_202_then_the_file_and_refuses_hostile_paths(
        replica: Any, tmp_path: Path) -> None:  # noqa: F811
    _, node, _, run = replica
    hx = Harness(tmp_path)
    api = NodeApi(node, hx.ex)

    async def go() -> None:
        base = f"/model/{run.hex()}/2"
        r = run.hex()
        hostile = [f"/model/{r}/3/keras", f"/model/{'ab' * 32}/1/keras", f"/model/{r[:10]}/1/keras",
                   f"/model/{r}/-1/keras", f"/model/{r}/99999999/keras", f"/model/{r}/x/keras",
                   f"/model/{r}/{'9' * 5000}/keras", f"{base}/keras/x", f"{base}/KERAS", f"{base}/h5"]
        answers = [api.handle_http(p, {}) for p in hostile]
        assert [a and a[0] for a in answers] == [404, 404, 400, 400, 400, 400, 400, None, None, None]
        assert hx.spawned() == [] and hx.ex.counts == {}

        status, view = api.handle_http(base, {})  # type: ignore[misc]
        assert status == 200 and view["download"]["state"] == "none"
        assert view["download"]["url"] == f"{base}/keras"
        assert view["download"]["filename"] == f"humidity-round2-run{run.hex()[:12]}.keras"

        status, body = api.handle_http(f"{base}/keras", {"round": "7", "run": "x"})  # type: ignore[misc]
        assert status == 202 and isinstance(body, HttpBody) and body.content_type == "application/json"
        assert ("Retry-After", "2") in body.headers and json.loads(body.data)["state"] == "exporting"
        assert api.handle_http(f"/model/{run.hex()}/1/keras", {})[0] == 503  # type: ignore[index]
        await hx.until_done()

        status, body = api.handle_http(f"{base}/keras", {})  # type: ignore[misc]
        assert status == 200 and body.content_type == "application/zip"
        disposition = f'attachment; filename="{view["download"]["filename"]}"'
        assert ("Content-Disposition", disposition) in body.headers
        assert body.data == hx.ex.path(job_of(view)).read_bytes()
        assert api.handle_http(base, {})[1]["download"]["state"] == "ready"  # type: ignore[index]

    asyncio.run(go())
    assert len(hx.spawned()) == 1


def job_of(view: dict[str, Any]) -> ExportJob:
    run, model_hash = bytes.fromhex(view["run"]), bytes.fromhex(view["model_hash"])
    return ExportJob(run, view["round"], view["task"], model_hash)


def test_a_node_without_an_export_slot_refuses_downloads_cleanly(replica: Any) -> None:  # noqa: F811
    _, node, _, run = replica
    status, body = NodeApi(node).handle_http(f"/model/{run.hex()}/2/keras", {})  # type: ignore[misc]
    assert status == 503 and json.loads(body.data)["state"] == "unavailable"


def test_the_real_command_line_is_fedledger_model_export_of_ledger_values(tmp_path: Path) -> None:
    argv = export_command(tmp_path / "node1")(job(2), tmp_path / "out.keras")
    assert argv[1:5] == ["-m", "node", "model", "export"]
    assert argv[argv.index("--run") + 1] == job(2).run.hex() and argv[argv.index("--round") + 1] == "2"
    assert argv[-1] == "--json"
