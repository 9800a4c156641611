"""The attnc command line: option parsing, errors, and the compile/interpret/opt
commands on small .mlir models (the ONNX examples are in tests/examples)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.passes import ModulePass

from attnc import __version__
from attnc.cli import check_arch, parse_input_shapes
from cli_helpers import assert_user_error, call
from attnc.errors import AttncError
from attnc.passes import PASSES

MODEL = """builtin.module {
  func.func @main(%x: tensor<2x3xf32> {attnc.name = "x"}, %k: tensor<2x3xi1> {attnc.name = "keep"}) -> (tensor<2x3xf32> {attnc.name = "y"}) {
    %a = sparse.neg %x : tensor<2x3xf32> -> tensor<2x3xf32>
    %b = sparse.where %k, %a, %x : tensor<2x3xi1>, tensor<2x3xf32>, tensor<2x3xf32> -> tensor<2x3xf32>
    func.return %b : tensor<2x3xf32>
  }
}
"""


@dataclass(frozen=True)
class NopPass(ModulePass):
    name = "test-nop"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pass


@dataclass(frozen=True)
class CrashPass(ModulePass):
    name = "test-crash"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        raise ZeroDivisionError("boom")


@pytest.fixture(autouse=True)
def test_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(PASSES, "test-nop", f"{__name__}:NopPass")
    monkeypatch.setitem(PASSES, "test-crash", f"{__name__}:CrashPass")
    monkeypatch.delenv("ATTNC_DEBUG", raising=False)


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.mlir"
    path.write_text(MODEL)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "in.npz"
    np.savez(path, x=np.arange(6, dtype=np.float32).reshape(2, 3), keep=np.eye(2, 3, dtype=bool))
    return path


def test_help_does_not_import_heavy_modules() -> None:
    code = (
        "import sys; from attnc.cli import run; assert run(['--help']) == 0;"
        "heavy = sorted({m.split('.')[0] for m in sys.modules} & {'xdsl', 'numpy', 'onnx', 'torch', 'onnxruntime'});"
        "print('HEAVY', heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "Usage: attnc" in out and "HEAVY []" in out


def attnc_script() -> str:
    """The console script of the running interpreter's environment (PATH may not have it)."""
    script = Path(sys.executable).parent / "attnc"
    return str(script) if script.exists() else "attnc"


def test_console_script_version() -> None:
    out = subprocess.run([attnc_script(), "--version"], capture_output=True, text=True, check=True).stdout
    assert out.strip() == f"attnc {__version__}"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "--help")
    assert code == 0
    assert all(c in out for c in ("compile", "interpret", "opt"))


def test_bare_attnc_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = call(capsys)
    assert (code, err) == (0, "") and "Commands:" in out


def test_unknown_command(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = call(capsys, "frobnicate")
    assert_user_error(code, err, "No such command 'frobnicate'")


def test_compile_help_names_both_outputs(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "compile", "--help")
    text = " ".join(out.split())
    assert code == 0 and "-o OUT.bit" in text and "OUT.mlir" in text and "--time-limit" in text


def test_opt_help_lists_passes_and_dialects(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = call(capsys, "opt", "--help")
    assert code == 0
    for name in ("canonicalize", "raise-attention", "test-nop", "sparse", "func", "builtin"):
        assert name in out
    assert "CanonicalizePass()" not in out  # a description, not the dataclass signature


# --- option parsing ---------------------------------------------------------


def test_parse_input_shapes() -> None:
    assert parse_input_shapes(["input_ids=1,128", "a=b=4"]) == {"input_ids": [1, 128], "a=b": [4]}
    assert parse_input_shapes([]) == {}


@pytest.mark.parametrize(
    "value, message",
    [
        ("x", "expected NAME=D0,D1"),
        ("=1,2", "expected NAME=D0,D1"),
        ("x=1,a", "must be integers"),
        ("x=", "must be integers"),
        ("x=1,,2", "must be integers"),
        ("x=1,0", "must be positive"),
    ],
)
def test_bad_input_shape_names_the_option(value: str, message: str) -> None:
    with pytest.raises(AttncError, match=message) as e:
        parse_input_shapes([value])
    assert str(e.value).startswith(f"--input-shape '{value}'")


def test_input_shape_given_twice() -> None:
    with pytest.raises(AttncError, match="--input-shape: 'x' is given twice"):
        parse_input_shapes(["x=1", "x=2"])


def test_check_arch(tmp_path: Path) -> None:
    assert check_arch(None) is None
    for ok in ("tiny", "edge", "cloud"):
        assert check_arch(ok).name == ok
    from attnc.arch import preset_text

    (tmp_path / "a.yaml").write_text(preset_text("tiny").replace("name: tiny", "name: mine"))
    assert check_arch(str(tmp_path / "a.yaml")).name == "mine"
    (tmp_path / "b.yaml").write_text("grid: [2, 2]\n")
    with pytest.raises(AttncError, match=r"--arch .*b\.yaml:1: top level: missing key 'version'"):
        check_arch(str(tmp_path / "b.yaml"))
    with pytest.raises(AttncError, match="^--arch 'huge' is neither an architecture preset"):
        check_arch("huge")


# --- compile ----------------------------------------------------------------


def test_compile_writes_the_final_ir(capsys, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.mlir"
    code, stdout, err = call(capsys, "compile", model, "-o", out, "-p", "test-nop", "--arch", "edge")
    assert (code, stdout) == (0, ""), err
    assert "sparse.where" in out.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_compile_dumps_and_prints_ir(capsys, model: Path, tmp_path: Path) -> None:
    code, _, err = call(
        capsys, "compile", model, "-o", tmp_path / "o.mlir", "-p", "test-nop,test-nop",
        "--dump-ir-after-all", tmp_path / "ir", "--print-ir-after", "test-nop",
    )  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["00-input.mlir", "01-test-nop.mlir", "02-test-nop.mlir"]
    assert err.count("IR Dump After test-nop") == 2


def test_compile_report(capsys, model: Path, tmp_path: Path) -> None:
    code, out, err = call(capsys, "compile", model, "-o", tmp_path / "o.mlir", "-p", "test-nop", "--report")
    assert code == 0, err
    assert "sparse.neg" in out and "sparse.where" in out
    assert "sparse.attention ops: 0" in out
    assert "test-nop" in out and "total" in out


def test_compile_report_describes_attention_ops(capsys, tmp_path: Path) -> None:
    path = tmp_path / "attn.mlir"
    t, m = "tensor<1x4x8x16xf32>", "tensor<1x1x8x8xi1>"
    path.write_text(
        f"""builtin.module {{
  func.func @main(%q: {t}, %k: {t}, %v: {t}, %m: {m}) -> {t} {{
    %o = sparse.attention %q, %k, %v mask %m : {m} {{scale = 0.25 : f64, heads = 4 : i64, kv_heads = 4 : i64, causal, causal_offset = 0 : i64, softcap = 0.0 : f64}} : {t}, {t}, {t} -> {t}
    func.return %o : {t}
  }}
}}
"""
    )
    code, out, err = call(capsys, "compile", path, "-o", tmp_path / "o.mlir", "-p", "", "--report")
    assert code == 0, err
    assert "sparse.attention ops: 1" in out
    assert "q 1x4x8x16xf32" in out and "heads 4" in out and "causal yes" in out and "mask 1x1x8x8xi1" in out


@pytest.mark.parametrize(
    "args, fragments",
    [
        (["-o", "{tmp}/out.txt"], ["-o/--output", "out.txt", "*.bit", "*.mlir"]),
        (["-o", "{tmp}/o.bit", "--time-limit", "0"], ["--time-limit 0"]),
        (["-o", "{tmp}/o.mlir", "--arch", "huge"], ["--arch 'huge'"]),
        (["-o", "{tmp}/o.mlir", "-p", "nope"], ["-p/--pipeline", "unknown pass 'nope'", "test-nop"]),
        (["-o", "{tmp}/o.mlir", "-p", "test-nop{x=1}"], ["-p/--pipeline", "bad options for pass 'test-nop'"]),
        (["-o", "{tmp}/o.mlir", "-p", "test-nop", "--print-ir-after", "canonicalize"], ["--print-ir-after 'canonicalize'"]),
        (["-o", "{tmp}/o.mlir", "--input-shape", "x=1,2"], ["--input-shape applies only to .onnx"]),
        (["-o", "{tmp}/o.mlir", "--input-shape", "x"], ["--input-shape 'x'"]),
        (["-o", "{tmp}/nodir/o.mlir", "-p", "test-nop"], ["-o/--output", "does not exist"]),
        ([], ["Missing option '-o'"]),
        (["-o", "{tmp}/o.mlir", "--bogus"], ["No such option", "--bogus", "attnc compile --help"]),
    ],
)
def test_compile_option_errors(capsys, model: Path, tmp_path: Path, args: list[str], fragments: list[str]) -> None:
    code, _, err = call(capsys, "compile", model, *[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert_user_error(code, err, *fragments)
    assert not (tmp_path / "o.mlir").exists()


def test_compile_missing_model(capsys, tmp_path: Path) -> None:
    code, _, err = call(capsys, "compile", tmp_path / "nope.onnx", "-o", tmp_path / "o.mlir")
    assert_user_error(code, err, "nope.onnx", "does not exist")


def test_compile_unknown_model_format(capsys, tmp_path: Path) -> None:
    (tmp_path / "m.txt").write_text("hello")
    code, _, err = call(capsys, "compile", tmp_path / "m.txt", "-o", tmp_path / "o.mlir", "-p", "")
    assert_user_error(code, err, "m.txt", "unknown model format '.txt'")


def test_compile_bad_mlir_names_the_file(capsys, tmp_path: Path) -> None:
    (tmp_path / "bad.mlir").write_text("builtin.module { %x = sparse.nope }\n")
    code, _, err = call(capsys, "compile", tmp_path / "bad.mlir", "-o", tmp_path / "o.mlir", "-p", "")
    assert_user_error(code, err, "bad.mlir:1:", "sparse.nope is not registered")
    assert not (tmp_path / "o.mlir").exists()


def test_internal_error_leaves_no_output(capsys, model: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.mlir"
    code, _, err = call(capsys, "compile", model, "-o", out, "-p", "test-crash")
    assert code == 1
    assert err.startswith("attnc: internal error: ") and "test-crash" in err and "--debug" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.mlir"]


def test_debug_shows_the_traceback(capsys, model: Path, tmp_path: Path) -> None:
    code, _, err = call(capsys, "--debug", "compile", model, "-o", tmp_path / "o.mlir", "-p", "test-crash")
    assert code == 1 and "Traceback" in err and "ZeroDivisionError" in err


def test_attnc_debug_env_shows_the_traceback_of_user_errors(capsys, model, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("ATTNC_DEBUG", "1")
    code, _, err = call(capsys, "compile", model, "-o", tmp_path / "o.mlir", "-p", "nope")
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("attnc: error: ")


def test_user_error_through_the_console_script(model: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "ATTNC_DEBUG"}
    r = subprocess.run([attnc_script(), "compile", str(model), "-o", str(tmp_path / "o.txt")], capture_output=True, text=True, env=env)
    assert r.returncode == 2 and r.stderr.startswith("attnc: error: -o/--output") and "Traceback" not in r.stderr


# --- interpret --------------------------------------------------------------


def test_interpret_saves_outputs_by_name(capsys, model: Path, inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.npz"
    code, _, err = call(capsys, "interpret", model, "--inputs", inputs, "-o", out, "-p", "test-nop")
    assert code == 0, err
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    with np.load(out) as got:
        assert got.files == ["y"]
        np.testing.assert_array_equal(got["y"], np.where(np.eye(2, 3, dtype=bool), -x, x))


def test_interpret_without_inputs_uses_seeded_random_inputs(capsys, model: Path, tmp_path: Path) -> None:
    results = []
    for name in ("a.npz", "b.npz"):
        code, _, err = call(capsys, "interpret", model, "-o", tmp_path / name, "-p", "", "--seed", "7")
        assert code == 0 and "random inputs (seed 7)" in err and "x [2, 3] float32" in err and "keep [2, 3] bool" in err
        with np.load(tmp_path / name) as f:
            results.append(f["y"])
    np.testing.assert_array_equal(*results)


@pytest.mark.parametrize(
    "arrays, fragments",
    [
        ({"x": np.zeros((2, 3), np.float32)}, ["missing input 'keep'"]),
        ({"x": np.zeros((2, 3), np.float32), "keep": np.ones((2, 3), bool), "z": np.zeros(1)}, ["unknown input(s) 'z'"]),
        ({"x": np.zeros((3, 2), np.float32), "keep": np.ones((2, 3), bool)}, ["input 'x' has shape [3, 2]"]),
        ({"x": np.zeros((2, 3), np.float64), "keep": np.ones((2, 3), bool)}, ["input 'x' has dtype float64"]),
    ],
)
def test_interpret_input_errors_name_the_key(capsys, model: Path, tmp_path: Path, arrays, fragments) -> None:
    np.savez(tmp_path / "in.npz", **arrays)
    code, _, err = call(capsys, "interpret", model, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz", "-p", "")
    assert_user_error(code, err, "--inputs", "in.npz", *fragments)
    assert not (tmp_path / "o.npz").exists()


def test_interpret_rejects_a_file_that_is_not_npz(capsys, model: Path, tmp_path: Path) -> None:
    (tmp_path / "in.npz").write_text("not a zip")
    code, _, err = call(capsys, "interpret", model, "--inputs", tmp_path / "in.npz", "-o", tmp_path / "o.npz", "-p", "")
    assert_user_error(code, err, "--inputs", "cannot read as .npz")


# --- opt --------------------------------------------------------------------


def test_opt_prints_the_ir(capsys, model: Path) -> None:
    code, out, err = call(capsys, "opt", model, "-p", "test-nop")
    assert code == 0, err
    assert "sparse.where" in out and 'attnc.name = "keep"' in out


def test_opt_reads_stdin_and_writes_a_file(capsys, monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(MODEL))
    code, out, err = call(capsys, "opt", "-", "-o", tmp_path / "o.mlir")
    assert (code, out) == (0, ""), err
    assert "sparse.neg" in (tmp_path / "o.mlir").read_text()


def test_opt_parse_error_names_stdin(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO("builtin.module { oops"))
    code, _, err = call(capsys, "opt")
    assert code == 2 and err.startswith("attnc: error: <stdin>")


def test_opt_unknown_pass(capsys, model: Path) -> None:
    code, _, err = call(capsys, "opt", model, "-p", "test-nop,bogus")
    assert_user_error(code, err, "-p/--pipeline", "unknown pass 'bogus'")
