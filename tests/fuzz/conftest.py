"""Fixtures of the fuzz tests: one bounded worker process per test session, and a compiled example bitstream."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzzlib import GiB, Worker, a23_bitstream

MiB = 1 << 20
#: smaller limits than the defaults keep each case fast; benchmarks/fuzz.py runs with the defaults
TEST_LIMITS = {
    "ATTNC_MAX_TENSOR_BYTES": str(64 * MiB),
    "ATTNC_MAX_FOLD_BYTES": str(16 * MiB),
    "ATTNC_MAX_FILE_BYTES": str(64 * MiB),
}


@pytest.fixture(scope="session")
def a23bit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return a23_bitstream(tmp_path_factory.mktemp("fuzz-cache"))


def _worker(env: dict[str, str]) -> Worker:
    return Worker(mem_bytes=4 * GiB, timeout=float(os.environ.get("ATTNC_FUZZ_TIMEOUT", "60")), env=env)


@pytest.fixture(scope="session")
def worker() -> Iterator[Worker]:
    """The fuzzers' worker: 4 GiB address space, lowered limits (fast cases)."""
    w = _worker(TEST_LIMITS)
    yield w
    w.kill()


@pytest.fixture(scope="session")
def corpus_worker() -> Iterator[Worker]:
    """The corpus' worker: 4 GiB address space and attnc's default limits, as a user runs it."""
    w = _worker({k: "" for k in TEST_LIMITS})
    yield w
    w.kill()
