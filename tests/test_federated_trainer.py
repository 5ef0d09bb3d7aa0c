"""The long-lived trainer: a real `python -m federated.trainer` subprocess and the TF-free client."""

from __future__ import annotations

import math
import os
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import msgpack
import numpy as np
import pytest

from federated.aggregate import Personal, aggregate
from federated.data import HOLDOUT_SLICE, MAIN_SLICE, read_csv_rows
from federated.trainer import TrainerClient, TrainerError, parse_address, read_frame, write_frame
from federated.weights import decode_weights

DEVICES = ["room_510", "room_621"]


@pytest.fixture(scope="module")
def trainer() -> Iterator[tuple[str, Path]]:
    # A short directory: unix socket paths are limited to ~100 bytes and pytest's tmp_path is long.
    with tempfile.TemporaryDirectory(prefix="fltr") as d:
        sock = Path(d) / "trainer.sock"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        proc = subprocess.Popen(
            [sys.executable, "-m", "federated.trainer", "--socket", str(sock)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()  # printed once Keras is imported and the socket listens
            assert line == f"ready unix:{sock}", line
            yield f"unix:{sock}", Path(d)
        finally:
            proc.terminate()
            assert proc.wait(timeout=20) == 0
            assert not sock.exists()  # SIGTERM removes the socket file


@pytest.mark.federated
def test_ping_and_round_trip(trainer: tuple[str, Path]) -> None:
    address, _ = trainer
    with TrainerClient(address, timeout=120) as client:
        pong = client.ping()
        assert pong["ok"] and pong["keras"] and pong["rss_mb"] > 0
        w0 = client.initial_weights("humidity", num_classes=2, seed=0)
        rows_a = read_csv_rows(MAIN_SLICE, DEVICES[:1], every=12)
        rows_b = read_csv_rows(MAIN_SLICE, DEVICES[1:], every=12)
        cfg = {"epochs": 2, "batch_size": 32}
        ra = client.train("humidity", w0, rows_a, cfg, classes=DEVICES)
        rb = client.train("humidity", w0, rows_b, cfg, classes=DEVICES)
        for r in (ra, rb):
            assert r.num_examples == 240
            assert [w.shape for w in r.weights] == [w.shape for w in w0]
            assert all(math.isfinite(v) for v in r.metrics.values())
        ups = [(b"a", ra.weights, ra.num_examples), (b"b", rb.weights, rb.num_examples)]
        agg = aggregate("fedavg", ups, Personal((2, 3), w0, [b"A", b"B"], {b"a": b"A", b"b": b"B"}))
        m = client.evaluate("humidity", agg, read_csv_rows(HOLDOUT_SLICE, DEVICES, every=12), classes=DEVICES)
        assert math.isfinite(m["rmse"]) and m["num_examples"] == 240 and m["personal_share"] == 1.0
        # Same request twice on the warm, cached model: the same result (state is reset per call).
        again = client.train("humidity", w0, rows_a, cfg, classes=DEVICES)
        assert np.array_equal(again.weights[0], ra.weights[0])
        assert client.ping()["cached_models"] >= 1
    # The client side never loaded TensorFlow (unless another test in this process did).
    if "keras" not in sys.modules:
        assert "tensorflow" not in sys.modules


@pytest.mark.federated
def test_traceability_and_rows_file(trainer: tuple[str, Path]) -> None:
    address, d = trainer
    rows = read_csv_rows(MAIN_SLICE, DEVICES[:1])  # one node's device; the fingerprints need minutes
    context = read_csv_rows(MAIN_SLICE, DEVICES)
    path = d / "rows.msgpack"
    path.write_bytes(msgpack.packb([list(r) for r in rows]))
    with TrainerClient(address, timeout=120) as client:
        w0 = client.initial_weights("traceability", num_classes=2)
        res = client.train("traceability", w0, path, {}, classes=DEVICES, context_rows=context)
        assert res.num_examples == len(rows) and res.metrics["devices"] == 1 and res.metrics["hours"] > 40
        assert not np.any(res.weights[2][1:])  # the other device's fingerprint is not this node's
        m = client.evaluate("traceability", res.weights, rows, classes=DEVICES, context_rows=context)
        assert set(m) == {"accuracy", "windows", "window_hours", "num_examples"}
        # Files outside the trainer's rows directory are refused.
        with pytest.raises(TrainerError, match="must be inside"):
            client.train("traceability", w0, "/etc/hostname", classes=DEVICES)


@pytest.mark.federated
def test_bad_requests_get_errors_and_server_survives(trainer: tuple[str, Path]) -> None:
    address, _ = trainer
    rows = read_csv_rows(MAIN_SLICE, DEVICES, every=200)
    with TrainerClient(address, timeout=60) as client:
        w0 = client.initial_weights("humidity", 2)
        cases = [
            ({"op": "fly"}, "unknown op"),
            ({"op": "train", "task": "humidity", "weights": b"junk", "rows": rows}, "bad magic"),
            ({"op": "train", "task": "pressure", "weights": b"", "rows": rows}, "bad magic|unknown task"),
            ({"op": "evaluate", "task": "traceability", "weights": b"x", "rows": rows}, "bad magic"),
            ({"op": "train", "task": "humidity", "rows": rows}, "weights must be bytes"),
            (["not", "a", "map"], "must be a map"),
        ]
        for request, match in cases:
            with pytest.raises(TrainerError, match=match):
                client._call(request)  # type: ignore[arg-type]
        with pytest.raises(TrainerError, match="do not fit"):
            client.train("humidity", w0[:2], rows, classes=DEVICES)
        with pytest.raises(TrainerError, match="not in the run's device list"):
            client.train("humidity", w0, rows, classes=["a", "b"])
        with pytest.raises(TrainerError, match="not in classes"):
            client.evaluate("traceability", client.initial_weights("traceability", 2), rows, ["a", "b"])
        with pytest.raises(TrainerError, match="unknown training config"):
            client.train("humidity", w0, rows, {"epoch": 1}, classes=DEVICES)
        with pytest.raises(TrainerError, match="row"):
            client.train("humidity", w0, [[1, 2, 3]], classes=DEVICES)
        assert client.ping()["ok"]

    # Raw socket: garbage msgpack keeps the connection; an oversized frame closes it.
    family, sockaddr = parse_address(address)
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(30)
        s.connect(sockaddr)
        write_frame(s, b"\xc1")  # 0xc1 is never valid msgpack
        reply = msgpack.unpackb(read_frame(s) or b"")
        assert reply["ok"] is False and "msgpack" in reply["error"]
        write_frame(s, msgpack.packb({"op": "ping"}))
        assert msgpack.unpackb(read_frame(s) or b"")["ok"] is True
        s.sendall(struct.pack(">I", 2**31))
        reply = msgpack.unpackb(read_frame(s) or b"")
        assert "exceeds" in reply["error"]
        assert read_frame(s) is None
    with TrainerClient(address) as client:
        assert client.ping()["ok"]
        init = {"op": "init", "task": "humidity", "num_classes": 2, "seed": 1}
        assert decode_weights(client._call(init)["weights"])


def test_client_reports_unreachable_trainer(tmp_path: Path) -> None:
    with pytest.raises(TrainerError, match="unreachable"):
        TrainerClient(f"unix:{tmp_path}/none.sock", timeout=2).ping()
    with pytest.raises(ValueError, match="tcp"):
        parse_address("tcp:nohost")


def test_tcp_loopback_only() -> None:
    from federated.trainer import TrainerServer

    with pytest.raises(ValueError, match="loopback"):
        TrainerServer(host="0.0.0.0")
    server = TrainerServer(port=0).start()  # ping does not need Keras: no TF import here
    try:
        assert server.address.startswith("tcp:127.0.0.1:")
        with TrainerClient(server.address) as client:
            assert client.ping()["pid"] == os.getpid()
            with pytest.raises(TrainerError, match="unknown op"):
                client._call({"op": "nope"})
    finally:
        server.shutdown()
