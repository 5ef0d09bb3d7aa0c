"""Sensor devices: identities owned by nodes, and reading sources (a real CSV replayed, or simulated
devices with distinguishable characteristics), streamed into the owning nodes as signed readings."""

from __future__ import annotations

import csv
import gzip
import io
import math
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from node.errors import ConfigError, KeyFileError
from node.ledger.keys import NodeKey

DEVICES_DIR = "devices"
BUNDLED_CSV = Path(__file__).parent / "data" / "smart_building_8dev_2d.csv.gz"
REQUIRED_COLUMNS = ("timestamp", "device_id", "temperature_c", "humidity_pct")


@dataclass(frozen=True)
class RawReading:
    device: str
    timestamp_ms: int
    temperature_c: float
    humidity_pct: float


def device_key(node_dir: Path, name: str) -> NodeKey:
    """The device's key, kept in the owning node's directory (created on first use, mode 0600)."""
    if not name or len(name) > 64 or any(c in name for c in "/\\\0") or name.startswith("."):
        raise ConfigError(f"invalid device name {name!r}")
    d = node_dir / DEVICES_DIR
    d.mkdir(mode=0o700, exist_ok=True)
    path = d / f"{name}.key"
    if path.exists():
        return NodeKey.load(path)
    key = NodeKey.generate()
    try:
        key.save(path)
    except KeyFileError:
        return NodeKey.load(path)  # created concurrently: use that one
    return key


# --- CSV replay -------------------------------------------------------------------------------
@dataclass
class CsvStats:
    rows: int = 0
    bad_rows: Counter[str] = field(default_factory=Counter)
    first_errors: list[str] = field(default_factory=list)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # closed by the caller


def _timestamp_ms(row: dict[str, str]) -> int:
    if row.get("epoch_s"):
        return int(float(row["epoch_s"]) * 1000)
    from datetime import datetime, timezone

    text = row["timestamp"].replace("Z", "+00:00")
    dt = datetime.fromisoformat(text)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def csv_readings(
    path: Path, stats: CsvStats | None = None, devices: set[str] | None = None
) -> Iterator[RawReading]:
    """Rows of a CSV with columns timestamp, device_id, temperature_c, humidity_pct (the format of
    shared/data; .gz allowed). A bad row is counted and skipped, never fatal; a file without the
    columns is refused at once."""
    stats = stats if stats is not None else CsvStats()
    if not path.exists():
        raise ConfigError(f"CSV file {path} does not exist")
    try:
        fh = _open_text(path)
        reader = csv.DictReader(fh)
        header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error, EOFError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in REQUIRED_COLUMNS if c not in header]
    if missing:
        fh.close()
        raise ConfigError(f"{path} lacks column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}")
    with fh:
        line = 1
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except (csv.Error, UnicodeDecodeError, OSError, EOFError) as exc:
                stats.bad_rows["unreadable"] += 1
                stats.first_errors.append(f"{path}:{line + 1}: {exc}")
                return
            line += 1
            stats.rows += 1
            try:
                name = row["device_id"].strip()
                if not name:
                    raise ValueError("empty device_id")
                temp, hum = float(row["temperature_c"]), float(row["humidity_pct"])
                r = RawReading(name, _timestamp_ms(row), temp, hum)
                if not (math.isfinite(r.temperature_c) and math.isfinite(r.humidity_pct)):
                    raise ValueError("non-finite value")
            except (ValueError, TypeError, AttributeError, KeyError) as exc:
                stats.bad_rows["unparseable"] += 1
                if len(stats.first_errors) < 5:
                    stats.first_errors.append(f"{path}:{line}: {exc}")
                continue
            if devices is None or r.device in devices:
                yield r


def csv_devices(path: Path, limit: int | None = None) -> list[str]:
    """Device names in order of first appearance (reads until `limit` distinct ones are seen)."""
    seen: dict[str, None] = {}
    for r in csv_readings(path):
        seen.setdefault(r.device, None)
        if limit is not None and len(seen) >= limit:
            break
    return list(seen)


# --- simulated devices ------------------------------------------------------------------------
@dataclass(frozen=True)
class DeviceProfile:
    """Each simulated device has its own climate, so devices are distinguishable from (T, RH), as
    in the paper's traceability experiment."""

    base_temp_c: float
    daily_amplitude_c: float
    humidity_at_base: float
    humidity_per_degree: float  # relative humidity drops as temperature rises
    noise_c: float
    noise_pct: float
    phase_h: float

    @staticmethod
    def for_index(i: int, rng: random.Random) -> DeviceProfile:
        return DeviceProfile(
            base_temp_c=19.0 + 1.7 * i + rng.uniform(-0.3, 0.3),
            daily_amplitude_c=rng.uniform(0.8, 2.5),
            humidity_at_base=62.0 - 2.5 * i + rng.uniform(-1, 1),
            humidity_per_degree=rng.uniform(1.5, 3.5),
            noise_c=rng.uniform(0.05, 0.2),
            noise_pct=rng.uniform(0.3, 1.0),
            phase_h=rng.uniform(0, 24),
        )


def simulated_readings(
    names: list[str], start_ms: int, step_ms: int = 60_000, seed: int = 0
) -> Iterator[RawReading]:
    """An endless interleaved stream, one reading per device per `step_ms` of simulated time."""
    rng = random.Random(seed)
    profiles = [DeviceProfile.for_index(i, rng) for i in range(len(names))]
    t = start_ms
    while True:
        hours = t / 3_600_000
        for name, p in zip(names, profiles, strict=True):
            cycle = math.sin(2 * math.pi * (hours + p.phase_h) / 24)
            temp = p.base_temp_c + p.daily_amplitude_c * cycle + rng.gauss(0, p.noise_c)
            hum = p.humidity_at_base - p.humidity_per_degree * (temp - p.base_temp_c)
            hum += rng.gauss(0, p.noise_pct)
            yield RawReading(name, t, round(temp, 3), round(min(max(hum, 0.0), 100.0), 3))
        t += step_ms
