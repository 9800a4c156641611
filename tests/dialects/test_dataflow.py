"""The dataflow dialect: round trip, verifiers, and the interpreter running kernels."""

from pathlib import Path

import numpy as np
import pytest

from attnc.dialects.dataflow import Dataflow
from attnc.errors import AttncError
from attnc.interpreter import run_func
from attnc.ir import main_func, parse_module, print_module

SOURCE = (Path(__file__).parent / "dataflow_ops.mlir").read_text()


def test_round_trip_covers_every_op():
    first = print_module(parse_module(SOURCE))
    assert print_module(parse_module(first)) == first
    seen = {op.name for op in parse_module(SOURCE).walk()}
    assert {op.name for op in Dataflow.operations} <= seen


def test_interpreter_runs_kernel_bodies():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((4, 8)).astype(np.float32), rng.standard_normal((8, 4)).astype(np.float32)
    (out,) = run_func(main_func(parse_module(SOURCE)), [a, b])
    np.testing.assert_allclose(out, np.exp(a @ b), rtol=1e-5)


MM = 'dataflow.kernel "mm"(%la, %lb) attributes {'
BAD = {
    "kind": ('kind = "gemm"', 'kind = "conv"', "kind must be one of"),
    "tile-kind": ('tile_kind = "compute"', 'tile_kind = "gpu"', "tile_kind must be one of"),
    "trips": ("trips = array<i64: 1, 1, 2>", "trips = array<i64: 1, 2>", "one trip count >= 1 per loop"),
    "trip-zero": ("trips = array<i64: 1, 1, 2>", "trips = array<i64: 1, 0, 2>", "one trip count >= 1 per loop"),
    "tokens": ('tokens = array<i64: 1>, group', 'tokens = array<i64: 1, 1>, group', "one token count >= 1 per output"),
    "cycles": ("cycles = 16 : i64", "cycles = -1 : i64", "cycles must be >= 0"),
    "args": ("^bb0(%x: tensor<4x8xf32>, %y: tensor<8x4xf32>):\n      %r", "^bb0(%x: tensor<4x8xf32>):\n      %r", None),
    "yield": ("dataflow.yield %e : tensor<4x4xf32>\n    }\n    func", "dataflow.yield %r, %e : tensor<4x4xf32>, tensor<4x4xf32>\n    }\n    func", "yield types do not match"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_invalid_kernels(case):
    old, new, expected = BAD[case]
    start = SOURCE.index(MM)
    text = SOURCE[:start] + SOURCE[start:].replace(old, new, 1)
    assert text != SOURCE
    with pytest.raises(AttncError) as info:
        parse_module(text)
    if expected:
        assert expected in str(info.value)


def test_body_must_be_sparse_ops():
    text = SOURCE.replace(
        "%e = sparse.exp %r : tensor<4x4xf32> -> tensor<4x4xf32>",
        "%e = builtin.unrealized_conversion_cast %r : tensor<4x4xf32> to tensor<4x4xf32>",
        1,
    )
    with pytest.raises(AttncError, match="holds sparse ops only"):
        parse_module(text)
