"""`fedledger launch`: a local federation of authority nodes, fed with sensor readings, with live
progress, a summary, and where to look next."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from pathlib import Path
from typing import Any

from node.errors import ConfigError, NodeUnreachable
from node.launch.display import Display, LaunchOptions
from node.launch.federation import create_federation
from node.launch.feeder import Feeder, FeedStats, Target
from node.launch.processes import NodeProcess, wait_until
from node.launch.sensors import BUNDLED_CSV, CsvStats, csv_devices, csv_readings, simulated_readings
from node.launch.training_display import TrainingWatch, print_training
from node.net.http import explorer_url, get_json

READY_TIMEOUT_S = 60
DRAIN_TIMEOUT_S = 30
SETTLE_TIMEOUT_S = 60


def statuses(procs: list[NodeProcess]) -> list[dict[str, Any] | None]:
    """Each node's /status, or None for a node that does not answer (down; a node restarted by
    someone else answers again although launch did not start that process)."""
    return [p.status() for p in procs]


def progress_line(
    st: list[dict[str, Any] | None], feed: FeedStats, started: float, first_readings: int
) -> str:
    live = [s for s in st if s]
    if not live:
        return "waiting for nodes..."
    height = max(s["height"] for s in live)
    readings = max(s["readings"] for s in live)
    elapsed = max(time.monotonic() - started, 1e-6)
    rate = (readings - first_readings) / elapsed
    rejected = sum(sum(s["rejected"].values()) for s in live)
    peers = "/".join(str(s["peers"]) if s else "-" for s in st)
    mempool = max(s["mempool"] for s in live)
    down = [f"node{i + 1}" for i, s in enumerate(st) if s is None]
    return (f"height {height:>5} | finalized {readings:>7} readings ({rate:6.1f}/s) | "
            f"submitted {feed.submitted:>7} | rejected {rejected} | mempool {mempool} | peers {peers}"
            + (f" | DOWN: {', '.join(down)}" if down else ""))


def run_launch(opts: LaunchOptions) -> int:
    if not 1 <= opts.nodes <= 32:
        raise ConfigError("--nodes must be between 1 and 32 (4 tolerates one faulty node)")
    if opts.rate < 0:
        raise ConfigError("--rate must be >= 0 (0 = as fast as the nodes accept)")
    root = (opts.dir or Path.cwd() / time.strftime("fedledger-run-%Y%m%d-%H%M%S")).resolve()
    out = Display(quiet=opts.json)
    out.say(f"Creating a federation of {opts.nodes} authority nodes in {root}")
    genesis, nodes = create_federation(root, opts.nodes)
    procs = [NodeProcess(n.dir) for n in nodes]
    for p in procs:
        p.start(detach=opts.keep_running, extra_args=["--log-format", opts.log_format])
    try:
        return asyncio.run(_run(opts, root, genesis.chain_id, procs, out))
    finally:
        if not opts.keep_running:
            for p in procs:
                p.stop()


async def _run(
    opts: LaunchOptions, root: Path, chain_id: str, procs: list[NodeProcess], out: Display
) -> int:
    n = len(procs)

    def ready() -> bool:
        st = statuses(procs)
        return all(s is not None and s["peers"] >= n - 1 for s in st) or any(not p.alive for p in procs)

    await asyncio.to_thread(wait_until, ready, READY_TIMEOUT_S)
    dead = [p for p in procs if not p.alive]
    if dead or not ready():
        for p in dead or procs:
            out.say(f"node in {p.dir} {'exited' if not p.alive else 'is not ready'}; last log lines:\n"
                    f"{p.log_tail()}")
        return 1
    out.say(f"{n} nodes up, fully connected: " + ", ".join(p.url for p in procs))
    out.say(f"Explorer: {explorer_url(procs[0].url)}  (every node serves one on its port)")

    csv_stats = CsvStats()
    if opts.simulated:
        names = [f"sim-{i + 1:02d}" for i in range(opts.devices)]
        source = simulated_readings(names, int(time.time() * 1000) - 86_400_000)
        origin = f"{len(names)} simulated devices"
    else:
        path = opts.csv or BUNDLED_CSV
        names = csv_devices(path, limit=opts.devices)
        source = csv_readings(path, csv_stats, devices=set(names))
        origin = f"{len(names)} devices from {path.name}"
        if opts.csv is None:
            origin += " (bundled real data)"
    feeder = Feeder([t for t in (Target(p.dir, p.url) for p in procs)], chain_id, names)
    await feeder.register_devices()

    def registered() -> bool:
        try:
            return len(get_json(procs[0].url, "/devices")["devices"]) >= len(names)
        except NodeUnreachable:
            return False

    # Readings of a device are only valid once its registration is final.
    if not await asyncio.to_thread(wait_until, registered, READY_TIMEOUT_S):
        out.say("device registrations did not become final in time; last log lines of node1:\n"
                + procs[0].log_tail())
        return 1
    out.say(f"Registered {origin}, spread over the nodes; streaming readings at "
            f"{'max' if opts.rate == 0 else f'{opts.rate:g}/s'}")

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    interrupted = False

    def on_sigint() -> None:
        nonlocal interrupted
        interrupted = True
        stop.set()

    loop.add_signal_handler(signal.SIGINT, on_sigint)
    started = time.monotonic()
    first = (procs[0].status() or {}).get("readings", 0)
    feed_task = asyncio.create_task(feeder.stream(source, opts.rate, stop))
    shown_events = 0
    train = TrainingWatch(opts, procs) if opts.rounds > 0 else None
    while not (feed_task.done() and (train is None or train.finished or interrupted)):
        st = await asyncio.to_thread(statuses, procs)
        elapsed = time.monotonic() - started
        line = progress_line(st, feeder.stats, started, first)
        if train is not None and not interrupted:
            if train.run is None and elapsed >= opts.train_after and not train.finished:
                out.say(f"Starting {opts.rounds} rounds of {opts.task} ({opts.strategy}) from node1; "
                        "every node trains on its own validated readings")
                await asyncio.to_thread(train.start)
                if train.error:
                    out.say(f"training could not start: {train.error}")
            train.observe(st)
            for msg in train.news():
                out.say(msg)
            line += train.progress()
            if train.finished and opts.duration is None:
                stop.set()  # the default run ends when training does
        out.progress(line)
        if opts.duration is not None and elapsed >= opts.duration:
            stop.set()
        if train is not None and train.run is not None and elapsed > opts.train_after + opts.train_timeout:
            train.fail(f"not complete after {opts.train_timeout:.0f} s")
        # A node that dies is an event: the feeder keeps the other nodes' devices streaming and
        # reconnects its devices when it is back (node/launch/feeder.py); a run fails over.
        for event in feeder.events[shown_events:]:
            out.say(event)
        shown_events = len(feeder.events)
        if feed_task.done():
            await asyncio.sleep(0.5)  # the feed is over but training is not: poll, do not spin
        else:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(feed_task), 0.5)
    stats = feed_task.result()
    out.end_line()
    # Every signed reading finalized: what waited for a node that came back, and anything a node
    # that died may have lost, sent again as the same signed bytes.
    if not interrupted:
        settled = await feeder.settle(SETTLE_TIMEOUT_S)
        for event in feeder.events[shown_events:]:
            out.say(event)
        if not settled:
            out.say(f"{feeder.pending()} signed reading(s) not seen committed after {SETTLE_TIMEOUT_S} s")

    # Let what was accepted finalize before the summary.
    def drained() -> bool:
        st = statuses(procs)
        return all(s is not None and s["mempool"] == 0 for s in st if s is not None)

    if not interrupted:
        await asyncio.to_thread(wait_until, drained, DRAIN_TIMEOUT_S, 0.3)
    await asyncio.sleep(1.0)  # the last block reaches every replica
    summary = await asyncio.to_thread(summarize, procs, stats, csv_stats, time.monotonic() - started)
    summary["devices"] = device_summary(feeder)
    summary["node_events"] = list(feeder.events)
    if train is not None:
        summary["training"] = await asyncio.to_thread(train.summary)
    loop.remove_signal_handler(signal.SIGINT)
    if opts.json:
        print(json.dumps(summary, indent=2))
    else:
        print_summary(summary, root, procs, opts.keep_running, out)
    trained = train is None or summary["training"]["complete_on_every_replica"]
    return 0 if summary["agree"] and summary["nodes_alive"] == n and trained else 1


def device_summary(feeder: Feeder) -> dict[str, Any]:
    """Per device: the last sequence number signed and the last committed, and readings still
    waiting or not seen committed (all zero when every signed reading is final)."""
    return {
        d: {"signed": feeder.seq[d], "committed": feeder.committed[d],
            "unconfirmed": len(feeder.unconfirmed[d]), "lost": feeder.stats.lost_by_device[d],
            "node": feeder.owner[d] + 1}
        for d in sorted(feeder.owner)
    }


def summarize(
    procs: list[NodeProcess], feed: FeedStats, csv_stats: CsvStats, elapsed: float
) -> dict[str, Any]:
    st = statuses(procs)
    live = [s for s in st if s]
    common = min((s["height"] for s in live), default=0)
    hashes = set()
    for p, s in zip(procs, st, strict=True):
        if s and common > 0:
            hashes.add(get_json(p.url, f"/block/{common}")["hash"])
    readings = max((s["readings"] for s in live), default=0)
    return {
        "dir": str(procs[0].dir.parent),
        "nodes": [
            {"dir": str(p.dir), "url": p.url, "explorer": explorer_url(p.url),
             "node_id": s["node_id"] if s else None,
             "height": s["height"] if s else None, "head_hash": s["head_hash"] if s else None,
             "readings": s["readings"] if s else None, "rejected": s["rejected"] if s else None,
             "alive": s is not None}
            for p, s in zip(procs, st, strict=True)
        ],
        "nodes_alive": sum(1 for s in st if s is not None),
        "common_height": common,
        "agree": len(hashes) <= 1 and len(live) == len(procs),
        "submitted": feed.submitted,
        "accepted": feed.accepted,
        "resent": feed.resent,
        "resent_already_final": feed.resent_already_final,
        "dropped_while_down": feed.dropped_while_down,
        "lost": feed.lost,
        "rejected_at_submission": dict(feed.rejected),
        "finalized_readings": readings,
        "seconds": round(elapsed, 1),
        "finalized_per_s": round(readings / elapsed, 1) if elapsed > 0 else None,
        "csv_rows": csv_stats.rows,
        "csv_bad_rows": dict(csv_stats.bad_rows),
    }


def print_summary(s: dict[str, Any], root: Path, procs: list[NodeProcess], keep: bool, out: Display) -> None:
    out.say("")
    out.say(f"Summary after {s['seconds']} s: {s['finalized_readings']} readings finalized "
            f"({s['finalized_per_s']}/s), {s['accepted']} of {s['submitted']} submitted accepted")
    if s["rejected_at_submission"]:
        out.say(f"  rejected at submission: {s['rejected_at_submission']}")
    if s["lost"]:
        out.say(f"  LOST: {s['lost']} signed reading(s) the ledger skipped (a later one of the device was "
                "committed first)")
    if s["resent"] or s["dropped_while_down"]:
        out.say(f"  a node was down: {s['resent']} signed reading(s) sent again after it came back "
                f"({s['resent_already_final']} already final), {s['dropped_while_down']} reading(s) dropped "
                "unsigned while it was down")
    if s["csv_bad_rows"]:
        out.say(f"  unreadable CSV rows skipped: {s['csv_bad_rows']}")
    for node in s["nodes"]:
        head = (node["head_hash"] or "-")[:16]
        out.say(f"  {Path(node['dir']).name:<7} {node['node_id'] or '(down)':<17} height {node['height']}  "
                f"head {head}  readings {node['readings']}")
    verdict = "all replicas agree" if s["agree"] else "REPLICAS DISAGREE"
    out.say(f"  {verdict} at common height {s['common_height']}")
    t = s.get("training")
    if t:
        print_training(t, root, out)
    out.say("")
    out.say("Look next:")
    if keep:
        out.say(f"  {explorer_url(procs[0].url)}    # the explorer, in a browser (any node's port)")
    out.say(f"  fedledger ledger status {root}/node1")
    out.say(f"  fedledger ledger blocks {root}/node1")
    out.say(f"  fedledger ledger verify {root}/node1")
    out.say(f"  fedledger ledger compare {' '.join(str(p.dir) for p in procs)}")
    out.say(f"  sqlite3 {root}/node1/node.db "
            "'SELECT height, num_txs FROM blocks ORDER BY height DESC LIMIT 5'")
    if keep:
        out.say(f"Nodes keep running (logs in {root}/node*/node.log); stop them with:")
        out.say(f"  kill $(cat {root}/node*/node.pid)")
    else:
        out.say("(the nodes were stopped; `fedledger node run DIR` restarts one, and serves its explorer "
                f"again, e.g. {explorer_url(procs[0].url)})")
