"""Ed25519 identities: node keys on disk, signing and verification of everything signed.

Key files are PKCS8 PEM, mode 0600, optionally encrypted with a passphrase. A key file is never
overwritten: losing a validator key to a typo would be unrecoverable. Loading a key whose file is
readable by group or others is an error (as ssh does), not a warning: a node key that may have
leaked must not silently keep signing votes.
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from consensus.messages import Proposal, Vote
from node.errors import CodecError, KeyFileError
from node.ledger.codec import sign_bytes

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
PROPOSAL_KIND = b"proposal"


def short_id(public: bytes) -> str:
    """First 16 hex chars of sha256(public key): how humans and logs name a node or device."""
    return hashlib.sha256(public).hexdigest()[:16]


class NodeKey:
    """An Ed25519 private key with the project's signing conventions."""

    __slots__ = ("_private", "public")

    def __init__(self, private: Ed25519PrivateKey) -> None:
        self._private = private
        self.public: bytes = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )

    @classmethod
    def generate(cls) -> NodeKey:
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> NodeKey:
        """Deterministic key from a 32-byte seed: for tests and simulations only."""
        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @property
    def short_id(self) -> str:
        return short_id(self.public)

    def __repr__(self) -> str:
        return f"NodeKey({self.short_id})"

    def sign(self, kind: bytes, chain_id: str, obj: Any) -> bytes:
        return self._private.sign(sign_bytes(kind, chain_id, obj))

    def sign_raw(self, message: bytes) -> bytes:
        """Sign bytes the caller already domain-separated (e.g. the handshake transcript)."""
        return self._private.sign(message)

    def save(self, path: str | os.PathLike[str], passphrase: bytes | None = None) -> None:
        """Write the key as PKCS8 PEM, mode 0600. Refuses to overwrite an existing file.

        Written to a temporary file, fsynced, then hard-linked into place: the link fails if the
        target exists, so the file appears complete or not at all and is never overwritten.
        """
        path = Path(path)
        algo: serialization.KeySerializationEncryption = (
            serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
        )
        pem = self._private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algo)
        if path.exists():
            raise KeyFileError(f"refusing to overwrite existing key file {path}")
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), 0o600)  # umask could only narrow it, but be explicit
                fh.write(pem)
                fh.flush()
                os.fsync(fh.fileno())
            try:
                os.link(tmp, path)
            except FileExistsError as exc:
                raise KeyFileError(f"refusing to overwrite existing key file {path}") from exc
            except OSError as exc:
                raise KeyFileError(f"cannot create key file {path}: {exc.strerror}") from exc
        finally:
            tmp.unlink(missing_ok=True)

    @classmethod
    def load(cls, path: str | os.PathLike[str], passphrase: bytes | None = None) -> NodeKey:
        path = Path(path)
        try:
            st = path.stat()
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise KeyFileError(f"key file {path} does not exist") from exc
        except OSError as exc:
            raise KeyFileError(f"cannot read key file {path}: {exc.strerror}") from exc
        if os.name == "posix" and st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyFileError(
                f"key file {path} is accessible by other users (mode {stat.S_IMODE(st.st_mode):04o});"
                f" run: chmod 600 {path}"
            )
        try:
            private = serialization.load_pem_private_key(data, password=passphrase or None)
        except TypeError as exc:
            # cryptography says TypeError when encryption and passphrase presence disagree.
            if passphrase:
                raise KeyFileError(f"key file {path} is not encrypted but a passphrase was given") from exc
            raise KeyFileError(f"key file {path} is encrypted: a passphrase is needed") from exc
        except ValueError as exc:
            if passphrase and b"ENCRYPTED" in data:
                raise KeyFileError(f"wrong passphrase for key file {path}") from exc
            raise KeyFileError(f"key file {path} is not a valid PEM private key") from exc
        except Exception as exc:
            raise KeyFileError(f"cannot load key file {path}: {exc}") from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyFileError(f"key file {path} holds a {type(private).__name__}, not an Ed25519 key")
        return cls(private)


def verify(public: bytes, signature: bytes, kind: bytes, chain_id: str, obj: Any) -> bool:
    """True iff `signature` is `public`'s signature of sign_bytes(kind, chain_id, obj).

    Never raises: anything malformed (wrong types, sizes, unencodable obj) is simply False.
    Verification uses libsodium (PyNaCl) on every node: it is about twice as fast as OpenSSL here,
    and one implementation everywhere means every replica judges edge-case signatures (small-order
    keys, non-canonical encodings) the same way, which consensus needs.
    """
    if not (isinstance(public, bytes) and len(public) == PUBLIC_KEY_SIZE):
        return False
    if not (isinstance(signature, bytes) and len(signature) == SIGNATURE_SIZE):
        return False
    if not (isinstance(kind, bytes) and isinstance(chain_id, str)):
        return False
    try:
        message = sign_bytes(kind, chain_id, obj)
    except (CodecError, ValueError, TypeError):
        return False
    return verify_message(public, signature, message)


def verify_message(public: bytes, signature: bytes, message: bytes) -> bool:
    """Ed25519 verification of exact bytes (callers build domain-separated messages)."""
    if len(public) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        crypto_sign_open(signature + message, public)
    except (BadSignatureError, ValueError, TypeError):
        return False
    return True


def sign_vote(key: NodeKey, chain_id: str, vote: Vote) -> Vote:
    if vote.validator != key.public:
        raise ValueError(f"vote names validator {short_id(vote.validator)}, key is {key.short_id}")
    return vote.signed(key.sign(vote.type.kind, chain_id, vote.signing_fields()))


def verify_vote(chain_id: str, vote: Vote) -> bool:
    """Whether the vote's signature is valid. A precommit is checked when it arrives, again in
    the commit certificate of its block and once more as the next block's last_commit; a valid
    result is remembered (by everything signed, and the signature), so each costs one check."""
    try:
        kind = vote.type.kind
        fields = vote.signing_fields()
    except (AttributeError, ValueError, TypeError):
        return False
    key = (chain_id, kind, tuple(fields.items()), vote.validator, vote.signature)
    if key in _VALID_VOTES:
        return True
    ok = verify(vote.validator, vote.signature, kind, chain_id, fields)
    if ok:  # only successes: a forged vote must not evict good ones or be cached as good
        if len(_VALID_VOTES) >= MAX_VALID_VOTES:
            del _VALID_VOTES[next(iter(_VALID_VOTES))]
        _VALID_VOTES[key] = None
    return ok


MAX_VALID_VOTES = 20_000
_VALID_VOTES: dict[tuple[object, ...], None] = {}


def sign_proposal(key: NodeKey, chain_id: str, proposal: Proposal) -> Proposal:
    if proposal.proposer != key.public:
        raise ValueError(f"proposal names proposer {short_id(proposal.proposer)}, key is {key.short_id}")
    return proposal.signed(key.sign(PROPOSAL_KIND, chain_id, proposal.signing_fields()))


def verify_proposal(chain_id: str, proposal: Proposal) -> bool:
    return verify(proposal.proposer, proposal.signature, PROPOSAL_KIND, chain_id, proposal.signing_fields())
