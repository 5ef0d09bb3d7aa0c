import json

import pytest

from consensus.messages import Step
from node.errors import ConfigError
from node.ledger.genesis import Genesis
from tests.factories import make_genesis


def test_json_file_round_trip_keeps_hash(tmp_path):
    _, g = make_genesis(4, n_participants=2, tasks=({"name": "humidity", "rounds": 3},))
    p = tmp_path / "genesis.json"
    g.save(p)
    loaded = Genesis.load(p)
    assert loaded == g and loaded.hash == g.hash
    assert json.loads(p.read_text())["authorities"][0]["key"] == g.authorities[0].key.hex()
    assert Genesis.from_dict(g.to_dict()) == g
    with pytest.raises(ConfigError, match="overwrite"):
        g.save(p)


def test_validator_set_and_defaults():
    keys, g = make_genesis(4)
    assert g.validator_set().members == tuple(k.public for k in keys)
    assert g.admission == "votes" and g.create_empty_blocks is False
    assert g.timeouts.for_step(Step.PROPOSE, 2) == 2000 and g.timeouts.for_step(Step.PREVOTE, 1) == 750


def test_hash_depends_on_every_field():
    _, g = make_genesis(4)
    _, other = make_genesis(4, max_clock_skew_ms=1)
    assert g.hash != other.hash


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda d: d.update(chain_id="a/b"), "chain_id"),
        (lambda d: d.update(authorities=[]), "at least one authority"),
        (lambda d: d["authorities"][0].update(key="zz"), "hex"),
        (lambda d: d["authorities"][0].update(key="00"), "32 bytes"),
        (lambda d: d["authorities"].append(dict(d["authorities"][0])), "twice"),
        (lambda d: d.update(admission="lottery"), "admission"),
        (lambda d: d.update(surprise=1), "unknown fields"),
        (lambda d: d["timeouts"].update(propose_ms=-1), "propose_ms"),
        (lambda d: d.pop("genesis_time_ms"), "lacks"),
        (lambda d: d.update(tasks=[{"rounds": 1}]), "tasks"),
    ],
)
def test_bad_genesis_is_a_clear_config_error(mutate, match):
    _, g = make_genesis(4)
    d = json.loads(g.to_json())
    mutate(d)
    with pytest.raises(ConfigError, match=match):
        Genesis.from_json(json.dumps(d))


def test_unreadable_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        Genesis.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ConfigError, match=r"bad\.json"):
        Genesis.load(tmp_path / "bad.json")
