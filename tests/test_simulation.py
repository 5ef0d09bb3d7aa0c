"""The deterministic simulator: many seeds, each with its own fault mix, safety checked after
every step and liveness after the faults heal. `python scripts/simulate.py --seed N --trace`
replays any seed printed here."""

from __future__ import annotations

import os

import pytest

from node.sim.byzantine import Behaviour
from node.sim.runner import run_seed

# Seeds that once failed, pinned forever (see the regression tests in test_tendermint_rules.py).
REGRESSION_SEEDS = [18, 21, 24, 75, 151, 268, 681]
SEEDS_4 = int(os.environ.get("FEDLEDGER_SIM_SEEDS", "300"))


def check(result: object) -> None:
    r = result
    assert not r.safety_violations, f"seed {r.seed}: {r.safety_violations}"  # type: ignore[attr-defined]
    assert r.liveness_failure is None, f"seed {r.seed}: {r.liveness_failure}"  # type: ignore[attr-defined]
    assert r.membership_failure is None, f"seed {r.seed}: {r.membership_failure}"  # type: ignore[attr-defined]


@pytest.mark.parametrize("seed", REGRESSION_SEEDS)
def test_pinned_regression_seed(seed: int) -> None:
    check(run_seed(seed, 4, 1))


@pytest.mark.parametrize("chunk", range(10))
def test_four_validators_one_byzantine(chunk: int) -> None:
    per = SEEDS_4 // 10
    for seed in range(1000 + chunk * per, 1000 + (chunk + 1) * per):
        check(run_seed(seed, 4, 1))


@pytest.mark.parametrize("seed", range(2000, 2030))
def test_seven_validators_two_byzantine(seed: int) -> None:
    check(run_seed(seed, 7, 2))


@pytest.mark.parametrize("seed", range(3000, 3010))
def test_ten_validators_three_byzantine(seed: int) -> None:
    check(run_seed(seed, 10, 3))


@pytest.mark.parametrize("behaviour", list(Behaviour))
def test_every_byzantine_behaviour_with_crashes_and_partitions(behaviour: Behaviour) -> None:
    for seed in range(4000, 4005):
        check(run_seed(seed, 4, 1, behaviours=[behaviour]))


@pytest.mark.parametrize("chunk", range(4))
def test_validator_set_changes_under_faults(chunk: int) -> None:
    """A fifth node is voted in as an authority, then a genesis authority is voted out, while the
    seed's faults run; safety after every step, and the set really changed on every replica."""
    for seed in range(5000 + chunk * 25, 5000 + (chunk + 1) * 25):
        check(run_seed(seed, 4, 1, joiners=1))


@pytest.mark.parametrize("seed", range(6000, 6010))
def test_validator_set_changes_with_seven_validators_two_byzantine(seed: int) -> None:
    check(run_seed(seed, 7, 2, joiners=1))


def test_a_seed_replays_identically() -> None:
    a, b = run_seed(77, 4, 1), run_seed(77, 4, 1)
    assert (a.heights, a.steps, a.messages, a.sim_ms) == (b.heights, b.steps, b.messages, b.sim_ms)
