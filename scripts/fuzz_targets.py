"""Fuzz targets for the parsers that face the network, and the contract every input must keep
(issue 11): scripts/fuzz.py runs them at volume, tests/test_fuzz_corpus.py replays the kept corpus.

A target takes one input (bytes) and drives it through the code a node runs on received bytes:
the frame decoder and what consumes each frame type, the transaction parser, the block and
certificate parsers, the handshake, and the node API (HTTP GET, /client) on a small real ledger.
The contract: only the target's documented error classes escape, nothing else; a reply the API
builds can be sent (encode_frame, JSON). `check(name, data)` returns None or a `Finding`.

Seeds are valid encodings built from real keys, blocks and certificates (tests/factories.py), so
mutations start inside the shapes a parser accepts and reach the code behind each check.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from consensus.messages import Proposal, Vote, VoteType
from node.errors import (
    CodecError,
    InvalidBlock,
    InvalidTransaction,
    ProtocolViolation,
    RemoteError,
)
from node.host.core import ConsensusHost, HostConfig, TxResult
from node.ledger.blocks import (
    Block,
    Commit,
    block_from_parts,
    block_row_bytes,
    canonical_commit,
    commit_from_bytes,
)
from node.ledger.chain import Ledger
from node.ledger.codec import decode, encode, hexify
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.keys import NodeKey, sign_proposal, sign_vote, verify_proposal, verify_vote
from node.ledger.mempool import Mempool
from node.ledger.signer import sign_commit
from node.ledger.transactions import (
    make_join_request,
    make_member_vote,
    make_model_commit,
    make_model_update,
    make_reading,
    make_register_device,
    make_train_request,
    parse_encoded_tx,
    parse_tx,
)
from node.net import handshake as hs
from node.net import wire
from node.net.consensus_wire import proposal_from_wire, proposal_to_wire
from node.net.gateway import HttpBody
from node.net.sync import decode_items
from node.server.api import NodeApi
from node.store.sqlite import SqliteStore

# -- deterministic keys and a certified ledger, from the library alone (scripts import no tests) ------

GENESIS_TIME_MS = 1_700_000_000_000
BLOCK_INTERVAL_MS = 1000


def key_from(label: str) -> NodeKey:
    return NodeKey.from_seed(hashlib.sha256(label.encode()).digest())


def make_genesis(n: int) -> tuple[list[NodeKey], Genesis]:
    """n authorities in validator-set order (keys[i] is validator i)."""
    keys = sorted((key_from(f"fuzz/authority/{i}") for i in range(n)), key=lambda k: k.public)
    members = tuple(GenesisMember(k.public, f"authority-{i}") for i, k in enumerate(keys))
    return keys, Genesis(chain_id="fuzz-chain", genesis_time_ms=GENESIS_TIME_MS, authorities=members)


def make_block(ledger: Ledger, keys: list[NodeKey], txs: list[dict[str, Any]],
               time_ms: int | None = None) -> tuple[Block, Commit]:
    h = ledger.height + 1
    proposer = ledger.validators_at(h).proposer(h, 0)
    at = ledger.head_time_ms + BLOCK_INTERVAL_MS if time_ms is None else time_ms
    block = ledger.make_next_block(proposer, 0, at, list(txs))
    return block, sign_commit(keys, ledger.chain_id, h, 0, block.hash)


def populated_ledger(
    ledger: Ledger, keys: list[NodeKey], n_devices: int = 2, n_blocks: int = 3
) -> list[NodeKey]:
    """A block registering the devices, then blocks of their readings, each committed."""
    devices = [key_from(f"fuzz/device/{i}") for i in range(n_devices)]
    regs = [make_register_device(keys[0], ledger.chain_id, d.public, f"d{i}") for i, d in enumerate(devices)]
    ledger.commit(*make_block(ledger, keys, regs))
    for b in range(n_blocks):
        at = ledger.head_time_ms + BLOCK_INTERVAL_MS
        txs = [make_reading(d, ledger.chain_id, b * 3 + s + 1, at - 500 + s, 21.0 + s, 40.0 + s)
               for d in devices for s in range(3)]
        ledger.commit(*make_block(ledger, keys, txs, time_ms=at))
    return devices


CORPUS_DIR = Path(__file__).resolve().parent.parent / "tests" / "fuzz_corpus"
MAX_INPUT = 64 * 1024  # what the fuzzer generates; frames up to 4 MiB are refused by size alone
# Transient memory one input may take (tracemalloc peak). A frame is at most 4 MiB; decoding one
# of the fuzzer's inputs (at most 64 KiB) into more than this is an amplification to fix.
MAX_PEAK_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    target: str
    kind: str  # "crash" (an exception outside the contract), "contract" (a bad reply) or "memory"
    error: str
    where: str  # the innermost frame of our code: dedupes one bug found by many inputs

    def key(self) -> tuple[str, str, str]:
        return self.target, self.kind, self.where


class Breach(Exception):
    """The input was handled but the result breaks the contract (e.g. a reply that cannot be sent)."""


# -- a small real federation, built once per process ------------------------------------------------


class _QuietIO:
    """HostIO that drops everything: the fuzzed host must not grow a trace per input."""

    def __init__(self, now_ms: int) -> None:
        self.now = now_ms

    def now_ms(self) -> int:
        return self.now

    def call_later(self, delay_ms: int, callback: Callable[[], None]) -> None:
        pass

    def persist_signed_state(self, state: Any) -> None:
        pass

    def broadcast(self, message: Any) -> None:
        pass

    def gossip_txs(self, txs: list[Any]) -> None:
        pass

    def committed(self, block: Any, commit: Any, delta: Any, synced: bool) -> None:
        pass

    def rejected(self, block: Any, error: Any, synced: bool) -> None:
        pass

    def height_started(self, height: int) -> None:
        pass

    def halted(self, error: Exception) -> None:
        pass


class _ApiNode:
    """The NodeView the API reads: a real store and a real consensus host behind accept_txs."""

    def __init__(self, ledger: Ledger, host: ConsensusHost) -> None:
        self.ledger = ledger
        self.host = host

    @property
    def store(self) -> Any:
        return self.ledger.store

    @property
    def genesis(self) -> Genesis:
        return self.ledger.genesis

    def status(self) -> dict[str, Any]:
        return {"height": self.ledger.height, "head": self.ledger.head_hash}

    def peers_json(self) -> list[dict[str, Any]]:
        return [{"node": b"\x01" * 32, "url": "ws://127.0.0.1:1"}]

    def finality(self, last: int) -> dict[str, Any]:
        return {"last": last, "samples": []}

    def accept_txs(self, raws: list[Any]) -> list[TxResult]:
        return self.host.accept_txs(raws)

    def device_refusals(self, device: bytes) -> dict[str, int]:
        return self.host.refusals.of(device)


@dataclass
class Env:
    keys: list[NodeKey]
    genesis: Genesis
    ledger: Ledger  # SqliteStore, 4 committed blocks (devices, then readings)
    api: NodeApi
    devices: list[NodeKey]
    peer_key: NodeKey  # the other side of the handshakes
    tmp: tempfile.TemporaryDirectory[str]


@functools.cache
def env() -> Env:
    keys, genesis = make_genesis(4)
    # scripts/fuzz.py names its run's directory: its workers end by os._exit (libFuzzer's way),
    # which skips this directory's cleanup, and the run's own cleanup then takes it.
    tmp = tempfile.TemporaryDirectory(prefix="fedledger-fuzz-", dir=os.environ.get("FEDLEDGER_FUZZ_TMP"))
    ledger = Ledger(SqliteStore(Path(tmp.name) / "node.db"), genesis)
    devices = populated_ledger(ledger, keys)
    io = _QuietIO(ledger.head_time_ms + 1000)
    host = ConsensusHost(ledger, Mempool(ledger.params), keys[0], io, HostConfig(max_block_txs=100,
                                                                                 commit_delay_ms=10))
    host.start()
    return Env(keys, genesis, ledger, NodeApi(_ApiNode(ledger, host)), devices, key_from("fuzz/peer"), tmp)


# -- seeds ------------------------------------------------------------------------------------------


def _sample_txs(e: Env) -> list[dict[str, Any]]:
    chain = e.genesis.chain_id
    k, d = e.keys[0], e.devices[0]
    run = b"\x11" * 32
    newcomer = key_from("fuzz/newcomer")
    return [
        make_reading(d, chain, 10_000, GENESIS_TIME_MS + 5_000, 21.5, 40.0, {"co2": 400, "room": "a1"}),
        make_join_request(newcomer, chain, "participant", "newcomer", "ws://127.0.0.1:9/"),
        make_member_vote(k, chain, newcomer.public, "participant", "add"),
        make_train_request(k, chain, "smart-building", 3, "fedavg", {"lr": 0.01, "local_epochs": 1}),
        make_model_update(k, chain, run, "smart-building", 0, b"\x22" * 32, b"weights!", 128,
                          {"loss": 0.5}, b"\x33" * 32),
        make_model_commit(k, chain, run, "smart-building", 0, "fedavg", [b"\x44" * 32], b"\x55" * 32,
                          {"loss": 0.4}),
    ]


def _real_blocks(e: Env) -> tuple[Block, Commit, Block, Commit]:
    store = e.ledger.store
    b2, c2 = store.block(2), store.commit(2)
    assert b2 is not None and c2 is not None
    # the next block, not committed: it carries a last_commit and a tx of every kind's shape
    block, commit = make_block(e.ledger, e.keys, [_sample_txs(e)[0]])
    return b2, c2, block, commit


def _proposal(e: Env, block: Block) -> Proposal:
    proposer = e.ledger.validators_at(block.height).proposer(block.height, block.header.round)
    key = next(k for k in e.keys if k.public == proposer)
    return sign_proposal(key, e.genesis.chain_id,
                         Proposal(block.height, block.header.round, block, block.hash, -1, proposer))


def _frames(e: Env) -> list[bytes]:
    b2, _c2, block, commit = _real_blocks(e)
    chain, txs = e.genesis.chain_id, _sample_txs(e)
    vote = sign_vote(e.keys[1], chain, Vote(VoteType.PREVOTE, block.height, 0, block.hash, e.keys[1].public))
    nil = sign_vote(e.keys[2], chain, Vote(VoteType.PRECOMMIT, block.height, 1, None, e.keys[2].public))
    parts = e.ledger.store.block_parts(2)
    assert parts is not None
    item = {"block": parts[0], "txs": parts[1], "commit": parts[2]}
    f = wire.encode_frame
    return [
        f(wire.HELLO, _hello(e, e.peer_key, b"\x01" * 32)),
        f(wire.PROOF, {"sig": b"\x02" * 64}),
        f(wire.PEERS, ["ws://127.0.0.1:9000", "wss://example.org/p2p"]),
        f(wire.TX, txs[0]),
        f(wire.TXS, txs),
        f(wire.PROPOSAL, proposal_to_wire(_proposal(e, block))),
        f(wire.VOTE, vote.to_wire()),
        f(wire.VOTE, nil.to_wire()),
        f(wire.STATUS, {"height": 4, "head_hash": b2.hash}),
        f(wire.GET_BLOCKS, {"from": 1, "to": 4}),
        f(wire.BLOCKS, [item, {"block": block_row_bytes(block), "txs": [encode(t) for t in block.txs],
                               "commit": encode(commit.to_dict())}]),
        f(wire.SUBMIT_TX, txs[1]),
        f(wire.SUBMIT_TXS, txs[:3]),
        f(wire.TX_RESULT, {"id": b"\x03" * 32, "accepted": False, "reason": "bad_signature"}),
        f(wire.TX_RESULTS, [{"id": None, "accepted": False, "reason": "malformed"}]),
        f(wire.ERROR, {"reason": "unsupported", "detail": "x"}),
    ]


def _hello(e: Env, key: NodeKey, nonce: bytes) -> dict[str, Any]:
    return {"chain_id": e.genesis.chain_id, "genesis_hash": e.ledger.genesis_hash, "node": key.public,
            "nonce": nonce, "eph": _x25519_public(_PEER_EPH), "listen_url": "ws://127.0.0.1:7000",
            "role": "authority"}


_OUR_NONCE, _PEER_NONCE = b"\xaa" * 32, b"\xbb" * 32
# Fixed ephemeral keys, so the proof seed signs the transcript our side will compute.
_OUR_EPH, _PEER_EPH = b"\x01" * 32, b"\x02" * 32


def _x25519(seed: bytes) -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(seed)


def _x25519_public(seed: bytes) -> bytes:
    return _x25519(seed).public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def _handshake_seeds(e: Env) -> list[bytes]:
    transcript = hs.transcript_hash(
        e.genesis.chain_id, e.ledger.genesis_hash,
        (_x25519_public(_OUR_EPH), e.keys[0].public, _OUR_NONCE),
        (_x25519_public(_PEER_EPH), e.peer_key.public, _PEER_NONCE),
    )
    proof = hs.proof_object(transcript, e.peer_key.public)
    sig = e.peer_key.sign(hs.HANDSHAKE_KIND, e.genesis.chain_id, proof)
    return [wire.encode_frame(wire.HELLO, _hello(e, e.peer_key, _PEER_NONCE)),
            wire.encode_frame(wire.PROOF, {"sig": sig})]


def _http_seeds(e: Env) -> list[bytes]:
    rec = e.ledger.store.block(2)
    assert rec is not None
    txid = rec.tx_ids[0].hex()
    return [p.encode() for p in ("/status", "/", "/genesis", "/members", "/peers", "/devices",
                                  "/blocks?from=1&to=4", "/blocks", "/block/2", "/block/4", f"/tx/{txid}",
                                  "/finality?last=5", "/explorer/app.js", "/activity?last=3",
                                  f"/device/{e.devices[0].public.hex()}?last=5", "/runs", "/run/" + "11" * 32,
                                  "/model/" + "11" * 32 + "/1")]


def _client_seeds(e: Env) -> list[bytes]:
    chain = e.genesis.chain_id
    d = e.devices[1]
    fresh = [make_reading(d, chain, 1000 + i, e.ledger.head_time_ms - 1000 + i, 20.0, 40.0) for i in range(3)]
    return [wire.encode_frame(wire.SUBMIT_TX, fresh[0]), wire.encode_frame(wire.SUBMIT_TXS, fresh[1:]),
            wire.encode_frame(wire.SUBMIT_TX, _sample_txs(e)[3]),
            wire.encode_frame(wire.TX_RESULT, {"id": None, "accepted": False, "reason": None})]


def seeds(name: str) -> list[bytes]:
    e = env()
    if name == "frame":
        return _frames(e)
    if name == "tx":
        return [encode(t) for t in _sample_txs(e)]
    if name == "block":
        b2, _, block, _ = _real_blocks(e)
        return [encode(b2.to_wire()), encode(block.to_wire()), block_row_bytes(block)]
    if name == "commit":
        _, c2, _, commit = _real_blocks(e)
        return [encode(c2.to_dict()), encode(commit.to_dict())]
    if name == "handshake":
        return _handshake_seeds(e)
    if name == "http":
        return _http_seeds(e)
    if name == "client":
        return _client_seeds(e)
    raise KeyError(name)


# -- targets ----------------------------------------------------------------------------------------

REMOTE = (ProtocolViolation, CodecError, InvalidBlock, InvalidTransaction)


def _after_block(block: Block) -> None:
    # What the node reads off a parsed block next: its id, its tx ids, its stored encodings.
    block.hash  # noqa: B018 - computing it is the check
    block.wire_bytes  # noqa: B018
    block_row_bytes(block)
    with contextlib.suppress(CodecError):  # documented for a tx that cannot be encoded
        block.tx_ids  # noqa: B018


def run_frame(data: bytes) -> None:
    """decode_frame, then what the node does with each frame type it accepts from a peer."""
    e = env()
    chain = e.genesis.chain_id
    env_ = wire.decode_frame(data)
    t, p = env_.type, env_.payload
    if t == wire.VOTE:
        verify_vote(chain, Vote.from_wire(p))
    elif t == wire.PROPOSAL:
        prop = proposal_from_wire(p)
        _after_block(prop.value)
        verify_proposal(chain, prop)
    elif t in (wire.TX, wire.SUBMIT_TX):
        parse_tx(p).signature_valid(chain)
    elif t in (wire.TXS, wire.SUBMIT_TXS):
        for raw in p:
            with contextlib.suppress(InvalidTransaction):
                parse_tx(raw)
    elif t == wire.BLOCKS:
        for block, commit in decode_items(p):
            _after_block(block)
            with contextlib.suppress(InvalidBlock):
                canonical_commit(commit, e.ledger.validators_at(2), chain, commit.block_id, commit.height)
    # A frame we accept must be one we could send: validation is the same in both directions.
    wire.encode_frame(t, p)


def run_tx(data: bytes) -> None:
    e = env()
    try:
        tx = parse_encoded_tx(data)
        tx.signature_valid(e.genesis.chain_id)
    except InvalidTransaction:
        pass
    tx = parse_tx(decode(data))
    if encode(tx.raw) != tx.encoded:
        raise Breach("parse_tx's encoding differs from the codec's")
    tx.signature_valid(e.genesis.chain_id)


def run_block(data: bytes) -> None:
    with contextlib.suppress(InvalidBlock):
        _after_block(block_from_parts(data, ()))
    _after_block(Block.from_wire(decode(data)))


def run_commit(data: bytes) -> None:
    e = env()
    with contextlib.suppress(InvalidBlock):
        commit_from_bytes(data)
    commit = Commit.from_dict(decode(data))
    commit.hash  # noqa: B018
    vset = e.ledger.validators_at(2)
    canonical_commit(commit, vset, e.genesis.chain_id, commit.block_id, commit.height)


_SETTLED = (hs.State.AWAIT_PROOF, hs.State.ESTABLISHED, hs.State.REFUSED)


def _check_handshake(h: hs.Handshake) -> None:
    if h.state not in _SETTLED:
        raise Breach(f"handshake left in state {h.state}")
    if h.state is hs.State.REFUSED:
        assert h.refusal is not None
        if len(h.refusal.close_reason().encode()) > hs.MAX_CLOSE_REASON_BYTES:
            raise Breach("close reason does not fit a close frame")
    for frame in h.data_to_send():
        wire.decode_frame(frame)  # what we send must be what a peer accepts


def run_handshake(data: bytes) -> None:
    """The frame as the peer's hello, and as its proof after a good hello: receive_data never raises."""
    e = env()
    chain, gh = e.genesis.chain_id, e.ledger.genesis_hash
    ours = e.keys[0]
    first = hs.Handshake(ours, chain, gh, _OUR_NONCE, "ws://127.0.0.1:7001", ephemeral=_x25519(_OUR_EPH))
    first.start()
    first.data_to_send()
    first.receive_data(data)
    _check_handshake(first)
    second = hs.Handshake(ours, chain, gh, _OUR_NONCE, None, allowed=lambda k: True,
                          ephemeral=_x25519(_OUR_EPH))
    second.start()
    second.receive_data(wire.encode_frame(wire.HELLO, _hello(e, e.peer_key, _PEER_NONCE)))
    second.data_to_send()
    second.receive_data(data)
    _check_handshake(second)


def run_http(data: bytes) -> None:
    """The request target as the gateway splits it (path ? query, parse_qsl)."""
    text = data.decode("utf-8", "replace")
    path, _, query = text.partition("?")
    result = env().api.handle_http(path, dict(parse_qsl(query)))
    if result is None:
        return
    status, body = result
    if type(status) is not int or not 200 <= status < 600:
        raise Breach(f"status {status!r}")
    if isinstance(body, HttpBody):  # the explorer's files, sent as they are
        if status != 200 or not body.data:
            raise Breach(f"explorer file answered {status} with {len(body.data)} bytes")
        return
    json.dumps(hexify(body), default=str)  # what gateway.json_response sends


def run_client(data: bytes) -> None:
    """A /client frame: decoded, handed to the API (RemoteError is answered as an error frame),
    and its reply must be a frame the gateway can send."""
    env_ = wire.decode_frame(data)
    if env_.type in wire.HANDSHAKE_TYPES:
        return  # the gateway answers these itself
    try:
        reply = env().api.handle_client(env_.type, env_.payload)
    except RemoteError:
        return
    if reply is not None:
        wire.encode_frame(reply[0], reply[1])


@dataclass(frozen=True)
class Target:
    name: str
    run: Callable[[bytes], None]
    allowed: tuple[type[BaseException], ...]


TARGETS: dict[str, Target] = {
    t.name: t
    for t in (
        Target("frame", run_frame, REMOTE),
        Target("tx", run_tx, (CodecError, InvalidTransaction)),
        Target("block", run_block, (CodecError, InvalidBlock)),
        Target("commit", run_commit, (CodecError, InvalidBlock)),
        Target("handshake", run_handshake, ()),
        Target("http", run_http, ()),
        Target("client", run_client, (ProtocolViolation, CodecError)),
    )
}


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/node/" in f.filename or "/consensus/" in f.filename] or frames
    f = ours[-1] if ours else None
    if f is None:
        return type(exc).__name__
    return f"{type(exc).__name__} at {Path(f.filename).name}:{f.lineno} in {f.name}"


def check(name: str, data: bytes) -> Finding | None:
    """Run one input through target `name`; a Finding if it broke the contract."""
    target = TARGETS[name]
    try:
        target.run(data)
    except Breach as exc:
        return Finding(name, "contract", str(exc)[:300], _where(exc))
    except target.allowed:
        return None
    except RecursionError as exc:
        return Finding(name, "crash", "RecursionError", _where(exc))
    except Exception as exc:  # anything else escaping is what the fuzzer looks for
        return Finding(name, "crash", f"{type(exc).__name__}: {exc}"[:300], _where(exc))
    return None


def corpus_files(name: str) -> list[Path]:
    d = CORPUS_DIR / name
    return sorted(p for p in d.iterdir() if p.is_file()) if d.is_dir() else []


