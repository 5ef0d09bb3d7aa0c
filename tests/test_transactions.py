import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from node.errors import InvalidTransaction, Reason
from node.ledger.keys import NodeKey
from node.ledger.transactions import (
    BODY_TYPES,
    Reading,
    make_join_request,
    make_member_vote,
    make_model_commit,
    make_model_eval,
    make_model_update,
    make_reading,
    make_register_device,
    make_run_handover,
    make_train_request,
    parse_tx,
    tx_id,
)
from tests.factories import CHAIN_ID, device_key, key_from

OWNER = key_from("owner")
DEV = device_key(0)
H = b"\x11" * 32


def all_kinds():
    return [
        make_register_device(OWNER, CHAIN_ID, DEV.public, "dev"),
        make_reading(DEV, CHAIN_ID, 1, 1000, 21.5, 40.0, {"co2": 400, "site": "lab"}),
        make_join_request(OWNER, CHAIN_ID, "participant", "n", "ws://h:1"),
        make_member_vote(OWNER, CHAIN_ID, DEV.public, "observer", "add"),
        make_train_request(OWNER, CHAIN_ID, "humidity", 3, params={"lr": 0.01}),
        make_model_update(OWNER, CHAIN_ID, H, "humidity", 0, H, H, 10, {"loss": 0.5}, H),
        make_model_commit(OWNER, CHAIN_ID, H, "humidity", 0, "fedavg", [H], H, {"loss": 0.4}),
        make_model_eval(OWNER, CHAIN_ID, H, "humidity", 0, H, 5, 12, H, {"rmse": 1.5, "baseline_rmse": 2.0}),
        make_run_handover(OWNER, CHAIN_ID, H, 2, "10.0.0.7:9093", H),
    ]


def test_every_kind_builds_parses_and_verifies():
    txs = all_kinds()
    assert {t["kind"] for t in txs} == set(BODY_TYPES)
    for raw in txs:
        tx = parse_tx(raw)
        assert tx.id == tx_id(raw) and tx.signature_valid(CHAIN_ID)
        assert not tx.signature_valid("other-chain")


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda t: t.pop("sig"), "exactly"),
        (lambda t: t.update(kind="bogus"), "unknown transaction kind"),
        (lambda t: t.update(sig=b"x"), "64 bytes"),
        (lambda t: t["body"].update(seq=-1), "seq"),
        (lambda t: t["body"].update(seq=True), "seq"),
        (lambda t: t["body"].update(temperature_c="hot"), "temperature_c"),
        (lambda t: t["body"].update(colour="red"), "unknown fields"),
        (lambda t: t["body"].pop("humidity_pct"), "lacks"),
        (lambda t: t["body"].update(extra={f"k{i}": i for i in range(40)}), "extra"),
        (lambda t: t["body"].update(extra={"k": [1]}), "extra"),
        (lambda t: t.update(signer=OWNER.public), "signed by its device"),
        (lambda t: t.update(body=[1]), "must be a map"),
    ],
)
def test_malformed_readings_are_rejected_with_a_clear_detail(mutate, match):
    raw = make_reading(DEV, CHAIN_ID, 1, 1000, 21.5, 40.0)
    mutate(raw)
    with pytest.raises(InvalidTransaction, match=match) as ei:
        parse_tx(raw)
    assert ei.value.reason is Reason.MALFORMED


def test_non_map_and_oversized_names():
    with pytest.raises(InvalidTransaction):
        parse_tx([1, 2])
    with pytest.raises(InvalidTransaction, match="64"):
        make_register_device(OWNER, CHAIN_ID, DEV.public, "x" * 65)


@pytest.mark.parametrize("kind", [{}, [], {"reading": 1}, ["reading"], b"reading", 1, None])
def test_a_kind_that_is_not_a_string_is_malformed_not_a_type_error(kind):
    # Found by scripts/fuzz.py: a map or list as kind was looked up in BODY_TYPES and raised
    # TypeError (unhashable) out of parse_tx, through a peer's tx gossip or a client's submit_tx.
    raw = make_reading(DEV, CHAIN_ID, 1, 1000, 21.5, 40.0)
    raw["kind"] = kind
    with pytest.raises(InvalidTransaction, match="unknown transaction kind") as ei:
        parse_tx(raw)
    assert ei.value.reason is Reason.MALFORMED


FIELD_CHANGES = {
    "device": st.just(device_key(1).public),
    "seq": st.integers(0, 2**40),
    "timestamp_ms": st.integers(0, 2**45),
    "temperature_c": st.floats(-60, 100),
    "humidity_pct": st.floats(0, 100),
}


@settings(max_examples=60)
@given(st.sampled_from(sorted(FIELD_CHANGES)), st.data())
def test_any_change_to_a_signed_reading_breaks_its_signature(name, data):
    raw = make_reading(DEV, CHAIN_ID, 5, 1000, 21.5, 40.0, {"a": 1})
    new = data.draw(FIELD_CHANGES[name])
    if raw["body"][name] == new:
        return
    raw["body"][name] = new
    if name == "device":
        raw["signer"] = new  # keep it well-formed: the forged tx claims the other device
    assert not parse_tx(raw).signature_valid(CHAIN_ID)


@given(st.text(min_size=1, max_size=20).filter(lambda c: c != CHAIN_ID))
def test_a_signature_is_bound_to_its_chain_id(chain_id):
    assert not parse_tx(make_reading(DEV, CHAIN_ID, 5, 1000, 21.5, 40.0)).signature_valid(chain_id)


def test_signature_is_bound_to_kind_and_extra():
    raw = make_reading(DEV, CHAIN_ID, 5, 1000, 21.5, 40.0, {"a": 1})
    raw["body"]["extra"] = {"a": 2}
    assert not parse_tx(raw).signature_valid(CHAIN_ID)
    # Same body signed as one kind cannot be replayed as another kind with the same fields.
    reg = make_register_device(OWNER, CHAIN_ID, DEV.public, "dev")
    vote = make_member_vote(OWNER, CHAIN_ID, DEV.public, "observer", "add")
    forged = {**vote, "sig": reg["sig"]}
    assert not parse_tx(forged).signature_valid(CHAIN_ID)


def test_reading_accepts_int_values_for_floats():
    tx = parse_tx(make_reading(DEV, CHAIN_ID, 1, 1000, 21, 40))
    assert isinstance(tx.body, Reading) and tx.body.temperature_c == 21.0


@settings(max_examples=200, deadline=None)
@given(
    seq=st.integers(0, 2**40),
    ts=st.integers(0, 2**50),
    temp=st.floats(-60, 100),
    hum=st.floats(0, 100),
    extra=st.none()
    | st.dictionaries(
        st.text(min_size=1, max_size=8), st.integers(-(2**63), 2**63 - 1) | st.text(max_size=8), max_size=3
    ),
)
def test_composed_tx_encoding_is_the_canonical_encoding(
    seq: int, ts: int, temp: float, hum: float, extra: dict | None
) -> None:
    """parse_tx builds the tx bytes and the signed bytes from one encoding of the body."""
    from node.ledger.codec import encode, sign_bytes
    from node.ledger.transactions import encode_tx, parse_tx, signed_part, tx_id, tx_sign_kind

    key = NodeKey.from_seed(b"\x07" * 32)
    raw = make_reading(key, "c", seq, ts, temp, hum, extra or None)
    whole, signed = encode_tx(raw)
    assert whole == encode(raw) and signed == encode(signed_part(raw))
    tx = parse_tx(raw)
    assert tx.id == tx_id(raw)
    assert sign_bytes(tx_sign_kind("reading"), "c", signed_part(raw)).endswith(tx.signed_encoded)
    assert tx.signature_valid("c") and not parse_tx(raw).signature_valid("other-chain")


@pytest.mark.parametrize("superlink", ["", "10.0.0.7", "10.0.0.7:", ":9093", "h:0", "h:65536", "h:9 3",
                                       "h:x", "h\n:1", "a" * 300 + ":1"])
def test_a_handover_names_a_superlink_as_host_and_port(superlink: str) -> None:
    body = {"authority": OWNER.public, "run": H, "round": 1, "superlink": superlink, "superlink_cert": H}
    with pytest.raises(InvalidTransaction, match="superlink"):
        BODY_TYPES["run_handover"].from_body(body)
    ok = {**body, "superlink": "[fd00::7]:9093"}
    assert BODY_TYPES["run_handover"].from_body(ok).superlink == "[fd00::7]:9093"
