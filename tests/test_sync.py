"""Block sync: the scheduler (which ranges from which peers), and what a synced block must prove."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import pytest

from node.errors import InvalidBlock
from node.ledger.blocks import Block, Commit, block_from_parts
from node.ledger.chain import Ledger
from node.ledger.codec import decode, encode
from node.ledger.transactions import make_reading
from node.net.sync import Answer, BlockSync, decode_items, first_height
from node.store.base import MemoryStore
from tests.factories import device_key, make_block, make_genesis, populated_ledger

A, B, C = b"a" * 32, b"b" * 32, b"c" * 32


def fake(h: int) -> tuple[Block, Commit]:
    """Stand-ins with the right heights: the scheduler only looks at heights."""
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    block, commit = make_block(ledger, keys)
    header = block.header.__class__(**{**block.header.to_dict(), "height": h})
    return Block(header, ()), commit


FAKES = {h: fake(h) for h in range(1, 200)}


def test_ranges_are_spread_over_peers_and_never_overlap() -> None:
    s = BlockSync(batch=10, per_peer=2, max_ahead=100)
    for p in (A, B, C):
        s.peer_height(p, 95)
    reqs = s.requests(0, now=0.0)
    assert [(r.lo, r.hi) for r in reqs] == [(1, 10), (11, 20), (21, 30), (31, 40), (41, 50), (51, 60)]
    assert {r.peer for r in reqs} == {A, B, C}
    assert all(sum(r.peer == p for r in reqs) == 2 for p in (A, B, C))  # per_peer slots
    assert s.requests(0, now=0.1) == []  # every slot is taken


def test_out_of_order_batches_wait_and_apply_in_height_order() -> None:
    s = BlockSync(batch=5, per_peer=1)
    s.peer_height(A, 10)
    s.peer_height(B, 10)
    first, second = s.requests(0, now=0.0)
    s.on_blocks(second.peer, [FAKES[h] for h in range(6, 11)], now=0.1)
    assert s.take_ready(0) is None  # 1..5 has not arrived
    s.on_blocks(first.peer, [FAKES[h] for h in range(1, 6)], now=0.2)
    peer, batch = s.take_ready(0)  # type: ignore[misc]
    assert peer == first.peer and [b.height for b, _ in batch] == [1, 2, 3, 4, 5]
    peer, batch = s.take_ready(5)  # type: ignore[misc]
    assert [b.height for b, _ in batch] == list(range(6, 11))


def test_a_partial_answer_leaves_the_rest_to_be_asked_again_in_spans_the_server_answers_whole() -> None:
    s = BlockSync(batch=10, per_peer=1)
    s.peer_height(A, 10)
    s.peer_height(B, 10)
    s.requests(0, now=0.0)  # 1..10 to one peer, nothing left for the other
    first = next(iter(s.in_flight.values())).peer
    s.on_blocks(first, [FAKES[h] for h in range(1, 4)], now=0.1)  # capped by bytes at 3 blocks
    again = s.requests(0, now=0.2)
    # The rest goes out again, 3 heights per request, so both peers work on consecutive heights.
    assert [(r.lo, r.hi) for r in again] == [(4, 6), (7, 9)] and {r.peer for r in again} == {A, B}
    s.on_blocks(again[0].peer, [FAKES[h] for h in range(4, 7)], now=0.3)  # a whole answer
    assert s.span == 6  # grows back towards the configured batch


def test_a_silent_peer_times_out_and_its_range_goes_to_another() -> None:
    s = BlockSync(batch=10, per_peer=1, timeout_s=5.0)
    s.peer_height(A, 10)
    (req,) = s.requests(0, now=0.0)
    assert req.peer == A
    s.peer_height(B, 10)
    assert s.requests(0, now=1.0) == []  # still in flight at A
    (retry,) = s.requests(0, now=6.0)
    assert retry.peer == B and (retry.lo, retry.hi) == (1, 10)
    s.on_blocks(A, [FAKES[h] for h in range(1, 11)], now=6.5)  # A's late answer is ignored
    assert s.take_ready(0) is None


def test_a_peer_that_sent_a_bad_block_is_left_out_and_its_batches_dropped() -> None:
    s = BlockSync(batch=5, per_peer=2)
    s.peer_height(A, 20)
    reqs = s.requests(0, now=0.0)
    s.on_blocks(A, [FAKES[h] for h in range(reqs[1].lo, reqs[1].hi + 1)], now=0.1)
    s.penalise(A, now=0.2)
    assert s.fetched == {} and s.in_flight == {}
    assert s.requests(0, now=1.0) == []  # A is penalised, nobody else has the blocks
    s.peer_height(B, 20)
    assert {r.peer for r in s.requests(0, now=1.0)} == {B}


def test_answers_that_do_not_match_the_request_are_refused() -> None:
    s = BlockSync(batch=5, per_peer=1)
    s.peer_height(A, 10)
    s.requests(0, now=0.0)
    s.on_blocks(A, [FAKES[1], FAKES[3]], now=0.1)  # a gap
    assert s.fetched == {} and A in s.penalised


def test_fetching_stays_within_max_ahead_of_the_applied_head() -> None:
    s = BlockSync(batch=10, per_peer=10, max_ahead=30)
    s.peer_height(A, 1000)
    assert max(r.hi for r in s.requests(0, now=0.0)) == 30


@pytest.fixture
def chain(tmp_path: Path) -> Ledger:
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    populated_ledger(ledger, keys, n_devices=2, n_blocks=3, per_block=4)
    return ledger


Items = list[dict[str, Any]]


def synced_copy(ledger: Ledger, items: Items) -> Ledger:
    fresh = Ledger(MemoryStore(), ledger.genesis)
    for block, commit in decode_items(items):
        fresh.commit(block, commit, verify_txs=False)
    return fresh


def items_of(ledger: Ledger) -> Items:
    out = []
    for h in range(1, ledger.height + 1):
        raw_block, raw_txs, raw_commit = ledger.store.block_parts(h)  # type: ignore[misc]
        out.append({"block": raw_block, "txs": raw_txs, "commit": raw_commit})
    return out


def test_certificate_mode_rebuilds_an_identical_replica(chain: Ledger) -> None:
    ledger = chain
    fresh = synced_copy(ledger, items_of(ledger))
    assert fresh.head_hash == ledger.head_hash
    assert fresh.store.readings() == ledger.store.readings()


def test_tx_bytes_that_are_not_the_certified_ones_break_the_tx_root(chain: Ledger) -> None:
    ledger = chain
    items = items_of(ledger)
    # Same tx, different (non-canonical) bytes: float32 instead of float64 for a value that fits.
    raw = items[2]["txs"][0]
    tx = decode(raw)
    odd = msgpack.packb(tx, use_bin_type=True, use_single_float=True)
    assert odd != raw and decode(odd)["kind"] == tx["kind"]
    items[2]["txs"][0] = odd
    with pytest.raises(InvalidBlock, match="tx_root"):
        synced_copy(ledger, items)


def test_a_forged_reading_in_a_certified_block_is_caught_without_checking_its_signature(
    chain: Ledger,
) -> None:
    """Certificate mode skips tx signatures, so the header must bind the txs: a reading swapped
    in by the serving peer changes the tx root, and the header (whose hash the commit certificate
    signs) still names the original one."""
    ledger = chain
    items = items_of(ledger)
    forged = make_reading(device_key(99), ledger.chain_id, 9, ledger.head_time_ms, 21.0, 50.0)
    forged["body"]["device"] = decode(items[2]["txs"][0])["body"]["device"]
    items[2]["txs"][0] = encode(forged)
    with pytest.raises(InvalidBlock):
        synced_copy(ledger, items)


def test_malformed_parts_are_an_invalid_block_not_a_crash() -> None:
    with pytest.raises(InvalidBlock):
        block_from_parts(b"\xc1", [])
    with pytest.raises(InvalidBlock):
        block_from_parts(b"\x80", [])
    with pytest.raises(InvalidBlock):
        decode_items([{"block": b"\x80", "txs": [], "commit": b"\x00"}])


def test_an_unbacked_height_claim_stops_counting_once_the_peer_answers_with_nothing() -> None:
    """Issue 11, finding 7: a peer announcing height 2^63 - 1 kept a node "syncing" forever."""
    s = BlockSync(batch=10, per_peer=1)
    s.peer_height(A, 5, now=0.0)
    s.peer_height(B, 2**63 - 1, now=0.0)
    assert [r.peer for r in s.requests(0, now=0.0)] == [B]  # only B claims heights 1..10
    assert s.target == 2**63 - 1
    assert s.on_blocks(B, [], now=0.5) is True  # nothing inside the range its claim covers
    assert s.target == 5 and s.disproven == 1
    s.peer_height(B, 2**63 - 1, now=1.0)  # repeating the lie changes nothing for a while
    assert s.target == 5
    (honest,) = s.requests(0, now=1.0)
    assert (honest.peer, honest.lo, honest.hi) == (A, 1, 5)
    s.on_blocks(A, [FAKES[h] for h in range(1, 6)], now=1.1)
    assert s.take_ready(0) is not None


def test_a_silent_claim_times_out_and_distrust_doubles_with_each_failure() -> None:
    s = BlockSync(batch=10, per_peer=1, timeout_s=5.0)
    s.peer_height(B, 1000, now=0.0)
    assert [r.peer for r in s.requests(0, now=0.0)] == [B]
    s.requests(0, now=6.0)  # B never answered
    assert s.target == 0
    s.peer_height(B, 1000, now=6.0 + 29.0)
    assert s.target == 0  # still inside the first 30 s
    s.peer_height(B, 1000, now=6.0 + 31.0)
    assert s.target == 1000  # a new claim is heard again ...
    s.requests(0, now=40.0)
    s.requests(0, now=46.0)  # ... and failing again costs 60 s
    s.peer_height(B, 1000, now=46.0 + 59.0)
    assert s.target == 0


def test_heights_a_peer_delivered_stay_credible_after_it_fails_above_them() -> None:
    s = BlockSync(batch=5, per_peer=1)
    s.peer_height(A, 10, now=0.0)
    (_first,) = s.requests(0, now=0.0)
    s.on_blocks(A, [FAKES[h] for h in range(1, 6)], now=0.1)
    assert s.take_ready(0) is not None
    (second,) = s.requests(5, now=0.2)
    assert (second.lo, second.hi) == (6, 10)
    assert s.on_blocks(A, [], now=0.3) is True
    assert s.target == 5  # what it proved, not what it claimed


def raw_items(heights: range) -> list[dict[str, Any]]:
    keys, genesis = make_genesis(4)
    ledger = Ledger(MemoryStore(), genesis)
    block, commit = make_block(ledger, keys)
    out = []
    for h in heights:
        header = {**block.header.to_dict(), "height": h}
        out.append({"block": encode({"header": header, "last_commit": None}), "txs": [],
                    "commit": encode(commit.to_dict())})
    return out


def test_blocks_frames_are_judged_against_the_requests_before_decoding() -> None:
    """Issue 11 finding 6: unrequested BLOCKS frames were decoded in full before sync said no."""
    s = BlockSync(batch=10, per_peer=1, timeout_s=5.0)
    s.peer_height(A, 100, now=0.0)
    (req,) = s.requests(0, now=0.0)
    assert (req.peer, req.lo, req.hi) == (A, 1, 10)
    assert first_height(raw_items(range(1, 4))) == 1 and first_height([]) is None
    assert s.classify(B, 1, 3) is Answer.UNREQUESTED  # asked A, not B
    assert s.classify(A, 2, 3) is Answer.UNREQUESTED  # not where the request starts
    assert s.classify(A, 1, 11) is Answer.UNREQUESTED  # more than was asked
    assert s.classify(A, 1, 10) is Answer.REQUESTED and s.classify(A, None, 0) is Answer.REQUESTED
    assert s.classify(B, None, 0) is Answer.UNREQUESTED
    s.requests(0, now=6.0)  # A timed out: its answer, if it still comes, is late, not an offence
    assert s.classify(A, 1, 10) is Answer.LATE
    assert s.classify(A, 1, 10) is Answer.UNREQUESTED  # ... once
