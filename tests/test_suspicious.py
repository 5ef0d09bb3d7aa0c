"""Stolen-key detection (node/store/suspicious.py, `fedledger ledger suspicious`) on a real ledger.

Four nodes own two rooms each of the bundled slice; its 48 hours are committed as signed readings,
a traceability run commits the rooms' fingerprints (each fitted by its owner, aggregated by owner
as every replica re-computes it), and then the held-out day is committed, in which room_621's key
signs 8 hours of room_722's readings (the key moved to another device): those windows are flagged
as looking like room_722, and none of room_621's genuine windows is. The detection and
false-positive rates over every pair of rooms on the full data are measured by
scripts/reproduce_paper.py (`suspicious`); the pair here is one whose fingerprints a 48-hour slice
already tells apart (built in about 20 s: 35,000 signed readings through the ledger's checks).
The same ledger serves the explorer: its /suspicious view and the fingerprints' JSON download
through the API, and (slow) the page itself in a headless Chromium, from a node process started
on the replica.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from federated import fingerprint
from federated.aggregate import Personal, Update, aggregate
from federated.data import HOLDOUT_SLICE, MAIN_SLICE, read_csv_rows
from federated.personal import personal_arrays
from federated.weights import encode_weights, weights_hash
from node.cli.main import main
from node.launch.processes import NodeProcess, wait_until
from node.ledger.chain import Ledger
from node.ledger.holdout import Split, split_of
from node.ledger.provenance import datasets
from node.ledger.transactions import (
    make_model_commit,
    make_model_update,
    make_reading,
    make_register_device,
    make_train_request,
    tx_id,
)
from node.net.http import get_json
from node.net.ports import free_port
from node.server.api import NodeApi
from node.server.datadir import DB_FILE, GENESIS_FILE, init_node
from node.server.explorer.suspicious_view import LISTED
from node.store.base import MemoryStore
from node.store.sqlite import SqliteStore
from node.store.suspicious import MAX_HOURS, THRESHOLD, NoModel, flag_windows, suspicious
from tests.browser import Page
from tests.factories import CHAIN_ID, commit_next, device_key, make_genesis
from tests.test_explorer_api import FakeNode, get, settled

ROOMS = ["room_442", "room_510", "room_621", "room_644", "room_648", "room_722", "room_734", "room_748"]
A, B = "room_621", "room_722"  # A's key, B's readings
HOUR = 3_600_000
ZERO = bytes(32)


class Federation:
    def __init__(self, store: Any = None) -> None:
        self.main = read_csv_rows(MAIN_SLICE, ROOMS)
        self.day = read_csv_rows(HOLDOUT_SLICE, ROOMS)
        first = min(r[2] for r in self.main)
        self.keys, genesis = make_genesis(4, genesis_time_ms=first - 60_000)
        self.ledger = Ledger(store or MemoryStore(), genesis)
        self.devices = {name: device_key(i) for i, name in enumerate(ROOMS)}
        self.owner = {name: self.keys[i % 4] for i, name in enumerate(ROOMS)}
        self.seq: dict[str, int] = defaultdict(int)
        self.dir: Any = None  # the node directory, when the store is one's node.db
        self.run = b""  # the traceability run, once trained
        commit_next(self.ledger, self.keys, [make_register_device(self.owner[n], CHAIN_ID, d.public, n)
                                             for n, d in self.devices.items()], time_ms=first - 30_000)
        self.commit_readings(self.main)

    def commit_readings(self, rows: list[tuple[Any, ...]]) -> None:
        """One block per hour of data, timed at its newest reading; A's key signs what `rows` say."""
        by_hour: dict[int, list[tuple[Any, ...]]] = defaultdict(list)
        for r in sorted(rows, key=lambda r: (r[2], r[0])):
            by_hour[r[2] // HOUR].append(r)
        for hour in sorted(by_hour):
            txs = []
            for name, _, ts, t, h in by_hour[hour]:
                txs.append(make_reading(self.devices[name], CHAIN_ID, self.seq[name], ts, t, h))
                self.seq[name] += 1
            commit_next(self.ledger, self.keys, txs, time_ms=max(self.ledger.head_time_ms + 1,
                                                                  by_hour[hour][-1][2]))

    def train_fingerprints(self) -> bytes:
        """Round 0 and one round of the traceability run, as the ClientApps and the strategy do it."""
        coord = self.keys[0]
        req = make_train_request(coord, CHAIN_ID, "traceability", 1, "fedavg", {"classes": ",".join(ROOMS)})
        run = tx_id(req)
        w0 = fingerprint.initial_weights(len(ROOMS))
        init = make_model_update(coord, CHAIN_ID, run, "traceability", 0, ZERO, encode_weights(w0), 1, {},
                                 ZERO)
        commit0 = make_model_commit(coord, CHAIN_ID, run, "traceability", 0, "fedavg", [tx_id(init)],
                                    weights_hash(w0), {})
        commit_next(self.ledger, self.keys, [req, init, commit0])
        cut = self.ledger.height
        store = self.ledger.store
        rows = {}
        for name, dev in self.devices.items():
            rows[name] = [(name, r.seq, r.timestamp_ms, r.temperature_c, r.humidity_pct)
                          for r in store.readings(dev.public)
                          if r.height <= cut and split_of(r.timestamp_ms) is Split.TRAIN]
        context = [r for name in ROOMS for r in rows[name]]
        ups, updates, nodes = [], [], {}
        for key in self.keys:
            mine = [r for name in ROOMS if self.owner[name] is key for r in rows[name]]
            ds = datasets(store, key.public, cut)
            assert ds.train_examples == len(mine)
            w = fingerprint.fit(ROOMS, mine, context, ds.train_examples, base=w0)
            up = make_model_update(key, CHAIN_ID, run, "traceability", 1, weights_hash(w0), encode_weights(w),
                                   ds.train_examples, {}, ds.train_root, data_cut=cut)
            ups.append(up)
            updates.append(Update(tx_id(up), w, ds.train_examples))
            nodes[tx_id(up)] = key.public
        commit_next(self.ledger, self.keys, ups)
        owners = [self.owner[n].public for n in ROOMS]
        agg = aggregate("fedavg", updates, Personal(personal_arrays("traceability"), w0, owners, nodes))
        commit = make_model_commit(coord, CHAIN_ID, run, "traceability", 1, "fedavg",
                                   [u.update_id for u in updates], weights_hash(agg), {})
        commit_next(self.ledger, self.keys, [commit])
        return run


@pytest.fixture(scope="module")
def stolen(tmp_path_factory: pytest.TempPathFactory) -> tuple[Federation, tuple[int, int]]:
    """The federation after the held-out day in which A's key signed B's readings for 8 hours
    (on a real SQLite replica in a node directory, for the CLI)."""
    d = tmp_path_factory.mktemp("susp") / "node1"
    init_node(d, name="node1", port=1)
    fed = Federation(SqliteStore(d / DB_FILE))
    fed.ledger.genesis.save(d / GENESIS_FILE)
    fed.dir = d
    fed.run = fed.train_fingerprints()
    start = min(r[2] for r in fed.day) // HOUR + 8
    lo, hi = start * HOUR, (start + 8) * HOUR
    b_rows = {r[2]: r for r in fed.day if r[0] == B and lo <= r[2] < hi}
    day = [r for r in fed.day if not (r[0] == A and lo <= r[2] < hi)]
    day += [(A, 0, ts, r[3], r[4]) for ts, r in b_rows.items()]  # B's values under A's key
    fed.commit_readings(day)
    return fed, (start, start + 8)


def test_readings_signed_with_a_stolen_key_are_flagged_and_genuine_ones_are_not(
    stolen: tuple[Federation, tuple[int, int]],
) -> None:
    fed, (lo, hi) = stolen
    found = suspicious(fed.ledger.store, hours=24, window_hours=6)
    assert found["devices"] == ROOMS and found["fingerprints"] == ROOMS and found["round"] == 1
    on_a = [f for f in found["flagged"] if f["device"] == A]
    assert on_a, found["flagged"]
    # Every window of A that lies inside the stolen hours is flagged, as looking like B ...
    inside = [f for f in on_a if f["start_ms"] <= lo * HOUR and f["end_ms"] >= hi * HOUR]
    assert inside and any(f["looks_like"] == B for f in on_a)
    assert all(f["score"] > found["threshold"] for f in on_a)
    # ... and no flagged window of A lies wholly in its genuine hours.
    for f in on_a:
        assert f["start_ms"] < hi * HOUR and f["end_ms"] > lo * HOUR, f
    key = fed.devices[A].public.hex()
    assert all(f["device_key"] == key for f in on_a)


def test_the_cli_lists_them(stolen: tuple[Federation, tuple[int, int]],
                            capsys: pytest.CaptureFixture[str]) -> None:
    import json

    fed, _ = stolen
    d = str(fed.dir)
    assert main(["ledger", "suspicious", d, "--hours", "24", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert any(f["device"] == A and f["looks_like"] == B for f in got["flagged"])
    assert main(["ledger", "suspicious", d, "--hours", "24"]) == 0
    out = capsys.readouterr().out
    assert A in out and B in out and "LOOKS LIKE" in out
    assert main(["ledger", "suspicious", d, "--hours", str(MAX_HOURS + 1)]) == 1
    assert "hours" in capsys.readouterr().err


def test_without_fingerprints_it_says_so() -> None:
    _, genesis = make_genesis(4)
    with pytest.raises(NoModel):
        suspicious(Ledger(MemoryStore(), genesis).store)
    with pytest.raises(ValueError, match="hours"):
        suspicious(Ledger(MemoryStore(), genesis).store, hours=4, window_hours=6)


def test_the_explorer_lists_them_with_links_to_both_devices(
    stolen: tuple[Federation, tuple[int, int]],
) -> None:
    fed, _ = stolen
    api = NodeApi(FakeNode(fed.ledger.store))  # type: ignore[arg-type]
    status, view, _ = settled(api, "24")
    assert status == 200 and view["state"] == "ready", view
    assert view["run"] == fed.run.hex() and view["round"] == 1 and view["height"] == fed.ledger.height
    assert view["flagged"] == suspicious(fed.ledger.store, hours=24, limit=LISTED)["flagged"]
    assert view["compute_ms"] > 0 and view["threshold"] == 1.0 and view["window_hours"] == 6
    a, b = fed.devices[A].public.hex(), fed.devices[B].public.hex()
    on_a = [f for f in view["flagged"] if f["device"] == A]
    assert on_a and all(f["device_key"] == a for f in on_a)
    assert any(f["looks_like"] == B and f["looks_like_key"] == b for f in on_a)
    api.explorer.close()


def test_a_traceability_model_downloads_its_fingerprints_as_json(
    stolen: tuple[Federation, tuple[int, int]], tmp_path: Any,
) -> None:
    fed, _ = stolen
    api = NodeApi(FakeNode(fed.ledger.store))  # type: ignore[arg-type]
    run = fed.run.hex()
    name = f"traceability-round1-run{run[:12]}.json"
    dl = get(api, f"/model/{run}/1")[1]["download"]
    assert (dl["state"], dl["format"], dl["filename"]) == ("none", "json", name)
    assert dl["url"] == f"/model/{run}/1/json"
    status, body = get(api, f"/model/{run}/1/json")
    assert status == 200 and body.content_type == "application/json"
    assert ("Content-Disposition", f'attachment; filename="{name}"') in body.headers
    # The file `fedledger model export` writes, byte for byte.
    out = tmp_path / "fingerprints.json"
    assert main(["model", "export", str(fed.dir), "--task", "traceability", "--out", str(out)]) == 0
    assert body.data == out.read_bytes() and json.loads(body.data)["devices"] == ROOMS
    dl = get(api, f"/model/{run}/1")[1]["download"]
    assert dl["state"] == "ready" and dl["size"] == len(body.data)
    status, answer = get(api, f"/model/{run}/1/keras")  # no Keras file: fingerprints are not a network
    assert status == 404 and f"/model/{run}/1/json" in answer["error"]


def test_a_device_without_a_fingerprint_is_not_scored_rather_than_flagged_with_an_infinite_score() -> None:
    """A listed device whose owner trained no row has no fingerprint to compare its readings with:
    its windows cannot be judged (they were flagged as "no known device" with an infinite score,
    which is no JSON)."""
    main_rows = read_csv_rows(MAIN_SLICE, ROOMS)
    trained = [r for r in main_rows if r[0] != A]
    model = fingerprint.Fingerprints.of(fingerprint.fit(ROOMS, trained, main_rows, len(trained)), ROOMS)
    assert not model.known[ROOMS.index(A)] and model.known.sum() == len(ROOMS) - 1
    rel = fingerprint.relative(fingerprint.hourly_features(read_csv_rows(HOLDOUT_SLICE, ROOMS)), ROOMS)
    flags, scored = flag_windows(model, rel, 6, THRESHOLD)
    assert [f for f in flags if f.device == A] == [] and scored > 0
    json.dumps([f.to_json({}) for f in flags], allow_nan=False)


@pytest.mark.slow
def test_the_explorer_page_shows_them(stolen: tuple[Federation, tuple[int, int]], browser: Any) -> None:
    """The suspicious page, a flagged device's page and the model's JSON download in a browser,
    served by a node process on this replica (an observer: no peers, nothing to commit)."""
    fed, _ = stolen
    with suspicious_page(fed.dir, browser, "#suspicious-flags tbody tr") as (tab, page):
        a, b = fed.devices[A].public.hex(), fed.devices[B].public.hex()
        rows = page.locator("#suspicious-flags tbody tr", has=page.locator(f"a[href='#/device/{a}']"))
        assert rows.count() >= 1 and any(B in t for t in rows.all_inner_texts())
        assert rows.locator(f"a[href='#/device/{b}']").count() >= 1  # the device it looks like
        run = fed.run.hex()
        assert page.locator(f"#suspicious-model a[href='#/model/{run}/1']").count() == 1
        tab.shot("suspicious")
        tab.click(rows.first.locator(f"a[href='#/device/{a}']"))  # its device page lists its windows too
        page.wait_for_selector("#device-flags tbody tr", timeout=20_000)
        assert B in page.locator("#device-flags").inner_text()
        tab.shot("device-suspicious")
        page = tab.open(f"#/model/{run}/1")
        assert page.locator("#download-model").get_attribute("data-format") == "json"
        with page.expect_download(timeout=30_000) as info:
            page.locator("#download-model").click()
        assert info.value.suggested_filename == f"traceability-round1-run{run[:12]}.json"
        assert "--out traceability-round1.json" in page.locator("#export-cmd").inner_text()
        tab.shot("model-traceability")
        assert tab.errors == []


@contextmanager
def suspicious_page(node_dir: Path, browser: Any, ready: str) -> Iterator[tuple[Page, Any]]:
    """The explorer's Suspicious page (24 hours) in a browser tab, served by a node process on the
    replica in `node_dir` (an observer: no peers, nothing to commit), once `ready` shows: the page
    says it is computing at first and asks again every 2 s."""
    port = free_port()
    proc = NodeProcess(node_dir)
    proc.start(extra_args=["--port", str(port)])
    try:
        base = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: probe(base), 30), proc.log_tail()
        tab = Page(browser, base)
        page = tab.open("#/suspicious?hours=24")
        page.wait_for_selector(ready, timeout=20_000)
        yield tab, page
    finally:
        proc.stop()


def probe(base: str) -> bool:
    try:
        return bool(get_json(base, "/status"))
    except Exception:  # not up yet
        return False
