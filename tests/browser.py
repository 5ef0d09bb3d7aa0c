"""The explorer's browser tests' tools: a headless Chromium (the `browser` fixture in conftest.py,
one per test module) and a tab that records console errors and saves screenshots under
tests/artifacts/explorer/ (gitignored)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ARTIFACTS = Path(__file__).parent / "artifacts" / "explorer"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("FEDLEDGER_CHROMIUM"), "/usr/bin/chromium", shutil.which("chromium"),
                      shutil.which("chromium-browser")):
        if candidate and Path(candidate).exists():
            return candidate
    return None


def launch_browser() -> Iterator[Any]:
    """Playwright's Chromium, skipping (saying why) when Playwright or a Chromium cannot be had.
    Module-scoped by its fixture: Playwright's sync API runs an event loop on the test thread while
    it is open, so it must not outlive the module that uses it."""
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


class Page:
    """A browser tab on a node's explorer that records console errors and uncaught exceptions."""

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


