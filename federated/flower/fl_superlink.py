"""``flower-superlink`` with its Control and Runtime APIs kept to this host.

Flower 1.41 serves the Fleet API (what SuperNodes use), the Control API (start runs, register
SuperNode keys: whoever reaches it can ship code to every SuperNode) and the Runtime API (what the
ServerApp and SuperExec pull and push through) on ONE port, and a federation across hosts must
expose that port. This entry point runs Flower's own SuperLink with one ASGI middleware in front:
a request for anything but the Fleet API (``/v1/fleet/``) is answered 403 unless it comes from a
loopback address or from the address the SuperLink is bound to (what the coordinator's own
``flwr`` CLI, ServerApp and SuperExec connect from). The middleware goes in through Flower's
extension hook (``flwr.superlink.extensions.get_middleware``), outermost, before any of Flower's.

    python -m federated.flower.fl_superlink [flower-superlink arguments]

It refuses to start on another Flower minor version: the hook is Flower's internal API.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import sys
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from node.proc import watch_parent

FLEET_PREFIX = "/v1/fleet/"
# A JSON file {"keys": [PUBLIC KEY FILE, ...], "out": FILE}: the SuperNode keys to register as soon
# as the SuperLink listens, from this process (Flower is imported already: a separate `flwr` CLI
# process pays tens of seconds of imports on a loaded machine, and no SuperNode can connect before).
REGISTER_ENV = "FEDLEDGER_REGISTER_KEYS"
REGISTER_WAIT_S = 120.0
SUPPORTED_FLWR = "1.41."
LOOPBACK = ("127.0.0.1", "::1")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Asgi = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("fedledger.superlink")


def normalise(host: str) -> str:
    """One spelling per address: ``::ffff:127.0.0.1`` is ``127.0.0.1``; names stay as given."""
    try:
        addr = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return str(addr)


def local_addresses(bind_host: str | None) -> frozenset[str]:
    """Where the coordinator's own processes connect from: loopback, and the bound address unless
    it is a wildcard (then local tools use loopback, node/net/addresses.py's local_host)."""
    hosts = set(LOOPBACK)
    if bind_host and normalise(bind_host) not in ("0.0.0.0", "::"):
        hosts.add(normalise(bind_host))
    return frozenset(hosts)


class LocalOnlyControl:
    """ASGI middleware: the Fleet API for everyone the TLS and SuperNode auth let in, everything
    else (Control, Runtime, docs) for this host only."""

    def __init__(self, app: Asgi, local: Iterable[str]) -> None:
        self.app = app
        self.local = frozenset(normalise(h) for h in local)
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") == "http" and not str(scope.get("path", "")).startswith(FLEET_PREFIX):
            client = scope.get("client")
            host = normalise(str(client[0])) if client else ""
            if host not in self.local:
                self.refused += 1
                log.warning("refused %s %s from %s: only the Fleet API is served off this host "
                            "(%d refused)", scope.get("method"), scope.get("path"), host or "?",
                            self.refused)
                body = json.dumps({"error": "only the Fleet API is served to other hosts"}).encode()
                await send({"type": "http.response.start", "status": 403,
                            "headers": [(b"content-type", b"application/json"),
                                        (b"content-length", str(len(body)).encode())]})
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def bind_host(argv: list[str]) -> str | None:
    """The value of ``--host`` (Flower's default is 127.0.0.1)."""
    for i, arg in enumerate(argv):
        if arg == "--host" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--host="):
            return arg.split("=", 1)[1]
    return "127.0.0.1"


def option(argv: list[str], name: str) -> str | None:
    for i, arg in enumerate(argv):
        if arg == name and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def register_when_listening(argv: list[str], spec_file: str) -> None:
    """Register the keys `spec_file` names once this SuperLink listens; the outcome goes to its
    "out" file (written whole: {"registered": [{"key", "node-id"}...]} or {"error": ...})."""
    import os
    import socket
    import time

    from flwr.cli.typing import SuperLinkConnection

    from federated.flower.fl_register import register

    with open(spec_file, encoding="utf-8") as fh:
        spec = json.load(fh)
    out = str(spec["out"])
    host = bind_host(argv) or "127.0.0.1"
    if normalise(host) in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    port = int(option(argv, "--port") or 9091)
    result: dict[str, Any]
    try:
        deadline = time.monotonic() + REGISTER_WAIT_S
        while True:
            try:
                socket.create_connection((host, port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        connection = SuperLinkConnection("fedledger-self", address=address,
                                         root_certificates=option(argv, "--ssl-ca-certfile"))
        result = {"registered": register(connection, [str(k) for k in spec["keys"]])}
    except Exception as exc:  # reported to the node, which registers them itself then
        result = {"error": f"{type(exc).__name__}: {exc}"}
    tmp = out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(result, fh)
    os.replace(tmp, out)
    log.info("SuperNode keys: %s", "registered" if "registered" in result else result["error"])


def main(argv: list[str]) -> int:
    import flwr
    from starlette.middleware import Middleware

    if not flwr.__version__.startswith(SUPPORTED_FLWR):
        print(f"fl_superlink: Flower {flwr.__version__} is not {SUPPORTED_FLWR}x, whose extension hook "
              "this relies on; refusing to start a SuperLink whose Control API may be open", file=sys.stderr)
        return 2
    from flwr.superlink import extensions
    from flwr.superlink.cli import flower_superlink

    local = local_addresses(bind_host(argv))
    original = extensions.get_middleware

    def get_middleware() -> tuple[Middleware, ...]:
        return (Middleware(LocalOnlyControl, local=local), *original())  # type: ignore[arg-type]

    extensions.get_middleware = get_middleware
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    watch_parent()  # stop when the node that started it is gone (its SuperExec and ServerApp follow)
    import os
    import threading

    spec = os.environ.pop(REGISTER_ENV, "")
    if spec:
        threading.Thread(target=register_when_listening, args=(argv, spec), daemon=True,
                         name="register-keys").start()
    log.info("Control and Runtime APIs served to %s only", ", ".join(sorted(local)))
    sys.argv = ["flower-superlink", *argv]
    flower_superlink()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
