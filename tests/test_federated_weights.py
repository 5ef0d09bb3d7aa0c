"""Canonical weight encoding: round trip, stable hash, strict decoding. No TensorFlow needed."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from federated.weights import MAGIC, decode_weights, encode_weights, weights_hash


def _weights() -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.normal(size=(3, 4)).astype(np.float32),
        rng.normal(size=(4,)).astype(np.float32),
        np.array(1.5, dtype=np.float32),  # 0-d
        np.zeros((0, 2), dtype=np.float32),  # empty
    ]


def test_round_trip_preserves_values_shapes_and_dtype() -> None:
    ws = _weights()
    back = decode_weights(encode_weights(ws))
    assert len(back) == len(ws)
    for a, b in zip(ws, back, strict=True):
        assert b.dtype == np.float32 and b.shape == a.shape
        assert np.array_equal(a, b)
        assert b.flags.writeable
    assert encode_weights(back) == encode_weights(ws)


def test_encoding_layout_is_little_endian_float32() -> None:
    blob = encode_weights([np.array([[1.0, -2.0]], dtype=np.float32)])
    assert blob == MAGIC + struct.pack("<IBBII", 1, 1, 2, 1, 2) + struct.pack("<2f", 1.0, -2.0)


def test_hash_is_sha256_of_encoding_and_stable() -> None:
    ws = _weights()
    assert weights_hash(ws) == hashlib.sha256(encode_weights(ws)).digest()
    # Same values in another memory layout / byte order / dtype hash the same.
    other = [np.asfortranarray(ws[0]), ws[1].astype(">f4"), ws[2].astype(np.float64), ws[3]]
    assert weights_hash(other) == weights_hash(ws)
    # Pinned: a change to the format must be deliberate (it changes every model id on the ledger).
    pinned = weights_hash([np.arange(6, dtype=np.float32).reshape(2, 3)])
    assert (
        pinned.hex()
        == hashlib.sha256(
            MAGIC + struct.pack("<IBBII", 1, 1, 2, 2, 3) + np.arange(6, dtype="<f4").tobytes()
        ).hexdigest()
    )
    changed = [w.copy() for w in ws]
    changed[1][0] = np.nextafter(changed[1][0], np.float32(np.inf))
    assert weights_hash(changed) != weights_hash(ws)


@pytest.mark.parametrize("bad", [np.array([np.nan], np.float32), np.array([np.inf]), np.array([1e40])])
def test_non_finite_weights_are_refused(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="NaN or infinity"):
        encode_weights([bad])


def test_non_numeric_refused() -> None:
    with pytest.raises(ValueError, match="numeric"):
        encode_weights([np.array(["a"])])


def _corruptions() -> list[tuple[str, bytes]]:
    good = encode_weights([np.ones((2, 2), np.float32)])
    nan = bytearray(good)
    nan[-4:] = struct.pack("<f", float("nan"))
    return [
        ("empty", b""),
        ("bad magic", b"XXXX" + good[4:]),
        ("truncated data", good[:-1]),
        ("trailing bytes", good + b"\0"),
        ("truncated header", good[:8] + b"\x01"),
        ("unknown dtype", good[:8] + b"\x02" + good[9:]),
        ("huge ndim", good[:9] + b"\x40" + good[10:]),
        ("huge shape", good[:8] + struct.pack("<BBII", 1, 2, 2**31, 2**31) + good[18:]),
        ("count larger than arrays", MAGIC + struct.pack("<I", 2) + good[8:]),
        ("too many arrays", MAGIC + struct.pack("<I", 10**6)),
        ("nan inside", bytes(nan)),
    ]


@pytest.mark.parametrize(("name", "blob"), _corruptions(), ids=[n for n, _ in _corruptions()])
def test_decode_is_strict(name: str, blob: bytes) -> None:
    with pytest.raises(ValueError):
        decode_weights(blob)


def test_size_limits() -> None:
    ws = [np.zeros(1000, np.float32)]
    with pytest.raises(ValueError, match="exceed"):
        encode_weights(ws, max_bytes=1000)
    blob = encode_weights(ws)
    with pytest.raises(ValueError, match="exceeds"):
        decode_weights(blob, max_bytes=1000)
    with pytest.raises(ValueError, match="must be bytes"):
        decode_weights("text")  # type: ignore[arg-type]
