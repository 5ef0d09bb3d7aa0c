"""Which parts of a task's model are personal: one row per device of the run's device list.

Pure Python, no TensorFlow: the node re-aggregates every committed round with it
(node/ledger/runs.py), the ClientApp and the strategy aggregate with it.

* humidity (federated/tasks.py): arrays 0-1 are the shared line, every device's readings train it
  and the strategy aggregates it; arrays 2-3 hold each device's own line (kernel row, bias row).
* traceability (federated/fingerprint.py): arrays 0-1 are the pooled within-device statistics,
  arrays 2-4 each device's fingerprint.

A run names its devices in its train_request (``devices`` for humidity, ``classes`` for
traceability): a comma-separated, sorted list of registered device names; row i is device i.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

PERSONAL_ARRAYS: dict[str, tuple[int, ...]] = {"humidity": (2, 3), "traceability": (2, 3, 4)}
DEVICE_PARAM = {"humidity": "devices", "traceability": "classes"}
MAX_DEVICES = 64  # a train_request param string is at most 128 characters anyway


def personal_arrays(task: str) -> tuple[int, ...]:
    return PERSONAL_ARRAYS.get(task, ())


def parse_devices(text: str) -> list[str]:
    """The device names of a run's list; ValueError unless they are distinct, non-empty and sorted
    (so row i means the same device on every node)."""
    names = [n.strip() for n in str(text).split(",")]
    if not text or any(not n for n in names):
        raise ValueError("a device list is comma-separated non-empty device names")
    if len(names) > MAX_DEVICES:
        raise ValueError(f"at most {MAX_DEVICES} devices in a run")
    if not all(a < b for a, b in itertools.pairwise(names)):
        raise ValueError("device names must be sorted and distinct")
    return names


def run_devices(task: str, params: Mapping[str, Any]) -> list[str]:
    """The run's device list from its params (train_request params or a run config); [] if none."""
    key = DEVICE_PARAM.get(task)
    value = params.get(key, "") if key else ""
    return parse_devices(str(value)) if value else []
