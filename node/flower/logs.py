"""Bounded logs for the Flower processes: a child's output is pumped into a rotating file.

A child writes to a file descriptor, so a file it was given would grow without bound and could not
be rotated under it. Instead each child gets the write end of a pipe; a thread of ours copies what
arrives into ``LOG`` and rotates it the way logging.handlers.RotatingFileHandler does (``LOG`` ->
``LOG.1`` -> ... -> ``LOG.N``, the oldest dropped), so a log takes at most (N + 1) x the size bound.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path

LOG_MAX_BYTES = 10 * 1024 * 1024
LOG_BACKUPS = 3
READ_CHUNK = 64 * 1024
DRAIN_S = 5.0  # how long to wait for the last output once a child has exited


def backup_path(path: Path, i: int) -> Path:
    return path.with_name(f"{path.name}.{i}")


class RotatingLog:
    """Append-only bytes to `path`; no file ever holds more than `max_bytes`."""

    def __init__(self, path: Path, max_bytes: int = LOG_MAX_BYTES, backups: int = LOG_BACKUPS) -> None:
        if max_bytes < 1 or backups < 0:
            raise ValueError("max_bytes must be positive and backups non-negative")
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "ab")  # noqa: SIM115 (closed by close())
        self._size = self._file.tell()
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        """Rotate first when `data` would overflow a non-empty file; only data larger than the
        bound itself is split across files."""
        with self._lock:
            while data:
                if self._size and self._size + len(data) > self.max_bytes:
                    self._rotate()
                piece, data = data[: self.max_bytes - self._size], data[self.max_bytes - self._size :]
                self._file.write(piece)
                self._file.flush()  # readers (log_tail) see output as it comes
                self._size += len(piece)

    def _rotate(self) -> None:
        self._file.close()
        if self.backups == 0:
            self.path.unlink(missing_ok=True)
        else:
            backup_path(self.path, self.backups).unlink(missing_ok=True)
            for i in range(self.backups - 1, 0, -1):
                if backup_path(self.path, i).exists():
                    os.replace(backup_path(self.path, i), backup_path(self.path, i + 1))
            os.replace(self.path, backup_path(self.path, 1))
        self._file = open(self.path, "ab")  # noqa: SIM115
        self._size = 0

    def close(self) -> None:
        with self._lock:
            self._file.close()


class LogPump:
    """A pipe for one child's stdout and stderr, copied into a RotatingLog by a daemon thread.

    Pass `fd` to the child, then call started() at once: the parent's copy of the write end must
    be closed, or the pump never sees the end of the output. The thread ends when every process
    holding the write end (the child and any descendant that inherited it) has exited.
    """

    def __init__(self, log: RotatingLog) -> None:
        self.log = log
        self._read, self.fd = os.pipe()
        self._thread = threading.Thread(target=self._copy, name=f"log-pump {log.path.name}", daemon=True)

    def started(self) -> LogPump:
        os.close(self.fd)
        self._thread.start()
        return self

    def abandon(self) -> None:
        """The child could not be started: close both ends."""
        for fd in (self.fd, self._read):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.log.close()

    def _copy(self) -> None:
        try:
            while chunk := os.read(self._read, READ_CHUNK):
                self.log.write(chunk)
        except OSError:  # the log's disk is gone: the child's writes fail instead of blocking
            pass
        finally:
            os.close(self._read)
            self.log.close()

    def join(self, timeout: float = DRAIN_S) -> bool:
        """Wait for the output to end (the child has exited); True when it has."""
        if self._thread.ident is not None:
            self._thread.join(timeout)
        return not self._thread.is_alive()


def read_log(path: Path) -> str:
    """All that is kept of a log, oldest first (its backups, then the file)."""
    parts = []
    i = 1
    while backup_path(path, i).exists():
        i += 1
    for p in [*(backup_path(path, j) for j in range(i - 1, 0, -1)), path]:
        with contextlib.suppress(OSError):
            parts.append(p.read_bytes())
    return b"".join(parts).decode(errors="replace")


def log_tail(path: Path, lines: int = 25) -> str:
    """The last `lines` lines of a log (reaching into its last backup just after a rotation)."""
    try:
        text = path.read_bytes()
    except OSError:
        return "(no log)"
    if text.count(b"\n") < lines:
        with contextlib.suppress(OSError):
            text = backup_path(path, 1).read_bytes() + text
    return "\n".join(text.decode(errors="replace").splitlines()[-lines:]) or "(empty log)"
