"""The namespace helper says why it cannot run, instead of failing, where namespaces are not allowed."""

from __future__ import annotations

import pytest

from tests import netns


def test_no_iproute2_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.shutil, "which", lambda name: None)
    assert netns.unavailable_reason() == "iproute2's `ip` is not installed"


def test_not_root_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.shutil, "which", lambda name: "/sbin/ip")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 1000)
    assert "need root" in (netns.unavailable_reason() or "")


def test_a_refused_netns_add_is_a_reason_to_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(netns.shutil, "which", lambda name: "/sbin/ip")
    monkeypatch.setattr(netns.os, "geteuid", lambda: 0)

    def refused(*args: str, check: bool = True) -> netns.subprocess.CompletedProcess[str]:
        why = "mount --make-shared failed: Operation not permitted"
        return netns.subprocess.CompletedProcess(["ip", *args], 1, "", why)

    monkeypatch.setattr(netns, "ip", refused)
    assert "`ip netns add` is not allowed here: mount --make-shared" in (netns.unavailable_reason() or "")
