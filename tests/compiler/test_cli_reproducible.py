"""Reproducible bitstreams (issue 13): the same model, arch, options and seed give byte-identical files.
The wall-clock figures of the mapping (mapping.seconds, mapping.heuristic_seconds) stay on the IR for
--report and out of the bitstream; the CP-SAT search is bounded by deterministic time on one worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from attnc.backend.bitstream import decode
from cli_helpers import call

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


@pytest.mark.parametrize(("model", "arch"), [("bert_layer.onnx", "edge"), ("gqa_block.onnx", "tiny")])
def test_compiling_twice_gives_the_same_bytes(tmp_path: Path, capsys: pytest.CaptureFixture[str], model: str,
                                              arch: str) -> None:  # fmt: skip
    data = []
    for i in range(2):
        out = tmp_path / f"{i}.bit"
        code, _, err = call(capsys, "compile", EXAMPLES / model, "--arch", arch, "-o", out, "--time-limit", "2")
        assert code == 0, err
        data.append(out.read_bytes())
    meta = decode(data[0]).meta
    assert meta["mapping.method"] in ("monolithic", "lns")  # CP-SAT ran, not the heuristic alone
    assert not [k for k in meta if "second" in k]
    assert data[0] == data[1]
