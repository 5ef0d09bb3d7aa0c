"""The paper's rules one at a time, on a single core fed by hand (4 validators, f = 1)."""

from __future__ import annotations

from dataclasses import replace

from consensus.events import (
    Broadcast,
    MessageReceived,
    Misbehaviour,
    PersistState,
    StartHeight,
    TimeoutFired,
    TxsAvailable,
)
from consensus.messages import Proposal, Step, VoteType
from consensus.tendermint import Tendermint, TimeoutConfig
from consensus.validators import ValidatorSet
from consensus.votes import MAX_EXTRA_VALUES_PER_ROUND, VoteSet
from tests.consensus_fakes import (
    KEYS,
    FakeApp,
    FakeSigner,
    broadcasts,
    decisions,
    persisted,
    proposal,
    timeouts,
    vid,
    vote,
    votes_of,
)

VSET = ValidatorSet.of(KEYS[:4])
P, V = VoteType.PREVOTE, VoteType.PRECOMMIT


def who(key: bytes) -> int:
    return KEYS.index(key)


def make(me: int, height: int = 1, pending: bool = True, **kw: object) -> tuple[Tendermint, FakeApp]:
    app = FakeApp(VSET, pending=pending)
    core = Tendermint(app, FakeSigner(KEYS[me]), height, TimeoutConfig(), **kw)  # type: ignore[arg-type]
    return core, app


def non_proposer(height: int, round: int) -> int:
    return next(who(k) for k in VSET.members if k != VSET.proposer(height, round))


def feed(core: Tendermint, *msgs: object) -> list:
    out = []
    for m in msgs:
        out += core.step(MessageReceived(m))  # type: ignore[arg-type]
    return out


def test_proposer_of_round_zero_proposes_a_new_block_and_persists_before_sending() -> None:
    core, _ = make(who(VSET.proposer(1, 0)))
    actions = core.start()
    kinds = [type(a) for a in actions]
    assert kinds.index(PersistState) < kinds.index(Broadcast)
    p = broadcasts(actions)[0]
    assert isinstance(p, Proposal) and p.round == 0 and p.valid_round == -1
    # it delivers its own proposal to itself, so its prevote for it follows
    assert votes_of(actions, P)[0].block_id == p.value_id


def test_non_proposer_schedules_propose_timeout_growing_with_round() -> None:
    me = non_proposer(1, 0)
    core, _ = make(me)
    (t0,) = timeouts(core.start())
    assert t0.step is Step.PROPOSE and t0.delay_ms == 1000
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    assert core.step_ is Step.PREVOTE


def test_fresh_proposal_gets_a_prevote_for_it() -> None:  # lines 22-27
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    prop = proposal(1, 0, b"A", -1, who(VSET.proposer(1, 0)))
    (pv,) = votes_of(feed(core, prop), P)
    assert pv.block_id == vid(b"A") and core.step_ is Step.PREVOTE


def test_invalid_proposal_gets_a_nil_prevote() -> None:
    me = non_proposer(1, 0)
    core, app = make(me)
    app.invalid.add(b"A")
    core.start()
    (pv,) = votes_of(feed(core, proposal(1, 0, b"A", -1, who(VSET.proposer(1, 0)))), P)
    assert pv.block_id is None


def test_proposal_from_someone_else_is_ignored_and_reported() -> None:
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    other = next(i for i in range(4) if KEYS[i] != VSET.proposer(1, 0) and i != me)
    out = feed(core, proposal(1, 0, b"A", -1, other))
    assert not votes_of(out, P) and any(a.__class__.__name__ == "Misbehaviour" for a in out)


def test_polka_locks_and_precommits_then_2f1_precommits_decide() -> None:  # lines 36-43, 49-54
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    prop = proposal(1, 0, b"A", -1, who(VSET.proposer(1, 0)))
    others = [i for i in range(4) if i != me]
    out = feed(core, prop, *[vote(P, 1, 0, b"A", i) for i in others[:2]])
    (pc,) = votes_of(out, V)
    assert pc.block_id == vid(b"A") and core.locked_round == 0 and core.valid_round == 0
    out = feed(core, *[vote(V, 1, 0, b"A", i) for i in others[:2]])
    (d,) = decisions(out)
    assert d.height == 1 and d.value == b"A" and len(d.precommits) == 3


def test_nil_polka_precommits_nil() -> None:  # lines 44-46
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    out = feed(core, *[vote(P, 1, 0, None, i) for i in range(4) if i != me][:2])
    (pc,) = votes_of(out, V)
    assert pc.block_id is None and core.step_ is Step.PRECOMMIT


def test_prevote_and_precommit_timeouts_are_scheduled_once() -> None:  # lines 34-35, 47-48
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    others = [i for i in range(4) if i != me]
    out = feed(core, vote(P, 1, 0, b"A", others[0]), vote(P, 1, 0, None, others[1]))
    assert [t.step for t in timeouts(out)] == [Step.PREVOTE]
    assert not timeouts(feed(core, vote(P, 1, 0, b"B", others[2])))
    core.step(TimeoutFired(Step.PREVOTE, 1, 0))
    out = feed(core, vote(V, 1, 0, b"A", others[0]), vote(V, 1, 0, None, others[1]))
    assert [t.step for t in timeouts(out)] == [Step.PRECOMMIT]
    out = core.step(TimeoutFired(Step.PRECOMMIT, 1, 0))
    assert core.round == 1


def test_stale_timeouts_do_nothing() -> None:
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    assert core.step(TimeoutFired(Step.PROPOSE, 1, 5)) == []
    assert core.step(TimeoutFired(Step.PROPOSE, 2, 0)) == []


def test_f_plus_one_messages_of_a_higher_round_skip_to_it() -> None:  # lines 55-56
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    others = [i for i in range(4) if i != me]
    feed(core, vote(P, 1, 3, None, others[0]))
    assert core.round == 0
    feed(core, vote(V, 1, 3, None, others[1]))
    assert core.round == 3


def lock_on_a_in_round_zero() -> Tendermint:
    """Validator 0 (not the round-0 proposer) sees A proposed and a polka for it, and locks A."""
    assert [VSET.proposer(1, r) for r in range(3)] == [KEYS[1], KEYS[2], KEYS[3]]
    core, _ = make(0)
    core.start()
    feed(core, proposal(1, 0, b"A", -1, 1), vote(P, 1, 0, b"A", 1), vote(P, 1, 0, b"A", 2))
    assert core.locked_round == 0 and core.locked_value == b"A"
    core.step(TimeoutFired(Step.PRECOMMIT, 1, 0))
    assert core.round == 1
    return core


def test_locked_node_prevotes_nil_on_a_fresh_proposal_for_another_value() -> None:  # line 23
    core = lock_on_a_in_round_zero()
    (pv,) = votes_of(feed(core, proposal(1, 1, b"B", -1, 2)), P)
    assert pv.block_id is None


def test_a_later_polka_releases_the_lock() -> None:  # lines 28-33
    core = lock_on_a_in_round_zero()
    # Round 1: the others form a polka for B; this node never saw round 1's proposal.
    core.step(TimeoutFired(Step.PROPOSE, 1, 1))
    feed(core, *[vote(P, 1, 1, b"B", i) for i in (1, 2, 3)])
    assert core.locked_value == b"A"
    core.step(TimeoutFired(Step.PREVOTE, 1, 1))
    core.step(TimeoutFired(Step.PRECOMMIT, 1, 1))
    assert core.round == 2
    # Round 2's proposer re-proposes B with the proof of lock (validRound 1 >= lockedRound 0).
    (pv,) = votes_of(feed(core, proposal(1, 2, b"B", 1, 3)), P)
    assert pv.block_id == vid(b"B")


def test_a_re_proposal_without_its_polka_is_not_prevoted() -> None:  # line 28 needs the polka
    core = lock_on_a_in_round_zero()
    core.step(TimeoutFired(Step.PROPOSE, 1, 1))
    core.step(TimeoutFired(Step.PRECOMMIT, 1, 1))
    assert votes_of(feed(core, proposal(1, 2, b"B", 1, 3)), P) == []


def test_empty_blocks_off_waits_for_transactions_before_proposing() -> None:
    core, _ = make(who(VSET.proposer(1, 0)), pending=False)
    assert broadcasts(core.start()) == [] and timeouts(core.start()) == []
    out = core.step(TxsAvailable())
    assert any(isinstance(m, Proposal) for m in broadcasts(out))


def test_empty_blocks_on_proposes_immediately() -> None:
    core, _ = make(who(VSET.proposer(1, 0)), pending=False, create_empty_blocks=True)
    assert any(isinstance(m, Proposal) for m in broadcasts(core.start()))


def test_restart_never_signs_a_conflicting_prevote() -> None:
    me = non_proposer(1, 0)
    core, app = make(me)
    core.start()
    out = feed(core, proposal(1, 0, b"A", -1, who(VSET.proposer(1, 0))))
    saved = persisted(out)[-1].state
    restarted = Tendermint(app, FakeSigner(KEYS[me]), 1, TimeoutConfig(), restored=saved)
    out = restarted.start()
    assert [m.block_id for m in votes_of(out, P)] == [vid(b"A")]  # sent again, unchanged
    assert restarted.step_ is Step.PREVOTE
    # Whatever happens next in round 0, it never signs a different prevote.
    out = restarted.step(TimeoutFired(Step.PROPOSE, 1, 0))
    out += feed(restarted, proposal(1, 0, b"Z", -1, who(VSET.proposer(1, 0))))
    assert all(v.block_id == vid(b"A") for v in votes_of(out, P))


def test_messages_for_the_next_height_wait_until_it_starts() -> None:
    me = non_proposer(2, 0)
    core, _ = make(me)
    core.start()
    early = proposal(2, 0, b"N", -1, who(VSET.proposer(2, 0)))
    assert votes_of(feed(core, early), P) == []
    out = core.step(StartHeight(2))
    (pv,) = votes_of(out, P)
    assert pv.height == 2 and pv.block_id == vid(b"N")


def test_equivocating_votes_count_once_and_are_reported() -> None:
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    b = next(i for i in range(4) if i != me)
    out = feed(core, vote(P, 1, 0, b"A", b), vote(P, 1, 0, b"B", b))
    assert any(getattr(a, "reason", "") == "equivocating_vote" for a in out)
    assert core.log[0].prevotes.total() == 2  # me + b, once


def test_state_persisted_with_a_lock_holds_valid_value_and_its_polka() -> None:
    """Regression (simulator seed 151): a crash right after the lock's precommit was persisted
    restored lockedValue without validValue, and the federation stalled."""
    core, _ = make(0)
    core.start()
    out = feed(core, proposal(1, 0, b"A", -1, 1), vote(P, 1, 0, b"A", 1), vote(P, 1, 0, b"A", 2))
    saved = persisted(out)[-1].state
    assert saved.locked_round == 0 and saved.valid_round == 0 and saved.valid_value == b"A"
    assert {v.validator for v in saved.proof} == {KEYS[0], KEYS[1], KEYS[2]}


def test_gossip_relays_an_earlier_rounds_polka() -> None:
    """Regression (simulator seed 75): a polka seen only after moving on must still be relayed,
    since a re-proposal in a later round needs it as proof."""
    core, _ = make(0)
    core.start()
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    core.step(TimeoutFired(Step.PREVOTE, 1, 0))
    core.step(TimeoutFired(Step.PRECOMMIT, 1, 0))
    assert core.round == 1
    late = [vote(P, 1, 0, b"A", i) for i in (1, 2, 3)]
    feed(core, *late)
    gossip = core.gossip_messages()
    assert all(v in gossip for v in late)


def test_gossip_relays_the_precommits_that_ended_an_earlier_round() -> None:
    """Regression (simulator seeds 268 and 681): a node that left round 0 on its precommit timeout
    without precommitting held the only copy of a Byzantine validator's precommit; the two nodes
    still waiting in round 0 with two precommits never timed out, and the height stalled."""
    core, _ = make(0)
    core.start()
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    ended = [vote(V, 1, 0, None, i) for i in (1, 2, 3)]
    feed(core, *ended)
    core.step(TimeoutFired(Step.PRECOMMIT, 1, 0))
    assert core.round == 1 and (0, Step.PRECOMMIT) not in core.signed
    gossip = core.gossip_messages()
    assert all(v in gossip for v in ended)


def test_a_forged_value_under_a_genuine_proposal_id_is_dropped_and_the_genuine_one_still_counts() -> None:
    """Issue 11, finding 1: the proposal's signature covers only the block id, so a peer without a
    key can pair it with another value. That copy must not poison the id for the height."""
    core, app = make(non_proposer(1, 0))
    core.start()
    genuine = proposal(1, 0, b"A", -1, who(VSET.proposer(1, 0)))
    forged = replace(genuine, value=b"B")
    app.invalid.add(b"B")
    out = feed(core, forged)
    assert next(a for a in out if isinstance(a, Misbehaviour)).reason == "proposal_value_mismatch"
    assert not votes_of(out, P) and not core.log[0].proposals
    out = feed(core, genuine)
    assert votes_of(out, P)[0].block_id == vid(b"A")


def test_a_fresh_proposal_past_my_clock_gets_a_nil_prevote_but_its_polka_still_locks_and_decides() -> None:
    """Issue 11, finding 2: with the clock folded into valid(v), cached for the height, a Byzantine
    proposer timing a block just past one validator's skew bound kept that validator from ever
    locking on it or deciding it. Timeliness is asked of fresh proposals only, once."""
    me = non_proposer(1, 0)
    core, app = make(me)
    core.start()
    app.untimely.add(b"A")
    proposer = who(VSET.proposer(1, 0))
    out = feed(core, proposal(1, 0, b"A", -1, proposer))
    assert votes_of(out, P)[0].block_id is None  # untimely: nil, as the paper's line 26
    others = [i for i in range(4) if i != me][:3]
    out = feed(core, *[vote(P, 1, 0, b"A", i) for i in others])
    assert votes_of(out, V)[0].block_id == vid(b"A") and core.locked_round == 0
    out = feed(core, *[vote(V, 1, 0, b"A", i) for i in others])
    assert decisions(out)[0].value == b"A"


def test_a_re_proposal_with_a_polka_is_prevoted_without_asking_the_clock() -> None:
    me = non_proposer(1, 1)
    core, app = make(me)
    core.start()
    app.untimely.add(b"A")
    polka = [vote(P, 1, 0, b"A", i) for i in range(4) if i != me][:3]
    feed(core, *polka)
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    core.step(TimeoutFired(Step.PREVOTE, 1, 0))
    core.step(TimeoutFired(Step.PRECOMMIT, 1, 0))
    assert core.round == 1
    out = feed(core, proposal(1, 1, b"A", 0, who(VSET.proposer(1, 1))))
    assert votes_of(out, P)[0].block_id == vid(b"A")  # lines 28-33: 2f+1 already found it timely


def test_next_height_votes_from_outside_the_next_set_take_no_buffer_room() -> None:
    """Issue 11 finding 6: self-signed next-height votes from any key filled the shared buffer and
    crowded out the genuine ones; only validators of that height are buffered, a bounded number each."""
    me = non_proposer(2, 0)
    core, _ = make(me)
    core.start()
    outsiders = [bytes([200, i % 256, i // 256]) * 11 for i in range(12_000)]
    out = feed(core, *(replace(vote(P, 2, 0, b"X", 0), validator=k[:32]) for k in outsiders))
    refused = [a for a in out if isinstance(a, Misbehaviour) and a.reason == "future_not_a_validator"]
    assert len(refused) == len(outsiders)
    b = next(i for i in range(4) if i != me)
    spam = [vote(P, 2, r, b"Y", b) for r in range(200)]  # one validator, many rounds
    out = feed(core, *spam)
    assert sum(isinstance(a, Misbehaviour) and a.reason == "future_buffer_full" for a in out) == 200 - 32
    genuine = [proposal(2, 0, b"N", -1, who(VSET.proposer(2, 0)))] + [
        vote(P, 2, 0, b"N", i) for i in range(4) if i not in (me, b)
    ]
    feed(core, *genuine)
    core.step(StartHeight(2))
    assert core.log[0].first_proposal == genuine[0]
    assert core.log[0].prevotes.count(vid(b"N")) == 3  # the two others' and mine: all kept


def test_an_equivocator_cannot_grow_the_vote_table_with_random_block_ids() -> None:
    """Issue 11 finding 6: an entry per block id was created before the per-validator cap."""
    me = non_proposer(1, 0)
    core, _ = make(me)
    core.start()
    byz = next(i for i in range(4) if i != me)
    feed(core, *(vote(P, 1, 0, f"random {i}".encode(), byz) for i in range(1000)))
    assert len(core.log[0].prevotes.by_value) == 3
    # Three equivocators within the cap of three values each still fit, and honest votes count.
    feed(core, *(vote(P, 1, 0, f"other {i}".encode(), i) for i in range(4) if i not in (me, byz)))
    assert all(core.log[0].prevotes.count(vid(f"other {i}".encode())) == 1 for i in range(4)
               if i not in (me, byz))


def test_equivocators_share_a_bounded_number_of_extra_values_per_round() -> None:
    many = [bytes([7, i]) * 16 for i in range(40)]
    vs = VoteSet()
    for k in many:  # every validator's first vote counts, however many there are
        vs.add(replace(vote(P, 1, 0, k, 0), validator=k))
    for k in many:
        for j in range(5):
            vs.add(replace(vote(P, 1, 0, k + bytes([j]), 0), validator=k))
    assert len(vs.by_value) == len(many) + MAX_EXTRA_VALUES_PER_ROUND
    assert vs.total() == len(many)


def test_the_precommits_that_ended_a_round_survive_a_restart_and_are_gossiped_again() -> None:
    """Regression (simulator seed 7445, 10,000-seed sweep): a node left round 1 on its precommit
    timeout, signed in round 2, crashed and restarted; the in-memory precommits of round 1 were
    gone, and the two nodes still in round 1 never reached 2f+1 of them."""
    core, _ = make(0)
    core.start()
    core.step(TimeoutFired(Step.PROPOSE, 1, 0))
    ended = [vote(V, 1, 0, None, i) for i in (1, 2, 3)]
    feed(core, *ended)
    out = core.step(TimeoutFired(Step.PRECOMMIT, 1, 0))
    out += core.step(TimeoutFired(Step.PROPOSE, 1, 1))  # signs a nil prevote in round 1: persisted
    saved = persisted(out)[-1].state
    assert saved.round == 1 and set(ended) <= set(saved.round_proof)
    restarted = Tendermint(FakeApp(VSET), FakeSigner(KEYS[0]), 1, TimeoutConfig(), restored=saved)
    restarted.start()
    assert all(v in restarted.gossip_messages() for v in ended)
