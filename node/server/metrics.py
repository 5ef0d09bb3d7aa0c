"""Prometheus metrics of a running node (GET /metrics, text format 0.0.4; the names: docs/metrics.md).

Almost everything is read at scrape time from what the node already keeps (the store's height, the
consensus core, the mempool, the network's counters, block sync's progress): an unscraped node
pays nothing for those. What only exists at the moment a block commits (finality latencies, the
round a height was decided in, block intervals, training round durations) is folded into
`ChainMetrics` by the node's commit path: a few integer additions and a bisect per block or tx,
no locks (the node is one event-loop thread, and scrapes run on that thread too).

Each node has its own CollectorRegistry, so several nodes in one process (the tests) do not share
or clash. Label values are bounded: rejection reasons are a fixed set (anything else is `other`),
peers are capped at MAX_PEER_SERIES, training metric names at MAX_TRAINING_METRICS per task.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator
from typing import Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from consensus.tendermint import Tendermint
from node.errors import BlockReason, Reason
from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis
from node.ledger.keys import NodeKey
from node.ledger.mempool import Mempool
from node.ledger.storage import Store
from node.net.sync import BlockSync, SyncStats
from node.net.transport import PeerNetwork

# Every name here is a classic one, so the classic text format, which every Prometheus reads (newer
# prometheus_client versions label it 1.0.0, which Prometheus 2 does not know).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
MAX_PEER_SERIES = 16  # peers with their own series (the worst scores first); the rest are only counted
MAX_TRAINING_METRICS = 8  # metric names per task shown from a round's commit
MAX_TRAINING_TASKS = 8
MAX_COUNTER_SERIES = 64  # label values of one node-wide event counter family
TX_REASONS = frozenset(r.value for r in Reason)
BLOCK_REASONS = frozenset(r.value for r in BlockReason)

# Seconds. Finality on a LAN federation is tens to hundreds of ms; a stalled round is seconds.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
INTERVAL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
ROUND_BUCKETS = (0, 1, 2, 3, 5, 10)  # the round a height was decided in: 0 = no round skipped
TRAINING_ROUND_BUCKETS = (1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)


class Buckets:
    """A cumulative histogram kept as plain counts (prometheus_client's Histogram takes a lock
    per observation; the commit path needs none)."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Iterable[float]) -> None:
        self.bounds = tuple(float(b) for b in bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # the first bucket with bound >= value
        self.sum += value

    @property
    def count(self) -> int:
        return sum(self.counts)

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, total = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            total += n
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.sum)


class ChainMetrics:
    """What the node records as blocks commit (see the module doc)."""

    def __init__(self) -> None:
        self.blocks = Counter[str]()  # by source: consensus | sync
        self.txs = 0
        self.readings = 0
        self.round_skips = 0
        self.rounds = Buckets(ROUND_BUCKETS)
        self.finality = Buckets(LATENCY_BUCKETS)  # tx submitted here -> committed here
        self.proposal_to_commit = Buckets(LATENCY_BUCKETS)  # block time (proposer's clock) -> committed here
        self.block_interval = Buckets(INTERVAL_BUCKETS)  # block time - previous block time
        self.training_rounds = 0
        self.training_round_duration = Buckets(TRAINING_ROUND_BUCKETS)
        # task -> the latest committed round's metrics; bounded (tasks and names come from the ledger)
        self.training_last: OrderedDict[str, dict[str, float]] = OrderedDict()

    def on_block(self, block: Block, commit: Commit, readings: int, synced: bool,
                 previous_time_ms: int | None, now_ms: int) -> None:
        self.blocks["sync" if synced else "consensus"] += 1
        self.txs += len(block.txs)
        self.readings += readings
        self.rounds.observe(commit.round)
        self.round_skips += commit.round
        if previous_time_ms is not None:
            self.block_interval.observe(max(0, block.header.time_ms - previous_time_ms) / 1000)
        if not synced:  # a synced block was decided long ago: its age measures the catch-up
            self.proposal_to_commit.observe(max(0, now_ms - block.header.time_ms) / 1000)

    def on_training_round(self, task: str, metrics: dict[str, float], duration_s: float | None) -> None:
        self.training_rounds += 1
        if duration_s is not None:
            self.training_round_duration.observe(duration_s)
        numeric = {k: float(v) for k, v in sorted(metrics.items())
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.training_last[task] = dict(list(numeric.items())[:MAX_TRAINING_METRICS])
        self.training_last.move_to_end(task)
        while len(self.training_last) > MAX_TRAINING_TASKS:
            self.training_last.popitem(last=False)


class MetricsSource(Protocol):
    """What the collector reads of a running node (node/server/runtime.py's Node)."""

    store: Store
    ledger: Ledger
    genesis: Genesis
    mempool: Mempool
    net: PeerNetwork
    sync: BlockSync
    sync_stats: SyncStats
    counters: Counter[str]
    chain_metrics: ChainMetrics
    key: NodeKey

    @property
    def core(self) -> Tendermint: ...

    @property
    def role(self) -> str: ...



def _by_label(counters: Counter[str], prefix: str, allowed: frozenset[str] | None) -> dict[str, int]:
    """`prefix:value` counters as {value: n}; a value outside `allowed` counts as `other`, and at
    most MAX_COUNTER_SERIES values are kept (the rest go to `other` too)."""
    # Known reasons start at 0: a series that appears only at its first event hides that event
    # from rate() and increase().
    out: Counter[str] = Counter(dict.fromkeys(allowed or (), 0))
    for key, n in counters.items():
        if key.startswith(prefix):
            label = key[len(prefix):]
            if allowed is not None and label not in allowed:
                label = "other"
            out[label] += n
    if len(out) > MAX_COUNTER_SERIES:
        kept = dict(out.most_common(MAX_COUNTER_SERIES - 1))
        kept["other"] = kept.get("other", 0) + sum(n for k, n in out.items() if k not in kept)
        return kept
    return dict(out)


def _capped(values: dict[str, int]) -> dict[str, int]:
    if len(values) <= MAX_COUNTER_SERIES:
        return values
    top = Counter(values).most_common(MAX_COUNTER_SERIES - 1)
    rest = sum(values.values()) - sum(n for _, n in top)
    return {**dict(top), "other": rest}


def _counter(name: str, doc: str, label: str, values: dict[str, int]) -> CounterMetricFamily:
    fam = CounterMetricFamily(name, doc, labels=[label])
    for value, n in sorted(values.items()):
        fam.add_metric([value], n)
    return fam


class NodeCollector(Collector):
    """Reads the node's state when Prometheus scrapes."""

    def __init__(self, node: MetricsSource) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        yield from self._ledger()
        yield from self._consensus()
        yield from self._network()
        yield from self._sync()
        yield from self._training()

    def _ledger(self) -> Iterator[Metric]:
        n, cm = self.node, self.node.chain_metrics
        info = GaugeMetricFamily("fedledger_node_info", "This node: always 1, its identity in labels",
                                 labels=["chain_id", "node_id", "role"])
        info.add_metric([n.genesis.chain_id, n.key.short_id, n.role], 1)
        yield info
        yield GaugeMetricFamily("fedledger_height", "Height of the last committed block",
                                value=n.store.height())
        head = n.ledger.head_time_ms
        if head:
            yield GaugeMetricFamily("fedledger_head_block_time_seconds",
                                    "Block time (Unix seconds) of the last committed block",
                                    value=head / 1000)
        blocks = CounterMetricFamily("fedledger_blocks_committed", "Blocks committed by this process",
                                     labels=["source"])
        for source in ("consensus", "sync"):
            blocks.add_metric([source], cm.blocks[source])
        yield blocks
        yield CounterMetricFamily("fedledger_txs_finalized",
                                  "Transactions in blocks committed by this process", value=cm.txs)
        yield CounterMetricFamily("fedledger_readings_finalized",
                                  "Sensor readings in blocks committed by this process", value=cm.readings)
        yield _counter("fedledger_tx_rejections", "Transactions refused at mempool admission, by reason",
                       "reason", _by_label(n.counters, "rejected:", TX_REASONS))
        yield _counter("fedledger_block_rejections",
                       "Blocks refused at commit (decided or synced), by reason", "reason",
                       _by_label(n.counters, "rejected_block:", BLOCK_REASONS))
        yield GaugeMetricFamily("fedledger_mempool_txs", "Transactions waiting in the mempool",
                                value=len(n.mempool))
        yield cm.finality.family("fedledger_finality_latency_seconds",
                                 "From a client's submission to this node until this node committed it")
        yield cm.proposal_to_commit.family("fedledger_block_proposal_to_commit_seconds",
                                           "From a block's time (the proposer's clock) to its commit here")
        yield cm.block_interval.family("fedledger_block_interval_seconds",
                                       "Block time minus the previous block's time")

    def _consensus(self) -> Iterator[Metric]:
        n, cm = self.node, self.node.chain_metrics
        core = n.core
        yield GaugeMetricFamily("fedledger_consensus_height", "Height consensus is deciding",
                                value=core.height)
        yield GaugeMetricFamily("fedledger_consensus_round", "Round of the height being decided",
                                value=core.round)
        yield GaugeMetricFamily("fedledger_validators", "Validators of the next height",
                                value=len(n.ledger.validators_at(n.store.height() + 1).members))
        yield cm.rounds.family("fedledger_consensus_rounds_per_height",
                               "The round each committed height was decided in (0: first round)")
        yield CounterMetricFamily("fedledger_consensus_round_skips",
                                  "Rounds that ended without a decision, summed over committed heights",
                                  value=cm.round_skips)
        yield _counter("fedledger_consensus_misbehaviour", "Misbehaviour the consensus core detected",
                       "reason", _by_label(n.counters, "misbehaviour:", None))
        events = {k: v for k, v in n.counters.items()
                  if not k.startswith(("rejected:", "rejected_block:", "misbehaviour:"))}
        yield _counter("fedledger_node_events", "Node-level events (dropped messages, sync answers, ...)",
                       "event", _capped(events))

    def _network(self) -> Iterator[Metric]:
        net = self.node.net
        stats = net.stats()
        peers = net.peers()
        gauge = GaugeMetricFamily("fedledger_peers", "Connected peers", labels=["direction"])
        for direction in ("inbound", "outbound"):
            gauge.add_metric([direction], sum(1 for p in peers if p.direction == direction))
        yield gauge
        yield GaugeMetricFamily("fedledger_clients", "Connected client websockets", value=stats["clients"])
        yield CounterMetricFamily("fedledger_network_received_bytes",
                                  "Bytes received on peer and client links", value=stats["bytes_in"])
        yield CounterMetricFamily("fedledger_network_sent_bytes", "Bytes sent on peer and client links",
                                  value=stats["bytes_out"])
        yield CounterMetricFamily("fedledger_network_received_frames", "Frames received",
                                  value=stats["frames_in"])
        yield CounterMetricFamily("fedledger_network_sent_frames", "Frames sent", value=stats["frames_out"])
        yield _counter("fedledger_network_rejected_frames", "Inbound frames refused, by reason", "reason",
                       _capped(stats["rejected"]))
        yield _counter("fedledger_network_dropped_frames", "Outbound frames not sent, by reason", "reason",
                       _capped(stats["dropped_out"]))
        yield _counter("fedledger_network_disconnects", "Peer links closed by this node, by reason", "reason",
                       _capped(stats["disconnects"]))
        yield _counter("fedledger_handshake_refusals", "Handshakes this node refused, by reason", "reason",
                       _capped(stats["handshake_refusals"]))
        yield GaugeMetricFamily("fedledger_bans_active", "Node keys and addresses banned now",
                                value=stats["bans_active"])
        now = time.monotonic()
        scored = sorted(((p.state.score.value(now), p) for p in peers), key=lambda sp: -sp[0])
        score = GaugeMetricFamily("fedledger_peer_misbehaviour_score",
                                  "Misbehaviour score of a peer (it decays; past the threshold "
                                  f"the link closes); the {MAX_PEER_SERIES} worst",
                                  labels=["peer", "direction"])
        rx = CounterMetricFamily("fedledger_peer_received_bytes",
                                 "Bytes received from a peer on its current link",
                                 labels=["peer", "direction"])
        tx = CounterMetricFamily("fedledger_peer_sent_bytes", "Bytes sent to a peer on its current link",
                                 labels=["peer", "direction"])
        for value, p in scored[:MAX_PEER_SERIES]:
            labels = [p.short_id, p.direction]
            score.add_metric(labels, value)
            rx.add_metric(labels, p.state.counters.bytes_in)
            tx.add_metric(labels, p.state.counters.bytes_out)
        yield from (score, rx, tx)

    def _sync(self) -> Iterator[Metric]:
        n = self.node
        height = n.store.height()
        target = max(n.sync.target, height)
        st = n.sync_stats
        yield GaugeMetricFamily("fedledger_sync_target_height",
                                "Highest height a peer has announced (or ours)", value=target)
        yield GaugeMetricFamily("fedledger_sync_behind_blocks", "Target height minus our height",
                                value=target - height)
        yield GaugeMetricFamily("fedledger_syncing", "1 while catching up from peers",
                                value=int(target > height))
        span = target - st.start_height
        done = 1.0 if span <= 0 else min(1.0, max(0.0, (height - st.start_height) / span))
        yield GaugeMetricFamily("fedledger_sync_progress_ratio",
                                "Share of the current catch-up applied (1 when caught up)", value=done)
        yield CounterMetricFamily("fedledger_sync_blocks_applied", "Blocks applied by block sync since start",
                                  value=n.counters["blocks_synced"])
        yield CounterMetricFamily("fedledger_sync_blocks_served", "Blocks served to peers catching up",
                                  value=n.counters["blocks_served"])
        yield CounterMetricFamily("fedledger_sync_failures", "Synced blocks that failed to verify",
                                  value=n.counters["sync_bad_block"])

    def _training(self) -> Iterator[Metric]:
        n, cm = self.node, self.node.chain_metrics
        yield GaugeMetricFamily("fedledger_training_runs", "Training runs on the ledger (train_request txs)",
                                value=len(n.store.txs_of_kind("train_request")))
        yield CounterMetricFamily("fedledger_training_rounds_committed",
                                  "Training rounds (model_commit txs) committed by this process",
                                  value=cm.training_rounds)
        yield cm.training_round_duration.family(
            "fedledger_training_round_duration_seconds",
            "Block time of a round's model commit minus that of the previous round's")
        last = GaugeMetricFamily("fedledger_training_round_metric",
                                 "The latest committed round's metrics, per task", labels=["task", "metric"])
        for task, values in cm.training_last.items():
            for name, value in values.items():
                last.add_metric([task[:64], name[:64]], value)
        yield last


class NodeMetrics:
    """The registry GET /metrics renders: the node's collector and this process's CPU and memory."""

    def __init__(self, node: MetricsSource) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(NodeCollector(node))
        # Standard names (process_cpu_seconds_total, process_resident_memory_bytes, ...), read from /proc
        # at scrape time; on a system without /proc the collector yields nothing.
        ProcessCollector(registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)

