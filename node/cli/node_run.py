"""`fedledger node run DIR`: run a node until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging
import logging.handlers
import signal
import sys
from pathlib import Path
from typing import Any

from node.cli.output import port
from node.net.sync import SYNC_MODES
from node.server.datadir import LOG_FILE, PID_FILE, read_passphrase
from node.server.logs import LOG_FORMATS, formatter

LOG_MAX_BYTES = 10 * 1024 * 1024  # node.log rotates at this size ...
LOG_BACKUPS = 3  # ... keeping node.log.1 .. node.log.3 (40 MiB at most)


def add_parser(sub: Any) -> None:
    p = sub.add_parser("node", help="run a node")
    nsub = p.add_subparsers(dest="node_command", metavar="SUBCOMMAND")
    nsub.required = True
    r = nsub.add_parser("run", help="run the node in DIR until Ctrl-C / SIGTERM")
    r.add_argument("dir", type=Path, metavar="DIR", help="node data directory (made by init, launch or join)")
    r.add_argument("--host", help="listen address (default: from config.json)")
    r.add_argument("--port", type=port, help="listen port (default: from config.json)")
    r.add_argument("--bootstrap", action="append", metavar="URL", help="peer URL to dial (repeatable)")
    r.add_argument("--passphrase-file", help="file holding the key passphrase, if the key is encrypted")
    r.add_argument("--sync", choices=SYNC_MODES, default=None,
                   help="catch-up verification: certificates (default; from config.json) or full")
    r.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    r.add_argument("--log-format", default="text", choices=LOG_FORMATS,
                   help="text (default) or json: one JSON object per line, in node.log and on stderr")
    r.add_argument("--quiet", action="store_true",
                   help="only warnings and errors on stderr; the full log is in DIR/node.log (rotated)")
    r.set_defaults(func=run)


def setup_logging(data_dir: Path, level: str, console: bool = True, max_bytes: int = LOG_MAX_BYTES,
                  backups: int = LOG_BACKUPS, log_format: str = "text") -> None:
    """Log to DIR/node.log (rotated at `max_bytes`, `backups` old files kept), and to stderr unless
    `console` is False (join prints its own progress, and a launched node's stderr goes to a file
    that does not rotate: both keep the node's log in node.log; warnings still reach stderr).
    `log_format` json: one JSON object per line (node/server/logs.py)."""
    fmt = formatter(log_format)
    root = logging.getLogger()
    root.setLevel(level.upper())
    stderr = logging.StreamHandler(sys.stderr)
    if not console:
        stderr.setLevel(logging.WARNING)
    file = logging.handlers.RotatingFileHandler(data_dir / LOG_FILE, maxBytes=max_bytes, backupCount=backups,
                                                encoding="utf-8")
    for handler in (stderr, file):
        handler.setFormatter(fmt)
        root.addHandler(handler)
    logging.getLogger("websockets").setLevel(logging.WARNING)


def run(args: argparse.Namespace) -> int:
    from node.server.runtime import Node  # imported here so `fedledger --help` stays fast

    passphrase = read_passphrase(args.passphrase_file) if args.passphrase_file else None
    node = Node(args.dir, passphrase=passphrase, host=args.host, port=args.port, bootstrap=args.bootstrap,
                sync_mode=args.sync)
    setup_logging(args.dir, args.log_level, console=not args.quiet, log_format=args.log_format)
    pid_file = args.dir / PID_FILE

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, node.stop)
        pid_file.write_text(f"{__import__('os').getpid()}\n")
        await node.run()

    try:
        asyncio.run(main())
    finally:
        pid_file.unlink(missing_ok=True)
    return 0
