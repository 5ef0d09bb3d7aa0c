import base64
import os
import stat

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consensus.messages import Proposal, Vote, VoteType
from node.errors import KeyFileError
from node.ledger.codec import decode, encode
from node.ledger.keys import (
    SEALED_PEM_LABEL,
    NodeKey,
    short_id,
    sign_proposal,
    sign_vote,
    verify,
    verify_proposal,
    verify_vote,
)


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
    assert SEALED_PEM_LABEL in p.read_bytes() and k.public.hex() not in p.read_text()
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


def test_key_files_of_older_versions_pbkdf2_pkcs8_still_load(tmp_path):
    k = NodeKey.generate()
    p = tmp_path / "node.key"
    pem = k._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.BestAvailableEncryption(b"old secret"))
    p.write_bytes(pem)
    p.chmod(0o600)
    assert NodeKey.load(p, b"old secret").public == k.public
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        NodeKey.load(p, b"other")


def _rewrite_sealed(path, **changes):
    lines = path.read_bytes().splitlines(keepends=True)
    doc = decode(base64.decodebytes(b"".join(lines[1:-1])))
    doc.update(changes)
    path.write_bytes(lines[0] + base64.encodebytes(encode(doc)) + lines[-1])


def test_sealed_key_uses_scrypt_at_full_cost_and_lowering_it_in_the_file_does_not_open_it(tmp_path):
    p = tmp_path / "node.key"
    NodeKey.generate().save(p, b"pw")
    lines = p.read_bytes().splitlines()
    doc = decode(base64.decodebytes(b"".join(lines[1:-1])))
    assert (doc["kdf"], doc["log_n"], doc["r"], doc["p"]) == ("scrypt", 17, 8, 1)
    _rewrite_sealed(p, log_n=4)  # an attacker's cheap copy: the parameters are authenticated
    with pytest.raises(KeyFileError, match="wrong passphrase"):
        NodeKey.load(p, b"pw")


@pytest.mark.parametrize("changes", [{"log_n": 40}, {"r": 10**6}, {"p": 0}, {"log_n": True},
                                     {"kdf": "none"}, {"sealed": b"short"}, {"extra": 1}])
def test_hostile_sealed_key_files_are_refused_without_deriving(tmp_path, changes):
    p = tmp_path / "node.key"
    NodeKey.generate().save(p, b"pw")
    _rewrite_sealed(p, **changes)
    with pytest.raises(KeyFileError, match=r"sealed key|out of bounds"):
        NodeKey.load(p, b"pw")


def test_garbage_between_the_sealed_pem_lines_is_a_clear_error(tmp_path):
    p = tmp_path / "node.key"
    label = SEALED_PEM_LABEL
    p.write_bytes(b"-----BEGIN " + label + b"-----\n!!!!\n-----END " + label + b"-----\n")
    p.chmod(0o600)
    with pytest.raises(KeyFileError, match="not a valid sealed key"):
        NodeKey.load(p, b"pw")
