"""node/net/ports.py: free ports are free, distinct and bindable; taken ones are reported taken."""

from __future__ import annotations

import socket

from node.net.ports import LOCALHOST, free_port, free_ports, port_free, port_open


def test_a_free_port_can_be_bound_right_away() -> None:
    port = free_port()
    with socket.socket() as s:
        s.bind((LOCALHOST, port))  # raises if the port was not free
        assert s.getsockname()[1] == port


def test_free_ports_are_distinct_and_all_bindable_together() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    socks = [socket.socket() for _ in ports]
    try:
        for s, port in zip(socks, ports, strict=True):
            s.bind((LOCALHOST, port))
    finally:
        for s in socks:
            s.close()


def test_a_port_in_use_is_not_free_and_is_open_while_listened_on() -> None:
    with socket.socket() as s:
        s.bind((LOCALHOST, 0))
        port = s.getsockname()[1]
        assert not port_free(LOCALHOST, port)
        assert not port_open(LOCALHOST, port)  # bound, not listening
        s.listen()
        assert port_open(LOCALHOST, port)
    assert port_free(LOCALHOST, port)
    assert not port_open(LOCALHOST, port)
