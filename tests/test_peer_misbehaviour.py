"""A node's answer to consensus messages that no correct peer sends: dropped before the core, the
sender scored (issue 11). Driven in-process through the node's real peer-message handler."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from consensus.messages import Proposal, Step, Vote, VoteType
from node.errors import ProtocolViolation
from node.launch.federation import create_federation
from node.ledger.blocks import block_row_bytes
from node.ledger.keys import NodeKey
from node.ledger.signer import KeySigner
from node.net import wire
from node.net.consensus_wire import message_to_wire
from node.net.peers import DEFAULT_PENALTIES, PeerState, ServeBudget, ServeLimits
from node.net.transport import PeerInfo
from node.server.datadir import KEY_FILE
from node.server.runtime import Node


@pytest.fixture
def federation(tmp_path: Path) -> tuple[Node, dict[bytes, NodeKey]]:
    _, made = create_federation(tmp_path / "fed", 4)
    keys = {k.public: k for k in (NodeKey.load(m.dir / KEY_FILE) for m in made)}
    node = Node(made[0].dir)
    return node, keys


def peer() -> PeerInfo:
    state = PeerState(time.monotonic())
    return PeerInfo(b"\x01" * 32, None, "test", "inbound", time.time(), "authority", state)


def deliver(node: Node, msg: Proposal | Vote) -> None:
    async def go() -> None:
        node._loop = asyncio.get_running_loop()
        type_, payload = message_to_wire(msg)
        await node._on_peer_message(peer(), type_, payload)

    asyncio.run(go())


def genuine_proposal(node: Node, keys: dict[bytes, NodeKey], time_ms: int) -> Proposal:
    proposer = node.ledger.validators_at(1).proposer(1, 0)
    block = node.ledger.make_next_block(proposer, 0, time_ms, [])
    signer = KeySigner(keys[proposer], node.genesis.chain_id)
    return signer.sign_proposal(Proposal(1, 0, block, block.hash, -1, proposer))


def test_a_genuine_signature_on_another_block_is_refused_and_the_genuine_proposal_still_counts(
    federation: tuple[Node, dict[bytes, NodeKey]],
) -> None:
    node, keys = federation
    now = int(time.time() * 1000)
    genuine = genuine_proposal(node, keys, now)
    other = node.ledger.make_next_block(genuine.proposer, 0, now + 1, [])
    forged = replace(genuine, value=other)  # same id and signature, different block
    with pytest.raises(ProtocolViolation) as caught:
        deliver(node, forged)
    assert caught.value.reason == "forged_proposal"
    assert node.counters["forged_proposal"] == 1
    assert not node.core.log.get(0) or not node.core.log[0].proposals
    deliver(node, genuine)
    assert node.core.log[0].first_proposal == genuine
    mine = node.core.signed.get((0, Step.PREVOTE))
    assert isinstance(mine, Vote) and mine.block_id == genuine.value_id  # it prevoted the real block
    node.store.close()


def test_bad_signatures_are_offences_not_just_counters(federation: tuple[Node, dict[bytes, NodeKey]]) -> None:
    node, keys = federation
    voter = next(iter(keys))
    vote = Vote(VoteType.PREVOTE, 1, 0, None, voter, b"\x00" * 64)
    with pytest.raises(ProtocolViolation) as caught:
        deliver(node, vote)
    assert caught.value.reason == "bad_signature" and node.counters["bad_signature:vote"] == 1
    node.store.close()


def send(node: Node, type_: str, payload: object, who: PeerInfo | None = None) -> None:
    async def go() -> None:
        node._loop = asyncio.get_running_loop()
        await node._on_peer_message(who or peer(), type_, payload)

    asyncio.run(go())


def test_next_height_votes_of_keys_outside_the_validator_set_cost_the_peer_that_sent_them(
    federation: tuple[Node, dict[bytes, NodeKey]],
) -> None:
    """Issue 11 finding 6: self-signed next-height votes from any key filled the core's buffer."""
    node, _ = federation
    outsider = NodeKey.generate()
    vote = KeySigner(outsider, node.genesis.chain_id).sign_vote(Vote(VoteType.PREVOTE, 2, 0, None,
                                                                     outsider.public))
    with pytest.raises(ProtocolViolation) as caught:
        deliver(node, vote)
    assert caught.value.reason == "not_a_validator" and node.counters["not_a_validator:vote"] == 1
    assert not node.core._future
    node.store.close()


def test_an_unrequested_blocks_frame_is_an_offence_and_is_not_decoded(
    federation: tuple[Node, dict[bytes, NodeKey]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    node, _ = federation
    decoded: list[object] = []
    monkeypatch.setattr("node.server.runtime.decode_items", lambda items: decoded.append(items) or [])
    block = node.ledger.make_next_block(node.key.public, 0, int(time.time() * 1000), [])
    item = {"block": block_row_bytes(block), "txs": [], "commit": b"\x80"}
    with pytest.raises(ProtocolViolation) as caught:
        send(node, wire.BLOCKS, [item] * 64)
    assert caught.value.reason == "unrequested_blocks" and node.counters["sync_unrequested"] == 1
    assert decoded == []
    assert DEFAULT_PENALTIES["unrequested_blocks"] >= 20
    node.store.close()


def test_get_blocks_past_the_serving_budget_is_answered_with_nothing_and_scored(
    federation: tuple[Node, dict[bytes, NodeKey]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Issue 11 finding 6: GET_BLOCKS was answered (up to 2 MiB each) at up to 500 requests/s."""
    node, _ = federation
    sent: list[tuple[str, object]] = []
    monkeypatch.setattr(node.net, "send", lambda key, type_, payload: sent.append((type_, payload)))
    limits = ServeLimits(blocks_per_s=0.001, blocks_burst=5, bytes_per_s=1, bytes_burst=1024)
    greedy = replace(peer(), state=PeerState(time.monotonic(), serve_limits=limits))
    for _ in range(5):
        send(node, wire.GET_BLOCKS, {"from": 1, "to": 64}, greedy)
    with pytest.raises(ProtocolViolation) as caught:
        send(node, wire.GET_BLOCKS, {"from": 1, "to": 64}, greedy)
    assert caught.value.reason == "serve_budget" and node.counters["blocks_refused:serve_budget"] == 1
    assert sent[-1] == (wire.BLOCKS, [])
    node.store.close()


def test_the_serving_budget_caps_blocks_and_bytes_of_one_answer() -> None:
    limits = ServeLimits(blocks_per_s=10, blocks_burst=20, bytes_per_s=1000, bytes_burst=5000)
    budget = ServeBudget(limits, 0.0)
    assert budget.grant(0.0) == (20, 5000)
    budget.charge(16, 6000, 0.0)  # the first block of an answer may overshoot: a debt
    assert budget.grant(0.0) is None
    assert budget.grant(1.0) is None  # 1000 bytes of the 1000-byte debt paid back
    assert budget.grant(2.0) == (20, 1000)  # blocks refilled to the burst, bytes out of debt
