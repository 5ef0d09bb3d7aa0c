"""The peer handshake as a sans-I/O state machine: bytes in, bytes and a verdict out.

Both sides run the same symmetric protocol, in parallel:

    1. send   hello {chain_id, genesis_hash, node, nonce, listen_url[, role]}
    2. on the peer's hello: same chain id and genesis hash? (else refuse wrong_federation)
       not ourselves? allowed by policy? then send
              proof {sig = sign(b"handshake", chain_id, {nonce: PEER's nonce, genesis_hash, node: OUR key})}
    3. on the peer's proof: does it verify under the key the peer's hello named, over the nonce WE
       sent? (else refuse bad_proof) -> established.

Signing the peer's fresh nonce proves possession of the key *now* (no replay of an old proof);
the genesis hash and the chain id (in the signing domain) bind the proof to one federation. There
is no channel binding: without TLS a relay could splice two honest nodes together, which gains
it nothing that forwarding their (signed) messages would not.

No sockets and no clock here: the transport owns the websocket and the handshake timeout, and
turns a `Refusal` into a websocket close with its 4000-range code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import Any

from node.errors import CodecError, LocalError, ProtocolViolation
from node.ledger.keys import NodeKey, short_id, verify
from node.net import wire

HANDSHAKE_KIND = b"handshake"
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

    @property
    def short_id(self) -> str:
        return short_id(self.key)


class State(Enum):
    START = "start"
    AWAIT_HELLO = "await_hello"  # our hello is sent
    AWAIT_PROOF = "await_proof"  # their hello accepted, our proof sent
    ESTABLISHED = "established"
    REFUSED = "refused"


def proof_object(nonce: bytes, genesis_hash: bytes, node: bytes) -> dict[str, Any]:
    """What a proof signs: the *other* side's nonce, the genesis hash, and the signer's own key."""
    return {"nonce": nonce, "genesis_hash": genesis_hash, "node": node}


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
        self.state = State.START
        self.peer: PeerHello | None = None
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
        if p["nonce"] == self.nonce:
            # Only a reflection of our own hello can echo our fresh nonce back.
            self.refuse(CloseCode.PROTOCOL_VIOLATION, "protocol_violation", "peer echoed our nonce")
            return
        if self.allowed is not None and not self.allowed(peer_key):
            self.refuse(CloseCode.UNKNOWN_PEER, "unknown_peer", f"node {short_id(peer_key)} is not admitted")
            return
        self.peer = PeerHello(peer_key, p["listen_url"], p.get("role"), p["nonce"])
        proof = proof_object(p["nonce"], self.genesis_hash, self.key.public)
        sig = self.key.sign(HANDSHAKE_KIND, self.chain_id, proof)
        self._out.append(wire.encode_frame(wire.PROOF, {"sig": sig}, max_frame=self.max_frame))
        self.state = State.AWAIT_PROOF

    def _on_proof(self, p: dict[str, Any]) -> None:
        assert self.peer is not None  # AWAIT_PROOF is only entered with the peer's hello stored
        obj = proof_object(self.nonce, self.genesis_hash, self.peer.key)
        if not verify(self.peer.key, p["sig"], HANDSHAKE_KIND, self.chain_id, obj):
            self.refuse(CloseCode.BAD_PROOF, "bad_proof", f"node {self.peer.short_id} did not prove its key")
            return
        self.state = State.ESTABLISHED
