"""scripts/bench_poisoning.py as a user runs it: --quick on the bundled slice trains the real models
(humidity: Keras, 1 round of 3 epochs on every 20th reading; traceability: the numpy fingerprints)
for every attack and strategy with each of the 4 nodes malicious in turn, and checks the inflated
num_examples against a real ledger."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "bench_poisoning.py"
ATTACKS = {"scaled", "sign_flip", "noise", "data_poison", "inflated"}
STRATEGIES = {"fedavg", "fedmedian", "fedtrimmedavg", "krum", "multikrum", "fedavg_clip",
              "fedavg_clip_shared"}
VIEWS = {"humidity", "humidity_shared_line", "traceability"}


@pytest.fixture(scope="module")
def quick() -> dict[str, Any]:
    data = REPO / "node" / "launch" / "data"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--quick", "--data", str(data), "--json"],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


@pytest.mark.slow
@pytest.mark.federated
def test_every_attack_meets_every_strategy_and_worst_gap_is_the_worst_best_gap(quick: dict[str, Any]) -> None:
    assert set(quick["results"]) == VIEWS
    best_gaps = []
    for view, results in quick["results"].items():
        attacks = ATTACKS | ({"mimic", "noisy"} if view == "traceability" else set())
        assert set(results) == {"clean", *attacks}, view
        assert set(results["clean"]) == STRATEGIES
        for attack in attacks:
            row = results[attack]
            assert set(row) >= STRATEGIES, (view, attack)
            assert row["best"] in STRATEGIES
            gaps = {s: results["clean"]["fedavg"] - row[s] for s in STRATEGIES}
            assert row["best_gap"] == pytest.approx(min(gaps.values()), abs=1e-3)
            best_gaps.append(row["best_gap"])
        assert "fedavg_without_ledger_check" in results["inflated"]
    assert quick["worst_gap"] == pytest.approx(max(best_gaps), abs=1e-3)
    assert quick["recommended"] in STRATEGIES


@pytest.mark.slow
@pytest.mark.federated
def test_the_figures_are_means_over_which_node_is_malicious(quick: dict[str, Any]) -> None:
    rotations = quick["rotations"]
    assert [r["malicious_node"] for r in rotations] == [1, 2, 3, 4] == quick["config"]["malicious_nodes"]
    for r in rotations:
        assert set(r["attacker_devices"]).isdisjoint(r["honest_devices"])
        assert len(r["attacker_devices"]) == 2 and len(r["honest_devices"]) == 6
    for view, results in quick["results"].items():
        for attack, row in results.items():
            for s in STRATEGIES:
                per = [r["views"][view]["results"][attack][s] for r in rotations]
                assert row[s] == pytest.approx(sum(per) / len(per), abs=1e-3), (view, attack, s)
            if attack != "clean":
                by_rotation = row["best_gap_by_rotation"]
                assert len(by_rotation) == 4
                assert row["best_gap"] == pytest.approx(sum(by_rotation) / 4, abs=1e-3), (view, attack)
    assert quick["worst_gap_single_rotation"] == max(r["worst_gap"] for r in rotations)
    assert quick["worst_rotation"][0] in (1, 2, 3, 4)


@pytest.mark.slow
@pytest.mark.federated
def test_the_ledger_refuses_the_inflated_weight_and_takes_the_true_one(quick: dict[str, Any]) -> None:
    assert quick["inflated_num_examples_refused"] is True
    for r in quick["rotations"]:
        led = r["ledger"]
        assert led["true_figure_reason"] is None and led["inflated_reason"] == "num_examples_mismatch"
        # The ledger's training set, selected by its own held-out rule, is the one the bench trained on.
        assert led["true_num_examples"] == led["bench_training_rows"] == \
            r["train_rows_per_node"][r["malicious_node"] - 1]
    # Had it been accepted, FedAvg's shared line would have been the attacker's flipped one.
    shared = quick["results"]["humidity_shared_line"]["inflated"]
    assert shared["fedavg_without_ledger_check"] < shared["fedavg"] - 0.1


@pytest.mark.slow
@pytest.mark.federated
def test_an_attacker_cannot_move_honest_devices_own_lines(quick: dict[str, Any]) -> None:
    # One round: honest devices are predicted by their own rows, which come from their owners'
    # updates whatever the attacker sends or the strategy does (Personal, as the ledger aggregates).
    for r in quick["rotations"]:
        hum = r["views"]["humidity"]["results"]
        clean = hum["clean"]["fedavg"]
        for attack, row in hum.items():
            for s in STRATEGIES:
                assert row[s] == clean, (r["malicious_node"], attack, s)


@pytest.mark.slow
@pytest.mark.federated
def test_the_ledger_refit_refuses_model_attacks_and_takes_honest_fits(quick: dict[str, Any]) -> None:
    for r in quick["rotations"]:
        check_refit_and_copies(r)


def check_refit_and_copies(r: dict[str, Any]) -> None:
    refit = r["views"]["traceability"]["refit_check"]
    assert refit["clean"]["max_relative_deviation"] < 1e-6
    assert refit["data_poison"]["max_relative_deviation"] < 1e-6  # honest fit of poisoned readings
    for attack in ("scaled", "sign_flip", "noise", "mimic"):
        assert refit[attack]["max_relative_deviation"] > 0.1, attack
    # The ledger's refit rule refuses them: each of their rounds is the 3 honest updates.
    trace = r["views"]["traceability"]
    refused = {"scaled", "sign_flip", "noise", "mimic", "inflated"}
    assert set(trace["refused_by_refit"]) == refused
    honest_only = r["views"]["traceability"]["results"]["inflated"]
    for attack in refused:
        assert {s: r["views"]["traceability"]["results"][attack][s] for s in STRATEGIES} == \
            {s: honest_only[s] for s in STRATEGIES}, attack
        assert "fedavg_without_ledger_check" in r["views"]["traceability"]["results"][attack]
    assert refit["noisy"]["max_relative_deviation"] < 1e-6  # an honest fit of noisy readings
    flags = trace["false_flags"]
    assert set(flags) == set(r["views"]["traceability"]["results"]) and all(
        0.0 <= v <= 1.0 for row in flags.values() for v in row.values())
    # The copy rule finds the attacker's copies, by commit order, and nothing in the clean run.
    attacker = set(r["attacker_devices"])
    assert {c["copy"] for c in trace["copies_found"]["data_poison"]} == attacker
    assert {c["of"] for c in trace["copies_found"]["data_poison"]} == set(r["victims"].values())
    assert trace["copies_found"]["clean"] == [] and trace["copies_found"]["noisy"] == []
    sweep = trace["copy_check"]["sweep"]
    assert [s["noise"] for s in sweep] == sorted(s["noise"] for s in sweep) and len(sweep) >= 3
    victims = r["victims"]
    assert set(victims) == set(r["attacker_devices"])
    assert set(victims.values()) <= set(r["honest_devices"])


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--data", str(tmp_path)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "no data files" in proc.stderr


def test_a_node_that_does_not_exist_is_a_clear_error() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--malicious", "5"], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert proc.returncode == 2 and "node number from 1 to 4" in proc.stderr
