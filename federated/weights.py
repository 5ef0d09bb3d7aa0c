"""Canonical byte encoding of model weights (a list of numpy arrays).

The encoding is what gets signed, hashed and committed on the ledger, so it must be byte-identical on
every node for the same values: no pickle (not canonical, and unsafe to decode), no numpy ``.npy``
headers (their text layout is an implementation detail). Layout, all integers little-endian:

    magic   b"FLW1"
    u32     number of arrays
    per array:
        u8      dtype code (1 = float32; the only one today, the byte keeps the format extensible)
        u8      ndim
        u32[n]  shape
        f32le[] data, C order, prod(shape) values

Weights are canonicalised to float32 because that is what Keras trains in and what aggregation
commits to; non-finite values are refused because NaN payloads have many bit patterns (two
"identical" NaN models could hash differently) and a diverged update must not be aggregated anyway.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

import numpy as np

MAGIC = b"FLW1"
DTYPE_FLOAT32 = 1
_F32 = np.dtype("<f4")

# Generous for the tiny models of this project, small enough that a hostile blob cannot make a
# node allocate gigabytes before the checks fail.
MAX_ARRAYS = 1024
MAX_NDIM = 8
MAX_BYTES = 64 * 1024 * 1024

Weights = list[np.ndarray]


def canonical_array(array: np.ndarray) -> np.ndarray:
    """`array` as a C-contiguous little-endian float32 array; ValueError if it cannot be one."""
    a = np.asarray(array)
    if a.dtype.kind not in "fiu":
        raise ValueError(f"weights must be numeric arrays, got dtype {a.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        # asarray(order="C"), not ascontiguousarray: the latter turns 0-d arrays into 1-d ones.
        out = np.asarray(a, dtype=_F32, order="C")
    if not np.all(np.isfinite(out)):
        raise ValueError("weights contain NaN or infinity (or overflow float32)")
    return out


def encode_weights(weights: Sequence[np.ndarray], *, max_bytes: int = MAX_BYTES) -> bytes:
    """Deterministic encoding of `weights` (see module docstring)."""
    if len(weights) > MAX_ARRAYS:
        raise ValueError(f"too many arrays: {len(weights)} > {MAX_ARRAYS}")
    parts = [MAGIC, struct.pack("<I", len(weights))]
    total = 8
    for i, w in enumerate(weights):
        a = canonical_array(w)
        if a.ndim > MAX_NDIM:
            raise ValueError(f"array {i}: ndim {a.ndim} > {MAX_NDIM}")
        if any(d > 0xFFFFFFFF for d in a.shape):
            raise ValueError(f"array {i}: dimension too large")
        header = struct.pack(f"<BB{a.ndim}I", DTYPE_FLOAT32, a.ndim, *a.shape)
        data = a.tobytes(order="C")
        total += len(header) + len(data)
        if total > max_bytes:
            raise ValueError(f"encoded weights exceed {max_bytes} bytes")
        parts += [header, data]
    return b"".join(parts)


def decode_weights(blob: bytes, *, max_bytes: int = MAX_BYTES, finite: bool = True) -> Weights:
    """Inverse of `encode_weights`. Strict: any deviation from the layout raises ValueError.

    Returned arrays are writable float32 copies (not views into `blob`). `finite=False` lets NaN
    and infinity through, for a caller that reports them apart from a broken layout (the ledger's
    `non_finite` reason); such weights cannot be re-encoded.
    """
    if not isinstance(blob, bytes | bytearray | memoryview):
        raise ValueError(f"weights blob must be bytes, got {type(blob).__name__}")
    buf = memoryview(blob).cast("B")
    if len(buf) > max_bytes:
        raise ValueError(f"weights blob of {len(buf)} bytes exceeds {max_bytes}")
    if len(buf) < 8 or bytes(buf[:4]) != MAGIC:
        raise ValueError("not an encoded weights blob (bad magic or too short)")
    (count,) = struct.unpack_from("<I", buf, 4)
    if count > MAX_ARRAYS:
        raise ValueError(f"too many arrays: {count} > {MAX_ARRAYS}")
    pos = 8
    out: Weights = []
    for i in range(count):
        if pos + 2 > len(buf):
            raise ValueError(f"array {i}: truncated header")
        code, ndim = struct.unpack_from("<BB", buf, pos)
        pos += 2
        if code != DTYPE_FLOAT32:
            raise ValueError(f"array {i}: unknown dtype code {code}")
        if ndim > MAX_NDIM:
            raise ValueError(f"array {i}: ndim {ndim} > {MAX_NDIM}")
        if pos + 4 * ndim > len(buf):
            raise ValueError(f"array {i}: truncated shape")
        shape = struct.unpack_from(f"<{ndim}I", buf, pos)
        pos += 4 * ndim
        # Python ints: no overflow however large the declared shape is.
        size = 1
        for d in shape:
            size *= d
        nbytes = size * 4
        if pos + nbytes > len(buf):
            raise ValueError(f"array {i}: truncated data (needs {nbytes} bytes)")
        a = np.frombuffer(buf, dtype=_F32, count=size, offset=pos).reshape(shape).copy()
        pos += nbytes
        if finite and not np.all(np.isfinite(a)):
            raise ValueError(f"array {i}: contains NaN or infinity")
        out.append(a.astype(np.float32, copy=False))
    if pos != len(buf):
        raise ValueError(f"{len(buf) - pos} trailing bytes after the last array")
    return out


def weights_hash(weights: Sequence[np.ndarray]) -> bytes:
    """sha256 of `encode_weights(weights)`: the model identity used on the ledger."""
    return hashlib.sha256(encode_weights(weights)).digest()
