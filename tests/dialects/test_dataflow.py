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


def _mm(module):
    from attnc.dialects.dataflow import KernelOp

    return next(op for op in module.walk() if isinstance(op, KernelOp) and op.kernel_name == "mm")


def test_phase_is_optional_and_round_trips():
    assert _mm(parse_module(SOURCE)).phase == 0  # absent: resident
    text = SOURCE.replace('group = "g0"}', 'group = "g0", phase = 2 : i64}', 1)
    first = print_module(parse_module(text))
    assert "phase = 2 : i64" in first and print_module(parse_module(first)) == first
    assert _mm(parse_module(first)).phase == 2


def test_phase_keyword_sets_the_attribute_only_when_nonzero():
    from xdsl.dialects.builtin import TensorType, f32
    from xdsl.ir import Block

    from attnc.dialects.dataflow import KernelOp, YieldOp

    t = TensorType(f32, [4])

    def kernel(phase):
        block = Block(arg_types=[t])
        block.add_op(YieldOp([block.args[0]]))
        src = Block(arg_types=[t])
        return KernelOp("k", [src.args[0]], [t], block, kind="data", tile_kind="memory", phase=phase)

    assert "phase" not in kernel(0).attributes and kernel(0).phase == 0
    k3 = kernel(3)
    assert k3.attributes["phase"].value.data == 3 and k3.phase == 3


def test_negative_phase_is_refused():
    text = SOURCE.replace('group = "g0"}', 'group = "g0", phase = -1 : i64}', 1)
    with pytest.raises(AttncError, match="phase must be >= 0"):
        parse_module(text)
