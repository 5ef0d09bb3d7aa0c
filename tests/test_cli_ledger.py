"""`fedledger ledger ...` on replicas built in tmp dirs (no node processes; HTTP through a tiny
in-thread server that answers like a node's API)."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from node.cli.main import main
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis
from node.ledger.keys import short_id
from node.net.ports import free_port
from node.server.api import NodeApi
from node.server.datadir import DB_FILE, GENESIS_FILE, init_node
from node.server.offline import offline_status, open_node
from node.store.sqlite import SqliteStore
from tests.factories import commit_next, make_genesis, populated_ledger


def make_node_dir(
    tmp_path: Path, name: str, genesis: Genesis, build: Callable[[Ledger], Any], port: int | None = None
) -> Path:
    d = tmp_path / name
    init_node(d, name=name, port=port or free_port())
    genesis.save(d / GENESIS_FILE)
    store = SqliteStore(d / DB_FILE)
    build(Ledger(store, genesis))
    store.close()
    return d


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, Any]:
    capsys.readouterr()
    rc = main(["ledger", *argv, "--json"])
    out = capsys.readouterr().out
    return rc, json.loads(out) if out.strip() else None


def run_err(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["ledger", *argv])
    cap = capsys.readouterr()
    assert "Traceback" not in cap.err
    return rc, cap.err


@pytest.fixture(scope="module")
def chain() -> tuple[list[Any], Genesis]:
    return make_genesis(4)


@pytest.fixture
def node_a(tmp_path: Path, chain: tuple[list[Any], Genesis]) -> Path:
    keys, genesis = chain
    # height 1: two device registrations; heights 2..5: 2 devices x 3 readings each
    return make_node_dir(tmp_path, "a", genesis, lambda led: populated_ledger(led, keys, n_blocks=4))


def diverging(keys: list[Any], at: int, total: int, salt: int) -> Callable[[Ledger], None]:
    """`total` blocks: 1 registers devices, 2 holds readings, then empty blocks; block `at` (>= 3)
    is `salt` ms later, so chains built with different salts differ from `at` on."""

    def build(led: Ledger) -> None:
        populated_ledger(led, keys, n_blocks=1)
        while led.height < total:
            salt_ms = salt if led.height + 1 == at else 0
            commit_next(led, keys, [], time_ms=led.head_time_ms + 1000 + salt_ms)

    return build


# --- status ------------------------------------------------------------------------------------


def test_status_of_a_stopped_node_comes_from_its_replica(node_a: Path, chain: Any, capsys: Any) -> None:
    keys, genesis = chain
    rc, st = run_json(capsys, "status", str(node_a))
    config = json.loads((node_a / "config.json").read_text())
    assert rc == 0 and st["running"] is False
    assert st["node_id"] == config["node_id"] and st["chain_id"] == genesis.chain_id
    assert st["genesis_hash"] == genesis.hash.hex()
    assert st["height"] == 5 and st["readings"] == 24 and st["devices"] == 2
    assert [v["node_id"] for v in st["validators"]] == [k.short_id for k in keys]
    assert (st["peers"], st["mempool"], st["rejected"]) == (0, 0, {})
    store = SqliteStore(node_a / DB_FILE)
    assert st["head_hash"] == store.head_hash().hex()  # type: ignore[union-attr]
    store.close()
    port = config["listen_port"]
    assert st["explorer"] == f"http://127.0.0.1:{port}/"
    assert main(["ledger", "status", str(node_a)]) == 0
    out = capsys.readouterr().out
    assert "stopped" in out and "height" in out and st["head_hash"][:16] in out
    assert f"explorer    http://127.0.0.1:{port}/  (served while the node runs)" in out


class FakeNodeHandler(BaseHTTPRequestHandler):
    """Answers GET like a node: /status from `status`, /blocks through NodeApi.handle_http."""

    status: dict[str, Any] = {}
    api: NodeApi | None = None

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path == "/status":
            code, body = 200, self.status
        else:
            assert self.api is not None
            res = self.api.handle_http(parts.path, dict(parse_qsl(parts.query)))
            code, body = res if res else (404, {"error": "not_found"})
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@contextmanager
def fake_node(node_dir: Path, **status: Any) -> Iterator[str]:
    """Serve node_dir's replica over HTTP; yields the URL."""
    with open_node(node_dir) as node:
        offline = offline_status(node)
    offline.pop("running")
    store = SqliteStore(node_dir / DB_FILE)
    handler = type("H", (FakeNodeHandler,), {
        "status": {**offline, **status},
        "api": NodeApi(type("FakeNode", (), {"store": store})()),  # type: ignore[arg-type]
    })
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"ws://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        store.close()


def test_status_of_a_running_node_is_its_live_status(tmp_path: Path, chain: Any, capsys: Any) -> None:
    keys, genesis = chain
    port = free_port()
    d = make_node_dir(tmp_path, "live", genesis, lambda led: populated_ledger(led, keys, n_blocks=1), port)
    with fake_node(d, peers=3, mempool=7) as url:
        cfg = json.loads((d / "config.json").read_text())
        cfg["listen_port"] = int(url.rsplit(":", 1)[1])
        (d / "config.json").write_text(json.dumps(cfg))
        rc, st = run_json(capsys, "status", str(d))
        assert rc == 0 and st["running"] is True and (st["peers"], st["mempool"]) == (3, 7)
    with fake_node(d, chain_id=None, validators=None) as url:  # a node that omits keys
        cfg["listen_port"] = int(url.rsplit(":", 1)[1])
        (d / "config.json").write_text(json.dumps(cfg))
        assert main(["ledger", "status", str(d)]) == 0
    out = capsys.readouterr().out
    assert "running" in out and "mempool 0" in out


def test_status_ignores_another_node_on_the_configured_port(tmp_path: Path, chain: Any, capsys: Any) -> None:
    keys, genesis = chain
    d = make_node_dir(tmp_path, "n", genesis, lambda led: populated_ledger(led, keys, n_blocks=1))
    with fake_node(d, node_id="0123456789abcdef", peers=3) as url:
        cfg = json.loads((d / "config.json").read_text())
        cfg["listen_port"] = int(url.rsplit(":", 1)[1])
        (d / "config.json").write_text(json.dumps(cfg))
        rc, st = run_json(capsys, "status", str(d))
    assert rc == 0 and st["running"] is False and st["peers"] == 0 and st["height"] == 2


# --- blocks / block ----------------------------------------------------------------------------


def test_blocks_default_and_range(node_a: Path, capsys: Any) -> None:
    rc, out = run_json(capsys, "blocks", str(node_a))
    assert rc == 0 and out["height"] == 5 and [b["height"] for b in out["blocks"]] == [1, 2, 3, 4, 5]
    b1 = out["blocks"][0]
    assert b1["num_txs"] == 2 and len(b1["proposer"]) == 16 and set(b1) >= {"hash", "round", "time_ms"}
    rc, out = run_json(capsys, "blocks", str(node_a), "--from", "2", "--to", "3")
    assert [(b["height"], b["num_txs"]) for b in out["blocks"]] == [(2, 6), (3, 6)]
    assert out["blocks"][1]["prev_hash"] == out["blocks"][0]["hash"]
    rc, out = run_json(capsys, "blocks", str(node_a), "--from", "4", "--to", "99")
    assert [b["height"] for b in out["blocks"]] == [4, 5]
    assert main(["ledger", "blocks", str(node_a), "--to", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["HEIGHT", "HASH", "ROUND", "TIME", "(UTC)", "PROPOSER", "TXS"]
    assert [ln.split()[0] for ln in lines[1:3]] == ["1", "2"] and "2 blocks shown (height 5)" in lines[-1]


def test_blocks_defaults_to_the_last_20(tmp_path: Path, chain: Any, capsys: Any) -> None:
    keys, genesis = chain

    def build(led: Ledger) -> None:
        for _ in range(25):
            commit_next(led, keys, [])

    d = make_node_dir(tmp_path, "long", genesis, build)
    rc, out = run_json(capsys, "blocks", str(d))
    assert rc == 0 and [b["height"] for b in out["blocks"]] == list(range(6, 26))


def test_block_detail_has_txs_and_commit_signers(node_a: Path, chain: Any, capsys: Any) -> None:
    keys, _ = chain
    rc, b = run_json(capsys, "block", str(node_a), "2")
    assert rc == 0 and b["height"] == 2 and len(b["txs"]) == 6
    r = b["txs"][0]
    assert r["kind"] == "reading" and len(r["device_id"]) == 16 and r["body"]["seq"] == 0
    assert r["device_id"] == short_id(bytes.fromhex(r["body"]["device"]))
    assert isinstance(r["body"]["temperature_c"], float) and "humidity_pct" in r["body"]
    assert sorted(b["commit_signers"]) == sorted(k.short_id for k in keys)
    assert b["commit"]["block_id"] == b["hash"] and b["last_commit"]["height"] == 1
    assert main(["ledger", "block", str(node_a), "1"]) == 0
    out = capsys.readouterr().out
    assert "register_device" in out and "4/4 precommits" in out and "none (first block)" in out
    assert main(["ledger", "block", str(node_a), "3"]) == 0
    out = capsys.readouterr().out
    assert "reading" in out and " C " in out and r["device_id"] in out


def test_block_unknown_height(node_a: Path, capsys: Any) -> None:
    for h in ("99", "0", "-3"):
        rc, err = run_err(capsys, "block", str(node_a), h)
        assert rc == 1 and f"no block at height {h} (height is 5)" in err


# --- verify ------------------------------------------------------------------------------------


def test_verify_ok(node_a: Path, capsys: Any) -> None:
    rc, rep = run_json(capsys, "verify", str(node_a))
    assert rc == 0 and rep["ok"] and rep["verified_height"] == 5
    assert rep["counts"] == {"blocks": 5, "txs": 26, "readings": 24, "precommits": 20}
    assert main(["ledger", "verify", str(node_a)]) == 0
    assert capsys.readouterr().out.startswith("ok: verified 5 blocks, 26 txs")


@pytest.mark.parametrize(("where", "bad"), [("", 2), (" WHERE height = 4", 4)])
def test_verify_catches_an_edited_reading(node_a: Path, capsys: Any, where: str, bad: int) -> None:
    db = sqlite3.connect(node_a / DB_FILE)
    db.execute("UPDATE readings SET temperature_c = 99" + where)
    db.commit()
    db.close()
    rc, rep = run_json(capsys, "verify", str(node_a))
    assert rc == 1 and not rep["ok"] and rep["first_bad_height"] == bad
    assert rep["verified_height"] == bad - 1
    assert main(["ledger", "verify", str(node_a)]) == 1
    assert capsys.readouterr().out.startswith(f"FAILED at height {bad}: ")


def test_reads_never_write_and_work_beside_a_writer(node_a: Path, capsys: Any) -> None:
    db_path = node_a / DB_FILE
    before = db_path.read_bytes()
    writer = sqlite3.connect(db_path, isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")  # the node holds the write lock mid-commit
    writer.execute("DELETE FROM readings WHERE height = 5")
    try:
        rc, rep = run_json(capsys, "verify", str(node_a))
        assert rc == 0 and rep["counts"]["readings"] == 24  # sees the last committed state
        rc, _ = run_json(capsys, "blocks", str(node_a))
        assert rc == 0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    db_path.chmod(0o444)
    assert run_json(capsys, "status", str(node_a))[0] == 0
    assert db_path.read_bytes() == before


# --- compare -----------------------------------------------------------------------------------


def test_compare_identical_replicas(tmp_path: Path, chain: Any, capsys: Any) -> None:
    keys, genesis = chain
    a = make_node_dir(tmp_path, "a", genesis, diverging(keys, 3, 8, 0))
    b = make_node_dir(tmp_path, "b", genesis, diverging(keys, 3, 6, 0))  # a prefix of a
    rc, out = run_json(capsys, "compare", str(a), str(b))
    assert rc == 0 and out["agree"] and out["first_divergence"] is None and out["common_height"] == 6
    assert [r["height"] for r in out["replicas"]] == [8, 6]
    assert out["replicas"][0]["hash_at_common"] == out["replicas"][1]["hash_at_common"]
    assert out["replicas"][1]["hash_at_common"] == out["replicas"][1]["head_hash"]
    assert main(["ledger", "compare", str(a), str(b)]) == 0
    assert "agree: 2 replicas hold the same blocks 1..6" in capsys.readouterr().out
    assert run_json(capsys, "compare", str(a))[0] == 0


@pytest.mark.parametrize("at", [3, 4, 6])
def test_compare_diverging_replicas_finds_the_first_bad_height(
    tmp_path: Path, chain: Any, capsys: Any, at: int
) -> None:
    keys, genesis = chain
    a = make_node_dir(tmp_path, "a", genesis, diverging(keys, at, 9, 0))
    b = make_node_dir(tmp_path, "b", genesis, diverging(keys, at, 7, 1))
    c = make_node_dir(tmp_path, "c", genesis, diverging(keys, at, 8, 0))
    rc, out = run_json(capsys, "compare", str(a), str(b), str(c))
    assert rc == 1 and not out["agree"] and out["first_divergence"] == at and out["common_height"] == 7
    assert main(["ledger", "compare", str(a), str(b)]) == 1
    assert f"DIVERGE: first differing block at height {at}" in capsys.readouterr().out


def test_compare_different_genesis(tmp_path: Path, chain: Any, capsys: Any) -> None:
    keys, genesis = chain
    keys2, genesis2 = make_genesis(4, chain_id="other-chain")
    a = make_node_dir(tmp_path, "a", genesis, diverging(keys, 5, 5, 0))
    b = make_node_dir(tmp_path, "b", genesis2, diverging(keys2, 5, 5, 0))
    rc, out = run_json(capsys, "compare", str(a), str(b))
    assert rc == 1 and out["first_divergence"] == 0


def test_compare_over_http_and_mixed(tmp_path: Path, chain: Any, capsys: Any) -> None:
    keys, genesis = chain
    a = make_node_dir(tmp_path, "a", genesis, diverging(keys, 5, 9, 0))
    b = make_node_dir(tmp_path, "b", genesis, diverging(keys, 5, 8, 1))
    with fake_node(a) as url_a, fake_node(b) as url_b:
        rc, out = run_json(capsys, "compare", url_a, url_b.replace("ws://", "http://"))
        assert rc == 1 and out["first_divergence"] == 5 and out["common_height"] == 8
        assert out["replicas"][0]["node_id"] == json.loads((a / "config.json").read_text())["node_id"]
        rc, out = run_json(capsys, "compare", url_a, str(a))
        assert rc == 0 and out["agree"] and out["common_height"] == 9


# --- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_are_one_line_errors(tmp_path: Path, node_a: Path, capsys: Any) -> None:
    missing = str(tmp_path / "missing")
    cases = [
        (["status", missing], "is not a directory"),
        (["verify", str(tmp_path)], "is not a node directory"),
        (["blocks", str(node_a), "--from", "0"], "--from must be a height >= 1"),
        (["blocks", str(node_a), "--from", "4", "--to", "2"], "--to 2 is below --from 4"),
        (["compare", str(node_a), f"ws://127.0.0.1:{free_port()}"], "cannot reach"),
        (["compare", "ftp://example.org"], "is not a node URL"),
        (["compare", missing], "is not a directory"),
    ]
    inited = tmp_path / "fresh"
    init_node(inited, port=free_port())
    cases.append((["blocks", str(inited)], "no ledger database"))
    junk = tmp_path / "junk"
    init_node(junk, port=free_port())
    (junk / DB_FILE).write_text("this is not sqlite\n" * 100)
    cases.append((["verify", str(junk)], str(junk / DB_FILE)))
    for argv, message in cases:
        rc, err = run_err(capsys, *argv)
        assert rc == 1, argv
        assert message in err and err.count("\n") == 1, (argv, err)


@pytest.mark.parametrize("argv", [[], ["block", "x"], ["block", "x", "abc"], ["compare"], ["blocks"],
                                  ["blocks", "d", "--from", "two"], ["frob", "x"]])
def test_usage_errors_exit_2(argv: list[str], capsys: Any) -> None:
    assert main(["ledger", *argv]) == 2
