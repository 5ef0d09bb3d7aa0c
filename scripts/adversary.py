#!/usr/bin/env python3
"""The adversary harness (issue 11): a fresh local federation of 4 authority processes under a steady
load of honest signed readings, attacked over the network as a real attacker would, one attack at a
time, with nothing inside the nodes to help (no test hooks).

    python scripts/adversary.py --json            # every attack, ~30 s each
    python scripts/adversary.py --quick --json    # every attack briefly (what CI runs)
    python scripts/adversary.py --only relay,join_flood

An attacker peer holds its own Ed25519 key and completes the real session handshake (X25519 +
transcript proof, then ChaCha20-Poly1305 frames); sybils get a fresh key per connection and come
from their own loopback addresses (127.0.x.y: the node sees distinct remote addresses, as it would
from distinct hosts, and 127.0.0.1 stays the honest side's). For each attack it measures, over a
window before, during and after it: honest readings finalized per second (committed readings on
node1), p99 finality of honest readings during it (the nodes' own submit-to-commit latencies), the
largest height difference between correct replicas, each node's RSS growth, and then whether the
replicas agree (`fedledger ledger compare`) and verify (`fedledger ledger verify`: right after the
attacks that restart node4, on node4; every replica at the end of the run).

An attack holds when the throughput during it is at least half of the baseline (the throughput
before it, capped at the offered rate: above that the chain was still draining the previous
attack's backlog), the throughput after it is at least RECOVERY of the baseline (the chain
"recovers fully"; the load is offered at a fixed rate, and the margin is for the noise of a shared
2-core machine), every node is within MAX_LAG heights of the others at the end or comes within
them in CATCH_UP_S (`catch_up_s`: how long that took), the replicas agree
(and the restarted one verifies), and no node's RSS grew by more than MAX_RSS_GROWTH_MB. Exit
status 1 if any attack does not hold.

The Byzantine proposer (attack `skew_edge`) is node4 restarted as `adversary.py --byzantine-node DIR
--clock-ahead-ms N`: the normal node with a wall clock running N ms ahead, so every block it proposes
is timed N ms in the future, just past the genesis `max_clock_skew_ms` for some receivers and not for
others. The flag is hidden; nothing in node/ knows about it.

Hidden mode `--feed ROOT --rate R` is the honest load (its own process, so attacks in this process
cannot starve it and bias the measurement).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import psutil  # noqa: E402
from websockets.asyncio.client import ClientConnection, connect  # noqa: E402
from websockets.asyncio.server import serve  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidHandshake  # noqa: E402

from consensus.messages import Vote, VoteType  # noqa: E402
from node.launch.federation import create_federation  # noqa: E402
from node.launch.feeder import Feeder, Target  # noqa: E402
from node.launch.processes import NodeProcess, wait_until  # noqa: E402
from node.launch.sensors import BUNDLED_CSV, csv_devices, simulated_readings  # noqa: E402
from node.ledger import codec  # noqa: E402
from node.ledger.keys import NodeKey, sign_vote  # noqa: E402
from node.ledger.transactions import make_join_request  # noqa: E402
from node.net import wire  # noqa: E402
from node.net.handshake import Handshake  # noqa: E402
from node.net.http import get_json, http_base  # noqa: E402
from node.net.session import Session  # noqa: E402

NODES = 4
LOAD_NODES = 3  # the honest load goes to node1..node3: node4 is the one some attacks restart
RATE = 150.0  # honest readings per second offered
MIN_DURING = 0.5  # of the throughput before
RECOVERY = 0.8  # of the throughput before, after the attack
MAX_LAG = 3  # heights between replicas at the end of the after window
# A replica further behind gets this long to come within MAX_LAG: catching up is what is judged;
# how long it took is reported (`catch_up_s`). On a 2-core machine that other work shares, a
# replica was once 22 heights behind at the end of a 3-s window, and the same attack alone ended
# within 3.
CATCH_UP_S = 20.0
MAX_RSS_GROWTH_MB = 150.0
SAMPLE_S = 0.5
FULL = {"before": 6.0, "during": 15.0, "after": 8.0}
QUICK = {"before": 3.0, "during": 4.0, "after": 3.0}


# -- an attacker's peer link: real key, real handshake, sealed frames ------------------------------


class Sources:
    """Distinct loopback source addresses, one block of 127.x.y.z per attack family."""

    def __init__(self, second: int) -> None:
        self.second = second
        self.n = 0

    def next(self) -> str:
        self.n += 1
        return f"127.{self.second}.{(self.n // 250) % 250}.{self.n % 250 + 2}"


class PeerLink:
    """One peer connection to a node, as a node would make it (handshake.py, session.py)."""

    def __init__(self, url: str, chain_id: str, genesis_hash: bytes, *, key: NodeKey | None = None,
                 source: str | None = None, listen_url: str | None = None,
                 on_frame: Callable[[PeerLink, wire.Envelope], Awaitable[None] | None] | None = None) -> None:
        self.url = url
        self.chain_id = chain_id
        self.genesis_hash = genesis_hash
        self.key = key or NodeKey.generate()
        self.source = source
        self.listen_url = listen_url
        self.on_frame = on_frame
        self.ws: ClientConnection | None = None
        self.session: Session | None = None
        self.close_code: int | None = None
        self.refused: str | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> bool:
        kw: dict[str, Any] = {"local_addr": (self.source, 0)} if self.source else {}
        try:
            self.ws = await connect(self.url, max_size=None, compression=None, proxy=None, open_timeout=5,
                                    ping_interval=None, user_agent_header=None, **kw)
            hs = Handshake(self.key, self.chain_id, self.genesis_hash, os.urandom(wire.NONCE_SIZE),
                           self.listen_url)
            hs.start()
            while True:
                for out in hs.data_to_send():
                    await self.ws.send(out)
                if hs.refusal is not None or hs.established:
                    break
                hs.receive_data(await asyncio.wait_for(self.ws.recv(), 5))
        except ConnectionClosed as exc:
            self.close_code = exc.rcvd.code if exc.rcvd else 1006
            self.refused = f"closed {self.close_code}"
            return False
        except (OSError, asyncio.TimeoutError, InvalidHandshake) as exc:
            self.refused = type(exc).__name__
            return False
        if hs.session is None:
            self.refused = hs.refusal.reason if hs.refusal else "?"
            await self.close()
            return False
        self.session = hs.session
        self._reader = asyncio.create_task(self._read())
        return True

    async def _read(self) -> None:
        assert self.ws is not None and self.session is not None
        try:
            async for data in self.ws:
                if not isinstance(data, bytes):
                    continue
                env = wire.decode_frame(self.session.open(data))
                if self.on_frame is not None:
                    res = self.on_frame(self, env)
                    if asyncio.iscoroutine(res):
                        await res
        except ConnectionClosed:
            pass
        except Exception:  # a frame we cannot open: the link is over for us too
            pass
        finally:
            if self.ws is not None and self.ws.close_code is not None:
                self.close_code = self.ws.close_code

    @property
    def alive(self) -> bool:
        return self.ws is not None and self.session is not None and self.ws.close_code is None

    async def send(self, type_: str, payload: Any) -> bool:
        return await self.send_plain(wire.encode_frame(type_, payload, max_frame=2**31))

    async def send_plain(self, plaintext: bytes) -> bool:
        """Seal and send any bytes as the next frame (valid seal, whatever is inside)."""
        if not self.alive:
            return False
        assert self.ws is not None and self.session is not None
        try:
            await self.ws.send(self.session.seal(plaintext))
            return True
        except ConnectionClosed:
            return False

    async def send_raw(self, data: bytes | str) -> bool:
        if self.ws is None or self.ws.close_code is not None:
            return False
        try:
            await self.ws.send(data)
            return True
        except ConnectionClosed:
            return False

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.close(), 2)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


# -- the federation --------------------------------------------------------------------------------


@dataclass
class Fed:
    root: Path
    chain_id: str
    genesis_hash: bytes
    skew_ms: int
    procs: list[NodeProcess]
    feeder: subprocess.Popen[bytes] | None = None

    @property
    def urls(self) -> list[str]:
        return [p.url for p in self.procs]

    def link(self, i: int, **kw: Any) -> PeerLink:
        return PeerLink(self.procs[i].url, self.chain_id, self.genesis_hash, **kw)

    def status(self, i: int) -> dict[str, Any] | None:
        return self.procs[i].status()

    def rss(self) -> list[float]:
        out = []
        for p in self.procs:
            try:
                out.append(psutil.Process(p.proc.pid).memory_info().rss / 2**20 if p.proc else 0.0)
            except psutil.Error:
                out.append(0.0)
        return out


def start_federation(root: Path) -> Fed:
    genesis, made = create_federation(root, NODES)
    procs = [NodeProcess(n.dir) for n in made]
    for p in procs:
        p.start()
    if not wait_until(lambda: all((s := p.status()) and s["peers"] >= NODES - 1 for p in procs), 60):
        raise SystemExit("nodes did not connect:\n" + "\n".join(p.log_tail() for p in procs))
    gh = bytes.fromhex(procs[0].status()["genesis_hash"])  # type: ignore[index]
    fed = Fed(root, genesis.chain_id, gh, genesis.max_clock_skew_ms, procs)
    log = open(root / "feeder.out", "ab")  # noqa: SIM115 (the child's)
    fed.feeder = subprocess.Popen([sys.executable, __file__, "--feed", str(root), "--rate", str(RATE)],
                                  stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    log.close()
    if not wait_until(lambda: (s := procs[0].status()) is not None and s["readings"] > 0, 60):
        raise SystemExit("no honest reading was committed:\n" + (root / "feeder.out").read_text()[-2000:])
    return fed


def restart(fed: Fed, i: int, argv: list[str] | None = None) -> None:
    p = fed.procs[i]
    p.stop()
    p.start(argv=argv)
    wait_until(lambda: (s := p.status()) is not None and s["peers"] >= NODES - 1, 30)


# -- measurement -----------------------------------------------------------------------------------


async def status(fed: Fed, i: int) -> dict[str, Any] | None:
    return await asyncio.to_thread(fed.status, i)


async def finality_count(fed: Fed) -> list[int]:
    out = []
    for i in range(LOAD_NODES):
        try:
            out.append((await asyncio.to_thread(get_json, fed.urls[i], "/finality?last=1"))["count"])
        except Exception:
            out.append(0)
    return out


async def finality_since(fed: Fed, counts: list[int]) -> list[float]:
    ms: list[float] = []
    for i in range(LOAD_NODES):
        try:
            now = (await asyncio.to_thread(get_json, fed.urls[i], "/finality?last=1"))["count"]
            new = min(now - counts[i], 20_000)
            if new > 0:
                ms += (await asyncio.to_thread(get_json, fed.urls[i], f"/finality?last={new}"))["ms"]
        except Exception:
            pass
    return ms


@dataclass
class Window:
    seconds: float
    readings: int = 0
    max_lag: int = 0
    samples: int = 0

    @property
    def rate(self) -> float:
        return self.readings / self.seconds if self.seconds > 0 else 0.0


async def measure(fed: Fed, seconds: float, correct: list[int]) -> Window:
    """Committed readings on node1 over `seconds`, and the height spread of the `correct` nodes."""
    t0 = time.monotonic()
    first = await status(fed, 0)
    r0 = first["readings"] if first else 0
    w = Window(seconds)
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(SAMPLE_S)
        hs = [s["height"] for i in correct if (s := await status(fed, i)) is not None]
        if len(hs) > 1:
            w.max_lag = max(w.max_lag, max(hs) - min(hs))
            w.samples += 1
    last = await status(fed, 0)
    w.seconds = time.monotonic() - t0
    w.readings = (last["readings"] if last else r0) - r0
    return w


def p99(values: list[float]) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return round(s[min(len(s) - 1, int(0.99 * len(s)))], 1)


def cli_json(*args: str, timeout: float = 300) -> tuple[int, Any]:
    r = subprocess.run([sys.executable, "-m", "node", *args, "--json"], capture_output=True, timeout=timeout,
                       cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        return r.returncode, json.loads(r.stdout)
    except ValueError:
        return r.returncode, {"stderr": r.stderr.decode(errors="replace")[-500:]}


# -- the attacks -----------------------------------------------------------------------------------


@dataclass
class Ctx:
    fed: Fed
    stop: asyncio.Event
    quick: bool
    stats: Counter[str] = field(default_factory=Counter)
    height: int = 1
    frames: list[bytes] = field(default_factory=list)

    async def track_height(self) -> None:
        while not self.stop.is_set():
            s = await status(self.fed, 0)
            if s:
                self.height = s["height"] + 1
            await asyncio.sleep(0.3)


async def sleep_or_stop(ctx: Ctx, seconds: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(ctx.stop.wait(), seconds)


async def reconnecting(ctx: Ctx, make: Callable[[], PeerLink], work: Callable[[PeerLink], Awaitable[None]],
                       kind: str) -> None:
    """Keep one attacker connection up: a fresh key (and address, if `make` gives one) each time the
    node cuts it off, as a sybil attacker would."""
    while not ctx.stop.is_set():
        link = make()
        if not await link.open():
            ctx.stats[f"{kind}:refused:{link.refused}"] += 1
            await sleep_or_stop(ctx, 0.2)
            continue
        ctx.stats[f"{kind}:connected"] += 1
        try:
            await work(link)
        finally:
            await link.close()
            if link.close_code is not None:
                ctx.stats[f"{kind}:closed:{link.close_code}"] += 1


async def forged_proposals(ctx: Ctx) -> None:
    """Copy every genuine proposal's signature onto a different well-formed block (same id, another
    time) and race it to every node."""
    fed = ctx.fed
    links: list[PeerLink | None] = [None] * NODES
    seen: set[tuple[int, int, bytes]] = set()

    async def on_frame(_link: PeerLink, env: wire.Envelope) -> None:
        if env.type != wire.PROPOSAL:
            return
        p = env.payload
        tag = (p["height"], p["round"], p["proposer"])
        if tag in seen:
            return
        seen.add(tag)
        block = codec.decode(p["block"])
        block["header"]["time_ms"] += 1 + random.randrange(1000)
        forged = {**p, "block": codec.encode(block)}
        ctx.stats["forged_sent"] += sum([await lk.send(wire.PROPOSAL, forged) for lk in links if lk])

    async def one(i: int) -> None:
        async def work(link: PeerLink) -> None:
            links[i] = link
            while link.alive and not ctx.stop.is_set():
                await asyncio.sleep(0.1)
            links[i] = None
        src = Sources(10 + i)
        await reconnecting(ctx, lambda: fed.link(i, source=src.next(), on_frame=on_frame), work, "forger")

    await asyncio.gather(*(one(i) for i in range(NODES)))


def byzantine_argv(fed: Fed, i: int, ahead_ms: int) -> list[str]:
    return [sys.executable, __file__, "--byzantine-node", str(fed.procs[i].dir),
            "--clock-ahead-ms", str(ahead_ms)]


async def join_setup(ctx: Ctx) -> None:
    """Signed off the clock (a real attacker signs on its own machines): join requests from fresh
    keys, encoded as full /client batches."""
    fed = ctx.fed
    n = 4000 if ctx.quick else 20_000

    def make() -> list[bytes]:
        txs = [make_join_request(NodeKey.generate(), fed.chain_id, "participant", f"sybil{i}",
                                 f"ws://192.0.2.1:{i % 60000 + 1}") for i in range(n)]
        b = wire.MAX_CLIENT_TX_BATCH
        return [wire.encode_frame(wire.SUBMIT_TXS, txs[k:k + b]) for k in range(0, n, b)]

    ctx.frames = await asyncio.to_thread(make)
    ctx.stats["prepared"] = n


async def join_flood(ctx: Ctx) -> None:
    """Join requests from fresh keys over several /client connections, as fast as they are taken;
    each connection sends every batch once, then the batches again (replays)."""
    fed = ctx.fed
    src = Sources(20)

    async def worker(w: int) -> None:
        i = w
        url = http_base(fed.urls[w % NODES]).replace("http://", "ws://") + "/client"
        while not ctx.stop.is_set():
            try:
                async with connect(url, max_size=None, compression=None, proxy=None,
                                   local_addr=(src.next(), 0)) as ws:
                    while not ctx.stop.is_set():
                        await ws.send(ctx.frames[i % len(ctx.frames)])
                        i += 1
                        reply = wire.decode_frame(await ws.recv())
                        for r in reply.payload if reply.type == wire.TX_RESULTS else []:
                            ctx.stats["accepted" if r["accepted"] else f"rejected:{r['reason']}"] += 1
            except ConnectionClosed as exc:
                ctx.stats[f"closed:{exc.rcvd.code if exc.rcvd else 1006}"] += 1
            except (OSError, InvalidHandshake):
                ctx.stats["connect_failed"] += 1
            await sleep_or_stop(ctx, 0.1)

    await asyncio.gather(*(worker(w) for w in range(4)))


async def bad_readings_setup(ctx: Ctx) -> None:
    """Readings a signature check must refuse: registered devices' keys (public, from /devices) under
    random signatures, and unregistered devices, encoded as full /client batches."""
    fed = ctx.fed
    listed = await asyncio.to_thread(get_json, fed.urls[0], "/devices")
    devices = [bytes.fromhex(d["device"]) for d in listed["devices"]]
    n = 5000 if ctx.quick else 20_000

    def make() -> list[bytes]:
        now = int(time.time() * 1000)
        txs = []
        for i in range(n):
            dev = random.choice(devices) if devices and i % 4 else os.urandom(32)
            body = {"device": dev, "seq": 10**9 + i, "timestamp_ms": now, "temperature_c": 21.5,
                    "humidity_pct": 45.0}
            txs.append({"kind": "reading", "body": body, "signer": dev, "sig": os.urandom(64)})
        b = wire.MAX_CLIENT_TX_BATCH
        return [wire.encode_frame(wire.SUBMIT_TXS, txs[k:k + b]) for k in range(0, n, b)]

    ctx.frames = await asyncio.to_thread(make)
    ctx.stats["prepared"] = n
    ctx.stats["registered_devices"] = len(devices)


async def bad_readings(ctx: Ctx) -> None:
    """Forged readings (bad signatures for registered devices, unknown devices) over many /client
    connections from distinct addresses, as fast as they are answered; a connection cut off is
    replaced by one from a fresh address, as a sybil attacker would."""
    fed = ctx.fed
    src = Sources(30)

    async def worker(w: int) -> None:
        i = w
        url = http_base(fed.urls[w % NODES]).replace("http://", "ws://") + "/client"
        while not ctx.stop.is_set():
            try:
                async with connect(url, max_size=None, compression=None, proxy=None, open_timeout=5,
                                   local_addr=(src.next(), 0)) as ws:
                    ctx.stats["connected"] += 1
                    while not ctx.stop.is_set():
                        await ws.send(ctx.frames[i % len(ctx.frames)])
                        i += 1
                        reply = wire.decode_frame(await ws.recv())
                        if reply.type == wire.TX_RESULTS:
                            for r in reply.payload:
                                ctx.stats["accepted" if r["accepted"] else f"rejected:{r['reason']}"] += 1
                        else:
                            ctx.stats[f"error:{reply.payload.get('reason')}"] += 1
            except ConnectionClosed as exc:
                ctx.stats[f"closed:{exc.rcvd.code if exc.rcvd else 1006}"] += 1
            except (OSError, InvalidHandshake, asyncio.TimeoutError):
                ctx.stats["connect_failed"] += 1
            await sleep_or_stop(ctx, 0.05)

    await asyncio.gather(*(worker(w) for w in range(12)))


def pad_commit(raw: bytes, mode: str, validators: list[bytes]) -> bytes:
    c = codec.decode(raw)
    pcs = c["precommits"]
    if mode == "padded":  # junk precommits past the quorum: well-formed, bad signatures
        for _ in range(500):
            pcs.append({**random.choice(pcs), "signature": os.urandom(64),
                        "validator": random.choice([*validators, os.urandom(32)])})
    elif mode == "duplicated":
        pcs.extend(list(pcs))
    elif mode == "mistyped":  # round 0 as false, round r as a float: "equal" in Python, not on the wire
        for v in pcs:
            v["round"] = False if v["round"] == 0 else float(v["round"])
        c["round"] = False if c["round"] == 0 else c["round"]
    elif mode == "unsorted":
        pcs.reverse()
        pcs.append(pcs[0])
    return codec.encode(c)


async def certificate_padding(ctx: Ctx) -> None:
    """node4 was stopped (setup) and is restarted now, behind: an attacker peer announces the real
    height and answers node4's block requests with the real blocks under padded, duplicated and
    mistyped certificates. node4 must refuse them, score the attacker and sync from honest peers."""
    fed = ctx.fed
    cache: dict[int, dict[str, Any]] = {}
    got = asyncio.Event()

    def on_src(_l: PeerLink, env: wire.Envelope) -> None:
        if env.type == wire.BLOCKS:
            for item in env.payload:
                cache[codec.decode(item["block"])["header"]["height"]] = item
            got.set()

    # The real blocks node4 lacks, fetched from node1 as any peer may.
    src = fed.link(0, source="127.0.30.2", on_frame=on_src)
    h4 = ctx.stats.get("victim_height", 0)
    if await src.open():
        s = await status(fed, 0)
        top = s["height"] if s else h4
        lo = h4 + 1
        while lo <= top and not ctx.stop.is_set():
            got.clear()
            await src.send(wire.GET_BLOCKS, {"from": lo, "to": min(top, lo + wire.MAX_BLOCKS_BATCH - 1)})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(got.wait(), 3)
            nxt = max(cache, default=lo - 1) + 1
            if nxt <= lo:
                break
            lo = nxt
        await src.close()
    ctx.stats["blocks_cached"] = len(cache)
    validators = [bytes.fromhex(v["public_key"]) for v in (await status(fed, 0) or {}).get("validators", [])]
    top = max(cache, default=0)
    modes = ["padded", "duplicated", "mistyped", "unsorted"]
    # A node that catches a bad batch asks that peer no more, so a run usually serves one mode: a
    # different one first each run (the unit tests of canonical certificates cover every mode).
    random.shuffle(modes)
    served = Counter[str]()

    async def on_victim(link: PeerLink, env: wire.Envelope) -> None:
        if env.type != wire.GET_BLOCKS:
            return
        mode = modes[sum(served.values()) % len(modes)]
        out = []
        for h in range(env.payload["from"], env.payload["to"] + 1):
            if h in cache:
                item = cache[h]
                out.append({**item, "commit": pad_commit(item["commit"], mode, validators)})
        served[mode] += 1
        ctx.stats[f"served:{mode}"] += 1
        with contextlib.suppress(Exception):
            await link.send(wire.BLOCKS, out)

    restart_task = asyncio.create_task(asyncio.to_thread(fed.procs[3].start))
    vsrc = Sources(31)

    async def work(link: PeerLink) -> None:
        while link.alive and not ctx.stop.is_set():
            await link.send(wire.STATUS, {"height": top, "head_hash": os.urandom(32)})
            await asyncio.sleep(0.3)

    def make() -> PeerLink:
        # Sync hands out ranges round-robin over peers in key order: a key that sorts before every
        # validator's is asked first, so the padded certificates are served, not only offered.
        key = NodeKey.generate()
        while validators and key.public >= min(validators):
            key = NodeKey.generate()
        return fed.link(3, source=vsrc.next(), on_frame=on_victim, key=key)

    await restart_task
    await reconnecting(ctx, make, work, "server")


async def fake_status(ctx: Ctx) -> None:
    """A peer on every node announcing height 2^63 - 1 and never backing it (it answers no request)."""
    fed = ctx.fed

    async def one(i: int) -> None:
        async def work(link: PeerLink) -> None:
            while link.alive and not ctx.stop.is_set():
                await link.send(wire.STATUS, {"height": 2**63 - 1, "head_hash": os.urandom(32)})
                await asyncio.sleep(0.3)
        src = Sources(40 + i)
        await reconnecting(ctx, lambda: fed.link(i, source=src.next()), work, "liar")

    await asyncio.gather(*(one(i) for i in range(NODES)))


async def sybil_votes(ctx: Ctx) -> None:
    """Sybils on every node flooding bad-signature votes in real validators' names and correctly
    self-signed votes for the next height, a fresh key and address each time they are cut off."""
    fed = ctx.fed
    s = await status(fed, 0)
    validators = [bytes.fromhex(v["public_key"]) for v in (s or {}).get("validators", [])]

    async def one(i: int, j: int) -> None:
        async def work(link: PeerLink) -> None:
            n = 0
            while link.alive and not ctx.stop.is_set():
                h = ctx.height
                if n % 2:
                    v = Vote(VoteType(1 + n % 4 // 2), h, random.randrange(3), os.urandom(32),
                             random.choice(validators), os.urandom(64))
                else:
                    mine = Vote(VoteType.PREVOTE, h + 1, n % 50, os.urandom(32), link.key.public)
                    v = sign_vote(link.key, fed.chain_id, mine)
                ok = await link.send(wire.VOTE, v.to_wire())
                ctx.stats["votes_sent"] += ok
                n += 1
                if n % 50 == 0:
                    await asyncio.sleep(0)
        src = Sources(50 + i * 4 + j)
        await reconnecting(ctx, lambda: fed.link(i, source=src.next()), work, "sybil")

    tracker = asyncio.create_task(ctx.track_height())
    await asyncio.gather(*(one(i, j) for i in range(NODES) for j in range(2)))
    await tracker


async def pex_spam(ctx: Ctx) -> None:
    """Peers announcing addresses nobody should dial: unroutable ones (they time out) and closed
    ports on this host (they fail at once), fresh ones every time."""
    fed = ctx.fed
    counter = [0]

    def urls() -> list[str]:
        out = []
        for _ in range(wire.MAX_PEX_URLS):
            counter[0] += 1
            c = counter[0]
            out.append(f"ws://192.0.2.{c % 250 + 1}:{c % 60000 + 1024}" if c % 2
                       else f"ws://127.0.0.1:{c % 20000 + 40000}")
        return out

    async def one(i: int, j: int) -> None:
        async def work(link: PeerLink) -> None:
            while link.alive and not ctx.stop.is_set():
                ctx.stats["urls_announced"] += wire.MAX_PEX_URLS * await link.send(wire.PEERS, urls())
                await asyncio.sleep(0.2)
        src = Sources(70 + i * 4 + j)
        await reconnecting(ctx, lambda: fed.link(i, source=src.next()), work, "pex")

    await asyncio.gather(*(one(i, j) for i in range(NODES) for j in range(3)))
    for i in range(NODES):
        st = await status(fed, i)
        if st:
            net = st["network"]
            ctx.stats[f"node{i + 1}:dial_targets"] = len(net["dial_targets"])
            ctx.stats[f"node{i + 1}:pex_addresses"] = net["pex_addresses"]


async def malformed_frames(ctx: Ctx) -> None:
    """Garbage, truncated, text and oversized frames on the peer port (before and after a real
    handshake) and on /client, on every node, in a loop."""
    fed = ctx.fed
    hello = wire.encode_frame(wire.HELLO, {"chain_id": fed.chain_id, "genesis_hash": fed.genesis_hash,
                                           "node": os.urandom(32), "nonce": os.urandom(32),
                                           "eph": os.urandom(32), "listen_url": None})
    submit = wire.encode_frame(wire.SUBMIT_TXS, [{"kind": "reading", "x": i} for i in range(10)])
    big = os.urandom(wire.DEFAULT_MAX_FRAME + 1024)
    src = Sources(90)

    def pre(k: int) -> bytes | str:
        return [os.urandom(random.randrange(1, 512)), hello[: random.randrange(1, len(hello))], "text frame",
                b"\xc1" * 64, codec.encode({"v": 1, "t": "hello", "p": {}}),
                big if k % 20 == 0 else b"\x80"][k % 6]

    async def raw(url: str, frames: list[bytes | str], kind: str) -> None:
        try:
            async with connect(url, max_size=None, compression=None, proxy=None, open_timeout=5,
                               local_addr=(src.next(), 0)) as ws:
                for f in frames:
                    await ws.send(f)
                    ctx.stats[f"{kind}:frames"] += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(ws.recv(), 1)
        except ConnectionClosed as exc:
            ctx.stats[f"{kind}:closed:{exc.rcvd.code if exc.rcvd else 1006}"] += 1
        except (OSError, InvalidHandshake, asyncio.TimeoutError):
            ctx.stats[f"{kind}:connect_failed"] += 1

    async def sealed(i: int, k: int) -> None:
        link = fed.link(i, source=src.next())
        if not await link.open():
            ctx.stats[f"sealed:refused:{link.refused}"] += 1
            return
        for m in range(20):
            if k % 3 == 0:  # sealed garbage: the seal opens, the frame does not decode
                ok = await link.send_plain(os.urandom(random.randrange(1, 300)))
            elif k % 3 == 1:  # a truncated ciphertext: the seal fails (4009)
                ok = await link.send_raw(link.session.seal(submit)[: -1 - m] if link.session else b"")
            else:  # a truncated plaintext under a good seal, and now and then an oversized one
                ok = await link.send_plain(big if m == 0 else submit[: random.randrange(1, len(submit))])
            ctx.stats["sealed:frames"] += ok
            if not ok:
                break
        await asyncio.sleep(0.2)
        ctx.stats[f"sealed:closed:{link.close_code}"] += 1
        await link.close()

    async def loop(i: int) -> None:
        k = 0
        url = fed.urls[i]
        client = http_base(url).replace("http://", "ws://") + "/client"
        while not ctx.stop.is_set():
            k += 1
            await raw(url, [pre(k)], "peer_port")
            await raw(client, [pre(k), submit[: random.randrange(1, len(submit))], os.urandom(64),
                               wire.encode_frame(wire.SUBMIT_TXS, [{}] * 400)], "client")
            await sealed(i, k)

    await asyncio.gather(*(loop(i) for i in range(NODES)))


async def expensive_http(ctx: Ctx) -> None:
    """HTTP GETs of the costliest endpoints and of absurd parameters, from several addresses at once,
    as fast as they are answered."""
    fed = ctx.fed
    paths = ["/status", "/members", "/blocks?from=1&to=99999999999", "/block/99999999999999999999999",
             f"/block/{2**64}", "/block/1", "/finality?last=20000", "/peers", "/devices", "/tx/zz",
             "/genesis", "/blocks?from=-5&to=x", "/" + "a" * 4000]

    async def worker(i: int, w: int) -> None:
        host, port = fed.urls[i].removeprefix("ws://").rsplit(":", 1)
        src = f"127.100.{i}.{w + 2}"
        n = 0
        while not ctx.stop.is_set():
            n += 1
            try:
                r, wr = await asyncio.open_connection(host, int(port), local_addr=(src, 0))
                wr.write(f"GET {paths[n % len(paths)]} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                await wr.drain()
                line = await asyncio.wait_for(r.readline(), 5)
                ctx.stats[f"http:{line.split(b' ')[1].decode() if line.count(b' ') else 'none'}"] += 1
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(r.read(), 5)
                wr.close()
            except (OSError, asyncio.TimeoutError, IndexError):
                ctx.stats["http:failed"] += 1
                await asyncio.sleep(0.01)

    await asyncio.gather(*(worker(i, w) for i in range(NODES) for w in range(3)))


async def relay(ctx: Ctx) -> None:
    """A relay between node1 and node2: it gets node1 to dial it (by peer exchange), forwards the
    handshake to node2 untouched, then tampers with the sealed frames: flips a bit, replays, injects,
    drops, reorders. Each round uses a fresh port and a fresh source address towards node2."""
    fed = ctx.fed
    modes = ["flip", "replay", "inject", "drop", "reorder", "forward"]
    rounds = [0]
    src = Sources(110)

    async def handler(inbound: Any) -> None:
        mode = modes[rounds[0] % len(modes)]
        rounds[0] += 1
        ctx.stats["relayed_connections"] += 1
        try:
            async with connect(fed.urls[1], max_size=None, compression=None, proxy=None,
                               local_addr=(src.next(), 0)) as outbound:
                async def pump(a: Any, b: Any, tamper: bool) -> None:
                    n = 0
                    last: bytes | None = None
                    held: bytes | None = None
                    async for data in a:
                        n += 1
                        if tamper and n > 4 and isinstance(data, bytes):  # past hello and proof
                            ctx.stats[f"tampered:{mode}"] += 1 if n == 5 else 0
                            if n == 5 and mode == "flip":
                                data = bytes([data[0] ^ 1]) + data[1:]
                            elif n == 5 and mode == "replay" and last is not None:
                                await b.send(last)
                            elif n == 5 and mode == "inject":
                                await b.send(os.urandom(len(data)))
                            elif n == 5 and mode == "drop":
                                continue
                            elif n == 5 and mode == "reorder":
                                held = data
                                continue
                            elif n == 6 and held is not None:
                                await b.send(data)
                                data = held
                        if n > 2:
                            ctx.stats["frames_forwarded"] += 1
                        last = data if isinstance(data, bytes) else last
                        await b.send(data)

                await asyncio.gather(pump(inbound, outbound, True), pump(outbound, inbound, False),
                                     return_exceptions=True)
                if outbound.close_code is not None:
                    ctx.stats[f"node2_closed:{outbound.close_code}"] += 1
        except (OSError, InvalidHandshake, ConnectionClosed) as exc:
            ctx.stats[f"relay_failed:{type(exc).__name__}"] += 1

    announcer = fed.link(0, source="127.0.110.1")
    while not ctx.stop.is_set():
        async with serve(handler, "127.0.0.1", 0, max_size=None, compression=None) as server:
            port = server.sockets[0].getsockname()[1]  # type: ignore[index]
            if not announcer.alive:
                await announcer.close()
                announcer = fed.link(0, source=src.next())
                await announcer.open()
            await announcer.send(wire.PEERS, [f"ws://127.0.0.1:{port}"])
            await sleep_or_stop(ctx, 1.5)
    await announcer.close()


@dataclass
class Attack:
    name: str
    run: Callable[[Ctx], Awaitable[None]]
    victim: int | None = None  # a node the attack restarts: not a correct replica while it runs
    setup: Callable[[Ctx], Awaitable[None]] | None = None
    teardown: Callable[[Ctx], Awaitable[None]] | None = None


async def skew_setup(ctx: Ctx) -> None:
    # Just past the skew bound: a receiver sees the block at most a few ms later than its time
    # minus the lead, so some receivers find it timely and some do not.
    ahead = ctx.fed.skew_ms + 3
    ctx.stats["clock_ahead_ms"] = ahead
    await asyncio.to_thread(restart, ctx.fed, 3, byzantine_argv(ctx.fed, 3, ahead))


async def skew_run(ctx: Ctx) -> None:
    await ctx.stop.wait()
    s = await status(ctx.fed, 3)
    if s:
        ctx.stats["byzantine_untimely_seen_by_it"] = s["counters"].get("untimely_proposal", 0)
    for i in range(3):
        s = await status(ctx.fed, i)
        if s:
            ctx.stats[f"node{i + 1}:untimely_proposal"] = s["counters"].get("untimely_proposal", 0)


async def skew_teardown(ctx: Ctx) -> None:
    await asyncio.to_thread(restart, ctx.fed, 3)


async def cert_setup(ctx: Ctx) -> None:
    s = await status(ctx.fed, 3)
    await asyncio.to_thread(ctx.fed.procs[3].stop)
    ctx.stats["victim_height"] = s["height"] if s else 0
    await asyncio.sleep(2.0 if ctx.quick else 5.0)  # the chain moves on without it


async def cert_teardown(ctx: Ctx) -> None:
    s = await status(ctx.fed, 3)
    if s:
        ctx.stats["victim_sync_failures"] = s["sync"]["failures"]
        net = s["network"]
        ctx.stats["victim_disconnects"] = sum(net["disconnects"].values())
        ctx.stats["victim_sync_malformed"] = s["counters"].get("sync_malformed", 0) + s["counters"].get(
            "sync_bad_block", 0)


ATTACKS = [
    Attack("forged_proposals", forged_proposals),
    Attack("skew_edge", skew_run, victim=3, setup=skew_setup, teardown=skew_teardown),
    Attack("join_flood", join_flood, setup=join_setup),
    Attack("bad_readings", bad_readings, setup=bad_readings_setup),
    Attack("certificate_padding", certificate_padding, victim=3, setup=cert_setup, teardown=cert_teardown),
    Attack("fake_status", fake_status),
    Attack("sybil_votes", sybil_votes),
    Attack("pex_spam", pex_spam),
    Attack("malformed_frames", malformed_frames),
    Attack("expensive_http", expensive_http),
    Attack("relay", relay),
]


def note(what: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


async def run_attack(fed: Fed, attack: Attack, windows: dict[str, float], quick: bool,
                     index: int) -> dict[str, Any]:
    t_start = time.monotonic()
    everyone = list(range(NODES))
    correct = [i for i in everyone if i != attack.victim]
    rss0 = fed.rss()
    h_start = s["height"] if (s := await status(fed, 0)) else 0
    before = await measure(fed, windows["before"], everyone)
    ctx = Ctx(fed, asyncio.Event(), quick)
    if attack.setup:
        await attack.setup(ctx)
    counts = await finality_count(fed)
    task = asyncio.create_task(attack.run(ctx))
    during = await measure(fed, windows["during"], correct)
    ctx.stop.set()
    try:
        await asyncio.wait_for(task, 10)
    except (asyncio.TimeoutError, Exception) as exc:  # the harness reports, it does not crash
        ctx.stats[f"attack_error:{type(exc).__name__}"] += 1
        task.cancel()
    note(f"{attack.name}: attack over")
    lat = await finality_since(fed, counts)
    if attack.teardown:
        await attack.teardown(ctx)
    after = await measure(fed, windows["after"], everyone)
    rss1 = fed.rss()
    heights = [s["height"] if (s := await status(fed, i)) else -1 for i in everyone]
    lag_end = lag = max(heights) - min(heights)
    t_catch = time.monotonic()
    while lag > MAX_LAG and time.monotonic() - t_catch < CATCH_UP_S:
        await asyncio.sleep(SAMPLE_S)
        heights = [s["height"] if (s := await status(fed, i)) else -1 for i in everyone]
        lag = max(heights) - min(heights)
    catch_up_s = round(time.monotonic() - t_catch, 1) if lag_end > MAX_LAG else 0.0
    note(f"{attack.name}: after window measured")
    code, cmp_ = await asyncio.to_thread(cli_json, "ledger", "compare", *fed.urls)
    note(f"{attack.name}: compared")
    # `ledger verify` replays the whole chain (minutes on a loaded 2-core box): right after an attack
    # only on the replica it restarted and fed blocks to; every replica again at the end of the run,
    # which covers each attack's heights (`heights` names them, verify names the first bad one).
    replica = attack.victim
    vcode, ver = 0, {}
    if replica is not None:
        vcode, ver = await asyncio.to_thread(cli_json, "ledger", "verify", str(fed.procs[replica].dir))
    # The baseline is the throughput before, but never more than the offered rate: above it, the
    # chain was still draining the previous attack's backlog, which no window after can match.
    base = min(before.rate, RATE) or 1e-9
    growth = [round(b - a, 1) for a, b in zip(rss0, rss1, strict=True)]
    result = {
        "attack": attack.name,
        "readings_per_s": {"before": round(before.rate, 1), "during": round(during.rate, 1),
                           "after": round(after.rate, 1)},
        "baseline_readings_per_s": round(base, 1),
        "ratio": {"during": round(during.rate / base, 2), "after": round(after.rate / base, 2)},
        "p99_finality_ms_during": p99(lat),
        "finality_samples_during": len(lat),
        "max_height_diff": {"during": during.max_lag, "end": lag_end, "after_catch_up": lag},
        "catch_up_s": catch_up_s,
        "rss_mb": {"before": [round(x, 1) for x in rss0], "growth": growth},
        "replicas_agree": code == 0 and bool(cmp_.get("agree", code == 0)),
        "heights": [h_start, max(heights)],
        "verified_replica": None if replica is None else f"node{replica + 1}",
        "verify_ok": None if replica is None else vcode == 0,
        "attack_stats": dict(sorted(ctx.stats.items())),
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    reasons = []
    if during.rate < MIN_DURING * base:
        reasons.append("throughput during < half of before")
    if after.rate < RECOVERY * base:
        reasons.append("throughput after did not recover")
    if lag > MAX_LAG:
        reasons.append(f"replicas {lag} heights apart {CATCH_UP_S:g} s after the end ({lag_end} at the end)")
    if not result["replicas_agree"]:
        reasons.append("replicas disagree")
    if result["verify_ok"] is False:
        reasons.append(f"{result['verified_replica']} does not verify")
    if max(growth) > MAX_RSS_GROWTH_MB:
        reasons.append("memory grew")
    if not all(p.alive for p in fed.procs):
        reasons.append("a node died")
    if before.readings == 0:
        reasons.append("no honest throughput before the attack")
    result["holds"] = not reasons
    result["why_not"] = reasons
    if not result["replicas_agree"]:
        result["compare"] = cmp_
    if result["verify_ok"] is False:
        result["verify"] = ver
    return result


async def harness(root: Path, quick: bool, only: set[str] | None, progress: bool) -> dict[str, Any]:
    windows = QUICK if quick else FULL
    t0 = time.monotonic()
    fed = await asyncio.to_thread(start_federation, root)
    note("federation up, load running")
    results = []
    try:
        attacks = [a for a in ATTACKS if only is None or a.name in only]
        for k, attack in enumerate(attacks):
            r = await run_attack(fed, attack, windows, quick, k)
            results.append(r)
            if progress:
                print(f"{attack.name:22} holds={r['holds']} ratio={r['ratio']}"
                      f" p99={r['p99_finality_ms_during']}"
                      f" lag={r['max_height_diff']} {'; '.join(r['why_not'])}", file=sys.stderr, flush=True)
        note("verifying every replica")
        verified = await asyncio.gather(*(asyncio.to_thread(cli_json, "ledger", "verify", str(p.dir),
                                                            timeout=900) for p in fed.procs))
        final = [{"node": f"node{i + 1}", "ok": code == 0,
                  **({k: ver[k] for k in ("height", "txs") if k in ver})}
                 for i, (code, ver) in enumerate(verified)]
        code, _ = await asyncio.to_thread(cli_json, "ledger", "compare", *fed.urls)
    finally:
        if fed.feeder is not None:
            fed.feeder.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                fed.feeder.wait(10)
        for p in fed.procs:
            p.stop()
    return {
        "quick": quick, "nodes": NODES, "offered_readings_per_s": RATE, "windows_s": windows,
        "criteria": {"during_min_ratio": MIN_DURING, "after_min_ratio": RECOVERY, "max_end_lag": MAX_LAG,
                     "catch_up_s": CATCH_UP_S, "max_rss_growth_mb": MAX_RSS_GROWTH_MB},
        "attacks": results,
        "final": {"verify": final, "replicas_agree": code == 0},
        "all_hold": all(r["holds"] for r in results) and code == 0 and all(v["ok"] for v in final),
        "elapsed_s": round(time.monotonic() - t0, 1),
        "dir": str(root),
    }


# -- hidden modes: the honest load and the Byzantine build ---------------------------------------


def feed(root: Path, rate: float) -> None:
    from node.server.datadir import NodeConfig
    dirs = [root / f"node{i + 1}" for i in range(LOAD_NODES)]
    targets = [Target(d, NodeConfig.load(d).url) for d in dirs]
    chain = json.loads((root / "node1" / "genesis.json").read_text())["chain_id"]
    names = csv_devices(BUNDLED_CSV, limit=2 * LOAD_NODES)
    feeder = Feeder(targets, chain, names)

    async def go() -> None:
        await feeder.register_devices()
        ok = await asyncio.to_thread(wait_until, lambda: len(get_json(targets[0].url, "/devices")["devices"])
                                     >= len(names), 30)
        if not ok:
            raise SystemExit("devices were not registered")
        source = simulated_readings(names, int(time.time() * 1000) - 3_600_000, step_ms=10)
        while True:  # a node restarting under an attack refuses the odd batch: keep going
            try:
                await feeder.stream(source, rate, asyncio.Event())
            except Exception as exc:
                print(f"feeder: {exc}", file=sys.stderr, flush=True)
                await asyncio.sleep(0.5)

    asyncio.run(go())


def byzantine_node(data_dir: Path, ahead_ms: int) -> None:
    """The test-only Byzantine build: the real node with its wall clock `ahead_ms` ahead (every block
    it proposes is timed that far in the future)."""
    import signal

    from node.cli.node_run import setup_logging
    from node.server import runtime

    class AheadNode(runtime.Node):
        def now_ms(self) -> int:
            return runtime.wall_ms() + ahead_ms

    node = AheadNode(data_dir)
    setup_logging(data_dir, "info", console=False)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        await node.run()

    asyncio.run(main())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    ap.add_argument("--quick", action="store_true", help="every attack briefly (about 2 minutes in all)")
    ap.add_argument("--only", help="comma-separated attack names: " + ",".join(a.name for a in ATTACKS))
    ap.add_argument("--dir", type=Path, help="where the federation lives (default: a new temporary dir)")
    ap.add_argument("--feed", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=float, default=RATE, help=argparse.SUPPRESS)
    ap.add_argument("--byzantine-node", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--clock-ahead-ms", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.feed:
        feed(args.feed, args.rate)
        return 0
    if args.byzantine_node:
        byzantine_node(args.byzantine_node, args.clock_ahead_ms)
        return 0
    only = set(args.only.split(",")) if args.only else None
    if only and (unknown := only - {a.name for a in ATTACKS}):
        ap.error(f"unknown attacks: {sorted(unknown)}")
    root = args.dir or Path(tempfile.mkdtemp(prefix="fedledger-adversary-")) / "fed"
    report = asyncio.run(harness(root, args.quick, only, progress=True))
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        for r in report["attacks"]:
            print(f"{r['attack']:22} {'holds' if r['holds'] else 'DOES NOT HOLD'}  {r['readings_per_s']}"
                  f"  p99 {r['p99_finality_ms_during']} ms  {'; '.join(r['why_not'])}")
        print("all hold" if report["all_hold"] else "NOT ALL HOLD", report["elapsed_s"], "s")
    return 0 if report["all_hold"] else 1


if __name__ == "__main__":
    sys.exit(main())
