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


# Two stores each writing half of the output's rows (dram_offset: the byte where each half starts), the output
# being their concatenation.
_STORE = ('dataflow.kernel "{name}"(%l) attributes {{kind = "dma_store", tile_kind = "dma", loops = ["burst"], '
          'trips = array<i64: 1>, tile = array<i64>, buffer_bytes = 256 : i64, cycles = 10 : i64, macs = 0 : i64, '
          'tokens = array<i64: 1>, dram_offset = {offset} : i64}} : (tensor<4x8xf32>) -> tensor<2x8xf32> {{\n'
          '    ^bb0(%x: tensor<4x8xf32>):\n'
          '      %h = sparse.slice %x {{starts = array<i64: {row}, 0>, ends = array<i64: {end}, 8>, '
          'steps = array<i64: 1, 1>}} : tensor<4x8xf32> -> tensor<2x8xf32>\n'
          '      %e = sparse.exp %h : tensor<2x8xf32> -> tensor<2x8xf32>\n'
          '      dataflow.yield %e : tensor<2x8xf32>\n'
          '    }}')
REGIONS = f"""builtin.module {{
  func.func @main(%a: tensor<4x8xf32>) -> tensor<4x8xf32> {{
    %l = dataflow.kernel "load_a"(%a) attributes {{kind = "dma_load", tile_kind = "dma", loops = ["burst"], trips = array<i64: 1>, tile = array<i64>, buffer_bytes = 256 : i64, cycles = 10 : i64, macs = 0 : i64, tokens = array<i64: 1>}} : (tensor<4x8xf32>) -> tensor<4x8xf32> {{
    ^bb0(%x: tensor<4x8xf32>):
      dataflow.yield %x : tensor<4x8xf32>
    }}
    %s0 = {_STORE.format(name="store_r0", offset=0, row=0, end=2)}
    %s1 = {_STORE.format(name="store_r1", offset=64, row=2, end=4)}
    %y = sparse.concat %s0, %s1 {{axis = 0 : i64}} : (tensor<2x8xf32>, tensor<2x8xf32>) -> tensor<4x8xf32>
    func.return %y : tensor<4x8xf32>
  }}
}}
"""


def test_stores_of_regions_round_trip_and_make_the_output():
    from attnc.dialects.dataflow import KernelOp, store_regions

    first = print_module(parse_module(REGIONS))
    assert "dram_offset = 64 : i64" in first and print_module(parse_module(first)) == first
    fn = main_func(parse_module(first))
    ret = fn.body.block.last_op
    regions = store_regions(ret.operands[0])
    assert [(k.kernel_name, off) for k, off in regions] == [("store_r0", 0), ("store_r1", 64)]
    s0 = next(op for op in fn.walk() if isinstance(op, KernelOp) and op.kernel_name == "store_r0")
    assert [(k.kernel_name, off) for k, off in store_regions(s0.outputs[0])] == [("store_r0", 0), ("store_r1", 64)]
    a = np.random.default_rng(0).standard_normal((4, 8)).astype(np.float32)
    (out,) = run_func(fn, [a])
    np.testing.assert_allclose(out, np.exp(a), rtol=1e-6)


BAD_REGIONS = {
    # the second half written where the first lies: the output would get one region twice, the other never
    "offset": ("dram_offset = 64 : i64", "dram_offset = 0 : i64", "writes at byte 0; its region lies at byte 64"),
    "past-end": ("dram_offset = 64 : i64", "dram_offset = 128 : i64", "writes at byte 128; its region lies at byte 64"),
    # a region store's result read by a kernel, not made into an output
    "no-concat": ("%y = sparse.concat %s0, %s1 {axis = 0 : i64} : (tensor<2x8xf32>, tensor<2x8xf32>) -> tensor<4x8xf32>",
                  "%y = sparse.concat %s1, %s1 {axis = 0 : i64} : (tensor<2x8xf32>, tensor<2x8xf32>) -> tensor<4x8xf32>",
                  "must be an operand of a sparse.concat that the function returns"),
    # the output made of a region store and a value no store writes
    "mixed": ("%y = sparse.concat %s0, %s1 {axis = 0 : i64} : (tensor<2x8xf32>, tensor<2x8xf32>) -> tensor<4x8xf32>",
              "%z = sparse.exp %s1 : tensor<2x8xf32> -> tensor<2x8xf32>\n"
              "    %y = sparse.concat %s0, %z {axis = 0 : i64} : (tensor<2x8xf32>, tensor<2x8xf32>) -> tensor<4x8xf32>",
              "is not a region store"),
    # a region of a kernel other than a load or a store
    "load-kind": ('kind = "dma_store", tile_kind = "dma", loops = ["burst"], trips = array<i64: 1>, tile = array<i64>, '
                  'buffer_bytes = 256 : i64, cycles = 10 : i64, macs = 0 : i64, tokens = array<i64: 1>, dram_offset = 64',
                  'kind = "gemm", tile_kind = "dma", loops = ["burst"], trips = array<i64: 1>, tile = array<i64>, '
                  'buffer_bytes = 256 : i64, cycles = 10 : i64, macs = 0 : i64, tokens = array<i64: 1>, dram_offset = 64',
                  "is not a region store"),  # (its sibling's verifier finds it first)
}


@pytest.mark.parametrize("case", sorted(BAD_REGIONS))
def test_invalid_store_regions(case):
    old, new, expected = BAD_REGIONS[case]
    text = REGIONS.replace(old, new, 1)
    assert text != REGIONS
    with pytest.raises(AttncError, match=expected):
        parse_module(text)


def test_a_concat_of_region_stores_inside_the_output_is_refused():
    """Regions of a concatenation that some other op reshapes are checked against that concatenation, which must
    be the returned value itself (the stores write the output's bytes, not an intermediate's)."""
    text = REGIONS.replace("func.return %y : tensor<4x8xf32>", "%w = sparse.exp %y : tensor<4x8xf32> -> tensor<4x8xf32>\n"
                           "    func.return %w : tensor<4x8xf32>")
    with pytest.raises(AttncError, match="used by other than the return"):
        parse_module(text)


def test_regions_side_by_side_are_refused():
    """Halves concatenated along axis 1 (4x4 each): a half's rows are not contiguous in the output, so no
    ``dram_offset`` can say where it lies."""
    text = (REGIONS.replace("tensor<2x8xf32>", "tensor<4x4xf32>")
            .replace("starts = array<i64: 0, 0>, ends = array<i64: 2, 8>", "starts = array<i64: 0, 0>, ends = array<i64: 4, 4>")
            .replace("starts = array<i64: 2, 0>, ends = array<i64: 4, 8>", "starts = array<i64: 0, 4>, ends = array<i64: 4, 8>")
            .replace("{axis = 0 : i64}", "{axis = 1 : i64}"))
    with pytest.raises(AttncError, match="are not contiguous in it"):
        parse_module(text)


# A load of columns 2..6 of every row of a 4x8 input: a strided region (dram_offset 8: column 2; the input's
# strides), which the interpreter reads as the slice.
_STRIDED = """builtin.module {{
  func.func @main(%a: tensor<4x8xf32>) -> tensor<4x4xf32> {{
    %l = dataflow.kernel "load_a"(%a) attributes {{kind = "dma_load", tile_kind = "dma", loops = ["burst"], trips = array<i64: 1>, tile = array<i64>, buffer_bytes = 256 : i64, cycles = 10 : i64, macs = 0 : i64, tokens = array<i64: 1>, dram_offset = {offset} : i64, dram_strides = array<i64: {strides}>}} : (tensor<4x8xf32>) -> tensor<4x4xf32> {{
    ^bb0(%x: tensor<4x4xf32>):
      dataflow.yield %x : tensor<4x4xf32>
    }}
    func.return %l : tensor<4x4xf32>
  }}
}}
"""


def test_a_strided_region_load_reads_its_slice_of_every_row():
    text = _STRIDED.format(offset=8, strides="8, 1")
    module = parse_module(text)
    assert print_module(module) == print_module(parse_module(print_module(module)))
    a = np.arange(32, dtype=np.float32).reshape(4, 8)
    np.testing.assert_array_equal(run_func(main_func(module), [a])[0], a[:, 2:6])


@pytest.mark.parametrize("offset, strides, error", [
    (24, "8, 1", "is not within the input"),  # columns 6..10 run past the last row's end
    (8, "8", "one positive stride per dimension"),
    (8, "0, 1", "one positive stride per dimension"),
])  # fmt: skip
def test_invalid_strided_region_loads(offset, strides, error):
    with pytest.raises(AttncError, match=error):
        parse_module(_STRIDED.format(offset=offset, strides=strides))
