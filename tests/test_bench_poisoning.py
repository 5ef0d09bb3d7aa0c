"""scripts/bench_poisoning.py as a user runs it: --quick trains real Keras models (1 round, every
20th reading) for every attack and strategy, about 30 s on the shared 2-core machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_poisoning.py"
ATTACKS = {"scaled", "sign_flip", "noise", "data_poison", "inflated"}
STRATEGIES = {"fedavg", "fedmedian", "fedtrimmedavg", "krum", "fedavg_clip"}


@pytest.mark.slow
@pytest.mark.federated
def test_quick_run_reports_every_attack_and_strategy_and_the_ledger_refuses_the_inflated_weight() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--json"], capture_output=True, text=True,
                          timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    assert out["inflated_num_examples_refused"] is True
    assert out["ledger"]["honest_reason"] is None
    assert out["ledger"]["inflated_reason"] == "num_examples_mismatch"
    assert set(out["results"]) == {"humidity", "traceability"}
    for task, results in out["results"].items():
        assert set(results) == {"clean", *ATTACKS}, task
        for attack in ATTACKS:
            assert set(results[attack]) >= STRATEGIES, (task, attack)
            assert results[attack]["best"] in STRATEGIES
        assert "fedavg_without_ledger_check" in results["inflated"]
    gaps = [out["tasks"][t]["worst_gap"] for t in out["tasks"]]
    assert out["worst_gap"] == max(gaps)


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode != 0 and "no data files" in proc.stderr
