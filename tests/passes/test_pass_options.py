"""Pass options are checked when a pass is constructed, so a pipeline string with a bad option fails when
it is parsed -- before any model is read -- with one clean line naming the pass and the option."""

from __future__ import annotations

import pytest

from attnc.arch import resolve_arch
from attnc.cli import run
from attnc.errors import AttncError
from attnc.passes.tile import TilePass
from attnc.pipeline import parse_pipeline, pipeline_spec


@pytest.mark.parametrize(
    "spec, fragments",
    [
        ("fuse-attention{mode=bogus}", ["fuse-attention", "mode", "'bogus'"]),
        ("tile{members=-5}", ["tile", "members", "-5"]),
        ("tile{key-block=-1}", ["tile", "key-block", "-1"]),
        ("tile{groups=-1}", ["tile", "groups"]),
        ("tile{row-block=-3}", ["tile", "row-block"]),
        ("tile{gemm-parts=-2}", ["tile", "gemm-parts"]),
        ("tile{mode=bogus}", ["tile", "mode"]),
        ("tile{arch=nosuch}", ["tile", "'nosuch'", "preset"]),
        ('lower-to-dataflow{arch="nosuch.yaml"}', ["lower-to-dataflow", "'nosuch.yaml'"]),
        ("butterfly-decompose{kind=bogus}", ["butterfly-decompose", "kind"]),
        ("butterfly-decompose{block=-1}", ["butterfly-decompose", "block"]),
    ],
)
def test_bad_options_fail_when_the_pipeline_is_parsed(spec: str, fragments: list[str]) -> None:
    with pytest.raises(AttncError) as e:
        parse_pipeline(spec)
    msg = str(e.value)
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg


def test_untrusted_option_values_are_escaped() -> None:
    with pytest.raises(AttncError) as e:
        parse_pipeline('fuse-attention{mode="a\u202eb"}')
    assert "\u202e" not in str(e.value) and "\\u202e" in str(e.value)


@pytest.mark.parametrize("spec", ["tile{members=4 key-block=128 gemm-parts=-1}", "tile{gemm-parts=1 arch=tiny}",
                                  "fuse-attention{mode=per-head}", "butterfly-decompose{kind=monarch}"])  # fmt: skip
def test_good_options_still_parse(spec: str) -> None:
    assert len(parse_pipeline(spec)) == 1


def test_an_arch_file_is_accepted(tmp_path) -> None:
    from attnc.arch import preset_text

    path = tmp_path / "mine.yaml"
    path.write_text(preset_text("tiny"))
    (p,) = parse_pipeline(f'tile{{arch="{path}"}}')
    assert p.target().origin == str(path)


def test_a_loaded_arch_prints_back_as_its_name() -> None:
    import dataclasses

    assert 'arch="tiny"' in pipeline_spec([TilePass(arch=resolve_arch("tiny"))])
    # an array parsed from text (no origin) prints its name, which names no file: still no error
    unnamed = dataclasses.replace(resolve_arch("tiny"), origin=None)
    assert pipeline_spec([TilePass(arch=unnamed)]).startswith("tile")


@pytest.mark.parametrize("spec", ["fuse-attention{mode=bogus}", "tile{members=-5}", "tile{arch=nosuch}"])
def test_the_cli_rejects_them_before_reading_the_model(tmp_path, capsys, spec: str) -> None:
    # the model is no ONNX file: the pipeline error must come first
    model = tmp_path / "garbage.onnx"
    model.write_bytes(b"\xff" * 64)
    code = run(["compile", str(model), "-o", str(tmp_path / "o.mlir"), "-p", spec])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("attnc: error: ") and err.count("\n") == 1, err
    assert "garbage.onnx" not in err and spec.split("{")[0] in err, err
    assert not (tmp_path / "o.mlir").exists()
