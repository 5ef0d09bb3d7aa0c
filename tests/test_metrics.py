"""GET /metrics (Prometheus text format) and the node's log lines per block and training round
(issue 15, items 3 and 4): scraped over HTTP from running nodes and read with Prometheus' own
parser, the log read as JSON objects."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.launch.federation import create_federation
from node.launch.processes import wait_until
from node.ledger.keys import NodeKey
from node.ledger.transactions import make_register_device
from node.server.datadir import LOG_FILE
from node.server.logs import JsonFormatter, committed_rounds, formatter, training_round_line
from node.server.metrics import MAX_COUNTER_SERIES, Buckets, _by_label
from node.server.runtime import Node
from tests.e2e import LocalFederation
from tests.factories import commit_next, participant_key
from tests.test_model_txs import open_run

DOCS = Path(__file__).resolve().parent.parent / "docs"
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(url: str) -> tuple[str, Samples]:
    base = url.replace("ws://", "http://").rstrip("/")
    with urllib.request.urlopen(base + "/metrics", timeout=5) as resp:
        assert resp.status == 200
        ctype = resp.headers["Content-Type"]
        text = resp.read().decode()
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return text, samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_two_nodes_in_one_process_each_serve_their_own_metrics(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    """Separate registries: nodes in one process (as here) neither clash nor mix their numbers."""
    nodes = [Node(create_federation(tmp_path / f"fed{i}", 1)[1][0].dir) for i in range(2)]
    caplog.set_level(logging.INFO, logger="fedledger.node")

    async def scenario() -> list[Samples]:
        runs = [asyncio.create_task(n.run()) for n in nodes]
        try:
            for _ in range(200):
                if all(n._loop is not None and n.net.url for n in nodes):
                    break
                await asyncio.sleep(0.05)
            # node 0 commits two blocks of one tx, node 1 one block of two
            for n, batches in ((nodes[0], [1, 1]), (nodes[1], [2])):
                for size in batches:
                    h = n.store.height()
                    txs = [make_register_device(n.key, n.genesis.chain_id, NodeKey.generate().public, f"d{i}")
                           for i in range(size)]
                    assert all(r is None for _, r in n.accept_txs(txs))
                    for _ in range(200):
                        if n.store.height() > h:
                            break
                        await asyncio.sleep(0.05)
            return [(await asyncio.to_thread(scrape, n.url))[1] for n in nodes]
        finally:
            for n in nodes:
                n.stop()
            await asyncio.gather(*runs)

    first, second = asyncio.run(scenario())
    assert value(first, "fedledger_height") == 2 and value(second, "fedledger_height") == 1
    assert value(first, "fedledger_txs_finalized_total") == 2
    assert value(second, "fedledger_txs_finalized_total") == 2
    assert value(first, "fedledger_blocks_committed_total", source="consensus") == 2
    assert value(second, "fedledger_blocks_committed_total", source="consensus") == 1
    ids = {k[1] for k in first if k[0] == "fedledger_node_info"} | {k[1] for k in second
                                                                     if k[0] == "fedledger_node_info"}
    assert len(ids) == 2
    # the text log line of each committed block: height, txs, round, interval, latency
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("committed block")]
    assert len(lines) == 3
    assert any(line.startswith("committed block 2: 1 txs (0 readings), round 0,") and "since previous" in line
               and "finality p50" in line and "(1 txs submitted here)" in line for line in lines)
    assert "committed block 1: 2 txs" in " ".join(lines)
    assert "committed height" not in caplog.text  # the host core's line is debug now, not a second line


@pytest.mark.slow
def test_a_running_node_serves_metrics_that_follow_its_status_and_logs_json(tmp_path: Path) -> None:
    fed = LocalFederation(tmp_path / "fed", nodes=2, node_args=["--log-format", "json"])
    fed.start()
    try:
        url = fed.procs[0].url
        feeder = fed.feeder(targets=[0], devices=2)
        fed.feed(feeder, 0)  # registers the devices (one block or more)
        _, before = scrape(url)
        fed.feed(feeder, 120)
        fed.wait_readings(120)
        # no empty blocks: once the readings are in, the height stays put between the two reads
        assert wait_until(lambda: fed.status(0)["mempool"] == 0, 30)
        status = fed.status(0)
        text, after = scrape(url)
    finally:
        fed.stop()
    assert value(after, "fedledger_height") == status["height"]
    readings = [value(s, "fedledger_readings_finalized_total") for s in (before, after)]
    assert readings[1] - readings[0] == 120
    blocks = [value(s, "fedledger_blocks_committed_total", source="consensus") for s in (before, after)]
    assert blocks[1] > blocks[0] >= 1
    count = value(after, "fedledger_finality_latency_seconds_count")
    assert count >= 120  # the readings (and registrations) were submitted to this node
    assert value(after, "fedledger_finality_latency_seconds_bucket", le="+Inf") == count
    assert value(after, "fedledger_peers", direction="inbound") + value(after, "fedledger_peers",
                                                                          direction="outbound") == 1
    assert value(after, "fedledger_network_sent_bytes_total") > 0
    assert value(after, "fedledger_mempool_txs") == 0
    assert value(after, "process_resident_memory_bytes") > 10 * 2**20
    assert value(after, "process_cpu_seconds_total") > 0
    assert value(after, "fedledger_consensus_rounds_per_height_count") == blocks[1]
    assert value(after, "fedledger_tx_rejections_total", reason="bad_signature") == 0  # known reasons at 0
    # docs/metrics.md names every family the node serves, and the dashboard uses only served ones
    served = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    docs = (DOCS / "metrics.md").read_text()
    assert served and [n for n in served if f"`{n}`" not in docs] == []
    dashboard = (DOCS / "grafana-dashboard.json").read_text()
    used = set(re.findall(r"\b((?:fedledger|process)_[a-z_]+)", dashboard))
    assert used and sorted(u for u in used if re.sub(r"_bucket$", "", u) not in served) == []
    # node.log: one JSON object per line, the block lines with their numbers as fields
    records = [json.loads(line) for line in (fed.procs[0].dir / LOG_FILE).read_text().splitlines()]
    committed = [r for r in records if r.get("event") == "block_committed"]
    assert {r["height"] for r in committed} >= set(range(2, status["height"] + 1)) - {
        r["height"] for r in records if r.get("event") == "blocks_synced"}
    assert sum(r["readings"] for r in committed) == 120
    assert all(r["level"] == "INFO" and r["msg"].startswith(f"committed block {r['height']}:")
               for r in committed)
    assert any(r["finality_samples"] > 0 and r["finality_p50_s"] is not None for r in committed)


def test_json_log_format_is_one_object_per_line_with_the_fields() -> None:
    record = logging.LogRecord("fedledger.node", logging.INFO, __file__, 1, "committed block %d", (7,), None)
    record.fields = {"event": "block_committed", "height": 7, "msg": "not this", "key": b"\x01"}
    line = JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["msg"] == "committed block 7" and out["height"] == 7 and out["level"] == "INFO"
    assert out["key"] == "b'\\x01'" and out["ts"].endswith("Z")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    out = json.loads(JsonFormatter().format(record))
    assert "ValueError: boom" in out["exc"]
    text = formatter("text").format(record)
    assert " ERROR x: failed\n" in text and "ValueError: boom" in text
    with pytest.raises(ValueError, match="json"):
        formatter("yaml")


def test_training_rounds_give_a_log_line_with_metric_and_duration() -> None:
    run = open_run(rounds=2)
    ups = [run.update(participant_key(i), 1, i) for i in range(2)]
    commit_next(run.ledger, run.keys, ups)
    block = commit_next(run.ledger, run.keys, [run.commit(1, ups)])
    [r] = committed_rounds(run.ledger.store, block)
    assert (r.task, r.round, r.rounds, r.metrics) == ("humidity", 1, 2, {"loss": 0.4})
    assert r.duration_s is not None and r.duration_s >= 0
    msg, fields = training_round_line(r)
    assert msg.startswith(f"training round 1/2 of humidity run {run.run.hex()[:12]} committed at height "
                          f"{block.height}: loss=0.4")
    assert "after round 0" in msg and fields["metrics"] == {"loss": 0.4}


def test_histogram_buckets_and_bounded_labels() -> None:
    b = Buckets((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 3.0):
        b.observe(v)
    fam = b.family("x_seconds", "doc")
    got = {(s.name, s.labels.get("le")): s.value for s in fam.samples}
    assert got[("x_seconds_bucket", "0.1")] == 2 and got[("x_seconds_bucket", "1.0")] == 3
    assert got[("x_seconds_bucket", "+Inf")] == 4 and got[("x_seconds_count", None)] == 4
    from collections import Counter

    counters = Counter({"rejected:bad_signature": 2, "rejected:" + "z" * 500: 1, "rejected:zz": 1,
                        "other": 9})
    assert _by_label(counters, "rejected:", frozenset({"bad_signature", "malformed"})) == {
        "bad_signature": 2, "malformed": 0, "other": 2}
    many = Counter({f"e:{i}": i for i in range(200)})
    capped = _by_label(many, "e:", None)
    assert len(capped) == MAX_COUNTER_SERIES and sum(capped.values()) == sum(many.values())
