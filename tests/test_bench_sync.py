"""scripts/bench_sync.py as a user runs it: argument errors (fast), and one small real run (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_sync.py"
BUNDLED = REPO / "node" / "launch" / "data" / "smart_building_8dev_2d.csv.gz"


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


@pytest.mark.parametrize("argv, message", [
    (["--readings", "0"], "--readings must be at least 1"),
    (["--per-block", "5000"], "--per-block must be between 1 and 2000"),
    (["--peers", "5"], "--peers must be between 1 and 4"),
    (["--modes", "fast"], "--modes takes"),
    (["--csv", "/nonexistent.csv"], "does not exist"),
])
def test_bad_arguments_are_usage_errors(argv: list[str], message: str) -> None:
    out = run(*argv, timeout=60)
    assert out.returncode == 2 and message in out.stderr


def test_asking_for_more_readings_than_the_csv_holds_is_a_clear_error() -> None:
    out = run("--csv", str(BUNDLED), "--readings", "10000000", timeout=120)
    assert out.returncode == 1 and "usable readings" in out.stderr and "Traceback" not in out.stderr


@pytest.mark.slow
def test_a_small_run_syncs_both_modes_to_the_same_verified_replica() -> None:
    out = run("--csv", str(BUNDLED), "--readings", "3000", "--per-block", "500", "--peers", "2", "--json")
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout)
    assert result["ledger"]["readings"] == 3000 and result["ledger"]["blocks"] == 7
    for mode in ("certificates", "full"):
        r = result["modes"][mode]
        assert r["verified"] and r["readings"] == 3000 and r["blocks"] == 7 and r["failures"] == 0
        assert result[f"readings_per_s_{mode}"] > 0 and result[f"blocks_per_s_{mode}"] > 0
    assert result["modes"]["certificates"]["head_hash"] == result["modes"]["full"]["head_hash"]
    assert result["certificates_vs_full"] > 0 and result["verify_per_s_per_core"] > 0
