"""The one codec: canonical msgpack, hashing and domain-separated signing bytes.

Canonical means one value has exactly one encoding, so hashes and signatures computed by
different replicas agree: map keys are sorted by their encoded bytes (recursively), bytes are
`bin`, str is `str`, ints use msgpack's smallest form, floats are always float64. Tuples encode
as arrays and decode as lists. NaN and infinities are refused: they have no single meaning to a
validator and would make "physically possible" checks lie.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgpack

from node.errors import CodecError

MAX_MESSAGE_SIZE = 4 * 1024 * 1024
MAX_CONTAINER_LEN = 100_000
MAX_DEPTH = 64

_PREFIX = b"fedledger/1/"
_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode(obj: Any) -> bytes:
    """Canonical msgpack: maps sorted by their keys' encodings, bytes as bin, floats as float64.

    One Python pass puts the value in canonical form (and refuses what cannot be encoded); the
    bytes then come from msgpack's C packer in one call. Hashing and signing encode every tx
    several times per node, so this is on the hottest path of the node.
    """
    try:
        return msgpack.packb(_canonical(obj, 0), use_bin_type=True)
    except (OverflowError, ValueError) as exc:
        raise CodecError(f"cannot encode value: {exc}") from exc


_KEY_BYTES: dict[Any, bytes] = {}


def _key_bytes(k: Any) -> bytes:
    kb = _KEY_BYTES.get(k) if type(k) is str else None
    if kb is None:
        kb = encode(k)
        if type(k) is str and len(_KEY_BYTES) < 10_000:
            _KEY_BYTES[k] = kb
    return kb


def _canonical(obj: Any, depth: int) -> Any:
    t = type(obj)
    if t is str or t is bytes or obj is None or t is bool:
        return obj
    if t is int:
        if not -(2**63) <= obj < 2**64:
            raise CodecError(f"integer {obj} does not fit in 64 bits")
        return obj
    if depth > MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH} levels")
    if t is dict:
        if len(obj) > 1:
            items = sorted(((_key_bytes(k), k, v) for k, v in obj.items()), key=lambda e: e[0])
            for i in range(1, len(items)):
                if items[i][0] == items[i - 1][0]:
                    raise CodecError("map has two keys with the same encoding")
            return {_canonical(k, depth + 1): _canonical(v, depth + 1) for _, k, v in items}
        return {_canonical(k, depth + 1): _canonical(v, depth + 1) for k, v in obj.items()}
    if t is list or t is tuple:
        return [_canonical(x, depth + 1) for x in obj]
    if t is float:
        if not math.isfinite(obj):
            raise CodecError(f"refusing to encode non-finite float {obj!r}")
        return obj
    # subclasses and other bytes-likes, checked after the exact types above
    if isinstance(obj, bool) or obj is None:
        return bool(obj) if obj is not None else None
    if isinstance(obj, int):
        return _canonical(int(obj), depth)
    if isinstance(obj, float):
        return _canonical(float(obj), depth)
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return bytes(obj)
    if isinstance(obj, str):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_canonical(x, depth + 1) for x in obj]
    if isinstance(obj, dict):
        return _canonical(dict(obj), depth)
    raise CodecError(f"cannot encode value of type {type(obj).__name__}")


def _no_ext(code: int, data: bytes) -> Any:
    raise CodecError(f"msgpack ext type {code} is not allowed")


def decode(data: bytes, max_size: int = MAX_MESSAGE_SIZE, *, canonical: bool = False) -> Any:
    """Decode one msgpack value, strictly. `canonical=True` also rejects non-canonical encodings
    (unsorted maps, float32, oversized ints), for callers that hash or sign the received bytes."""
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CodecError(f"expected bytes, got {type(data).__name__}")
    if len(data) > max_size:
        raise CodecError(f"message of {len(data)} bytes exceeds limit of {max_size}")
    try:
        obj = msgpack.unpackb(
            bytes(data),
            raw=False,
            strict_map_key=False,
            use_list=True,
            ext_hook=_no_ext,
            max_str_len=max_size,
            max_bin_len=max_size,
            max_array_len=MAX_CONTAINER_LEN,
            max_map_len=MAX_CONTAINER_LEN,
            max_ext_len=0,
        )
    except CodecError:
        raise
    except msgpack.ExtraData as exc:
        raise CodecError("trailing data after msgpack value") from exc
    except (ValueError, TypeError, msgpack.UnpackException, RecursionError) as exc:
        raise CodecError(f"malformed msgpack: {exc}") from exc
    except Exception as exc:  # the C unpacker raises assorted types on hostile input
        raise CodecError(f"malformed msgpack: {type(exc).__name__}: {exc}") from exc
    _check_decoded(obj, 0)
    if canonical and encode(obj) != bytes(data):
        raise CodecError("msgpack value is not canonically encoded")
    return obj


def _check_decoded(obj: Any, depth: int) -> None:
    # Every decoded value must be re-encodable, or its hash (tx id, block id) would be undefined.
    # The unpacker yields exactly dict, list, float, int, str, bytes, bool and None, so exact type
    # tests suffice, and scalars are tested in place instead of by a call each (block sync decodes
    # hundreds of thousands of values per second here).
    if depth > MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH} levels")
    t = type(obj)
    if t is float:
        if not math.isfinite(obj):
            raise CodecError("non-finite float in message")
    elif t is list:
        for item in obj:
            ti = type(item)
            if ti is dict or ti is list or ti is float:
                _check_decoded(item, depth + 1)
    elif t is dict:
        for k, v in obj.items():
            tk, tv = type(k), type(v)
            if tk is dict or tk is list or tk is float:
                _check_decoded(k, depth + 1)
            if tv is dict or tv is list or tv is float:
                _check_decoded(v, depth + 1)


def digest(obj: Any) -> bytes:
    return hashlib.sha256(encode(obj)).digest()


def sign_bytes(kind: bytes, chain_id: str, obj: Any) -> bytes:
    """Domain-separated bytes: a signature for one purpose or federation is useless in another."""
    return sign_prefix(kind, chain_id) + encode(obj)


def sign_prefix(kind: bytes, chain_id: str) -> bytes:
    """sign_bytes without the object: for callers that already hold its canonical encoding."""
    return _PREFIX + kind + b"/" + chain_id.encode() + b"/"


def hexify(obj: Any) -> Any:
    """The JSON view of ledger values (HTTP answers, CLI output): bytes as hex strings, recursively;
    map keys as strings, tuples and sets as lists. Anything else is left for the JSON encoder."""
    if isinstance(obj, (bytes, bytearray)):
        return bytes(obj).hex()
    if isinstance(obj, dict):
        return {_json_key(k): hexify(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [hexify(v) for v in obj]
    return obj


def _json_key(key: Any) -> str:
    return bytes(key).hex() if isinstance(key, (bytes, bytearray)) else str(key)
