"""What the command modules share: how they print (tables, --json, times) and the argparse types of
options that several commands take, so that one rule and one message hold everywhere.

Only command modules (and scripts, which are leaves too) import this.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from typing import Any

from node.errors import ConfigError
from node.server.datadir import PORTS, check_port

# --- output ------------------------------------------------------------------------------------


def fmt_time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def emit(args: argparse.Namespace, obj: dict[str, Any], human: Sequence[str]) -> None:
    """One JSON object with --json, else the human lines."""
    if args.json:
        print(json.dumps(obj))
    else:
        print("\n".join(human))


def table(
    rows: Sequence[Sequence[Any]], header: Sequence[str] | None = None, cell: Callable[[Any], str] = str
) -> list[str]:
    """Rows as columns two spaces apart, each value shown by `cell`.

    Without `header` every column is left-aligned (the commands give their heading as the first
    row). With one, a rule goes under it and the columns that hold only numbers are right-aligned,
    as in a report.
    """
    cells = [[cell(v) for v in r] for r in rows]
    top = [list(header)] if header is not None else []
    if not top and not cells:
        return []
    widths = [max(len(r[i]) for r in top + cells) for i in range(len((top + cells)[0]))]
    right = [
        header is not None and all(isinstance(r[i], int | float) or r[i] == "" for r in rows)
        for i in range(len(widths))
    ]

    def line(r: Sequence[str], align: Sequence[bool]) -> str:
        padded = (c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, align, strict=True))
        return "  ".join(padded).rstrip()

    out = []
    if top:
        out += [line(top[0], [False] * len(widths)), "-" * (sum(widths) + 2 * (len(widths) - 1))]
    out += [line(r, right) for r in cells]
    return out


# --- argument types ----------------------------------------------------------------------------


def port(text: str) -> int:
    """Every command's --port: the one port rule of node.server.datadir."""
    try:
        return check_port(int(text))
    except (ValueError, ConfigError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number in {PORTS.start}..{PORTS.stop - 1}"
        ) from None


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None


def positive_seconds(text: str) -> float:
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, not {text}")
    return value


def non_negative(text: str) -> float:
    value = _number(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return value
