"""What `fedledger launch` was asked to do, and where it reports progress: shared by the launcher and
its training display, so that neither imports the other."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

TRAIN_TIMEOUT_S = 1800


@dataclass
class LaunchOptions:
    nodes: int = 4
    dir: Path | None = None
    duration: float | None = None
    keep_running: bool = False
    csv: Path | None = None
    simulated: bool = False
    devices: int = 8
    rate: float = 200.0
    json: bool = False
    task: str = "humidity"
    rounds: int = 3  # 0 = no training
    strategy: str = "fedavg"
    train_after: float = 10.0  # seconds of streaming before the train request
    train_timeout: float = TRAIN_TIMEOUT_S
    log_format: str = "text"  # the nodes' node.log: text or json (node run --log-format)


class Display:
    """One live status line on a terminal; a line every few seconds otherwise (logs, CI)."""

    def __init__(self, quiet: bool) -> None:
        self.tty = sys.stdout.isatty() and not quiet
        self.quiet = quiet
        self._last = 0.0

    def say(self, text: str) -> None:
        if not self.quiet:
            if self.tty:
                sys.stdout.write("\r\033[K")
            print(text, flush=True)

    def progress(self, text: str) -> None:
        if self.quiet:
            return
        if self.tty:
            sys.stdout.write("\r\033[K" + text)
            sys.stdout.flush()
        elif time.monotonic() - self._last >= 5:
            print(text, flush=True)
            self._last = time.monotonic()

    def end_line(self) -> None:
        if self.tty:
            print()
