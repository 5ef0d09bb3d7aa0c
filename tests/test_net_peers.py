"""Per-peer bookkeeping with a hand-driven clock."""

from __future__ import annotations

from node.net.peers import MisbehaviourScore, PeerState, RateLimits, TokenBucket


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
