"""The explorer's routes on a real SQLite replica with readings and a 2-round run: its files are
served by name only, its JSON views are bounded and answer 400/404 for bad or unknown ids, a model
view re-computes the aggregate, and the host counts refused readings per registered device. The
suspicious view here has no fingerprints to score with (its flagged rows: tests/test_suspicious.py):
its empty state, its checks, its cache, its pacing and a failed computation."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from federated.weights import canonical_array
from node.host.refusals import DeviceRefusals
from node.ledger.chain import Ledger
from node.ledger.transactions import make_reading
from node.net.gateway import HttpBody
from node.server.api import NodeApi
from node.server.explorer.assets import POLICY
from node.server.explorer.routes import ExplorerApi
from node.server.explorer.suspicious_view import Limits, SuspiciousView, sqlite_reader
from node.store.sqlite import SqliteStore
from tests.factories import (
    GENESIS_TIME_MS,
    device_key,
    give_devices,
    make_genesis,
    participant_key,
    populated_ledger,
)
from tests.test_cli_model import Fed, train_run
from tests.test_host_core import registrations, solo


class FakeNode:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store
        self.refused: dict[bytes, dict[str, int]] = {}

    def device_refusals(self, device: bytes) -> dict[str, int]:
        return self.refused.get(device, {})


@pytest.fixture(scope="module")
def replica(tmp_path_factory: pytest.TempPathFactory) -> tuple[NodeApi, FakeNode, list[Any], bytes]:
    keys, genesis = make_genesis(4, n_participants=2)
    store = SqliteStore(tmp_path_factory.mktemp("explorer") / "node.db")
    led = Ledger(store, genesis)
    devices = populated_ledger(led, keys, n_devices=2, n_blocks=3, per_block=4)
    initial = [canonical_array(np.arange(6, dtype=np.float32).reshape(2, 3)), canonical_array(np.ones(3))]
    trainers = [keys[0], participant_key(0), participant_key(1)]
    give_devices(led, keys, trainers, [70, 85, 100])  # each trainer's own readings, which its updates name
    run = train_run(led, keys, Fed(Path(".")), "humidity", 2, {"epochs": 2}, initial, trainers)
    node = FakeNode(store)
    return NodeApi(node), node, devices, run  # type: ignore[arg-type]


def get(api: NodeApi, path: str, **query: str) -> tuple[int, Any]:
    result = api.handle_http(path, query)
    assert result is not None, path
    return result


def suspicious(api: NodeApi | ExplorerApi, hours: str = "48") -> tuple[int, dict[str, Any], HttpBody]:
    """GET /suspicious once: status, the JSON, the body as sent."""
    if isinstance(api, NodeApi):
        result = get(api, "/suspicious", hours=hours)
    else:
        result = api.handle(["suspicious"], {"hours": hours})
        assert result is not None
    status, body = result
    assert isinstance(body, HttpBody) and body.content_type == "application/json"
    return status, json.loads(body.data), body


def settled(api: NodeApi | ExplorerApi, hours: str = "48") -> tuple[int, dict[str, Any], HttpBody]:
    """Ask until the worker thread has computed the view (202 meanwhile)."""
    deadline = time.monotonic() + 60
    while True:
        status, view, body = suspicious(api, hours)
        if status != 202 or time.monotonic() > deadline:
            return status, view, body
        time.sleep(0.02)


def test_the_page_and_its_files_are_served_by_name_only(replica: Any) -> None:
    api = replica[0]
    status, page = get(api, "/")
    assert status == 200 and isinstance(page, HttpBody) and page.content_type.startswith("text/html")
    assert b"/explorer/app.js" in page.data
    assert ("Content-Security-Policy", POLICY) in page.headers and "script-src 'self';" in POLICY
    files = [("app.js", "text/javascript"), ("charts.js", "text/javascript"), ("style.css", "text/css"),
             ("favicon.svg", "image/svg+xml")]
    for name, ctype in files:
        status, body = get(api, f"/explorer/{name}")
        assert status == 200 and body.content_type.startswith(ctype) and len(body.data) > 100
        # Offline: nothing is fetched from elsewhere (the SVG namespace is a name, not a fetch).
        assert re.findall(rb"https?://[^\s\"'`]+", body.data + page.data) in ([], [b"http://www.w3.org/2000/svg"])
    for bad in ["/explorer/../api.py", "/explorer/routes.py", "/explorer/", "/explorer/a/b", "/explorer/x"]:
        assert api.handle_http(bad, {}) is None  # the gateway's 404


def test_activity_counts_readings_per_block_and_is_bounded(replica: Any) -> None:
    api, node = replica[0], replica[1]
    status, body = get(api, "/activity", last="500")
    assert status == 200 and body["height"] == node.store.height()
    by_height = {b["height"]: b for b in body["blocks"]}
    assert [by_height[h]["readings"] for h in (1, 2, 3, 4)] == [0, 8, 8, 8]
    assert all(b["txs"] >= b["readings"] for b in body["blocks"])
    assert [b["height"] for b in get(api, "/activity", last="2")[1]["blocks"]] == [body["height"] - 1,
                                                                                  body["height"]]
    for last in ("0", "501", "x"):
        assert get(api, "/activity", last=last)[0] == 400


def test_a_device_page_has_its_latest_readings_refusals_and_owner_updates(replica: Any) -> None:
    api, node, devices, run = replica
    key = devices[1].public
    node.refused[key] = {"replayed_sequence": 2}
    status, d = get(api, f"/device/{key.hex()}", last="5")
    assert status == 200 and d["name"] == "device-1" and d["last_seq"] == 11
    assert [r["seq"] for r in d["readings"]] == [7, 8, 9, 10, 11]  # the latest, oldest first
    assert d["refused"] == {"replayed_sequence": 2}
    # The owner (keys[0], who registered both devices) trained rounds 0..2 of the run.
    owner = d["owner_updates"]
    assert sorted(u["round"] for u in owner) == [0, 1, 2] and {u["run"] for u in owner} == {run.hex()}
    assert get(api, f"/device/{'00' * 32}")[0] == 404
    assert get(api, "/device/abc")[0] == 400 and get(api, f"/device/{key.hex()}", last="501")[0] == 400


def test_runs_run_and_model_views(replica: Any) -> None:
    api, _, _, run = replica
    status, runs = get(api, "/runs")
    assert status == 200 and runs["total"] == 1 and runs["runs"][0]["run"] == run.hex()
    status, r = get(api, f"/run/{run.hex()}")
    assert status == 200 and r["complete"] and [m["round"] for m in r["models"]] == [0, 1, 2]
    # Who committed each round, and the run's handovers (none here).
    assert r["handovers"] == [] and r["coordinator"] == r["requested_by"]
    assert {m["coordinator"] for m in r["models"]} == {r["coordinator"]}
    assert r["models"][2]["metrics"] == {"loss": 0.5, "val_rmse": 2.5} and r["models"][1]["updates"] == 3
    assert [m["round"] for m in get(api, f"/run/{run.hex()}", last="1")[1]["models"]] == [2]
    status, m = get(api, f"/model/{run.hex()}/2")
    assert status == 200 and m["round"] == 2 and len(m["updates"]) == 3
    assert m["base_model"] == r["models"][1]["model_hash"]
    assert m["recomputed"]["ok"] is True and "matches" in m["recomputed"]["detail"]
    assert get(api, f"/model/{run.hex()}/3")[0] == 404 and get(api, f"/run/{'22' * 32}")[0] == 404
    assert get(api, f"/model/{run.hex()}/-1")[0] == 400 and get(api, f"/model/{run.hex()}/99999")[0] == 400
    # A reading's id is a tx but not a run.
    assert get(api, f"/run/{replica[1].store.readings()[0].tx_id.hex()}")[0] == 404


def test_a_run_plots_the_held_out_score_of_the_nodes_signed_evaluations(replica: Any) -> None:
    api, _, _, run = replica
    status, r = get(api, f"/run/{run.hex()}")
    assert status == 200 and (r["holdout_metric"], r["baseline_metric"]) == ("rmse", "baseline_rmse")
    assert r["baseline"] == "device-mean baseline"
    assert r["models"][0]["holdout"] == {} and r["models"][0]["evaluations"] == 0  # round 0: none signed
    for m in r["models"][1:]:
        # Pooled over the nodes, weighted by each node's held-out examples (as `fedledger model list`).
        evals = get(api, f"/model/{run.hex()}/{m['round']}")[1]["evaluations"]
        assert m["evaluations"] == len(evals) == 3
        total = sum(e["num_examples"] for e in evals)
        mse = sum(e["num_examples"] * e["metrics"]["mse"] for e in evals) / total
        assert m["holdout"]["rmse"] == pytest.approx(mse ** 0.5) and m["holdout"]["baseline_rmse"] == 2.5
        assert m["holdout"]["nodes"] == 3 and m["holdout"]["num_examples"] == total
        assert m["metrics"] == {"loss": 1.0 / m["round"], "val_rmse": 2.5}  # the training metrics stay
    assert r["models"][1]["holdout"]["rmse"] != r["models"][2]["holdout"]["rmse"]
    status, m = get(api, f"/model/{run.hex()}/2")
    assert m["holdout"] == r["models"][2]["holdout"] and m["holdout_metric"] == "rmse"


def test_block_answers_name_the_commit_signers(replica: Any) -> None:
    status, b = get(replica[0], "/block/2")
    assert status == 200 and b["validators"] == 4 and len(b["commit_signers"]) >= 3
    assert all(len(s) == 16 for s in b["commit_signers"])


def test_refused_readings_are_counted_per_registered_device_only() -> None:
    host, _, keys = solo()
    host.start()
    host.accept_txs(registrations(keys, 1))  # one authority: decided and committed inside the step
    dev = device_key(0)
    assert host.ledger.store.device(dev.public) is not None
    chain = host.ledger.chain_id
    now = GENESIS_TIME_MS + 1000
    bad = [make_reading(dev, chain, 1, now, 400.0, 40.0), make_reading(dev, chain, 2, now, 20.0, 140.0),
           make_reading(participant_key(7), chain, 1, now, 20.0, 40.0)]  # an unregistered key
    results = host.accept_txs(bad)
    assert all(r is not None for _, r in results)
    assert host.refusals.of(dev.public) == {results[0][1]: 2} and len(host.refusals) == 1
    assert host.counters[f"rejected:{results[2][1]}"] == 1  # still counted per reason


def test_device_refusals_forget_the_least_recently_refused_device() -> None:
    r = DeviceRefusals(max_devices=2)
    r.add(b"a", "x")
    r.add(b"b", "x")
    r.add(b"a", "y")
    r.add(b"c", "x")
    assert r.of(b"a") == {"x": 1, "y": 1} and r.of(b"b") == {} and r.of(b"c") == {"x": 1} and len(r) == 2


def test_a_model_page_offers_its_task_s_download(replica: Any) -> None:
    api, _, _, run = replica
    dl = get(api, f"/model/{run.hex()}/2")[1]["download"]
    assert dl["format"] == "keras" and dl["url"] == f"/model/{run.hex()}/2/keras"
    assert dl["filename"] == f"humidity-round2-run{run.hex()[:12]}.keras"
    status, body = get(api, f"/model/{run.hex()}/2/json")  # fingerprints are traceability's
    assert status == 404 and f"/model/{run.hex()}/2/keras" in body["error"]
    assert api.handle_http(f"/model/{run.hex()}/2/h5", {}) is None  # the gateway's 404


def test_the_suspicious_view_without_fingerprints_is_an_empty_state(replica: Any) -> None:
    api = NodeApi(replica[1])  # its own view: nothing computed yet
    gate = threading.Event()
    api.explorer.suspicious = SuspiciousView(replica[1].store, held(replica[1].store, gate))
    status, view, body = suspicious(api)  # the worker computes; the answer is not there yet
    assert status == 202 and view["state"] == "computing" and ("Retry-After", "1") in body.headers
    gate.set()
    status, view, _ = settled(api)
    assert status == 200 and view["state"] == "no_model"
    assert "no training run of task 'traceability'" in view["detail"]
    assert "--task traceability" in view["train"]
    assert view["height"] == replica[1].store.height() and view["hours"] == 48
    for bad in ("0", "5", "169", "-6", "x", "", "1e3", "48.0", "9" * 5000):  # 6-hour windows, a week at most
        assert get(api, "/suspicious", hours=bad)[0] == 400, bad
    api.explorer.close()


def held(store: SqliteStore, gate: threading.Event) -> Any:
    """The view's reader, which waits for `gate` on the worker thread: the test holds a computation."""
    inner = sqlite_reader(store)
    assert inner is not None

    def reader() -> Any:
        assert gate.wait(30)
        return inner()

    return reader


def fresh(explorer: ExplorerApi, counted: Counter[str], n: int) -> HttpBody:
    """Poll until the `n`th computation is in (a recomputation's first polls get the old answer)."""
    deadline = time.monotonic() + 60
    while counted["suspicious_computed"] < n and time.monotonic() < deadline:
        time.sleep(0.02)
        suspicious(explorer)
    return suspicious(explorer)[2]


class Head:
    """The node's head height as the view sees it, moved by the test (the view's snapshots see
    the replica's real height, so once moved the head stays ahead of every answer)."""

    def __init__(self, height: int) -> None:
        self.h = height

    def height(self) -> int:
        return self.h


def test_the_suspicious_view_is_cached_per_head_and_recomputed_at_most_every_5_s(replica: Any) -> None:
    store = replica[1].store
    now = [1000.0]
    head = Head(store.height())
    gate = threading.Event()
    gate.set()
    counted: Counter[str] = Counter()
    view = SuspiciousView(head, held(store, gate), Limits(min_interval_s=5, burst=3, refill_s=5, entries=2),  # type: ignore[arg-type]
                          clock=lambda: now[0], counters=counted)
    explorer = ExplorerApi(replica[1], None, view)  # type: ignore[arg-type]
    first = settled(explorer)[2]
    assert counted["suspicious_started"] == counted["suspicious_computed"] == 1
    # Polls are served the same bytes: no computation, no serialization.
    assert all(suspicious(explorer)[2].data is first.data for _ in range(5))
    now[0] += 60  # nothing committed: nothing to recompute, however old the answer
    assert suspicious(explorer)[2].data is first.data and counted["suspicious_started"] == 1
    head.h += 1  # a block: due, recomputed in the background while the cached answer is served
    gate.clear()
    status, _, stale = suspicious(explorer)
    assert status == 200 and stale.data is first.data and counted["suspicious_started"] == 2
    gate.set()
    second = fresh(explorer, counted, 2)
    assert second.data is not first.data
    now[0] += 4.5  # the head moved again, but the answer is younger than 5 s
    assert suspicious(explorer)[2].data is second.data and counted["suspicious_started"] == 2
    now[0] += 0.5
    suspicious(explorer)
    assert counted["suspicious_started"] == 3 and fresh(explorer, counted, 3).data is not second.data

    head.h = store.height()  # the answers are current from here on: polls start nothing

    # Other hours values: each its own computation, paced by one bucket (3, then one per 5 s);
    # at 1065 s it holds 2 tokens.
    assert settled(explorer, "24")[0] == 200 and settled(explorer, "168")[0] == 200
    status, answer, body = suspicious(explorer, "72")
    assert status == 429 and answer["state"] == "rate_limited" and ("Retry-After", "5") in body.headers
    assert counted["suspicious_started"] == 5 and counted["suspicious_rate_limited"] == 1
    # At most `entries` (2) answers are kept: 48 h, the least recently asked, was dropped.
    now[0] += 5
    gate.clear()
    assert suspicious(explorer, "48")[0] == 202 and counted["suspicious_started"] == 6
    # One computation at a time: another hours value waits for it, spending no token.
    now[0] += 5
    status, answer, _ = suspicious(explorer, "72")
    assert status == 202 and "another view" in answer["detail"] and counted["suspicious_started"] == 6
    gate.set()
    assert settled(explorer, "48")[0] == 200
    assert settled(explorer, "72")[0] == 200 and counted["suspicious_started"] == 7
    view.close()


def test_a_slow_computation_is_repeated_at_most_every_5_times_its_duration(replica: Any) -> None:
    store = replica[1].store
    now = [0.0]
    head = Head(store.height() + 1)  # always ahead: every answer is due once old enough
    inner = sqlite_reader(store)
    assert inner is not None

    def slow() -> Any:  # a computation of at least 0.2 s, as a week of 64 devices takes seconds
        time.sleep(0.2)
        return inner()

    counted: Counter[str] = Counter()
    view = SuspiciousView(head, slow, Limits(min_interval_s=0.1, busy_share=0.2),  # type: ignore[arg-type]
                          clock=lambda: now[0], counters=counted)
    explorer = ExplorerApi(replica[1], None, view)  # type: ignore[arg-type]
    settled(explorer)
    now[0] += 0.9  # past the 0.1 s interval, not past 5 x 0.2 s
    suspicious(explorer)
    assert counted["suspicious_started"] == 1
    now[0] += 4.1  # past 5 x its duration (unless this machine took over 1 s for it)
    suspicious(explorer)
    assert counted["suspicious_started"] == 2
    view.close()


def test_a_failed_computation_is_an_answer_and_is_not_retried_per_poll(replica: Any) -> None:
    now = [0.0]
    counted: Counter[str] = Counter()

    @contextmanager
    def broken() -> Iterator[Any]:
        raise sqlite3.DatabaseError("database disk image is malformed")
        yield

    view = SuspiciousView(replica[1].store, broken, clock=lambda: now[0], counters=counted)
    explorer = ExplorerApi(replica[1], None, view)  # type: ignore[arg-type]
    status, answer, _ = settled(explorer)
    assert status == 500 and answer["state"] == "failed" and "malformed" in answer["error"]
    now[0] += 60
    assert suspicious(explorer)[0] == 500
    assert counted["suspicious_started"] == counted["suspicious_failed"] == 1
    view.close()
