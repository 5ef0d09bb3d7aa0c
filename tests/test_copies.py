"""The copy rule (federated/copies.py, node/store/suspicious.py): devices whose readings replay
another device's are found at any time shift, genuine rooms are not, the one committed later is the
copy, and a copy takes none of its original's windows in `ledger suspicious`."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np
import pytest

from federated import copies, fingerprint
from federated.data import MAIN_SLICE, read_csv_rows
from node.cli.main import main
from node.ledger.transactions import make_reading
from node.server.datadir import DB_FILE, GENESIS_FILE, init_node
from node.store import suspicious as susp
from node.store.sqlite import SqliteStore
from tests.factories import CHAIN_ID, commit_next
from tests.test_suspicious import HOUR, ROOMS, Federation, suspicious_page

COPIER, VICTIM = "room_644", "room_722"


def copied(rows: list[Any], as_device: str, sigma: float, shift_min: int = 0, seed: int = 0) -> list[Any]:
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, sigma, (len(rows), 2))
    return [(as_device, i + 1, r[2] + shift_min * 60_000, r[3] + float(a), r[4] + float(b))
            for i, (r, (a, b)) in enumerate(zip(rows, noise, strict=True))]


@pytest.fixture(scope="module")
def slice_rows() -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = defaultdict(list)
    for r in read_csv_rows(MAIN_SLICE, ROOMS):
        out[r[0]].append(r)
    return out


def test_the_lagged_correlation_is_pearson_at_each_lag() -> None:
    rng = np.random.default_rng(1)
    start = 1_000_000
    a = [("a", i, (start + m) * 60_000, float(x), float(y))
         for i, (m, x, y) in enumerate(zip(range(600), rng.normal(20, 1, 600).cumsum() / 30,
                                           rng.normal(40, 1, 600).cumsum() / 30, strict=True)) if m % 7]
    b = [("b", r[1], r[2] + 13 * 60_000, r[3] + 0.01 * rng.normal(), r[4] + 0.01 * rng.normal()) for r in a]
    ta, tb = copies.track(a), copies.track(b)
    assert ta is not None and tb is not None
    corr, lag, common = copies.best_lag(ta, tb)
    assert lag == 13
    # By hand: the changes of a's minute m and b's minute m + 13, where both are reported.
    va = {r[2] // 60_000: r for r in a}
    vb = {r[2] // 60_000: r for r in b}
    pairs = [(m, m + 13) for m in va if m - 1 in va and m + 13 in vb and m + 12 in vb]
    assert common == len(pairs)
    worst = min(float(np.corrcoef([va[m][k] - va[m - 1][k] for m, _ in pairs],
                                  [vb[n][k] - vb[n - 1][k] for _, n in pairs])[0, 1]) for k in (3, 4))
    assert corr == pytest.approx(worst, abs=1e-9)


def test_genuine_rooms_do_not_track_each_other(slice_rows: dict[str, list[Any]]) -> None:
    assert copies.matches(slice_rows) == []


@pytest.mark.parametrize("shift_min", [0, 37, 1440])
def test_a_near_exact_copy_is_found_at_its_shift(slice_rows: dict[str, list[Any]], shift_min: int) -> None:
    rows = {VICTIM: slice_rows[VICTIM], COPIER: copied(slice_rows[VICTIM], COPIER, 1e-4, shift_min)}
    found = copies.matches(rows)
    assert len(found) == 1 and found[0].correlation > 0.99
    m = found[0]
    assert (m.b == COPIER and m.lag_minutes == shift_min) or (m.a == COPIER and m.lag_minutes == -shift_min)


def test_copies_too_noisy_to_take_windows_are_not_matched(slice_rows: dict[str, list[Any]]) -> None:
    rows = {VICTIM: slice_rows[VICTIM], COPIER: copied(slice_rows[VICTIM], COPIER, 0.01)}
    assert copies.matches(rows) == []


def test_the_later_on_the_ledger_is_the_copy() -> None:
    m = copies.Match("x", "y", 0.999, 5, 300)
    x = {t: t for t in range(300)}
    y_later = {t + 5: t + 1 for t in range(300)}  # y's minute t + 5 replays x's minute t, a block later
    assert copies.copy_of(m, {"x": x, "y": y_later}) == ("y", "x")
    # The copier front-runs in a quarter of the blocks (its own): it still loses the vote.
    y_mixed = {t + 5: t - 1 if t % 4 == 0 else t + 1 for t in range(300)}
    assert copies.copy_of(m, {"x": x, "y": y_mixed}) == ("y", "x")
    assert copies.copy_of(m, {"x": x, "y": {t + 5: t for t in range(300)}}) is None  # same blocks


def test_a_copy_counts_once_in_the_building_context(slice_rows: dict[str, list[Any]]) -> None:
    """Every device's hourly vectors are relative to the median of the building's hour; a copy
    would count its original twice there and move every other device. Its hours count once: the
    other devices' vectors stay within 0.05 of the building's without it (counted twice, the copy
    moved them by up to 0.52)."""
    genuine = [r for d in ROOMS for r in slice_rows[d]]
    model = fingerprint.Fingerprints.of(fingerprint.fit(ROOMS, genuine, genuine, len(genuine)), ROOMS)
    rows = [r for r in genuine if r[0] != COPIER] + copied(slice_rows[VICTIM], COPIER, 1e-4)
    # The copier's readings each land a block after their original's.
    heights = {d: {r[2] // copies.MINUTE_MS: r[2] // 2000 + (d == COPIER) for r in rows if r[0] == d}
               for d in ROOMS}
    rel, ws, found, undecided = susp.scored_windows(model, rows, list(ROOMS), heights, 6)
    assert [(c.copy, c.original) for c in found] == [(COPIER, VICTIM)] and undecided == []
    others = [d for d in ROOMS if d != COPIER]
    alone = fingerprint.without(model, [COPIER])
    feats = fingerprint.hourly_features(rows)
    without = fingerprint.recentred(alone, fingerprint.relative(feats, others))
    for d in others:
        assert rel[d].keys() == without[d].keys()
        for hour, v in rel[d].items():
            assert float(np.max(np.abs(v - without[d][hour]))) < 0.05, (d, hour)
    assert {w.device for w in ws} == set(ROOMS) and COPIER in rel


class CopiedFederation(Federation):
    """test_suspicious's federation (8 rooms on 4 authorities, one block per hour of the bundled
    slice, one round of fingerprints fitted by their owners, then the held-out day), except that
    room_644's key signs copies of room_722's readings, in a block after each hour's genuine one."""

    def commit_readings(self, rows: list[tuple[Any, ...]]) -> None:
        blocks: dict[int, tuple[list[Any], list[Any]]] = defaultdict(lambda: ([], []))
        for r in rows:
            if r[0] != COPIER:
                blocks[r[2] // HOUR][0].append(r)
        for r in copied([r for r in rows if r[0] == VICTIM], COPIER, 1e-4):
            blocks[r[2] // HOUR][1].append(r)
        for hour in sorted(blocks):
            for items in blocks[hour]:  # the genuine readings' block first, the copies' next
                txs = []
                for name, _, ts, t, h in sorted(items, key=lambda r: (r[2], r[0])):
                    self.seq[name] += 1
                    txs.append(make_reading(self.devices[name], CHAIN_ID, self.seq[name], ts, t, h))
                at = max(self.ledger.head_time_ms + 1, max(r[2] for r in items))
                commit_next(self.ledger, self.keys, txs, time_ms=at)


@pytest.fixture(scope="module")
def copied_fed(tmp_path_factory: pytest.TempPathFactory) -> CopiedFederation:
    d = tmp_path_factory.mktemp("copies") / "node1"
    init_node(d, name="node1", port=1)  # a real node directory: the CLI and a node process read it
    fed = CopiedFederation(SqliteStore(d / DB_FILE))
    fed.ledger.genesis.save(d / GENESIS_FILE)
    fed.dir = d
    fed.run = fed.train_fingerprints()
    fed.commit_readings(fed.day)
    fed.ledger.store.close()
    return fed


def test_a_copy_is_reported_and_takes_none_of_its_originals_windows(
        copied_fed: CopiedFederation, capsys: pytest.CaptureFixture[str]) -> None:
    store = SqliteStore(copied_fed.dir / DB_FILE)
    found = susp.suspicious(store, hours=24)
    store.close()
    assert [(c["device"], c["copy_of"]) for c in found["copies"]] == [(COPIER, VICTIM)]
    c = found["copies"][0]
    assert c["correlation"] > 0.99 and c["lag_minutes"] == 0 and c["committed_later"] > c["minutes"] // 2
    # Flagged as what it is, and it takes none of the victim's windows.
    copy_flags = [(f["device"], f["looks_like"]) for f in found["flagged"] if f["kind"] == "copy_of"]
    assert copy_flags == [(COPIER, VICTIM)]
    assert not any(f["looks_like"] == COPIER for f in found["flagged"])
    assert found["tracking_pairs"] == []
    assert main(["ledger", "suspicious", str(copied_fed.dir), "--hours", "24"]) == 0
    assert f"{COPIER} replays {VICTIM}'s readings" in capsys.readouterr().out


@pytest.mark.slow
def test_the_explorer_lists_the_copy(copied_fed: CopiedFederation, browser: Any) -> None:
    """The Suspicious page's Copies table, served by a node process on this replica."""
    with suspicious_page(copied_fed.dir, browser, "#suspicious-copies tbody tr") as (tab, page):
        row = page.locator("#suspicious-copies tbody tr").first
        copier, victim = copied_fed.devices[COPIER].public.hex(), copied_fed.devices[VICTIM].public.hex()
        assert row.locator(f"a[href='#/device/{copier}']").count() == 1
        assert row.locator(f"a[href='#/device/{victim}']").count() == 1
        assert "replays it" in page.locator("#suspicious-flags").inner_text()
        tab.shot("suspicious-copies")
        assert tab.errors == []
