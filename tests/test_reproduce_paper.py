"""scripts/reproduce_paper.py as a user runs it: a subprocess, --quick on the bundled slice.

The quick run trains real Keras models (2 nodes, 2 rounds, a reading every 15 min) and fits the
fingerprints, which takes 20-60 s on the shared 2-core machine, hence `slow`. The error-path tests
do not train and are fast.
"""

from __future__ import annotations

import gzip
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "reproduce_paper.py"
BUNDLED = REPO / "node" / "launch" / "data"
BUNDLED_FILES = ("smart_building_8dev_2d.csv.gz", "smart_building_8dev_holdout.csv.gz")


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def is_fraction(v: Any) -> bool:
    return isinstance(v, float) and 0.0 <= v <= 1.0


@pytest.mark.slow
@pytest.mark.federated
def test_quick_run_reports_all_four_experiments(tmp_path: Path) -> None:
    for name in BUNDLED_FILES:
        shutil.copy(BUNDLED / name, tmp_path / name)
    proc = run("--quick", "--json", "--data", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout is exactly one JSON object; progress went to stderr
    assert "humidity" in proc.stderr

    for key in ("traceability", "traceability_owner", "traceability_centralized"):
        assert set(result[key]) == {"2", "4", "8"}
        assert all(is_fraction(v) for v in result[key].values())
    for k, detail in result["traceability_detail"].items():
        assert len(detail["devices"]) == int(k) and detail["chance"] == 1 / int(k)
        for model in ("owner", "spread", "centralized"):
            for w in ("1h", "3h", "6h"):
                m = detail[model][w]
                assert is_fraction(m["accuracy"]) and m["windows"] >= 2 * int(k)
        # Generative fingerprints federate exactly under the owner partition: each owner's rows
        # are the centralized fit's, and the pooled covariance is a FedAvg of sufficient statistics.
        assert abs(detail["owner"]["6h"]["accuracy"] - detail["centralized"]["6h"]["accuracy"]) < 0.01
    assert result["traceability_owner"]["2"] > 0.9  # two rooms of the slice are easy to tell apart

    for model in ("federated", "centralized"):
        m = result["humidity"][model]
        assert isinstance(m["rmse"], float) and 0 < m["rmse"] < 50 and math.isfinite(m["r2"])
    assert set(result["humidity"]["baselines"]) == {"device_mean", "line_all_devices", "line_per_device",
                                                    "line_per_device_with_hour"}

    sus = result["suspicious"]
    assert is_fraction(sus["detection_rate"]) and is_fraction(sus["false_positive_rate"])
    assert sus["detection_rate"] > sus["false_positive_rate"]
    assert sus["injected_windows"] > 0 and sus["genuine_windows"] > 0 and sus["pairs"] == 56

    cfg = result["config"]
    assert cfg["data"]["bundled_slice"] is True and cfg["quick"] is True
    assert len(cfg["devices"]) == 8 and cfg["rounds"] >= 1 and cfg["seed"] == 0
    assert cfg["elapsed_s"] > 0 and "ledger verifies" in cfg["federation"]
    assert "humidity_flower" not in result  # --flower was not asked for

    # Every tampered, forged and replayed reading was refused by the ledger, no genuine one was.
    ledger = result["ledger"]
    injected = ledger["injected"]
    assert injected["tampered"] > 0 and injected["forged"] > 0 and injected["replayed"] > 0
    assert ledger["accepted_bad"] == {"tampered": 0, "forged": 0, "replayed": 0}
    assert ledger["rejected_genuine"] == 0
    assert ledger["outcome"]["genuine"] == {"accepted": injected["genuine"]}
    assert set(ledger["outcome"]["tampered"]) == {"bad_signature"}
    assert set(ledger["outcome"]["forged"]) <= {"bad_signature", "unknown_device"}
    assert 0.15 < ledger["bad_share"] < 0.25

    raw, validated = result["validity"]
    assert raw["training_data"].startswith("raw") and validated["training_data"].startswith("validated")
    assert raw["readings_used"] == ledger["stream_readings"] and raw["rejected"] == 0
    assert validated["readings_used"] == injected["genuine"]
    assert validated["rejected"] == ledger["stream_readings"] - injected["genuine"]
    assert validated["rmse"] <= raw["rmse"], result["validity"]


def test_missing_data_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    proc = run("--data", str(tmp_path / "nowhere"), timeout=60)
    assert proc.returncode == 2 and "does not exist" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("--data", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "no data files" in proc.stderr and "Traceback" not in proc.stderr
    shutil.copy(BUNDLED / BUNDLED_FILES[0], tmp_path / BUNDLED_FILES[0])
    proc = run("--data", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "missing data file" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_unknown_or_unscorable_devices_are_refused(tmp_path: Path) -> None:
    proc = run("--data", str(BUNDLED), "--devices", "room_442,room_999", timeout=60)
    assert proc.returncode == 2 and "room_999" in proc.stderr and "Traceback" not in proc.stderr
    # Any readings in the format, any devices in them: one without held-out rows is named.
    main, held = (tmp_path / "other" / n for n in BUNDLED_FILES)
    main.parent.mkdir()
    shutil.copy(BUNDLED / BUNDLED_FILES[0], main)
    with gzip.open(BUNDLED / BUNDLED_FILES[1], "rt") as src, gzip.open(held, "wt") as dst:
        dst.writelines(line for line in src if ",room_510," not in line)
    proc = run("--data", str(main.parent), "--devices", "room_442,room_510", timeout=60)
    assert proc.returncode == 2 and "device room_510 has no rows" in proc.stderr
    assert "Traceback" not in proc.stderr
    truncated = tmp_path / BUNDLED_FILES[1]
    truncated.write_bytes((BUNDLED / BUNDLED_FILES[1]).read_bytes()[:1000])
    shutil.copy(BUNDLED / BUNDLED_FILES[0], tmp_path / BUNDLED_FILES[0])
    proc = run("--data", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr
