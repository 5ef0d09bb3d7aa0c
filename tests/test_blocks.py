"""Commit certificates and block wire form."""

import pytest

from consensus.messages import Vote, VoteType
from node.errors import BlockReason, InvalidBlock
from node.ledger.blocks import Block, Commit, canonical_commit, verify_commit
from node.ledger.chain import Ledger
from node.ledger.codec import decode, encode
from node.ledger.keys import sign_vote
from node.store.base import MemoryStore
from tests.factories import CHAIN_ID, key_from, make_block, make_genesis, sign_commit

BID = b"\x42" * 32


@pytest.fixture
def net():
    keys, genesis = make_genesis(4)
    return keys, genesis.validator_set()


def test_quorum_of_valid_precommits_verifies(net):
    keys, vset = net
    verify_commit(sign_commit(keys[:3], CHAIN_ID, 5, 1, BID), vset, CHAIN_ID, BID, 5)


def check_fails(commit, vset, match, block_id=BID, height=5):
    with pytest.raises(InvalidBlock, match=match) as ei:
        verify_commit(commit, vset, CHAIN_ID, block_id, height)
    assert ei.value.reason is BlockReason.BAD_COMMIT


def test_too_few_signatures(net):
    keys, vset = net
    check_fails(sign_commit(keys[:2], CHAIN_ID, 5, 1, BID), vset, "only 2 valid precommits")


def test_duplicate_signer_counts_once(net):
    keys, vset = net
    check_fails(sign_commit([keys[0], keys[1], keys[1]], CHAIN_ID, 5, 1, BID), vset, "only 2")


def test_non_members_do_not_count(net):
    keys, vset = net
    outsiders = [key_from("x"), key_from("y")]
    check_fails(sign_commit([keys[0], keys[1], *outsiders], CHAIN_ID, 5, 1, BID), vset, "only 2")


def test_wrong_block_id_height_or_chain(net):
    keys, vset = net
    c = sign_commit(keys, CHAIN_ID, 5, 1, BID)
    check_fails(c, vset, "different block", block_id=b"\x43" * 32)
    check_fails(c, vset, "height 5", height=6)
    check_fails(sign_commit(keys, "other-chain", 5, 1, BID), vset, "only 0")


def test_votes_for_another_block_round_or_type_do_not_count(net):
    keys, vset = net
    good = sign_commit(keys[:2], CHAIN_ID, 5, 1, BID).precommits
    other_block = sign_vote(keys[2], CHAIN_ID, Vote(VoteType.PRECOMMIT, 5, 1, b"\x43" * 32, keys[2].public))
    other_round = sign_vote(keys[2], CHAIN_ID, Vote(VoteType.PRECOMMIT, 5, 0, BID, keys[2].public))
    prevote = sign_vote(keys[2], CHAIN_ID, Vote(VoteType.PREVOTE, 5, 1, BID, keys[2].public))
    nil = sign_vote(keys[2], CHAIN_ID, Vote(VoteType.PRECOMMIT, 5, 1, None, keys[2].public))
    for v in (other_block, other_round, prevote, nil):
        check_fails(Commit(5, 1, BID, (*good, v)), vset, "only 2")


def test_bad_signature_does_not_count_but_a_later_valid_one_does(net):
    keys, vset = net
    c = sign_commit(keys[:3], CHAIN_ID, 5, 1, BID)
    forged = Vote(VoteType.PRECOMMIT, 5, 1, BID, keys[3].public, c.precommits[0].signature)
    check_fails(Commit(5, 1, BID, (*c.precommits[:2], forged)), vset, "only 2")
    # A forged entry beside a quorum is stripped from what is stored, never kept or forwarded ...
    assert canonical_commit(Commit(5, 1, BID, (forged, *c.precommits)), vset, CHAIN_ID, BID, 5) == c
    # ... and a certificate fixed by a hash (a block's last_commit) must not carry one at all.
    check_fails(Commit(5, 1, BID, (forged, *c.precommits)), vset, "not canonical")


def test_padded_certificates_are_refused_before_any_signature_is_checked(net, monkeypatch):
    """Issue 11, finding 4: thousands of junk precommits were stored and re-proposed."""
    keys, vset = net
    c = sign_commit(keys, CHAIN_ID, 5, 1, BID)
    checked = []
    monkeypatch.setattr("node.ledger.blocks.verify_vote", lambda *a: checked.append(a) or True)
    padded = Commit(5, 1, BID, (*c.precommits, *c.precommits[:1] * 1000))
    with pytest.raises(InvalidBlock, match="1004 precommits for 4 validators"):
        canonical_commit(padded, vset, CHAIN_ID, BID, 5)
    assert checked == []


def test_canonical_certificate_is_sorted_deduplicated_and_only_valid_precommits(net):
    keys, vset = net
    c = sign_commit(keys[:3], CHAIN_ID, 5, 1, BID)
    shuffled = Commit(5, 1, BID, (c.precommits[2], c.precommits[0], c.precommits[1]))
    assert canonical_commit(shuffled, vset, CHAIN_ID, BID, 5) == c
    check_fails(shuffled, vset, "not canonical")
    dup = Commit(5, 1, BID, (*c.precommits, c.precommits[0]))
    assert canonical_commit(dup, vset, CHAIN_ID, BID, 5) == c
    check_fails(dup, vset, "not canonical")


@pytest.mark.parametrize("field, value", [("round", False), ("height", True), ("round", -1)])
def test_mistyped_precommit_fields_are_malformed(net, field, value):
    """`round: false` used to pass as round 0."""
    keys, _ = net
    d = sign_commit(keys, CHAIN_ID, 5, 0, BID).to_dict()
    d["precommits"][0][field] = value
    with pytest.raises(InvalidBlock, match="wrong type"):
        Commit.from_dict(d)


def test_the_ledger_stores_the_canonical_certificate_of_a_padded_one():
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    b1, c1 = make_block(ledger, keys)
    stranger = key_from("stranger")
    junk = sign_vote(stranger, CHAIN_ID, Vote(VoteType.PRECOMMIT, 1, c1.round, b1.hash, stranger.public))
    three = c1.precommits[:3]
    ledger.commit(b1, Commit(1, c1.round, b1.hash, (junk, *reversed(three))))
    assert ledger.store.commit(1) == Commit(1, c1.round, b1.hash, three)
    b2, _ = make_block(ledger, keys)
    assert b2.last_commit == ledger.store.commit(1)


def test_block_wire_round_trip_and_hash():
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    b1, c1 = make_block(ledger, keys)
    ledger.commit(b1, c1)
    b2, _ = make_block(ledger, keys)
    again = Block.from_wire(decode(encode(b2.to_wire())))
    assert again == b2 and again.hash == b2.hash and again.last_commit == c1
    assert Commit.from_dict(decode(encode(c1.to_dict()))) == c1


@pytest.mark.parametrize(
    "mutate",
    [
        lambda w: w.pop("txs"),
        lambda w: w["header"].update(height=-1),
        lambda w: w["header"].update(prev_hash=b"short"),
        lambda w: w["header"].update(extra=1),
        lambda w: w.update(txs=[1]),
        lambda w: w.update(last_commit={"height": 1}),
        lambda w: w.update(last_commit={"height": 1, "round": 0, "block_id": BID, "precommits": [{"x": 1}]}),
    ],
)
def test_malformed_block_wire(mutate):
    keys, genesis = make_genesis(4)
    b, _ = make_block(Ledger(MemoryStore(), genesis), keys)
    w = b.to_wire()
    mutate(w)
    with pytest.raises(InvalidBlock):
        Block.from_wire(w)
