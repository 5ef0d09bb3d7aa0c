"""The proof-of-authority validator set: equal power, proposer rotation, quorum sizes."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class ValidatorSet:
    """Authorities in canonical (sorted) order. With n members, f = floor((n-1)/3) may be Byzantine."""

    members: tuple[bytes, ...]
    _lookup: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_lookup", frozenset(self.members))

    @staticmethod
    def of(keys: Iterable[bytes]) -> ValidatorSet:
        ordered = tuple(sorted(set(keys)))
        if not ordered:
            raise ValueError("a validator set needs at least one member")
        return ValidatorSet(ordered)

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def f(self) -> int:
        return (self.n - 1) // 3

    @property
    def quorum(self) -> int:
        """More than two thirds of n ("2f+1" in the paper when n = 3f+1)."""
        return 2 * self.n // 3 + 1

    @property
    def skip_threshold(self) -> int:
        """f+1: enough messages that at least one comes from a correct validator."""
        return self.f + 1

    def proposer(self, height: int, round: int) -> bytes:
        return self.members[(height + round) % self.n]

    def __contains__(self, key: object) -> bool:
        return key in self._lookup

    def index(self, key: bytes) -> int:
        return self.members.index(key)

    def has_quorum(self, voters: Sequence[bytes] | set[bytes]) -> bool:
        return len({v for v in voters if v in self}) >= self.quorum
