"""Devices that replay another device's readings: the copy rule of the traceability task.

A member can have its own devices sign copies of another device's readings, which are public on the
ledger (the data poisoning of the traceability task). The copies get the victim's fingerprint and
take a share of the victim's windows: two devices that report the same data cannot be told apart
by any fingerprint. They take windows only while they are near exact. On the paper's building
(scripts/bench_poisoning.py, `copy_check`), copies with noise of 1e-3 took 6.7 % of the honest
windows and copies with 2e-3 took none. Copies shifted in time still took windows: 5-22 % for shifts
of a minute to a day.

Near-exact copies track their original minute by minute, at some lag. The rule here is the
Pearson correlation of one-minute changes of temperature and of humidity at the best lag (the
smaller of the two at that lag). Copies with noise of 1e-4 reach 0.999. Genuine rooms of that
building reach at most 0.60 (the larger channel alone at most 0.967, at lag 0: shared
ventilation); two sensors side by side differ by their own noise, which dominates one-minute
changes. The correlation at every lag is computed at once with FFTs, over the minutes both devices
reported (masked normalised cross-correlation). Copies cut into pieces shifted by different lags
evade it, but took no windows either (6- and 24-hour pieces: the fingerprints are relative to the
building's hour, which the pieces no longer match).

Which device of a pair is the copy (`copy_of`): the one whose matched readings were committed later
in most matched minutes (node/store/suspicious.py reads the heights). A copier must see a reading
before it can copy it; it can put its copy first only in the blocks it proposes itself, and under
the BFT assumption most blocks come from honest proposers, so it loses the vote.

Pure numpy, like federated/fingerprint.py.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

MINUTE_MS = 60_000
# Both channels' one-minute changes at one lag. Genuine pairs of the paper's 8 rooms reach at most
# 0.60 at any lag; copies with noise of 1e-3 (which still took 6.7 % of the victims' windows) 0.92,
# of 2e-3 (which took none) 0.77-0.81.
THRESHOLD = 0.8
MIN_COMMON = 240  # one-minute changes both devices have at that lag: 4 hours at least
MAX_MINUTES = 4 * 7 * 24 * 60  # a pair is compared over at most 4 weeks of minutes (the newest)

Row = Sequence[Any]  # (device, seq, timestamp_ms, temperature_c, humidity_pct)


@dataclass(frozen=True)
class Track:
    """One device's one-minute changes on a minute grid: `start` is the minute of index 0."""

    start: int
    changes: np.ndarray  # (n, 2): temperature and humidity change from the minute before
    valid: np.ndarray  # (n,) bool: both minutes were reported


@dataclass(frozen=True)
class Match:
    a: Hashable
    b: Hashable
    correlation: float  # the smaller of the two channels' at `lag`
    lag_minutes: int  # b's minute = a's minute + lag
    common: int  # one-minute changes both have at that lag


def track(rows: Iterable[Row]) -> Track | None:
    """The one-minute changes of one device's readings (the last reading of each minute counts), or
    None with fewer than MIN_COMMON of them."""
    by_minute: dict[int, tuple[float, float]] = {}
    for r in sorted(rows, key=lambda r: (int(r[2]), r[1])):
        by_minute[int(r[2]) // MINUTE_MS] = (float(r[3]), float(r[4]))
    if len(by_minute) < MIN_COMMON + 1:
        return None
    minutes = sorted(by_minute)
    end = minutes[-1]
    start = max(minutes[0], end - MAX_MINUTES)
    n = end - start + 1
    values = np.full((n, 2), np.nan)
    for m in minutes:
        if m >= start:
            values[m - start] = by_minute[m]
    changes = np.diff(values, axis=0)
    valid = np.all(np.isfinite(changes), axis=1)
    changes[~valid] = 0.0
    if int(valid.sum()) < MIN_COMMON:
        return None
    return Track(start + 1, changes, valid)


def _xcorr(x: np.ndarray, y: np.ndarray, size: int) -> np.ndarray:
    """c[k] = sum_i x[i] * y[i + k] for k in -(len(x) - 1) .. len(y) - 1, as index k + len(x) - 1."""
    fx = np.fft.rfft(x[::-1], size)
    fy = np.fft.rfft(y, size)
    return np.fft.irfft(fx * fy, size)[: len(x) + len(y) - 1]


def best_lag(a: Track, b: Track) -> tuple[float, int, int]:
    """(correlation, lag in minutes, common changes) at the lag where both channels' correlation
    of one-minute changes is highest (the smaller of the two), over lags with MIN_COMMON changes."""
    size = 1 << math.ceil(math.log2(len(a.valid) + len(b.valid)))
    ma, mb = a.valid.astype(np.float64), b.valid.astype(np.float64)
    count = np.rint(_xcorr(ma, mb, size))
    worst = np.full(count.shape, np.inf)
    for ch in range(2):
        x, y = a.changes[:, ch], b.changes[:, ch]
        sx, sy = _xcorr(x, mb, size), _xcorr(ma, y, size)
        sxx, syy = _xcorr(x * x, mb, size), _xcorr(ma, y * y, size)
        sxy = _xcorr(x, y, size)
        with np.errstate(invalid="ignore", divide="ignore"):
            var = (count * sxx - sx * sx) * (count * syy - sy * sy)
            r = (count * sxy - sx * sy) / np.sqrt(var)
        r[~(var > 1e-18) | ~np.isfinite(r)] = -np.inf
        worst = np.minimum(worst, r)
    worst[count < MIN_COMMON] = -np.inf
    k = int(np.argmax(worst))
    if not np.isfinite(worst[k]):
        return float("-inf"), 0, 0
    # Index k pairs a's change i with b's change i + (k - len(a) + 1); in minutes, add the starts.
    lag = (k - len(a.valid) + 1) + (b.start - a.start)
    return float(min(worst[k], 1.0)), lag, int(count[k])


def matches(rows_by_device: dict[Hashable, list[Row]],
            pairs: Iterable[tuple[Hashable, Hashable]] | None = None,
            threshold: float = THRESHOLD) -> list[Match]:
    """The pairs of devices (all pairs, or `pairs`) whose one-minute changes track each other at
    `threshold` or more at some lag."""
    tracks = {d: track(rows) for d, rows in rows_by_device.items()}
    names = sorted(tracks, key=str)
    todo = ([(a, b) for i, a in enumerate(names) for b in names[i + 1:]] if pairs is None
            else sorted({tuple(sorted(p, key=str)) for p in pairs}, key=str))
    out = []
    for a, b in todo:
        ta, tb = tracks.get(a), tracks.get(b)
        if ta is None or tb is None:
            continue
        corr, lag, common = best_lag(ta, tb)
        if corr >= threshold:
            out.append(Match(a, b, corr, lag, common))
    return out


def later_share(a_heights: dict[int, int], b_heights: dict[int, int], lag_minutes: int) -> tuple[int, int]:
    """(matched minutes where b's reading was committed after a's, where a's was after b's): a's
    reading of minute m against b's of minute m + lag (commit heights by minute; ties count for
    neither)."""
    b_later = a_later = 0
    for minute, ha in a_heights.items():
        hb = b_heights.get(minute + lag_minutes)
        if hb is None or hb == ha:
            continue
        if hb > ha:
            b_later += 1
        else:
            a_later += 1
    return b_later, a_later


def order(match: Match,
          heights: dict[Hashable, dict[int, int]]) -> tuple[Hashable, Hashable, int, int] | None:
    """(copy, original, minutes the copy was committed later, minutes earlier) of a match: the copy
    is the device whose matched readings were committed later in most matched minutes; None when
    neither is (the same heights, or an even split)."""
    b_later, a_later = later_share(heights.get(match.a, {}), heights.get(match.b, {}), match.lag_minutes)
    if b_later > a_later:
        return match.b, match.a, b_later, a_later
    if a_later > b_later:
        return match.a, match.b, a_later, b_later
    return None


def copy_of(match: Match, heights: dict[Hashable, dict[int, int]]) -> tuple[Hashable, Hashable] | None:
    """(copy, original) of a match (`order`), or None."""
    decided = order(match, heights)
    return None if decided is None else (decided[0], decided[1])
