"""PeerNetwork over real localhost sockets: handshake, peer exchange, hostile peers, HTTP, clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed

from node.errors import ProtocolViolation
from node.ledger.keys import NodeKey
from node.net import wire
from node.net.handshake import Handshake
from node.net.peers import RateLimits
from node.net.session import Session
from node.net.transport import PeerInfo, PeerNetwork, _Conn

CHAIN = "net-test"
GENESIS = b"\x07" * 32
H = b"\x11" * 32
TX = {"kind": "reading", "n": 1}
STATUS = {"height": 5, "head_hash": H}


def _await_chain(task: asyncio.Task[Any]) -> str:
    """file:line of every coroutine a task is suspended in, outermost first."""
    parts, c = [], task.get_coro()
    while c is not None and getattr(c, "cr_frame", None) is not None:
        f = c.cr_frame  # type: ignore[union-attr]
        parts.append(f"{f.f_code.co_filename.rsplit('/', 1)[-1]}:{f.f_lineno}")
        c = c.cr_await  # type: ignore[union-attr]
    return " <- ".join(parts)


def run(coro: Coroutine[Any, Any, None], timeout: float = 20.0) -> None:
    """asyncio.run, and afterwards no task may be left behind (stop() must be clean)."""

    async def main() -> None:
        task = asyncio.ensure_future(coro)
        done, _ = await asyncio.wait({task}, timeout=timeout)
        if not done:
            hung = [_await_chain(t) for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            task.cancel()
            raise AssertionError("scenario hung; tasks:\n" + "\n".join(hung))
        await task
        await asyncio.sleep(0)
        left = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        assert not left, f"tasks left running: {left}"

    asyncio.run(main())


async def until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


class Inbox:
    def __init__(self) -> None:
        self.got: list[tuple[bytes, str, Any]] = []

    def __call__(self, peer: PeerInfo, type_: str, payload: Any) -> None:
        self.got.append((peer.key, type_, payload))

    def of(self, type_: str) -> list[Any]:
        return [p for _, t, p in self.got if t == type_]


class InFlight:
    """Counts one network's running dials and peer connections, so that a test can wait for the moment
    nothing is in flight (every dial and handshake has ended, no connection is closing) instead of sleeping
    through a window and hoping duplicates were resolved in it."""

    def __init__(self, net: PeerNetwork) -> None:
        self.net = net
        self.dials = 0  # _dial_once running: connecting, handshaking, or an established outbound connection
        self.serving = 0  # _serve_peer running: a handshake or an established connection, either direction
        dial_once, serve_peer = net._dial_once, net._serve_peer

        async def counted_dial(url: str) -> str:
            self.dials += 1
            try:
                return await dial_once(url)
            finally:
                self.dials -= 1

        async def counted_serve(ws: Any, direction: str, dial_url: str | None) -> str:
            self.serving += 1
            try:
                return await serve_peer(ws, direction, dial_url)
            finally:
                self.serving -= 1

        net._dial_once = counted_dial  # type: ignore[method-assign]
        net._serve_peer = counted_serve  # type: ignore[method-assign]

    def settled(self) -> bool:
        """Every running dial and connection is an established, open peer connection."""
        conns = list(self.net._conns.values())
        outbound = sum(c.info.direction == "outbound" for c in conns)
        return (not any(c.closing for c in conns) and self.serving == len(conns)
                and self.dials == outbound)


def ends_agree(nets: tuple[PeerNetwork, ...]) -> bool:
    """Both ends of every connection kept the same one: one side sees it outbound, the other inbound."""
    by_key = {n.key.public: n for n in nets}
    return all(
        p.direction != next(q.direction for q in by_key[p.key].peers() if q.key == n.key.public)
        for n in nets for p in n.peers() if p.key in by_key
    )


async def start_node(bootstrap: list[str] | None = None, genesis: bytes = GENESIS,
                     watch: list[InFlight] | None = None, **kw: Any) -> tuple[PeerNetwork, Inbox]:
    """A started PeerNetwork; with `watch`, its InFlight counter (attached before it dials) is appended."""
    inbox = Inbox()
    kw.setdefault("reconnect_base", 0.05)
    kw.setdefault("reconnect_check", 0.05)
    net = PeerNetwork(NodeKey.generate(), CHAIN, genesis, "127.0.0.1", 0, bootstrap or [], inbox, **kw)
    if watch is not None:
        watch.append(InFlight(net))
    await net.start()
    return net, inbox


class SealedWs:
    """A hand-driven peer's link after the handshake: `send` seals bytes (text goes as it is), `recv`
    opens; `raw` is the websocket itself, for frames the test wants to write unsealed."""

    def __init__(self, raw: ClientConnection, session: Session | None) -> None:
        self.raw = raw
        self.session = session

    async def send(self, data: bytes | str) -> None:
        if isinstance(data, bytes) and self.session is not None:
            data = self.session.seal(data)
        await self.raw.send(data)

    async def recv(self) -> bytes | str:
        data = await self.raw.recv()
        if isinstance(data, bytes) and self.session is not None:
            return self.session.open(data)
        return data

    async def close(self) -> None:
        await self.raw.close()


async def raw_peer(url: str, *, genesis: bytes = GENESIS, tamper_proof: bool = False,
                   key: NodeKey | None = None) -> tuple[SealedWs, Handshake]:
    """A hand-driven peer: the real handshake object, so the test controls every frame after it."""
    ws = await connect(url, compression=None, proxy=None)
    hs = Handshake(key or NodeKey.generate(), CHAIN, genesis, os.urandom(32), None)
    hs.start()
    while True:
        for frame in hs.data_to_send():
            if tamper_proof and wire.decode_frame(frame).type == wire.PROOF:
                frame = wire.encode_frame(wire.PROOF, {"sig": b"\x00" * 64})
            await ws.send(frame)
        if hs.established or hs.refusal is not None:
            return SealedWs(ws, hs.session), hs
        hs.receive_data(await ws.recv())


async def close_code(ws: ClientConnection | SealedWs) -> tuple[int, str]:
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 5)
    except ConnectionClosed as exc:
        assert exc.rcvd is not None
        return exc.rcvd.code, exc.rcvd.reason


def test_two_nodes_handshake_and_exchange_messages() -> None:
    async def scenario() -> None:
        a, a_in = await start_node()
        b, b_in = await start_node([a.url])
        try:
            assert a.port != 0 and a.url == f"ws://127.0.0.1:{a.port}"
            await until(lambda: len(a.peers()) == 1 and len(b.peers()) == 1)
            (pa,) = a.peers()
            (pb,) = b.peers()
            assert pa.key == b.key.public and pa.direction == "inbound" and pa.url == b.url
            assert pb.key == a.key.public and pb.direction == "outbound"
            assert a.broadcast(wire.TX, TX) == 1
            assert b.send(a.key.public, wire.STATUS, STATUS)
            await until(lambda: b_in.of(wire.TX) == [TX] and a_in.of(wire.STATUS) == [STATUS])
            assert a_in.got[0][0] == b.key.public
            assert not b.send(b"\x00" * 32, wire.STATUS, STATUS)  # not connected
            assert a.stats()["frames_out"] >= 1 and pa.state.counters.frames_in >= 1
        finally:
            await b.stop()
            await a.stop()

    run(scenario())


def test_three_nodes_reach_a_full_mesh_from_one_bootstrap_address() -> None:
    async def scenario() -> None:
        watch: list[InFlight] = []
        a, a_in = await start_node(watch=watch)
        b, b_in = await start_node([a.url], watch=watch)
        c, _ = await start_node([a.url], watch=watch)
        nets = (a, b, c)
        try:
            # Settled: b and c learnt each other from a and may have dialled each other at once; once no
            # dial or handshake is left anywhere, the duplicate is resolved and nothing can flap.
            await until(lambda: all(len(n.peers()) == 2 for n in nets) and all(w.settled() for w in watch))
            assert ends_agree(nets)
            assert {p.key for p in c.peers()} == {a.key.public, b.key.public}
            assert c.broadcast(wire.TX, TX) == 2
            await until(lambda: a_in.of(wire.TX) == [TX] and b_in.of(wire.TX) == [TX])
            assert c.broadcast(wire.STATUS, STATUS, exclude=a.key.public) == 1
            await until(lambda: b_in.of(wire.STATUS) == [STATUS])
            assert a_in.of(wire.STATUS) == []
        finally:
            for n in nets:
                await n.stop()

    run(scenario())


def test_simultaneous_dials_keep_exactly_one_connection() -> None:
    async def scenario() -> None:
        watch: list[InFlight] = []
        a, _ = await start_node(watch=watch)
        b, _ = await start_node([a.url], watch=watch)
        a._add_dial_target(b.url, persistent=True)  # both dial each other at once
        try:
            # Both dial loops keep running (persistent targets); settled means each found its peer connected.
            await until(lambda: len(a.peers()) == len(b.peers()) == 1 and all(w.settled() for w in watch))
            assert ends_agree((a, b))
            # Both ends kept the same connection: the one the smaller key dialled.
            smaller = min(a.key.public, b.key.public)
            (pa,) = a.peers()
            assert (pa.direction == "outbound") == (a.key.public == smaller)
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_node_of_another_federation_is_refused_with_4001_and_both_count_it() -> None:
    async def scenario() -> None:
        a, _ = await start_node()
        m, _ = await start_node([a.url], genesis=b"\x08" * 32)
        try:
            await until(lambda: a.stats()["handshake_refusals"].get("wrong_federation", 0) >= 1
                        and m.stats()["handshake_refusals"].get("wrong_federation", 0) >= 1)
            assert a.peers() == [] and m.peers() == []
            ws, hs = await raw_peer(a.url, genesis=b"\x08" * 32)
            assert hs.refusal is not None and hs.refusal.reason == "wrong_federation"
            code, reason = await close_code(ws)
            assert code == 4001 and reason.startswith("wrong_federation")
        finally:
            await m.stop()
            await a.stop()

    run(scenario())


def test_bad_proof_is_refused_with_4002() -> None:
    async def scenario() -> None:
        a, _ = await start_node()
        try:
            ws, _ = await raw_peer(a.url, tamper_proof=True)
            code, reason = await close_code(ws)
            assert code == 4002 and reason.startswith("bad_proof")
            assert a.stats()["handshake_refusals"] == {"bad_proof": 1}
            assert a.peers() == []
        finally:
            await a.stop()

    run(scenario())


def test_garbage_and_oversized_frames_are_counted_and_dropped() -> None:
    async def scenario() -> None:
        a, a_in = await start_node(max_frame=64 * 1024)
        try:
            ws, _ = await raw_peer(a.url)
            await ws.send(b"\xc1\xc1\xc1")  # not msgpack
            await ws.raw.send(b"\x00" * (64 * 1024 + 17))  # over max_frame + tag, under websockets' limit
            await ws.send("a text frame")
            await ws.send(wire.encode_frame(wire.HELLO, {  # handshake message after the handshake
                "chain_id": CHAIN, "genesis_hash": GENESIS, "node": H, "nonce": H, "eph": H,
                "listen_url": None}))
            await ws.send(wire.encode_frame(wire.STATUS, STATUS))
            await until(lambda: a_in.of(wire.STATUS) == [STATUS])  # still answering on that link
            rejected = a.stats()["rejected"]
            assert rejected == {"codec": 1, "oversize": 1, "text_frame": 1, "protocol_violation": 1}
            assert len(a.peers()) == 1
            # ... until the score runs out: then the peer is cut off with 4005.
            for _ in range(5):
                await ws.send(b"\xc1")
            code, reason = await close_code(ws)
            assert code == 4005 and reason.startswith("misbehaviour")
            await until(lambda: a.peers() == [])
            assert a.stats()["disconnects"] == {"misbehaviour": 1}
            b, _ = await start_node([a.url])  # and the node serves others as before
            await until(lambda: len(a.peers()) == 1)
            await b.stop()  # b may still be mid-handshake here: stop() must not leave it running
        finally:
            await a.stop()

    run(scenario())


def test_handler_exceptions_are_counted_not_fatal() -> None:
    async def scenario() -> None:
        def boom(peer: PeerInfo, type_: str, payload: Any) -> None:
            raise RuntimeError("a bug in the ledger")

        a, _ = await start_node()
        a.on_message = boom
        try:
            ws, _ = await raw_peer(a.url)
            await ws.send(wire.encode_frame(wire.TX, TX))
            await until(lambda: a.stats()["rejected"].get("handler_error") == 1)
            assert len(a.peers()) == 1
            await ws.close()
        finally:
            await a.stop()

    run(scenario())


def test_rate_limit_drops_excess_frames() -> None:
    async def scenario() -> None:
        a, a_in = await start_node(rate_limits=RateLimits(messages_per_s=1, messages_burst=5))
        try:
            ws, _ = await raw_peer(a.url)
            for i in range(30):
                await ws.send(wire.encode_frame(wire.TX, {"n": i}))
            await until(lambda: a.stats()["frames_in"] >= 30 + 2)  # + hello and proof
            assert 5 <= len(a_in.of(wire.TX)) <= 7
            assert a.stats()["rejected"]["rate_limited"] >= 23
            assert len(a.peers()) == 1  # throttled, not (yet) disconnected
            await ws.close()
        finally:
            await a.stop()

    run(scenario())


def _http_get(url: str) -> tuple[int, str, Any]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.headers["Content-Type"], json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], json.loads(e.read())


def test_http_get_on_the_same_port() -> None:
    async def scenario() -> None:
        def http(path: str, query: dict[str, str]) -> tuple[int, Any] | None:
            if path == "/status":
                return 200, {"height": 3, "head": b"\xab\xcd", "q": query}
            return None

        a, _ = await start_node(http_handler=http)
        try:
            base = f"http://127.0.0.1:{a.port}"
            status, ctype, body = await asyncio.to_thread(_http_get, base + "/status?verbose=1")
            assert (status, ctype) == (200, "application/json")
            assert body == {"height": 3, "head": "abcd", "q": {"verbose": "1"}}
            status, ctype, body = await asyncio.to_thread(_http_get, base + "/nope")
            assert (status, ctype, body) == (404, "application/json", {"error": "not_found", "path": "/nope"})
            b, _ = await start_node([a.url])  # peers still welcome on the same port
            await until(lambda: len(a.peers()) == 1)
            await b.stop()
            assert a.stats()["events"]["http_requests"] == 2
        finally:
            await a.stop()

    run(scenario())


def test_client_submits_a_transaction_without_a_handshake() -> None:
    async def scenario() -> None:
        seen: list[Any] = []

        async def client(type_: str, payload: Any) -> tuple[str, Any] | None:
            seen.append((type_, payload))
            return wire.TX_RESULT, {"id": H, "accepted": True, "reason": None}

        a, _ = await start_node(client_handler=client)
        try:
            async with connect(a.url + "/client", proxy=None) as ws:
                await ws.send(wire.encode_frame(wire.SUBMIT_TX, TX))
                reply = wire.decode_frame(await ws.recv())
                assert reply == wire.Envelope(wire.TX_RESULT, {"id": H, "accepted": True, "reason": None})
                await ws.send(b"\xc1")  # garbage: told why, not dropped silently
                reply = wire.decode_frame(await ws.recv())
                assert reply.type == wire.ERROR and reply.payload["reason"] == "codec"
                assert a.stats()["clients"] == 1 and a.peers() == []
            assert seen == [(wire.SUBMIT_TX, TX)]
        finally:
            await a.stop()

    run(scenario())


def test_stop_closes_peers_with_1001() -> None:
    async def scenario() -> None:
        a, _ = await start_node(client_handler=lambda t, p: None)
        b, _ = await start_node([a.url])
        await until(lambda: len(a.peers()) == 1)
        ws, _ = await raw_peer(a.url)
        client = await connect(a.url + "/client", proxy=None)
        await until(lambda: len(a.peers()) == 2)
        await a.stop()
        assert (await close_code(ws))[0] == 1001
        assert (await close_code(client))[0] == 1001
        await until(lambda: b.peers() == [])
        await b.stop()

    run(scenario())


def test_full_send_queue_drops_gossip_and_cuts_off_a_slow_peer() -> None:
    class FakeWs:
        closed: tuple[int, str] | None = None

        async def close(self, code: int, reason: str) -> None:
            self.closed = (code, reason)

    async def scenario() -> None:
        net = PeerNetwork(NodeKey.generate(), CHAIN, GENESIS, send_queue_frames=4)
        ws = FakeWs()
        info = PeerInfo(H, None, "?", "inbound", 0.0, None, net._new_state())
        conn = _Conn(ws, info, Session(b"\x01" * 32, b"\x02" * 32, b""))
        net._conns[H] = conn
        tx = wire.encode_frame(wire.TX, TX)
        vote = wire.encode_frame(wire.VOTE, {"type": 2, "height": 1, "round": 0, "block_id": None,
                                             "validator": H, "signature": b"\x00" * 64})
        assert [net._enqueue(conn, wire.TX, tx) for _ in range(5)] == [True] * 4 + [False]
        assert info.state.counters.dropped_out == {"queue_full": 1}
        assert [net._enqueue(conn, wire.VOTE, vote) for _ in range(5)] == [True] * 4 + [False]
        await asyncio.sleep(0)
        assert ws.closed is not None and ws.closed[0] == 4007
        assert net.stats()["disconnects"] == {"slow_peer": 1}

    run(scenario())


def test_a_handler_that_names_an_offence_scores_the_sender_by_it_until_cut_off() -> None:
    """Issue 11, finding 6: misbehaviour the node detects (a forged proposal, a bad signature) costs
    the sender, as malformed frames do, instead of only bumping a counter."""

    async def scenario() -> None:
        def judge(peer: PeerInfo, type_: str, payload: Any) -> None:
            raise ProtocolViolation("forged_proposal", "test")

        a, _ = await start_node()
        a.on_message = judge
        try:
            ws, _ = await raw_peer(a.url)
            await ws.send(wire.encode_frame(wire.TX, TX))
            await until(lambda: a.stats()["rejected"].get("forged_proposal") == 1)
            assert len(a.peers()) == 1  # one offence is not yet a disconnect ...
            await ws.send(wire.encode_frame(wire.TX, TX))
            await ws.send(wire.encode_frame(wire.TX, TX))
            code, reason = await close_code(ws)  # ... three are (50 points each, threshold 100)
            assert code == 4005 and "forged_proposal" in reason
            await until(lambda: a.peers() == [])
        finally:
            await a.stop()

    run(scenario())


# -- issue 11, finding 8: the session is bound to the handshake ----------------------------------


async def start_relay(target: str, mode: str) -> tuple[Any, list[int]]:
    """Mallory between a dialler and `target`: forwards the handshake untouched, then attacks the
    dialler's sealed frames once (`mode`: inject, rewrite, replay, reorder). Returns the server and
    the close codes the target sent the relay."""
    codes: list[int] = []
    done = False

    async def handler(down: Any) -> None:
        nonlocal done
        async with connect(target, compression=None, proxy=None) as up:
            async def back() -> None:
                with contextlib.suppress(ConnectionClosed):
                    async for frame in up:
                        await down.send(frame)
                if up.close_code is not None:
                    codes.append(up.close_code)
                await down.close()  # the target hung up on the relay: so does the relay on the dialler

            back_task = asyncio.ensure_future(back())
            seen, held = 0, None
            try:
                async for frame in down:
                    seen += 1
                    if seen <= 2 or done:  # hello and proof, or the attack is over: pass through
                        await up.send(frame)
                        continue
                    if mode == "inject":
                        await up.send(wire.encode_frame(wire.STATUS, {"height": 9, "head_hash": H}))
                        await up.send(frame)
                        done = True
                    elif mode == "rewrite":
                        forged = bytearray(frame)
                        forged[len(forged) // 2] ^= 0x01
                        await up.send(bytes(forged))
                        done = True
                    elif mode == "replay":
                        await up.send(frame)
                        await up.send(frame)
                        done = True
                    elif held is None:  # reorder: hold the first sealed frame, send it after the next
                        held = frame
                    else:
                        await up.send(frame)
                        await up.send(held)
                        done = True
            except ConnectionClosed:
                pass
            await up.close()
            await asyncio.gather(back_task, return_exceptions=True)

    server = await serve(handler, "127.0.0.1", 0, compression=None)
    return server, codes


@pytest.mark.parametrize("mode", ["inject", "rewrite", "replay", "reorder"])
def test_a_relay_that_forwards_the_handshake_then_touches_a_frame_is_cut_off_with_4009(mode: str) -> None:
    """Before the fix a relay could forward hello and proof between two honest nodes and then
    speak in their names: the injected status was delivered as the dialler's."""

    async def scenario() -> None:
        a, a_in = await start_node()
        server, codes = await start_relay(a.url, mode)
        relay_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        b, _ = await start_node([relay_url])
        try:
            await until(lambda: len(b.peers()) == 1)
            b.send(a.key.public, wire.STATUS, STATUS)  # a second sealed frame after b's peers list
            await until(lambda: a.stats()["disconnects"].get("bad_seal", 0) >= 1)
            await until(lambda: 4009 in codes)
            assert a.stats()["rejected"].get("bad_seal", 0) >= 1
            assert {"height": 9, "head_hash": H} not in a_in.of(wire.STATUS)  # nothing forged delivered
            assert a.stats()["bans_active"] == 0  # the key is not to blame, and loopback is exempt
        finally:
            await b.stop()
            await a.stop()
            server.close()
            await server.wait_closed()

    run(scenario())


def test_unsealed_frames_after_the_handshake_close_the_link_with_4009() -> None:
    async def scenario() -> None:
        a, a_in = await start_node()
        try:
            ws, _ = await raw_peer(a.url)
            await ws.raw.send(wire.encode_frame(wire.STATUS, STATUS))  # plain msgpack, as before the fix
            code, reason = await close_code(ws)
            assert code == 4009 and reason.startswith("bad_seal")
            assert a_in.of(wire.STATUS) == []
        finally:
            await a.stop()

    run(scenario())


def test_honest_nodes_exchange_every_frame_type_sealed() -> None:
    frames = {
        wire.TX: TX,
        wire.TXS: [TX, {"kind": "reading", "n": 2}],
        wire.PROPOSAL: {"height": 1, "round": 0, "block_id": H, "valid_round": -1, "proposer": H,
                        "signature": b"\x00" * 64, "block": b"\x80"},
        wire.VOTE: {"type": 1, "height": 1, "round": 0, "block_id": None, "validator": H,
                    "signature": b"\x00" * 64},
        wire.STATUS: STATUS,
        wire.GET_BLOCKS: {"from": 1, "to": 2},
        wire.BLOCKS: [{"block": b"\x80", "txs": [], "commit": b"\x80"}],
    }

    async def scenario() -> None:
        a, a_in = await start_node()
        b, b_in = await start_node([a.url])
        try:
            await until(lambda: len(a.peers()) == 1 and len(b.peers()) == 1)
            for type_, payload in frames.items():
                assert a.send(b.key.public, type_, payload) and b.send(a.key.public, type_, payload)
            await until(lambda: all(b_in.of(t) == [p] and a_in.of(t) == [p] for t, p in frames.items()))
            ca, cb = a._conns[b.key.public], b._conns[a.key.public]
            assert ca.session.send_key == cb.session.recv_key != ca.session.recv_key
            assert ca.session.frames_sealed >= len(frames) + 1  # + the peers list
            assert a.stats()["rejected"] == {} and b.stats()["rejected"] == {}
        finally:
            await b.stop()
            await a.stop()

    run(scenario())


# -- issue 11, finding 6: peer caps, bans, peer-exchange bounds ----------------------------------


async def refused_early(url: str) -> tuple[int, str]:
    """Connect and send a hello: the node may close before or after reading it."""
    ws, hs = None, None
    ws = await connect(url, compression=None, proxy=None)
    hs = Handshake(NodeKey.generate(), CHAIN, GENESIS, os.urandom(32), None)
    hs.start()
    with contextlib.suppress(ConnectionClosed):
        for frame in hs.data_to_send():
            await ws.send(frame)
    return await close_code(ws)


def test_inbound_beyond_the_cap_is_refused_with_4011() -> None:
    async def scenario() -> None:
        a, _ = await start_node(max_inbound=1)
        try:
            first, _ = await raw_peer(a.url)
            await until(lambda: len(a.peers()) == 1)
            code, reason = await refused_early(a.url)
            assert code == 4011 and reason.startswith("too_many_peers")
            assert a.stats()["handshake_refusals"] == {"too_many_peers": 1} and len(a.peers()) == 1
            await first.close()
            await until(lambda: a.peers() == [])
            again, _ = await raw_peer(a.url)  # the slot is free again
            await until(lambda: len(a.peers()) == 1)
            await again.close()
        finally:
            await a.stop()

    run(scenario())


def test_total_peer_cap_counts_both_directions() -> None:
    async def scenario() -> None:
        b, _ = await start_node()
        a, _ = await start_node([b.url], max_peers=1, max_inbound=8)
        try:
            await until(lambda: len(a.peers()) == 1)  # one outbound peer fills a's only slot
            code, _ = await refused_early(a.url)
            assert code == 4011
        finally:
            await a.stop()
            await b.stop()

    run(scenario())


def test_a_peer_cut_off_for_misbehaviour_is_banned_by_key_and_by_address() -> None:
    async def scenario() -> None:
        mallory = NodeKey.generate()
        a, _ = await start_node(ban_base=3600.0)  # loopback exempt from address bans (the default)
        c, _ = await start_node(ban_base=3600.0, ban_exempt_ips=())
        try:
            for net in (a, c):
                ws, _ = await raw_peer(net.url, key=mallory)
                for _ in range(6):
                    await ws.send(b"\xc1")
                assert (await close_code(ws))[0] == 4005
                await until(lambda n=net: n.peers() == [])  # type: ignore[misc]
            # By key: mallory is refused after proving its key, on any address.
            ws, _ = await raw_peer(a.url, key=mallory)
            code, reason = await close_code(ws)
            assert code == 4010 and reason.startswith("banned")
            assert a.stats()["bans_active"] == 1 and a.bans.offences(mallory.public) == 1
            honest, _ = await raw_peer(a.url)  # another key from the same (exempt) address is welcome
            await until(lambda: len(a.peers()) == 1)
            await honest.close()
            # By address: before any handshake, whatever key it would claim.
            code, reason = await refused_early(c.url)
            assert code == 4010 and "address" in reason
            assert c.stats()["bans_active"] == 2  # the key and 127.0.0.1
        finally:
            await a.stop()
            await c.stop()

    run(scenario())


def test_a_client_cut_off_for_forged_txs_is_banned_by_address() -> None:
    async def scenario() -> None:
        def client(type_: str, payload: Any) -> tuple[str, Any]:
            forged = {"id": None, "accepted": False, "reason": "bad_signature"}
            return wire.TX_RESULTS, [forged] * len(payload)

        a, _ = await start_node(client_handler=client, ban_base=3600.0, ban_exempt_ips=())
        try:
            async with connect(a.url + "/client", proxy=None) as ws:
                await ws.send(wire.encode_frame(wire.SUBMIT_TXS, [TX] * 100))
                reply = wire.decode_frame(await ws.recv())
                assert reply.type == wire.TX_RESULTS and reply.payload[-1]["reason"] == "misbehaviour"
                assert (await close_code(ws))[0] == 4005
            async with connect(a.url + "/client", proxy=None) as ws:  # banned: refused at once
                code, reason = await close_code(ws)
                assert code == 4010 and "address" in reason
            assert a.stats()["bans_active"] == 1
        finally:
            await a.stop()

    run(scenario())


async def blackhole() -> tuple[asyncio.Server, int]:
    """A TCP port that accepts and never answers: dials to it hang until their open timeout."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(Exception):
            await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_one_peer_cannot_fill_the_dial_slots_and_shared_targets_win_the_slots() -> None:
    async def scenario() -> None:
        hole, port = await blackhole()
        a, _ = await start_node(pex_per_peer=4, max_dial_targets=4, handshake_timeout=30.0)
        try:
            spammer, _ = await raw_peer(a.url)
            spam = [f"ws://127.0.0.1:{port}/s{i}" for i in range(40)]
            await spammer.send(wire.encode_frame(wire.PEERS, spam))
            await until(lambda: a.stats()["events"].get("pex_bounded") == 36)
            assert len(a.stats()["dial_targets"]) == 4
            shared = f"ws://127.0.0.1:{port}/shared"
            p1, _ = await raw_peer(a.url)
            p2, _ = await raw_peer(a.url)
            await p1.send(wire.encode_frame(wire.PEERS, [shared]))
            await until(lambda: a.addresses.votes(shared) == 1)
            assert shared not in a.stats()["dial_targets"]  # one voice against one: no eviction
            await p2.send(wire.encode_frame(wire.PEERS, [shared]))
            await until(lambda: shared in a.stats()["dial_targets"])  # two voices beat one
            assert len(a.stats()["dial_targets"]) == 4 and a.stats()["events"]["dial_target_replaced"] == 1
            for ws in (spammer, p1, p2):
                await ws.close()
        finally:
            await a.stop()
            hole.close()
            await hole.wait_closed()

    run(scenario())


def test_an_unreachable_learnt_target_is_dropped_after_one_failed_dial() -> None:
    async def scenario() -> None:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        dead = f"ws://127.0.0.1:{s.getsockname()[1]}"
        s.close()  # nothing listens there now
        a, _ = await start_node()
        try:
            ws, _ = await raw_peer(a.url)
            await ws.send(wire.encode_frame(wire.PEERS, [dead]))
            await until(lambda: a.stats()["events"].get("dial_failures") == 1)
            await until(lambda: dead not in a.stats()["dial_targets"])
            await ws.send(wire.encode_frame(wire.PEERS, [dead]))  # announced again within the hold
            await until(lambda: a.stats()["events"].get("dial_target_unreachable") == 1)
            assert a.stats()["events"]["dial_failures"] == 1 and dead not in a.stats()["dial_targets"]
            await ws.close()
        finally:
            await a.stop()

    run(scenario())
