"""Wire envelopes: round trips, structural validation, and hostile bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import BadOutgoingMessage, CodecError, ProtocolViolation
from node.ledger.codec import encode
from node.net import wire

H = b"\x11" * 32
K = b"\x22" * 32
SIG = b"\x33" * 64

GOOD = {
    wire.HELLO: {"chain_id": "c", "genesis_hash": H, "node": K, "nonce": H, "eph": K,
                 "listen_url": "ws://a:1"},
    wire.PROOF: {"sig": SIG},
    wire.PEERS: ["ws://127.0.0.1:9000", "wss://x.example:443/peer"],
    wire.TX: {"kind": "reading", "anything": [1, 2]},
    wire.PROPOSAL: {"height": 1, "round": 0, "block_id": H, "valid_round": -1, "proposer": K,
                    "signature": SIG, "block": b"\x83encoded block"},
    wire.VOTE: {"type": 1, "height": 3, "round": 2, "block_id": None, "validator": K, "signature": SIG},
    wire.STATUS: {"height": 0, "head_hash": H},
    wire.GET_BLOCKS: {"from": 1, "to": 64},
    wire.BLOCKS: [{"block": b"\x81", "txs": [b"\x80"], "commit": b"\x80"}],
    wire.SUBMIT_TX: {"kind": "reading"},
    wire.TX_RESULT: {"id": H, "accepted": False, "reason": "bad_signature"},
    wire.TXS: [{"kind": "reading"}, {"kind": "register_device"}],
    wire.SUBMIT_TXS: [{"kind": "reading"}],
    wire.TX_RESULTS: [{"id": H, "accepted": True, "reason": None}, {"id": None, "accepted": False,
                                                                  "reason": "malformed"}],
    wire.ERROR: {"reason": "codec", "detail": ""},
}

BAD = [
    (wire.HELLO, {**GOOD[wire.HELLO], "nonce": b"short"}),
    (wire.HELLO, {**GOOD[wire.HELLO], "eph": b"short"}),
    (wire.HELLO, {k: v for k, v in GOOD[wire.HELLO].items() if k != "eph"}),
    (wire.HELLO, {**GOOD[wire.HELLO], "listen_url": "http://a"}),
    (wire.HELLO, {**GOOD[wire.HELLO], "extra": 1}),
    (wire.PROOF, {"sig": "not bytes"}),
    (wire.PEERS, ["ws://a"] * (wire.MAX_PEX_URLS + 1)),
    (wire.PEERS, {"urls": []}),
    (wire.TX, [1, 2]),
    (wire.PROPOSAL, {**GOOD[wire.PROPOSAL], "valid_round": -2}),
    (wire.PROPOSAL, {**GOOD[wire.PROPOSAL], "block": {"header": {}}}),
    (wire.VOTE, {**GOOD[wire.VOTE], "type": 3}),
    (wire.VOTE, {**GOOD[wire.VOTE], "type": True}),
    (wire.VOTE, {**GOOD[wire.VOTE], "height": True}),
    (wire.VOTE, {**GOOD[wire.VOTE], "round": -1}),
    (wire.STATUS, {"height": 1}),
    (wire.GET_BLOCKS, {"from": 5, "to": 4}),
    (wire.GET_BLOCKS, {"from": 1, "to": 1 + wire.MAX_BLOCKS_BATCH}),
    (wire.BLOCKS, [{"block": {}}]),
    (wire.BLOCKS, [{"block": {}, "txs": [], "commit": b""}]),  # parts must be bytes
    (wire.BLOCKS, [{"block": b"", "txs": [{}], "commit": b""}]),
    (wire.TX_RESULT, {"id": H, "accepted": 1, "reason": None}),
    (wire.TXS, []),
    (wire.TXS, [{"kind": "reading"}] * (wire.MAX_TX_BATCH + 1)),
    (wire.SUBMIT_TXS, [[1]]),
    (wire.TX_RESULTS, [{"id": H, "accepted": "yes", "reason": None}]),
]


@pytest.mark.parametrize("type_", sorted(GOOD))
def test_every_type_round_trips(type_: str) -> None:
    env = wire.decode_frame(wire.encode_frame(type_, GOOD[type_]))
    assert env == wire.Envelope(type_, GOOD[type_])


def test_every_message_type_has_an_example() -> None:
    assert set(GOOD) == wire.MESSAGE_TYPES


@pytest.mark.parametrize(("type_", "payload"), BAD)
def test_bad_payloads_are_protocol_violations(type_: str, payload: object) -> None:
    with pytest.raises(ProtocolViolation) as info:
        wire.decode_frame(encode({"v": 1, "t": type_, "p": payload}))
    assert info.value.reason == "bad_payload"
    with pytest.raises(BadOutgoingMessage):  # and we refuse to send them ourselves
        wire.encode_frame(type_, payload)


@pytest.mark.parametrize(
    ("obj", "reason"),
    [
        ({"v": 2, "t": "tx", "p": {}}, "unsupported_version"),
        ({"v": 1.0, "t": "tx", "p": {}}, "unsupported_version"),
        ({"v": 1, "t": "nope", "p": {}}, "unknown_type"),
        ({"v": 1, "t": 7, "p": {}}, "bad_envelope"),
        ({"v": 1, "t": "tx"}, "bad_envelope"),
        ([1, "tx", {}], "bad_envelope"),
    ],
)
def test_bad_envelopes(obj: object, reason: str) -> None:
    with pytest.raises(ProtocolViolation) as info:
        wire.decode_frame(encode(obj))
    assert info.value.reason == reason


def test_oversize_is_refused_before_decoding() -> None:
    # Not msgpack at all: only the size check can be what refuses it.
    with pytest.raises(ProtocolViolation) as info:
        wire.decode_frame(b"\xc1" * 101, max_frame=100)
    assert info.value.reason == "oversize"


def test_text_frames_are_refused() -> None:
    with pytest.raises(ProtocolViolation) as info:
        wire.decode_frame('{"v": 1}')  # type: ignore[arg-type]
    assert info.value.reason == "text_frame"


def test_outgoing_frame_over_limit_is_a_local_error() -> None:
    with pytest.raises(BadOutgoingMessage):
        wire.encode_frame(wire.TX, {"blob": b"x" * 200}, max_frame=100)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_remote_errors(data: bytes) -> None:
    with contextlib.suppress(ProtocolViolation, CodecError):
        wire.decode_frame(data)


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.binary(max_size=40)
    | st.text(max_size=20) | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=500, deadline=None)
@given(st.sampled_from([*sorted(wire.MESSAGE_TYPES), "x"]), _values, st.integers(0, 3))
def test_random_envelopes_only_raise_remote_errors(type_: str, payload: object, v: int) -> None:
    with contextlib.suppress(ProtocolViolation, CodecError):
        wire.decode_frame(encode({"v": v, "t": type_, "p": payload}))


def test_txs_frame_from_encoded_txs_is_the_canonical_frame() -> None:
    from node.ledger.codec import encode as enc

    txs = [{"kind": "reading", "body": {"seq": i, "t": 21.5}, "signer": K, "sig": SIG} for i in range(300)]
    assert wire.encode_txs_frame([enc(t) for t in txs]) == wire.encode_frame(wire.TXS, txs)
    assert wire.decode_frame(wire.encode_txs_frame([enc(t) for t in txs[:1]])).payload == txs[:1]
    with pytest.raises(BadOutgoingMessage):
        wire.encode_txs_frame([])
