import dataclasses
import json
from collections.abc import Callable

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from consensus.messages import Step
from node.errors import ConfigError
from node.ledger.genesis import ADMISSION_POLICIES, Genesis, GenesisMember, Timeouts
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


def _base() -> Genesis:
    return make_genesis(4, n_participants=1, tasks=({"name": "humidity", "rounds": 3},))[1]


def _change_first(members: tuple[GenesisMember, ...], field: str) -> tuple[GenesisMember, ...]:
    return (dataclasses.replace(members[0], **{field: MEMBER_VARIANTS[field](members[0])}), *members[1:])


_FLOWER_KEY = ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
    serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)

# A member's role is not hashed on its own: it follows from the group (authorities, participants) it is in.
MEMBER_VARIANTS: dict[str, Callable[[GenesisMember], object]] = {
    "key": lambda m: bytes(32),
    "name": lambda m: m.name + "-renamed",
    "url": lambda m: (m.url or "ws://10.0.0.1:7600") + "1",
    "flower_key": lambda m: _FLOWER_KEY,
}


# One changed value per Genesis field, built from the base genesis. A field added to Genesis without a
# variant here fails test_every_field_has_a_variant, so it cannot be left out of the hash unnoticed.
VARIANTS: dict[str, Callable[[Genesis], object]] = {
    "chain_id": lambda g: g.chain_id + "-other",
    "genesis_time_ms": lambda g: g.genesis_time_ms + 1,
    "authorities": lambda g: _change_first(g.authorities, "name"),
    "participants": lambda g: _change_first(g.participants, "name"),
    "timeouts": lambda g: dataclasses.replace(g.timeouts, propose_ms=g.timeouts.propose_ms + 1),
    "create_empty_blocks": lambda g: not g.create_empty_blocks,
    "max_clock_skew_ms": lambda g: g.max_clock_skew_ms + 1,
    "admission": lambda g: next(a for a in ADMISSION_POLICIES if a != g.admission),
    "tasks": lambda g: ({**g.tasks[0], "rounds": g.tasks[0]["rounds"] + 1},),
}


def test_every_field_has_a_variant():
    assert set(VARIANTS) == {f.name for f in dataclasses.fields(Genesis)}


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Genesis)])
def test_hash_depends_on_every_field(name):
    g = _base()
    other = dataclasses.replace(g, **{name: VARIANTS[name](g)})
    assert getattr(other, name) != getattr(g, name)
    assert other.hash != g.hash


@pytest.mark.parametrize("name", [f.name for f in dataclasses.fields(Timeouts)])
def test_hash_depends_on_every_timeout(name):
    g = _base()
    timeouts = dataclasses.replace(g.timeouts, **{name: getattr(g.timeouts, name) + 1})
    assert dataclasses.replace(g, timeouts=timeouts).hash != g.hash


def test_every_member_field_but_role_has_a_variant():
    assert set(MEMBER_VARIANTS) | {"role"} == {f.name for f in dataclasses.fields(GenesisMember)}


@pytest.mark.parametrize("field", sorted(MEMBER_VARIANTS))
@pytest.mark.parametrize("group", ["authorities", "participants"])
def test_hash_depends_on_every_member_field(group, field):
    g = _base()
    other = dataclasses.replace(g, **{group: _change_first(getattr(g, group), field)})
    assert other.hash != g.hash


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
