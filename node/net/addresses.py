"""The addresses a node binds to and the one it advertises, checked before they reach a config.

A node on several machines has two addresses that may differ: the one it binds (`--host`, which may
be a wildcard such as 0.0.0.0 or a private address behind NAT) and the one the others dial
(`--advertise`, which goes into its join request, its peer handshakes and, on a coordinator, the
SuperLink address of a train_request). Both come from the command line or from config.json, so both
are hostile until checked here: one rule and one message for init, join and a config being loaded.
"""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

from node.errors import ConfigError

WILDCARDS = frozenset({"0.0.0.0", "::"})
MAX_HOST = 253  # DNS name length limit
MAX_URL = 256  # what a join_request's url field holds (node/ledger/transactions.py)
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")


def _is_hostname(text: str) -> bool:
    labels = text.rstrip(".").split(".")
    return 0 < len(text) <= MAX_HOST and all(_LABEL.match(label) for label in labels)


def check_host(host: object, what: str = "--host") -> str:
    """`host` if it is an IP address (v4 or v6, wildcards included) or a DNS name; ConfigError
    naming `what` otherwise."""
    if not isinstance(host, str) or not host:
        raise ConfigError(f"{what} must be an IP address or a host name, not {host!r}")
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not _is_hostname(host):
        raise ConfigError(f"{what} must be an IP address or a host name, not {host!r}")
    return host


def format_host(host: str) -> str:
    """`host` as it goes into a URL or a host:port (an IPv6 address in brackets)."""
    return f"[{host}]" if ":" in host else host


def advertise_url(value: object, default_port: int, what: str = "--advertise") -> str:
    """The ws:// URL peers should dial, from `ws://HOST[:PORT]`, `HOST[:PORT]` or `[V6][:PORT]`
    (the port defaults to the listen port). A wildcard cannot be dialled and is refused."""
    if not isinstance(value, str) or not value or len(value) > MAX_URL:
        raise ConfigError(f"{what} must be a ws:// URL or a host name, 1..{MAX_URL} characters")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"{what} must not contain spaces or control characters: {value!r}")
    text = value if "://" in value else f"ws://{value}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"{what} is not a valid URL ({exc}): {value!r}") from exc
    if parts.scheme != "ws":
        raise ConfigError(f"{what} must be a ws:// URL (peers speak websockets), not {value!r}")
    if parts.username or parts.password or parts.query or parts.fragment or parts.path not in ("", "/"):
        raise ConfigError(f"{what} must be ws://HOST[:PORT] with no path, user or query: {value!r}")
    if parts.hostname is None:
        raise ConfigError(f"{what} names no host: {value!r}")
    host = check_host(parts.hostname, what)
    if host in WILDCARDS:
        raise ConfigError(f"{what} {host} is a wildcard, which no peer can dial: give this machine's "
                          "address or name")
    if port is None:
        port = default_port
    if not 1 <= port <= 65535:
        raise ConfigError(f"{what} port must be in 1..65535, not {port}")
    return f"ws://{format_host(host)}:{port}"


def url_host(url: str) -> str:
    """The host of a ws:// URL made by `advertise_url` (without IPv6 brackets)."""
    host = urlsplit(url).hostname
    if host is None:
        raise ConfigError(f"{url!r} names no host")
    return host


def local_host(bind_host: str) -> str:
    """Where this machine reaches a listener bound to `bind_host` (a wildcard means loopback)."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind_host, bind_host)
