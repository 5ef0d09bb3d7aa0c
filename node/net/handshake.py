"""The peer handshake as a sans-I/O state machine: bytes in, bytes, a verdict and a session out.

Both sides run the same symmetric protocol, in parallel (a Noise-XX-like exchange, as CometBFT's
SecretConnection: ephemeral Diffie-Hellman, then identity signatures over the transcript):

    1. send   hello {chain_id, genesis_hash, node, nonce, eph, listen_url[, role]}
              (`eph`: a fresh X25519 public key, one per connection)
    2. on the peer's hello: same chain id and genesis hash? (else refuse wrong_federation)
       not ourselves, not our own nonce or ephemeral key echoed? allowed by policy? then compute
              shared  = X25519(our eph, peer's eph)
              T       = sha256(b"fedledger/handshake/v1/" chain_id "/" canonical{genesis_hash,
                          sides: both {eph, node, nonce}, ordered by eph})
       and send
              proof {sig = sign(b"handshake", chain_id, {transcript: T, node: OUR key})}
    3. on the peer's proof: does it verify under the key the peer's hello named, over the same T?
       (else refuse bad_proof) -> established, with `session` = session.Session(keys from
       HKDF-SHA256(shared, salt=T), one per direction).

T holds the nonce we just made, so a proof cannot be replayed from another connection; it holds
both ephemeral keys, so a relay that swaps in its own (to learn the session keys) makes the two
sides compute different transcripts and every proof fails; it holds the genesis hash and the chain
id, so a proof is good for one federation only. A relay that forwards the handshake untouched ends
up between two sides that share keys it does not know: every frame after the handshake is sealed
(session.py), so it can neither read, inject, replay, reorder nor rewrite one.

No sockets and no clock here: the transport owns the websocket and the handshake timeout, and
turns a `Refusal` into a websocket close with its 4000-range code.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from node.errors import CodecError, LocalError, ProtocolViolation
from node.ledger.codec import encode
from node.ledger.keys import NodeKey, short_id, verify
from node.net import wire
from node.net.session import Session, derive_keys

HANDSHAKE_KIND = b"handshake"
TRANSCRIPT_DOMAIN = b"fedledger/handshake/v1/"
MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's reason fits in 125 bytes with its code


class CloseCode(IntEnum):
    """Application close codes (RFC 6455 reserves 4000-4999 for applications)."""

    WRONG_FEDERATION = 4001
    BAD_PROOF = 4002
    UNKNOWN_PEER = 4003
    PROTOCOL_VIOLATION = 4004
    MISBEHAVIOUR = 4005
    DUPLICATE = 4006  # a second connection to a peer we already have, or to ourselves
    SLOW_PEER = 4007  # its send queue overflowed with frames we may not drop
    HANDSHAKE_TIMEOUT = 4008
    BAD_SEAL = 4009  # a frame after the handshake did not open: tampered, replayed, reordered, injected
    BANNED = 4010  # this node key or address was cut off for misbehaviour and is banned for a while
    TOO_MANY_PEERS = 4011  # the inbound or total peer cap is reached


@dataclass(frozen=True, slots=True)
class Refusal:
    """Why a connection is refused: `reason` is a stable code (counted), `detail` is for humans."""

    code: CloseCode
    reason: str
    detail: str = ""

    def close_reason(self) -> str:
        """The websocket close reason, truncated on a character boundary to fit a close frame."""
        text = f"{self.reason}: {self.detail}" if self.detail else self.reason
        raw = text.encode()[:MAX_CLOSE_REASON_BYTES]
        return raw.decode(errors="ignore")


@dataclass(frozen=True, slots=True)
class PeerHello:
    """What the peer told us about itself; trustworthy only once the handshake is established."""

    key: bytes
    listen_url: str | None
    role: str | None
    nonce: bytes
    eph: bytes = b""

    @property
    def short_id(self) -> str:
        return short_id(self.key)


class State(Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"  # our hello is sent
    AWAIT_PROOF = "await_proof"  # their hello accepted, our proof sent
    ESTABLISHED = "established"
    REFUSED = "refused"


def transcript_hash(chain_id: str, genesis_hash: bytes, *sides: tuple[bytes, bytes, bytes]) -> bytes:
    """The handshake transcript both proofs sign and the session keys are salted with.

    `sides`: each side's (eph, node, nonce). Ordered by ephemeral key, so both ends compute the same
    bytes without agreeing on who is "initiator" (both send their hello at once)."""
    ordered = sorted(sides)
    body = {"genesis_hash": genesis_hash,
            "sides": [{"eph": e, "node": k, "nonce": n} for e, k, n in ordered]}
    return hashlib.sha256(TRANSCRIPT_DOMAIN + chain_id.encode() + b"/" + encode(body)).digest()


def proof_object(transcript: bytes, node: bytes) -> dict[str, Any]:
    """What a proof signs: the transcript (both nonces and ephemeral keys...) and the signer's key."""
    return {"transcript": transcript, "node": node}


def _raw_public(private: X25519PrivateKey) -> bytes:
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


class Handshake:
    """One side of one connection's handshake.

    Use: `start()`, send `data_to_send()`, then feed every received frame to `receive_data()` and
    send `data_to_send()` again, until `state` is ESTABLISHED (`peer` is set) or REFUSED
    (`refusal` is set: close the connection with `refusal.code` and `refusal.close_reason()`).
    """

    def __init__(
        self,
        key: NodeKey,
        chain_id: str,
        genesis_hash: bytes,
        nonce: bytes,
        listen_url: str | None = None,
        *,
        role: str | None = None,
        allowed: Callable[[bytes], bool] | None = None,
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        ephemeral: X25519PrivateKey | None = None,
    ) -> None:
        if len(nonce) != wire.NONCE_SIZE:
            raise LocalError(f"handshake nonce must be {wire.NONCE_SIZE} random bytes")
        if len(genesis_hash) != wire.HASH_SIZE:
            raise LocalError(f"genesis hash must be {wire.HASH_SIZE} bytes")
        self.key = key
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.nonce = nonce
        self.listen_url = listen_url
        self.role = role
        self.allowed = allowed
        self.max_frame = max_frame
        # One fresh X25519 key per connection: the session keys are forward secret, and differ
        # for every connection even between the same two nodes.
        self._ephemeral = ephemeral or X25519PrivateKey.generate()
        self.eph = _raw_public(self._ephemeral)
        self.state = State.START
        self.peer: PeerHello | None = None
        self.session: Session | None = None  # set when established
        self._shared = b""
        self._transcript = b""
        self.refusal: Refusal | None = None
        self._out: list[bytes] = []

    # -- inputs -----------------------------------------------------------------------------------

    def start(self) -> None:
        if self.state is not State.START:
            raise LocalError("handshake already started")
        hello: dict[str, Any] = {
            "chain_id": self.chain_id,
            "genesis_hash": self.genesis_hash,
            "node": self.key.public,
            "nonce": self.nonce,
            "eph": self.eph,
            "listen_url": self.listen_url,
        }
        if self.role is not None:
            hello["role"] = self.role
        self._out.append(wire.encode_frame(wire.HELLO, hello, max_frame=self.max_frame))
        self.state = State.AWAIT_HELLO

    def receive_data(self, data: bytes) -> None:
        """Feed one received frame. Never raises for anything the peer sent."""
        if self.state in (State.ESTABLISHED, State.REFUSED):
            raise LocalError(f"handshake is {self.state.value}; frames now belong to the session")
        if self.state is State.START:
            raise LocalError("call start() before feeding frames")
        try:
            env = wire.decode_frame(data, max_frame=self.max_frame)
        except ProtocolViolation as exc:
            self.refuse(CloseCode.PROTOCOL_VIOLATION, "protocol_violation", f"{exc.reason}: {exc.detail}")
            return
        except CodecError as exc:
            self.refuse(CloseCode.PROTOCOL_VIOLATION, "protocol_violation", str(exc))
            return
        if env.type == wire.HELLO and self.state is State.AWAIT_HELLO:
            self._on_hello(env.payload)
        elif env.type == wire.PROOF and self.state is State.AWAIT_PROOF:
            self._on_proof(env.payload)
        else:
            self.refuse(
                CloseCode.PROTOCOL_VIOLATION, "protocol_violation",
                f"unexpected {env.type} in state {self.state.value}",
            )

    def refuse(self, code: CloseCode, reason: str, detail: str = "") -> Refusal:
        """End the handshake with a refusal (also used by the transport, e.g. on timeout)."""
        self.refusal = Refusal(code, reason, detail)
        self.state = State.REFUSED
        return self.refusal

    # -- outputs ----------------------------------------------------------------------------------

    def data_to_send(self) -> list[bytes]:
        out, self._out = self._out, []
        return out

    @property
    def established(self) -> bool:
        return self.state is State.ESTABLISHED

    # -- transitions ------------------------------------------------------------------------------

    def _on_hello(self, p: dict[str, Any]) -> None:
        if p["chain_id"] != self.chain_id or p["genesis_hash"] != self.genesis_hash:
            self.refuse(
                CloseCode.WRONG_FEDERATION, "wrong_federation",
                f"peer is on chain {p['chain_id']!r} genesis {p['genesis_hash'].hex()[:16]},"
                f" we are on {self.chain_id!r} genesis {self.genesis_hash.hex()[:16]}",
            )
            return
        peer_key: bytes = p["node"]
        if peer_key == self.key.public:
            self.refuse(CloseCode.DUPLICATE, "self_connection", "connected to ourselves")
            return
        if p["nonce"] == self.nonce or p["eph"] == self.eph:
            # Only a reflection of our own hello can echo our fresh nonce or ephemeral key back.
            self.refuse(CloseCode.PROTOCOL_VIOLATION, "protocol_violation", "peer echoed our nonce or key")
            return
        if self.allowed is not None and not self.allowed(peer_key):
            self.refuse(CloseCode.UNKNOWN_PEER, "unknown_peer", f"node {short_id(peer_key)} is not admitted")
            return
        try:
            self._shared = self._ephemeral.exchange(X25519PublicKey.from_public_bytes(p["eph"]))
        except ValueError:  # a low-order point: the shared secret would be all zeros, known to anyone
            self.refuse(CloseCode.PROTOCOL_VIOLATION, "protocol_violation", "unusable ephemeral key")
            return
        self.peer = PeerHello(peer_key, p["listen_url"], p.get("role"), p["nonce"], p["eph"])
        self._transcript = transcript_hash(
            self.chain_id, self.genesis_hash,
            (self.eph, self.key.public, self.nonce), (p["eph"], peer_key, p["nonce"]),
        )
        proof = proof_object(self._transcript, self.key.public)
        sig = self.key.sign(HANDSHAKE_KIND, self.chain_id, proof)
        self._out.append(wire.encode_frame(wire.PROOF, {"sig": sig}, max_frame=self.max_frame))
        self.state = State.AWAIT_PROOF

    def _on_proof(self, p: dict[str, Any]) -> None:
        assert self.peer is not None  # AWAIT_PROOF is only entered with the peer's hello stored
        obj = proof_object(self._transcript, self.peer.key)
        if not verify(self.peer.key, p["sig"], HANDSHAKE_KIND, self.chain_id, obj):
            self.refuse(CloseCode.BAD_PROOF, "bad_proof", f"node {self.peer.short_id} did not prove its key")
            return
        send, recv = derive_keys(self._shared, self._transcript, first=self.eph < self.peer.eph)
        self.session = Session(send, recv, self._transcript)
        self._shared = b""  # the session holds what it needs; drop the secret
        self.state = State.ESTABLISHED
