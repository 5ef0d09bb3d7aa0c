"""The deterministic simulator: many seeds, each with its own fault mix, safety checked after
every step and liveness after the faults heal. `python scripts/simulate.py --seed N --trace`
replays any seed printed here."""

from __future__ import annotations

import os
from typing import Any

import pytest

from node.sim.byzantine import Behaviour
from node.sim.cluster import Cluster
from node.sim.runner import run_seed

# Seeds that once failed, pinned forever (see the regression tests in test_tendermint_rules.py).
REGRESSION_SEEDS = [18, 21, 24, 75, 151, 268, 681, 7445]
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


@pytest.mark.parametrize("behaviour", [Behaviour.FORGED_PROPOSAL, Behaviour.SKEW_EDGE])
def test_issue_11_attacks_under_the_seeds_faults(behaviour: Behaviour) -> None:
    """Forged proposals (a genuine signature on another block) and blocks timed at the clock-skew
    edge of correct clocks that disagree by up to 150 ms, with each seed's fault mix."""
    for seed in range(6000, 6020):
        check(run_seed(seed, 4, 1, behaviours=[behaviour]))
    for seed in range(6100, 6104):
        check(run_seed(seed, 7, 2, behaviours=[behaviour, behaviour]))


def test_a_skew_edge_proposer_is_refused_by_a_slow_clock_and_still_decided_by_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The skew-edge proposer does split the correct validators (some prevote nil, counted), and
    every height still finalizes on every correct node."""
    made: list[Cluster] = []
    original = Cluster.__init__

    def keep(self: Cluster, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Cluster, "__init__", keep)
    untimely = 0
    for seed in range(6200, 6210):
        check(run_seed(seed, 4, 1, behaviours=[Behaviour.SKEW_EDGE]))
        untimely += sum(n.counters["untimely_proposal"] for n in made[-1].nodes)
    assert untimely > 0


def test_a_proposer_padding_its_certificates_is_refused_and_every_height_still_finalizes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11, certificates: a Byzantine proposer whose blocks carry a padded last_commit (junk
    precommits past the quorum, a duplicate; correctly hashed and signed). Correct nodes refuse
    every such block (counted), and safety and liveness hold under each seed's faults."""
    made: list[Cluster] = []
    original = Cluster.__init__

    def keep(self: Cluster, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        made.append(self)

    monkeypatch.setattr(Cluster, "__init__", keep)
    refused = 0
    for seed in range(6000, 6006):
        check(run_seed(seed, 4, 1, behaviours=[Behaviour.PADDED_CERTIFICATE]))
        refused += sum(n.counters["invalid_proposal:bad_last_commit"] for n in made[-1].nodes if n.correct)
    assert refused > 0
