"""Read the bundled CSV slices into the row format the tasks take.

The running system reads rows from its SQLite replica; this loader is for tests, experiments and
scripts that start from the public data files (columns timestamp, epoch_s, device_id,
temperature_c, humidity_pct). Rows come out as ``(device_id, seq, timestamp_ms, temperature_c,
humidity_pct)`` with ``seq`` counting each device's readings from 0, like a device's sequence
number on the ledger.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterable
from pathlib import Path

Row = tuple[str, int, int, float, float]

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "node" / "launch" / "data"
MAIN_SLICE = BUNDLED_DIR / "smart_building_8dev_2d.csv.gz"
HOLDOUT_SLICE = BUNDLED_DIR / "smart_building_8dev_holdout.csv.gz"


def read_csv_rows(
    path: str | Path,
    devices: Iterable[str] | None = None,
    limit_per_device: int | None = None,
    every: int = 1,
) -> list[Row]:
    """Rows of `path` (``.csv`` or ``.csv.gz``), optionally only `devices`, only every `every`-th
    reading of each device (a sparse sample spanning the whole period) and at most
    `limit_per_device` of them (in file order, which is chronological)."""
    if every < 1:
        raise ValueError("every must be >= 1")
    wanted = set(devices) if devices is not None else None
    seq: dict[str, int] = {}
    rows: list[Row] = []
    p = Path(path)
    raw = gzip.open(p, "rb") if p.suffix == ".gz" else open(p, "rb")  # noqa: SIM115
    with raw, io.TextIOWrapper(raw, encoding="utf-8", newline="") as text:
        for rec in csv.DictReader(text):
            dev = rec["device_id"]
            if wanted is not None and dev not in wanted:
                continue
            s = seq.get(dev, 0)
            seq[dev] = s + 1
            if s % every or (limit_per_device is not None and s // every >= limit_per_device):
                continue
            rows.append(
                (dev, s, int(rec["epoch_s"]) * 1000, float(rec["temperature_c"]), float(rec["humidity_pct"]))
            )
    return rows
