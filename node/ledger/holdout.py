"""The held-out rule: which committed readings no node may train on, so every model can be scored honestly.

One pure function of a reading's timestamp, the same on every node and in every round:

* Time is cut into windows of WINDOW_MS (1 hour), aligned to the Unix epoch. Windows are grouped
  in blocks of BLOCK (5) consecutive windows, and exactly one window of each block is held out:
  the one at index sha256(b"fedledger/holdout/1/" + block) mod BLOCK. So 20 % of every 5 hours is
  held out, at a position nobody picks, and over days it falls on every hour of the day.
* The window is the same for every device: no node trains on any reading taken while another
  node's devices are being held out, so a held-out score measures how the model does at times it
  never saw, not how well it interpolates a neighbouring room at the same minute.
* Readings within GUARD_MS (10 minutes) of a held-out window, on the outside, belong to neither
  side. The data are one-minute means, and humidity a few minutes apart is nearly the same
  value: without the guard the first and last minutes of every held-out hour would be almost
  copies of training rows.

Why not "the newest 20 % per device" (what training validated on before): that window moves every
round as readings stream in, so rounds are not scored on the same kind of data, and the
readings held out in round r are trained on in round r+1. Here a reading held out once is held
out forever, so "no node trained on it" holds for every round at once.

On the bundled launch slice (48 h) this holds out 9-10 hours per device; the launch's first round
(about 10 h of streamed data) already has about 2 held-out hours per device.
"""

from __future__ import annotations

import hashlib
from enum import Enum
from functools import lru_cache

WINDOW_MS = 3_600_000
BLOCK = 5
GUARD_MS = 10 * 60_000
RULE = "hourly-1-in-5-v1"  # named in docs and shown by `model show`


class Split(str, Enum):
    TRAIN = "train"
    HOLDOUT = "holdout"
    GUARD = "guard"  # next to a held-out window: in neither set


@lru_cache(maxsize=4096)
def _held_index(block: int) -> int:
    h = hashlib.sha256(b"fedledger/holdout/1/" + block.to_bytes(8, "big", signed=True)).digest()
    return int.from_bytes(h[:8], "big") % BLOCK


def window_held_out(window: int) -> bool:
    return _held_index(window // BLOCK) == window % BLOCK


def split_of(timestamp_ms: int) -> Split:
    """Which set the reading taken at `timestamp_ms` belongs to."""
    window, offset = divmod(timestamp_ms, WINDOW_MS)
    if window_held_out(window):
        return Split.HOLDOUT
    if (offset < GUARD_MS and window_held_out(window - 1)) or (
        offset >= WINDOW_MS - GUARD_MS and window_held_out(window + 1)
    ):
        return Split.GUARD
    return Split.TRAIN
