"""Versioned wire envelopes: what every websocket frame between nodes (and clients) looks like.

A frame is one *binary* websocket message holding the canonical msgpack map
``{"v": 1, "t": <type>, "p": <payload>}``. This module is sans-I/O: bytes in, typed values out.

The payload validators here are structural only (types, sizes, bounds): they keep hostile shapes
out of the node cheaply and early, so the ledger and consensus code can index fields without
guarding every access. Whether a signature verifies or a block is valid is the ledger's business.

Errors: anything a remote sent that we refuse raises `ProtocolViolation` (or `CodecError` from the
codec for undecodable bytes); both are `RemoteError`s. Our own malformed outgoing frames raise
`BadOutgoingMessage` (a `LocalError`): a bug here must not be blamed on a peer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import msgpack

from node.errors import BadOutgoingMessage, ProtocolViolation
from node.ledger.codec import decode, encode

VERSION: Final = 1
DEFAULT_MAX_FRAME: Final = 4 * 1024 * 1024

# Bounds on fields. Generous for honest nodes, small enough that one frame cannot make us do much.
KEY_SIZE: Final = 32
HASH_SIZE: Final = 32
NONCE_SIZE: Final = 32
SIGNATURE_SIZE: Final = 64
MAX_CHAIN_ID_LEN: Final = 128
MAX_URL_LEN: Final = 256
MAX_ROLE_LEN: Final = 32
MAX_PEX_URLS: Final = 64
MAX_BLOCKS_BATCH: Final = 64
MAX_SYNC_TXS: Final = 10_000  # node.blocks.MAX_BLOCK_TXS
MAX_REASON_LEN: Final = 256

# Message types. Handshake first: nothing else is accepted from a peer until it completes.
HELLO: Final = "hello"
PROOF: Final = "proof"
# Peer protocol.
PEERS: Final = "peers"
TX: Final = "tx"
TXS: Final = "txs"  # a batch of txs: gossip at thousands of txs/s in few frames
PROPOSAL: Final = "proposal"
VOTE: Final = "vote"
STATUS: Final = "status"
GET_BLOCKS: Final = "get_blocks"
BLOCKS: Final = "blocks"
# Client protocol (websocket clients at /client; no handshake).
SUBMIT_TX: Final = "submit_tx"
TX_RESULT: Final = "tx_result"
SUBMIT_TXS: Final = "submit_txs"  # a batch, answered by one tx_results in the same order
TX_RESULTS: Final = "tx_results"
MAX_TX_BATCH: Final = 2000
MAX_CLIENT_TX_BATCH: Final = 500  # txs a client may put in one submit_txs frame (peers: MAX_TX_BATCH)
ERROR: Final = "error"

HANDSHAKE_TYPES: Final = frozenset({HELLO, PROOF})
PEER_TYPES: Final = frozenset({PEERS, TX, TXS, PROPOSAL, VOTE, STATUS, GET_BLOCKS, BLOCKS})
CLIENT_TYPES: Final = frozenset({SUBMIT_TX, TX_RESULT, SUBMIT_TXS, TX_RESULTS, ERROR})

# Frames a full send queue may drop: losing them costs latency, never safety or liveness (a tx is
# re-gossiped or re-submitted, peer lists and status are re-sent periodically). Everything else
# (consensus messages, block sync, replies) is kept until the hard queue bound, then the peer is
# cut off as too slow: it can catch up by block sync.
DROPPABLE_TYPES: Final = frozenset({TX, TXS, PEERS, STATUS, SUBMIT_TX})


@dataclass(frozen=True, slots=True)
class Envelope:
    type: str
    payload: Any


# -- field checks ---------------------------------------------------------------------------------


def _bad(detail: str) -> ProtocolViolation:
    return ProtocolViolation("bad_payload", detail)


def _map(obj: Any, what: str) -> dict[Any, Any]:
    if not isinstance(obj, dict):
        raise _bad(f"{what} must be a map, got {type(obj).__name__}")
    return obj


def _fields(
    p: Any, what: str, required: frozenset[str], optional: frozenset[str] = frozenset()
) -> dict[str, Any]:
    # Unknown fields are refused rather than ignored: a signed or hashed map with extra fields
    # would otherwise round-trip differently on different replicas.
    m = _map(p, what)
    keys = set(m)
    missing = required - keys
    if missing:
        raise _bad(f"{what} lacks {sorted(missing)}")
    extra = keys - required - optional
    if extra:
        raise _bad(f"{what} has unexpected fields {sorted(map(repr, extra))[:5]}")
    return m


def _int(v: Any, name: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    # bool is an int subclass in Python; a msgpack true must not pass as height 1.
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise _bad(f"{name} must be an int in [{lo}, {hi}]")
    return v


def _bytes(v: Any, name: str, size: int) -> bytes:
    if not isinstance(v, bytes) or len(v) != size:
        raise _bad(f"{name} must be {size} bytes")
    return v


def _str(v: Any, name: str, max_len: int, *, empty: bool = False) -> str:
    if not isinstance(v, str) or len(v) > max_len or (not empty and not v):
        raise _bad(f"{name} must be a {'' if empty else 'non-empty '}string of at most {max_len} chars")
    return v


def _url(v: Any, name: str) -> str:
    s = _str(v, name, MAX_URL_LEN)
    if not s.startswith(("ws://", "wss://")):
        raise _bad(f"{name} must be a ws:// or wss:// URL")
    return s


# -- payload validators ---------------------------------------------------------------------------


def _hello(p: Any) -> None:
    m = _fields(
        p,
        "hello",
        frozenset({"chain_id", "genesis_hash", "node", "nonce", "eph", "listen_url"}),
        frozenset({"role"}),
    )
    _str(m["chain_id"], "chain_id", MAX_CHAIN_ID_LEN)
    _bytes(m["genesis_hash"], "genesis_hash", HASH_SIZE)
    _bytes(m["node"], "node", KEY_SIZE)
    _bytes(m["nonce"], "nonce", NONCE_SIZE)
    _bytes(m["eph"], "eph", KEY_SIZE)  # X25519 public key, also 32 bytes
    if m["listen_url"] is not None:  # None: a node that does not accept inbound connections
        _url(m["listen_url"], "listen_url")
    if "role" in m and m["role"] is not None:
        _str(m["role"], "role", MAX_ROLE_LEN)


def _proof(p: Any) -> None:
    m = _fields(p, "proof", frozenset({"sig"}))
    _bytes(m["sig"], "sig", SIGNATURE_SIZE)


def _peers(p: Any) -> None:
    if not isinstance(p, list) or len(p) > MAX_PEX_URLS:
        raise _bad(f"peers must be a list of at most {MAX_PEX_URLS} URLs")
    for i, u in enumerate(p):
        _url(u, f"peers[{i}]")


def _tx(p: Any) -> None:
    _map(p, "tx")  # opaque here: transactions.py parses and validates it


def _proposal(p: Any) -> None:
    m = _fields(
        p,
        "proposal",
        frozenset({"height", "round", "block_id", "valid_round", "proposer", "signature", "block"}),
    )
    _int(m["height"], "height", 1)
    _int(m["round"], "round")
    _bytes(m["block_id"], "block_id", HASH_SIZE)
    _int(m["valid_round"], "valid_round", -1)  # -1 is the paper's "nil" validRound
    _bytes(m["proposer"], "proposer", KEY_SIZE)
    _bytes(m["signature"], "signature", SIGNATURE_SIZE)
    # The block travels as its canonical encoding (the proposer has it cached); the receiver
    # decodes it with the same limits as a frame.
    if not isinstance(m["block"], bytes) or len(m["block"]) > DEFAULT_MAX_FRAME:
        raise _bad("proposal.block must be the encoded block (bytes)")


def _vote(p: Any) -> None:
    m = _fields(p, "vote", frozenset({"type", "height", "round", "block_id", "validator", "signature"}))
    if type(m["type"]) is not int or m["type"] not in (1, 2):  # VoteType.PREVOTE / PRECOMMIT
        raise _bad("vote type must be 1 (prevote) or 2 (precommit)")
    _int(m["height"], "height", 1)
    _int(m["round"], "round")
    if m["block_id"] is not None:  # None is a nil vote
        _bytes(m["block_id"], "block_id", HASH_SIZE)
    _bytes(m["validator"], "validator", KEY_SIZE)
    _bytes(m["signature"], "signature", SIGNATURE_SIZE)


def _status(p: Any) -> None:
    m = _fields(p, "status", frozenset({"height", "head_hash"}))
    _int(m["height"], "height")
    _bytes(m["head_hash"], "head_hash", HASH_SIZE)


def _get_blocks(p: Any) -> None:
    m = _fields(p, "get_blocks", frozenset({"from", "to"}))
    lo = _int(m["from"], "from")
    hi = _int(m["to"], "to", lo)
    if hi - lo + 1 > MAX_BLOCKS_BATCH:  # inclusive range
        raise _bad(f"get_blocks asks for {hi - lo + 1} blocks, at most {MAX_BLOCKS_BATCH} per batch")


def _blocks(p: Any) -> None:
    # Each block travels as its stored parts (bytes): the server sends what it stores, and the
    # receiver hashes the tx bytes it got instead of re-encoding them (node/blocks.py).
    if not isinstance(p, list) or len(p) > MAX_BLOCKS_BATCH:
        raise _bad(f"blocks must be a list of at most {MAX_BLOCKS_BATCH} entries")
    for i, e in enumerate(p):
        m = _fields(e, f"blocks[{i}]", frozenset({"block", "txs", "commit"}))
        if not isinstance(m["block"], bytes) or not isinstance(m["commit"], bytes):
            raise _bad(f"blocks[{i}].block and .commit must be bytes")
        txs = m["txs"]
        if not isinstance(txs, list) or len(txs) > MAX_SYNC_TXS or not all(type(t) is bytes for t in txs):
            raise _bad(f"blocks[{i}].txs must be a list of at most {MAX_SYNC_TXS} encoded txs")


def _tx_result(p: Any) -> None:
    m = _fields(p, "tx_result", frozenset({"id", "accepted", "reason"}))
    if m["id"] is not None:  # None when the submission was too malformed to have an id
        _bytes(m["id"], "id", HASH_SIZE)
    if not isinstance(m["accepted"], bool):
        raise _bad("accepted must be a bool")
    if m["reason"] is not None:
        _str(m["reason"], "reason", MAX_REASON_LEN)


def _txs(p: Any) -> None:
    if not isinstance(p, list) or not 1 <= len(p) <= MAX_TX_BATCH:
        raise _bad(f"a tx batch must be a list of 1 to {MAX_TX_BATCH} txs")
    for i, t in enumerate(p):
        _map(t, f"txs[{i}]")


def _tx_results(p: Any) -> None:
    if not isinstance(p, list) or len(p) > MAX_TX_BATCH:
        raise _bad(f"tx_results must be a list of at most {MAX_TX_BATCH} results")
    for r in p:
        _tx_result(r)


def _error(p: Any) -> None:
    m = _fields(p, "error", frozenset({"reason"}), frozenset({"detail"}))
    _str(m["reason"], "reason", MAX_REASON_LEN)
    if "detail" in m:
        _str(m["detail"], "detail", MAX_REASON_LEN, empty=True)


VALIDATORS: Final[dict[str, Callable[[Any], None]]] = {
    HELLO: _hello,
    PROOF: _proof,
    PEERS: _peers,
    TX: _tx,
    PROPOSAL: _proposal,
    VOTE: _vote,
    STATUS: _status,
    GET_BLOCKS: _get_blocks,
    BLOCKS: _blocks,
    TXS: _txs,
    SUBMIT_TX: _tx,
    TX_RESULT: _tx_result,
    SUBMIT_TXS: _txs,
    TX_RESULTS: _tx_results,
    ERROR: _error,
}
MESSAGE_TYPES: Final = frozenset(VALIDATORS)


def validate_payload(type_: str, payload: Any) -> None:
    """Raise ProtocolViolation unless `payload` has the structure message type `type_` requires."""
    check = VALIDATORS.get(type_)
    if check is None:
        raise ProtocolViolation("unknown_type", repr(type_)[:64])
    check(payload)


# -- frames ---------------------------------------------------------------------------------------


def encode_frame(type_: str, payload: Any, *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Bytes of one frame. Validates our own payload too: peers would refuse it anyway, and a
    structural bug is far easier to find at the sender."""
    try:
        validate_payload(type_, payload)
    except ProtocolViolation as exc:
        raise BadOutgoingMessage(f"refusing to send invalid {type_!r} frame: {exc}") from exc
    data = encode({"v": VERSION, "t": type_, "p": payload})
    if len(data) > max_frame:
        raise BadOutgoingMessage(f"{type_!r} frame of {len(data)} bytes exceeds max_frame {max_frame}")
    return data


_TXS_HEAD = b"\x83" + encode("p")
_TXS_TAIL = encode("t") + encode(TXS) + encode("v") + encode(VERSION)


def encode_txs_frame(encoded_txs: list[bytes], *, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """A `txs` frame from txs already encoded canonically (parse_tx keeps their bytes): the same
    bytes as encode_frame(TXS, txs) without encoding each tx again. A canonical list is its
    header followed by its elements' encodings, and the envelope keys sort as p < t < v."""
    if not 1 <= len(encoded_txs) <= MAX_TX_BATCH:
        raise BadOutgoingMessage(f"a tx batch holds 1 to {MAX_TX_BATCH} txs, not {len(encoded_txs)}")
    data = b"".join((_TXS_HEAD, _array_header(len(encoded_txs)), *encoded_txs, _TXS_TAIL))
    if len(data) > max_frame:
        raise BadOutgoingMessage(f"txs frame of {len(data)} bytes exceeds max_frame {max_frame}")
    return data


def _array_header(n: int) -> bytes:
    return msgpack.Packer().pack_array_header(n)


def decode_frame(data: bytes, *, max_frame: int = DEFAULT_MAX_FRAME) -> Envelope:
    """Parse one received frame. Raises ProtocolViolation or CodecError, nothing else.

    The size check comes before decoding so an oversized frame costs no parsing at all.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolViolation("text_frame", "frames must be binary websocket messages")
    if len(data) > max_frame:
        raise ProtocolViolation("oversize", f"frame of {len(data)} bytes exceeds {max_frame}")
    obj = decode(bytes(data), max_frame)
    if not isinstance(obj, dict) or set(obj) != {"v", "t", "p"}:
        raise ProtocolViolation("bad_envelope", "expected a map with exactly v, t, p")
    if type(obj["v"]) is not int or obj["v"] != VERSION:  # not bool True, not float 1.0
        raise ProtocolViolation("unsupported_version", f"version {obj['v']!r}"[:64])
    t = obj["t"]
    if not isinstance(t, str):
        raise ProtocolViolation("bad_envelope", "type must be a string")
    validate_payload(t, obj["p"])
    return Envelope(t, obj["p"])
