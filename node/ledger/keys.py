"""Ed25519 identities: node keys on disk, signing and verification of everything signed.

Key files are PEM, mode 0600. A plain key is PKCS8. A key with a passphrase is sealed with
ChaCha20-Poly1305 under a key derived by scrypt (n = 2^17, r = 8, p = 1: about 0.3 s and 128 MiB
here, so a stolen file costs an attacker that much per guess); files written by older versions,
PKCS8 encrypted with PBKDF2 at 2,048 iterations, still load. A key file is never
overwritten: losing a validator key to a typo would be unrecoverable. Loading a key whose file is
readable by group or others is an error (as ssh does), not a warning: a node key that may have
leaked must not silently keep signing votes.
"""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from nacl.bindings import crypto_sign_open
from nacl.exceptions import BadSignatureError

from consensus.messages import Proposal, Vote
from node.errors import CodecError, KeyFileError
from node.ledger.codec import decode, encode, sign_bytes

PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64
PROPOSAL_KIND = b"proposal"

SEALED_PEM_LABEL = b"FEDLEDGER SCRYPT ED25519 PRIVATE KEY"
SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P = 17, 8, 1
# A hostile key file declares its own cost: bound it so loading one cannot exhaust memory or time.
MAX_SCRYPT_LOG_N, MAX_SCRYPT_R, MAX_SCRYPT_P = 20, 16, 4
_SEALED_FIELDS = {"v", "kdf", "log_n", "r", "p", "salt", "nonce", "sealed"}


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
        if passphrase:
            pem = seal(self._private.private_bytes_raw(), passphrase)
        else:
            pem = self._private.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
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
        if SEALED_PEM_LABEL in data:
            if not passphrase:
                raise KeyFileError(f"key file {path} is encrypted: a passphrase is needed")
            return cls(Ed25519PrivateKey.from_private_bytes(unseal(data, passphrase, path)))
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


def _scrypt(passphrase: bytes, salt: bytes, log_n: int, r: int, p: int) -> bytes:
    return Scrypt(salt=salt, length=32, n=2**log_n, r=r, p=p).derive(passphrase)


def seal(seed: bytes, passphrase: bytes) -> bytes:
    """The PEM of a 32-byte Ed25519 seed sealed under `passphrase`; the KDF parameters are the AEAD's
    associated data, so lowering them in the file makes it fail to open rather than open cheaply."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = {"v": 1, "kdf": "scrypt", "log_n": SCRYPT_LOG_N, "r": SCRYPT_R, "p": SCRYPT_P, "salt": salt}
    key = _scrypt(passphrase, salt, SCRYPT_LOG_N, SCRYPT_R, SCRYPT_P)
    sealed = ChaCha20Poly1305(key).encrypt(nonce, seed, encode(header))
    body = base64.encodebytes(encode({**header, "nonce": nonce, "sealed": sealed}))
    return b"-----BEGIN %s-----\n%s-----END %s-----\n" % (SEALED_PEM_LABEL, body, SEALED_PEM_LABEL)


def unseal(pem: bytes, passphrase: bytes, path: Path) -> bytes:
    """The seed inside a sealed key file; KeyFileError for anything malformed, too costly or wrong."""
    begin, end = b"-----BEGIN %s-----" % SEALED_PEM_LABEL, b"-----END %s-----" % SEALED_PEM_LABEL
    try:
        inner = pem.split(begin, 1)[1].split(end, 1)[0]
        doc = decode(base64.decodebytes(inner))
    except (IndexError, ValueError, CodecError) as exc:
        raise KeyFileError(f"key file {path} is not a valid sealed key") from exc
    if not isinstance(doc, dict) or set(doc) != _SEALED_FIELDS or doc["v"] != 1 or doc["kdf"] != "scrypt":
        raise KeyFileError(f"key file {path} is not a valid sealed key (unknown format or version)")
    log_n, r, p = doc["log_n"], doc["r"], doc["p"]
    salt, nonce, sealed = doc["salt"], doc["nonce"], doc["sealed"]
    if not all(type(x) is int for x in (log_n, r, p)) or not (
        1 <= log_n <= MAX_SCRYPT_LOG_N and 1 <= r <= MAX_SCRYPT_R and 1 <= p <= MAX_SCRYPT_P
    ):
        raise KeyFileError(f"key file {path} declares scrypt parameters out of bounds")
    if not all(isinstance(x, bytes) for x in (salt, nonce, sealed)) or len(nonce) != 12 or len(sealed) != 48:
        raise KeyFileError(f"key file {path} is not a valid sealed key")
    header = {"v": 1, "kdf": "scrypt", "log_n": log_n, "r": r, "p": p, "salt": salt}
    try:
        return ChaCha20Poly1305(_scrypt(passphrase, salt, log_n, r, p)).decrypt(nonce, sealed, encode(header))
    except InvalidTag as exc:
        raise KeyFileError(f"wrong passphrase for key file {path} (or the file was altered)") from exc


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
