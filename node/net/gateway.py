"""What the node's port offers besides peers: websocket clients and read-only HTTP GET (JSON).

Also the inbound frame gate shared by peer and client connections (`admit_frame`): size check,
rate limit, decode and validate, each failure counted and scored on the sender's `PeerState`.

Clients (wallets, sensors' gateways, the CLI) connect to `client_path` and skip the peer
handshake: they prove nothing about themselves, because everything they submit is signed and
validated by the ledger anyway. They get the same rate limits and misbehaviour score as peers.
"""

from __future__ import annotations

import contextlib
import http
import inspect
import json
import logging
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from node.errors import CodecError, ProtocolViolation, RemoteError
from node.ledger.codec import hexify
from node.net import wire
from node.net.handshake import CloseCode, Refusal
from node.net.peers import ClientLimits, PeerState, TokenBucket

log = logging.getLogger("fedledger.net")

HttpHandler = Callable[[str, dict[str, str]], "Awaitable[tuple[int, Any] | None] | tuple[int, Any] | None"]
ClientHandler = Callable[[str, Any], "Awaitable[tuple[str, Any] | None] | tuple[str, Any] | None"]

PEER_PATHS = frozenset({"/", "/peer"})


@dataclass(frozen=True, slots=True)
class ClientCaps:
    """Bounds on /client beyond one connection's tx quota: how many clients at once, and how a
    submission is cut into chunks so a client whose refused txs put it over its misbehaviour score
    is stopped within a chunk, not after a whole batch of forged signatures was checked."""

    max_clients: int = 512
    chunk: int = 25
    default_tx_penalty: float = 0.5  # a refusal not listed in peers.DEFAULT_PENALTIES
    # New client connections per second from all addresses together, refused (HTTP 429) before the
    # websocket upgrade beyond it. A sensor gateway connects once; an attacker with many addresses
    # replaces each connection that is cut off, so without this bound the checks each fresh
    # connection buys (one chunk of forged signatures) would add up. The node's own loopback tools
    # (launcher, CLI, benchmarks) are exempt, as they are from bans.
    connects_per_s: float = 10.0
    connects_burst: float = 40.0
    exempt: frozenset[str] = frozenset({"127.0.0.1", "::1"})


@dataclass(frozen=True, slots=True)
class HttpLimits:
    """HTTP GETs per second from one remote address (each request is its own connection, so the
    address is what persists). Well above what the CLI, the launcher and the benchmarks poll; a
    loop of /status or /blocks requests gets 429s instead of the event loop."""

    requests_per_s: float = 50.0
    burst: float = 100.0
    max_addresses: int = 1024  # addresses tracked; the least recently seen is forgotten first
    # All addresses together: many addresses, each within its limit, would otherwise keep the event
    # loop serving JSON (scripts/adversary.py, expensive_http). The node's own loopback tooling
    # (launcher, CLI, benchmarks) is exempt, as it is from address bans.
    node_requests_per_s: float = 40.0
    node_burst: float = 80.0
    node_exempt: frozenset[str] = frozenset({"127.0.0.1", "::1"})


async def maybe_await(value: Any) -> Any:
    """Handlers may be plain functions or coroutines; callers need not care which."""
    return await value if inspect.isawaitable(value) else value


def admit_frame(st: PeerState, data: bytes | str, max_frame: int, now: float) -> wire.Envelope | None:
    """Size check, rate limit, decode, validate. None: dropped, counted and scored (the caller
    checks `st.score.exceeded` to decide on a disconnect)."""
    st.received(len(data))
    if len(data) > max_frame:  # before anything else: no tokens spent, no parsing
        st.penalize("oversize", now)
        return None
    if not st.admit(len(data), now):
        return None
    try:
        return wire.decode_frame(data, max_frame=max_frame)  # type: ignore[arg-type]
    except ProtocolViolation as exc:
        st.penalize(exc.reason if exc.reason in ("text_frame", "oversize") else "protocol_violation", now)
    except CodecError:
        st.penalize("codec", now)
    return None


def misbehaved(st: PeerState) -> Refusal:
    worst = ", ".join(f"{r} x{n}" for r, n in st.score.reasons.most_common(3))
    return Refusal(CloseCode.MISBEHAVIOUR, "misbehaviour", worst)


@dataclass(frozen=True, slots=True)
class HttpBody:
    """A handler's answer that is not JSON (the explorer's page and its assets): sent as it is."""

    content_type: str
    data: bytes
    cache_control: str = "no-cache"
    headers: tuple[tuple[str, str], ...] = ()


def body_response(status: int, body: HttpBody) -> Response:
    headers = Headers([
        ("Content-Type", body.content_type), ("Content-Length", str(len(body.data))),
        ("Cache-Control", body.cache_control), ("X-Content-Type-Options", "nosniff"), ("Connection", "close"),
        *body.headers,
    ])
    return Response(status, _phrase(status), headers, body.data)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return ""


def json_response(status: int, body: Any) -> Response:
    # HTTP readers get hex for hashes and keys; anything else unexpected becomes its str().
    data = json.dumps(hexify(body), default=str, separators=(",", ":")).encode()
    headers = Headers([
        ("Content-Type", "application/json"), ("Content-Length", str(len(data))), ("Connection", "close"),
    ])
    return Response(status, _phrase(status), headers, data)


class Gateway:
    """Client websockets and HTTP GET on the node's port. Owned by PeerNetwork, which supplies
    the per-connection state factory and the node-wide counters."""

    def __init__(
        self,
        http_handler: HttpHandler | None,
        client_handler: ClientHandler | None,
        client_path: str,
        max_frame: int,
        new_state: Callable[[], PeerState],
        clock: Callable[[], float],
        events: Counter[str],
        disconnects: Counter[str],
        *,
        client_limits: ClientLimits | None = None,
        http_limits: HttpLimits | None = None,
        client_caps: ClientCaps | None = None,
        on_client_misbehaviour: Callable[[ServerConnection, Refusal], None] | None = None,
    ) -> None:
        self.http_handler = http_handler
        self.client_handler = client_handler
        self.client_path = client_path
        self.max_frame = max_frame
        self._new_state = new_state
        self._clock = clock
        self._events = events
        self._disconnects = disconnects
        self.clients: set[ServerConnection] = set()
        self.client_limits = client_limits or ClientLimits()
        self.client_caps = client_caps or ClientCaps()
        self.on_client_misbehaviour = on_client_misbehaviour  # the transport bans the address
        self.http_limits = http_limits or HttpLimits()
        self._http_buckets: OrderedDict[str, TokenBucket] = OrderedDict()
        lim = self.http_limits
        self._http_node = TokenBucket(lim.node_requests_per_s, lim.node_burst, clock())
        caps = self.client_caps
        self._client_connects = TokenBucket(caps.connects_per_s, caps.connects_burst, clock())

    def is_client_path(self, path: str) -> bool:
        return self.client_handler is not None and path == self.client_path

    async def process_request(self, ws: ServerConnection, request: Request) -> Response | None:
        """websockets' process_request hook: None lets a websocket upgrade proceed; a Response
        answers a plain HTTP request (or an upgrade to a path nobody serves)."""
        path, _, query = request.path.partition("?")
        if "websocket" in request.headers.get("Upgrade", "").lower():
            if self.is_client_path(path) and not self._client_connect_admit(ws):
                self._events["client_connect_rate_limited"] += 1
                return json_response(429, {"error": "rate_limited", "path": path})
            if path in PEER_PATHS or self.is_client_path(path):
                return None
            return json_response(404, {"error": "not_found", "path": path})
        self._events["http_requests"] += 1
        if self.http_handler is None:
            return json_response(404, {"error": "not_found", "path": path})
        if not self._http_admit(ws):
            self._events["http_rate_limited"] += 1
            return json_response(429, {"error": "rate_limited", "path": path})
        try:
            result = await maybe_await(self.http_handler(path, dict(parse_qsl(query))))
        except Exception:
            log.exception("http handler failed on %s", path)
            self._events["http_errors"] += 1
            return json_response(500, {"error": "internal_error", "path": path})
        if result is None:
            return json_response(404, {"error": "not_found", "path": path})
        if isinstance(result[1], HttpBody):
            return body_response(result[0], result[1])
        return json_response(result[0], result[1])

    def _http_admit(self, ws: ServerConnection) -> bool:
        addr = getattr(ws, "remote_address", None)
        host = str(addr[0]) if addr else "?"
        now = self._clock()
        bucket = self._http_buckets.get(host)
        if bucket is None:
            lim = self.http_limits
            bucket = self._http_buckets[host] = TokenBucket(lim.requests_per_s, lim.burst, now)
            while len(self._http_buckets) > lim.max_addresses:
                self._http_buckets.popitem(last=False)
        self._http_buckets.move_to_end(host)
        if host in self.http_limits.node_exempt:
            return bucket.take(1, now)
        # Both must have a token; the node-wide one is asked only if the address's has one.
        return bucket.available(now) >= 1 and self._http_node.take(1, now) and bucket.take(1, now)

    def _client_connect_admit(self, ws: ServerConnection) -> bool:
        addr = getattr(ws, "remote_address", None)
        host = str(addr[0]) if addr else "?"
        return host in self.client_caps.exempt or self._client_connects.take(1, self._clock())

    def new_quota(self) -> TokenBucket:
        """One client connection's tx quota."""
        lim = self.client_limits
        return TokenBucket(lim.txs_per_s, lim.txs_burst, self._clock())

    async def serve_client(self, ws: ServerConnection) -> None:
        if len(self.clients) >= self.client_caps.max_clients:
            self._disconnects["too_many_clients"] += 1
            with contextlib.suppress(ConnectionClosed):
                await ws.close(int(CloseCode.TOO_MANY_PEERS), f"too_many_clients: {len(self.clients)}")
            return
        st = self._new_state()
        quota = self.new_quota()
        self.clients.add(ws)
        try:
            with contextlib.suppress(ConnectionClosed):
                async for data in ws:
                    verdict = await self._on_frame(ws, st, data, quota)
                    if verdict is not None:
                        self._disconnects[verdict.reason] += 1
                        if verdict.code is CloseCode.MISBEHAVIOUR and self.on_client_misbehaviour:
                            self.on_client_misbehaviour(ws, verdict)
                        await ws.close(int(verdict.code), verdict.close_reason())
                        return
        finally:
            self.clients.discard(ws)

    async def _on_frame(
        self, ws: ServerConnection, st: PeerState, data: bytes | str, quota: TokenBucket
    ) -> Refusal | None:
        env = admit_frame(st, data, self.max_frame, self._clock())
        if env is None:
            if st.score.exceeded:
                return misbehaved(st)
            # Unlike a peer, a client is often a person or a script: tell it what went wrong.
            top = st.score.reasons.most_common(1)
            await self._reply(ws, st, wire.ERROR, {"reason": top[0][0] if top else "rejected"})
            return None
        if env.type in wire.HANDSHAKE_TYPES:
            await self._reply(ws, st, wire.ERROR, {"reason": "protocol_violation", "detail": "no handshake"})
            return misbehaved(st) if st.penalize("protocol_violation", self._clock()) else None
        refusal = self._over_quota(env, quota)
        if refusal is not None:
            reason, detail = refusal
            self._events[f"client_{reason}"] += 1
            await self._reply(ws, st, wire.ERROR, {"reason": reason, "detail": detail})
            offence = "client_batch_too_large" if reason == "batch_too_large" else "client_quota"
            return misbehaved(st) if st.penalize(offence, self._clock()) else None
        assert self.client_handler is not None  # only client-path connections are routed here
        try:
            if env.type == wire.SUBMIT_TXS:
                return await self._submit_in_chunks(ws, st, env.payload)
            reply = await maybe_await(self.client_handler(env.type, env.payload))
            if env.type == wire.SUBMIT_TX and reply is not None and reply[0] == wire.TX_RESULT:
                exceeded = self._charge_refusals(st, [reply[1]])
                await self._reply(ws, st, reply[0], reply[1])
                return misbehaved(st) if exceeded else None
        except RemoteError as exc:
            # Enum reasons (InvalidTransaction) carry .value; ProtocolViolation carries a str.
            reason = getattr(exc, "reason", "rejected")
            reason = str(getattr(reason, "value", reason))
            await self._reply(ws, st, wire.ERROR, {"reason": reason[:64], "detail": str(exc)[:200]})
            return misbehaved(st) if st.penalize("remote_error", self._clock()) else None
        except Exception:
            log.exception("client handler failed on %s", env.type)
            await self._reply(ws, st, wire.ERROR, {"reason": "internal_error"})
            return misbehaved(st) if st.penalize("handler_error", self._clock()) else None
        if reply is not None:
            await self._reply(ws, st, reply[0], reply[1])
        return None

    async def _submit_in_chunks(self, ws: ServerConnection, st: PeerState, txs: list[Any]) -> Refusal | None:
        """Admit a batch chunk by chunk, charging each chunk's refusals to the client's score; once
        it is over the threshold the rest is answered unprocessed and the connection is cut."""
        assert self.client_handler is not None
        results: list[Any] = []
        exceeded = False
        step = self.client_caps.chunk
        for k in range(0, len(txs), step):
            if exceeded:
                results += [{"id": None, "accepted": False, "reason": "misbehaviour"}] * (len(txs) - k)
                break
            reply = await maybe_await(self.client_handler(wire.SUBMIT_TXS, txs[k:k + step]))
            if reply is None or reply[0] != wire.TX_RESULTS:
                if reply is not None:
                    await self._reply(ws, st, reply[0], reply[1])
                return None
            results += reply[1]
            exceeded = self._charge_refusals(st, reply[1])
        await self._reply(ws, st, wire.TX_RESULTS, results)
        if exceeded:
            self._events["client_refused_txs_cutoff"] += 1
            return misbehaved(st)
        return None

    def _charge_refusals(self, st: PeerState, results: list[dict[str, Any]]) -> bool:
        """Score the client for the txs the ledger refused; True when it is over the threshold."""
        now = self._clock()
        exceeded = False
        for r in results:
            reason = r.get("reason") if isinstance(r, dict) else None
            if reason:
                offence = f"client_tx:{reason}"[:64]
                exceeded = st.penalize(offence, now, self.client_caps.default_tx_penalty) or exceeded
        return exceeded

    def _over_quota(self, env: wire.Envelope, quota: TokenBucket) -> tuple[str, str] | None:
        """Why a submission is refused before any of it is parsed: too many txs in one frame, or
        more than the connection's quota per second (the whole frame, so replies stay in order)."""
        if env.type == wire.SUBMIT_TX:
            n = 1
        elif env.type == wire.SUBMIT_TXS:
            n = len(env.payload)
        else:
            return None
        limit = self.client_limits.max_txs_per_frame
        if n > limit:
            return "batch_too_large", f"at most {limit} txs per submit_txs frame, not {n}"
        if not quota.take(n, self._clock()):
            return "rate_limited", f"more than {self.client_limits.txs_per_s:.0f} txs/s on this connection"
        return None

    async def _reply(self, ws: ServerConnection, st: PeerState, type_: str, payload: Any) -> None:
        data = wire.encode_frame(type_, payload, max_frame=self.max_frame)
        await ws.send(data)  # one client, served in order: a slow client only slows itself
        st.sent(len(data))
