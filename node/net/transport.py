"""The node's network: one websocket port for peers, clients and read-only HTTP GET.

This is the thin asyncio layer around the sans-I/O parts (wire.py, handshake.py, peers.py). It
owns every socket, task and timeout. Its contract with the rest of the node:

- `on_message(peer, type, payload)` is called, in order, for every valid peer frame after the
  handshake (except `peers`, which the transport consumes for peer exchange). Frames from one
  peer are handled one at a time, so a slow handler back-pressures that peer only.
- Nothing a remote sends can raise out of here: every inbound frame is size-checked, rate
  limited, decoded and validated, and any exception while handling it is caught, counted and
  scored against the sender; a score over the threshold closes the connection (4005).
- `send`/`broadcast` never block: frames go to a bounded per-peer queue drained by a writer task.
- Every peer frame after the handshake is sealed (handshake.py, session.py): the writer seals each
  frame as it sends it, in order; the reader opens each before anything else. A frame that does
  not open closes the link with 4009 (bad_seal) and bans the sending address for a while.
- Bounds: at most `max_inbound` inbound and `max_peers` peers in all (4011 beyond, refused before
  the handshake where possible); a peer cut off for misbehaviour (4005) is banned by node key and
  by address for a period that doubles per offence (4010 on reconnect; loopback addresses are
  exempt from address bans by default, since on one host or behind a proxy they name nobody);
  dial targets learnt by peer exchange are bounded per announcing peer and in total
  (peers.AddressBook), dropped after a failed dial, and one announced by several peers can take
  the slot of one announced by a single peer.

Paths on the port: "/" or "/peer" (websocket, peer handshake), `client_path` (websocket, no
handshake, requests answered by `client_handler`), anything else without an Upgrade header is
a plain HTTP GET answered with JSON from `http_handler`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import sys
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from node.errors import ProtocolViolation, RemoteError
from node.ledger.keys import NodeKey, short_id
from node.net import wire
from node.net.gateway import ClientHandler, Gateway, HttpHandler, admit_frame, maybe_await, misbehaved
from node.net.handshake import CloseCode, Handshake, Refusal
from node.net.peers import AddressBook, BanList, Counters, PeerState, RateLimits
from node.net.session import TAG_SIZE, Session

log = logging.getLogger("fedledger.net")

MessageHandler = Callable[["PeerInfo", str, Any], "Awaitable[None] | None"]
# Refusals after which dialling a *learned* URL again is pointless (bootstrap URLs keep trying).
_PERMANENT = frozenset({"wrong_federation", "unknown_peer", "self_connection"})
# websockets' own hard limit: frames up to this size reach us and are counted and dropped;
# beyond it websockets closes with 1009 before buffering more (a peer cannot make us hold more).
_HARD_LIMIT_FACTOR = 2
# Disconnects that ban: misbehaviour is attributable to the node key (its frames opened under the
# session the key proved); a bad seal is not (anyone on the path can write garbage), so it bans the
# address the bytes came from, never the key.
_BAN_KEY_AND_ADDRESS = frozenset({CloseCode.MISBEHAVIOUR})
_BAN_ADDRESS = frozenset({CloseCode.MISBEHAVIOUR, CloseCode.BAD_SEAL})
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class PeerInfo:
    """An established, authenticated peer connection. `state` is live (counters, score)."""

    key: bytes
    url: str | None  # the listen URL the peer advertised (used for peer exchange)
    remote: str  # socket address, for humans
    direction: str  # "inbound" | "outbound": who dialled
    connected_since: float  # wall-clock seconds
    role: str | None
    state: PeerState = field(repr=False, compare=False)

    @property
    def short_id(self) -> str:
        return short_id(self.key)

    def to_json(self, now: float) -> dict[str, Any]:
        return {
            "key": self.key.hex(), "short_id": self.short_id, "url": self.url, "remote": self.remote,
            "direction": self.direction, "connected_since": self.connected_since, "role": self.role,
            **self.state.to_json(now),
        }


class _Conn:
    """One established peer connection: socket, bookkeeping, and its bounded send queue."""

    def __init__(self, ws: Any, info: PeerInfo, session: Session) -> None:
        self.ws = ws
        self.info = info
        self.session = session
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wakeup = asyncio.Event()
        self.closing = False


async def _deadline(coro: Awaitable[None], seconds: float) -> None:
    # Not asyncio.wait_for where avoidable: before 3.12 it can swallow a cancellation (stop())
    # that arrives just as the inner coroutine completes. 3.10 has no asyncio.timeout; there the
    # `_stopping` check after the handshake catches that race.
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            await coro
    else:
        await asyncio.wait_for(coro, seconds)


def _remote(ws: Any) -> str:
    addr = getattr(ws, "remote_address", None)
    return f"{addr[0]}:{addr[1]}" if addr else "?"


def _remote_ip(ws: Any) -> str:
    addr = getattr(ws, "remote_address", None)
    return str(addr[0]) if addr else "?"


class PeerNetwork:
    def __init__(
        self,
        key: NodeKey,
        chain_id: str,
        genesis_hash: bytes,
        host: str = "127.0.0.1",
        port: int = 0,
        bootstrap: Iterable[str] = (),
        on_message: MessageHandler | None = None,
        *,
        http_handler: HttpHandler | None = None,
        client_handler: ClientHandler | None = None,
        client_path: str = "/client",
        max_frame: int = wire.DEFAULT_MAX_FRAME,
        rate_limits: RateLimits | None = None,
        score_threshold: float = 100.0,
        score_decay_per_s: float = 0.5,
        send_queue_frames: int = 1024,
        send_queue_bytes: int = 32 * 1024 * 1024,
        handshake_timeout: float = 5.0,
        pex_interval: float = 30.0,
        reconnect_base: float = 0.5,
        reconnect_cap: float = 30.0,
        reconnect_check: float = 1.0,
        max_dial_targets: int = 64,
        max_learned_failures: int = 1,
        max_peers: int = 64,
        max_inbound: int = 48,
        pex_per_peer: int = 32,
        pex_max_urls: int = 256,
        unreachable_hold: float = 60.0,
        ban_base: float = 60.0,
        ban_cap: float = 24 * 3600.0,
        ban_exempt_ips: Iterable[str] = LOOPBACK,
        ping_interval: float | None = 20.0,
        role: str | None = None,
        allowed: Callable[[bytes], bool] | None = None,
        advertise_url: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.key = key
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.host = host
        self.port = port
        self.bootstrap = list(bootstrap)
        self.on_message = on_message
        self.max_frame = max_frame
        self.rate_limits = rate_limits or RateLimits()
        self.score_threshold = score_threshold
        self.score_decay_per_s = score_decay_per_s
        self.send_queue_frames = send_queue_frames
        self.send_queue_bytes = send_queue_bytes
        self.handshake_timeout = handshake_timeout
        self.pex_interval = pex_interval
        self.reconnect_base = reconnect_base
        self.reconnect_cap = reconnect_cap
        self.reconnect_check = reconnect_check
        self.max_dial_targets = max_dial_targets
        self.max_learned_failures = max_learned_failures
        self.max_peers = max_peers
        self.max_inbound = max_inbound
        self.ban_exempt_ips = frozenset(ban_exempt_ips)
        self.bans = BanList(ban_base, ban_cap)
        self.addresses = AddressBook(pex_per_peer, pex_max_urls, unreachable_hold)
        self._persistent: set[str] = set()  # bootstrap URLs: dialled forever, outside the learnt bounds
        self._inbound_pending = 0  # inbound connections in their handshake (they hold a slot too)
        self.ping_interval = ping_interval
        self.role = role
        self.allowed = allowed
        self._advertise_url = advertise_url
        self._clock = clock
        self._rng = rng or random.Random()
        self._server: Server | None = None
        self._conns: dict[bytes, _Conn] = {}
        self._url_keys: dict[str, bytes] = {}  # dialled/advertised URL -> key proven behind it
        self._dialers: dict[str, asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self._totals = Counters()
        self._refusals: Counter[str] = Counter()  # handshakes we refused, by reason
        self._refused_by_peer: Counter[str] = Counter()  # handshakes peers refused, by reason
        self._disconnects: Counter[str] = Counter()  # established connections we closed, by reason
        self._events: Counter[str] = Counter()  # dial failures, http requests, ...
        self.gateway = Gateway(http_handler, client_handler, client_path, max_frame, self._new_state,
                               clock, self._events, self._disconnects,
                               on_client_misbehaviour=self._ban_client)

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        ws_limit = self.max_frame * _HARD_LIMIT_FACTOR
        self._server = await serve(
            self._on_connection, self.host, self.port,
            process_request=self.gateway.process_request, max_size=ws_limit, max_queue=8,
            compression=None,  # a compressed bomb would inflate to max_size anyway; msgpack is dense
            ping_interval=self.ping_interval, open_timeout=self.handshake_timeout, server_header=None,
        )
        self.port = self._server.sockets[0].getsockname()[1]  # port 0: the kernel's choice
        for url in self.bootstrap:
            self._add_dial_target(url, persistent=True)
        self._spawn(self._pex_loop())
        log.info("node %s listening on %s", self.key.short_id, self.url)

    async def stop(self) -> None:
        """Close every connection with 1001 (going away), stop dialling, stop listening."""
        self._stopping = True
        closing = [c.ws for c in self._conns.values()] + list(self.gateway.clients)
        await asyncio.gather(*(ws.close(1001, "node shutting down") for ws in closing),
                             return_exceptions=True)
        tasks = list(self._dialers.values()) + list(self._tasks)
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @property
    def url(self) -> str:
        if self._advertise_url:
            return self._advertise_url
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}"

    # -- public API -------------------------------------------------------------------------------

    def send(self, peer_key: bytes, type_: str, payload: Any) -> bool:
        """Queue one frame for one peer. False if not connected or dropped (counted)."""
        conn = self._conns.get(peer_key)
        data = wire.encode_frame(type_, payload, max_frame=self.max_frame)
        return conn is not None and self._enqueue(conn, type_, data)

    def broadcast(self, type_: str, payload: Any, exclude: bytes | Iterable[bytes] | None = None) -> int:
        """Queue one frame for every peer (but `exclude`); returns how many accepted it."""
        data = wire.encode_frame(type_, payload, max_frame=self.max_frame)  # encode once
        skip = {exclude} if isinstance(exclude, bytes) else set(exclude or ())
        return sum(self._enqueue(c, type_, data) for k, c in list(self._conns.items()) if k not in skip)

    def broadcast_frame(self, type_: str, data: bytes, exclude: bytes | Iterable[bytes] | None = None) -> int:
        """broadcast() for a frame the caller already encoded (see wire.encode_txs_frame)."""
        skip = {exclude} if isinstance(exclude, bytes) else set(exclude or ())
        return sum(self._enqueue(c, type_, data) for k, c in list(self._conns.items()) if k not in skip)

    def peers(self) -> list[PeerInfo]:
        return [c.info for c in self._conns.values()]

    def stats(self) -> dict[str, Any]:
        now = self._clock()
        return {
            "url": self.url, "node": self.key.short_id, "peers": len(self._conns),
            "clients": len(self.gateway.clients), "dial_targets": sorted(self._dialers),
            **self._totals.to_json(),
            "handshake_refusals": dict(self._refusals), "refused_by_peer": dict(self._refused_by_peer),
            "disconnects": dict(self._disconnects), "events": dict(self._events),
            "bans_active": self.bans.active(now), "pex_addresses": len(self.addresses),
            "peer_list": [c.info.to_json(now) for c in self._conns.values()],
        }

    # -- sending ----------------------------------------------------------------------------------

    def _enqueue(self, conn: _Conn, type_: str, data: bytes) -> bool:
        st = conn.info.state
        if conn.closing:
            st.dropped("closing")
            return False
        n = len(data)
        full = len(conn.queue) >= self.send_queue_frames or conn.queued_bytes + n > self.send_queue_bytes
        if full and type_ in wire.DROPPABLE_TYPES:
            st.dropped("queue_full")
            return False
        # Frames we may not drop get a second allowance; past it, the peer is too slow to keep.
        if full and (len(conn.queue) >= 2 * self.send_queue_frames
                     or conn.queued_bytes + n > 2 * self.send_queue_bytes):
            st.dropped("slow_peer")
            self._close(conn, Refusal(CloseCode.SLOW_PEER, "slow_peer", "send queue overflow"))
            return False
        conn.queue.append(data)
        conn.queued_bytes += n
        conn.wakeup.set()
        return True

    async def _writer(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                while not conn.queue:
                    conn.wakeup.clear()
                    await conn.wakeup.wait()
                data = conn.queue.popleft()
                conn.queued_bytes -= len(data)
                # Sealed here, in send order: the receiver's counter nonce expects exactly this order.
                sealed = conn.session.seal(data)
                await conn.ws.send(sealed)  # waits only for this peer's socket buffer to drain
                conn.info.state.sent(len(sealed))

    def _close(self, conn: _Conn, why: Refusal) -> None:
        """Close a registered connection from synchronous code; its handler task cleans up."""
        if not conn.closing:
            conn.closing = True
            self._disconnects[why.reason] += 1
            log.info("closing %s: %s", conn.info.short_id, why.close_reason())
            self._ban(conn, why)
            self._spawn(conn.ws.close(int(why.code), why.close_reason()))

    def _ban(self, conn: _Conn, why: Refusal) -> None:
        ids: list[Any] = []
        if why.code in _BAN_KEY_AND_ADDRESS:
            ids.append(conn.info.key)
        ip = _remote_ip(conn.ws)
        if why.code in _BAN_ADDRESS and ip not in self.ban_exempt_ips and ip != "?":
            ids.append(ip)
        if ids:
            seconds = self.bans.ban(ids, self._clock())
            self._events["bans"] += 1
            log.warning("banned %s (%s) for %.0fs: %s", conn.info.short_id, ip, seconds, why.reason)

    def _ban_client(self, ws: Any, why: Refusal) -> None:
        """A client has no node key: a client cut off for misbehaviour is banned by address."""
        ip = _remote_ip(ws)
        if ip not in self.ban_exempt_ips and ip != "?":
            seconds = self.bans.ban([ip], self._clock())
            self._events["bans"] += 1
            log.warning("banned client %s for %.0fs: %s", ip, seconds, why.reason)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connections ------------------------------------------------------------------------------

    async def _on_connection(self, ws: ServerConnection) -> None:
        path = ws.request.path.partition("?")[0] if ws.request else "/"
        # Refused before the handshake: a banned address or a full house costs us no signature.
        ip = _remote_ip(ws)
        if ip not in self.ban_exempt_ips and (left := self.bans.banned_for(ip, self._clock())) > 0:
            why = Refusal(CloseCode.BANNED, "banned", f"address banned for {left:.0f}s")
            await self._refuse_early(ws, why)
            return
        if self.gateway.is_client_path(path):
            await self.gateway.serve_client(ws)
            return
        inbound = sum(c.info.direction == "inbound" for c in self._conns.values()) + self._inbound_pending
        if inbound >= self.max_inbound or len(self._conns) + self._inbound_pending >= self.max_peers:
            await self._refuse_early(ws, Refusal(CloseCode.TOO_MANY_PEERS, "too_many_peers",
                                                 f"{len(self._conns)} peers, {inbound} inbound"))
            return
        await self._serve_peer(ws, "inbound", None)

    async def _refuse_early(self, ws: Any, why: Refusal) -> None:
        self._refusals[why.reason] += 1
        log.info("refused inbound %s: %s", _remote(ws), why.close_reason())
        await ws.close(int(why.code), why.close_reason())

    def _new_state(self) -> PeerState:
        return PeerState(self._clock(), self.rate_limits, threshold=self.score_threshold,
                         decay_per_s=self.score_decay_per_s, totals=self._totals)

    async def _serve_peer(self, ws: Any, direction: str, dial_url: str | None) -> str:
        """Run one peer connection to its end. Returns "established" or why it never was."""
        state = self._new_state()
        hs = Handshake(self.key, self.chain_id, self.genesis_hash, os.urandom(wire.NONCE_SIZE), self.url,
                       role=self.role, allowed=self.allowed, max_frame=self.max_frame)
        pending = direction == "inbound"
        self._inbound_pending += int(pending)
        try:
            await _deadline(self._handshake(ws, hs, state), self.handshake_timeout)
        except asyncio.TimeoutError:
            hs.refuse(CloseCode.HANDSHAKE_TIMEOUT, "handshake_timeout", f"none in {self.handshake_timeout}s")
        except ConnectionClosed as exc:
            code = exc.rcvd.code if exc.rcvd else 1006
            reason = (exc.rcvd.reason if exc.rcvd else "").partition(":")[0] or str(code)
            if 4000 <= code < 5000:
                self._refused_by_peer[reason] += 1
                log.info("%s refused us: %s", dial_url or _remote(ws), exc.rcvd.reason if exc.rcvd else "")
                if reason == "self_connection" and dial_url:
                    self._url_keys[dial_url] = self.key.public
                return reason
            self._events["handshake_closed"] += 1
            return "closed"
        finally:
            self._inbound_pending -= int(pending)
        if hs.refusal is None and hs.peer and (left := self.bans.banned_for(hs.peer.key, self._clock())) > 0:
            hs.refuse(CloseCode.BANNED, "banned", f"node banned for {left:.0f}s")
        if hs.refusal is not None or hs.peer is None or hs.session is None:
            why = hs.refusal or Refusal(CloseCode.PROTOCOL_VIOLATION, "protocol_violation")
            self._refusals[why.reason] += 1
            log.info("refused %s peer %s: %s", direction, dial_url or _remote(ws), why.close_reason())
            if why.reason == "self_connection" and dial_url:
                self._url_keys[dial_url] = self.key.public
            await ws.close(int(why.code), why.close_reason())
            return why.reason
        if self._stopping:  # stop() has already closed the registered connections
            await ws.close(1001, "node shutting down")
            return "stopping"
        peer = hs.peer
        info = PeerInfo(peer.key, peer.listen_url, _remote(ws), direction, time.time(), peer.role, state)
        conn = _Conn(ws, info, hs.session)
        if (why := self._register(conn, dial_url)) is not None:
            await ws.close(int(why.code), why.close_reason())
            return why.reason
        writer = asyncio.ensure_future(self._writer(conn))
        try:
            self._after_connect(conn)
            await self._read_loop(conn)
        finally:
            if self._conns.get(peer.key) is conn:
                del self._conns[peer.key]
                self.addresses.forget_peer(peer.key)
            conn.closing = True
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
            log.info("peer %s disconnected", info.short_id)
        return "established"

    async def _handshake(self, ws: Any, hs: Handshake, state: PeerState) -> None:
        hs.start()
        while True:
            for out in hs.data_to_send():
                await ws.send(out)
                state.sent(len(out))
            if hs.refusal is not None or hs.established:
                return
            data = await ws.recv()
            state.received(len(data))
            hs.receive_data(data)

    def _register(self, conn: _Conn, dial_url: str | None) -> Refusal | None:
        """At most one connection per peer key, and the peer caps; why `conn` is refused, if it is."""
        key = conn.info.key
        old = self._conns.get(key)
        if old is None:  # a replacement takes its predecessor's slot; anything else needs a free one
            inbound = sum(c.info.direction == "inbound" for c in self._conns.values())
            if len(self._conns) >= self.max_peers or (conn.info.direction == "inbound"
                                                      and inbound >= self.max_inbound):
                self._refusals["too_many_peers"] += 1
                return Refusal(CloseCode.TOO_MANY_PEERS, "too_many_peers", f"{len(self._conns)} peers")
        if old is not None and not old.closing:
            # Both ends must keep the same connection without talking about it: keep the one
            # dialled by the smaller key; between two dialled by the same side (a reconnect the
            # other end has not noticed yet), keep the newer one.
            def dialler(c: _Conn) -> bytes:
                return self.key.public if c.info.direction == "outbound" else key

            if dialler(old) != dialler(conn) and dialler(old) < dialler(conn):
                self._disconnects["duplicate_connection"] += 1
                return Refusal(CloseCode.DUPLICATE, "duplicate_connection", "already connected")
            self._close(old, Refusal(CloseCode.DUPLICATE, "duplicate_connection", "replaced by a newer one"))
        self._conns[key] = conn
        for url in (dial_url, conn.info.url):
            if url:
                self._url_keys[url] = key
        return None

    async def _read_loop(self, conn: _Conn) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for data in conn.ws:
                verdict = await self._on_peer_frame(conn, data)
                if verdict is not None:
                    self._close(conn, verdict)
                    return

    async def _on_peer_frame(self, conn: _Conn, data: bytes | str) -> Refusal | None:
        st = conn.info.state
        # Open first (the limit allows for the tag): the counter nonce must advance on every sealed
        # frame, including those the rate limit then drops. A text or oversized frame is no sealed
        # frame of the peer's (it never sends one): admit_frame counts and scores it unopened.
        if isinstance(data, (bytes, bytearray, memoryview)) and len(data) <= self.max_frame + TAG_SIZE:
            try:
                data = conn.session.open(data)
            except ProtocolViolation as exc:
                st.received(len(data))
                st.penalize(exc.reason, self._clock())
                return Refusal(CloseCode.BAD_SEAL, exc.reason, exc.detail)
        env = admit_frame(st, data, self.max_frame, self._clock())
        if env is None:
            return misbehaved(st) if st.score.exceeded else None
        if env.type not in wire.PEER_TYPES:
            return self._penalize(st, "protocol_violation", f"{env.type} from a peer")
        if env.type == wire.PEERS:
            self._on_peers(conn, env.payload)
            return None
        if self.on_message is None:
            return None
        try:
            await maybe_await(self.on_message(conn.info, env.type, env.payload))
        except ProtocolViolation as exc:  # the handler names the offence: score it as such
            log.debug("%s from %s rejected: %s", env.type, conn.info.short_id, exc)
            return self._penalize(st, exc.reason)
        except RemoteError as exc:
            log.debug("%s from %s rejected: %s", env.type, conn.info.short_id, exc)
            return self._penalize(st, "remote_error")
        except Exception:
            log.exception("handler failed on %s from %s", env.type, conn.info.short_id)
            return self._penalize(st, "handler_error")
        return None

    def _penalize(self, st: PeerState, reason: str, detail: str = "") -> Refusal | None:
        if detail:
            log.debug("penalize %s: %s", reason, detail)
        return misbehaved(st) if st.penalize(reason, self._clock()) else None

    # -- peer exchange and dialling ---------------------------------------------------------------

    def _peer_urls(self, exclude: bytes | None = None) -> list[str]:
        urls = [c.info.url for k, c in self._conns.items() if k != exclude and c.info.url]
        return urls[: wire.MAX_PEX_URLS]

    def _after_connect(self, conn: _Conn) -> None:
        info = conn.info
        log.info("%s: peer %s connected (%s, %s)", self.key.short_id, info.short_id, info.direction, info.url)
        self._enqueue(conn, wire.PEERS, wire.encode_frame(wire.PEERS, self._peer_urls(conn.info.key)))
        if conn.info.url:  # tell everyone else about the newcomer at once: a full mesh sooner
            self.broadcast(wire.PEERS, [conn.info.url], exclude=conn.info.key)

    async def _pex_loop(self) -> None:
        while True:
            await asyncio.sleep(self.pex_interval)
            for key in list(self._conns):
                if conn := self._conns.get(key):
                    self._enqueue(conn, wire.PEERS, wire.encode_frame(wire.PEERS, self._peer_urls(key)))

    def _on_peers(self, conn: _Conn, urls: list[str]) -> None:
        for url in urls:
            if url == self.url or (k := self._url_keys.get(url)) == self.key.public or k in self._conns:
                continue  # ourselves, or a peer we have: nothing to learn, no quota spent
            if not self.addresses.announce(conn.info.key, url):
                self._events["pex_bounded"] += 1  # over the announcing peer's quota or the book's
                continue
            self._add_dial_target(url, persistent=False)

    def _learned_connected(self, url: str) -> bool:
        key = self._url_keys.get(url)
        return key is not None and key in self._conns

    def _add_dial_target(self, url: str, *, persistent: bool) -> None:
        if self._stopping or url == self.url or url in self._dialers:
            return
        if self._url_keys.get(url) == self.key.public:
            return
        if persistent:
            self._persistent.add(url)
        else:
            if not self.addresses.dialable(url, self._clock()):
                self._events["dial_target_unreachable"] += 1
                return
            learned = [u for u in self._dialers if u not in self._persistent]
            if len(learned) >= self.max_dial_targets:
                # Full: a target more peers announced takes the slot of the least-announced one we
                # are not connected through, so one peer's spam cannot keep the others' out.
                idle = [u for u in learned if not self._learned_connected(u)]
                victim = min(idle, key=self.addresses.votes, default=None)
                if victim is None or self.addresses.votes(victim) >= self.addresses.votes(url):
                    self._events["dial_targets_full"] += 1
                    return
                task = self._dialers.pop(victim)
                task.cancel()
                self._tasks.add(task)  # stop() still waits for it
                task.add_done_callback(self._tasks.discard)
                self._events["dial_target_replaced"] += 1
        self._dialers[url] = asyncio.ensure_future(self._dial_loop(url, persistent))

    def _backoff(self, failures: int) -> float:
        # Capped exponential with jitter in [50 %, 100 %]: restarted nodes do not redial in lockstep.
        delay = min(self.reconnect_cap, self.reconnect_base * 2 ** min(failures, 30))
        return delay * (0.5 + self._rng.random() / 2)

    async def _dial_loop(self, url: str, persistent: bool) -> None:
        failures = 0
        try:
            while not self._stopping:
                key = self._url_keys.get(url)
                if key == self.key.public:
                    return
                if key is not None and key in self._conns:  # connected already, either direction
                    await asyncio.sleep(self.reconnect_check)
                    continue
                if key is not None and self.bans.banned_for(key, self._clock()) > 0:
                    if not persistent:
                        return
                    await asyncio.sleep(self.reconnect_check)
                    continue
                if len(self._conns) >= self.max_peers:  # no slot for it: wait for one
                    await asyncio.sleep(self.reconnect_check)
                    continue
                outcome = await self._dial_once(url)
                failures = 0 if outcome == "established" else failures + 1
                if outcome == "established":
                    self.addresses.succeeded(url)
                elif outcome in ("failed", "closed", "handshake_timeout"):
                    self.addresses.failed(url, self._clock())
                if not persistent and (outcome in _PERMANENT or failures >= self.max_learned_failures):
                    return
                if self._stopping:
                    return
                await asyncio.sleep(self._backoff(failures))
        finally:
            if self._dialers.get(url) is asyncio.current_task():
                del self._dialers[url]

    async def _dial_once(self, url: str) -> str:
        log.debug("%s dialling %s", self.key.short_id, url)
        try:
            async with connect(
                url, open_timeout=self.handshake_timeout, max_size=self.max_frame * _HARD_LIMIT_FACTOR,
                max_queue=8, compression=None, ping_interval=self.ping_interval, proxy=None,
                user_agent_header=None,
            ) as ws:
                return await self._serve_peer(ws, "outbound", url)
        except (OSError, asyncio.TimeoutError, InvalidHandshake, InvalidURI, ConnectionClosed) as exc:
            self._events["dial_failures"] += 1
            log.debug("dial %s failed: %s", url, exc)
            return "failed"
