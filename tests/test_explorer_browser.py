"""The explorer page (GET /) in a real headless Chromium against a real federation of 4 node
processes: every page loads without console errors, charts carry their data points, pages refresh
without reloading, block -> transaction -> device -> model navigation works, and the suspicious
page shows its empty state (no traceability run here). A screenshot of each page is saved under
tests/artifacts/explorer/ (gitignored), with the page weight and the time to first render
measured in the same browser (explorer-measurements.json there).

One federation serves every check (module fixture). A 1-round training run starts on it as soon as
the empty training page has been seen, and trains while the other pages are checked; the training
test then checks the held-out learning curve, the model page and the .keras download (written by
the node through `fedledger model export` in a child process), whose line must be the committed
model's shared line. Skips, saying why, only when Playwright or a Chromium cannot be had."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from node.launch.processes import wait_until
from node.ledger.keys import NodeKey
from node.ledger.transactions import make_join_request, make_member_vote, make_reading
from node.net.client import LedgerClient
from node.net.http import get_json
from node.server.datadir import KEY_FILE
from tests.browser import ARTIFACTS, Page
from tests.e2e import LocalFederation
from tests.factories import key_from
from tests.test_layering import TRAINING_LIBRARIES, mapped_files

pytestmark = pytest.mark.slow
T = TypeVar("T")

READINGS = 1600  # enough for every node to train a humidity round, and hold some readings out
ROUNDS = 1  # round 0 (the initial model) and round 1: two points on every learning curve


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalFederation]:
    fed = LocalFederation(tmp_path_factory.mktemp("explorer"), 4)
    fed.start()
    try:
        feeder = fed.feeder(devices=8)
        off_loop(lambda: fed.feed(feeder, READINGS))
        fed.wait_readings(READINGS)
        fed.feeder_ = feeder  # type: ignore[attr-defined]
        yield fed
    finally:
        proc = getattr(fed, "training_", None)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        fed.stop()


def start_training(fed: LocalFederation) -> subprocess.Popen[bytes]:
    """`fedledger train` on node1 (the coordinator), started once per federation; its output goes
    to train.out and train.err beside the nodes."""
    proc: subprocess.Popen[bytes] | None = getattr(fed, "training_", None)
    if proc is None:
        root = fed.procs[0].dir.parent
        argv = [sys.executable, "-m", "node", "train", str(fed.procs[0].dir), "--task", "humidity",
                "--rounds", str(ROUNDS), "--json"]
        with open(root / "train.out", "wb") as out, open(root / "train.err", "wb") as err:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        fed.training_ = proc  # type: ignore[attr-defined]
    return proc


def off_loop(fn: Callable[[], T]) -> T:
    """Playwright's sync API runs an event loop on this thread: asyncio work goes to another one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def submit(url: str, txs: list[dict[str, Any]]) -> list[Any]:
    async def go() -> list[Any]:
        async with LedgerClient(url) as client:
            return [await client.submit(t) for t in txs]

    return off_loop(lambda: asyncio.run(go()))


def base_url(fed: LocalFederation) -> str:
    return fed.procs[0].url.replace("ws://", "http://").rstrip("/")


def test_pages_load_with_live_charts_and_no_console_errors(browser: Any, fed: LocalFederation) -> None:
    base = base_url(fed)
    feeder = fed.feeder_  # type: ignore[attr-defined]
    # Refusals are node-local: send node1 a replayed sequence and an impossible temperature for a
    # device, so its page has refusals to show.
    name = next(iter(feeder.keys))
    key = feeder.keys[name]
    chain = fed.genesis.chain_id
    results = submit(fed.procs[0].url, [make_reading(key, chain, 0, 1_000, 20.0, 40.0),
                                        make_reading(key, chain, 10**9, 1_000, 400.0, 40.0)])
    assert [r.accepted for r in results] == [False, False], results
    reasons = sorted(r.reason for r in results)

    tab = Page(browser, base)
    page = tab.open("#/training")
    assert page.locator("text=no training run on this ledger yet").count() == 1
    tab.shot("training-empty")
    start_training(fed)  # trains while the other pages are checked

    page = tab.open("#/")
    assert page.locator("h1").inner_text().startswith(f"Federation {chain}")
    assert tab.points("chart-throughput") >= 1
    assert int(page.locator("#chart-throughput").get_attribute("data-points")) >= 1
    assert page.locator("text=not connected").count() == 0  # every validator is a connected peer
    tab.shot("federation")

    # Live: more readings finalize and the page shows the new height without reloading.
    page.evaluate("window.__sameDocument = true")
    height = get_json(base, "/status")["height"]
    off_loop(lambda: fed.feed(feeder, 50))
    page.wait_for_function(
        "h => [...document.querySelectorAll('.card')].some(c => c.querySelector('.k').textContent === "
        "'height' && Number(c.querySelector('.v').textContent) > h)", arg=height, timeout=30_000)
    assert page.evaluate("window.__sameDocument") is True

    height = get_json(base, "/status")["height"]
    assert height >= 4
    page = tab.open("#/blocks?to=3")
    assert page.locator("tbody tr").count() == 3 and page.locator("text=oldest").count() == 1
    tab.click(page.locator("text=← newer"))
    first = page.locator("tbody tr").first.locator("td").first.inner_text()
    assert page.locator("tbody tr").count() == min(20, int(first)) and int(first) >= height
    tab.shot("blocks")

    # A block with readings, and one of its transactions.
    acts = get_json(base, "/activity?last=50")["blocks"]
    busy = max(acts, key=lambda b: b["readings"])
    page = tab.open(f"#/block/{busy['height']}")
    assert page.locator("h1").inner_text() == f"Block {busy['height']}"
    assert page.locator("tbody tr").count() == min(100, busy["txs"])  # 100 txs a page
    assert "validators" in page.locator("dl.kv").inner_text()
    tab.shot("block")
    tab.click(page.locator("tbody tr", has_text="reading").first.locator("a.mono"))
    assert page.locator("h1").inner_text().startswith("Transaction")
    tab.shot("transaction")
    tab.click(page.locator("#tx-links a").first)  # the reading's device
    assert page.locator("h1").inner_text().startswith("Device")
    assert tab.points("chart-temperature") >= 10 and tab.points("chart-humidity") >= 10

    page = tab.open("#/devices")
    assert page.locator("tbody tr").count() == 8
    tab.shot("devices")
    page = tab.open(f"#/device/{key.public.hex()}")
    n = int(page.locator("#chart-temperature").get_attribute("data-points"))
    assert n == tab.points("chart-temperature") >= 10
    refused = page.locator("h2:text('Readings refused by this node') + table").inner_text()
    assert all(r in refused for r in reasons), refused
    tab.shot("device")

    # A join request and one authority's vote for it: 1 of the 3 votes needed, so it stays open.
    newcomer = key_from("explorer/newcomer")
    join = make_join_request(newcomer, chain, "authority", "newcomer", "ws://127.0.0.1:9/")
    assert submit(fed.procs[0].url, [join])[0].accepted
    assert wait_until(lambda: get_json(base, "/members")["membership"]["join_requests"], 30)
    voter = NodeKey.load(fed.procs[1].dir / KEY_FILE)
    assert submit(fed.procs[1].url, [make_member_vote(voter, chain, newcomer.public, "authority",
                                                      "add")])[0].accepted
    assert wait_until(lambda: get_json(base, "/members")["membership"]["votes"], 30)
    page = tab.open("#/members")
    assert page.locator("table").first.locator("tbody tr").count() == 4
    requests = page.locator("h2:text('Join requests') + table tbody tr")
    assert requests.count() == 1 and "newcomer" in requests.inner_text()
    votes = page.locator("h2:text('Votes and tallies') + table tbody tr")
    assert votes.count() == 1 and voter.short_id in votes.inner_text()
    assert [c.inner_text() for c in votes.locator("td.num").all()] == ["1", "3"]  # counted, needed
    tab.shot("members")

    # No traceability run here: the suspicious page says there are no fingerprints to score with
    # (its flagged rows, on a ledger with a stolen key: tests/test_suspicious.py).
    page = tab.open("#/suspicious")
    page.wait_for_selector("#suspicious-state[data-state='no_model']", timeout=20_000)
    assert "No device fingerprints are committed" in page.locator("#suspicious-state").inner_text()
    assert page.locator("nav a.active").inner_text() == "Suspicious"
    tab.shot("suspicious-empty")
    assert tab.errors == []


def measure(browser: Any, base: str) -> dict[str, Any]:
    """Page weight and time to first render of the federation page, on a fresh page (no cache)."""
    ctx = browser.new_context()
    page = ctx.new_page()
    page.goto(base + "/#/")
    page.wait_for_function("() => document.getElementById('main').dataset.loaded", timeout=20_000)
    m = page.evaluate("""() => {
      const nav = performance.getEntriesByType('navigation')[0];
      const res = performance.getEntriesByType('resource');
      const fcp = performance.getEntriesByName('first-contentful-paint')[0];
      const assets = res.filter(r => r.name.includes('/explorer/'));
      const apis = res.filter(r => !r.name.includes('/explorer/'));
      return {
        html_bytes: nav.transferSize, asset_bytes: assets.reduce((s, r) => s + r.transferSize, 0),
        api_bytes: apis.reduce((s, r) => s + r.transferSize, 0), requests: 1 + res.length,
        first_contentful_paint_ms: fcp ? Math.round(fcp.startTime) : null,
        first_data_render_ms: Math.round(Number(document.getElementById('main').dataset.loaded)
                                         - performance.timeOrigin),
      };
    }""")
    ctx.close()
    m["page_kb"] = round((m["html_bytes"] + m["asset_bytes"]) / 1024, 1)
    m["with_first_api_answers_kb"] = round((m["html_bytes"] + m["asset_bytes"] + m["api_bytes"]) / 1024, 1)
    return m


def keras_line(path: Path) -> tuple[Any, Any]:
    """The (kernel (5, 1), bias (1,)) of the Dense layer inside a .keras file, read from its weights
    archive with h5py (importing Keras here would cost the test 5-15 s): the export is
    standardisation, the line, rescaling (federated/export.py), and only the line has variables."""
    import h5py

    found = []
    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as f:
        for name in f["layers"]:
            held = f["layers"][name].get("vars")
            if held is not None and len(held):
                found.append((held["0"][()], held["1"][()]))
    assert len(found) == 1, found
    return found[0]


def committed_line(node_dir: Path, run: str, round_: int) -> tuple[Any, Any]:
    """The shared line of the committed humidity model, re-computed from its updates on this
    replica and checked against the committed hash (node.store.models.model_weights)."""
    from node.server.datadir import DB_FILE
    from node.store.models import find_model, model_weights
    from node.store.sqlite import SqliteStore

    store = SqliteStore(node_dir / DB_FILE, read_only=True)
    try:
        with store.snapshot():
            weights = model_weights(store, find_model(store, "humidity", round_, run))
    finally:
        store.close()
    return weights[0], weights[1]


@pytest.mark.federated
def test_training_pages_and_block_to_model_navigation(browser: Any, fed: LocalFederation) -> None:
    base = base_url(fed)
    training = start_training(fed)
    try:
        training.wait(timeout=600)
    except subprocess.TimeoutExpired:
        training.kill()
        training.wait()
    root = fed.procs[0].dir.parent
    stdout, stderr = (root / "train.out").read_text(), (root / "train.err").read_text()
    assert training.returncode == 0, stdout[-2000:] + stderr[-2000:]
    run = json.loads(stdout)["run"]
    lineage = get_json(base, f"/model/{run}/{ROUNDS}")
    tab = Page(browser, base)

    # The .keras download, first: the node writes it in a child process on the first click (the
    # page asks until it is ready), while the nodes sign their last evaluations; then it is cached.
    page = tab.open(f"#/model/{run}/{ROUNDS}")
    started = time.monotonic()
    with page.expect_download(timeout=300_000) as info:
        page.locator("#download-model").click()
    export_s = time.monotonic() - started
    download = info.value
    assert download.suggested_filename == f"humidity-round{ROUNDS}-run{run[:12]}.keras"
    saved = ARTIFACTS / "downloaded-model.keras"  # one name: runs do not pile files up here
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    download.save_as(saved)
    with zipfile.ZipFile(saved) as archive:
        assert {"config.json", "model.weights.h5", "metadata.json"} <= set(archive.namelist())
    # The file is the committed model's shared line (the model's personal rows are not in it).
    kernel, bias = keras_line(saved)
    want_kernel, want_bias = committed_line(fed.procs[0].dir, run, ROUNDS)
    assert kernel.tolist() == want_kernel.astype("float32").reshape(-1, 1).tolist()
    assert bias.tolist() == want_bias.astype("float32").reshape(1).tolist()
    page.wait_for_function("() => document.getElementById('download-state').textContent.startsWith('saved')")
    started = time.monotonic()
    with page.expect_download(timeout=60_000) as again:
        page.locator("#download-model").click()
    cached_s = time.monotonic() - started
    assert again.value.suggested_filename == download.suggested_filename
    counters = get_json(base, "/status")["counters"]
    assert (counters["keras_export_started"], counters["keras_export_exported"]) == (1, 1)
    assert counters["keras_export_served"] == 2
    # Keras ran in the child, never in the node: node1 still maps no TensorFlow library.
    node1 = fed.procs[0].proc
    assert node1 is not None
    assert [p for p in mapped_files(node1.pid) if any(lib in p for lib in TRAINING_LIBRARIES)] == []

    # The last round's model is scored by the nodes' final evaluate step, after its commit.
    nodes = len(fed.procs)
    assert wait_until(lambda: all(m["evaluations"] == nodes for m in get_json(base, f"/run/{run}")["models"]),
                      120), get_json(base, f"/run/{run}")
    page = tab.open("#/training")
    assert page.locator("tbody tr").count() == 1 and page.locator("text=complete").count() == 1
    tab.shot("training")
    tab.click(page.locator(f"a[href='#/run/{run}']").first)
    # The learning curve: the held-out RMSE of each round's model, pooled over the nodes' signed
    # evaluations, next to the device-mean baseline; the committed training metrics below it.
    assert page.locator("h2", has_text="Learning curve: held-out rmse per round").count() == 1
    holdout = page.locator("#chart-holdout")
    assert holdout.locator("g.series[data-name='held-out rmse'] circle.pt").count() == ROUNDS + 1
    assert holdout.locator("g.series[data-name='device-mean baseline'] circle.pt").count() == ROUNDS + 1
    view = get_json(base, f"/run/{run}")
    tips = holdout.locator("g.series[data-name='held-out rmse'] title").all_text_contents()
    shown = [float(t.rsplit(" at ", 1)[0].split(": ", 1)[1]) for t in tips]  # "held-out rmse: V at ROUND"
    assert shown == pytest.approx([m["holdout"]["rmse"] for m in view["models"]], rel=1e-5)
    curves = page.locator("#learning-curves svg.chart")
    assert curves.count() >= 1
    for i in range(curves.count()):
        assert curves.nth(i).locator("circle.pt").count() >= ROUNDS  # a metric per trained round
    assert f"{nodes} nodes" in page.locator("tbody tr").last.inner_text()
    tab.shot("run")

    # block -> transaction -> device -> model: a reading's device, whose owner's update is in round 1.
    page = tab.open(f"#/block/{lineage['updates'][0]['height']}")
    tab.click(page.locator("tbody tr", has_text="model_update").first.locator("a.mono"))
    assert page.locator("h1").inner_text().startswith("Transaction")
    tab.click(page.locator("#tx-links a").first)  # the update's model
    assert page.locator("h1").inner_text().startswith("Model: humidity round")
    reading_block = get_json(base, "/activity?last=500")["blocks"]
    busy = max(reading_block, key=lambda b: b["readings"])
    page = tab.open(f"#/block/{busy['height']}")
    tab.click(page.locator("tbody tr", has_text="reading").first.locator("a.mono"))
    tab.click(page.locator("#tx-links a").first)
    assert page.locator("h1").inner_text().startswith("Device")
    tab.click(page.locator(f"a[href='#/model/{run}/{ROUNDS}']").first)
    assert page.locator("h1").inner_text() == f"Model: humidity round {ROUNDS}"
    assert page.locator("#recomputed").inner_text() == "verified"
    assert page.locator(f"h2:text('Updates ({nodes})')").count() == 1
    assert page.locator(f"h2:text('Held-out evaluations ({nodes})')").count() == 1
    assert "device-mean baseline" in page.locator("#holdout").inner_text()
    assert page.locator("#download-state").inner_text().startswith("ready")  # cached now
    assert "fedledger model export" in page.locator("#export-cmd").inner_text()
    tab.shot("model")
    assert tab.errors == []

    numbers = measure(browser, base)
    numbers["keras_download"] = {"first_s": round(export_s, 2), "cached_s": round(cached_s, 3),
                                 "bytes": saved.stat().st_size}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "explorer-measurements.json").write_text(json.dumps(numbers, indent=2))
    print("explorer measurements:", json.dumps(numbers))
    assert numbers["page_kb"] > 0 and numbers["requests"] >= 5
