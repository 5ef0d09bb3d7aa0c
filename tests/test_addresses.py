"""Bind and advertised addresses (init/join --host/--advertise), member URLs in genesis, `genesis
create`, and the SuperLink address a train_request names."""

from __future__ import annotations

import json
import re
import socket
from pathlib import Path

import pytest

from node.cli.main import main
from node.errors import ConfigError
from node.launch.train_request import request_params
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.keys import NodeKey
from node.net.addresses import advertise_url, check_host
from node.net.ports import free_port
from node.server.datadir import NodeConfig, init_node
from node.store.sqlite import SqliteStore
from tests.factories import make_genesis, populated_ledger


@pytest.mark.parametrize("value, url", [
    ("10.0.0.5", "ws://10.0.0.5:7600"),
    ("10.0.0.5:7700", "ws://10.0.0.5:7700"),
    ("ws://node1.example.org", "ws://node1.example.org:7600"),
    ("ws://node1.example.org:80/", "ws://node1.example.org:80"),
    ("[fd00::5]:7601", "ws://[fd00::5]:7601"),
])
def test_an_advertised_address_becomes_a_ws_url_with_a_port(value: str, url: str) -> None:
    assert advertise_url(value, 7600) == url


@pytest.mark.parametrize("value, says", [
    ("0.0.0.0", "wildcard"), ("ws://[::]:7600", "wildcard"), ("http://10.0.0.5", "ws://"),
    ("ws://10.0.0.5:99999", "not a valid URL"), ("ws://10.0.0.5:0", "1..65535"),
    ("ws://u:p@10.0.0.5", "no path, user or query"), ("ws://10.0.0.5/peer", "no path"),
    ("ws://10.0.0.5?x=1", "no path"), ("bad host", "spaces"), ("a\x00b", "control"),
    ("ws://-x-.org", "IP address or a host name"), ("", "1..256"), ("h" * 300, "1..256"),
    ("ws://:7600", "names no host"),
])
def test_a_hostile_advertised_address_is_refused_with_a_reason(value: str, says: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(says)):
        advertise_url(value, 7600)


@pytest.mark.parametrize("host", ["10.0.0.5", "0.0.0.0", "::", "fd00::1", "node1", "node1.example.org"])
def test_a_bind_host_is_an_address_or_a_name(host: str) -> None:
    assert check_host(host) == host


@pytest.mark.parametrize("host", ["", "a b", "x" * 254, "ws://10.0.0.5", "10.0.0.5:7600", "-x"])
def test_a_hostile_bind_host_is_refused(host: str) -> None:
    with pytest.raises(ConfigError, match="--host must be an IP address or a host name"):
        check_host(host)


def test_init_stores_the_advertised_url_and_the_config_says_it(tmp_path: Path) -> None:
    cfg = init_node(tmp_path / "n", host="0.0.0.0", port=7601, advertise="192.0.2.7")
    assert cfg["advertise"] == "ws://192.0.2.7:7601"
    loaded = NodeConfig.load(tmp_path / "n")
    assert loaded.url == "ws://192.0.2.7:7601" and loaded.listen_host == "0.0.0.0"
    assert init_node(tmp_path / "m", host="10.0.0.9", port=7602).get("advertise") is None
    assert NodeConfig.load(tmp_path / "m").url == "ws://10.0.0.9:7602"


def test_a_wildcard_bind_without_advertise_is_refused_and_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="add --advertise"):
        init_node(tmp_path / "n", host="0.0.0.0")
    assert not (tmp_path / "n").exists()


def test_a_tampered_config_address_is_refused_on_load(tmp_path: Path) -> None:
    init_node(tmp_path / "n", host="10.0.0.9")
    path = tmp_path / "n" / "config.json"
    d = json.loads(path.read_text())
    path.write_text(json.dumps({**d, "advertise": "ws://0.0.0.0:1"}))
    with pytest.raises(ConfigError, match=r"advertise .* wildcard"):
        NodeConfig.load(tmp_path / "n")
    path.write_text(json.dumps({**d, "listen_host": "a b"}))
    with pytest.raises(ConfigError, match="listen_host must be an IP address"):
        NodeConfig.load(tmp_path / "n")


def test_member_urls_in_genesis_keep_old_hashes_and_are_checked() -> None:
    key = NodeKey.generate().public
    plain = Genesis("c", 1, (GenesisMember(key, "a"),))
    assert "url" not in plain.to_dict()["authorities"][0]  # a genesis without URLs: hash as before
    with_url = Genesis("c", 1, (GenesisMember(key, "a", url="ws://10.0.0.1:7600"),))
    assert with_url.hash != plain.hash
    assert Genesis.from_json(with_url.to_json()) == with_url
    for bad in ("http://10.0.0.1:7600", "ws://a b", "ws://" + "x" * 300):
        with pytest.raises(ConfigError, match="url must be ws://"):
            Genesis("c", 1, (GenesisMember(key, "a", url=bad),))
    text = json.loads(with_url.to_json())
    text["authorities"][0]["extra"] = 1
    with pytest.raises(ConfigError, match="key, name and optional url"):
        Genesis.from_json(json.dumps(text))


def test_genesis_create_takes_the_lines_init_prints(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    specs = []
    for i in (1, 2):
        assert main(["init", str(tmp_path / f"n{i}"), "--host", f"10.0.0.{i}", "--json"]) == 0
        specs.append(json.loads(capsys.readouterr().out)["authority"])
    out = tmp_path / "genesis.json"
    assert main(["genesis", "create", "--authority", specs[0], "--authority", specs[1], "--chain-id", "x",
                 "--out", str(out), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    g = Genesis.load(out)
    assert made["genesis_hash"] == g.hash.hex()
    assert [m.url for m in g.authorities] == ["ws://10.0.0.1:7600", "ws://10.0.0.2:7600"]
    assert main(["genesis", "create", "--authority", specs[0], "--out", str(out)]) == 1  # never overwritten
    assert "refusing to overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("spec, says", [
    ("nokey", "NAME=PUBLIC_KEY"), ("a=12", "64 hex"), ("a=" + "zz" * 32, "64 hex"),
    ("a=" + "ab" * 32 + "@", "nothing after '@'"), ("a=" + "ab" * 32 + "@ws://10.0.0.1", "end in :PORT"),
    ("a=" + "ab" * 32 + "@http://10.0.0.1:1", "ws://"), ("a=" + "ab" * 32 + "@ws://0.0.0.0:1", "wildcard"),
])
def test_genesis_create_refuses_a_bad_member_line(spec: str, says: str, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["genesis", "create", "--authority", spec, "--out", str(tmp_path / "g.json")]) == 1
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert not (tmp_path / "g.json").exists()


def ledger_with_a_device(directory: Path) -> None:
    """A replica in DIR's node.db holding one registered device (a run lists its devices)."""
    keys, genesis = make_genesis(4)
    store = SqliteStore(directory / "node.db")
    try:
        populated_ledger(Ledger(store, genesis), keys, n_devices=1, n_blocks=1)
    finally:
        store.close()


def test_a_train_request_names_the_advertised_host_for_its_superlink(tmp_path: Path) -> None:
    init_node(tmp_path / "n", host="127.0.0.1", port=7605, advertise="ws://coordinator.example.org:7605")
    ledger_with_a_device(tmp_path / "n")
    params = request_params(tmp_path / "n", "humidity")
    host, _, port = params["superlink"].rpartition(":")
    assert host == "coordinator.example.org" and 1 <= int(port) <= 65535


def test_a_fixed_superlink_port_is_used_when_free_and_refused_when_taken(tmp_path: Path) -> None:
    init_node(tmp_path / "n", host="127.0.0.1", port=7605)
    ledger_with_a_device(tmp_path / "n")
    free = free_port("127.0.0.1")
    assert request_params(tmp_path / "n", "humidity", superlink_port=free)["superlink"] == f"127.0.0.1:{free}"
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        taken = held.getsockname()[1]
        with pytest.raises(ConfigError, match=f"SuperLink port {taken} is not free"):
            request_params(tmp_path / "n", "humidity", superlink_port=taken)
    with pytest.raises(ConfigError, match="SuperLink port 7605 is not free"):  # the node's own port
        request_params(tmp_path / "n", "humidity", superlink_port=7605)
