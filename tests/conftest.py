"""Suite-wide pytest hooks."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser import launch_browser

# The optional `federated` extra; the node and the ledger run without it.
FEDERATED_EXTRA = ("tensorflow", "keras", "flwr")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `federated` skip, saying why, where the federated extra is not installed, so that a
    core install (`pip install -e ".[dev]"`) still runs everything else. find_spec, not import: loading
    TensorFlow only to find out it is there would cost every test run seconds."""
    missing = [m for m in FEDERATED_EXTRA if importlib.util.find_spec(m) is None]
    if not missing:
        return
    skip = pytest.mark.skip(reason=f"needs the federated extra (pip install -e '.[federated]'); "
                                   f"not installed: {', '.join(missing)}")
    for item in items:
        if item.get_closest_marker("federated"):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """A headless Chromium for the explorer's browser tests (tests/browser.py), one per module."""
    yield from launch_browser()
