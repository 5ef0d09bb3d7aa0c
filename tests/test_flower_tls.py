"""The SuperLink's TLS certificate and its pinning (node/flower/tls.py): a node connects its
SuperNode only to a SuperLink presenting the certificate whose hash the train request names."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from node.flower.supervise import FlowerRuntimeError
from node.flower.tls import SuperLinkCert, fingerprint, pin_superlink, superlink_cert


def test_the_certificate_is_made_once_per_node_and_names_its_host(tmp_path: Path) -> None:
    first = superlink_cert(tmp_path, "127.0.0.1")
    assert superlink_cert(tmp_path, "127.0.0.1") == first  # reused: its hash stays the requested one
    assert stat.S_IMODE(first.key.stat().st_mode) == 0o600
    assert fingerprint(first.cert.read_bytes()) == first.sha256 and len(first.sha256) == 64
    other_host = superlink_cert(tmp_path, "10.1.2.3")  # not valid for that host: a new one
    assert other_host.sha256 != first.sha256
    san = x509.load_pem_x509_certificate(other_host.cert.read_bytes()).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {"10.1.2.3", "127.0.0.1"}


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[int, SuperLinkCert]]:
    """A TLS listener with its own certificate, standing where the SuperLink should be."""
    cert = superlink_cert(tmp_path / "impostor")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert, cert.key)
    sock = socket.create_server(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    stop = threading.Event()

    def serve() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    tls.recv(1)
            except (OSError, ssl.SSLError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield port, cert
    stop.set()
    thread.join(timeout=5)
    sock.close()


def test_a_superlink_whose_certificate_differs_from_the_finalized_one_is_refused(
    tmp_path: Path, tls_server: tuple[int, SuperLinkCert]
) -> None:
    port, presented = tls_server
    finalized = superlink_cert(tmp_path / "coordinator")  # the hash the train request names
    out = tmp_path / "pinned.crt"
    with pytest.raises(FlowerRuntimeError, match="not connecting"):
        pin_superlink("127.0.0.1", port, finalized.sha256, out, wait_s=5)
    assert not out.exists()  # nothing for a SuperNode to trust
    assert pin_superlink("127.0.0.1", port, presented.sha256, out, wait_s=5) == out
    assert fingerprint(out.read_bytes()) == presented.sha256


def test_no_superlink_listening_is_an_error_after_the_wait(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening
        with pytest.raises(FlowerRuntimeError, match="no TLS SuperLink"):
            pin_superlink("127.0.0.1", port, "0" * 64, tmp_path / "x.crt", wait_s=0.5)
