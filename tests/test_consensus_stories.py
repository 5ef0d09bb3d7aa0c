"""Consensus stories on the simulated cluster, each with one scripted fault (no randomness in the
fault itself): the safety monitor runs after every step, as in the seeded runs."""

from __future__ import annotations

from collections.abc import Callable

from consensus.events import SignedState
from consensus.messages import Vote, VoteType
from node.sim.byzantine import Behaviour
from node.sim.cluster import Cluster, SimNode
from node.sim.network import Faults

CALM = Faults(min_delay_ms=1, max_delay_ms=10)


def start(cluster: Cluster, until_ms: int = 60_000) -> None:
    cluster.register_devices()
    cluster.every(40, cluster.submit_reading, "reading", until_ms)
    for n in cluster.nodes:
        cluster.every(200, n.gossip, f"gossip {n.index}", until_ms)
        n.boot()


def run_until(cluster: Cluster, done: Callable[[], bool], limit_ms: int = 60_000) -> None:
    while len(cluster.scheduler) and cluster.now_ms < limit_ms and not done():
        cluster.scheduler.run_one()
        assert not cluster.monitor.violations, cluster.monitor.violations
    assert done(), f"stuck at heights {cluster.heights()} after {cluster.now_ms} ms"


def proposer_of(cluster: Cluster, height: int, round: int = 0) -> SimNode:
    key = cluster.nodes[0].ledger.validators_at(height).proposer(height, round)
    return next(n for n in cluster.nodes if n.key.public == key)


def test_a_proposer_equivocates_and_the_correct_nodes_still_agree() -> None:
    cluster = Cluster(1, 4, CALM, behaviours=[Behaviour.EQUIVOCATE])
    start(cluster)
    run_until(cluster, lambda: cluster.min_correct_height() >= 8)
    seen = sum(n.counters["misbehaviour:equivocating_proposal"] for n in cluster.correct_nodes())
    assert seen > 0  # the two proposals were noticed, and agreement held throughout


def test_a_partition_isolates_the_proposer_and_the_rest_go_on_then_it_catches_up() -> None:
    cluster = Cluster(2, 4, CALM)
    start(cluster)
    run_until(cluster, lambda: cluster.min_correct_height() >= 2)
    h = cluster.min_correct_height() + 1
    isolated = proposer_of(cluster, h)
    others = {n.index for n in cluster.nodes} - {isolated.index}
    cluster.network.partition([{isolated.index}, others])
    stuck_at = isolated.store.height()
    run_until(cluster, lambda: min(cluster.nodes[i].store.height() for i in others) >= stuck_at + 4)
    assert isolated.store.height() == stuck_at  # alone it cannot decide anything
    cluster.network.groups = None
    target = max(cluster.heights())
    run_until(cluster, lambda: isolated.store.height() >= target)


def test_a_validator_crashes_right_after_persisting_its_prevote_and_restarts() -> None:
    cluster = Cluster(3, 4, CALM)
    victim = cluster.nodes[1]
    crashed: list[Vote] = []
    persist = victim.persist_signed_state

    def crash_after_prevote(state: SignedState) -> None:
        # The host core hands the signed state to the node's persistence before it broadcasts
        # anything it records; a crash here is a crash between the fsync and the send.
        persist(state)
        if not crashed and victim.store.height() >= 2:
            prevotes = [m for m in state.signed if isinstance(m, Vote) and m.type is VoteType.PREVOTE
                        and m.height == state.height]
            if prevotes:
                assert not any((v.validator, v.height, v.round, v.type.name) in cluster.monitor.signed
                               for v in prevotes)  # persisted, not sent
                crashed.extend(prevotes)
                victim.crash()
                cluster.scheduler.after(500, victim.restart, "restart")

    victim.persist_signed_state = crash_after_prevote  # type: ignore[method-assign]
    start(cluster)
    run_until(cluster, lambda: bool(crashed) and cluster.min_correct_height() >= 8)
    assert victim.alive and victim.store.height() >= 8  # it came back and follows the chain
    # The prevote was persisted and never sent before the crash; the restarted core re-sends
    # exactly what it had signed (the monitor records every message a correct node sends, and
    # would have flagged a different vote as a double-sign).
    for v in crashed:
        key = (v.validator, v.height, v.round, v.type.name)
        assert key in cluster.monitor.signed, f"the persisted prevote {key[1:]} was never re-sent"
        assert cluster.monitor.signed[key] == v.block_id
