"""A client of a node's HTTP API (GET /status, /blocks, /tx/ID, ...): one place that turns a node URL
into requests and every failure into `NodeUnreachable`.

A node URL may be given as ws://host:port (how peers and configs name a node) or http://host:port;
both name the same listener, which serves the websocket and the JSON API.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from node.errors import ConfigError, NodeUnreachable

HTTP_TIMEOUT_S = 5.0
PROBE_TIMEOUT_S = 1.0  # is the node up? (a stopped node refuses at once; a hung one must not stall us)


def http_base(url: str) -> str:
    """ws://h:p or http://h:p (any path) -> http://h:p."""
    parts = urlsplit(url)
    scheme = {"ws": "http", "http": "http", "wss": "https", "https": "https"}.get(parts.scheme)
    if scheme is None or not parts.hostname:
        raise ConfigError(f"{url!r} is not a node URL (ws://host:port or http://host:port)")
    try:
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        raise ConfigError(f"{url!r} has a bad port") from exc
    return f"{scheme}://{parts.netloc}"


def explorer_url(url: str) -> str:
    """Where the node at `url` serves its explorer page (GET / on its one port)."""
    return http_base(url) + "/"


def get_json(url: str, path: str, timeout: float = HTTP_TIMEOUT_S) -> Any:
    """GET `path` of the node at `url` and decode its JSON answer."""
    full = http_base(url) + path
    try:
        with urllib.request.urlopen(full, timeout=timeout) as resp:
            body = resp.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:200]
        raise NodeUnreachable(f"{full} answered HTTP {exc.code}: {detail}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NodeUnreachable(f"cannot reach {full}: {reason}") from exc
    try:
        return json.loads(body)
    except ValueError as exc:
        raise NodeUnreachable(f"{full} did not answer with JSON") from exc


def tx_committed(url: str, txid: bytes) -> bool:
    """Whether the node at `url` holds `txid` in a committed block."""
    try:
        get_json(url, f"/tx/{txid.hex()}")
        return True
    except NodeUnreachable:
        return False


def probe_status(
    url: str, node_id: str | None = None, timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any] | None:
    """/status of the node at `url` if it answers (and, given `node_id`, really is that node: something
    else may own the port); None otherwise."""
    try:
        st = get_json(url, "/status", timeout)
    except NodeUnreachable:
        return None
    if not isinstance(st, dict) or (node_id is not None and st.get("node_id") != node_id):
        return None
    return st


class HttpReplica:
    """A running node's replica, read through its API (/status, /blocks): a `node.store.compare.Replica`."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.base = http_base(target)
        self._hashes: dict[int, str] = {}
        st = get_json(self.base, "/status")
        try:
            self.node_id, self.height = str(st["node_id"]), int(st["height"])
            self.head_hash, self.genesis_hash = str(st["head_hash"]), str(st["genesis_hash"])
        except (KeyError, TypeError, ValueError) as exc:
            raise NodeUnreachable(f"{self.base}/status is not a fedledger node status") from exc

    def hash_at(self, height: int) -> str:
        if height == 0:
            return self.genesis_hash
        if height not in self._hashes:
            got = get_json(self.base, f"/blocks?from={height}&to={height}")
            blocks = got.get("blocks") if isinstance(got, dict) else None
            if not blocks or not isinstance(blocks[0], dict) or blocks[0].get("height") != height:
                raise NodeUnreachable(f"{self.base} returned no block {height} below its reported height")
            self._hashes[height] = str(blocks[0]["hash"])
        return self._hashes[height]
