"""Stolen-key detection: readings whose claimed device does not match how they look.

A reading's signature proves which key signed it, not that the key is still on the device it was
registered for. With a committed fingerprint model (the traceability task, federated/fingerprint.py,
pure numpy) every replica can ask, per device and time window, whether the readings look like the
device they claim: a window is flagged when another listed device explains its hours better by more
than `threshold` nats per hour (log-likelihood ratio; 1 nat an hour over a 6-hour window is odds of
e^6, about 400:1), or when no fingerprint fits it at all (the smallest mean Mahalanobis distance
over the fingerprints above UNKNOWN_Q per hour: a sensor from outside the federation, or made-up
values).

A device whose readings replay another device's (near-exact copies, at any time shift) takes that
device's windows: two devices reporting the same data cannot be told apart by any fingerprint.
The copy rule (federated/copies.py) finds such pairs among the devices whose windows score as each
other; the one committed later in most matched minutes is the copy. It is reported under
`copies` and flagged (kind `copy_of`, the score its correlation), and its fingerprint is no
candidate for any other device's window.

`suspicious(store, ...)` is the whole check as JSON-ready dicts (`fedledger ledger suspicious`, and
for the explorer). Its work is bounded: the run's listed devices (at most 64), the latest `hours`
(at most MAX_HOURS) of each one's readings through the store's index walk, numpy over hourly
vectors.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np

from federated import copies, fingerprint
from federated.personal import run_devices
from node.ledger.keys import short_id
from node.ledger.run_rules import named_devices
from node.ledger.storage import Store
from node.store.models import find_model, find_run, model_weights

DEFAULT_HOURS = 48
MAX_HOURS = 24 * 7
DEFAULT_WINDOW_HOURS = fingerprint.DEFAULT_WINDOW_HOURS
THRESHOLD = 1.0  # nats per hour
UNKNOWN_Q = 30.0  # mean squared Mahalanobis distance per hour (10 features: 99 % of genuine hours < 51)
MAX_LISTED = 500
MAX_PAIRS = 64  # pairs of devices checked by the copy rule per view (FFTs over a week of minutes)
READINGS_PER_HOUR = 75  # one a minute, and some slack for devices that send faster


class NoModel(LookupError):
    """No committed fingerprint model to score with."""


@dataclass(frozen=True)
class Flag:
    device: str
    start_hour: int
    end_hour: int  # exclusive
    windows: int
    score: float  # the largest log-likelihood ratio per hour of the window(s)
    best: str | None  # the device the readings look like (None: no known device)
    kind: str  # "other_device" | "unknown_device" | "copy_of" (score: the copy rule's correlation)

    def to_json(self, keys: dict[str, bytes]) -> dict[str, Any]:
        key = keys.get(self.device)
        best = keys.get(self.best) if self.best is not None else None
        return {
            "device": self.device,
            "device_key": key.hex() if key else None,
            "device_id": short_id(key) if key else None,
            "start_ms": self.start_hour * fingerprint.HOUR_MS,
            "end_ms": self.end_hour * fingerprint.HOUR_MS,
            "hours": self.end_hour - self.start_hour,
            "windows": self.windows,
            "kind": self.kind,
            "looks_like": self.best,
            "looks_like_key": best.hex() if best else None,
            "score": round(self.score, 4),
        }


def window_scores(model: fingerprint.Fingerprints, w: fingerprint.Window,
                  rel_hours: dict[int, np.ndarray], window_hours: int) -> tuple[float, int | None, float]:
    """(log-likelihood ratio per hour of the best other device over the claimed one, the best other
    device's index or None, the smallest mean Mahalanobis distance per hour over the fingerprints)."""
    index = {d: i for i, d in enumerate(model.devices)}
    claimed = index[w.device]
    ll = w.loglik
    others = [j for j in range(len(ll)) if j != claimed and np.isfinite(ll[j])]
    if not np.isfinite(ll[claimed]):
        return float("inf"), (max(others, key=lambda j: ll[j]) if others else None), float("inf")
    best = max(others, key=lambda j: ll[j]) if others else None
    ratio = (ll[best] - ll[claimed]) / w.hours if best is not None else float("-inf")
    hours = [rel_hours[h] for h in range(w.start_hour, w.start_hour + window_hours) if h in rel_hours]
    x = np.array(hours)
    q = []
    for i in np.flatnonzero(model.known):
        diff = x - model.means[i]
        q.append(float(np.mean(np.einsum("nf,fg,ng->n", diff, model.precisions[i], diff))))
    return ratio, best, min(q) if q else float("inf")


def flag_windows(model: fingerprint.Fingerprints, rel: dict[Any, dict[int, np.ndarray]],
                 window_hours: int, threshold: float,
                 scored: list[fingerprint.Window] | None = None) -> tuple[list[Flag], int]:
    """The flagged spans (overlapping flagged windows of a device merged), and how many windows
    were scored (those of devices with a fingerprint). `scored`: the windows already scored by a
    model with more devices than `model` (they are masked to `model`'s), instead of scoring again."""
    # A device without a fingerprint (its owner trained no row for it) has nothing its readings
    # could be compared with: its windows are not judged at all (the answer's `fingerprints` says
    # which devices were), never flagged as looking like no device with an infinite score.
    index = {d: i for i, d in enumerate(model.devices)}
    every = (fingerprint.windows(model, rel, window_hours, 1) if scored is None
             else fingerprint.masked(scored, model))
    ws = [w for w in every if model.known[index[w.device]]]
    raw: dict[Any, list[tuple[int, float, str | None, str]]] = {}
    for w in ws:
        ratio, best, q = window_scores(model, w, rel[w.device], window_hours)
        if q > UNKNOWN_Q:
            raw.setdefault(w.device, []).append((w.start_hour, q, None, "unknown_device"))
        elif ratio > threshold:
            name = None if best is None else str(model.devices[best])
            raw.setdefault(w.device, []).append((w.start_hour, ratio, name, "other_device"))
    flags = []
    for dev, items in raw.items():
        items.sort()
        span: list[tuple[int, float, str | None, str]] = []
        for it in [*items, None]:
            if span and (it is None or it[0] > span[-1][0] + window_hours or it[3] != span[-1][3]):
                looks = [s[2] for s in span]
                common = sorted(set(looks), key=lambda v: (-looks.count(v), str(v)))[0]
                flags.append(Flag(str(dev), span[0][0], span[-1][0] + window_hours, len(span),
                                  max(s[1] for s in span), common, span[0][3]))
                span = []
            if it is not None:
                span.append(it)
    flags.sort(key=lambda f: (-f.score, f.device, f.start_hour))
    return flags, len(ws)


@dataclass(frozen=True)
class Copy:
    """A device whose readings replay another's (federated/copies.py), later on the ledger."""

    copy: str
    original: str
    match: copies.Match
    later: int  # matched minutes where the copy's reading was committed after the original's
    earlier: int  # ... and before it

    def flag(self, hours: dict[int, Any]) -> Flag:
        """The copy's span of scored hours as one flag: its readings look like the original's because
        they are the original's."""
        span = sorted(hours) or [0]
        return Flag(self.copy, span[0], span[-1] + 1, len(hours), self.match.correlation, self.original,
                    "copy_of")

    def to_json(self, keys: dict[str, bytes]) -> dict[str, Any]:
        key, orig = keys.get(self.copy), keys.get(self.original)
        return {
            "device": self.copy,
            "device_key": key.hex() if key else None,
            "copy_of": self.original,
            "copy_of_key": orig.hex() if orig else None,
            "correlation": round(self.match.correlation, 4),
            "lag_minutes": self.match.lag_minutes if self.copy == self.match.b else -self.match.lag_minutes,
            "minutes": self.match.common,
            "committed_later": self.later,
            "committed_earlier": self.earlier,
        }


def copy_pairs(model: fingerprint.Fingerprints, ws: list[fingerprint.Window],
               rows: list[tuple[Any, ...]],
               heights: dict[Any, dict[int, int]]) -> tuple[list[Copy], list[copies.Match]]:
    """The copy rule on the scored readings: among the pairs where one device's windows score best
    as the other (only there can a copy take windows; at most MAX_PAIRS, the most frequent), those
    whose one-minute changes track each other; the copy is the one committed later in most matched
    minutes. Returns (decided copies, pairs that track each other but whose order is a tie)."""
    index = {d: i for i, d in enumerate(model.devices)}
    seen: Counter[tuple[Any, Any]] = Counter()
    for w in ws:
        if not model.known[index[w.device]]:
            continue
        b = w.best()
        if b >= 0 and model.devices[b] != w.device:
            seen[tuple(sorted((w.device, model.devices[b]), key=str))] += 1
    pairs = [p for p, _ in seen.most_common(MAX_PAIRS)]
    if not pairs:
        return [], []
    by_device: dict[Any, list[tuple[Any, ...]]] = {}
    for r in rows:
        by_device.setdefault(r[0], []).append(r)
    found: list[Copy] = []
    undecided: list[copies.Match] = []
    for m in copies.matches(by_device, pairs):
        decided = copies.order(m, heights)
        if decided is None:
            undecided.append(m)
        else:
            copy, original, later, earlier = decided
            found.append(Copy(str(copy), str(original), m, later, earlier))
    return found, undecided


def scored_windows(model: fingerprint.Fingerprints, rows: list[tuple[Any, ...]], names: list[Any],
                   heights: dict[Any, dict[int, int]], window_hours: int,
                   ) -> tuple[dict[Any, dict[int, np.ndarray]], list[fingerprint.Window], list[Copy],
                              list[copies.Match]]:
    """The devices' relative hourly vectors (recentred: fingerprint.building_shift) and their
    windows under `model`, scored once for both rules, with the copies found among them and the
    pairs that track each other undecided. A copy stays in the building context: its hours count
    once there (fingerprint.SAME_HOUR), and taking it out as well, which the recentring makes
    redundant, scored the honest devices no better (scripts/bench_poisoning.py, data_poison)."""
    rel = fingerprint.recentred(model, fingerprint.relative(fingerprint.hourly_features(rows), names))
    ws = fingerprint.windows(model, rel, window_hours, 1)
    found, undecided = copy_pairs(model, ws, rows, heights)
    return rel, ws, found, undecided


def suspicious(store: Store, run: str | None = None, round: int | None = None, hours: int = DEFAULT_HOURS,
               window_hours: int = DEFAULT_WINDOW_HOURS, threshold: float = THRESHOLD,
               limit: int = MAX_LISTED) -> dict[str, Any]:
    """Devices and time windows of the latest `hours` of readings that score as another device (or
    as none) under the committed fingerprints of a traceability run (default: the latest run's
    latest round). NoModel if there is none; ValueError for out-of-range arguments."""
    if not 1 <= window_hours <= hours <= MAX_HOURS:
        raise ValueError(f"need 1 <= window hours <= hours <= {MAX_HOURS}")
    if not (np.isfinite(threshold) and threshold >= 0):
        raise ValueError("threshold must be a finite number >= 0")
    try:
        model_info = find_model(store, "traceability", round, run)
    except LookupError as exc:
        raise NoModel(str(exc)) from exc
    if model_info.round == 0:
        raise NoModel(f"run {model_info.run.hex()[:12]} has only its initial model (no fingerprints yet)")
    weights = model_weights(store, model_info)
    info = find_run(store, run=model_info.run.hex())
    names = run_devices("traceability", info.request.params)
    model = fingerprint.Fingerprints.of(weights, names)
    records = named_devices(store, names)
    keys = {n: rec.device for n, rec in zip(names, records, strict=True) if rec is not None}
    rows: list[tuple[Any, ...]] = []
    heights: dict[Any, dict[int, int]] = {}
    per_device = hours * READINGS_PER_HOUR
    for name, rec in zip(names, records, strict=True):
        if rec is None:
            continue
        latest = store.latest_readings(rec.device, per_device)
        rows += [(name, r.seq, r.timestamp_ms, r.temperature_c, r.humidity_pct) for r in latest]
        heights[name] = {r.timestamp_ms // copies.MINUTE_MS: r.height for r in latest}
    newest = max((r[2] for r in rows), default=0)
    since = newest - hours * fingerprint.HOUR_MS
    rows = [r for r in rows if r[2] > since]
    rel, ws, found, undecided = scored_windows(model, rows, names, heights, window_hours)
    flags, scored = flag_windows(fingerprint.without(model, [c.copy for c in found]), rel, window_hours,
                                 threshold, ws)
    flags += [c.flag(rel.get(c.copy, {})) for c in found]
    flags.sort(key=lambda f: (f.kind != "copy_of", -f.score, f.device, f.start_hour))
    return {
        "run": model_info.run.hex(),
        "round": model_info.round,
        "model_hash": model_info.weights_hash.hex(),
        "devices": names,
        "fingerprints": [n for n, k in zip(names, model.known, strict=True) if k],
        "hours": hours,
        "window_hours": window_hours,
        "threshold": threshold,
        "unknown_q": UNKNOWN_Q,
        "copy_threshold": copies.THRESHOLD,
        "from_ms": max(since, 0) if rows else None,
        "to_ms": newest if rows else None,
        "readings": len(rows),
        "windows_scored": scored,
        "flagged": [f.to_json(keys) for f in flags[:limit]],
        "flagged_total": len(flags),
        "copies": [c.to_json(keys) for c in found],
        "tracking_pairs": [{"devices": [m.a, m.b], "correlation": round(m.correlation, 4),
                            "lag_minutes": m.lag_minutes, "minutes": m.common} for m in undecided],
    }
