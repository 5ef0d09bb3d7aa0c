"""scripts/adversary.py as CI runs it: an unknown attack is a usage error (fast); `--quick --json`
against a live 4-node federation exits 0 with one result of the documented shape per attack (slow)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "adversary.py"
ATTACKS = ["forged_proposals", "skew_edge", "join_flood", "bad_readings", "certificate_padding",
           "fake_status", "sybil_votes", "pex_spam", "malformed_frames", "expensive_http", "relay"]


def run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def test_an_unknown_attack_is_a_usage_error() -> None:
    out = run("--only", "forged_proposals,nonsense", timeout=60)
    assert out.returncode == 2 and "unknown attacks: ['nonsense']" in out.stderr


@pytest.mark.slow
def test_every_attack_holds_in_a_quick_run(tmp_path: Path) -> None:
    out = run("--quick", "--json", "--dir", str(tmp_path / "fed"), timeout=900)
    report = json.loads(out.stdout)
    assert [r["attack"] for r in report["attacks"]] == ATTACKS
    for r in report["attacks"]:
        assert set(r["readings_per_s"]) == {"before", "during", "after"}
        assert set(r["ratio"]) == {"during", "after"}
        assert set(r["max_height_diff"]) == {"during", "end", "after_catch_up"}
        assert r["catch_up_s"] >= 0.0 and (r["catch_up_s"] == 0.0) == (r["max_height_diff"]["end"] <= 3)
        assert len(r["rss_mb"]["growth"]) == 4
        assert isinstance(r["replicas_agree"], bool) and r["verify_ok"] in (True, False, None)
        assert r["holds"] == (not r["why_not"]), r
        assert r["readings_per_s"]["before"] > 0
    assert [v["ok"] for v in report["final"]["verify"]] == [True] * 4
    assert out.returncode == 0, "attacks that did not hold: " + json.dumps(
        [r for r in report["attacks"] if not r["holds"]], indent=1)
