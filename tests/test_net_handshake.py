"""The sans-I/O handshake: two state machines fed each other's bytes, no sockets."""

from __future__ import annotations

import os

import pytest

from node.ledger.codec import encode
from node.ledger.keys import NodeKey
from node.net import wire
from node.net.handshake import CloseCode, Handshake, State

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
    run(a1, b1)
    b1_proof = wire.encode_frame(wire.PROOF, {"sig": bob.sign(b"handshake", CHAIN, {
        "nonce": a1.nonce, "genesis_hash": GENESIS, "node": bob.public})})
    a2 = make()
    a2.start()
    hello = {"chain_id": CHAIN, "genesis_hash": GENESIS, "node": bob.public, "nonce": os.urandom(32),
             "listen_url": None}
    a2.receive_data(wire.encode_frame(wire.HELLO, hello))
    a2.receive_data(b1_proof)
    assert a2.refusal is not None and a2.refusal.reason == "bad_proof"


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
