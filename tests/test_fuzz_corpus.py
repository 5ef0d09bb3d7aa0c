"""Replays the fuzz corpus (tests/fuzz_corpus/<target>/, kept by scripts/fuzz.py) through its
target: every input keeps the contract it was found under (scripts/fuzz_targets.py), so a parser
change that lets an exception escape on any of them fails here, in well under a second per target."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import pytest

from scripts import fuzz_targets as ft

CASES = [(name, path) for name in ft.TARGETS for path in ft.corpus_files(name)]


def test_every_target_has_a_corpus() -> None:
    assert {name for name, _ in CASES} == set(ft.TARGETS)


@pytest.mark.parametrize("name", sorted(ft.TARGETS))
def test_the_seeds_keep_the_contract(name: str) -> None:
    for data in ft.seeds(name):
        assert ft.check(name, data) is None


@pytest.mark.parametrize(("name", "path"), CASES, ids=[f"{n}/{p.name}" for n, p in CASES])
def test_a_corpus_input_keeps_the_contract(name: str, path: Path) -> None:
    data = path.read_bytes()
    tracemalloc.start()
    try:
        finding = ft.check(name, data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert finding is None, finding
    assert peak <= ft.MAX_PEAK_BYTES, f"{peak} bytes of transient memory for {len(data)} bytes in"


def test_the_corpus_stays_small() -> None:
    assert len(CASES) <= 60 * len(ft.TARGETS)
    assert sum(p.stat().st_size for _, p in CASES) <= 2 * 1024 * 1024
