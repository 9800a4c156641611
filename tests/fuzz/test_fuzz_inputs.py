"""Property-based fuzzing of every input attnc reads: mutated ONNX protos, npz inputs, arch YAML, pipeline strings,
.mlir text, command-line values and CRC-valid bitstreams. Each case runs ``attnc.cli.run`` in a worker process
under a 4 GiB address-space cap and a per-case time bound, and must end in success or one clean
``attnc: error:`` line (exit 2) -- never an internal error, a hang, a crash or the memory cap.

The normal suite runs a few derandomized examples per input kind; ``ATTNC_FUZZ_EXAMPLES=N`` runs N per kind
(benchmarks/fuzz.py is the large-budget driver with a table). A failing case is shrunk by hypothesis; add it to
tests/fuzz/corpus/ (``fuzzlib.save_crasher``) so test_corpus.py replays it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from fuzzlib import GENERATORS, DrawChooser, Worker, generate, run_case
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EXAMPLES = int(os.environ.get("ATTNC_FUZZ_EXAMPLES", "0")) or None
#: the default examples per kind: the cheap kinds get more, the ones that compile or simulate fewer
DEFAULT_EXAMPLES = {"onnx": 30, "npz": 25, "arch": 30, "pipeline": 25, "mlir": 30, "options": 20, "bitstream": 40}

FUZZ = settings(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)


@pytest.mark.parametrize("kind", sorted(GENERATORS))
def test_hostile_inputs_end_cleanly(kind: str, worker: Worker, a23bit: Path) -> None:
    @settings(FUZZ, max_examples=EXAMPLES or DEFAULT_EXAMPLES[kind])
    @given(st.data())
    def prop(data: st.DataObject) -> None:
        case = generate(kind, DrawChooser(data), a23bit)
        verdict, outcome, argv = run_case(worker, case, a23bit)
        assert verdict in ("ok", "clean"), (
            f"{verdict}: attnc {' '.join(argv)}\n  exit {outcome.code} {outcome.died}\n  stderr: {outcome.err!r}"
        )

    prop()
