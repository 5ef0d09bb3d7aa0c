"""Test factories for ledgers, blocks and commit certificates (node.ledger.signer.sign_commit signs them).

Everything is deterministic: keys come from labels, so a seed or a test name reproduces them.

    keys, genesis = make_genesis(4)            # keys[i] is genesis.validator_set().members[i]
    ledger = Ledger(MemoryStore(), genesis)
    dev = device_key(0)
    reg = make_register_device(keys[0], genesis.chain_id, dev.public, "d0")
    block, commit = make_block(ledger, keys, [reg])   # right proposer, commit signed by all keys
    ledger.commit(block, commit)
    # or in one step: commit_next(ledger, keys, [reg])
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from node.ledger.blocks import Block, Commit
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis, GenesisMember
from node.ledger.keys import NodeKey
from node.ledger.signer import sign_commit
from node.ledger.transactions import make_reading, make_register_device

CHAIN_ID = "test-chain"
GENESIS_TIME_MS = 1_700_000_000_000
BLOCK_INTERVAL_MS = 1000


def key_from(label: str) -> NodeKey:
    """Deterministic Ed25519 key named by `label`."""
    return NodeKey.from_seed(hashlib.sha256(label.encode()).digest())


def authority_key(i: int, chain_id: str = CHAIN_ID) -> NodeKey:
    return key_from(f"{chain_id}/authority/{i}")


def participant_key(i: int, chain_id: str = CHAIN_ID) -> NodeKey:
    return key_from(f"{chain_id}/participant/{i}")


def device_key(i: int, chain_id: str = CHAIN_ID) -> NodeKey:
    return key_from(f"{chain_id}/device/{i}")


def make_genesis(
    n_authorities: int = 4,
    *,
    chain_id: str = CHAIN_ID,
    n_participants: int = 0,
    genesis_time_ms: int = GENESIS_TIME_MS,
    **fields: Any,
) -> tuple[list[NodeKey], Genesis]:
    """Genesis with `n_authorities` deterministic authority keys, returned in validator-set order
    (sorted by public key) so keys[i] is validator i. Participants: see participant_key(i).
    Extra keyword arguments go to Genesis (timeouts, max_clock_skew_ms, admission, tasks...)."""
    keys = sorted((authority_key(i, chain_id) for i in range(n_authorities)), key=lambda k: k.public)
    genesis = Genesis(
        chain_id=chain_id,
        genesis_time_ms=genesis_time_ms,
        authorities=tuple(GenesisMember(k.public, f"authority-{i}") for i, k in enumerate(keys)),
        participants=tuple(
            GenesisMember(participant_key(i, chain_id).public, f"participant-{i}", "participant")
            for i in range(n_participants)
        ),
        **fields,
    )
    return keys, genesis


def key_for(keys: Iterable[NodeKey], public: bytes) -> NodeKey:
    for k in keys:
        if k.public == public:
            return k
    raise KeyError(f"no key for {public.hex()[:16]}")


def make_block(
    ledger: Ledger,
    keys: Sequence[NodeKey],
    txs: Sequence[dict[str, Any]] = (),
    *,
    round: int = 0,
    time_ms: int | None = None,
    signers: Sequence[NodeKey] | None = None,
) -> tuple[Block, Commit]:
    """The next block of `ledger` from the rightful proposer of (height, round), and a commit
    certificate for it signed by `signers` (default: all `keys`). Does not commit it."""
    h = ledger.height + 1
    proposer = ledger.validators_at(h).proposer(h, round)
    if time_ms is None:
        time_ms = ledger.head_time_ms + BLOCK_INTERVAL_MS
    block = ledger.make_next_block(proposer, round, time_ms, list(txs))
    commit = sign_commit(list(keys) if signers is None else signers, ledger.chain_id, h, round, block.hash)
    return block, commit


def commit_next(
    ledger: Ledger, keys: Sequence[NodeKey], txs: Sequence[dict[str, Any]] = (), **kw: Any
) -> Block:
    block, commit = make_block(ledger, keys, txs, **kw)
    ledger.commit(block, commit)
    return block


def readings_for(
    device: NodeKey, chain_id: str, first_seq: int, count: int, time_ms: int
) -> list[dict[str, Any]]:
    """`count` plausible signed readings with consecutive seqs, timestamps one second apart."""
    return [
        make_reading(device, chain_id, first_seq + i, time_ms - 1000 * (count - i), 20.0 + i / 10, 45.0 + i)
        for i in range(count)
    ]


def spread_readings(
    device: NodeKey, chain_id: str, count: int, start_ms: int, step_ms: int = 7 * 60_000, first_seq: int = 1
) -> list[dict[str, Any]]:
    """`count` signed readings `step_ms` apart from `start_ms`: spread over hours, so some fall in
    the held-out windows of node/ledger/holdout.py and most do not."""
    return [
        make_reading(device, chain_id, first_seq + i, start_ms + i * step_ms, 20.0 + (i % 17) / 4,
                     45.0 + (i % 23) / 2)
        for i in range(count)
    ]


def give_devices(ledger: Ledger, keys: Sequence[NodeKey], owners: Sequence[NodeKey],
                 counts: Sequence[int], start_ms: int | None = None) -> list[NodeKey]:
    """Register one device per owner and commit `counts[i]` spread readings of owner i's device."""
    devices = [device_key(100 + i, ledger.chain_id) for i in range(len(owners))]
    regs = [make_register_device(o, ledger.chain_id, d.public, f"dev-{i}")
            for i, (o, d) in enumerate(zip(owners, devices, strict=True))]
    commit_next(ledger, keys, regs)
    start = ledger.head_time_ms - 30 * 86_400_000 if start_ms is None else start_ms
    txs = [tx for d, n in zip(devices, counts, strict=True)
           for tx in spread_readings(d, ledger.chain_id, n, start)]
    commit_next(ledger, keys, txs)
    return devices


def populated_ledger(
    ledger: Ledger, keys: Sequence[NodeKey], n_devices: int = 2, n_blocks: int = 3, per_block: int = 3
) -> list[NodeKey]:
    """Commit a block registering `n_devices` devices, then `n_blocks` blocks of readings."""
    devices = [device_key(i, ledger.chain_id) for i in range(n_devices)]
    regs = [
        make_register_device(keys[0], ledger.chain_id, d.public, f"device-{i}") for i, d in enumerate(devices)
    ]
    commit_next(ledger, keys, regs)
    for b in range(n_blocks):
        t = ledger.head_time_ms + BLOCK_INTERVAL_MS
        txs = [tx for d in devices for tx in readings_for(d, ledger.chain_id, b * per_block, per_block, t)]
        commit_next(ledger, keys, txs, time_ms=t)
    return devices
