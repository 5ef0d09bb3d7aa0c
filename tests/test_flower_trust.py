"""The Flower links a member can trust (issue 13, item 3), with real Flower processes where it
matters: a SuperLink with TLS and SuperNode authentication refuses a SuperNode whose key is not
registered and, from its removal on, one whose key was unregistered; its Control and Runtime APIs
answer only this host; a SuperNode runs fedledger's installed ClientApp, never code from the app
bundle. (A SuperNode that is shown a SuperLink certificate other than the finalized one is
refused in test_flower_tls.py.)
"""

from __future__ import annotations

import io
import socket
import ssl
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from federated.flower.fl_clientapp import CLIENTAPP, FabRefused, check_fab
from federated.flower.fl_superlink import LocalOnlyControl, local_addresses
from node.flower.auth import supernode_key
from node.flower.processes import SuperLinkProcess, SuperNodeProcess
from node.flower.run import register_supernodes, unregister_supernodes, write_connection
from node.flower.supervise import FlowerRuntimeError, stop_all
from node.flower.tls import pin_superlink, superlink_cert
from node.net.ports import free_port

APP_DIR = Path(__file__).resolve().parent.parent / "federated" / "flower"
CONNECTION = "trust-test"

flwr_build = pytest.importorskip("flwr.cli.build", reason="Flower is not installed")


# --- the app bundle: fedledger's ClientApp or nothing ------------------------------------------


def _fab_with(pyproject: str, extra: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("pyproject.toml", pyproject)
        for name, text in (extra or {}).items():
            z.writestr(name, text)
    return buf.getvalue()


def test_the_federations_own_app_bundle_passes_the_guard() -> None:
    fab = flwr_build.build_fab_from_disk(APP_DIR)  # what `flwr run` ships to every SuperNode
    app = check_fab(fab)
    assert app["components"]["clientapp"] == CLIENTAPP


@pytest.mark.parametrize(
    ("pyproject", "why"),
    [
        ('[tool.flwr.app]\npublisher = "fedledger"\n[tool.flwr.app.components]\nclientapp = "evil:app"\n',
         "names ClientApp 'evil:app'"),
        (f'[tool.flwr.app]\npublisher = "mallory"\n[tool.flwr.app.components]\nclientapp = "{CLIENTAPP}"\n',
         "publisher"),
        ('[tool.flwr.app]\npublisher = "fedledger"\n', "names ClientApp None"),
        ("not = [toml", "unreadable"),
    ],
)
def test_an_app_bundle_naming_other_code_is_refused(pyproject: str, why: str) -> None:
    with pytest.raises(FabRefused, match=why):
        check_fab(_fab_with(pyproject, {"evil.py": "import os; os.system('id')"}))


def test_garbage_and_oversized_bundles_are_refused() -> None:
    with pytest.raises(FabRefused, match="unreadable"):
        check_fab(b"PK\x03\x04 not a zip")
    with pytest.raises(FabRefused, match="unreadable"):
        check_fab(_fab_with("x = 1").replace(b"pyproject.toml", b"pyproject.tomx"))
    with pytest.raises(FabRefused, match="bytes"):
        check_fab(b"\0" * (5 * 1024 * 1024))


# --- the Control and Runtime APIs: this host only ----------------------------------------------


def _call(app: LocalOnlyControl, path: str, client: str) -> int:
    import asyncio

    sent: list[dict[str, object]] = []
    reached: list[str] = []

    async def inner(scope: object, receive: object, send: object) -> None:
        reached.append(path)

    app.app = inner

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": path, "client": (client, 40000)}
    asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
    if reached:
        return 0
    return int(sent[0]["status"])  # type: ignore[call-overload]


def test_only_the_fleet_api_is_served_to_other_hosts() -> None:
    guard = LocalOnlyControl(None, local_addresses("10.0.0.1"))  # type: ignore[arg-type]
    assert _call(guard, "/v1/fleet/pull-messages", "10.0.0.7") == 0
    assert _call(guard, "/v1/control/start-run", "10.0.0.7") == 403
    assert _call(guard, "/v1/runtime/pull-messages", "10.0.0.7") == 403
    assert _call(guard, "/docs", "10.0.0.7") == 403
    assert _call(guard, "/v1/fleetx/anything", "10.0.0.7") == 403
    for local in ("10.0.0.1", "127.0.0.1", "::1", "::ffff:127.0.0.1"):
        assert _call(guard, "/v1/control/start-run", local) == 0, local
    assert guard.refused == 4
    # bound to a wildcard, local tools reach it on loopback: only loopback is local
    assert local_addresses("0.0.0.0") == local_addresses("::") == frozenset({"127.0.0.1", "::1"})


def _post(host: str, port: int, path: str, source: str, cafile: Path) -> int:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False  # the certificate names the node's host, not 127.0.0.x
    with socket.create_connection((host, port), timeout=10, source_address=(source, 0)) as raw, \
            ctx.wrap_socket(raw) as tls:
        tls.sendall(f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/protobuf\r\n"
                    "Content-Length: 0\r\nConnection: close\r\n\r\n".encode())
        head = tls.recv(4096).split(b"\r\n", 1)[0]
    return int(head.split()[1])


@pytest.fixture
def superlink(tmp_path: Path) -> Iterator[tuple[SuperLinkProcess, Path]]:
    """A SuperLink as a coordinator runs it: TLS, SuperNode auth, bound to 127.0.0.2 (so that a
    client from 127.0.0.9 is another host as far as the SuperLink can tell)."""
    cert = superlink_cert(tmp_path / "coordinator", "127.0.0.2")
    link = SuperLinkProcess(tmp_path / "superlink", free_port("127.0.0.2"), host="127.0.0.2",
                            tls=(cert.cert, cert.key), supernode_auth=True)
    try:
        link.start(ready_timeout=120)
        pinned = pin_superlink(link.host, link.port, cert.sha256, tmp_path / "pinned.crt")
        write_connection(tmp_path / "cli", CONNECTION, link.address, pinned)
        yield link, pinned
    finally:
        stop_all([], link, [])


@pytest.mark.slow
@pytest.mark.federated
@pytest.mark.timeout(300)
def test_the_control_api_answers_only_this_host(superlink: tuple[SuperLinkProcess, Path]) -> None:
    link, pinned = superlink
    # from another address: Control and Runtime refused before Flower sees the request
    assert _post(link.host, link.port, "/v1/control/list-runs", "127.0.0.9", pinned) == 403
    assert _post(link.host, link.port, "/v1/runtime/pull-messages", "127.0.0.9", pinned) == 403
    # the Fleet API is Flower's to answer (an empty request is a bad request, not a refusal)
    assert _post(link.host, link.port, "/v1/fleet/get-run", "127.0.0.9", pinned) != 403
    # from the SuperLink's own address (the coordinator's CLI): Flower answers
    assert _post(link.host, link.port, "/v1/control/list-runs", "127.0.0.2", pinned) != 403
    assert "refused POST /v1/control/list-runs from 127.0.0.9" in link.log_path.read_text()


def _supernode(tmp_path: Path, name: str, link: SuperLinkProcess, pinned: Path,
               key: Path) -> SuperNodeProcess:
    return SuperNodeProcess(tmp_path / name, link.address, free_port(), {"data-dir": str(tmp_path / name)},
                            root_certificates=pinned, auth_key=key)


def _refused(sn: SuperNodeProcess) -> bool:
    """The SuperNode exits (before or after its own port opens) instead of joining."""
    try:
        sn.start(ready_timeout=120)
    except FlowerRuntimeError:
        return not sn.alive
    return _wait(lambda: not sn.alive, 90)


def _wait(pred: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return True
        time.sleep(0.5)
    return False


@pytest.mark.slow
@pytest.mark.federated
@pytest.mark.timeout(400)
def test_unregistered_and_removed_supernodes_are_refused(
    tmp_path: Path, superlink: tuple[SuperLinkProcess, Path]
) -> None:
    link, pinned = superlink
    stranger = supernode_key(tmp_path / "stranger")
    member = supernode_key(tmp_path / "member")
    nodes: list[SuperNodeProcess] = []
    try:
        # a SuperNode whose key the coordinator never registered cannot activate: it exits
        outsider = _supernode(tmp_path, "outsider", link, pinned, stranger.private)
        nodes.append(outsider)
        assert _refused(outsider), "an unregistered SuperNode stayed up"

        # a member's SuperNode, registered, connects and stays
        (node_id,) = register_supernodes(tmp_path / "cli", CONNECTION, [member.public])
        sn = _supernode(tmp_path, "member", link, pinned, member.private)
        nodes.append(sn.start(ready_timeout=120))
        time.sleep(10)  # several heartbeats
        assert sn.alive, sn.log_path.read_text()[-2000:]

        # the member is removed: its key is unregistered, its SuperNode is refused from then on
        unregister_supernodes(tmp_path / "cli", CONNECTION, [node_id])
        assert _wait(lambda: not sn.alive, 120), "a removed member's SuperNode stayed connected"
        again = _supernode(tmp_path, "member-again", link, pinned, member.private)
        nodes.append(again)
        assert _refused(again), "a removed member's SuperNode reconnected"
    finally:
        stop_all(nodes, None, [])
