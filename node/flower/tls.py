"""TLS for the Flower links: the coordinator's SuperLink certificate and its pinning.

Each node directory holds a self-signed SuperLink certificate (`DIR/flower-tls/`, made on `init`
or when first needed, EC P-256, valid for the SuperLink's host). A train_request names the
SHA-256 of its DER encoding as `superlink_cert`; that hash is final on the ledger, agreed by the
authorities. A SuperNode does not trust whatever answers at the request's address: the node first
reads the certificate the SuperLink presents, refuses it unless its hash is the finalized one,
and then hands exactly that certificate to `flower-supernode --root-certificates`, so the TLS
handshake verifies the SuperLink against it (a server without that certificate's private key
fails the handshake, whoever listens on the port).

No flwr import here: `cryptography` and the standard library only.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from node.flower.supervise import FlowerRuntimeError

TLS_DIR = "flower-tls"
VALID_DAYS = 3650
FETCH_TIMEOUT_S = 5.0
MAX_CERT_BYTES = 16 * 1024


@dataclass(frozen=True)
class SuperLinkCert:
    cert: Path
    key: Path
    sha256: str  # hex of the DER encoding's SHA-256: what a train_request names


def fingerprint(pem: bytes) -> str:
    """Hex SHA-256 of the DER encoding of a PEM certificate; ValueError if it is not one."""
    if len(pem) > MAX_CERT_BYTES:
        raise ValueError("certificate too large")
    cert = x509.load_pem_x509_certificate(pem)
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        names.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        names.append(x509.DNSName(host))
    if host != "127.0.0.1":
        names.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    return names


def _covers(cert: x509.Certificate, host: str) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        return ipaddress.ip_address(host) in san.get_values_for_type(x509.IPAddress)
    except ValueError:
        return host in san.get_values_for_type(x509.DNSName)


def superlink_cert(directory: Path, host: str = "127.0.0.1") -> SuperLinkCert:
    """The node's SuperLink certificate for `host`, created (key 0600) if missing or not valid
    for that host."""
    tls = Path(directory) / TLS_DIR
    cert_path, key_path = tls / "superlink.crt", tls / "superlink.key"
    if cert_path.is_file() and key_path.is_file():
        pem = cert_path.read_bytes()
        if _covers(x509.load_pem_x509_certificate(pem), host):
            return SuperLinkCert(cert_path, key_path, fingerprint(pem))
    tls.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedledger SuperLink")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key_pem)
    os.replace(tmp_key, key_path)
    pem = cert.public_bytes(serialization.Encoding.PEM)
    tmp_cert = cert_path.with_suffix(".tmp")
    tmp_cert.write_bytes(pem)
    os.replace(tmp_cert, cert_path)
    return SuperLinkCert(cert_path, key_path, fingerprint(pem))


def presented_cert(host: str, port: int, timeout: float = FETCH_TIMEOUT_S) -> bytes:
    """The PEM certificate the server at host:port presents (not verified: the caller pins it)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((host, port), timeout=timeout) as raw, \
            ctx.wrap_socket(raw, server_hostname=host) as tls:
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise OSError("the server presented no certificate")
    return ssl.DER_cert_to_PEM_cert(der).encode()


def pin_superlink(host: str, port: int, expected_sha256: str, out: Path, wait_s: float = 300.0,
                  cancelled: Callable[[], bool] | None = None) -> Path:
    """Write the SuperLink's certificate to `out` once it is the finalized one; the SuperNode
    verifies the SuperLink against exactly this file. Waits up to `wait_s` for the SuperLink to
    listen (the coordinator starts it while the nodes start their SuperNodes), unless `cancelled()`
    says to stop waiting (the run moved to another SuperLink). Raises FlowerRuntimeError if the
    certificate differs: the node then never connects."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            pem = presented_cert(host, port)
            break
        except (OSError, ssl.SSLError) as exc:
            if cancelled is not None and cancelled():
                raise FlowerRuntimeError(f"stopped waiting for the SuperLink at {host}:{port}") from exc
            if time.monotonic() >= deadline:
                raise FlowerRuntimeError(
                    f"no TLS SuperLink at {host}:{port} after {wait_s:.0f} s: {exc}"
                ) from exc
            time.sleep(0.5)
    try:
        got = fingerprint(pem)
    except ValueError as exc:
        raise FlowerRuntimeError(f"the SuperLink at {host}:{port} presented no valid certificate") from exc
    if got != expected_sha256:
        raise FlowerRuntimeError(
            f"the SuperLink at {host}:{port} presents certificate {got[:16]}..., not the "
            f"{expected_sha256[:16]}... the train request names; not connecting"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(pem)
    return out
