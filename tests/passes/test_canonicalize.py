"""canonicalize: one before/after case per pattern, each checked with the reference
interpreter on random inputs."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from xdsl.dialects.builtin import ModuleOp

from attnc.interpreter import interpret
from attnc.ir import main_func, make_context, parse_module, print_module
from attnc.passes import canonicalize as canon
from attnc.passes.canonicalize import CanonicalizePass


def ops_of(module: ModuleOp) -> list[str]:
    return [op.name for op in main_func(module).body.ops]


def run(text: str) -> tuple[ModuleOp, list[str]]:
    """Canonicalize ``text`` (one @main over f32 arguments) and check the outputs match."""
    module = parse_module(text)
    rng = np.random.default_rng(0)
    fn = main_func(module)
    inputs = {f"arg{i}": rng.standard_normal(tuple(t.get_shape())).astype(np.float32) for i, t in enumerate(fn.function_type.inputs.data)}
    before = interpret(module, inputs)
    CanonicalizePass().apply(make_context(), module)
    module.verify()
    after = interpret(module, inputs)
    for key, want in before.items():
        np.testing.assert_array_equal(after[key], want)
        assert after[key].dtype == want.dtype
    return module, ops_of(module)


def wrap(body: str, args: str = "%x: tensor<2x8xf32>", result: str = "tensor<2x8xf32>") -> str:
    return f"builtin.module {{\n  func.func @main({args}) -> {result} {{\n{body}\n  }}\n}}\n"


def test_constant_operands_fold() -> None:
    _, ops = run(
        wrap(
            """
    %a = sparse.constant {value = dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>} : tensor<2x2xf32>
    %e = sparse.exp %a : tensor<2x2xf32> -> tensor<2x2xf32>
    %t = sparse.transpose %e {permutation = array<i64: 1, 0>} : tensor<2x2xf32> -> tensor<2x2xf32>
    %m = sparse.matmul %t, %x : tensor<2x2xf32>, tensor<2x8xf32> -> tensor<2x8xf32>
    func.return %m : tensor<2x8xf32>"""
        )
    )
    assert ops == ["sparse.constant", "sparse.matmul", "func.return"]


def test_shape_subgraph_of_integers_and_predicates_folds() -> None:
    # the iota/compare/where chain a causal mask is built from
    module, ops = run(
        wrap(
            """
    %i = sparse.constant {value = dense<[0, 1]> : tensor<2xi64>} : tensor<2xi64>
    %r = sparse.reshape %i : tensor<2xi64> -> tensor<2x1xi64>
    %c = sparse.cmp %i, %r {predicate = "le"} : tensor<2xi64>, tensor<2x1xi64> -> tensor<2x2xi1>
    %z = sparse.constant {value = dense<0.0> : tensor<f32>} : tensor<f32>
    %n = sparse.constant {value = dense<-1.0e+04> : tensor<f32>} : tensor<f32>
    %w = sparse.where %c, %z, %n : tensor<2x2xi1>, tensor<f32>, tensor<f32> -> tensor<2x2xf32>
    %m = sparse.matmul %w, %x : tensor<2x2xf32>, tensor<2x8xf32> -> tensor<2x8xf32>
    func.return %m : tensor<2x8xf32>"""
        )
    )
    assert ops == ["sparse.constant", "sparse.matmul", "func.return"]
    from attnc.dialects.values import to_numpy

    (const,) = [op for op in main_func(module).body.ops if op.name == "sparse.constant"]
    np.testing.assert_array_equal(to_numpy(const.value), [[0, -1e4], [0, 0]])


def test_large_results_are_not_folded_except_data_movement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(canon, "FOLD_LIMIT", 3)
    _, ops = run(
        wrap(
            """
    %a = sparse.constant {value = dense<[[1.0, 2.0], [3.0, 4.0]]> : tensor<2x2xf32>} : tensor<2x2xf32>
    %t = sparse.transpose %a {permutation = array<i64: 1, 0>} : tensor<2x2xf32> -> tensor<2x2xf32>
    %e = sparse.exp %t : tensor<2x2xf32> -> tensor<2x2xf32>
    %m = sparse.matmul %e, %x : tensor<2x2xf32>, tensor<2x8xf32> -> tensor<2x8xf32>
    func.return %m : tensor<2x8xf32>"""
        )
    )
    assert ops == ["sparse.constant", "sparse.exp", "sparse.matmul", "func.return"]


def test_unfoldable_constant_op_is_left_to_run_time() -> None:
    # an out-of-range gather index is an error when it runs, not when it compiles
    text = wrap(
        """
    %a = sparse.constant {value = dense<[1.0, 2.0]> : tensor<2xf32>} : tensor<2xf32>
    %i = sparse.constant {value = dense<[5]> : tensor<1xi64>} : tensor<1xi64>
    %g = sparse.gather %a, %i {axis = 0 : i64} : tensor<2xf32>, tensor<1xi64> -> tensor<1xf32>
    func.return %g : tensor<1xf32>""",
        args="",
        result="tensor<1xf32>",
    )
    module = parse_module(text)
    CanonicalizePass().apply(make_context(), module)
    assert "sparse.gather" in ops_of(module)


IDENTITIES = {
    "reshape": "%y = sparse.reshape %x : tensor<2x8xf32> -> tensor<2x8xf32>",
    "broadcast": "%y = sparse.broadcast %x : tensor<2x8xf32> -> tensor<2x8xf32>",
    "cast": "%y = sparse.cast %x : tensor<2x8xf32> -> tensor<2x8xf32>",
    "reduce": '%y = sparse.reduce %x {kind = "sum", axes = array<i64>} : tensor<2x8xf32> -> tensor<2x8xf32>',
    "transpose": "%y = sparse.transpose %x {permutation = array<i64: 0, 1>} : tensor<2x8xf32> -> tensor<2x8xf32>",
    "slice": "%y = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 2, 8>, steps = array<i64: 1, 1>} : tensor<2x8xf32> -> tensor<2x8xf32>",
    "mul-by-one": "%c = sparse.constant {value = dense<1.0> : tensor<8xf32>} : tensor<8xf32>\n"
    "    %y = sparse.mul %c, %x : tensor<8xf32>, tensor<2x8xf32> -> tensor<2x8xf32>",
    "div-by-one": "%c = sparse.constant {value = dense<1.0> : tensor<f32>} : tensor<f32>\n"
    "    %y = sparse.div %x, %c : tensor<2x8xf32>, tensor<f32> -> tensor<2x8xf32>",
    "add-zero": "%c = sparse.constant {value = dense<0.0> : tensor<1x8xf32>} : tensor<1x8xf32>\n"
    "    %y = sparse.add %x, %c : tensor<2x8xf32>, tensor<1x8xf32> -> tensor<2x8xf32>",
    "sub-zero": "%c = sparse.constant {value = dense<0.0> : tensor<f32>} : tensor<f32>\n"
    "    %y = sparse.sub %x, %c : tensor<2x8xf32>, tensor<f32> -> tensor<2x8xf32>",
}


@pytest.mark.parametrize("name", IDENTITIES)
def test_identity_ops_fold_away(name: str) -> None:
    _, ops = run(wrap(f"    {IDENTITIES[name]}\n    func.return %y : tensor<2x8xf32>"))
    assert ops == ["func.return"]


NOT_IDENTITIES = {
    "slice": "%y = sparse.slice %x {starts = array<i64: 0, 1>, ends = array<i64: 2, 8>, steps = array<i64: 1, 1>} : tensor<2x8xf32> -> tensor<2x7xf32>",
    "mul-by-two": "%c = sparse.constant {value = dense<2.0> : tensor<f32>} : tensor<f32>\n"
    "    %y = sparse.mul %x, %c : tensor<2x8xf32>, tensor<f32> -> tensor<2x8xf32>",
    # x is broadcast by the zero: the add is not an identity
    "broadcasting-add-zero": "%c = sparse.constant {value = dense<0.0> : tensor<3x2x8xf32>} : tensor<3x2x8xf32>\n"
    "    %y = sparse.add %x, %c : tensor<2x8xf32>, tensor<3x2x8xf32> -> tensor<3x2x8xf32>",
    "one-minus-x": "%c = sparse.constant {value = dense<0.0> : tensor<f32>} : tensor<f32>\n"
    "    %y = sparse.sub %c, %x : tensor<f32>, tensor<2x8xf32> -> tensor<2x8xf32>",
}


@pytest.mark.parametrize("name", NOT_IDENTITIES)
def test_non_identities_stay(name: str) -> None:
    body = NOT_IDENTITIES[name]
    result = body.rsplit("-> ", 1)[1]
    _, ops = run(wrap(f"    {body}\n    func.return %y : {result}", result=result))
    assert len(ops) >= 2 and ops[-2] != "sparse.constant"


def test_reshape_of_reshape_merges() -> None:
    _, ops = run(
        wrap(
            """
    %a = sparse.reshape %x : tensor<2x8xf32> -> tensor<16xf32>
    %b = sparse.reshape %a : tensor<16xf32> -> tensor<4x4xf32>
    func.return %b : tensor<4x4xf32>""",
            result="tensor<4x4xf32>",
        )
    )
    assert ops == ["sparse.reshape", "func.return"]


def test_transpose_of_transpose_merges() -> None:
    module, ops = run(
        wrap(
            """
    %a = sparse.transpose %x {permutation = array<i64: 1, 2, 0>} : tensor<2x3x4xf32> -> tensor<3x4x2xf32>
    %b = sparse.transpose %a {permutation = array<i64: 0, 2, 1>} : tensor<3x4x2xf32> -> tensor<3x2x4xf32>
    func.return %b : tensor<3x2x4xf32>""",
            args="%x: tensor<2x3x4xf32>",
            result="tensor<3x2x4xf32>",
        )
    )
    assert ops == ["sparse.transpose", "func.return"]


def test_inverse_transposes_cancel() -> None:
    _, ops = run(
        wrap(
            """
    %a = sparse.transpose %x {permutation = array<i64: 1, 0>} : tensor<2x8xf32> -> tensor<8x2xf32>
    %b = sparse.transpose %a {permutation = array<i64: 1, 0>} : tensor<8x2xf32> -> tensor<2x8xf32>
    func.return %b : tensor<2x8xf32>"""
        )
    )
    assert ops == ["func.return"]


def test_double_negation_folds() -> None:
    text = wrap(
        """
    %a = sparse.not %x : tensor<4xi1> -> tensor<4xi1>
    %b = sparse.not %a : tensor<4xi1> -> tensor<4xi1>
    func.return %b : tensor<4xi1>""",
        args="%x: tensor<4xi1>",
        result="tensor<4xi1>",
    )
    module = parse_module(text)
    CanonicalizePass().apply(make_context(), module)
    assert ops_of(module) == ["func.return"]


def test_dead_pure_ops_are_removed() -> None:
    _, ops = run(
        wrap(
            """
    %a = sparse.exp %x : tensor<2x8xf32> -> tensor<2x8xf32>
    %b = sparse.tanh %a : tensor<2x8xf32> -> tensor<2x8xf32>
    %c = sparse.neg %x : tensor<2x8xf32> -> tensor<2x8xf32>
    func.return %c : tensor<2x8xf32>"""
        )
    )
    assert ops == ["sparse.neg", "func.return"]


def test_identical_constants_and_ops_are_deduplicated() -> None:
    _, ops = run(
        wrap(
            """
    %a = sparse.constant {value = dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]> : tensor<8xf32>} : tensor<8xf32>
    %b = sparse.constant {value = dense<[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]> : tensor<8xf32>} : tensor<8xf32>
    %p = sparse.mul %x, %a : tensor<2x8xf32>, tensor<8xf32> -> tensor<2x8xf32>
    %q = sparse.mul %x, %b : tensor<2x8xf32>, tensor<8xf32> -> tensor<2x8xf32>
    %s = sparse.add %p, %q : tensor<2x8xf32>, tensor<2x8xf32> -> tensor<2x8xf32>
    func.return %s : tensor<2x8xf32>"""
        )
    )
    assert Counter(ops) == Counter({"sparse.constant": 1, "sparse.mul": 1, "sparse.add": 1, "func.return": 1})


def test_encoded_constant_folds_through_convert() -> None:
    _, ops = run(
        wrap(
            """
    %a = sparse.constant {value = dense<[[1.0, -3.0, 2.0, 0.5], [4.0, 1.0, -1.0, 2.0]]> : tensor<2x4xf32>} : tensor<2x4xf32>
    %n = sparse.convert %a : tensor<2x4xf32> -> tensor<2x4xf32, #sparse.nm<n = 2, m = 4, axis = 1>>
    %m = sparse.matmul %n, %y : tensor<2x4xf32, #sparse.nm<n = 2, m = 4, axis = 1>>, tensor<4x8xf32> -> tensor<2x8xf32>
    func.return %m : tensor<2x8xf32>""",
            args="%y: tensor<4x8xf32>",
        )
    )
    assert ops == ["sparse.constant", "sparse.matmul", "func.return"]


def test_pass_runs_from_a_pipeline_spec() -> None:
    from attnc.pipeline import run_pipeline

    module = parse_module(wrap("    %y = sparse.reshape %x : tensor<2x8xf32> -> tensor<2x8xf32>\n    func.return %y : tensor<2x8xf32>"))
    records = run_pipeline(module, "canonicalize")
    assert [r.name for r in records] == ["canonicalize"] and ops_of(module) == ["func.return"]
    assert "sparse.reshape" not in print_module(module)


def test_transpose_through_a_merged_view_moves_before_the_reshape() -> None:
    # dynamo transposes k (1, 4, 8, 2) through a (4, 8, 2) view; the transposes then meet
    _, ops = run(
        wrap(
            """
    %a = sparse.reshape %x : tensor<1x4x8x2xf32> -> tensor<4x8x2xf32>
    %b = sparse.transpose %a {permutation = array<i64: 0, 2, 1>} : tensor<4x8x2xf32> -> tensor<4x2x8xf32>
    %c = sparse.reshape %b : tensor<4x2x8xf32> -> tensor<1x4x2x8xf32>
    %d = sparse.transpose %c {permutation = array<i64: 0, 1, 3, 2>} : tensor<1x4x2x8xf32> -> tensor<1x4x8x2xf32>
    func.return %d : tensor<1x4x8x2xf32>""",
            args="%x: tensor<1x4x8x2xf32>",
            result="tensor<1x4x8x2xf32>",
        )
    )
    assert ops == ["func.return"]


@pytest.mark.parametrize(
    "src, dst, groups",
    [
        ((1, 4, 8, 2), (4, 8, 2), [[0, 1], [2], [3]]),
        ((2, 3, 4), (6, 4), [[0, 1], [2]]),
        ((2, 3, 1), (6,), [[0, 1, 2]]),
        ((6, 4), (2, 3, 4), None),  # a split
        ((2, 3, 4), (3, 8), None),  # not along dim boundaries
    ],
)
def test_merge_groups(src, dst, groups) -> None:
    assert canon.merge_groups(src, dst) == groups
