"""Algorithm 1 of Buchman, Kwon, Milosevic, "The latest gossip on BFT consensus" (arXiv:1807.04938).

Names follow the paper (lockedValue -> locked_value, StartRound -> start_round, ...) and every rule
carries its line numbers, so code and paper can be read side by side. The class is a pure state
machine: `step(event)` returns the actions the host must execute (see consensus/events.py for the
order contract). Nothing here does I/O, reads a clock or draws random numbers.

Interpretations of the paper (documented in README "Consensus"):
- A node delivers its own broadcasts to itself immediately.
- "first time" rules fire once per (height, round).
- After deciding, the core waits for `StartHeight` so the host can commit durably first.
- With empty blocks off, round 0 of a height does not start its propose step (no proposal, no
  propose timeout) until the application has something pending; messages are still processed.
- Double-sign protection: every signed message is recorded per (round, step) and persisted
  before it is sent; the core never signs a different message for a position it already signed,
  including after a restart from the persisted state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from consensus.app import Application, Signer
from consensus.events import (
    Action,
    Broadcast,
    Decide,
    Event,
    MessageReceived,
    Misbehaviour,
    PersistState,
    ScheduleTimeout,
    SignedState,
    StartHeight,
    TimeoutFired,
    TxsAvailable,
)
from consensus.messages import Message, Proposal, Step, Vote, VoteType, sender
from consensus.validators import ValidatorSet
from consensus.votes import RoundLog

# Messages for rounds further ahead than this are dropped: a Byzantine validator must not be able
# to grow the log without bound, and a correct peer that far ahead is reached by block sync.
MAX_ROUNDS_AHEAD = 100
# Messages for the next height are buffered (they arrive while this node is still committing),
# only from validators of that height and at most this many per validator: a key outside the set
# cannot take buffer room, nor can one validator crowd out the others. A correct validator sends
# three messages a round; what it sent further ahead reaches this node again by gossip.
MAX_FUTURE_PER_SENDER = 32
MAX_FUTURE_MESSAGES = 10_000  # and in all, whatever the size of the next validator set


@dataclass(frozen=True)
class TimeoutConfig:
    """timeoutX(r) = initialX + r * deltaX, in milliseconds."""

    propose_ms: int = 1000
    propose_delta_ms: int = 500
    prevote_ms: int = 500
    prevote_delta_ms: int = 250
    precommit_ms: int = 500
    precommit_delta_ms: int = 250

    def for_step(self, step: Step, round: int) -> int:
        if step is Step.PROPOSE:
            return self.propose_ms + round * self.propose_delta_ms
        if step is Step.PREVOTE:
            return self.prevote_ms + round * self.prevote_delta_ms
        return self.precommit_ms + round * self.precommit_delta_ms


class Tendermint:
    """One validator's (or observer's) consensus state for the current height."""

    def __init__(
        self,
        app: Application,
        signer: Signer | None,
        height: int,
        timeouts: TimeoutConfig | None = None,
        create_empty_blocks: bool = False,
        restored: SignedState | None = None,
    ) -> None:
        self.app = app
        self.signer = signer
        self.timeouts = timeouts or TimeoutConfig()
        self.create_empty_blocks = create_empty_blocks
        self._restored = restored if restored is not None and restored.height == height else None
        self._future_size = 0
        self._reset(height)

    # --- public interface ---------------------------------------------------------------------
    def start(self) -> list[Action]:
        """Begin the current height: resume from the restored state or StartRound(0)."""
        self._out = []
        restored, self._restored = self._restored, None
        if restored is None:
            self._start_round(0)
        else:
            self._resume(restored)
        self._upon_rules()
        return self._flush()

    def step(self, event: Event) -> list[Action]:
        self._out = []
        if isinstance(event, MessageReceived):
            self._on_message(event.message)
        elif isinstance(event, TimeoutFired):
            self._on_timeout(event)
        elif isinstance(event, TxsAvailable):
            self._on_txs_available()
        elif isinstance(event, StartHeight):
            self._on_start_height(event.height)
        self._upon_rules()
        return self._flush()

    def snapshot(self) -> SignedState:
        return SignedState(
            height=self.height,
            round=self.round,
            step=self.step_,
            locked_round=self.locked_round,
            locked_value=self.locked_value,
            valid_round=self.valid_round,
            valid_value=self.valid_value,
            signed=tuple(self.signed.values()),
            proof=self._polka_proof(),
            round_proof=self._round_proof(),
        )

    def gossip_messages(self) -> list[Message]:
        """What the gossip layer keeps re-sending to peers of this height.

        The paper assumes that every message a correct node receives eventually reaches every
        correct node. What liveness needs of that: this node's own messages, the proposals it
        holds, the votes of its current round, every polka it holds for an earlier round (the
        proof another node needs to accept a re-proposal, lines 28-33), including the one behind
        its own lock, which survives restarts with the persisted state, and the 2f+1 precommits
        of every earlier round that it holds: they are what let a node still in that round fire
        its precommit timeout (lines 47-48) and follow. A node that left a round on its
        precommit timeout without precommitting itself would otherwise hold the only copy of a
        Byzantine validator's precommit, and the height can stall (simulator seed 268).
        """
        out: list[Message] = list(self.signed.values())
        q = self.vset.quorum
        for r, log in self.log.items():
            out.extend(log.proposals.values())
            if r == self.round:
                out.extend(log.prevotes.all_votes())
                out.extend(log.precommits.all_votes())
                continue
            for block_id in log.prevotes.blocks_with(q):
                out.extend(log.prevotes.for_block(block_id))
            if log.precommits.total() >= q:
                out.extend(log.precommits.all_votes())
        return out

    def _round_proof(self) -> tuple[Vote, ...]:
        """The votes of others that put this node in its round (see SignedState.round_proof);
        at most two rounds' worth, so the persisted state stays small."""
        q = self.vset.quorum
        ended = [r for r, log in self.log.items() if r < self.round and log.precommits.total() >= q]
        votes: list[Vote] = []
        if ended:
            votes.extend(self.log[max(ended)].precommits.all_votes())
        current = self.log.get(self.round)
        if current is not None:
            votes.extend(current.prevotes.all_votes())
            votes.extend(current.precommits.all_votes())
        return tuple(v for v in votes if v.validator != self.me)

    def _polka_proof(self) -> tuple[Vote, ...]:
        """The 2f+1 prevotes behind validValue (a restarted node must still be able to prove it)."""
        if self.valid_value is None:
            return ()
        log = self.log.get(self.valid_round)
        return log.prevotes.for_block(self.app.value_id(self.valid_value)) if log else ()

    @property
    def me(self) -> bytes | None:
        return self.signer.public_key if self.signer is not None else None

    # --- state --------------------------------------------------------------------------------
    def _reset(self, height: int) -> None:
        self.height = height
        self.round = 0
        self.step_ = Step.PROPOSE
        self.decided = False
        self.locked_value: Any = None
        self.locked_round = -1
        self.valid_value: Any = None
        self.valid_round = -1
        self.log: dict[int, RoundLog] = {}
        self.fired: set[tuple[str, int]] = set()
        self.signed: dict[tuple[int, Step], Message] = {}
        self.waiting_for_txs = False
        self.vset: ValidatorSet = self.app.validators(height)
        self._valid_cache: dict[bytes, bool] = {}
        # Buffered next-height messages by sender; kept across _reset for the height they are for.
        self._future: dict[bytes, list[Message]] = getattr(self, "_future", {})
        self._out: list[Action] = []

    def _round_log(self, round: int) -> RoundLog:
        log = self.log.get(round)
        if log is None:
            log = self.log[round] = RoundLog()
        return log

    def _flush(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    def _is_validator(self) -> bool:
        return self.me is not None and self.me in self.vset

    def _valid(self, proposal: Proposal) -> bool:
        # Only proposals whose value hashes to their id are recorded (_record), so the id names
        # the value and the verdict can be cached under it.
        cached = self._valid_cache.get(proposal.value_id)
        if cached is None:
            cached = bool(self.app.valid(self.height, proposal.value))
            self._valid_cache[proposal.value_id] = cached
        return cached

    # --- StartRound (lines 11-21) -------------------------------------------------------------
    def _start_round(self, round: int) -> None:
        self.round = round
        self.step_ = Step.PROPOSE
        self.waiting_for_txs = False
        if round == 0 and not self.create_empty_blocks and not self.app.has_pending():
            self.waiting_for_txs = True
            return
        self._enter_propose()

    def _enter_propose(self) -> None:
        h, r = self.height, self.round
        if self._is_validator() and self.vset.proposer(h, r) == self.me:
            # lines 14-17: re-propose the value that may have been decided, else a new block
            value = self.valid_value if self.valid_value is not None else self.app.propose(h, r)
            proposal = Proposal(h, r, value, self.app.value_id(value), self.valid_round, self.me)
            self._sign_and_broadcast(proposal, Step.PROPOSE)
        else:  # line 21
            self._schedule(Step.PROPOSE)

    def _on_txs_available(self) -> None:
        if self.waiting_for_txs and self.round == 0 and self.step_ is Step.PROPOSE and not self.decided:
            self.waiting_for_txs = False
            self._enter_propose()

    # --- timeouts (lines 57-67) ---------------------------------------------------------------
    def _schedule(self, step: Step) -> None:
        delay = self.timeouts.for_step(step, self.round)
        self._out.append(ScheduleTimeout(step, self.height, self.round, delay))

    def _on_timeout(self, t: TimeoutFired) -> None:
        if t.height != self.height or t.round != self.round or self.decided:
            return
        if t.step is Step.PROPOSE and self.step_ is Step.PROPOSE:  # lines 57-60
            self._vote(VoteType.PREVOTE, None)
            self.step_ = Step.PREVOTE
        elif t.step is Step.PREVOTE and self.step_ is Step.PREVOTE:  # lines 61-64
            self._vote(VoteType.PRECOMMIT, None)
            self.step_ = Step.PRECOMMIT
        elif t.step is Step.PRECOMMIT:  # lines 65-67
            self._start_round(self.round + 1)

    # --- messages -----------------------------------------------------------------------------
    def _on_message(self, msg: Message) -> None:
        if msg.height == self.height + 1 or (msg.height == self.height and self.decided):
            if msg.height == self.height + 1:
                self._buffer_future(msg)
            return
        if msg.height != self.height or msg.round < 0 or msg.round > self.round + MAX_ROUNDS_AHEAD:
            return
        self._record(msg)

    def _buffer_future(self, msg: Message) -> None:
        """Keep a next-height message for StartHeight: only a validator of that height's, bounded
        per sender. Refusals are reported (the host counts them; the relaying peer is the host's)."""
        who = sender(msg)
        if who not in self.app.validators(self.height + 1):
            self._out.append(Misbehaviour(who, "future_not_a_validator", (msg,)))
            return
        mine = self._future.setdefault(who, [])
        if msg in mine:
            return  # gossip sends it again
        if len(mine) >= MAX_FUTURE_PER_SENDER or self._future_size >= MAX_FUTURE_MESSAGES:
            self._out.append(Misbehaviour(who, "future_buffer_full", (msg,)))
            return
        mine.append(msg)
        self._future_size += 1

    def _record(self, msg: Message) -> None:
        who = sender(msg)
        if who not in self.vset:
            self._out.append(Misbehaviour(who, "not_a_validator", (msg,)))
            return
        log = self._round_log(msg.round)
        if isinstance(msg, Proposal):
            if who != self.vset.proposer(msg.height, msg.round):
                self._out.append(Misbehaviour(who, "proposal_from_non_proposer", (msg,)))
                return
            if msg.valid_round >= msg.round or msg.valid_round < -1:
                self._out.append(Misbehaviour(who, "invalid_valid_round", (msg,)))
                return
            if self.app.value_id(msg.value) != msg.value_id:
                # The signature covers only the id: anyone can pair a genuine signature with another
                # value. Recording it would shadow the genuine proposal (same id) for the round. The
                # named proposer need not be the culprit (whoever relayed it is): the host, which
                # knows the relaying peer, checks this before the core and penalises that peer.
                self._out.append(Misbehaviour(who, "proposal_value_mismatch", (msg,)))
                return
            earlier = log.add_proposal(msg)
            if earlier is not None:
                self._out.append(Misbehaviour(who, "equivocating_proposal", (earlier, msg)))
        else:
            earlier_vote = log.votes(msg.type).add(msg)
            log.senders.add(who)
            if earlier_vote is not None:
                self._out.append(Misbehaviour(who, "equivocating_vote", (earlier_vote, msg)))

    # --- the upon rules -----------------------------------------------------------------------
    def _upon_rules(self) -> None:
        """Fire every rule whose condition holds until none does (each firing can enable others)."""
        while not self.decided and self._fire_one():
            pass

    def _fire_one(self) -> bool:
        return (
            self._rule_decide()
            or self._rule_round_skip()
            or self._rule_proposal()
            or self._rule_polka()
            or self._rule_timeouts()
        )

    def _rule_proposal(self) -> bool:
        """Lines 22-33: prevote on the round's proposal."""
        if self.step_ is not Step.PROPOSE:
            return False
        log = self.log.get(self.round)
        p = log.first_proposal if log else None
        if p is None:
            return False
        q = self.vset.quorum
        if p.valid_round == -1:  # lines 22-27, with a timeliness check of the fresh value
            ok = (
                self._valid(p)
                and self.app.timely(self.height, self.round, p.value)
                and (self.locked_round == -1 or self._is_locked_on(p.value_id))
            )
        else:  # lines 28-33
            vr_log = self.log.get(p.valid_round)
            if vr_log is None or vr_log.prevotes.count(p.value_id) < q:
                return False
            ok = self._valid(p) and (self.locked_round <= p.valid_round or self._is_locked_on(p.value_id))
        self.waiting_for_txs = False
        self._vote(VoteType.PREVOTE, p.value_id if ok else None)
        self.step_ = Step.PREVOTE
        return True

    def _rule_polka(self) -> bool:
        """Lines 36-46: a polka (2f+1 prevotes) for a value locks it; for nil precommits nil."""
        log = self.log.get(self.round)
        if log is None or self.step_ is Step.PROPOSE:
            return False
        q = self.vset.quorum
        if ("lock", self.round) not in self.fired:  # lines 36-43
            for block_id in log.prevotes.blocks_with(q):
                p = log.proposals.get(block_id)
                if p is None or not self._valid(p):
                    continue
                self.fired.add(("lock", self.round))
                # Lines 37-43 are one atomic step; validValue is set first so that the state
                # persisted with the precommit already holds it (validRound >= lockedRound).
                self.valid_value, self.valid_round = p.value, self.round
                if self.step_ is Step.PREVOTE:
                    self.locked_value, self.locked_round = p.value, self.round
                    self._vote(VoteType.PRECOMMIT, block_id)
                    self.step_ = Step.PRECOMMIT
                return True
        if self.step_ is Step.PREVOTE and log.prevotes.count(None) >= q:  # lines 44-46
            self._vote(VoteType.PRECOMMIT, None)
            self.step_ = Step.PRECOMMIT
            return True
        return False

    def _rule_timeouts(self) -> bool:
        """Lines 34-35 and 47-48: schedule the prevote / precommit timeouts once per round."""
        log = self.log.get(self.round)
        if log is None:
            return False
        q = self.vset.quorum
        if (
            self.step_ is Step.PREVOTE
            and log.prevotes.total() >= q
            and ("prevote_timeout", self.round) not in self.fired
        ):
            self.fired.add(("prevote_timeout", self.round))
            self._schedule(Step.PREVOTE)
            return True
        if log.precommits.total() >= q and ("precommit_timeout", self.round) not in self.fired:
            self.fired.add(("precommit_timeout", self.round))
            self._schedule(Step.PRECOMMIT)
            return True
        return False

    def _rule_decide(self) -> bool:
        """Lines 49-54: a proposal and 2f+1 precommits for it in any round decide the height."""
        q = self.vset.quorum
        for r, log in self.log.items():
            for block_id in log.precommits.blocks_with(q):
                p = log.proposals.get(block_id)
                if p is None or not self._valid(p):
                    continue
                self.decided = True
                self.step_ = Step.PRECOMMIT
                self._out.append(
                    Decide(self.height, r, p.value, block_id, log.precommits.for_block(block_id))
                )
                return True
        return False

    def _rule_round_skip(self) -> bool:
        """Lines 55-56: f+1 messages of a higher round mean a correct node is there: join it."""
        for r in sorted(self.log):
            if r > self.round and len(self.log[r].senders) >= self.vset.skip_threshold:
                self._start_round(r)
                return True
        return False

    # --- decisions and heights ----------------------------------------------------------------
    def _on_start_height(self, height: int) -> None:
        if height <= self.height:
            return
        future = [m for msgs in self._future.values() for m in msgs if m.height == height]
        self._future = {}
        self._future_size = 0
        self._reset(height)
        self._start_round(0)
        for m in future:
            self._on_message(m)

    def _resume(self, s: SignedState) -> None:
        """Restart inside a height: take back the locks and everything already signed, and send it
        again (peers may have missed it while this node was down)."""
        self.round, self.step_ = s.round, s.step
        self.locked_round, self.locked_value = s.locked_round, s.locked_value
        self.valid_round, self.valid_value = s.valid_round, s.valid_value
        for msg in s.signed:
            step = Step.PROPOSE if isinstance(msg, Proposal) else Step(int(msg.type))
            self.signed[(msg.round, step)] = msg
        for msg in sorted(self.signed.values(), key=lambda m: (m.round, isinstance(m, Vote))):
            self._record(msg)
            self._out.append(Broadcast(msg))
        for vote in (*s.proof, *s.round_proof):
            if vote.validator != self.me:
                self._record(vote)
        # Timeouts scheduled before the crash are gone; a fresh one for the current step keeps
        # the round moving. Timeouts only ever lead to nil votes or a new round: always safe.
        self._schedule(self.step_)

    # --- signing ------------------------------------------------------------------------------
    def _is_locked_on(self, value_id: bytes) -> bool:
        return self.locked_value is not None and self.app.value_id(self.locked_value) == value_id

    def _vote(self, vote_type: VoteType, block_id: bytes | None) -> None:
        if not self._is_validator():
            return
        assert self.me is not None
        vote = Vote(vote_type, self.height, self.round, block_id, self.me)
        self._sign_and_broadcast(vote, Step(int(vote_type)))

    def _sign_and_broadcast(self, msg: Message, step: Step) -> None:
        assert self.signer is not None
        key = (msg.round, step)
        earlier = self.signed.get(key)
        if earlier is not None:
            # Already signed this position (before a restart, typically): never sign anything
            # else for it; sending the earlier message again is harmless.
            self._out.append(Broadcast(earlier))
            return
        signed = (
            self.signer.sign_proposal(msg) if isinstance(msg, Proposal) else self.signer.sign_vote(msg)
        )
        self.signed[key] = signed
        if isinstance(msg, Vote):
            # The snapshot must already show the step this vote moves to (the caller sets it too).
            self.step_ = step
        self._out.append(PersistState(self.snapshot()))
        self._out.append(Broadcast(signed))
        self._record(signed)
