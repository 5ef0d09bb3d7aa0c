import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consensus.messages import Proposal, Vote, VoteType
from node.errors import KeyFileError
from node.ledger.keys import NodeKey, short_id, sign_proposal, sign_vote, verify, verify_proposal, verify_vote


def test_save_writes_mode_0600_and_round_trips(tmp_path):
    k = NodeKey.generate()
    p = tmp_path / "node.key"
    k.save(p)
    assert stat.S_IMODE(p.stat().st_mode) == 0o600
    assert NodeKey.load(p).public == k.public
    assert [f.name for f in tmp_path.iterdir()] == ["node.key"]  # no temp file left behind


def test_save_never_overwrites(tmp_path):
    p = tmp_path / "node.key"
    NodeKey.generate().save(p)
    before = p.read_bytes()
    with pytest.raises(KeyFileError, match="overwrite"):
        NodeKey.generate().save(p)
    assert p.read_bytes() == before


def test_passphrase_round_trip_and_wrong_passphrase(tmp_path):
    k = NodeKey.generate()
    p = tmp_path / "node.key"
    k.save(p, b"correct horse")
    assert b"ENCRYPTED" in p.read_bytes()
    assert NodeKey.load(p, b"correct horse").public == k.public
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        NodeKey.load(p, b"battery staple")
    with pytest.raises(KeyFileError, match="passphrase is needed"):
        NodeKey.load(p)


def test_load_errors(tmp_path):
    with pytest.raises(KeyFileError, match="does not exist"):
        NodeKey.load(tmp_path / "missing.key")
    open_key = tmp_path / "open.key"
    NodeKey.generate().save(open_key)
    os.chmod(open_key, 0o644)
    with pytest.raises(KeyFileError, match="chmod 600"):
        NodeKey.load(open_key)
    ec_key = tmp_path / "ec.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(ec_key, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pem)
    os.close(fd)
    with pytest.raises(KeyFileError, match="not an Ed25519"):
        NodeKey.load(ec_key)
    junk = tmp_path / "junk.key"
    fd = os.open(junk, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, b"not a key")
    os.close(fd)
    with pytest.raises(KeyFileError, match="not a valid PEM"):
        NodeKey.load(junk)


def test_verify_never_raises_on_garbage():
    k = NodeKey.generate()
    sig = k.sign(b"x", "c", [1])
    assert verify(k.public, sig, b"x", "c", [1])
    for args in [
        (b"short", sig, b"x", "c", [1]),
        (k.public, b"short", b"x", "c", [1]),
        (k.public, sig, b"x", "c", object()),
        ("str", sig, b"x", "c", [1]),
        (k.public, sig, "x", "c", [1]),
        (b"\xff" * 32, sig, b"x", "c", [1]),
    ]:
        assert verify(*args) is False


def test_short_id():
    k = NodeKey.from_seed(b"\x01" * 32)
    assert k.short_id == short_id(k.public) and len(k.short_id) == 16


def test_vote_and_proposal_signatures_are_domain_separated():
    k = NodeKey.generate()
    v = sign_vote(k, "c", Vote(VoteType.PREVOTE, 3, 1, b"\x07" * 32, k.public))
    assert verify_vote("c", v)
    assert not verify_vote("other", v)
    # A prevote signature must not pass as a precommit.
    assert not verify_vote("c", Vote(VoteType.PRECOMMIT, 3, 1, b"\x07" * 32, k.public, v.signature))
    p = sign_proposal(k, "c", Proposal(3, 1, "value", b"\x07" * 32, -1, k.public))
    assert verify_proposal("c", p)
    assert not verify_proposal("c", Proposal(3, 2, "value", b"\x07" * 32, -1, k.public, p.signature))
    with pytest.raises(ValueError):
        sign_vote(NodeKey.generate(), "c", Vote(VoteType.PREVOTE, 3, 1, None, k.public))
