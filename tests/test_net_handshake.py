"""The sans-I/O handshake and session: two state machines fed each other's bytes, no sockets."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.errors import ProtocolViolation
from node.ledger.codec import encode
from node.ledger.keys import NodeKey
from node.net import wire
from node.net.handshake import CloseCode, Handshake, State
from node.net.session import Session

CHAIN = "test-chain"
GENESIS = b"\x01" * 32


def make(key: NodeKey | None = None, **kw: object) -> Handshake:
    params: dict = {"chain_id": CHAIN, "genesis_hash": GENESIS, "listen_url": None}
    params.update(kw)
    return Handshake(key or NodeKey.generate(), nonce=os.urandom(32), **params)


def pump(a: Handshake, b: Handshake) -> None:
    """Deliver frames both ways until both are quiet (each side started already)."""
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for frame in src.data_to_send():
                moved = True
                if dst.state not in (State.ESTABLISHED, State.REFUSED):
                    dst.receive_data(frame)


def run(a: Handshake, b: Handshake) -> None:
    a.start()
    b.start()
    pump(a, b)


def test_alice_and_bob_prove_their_keys_to_each_other() -> None:
    alice, bob = NodeKey.generate(), NodeKey.generate()
    a = make(alice, listen_url="ws://127.0.0.1:1", role="authority")
    b = make(bob)
    run(a, b)
    assert a.established and b.established
    assert a.peer is not None and b.peer is not None
    assert a.peer.key == bob.public and b.peer.key == alice.public
    assert b.peer.listen_url == "ws://127.0.0.1:1" and b.peer.role == "authority"
    assert a.peer.role is None


def test_mallory_of_another_genesis_is_refused_as_wrong_federation() -> None:
    a, m = make(), make(genesis_hash=b"\x02" * 32)
    run(a, m)
    for side in (a, m):
        assert side.state is State.REFUSED
        assert side.refusal is not None and side.refusal.code == CloseCode.WRONG_FEDERATION == 4001
        assert "wrong_federation" in side.refusal.close_reason()


def test_other_chain_id_is_wrong_federation() -> None:
    a, m = make(), make(chain_id="other")
    run(a, m)
    assert a.refusal is not None and a.refusal.reason == "wrong_federation"


def test_proof_with_a_bad_signature_is_refused() -> None:
    a, m = make(), make()
    a.start()
    m.start()
    a.receive_data(m.data_to_send()[0])  # m's hello
    m.receive_data(a.data_to_send()[0])
    proof = m.data_to_send()[0]
    env = wire.decode_frame(proof)
    forged = bytearray(env.payload["sig"])
    forged[0] ^= 1
    a.receive_data(wire.encode_frame(wire.PROOF, {"sig": bytes(forged)}))
    assert a.refusal is not None and a.refusal.code == CloseCode.BAD_PROOF == 4002


def test_proof_replayed_from_another_connection_is_refused() -> None:
    # Mallory claims Bob's key and replays the proof Bob gave on an earlier connection.
    bob = NodeKey.generate()
    a1, b1 = make(), make(bob)
    a1.start()
    b1.start()
    hello_b1 = b1.data_to_send()[0]
    b1.receive_data(a1.data_to_send()[0])
    b1_proof = b1.data_to_send()[0]  # signs a1's transcript
    a2 = make()
    a2.start()
    a2.receive_data(hello_b1)  # the same hello as Bob's, ephemeral key and all
    a2.receive_data(b1_proof)
    assert a2.refusal is not None and a2.refusal.reason == "bad_proof"


def test_each_side_gets_two_directional_keys_that_match_the_other_side() -> None:
    a, b = make(), make()
    run(a, b)
    assert a.session is not None and b.session is not None
    assert a.session.send_key == b.session.recv_key and a.session.recv_key == b.session.send_key
    assert a.session.send_key != a.session.recv_key
    assert a.session.transcript == b.session.transcript
    # Both directions work, in order.
    for src, dst in ((a.session, b.session), (b.session, a.session)):
        for n in range(3):
            assert dst.open(src.seal(b"frame %d" % n)) == b"frame %d" % n


def test_session_keys_differ_per_connection_between_the_same_two_nodes() -> None:
    alice, bob = NodeKey.generate(), NodeKey.generate()
    keys = set()
    for _ in range(3):
        a, b = make(alice), make(bob)
        run(a, b)
        assert a.session is not None
        keys |= {a.session.send_key, a.session.recv_key}
    assert len(keys) == 6


def _seal_pair() -> tuple[Session, Session]:
    a, b = make(), make()
    run(a, b)
    assert a.session is not None and b.session is not None
    return a.session, b.session


def test_tampered_replayed_reordered_and_forged_frames_do_not_open() -> None:
    a, b = _seal_pair()
    c1, c2, c3 = a.seal(b"one"), a.seal(b"two"), a.seal(b"three")
    assert b.open(c1) == b"one"
    with pytest.raises(ProtocolViolation) as exc:
        b.open(c1)  # replayed
    assert exc.value.reason == "bad_seal"
    a2, b2 = _seal_pair()
    _d1, d2 = a2.seal(b"one"), a2.seal(b"two")
    with pytest.raises(ProtocolViolation):
        b2.open(d2)  # reordered: d2 before d1
    a3, b3 = _seal_pair()
    e1 = bytearray(a3.seal(b"payload"))
    e1[0] ^= 1
    with pytest.raises(ProtocolViolation):
        b3.open(bytes(e1))  # tampered
    with pytest.raises(ProtocolViolation):
        b3.open(wire.encode_frame(wire.STATUS, {"height": 1, "head_hash": GENESIS}))  # plaintext
    with pytest.raises(ProtocolViolation):
        b3.open(b"")  # shorter than a tag
    with pytest.raises(ProtocolViolation):
        b.open(c3)  # c2 skipped
    assert c2  # (sealed, never delivered)


class Relay:
    """Mallory in the middle: relays the handshake between Alice and Bob, substituting its own
    ephemeral keys if `swap_eph`, then holds whatever it can compute."""

    def __init__(self, swap_eph: bool) -> None:
        self.swap_eph = swap_eph

    def relay(self, frame: bytes) -> bytes:
        env = wire.decode_frame(frame)
        if self.swap_eph and env.type == wire.HELLO:
            mine = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
            return wire.encode_frame(wire.HELLO, {**env.payload, "eph": mine})
        return frame


def _through(relay: Relay, a: Handshake, b: Handshake) -> None:
    a.start()
    b.start()
    moved = True
    while moved:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for frame in src.data_to_send():
                moved = True
                if dst.state not in (State.ESTABLISHED, State.REFUSED):
                    dst.receive_data(relay.relay(frame))


def test_a_relay_that_swaps_in_its_own_ephemeral_keys_fails_both_proofs() -> None:
    """Issue 11, finding 8: the proofs sign the transcript with both ephemeral keys, so a relay
    cannot put itself in the key exchange (before the fix the proof signed only the nonce and a
    relay could sit between two honest nodes undetected)."""
    a, b = make(), make()
    _through(Relay(swap_eph=True), a, b)
    for side in (a, b):
        assert side.refusal is not None and side.refusal.code == CloseCode.BAD_PROOF
        assert side.session is None


def test_a_relay_that_forwards_the_handshake_cannot_inject_or_rewrite_frames() -> None:
    a, b = make(), make()
    _through(Relay(swap_eph=False), a, b)  # an honest forward: both ends are established ...
    assert a.session is not None and b.session is not None
    # ... but the relay holds no session key: what it writes in Alice's name does not open at Bob.
    forged = wire.encode_frame(wire.STATUS, {"height": 9, "head_hash": GENESIS})
    with pytest.raises(ProtocolViolation):
        b.session.open(forged)
    a2, b2 = make(), make()
    _through(Relay(swap_eph=False), a2, b2)
    assert a2.session is not None and b2.session is not None
    sealed = bytearray(a2.session.seal(wire.encode_frame(wire.STATUS, {"height": 1, "head_hash": GENESIS})))
    sealed[-20] ^= 0xFF  # a rewritten byte of the payload
    with pytest.raises(ProtocolViolation):
        b2.session.open(bytes(sealed))


def test_a_low_order_ephemeral_key_is_refused() -> None:
    a = make()
    a.start()
    hello = {"chain_id": CHAIN, "genesis_hash": GENESIS, "node": NodeKey.generate().public,
             "nonce": os.urandom(32), "eph": b"\x00" * 32, "listen_url": None}
    a.receive_data(wire.encode_frame(wire.HELLO, hello))
    assert a.refusal is not None and a.refusal.code == CloseCode.PROTOCOL_VIOLATION


def test_policy_refuses_unknown_peers() -> None:
    friend = NodeKey.generate()
    a = make(allowed=lambda k: k == friend.public)
    run(a, make())
    assert a.refusal is not None and a.refusal.code == CloseCode.UNKNOWN_PEER == 4003
    a2 = make(allowed=lambda k: k == friend.public)
    b2 = make(friend)
    run(a2, b2)
    assert a2.established and b2.established


def test_connecting_to_ourselves_is_refused() -> None:
    me = NodeKey.generate()
    a, b = make(me), make(me)
    run(a, b)
    assert a.refusal is not None and a.refusal.code == CloseCode.DUPLICATE == 4006
    assert a.refusal.reason == "self_connection"


def test_reflected_hello_is_refused() -> None:
    a = make()
    a.start()
    a.receive_data(a.data_to_send()[0])  # our own hello bounced back
    assert a.refusal is not None and a.refusal.reason == "self_connection"


@pytest.mark.parametrize(
    "frame",
    [
        b"\xc1garbage",
        encode({"v": 1, "t": "tx", "p": {}}),  # app traffic before the handshake
        wire.encode_frame(wire.PROOF, {"sig": b"\x00" * 64}),  # proof before hello
        encode({"v": 1, "t": "hello", "p": {"chain_id": CHAIN}}),
    ],
)
def test_anything_out_of_order_is_a_protocol_violation(frame: bytes) -> None:
    a = make()
    a.start()
    a.receive_data(frame)
    assert a.refusal is not None and a.refusal.code == CloseCode.PROTOCOL_VIOLATION == 4004


def test_close_reason_fits_a_close_frame() -> None:
    a = make()
    a.start()
    r = a.refuse(CloseCode.PROTOCOL_VIOLATION, "protocol_violation", "é" * 200)
    assert len(r.close_reason().encode()) <= 123
