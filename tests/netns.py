"""Separate hosts on one machine for end-to-end tests: one Linux network namespace per host, each
with its own address on a bridge (iproute2).

Layout: a bridge in the root namespace holds .254 of a private /24 (so the test process can reach
every host, as an operator's workstation would); host i lives in namespace NS_i with eth0 = .i, the
far end of a veth pair whose near end is on the bridge. Each namespace's `lo` is up, because Linux
delivers a host's traffic to its own address through it (the CLI on a host talks to its node at the
host's address); what listens where is checked with `listeners` (ss). Cutting a host's link sets its
veth down; restoring sets it up.

Names carry a random tag (and interface names fit the kernel's 15 characters), and the /24 is one no
interface on this machine uses, so parallel runs do not clash. `close()` removes everything it made
and is safe to call twice or after a partial setup.
"""

from __future__ import annotations

import ipaddress
import os
import random
import shutil
import subprocess
from dataclasses import dataclass


class NetnsUnavailable(Exception):
    """Namespaces cannot be made here (no iproute2, not root, a kernel or container without them)."""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)} failed: {out.stderr.strip()}")
    return out


def unavailable_reason() -> str | None:
    """Why this machine cannot run the namespace tests, or None when it can (a namespace is made
    and removed to find out)."""
    if shutil.which("ip") is None:
        return "iproute2's `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (CAP_NET_ADMIN and CAP_SYS_ADMIN)"
    probe = f"flprobe-{os.getpid()}-{random.randrange(1 << 20):x}"
    out = ip("netns", "add", probe, check=False)
    if out.returncode != 0:
        return f"`ip netns add` is not allowed here: {out.stderr.strip()}"
    ip("netns", "del", probe, check=False)
    out = ip("link", "add", f"flp{random.randrange(1 << 24):06x}", "type", "bridge", check=False)
    if out.returncode != 0:
        return f"cannot create a bridge: {out.stderr.strip()}"
    name = out.args[3]
    ip("link", "del", name, check=False)
    return None


def _free_subnet() -> ipaddress.IPv4Network:
    used = ip("-4", "-o", "addr").stdout
    nets = [ipaddress.ip_interface(w).network for line in used.splitlines()
            for i, w in enumerate(line.split()) if i > 0 and line.split()[i - 1] == "inet"]
    for _ in range(100):
        net = ipaddress.ip_network(f"10.{random.randrange(64, 250)}.{random.randrange(1, 250)}.0/24")
        if not any(net.overlaps(n) for n in nets):
            return net
    raise NetnsUnavailable("no free 10.x.y.0/24 subnet for the test bridge")


@dataclass(frozen=True)
class Host:
    index: int
    ns: str
    veth: str  # the root-namespace end (the one set down to cut the link)
    address: str

    def exec(self) -> list[str]:
        """The command prefix that runs a program on this host."""
        return ["ip", "netns", "exec", self.ns]


class Hosts:
    def __init__(self, count: int) -> None:
        self.tag = f"{random.randrange(1 << 24):06x}"
        self.net = _free_subnet()
        self.bridge = f"flb{self.tag}"
        self.gateway = str(self.net.network_address + 254)
        self.hosts: list[Host] = []
        self._made_bridge = False
        try:
            ip("link", "add", self.bridge, "type", "bridge")
            self._made_bridge = True
            ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            ip("link", "set", self.bridge, "up")
            for i in range(1, count + 1):
                self.add_host(i)
        except BaseException:
            self.close()
            raise

    def add_host(self, i: int) -> Host:
        h = Host(i, f"fl-{self.tag}-{i}", f"flv{self.tag}{i}", str(self.net.network_address + i))
        ip("netns", "add", h.ns)
        self.hosts.append(h)  # listed at once: close() removes it even if the rest fails
        peer = f"flq{self.tag}{i}"
        ip("link", "add", h.veth, "type", "veth", "peer", "name", peer)
        ip("link", "set", peer, "netns", h.ns)
        ip("-n", h.ns, "link", "set", peer, "name", "eth0")
        ip("-n", h.ns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        ip("-n", h.ns, "link", "set", "eth0", "up")
        ip("-n", h.ns, "link", "set", "lo", "up")
        ip("link", "set", h.veth, "master", self.bridge)
        ip("link", "set", h.veth, "up")
        return h

    def cut(self, h: Host) -> None:
        ip("link", "set", h.veth, "down")

    def restore(self, h: Host) -> None:
        ip("link", "set", h.veth, "up")

    def listeners(self, h: Host) -> list[str]:
        """The TCP listen addresses in `h`'s namespace (ss -ltnH)."""
        out = subprocess.run([*h.exec(), "ss", "-ltnH"], capture_output=True, text=True, timeout=30)
        return [line.split()[3] for line in out.stdout.splitlines() if len(line.split()) > 3]

    def close(self) -> None:
        for h in self.hosts:
            ip("link", "del", h.veth, check=False)  # removes both ends of the pair
            ip("netns", "del", h.ns, check=False)
        self.hosts = []
        if self._made_bridge:
            ip("link", "del", self.bridge, check=False)
            self._made_bridge = False
