"""Transactions: wire shape, structural validation, signing.

Every transaction on the wire is a map `{"kind": str, "body": {...}, "signer": pubkey, "sig": bytes}`.
The signature covers sign_bytes(b"tx/" + kind, chain_id, {"body": body, "signer": signer}), so a
tx signed for one kind or federation is useless as any other. The tx id is sha256 of the canonical
encoding of the whole tx (signature included): the id names exactly the bytes that go in a block.

Parsing checks structure only (types, sizes, exact key sets, signer == the body's signing field);
whether a tx is acceptable given the ledger state is state.py's job.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from node.errors import CodecError, InvalidTransaction, Reason
from node.ledger.codec import decode, digest, encode, sign_prefix
from node.ledger.keys import NodeKey, verify, verify_message
from node.ledger.lru import Lru

MAX_TX_BYTES = 64 * 1024
MAX_NAME = 64
MAX_URL = 256
MAX_MAP_ENTRIES = 32
MAX_MAP_KEY = 32
MAX_MAP_STR = 128
MAX_UPDATE_IDS = 1024
MAX_INT = 2**63 - 1
ROLES = ("authority", "participant", "observer")
MEMBER_ACTIONS = ("add", "remove")

Checker = Callable[[str, Any], Any]


def _fail(detail: str) -> InvalidTransaction:
    return InvalidTransaction(Reason.MALFORMED, detail)


def _key(name: str, v: Any) -> bytes:
    if not (isinstance(v, bytes) and len(v) == 32):
        raise _fail(f"{name} must be a 32-byte public key")
    return v


def _hash(name: str, v: Any) -> bytes:
    if not (isinstance(v, bytes) and len(v) == 32):
        raise _fail(f"{name} must be a 32-byte sha256 hash")
    return v


def _int(lo: int, hi: int = MAX_INT) -> Checker:
    def check(name: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise _fail(f"{name} must be an integer in [{lo}, {hi}]")
        return v

    return check


def _float(name: str, v: Any) -> float:
    # Ints are accepted: a client may send 21 for 21.0; the signature covers what was sent.
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise _fail(f"{name} must be a finite number")
    return float(v)


def _str(maxlen: int, choices: tuple[str, ...] = ()) -> Checker:
    def check(name: str, v: Any) -> str:
        if not isinstance(v, str) or not v or len(v) > maxlen:
            raise _fail(f"{name} must be a non-empty string of at most {maxlen} characters")
        if choices and v not in choices:
            raise _fail(f"{name} must be one of {', '.join(choices)}")
        return v

    return check


def _scalar_map(value_types: tuple[type, ...]) -> Checker:
    def check(name: str, v: Any) -> dict[str, Any]:
        if not isinstance(v, dict) or len(v) > MAX_MAP_ENTRIES:
            raise _fail(f"{name} must be a map of at most {MAX_MAP_ENTRIES} entries")
        for k, x in v.items():
            if not isinstance(k, str) or not k or len(k) > MAX_MAP_KEY:
                raise _fail(f"{name} keys must be strings of 1..{MAX_MAP_KEY} characters")
            if isinstance(x, bool) and bool not in value_types:
                raise _fail(f"{name}[{k!r}] has a disallowed type")
            if not isinstance(x, value_types):
                raise _fail(f"{name}[{k!r}] has a disallowed type {type(x).__name__}")
            if isinstance(x, float) and not math.isfinite(x):
                raise _fail(f"{name}[{k!r}] must be finite")
            if isinstance(x, str) and len(x) > MAX_MAP_STR:
                raise _fail(f"{name}[{k!r}] is longer than {MAX_MAP_STR} characters")
        return dict(v)

    return check


def _blob(max_len: int) -> Checker:
    def check(name: str, v: Any) -> bytes:
        if not isinstance(v, bytes) or not 0 < len(v) <= max_len:
            raise _fail(f"{name} must be 1 to {max_len} bytes")
        return v

    return check


# Model weights travel inside model_update txs so every replica can re-compute every aggregate
# from the ledger alone; the paper's models are a few thousand parameters (tens of KiB at most).
MAX_WEIGHTS_BYTES = 48 * 1024


def _id_list(name: str, v: Any) -> tuple[bytes, ...]:
    if not isinstance(v, list) or len(v) > MAX_UPDATE_IDS:
        raise _fail(f"{name} must be a list of at most {MAX_UPDATE_IDS} tx ids")
    for x in v:
        _hash(name, x)
    if len(set(v)) != len(v):
        raise _fail(f"{name} lists a tx id twice")
    return tuple(v)


MAX_FLOWER_KEY = 256


def valid_flower_key(line: bytes) -> bool:
    """An OpenSSH public key line of an EC key on a NIST curve: what Flower's SuperNode
    authentication registers (`flwr supernode register`)."""
    if not isinstance(line, bytes) or not 0 < len(line) <= MAX_FLOWER_KEY:
        return False
    try:
        key = serialization.load_ssh_public_key(line)
    except Exception:  # cryptography raises ValueError, UnsupportedAlgorithm and others on junk
        return False
    return isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in ("secp256r1", "secp384r1",
                                                                             "secp521r1")


def _flower_key(name: str, v: Any) -> bytes:
    if not valid_flower_key(v):
        raise _fail(f"{name} must be an OpenSSH EC public key on a NIST curve")
    return v  # type: ignore[no-any-return]


class Body:
    """Base of the body dataclasses. FIELDS maps each wire field to its checker."""

    KIND: ClassVar[str]
    SIGNER_FIELD: ClassVar[str]
    FIELDS: ClassVar[dict[str, Checker]]
    OPTIONAL: ClassVar[frozenset[str]] = frozenset()

    @classmethod
    def from_body(cls, d: Any) -> Body:
        if not isinstance(d, dict):
            raise _fail(f"{cls.KIND} body must be a map")
        unknown = set(d) - set(cls.FIELDS)
        if unknown:
            raise _fail(f"{cls.KIND} body has unknown fields: {sorted(map(str, unknown))}")
        values: dict[str, Any] = {}
        for name, check in cls.FIELDS.items():
            if name not in d:
                if name in cls.OPTIONAL:
                    continue
                raise _fail(f"{cls.KIND} body lacks field {name!r}")
            values[name] = check(name, d[name])
        return cls(**values)

    @property
    def signer(self) -> bytes:
        return getattr(self, self.SIGNER_FIELD)  # type: ignore[no-any-return]


@dataclass(frozen=True)
class RegisterDevice(Body):
    KIND: ClassVar[str] = "register_device"
    SIGNER_FIELD: ClassVar[str] = "owner"
    FIELDS: ClassVar[dict[str, Checker]] = {"owner": _key, "device": _key, "name": _str(MAX_NAME)}
    owner: bytes
    device: bytes
    name: str


@dataclass(frozen=True)
class Reading(Body):
    KIND: ClassVar[str] = "reading"
    SIGNER_FIELD: ClassVar[str] = "device"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "device": _key,
        "seq": _int(0),
        "timestamp_ms": _int(0),
        "temperature_c": _float,
        "humidity_pct": _float,
        "extra": _scalar_map((int, float, str)),
    }
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"extra"})
    device: bytes
    seq: int
    timestamp_ms: int
    temperature_c: float
    humidity_pct: float
    extra: dict[str, int | float | str] | None = field(default=None, hash=False)


@dataclass(frozen=True)
class JoinRequest(Body):
    KIND: ClassVar[str] = "join_request"
    SIGNER_FIELD: ClassVar[str] = "node"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "node": _key,
        "role": _str(16, ROLES),
        "name": _str(MAX_NAME),
        "url": _str(MAX_URL),
        "flower_key": _flower_key,
    }
    OPTIONAL: ClassVar[frozenset[str]] = frozenset({"flower_key"})
    node: bytes
    role: str
    name: str
    url: str
    flower_key: bytes = b""  # the node's Flower SuperNode authentication key (OpenSSH line)


@dataclass(frozen=True)
class MemberVote(Body):
    KIND: ClassVar[str] = "member_vote"
    SIGNER_FIELD: ClassVar[str] = "voter"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "voter": _key,
        "node": _key,
        "role": _str(16, ROLES),
        "action": _str(8, MEMBER_ACTIONS),
    }
    voter: bytes
    node: bytes
    role: str
    action: str


@dataclass(frozen=True)
class TrainRequest(Body):
    KIND: ClassVar[str] = "train_request"
    SIGNER_FIELD: ClassVar[str] = "authority"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "authority": _key,
        "task": _str(MAX_NAME),
        "rounds": _int(1, 10_000),
        "strategy": _str(MAX_NAME),
        "params": _scalar_map((bool, int, float, str)),
    }
    authority: bytes
    task: str
    rounds: int
    strategy: str
    params: dict[str, Any] = field(hash=False)


@dataclass(frozen=True)
class ModelUpdate(Body):
    KIND: ClassVar[str] = "model_update"
    SIGNER_FIELD: ClassVar[str] = "node"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "node": _key,
        "run": _hash,
        "task": _str(MAX_NAME),
        "round": _int(0),
        "base_model_hash": _hash,
        "weights_hash": _hash,
        "weights": _blob(MAX_WEIGHTS_BYTES),
        "num_examples": _int(0),
        "metrics": _scalar_map((int, float)),
        "readings_root": _hash,
        "data_cut": _int(0),
    }
    node: bytes
    run: bytes  # the train_request's tx id
    task: str
    round: int
    base_model_hash: bytes
    weights_hash: bytes
    weights: bytes = field(repr=False)
    num_examples: int  # the size of the training set at data_cut (node/ledger/provenance.py)
    metrics: dict[str, float] = field(hash=False)
    readings_root: bytes  # Merkle root of that training set's reading ids
    data_cut: int  # the height whose readings the node trained on (0 for round 0's initial model)


@dataclass(frozen=True)
class ModelEval(Body):
    """A node's score of a committed model on its own held-out readings (node/ledger/holdout.py)."""

    KIND: ClassVar[str] = "model_eval"
    SIGNER_FIELD: ClassVar[str] = "node"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "node": _key,
        "run": _hash,
        "task": _str(MAX_NAME),
        "round": _int(0),
        "model_hash": _hash,
        "data_cut": _int(1),
        "num_examples": _int(1),
        "readings_root": _hash,
        "metrics": _scalar_map((int, float)),
    }
    node: bytes
    run: bytes
    task: str
    round: int
    model_hash: bytes  # the committed weights of (run, round) that were scored
    data_cut: int
    num_examples: int  # the size of the held-out set at data_cut
    readings_root: bytes  # Merkle root of its reading ids
    metrics: dict[str, float] = field(hash=False)


@dataclass(frozen=True)
class ModelCommit(Body):
    KIND: ClassVar[str] = "model_commit"
    SIGNER_FIELD: ClassVar[str] = "coordinator"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "coordinator": _key,
        "run": _hash,
        "task": _str(MAX_NAME),
        "round": _int(0),
        "strategy": _str(MAX_NAME),
        "update_ids": _id_list,
        "weights_hash": _hash,
        "metrics": _scalar_map((int, float)),
    }
    coordinator: bytes
    run: bytes
    task: str
    round: int
    strategy: str
    update_ids: tuple[bytes, ...]
    weights_hash: bytes
    metrics: dict[str, float] = field(hash=False)


MAX_HOST_PORT = 262  # a host name (253) or a bracketed IPv6 address, a colon and a port


def _host_port(name: str, v: Any) -> str:
    """HOST:PORT where a SuperLink listens (the form a train_request's `superlink` param takes)."""
    if not isinstance(v, str) or not 0 < len(v) <= MAX_HOST_PORT or not v.isprintable() or " " in v:
        raise _fail(f"{name} must be HOST:PORT without spaces, at most {MAX_HOST_PORT} characters")
    host, _, port = v.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise _fail(f"{name} must be HOST:PORT with a port in 1..65535")
    return v


@dataclass(frozen=True)
class RunHandover(Body):
    """An authority takes over coordinating a run whose coordinator stopped committing rounds
    (node/ledger/handover.py says when whose turn it is). It names the run's open round and where
    the new coordinator's SuperLink listens, with the SHA-256 of its TLS certificate, which every
    SuperNode pins from then on."""

    KIND: ClassVar[str] = "run_handover"
    SIGNER_FIELD: ClassVar[str] = "authority"
    FIELDS: ClassVar[dict[str, Checker]] = {
        "authority": _key,
        "run": _hash,
        "round": _int(0),
        "superlink": _host_port,
        "superlink_cert": _hash,
    }
    authority: bytes  # the new coordinator
    run: bytes
    round: int  # the run's first uncommitted round when the handover is final
    superlink: str
    superlink_cert: bytes


BODY_TYPES: dict[str, type[Body]] = {
    cls.KIND: cls
    for cls in (RegisterDevice, Reading, JoinRequest, MemberVote, TrainRequest, ModelUpdate, ModelCommit,
                ModelEval, RunHandover)
}


@dataclass(frozen=True)
class Transaction:
    """A parsed, structurally valid transaction. `raw` is the wire map exactly as signed."""

    kind: str
    body: Body
    signer: bytes
    sig: bytes
    id: bytes
    raw: dict[str, Any] = field(compare=False, repr=False, hash=False)
    encoded: bytes = field(default=b"", compare=False, repr=False, hash=False)  # encode(raw)
    signed_encoded: bytes = field(default=b"", compare=False, repr=False, hash=False)

    def signature_valid(self, chain_id: str) -> bool:
        # A node checks each tx when it enters the mempool and again inside the proposal that
        # carries it; the id covers every signed byte and the signature, so one check is enough.
        key = (chain_id, self.id)
        ok = _VERIFIED.get(key)
        if ok is None:
            if self.signed_encoded:
                message = sign_prefix(tx_sign_kind(self.kind), chain_id) + self.signed_encoded
                ok = verify_message(self.signer, self.sig, message)
            else:
                ok = verify(self.signer, self.sig, tx_sign_kind(self.kind), chain_id, signed_part(self.raw))
            _VERIFIED.put(key, ok)
        return ok


MAX_VERIFIED_CACHE = 200_000
_VERIFIED: Lru[tuple[str, bytes], bool] = Lru(MAX_VERIFIED_CACHE)


def tx_sign_kind(kind: str) -> bytes:
    return b"tx/" + kind.encode()


def signed_part(tx: Mapping[str, Any]) -> dict[str, Any]:
    return {"body": tx["body"], "signer": tx["signer"]}


def tx_id(tx: Mapping[str, Any] | Transaction) -> bytes:
    """sha256 of the canonical encoding of the whole wire tx."""
    if isinstance(tx, Transaction):
        return tx.id
    return digest(dict(tx))


def parse_tx(obj: Any) -> Transaction:
    """Validate structure and return a Transaction; raises InvalidTransaction(MALFORMED) with detail.

    Does not check the signature (see Transaction.signature_valid) so cheap checks come first.
    """
    kind, body, signer, sig = _parse_structure(obj)
    try:
        whole, signed = encode_tx(obj)
    except CodecError as exc:
        raise _fail(str(exc)) from exc
    if len(whole) > MAX_TX_BYTES:
        raise _fail(f"transaction of {len(whole)} bytes exceeds {MAX_TX_BYTES}")
    return Transaction(kind=kind, body=body, signer=signer, sig=sig, id=hashlib.sha256(whole).digest(),
                       raw=obj, encoded=whole, signed_encoded=signed)


def parse_encoded_tx(data: bytes) -> Transaction:
    """parse_tx for a tx received as its encoding (block sync): the id is sha256 of these bytes,
    with no re-encoding. Sound only where the id is then bound to something signed: a synced
    block's ids must give the tx_root of a header its commit certificate finalised, so bytes that
    are not the canonical encoding the authorities hashed cannot pass."""
    if len(data) > MAX_TX_BYTES:
        raise _fail(f"transaction of {len(data)} bytes exceeds {MAX_TX_BYTES}")
    try:
        obj = decode(data)
    except CodecError as exc:
        raise _fail(str(exc)) from exc
    kind, body, signer, sig = _parse_structure(obj)
    return Transaction(kind=kind, body=body, signer=signer, sig=sig, id=hashlib.sha256(data).digest(),
                       raw=obj, encoded=bytes(data))


def _parse_structure(obj: Any) -> tuple[str, Body, bytes, bytes]:
    if not isinstance(obj, dict):
        raise _fail("transaction must be a map")
    if set(obj) != {"kind", "body", "signer", "sig"}:
        raise _fail(f"transaction must have exactly kind, body, signer, sig; got {sorted(map(str, obj))}")
    kind = obj["kind"]
    # A str test first: a map or list as kind is unhashable, and the lookup would raise TypeError
    # out of the parser (found by scripts/fuzz.py).
    if not isinstance(kind, str) or kind not in BODY_TYPES:
        raise _fail(f"unknown transaction kind {repr(kind)[:64]}")
    signer = _key("signer", obj["signer"])
    sig = obj["sig"]
    if not (isinstance(sig, bytes) and len(sig) == 64):
        raise _fail("sig must be 64 bytes")
    body = BODY_TYPES[kind].from_body(obj["body"])
    if body.signer != signer:
        raise _fail(f"{kind} must be signed by its {body.SIGNER_FIELD}")
    return kind, body, signer, sig


# Encoded map keys. A canonical map is its sorted (key bytes, value bytes) pairs, so a tx and the
# part its signature covers share the encoding of the body: encode it once for both.
_K_BODY, _K_KIND, _K_SIG, _K_SIGNER = (encode(k) for k in ("body", "kind", "sig", "signer"))
assert sorted([_K_BODY, _K_KIND, _K_SIG, _K_SIGNER]) == [_K_SIG, _K_BODY, _K_KIND, _K_SIGNER]


def encode_tx(obj: Mapping[str, Any]) -> tuple[bytes, bytes]:
    """(encode(obj), encode(signed_part(obj))) for a wire tx with exactly kind, body, signer, sig."""
    body, signer = encode(obj["body"]), encode(obj["signer"])
    whole = b"".join(
        (b"\x84", _K_SIG, encode(obj["sig"]), _K_BODY, body, _K_KIND, encode(obj["kind"]), _K_SIGNER, signer)
    )
    return whole, b"\x82" + _K_BODY + body + _K_SIGNER + signer


def sign_tx(key: NodeKey, chain_id: str, kind: str, body: dict[str, Any]) -> dict[str, Any]:
    """Build the wire map for `body`, signed by `key`. Validates the result (a LocalError-free
    path for builders: a structurally bad body raises InvalidTransaction here, not at a peer)."""
    unsigned = {"kind": kind, "body": body, "signer": key.public}
    tx = {**unsigned, "sig": key.sign(tx_sign_kind(kind), chain_id, signed_part(unsigned))}
    parse_tx(tx)
    return tx


def make_register_device(owner: NodeKey, chain_id: str, device: bytes, name: str) -> dict[str, Any]:
    body = {"owner": owner.public, "device": device, "name": name}
    return sign_tx(owner, chain_id, "register_device", body)


def make_reading(
    device: NodeKey,
    chain_id: str,
    seq: int,
    timestamp_ms: int,
    temperature_c: float,
    humidity_pct: float,
    extra: dict[str, int | float | str] | None = None,
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device": device.public,
        "seq": seq,
        "timestamp_ms": timestamp_ms,
        "temperature_c": float(temperature_c),
        "humidity_pct": float(humidity_pct),
    }
    if extra is not None:
        body["extra"] = extra
    return sign_tx(device, chain_id, "reading", body)


def make_join_request(node: NodeKey, chain_id: str, role: str, name: str, url: str,
                      flower_key: bytes = b"") -> dict[str, Any]:
    body: dict[str, Any] = {"node": node.public, "role": role, "name": name, "url": url}
    if flower_key:
        body["flower_key"] = flower_key
    return sign_tx(node, chain_id, "join_request", body)


def make_member_vote(voter: NodeKey, chain_id: str, node: bytes, role: str, action: str) -> dict[str, Any]:
    body = {"voter": voter.public, "node": node, "role": role, "action": action}
    return sign_tx(voter, chain_id, "member_vote", body)


def make_train_request(
    authority: NodeKey,
    chain_id: str,
    task: str,
    rounds: int,
    strategy: str = "fedavg",
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    body = {
        "authority": authority.public,
        "task": task,
        "rounds": rounds,
        "strategy": strategy,
        "params": params or {},
    }
    return sign_tx(authority, chain_id, "train_request", body)


def make_model_update(
    node: NodeKey,
    chain_id: str,
    run: bytes,
    task: str,
    round: int,
    base_model_hash: bytes,
    weights: bytes,
    num_examples: int,
    metrics: dict[str, float],
    readings_root: bytes,
    *,
    data_cut: int = 0,
) -> dict[str, Any]:
    """`weights` is federated.weights.encode_weights(...); its sha256 is recorded as weights_hash.
    `num_examples` and `readings_root` must be those of the training set at `data_cut`
    (node/ledger/provenance.py), or every replica refuses the update."""
    body = {
        "node": node.public,
        "run": run,
        "task": task,
        "round": round,
        "base_model_hash": base_model_hash,
        "weights_hash": hashlib.sha256(weights).digest(),
        "weights": weights,
        "num_examples": num_examples,
        "metrics": metrics,
        "readings_root": readings_root,
        "data_cut": data_cut,
    }
    return sign_tx(node, chain_id, "model_update", body)


def make_model_eval(
    node: NodeKey,
    chain_id: str,
    run: bytes,
    task: str,
    round: int,
    model_hash: bytes,
    data_cut: int,
    num_examples: int,
    readings_root: bytes,
    metrics: dict[str, float],
) -> dict[str, Any]:
    body = {
        "node": node.public,
        "run": run,
        "task": task,
        "round": round,
        "model_hash": model_hash,
        "data_cut": data_cut,
        "num_examples": num_examples,
        "readings_root": readings_root,
        "metrics": metrics,
    }
    return sign_tx(node, chain_id, "model_eval", body)


def make_model_commit(
    coordinator: NodeKey,
    chain_id: str,
    run: bytes,
    task: str,
    round: int,
    strategy: str,
    update_ids: list[bytes],
    weights_hash: bytes,
    metrics: dict[str, float],
) -> dict[str, Any]:
    body = {
        "coordinator": coordinator.public,
        "run": run,
        "task": task,
        "round": round,
        "strategy": strategy,
        "update_ids": list(update_ids),
        "weights_hash": weights_hash,
        "metrics": metrics,
    }
    return sign_tx(coordinator, chain_id, "model_commit", body)


def make_run_handover(authority: NodeKey, chain_id: str, run: bytes, round: int, superlink: str,
                      superlink_cert: bytes) -> dict[str, Any]:
    body = {"authority": authority.public, "run": run, "round": round, "superlink": superlink,
            "superlink_cert": superlink_cert}
    return sign_tx(authority, chain_id, "run_handover", body)
