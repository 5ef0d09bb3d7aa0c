"""Reading and registration validation: one test per reason code, plus in-block ordering."""

import pytest

from node.errors import BlockReason, InvalidBlock
from node.ledger.blocks import make_block
from node.ledger.state import ChainParams, DeviceRecord, MemberRecord, Reason, apply_block, check_tx
from node.ledger.transactions import (
    make_member_vote,
    make_model_update,
    make_reading,
    make_register_device,
    make_train_request,
)
from node.store.base import MemoryStore
from tests.factories import CHAIN_ID, device_key, key_from

PARAMS = ChainParams(CHAIN_ID, max_skew_ms=5000)
NOW = 1_700_000_000_000
AUTH = key_from("auth")
PART = key_from("participant")
STRANGER = key_from("stranger")
DEV = device_key(0)
NEW_DEV = device_key(1)


@pytest.fixture
def view():
    s = MemoryStore()
    s.initialize(
        b"\x00" * 32,
        "{}",
        [MemberRecord(AUTH.public, "authority", "a", 0), MemberRecord(PART.public, "participant", "p", 0)],
    )
    s._devices[DEV.public] = DeviceRecord(DEV.public, PART.public, "d", 10, 1)
    return s


def reading(seq=11, ts=NOW, t=21.0, h=50.0, key=DEV, chain=CHAIN_ID):
    return make_reading(key, chain, seq, ts, t, h)


def test_valid_reading(view):
    assert check_tx(view, reading(), NOW, PARAMS) is None
    assert check_tx(view, reading(ts=NOW + 5000, t=-60, h=100), NOW, PARAMS) is None


@pytest.mark.parametrize(
    "tx, reason",
    [
        (lambda: {"kind": "reading"}, Reason.MALFORMED),
        (lambda: reading(key=NEW_DEV), Reason.UNKNOWN_DEVICE),
        (lambda: reading(chain="other-chain"), Reason.BAD_SIGNATURE),
        (lambda: {**reading(), "sig": bytes(64)}, Reason.BAD_SIGNATURE),
        (lambda: reading(seq=10), Reason.REPLAYED_SEQUENCE),
        (lambda: reading(seq=3), Reason.REPLAYED_SEQUENCE),
        (lambda: reading(ts=NOW + 5001), Reason.FUTURE_TIMESTAMP),
        (lambda: reading(t=100.5), Reason.OUT_OF_RANGE),
        (lambda: reading(t=-61), Reason.OUT_OF_RANGE),
        (lambda: reading(h=-0.1), Reason.OUT_OF_RANGE),
        (lambda: reading(h=101), Reason.OUT_OF_RANGE),
        (lambda: make_register_device(STRANGER, CHAIN_ID, NEW_DEV.public, "x"), Reason.UNAUTHORIZED),
        (lambda: make_register_device(AUTH, CHAIN_ID, DEV.public, "x"), Reason.DEVICE_EXISTS),
        (lambda: make_train_request(PART, CHAIN_ID, "humidity", 1), Reason.UNAUTHORIZED),
        (lambda: make_member_vote(PART, CHAIN_ID, STRANGER.public, "observer", "add"), Reason.UNAUTHORIZED),
        (
            lambda: make_model_update(
                STRANGER, CHAIN_ID, bytes(32), "t", 0, bytes(32), bytes(32), 1, {}, bytes(32)
            ),
            Reason.UNAUTHORIZED,
        ),
    ],
)
def test_rejection_reasons(view, tx, reason):
    assert check_tx(view, tx(), NOW, PARAMS) is reason


def test_registration_by_any_member(view):
    assert check_tx(view, make_register_device(PART, CHAIN_ID, NEW_DEV.public, "x"), NOW, PARAMS) is None
    assert check_tx(view, make_register_device(AUTH, CHAIN_ID, NEW_DEV.public, "x"), NOW, PARAMS) is None


def block_of(txs, time_ms=NOW):
    return make_block(CHAIN_ID, 1, 0, bytes(32), time_ms, AUTH.public, txs, None)


def test_register_then_read_in_one_block(view):
    txs = [
        make_register_device(PART, CHAIN_ID, NEW_DEV.public, "new"),
        reading(seq=0, key=NEW_DEV),
        reading(seq=1, key=NEW_DEV),
        reading(seq=11),
    ]
    delta = apply_block(view, block_of(txs), PARAMS)
    assert [r.seq for r in delta.readings] == [0, 1, 11]
    assert delta.device_seqs == {NEW_DEV.public: 1, DEV.public: 11}
    assert [d.device for d in delta.new_devices] == [NEW_DEV.public]
    assert [t.index for t in delta.txs] == [0, 1, 2, 3]


@pytest.mark.parametrize(
    "txs, detail",
    [
        (lambda: [reading(seq=12), reading(seq=12)], "tx 1 .*duplicate"),
        (lambda: [reading(seq=12, t=22), reading(seq=12)], "tx 1 .*replayed_sequence"),
        (lambda: [reading(seq=13), reading(seq=12)], "tx 1 .*replayed_sequence"),
        (
            lambda: [reading(seq=0, key=NEW_DEV), make_register_device(PART, CHAIN_ID, NEW_DEV.public, "n")],
            "tx 0 .*unknown_device",
        ),
        (
            lambda: [
                make_register_device(PART, CHAIN_ID, NEW_DEV.public, "n"),
                make_register_device(AUTH, CHAIN_ID, NEW_DEV.public, "n"),
            ],
            "device_exists",
        ),
    ],
)
def test_block_validation_sees_earlier_txs_of_the_same_block(view, txs, detail):
    with pytest.raises(InvalidBlock, match=detail) as ei:
        apply_block(view, block_of(txs()), PARAMS)
    assert ei.value.reason is BlockReason.INVALID_TX


def test_already_committed_tx_is_duplicate(view):
    raw = reading()
    delta = apply_block(view, block_of([raw]), PARAMS)
    # what committing the block does: the tx is stored and its device's last_seq rises
    view._txs[delta.txs[0].id] = delta.txs[0]
    old = view._devices[DEV.public]
    view._devices[DEV.public] = DeviceRecord(old.device, old.owner, old.name, delta.device_seqs[DEV.public],
                                             old.registered_height)
    assert check_tx(view, raw, NOW, PARAMS) is Reason.DUPLICATE
