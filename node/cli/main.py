"""`fedledger` command line: a thin dispatcher. Each subcommand lives in its own module and
registers itself through `add_parser(subparsers)` / `run(args) -> int`.

Exit codes: 0 success, 1 the command failed, 2 usage error (an unknown command, a missing argument,
a value out of range for its option). Either way stderr gets one line, `fedledger CMD: error: ...`,
never a traceback: usage errors come from argparse, failures are FedledgerErrors (node/errors.py)
or OSErrors of the environment (a full disk, a permission). Anything else is a bug and shows its
traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from node.cli import genesis as cli_genesis
from node.cli import init as cli_init
from node.cli import join as cli_join
from node.cli import launch as cli_launch
from node.cli import ledger as cli_ledger
from node.cli import member as cli_member
from node.cli import model as cli_model
from node.cli import node_run as cli_node
from node.cli import train as cli_train
from node.errors import FedledgerError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class Parser(argparse.ArgumentParser):
    """argparse, with a usage error reported on one line (the usage itself is one --help away).
    Subcommand parsers are made of the same class."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="fedledger",
        description="Peer-to-peer federated learning node with a BFT ledger of signed sensor readings.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    cli_init.add_parser(sub)
    cli_genesis.add_parser(sub)
    cli_node.add_parser(sub)
    cli_join.add_parser(sub)
    cli_member.add_parser(sub)
    cli_ledger.add_parser(sub)
    cli_launch.add_parser(sub)
    cli_train.add_parser(sub)
    cli_model.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code or 0) if isinstance(exc.code, int) else EXIT_USAGE
    try:
        return int(args.func(args))
    except (FedledgerError, OSError) as exc:
        print(f"fedledger {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
