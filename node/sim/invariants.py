"""Safety invariants checked after every simulation step."""

from __future__ import annotations

from dataclasses import dataclass, field

from consensus.messages import Message, Proposal, Vote


@dataclass
class SafetyMonitor:
    """Agreement and no-double-signing over everything correct nodes commit and sign."""

    committed: dict[int, bytes] = field(default_factory=dict)
    signed: dict[tuple[bytes, int, int, str], bytes | None] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)

    def on_commit(self, node: int, height: int, block_id: bytes) -> None:
        first = self.committed.setdefault(height, block_id)
        if first != block_id:
            self.violations.append(
                f"agreement: node {node} committed {block_id.hex()[:12]} at height {height}, "
                f"another correct node committed {first.hex()[:12]}"
            )

    def on_signed(self, node: int, msg: Message) -> None:
        if isinstance(msg, Proposal):
            key = (msg.proposer, msg.height, msg.round, "proposal")
            content: bytes | None = msg.value_id + msg.valid_round.to_bytes(8, "big", signed=True)
        else:
            assert isinstance(msg, Vote)
            key = (msg.validator, msg.height, msg.round, msg.type.name)
            content = msg.block_id
        if key in self.signed and self.signed[key] != content:
            self.violations.append(f"double-sign: correct node {node} signed two different {key[3]} "
                                   f"at height {key[1]} round {key[2]}")
        self.signed.setdefault(key, content)

    def fail(self, message: str) -> None:
        self.violations.append(message)
