"""TCP ports on this machine: free ones to hand out, and whether one is taken or listening.

A port the OS reports free can still be taken by another process before its new owner binds it;
callers that start a listener on it check again (ManagedProcess.start refuses a taken port).
"""

from __future__ import annotations

import contextlib
import socket

LOCALHOST = "127.0.0.1"


def free_ports(n: int, host: str = LOCALHOST) -> list[int]:
    """`n` distinct ports the OS says are free now (held open together, so they are distinct)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) for _ in range(n)]
        for s in socks:
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free right now."""
    return free_ports(1, host)[0]


def port_free(host: str, port: int) -> bool:
    """True when a server could listen on `port` on `host` right now. With SO_REUSEADDR, as servers
    bind (uvicorn, and so Flower's SuperLink): connections of a listener that just died, left in
    TIME_WAIT, do not count, another listener does."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts TCP connections on `host`:`port`."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
