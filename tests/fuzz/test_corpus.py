"""Replays every case in tests/fuzz/corpus/ (crashers the fuzzers found, and the cases of issue 13): each must end
in success or one clean ``attnc: error:`` line, under the same memory cap and time bound as the fuzzers
(4 GiB address space, 60 s) and attnc's default resource limits."""

from __future__ import annotations

from pathlib import Path

import pytest
from fuzzlib import CORPUS, Worker, load_corpus, run_case

CASES = load_corpus()


def test_corpus_is_not_empty() -> None:
    assert CASES, f"no cases under {CORPUS}"


@pytest.mark.parametrize("side, case", CASES, ids=[f"{p.parent.name}/{p.stem}" for p, _ in CASES])
def test_corpus_case(side: Path, case, corpus_worker: Worker, a23bit: Path) -> None:
    verdict, outcome, argv = run_case(corpus_worker, case, a23bit)
    assert verdict in ("ok", "clean"), (
        f"{side.name} ({case.note}): {verdict}: attnc {' '.join(argv)}\n"
        f"  exit {outcome.code} {outcome.died}\n  stderr: {outcome.err!r}"
    )
