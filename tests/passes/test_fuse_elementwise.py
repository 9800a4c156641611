"""fuse-elementwise: elementwise and row-wise ops become epilogues of the GEMM kernels that produce their
inputs, or one row kernel per chain, and the IR computes the same numbers before and after (the reference
interpreter is the oracle), also once lowered to dataflow kernels."""

from collections.abc import Callable
from pathlib import Path

import attnc.arch
import numpy as np
import pytest
from attnc.arch.schema import parse_arch
from attnc.dialects import dataflow as df
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import GROUP, TAG, TILE_KIND
from attnc.dialects.values import from_numpy
from attnc.interpreter import interpret
from attnc.ir import main_func, set_io_names
from attnc.passes.fuse_elementwise import ROWS, FuseElementwisePass, fit_parts
from attnc.passes.lower_dataflow import LowerToDataflowPass
from attnc.pipeline import run_pipeline
from xdsl.dialects import func
from xdsl.dialects.builtin import ModuleOp, StringAttr, TensorType, f16, f32
from xdsl.ir import Block, Region, SSAValue

ROWS_N, K, N = 8, 16, 12  # x[8, 16] @ W[16, 12]


class Builder:
    """Straight-line IR for @main, op by op."""

    def __init__(self, inputs: dict[str, list[int]], seed: int = 0):
        self.block = Block(arg_types=[TensorType(f32, s) for s in inputs.values()])
        self.names = list(inputs)
        self.args = dict(zip(inputs, self.block.args))
        self.rng = np.random.default_rng(seed)

    def op(self, op, tag: str | None = None, group: str | None = None) -> SSAValue:
        if tag:
            op.attributes[TAG] = StringAttr(tag)
        if group:
            op.attributes[GROUP] = StringAttr(group)
        self.block.add_op(op)
        return op.results[0]

    def const(self, shape: list[int], value: float | None = None) -> SSAValue:
        x = (
            np.full(shape, value, np.float32)
            if value is not None
            else self.rng.standard_normal(shape).astype(np.float32)
        )
        return self.op(sp.ConstantOp(from_numpy(x, f32), TensorType(f32, shape)))

    def module(self, *outs: SSAValue) -> ModuleOp:
        self.block.add_op(func.ReturnOp(*outs))
        fn = func.FuncOp("main", ([a.type for a in self.block.args], [o.type for o in outs]), Region(self.block))
        set_io_names(fn, self.names, [f"out{i}" for i in range(len(outs))])
        return ModuleOp([fn])


def split_gemm(b: Builder, x: SSAValue, w: SSAValue, rows: int, cols: int, name: str = "g",
               reshaped: bool = False) -> SSAValue:  # fmt: skip
    """``x @ w`` as ``tile`` leaves a 2-D split: the lhs flattened and cut into row blocks, the weight into
    column blocks, one tagged matmul kernel per (row block, column block), concatenated back and reshaped
    (``reshaped``: each part reshaped to the lhs's rank first, then concatenated)."""
    xs = sp.shape_of(x)
    m = int(np.prod(xs[:-1]))
    flat = b.op(sp.ReshapeOp(x, [m, xs[-1]]))
    n = sp.shape_of(w)[1]
    row_parts = []
    for i in range(rows):
        r0, r1 = i * m // rows, (i + 1) * m // rows
        a = b.op(sp.SliceOp(flat, [r0, 0], [r1, xs[-1]], [1, 1]))
        col_parts = []
        for j in range(cols):
            c0, c1 = j * n // cols, (j + 1) * n // cols
            wj = b.op(sp.SliceOp(w, [0, c0], [xs[-1], c1], [1, 1])) if cols > 1 else w
            part = b.op(sp.MatmulOp(a, wj), f"{name}_r{i}c{j}", name)
            if reshaped:
                part = b.op(sp.ReshapeOp(part, [*xs[:-2], r1 - r0, c1 - c0]))
            col_parts.append(part)
        row_parts.append(col_parts[0] if cols == 1 else b.op(sp.ConcatOp(col_parts, len(xs) - 1 if reshaped else 1)))
    out = row_parts[0] if rows == 1 else b.op(sp.ConcatOp(row_parts, len(xs) - 2 if reshaped else 0))
    return out if reshaped else b.op(sp.ReshapeOp(out, [*xs[:-1], n]))


# activations, written as the front end imports them
def gelu_erf(b: Builder, x: SSAValue) -> SSAValue:
    e = b.op(sp.ErfOp(b.op(sp.DivOp(x, b.const([], np.sqrt(2.0))))))
    return b.op(sp.MulOp(b.op(sp.MulOp(x, b.const([], 0.5))), b.op(sp.AddOp(e, b.const([], 1.0)))))


def gelu_tanh(b: Builder, x: SSAValue) -> SSAValue:
    cube = b.op(sp.MulOp(b.op(sp.MulOp(x, x)), x))
    inner = b.op(sp.MulOp(b.op(sp.AddOp(x, b.op(sp.MulOp(cube, b.const([], 0.044715))))), b.const([], 0.7978845608)))
    t = b.op(sp.AddOp(b.op(sp.TanhOp(inner)), b.const([], 1.0)))
    return b.op(sp.MulOp(b.op(sp.MulOp(x, b.const([], 0.5))), t))


def silu(b: Builder, x: SSAValue) -> SSAValue:
    return b.op(sp.MulOp(x, b.op(sp.SigmoidOp(x))))


def relu(b: Builder, x: SSAValue) -> SSAValue:
    return b.op(sp.ReluOp(x))


def sigmoid_cast(b: Builder, x: SSAValue) -> SSAValue:
    return b.op(sp.CastOp(b.op(sp.CastOp(b.op(sp.SigmoidOp(x)), f16)), f32))


ACTIVATIONS: dict[str, Callable[[Builder, SSAValue], SSAValue]] = {
    "gelu-erf": gelu_erf, "gelu-tanh": gelu_tanh, "silu": silu, "relu": relu, "sigmoid-cast": sigmoid_cast,
}  # fmt: skip


def layer_norm(b: Builder, x: SSAValue) -> SSAValue:
    n = sp.shape_of(x)[-1]
    return b.op(sp.LayerNormOp(x, b.const([n]), b.const([n]), -1, 1e-5))


def rms_norm(b: Builder, x: SSAValue) -> SSAValue:
    n = sp.shape_of(x)[-1]
    ms = b.op(sp.ReduceOp(b.op(sp.MulOp(x, x)), "mean", [-1], True))
    r = b.op(sp.RsqrtOp(b.op(sp.AddOp(ms, b.const([], 1e-6)))))
    return b.op(sp.MulOp(b.op(sp.MulOp(x, r)), b.const([n])))


NORMS = {"layer-norm": layer_norm, "rms-norm": rms_norm}


def ffn_block(rows: int, cols: int, act, norm, scale: bool = True, reshaped: bool = False) -> ModuleOp:
    """norm(x @ W + bias -> activation (-> scaling) + residual), the GEMM split ``rows`` x ``cols``."""
    b = Builder({"x": [1, ROWS_N, K], "res": [1, ROWS_N, N]})
    y = split_gemm(b, b.args["x"], b.const([K, N]), rows, cols, reshaped=reshaped)
    y = act(b, b.op(sp.AddOp(y, b.const([N]))))
    if scale:
        y = b.op(sp.MulOp(y, b.const([], 0.125)))
    y = b.op(sp.AddOp(y, b.args["res"]))
    return b.module(norm(b, y))


def inputs(module: ModuleOp, seed: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    fn = main_func(module)
    names = ["x", "res", "y"]
    return {n: rng.standard_normal(sp.shape_of(a)).astype(np.float32) for n, a in zip(names, fn.body.block.args)}


def fused(module: ModuleOp, arch="tiny") -> ModuleOp:
    run_pipeline(module, [FuseElementwisePass(arch=arch)])
    return module


def compute_ops(module: ModuleOp) -> list:
    return [o for o in main_func(module).body.block.ops
            if not isinstance(o, (sp.ConstantOp, func.ReturnOp)) and not sp.is_data_movement(o)]  # fmt: skip


def tag(op) -> str | None:
    t = op.attributes.get(TAG)
    return t.data if t is not None else None


def same_numbers(before: dict, after: dict) -> None:
    for k, want in before.items():
        np.testing.assert_allclose(after[k], want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("norm", sorted(NORMS))
@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
def test_row_block_parts_take_the_whole_chain_as_epilogues(act, norm):
    module = ffn_block(2, 1, ACTIVATIONS[act], NORMS[norm])
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    # every elementwise op and the norm run in one of the two GEMM kernels, on that kernel's rows
    ops = compute_ops(module)
    assert {tag(o) for o in ops} == {"g_r0c0", "g_r1c0"}
    for o in ops:
        if not isinstance(o, sp.MatmulOp):
            assert sp.shape_of(o.results[0])[0] in (ROWS_N // 2, 1) or sp.shape_of(o.results[0]) == []
            assert o.attributes[GROUP].data == "g"
    # lowered: two GEMM kernels (the epilogues inside), loads and a store, and nothing elementwise
    run_pipeline(module, [LowerToDataflowPass(arch="tiny")])
    kinds = [k.kind.data for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    assert kinds.count("gemm") == 2 and not {"elementwise", "layer_norm", "reduce"} & set(kinds)
    same_numbers(want, interpret(module, x))


@pytest.mark.parametrize("reshaped", [False, True])
def test_column_parts_take_the_elementwise_ops_and_the_norm_is_one_row_kernel_in_row_blocks(reshaped):
    module = ffn_block(2, 3, gelu_erf, rms_norm, reshaped=reshaped)
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    parts = {f"g_r{i}c{j}" for i in range(2) for j in range(3)}
    ops = compute_ops(module)
    # bias, GELU, scaling and residual add: per part; the norm needs whole rows, which no part has
    for o in ops:
        if isinstance(o, (sp.ReduceOp, sp.RsqrtOp)):
            assert tag(o).startswith(ROWS)
    assert sum(1 for o in ops if tag(o) in parts and isinstance(o, sp.ErfOp)) == 6
    # the norm's row kernel (5 ops over 8 rows) outlasts a GEMM part (4 rows x 4 columns): two row blocks,
    # each the whole chain on 4 rows, one group named after the kernel
    rows = [o for o in ops if tag(o) not in parts]
    assert {tag(o) for o in rows} == {"rows6_p0", "rows6_p1"}
    assert all(o.attributes[GROUP].data == "rows6" and sp.shape_of(o.results[0])[-2] == ROWS_N // 2 for o in rows)
    run_pipeline(module, [LowerToDataflowPass(arch="tiny")])
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    assert sum(k.kind.data == "gemm" for k in kernels) == 6
    norm = [k for k in kernels if k.kind.data in ("elementwise", "reduce", "layer_norm")]
    assert len(norm) == 2 and {k.group.data for k in norm} == {"rows6"}
    # the special function (rsqrt) on compute tiles, which have an exp unit on tiny
    assert {k.tile_kind.data for k in norm} == {"compute"}
    same_numbers(want, interpret(module, x))


def test_an_unsplit_gemm_gets_a_tag_its_epilogue_shares():
    b = Builder({"x": [ROWS_N, K]})
    y = b.op(sp.MatmulOp(b.args["x"], b.const([K, N])))
    module = b.module(relu(b, b.op(sp.AddOp(y, b.const([N])))))
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    tags = {tag(o) for o in compute_ops(module)}
    assert len(tags) == 1 and None not in tags


def test_without_an_exp_unit_special_functions_leave_the_gemm_kernel():
    text = (Path(attnc.arch.__file__).parent / "presets" / "tiny.yaml").read_text()
    assert ", exp_per_cycle: 4" in text
    noexp = parse_arch(text.replace(", exp_per_cycle: 4", ""))
    assert not any(t.special_per_cycle for t in noexp.tiles_of("compute"))
    module = ffn_block(2, 1, gelu_erf, layer_norm)
    x = inputs(module)
    want = interpret(module, x)
    fused(module, noexp)
    same_numbers(want, interpret(module, x))
    ops = compute_ops(module)
    parts = {"g_r0c0", "g_r1c0"}
    # the bias add and the division before erf are epilogues; erf and all after it form row kernels
    assert all(tag(o) in parts for o in ops if isinstance(o, (sp.MatmulOp, sp.DivOp)))
    assert all(tag(o) not in parts for o in ops if isinstance(o, (sp.ErfOp, sp.LayerNormOp)))
    assert all(tag(o) is None or tag(o) in parts or tag(o).startswith(ROWS) for o in ops)


def test_an_op_needing_the_split_axis_whole_stays_out_of_the_parts():
    # softmax along the rows the GEMM is split into: no part has them all
    b = Builder({"x": [ROWS_N, K]})
    y = split_gemm(b, b.args["x"], b.const([K, N]), 2, 1)
    module = b.module(b.op(sp.MulOp(b.op(sp.SoftmaxOp(y, 0)), b.const([], 2.0))))
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    ops = compute_ops(module)
    soft = next(o for o in ops if isinstance(o, sp.SoftmaxOp))
    assert tag(soft).startswith(ROWS) and tag(soft) == tag(next(o for o in ops if isinstance(o, sp.MulOp)))
    run_pipeline(module, [LowerToDataflowPass(arch="tiny")])
    same_numbers(want, interpret(module, x))


def test_an_epilogue_never_reads_a_kernel_that_starts_later():
    # add(A, B) with B computed after A's kernel starts: it joins B's kernel, never A's
    b = Builder({"x": [ROWS_N, K]})
    a = b.op(sp.MatmulOp(b.args["x"], b.const([K, N])))
    a_relu = b.op(sp.ReluOp(a))
    bb = b.op(sp.MatmulOp(b.args["x"], b.const([K, N])))
    module = b.module(b.op(sp.AddOp(a_relu, bb)))
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    ops = compute_ops(module)
    ta, trelu, tb, tadd = (tag(o) for o in ops)
    assert trelu == ta and tadd == tb != ta
    run_pipeline(module, [LowerToDataflowPass(arch="tiny")])
    same_numbers(want, interpret(module, x))


def test_lone_ops_keep_their_own_kernel_name():
    b = Builder({"x": [ROWS_N, K]})
    module = b.module(b.op(sp.ExpOp(b.args["x"])))
    fused(module)
    assert all(TAG not in o.attributes for o in compute_ops(module))


# ---------------------------------------------------------------------------
# row kernels over many rows, in row blocks across tiles


def norm_after_split_gemm(rows: int, k: int, row_parts: int, col_parts: int) -> ModuleOp:
    """layer_norm(x @ W + bias + residual) over ``rows`` rows, the GEMM split ``row_parts`` x ``col_parts``:
    the adds are the parts' epilogues, the norm (whole rows) is left a row kernel."""
    b = Builder({"x": [1, rows, k], "res": [1, rows, N]})
    y = split_gemm(b, b.args["x"], b.const([k, N]), row_parts, col_parts)
    y = b.op(sp.AddOp(b.op(sp.AddOp(y, b.const([N]))), b.args["res"]))
    return b.module(layer_norm(b, y))


def kernels_of(module: ModuleOp) -> list[df.KernelOp]:
    return [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]


def test_a_long_row_kernel_becomes_balanced_row_blocks_of_one_group_that_read_only_their_rows():
    module = norm_after_split_gemm(32, K, 2, 3)
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    norms = [o for o in compute_ops(module) if isinstance(o, sp.LayerNormOp)]
    # 32 x 12 norm on 4 lanes (~670 cycles) against a GEMM part of ~70: as many parts as tiny has
    # compute tiles, 8 rows each, one group named after the kernel the norm was
    assert [tag(o) for o in norms] == [f"layer_norm_p{j}" for j in range(4)]
    assert {o.attributes[GROUP].data for o in norms} == {"layer_norm"}
    assert [sp.shape_of(o.results[0]) for o in norms] == [(8, N)] * 4  # on the GEMM's flattened rows
    run_pipeline(module, [LowerToDataflowPass(arch="tiny")])
    same_numbers(want, interpret(module, x))
    kernels = kernels_of(module)
    parts = [k for k in kernels if k.kind.data == "layer_norm"]
    assert len(parts) == 4 and {k.group.data for k in parts} == {"layer_norm"}
    assert {k.tile_kind.data for k in parts} == {"compute"}  # rsqrt on the exp unit
    # each part reads the GEMM parts of its own 8 rows (row strip 0 for parts 0 and 1, 1 for 2 and 3)
    for j, k in enumerate(parts):
        read = {v.owner.sym_name.data for v in k.inputs if isinstance(v.owner, df.KernelOp)}
        gemms = {n for n in read if n.startswith("g_")}
        assert gemms == {f"g_r{j // 2}c{c}" for c in range(3)}


def test_row_blocks_compile_and_the_functional_simulator_agrees_with_the_interpreter():
    from attnc.backend import bitstream as bsm
    from attnc.backend.emit import emit_bitstream
    from attnc.passes.placement.place_route import PlaceRoutePass
    from attnc.simulator.functional import run

    module = norm_after_split_gemm(32, K, 2, 3)
    x = inputs(module)
    want = interpret(module, x)
    run_pipeline(module, [FuseElementwisePass(arch="tiny"), LowerToDataflowPass(arch="tiny"),
                          PlaceRoutePass(arch="tiny", heuristic_only=True)])  # fmt: skip
    got = run(bsm.decode(bsm.encode(emit_bitstream(module, attnc.arch.load_arch("tiny")))), x)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-5)


def test_a_row_kernel_shorter_than_the_gemm_part_next_to_it_stays_one_kernel():
    # K = 512: a GEMM part takes ~520 cycles, the 8 x 12 norm ~170
    module = norm_after_split_gemm(ROWS_N, 512, 2, 3)
    fused(module)
    norm = next(o for o in compute_ops(module) if isinstance(o, sp.LayerNormOp))
    assert TAG not in norm.attributes and GROUP not in norm.attributes
    assert sp.shape_of(norm.results[0]) == (ROWS_N, N)


def test_on_edge_row_blocks_stay_within_the_contexts_the_gemm_grid_leaves():
    # a GEMM in 25 x 2 parts takes 50 of edge's 64 compute contexts; the norm over 400 rows would want a
    # part per compute tile (16), but gets what the rest leaves, less an eighth of all as headroom
    edge = attnc.arch.load_arch("edge")
    contexts = sum(t.contexts for t in edge.tiles_of("compute"))
    module = norm_after_split_gemm(400, K, 25, 2)
    x = inputs(module)
    want = interpret(module, x)
    fused(module, edge)
    same_numbers(want, interpret(module, x))
    norms = {tag(o) for o in compute_ops(module) if isinstance(o, sp.LayerNormOp)}
    assert 1 < len(norms) <= contexts - contexts // 8 - 50
    run_pipeline(module, [LowerToDataflowPass(arch=edge)])
    same_numbers(want, interpret(module, x))
    on_compute = [k for k in kernels_of(module) if k.tile_kind.data == "compute"]
    assert len(on_compute) == 50 + len(norms) <= contexts - contexts // 8


# ---------------------------------------------------------------------------
# next to butterfly stage kernels (``tile``'s stage pipelines)

STAGE_ROWS, STAGE_N = 64, 16


def stage_kernel(b: Builder, x: SSAValue, name: str, kind: str = "compute") -> SSAValue:
    """One radix-2 butterfly stage on ``x``'s last axis as a stage kernel the planner placed on ``kind``."""
    n = sp.shape_of(x)[-1]
    op = sp.ButterflyStageOp(x, b.const([n // 2, 1, 2, 2]), 2, 1, 1)
    op.attributes[TILE_KIND] = StringAttr(kind)
    return b.op(op, name, name.split("_")[0])


def stage_parts(b: Builder, x: SSAValue, parts: int, name: str = "c", interleaved: bool = False) -> SSAValue:
    """A chain ending in ``parts`` column parts (kernels ``<name>_s0_p<j>``), assembled by a concatenation of
    them, or (``interleaved``) of the halves of each, in the order half 0 of every part, then half 1 (a stride
    permutation: what the planner's last stage parts make)."""
    n = sp.shape_of(x)[-1]
    outs = []
    for j in range(parts):
        lo, hi = j * n // parts, (j + 1) * n // parts
        xj = b.op(sp.SliceOp(x, [0, 0, lo], [1, STAGE_ROWS, hi], [1, 1, 1]))
        outs.append(stage_kernel(b, xj, f"{name}_s0_p{j}"))
    if not interleaved:
        return b.op(sp.ConcatOp(outs, 2))
    w = n // parts // 2
    halves = [b.op(sp.SliceOp(o, [0, 0, h * w], [1, STAGE_ROWS, (h + 1) * w], [1, 1, 1])) for h in range(2) for o in outs]
    return b.op(sp.ConcatOp(halves, 2))


def test_a_gelu_that_stage_kernels_feed_is_cut_by_columns_and_a_norm_so_fed_is_not_cut():
    """A row block of a butterfly chain's result reaches every reader: a part of a row split would hold all
    of the stream (its rows arrive spread over every token), a part of a column split takes its columns of
    each token. Before: one row kernel for bias + GELU (~1.5K cycles on tiny's 4 lanes) next to stage kernels
    of ~270, whose interleaved columns no part computes alone; after: 4 column parts (one per compute tile)
    of 4 columns each, same numbers. The layer norm, which needs whole rows, stays one row kernel."""
    b = Builder({"x": [1, STAGE_ROWS, STAGE_N], "res": [1, STAGE_ROWS, STAGE_N]})
    y = stage_parts(b, b.args["x"], 2, "c", interleaved=True)
    g = gelu_erf(b, b.op(sp.AddOp(y, b.const([STAGE_N]))))
    z = stage_parts(b, g, 2, "d")
    module = b.module(layer_norm(b, b.op(sp.AddOp(z, b.args["res"]))))
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    erfs = [o for o in compute_ops(module) if isinstance(o, sp.ErfOp)]
    assert len(erfs) == 4
    assert {sp.shape_of(o.results[0]) for o in erfs} == {(1, STAGE_ROWS, STAGE_N // 4)}
    assert len({tag(o) for o in erfs}) == 4
    norms = [o for o in compute_ops(module) if isinstance(o, sp.LayerNormOp)]
    assert len(norms) == 1 and sp.shape_of(norms[0].results[0]) == (1, STAGE_ROWS, STAGE_N)


def test_a_bias_add_on_one_compute_stage_kernel_is_its_epilogue_not_on_a_butterfly_tile():
    """A chain ending in one kernel: its bias add runs on that kernel's tile (a compute tile's lanes), not as a
    kernel of its own; a stage kernel on a butterfly tile takes none."""
    for kind, joined in (("compute", True), ("butterfly", False)):
        b = Builder({"x": [1, STAGE_ROWS, STAGE_N]})
        y = stage_kernel(b, b.args["x"], "c_s0", kind)
        module = b.module(b.op(sp.AddOp(y, b.const([STAGE_N]))))
        x = inputs(module)
        want = interpret(module, x)
        fused(module)
        same_numbers(want, interpret(module, x))
        add = next(o for o in compute_ops(module) if isinstance(o, sp.AddOp))
        assert (tag(add) == "c_s0") is joined


def test_a_gelu_on_stage_parts_put_side_by_side_becomes_their_epilogues():
    """Parts whose columns are a plain concatenation's pieces each compute their columns of the bias add and
    GELU on their own tile: no row kernel (as for a GEMM grid's column parts)."""
    b = Builder({"x": [1, STAGE_ROWS, STAGE_N]})
    y = stage_parts(b, b.args["x"], 2)
    module = b.module(gelu_erf(b, b.op(sp.AddOp(y, b.const([STAGE_N])))))
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    erfs = [o for o in compute_ops(module) if isinstance(o, sp.ErfOp)]
    assert sorted(tag(o) for o in erfs) == ["c_s0_p0", "c_s0_p1"]


def test_a_norm_after_long_adds_that_stage_kernels_feed_is_cut_by_columns_too():
    """BERT's FFN2 sum, bias and residual adds before its layer norm: joined with the norm they could not be
    cut (the norm needs whole rows), so when they are longer than the stage kernels next to them the norm
    starts a row kernel of its own and the adds are cut by columns, a part reading its columns of each row
    block. Before SplitNormByColumnsPattern the norm stayed one kernel over the whole tensor (on one tile,
    longer than every part); after, each add part also sums its columns and their squares per row, one
    statistics kernel makes each row's mean and 1/sqrt(var + eps), and one apply kernel per part normalises its
    columns: no layer_norm op is left, same numbers."""
    def module_of(rows: int):
        b = Builder({"x": [1, rows, STAGE_N], "res": [1, rows, STAGE_N]})
        y = stage_parts(b, b.args["x"], 2, "c", interleaved=True)
        z = stage_parts(b, b.args["x"], 2, "d", interleaved=True)
        s = b.op(sp.AddOp(b.op(sp.AddOp(b.op(sp.AddOp(y, z)), b.const([STAGE_N]))), b.args["res"]))
        return b.module(layer_norm(b, s))

    module = module_of(STAGE_ROWS)
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    ops = compute_ops(module)
    assert not any(isinstance(o, sp.LayerNormOp) for o in ops)
    parts = sorted({tag(o) for o in ops if isinstance(o, sp.AddOp) and tag(o).startswith(ROWS)})
    adds = [o for o in ops if isinstance(o, sp.AddOp) and tag(o) in parts]
    assert len(parts) == 4 and len(adds) == 12  # 4 column parts of the 3 adds
    assert {sp.shape_of(o.results[0])[-1] for o in adds} == {STAGE_N // 4}
    sums = [o for o in ops if isinstance(o, sp.ReduceOp)]
    assert sorted(tag(o) for o in sums) == sorted(parts * 2)  # a row sum and a sum of squares per part
    assert {sp.shape_of(o.results[0]) for o in sums} == {(1, STAGE_ROWS, 1)}
    assert {tag(o) for o in ops if isinstance(o, sp.RsqrtOp)} == {"layer_norm_stats"}
    applied = [o for o in ops if tag(o) and tag(o).startswith("layer_norm_p")]
    assert sorted({tag(o) for o in applied}) == [f"layer_norm_p{j}" for j in range(4)]
    assert {o.attributes[GROUP].data for o in applied} == {"layer_norm"}
    assert {sp.shape_of(o.results[0]) for o in applied} == {(1, STAGE_ROWS, STAGE_N // 4)}


def test_k_v_stages_and_spills_are_not_counted_on_the_compute_tiles():
    """An attention's K/V stage runs on a memory tile and its K/V spill on a DMA tile: counting them as compute
    kernels left a butterfly layer's row kernels (its GELU on cloud at seq 512) a quarter of their parts."""
    from attnc.dialects.dataflow import SPILL, STAGE
    from attnc.dialects.sparse import ReshapeOp
    from attnc.passes.fuse_elementwise import _kind
    from xdsl.dialects.builtin import IntegerAttr, TensorType, UnitAttr, f16
    from xdsl.ir import Block

    x = Block(arg_types=[TensorType(f16, [1, 1, 64, 16])]).args[0]
    stage, spill, plain = (ReshapeOp(x, [1, 1, 64, 16]) for _ in range(3))
    stage.attributes[STAGE] = IntegerAttr(2, 64)
    spill.attributes[SPILL] = UnitAttr()
    assert (_kind([stage]), _kind([spill]), _kind([plain])) == ("memory", "dma", "compute")



def shared_norm_after_split_gemm(rows: int) -> ModuleOp:
    """:func:`norm_after_split_gemm` in 2 x 3 parts, its phases sharing SRAM (so its norm reads the GEMM's row
    strips back from the DRAM they are spilled to between phases)."""
    from attnc.passes.sram_phases import SHARE_ATTR
    from xdsl.dialects.builtin import IntegerAttr

    module = norm_after_split_gemm(rows, K, 2, 3)
    main_func(module).attributes[SHARE_ATTR] = IntegerAttr(1, 64)
    return module


def test_with_sram_phases_a_norm_shares_row_strips_that_its_parts_may_hold_whole():
    # strips of 16 rows x 12 f32 (768 bytes, a tile has 4 KiB): 2 parts a strip, each holding its strip whole
    module = shared_norm_after_split_gemm(32)
    fused(module)
    assert [tag(o) for o in compute_ops(module) if isinstance(o, sp.LayerNormOp)] == [f"layer_norm_p{j}" for j in range(4)]


def test_with_sram_phases_a_norm_takes_whole_row_strips_which_stream_back_from_their_spill_row_by_row():
    """Strips of 128 rows x 12 f32 (6 KiB) are more than a tiny compute tile's 4 KiB: a part that read half a
    strip would share the strip's spilled blocks with the other half's part, and a spill output with two readers
    is held whole by each (before: 4 parts, 2 a strip, as above). So the norm takes 2 parts, one per strip: each
    spill output has one reader, comes a row per token, and the part takes a row a step."""
    module = shared_norm_after_split_gemm(256)
    x = inputs(module)
    want = interpret(module, x)
    fused(module)
    same_numbers(want, interpret(module, x))
    norms = [o for o in compute_ops(module) if isinstance(o, sp.LayerNormOp)]
    assert [tag(o) for o in norms] == ["layer_norm_p0", "layer_norm_p1"]
    run_pipeline(module, [LowerToDataflowPass(arch="tiny")])
    same_numbers(want, interpret(module, x))
    parts = [k for k in kernels_of(module) if k.kind.data == "layer_norm"]
    for j, k in enumerate(parts):
        spills = {v.owner for v in k.inputs if isinstance(v.owner, df.KernelOp) and v.owner.kind.data == "dma_spill"}
        assert [s.sym_name.data for s in spills] == [f"spill_g_to_layer_norm_s{j}"]
        (spill,) = spills
        assert {u.operation for r in spill.outputs for u in r.uses} == {k}  # its only reader
        assert list(spill.tokens.get_values()) == [128] * 3  # a row per token
        assert k.loop_schedule() == [("rows", 128)]
        assert k.buffer_bytes.value.data < 4096


def test_parts_short_of_contexts_go_where_the_longest_part_shrinks_most():
    """Three chains wanting 64 parts each in 62 contexts: a GELU-like chain of 6x the lane work and two norm
    chains whose parts take 3 contexts each (their norm's apply and residual kernels). Taking parts from the
    chain whose part grows least keeps the GELU's parts ~6x the norms' (an even cut, 7 each, left the GELU
    parts 6x longer than the others'); a chain keeps its least parts while another has more than its own, and
    nothing goes below one part; the contexts are kept to."""
    wants = [(64, 1, 94.0, 1), (64, 3, 16.0, 1), (64, 3, 16.0, 1)]
    parts = fit_parts(wants, 62)
    assert sum(p * w[1] for p, w in zip(parts, wants)) <= 62
    longest = max(w[2] / p for p, w in zip(parts, wants))
    assert longest < 94.0 / 7
    assert parts[0] >= 4 * parts[1]
    assert fit_parts(wants, 2) == [1, 1, 1]
    assert fit_parts([(4, 1, 1.0, 1)], 10) == [4]
    # a small chain at its least (2) keeps it; the large one gives up parts instead
    assert fit_parts([(40, 1, 40.0, 1), (4, 1, 1.0, 2)], 30) == [28, 2]
    assert fit_parts([(40, 1, 40.0, 1), (4, 1, 1.0, 1)], 30) == [29, 1]


def test_a_chain_short_of_contexts_steps_down_to_counts_aligned_to_its_strips():
    """A chain whose input comes in 4 strips takes a divisor or a multiple of 4 parts: short of contexts it steps
    from 8 straight to 4 (freeing 4 parts' contexts at once), never to a count that straddles strips."""
    counts = [[1, 2, 4, 8], list(range(1, 65))]
    parts = fit_parts([(8, 2, 70.0, 1), (64, 1, 290.0, 1)], 40, counts)
    assert parts[0] in counts[0] and parts[0] * 2 + parts[1] <= 40
    assert fit_parts([(8, 2, 70.0, 1)], 12, [[1, 2, 4, 8]]) == [4]
