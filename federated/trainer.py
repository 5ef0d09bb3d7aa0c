"""A long-lived local trainer process, and a TensorFlow-free client for it.

Flower starts a fresh ClientApp process for every message, and importing Keras + building a model
costs 4.5-6.7 s and ~550 MB each time (FLOWER.md). The node instead keeps one trainer process with
Keras loaded and compiled models cached; ClientApps (and the node) talk to it over a local socket.

Wire protocol (both directions): frames of a 4-byte big-endian length followed by one msgpack map.
Several requests may be sent on one connection, one reply per request, in order.

Requests::

    {"op": "ping"}
    {"op": "init", "task": str, "num_classes": int | None, "seed": int}   -> initial weights
    {"op": "train", "task": str, "weights": bytes (encode_weights), "rows": [[device, seq,
     timestamp_ms, temperature_c, humidity_pct], ...] | "rows_file": path, "classes": [...] | None,
     "config": {...}}
    {"op": "evaluate", "task": ..., "weights": ..., "rows" | "rows_file": ..., "classes": ...}

``classes`` is the run's device list (humidity: the rows of the devices' own lines; traceability:
the labels); traceability requests may add ``context_rows``, the readings of every listed device
the fingerprints are relative to (federated/fingerprint.py).

``rows_file`` names a file holding the msgpack-encoded rows list, which must lie inside the
server's ``rows_dir`` (so the socket cannot be used to read arbitrary files). Replies are
``{"ok": True, ...}`` (train: weights, num_examples, metrics; evaluate: metrics; ping: pid,
rss_mb, cached_models, keras) or ``{"ok": False, "error": str}``. A bad request gets an error reply;
it never stops the server.

Importing this module does not import TensorFlow/Keras: only the server, when it handles a
request (or is started with ``warm``), imports them.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import socketserver
import struct
import sys
import threading
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import msgpack
import numpy as np

from federated import tasks
from federated.tasks import TrainResult
from federated.weights import decode_weights, encode_weights
from node.proc import rss_bytes, watch_parent

MAX_FRAME = 256 * 1024 * 1024
_LEN = struct.Struct(">I")
_OPS = ("ping", "init", "train", "evaluate")
WARM_DEVICES = 8  # the launch's device count: a warm model of that size is cached for its first run


class TrainerError(RuntimeError):
    """The trainer answered with an error, or could not be reached."""


class ProtocolError(ValueError):
    """A frame or message that does not follow the protocol."""


# --- framing ---------------------------------------------------------------------------------------


def _recv_exact(sock: socket.socket, n: int) -> bytes | None:
    chunks = []
    remaining = n
    while remaining:
        chunk = sock.recv(min(remaining, 1 << 20))
        if not chunk:
            if remaining == n:
                return None  # clean EOF between frames
            raise ProtocolError("connection closed in the middle of a frame")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def read_frame(sock: socket.socket, max_frame: int = MAX_FRAME) -> bytes | None:
    """One frame's payload, or None at a clean end of stream."""
    head = _recv_exact(sock, 4)
    if head is None:
        return None
    (length,) = _LEN.unpack(head)
    if length > max_frame:
        raise ProtocolError(f"frame of {length} bytes exceeds the limit of {max_frame}")
    payload = _recv_exact(sock, length) if length else b""
    if payload is None:
        raise ProtocolError("connection closed in the middle of a frame")
    return payload


def write_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LEN.pack(len(payload)) + payload)


def _pack(obj: Mapping[str, Any]) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def _unpack(payload: bytes) -> Any:
    return msgpack.unpackb(payload, raw=False, strict_map_key=True)


# --- addresses -------------------------------------------------------------------------------------


def parse_address(address: str | Path | tuple[str, int]) -> tuple[int, Any]:
    """``unix:PATH``, a bare path or Path, ``tcp:127.0.0.1:PORT`` or a (host, port) tuple ->
    (socket family, sockaddr)."""
    if isinstance(address, tuple):
        return socket.AF_INET, (address[0], int(address[1]))
    text = str(address)
    if text.startswith("tcp:"):
        host, _, port = text[4:].rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"bad tcp address {text!r}; expected tcp:HOST:PORT")
        return socket.AF_INET, (host, int(port))
    if text.startswith("unix:"):
        text = text[5:]
    if not text:
        raise ValueError("empty unix socket path")
    return socket.AF_UNIX, text


# --- server ----------------------------------------------------------------------------------------


def _rss_mb() -> float:
    return (rss_bytes() or 0) / (1024 * 1024)  # this process: psutil always has it


def _as_rows(value: Any) -> list[Sequence[Any]]:
    if not isinstance(value, list):
        raise ValueError("rows must be a list of [device, seq, timestamp_ms, temperature, humidity]")
    for r in value:
        if not isinstance(r, list | tuple) or len(r) != 5:
            raise ValueError(f"bad row {r!r}: expected [device, seq, timestamp_ms, temperature, humidity]")
    return value


class _Handler(socketserver.BaseRequestHandler):
    server: _SocketServer

    def handle(self) -> None:
        sock: socket.socket = self.request
        owner = self.server.owner
        while True:
            try:
                payload = read_frame(sock, owner.max_frame)
            except (ProtocolError, OSError) as exc:
                # Framing is lost (or the peer went away): answer if possible and drop the connection.
                with contextlib.suppress(OSError):
                    write_frame(sock, _pack({"ok": False, "error": str(exc)}))
                return
            if payload is None:
                return
            reply = owner.handle_payload(payload)
            try:
                write_frame(sock, _pack(reply))
            except OSError:
                return


class _SocketServer(socketserver.ThreadingMixIn, socketserver.BaseServer):
    daemon_threads = True
    owner: TrainerServer


class _UnixServer(_SocketServer, socketserver.UnixStreamServer):
    pass


class _TCPServer(_SocketServer, socketserver.TCPServer):
    allow_reuse_address = True


class TrainerServer:
    """Serve train/evaluate requests on a unix socket (``socket_path``) or on 127.0.0.1:``port``.

    Requests are handled on threads but training is serialised (tasks' model cache lock): the
    machine has few cores and TensorFlow already uses them.
    """

    def __init__(
        self,
        socket_path: str | Path | None = None,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        rows_dir: str | Path | None = None,
        max_frame: int = MAX_FRAME,
    ) -> None:
        self.max_frame = max_frame
        self.socket_path = Path(socket_path) if socket_path is not None else None
        self._server: _SocketServer
        if self.socket_path is not None:
            if len(os.fsencode(self.socket_path)) > 100:
                raise ValueError(f"unix socket path too long (max ~100 bytes): {self.socket_path}")
            self.socket_path.parent.mkdir(parents=True, exist_ok=True)
            self._remove_stale_socket()
            self._server = _UnixServer(str(self.socket_path), _Handler, bind_and_activate=False)
            old = os.umask(0o177)  # owner-only socket: whoever can connect can make us train
            try:
                self._server.server_bind()
            finally:
                os.umask(old)
            self._server.server_activate()
            self.address = f"unix:{self.socket_path}"
        else:
            if host not in ("127.0.0.1", "localhost", "::1"):
                raise ValueError("the trainer only listens on loopback")
            self._server = _TCPServer((host, port), _Handler)
            self.address = f"tcp:{host}:{self._server.server_address[1]}"
        self._server.owner = self
        default_dir = self.socket_path.parent if self.socket_path is not None else None
        self.rows_dir = Path(rows_dir).resolve() if rows_dir is not None else default_dir
        self._thread: threading.Thread | None = None

    def _remove_stale_socket(self) -> None:
        assert self.socket_path is not None
        if not self.socket_path.exists():
            return
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.socket_path))
        except OSError:
            self.socket_path.unlink()  # nobody listens: a leftover from a crashed trainer
        else:
            raise OSError(f"another trainer is already listening on {self.socket_path}")
        finally:
            probe.close()

    # -- request handling --

    def handle_payload(self, payload: bytes) -> dict[str, Any]:
        try:
            request = _unpack(payload)
        except Exception as exc:
            return {"ok": False, "error": f"malformed msgpack: {exc}"}
        try:
            return self.handle_request(request)
        except Exception as exc:  # a bad request must never take the trainer down
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}

    def _load_rows(self, request: Mapping[str, Any]) -> list[Sequence[Any]]:
        if "rows" in request:
            return _as_rows(request["rows"])
        ref = request.get("rows_file")
        if not isinstance(ref, str):
            raise ValueError("request needs rows or rows_file")
        if self.rows_dir is None:
            raise ValueError("rows_file is not enabled on this trainer (no rows_dir)")
        path = Path(ref).resolve()
        if not path.is_relative_to(self.rows_dir):
            raise ValueError(f"rows_file must be inside {self.rows_dir}")
        if path.stat().st_size > self.max_frame:
            raise ValueError("rows_file too large")
        return _as_rows(_unpack(path.read_bytes()))

    def handle_request(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict):
            raise ValueError("request must be a map")
        op = request.get("op")
        if op not in _OPS:
            raise ValueError(f"unknown op {op!r}; expected one of {', '.join(_OPS)}")
        if op == "ping":
            return {
                "ok": True,
                "pid": os.getpid(),
                "rss_mb": _rss_mb(),
                "cached_models": len(tasks._cache),
                "keras": "keras" in sys.modules,
            }
        task = request.get("task")
        if not isinstance(task, str):
            raise ValueError("task must be a string")
        if op == "init":
            nc, seed = request.get("num_classes"), request.get("seed", 0)
            if (nc is not None and not isinstance(nc, int)) or not isinstance(seed, int):
                raise ValueError("num_classes and seed must be integers")
            return {"ok": True, "weights": encode_weights(tasks.initial_weights(task, nc, seed))}
        blob = request.get("weights")
        if not isinstance(blob, bytes):
            raise ValueError("weights must be bytes from encode_weights")
        weights = decode_weights(blob)
        classes = request.get("classes")
        if classes is not None and not isinstance(classes, list):
            raise ValueError("classes must be a list or absent")
        rows = self._load_rows(request)
        context = request.get("context_rows")
        context = None if context is None else _as_rows(context)
        if op == "train":
            config = request.get("config") or {}
            if not isinstance(config, dict):
                raise ValueError("config must be a map")
            result = tasks.train(task, weights, rows, config, classes=classes, context_rows=context)
            return {
                "ok": True,
                "weights": encode_weights(result.weights),
                "num_examples": result.num_examples,
                "metrics": result.metrics,
            }
        metrics = tasks.evaluate(task, weights, rows, classes=classes, context_rows=context)
        return {"ok": True, "metrics": metrics}

    # -- lifecycle --

    def warm(self, task_names: Sequence[str] = ()) -> None:
        """Import Keras now (and build/compile the named tasks' models) instead of on first use."""
        tasks._keras()
        for name in task_names:
            if name == "humidity":  # traceability is numpy (federated/fingerprint.py): nothing to build
                tasks._compiled(name, WARM_DEVICES, tasks.TrainConfig())

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def start(self) -> TrainerServer:
        """Serve on a background thread (for tests and embedding)."""
        self._thread = threading.Thread(target=self.serve_forever, name="trainer-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
        if self.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()

    def __enter__(self) -> TrainerServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()


# --- client ----------------------------------------------------------------------------------------


class TrainerClient:
    """Client of a TrainerServer. Imports neither TensorFlow nor Keras.

    One connection, opened lazily and reused; calls are serialised. ``timeout`` bounds each call
    (training a round can take a while).
    """

    def __init__(self, address: str | Path | tuple[str, int], timeout: float = 600.0) -> None:
        self.family, self.sockaddr = parse_address(address)
        self.timeout = timeout
        self._sock: socket.socket | None = None
        self._lock = threading.Lock()

    def _call(self, request: Mapping[str, Any]) -> dict[str, Any]:
        payload = _pack(request)
        with self._lock:
            try:
                if self._sock is None:
                    sock = socket.socket(self.family, socket.SOCK_STREAM)
                    sock.settimeout(self.timeout)
                    sock.connect(self.sockaddr)
                    self._sock = sock
                write_frame(self._sock, payload)
                raw = read_frame(self._sock)
            except (OSError, ProtocolError) as exc:
                self._close_locked()
                raise TrainerError(f"trainer at {self.sockaddr} unreachable or failed: {exc}") from exc
            if raw is None:
                self._close_locked()
                raise TrainerError("trainer closed the connection without a reply")
        reply = _unpack(raw)
        if not isinstance(reply, dict) or not reply.get("ok"):
            error = reply.get("error") if isinstance(reply, dict) else reply
            raise TrainerError(f"trainer error: {error}")
        return reply

    @staticmethod
    def _rows_field(rows: Sequence[Sequence[Any]] | str | Path) -> dict[str, Any]:
        if isinstance(rows, str | Path):
            return {"rows_file": str(Path(rows).resolve())}
        return {"rows": [list(r) for r in rows]}

    @staticmethod
    def _context_field(rows: Sequence[Sequence[Any]] | None) -> dict[str, Any]:
        return {} if rows is None else {"context_rows": [list(r) for r in rows]}

    @staticmethod
    def _weights_field(weights: Sequence[np.ndarray] | bytes) -> bytes:
        return weights if isinstance(weights, bytes) else encode_weights(weights)

    def ping(self) -> dict[str, Any]:
        return self._call({"op": "ping"})

    def initial_weights(self, task: str, num_classes: int | None = None, seed: int = 0) -> list[np.ndarray]:
        """The round-0 model of a run, built by the trainer (so the caller needs no Keras)."""
        reply = self._call({"op": "init", "task": task, "num_classes": num_classes, "seed": seed})
        return decode_weights(reply["weights"])

    def train(
        self,
        task: str,
        weights: Sequence[np.ndarray] | bytes,
        rows: Sequence[Sequence[Any]] | str | Path,
        config: Mapping[str, Any] | None = None,
        classes: Sequence[Hashable] | None = None,
        context_rows: Sequence[Sequence[Any]] | None = None,
    ) -> TrainResult:
        """Train on the server; `rows` is a list of rows or a path to a msgpack rows file."""
        reply = self._call(
            {
                "op": "train",
                "task": task,
                "weights": self._weights_field(weights),
                **self._rows_field(rows),
                "classes": list(classes) if classes is not None else None,
                "config": dict(config or {}),
                **self._context_field(context_rows),
            }
        )
        return TrainResult(
            weights=decode_weights(reply["weights"]),
            num_examples=int(reply["num_examples"]),
            metrics={k: float(v) for k, v in reply["metrics"].items()},
        )

    def evaluate(
        self,
        task: str,
        weights: Sequence[np.ndarray] | bytes,
        rows: Sequence[Sequence[Any]] | str | Path,
        classes: Sequence[Hashable] | None = None,
        context_rows: Sequence[Sequence[Any]] | None = None,
    ) -> dict[str, float]:
        reply = self._call(
            {
                "op": "evaluate",
                "task": task,
                "weights": self._weights_field(weights),
                **self._rows_field(rows),
                "classes": list(classes) if classes is not None else None,
                **self._context_field(context_rows),
            }
        )
        return {k: float(v) for k, v in reply["metrics"].items()}

    def _close_locked(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
            self._sock = None

    def close(self) -> None:
        with self._lock:
            self._close_locked()

    def __enter__(self) -> TrainerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def wait_for_trainer(address: str | Path | tuple[str, int], timeout: float = 60.0) -> dict[str, Any]:
    """Ping until the trainer answers (it may still be importing Keras); returns the ping reply."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with TrainerClient(address, timeout=5.0) as client:
                return client.ping()
        except TrainerError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m federated.trainer", description=__doc__.split("\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--socket", type=Path, help="unix socket path to listen on")
    where.add_argument("--port", type=int, help="TCP port on 127.0.0.1 (0 = any free port)")
    parser.add_argument("--rows-dir", type=Path, help="directory rows_file references must be in")
    parser.add_argument(
        "--warm", action="append", default=[], choices=tasks.TASKS, help="build this task's model at start"
    )
    args = parser.parse_args(argv)
    server = TrainerServer(args.socket, port=args.port or 0, rows_dir=args.rows_dir)
    # SIGTERM from the node: stop serving and remove the socket file.
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server._server.shutdown).start())
    watch_parent()  # a node killed with SIGKILL cannot send that SIGTERM: it is sent when it is gone
    server.warm(args.warm)
    # The parent waits for this line (or pings) before sending work.
    print(f"ready {server.address}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server._server.server_close()
        if server.socket_path is not None:
            with contextlib.suppress(FileNotFoundError):
                server.socket_path.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
