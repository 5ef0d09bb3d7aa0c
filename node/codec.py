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
import struct
from typing import Any

import msgpack

from node.errors import CodecError

MAX_MESSAGE_SIZE = 4 * 1024 * 1024
MAX_CONTAINER_LEN = 100_000
MAX_DEPTH = 64

_PREFIX = b"fedledger/1/"
_packer = msgpack.Packer(use_bin_type=True, autoreset=True)


def encode(obj: Any) -> bytes:
    parts: list[bytes] = []
    _encode(obj, parts, 0)
    return b"".join(parts)


def _encode(obj: Any, out: list[bytes], depth: int) -> None:
    if depth > MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH} levels")
    # bool before int: bool is an int subclass but has its own msgpack type.
    if obj is None or isinstance(obj, bool):
        out.append(_packer.pack(obj))
    elif isinstance(obj, int):
        if not -(2**63) <= obj < 2**64:
            raise CodecError(f"integer {obj} does not fit in 64 bits")
        out.append(_packer.pack(obj))
    elif isinstance(obj, float):
        if not math.isfinite(obj):
            raise CodecError(f"refusing to encode non-finite float {obj!r}")
        out.append(b"\xcb" + struct.pack(">d", obj))
    elif isinstance(obj, (bytes, bytearray, memoryview)):
        out.append(_packer.pack(bytes(obj)))
    elif isinstance(obj, str):
        out.append(_packer.pack(obj))
    elif isinstance(obj, (list, tuple)):
        out.append(_packer.pack_array_header(len(obj)))
        for item in obj:
            _encode(item, out, depth + 1)
    elif isinstance(obj, dict):
        items = []
        for k, v in obj.items():
            kparts: list[bytes] = []
            _encode(k, kparts, depth + 1)
            items.append((b"".join(kparts), v))
        items.sort(key=lambda kv: kv[0])
        for i in range(1, len(items)):
            if items[i][0] == items[i - 1][0]:
                raise CodecError("map has two keys with the same encoding")
        out.append(_packer.pack_map_header(len(items)))
        for kbytes, v in items:
            out.append(kbytes)
            _encode(v, out, depth + 1)
    else:
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
    if depth > MAX_DEPTH:
        raise CodecError(f"value nested deeper than {MAX_DEPTH} levels")
    if isinstance(obj, float):
        if not math.isfinite(obj):
            raise CodecError("non-finite float in message")
    elif isinstance(obj, list):
        for item in obj:
            _check_decoded(item, depth + 1)
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _check_decoded(k, depth + 1)
            _check_decoded(v, depth + 1)


def digest(obj: Any) -> bytes:
    return hashlib.sha256(encode(obj)).digest()


def sign_bytes(kind: bytes, chain_id: str, obj: Any) -> bytes:
    """Domain-separated bytes: a signature for one purpose or federation is useless in another."""
    return _PREFIX + kind + b"/" + chain_id.encode() + b"/" + encode(obj)
