"""A strategy mixin over Flower's built-in strategies that aggregates with ``federated.aggregate``.

``LedgerStrategyMixin`` keeps Flower's sampling, message construction and evaluation, and replaces:

* ``configure_train`` / ``configure_evaluate``: wait for ``min_nodes`` SuperNodes with a deadline
  (Flower's ``sample_nodes`` waits forever) and add ``base-hash`` (the global weights' hash) to the
  instruction config.
* ``aggregate_train``: materialise the replies, drop error replies and replies without the expected
  records (ArrayRecord ``arrays`` with the global model's shapes and finite values, MetricRecord
  ``metrics`` with a positive int ``num-examples``, ConfigRecord ``update`` whose ``weights-hash``
  matches the arrays), then aggregate with OUR deterministic ``federated.aggregate`` (sorted by
  update id = weights hash), weighting each update by its ``num_examples`` on the ledger (the
  reply's figure only in file mode), with the personal rows of a personalised model taken from
  their devices' owners (``federated.aggregate.Personal``: the owners on the coordinator's replica,
  the base = the global weights of the round), average the metrics deterministically, and call
  ``fl_hooks.commit_round``, which blocks until the round is final. Fewer than ``min_updates``
  accepted updates fail the run (RoundFailed): a round is committed or the run stops.
* ``aggregate_evaluate``: the same tolerant check, deterministic weighted average.

Concrete classes: LedgerFedAvg, LedgerFedMedian, LedgerFedTrimmedAvg, LedgerKrum; ``make_strategy``
picks one by name. No TensorFlow here.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from logging import INFO, WARNING
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.common.logger import log
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg, Krum

from federated import aggregate as fl_aggregate
from federated.flower import fl_hooks
from federated.flower.fl_hooks import AcceptedUpdate
from federated.flower.fl_records import ARRAYS, METRICS, NUM_EXAMPLES, UPDATE, finite_metrics, weights_hex
from federated.personal import personal_arrays, run_devices
from federated.round_metrics import deterministic_metrics
from federated.weights import canonical_array, weights_hash


class RoundFailed(RuntimeError):
    """A round could not be aggregated or committed; the run stops (no silent skip)."""


class NodesUnavailable(TimeoutError):
    """Fewer SuperNodes than required were connected when the deadline passed."""


class LedgerStrategyMixin:
    """Mix in before a Flower strategy class: ``class X(LedgerStrategyMixin, FedAvg)``."""

    fl_name: str = ""  # our strategy name (federated.aggregate.STRATEGIES)

    def __init__(
        self,
        *,
        run_config: Mapping[str, Any] | None = None,
        aggregation_params: Mapping[str, Any] | None = None,
        min_nodes: int = 2,
        min_updates: int | None = None,
        node_wait_timeout: float = 120.0,
        round_offset: int = 0,
        **flower_kwargs: Any,
    ) -> None:
        flower_kwargs.setdefault("min_train_nodes", min_nodes)
        flower_kwargs.setdefault("min_evaluate_nodes", min_nodes)
        flower_kwargs.setdefault("min_available_nodes", min_nodes)
        super().__init__(**flower_kwargs)  # type: ignore[call-arg]
        self.run_config: dict[str, Any] = dict(run_config or {})
        self.aggregation_params = dict(aggregation_params or {})
        self.min_nodes = min_nodes
        self.min_updates = min_nodes if min_updates is None else min_updates
        self.node_wait_timeout = node_wait_timeout
        # A run resumed by a new coordinator (or after its SuperLink was lost) starts at ledger
        # round offset + 1: Flower counts its rounds from 1, the messages and the ledger carry ours.
        self.round_offset = round_offset
        self.current_arrays: ArrayRecord | None = None
        self.current_hash = ""
        self.current_round = 0
        self.commits: dict[int, dict[str, Any]] = {}
        self.rejected: dict[int, list[tuple[int, str]]] = {}
        self.evaluations: dict[int, dict[str, float]] = {}
        self.round_started: dict[int, float] = {}
        self.round_seconds: dict[int, float] = {}

    # --- sampling with a deadline ----------------------------------------------------------------

    def wait_for_nodes(self, grid: Grid, needed: int) -> list[int]:
        deadline = time.monotonic() + self.node_wait_timeout
        while True:
            nodes = list(grid.get_node_ids())
            if len(nodes) >= needed:
                return nodes
            if time.monotonic() >= deadline:
                raise NodesUnavailable(
                    f"only {len(nodes)} SuperNode(s) connected after {self.node_wait_timeout:.0f} s; "
                    f"{needed} needed"
                )
            time.sleep(0.5)

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        server_round += self.round_offset
        self.round_started[server_round] = time.monotonic()
        self.current_round = server_round
        self.current_arrays = arrays
        self.current_hash = weights_hex(arrays.to_numpy_ndarrays())
        config["base-hash"] = self.current_hash
        self.wait_for_nodes(grid, max(self.min_nodes, self.min_available_nodes))  # type: ignore[attr-defined]
        return super().configure_train(server_round, arrays, config, grid)  # type: ignore[misc]

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        # On the ledger every round's model is scored on held-out readings: rounds 0..R-1 by the
        # next round's train step, the last one here, whatever fraction-evaluate says.
        server_round += self.round_offset
        rounds = int(self.run_config.get("num-rounds", -1))
        last = fl_hooks.ledger_mode(self.run_config) and server_round == rounds
        fraction = self.fraction_evaluate  # type: ignore[attr-defined]
        if fraction == 0.0 and not last:
            return []
        config["base-hash"] = weights_hex(arrays.to_numpy_ndarrays())
        self.wait_for_nodes(grid, max(self.min_nodes, self.min_available_nodes))  # type: ignore[attr-defined]
        if fraction == 0.0:
            self.fraction_evaluate = 1.0  # Flower samples by this attribute
            try:
                return list(super().configure_evaluate(server_round, arrays, config, grid))  # type: ignore[misc]
            finally:
                self.fraction_evaluate = fraction
        return super().configure_evaluate(server_round, arrays, config, grid)  # type: ignore[misc]

    # --- reply checks ----------------------------------------------------------------------------

    def check_train_reply(self, msg: Message) -> AcceptedUpdate | str:
        """The reply as an AcceptedUpdate, or the reason it is dropped."""
        if msg.has_error():
            return f"error reply: {msg.error.reason}"
        content = msg.content
        if set(content.array_records) != {ARRAYS}:
            return f"expected exactly one ArrayRecord {ARRAYS!r}, got {sorted(content.array_records)}"
        if METRICS not in content.metric_records or len(content.metric_records) != 1:
            return f"expected exactly one MetricRecord {METRICS!r}"
        if UPDATE not in content.config_records:
            return f"missing ConfigRecord {UPDATE!r}"
        metrics = content.metric_records[METRICS]
        n = metrics.get(NUM_EXAMPLES)
        if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            return f"{NUM_EXAMPLES} must be a positive int, got {n!r}"
        try:
            weights = [canonical_array(a) for a in content.array_records[ARRAYS].to_numpy_ndarrays()]
        except (ValueError, TypeError) as exc:
            return f"bad arrays: {exc}"
        if self.current_arrays is not None:
            expected = [a.shape for a in self.current_arrays.to_numpy_ndarrays()]
            if [w.shape for w in weights] != expected:
                return "array shapes differ from the global model"
        signed = dict(content.config_records[UPDATE])
        wh = weights_hash(weights)
        if signed.get("weights-hash") != wh.hex():
            return "update weights-hash does not match the arrays"
        checked = fl_hooks.check_update(self.run_config, self.current_round, signed, wh)
        if isinstance(checked, str):
            return checked
        node: bytes | None = None
        if checked is not None:
            ledger_n, node = checked
            if ledger_n != n:
                log(WARNING, "round %d: node %d replied num-examples %d, the ledger has %d; using the "
                    "ledger's", self.current_round, int(msg.metadata.src_node_id), n, ledger_n)
            n = ledger_n  # the weight every authority re-computes with
        return AcceptedUpdate(
            update_id=self.update_id(wh, signed),
            weights=weights,
            num_examples=int(n),
            metrics=finite_metrics({k: v for k, v in metrics.items() if k != NUM_EXAMPLES}),
            signed=signed,
            node_id=int(msg.metadata.src_node_id),
            node=node,
        )

    def update_id(self, weights_hash_bytes: bytes, signed: Mapping[str, Any]) -> bytes:
        """Sort key and identity of an update: the model_update tx id on the ledger (the order the
        ledger's re-computation uses too), else the weights hash."""
        tx = signed.get("tx-id")
        if isinstance(tx, str) and len(tx) == 64:
            try:
                return bytes.fromhex(tx)
            except ValueError:
                pass
        return weights_hash_bytes

    # --- aggregation -----------------------------------------------------------------------------

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        replies = list(replies)  # a generator in Flower: read it once
        accepted: dict[bytes, AcceptedUpdate] = {}
        rejected: list[tuple[int, str]] = []
        for msg in replies:
            checked = self.check_train_reply(msg)
            node = int(msg.metadata.src_node_id)
            if isinstance(checked, str):
                rejected.append((node, checked))
            elif checked.update_id in accepted:
                rejected.append((node, "duplicate update id"))
            else:
                accepted[checked.update_id] = checked
        self.rejected[server_round] = rejected
        for node, reason in rejected:
            log(WARNING, "round %d: dropped reply of node %d: %s", server_round, node, reason)
        updates = [accepted[k] for k in sorted(accepted)]
        log(INFO, "round %d: %d update(s) accepted, %d dropped", server_round, len(updates), len(rejected))
        if len(updates) < self.min_updates:
            raise RoundFailed(
                f"round {server_round}: {len(updates)} valid update(s), {self.min_updates} required "
                f"(dropped: {rejected})"
            )
        try:
            agg = fl_aggregate.aggregate(
                self.fl_name,
                [(u.update_id, u.weights, u.num_examples) for u in updates],
                self.personal(updates),
                **self.aggregation_params,
            )
        except ValueError as exc:
            raise RoundFailed(f"round {server_round}: aggregation failed: {exc}") from exc
        metrics = deterministic_metrics([(u.update_id, u.num_examples, u.metrics) for u in updates])
        commit = fl_hooks.commit_round(self.run_config, server_round, self.fl_name, updates, agg, metrics)
        self.commits[server_round] = commit
        self.round_seconds[server_round] = time.monotonic() - self.round_started.get(
            server_round, time.monotonic()
        )
        log(INFO, "round %d committed: aggregate %s", server_round, weights_hash(agg).hex()[:16])
        return ArrayRecord([np.asarray(a) for a in agg]), MetricRecord(metrics)

    def personal(self, updates: list[AcceptedUpdate]) -> fl_aggregate.Personal | None:
        """How the personal rows of the run's model are aggregated (as every authority does it:
        node/ledger/run_rules.py round_aggregate), or None for a model without personal rows."""
        task = str(self.run_config.get("task", ""))
        params = {k: self.run_config.get(k, "") for k in ("classes", "devices")}
        arrays = personal_arrays(task)
        names = run_devices(task, params) if arrays else []
        if not arrays or not names or self.current_arrays is None:
            return None
        base = [canonical_array(a) for a in self.current_arrays.to_numpy_ndarrays()]
        owners = fl_hooks.device_owners(self.run_config, names)
        if owners is None:  # file mode: rows from the updates that changed them
            return fl_aggregate.Personal(arrays, base)
        nodes = {u.update_id: u.node for u in updates if u.node is not None}
        return fl_aggregate.Personal(arrays, base, owners, nodes)

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        items = []
        for msg in list(replies):
            if msg.has_error() or METRICS not in msg.content.metric_records:
                continue
            m = msg.content.metric_records[METRICS]
            n = m.get(NUM_EXAMPLES)
            if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
                continue
            key = int(msg.metadata.src_node_id).to_bytes(8, "big", signed=False)
            items.append((key, int(n), finite_metrics(m)))
        if not items:
            return None
        metrics = deterministic_metrics(items)
        self.evaluations[server_round] = metrics
        return MetricRecord(metrics)


class LedgerFedAvg(LedgerStrategyMixin, FedAvg):
    fl_name = "fedavg"


class LedgerFedMedian(LedgerStrategyMixin, FedMedian):
    fl_name = "fedmedian"


class LedgerFedTrimmedAvg(LedgerStrategyMixin, FedTrimmedAvg):
    fl_name = "fedtrimmedavg"


class LedgerKrum(LedgerStrategyMixin, Krum):
    fl_name = "krum"


STRATEGY_CLASSES: dict[str, type[LedgerStrategyMixin]] = {
    c.fl_name: c for c in (LedgerFedAvg, LedgerFedMedian, LedgerFedTrimmedAvg, LedgerKrum)
}


def make_strategy(
    name: str,
    *,
    run_config: Mapping[str, Any] | None = None,
    aggregation_params: Mapping[str, Any] | None = None,
    min_nodes: int = 2,
    min_updates: int | None = None,
    node_wait_timeout: float = 120.0,
    fraction_evaluate: float = 1.0,
    round_offset: int = 0,
) -> LedgerStrategyMixin:
    cls = STRATEGY_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"unknown strategy {name!r}; expected one of {', '.join(STRATEGY_CLASSES)}")
    params = dict(aggregation_params or {})
    flower_kwargs: dict[str, Any] = {"fraction_train": 1.0, "fraction_evaluate": fraction_evaluate}
    # Keep Flower's own parameters consistent with ours (they show in its summary log).
    if name == "fedtrimmedavg" and "beta" in params:
        flower_kwargs["beta"] = float(params["beta"])
    if name == "krum" and "f" in params:
        flower_kwargs["num_malicious_nodes"] = int(params["f"])
    return cls(
        run_config=run_config,
        aggregation_params=params,
        min_nodes=min_nodes,
        min_updates=min_updates,
        node_wait_timeout=node_wait_timeout,
        round_offset=round_offset,
        **flower_kwargs,
    )
