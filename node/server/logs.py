"""The node's log lines about its chain, and the machine-readable log format.

One info line per block this node commits by consensus (height, txs, round, time since the previous
block, latency), as Besu's round summaries, and one per committed training round with its metrics.
Each line also carries its values as `fields` (logging's `extra`), which `JsonFormatter` puts in
the line's JSON object, so a log shipper needs no regular expression.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from typing import Any

from node.ledger.blocks import Block
from node.ledger.storage import Store
from node.ledger.transactions import ModelCommit, TrainRequest, parse_tx

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# Keys a record's `fields` may not overwrite in the JSON object.
_RESERVED = frozenset({"ts", "level", "logger", "msg", "exc"})


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC, ISO 8601 with ms), level, logger, msg, the record's
    `fields` if it has any, and exc (the traceback) if it carries an exception."""

    def format(self, record: logging.LogRecord) -> str:
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        out: dict[str, Any] = {"ts": f"{ts}.{int(record.msecs):03d}Z", "level": record.levelname,
                               "logger": record.name, "msg": record.getMessage()}
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            out.update({k: v for k, v in fields.items() if k not in _RESERVED})
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        # default=str: a field that is not JSON (bytes, a path) must not lose the line.
        return json.dumps(out, default=str, separators=(",", ":"))


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, not {log_format!r}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def block_line(height: int, txs: int, readings: int, round_: int, proposer: str,
               since_previous_s: float | None, proposal_to_commit_s: float,
               latencies_s: list[float]) -> tuple[str, dict[str, Any]]:
    """The log line of one committed block. `latencies_s`: finality of the block's txs that were
    submitted to this node (the only ones whose submission time it knows)."""
    lat = sorted(latencies_s)
    p50 = round(lat[len(lat) // 2], 6) if lat else None
    worst = round(lat[-1], 6) if lat else None
    msg = (f"committed block {height}: {txs} txs ({readings} readings), round {round_}, proposer {proposer}, "
           f"{_s(since_previous_s)} since previous, proposal to commit {_s(proposal_to_commit_s)}, "
           f"finality p50 {_s(p50)} max {_s(worst)} ({len(lat)} txs submitted here)")
    fields = {"event": "block_committed", "height": height, "txs": txs, "readings": readings, "round": round_,
              "proposer": proposer,
              "since_previous_s": None if since_previous_s is None else round(since_previous_s, 3),
              "proposal_to_commit_s": round(proposal_to_commit_s, 6),
              "finality_p50_s": p50, "finality_max_s": worst, "finality_samples": len(lat)}
    return msg, fields


@dataclass(frozen=True)
class CommittedRound:
    task: str
    round: int
    rounds: int | None  # the run's rounds, from its train request
    run: bytes
    height: int
    metrics: dict[str, Any]
    duration_s: float | None  # block time of this commit minus that of the previous round's


def committed_rounds(store: Store, block: Block) -> list[CommittedRound]:
    """The training rounds a just-committed block commits (it is in `store` already)."""
    out = []
    for tx in block.parsed_txs:
        body = getattr(tx, "body", None)
        if not isinstance(body, ModelCommit):
            continue
        duration = None
        prev = store.model_commit(body.run, body.round - 1) if body.round > 0 else None
        rows = store.block_rows(prev.height, prev.height) if prev is not None else []
        if rows:
            duration = max(0, block.header.time_ms - rows[0]["time_ms"]) / 1000
        rec = store.tx(body.run)
        request = parse_tx(rec.raw).body if rec is not None else None
        rounds = request.rounds if isinstance(request, TrainRequest) else None
        out.append(CommittedRound(body.task, body.round, rounds, body.run, block.height, dict(body.metrics),
                                  duration))
    return out


def training_round_line(r: CommittedRound) -> tuple[str, dict[str, Any]]:
    """The log line of one committed training round (round 0 is the initial model)."""
    task, round_, rounds, run, height, metrics, duration_s = (r.task, r.round, r.rounds, r.run, r.height,
                                                               r.metrics, r.duration_s)
    shown = " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                     for k, v in sorted(metrics.items()))
    after = f", {duration_s:.1f} s after round {round_ - 1}" if duration_s is not None else ""
    of = f"/{rounds}" if rounds is not None else ""
    msg = (f"training round {round_}{of} of {task} run {run.hex()[:12]} committed at height {height}: "
           f"{shown or 'no metrics'}{after}")
    fields = {"event": "training_round_committed", "task": task, "round": round_, "rounds": rounds,
              "run": run.hex(), "height": height, "metrics": dict(metrics), "round_duration_s": duration_s}
    return msg, fields
