"""The persisted signed state survives encoding exactly (a restarted node must see what it signed)."""

from __future__ import annotations

from consensus.events import SignedState
from consensus.messages import Proposal, Step, Vote, VoteType
from node.ledger.chain import Ledger
from node.ledger.codec import decode, encode
from node.ledger.keys import sign_proposal, sign_vote
from node.net.consensus_wire import decode_signed_state, encode_signed_state
from node.store.base import MemoryStore
from tests.factories import make_genesis


def test_signed_state_round_trips_with_blocks_votes_and_proof() -> None:
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    proposer = next(k for k in keys if k.public == ledger.validators_at(1).proposer(1, 0))
    block = ledger.make_next_block(proposer.public, 0, genesis.genesis_time_ms + 1, [])
    prop = sign_proposal(proposer, genesis.chain_id, Proposal(1, 0, block, block.hash, -1, proposer.public))
    votes = tuple(
        sign_vote(k, genesis.chain_id, Vote(VoteType.PREVOTE, 1, 0, block.hash, k.public)) for k in keys[:3]
    )
    state = SignedState(1, 0, Step.PRECOMMIT, 0, block, 0, block, (prop, votes[0]), votes)
    back = decode_signed_state(encode_signed_state(state))
    assert back == state
    assert back.locked_value.hash == block.hash and back.signed[0].value.hash == block.hash
    assert back.proof == votes


def test_signed_state_keeps_its_round_proof_and_older_states_without_one_still_load() -> None:
    keys, genesis = make_genesis(4)
    chain = genesis.chain_id
    nils = tuple(sign_vote(k, chain, Vote(VoteType.PRECOMMIT, 1, 0, None, k.public)) for k in keys[1:])
    state = SignedState(1, 1, Step.PREVOTE, -1, None, -1, None, (), (), nils)
    assert decode_signed_state(encode_signed_state(state)).round_proof == nils
    older = decode(encode_signed_state(state))
    del older["round_proof"]
    assert decode_signed_state(encode(older)).round_proof == ()
