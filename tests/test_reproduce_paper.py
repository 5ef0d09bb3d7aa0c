"""scripts/reproduce_paper.py as a user runs it: a subprocess, --quick on the bundled slice.

The quick run trains real Keras models (2 nodes, 2 rounds, a reading every 15 min), which takes
20-60 s on the shared 2-core machine, hence `slow`. The error-path tests do not train and are fast.
"""

from __future__ import annotations

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
def test_quick_run_reports_all_three_experiments(tmp_path: Path) -> None:
    for name in BUNDLED_FILES:
        shutil.copy(BUNDLED / name, tmp_path / name)
    proc = run("--quick", "--json", "--data", str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)  # stdout is exactly one JSON object; progress went to stderr
    assert "humidity" in proc.stderr

    assert set(result["traceability"]) == {"2", "4", "8"}
    assert all(is_fraction(v) for v in result["traceability"].values())
    for k, detail in result["traceability_detail"].items():
        assert len(detail["devices"]) == int(k)
        for model in ("spread", "centralized"):
            m = detail[model]
            assert is_fraction(m["val_accuracy"]) and is_fraction(m["holdout_accuracy"])
            assert is_fraction(m["window_accuracy"]) and m["windows"] >= 2 * int(k)

    for model in ("federated", "centralized"):
        m = result["humidity"][model]
        assert isinstance(m["rmse"], float) and 0 < m["rmse"] < 50 and math.isfinite(m["r2"])

    cfg = result["config"]
    assert cfg["data"]["bundled_slice"] is True and cfg["quick"] is True
    assert len(cfg["devices"]) == 8 and cfg["rounds"] >= 1 and cfg["seed"] == 0
    assert cfg["elapsed_s"] > 0 and "ledger verifies" in cfg["federation"]

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
    truncated = tmp_path / BUNDLED_FILES[1]
    truncated.write_bytes((BUNDLED / BUNDLED_FILES[1]).read_bytes()[:1000])
    shutil.copy(BUNDLED / BUNDLED_FILES[0], tmp_path / BUNDLED_FILES[0])
    proc = run("--data", str(tmp_path), timeout=60)
    assert proc.returncode == 2 and "cannot read" in proc.stderr and "Traceback" not in proc.stderr
