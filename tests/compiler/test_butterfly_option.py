"""`--butterfly`: the spec's parsing, where the pass goes in the pipeline, and the commands that take it
(compile --report, run with the error against the dense model)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from attnc.pipeline import butterfly_pass_spec, parse_pipeline, with_butterfly
from attnc.errors import AttncError
from cli_helpers import assert_user_error, call

ROOT = Path(__file__).resolve().parents[2]
DECODER = ROOT / "examples" / "causal_decoder.onnx"


@pytest.mark.parametrize(
    "spec, want",
    [
        ("", "butterfly-decompose"),
        ("block=3", "butterfly-decompose{block=3}"),
        ("layers=0,1,block=3", 'butterfly-decompose{layers="0,1" block=3}'),
        ("linears=qkv,out,fourier=all", 'butterfly-decompose{linears="qkv,out" fourier="all"}'),
        ("kind=monarch, factors=2", 'butterfly-decompose{kind="monarch" factors=2}'),
    ],
)
def test_spec_becomes_the_pass_options(spec: str, want: str) -> None:
    assert butterfly_pass_spec(spec) == want


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("blocks=3", "unknown key 'blocks'"),
        ("3", "'3' is not key=value"),
        ("block=3,block=4", "'block' is given twice"),
        ("block=three", "block must be an integer"),
        ("factors=2,3", "factors must be an integer"),
    ],
)
def test_bad_spec_is_one_clear_error(spec: str, fragment: str) -> None:
    with pytest.raises(AttncError, match=fragment):
        butterfly_pass_spec(spec)


def test_the_pass_goes_before_fuse_attention() -> None:
    passes = with_butterfly(parse_pipeline("canonicalize,raise-attention,fuse-attention"), "linears=ffn")
    assert [p.name for p in passes] == ["canonicalize", "raise-attention", "butterfly-decompose", "fuse-attention"]
    assert [p.name for p in with_butterfly(parse_pipeline("canonicalize"), "")] == ["canonicalize", "butterfly-decompose"]
    assert with_butterfly(parse_pipeline("canonicalize"), None)[0].name == "canonicalize"


def test_the_pass_is_not_added_twice() -> None:
    with pytest.raises(AttncError, match="already has butterfly-decompose"):
        with_butterfly(parse_pipeline("canonicalize,butterfly-decompose"), "block=1")


def test_compile_rejects_a_bad_spec(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, _, err = call(capsys, "compile", DECODER, "-o", tmp_path / "out.mlir", "--butterfly", "size=4")
    assert_user_error(code, err, "--butterfly", "unknown key 'size'")
    assert not (tmp_path / "out.mlir").exists()


def test_compile_reports_the_decomposition(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out.mlir"
    code, stdout, err = call(capsys, "compile", DECODER, "-o", out, "--butterfly", "linears=ffn", "--report")
    assert code == 0, err
    text = out.read_text()
    assert "sparse.butterfly_matmul %" in text and "sparse.attention %" in text
    assert "ffn" in stdout


def test_run_prints_the_error_against_the_dense_model(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, stdout, err = call(capsys, "run", DECODER, "--arch", "edge", "--heuristic-only", "--butterfly",
                             "linears=ffn", "--dense-baseline", "-o", tmp_path / "y.npz")  # fmt: skip
    assert code == 0, err + stdout
    assert "butterfly model vs dense model" in stdout
    line = next(ln for ln in stdout.splitlines() if "relative error" in ln)
    rel = float(line.split("relative error ")[1].split()[0])
    # random FFN weights are far from butterfly: the error is real, neither zero nor unbounded
    assert 0 < rel < 10
    assert "dense model:" in stdout and "faster" in stdout
    with np.load(tmp_path / "y.npz") as f:
        assert f["y"].shape == (1, 16, 64)


def test_fourier_blocks_replace_attention(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out = tmp_path / "out.mlir"
    code, _, err = call(capsys, "compile", DECODER, "-o", out, "--butterfly", "fourier=all,linears=ffn")
    assert code == 0, err
    text = out.read_text()
    assert "sparse.fourier %" in text and "sparse.attention %" not in text
