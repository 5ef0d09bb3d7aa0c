"""SuperNode authentication keys (Flower's CLI-managed SuperNode auth, `--enable-supernode-auth`).

Each node has a Flower authentication key, `DIR/flower-auth/supernode.key` (EC P-384, OpenSSH
private format as `flower-supernode --auth-supernode-private-key` reads it, mode 0600), made when
first needed. Its public half, an OpenSSH public key line, is what the coordinator registers on
its SuperLink (`flwr supernode register`); a SuperNode whose key is not registered cannot
activate.

No flwr import here: `cryptography` only.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

AUTH_DIR = "flower-auth"


@dataclass(frozen=True)
class SuperNodeKey:
    private: Path
    public: bytes  # OpenSSH public key line, e.g. b"ecdsa-sha2-nistp384 AAAA..."


def _public_line(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def supernode_key(directory: Path) -> SuperNodeKey:
    """The node's SuperNode authentication key, created if missing."""
    d = Path(directory) / AUTH_DIR
    path = d / "supernode.key"
    if path.is_file():
        key = serialization.load_ssh_private_key(path.read_bytes(), None)
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return SuperNodeKey(path, _public_line(key))
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    new = ec.generate_private_key(ec.SECP384R1())
    pem = new.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                            serialization.NoEncryption())
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    os.replace(tmp, path)
    return SuperNodeKey(path, _public_line(new))
