"""Membership on the ledger as stories: join requests, authority votes, changes in effect at H+2.

Each story runs real blocks through a Ledger (both stores), with commit certificates signed by
the authorities in force, so the validator-set change is checked where it matters: who may
propose, and whose precommits finalise a block.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from node.errors import InvalidBlock, Reason
from node.flower.auth import supernode_key
from node.ledger.chain import Ledger
from node.ledger.keys import NodeKey
from node.ledger.membership import EFFECT_DELAY, initial_membership, member_flower_keys
from node.ledger.transactions import (
    make_join_request,
    make_member_vote,
    make_model_update,
    make_register_device,
)
from node.store.base import MemoryStore
from node.store.sqlite import SqliteStore
from node.store.verify import verify_chain
from tests.factories import (
    CHAIN_ID,
    device_key,
    key_from,
    make_block,
    make_genesis,
    participant_key,
    readings_for,
)

ALICE = key_from("alice")  # wants to join
BOB = key_from("bob")


@pytest.fixture(params=["memory", "sqlite"])
def store_kind(request: Any) -> str:
    return str(request.param)


def new_ledger(
    store_kind: str, tmp_path: Path, n: int = 4, **genesis_fields: Any
) -> tuple[Ledger, list[NodeKey]]:
    keys, genesis = make_genesis(n, **genesis_fields)
    store = MemoryStore() if store_kind == "memory" else SqliteStore(tmp_path / "node.db")
    return Ledger(store, genesis), keys


def in_force(ledger: Ledger, keys: Sequence[NodeKey], height: int | None = None) -> list[NodeKey]:
    """The keys of `keys` that are validators of `height` (default: the next block)."""
    vset = ledger.validators_at(ledger.height + 1 if height is None else height)
    return [k for k in keys if k.public in vset]


def commit(ledger: Ledger, keys: Sequence[NodeKey], txs: Sequence[dict[str, Any]] = ()) -> int:
    """Commit the next block, certified by every key in force at its height; returns the height."""
    signers = in_force(ledger, keys)
    block, cert = make_block(ledger, keys, txs, signers=signers)
    ledger.commit(block, cert)
    return block.height


def join(key: NodeKey, role: str = "participant", name: str = "alice") -> dict[str, Any]:
    return make_join_request(key, CHAIN_ID, role, name, "ws://127.0.0.1:9999")


def vote(voter: NodeKey, node: NodeKey, role: str = "participant", action: str = "add") -> dict[str, Any]:
    return make_member_vote(voter, CHAIN_ID, node.public, role, action)


def rejection(ledger: Ledger, tx: dict[str, Any]) -> Reason | None:
    return ledger.check_tx(tx, ledger.head_time_ms + 1000)


def test_alice_asks_to_join_and_three_of_four_authorities_admit_her_two_blocks_later(
    store_kind: str, tmp_path: Path
) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path)
    commit(ledger, keys, [join(ALICE)])
    assert ledger.store.membership().request(ALICE.public) is not None
    commit(ledger, keys, [vote(keys[0], ALICE), vote(keys[1], ALICE)])
    assert ledger.store.membership().scheduled == ()  # 2 of 4 is not more than 2/3
    decided = commit(ledger, keys, [vote(keys[2], ALICE)])
    change = ledger.store.membership().pending_change(ALICE.public)
    assert change is not None and change.effective == decided + EFFECT_DELAY
    assert ledger.store.member(ALICE.public) is None  # not yet: H+1 is still the old membership
    commit(ledger, keys)
    assert ledger.store.member(ALICE.public) is None
    commit(ledger, keys)
    member = ledger.store.member(ALICE.public)
    assert member is not None and member.role == "participant" and member.since_height == decided + 2
    assert ledger.store.membership().request(ALICE.public) is None
    assert [c.node for c in ledger.store.membership_history()] == [ALICE.public]
    # A participant trains and owns devices, but does not validate.
    assert ALICE.public not in ledger.validators_at(ledger.height + 1)
    dev = device_key(7)
    commit(ledger, keys, [make_register_device(ALICE, CHAIN_ID, dev.public, "alice-sensor")])
    assert verify_chain(ledger.store, ledger.genesis).ok


def test_a_new_authority_proposes_and_signs_from_h_plus_2_and_the_quorum_grows(
    store_kind: str, tmp_path: Path
) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path)
    everyone = [*keys, ALICE]
    commit(ledger, keys, [join(ALICE, "authority")])
    decided = commit(ledger, keys, [vote(k, ALICE, "authority") for k in keys[:3]])
    effective = decided + EFFECT_DELAY
    assert ledger.validators_at(effective - 1).n == 4
    assert ledger.validators_at(effective).n == 5 and ALICE.public in ledger.validators_at(effective)
    commit(ledger, keys)  # effective - 1, still decided by the old four
    # At `effective`, the old four alone are a quorum of five (4 > 10/3) but three are not.
    block, cert = make_block(ledger, everyone, signers=keys[:3])
    with pytest.raises(InvalidBlock, match="need 4"):
        ledger.commit(block, cert)
    commit(ledger, everyone)
    assert ledger.store.member(ALICE.public).role == "authority"  # type: ignore[union-attr]
    # Rotation now runs over five: some coming height belongs to Alice.
    proposers = {ledger.validators_at(h).proposer(h, 0) for h in range(effective, effective + 5)}
    assert ALICE.public in proposers
    for _ in range(5):
        commit(ledger, everyone)
    assert verify_chain(ledger.store, ledger.genesis).ok


def test_removing_an_authority_shrinks_the_set_and_its_signature_stops_counting(
    store_kind: str, tmp_path: Path
) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path)
    gone = keys[3]
    decided = commit(ledger, keys, [vote(k, gone, "authority", "remove") for k in keys[:3]])
    commit(ledger, keys)
    commit(ledger, keys)
    assert ledger.height == decided + EFFECT_DELAY
    assert ledger.store.member(gone.public) is None
    vset = ledger.validators_at(ledger.height + 1)
    assert vset.n == 3 and gone.public not in vset and vset.quorum == 3
    # Two remaining authorities plus the removed one are no longer a commit certificate.
    block, cert = make_block(ledger, keys, signers=[keys[0], keys[1], gone])
    with pytest.raises(InvalidBlock, match="only 2 valid precommits"):
        ledger.commit(block, cert)
    commit(ledger, keys[:3])
    # The removed authority can no longer vote or start runs.
    assert rejection(ledger, vote(gone, ALICE)) is Reason.UNAUTHORIZED
    assert verify_chain(ledger.store, ledger.genesis).ok


def test_votes_that_do_not_count(store_kind: str, tmp_path: Path) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path, n_participants=1)
    carol = participant_key(0)
    assert rejection(ledger, vote(keys[0], ALICE)) is Reason.NO_JOIN_REQUEST
    commit(ledger, keys, [join(ALICE)])
    assert rejection(ledger, vote(carol, ALICE)) is Reason.UNAUTHORIZED  # a participant
    assert rejection(ledger, vote(ALICE, ALICE)) is Reason.UNAUTHORIZED  # herself
    assert rejection(ledger, vote(keys[0], ALICE, "authority")) is Reason.NO_JOIN_REQUEST  # asked for less
    assert rejection(ledger, vote(keys[0], carol, "participant")) is Reason.ALREADY_MEMBER
    assert rejection(ledger, vote(keys[0], BOB, "participant", "remove")) is Reason.NOT_MEMBER
    assert rejection(ledger, vote(keys[0], carol, "authority", "remove")) is Reason.NOT_MEMBER  # wrong role
    assert rejection(ledger, join(carol)) is Reason.ALREADY_MEMBER
    commit(ledger, keys, [vote(keys[0], ALICE)])
    # Ed25519 signing is deterministic: the same vote again is the same tx.
    assert rejection(ledger, vote(keys[0], ALICE)) is Reason.DUPLICATE
    commit(ledger, keys, [vote(keys[1], ALICE), vote(keys[2], ALICE)])
    assert rejection(ledger, vote(keys[3], ALICE)) is Reason.CHANGE_PENDING  # decided, not in effect
    assert rejection(ledger, join(ALICE, "authority")) is Reason.CHANGE_PENDING
    # Inside one block, txs see the earlier ones: a second vote of one authority makes it invalid.
    twice = [vote(keys[0], carol, "participant", "remove"),
             make_member_vote(keys[0], CHAIN_ID, carol.public, "participant", "remove")]
    block, cert = make_block(ledger, keys, twice)
    with pytest.raises(InvalidBlock, match="duplicate"):
        ledger.commit(block, cert)


def test_the_last_authority_cannot_be_voted_out(store_kind: str, tmp_path: Path) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path, n=1)
    assert rejection(ledger, vote(keys[0], keys[0], "authority", "remove")) is Reason.LAST_AUTHORITY


def test_open_admission_lets_participants_in_without_votes_but_not_authorities(
    store_kind: str, tmp_path: Path
) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path, admission="open")
    h = commit(ledger, keys, [join(ALICE), join(BOB, "authority", "bob")])
    commit(ledger, keys)
    commit(ledger, keys)
    alice = ledger.store.member(ALICE.public)
    assert alice is not None and alice.role == "participant" and alice.since_height == h + 2
    assert ledger.store.member(BOB.public) is None
    assert ledger.store.membership().request(BOB.public) is not None  # waits for votes
    assert ledger.validators_at(ledger.height + 1).n == 4


def test_a_removed_participants_devices_and_updates_are_refused(store_kind: str, tmp_path: Path) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path, n_participants=1)
    carol = participant_key(0)
    dev = device_key(3)
    commit(ledger, keys, [make_register_device(carol, CHAIN_ID, dev.public, "carol-sensor")])
    t = ledger.head_time_ms + 1000
    commit(ledger, keys, readings_for(dev, CHAIN_ID, 1, 2, t))
    commit(ledger, keys, [vote(k, carol, "participant", "remove") for k in keys[:3]])
    late = readings_for(dev, CHAIN_ID, 3, 1, ledger.head_time_ms + 1000)[0]
    assert rejection(ledger, late) is None  # H+1: carol is still a member
    commit(ledger, keys)
    commit(ledger, keys)
    assert ledger.store.member(carol.public) is None
    assert rejection(ledger, late) is Reason.OWNER_REMOVED
    upd = make_model_update(carol, CHAIN_ID, bytes(32), "humidity", 1, bytes(32), b"\x90", 1, {}, bytes(32))
    assert rejection(ledger, upd) is Reason.UNAUTHORIZED
    # The readings she contributed while a member stay on the ledger.
    assert len(ledger.store.readings(dev.public)) == 2


def test_removing_an_authority_recounts_open_tallies_against_the_smaller_set(
    store_kind: str, tmp_path: Path
) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path, n=5)
    commit(ledger, keys, [join(ALICE)])
    commit(ledger, keys, [vote(k, ALICE) for k in keys[:3]])  # 3 of 5: not more than 2/3
    assert ledger.store.membership().pending_change(ALICE.public) is None
    decided = commit(ledger, keys, [vote(k, keys[4], "authority", "remove") for k in keys[:4]])
    commit(ledger, keys)
    effective = commit(ledger, keys)
    assert effective == decided + EFFECT_DELAY
    # From here 3 of the remaining 4 are more than 2/3: Alice's admission is decided now.
    change = ledger.store.membership().pending_change(ALICE.public)
    assert change is not None and change.decided == effective
    commit(ledger, keys[:4])
    commit(ledger, keys[:4])
    assert ledger.store.member(ALICE.public) is not None
    assert verify_chain(ledger.store, ledger.genesis).ok


def test_an_authority_removed_while_voting_no_longer_counts(store_kind: str, tmp_path: Path) -> None:
    ledger, keys = new_ledger(store_kind, tmp_path, n=4)
    commit(ledger, keys, [join(ALICE)])
    commit(ledger, keys, [vote(keys[3], ALICE), vote(keys[0], ALICE)])
    commit(ledger, keys, [vote(k, keys[3], "authority", "remove") for k in keys[:3]])
    commit(ledger, keys)
    commit(ledger, keys)
    tally = ledger.store.membership().tally(ALICE.public, "add", "participant")
    assert tally is not None and tally.voters == (keys[0].public,)


def test_membership_survives_a_restart_and_tampering_is_caught(tmp_path: Path) -> None:
    keys, genesis = make_genesis(4)
    path = tmp_path / "node.db"
    ledger = Ledger(SqliteStore(path), genesis)
    commit(ledger, keys, [join(ALICE)])
    commit(ledger, keys, [vote(k, ALICE) for k in keys[:3]])
    before = ledger.store.membership()
    ledger.store.close()
    reopened = Ledger(SqliteStore(path), genesis)
    assert reopened.store.membership() == before
    reopened.store.close()
    db = sqlite3.connect(path)
    db.execute("UPDATE membership SET raw = ?", (make_genesis_membership_bytes(keys),))
    db.commit()
    db.close()
    report = verify_chain(SqliteStore(path), genesis)
    assert not report.ok and "membership state differs" in (report.error or "")


def make_genesis_membership_bytes(keys: Sequence[NodeKey]) -> bytes:
    return initial_membership(k.public for k in keys).to_bytes()


def test_open_join_requests_are_bounded_and_undecided_ones_expire(
    store_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 11, finding 3: join requests from fresh keys were free, unbounded and never expired."""
    from node.ledger import membership

    monkeypatch.setattr(membership, "MAX_OPEN_JOIN_REQUESTS", 3)
    monkeypatch.setattr(membership, "JOIN_REQUEST_TTL_BLOCKS", 5)
    ledger, keys = new_ledger(store_kind, tmp_path)
    strangers = [key_from(f"stranger-{i}") for i in range(4)]
    h = commit(ledger, keys, [join(k, name=f"s{i}") for i, k in enumerate(strangers[:3])])
    assert len(ledger.store.membership().requests) == 3
    assert rejection(ledger, join(strangers[3], name="s3")) is Reason.JOIN_REQUESTS_FULL
    assert rejection(ledger, join(strangers[0], role="observer", name="s0")) is None  # replacing one's own
    commit(ledger, keys, [vote(keys[0], strangers[0])])  # one vote: not decided
    while ledger.height < h + 4:
        commit(ledger, keys)
    assert len(ledger.store.membership().requests) == 3
    commit(ledger, keys)  # height h + 5: the requests of height h expire, with their open tallies
    ms = ledger.store.membership()
    assert ms.requests == () and ms.tallies == ()
    assert rejection(ledger, join(strangers[3], name="s3")) is None
    assert rejection(ledger, vote(keys[1], strangers[0])) is Reason.NO_JOIN_REQUEST
    assert verify_chain(ledger.store, ledger.genesis).ok


def test_a_join_request_flood_cannot_crowd_the_mempool(tmp_path: Path) -> None:
    """20,000 join requests from fresh keys were all admitted: the mempool keeps few, one per node."""
    from node.ledger.mempool import MAX_PENDING_JOIN_REQUESTS, Mempool

    ledger, keys = new_ledger("memory", tmp_path)
    pool = Mempool(ledger.params)
    now = ledger.head_time_ms + 1000
    flood = [join(key_from(f"flood-{i}"), name=f"f{i}") for i in range(MAX_PENDING_JOIN_REQUESTS + 50)]
    reasons = [pool.add(tx, ledger.store, now)[1] for tx in flood]
    assert reasons.count(None) == MAX_PENDING_JOIN_REQUESTS
    assert set(reasons) == {None, Reason.MEMPOOL_FULL}
    again = join(key_from("flood-0"), role="observer", name="f0")  # a second one of the same node
    assert pool.add(again, ledger.store, now)[1] is Reason.DUPLICATE
    dev = device_key(0)
    reg = make_register_device(keys[0], CHAIN_ID, dev.public, "d0")
    assert pool.add(reg, ledger.store, now)[1] is None  # other txs still get in
    pool.remove([t.id for t in pool.pending() if t.kind == "join_request"][:10])
    assert pool.add(flood[-1], ledger.store, now)[1] is None  # room again once some left


def test_the_stored_membership_value_does_not_grow_with_the_members_it_admitted(
    store_kind: str, tmp_path: Path
) -> None:
    """Issue 11, finding 3: every admitted member's change was kept inside the membership value,
    which a block that changes membership rewrites whole: per-block cost grew with history."""
    ledger, keys = new_ledger(store_kind, tmp_path, admission="open")
    sizes = []
    for batch in range(3):
        newcomers = [key_from(f"newcomer-{batch}-{i}") for i in range(20)]
        commit(ledger, keys, [join(k, name=f"n{batch}-{i}") for i, k in enumerate(newcomers)])
        for _ in range(EFFECT_DELAY):
            commit(ledger, keys)
        assert all(ledger.store.member(k.public) is not None for k in newcomers)
        sizes.append(len(ledger.store.membership().to_bytes()))
    assert sizes[0] == sizes[1] == sizes[2]
    history = ledger.store.membership_history()
    assert len(history) == ledger.store.membership_history_size() == 60
    assert [c.name for c in ledger.store.membership_history(2)] == ["n2-18", "n2-19"]
    assert verify_chain(ledger.store, ledger.genesis).ok



def test_the_flower_keys_to_register_follow_admission_and_removal(store_kind: str, tmp_path: Path) -> None:
    """What a coordinator registers on its SuperLink (node/flower/training.py `flower_keys`): the
    key of the join request that admitted a member, and nothing from its removal on."""
    ledger, keys = new_ledger(store_kind, tmp_path)
    flower_key = supernode_key(tmp_path / "alice").public
    roles = ("authority", "participant")

    def keys_now() -> dict[bytes, bytes]:
        return member_flower_keys(ledger.store.membership_history(), ledger.store.members(), {}, roles)

    commit(ledger, keys, [make_join_request(ALICE, CHAIN_ID, "participant", "alice", "ws://127.0.0.1:9999",
                                            flower_key)])
    commit(ledger, keys, [vote(k, ALICE) for k in keys[:3]])
    assert ALICE.public not in keys_now()  # decided, not yet in force
    commit(ledger, keys)
    commit(ledger, keys)
    assert keys_now()[ALICE.public] == flower_key
    commit(ledger, keys, [vote(k, ALICE, action="remove") for k in keys[:3]])
    commit(ledger, keys)
    commit(ledger, keys)
    assert ledger.store.member(ALICE.public) is None
    assert ALICE.public not in keys_now()  # the coordinator unregisters it: its SuperNode is refused
