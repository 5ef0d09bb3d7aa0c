"""Per-peer bookkeeping with a hand-driven clock."""

from __future__ import annotations

from node.net.peers import AddressBook, BanList, MisbehaviourScore, PeerState, RateLimits, TokenBucket


def test_token_bucket_bursts_then_refills_at_rate() -> None:
    b = TokenBucket(rate=10, burst=5, now=0.0)
    assert all(b.take(1, 0.0) for _ in range(5))
    assert not b.take(1, 0.0)
    assert b.take(1, 0.1)  # 0.1 s at 10/s = one token
    assert not b.take(1, 0.1)
    assert b.available(100.0) == 5  # never more than the burst


def test_clock_stepping_back_does_not_drain_or_fill() -> None:
    b = TokenBucket(rate=1, burst=2, now=10.0)
    assert b.take(2, 10.0)
    assert not b.take(1, 5.0)
    assert b.take(1, 11.0)


def test_refused_frame_costs_no_tokens() -> None:
    st = PeerState(0.0, RateLimits(messages_per_s=1, messages_burst=10, bytes_per_s=1, bytes_burst=100))
    assert not st.admit(101, 0.0)  # too many bytes: refused ...
    assert st.limiter.messages.available(0.0) == 10  # ... without spending a message token
    assert st.counters.rejected["rate_limited"] == 1


def test_score_crosses_threshold_and_decays() -> None:
    s = MisbehaviourScore(0.0, threshold=50, decay_per_s=1.0)
    assert not s.add(30, "codec", 0.0)
    assert s.add(30, "codec", 0.0)
    assert s.value(100.0) == 0.0
    assert not s.add(30, "codec", 100.0)
    assert s.reasons["codec"] == 3


def test_five_garbage_frames_cut_a_peer_off() -> None:
    st = PeerState(0.0)
    verdicts = [st.penalize("codec", float(i) * 0.01) for i in range(6)]
    assert verdicts == [False] * 5 + [True]
    assert st.counters.rejected["codec"] == 6


def test_peer_counters_also_feed_node_totals() -> None:
    a, b = PeerState(0.0), PeerState(0.0)
    b.totals = a.totals
    a.received(10)
    b.received(5)
    b.sent(7)
    b.dropped("queue_full")
    assert a.totals.frames_in == 2 and a.totals.bytes_in == 15 and a.totals.bytes_out == 7
    assert a.counters.frames_in == 1 and b.counters.dropped_out["queue_full"] == 1
    assert a.to_json(0.0)["score"] == 0


def test_bans_double_per_offence_up_to_the_cap_and_are_forgotten_after_good_behaviour() -> None:
    bans = BanList(base=60.0, cap=600.0)
    key, ip = b"\x01" * 32, "10.0.0.9"
    assert bans.banned_for(key, 0.0) == 0.0
    assert bans.ban([key, ip], 0.0) == 60.0
    assert bans.banned_for(key, 30.0) == 30.0 and bans.banned_for(ip, 30.0) == 30.0
    assert bans.banned_for(key, 61.0) == 0.0  # served
    assert bans.ban([key], 100.0) == 120.0  # second offence: twice as long
    assert bans.ban([key], 300.0) == 240.0
    assert bans.ban([key], 600.0) == 480.0
    assert bans.ban([key], 1100.0) == 600.0  # capped
    assert bans.offences(key) == 5
    # A cap's worth of good behaviour after the ban ended: it starts over.
    assert bans.ban([key], 1100.0 + 600.0 + 600.0 + 1.0) == 60.0
    assert bans.offences(key) == 1


def test_the_ban_list_is_bounded() -> None:
    bans = BanList(base=10.0, cap=100.0, max_entries=3)
    for i in range(10):
        bans.ban([f"10.0.0.{i}"], float(i))
    assert len(bans) == 3
    assert bans.banned_for("10.0.0.9", 9.5) > 0 and bans.banned_for("10.0.0.0", 0.5) == 0.0


def test_address_book_bounds_each_peer_and_the_total_and_counts_votes() -> None:
    book = AddressBook(per_peer=2, max_urls=3, hold=60.0)
    p1, p2, p3 = b"\x01" * 32, b"\x02" * 32, b"\x03" * 32
    assert book.announce(p1, "ws://a") and book.announce(p1, "ws://b")
    assert not book.announce(p1, "ws://c")  # p1's quota
    assert book.announce(p1, "ws://a")  # already counted: free
    assert book.announce(p2, "ws://a") and book.votes("ws://a") == 2
    assert book.announce(p2, "ws://c")
    assert not book.announce(p3, "ws://d")  # the book is full ...
    assert book.announce(p3, "ws://c")  # ... but a known address gains a vote
    book.forget_peer(p1)
    assert book.votes("ws://a") == 1 and book.votes("ws://b") == 0 and len(book) == 2


def test_address_book_holds_back_a_failed_address() -> None:
    book = AddressBook(hold=60.0)
    book.announce(b"\x01" * 32, "ws://a")
    book.failed("ws://a", 100.0)
    assert not book.dialable("ws://a", 130.0) and book.dialable("ws://a", 160.0)
    book.failed("ws://unknown", 100.0)  # not in the book: not remembered (the book's bound holds)
    assert book.dialable("ws://unknown", 101.0)
