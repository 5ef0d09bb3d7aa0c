"""scripts/bench_fl.py: argument checks and the pure helpers (fast), and one small real run (slow).

The real run (2 nodes, 1 round, 3 s of streaming) starts a fedledger federation and a plain Flower
deployment, about 65-75 s on the shared 2-core machine.
"""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import msgpack
import pytest

# tomli comes with Flower (tomllib is 3.11+, the project supports 3.10).
pytest.importorskip("tomli", reason="needs the federated extra (pip install -e '.[federated]')")

import tomli

from node.ledger.holdout import Split, split_of
from node.ledger.provenance import partition, root_of

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_fl.py"


def load_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_fl", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


bench = load_bench()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rounds", "0"], "--rounds must be at least 1"),
        (["--nodes", "0"], "--nodes must be between 1 and 8"),
        (["--nodes", "9"], "--nodes must be between 1 and 8"),
        (["--rate", "-1"], "--rate must be >= 0"),
        (["--train-after", "-2"], "--train-after must be >= 0"),
        (["--timeout", "0"], "--timeout must be positive"),
        (["--dir", "/tmp/with space/x"], "must not contain spaces"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(argv: list[str], message: str, capsys: Any) -> None:
    with pytest.raises(SystemExit) as exc:
        bench.parse_args(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_dir_must_be_new_or_empty(tmp_path: Path, capsys: Any) -> None:
    assert bench.parse_args(["--dir", str(tmp_path)]).dir == tmp_path  # empty is fine
    (tmp_path / "x").write_text("")
    with pytest.raises(SystemExit):
        bench.parse_args(["--dir", str(tmp_path)])
    assert "not an empty directory" in capsys.readouterr().err


def test_defaults() -> None:
    a = bench.parse_args([])
    assert (a.rounds, a.nodes, a.rate, a.train_after, a.dir, a.keep, a.json) == (3, 4, 200.0, 10.0, None,
                                                                                  False, False)


def test_round_stats_and_ratio() -> None:
    s = bench.round_stats([12.0, 8.0, 10.0])
    assert s["mean_s"] == pytest.approx(10.0) and s["mean_excl_first_s"] == pytest.approx(9.0)
    assert bench.round_stats([5.0])["mean_excl_first_s"] is None
    assert bench.ratio(11.0, 10.0) == pytest.approx(1.1)
    assert bench.ratio(None, 10.0) is None and bench.ratio(1.0, 0.0) is None


def launch_summary(rounds: int, **training: Any) -> dict[str, Any]:
    rows = [{"round": 0, "time_ms": 1000, "metrics": {}}]
    rows += [{"round": r, "time_ms": 1000 + 10_000 * r, "seconds": 10.0 + r, "metrics": {"num-examples": 9.0}}
             for r in range(1, rounds + 1)]
    return {"training": {"run": "ab", "rounds": rows, "complete_on_every_replica": True, "error": None,
                         **training}}


def test_fedledger_round_seconds() -> None:
    assert bench.fedledger_round_seconds(launch_summary(3), 3) == [11.0, 12.0, 13.0]
    with pytest.raises(bench.BenchError, match=r"rounds \[3\]"):
        bench.fedledger_round_seconds(launch_summary(2), 3)
    with pytest.raises(bench.BenchError, match="did not complete: boom"):
        bench.fedledger_round_seconds(launch_summary(3, error="boom", complete_on_every_replica=False), 3)
    with pytest.raises(bench.BenchError, match="no training section"):
        bench.fedledger_round_seconds({}, 1)


def test_plain_round_seconds_needs_every_round_and_node() -> None:
    timing = {"round_seconds": {"1": 9.5, "2": 7.25}, "replies": {"1": 4, "2": 4}}
    assert bench.plain_round_seconds(timing, 2, 4) == [9.5, 7.25]
    with pytest.raises(bench.BenchError, match=r"no time for rounds \[3\]"):
        bench.plain_round_seconds(timing, 3, 4)
    with pytest.raises(bench.BenchError, match="reply from all 4"):
        bench.plain_round_seconds({**timing, "replies": {"1": 4, "2": 3}}, 2, 4)


@pytest.mark.parametrize(
    "argv, kind",
    [
        (["/v/bin/python3", "/v/bin/flower-superlink", "--insecure"], "superlink"),
        (["/v/bin/python3", "/v/bin/flower-supernode", "--insecure"], "supernode"),
        (["/v/bin/python3", "/v/bin/flower-superexec", "--plugin-type", "clientapp"], "superexec"),
        (["/v/bin/python3", "/v/bin/flwr-serverapp", "--insecure"], "serverapp"),
        (["/v/bin/python3", "/v/bin/flwr-clientapp", "--insecure"], "clientapp"),
        (["/v/bin/python", "-m", "federated.trainer", "--socket", "x"], "trainer"),
        (["/v/bin/python", "-m", "federated.flower.fl_superlink", "--port", "1"], "superlink"),
        (["/v/bin/python", "-m", "federated.flower.fl_supernode", "--port", "1"], "supernode"),
        (["/v/bin/python", "-m", "node", "node", "run", "/d/node1"], "node"),
        (["/v/bin/python", "/v/bin/fedledger", "launch", "--dir", "d"], "launch"),
        (["/v/bin/python", "/v/bin/flwr", "run", "app", "x", "--stream"], "flwr-cli"),
        (["/bin/sh", "-c", "true"], "other (sh)"),
    ],
)
def test_classify(argv: list[str], kind: str) -> None:
    assert bench.classify(argv) == kind


def test_train_defaults_match_both_apps() -> None:
    """The plain App's own defaults equal what the bench sends, which is fedledger's defaults."""
    sent = bench.train_defaults()
    assert sent == {"local-epochs": 20, "batch-size": 256, "learning-rate": 0.01, "patience": 3, "seed": 0}
    plain = tomli.loads((bench.PLAIN_APP / "pyproject.toml").read_text())["tool"]["flwr"]["app"]
    assert {k: plain["config"][k] for k in sent} == sent
    assert plain["config"]["fraction-evaluate"] == 0.0
    # the components must be top-level modules shipped in the app directory (see its pyproject)
    for ref in plain["components"].values():
        assert (bench.PLAIN_APP / (ref.split(":")[0] + ".py")).is_file()


def test_dumped_rows_are_each_updates_verified_training_set(tmp_path: Path) -> None:
    node = tmp_path / "node1"
    node.mkdir()
    me, other = bytes(range(32)), bytes(32)
    (node / "config.json").write_text(json.dumps({"public_key": me.hex()}))
    db = sqlite3.connect(node / "node.db")
    db.executescript(
        "CREATE TABLE devices (device BLOB PRIMARY KEY, owner BLOB, name TEXT);"
        "CREATE TABLE readings (tx_id BLOB PRIMARY KEY, height INTEGER, device BLOB, seq INTEGER,"
        " timestamp_ms INTEGER, temperature_c REAL, humidity_pct REAL);"
    )
    db.executemany("INSERT INTO devices VALUES (?, ?, ?)", [(b"d1", me, "dev1"), (b"d2", other, "dev2")])
    # dev1: one reading every 20 minutes over 10 hours, two blocks; dev2 belongs to another node
    ts = [i * 1_200_000 for i in range(30)]
    db.executemany("INSERT INTO readings VALUES (?, ?, ?, ?, ?, ?, ?)",
                   [(bytes([i]) * 4, 1 if i < 15 else 2, b"d1", i + 1, t, 20.0 + i / 10, 50.0) for i, t in
                    enumerate(ts)] + [(b"x", 1, b"d2", 1, 0, 30.0, 60.0)])
    db.commit()
    db.close()
    readings = bench.own_readings(node)
    assert {r[4] for r in readings} == {"dev1"} and len(readings) == 30
    for cut in (1, 2):
        train, held = partition([r for r in readings if r[7] <= cut])
        assert train and held  # 5 or 10 hours: held-out hours on both sides of the cut
        rows = bench.training_rows(readings, len(train), root_of([r[0] for r in train]).hex(), cut)
        assert rows == [[r[4], r[2], r[3], r[5], r[6]] for r in train]
        assert all(split_of(r[2]) is Split.TRAIN for r in rows)
    updates = {1: {"node1": (len(train), root_of([r[0] for r in train]).hex(), 2)}}
    assert bench.dump_rows(tmp_path, 1, tmp_path / "rows", updates) == [[len(train)]]
    path = tmp_path / "rows" / "node1" / "round-1.msgpack"
    assert msgpack.unpackb(path.read_bytes(), raw=False) == [list(r) for r in rows]
    with pytest.raises(bench.BenchError, match="is not the update's"):
        bench.training_rows(readings, len(train), root_of([r[0] for r in train]).hex(), 1)
    with pytest.raises(bench.BenchError, match="round 1 has no update from node1"):
        bench.dump_rows(tmp_path, 1, tmp_path / "rows", {1: {"node2": (1, "00", 1)}})


def test_table_renders_a_result() -> None:
    res = {
        "plain_rounds_s": [20.0, 15.0], "fedledger_rounds_s": [18.0, 16.5], "plain_round_s": 17.5,
        "fedledger_round_s": 17.25, "ratio": 0.986, "plain_round_s_excl_first": 15.0,
        "fedledger_round_s_excl_first": 16.5, "ratio_excl_first": 1.1, "target_ratio": 1.1,
        "within_target": True, "nodes": 4, "rounds": 2, "rows_per_node": [[10, 10, 10, 10], [12, 12, 12, 12]],
        "num_examples": {"plain": [32, 32], "fedledger": [20, 28]}, "same_training_rows": False,
        "plain": {"setup_s": 8.0, "flwr_run_s": 40.0, "total_s": 48.0, "stop_s": 4.0},
        "fedledger": {"launch_s": 90.0, "request_to_round0_s": 15.0, "request_to_last_commit_s": 50.0},
        "peak_rss_mb": {"plain": {"clientapp": {"peak_rss_mb": 600.0, "processes": 8, "cpu_s": 60.0}},
                        "fedledger": {"trainer": {"peak_rss_mb": 530.0, "processes": 4, "cpu_s": 20.0}}},
    }
    text = bench.render_table(res)
    assert "0.986" in text and "within" in text and "clientapp" in text and "trainer" in text
    assert text.splitlines()[1].split() == ["1", "20.00", "18.00", "0.900"]
    assert "NOT the same rows" in text


@pytest.mark.slow
def test_small_real_run(tmp_path: Path) -> None:
    work = tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--rounds", "1", "--nodes", "2", "--train-after", "3", "--json",
         "--dir", str(work), "--timeout", "300"],
        capture_output=True, text=True, timeout=420, cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout)
    assert res["plain_round_s"] > 0 and res["fedledger_round_s"] > 0
    assert res["ratio"] == pytest.approx(res["fedledger_round_s"] / res["plain_round_s"], rel=1e-2)
    assert len(res["rows_per_node"]) == 1 and len(res["rows_per_node"][0]) == 2
    assert min(res["rows_per_node"][0]) >= 2
    # both sides trained on the very same rows: the plain side on what each fedledger node used
    # fedledger's weight is the whole verified training set, plain Flower's the 80 % it fits on
    assert res["num_examples"]["fedledger"] == res["num_examples"]["training_rows"]
    assert res["same_training_rows"] is True
    assert res["leftover_processes"] == 0
    rows = msgpack.unpackb((work / "plain" / "rows" / "node1" / "round-1.msgpack").read_bytes(), raw=False)
    assert len(rows) == res["rows_per_node"][0][0]
    assert "clientapp" in res["peak_rss_mb"]["plain"] and "trainer" in res["peak_rss_mb"]["fedledger"]


def test_sampler_sees_children_and_what_is_left() -> None:
    sampler = bench.Sampler()
    sampler.phase = "plain"
    child = subprocess.Popen(["sleep", "30"])
    try:
        sampler.sample()
        assert sampler.by_kind("plain")["other (sleep)"]["processes"] == 1
        assert sampler.alive() == [child.pid]
    finally:
        child.kill()
        child.wait()
    assert sampler.alive() == []


def test_a_failing_side_exits_1_with_the_reason(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    fake = "import sys; print('not json'); print('launch broke', file=sys.stderr); sys.exit(3)"
    monkeypatch.setattr(bench, "fedledger_command", lambda: [sys.executable, "-c", fake])
    assert bench.main(["--dir", str(tmp_path / "work"), "--rounds", "1"]) == 1
    err = capsys.readouterr().err
    assert "FAILED: fedledger launch exited with status 3" in err and "launch broke" in err
    assert "work directory kept" in err
