"""One seed = one simulated run: a fault phase, then healing, then liveness must follow."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from node.sim.byzantine import SEEDED_BEHAVIOURS, Behaviour
from node.sim.cluster import Cluster
from node.sim.membership import DRIVER_PERIOD_MS, MembershipDriver
from node.sim.network import Faults
from node.store.verify import verify_chain

LIVENESS_HEIGHTS = 3  # after healing every correct node must commit this many new heights
LIVENESS_BUDGET_MS = 120_000
READING_PERIOD_MS = 40
GOSSIP_PERIOD_MS = 200


@dataclass
class SeedResult:
    seed: int
    validators: int
    byzantine: list[str]
    faults: str
    safety_violations: list[str] = field(default_factory=list)
    liveness_failure: str | None = None
    heights: list[int] = field(default_factory=list)
    heal_ms: int = 0
    sim_ms: int = 0
    steps: int = 0
    wall_s: float = 0.0
    messages: int = 0
    dropped: int = 0
    bad_signatures: int = 0
    joiners: int = 0
    membership: str = ""  # what changed, when membership changes were simulated
    membership_failure: str | None = None

    @property
    def ok(self) -> bool:
        failures = (self.liveness_failure, self.membership_failure)
        return not self.safety_violations and failures == (None, None)

    def to_dict(self) -> dict[str, object]:
        return {**asdict(self), "ok": self.ok}


def choose_faults(rng: random.Random, byzantine: int) -> tuple[Faults, int]:
    """Each seed picks its own fault mix and the length of its faulty phase."""
    max_delay = rng.choice([5, 20, 50, 150, 400])
    faults = Faults(
        min_delay_ms=1,
        max_delay_ms=max_delay,
        loss=rng.choice([0.0, 0.0, 0.05, 0.2, 0.4]),
        duplication=rng.choice([0.0, 0.1, 0.3]),
        partitions=rng.random() < 0.5,
        crashes=rng.random() < 0.5,
        byzantine=byzantine,
    )
    return faults, rng.randint(2_000, 10_000)


def run_seed(
    seed: int,
    validators: int = 4,
    byzantine: int = 1,
    behaviours: list[Behaviour] | None = None,
    faults: Faults | None = None,
    fault_phase_ms: int | None = None,
    trace: Callable[[str], None] | None = None,
    joiners: int = 0,
) -> SeedResult:
    """One seed. With joiners=1, an extra node joins as an authority by votes and then a genesis
    authority is voted out, while the faults run (node/sim/membership.py)."""
    started = time.perf_counter()
    rng = random.Random(f"faults/{seed}")
    chosen, phase = choose_faults(rng, byzantine)
    faults = faults or chosen
    heal_at = fault_phase_ms if fault_phase_ms is not None else phase
    if behaviours is None:
        behaviours = [rng.choice(SEEDED_BEHAVIOURS) for _ in range(byzantine)]
    cluster = Cluster(seed, validators, faults, behaviours, trace, joiners=joiners)
    result = SeedResult(seed, validators, [b.value for b in behaviours], faults.describe(), heal_ms=heal_at,
                        joiners=joiners)
    if faults.crashes:
        cluster.crash_after_persist = 0.02
    _schedule_faults(cluster, rng, faults, heal_at)

    end_ms = heal_at + LIVENESS_BUDGET_MS
    cluster.register_devices()
    cluster.every(READING_PERIOD_MS, cluster.submit_reading, "reading", end_ms)
    for n in cluster.nodes:
        cluster.every(GOSSIP_PERIOD_MS, n.gossip, f"gossip {n.index}", end_ms)
        n.boot()
    driver: MembershipDriver | None = None
    if joiners:
        # Node 0 owns the devices (its removal would stop the readings); Byzantine nodes are last.
        driver = MembershipDriver(cluster, joiner=cluster.nodes[validators], leaver=cluster.nodes[1])
        cluster.every(DRIVER_PERIOD_MS, driver.tick, "membership", end_ms)

    target: int | None = None
    sched = cluster.scheduler
    while len(sched) and sched.now_ms <= end_ms:
        sched.run_one()
        result.steps += 1
        if cluster.monitor.violations:  # safety is checked after every step
            break
        if target is None and sched.now_ms >= heal_at:
            target = max(n.store.height() for n in cluster.correct_nodes()) + LIVENESS_HEIGHTS
        if target is not None and cluster.min_correct_height() >= target and (driver is None or driver.done):
            break

    result.sim_ms = sched.now_ms
    result.heights = cluster.heights()
    result.messages = cluster.network.delivered
    result.dropped = cluster.network.dropped
    result.bad_signatures = sum(n.counters["bad_signature"] for n in cluster.nodes)
    result.safety_violations = list(cluster.monitor.violations)
    if not result.safety_violations:
        _check_validity(cluster, result)
    if driver is not None:
        result.membership = f"joined at {driver.joined_at}, left at {driver.left_at}"
        if not result.safety_violations:
            result.membership_failure = driver.check()
    if not result.safety_violations and (target is None or cluster.min_correct_height() < target):
        result.liveness_failure = (
            f"after healing at {heal_at} ms, correct nodes reached heights "
            f"{[n.store.height() for n in cluster.correct_nodes()]}, needed {target} within "
            f"{LIVENESS_BUDGET_MS} ms"
        )
    result.wall_s = round(time.perf_counter() - started, 3)
    return result


def _schedule_faults(cluster: Cluster, rng: random.Random, faults: Faults, heal_at: int) -> None:
    n = len(cluster.nodes)
    t = 0
    if faults.partitions:
        while t < heal_at:
            t += rng.randint(200, 2000)
            if t >= heal_at:
                break
            members = list(range(n))
            rng.shuffle(members)
            cut = rng.randint(1, n // 2)
            groups = [set(members[:cut]), set(members[cut:])]
            cluster.scheduler.at(t, lambda g=groups: _partition(cluster, g), "partition")
            cluster.scheduler.at(t + rng.randint(100, 1500), lambda: _unpartition(cluster), "unpartition")
    if faults.crashes:
        correct = [node for node in cluster.nodes if node.correct]
        t = 0
        while True:
            t += rng.randint(300, 3000)
            if t >= heal_at:
                break
            node = rng.choice(correct)
            down = rng.randint(100, 3000)
            cluster.scheduler.at(t, lambda node=node: node.crash() if node.alive else None, "crash")
            cluster.scheduler.at(min(t + down, heal_at), node.restart, "restart")
    cluster.scheduler.at(heal_at, lambda: _heal(cluster), "heal")


def _partition(cluster: Cluster, groups: list[set[int]]) -> None:
    if cluster.network.faulty:
        cluster.trace(f"partition {[sorted(g) for g in groups]}")
        cluster.network.partition(groups)


def _unpartition(cluster: Cluster) -> None:
    if cluster.network.faulty and cluster.network.groups is not None:
        cluster.trace("partition healed")
        cluster.network.groups = None


def _heal(cluster: Cluster) -> None:
    cluster.trace("faults end: network heals, crashed nodes restart")
    cluster.network.heal()
    for node in cluster.nodes:
        node.restart()


def _check_validity(cluster: Cluster, result: SeedResult) -> None:
    """Every correct replica passes a full re-verification from genesis (checked on the longest
    one; the others must be prefixes of it, which agreement already guarantees block by block)."""
    longest = max(cluster.correct_nodes(), key=lambda n: n.store.height())
    report = verify_chain(longest.store, cluster.genesis)
    if not report.ok:
        result.safety_violations.append(f"validity: node {longest.index}: {report.error}")
    for n in cluster.correct_nodes():
        for h in range(1, n.store.height() + 1):
            if n.store.block(h).hash != longest.store.block(h).hash:
                result.safety_violations.append(f"validity: node {n.index} diverges at height {h}")
                break
