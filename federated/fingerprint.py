"""Device fingerprints: which device produced a window of readings (the traceability task).

Pure numpy, no TensorFlow: the node process and the CLI use it to score readings on the ledger
(`fedledger ledger suspicious`), the ClientApp fits with it in its own process.

The model is generative, one fingerprint per device, so it federates exactly under the owner
partition, where each node holds only its own devices (a discriminative classifier trained there
learns "always my device"; FedAvg of such classifiers ended at chance):

* **Features, per clock hour** (epoch-aligned, the held-out rule's windows) of one device's
  readings: the mean absolute humidity (g/m^3, from temperature and relative humidity) and
  temperature, and the logs of the mean absolute first and second differences of temperature and
  humidity and of absolute humidity (one-minute dynamics: HVAC cycling, sensor noise) and of the
  standard deviations of absolute humidity, temperature and humidity.
* **Relative to the building**: each hour's vector minus the median of the same hour over the run's
  devices (every replica holds every reading, so this context is public on the ledger). Weather
  moves every room's humidity by several %RH from day to day; what stays with a device is its
  offset from the others (a humidity sensor's calibration shows as a steady offset of absolute
  humidity) and its dynamics relative to theirs (on a quiet weekend every room is quieter).
* **A fingerprint** is the mean and covariance of a device's relative hourly vectors; the
  covariance is shrunk halfway to the within-device covariance pooled over all devices, the one
  shared part.
* **A window** of consecutive hours is classified by the sum of its hours' Gaussian
  log-likelihoods under every committed fingerprint: the device with the highest wins.

Weights (float32, the layout every node commits; N = the node's num_examples on the ledger, the
aggregation weight):

    0 pooled  (F, F)     sum over the node's devices of their scatter matrices / N   shared
    1 hours   (1,)       number of hourly vectors behind `pooled` / N               shared
    2 count   (D,)       device d's number of hourly vectors / N                    personal
    3 sums    (D, F)     sum of device d's vectors / N                              personal
    4 squares (D, F, F)  sum of device d's outer products / N                       personal

Everything is a sufficient statistic divided by N, so FedAvg (weights N) of the shared arrays is
exactly the pooled statistic of all devices, and a device's mean and covariance are ratios in which
N cancels: federated training gives the centralized model exactly. The personal rows of device d
come from its owner's update (federated/aggregate.py `Personal`).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from federated.weights import Weights, canonical_array

FEATURES = (
    "abs_humidity", "temperature",
    "log_d1_temperature", "log_d1_humidity", "log_d2_temperature", "log_d2_humidity",
    "log_d1_abs_humidity", "log_sd_abs_humidity", "log_sd_temperature", "log_sd_humidity",
)
F = len(FEATURES)
HOUR_MS = 3_600_000
MIN_READINGS = 30  # of an hour's 60 one-minute readings; fewer say too little about its dynamics
MAX_STEP_MS = 90_000  # consecutive readings further apart are a gap, not a one-minute difference
MIN_STEP_MS = 30_000
# Floors inside the logs: about the sensors' resolution, so a perfectly flat hour is not -inf.
_FLOORS = (0.002, 0.005, 0.001, 0.002, 0.0005, 0.005, 0.005, 0.01)
SHRINK = 0.5  # weight of the pooled covariance in every fingerprint's covariance
RIDGE = 1e-4  # added to every covariance's diagonal: a fingerprint of few hours stays invertible
PERSONAL_ARRAYS = (2, 3, 4)
DEFAULT_WINDOW_HOURS = 6
# Two devices' hourly vectors this close in every feature are one device's readings twice: copies
# with noise 1e-4 came within 0.03 of their originals, while no two of the paper's 8 rooms ever
# came within 0.17 in any hour of the week.
SAME_HOUR = 0.05
# The building's shift since the fit is estimated from at least this many devices' current hours
# (a median of two is their mean: one changed device would move it by half).
SHIFT_MIN_DEVICES = 3
SHIFT_MIN_HOURS = 3

Row = Sequence[Any]  # (device, seq, timestamp_ms, temperature_c, humidity_pct)


def shapes(num_devices: int) -> list[tuple[int, ...]]:
    return [(F, F), (1,), (num_devices,), (num_devices, F), (num_devices, F, F)]


def initial_weights(num_devices: int) -> Weights:
    """Round 0: no fingerprint yet (every count is 0)."""
    if num_devices < 1:
        raise ValueError("fingerprints need at least one device")
    return [np.zeros(s, np.float32) for s in shapes(num_devices)]


def check_weights(weights: Sequence[np.ndarray], num_devices: int | None = None) -> int:
    """The number of devices of fingerprint weights; ValueError if they are not shaped as such."""
    if len(weights) != 5:
        raise ValueError(f"fingerprint weights are 5 arrays, got {len(weights)}")
    d = int(np.shape(weights[2])[0]) if np.ndim(weights[2]) == 1 else -1
    if d < 1 or (num_devices is not None and d != num_devices):
        raise ValueError(f"fingerprint weights do not fit {num_devices} devices")
    if [tuple(np.shape(w)) for w in weights] != shapes(d):
        raise ValueError(f"fingerprint weights have shapes {[np.shape(w) for w in weights]}, "
                         f"expected {shapes(d)}")
    return d


# --- hourly features ----------------------------------------------------------------------------


def abs_humidity(t: np.ndarray, rh: np.ndarray) -> np.ndarray:
    """Absolute humidity in g/m^3 (Magnus formula for the saturation vapour pressure)."""
    es = 6.112 * np.exp(17.67 * t / (t + 243.5))
    return rh / 100.0 * es * 216.74 / (273.15 + t)


def _mean_abs(x: np.ndarray) -> float:
    return float(np.mean(np.abs(x))) if len(x) else 0.0


def hour_vector(ts: np.ndarray, t: np.ndarray, h: np.ndarray) -> np.ndarray | None:
    """The feature vector of one device-hour (readings in time order), or None if too sparse."""
    if len(ts) < MIN_READINGS:
        return None
    a = abs_humidity(t, h)
    step = np.diff(ts)
    ok = (step >= MIN_STEP_MS) & (step <= MAX_STEP_MS)  # one-minute differences only
    if ok.sum() < MIN_READINGS // 2:
        return None
    dt, dh, da = np.diff(t)[ok], np.diff(h)[ok], np.diff(a)[ok]
    ok2 = ok[1:] & ok[:-1]
    d2t, d2h = np.diff(np.diff(t))[ok2], np.diff(np.diff(h))[ok2]
    raw = (_mean_abs(dt), _mean_abs(dh), _mean_abs(d2t), _mean_abs(d2h), _mean_abs(da),
           float(np.std(a)), float(np.std(t)), float(np.std(h)))
    logs = [math.log(v + floor) for v, floor in zip(raw, _FLOORS, strict=True)]
    return np.array([float(np.mean(a)), float(np.mean(t)), *logs], np.float64)


def hourly_features(rows: Iterable[Row]) -> dict[Hashable, dict[int, np.ndarray]]:
    """device -> {hour index (timestamp_ms // 1 h): feature vector} for every hour with enough
    readings."""
    by_dev: dict[Hashable, list[tuple[int, float, float]]] = {}
    for r in rows:
        by_dev.setdefault(r[0], []).append((int(r[2]), float(r[3]), float(r[4])))
    out: dict[Hashable, dict[int, np.ndarray]] = {}
    for dev, items in by_dev.items():
        arr = np.array(sorted(items), dtype=np.float64)
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"device {dev!r}: non-finite readings")
        hours = (arr[:, 0] // HOUR_MS).astype(np.int64)
        cuts = np.flatnonzero(np.diff(hours)) + 1
        feats: dict[int, np.ndarray] = {}
        for seg in np.split(arr, cuts):
            v = hour_vector(seg[:, 0], seg[:, 1], seg[:, 2])
            if v is not None:
                feats[int(seg[0, 0] // HOUR_MS)] = v
        out[dev] = feats
    return out


def _distinct(vs: np.ndarray) -> np.ndarray:
    """The rows of `vs` (one hour's vectors, in the devices' order) without those within SAME_HOUR
    of an earlier kept row in every feature."""
    if len(vs) < 2:
        return vs
    close = np.max(np.abs(vs[:, None, :] - vs[None, :, :]), axis=2) < SAME_HOUR
    keep = np.ones(len(vs), bool)
    for i in range(1, len(vs)):
        keep[i] = not np.any(close[i, :i] & keep[:i])
    return vs[keep]


def relative(feats: Mapping[Hashable, Mapping[int, np.ndarray]], devices: Sequence[Hashable],
             targets: Mapping[Hashable, Mapping[int, np.ndarray]] | None = None,
             ) -> dict[Hashable, dict[int, np.ndarray]]:
    """Hourly vectors minus that hour's median over `devices` (the context, from `feats`); hours
    where fewer than two of them have a vector are dropped (alone, a device has nothing to be
    relative to). `targets`: the device-hours whose relative vectors are wanted (default: all of
    `feats`); a target's own vector stands in for its device's in the context.

    The median, not the mean: every device of the list is in the context, including those of a
    member that signs whatever readings it likes. With the mean, two of eight rooms signing their
    readings with noise of 0.02 while the fingerprints were fitted moved every other room's
    relative dynamics: 87.5 % of the honest rooms' genuine 6-hour windows of the held-out day
    scored as another device or none, and their accuracy fell from 0.89 to 0.68; with the median,
    3.3 % and 0.81 (scripts/bench_poisoning.py, attack `noisy`).

    An hour's vector within SAME_HOUR of one already in that hour's context, in every feature, is
    the same readings twice (a device signing copies of another's, federated/copies.py) and counts
    once: otherwise the copier's two rooms count their originals twice and move every other room's
    relative vectors while the fingerprints are fitted."""
    merged = {d: dict(feats.get(d, {})) for d in devices}
    for d, hours_of in (targets or {}).items():
        if d in merged:
            merged[d].update(hours_of)
    hours: dict[int, list[np.ndarray]] = {}
    for d in devices:
        for hour, v in merged[d].items():
            hours.setdefault(hour, []).append(v)
    ctx = {}
    for hour, vs in hours.items():
        kept = _distinct(np.array(vs))
        if len(kept) >= 2:
            ctx[hour] = np.median(kept, axis=0)
    want = targets if targets is not None else {d: merged[d] for d in devices}
    return {d: {hour: v - ctx[hour] for hour, v in hv.items() if hour in ctx} for d, hv in want.items()}


# --- fitting ------------------------------------------------------------------------------------


def fit(devices: Sequence[Hashable], rows: Sequence[Row], context_rows: Sequence[Row],
        num_examples: int, base: Sequence[np.ndarray] | None = None) -> Weights:
    """The fingerprints of the devices that `rows` are from, as a node's update.

    `devices`: the run's device list (row i of the personal arrays is devices[i]). `rows`: the
    node's training rows; `context_rows`: the training rows of every device of the list at the same
    data cut (the node's own included), which the relative features need. `num_examples`: the
    ledger's size of the node's training set, the divisor of every statistic. Rows of devices the
    node does not hold are copied from `base` (they are not this node's to change).
    """
    if num_examples < 1:
        raise ValueError("num_examples must be positive")
    index = {d: i for i, d in enumerate(devices)}
    own = sorted({r[0] for r in rows}, key=lambda d: index.get(d, -1))
    unknown = [d for d in own if d not in index]
    if unknown:
        raise ValueError(f"readings of device(s) not in the run's device list: {unknown[:3]}")
    weights = (initial_weights(len(devices)) if base is None else
               [np.array(w, np.float64) for w in base])
    check_weights(weights, len(devices))
    out = [np.array(w, np.float64) for w in weights]
    out[0][:] = 0.0
    out[1][:] = 0.0
    # Relative to every listed device's hours (the context), but only the hours this node holds
    # make its fingerprints: under a spread partition another node holds the device's other hours.
    ctx_feats = hourly_features([r for r in context_rows if r[0] in index])
    rel = relative(ctx_feats, list(devices), targets=hourly_features(rows))
    n = float(num_examples)
    for d in own:
        i = index[d]
        x = np.array(list(rel[d].values()), np.float64).reshape(-1, F)
        out[2][i] = len(x) / n
        out[3][i] = x.sum(axis=0) / n
        out[4][i] = x.T @ x / n
        if len(x):
            centred = x - x.mean(axis=0)
            out[0] += centred.T @ centred / n
            out[1][0] += len(x) / n
    return [canonical_array(w) for w in out]


# --- scoring ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprints:
    """The committed model ready to score: per device with a fingerprint, its mean, its precision
    and log-determinant."""

    devices: tuple[Hashable, ...]
    known: np.ndarray  # (D,) bool: has a fingerprint
    means: np.ndarray  # (D, F)
    precisions: np.ndarray  # (D, F, F)
    logdets: np.ndarray  # (D,)
    hours: np.ndarray  # (D,) hourly vectors behind each fingerprint, relative to one another

    @classmethod
    def of(cls, weights: Sequence[np.ndarray], devices: Sequence[Hashable]) -> Fingerprints:
        d = check_weights(weights, len(devices))
        w = [np.asarray(a, np.float64) for a in weights]
        pooled_n = float(w[1][0])
        pooled = w[0] / pooled_n if pooled_n > 0 else np.zeros((F, F))
        known = w[2] > 0
        means = np.zeros((d, F))
        prec = np.zeros((d, F, F))
        logdets = np.zeros(d)
        for i in np.flatnonzero(known):
            # A row is whatever its owner committed (finite, nothing more is checked): one that
            # does not make a proper Gaussian is no fingerprint, never an error.
            with np.errstate(all="ignore"):
                mu = w[3][i] / w[2][i]
                own = w[4][i] / w[2][i] - np.outer(mu, mu)
                cov = (1.0 - SHRINK) * own + SHRINK * pooled if pooled_n > 0 else own
                cov = 0.5 * (cov + cov.T) + RIDGE * np.eye(F)
            try:
                if not np.all(np.isfinite(cov)):
                    raise np.linalg.LinAlgError("not finite")
                sign, logdet = np.linalg.slogdet(cov)
                precision = np.linalg.inv(cov)
                if sign <= 0 or not (np.isfinite(logdet) and np.all(np.isfinite(precision))):
                    raise np.linalg.LinAlgError("not positive definite")
            except np.linalg.LinAlgError:
                known[i] = False
                continue
            means[i], prec[i], logdets[i] = mu, precision, logdet
        return cls(tuple(devices), known, means, prec, logdets, w[2])

    def loglik(self, x: np.ndarray) -> np.ndarray:
        """(n, D) Gaussian log-likelihoods of n relative hourly vectors; -inf for devices without a
        fingerprint."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        out = np.full((len(x), len(self.devices)), -np.inf)
        for i in np.flatnonzero(self.known):
            diff = x - self.means[i]
            q = np.einsum("nf,fg,ng->n", diff, self.precisions[i], diff)
            out[:, i] = -0.5 * (q + self.logdets[i] + F * math.log(2 * math.pi))
        return out


def building_shift(model: Fingerprints, rel: Mapping[Hashable, Mapping[int, np.ndarray]]) -> np.ndarray:
    """How far the building has moved every device's relative vectors since the fingerprints were
    fitted: the median over the devices with a fingerprint (and SHIFT_MIN_HOURS hours in `rel`) of
    their mean relative vector minus their fingerprint's mean; zero with fewer than
    SHIFT_MIN_DEVICES such devices.

    A fingerprint is its device's offset from the building as the building was while it was
    fitted. When rooms of the context change character after the fit, every other room's offset
    moves by about the same vector: with two of eight rooms signing noisy readings while the
    fingerprints were fitted and genuine ones since (scripts/bench_poisoning.py, attack `noisy`),
    the honest rooms' dynamics moved by up to 1.5 standard deviations, and one honest room's
    held-out windows went to its neighbour (4.2 points of the honest rooms' accuracy; recentred,
    0.8). The median of the devices' moves is that vector as long as fewer
    than half of them changed themselves."""
    index = {d: i for i, d in enumerate(model.devices)}
    moves = []
    for d, hours in rel.items():
        i = index.get(d)
        if i is None or not model.known[i] or len(hours) < SHIFT_MIN_HOURS:
            continue
        moves.append(np.mean(np.array(list(hours.values())), axis=0) - model.means[i])
    if len(moves) < SHIFT_MIN_DEVICES:
        return np.zeros(F)
    return np.asarray(np.median(moves, axis=0), np.float64)


def recentred(model: Fingerprints, rel: Mapping[Hashable, Mapping[int, np.ndarray]],
              ) -> dict[Hashable, dict[int, np.ndarray]]:
    """`rel` with the building's shift since the fit (`building_shift`) taken out: what windows are
    scored on."""
    shift = building_shift(model, rel)
    return {d: {h: v - shift for h, v in hours.items()} for d, hours in rel.items()}


def without(model: Fingerprints, devices: Iterable[Hashable]) -> Fingerprints:
    """`model` with the fingerprints of `devices` left out: no window scores as them (copies of
    another device's readings, federated/copies.py)."""
    drop = set(devices)
    known = np.array([bool(k) and d not in drop for d, k in zip(model.devices, model.known, strict=True)])
    return replace(model, known=known)


def masked(ws: Sequence[Window], model: Fingerprints) -> list[Window]:
    """`ws` scored by `model`'s devices only: the log-likelihood of a device `model` does not know
    (left out by `without`) is -inf, so no window is attributed to it."""
    return [Window(w.device, w.start_hour, w.hours, np.where(model.known, w.loglik, -np.inf)) for w in ws]


@dataclass(frozen=True)
class Window:
    device: Hashable  # the device the readings claim to be from
    start_hour: int
    hours: int  # hourly vectors in the window
    loglik: np.ndarray  # (D,) summed over the window's hours

    def best(self) -> int:
        """The index of the best-scoring fingerprint, -1 if there is none."""
        return int(np.argmax(self.loglik)) if np.any(np.isfinite(self.loglik)) else -1


def windows(model: Fingerprints, rel: Mapping[Hashable, Mapping[int, np.ndarray]],
            window_hours: int = DEFAULT_WINDOW_HOURS, step_hours: int = 1,
            min_share: float = 0.8) -> list[Window]:
    """Every window of `window_hours` consecutive hours (starting every `step_hours`) of every
    device in `rel` with at least `min_share` of its hours present, with its summed log-likelihood
    under every fingerprint."""
    if window_hours < 1 or step_hours < 1:
        raise ValueError("window and step must be at least one hour")
    need = max(1, math.ceil(min_share * window_hours))
    out = []
    for dev, hours in rel.items():
        if not hours:
            continue
        keys = sorted(hours)
        ll = dict(zip(keys, model.loglik(np.array([hours[k] for k in keys])), strict=True))
        start = keys[0] - keys[0] % step_hours
        for s in range(start, keys[-1] + 1, step_hours):
            inside = [k for k in range(s, s + window_hours) if k in ll]
            if len(inside) >= need:
                out.append(Window(dev, s, len(inside), np.sum([ll[k] for k in inside], axis=0)))
    return out


def accuracy(model: Fingerprints, ws: Sequence[Window]) -> float:
    """Share of windows whose best-scoring fingerprint is their own device's."""
    index = {d: i for i, d in enumerate(model.devices)}
    if not ws:
        raise ValueError("no windows to score")
    return sum(w.best() == index.get(w.device, -1) for w in ws) / len(ws)


def classify(weights: Sequence[np.ndarray], devices: Sequence[Hashable], rows: Sequence[Row],
             context_rows: Sequence[Row] = (), window_hours: int = 1, step_hours: int = 1) -> list[Window]:
    """Windows of `rows` scored by the committed fingerprints, relative to the hours of every
    device of the list in `rows` + `context_rows`, recentred (`building_shift`)."""
    model = Fingerprints.of(weights, devices)
    index = set(devices)
    targets = {d: h for d, h in hourly_features(rows).items() if d in index}
    context = hourly_features([r for r in context_rows if r[0] in index])
    everyone = {d: {**context.get(d, {}), **targets.get(d, {})} for d in devices}
    # The building's shift is estimated from every device's hours, not only the scored ones.
    rel = recentred(model, relative(context, list(devices), everyone))
    return windows(model, {d: rel[d] for d in targets}, window_hours, step_hours)


def evaluate(weights: Sequence[np.ndarray], devices: Sequence[Hashable], rows: Sequence[Row],
             context_rows: Sequence[Row] = (), window_hours: int = 1) -> dict[str, float]:
    """Held-out metrics: `accuracy` of the windows of `window_hours` consecutive hours of `rows`,
    one starting at every hour (they overlap when longer than an hour), their number (`windows`)
    and `num_examples` (readings)."""
    unknown = sorted({str(r[0]) for r in rows} - {str(d) for d in devices})
    if unknown:
        raise ValueError("readings of device(s) not in classes (the run's device list): "
                         + ", ".join(unknown[:3]))
    ws = classify(weights, devices, rows, context_rows, window_hours, 1)
    out = {"windows": float(len(ws)), "window_hours": float(window_hours), "num_examples": float(len(rows))}
    if ws:
        out["accuracy"] = accuracy(Fingerprints.of(weights, devices), ws)
    return out
