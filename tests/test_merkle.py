import hashlib

from hypothesis import given
from hypothesis import strategies as st

from node.ledger import merkle


def test_known_values():
    assert merkle.root([]) == hashlib.sha256(b"").digest()
    assert merkle.root([b"a"]) == hashlib.sha256(b"\x00a").digest()
    la, lb, lc = (hashlib.sha256(b"\x00" + x).digest() for x in (b"a", b"b", b"c"))
    ab = hashlib.sha256(b"\x01" + la + lb).digest()
    assert merkle.root([b"a", b"b"]) == ab
    assert merkle.root([b"a", b"b", b"c"]) == hashlib.sha256(b"\x01" + ab + lc).digest()


@given(st.lists(st.binary(max_size=8), min_size=1, max_size=40), st.data())
def test_every_proof_verifies_and_only_for_its_leaf(leaves, data):
    root = merkle.root(leaves)
    i = data.draw(st.integers(0, len(leaves) - 1))
    path = merkle.proof(leaves, i)
    assert merkle.verify_proof(leaves[i], i, len(leaves), path, root)
    assert not merkle.verify_proof(leaves[i] + b"!", i, len(leaves), path, root)
    assert not merkle.verify_proof(leaves[i], i, len(leaves), path, b"\x00" * 32)
    if len(leaves) > 1:
        j = (i + 1) % len(leaves)
        assert not merkle.verify_proof(leaves[i], j, len(leaves), path, root) or leaves[i] == leaves[j]


def test_bad_proof_inputs_are_rejected():
    leaves = [b"a", b"b", b"c"]
    root = merkle.root(leaves)
    assert not merkle.verify_proof(b"a", 5, 3, merkle.proof(leaves, 0), root)
    assert not merkle.verify_proof(b"a", 0, 3, [b"short"], root)
    assert not merkle.verify_proof(b"a", 0, 3, [*merkle.proof(leaves, 0), b"\x00" * 32], root)
