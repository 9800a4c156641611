"""The shipped examples: regenerating them gives the checked-in bytes, `attnc interpret`
agrees with onnxruntime, and `attnc compile` raises each to one sparse.attention."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from example_script import load_make_examples

from attnc.cli import run

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
NAMES = ["bert_layer", "causal_decoder", "gqa_block", "attention23"]


def test_the_script_makes_exactly_the_listed_examples() -> None:
    assert list(load_make_examples().EXAMPLES) == NAMES


def test_regenerating_gives_byte_identical_files(tmp_path: Path) -> None:
    written = load_make_examples().write_examples(tmp_path)
    checked_in = sorted(p.name for p in EXAMPLES.iterdir() if p.suffix in (".onnx", ".npz"))
    assert sorted(p.name for p in written) == checked_in
    for p in written:
        assert p.read_bytes() == (EXAMPLES / p.name).read_bytes(), f"examples/{p.name} is stale: rerun make_examples.py"


def onnxruntime_outputs(name: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(EXAMPLES / f"{name}.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs)))


@pytest.mark.parametrize("name", NAMES)
def test_interpret_matches_onnxruntime(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.npz"
    inputs_path = EXAMPLES / f"{name}.inputs.npz"
    code = run(["interpret", str(EXAMPLES / f"{name}.onnx"), "--inputs", str(inputs_path), "-o", str(out)])
    assert code == 0, capsys.readouterr().err
    with np.load(inputs_path) as f:
        inputs = {k: f[k] for k in f.files}
    want = onnxruntime_outputs(name, inputs)
    with np.load(out) as got:
        assert sorted(got.files) == sorted(want)
        for key, value in want.items():
            assert got[key].dtype == value.dtype and got[key].shape == value.shape
            np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-5, err_msg=f"{name}: output {key}")


@pytest.mark.parametrize("name", NAMES)
def test_compile_raises_one_attention(name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.mlir"
    code = run(["compile", str(EXAMPLES / f"{name}.onnx"), "-o", str(out), "--dump-ir-after-all", str(tmp_path / "ir")])
    assert code == 0, capsys.readouterr().err
    text = out.read_text()
    assert len(re.findall(r"= sparse\.attention ", text)) == 1
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == [
        "00-input.mlir",
        "01-canonicalize.mlir",
        "02-raise-attention.mlir",
        "03-fuse-attention.mlir",
    ]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    command = "pytest -n 2"
    assert f"pip install -e '.[test]' && {command}" in readme
    assert re.search(rf"^\s*{re.escape(command)}\b", ci, re.MULTILINE), ".ci/run must run the README's test command"


#: the examples tiny's 4 KiB compute tiles cannot hold, which `attnc compile` refuses naming the kernels and bytes
#: (docs/simulator.md, "What the simulator refuses"): bert_layer's and causal_decoder's kernels, each holding a
#: [16, 64] f32 activation or a head's outputs whole next to its weight's tokens, need more than the compute tiles have
TINY_REFUSED = {"bert_layer": "cannot map onto tiny: compute kernels need 20.25 KiB of SRAM together, the 4 compute "
                              "tiles have 16 KiB",
                "causal_decoder": "cannot map onto tiny: kernel 'matmul5' needs 5.22266 KiB of SRAM, the largest "
                                  "compute tile has 4 KiB"}  # fmt: skip
SIMULATED = [(arch, name) for arch in ("tiny", "edge", "cloud") for name in NAMES
             if not (arch == "tiny" and name in TINY_REFUSED)]  # fmt: skip


@pytest.mark.parametrize("name", sorted(TINY_REFUSED))
def test_tiny_refuses_the_examples_it_cannot_hold(name: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    code = run(["compile", str(EXAMPLES / f"{name}.onnx"), "-o", str(tmp_path / "out.bit"), "--arch", "tiny",
                "--heuristic-only"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("attnc: error: ") and TINY_REFUSED[name] in err, err
    assert not (tmp_path / "out.bit").exists()


@pytest.mark.parametrize(("arch", "name"), SIMULATED)
def test_examples_hold_no_more_than_their_tiles(arch: str, name: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    """`attnc compile` then the timing model: no tile's input buffers ever hold more than its SRAM (the README
    example is bert_layer on edge), and no other warning."""
    from attnc.backend.bitstream import read
    from attnc.simulator.timing import simulate

    bit = tmp_path / "out.bit"
    code = run(["compile", str(EXAMPLES / f"{name}.onnx"), "-o", str(bit), "--arch", arch, "--heuristic-only"])
    assert code == 0, capsys.readouterr().err
    stats = simulate(read(str(bit)))
    assert stats.warnings == []
    assert all(t.peak_buffer_bytes <= t.sram_bytes for t in stats.tiles)
