"""Who coordinates a run, and when the authorities may hand it to another (issue 14).

A run's coordinator is the signer of its train_request until a `run_handover` names another
authority; from then on only the new coordinator may commit the run's rounds (and publish round
0 if it is still open), and every SuperNode pins the SuperLink certificate the handover names.

When a run expires is decided by block times alone, so every replica agrees:

* The run's *progress* is the block time of its latest train_request, model_commit or
  run_handover. The *open round* r is the first uncommitted one.
* Its *base* timeout is the longer of T (the request's `handover_timeout`, in seconds) and twice
  the duration of the last committed round (the block times of commits r-1 and r-2): a run's
  own pace, measured on the ledger, so that a loaded machine's slow rounds do not look like a
  dead coordinator, while a quick run is taken over quickly.
* The coordinator took over at round `takeover` (0 for the request's signer, the handover's round
  otherwise). While it has committed no round since, the open round expires the longer of
  START_FACTORS[0] x base and START_FLOORS_S[0] after the progress; with one round committed
  since, START_FACTORS[1] x base or START_FLOORS_S[1]; after that, base (a coordinator starting its
  Flower processes, its trainers, SuperLink and ServerApp, takes 30-60 s on a loaded 2-core machine).
* The authorities after the coordinator, in the order of their keys (cyclic), take turns: the
  k-th may hand the run over to itself in a block whose time is at least
  expiry + (k - 1) x base. A dead successor is so skipped after one more base timeout.
* A handover names the open round (a replay from an earlier round is `wrong_round`), comes from
  a successor not before its turn (`handover_early`), and each authority takes a given round of a
  run over at most once (`duplicate_handover`), which bounds the handovers per round by the
  number of authorities.
* The coordinator itself may hand the run to itself, at any time, once per round: it restarted
  its Flower processes (its SuperLink died, or its node restarted) and moves its SuperLink, which
  every SuperNode follows. This counts as a takeover (the start-up allowance again), so a
  coordinator can delay a round by at most that allowance once before its successors' turns.

Pure functions over a read-only view, like the rest of node/ledger.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from node.errors import Reason
from node.ledger.transactions import RunHandover, TrainRequest, parse_tx

DEFAULT_HANDOVER_TIMEOUT_S = 10
HANDOVER_TIMEOUT_RANGE_S = (5, 86_400)
PACE_FACTOR = 2  # the base timeout is at least this many times the last round's duration
# While the coordinator has committed 0, then 1 round since it took over: it starts its Flower
# processes, and after a takeover its first round is often committed from the ledger at once.
START_FACTORS = (4, 3)
START_FLOORS_S = (120, 60)


class ControlView(Protocol):
    """What these rules read (state.StateView provides it; rows are runs.ModelRow)."""

    def tx(self, tx_id: bytes) -> Any: ...

    def latest_model_row(self, run: bytes, kind: str) -> Any: ...

    def model_commit(self, run: bytes, round: int) -> Any: ...

    def model_handover(self, run: bytes, round: int, node: bytes) -> Any: ...

    def block_time(self, height: int) -> int | None: ...

    def height(self) -> int: ...

    def membership(self) -> Any: ...


@dataclass(frozen=True)
class RunControl:
    """Who coordinates a run now and how far it got, from the ledger."""

    run: bytes
    request: TrainRequest
    coordinator: bytes
    superlink: str  # where the coordinator's SuperLink listens
    superlink_cert: str  # the hex SHA-256 of its TLS certificate
    takeover_round: int  # the open round when the coordinator took over (0 for the request's signer)
    since_height: int  # the height of the request or of the handover
    open_round: int  # the first uncommitted round; request.rounds + 1 once the run is complete
    progress_height: int  # the latest of the request, the last commit and the last handover
    last_round_ms: int | None = None  # the duration of round open_round - 1, if it was measured

    @property
    def base_ms(self) -> int:
        """T, or twice the last round's duration if that is longer."""
        paced = PACE_FACTOR * self.last_round_ms if self.last_round_ms is not None else 0
        return max(self.timeout_ms, paced)

    @property
    def complete(self) -> bool:
        return self.open_round > self.request.rounds

    @property
    def timeout_ms(self) -> int:
        return handover_timeout_s(self.request) * 1000

    def expiry_timeout_ms(self) -> int:
        """How long after the progress the open round may stay uncommitted."""
        committed_since = self.open_round - self.takeover_round
        if committed_since < len(START_FACTORS):
            return max(START_FACTORS[committed_since] * self.base_ms, START_FLOORS_S[committed_since] * 1000)
        return self.base_ms

    def turn_ms(self, progress_ms: int, position: int) -> int:
        """When the authority at `position` (1 = the next after the coordinator) may take over."""
        return progress_ms + self.expiry_timeout_ms() + (position - 1) * self.base_ms


def handover_timeout_s(req: TrainRequest) -> int:
    return int(req.params.get("handover_timeout", DEFAULT_HANDOVER_TIMEOUT_S))


def check_timeout_param(params: dict[str, Any]) -> Reason | None:
    value = params.get("handover_timeout")
    lo, hi = HANDOVER_TIMEOUT_RANGE_S
    if value is not None and not lo <= value <= hi:
        return Reason.MALFORMED
    return None


def request_of(view: ControlView, run: bytes) -> tuple[TrainRequest, int] | None:
    """The run's train_request and its height."""
    rec = view.tx(run)
    if rec is None or rec.kind != TrainRequest.KIND:
        return None
    body = parse_tx(rec.raw).body
    assert isinstance(body, TrainRequest)
    return body, int(rec.height)


def run_control(view: ControlView, run: bytes, request: tuple[TrainRequest, int] | None = None
                ) -> RunControl | None:
    """The run's coordinator and progress on `view`, or None when there is no such run."""
    found = request if request is not None else request_of(view, run)
    if found is None:
        return None
    req, req_height = found
    last = view.latest_model_row(run, "commit")
    open_round = 0 if last is None else last.round + 1
    handover = view.latest_model_row(run, "handover")
    progress = max(req_height, last.height if last else 0, handover.height if handover else 0)
    pace = _last_round_ms(view, run, last)
    if handover is None:
        return RunControl(run, req, req.authority, str(req.params.get("superlink", "")),
                          str(req.params.get("superlink_cert", "")), 0, req_height, open_round, progress,
                          pace)
    rec = view.tx(handover.tx_id)
    body = parse_tx(rec.raw).body
    assert isinstance(body, RunHandover)
    return RunControl(run, req, body.authority, body.superlink, body.superlink_cert.hex(), body.round,
                      handover.height, open_round, progress, pace)


def _last_round_ms(view: ControlView, run: bytes, last: Any) -> int | None:
    """The block-time gap between the run's last two commits (rounds r-1 and r-2), if both are
    committed below the block under check."""
    if last is None or last.round < 1 or last.height > view.height():
        return None
    before = view.model_commit(run, last.round - 1)
    if before is None:
        return None
    t1, t0 = view.block_time(last.height), view.block_time(before.height)
    return None if t1 is None or t0 is None else max(t1 - t0, 0)


def successors(authorities: tuple[bytes, ...] | list[bytes], coordinator: bytes) -> list[bytes]:
    """The authorities after `coordinator` in key order, cyclic (it need not be one itself any
    more: it is placed where its key sorts)."""
    order = sorted(set(authorities) | {coordinator})
    i = order.index(coordinator)
    return [k for k in order[i + 1:] + order[:i] if k != coordinator]


def progress_ms(view: ControlView, ctl: RunControl, block_time_ms: int) -> int | None:
    """The block time of the run's progress; `block_time_ms` if it is in the block under check."""
    if ctl.progress_height > view.height():
        return block_time_ms
    return view.block_time(ctl.progress_height)


def turn_of(view: ControlView, ctl: RunControl, authority: bytes, height: int, block_time_ms: int
            ) -> int | None:
    """When `authority` may take the run over at `height` (block time, ms), or None if it is not
    among the coordinator's successors there."""
    order = successors(view.membership().validators_at(height), ctl.coordinator)
    if authority not in order:
        return None
    since = progress_ms(view, ctl, block_time_ms)
    if since is None:
        return None
    return ctl.turn_ms(since, order.index(authority) + 1)


def check_run_handover(view: ControlView, body: RunHandover, block_time_ms: int) -> Reason | None:
    """A handover in a block at `block_time_ms` (its signer is an authority: state.py checks that)."""
    ctl = run_control(view, body.run)
    if ctl is None:
        return Reason.UNKNOWN_RUN
    if ctl.complete or body.round != ctl.open_round:
        return Reason.WRONG_ROUND
    if view.model_handover(body.run, body.round, body.authority) is not None:
        return Reason.DUPLICATE_HANDOVER
    if body.authority == ctl.coordinator:
        return None  # the coordinator moves its own SuperLink (it restarted its Flower processes)
    turn = turn_of(view, ctl, body.authority, view.height() + 1, block_time_ms)
    if turn is None:
        return Reason.UNAUTHORIZED  # not an authority of the validator set that decides the block
    if block_time_ms < turn:
        return Reason.HANDOVER_EARLY
    return None


def current_coordinator(view: ControlView, run: bytes, req: TrainRequest) -> bytes:
    """The request's signer, or the authority of the run's latest handover."""
    handover = view.latest_model_row(run, "handover")
    return req.authority if handover is None else handover.node
