"""`fedledger` command line: a thin dispatcher. Each subcommand lives in its own module and
registers itself through `add_parser(subparsers)` / `run(args) -> int`.

Exit codes: 0 success, 1 the command failed (clear message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedledger",
        description="Peer-to-peer federated learning node with a BFT ledger of signed sensor readings.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    cli_init.add_parser(sub)
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
    except FedledgerError as exc:
        print(f"fedledger {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
