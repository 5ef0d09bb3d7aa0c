"""The feeder's bookkeeping when a node dies (node/launch/feeder.py), without a network: a down
node's readings wait unsigned (bounded, the drops counted), what was signed is kept until seen
committed and is what is sent again, and the live line names the nodes that are down."""

from __future__ import annotations

import time
from pathlib import Path

from node.launch import feeder as feeder_mod
from node.launch.feeder import Feeder, FeedStats, Target
from node.launch.launcher import progress_line
from node.launch.sensors import RawReading
from node.ledger.keys import NodeKey
from node.ledger.transactions import parse_tx
from node.server.datadir import KEY_FILE


def make_feeder(tmp_path: Path) -> Feeder:
    targets = []
    for i in range(2):
        d = tmp_path / f"node{i + 1}"
        d.mkdir()
        NodeKey.generate().save(d / KEY_FILE)
        targets.append(Target(d, f"http://127.0.0.1:{9 + i}"))
    return Feeder(targets, "lanes-test", ["a", "b"])  # a on node1, b on node2


def raw(device: str, i: int) -> RawReading:
    return RawReading(device, 1_700_000_000_000 + i, 20.0, 50.0)


def test_a_down_nodes_readings_wait_unsigned_and_the_others_are_signed(tmp_path: Path) -> None:
    f = make_feeder(tmp_path)
    up, down = f.lanes
    up.up = True
    batch: list[dict] = []
    for i in range(3):
        f._take(up, raw("a", i), batch)
        f._take(down, raw("b", i), [])
    assert [parse_tx(t).body.seq for t in batch] == [1, 2, 3]
    assert f.seq["b"] == 0 and len(down.waiting) == 3  # nothing signed for the dead node
    # Back: the waiting ones are signed first, in order, and then the new ones.
    down.up = True
    again: list[dict] = []
    f._drain_waiting(down, again, 10)
    f._take(down, raw("b", 3), again)
    assert [parse_tx(t).body.seq for t in again] == [1, 2, 3, 4]


def test_the_waiting_readings_are_bounded_and_the_drops_counted(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(feeder_mod, "MAX_WAITING", 5)
    f = make_feeder(tmp_path)
    down = f.lanes[1]
    for i in range(8):
        f._take(down, raw("b", i), [])
    assert len(down.waiting) == 5 and f.stats.dropped_while_down == 3
    assert down.waiting[0].timestamp_ms == raw("b", 3).timestamp_ms  # the oldest went


def test_what_was_signed_is_kept_until_committed_and_is_what_is_sent_again(tmp_path: Path) -> None:
    f = make_feeder(tmp_path)
    lane = f.lanes[1]
    lane.up = True
    sent: list[dict] = []
    for i in range(6):
        f._take(lane, raw("b", i), sent)
    assert f.pending() == 6
    f.committed["b"] = 4  # the node finalized 1..4 before it died
    f.unconfirmed["b"] = {s: t for s, t in f.unconfirmed["b"].items() if s > 4}
    lost = f._lost(lane)
    assert lost == sent[4:]  # the same signed bytes, never re-signed
    assert [parse_tx(t).body.seq for t in lost] == [5, 6]


def test_the_live_line_names_the_nodes_that_are_down() -> None:
    st = {"height": 10, "readings": 100, "rejected": {}, "peers": 2, "mempool": 0}
    line = progress_line([st, None, st], FeedStats(), time.monotonic() - 1, 0)
    assert line.endswith("DOWN: node2") and "peers 2/-/2" in line
    assert "DOWN" not in progress_line([st, st], FeedStats(), time.monotonic() - 1, 0)
