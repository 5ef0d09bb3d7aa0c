"""Re-verify a whole replica from genesis, trusting nothing stored.

Every block is replayed through a fresh Ledger on a MemoryStore: hash links, proposer, Merkle
roots, every tx signature and validity rule, every last_commit and every stored commit
certificate. Then the derived rows of the replica (readings per height, tx index columns,
devices, members, model index) are compared with what the replay derived, so editing `readings` with sqlite3
is caught as surely as editing raw tx bytes (which breaks the tx root).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from node.errors import BlockReason, FedledgerError, InvalidBlock
from node.ledger.chain import Ledger
from node.ledger.genesis import Genesis
from node.ledger.storage import Store
from node.store.base import MemoryStore


@dataclass
class VerifyReport:
    ok: bool
    height: int  # height of the replica
    verified_height: int  # last height that passed every check
    first_bad_height: int | None = None  # 0 means the genesis itself does not match
    error: str | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "height": self.height,
            "verified_height": self.verified_height,
            "first_bad_height": self.first_bad_height,
            "error": self.error,
            "counts": dict(self.counts),
        }


def _tampered(height: int, what: str) -> InvalidBlock:
    return InvalidBlock(BlockReason.TAMPERED, height, what)


def verify_chain(store: Store, genesis: Genesis) -> VerifyReport:
    top = store.height()
    counts = {"blocks": 0, "txs": 0, "readings": 0, "precommits": 0}
    report = VerifyReport(ok=False, height=top, verified_height=0, counts=counts)
    stored = store.genesis()
    if stored is None or stored[0] != genesis.hash:
        report.first_bad_height = 0
        report.error = "the replica's genesis does not match the given genesis"
        return report
    replay_store = MemoryStore()
    replay = Ledger(replay_store, genesis)
    h = 0
    try:
        for h in range(1, top + 1):
            block = store.block(h)
            commit = store.commit(h)
            if block is None or commit is None:
                raise _tampered(h, "block or commit certificate missing")
            if store.block_hash(h) != block.hash:
                raise _tampered(h, "recorded block hash does not match the block")
            delta = replay.commit(block, commit)
            for t in delta.txs:
                rec = store.tx(t.id)
                if rec is None or (rec.height, rec.index, rec.kind, rec.signer) != (
                    t.height,
                    t.index,
                    t.kind,
                    t.signer,
                ):
                    raise _tampered(h, f"tx row {t.id.hex()[:16]} does not match the block")
            if store.readings(height=h) != replay_store.readings(height=h):
                raise _tampered(h, "readings rows do not match the block's readings")
            counts["blocks"] += 1
            counts["txs"] += len(block.txs)
            counts["readings"] += len(delta.readings)
            counts["precommits"] += len(commit.precommits)
            report.verified_height = h
        _compare_final_state(store, replay_store)
    except InvalidBlock as exc:
        report.first_bad_height = exc.height if exc.height is not None else h
        report.error = str(exc)
        return report
    except FedledgerError as exc:
        report.first_bad_height = h
        report.error = str(exc)
        return report
    except Exception as exc:  # a corrupt replica must yield a report, never a traceback
        report.first_bad_height = h
        report.error = f"{type(exc).__name__}: {exc}"
        return report
    report.ok = True
    return report


def _compare_final_state(store: Store, replay: MemoryStore) -> None:
    """Rows whose value is a fold over many blocks, checked once at the end."""
    mine = {d.device: d for d in store.devices()}
    want = {d.device: d for d in replay.devices()}
    bad = [want.get(k) or mine[k] for k in mine.keys() | want.keys() if mine.get(k) != want.get(k)]
    if bad:
        first = min(d.registered_height for d in bad)
        raise _tampered(first, f"devices rows differ from the replay ({len(bad)} devices)")
    if store.members() != replay.members():
        raise _tampered(0, "members rows differ from genesis and ledger")
    if store.membership() != replay.membership():
        raise _tampered(store.height(), "membership state differs from the requests and votes in the blocks")
    if store.membership_history() != replay.membership_history():
        raise _tampered(store.height(), "membership history differs from the changes the blocks decided")
    mine_models, want_models = store.model_rows(), replay.model_rows()
    if mine_models != want_models:
        diff = [m for m in (*mine_models, *want_models) if (m in mine_models) != (m in want_models)]
        raise _tampered(min(m.height for m in diff), "models rows differ from the model txs in the blocks")
    if len(store.readings()) != len(replay.readings()):
        raise _tampered(store.height(), "readings table holds rows no block produced")
