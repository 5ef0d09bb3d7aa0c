"""Genesis: what defines a federation (chain id + genesis hash) and its initial parameters.

Stored as genesis.json with keys as hex. `genesis_hash` is the digest of the canonical dict form
(keys as raw bytes), so it does not depend on JSON formatting. Block 1's prev_hash is this hash.

Consensus timeouts follow the paper's timeout(r) = base + r * delta, in milliseconds:
propose 1000 + 500 r, prevote 500 + 250 r, precommit 500 + 250 r. Propose gets the largest base
because it covers building, sending and validating a whole block; votes are small.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consensus.tendermint import TimeoutConfig
from consensus.validators import ValidatorSet
from node.errors import CodecError, ConfigError
from node.ledger.codec import digest
from node.ledger.transactions import MAX_NAME, MAX_URL, valid_flower_key

ADMISSION_POLICIES = ("votes", "open")


GENESIS_MEMBER_FIELDS = {"key", "name", "url", "flower_key"}


@dataclass(frozen=True)
class GenesisMember:
    key: bytes
    name: str
    role: str = "authority"
    # Where the others dial this member (a federation across machines); "" for none.
    url: str = ""
    # The member's Flower SuperNode authentication key (OpenSSH public key line); b"": none.
    flower_key: bytes = b""

    def to_dict(self) -> dict[str, Any]:
        # Optional fields only when set, so a genesis without them keeps its encoding and hash.
        d: dict[str, Any] = {"key": self.key, "name": self.name}
        if self.url:
            d["url"] = self.url
        if self.flower_key:
            d["flower_key"] = self.flower_key
        return d


# The consensus core's timeout settings are what genesis records: one type, no translation.
Timeouts = TimeoutConfig


@dataclass(frozen=True)
class Genesis:
    chain_id: str
    genesis_time_ms: int
    authorities: tuple[GenesisMember, ...]
    participants: tuple[GenesisMember, ...] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    create_empty_blocks: bool = False
    max_clock_skew_ms: int = 5000
    admission: str = "votes"
    tasks: tuple[dict[str, Any], ...] = ()

    def __post_init__(self) -> None:
        # Validating here means no invalid Genesis can exist, whichever way it was built.
        _validate(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "chain_id": self.chain_id,
            "genesis_time_ms": self.genesis_time_ms,
            "authorities": [m.to_dict() for m in self.authorities],
            "participants": [m.to_dict() for m in self.participants],
            "timeouts": dataclasses.asdict(self.timeouts),
            "create_empty_blocks": self.create_empty_blocks,
            "max_clock_skew_ms": self.max_clock_skew_ms,
            "admission": self.admission,
            "tasks": [dict(t) for t in self.tasks],
        }

    @staticmethod
    def from_dict(d: Any) -> Genesis:
        """Inverse of to_dict (keys as bytes). Raises ConfigError on anything invalid."""
        return _from_dict(d, _as_bytes)

    @property
    def hash(self) -> bytes:
        return genesis_hash(self)

    def validator_set(self) -> ValidatorSet:
        return ValidatorSet.of(m.key for m in self.authorities)

    def members(self) -> list[GenesisMember]:
        return [*self.authorities, *self.participants]

    def to_json(self) -> str:
        d = self.to_dict()
        for group in ("authorities", "participants"):
            for m in d[group]:
                m["key"] = m["key"].hex()
                if "flower_key" in m:
                    m["flower_key"] = m["flower_key"].decode()
        return json.dumps(d, indent=2, sort_keys=True) + "\n"

    @staticmethod
    def from_json(text: str) -> Genesis:
        try:
            d = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"genesis is not valid JSON: {exc}") from exc
        return _from_dict(d, _hex_bytes)

    def save(self, path: str | os.PathLike[str]) -> None:
        path = Path(path)
        if path.exists():
            raise ConfigError(f"refusing to overwrite existing genesis file {path}")
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(self.to_json())
        os.replace(tmp, path)

    @staticmethod
    def load(path: str | os.PathLike[str]) -> Genesis:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise ConfigError(f"cannot read genesis file {path}: {exc.strerror}") from exc
        try:
            return Genesis.from_json(text)
        except ConfigError as exc:
            raise ConfigError(f"{path}: {exc}") from exc


def genesis_hash(g: Genesis) -> bytes:
    return digest(g.to_dict())


def _as_bytes(name: str, v: Any) -> bytes:
    if not isinstance(v, bytes):
        raise ConfigError(f"{name} must be bytes")
    return v


def _hex_bytes(name: str, v: Any) -> bytes:
    if not isinstance(v, str):
        raise ConfigError(f"{name} must be a hex string")
    try:
        return bytes.fromhex(v)
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid hex: {v!r}") from exc


def _from_dict(d: Any, key_of: Any) -> Genesis:
    if not isinstance(d, dict):
        raise ConfigError("genesis must be a map")
    known = {
        "chain_id",
        "genesis_time_ms",
        "authorities",
        "participants",
        "timeouts",
        "create_empty_blocks",
        "max_clock_skew_ms",
        "admission",
        "tasks",
    }
    unknown = set(d) - known
    if unknown:
        raise ConfigError(f"genesis has unknown fields: {sorted(map(str, unknown))}")
    for req in ("chain_id", "genesis_time_ms", "authorities"):
        if req not in d:
            raise ConfigError(f"genesis lacks field {req!r}")

    def members(group: str, role: str) -> tuple[GenesisMember, ...]:
        items = d.get(group, [])
        if not isinstance(items, list):
            raise ConfigError(f"genesis {group} must be a list")
        out = []
        for i, m in enumerate(items):
            if not isinstance(m, dict) or not {"key", "name"} <= set(m) <= GENESIS_MEMBER_FIELDS:
                raise ConfigError(
                    f"genesis {group}[{i}] must be a map of key, name and optional url and flower_key")
            fk = m.get("flower_key", b"")
            if isinstance(fk, str):  # JSON: the OpenSSH line as text
                fk = fk.encode()
            if not isinstance(fk, bytes):
                raise ConfigError(f"genesis {group}[{i}].flower_key must be an OpenSSH public key")
            key = key_of(f"{group}[{i}].key", m["key"])
            out.append(GenesisMember(key, m["name"], role, m.get("url", ""), fk))
        return tuple(out)

    timeouts = d.get("timeouts", {})
    if not isinstance(timeouts, dict):
        raise ConfigError("genesis timeouts must be a map")
    bad = set(timeouts) - set(Timeouts.__dataclass_fields__)
    if bad:
        raise ConfigError(f"genesis timeouts has unknown fields: {sorted(map(str, bad))}")
    tasks = d.get("tasks", [])
    if not isinstance(tasks, list):
        raise ConfigError("genesis tasks must be a list")
    try:
        return Genesis(
            chain_id=d["chain_id"],
            genesis_time_ms=d["genesis_time_ms"],
            authorities=members("authorities", "authority"),
            participants=members("participants", "participant"),
            timeouts=Timeouts(**timeouts),
            create_empty_blocks=d.get("create_empty_blocks", False),
            max_clock_skew_ms=d.get("max_clock_skew_ms", 5000),
            admission=d.get("admission", "votes"),
            tasks=tuple(tasks),
        )
    except TypeError as exc:
        raise ConfigError(f"invalid genesis: {exc}") from exc


def _is_ws_url(v: str) -> bool:
    # The shape only: the rules stay free of networking; the dialler parses the URL itself.
    return (v.startswith("ws://") and 6 <= len(v) <= MAX_URL
            and all(c.isprintable() and not c.isspace() for c in v))


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _validate(g: Genesis) -> None:
    if not isinstance(g.chain_id, str) or not 1 <= len(g.chain_id) <= 64 or "/" in g.chain_id:
        # "/" would blur the signing domain separator in sign_bytes.
        raise ConfigError("chain_id must be 1..64 characters without '/'")
    if not _is_int(g.genesis_time_ms) or g.genesis_time_ms < 0:
        raise ConfigError("genesis_time_ms must be a non-negative integer")
    if not g.authorities:
        raise ConfigError("genesis needs at least one authority")
    seen: set[bytes] = set()
    for m in (*g.authorities, *g.participants):
        if not isinstance(m.key, bytes) or len(m.key) != 32:
            raise ConfigError(f"member key must be 32 bytes, got {m.key!r}")
        if not isinstance(m.name, str) or not 1 <= len(m.name) <= MAX_NAME:
            raise ConfigError(f"member name must be 1..{MAX_NAME} characters")
        if not isinstance(m.url, str) or (m.url and not _is_ws_url(m.url)):
            raise ConfigError(f"member {m.name!r} url must be ws://HOST:PORT (at most {MAX_URL} characters)")
        if m.key in seen:
            raise ConfigError(f"member key {m.key.hex()} listed twice")
        if m.flower_key and not valid_flower_key(m.flower_key):
            raise ConfigError(f"member {m.name}: flower_key is not an OpenSSH EC public key on a NIST curve")
        seen.add(m.key)
    for k, v in dataclasses.asdict(g.timeouts).items():
        if not _is_int(v) or v < 0:
            raise ConfigError(f"timeouts.{k} must be a non-negative integer (ms)")
    if not isinstance(g.create_empty_blocks, bool):
        raise ConfigError("create_empty_blocks must be true or false")
    if not _is_int(g.max_clock_skew_ms) or g.max_clock_skew_ms < 0:
        raise ConfigError("max_clock_skew_ms must be a non-negative integer")
    if g.admission not in ADMISSION_POLICIES:
        raise ConfigError(f"admission must be one of {', '.join(ADMISSION_POLICIES)}")
    for i, t in enumerate(g.tasks):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str):
            raise ConfigError(f"tasks[{i}] must be a map with a string name")
    try:
        digest(g.to_dict())
    except CodecError as exc:
        raise ConfigError(f"genesis holds a value that cannot be encoded: {exc}") from exc
