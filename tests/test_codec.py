import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from node.errors import CodecError, RemoteError
from node.ledger.codec import decode, digest, encode, sign_bytes

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.binary(max_size=64)
    | st.text(max_size=32)
)
values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=5)
        | st.dictionaries(
            st.text(max_size=8) | st.binary(max_size=8) | st.integers(-(2**63), 2**64 - 1),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(values)
def test_encode_decode_round_trips(v):
    assert decode(encode(v), canonical=True) == v


@given(st.dictionaries(st.text(max_size=6), st.integers(0, 1000), max_size=8))
def test_map_encoding_does_not_depend_on_insertion_order(d):
    assert encode(d) == encode(dict(reversed(list(d.items()))))


def test_tuples_encode_as_lists_and_bytes_stay_bytes():
    assert decode(encode((1, b"x", "x"))) == [1, b"x", "x"]


def test_floats_are_always_float64():
    assert encode(1.5) == bytes.fromhex("cb3ff8000000000000")
    assert encode(1) == b"\x01"


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, {1, 2}, object(), 2**64, -(2**63) - 1])
def test_encode_refuses(bad):
    with pytest.raises(CodecError):
        encode(bad)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xc1",  # never-used byte
        b"\x01\x02",  # trailing data
        b"\xd4\x01\x00",  # ext type
        b"\x81\x91\x01\x01",  # list as map key
        b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00",  # NaN
        b"\xdd\xff\xff\xff\xff",  # huge array header
        b"\xa5ab",  # truncated str
    ],
)
def test_decode_rejects_malformed(data):
    with pytest.raises(CodecError):
        decode(data)


def test_codec_error_is_remote():
    assert issubclass(CodecError, RemoteError)


def test_decode_size_limit_and_canonical_check():
    with pytest.raises(CodecError, match="exceeds"):
        decode(encode(b"x" * 100), max_size=50)
    with pytest.raises(CodecError, match="canonical"):
        decode(b"\x82\xa1b\x01\xa1a\x02", canonical=True)
    assert decode(b"\x82\xa1b\x01\xa1a\x02") == {"a": 2, "b": 1}


def test_sign_bytes_and_digest():
    assert sign_bytes(b"tx/reading", "c1", {"a": 1}) == b"fedledger/1/tx/reading/c1/" + encode({"a": 1})
    assert len(digest({"a": 1})) == 32
