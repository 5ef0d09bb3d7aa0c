import json
import stat

from node.cli.main import main
from node.ledger.keys import NodeKey


def test_init_creates_key_and_config(tmp_path, capsys):
    d = tmp_path / "n1"
    assert main(["init", str(d), "--name", "alice", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE((d / "node.key").stat().st_mode) == 0o600
    config = json.loads((d / "config.json").read_text())
    key = NodeKey.load(d / "node.key")
    assert config["name"] == "alice" and config["public_key"] == key.public.hex() == out["public_key"]
    assert config["node_id"] == key.short_id and config["listen_port"] == 7600


def test_init_twice_refuses_and_changes_nothing(tmp_path, capsys):
    d = tmp_path / "n1"
    assert main(["init", str(d)]) == 0
    before = (d / "node.key").read_bytes(), (d / "config.json").read_bytes()
    capsys.readouterr()
    assert main(["init", str(d)]) == 1
    assert "already holds a node key" in capsys.readouterr().err
    assert ((d / "node.key").read_bytes(), (d / "config.json").read_bytes()) == before


def test_init_with_passphrase_file(tmp_path):
    pf = tmp_path / "pass"
    pf.write_text("s3cret\n")
    d = tmp_path / "n2"
    assert main(["init", str(d), "--passphrase-file", str(pf)]) == 0
    NodeKey.load(d / "node.key", b"s3cret")
    assert main(["init", str(tmp_path / "n3"), "--passphrase-file", str(tmp_path / "missing")]) == 1


def test_usage_errors_exit_2(capsys):
    assert main([]) == 2
    assert main(["init"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["--help"]) == 0
