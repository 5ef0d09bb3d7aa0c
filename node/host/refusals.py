"""Readings this node refused at admission, counted per device and reason (the explorer's device
page). Refusals never reach the ledger, so this is one node's view, kept in memory.

Only devices registered on the ledger are tracked: anyone can sign a reading with a fresh key, so
counting unregistered ones by key would let a flood of them grow this without bound (they are
still counted per reason in the node's counters). Registered devices are capped too, the least
recently refused forgotten first.
"""

from __future__ import annotations

from collections import Counter, OrderedDict

MAX_DEVICES = 10_000


class DeviceRefusals:
    def __init__(self, max_devices: int = MAX_DEVICES) -> None:
        self.max_devices = max_devices
        self._by_device: OrderedDict[bytes, Counter[str]] = OrderedDict()

    def add(self, device: bytes, reason: str) -> None:
        counts = self._by_device.get(device)
        if counts is None:
            counts = self._by_device[device] = Counter()
            while len(self._by_device) > self.max_devices:
                self._by_device.popitem(last=False)
        self._by_device.move_to_end(device)
        counts[reason] += 1

    def of(self, device: bytes) -> dict[str, int]:
        return dict(self._by_device.get(device, {}))

    def __len__(self) -> int:
        return len(self._by_device)
