"""Data movement over a concatenation of parts moves onto the parts: the numbers stay, and a reader reaches
only the parts it needs."""

import numpy as np
import pytest

from attnc.dialects import sparse as sp
from attnc.interpreter import interpret
from attnc.ir import main_func, parse_module
from attnc.passes.concat_folds import fold_concats, reshaped_pieces

# a [4, 12] value made of three column parts, read as heads of width 4: [4, 3, 4] -> [3, 4, 4], head 1 sliced
HEADS = """
builtin.module {
  func.func @main(%x: tensor<4x12xf32>) -> (tensor<1x4x4xf32>) {
    %a = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 4, 4>, steps = array<i64: 1, 1>} : tensor<4x12xf32> -> tensor<4x4xf32>
    %b = sparse.slice %x {starts = array<i64: 0, 4>, ends = array<i64: 4, 8>, steps = array<i64: 1, 1>} : tensor<4x12xf32> -> tensor<4x4xf32>
    %c = sparse.slice %x {starts = array<i64: 0, 8>, ends = array<i64: 4, 12>, steps = array<i64: 1, 1>} : tensor<4x12xf32> -> tensor<4x4xf32>
    %ea = sparse.exp %a : tensor<4x4xf32> -> tensor<4x4xf32>
    %eb = sparse.exp %b : tensor<4x4xf32> -> tensor<4x4xf32>
    %ec = sparse.exp %c : tensor<4x4xf32> -> tensor<4x4xf32>
    %cat = sparse.concat %ea, %eb, %ec {axis = 1 : i64} : (tensor<4x4xf32>, tensor<4x4xf32>, tensor<4x4xf32>) -> tensor<4x12xf32>
    %r = sparse.reshape %cat : tensor<4x12xf32> -> tensor<4x3x4xf32>
    %t = sparse.transpose %r {permutation = array<i64: 1, 0, 2>} : tensor<4x3x4xf32> -> tensor<3x4x4xf32>
    %h = sparse.slice %t {starts = array<i64: 1, 0, 0>, ends = array<i64: 2, 4, 4>, steps = array<i64: 1, 1, 1>} : tensor<3x4x4xf32> -> tensor<1x4x4xf32>
    func.return %h : tensor<1x4x4xf32>
  }
}
"""


def _exps_reached(v) -> set:
    """The exp ops a value depends on through data movement."""
    op = v.owner
    if isinstance(op, sp.ExpOp):
        return {op}
    if not isinstance(op, sp.SparseOp) or not sp.is_data_movement(op):
        return set()
    return set().union(*(_exps_reached(x) for x in op.operands))


def test_a_head_of_a_concatenation_of_column_parts_reads_one_part():
    module = parse_module(HEADS)
    x = {"arg0": np.random.default_rng(0).standard_normal((4, 12)).astype(np.float32)}
    before = interpret(module, x)
    fn = main_func(module)
    ret = fn.body.block.last_op
    assert len(_exps_reached(ret.operands[0])) == 3
    fold_concats(fn.body)
    assert len(_exps_reached(ret.operands[0])) == 1
    np.testing.assert_array_equal(next(iter(interpret(module, x).values())), next(iter(before.values())))
    assert not any(isinstance(o, sp.ConcatOp) for o in fn.body.block.ops)


@pytest.mark.parametrize(
    ("src", "dst", "axis", "spans", "want"),
    [
        ([4, 12], [4, 3, 4], 1, [(0, 4), (4, 12)], (1, [[4, 1, 4], [4, 2, 4]])),  # split at head boundaries
        ([4, 12], [4, 3, 4], 1, [(0, 6), (6, 12)], None),  # a piece ends inside a head
        ([2, 3, 4], [6, 4], 0, [(0, 1), (1, 2)], (0, [[3, 4], [3, 4]])),  # merged with the dim inside it
        ([1, 3, 8, 4], [3, 1, 8, 4], 1, [(0, 1), (1, 3)], (0, [[1, 1, 8, 4], [2, 1, 8, 4]])),  # a unit dim moves
    ],
)
def test_reshaped_pieces_only_where_each_piece_stays_a_run_of_one_axis(src, dst, axis, spans, want):
    assert reshaped_pieces(src, dst, axis, spans) == want


# two row parts, read one column block: the slice goes into each row part
ROWS = """
builtin.module {
  func.func @main(%x: tensor<4x6xf32>) -> (tensor<4x2xf32>) {
    %a = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 2, 6>, steps = array<i64: 1, 1>} : tensor<4x6xf32> -> tensor<2x6xf32>
    %b = sparse.slice %x {starts = array<i64: 2, 0>, ends = array<i64: 4, 6>, steps = array<i64: 1, 1>} : tensor<4x6xf32> -> tensor<2x6xf32>
    %ea = sparse.exp %a : tensor<2x6xf32> -> tensor<2x6xf32>
    %eb = sparse.exp %b : tensor<2x6xf32> -> tensor<2x6xf32>
    %cat = sparse.concat %ea, %eb {axis = 0 : i64} : (tensor<2x6xf32>, tensor<2x6xf32>) -> tensor<4x6xf32>
    %c = sparse.slice %cat {starts = array<i64: 0, 2>, ends = array<i64: 4, 4>, steps = array<i64: 1, 1>} : tensor<4x6xf32> -> tensor<4x2xf32>
    func.return %c : tensor<4x2xf32>
  }
}
"""


def test_a_column_slice_of_row_parts_goes_into_each_part():
    module = parse_module(ROWS)
    x = {"arg0": np.random.default_rng(1).standard_normal((4, 6)).astype(np.float32)}
    before = next(iter(interpret(module, x).values()))
    fn = main_func(module)
    fold_concats(fn.body)
    cat = fn.body.block.last_op.operands[0].owner
    assert isinstance(cat, sp.ConcatOp) and all(sp.shape_of(v) == (2, 2) for v in cat.inputs)
    np.testing.assert_array_equal(next(iter(interpret(module, x).values())), before)
