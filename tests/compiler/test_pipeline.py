"""The pass registry and the pipeline driver, exercised with small test passes
registered for the duration of each test."""

from __future__ import annotations

import io
import subprocess
import sys
from dataclasses import dataclass

import numpy as np
import pytest
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType, f64
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

import attnc.passes
from attnc.dialects.sparse import NegOp
from attnc.errors import AttncError
from attnc.interpreter import interpret
from attnc.ir import parse_module
from attnc.pipeline import DEFAULT_PIPELINE, PassFailure, parse_pipeline, pipeline_spec, run_pipeline

MODEL = """builtin.module {
  func.func @main(%x: tensor<2x3xf32> {attnc.name = "x"}) -> (tensor<2x3xf32> {attnc.name = "y"}) {
    %a = sparse.neg %x : tensor<2x3xf32> -> tensor<2x3xf32>
    %b = sparse.neg %a : tensor<2x3xf32> -> tensor<2x3xf32>
    %c = sparse.add %b, %x : tensor<2x3xf32>, tensor<2x3xf32> -> tensor<2x3xf32>
    func.return %c : tensor<2x3xf32>
  }
}
"""


class FoldDoubleNeg(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: NegOp, rewriter: PatternRewriter) -> None:
        inner = op.input.owner
        if isinstance(inner, NegOp):
            rewriter.replace(op, [], [inner.input])
            if not inner.result.uses:
                rewriter.erase(inner)


@dataclass(frozen=True)
class FoldNegPass(ModulePass):
    name = "test-fold-neg"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(GreedyRewritePatternApplier([FoldDoubleNeg()])).rewrite_module(op)


@dataclass(frozen=True)
class CountPass(ModulePass):
    """Has options, to check that they reach the pass."""

    name = "test-count"
    times: int = 1
    label: str = "x"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        pass


@dataclass(frozen=True)
class BreakTypesPass(ModulePass):
    """Leaves IR that does not verify: a neg from f32 to f64."""

    name = "test-break"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        neg = next(o for o in op.walk() if isinstance(o, NegOp))
        bad = NegOp.create(operands=list(neg.operands), result_types=[TensorType(f64, [2, 3])])
        neg.parent_block().insert_op_before(bad, neg)


@dataclass(frozen=True)
class CrashPass(ModulePass):
    name = "test-crash"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        raise ZeroDivisionError("boom")


TEST_PASSES = [FoldNegPass, CountPass, BreakTypesPass, CrashPass]


@pytest.fixture(autouse=True)
def test_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    for cls in TEST_PASSES:
        monkeypatch.setitem(attnc.passes.PASSES, cls.name, f"{__name__}:{cls.__name__}")


def neg_count(module: ModuleOp) -> int:
    return sum(isinstance(o, NegOp) for o in module.walk())


def test_registry_names_the_known_passes_and_loads_them_lazily() -> None:
    # A fresh interpreter: importing the registry must not import xdsl or any pass module.
    code = (
        "import sys, attnc.passes as p; names = sorted(p.get_all_passes());"
        "print(names, sorted(m for m in sys.modules if m.startswith(('xdsl', 'attnc.passes.'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['butterfly-decompose', 'canonicalize', 'fuse-attention', 'fuse-elementwise', 'lower-to-dataflow', 'place-route', 'raise-attention', 'tile'] []"


def test_registry_loader_returns_the_pass_class() -> None:
    assert attnc.passes.get_all_passes()["test-fold-neg"]() is FoldNegPass


def test_default_pipeline_parses() -> None:
    assert [p.name for p in parse_pipeline(DEFAULT_PIPELINE)] == ["canonicalize", "raise-attention", "fuse-attention"]


def test_parse_pipeline_options_reach_the_pass() -> None:
    (p,) = parse_pipeline("test-count{times=3 label=abc}")
    assert p == CountPass(times=3, label="abc")
    assert parse_pipeline(pipeline_spec([p])) == [p]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("test-fold-neg,no-such-pass", "unknown pass 'no-such-pass'"),
        ("test-count{times=abc}", "bad options for pass 'test-count'"),
        ("test-count{nope=1}", "bad options for pass 'test-count'"),
        ("test-fold-neg,,test-count", "bad pipeline"),
        ("test-count{", "bad pipeline"),
    ],
)
def test_parse_pipeline_errors_are_user_errors(spec: str, message: str) -> None:
    with pytest.raises(AttncError, match=message) as e:
        parse_pipeline(spec)
    assert "\n" not in str(e.value)


def test_unknown_pass_error_lists_the_known_passes() -> None:
    with pytest.raises(AttncError, match="known passes: butterfly-decompose, canonicalize, fuse-attention, fuse-elementwise, lower-to-dataflow, place-route, raise-attention, test-break"):
        parse_pipeline("nope")


def test_run_pipeline_rewrites_in_place_and_keeps_numerics() -> None:
    module = parse_module(MODEL)
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    before = interpret(module, {"x": x})["y"]
    records = run_pipeline(module, "test-fold-neg,test-count{times=2}")
    assert [r.name for r in records] == ["test-fold-neg", "test-count"]
    assert records[1].spec == "test-count{times=2}"
    assert all(r.seconds >= 0 for r in records)
    assert neg_count(module) == 0
    np.testing.assert_array_equal(interpret(module, {"x": x})["y"], before)


def test_empty_pipeline_runs_nothing() -> None:
    module = parse_module(MODEL)
    assert run_pipeline(module, "") == []
    assert neg_count(module) == 2


def test_dump_dir_gets_one_numbered_file_per_pass(tmp_path) -> None:
    module = parse_module(MODEL)
    run_pipeline(module, "test-count,test-fold-neg,test-count", dump_dir=tmp_path / "ir")
    files = sorted(p.name for p in (tmp_path / "ir").iterdir())
    assert files == ["00-input.mlir", "01-test-count.mlir", "02-test-fold-neg.mlir", "03-test-count.mlir"]
    assert neg_count(parse_module((tmp_path / "ir" / "01-test-count.mlir").read_text())) == 2
    assert neg_count(parse_module((tmp_path / "ir" / "02-test-fold-neg.mlir").read_text())) == 0


def test_print_after_prints_only_after_the_named_passes() -> None:
    module = parse_module(MODEL)
    out = io.StringIO()
    run_pipeline(module, "test-count,test-fold-neg", print_after=["test-fold-neg"], print_stream=out)
    text = out.getvalue()
    assert text.count("IR Dump After") == 1
    assert "// -----// IR Dump After test-fold-neg //----- //" in text
    assert "sparse.neg" not in text and "sparse.add" in text


def test_print_after_a_pass_not_in_the_pipeline_is_an_error() -> None:
    with pytest.raises(AttncError, match="'test-crash': it is not in the pipeline"):
        run_pipeline(parse_module(MODEL), "test-count", print_after=["test-crash"])


def test_progress_is_reported_before_each_pass() -> None:
    seen = []
    run_pipeline(parse_module(MODEL), "test-count,test-fold-neg", progress=lambda i, n, name: seen.append((i, n, name)))
    assert seen == [(1, 2, "test-count"), (2, 2, "test-fold-neg")]


def test_invalid_ir_after_a_pass_is_an_internal_error_naming_it() -> None:
    with pytest.raises(PassFailure, match="does not verify after pass 'test-break'"):
        run_pipeline(parse_module(MODEL), "test-count,test-break,test-fold-neg")
    assert not issubclass(PassFailure, AttncError)


def test_a_crashing_pass_is_named(tmp_path) -> None:
    with pytest.raises(PassFailure, match="pass 'test-crash' failed: ZeroDivisionError: boom"):
        run_pipeline(parse_module(MODEL), "test-count,test-crash", dump_dir=tmp_path)
    # the dumps up to the failure are there to debug it
    assert sorted(p.name for p in tmp_path.iterdir()) == ["00-input.mlir", "01-test-count.mlir"]


def test_registered_pass_that_cannot_be_imported(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(attnc.passes.PASSES, "test-missing", "attnc.passes.no_such_module:NoPass")
    with pytest.raises(PassFailure, match="'test-missing' is registered but cannot be loaded"):
        parse_pipeline("test-missing")
