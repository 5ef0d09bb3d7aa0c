"""Numbers a client puts in a URL are bounded before they reach storage (issue 11: GET /block/2^63
answered HTTP 500 with a traceback, an unhandled OverflowError in SQLite)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from node.ledger.chain import Ledger
from node.server.api import NodeApi
from node.store.sqlite import SqliteStore
from tests.factories import make_genesis, populated_ledger


class FakeNode:
    def __init__(self, store: SqliteStore) -> None:
        self.store = store

    def finality(self, last: int) -> dict[str, Any]:
        return {"last": last}


@pytest.fixture
def api(tmp_path: Path) -> NodeApi:
    keys, genesis = make_genesis(4)
    ledger = Ledger(SqliteStore(tmp_path / "node.db"), genesis)
    populated_ledger(ledger, keys)
    return NodeApi(FakeNode(ledger.store))  # type: ignore[arg-type]


@pytest.mark.parametrize("path, query", [
    ("/block/9223372036854775808", {}),
    ("/block/-1", {}),
    ("/block/" + "9" * 5000, {}),
    ("/blocks", {"from": "1", "to": str(2**64)}),
    ("/blocks", {"from": str(-(2**70)), "to": "2"}),
    ("/tx/00", {}),
    ("/tx/zz", {}),
    ("/finality", {"last": str(10**30)}),
    ("/finality", {"last": "0"}),
])
def test_out_of_range_numbers_are_a_400_not_a_server_error(
    api: NodeApi, path: str, query: dict[str, str]
) -> None:
    status, body = api.handle_http(path, query)  # type: ignore[misc]
    assert status == 400 and body["error"].startswith("bad request")


def test_numbers_in_range_still_answer(api: NodeApi) -> None:
    assert api.handle_http("/block/9223372036854775807", {})[0] == 404  # type: ignore[index]
    assert api.handle_http("/block/2", {})[0] == 200  # type: ignore[index]
    assert api.handle_http("/blocks", {"from": "1", "to": str(2**63 - 1)})[0] == 200  # type: ignore[index]
    assert api.handle_http("/tx/" + "00" * 32, {})[0] == 404  # type: ignore[index]
    assert api.handle_http("/finality", {"last": "20"}) == (200, {"last": 20})
