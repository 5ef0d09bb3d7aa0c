"""`fedledger member` and `fedledger join` on bad input: clear errors, nothing written (no processes)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from node.cli.main import main
from node.cli.member import plan_vote, resolve
from node.errors import ConfigError
from node.ledger.chain import Ledger
from node.ledger.transactions import make_join_request, make_member_vote
from node.server.datadir import DB_FILE, GENESIS_FILE, init_node
from node.store.sqlite import SqliteStore
from tests.factories import CHAIN_ID, key_from, make_block, make_genesis

ALICE = key_from("alice")


@pytest.fixture
def replica(tmp_path: Path) -> tuple[Path, list[Any]]:
    """An authority's node directory whose ledger holds Alice's join request and one vote."""
    keys, genesis = make_genesis(4)
    d = tmp_path / "auth"
    init_node(d, name="auth")
    genesis.save(d / GENESIS_FILE)
    ledger = Ledger(SqliteStore(d / DB_FILE), genesis)
    for txs in ([make_join_request(ALICE, CHAIN_ID, "participant", "alice", "ws://h:1")],
                [make_member_vote(keys[0], CHAIN_ID, ALICE.public, "participant", "add")]):
        block, cert = make_block(ledger, keys, txs)
        ledger.commit(block, cert)
    ledger.store.close()
    return d, keys


def test_member_list_shows_requests_and_tallies(replica: tuple[Path, list[Any]], capsys: Any) -> None:
    d, _ = replica
    assert main(["member", "list", str(d), "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert len(view["members"]) == 4 and {m["role"] for m in view["members"]} == {"authority"}
    (req,) = view["join_requests"]
    assert req["node_id"] == ALICE.short_id and req["role"] == "participant"
    (tally,) = view["votes"]
    assert (tally["counted"], tally["needed"]) == (1, 3)
    assert main(["member", "list", str(d)]) == 0
    assert f"fedledger member approve {ALICE.short_id}" in capsys.readouterr().out


def test_node_ids_resolve_by_short_id_or_key_and_nothing_else(replica: tuple[Path, list[Any]]) -> None:
    d, keys = replica
    store = SqliteStore(d / DB_FILE)
    try:
        ms, members = store.membership(), store.members()
    finally:
        store.close()
    assert plan_vote(ms, members, ALICE.short_id, "add", None) == (ALICE.public, "participant")
    assert plan_vote(ms, members, ALICE.public.hex(), "add", None)[0] == ALICE.public
    assert plan_vote(ms, members, keys[1].short_id, "remove", None) == (keys[1].public, "authority")
    with pytest.raises(ConfigError, match="no open join request"):
        plan_vote(ms, members, keys[1].short_id, "add", None)
    with pytest.raises(ConfigError, match="has the role authority, not participant"):
        plan_vote(ms, members, keys[1].short_id, "remove", "participant")
    with pytest.raises(ConfigError, match="16-hex short id"):
        resolve("alice", [ALICE.public], "member")


def test_votes_need_a_running_authority_node(replica: tuple[Path, list[Any]], capsys: Any) -> None:
    d, _ = replica
    assert main(["member", "approve", ALICE.short_id, str(d)]) == 1
    assert "is not running" in capsys.readouterr().err
    assert main(["member", "approve", ALICE.short_id, str(d.parent / "nowhere")]) == 1
    assert "not a node directory" in capsys.readouterr().err


def test_join_refuses_bad_arguments_before_touching_anything(tmp_path: Path, capsys: Any) -> None:
    d = tmp_path / "new"
    assert main(["join", "ws://127.0.0.1:1", str(d), "--genesis-hash", "xyz"]) == 1
    assert "--genesis-hash must be 64 hex" in capsys.readouterr().err
    assert main(["join", "not a url", str(d)]) == 1
    assert "is not a node URL" in capsys.readouterr().err
    assert main(["join", "ws://127.0.0.1:1", str(d)]) == 1  # nobody listens there
    assert "cannot reach" in capsys.readouterr().err
    assert not d.exists()
