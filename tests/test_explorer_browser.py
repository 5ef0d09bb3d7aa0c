"""The explorer page (GET /) in a real headless Chromium against a real federation of 4 node
processes: every page loads without console errors, charts carry their data points, pages refresh
without reloading, and block -> transaction -> device -> model navigation works. A screenshot of
each page is saved under tests/artifacts/explorer/ (gitignored), with the page weight and the time
to first render measured in the same browser (explorer-measurements.json there).

One federation serves every check (module fixture); the training test adds a 2-round run to it.
Skips, saying why, only when Playwright or a Chromium cannot be had."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
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
from tests.e2e import LocalFederation
from tests.factories import key_from

pytestmark = pytest.mark.slow
T = TypeVar("T")

ARTIFACTS = Path(__file__).parent / "artifacts" / "explorer"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
READINGS = 1600  # enough for every node to train a humidity round on its own readings


def chromium_path() -> str | None:
    for candidate in (os.environ.get("FEDLEDGER_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright is not installed "
                                   "(pip install -e '.[dev]')")
    exe = chromium_path()
    if exe is None:
        pytest.skip("no Chromium: install Debian's (apt-get install -y chromium) or set FEDLEDGER_CHROMIUM")
    with sync_api.sync_playwright() as pw:
        try:
            b = pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS)
        except Exception as exc:  # a browser that cannot start is no browser
            pytest.skip(f"Chromium at {exe} does not start: {str(exc)[:300]}")
        yield b
        b.close()


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
        fed.stop()


def off_loop(fn: Callable[[], T]) -> T:
    """Playwright's sync API runs an event loop on this thread: asyncio work goes to another one."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(fn).result()


def submit(url: str, txs: list[dict[str, Any]]) -> list[Any]:
    async def go() -> list[Any]:
        async with LedgerClient(url) as client:
            return [await client.submit(t) for t in txs]

    return off_loop(lambda: asyncio.run(go()))


class Page:
    """A browser tab on node1's explorer that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, base: str) -> None:
        self.base = base
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("requestfailed", lambda r: self.errors.append(f"request failed: {r.url}"))

    def open(self, route: str) -> Any:
        if self.page.url.startswith(self.base):
            self.page.evaluate("r => { location.hash = r }", route)
        else:
            self.page.goto(self.base + "/" + route)
        return self.loaded(route)

    def click(self, locator: Any) -> Any:
        """Follow a link as a user would, and wait for its page."""
        href = locator.get_attribute("href")
        locator.click()
        return self.loaded(href)

    def loaded(self, route: str) -> Any:
        """Wait until `route`'s view has been rendered from the API."""
        self.page.wait_for_function(
            "r => { const m = document.getElementById('main'); return m && m.dataset.route === r }",
            arg=route, timeout=20_000)
        return self.page

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)

    def points(self, chart_id: str) -> int:
        return self.page.locator(f"#{chart_id} circle.pt").count()


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

    page = tab.open("#/training")
    tab.shot("training-empty")
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


@pytest.mark.federated
def test_training_pages_and_block_to_model_navigation(browser: Any, fed: LocalFederation) -> None:
    base = base_url(fed)
    out = subprocess.run([sys.executable, "-m", "node", "train", str(fed.procs[0].dir), "--task", "humidity",
                          "--rounds", "2", "--json"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    run = json.loads(out.stdout)["run"]

    tab = Page(browser, base)
    page = tab.open("#/training")
    assert page.locator("tbody tr").count() == 1 and page.locator("text=complete").count() == 1
    tab.shot("training")
    tab.click(page.locator(f"a[href='#/run/{run}']").first)
    curves = page.locator("#learning-curves svg.chart")
    assert curves.count() >= 1
    for i in range(curves.count()):
        assert curves.nth(i).locator("circle.pt").count() >= 2  # a metric per trained round
    tab.shot("run")

    # block -> transaction -> device -> model: a reading's device, whose owner's update is in round 2.
    lineage = get_json(base, f"/model/{run}/2")
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
    tab.click(page.locator(f"a[href='#/model/{run}/2']").first)
    assert page.locator("h1").inner_text() == "Model: humidity round 2"
    assert page.locator("#recomputed").inner_text() == "verified"
    assert page.locator("h2:text('Updates (4)')").count() == 1
    assert "fedledger model export" in page.locator("#export-cmd").inner_text()
    tab.shot("model")
    assert tab.errors == []

    numbers = measure(browser, base)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "explorer-measurements.json").write_text(json.dumps(numbers, indent=2))
    print("explorer measurements:", json.dumps(numbers))
    assert numbers["page_kb"] > 0 and numbers["requests"] >= 5
