"""The fixed tiling rule and the first-order cost of one kernel on one tile: a :class:`KernelPlan`.

Tile sizes come straight from the architecture: a GEMM is tiled to the MAC array
(``mac_rows x mac_cols`` outputs per step, the reduction dim chunked so that the
double-buffered operand tiles fit the tile's SRAM), a vector or special-function
kernel sweeps blocks of ``lanes`` rows; a fused attention follows its schedule
(:mod:`attnc.cost.attention`). ``lower-to-dataflow`` writes the plan on each kernel;
the numbers are estimates for placement and reports. The graph model
(:mod:`attnc.cost.model`) re-derives its own per-kernel figures from the kernel
bodies, and the simulator measures the real ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from attnc.cost.attention import attention_work, fused_attention_buffer
from attnc.cost.op_costs import PASSES, row_steps  # the one table of what ops cost (docs/simulator.md)
from attnc.arch.datatypes import element_bytes
from attnc.dialects import dataflow as df
from attnc.dialects import sparse as sp
from attnc.dialects.values import np_dtype
from xdsl.dialects.builtin import TensorType
from xdsl.ir import Operation, SSAValue

#: sparse ops a special-function tile computes (transcendental or row-wise)
SFU_OPS = (
    sp.ExpOp, sp.LogOp, sp.SqrtOp, sp.RsqrtOp, sp.ReciprocalOp, sp.TanhOp, sp.ErfOp, sp.SigmoidOp, sp.GeluOp,
    sp.SoftmaxOp, sp.LogSoftmaxOp, sp.LayerNormOp, sp.ReduceOp,
)  # fmt: skip
#: bytes a DMA kernel keeps in flight (double-buffered bursts)
DMA_BURST = 4096


@dataclass(frozen=True)
class KernelPlan:
    """How one kernel is tiled and what that costs first-order, as ``lower-to-dataflow`` records it on the
    kernel (not the graph model's per-kernel result, :class:`attnc.cost.kernels.KernelCost`)."""

    kind: str  # gemm | softmax | layer_norm | reduce | elementwise | dma_load | dma_store | data
    tile_kind: str
    loops: tuple[tuple[str, int], ...]
    tile: tuple[int, ...]
    buffer_bytes: int
    cycles: int
    macs: int
    tokens: int


def _share(tile) -> int:
    """The SRAM one kernel may use: an equal share among the tile's contexts, so a
    tile can run as many kernels as it has contexts."""
    return tile.sram_bytes // max(tile.contexts, 1)


def nbytes(t: TensorType) -> int:
    """Bytes of a tensor as the array stores it (``attnc.arch.datatypes``): bf16 takes two bytes, though
    numpy computes it in f32."""
    return int(np.prod(t.get_shape(), dtype=np.int64)) * element_bytes(str(t.element_type))


def consumed_bytes(arg: SSAValue) -> int:
    """Bytes a kernel body reads of an input: a slice through data-movement ops reads
    only the slice (slices that one concat joins, all of them), anything else the whole value."""
    full = nbytes(arg.type)
    best = 0
    pieces = 0  # slices put side by side by a concat (a butterfly part assembling its columns) add up
    for use in arg.uses:
        op = use.operation
        if isinstance(op, sp.SliceOp):
            uses = list(op.result.uses)
            if len(uses) == 1 and isinstance(uses[0].operation, sp.ConcatOp):
                # of which the kernel reads what it reads of the assembled value, taken as spread evenly
                # over the pieces (a part of a Fourier axis reading a transposed slice of the one before)
                cat = uses[0].operation.results[0]
                pieces += nbytes(op.result.type) * consumed_bytes(cat) // max(nbytes(cat.type), 1)
                best = max(best, pieces)
                continue
            best = max(best, nbytes(op.result.type))
        elif isinstance(op, (sp.ReshapeOp, sp.TransposeOp)):
            best = max(best, consumed_bytes(op.results[0]))
        else:
            return full
    return min(best, full) if best else full


def _elems(t: TensorType) -> int:
    return int(np.prod(t.get_shape(), dtype=np.int64))


def _matmul_dims(op: Operation) -> tuple[int, int, int, int]:
    """(batch, M, N, K) of a matmul or a two-operand contraction."""
    if isinstance(op, sp.MatmulOp):
        a, b = sp.shape_of(op.lhs), sp.shape_of(op.rhs)
        a2 = (1, *a) if len(a) == 1 else a
        b2 = (*b, 1) if len(b) == 1 else b
        batch = int(np.prod(np.broadcast_shapes(a2[:-2], b2[:-2]), dtype=np.int64))
        return batch, a2[-2], b2[-1], a2[-1]
    assert isinstance(op, sp.ContractOp)
    ins, out, sizes = sp.parse_einsum(op.equation.data, [sp.shape_of(v) for v in op.inputs])
    reduced = [c for c in sizes if c not in out]
    k = int(np.prod([sizes[c] for c in reduced], dtype=np.int64)) if reduced else 1
    m = sizes[out[-2]] if len(out) >= 2 else 1
    n = sizes[out[-1]] if out else 1
    batch = int(np.prod([sizes[c] for c in out[:-2]], dtype=np.int64)) if len(out) > 2 else 1
    return batch, m, n, k


def kernel_cost(body_ops: list[Operation], outputs: list[TensorType], arch, *, dma: str | None = None) -> KernelPlan:
    """The plan of a kernel whose body is ``body_ops`` (yield excluded) on the tile kind it needs: by the
    first rule below that the body matches (a DMA kernel, a fused attention, a held butterfly weight,
    butterfly stages, staged K/V, GEMMs, else vector or special-function work)."""
    eb = max((np_dtype(t.element_type).itemsize for t in outputs), default=4)
    if dma is not None:
        return _dma_plan(dma, sum(nbytes(t) for t in outputs), arch)
    fused = [op for op in body_ops if isinstance(op, sp.AttentionOp) and op.fusion is not None]
    if fused:
        return _fused_plan(fused[0], arch, eb)
    held = [op for op in body_ops if "dataflow.weight_stage" in op.attributes]
    if held:
        return _held_weight_plan(held[0])
    stages = [op for op in body_ops if isinstance(op, sp.ButterflyStageOp)]
    if stages:
        return _butterfly_plan(stages, body_ops, arch, eb)
    staged = [op for op in body_ops if "dataflow.stage" in op.attributes]
    if staged:
        return _stage_plan(staged[0], arch, eb)
    gemms = [op for op in body_ops if isinstance(op, (sp.MatmulOp, sp.ContractOp))]
    if gemms:
        return _gemm_plan(gemms, body_ops, arch, eb)
    return _vector_plan(body_ops, outputs, arch, eb)


def _dma_plan(dma: str, out_bytes: int, arch) -> KernelPlan:
    tile = arch.tiles_of("dma")[0]
    bursts = max(1, math.ceil(out_bytes / DMA_BURST))
    moved = 2 * out_bytes if dma == "dma_spill" else out_bytes  # a spill writes, then reads back
    cycles = math.ceil(moved / arch.dram.bytes_per_cycle) + arch.dram.latency_cycles
    return KernelPlan(dma, "dma", (("burst", bursts),), (DMA_BURST,), min(2 * DMA_BURST, _share(tile)),
                      cycles, 0, bursts)  # fmt: skip


def _held_weight_plan(op: Operation) -> KernelPlan:
    """A stage kernel's weights held in a memory tile, re-sent once per pass in chunks of about a DMA burst,
    in the order the kernel uses them: the kernel holds a chunk or two of them, not a whole copy."""
    passes = op.attributes["dataflow.weight_stage"].value.data
    nb = nbytes(op.results[0].type)
    chunks = max(1, math.ceil(nb / DMA_BURST))
    return KernelPlan("data", "memory", (("repeat", passes), ("chunk", chunks)), (nb,), nb, 0, 0, passes * chunks)


def _gemm_plan(gemms: list[Operation], body_ops: list[Operation], arch, eb: int) -> KernelPlan:
    """GEMMs on the largest compute tile, tiled to its MAC array; the body's other ops run on its lanes."""
    tile = max(arch.tiles_of("compute"), key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    batch, m, n, k = max((_matmul_dims(op) for op in gemms), key=lambda d: d[0] * d[1] * d[2] * d[3])
    macs = sum(int(np.prod(_matmul_dims(op), dtype=np.int64)) for op in gemms)
    # data movement is buffer addressing (a part's copies of its operands included), not lane work
    vector = sum(_elems(op.results[0].type) for op in body_ops
                 if op not in gemms and op.results and not sp.is_data_movement(op))  # fmt: skip
    block = next((op.attributes[GEMM_BLOCK] for op in gemms if GEMM_BLOCK in op.attributes), None)
    if block is not None:
        plan = _grid_part_plan(tuple(int(v) for v in block.get_values()), (batch, m, n, k), macs, vector, tile, eb)
        claims = [op.attributes["dataflow.reserve"].value.data for op in gemms if "dataflow.reserve" in op.attributes]
        return replace(plan, buffer_bytes=max([plan.buffer_bytes, *claims]))
    tm, tn = min(m, tile.mac_rows), min(n, tile.mac_cols)
    # largest reduction chunk whose double-buffered A, B and C tiles fit in the kernel's share
    budget = _share(tile)
    acc = max(eb, 4)  # the C tile accumulates in f32 (the kernel rounds only its result)
    tk = max(1, min(k, (budget - acc * tm * tn) // max(2 * eb * (tm + tn), 1)))
    loops = (("b", batch), ("m", math.ceil(m / tm)), ("n", math.ceil(n / tn)), ("k", math.ceil(k / tk)))
    steps = batch * math.ceil(m / tm) * math.ceil(n / tn) * k
    cycles = steps + tm + tn + math.ceil(vector / max(tile.vector_lanes, 1))
    buf = 2 * eb * (tm * tk + tk * tn) + acc * tm * tn
    # a row block of a split GEMM claims the SRAM tile reserved for it (see attnc.passes.tile.SplitGemmPattern)
    buf = max([buf] + [op.attributes["dataflow.reserve"].value.data for op in gemms
                       if "dataflow.reserve" in op.attributes])  # fmt: skip
    return KernelPlan("gemm", "compute", loops, (tm, tn, tk), buf, cycles, macs,
                      batch * math.ceil(m / tm) * math.ceil(n / tn))  # fmt: skip


#: a part of a GEMM grid carries its sub-block and k-chunk, [mb, nb, kc] (attnc.passes.gemm)
GEMM_BLOCK = "dataflow.gemm_block"


def _grid_part_plan(block: tuple[int, ...], dims: tuple[int, int, int, int], macs: int, vector: int, tile,
                    eb: int) -> KernelPlan:
    """A part of a GEMM grid (:mod:`attnc.passes.gemm`): its ``m x n`` outputs in sub-blocks of ``mb x nb``,
    each walking K in chunks of ``kc``. Buffers: the f32 accumulator of a sub-block and the double-buffered
    A and B chunks, or, with the weight block ``resident``, the whole block and double-buffered A chunks (or
    the SRAM the part claims, if more); one output token per sub-block."""
    mb, nb, kc, resident = (*block, 0)[:4]
    batch, m, n, k = dims
    mb, nb, kc = max(1, min(mb, m)), max(1, min(nb, n)), max(1, min(kc, k))
    mt, nt, kt = batch * math.ceil(m / mb), math.ceil(n / nb), math.ceil(k / kc)
    mr, mc = max(tile.mac_rows, 1), max(tile.mac_cols, 1)
    cycles = mt * nt * math.ceil(mb / mr) * math.ceil(nb / mc) * k + mr + mc
    cycles += math.ceil(vector / max(tile.vector_lanes, 1))
    if resident:  # the weight block held whole, the A chunks double-buffered
        buf = 4 * mb * nb + k * nb * eb + 2 * eb * kc * mb
        return KernelPlan("gemm", "compute", (("m", mt), ("k", kt)), (mb, nb, kc), buf, cycles, macs, mt)
    buf = 4 * mb * nb + 2 * eb * kc * (mb + nb)
    return KernelPlan("gemm", "compute", (("m", mt), ("n", nt), ("k", kt)), (mb, nb, kc), buf, cycles, macs, mt * nt)


def _vector_plan(body_ops: list[Operation], outputs: list[TensorType], arch, eb: int) -> KernelPlan:
    """Element- and row-wise work swept ``lanes`` rows at a time, on an sfu tile if any op needs one."""
    sfu = [op for op in body_ops if isinstance(op, SFU_OPS)]
    kind = "elementwise"
    for cls, name in ((sp.SoftmaxOp, "softmax"), (sp.LogSoftmaxOp, "softmax"), (sp.LayerNormOp, "layer_norm"),
                      (sp.ReduceOp, "reduce")):  # fmt: skip
        if any(isinstance(op, cls) for op in body_ops):
            kind = name
            break
    # a row block of a split row kernel says where it runs (fuse-elementwise: compute tiles with an exp unit)
    marked = [op.attributes[df.TILE_KIND].data for op in body_ops if df.TILE_KIND in op.attributes]
    tile_kind = marked[0] if marked else "sfu" if sfu else "compute"
    tile = max(arch.tiles_of(tile_kind), key=lambda t: (t.vector_lanes, t.sram_bytes))
    lanes = max(tile.vector_lanes, 1)
    work = 0
    for op in body_ops:
        # data movement and constants are buffer addressing, not lane work (as the simulator counts them)
        if op.results and isinstance(op.results[0].type, TensorType) and not (
                sp.is_data_movement(op) or isinstance(op, sp.ConstantOp)):
            src = max((_elems(v.type) for v in op.operands if isinstance(v.type, TensorType)), default=0)
            work += PASSES.get(type(op), 1) * max(_elems(op.results[0].type), src)
    shape = outputs[0].get_shape() if outputs else (1,)
    row = shape[-1] if shape else 1
    rows = max(1, _elems(outputs[0]) // max(row, 1)) if outputs else 1
    block = min(rows, lanes)
    # an input and an output row block, double-buffered; long rows stream through in
    # chunks so a kernel never asks for more than its share of the tile's SRAM
    # (the rows being worked on are held in f32, with a max/sum or mean/variance per row)
    buf = min(2 * eb * block * row + 2 * max(eb, 4) * block * row + 2 * 4 * block, _share(tile))
    loops = (("rows", math.ceil(rows / block)),)
    return KernelPlan(kind, tile_kind, loops, (block, row), buf, math.ceil(work / lanes) + 1, 0, loops[0][1])


# ---------------------------------------------------------------------------
# fused attention kernels (the work rule is attnc.cost.attention's)


def _fused_plan(op: sp.AttentionOp, arch, eb: int) -> KernelPlan:
    """A fused attention member: loops over its (batch, head) units, row blocks and key blocks."""
    tile = max(arch.tiles_of("compute"), key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    b, h, rows, d = sp.shape_of(op.q)
    t, dv = sp.shape_of(op.k)[2], sp.shape_of(op.v)[3]
    fusion, rb, kb = op.schedule()
    work = attention_work(
        sp.shape_of(op.q), sp.shape_of(op.k), sp.shape_of(op.v), fusion=fusion, row_block=rb, key_block=kb,
        causal=op.causal is not None, causal_offset=op.causal_offset.value.data, has_mask=op.mask is not None,
        rows=tile.mac_rows, cols=tile.mac_cols, lanes=tile.vector_lanes, exps=tile.exp_per_cycle,
    )  # fmt: skip
    macs, cycles = work.macs, work.cycles
    repeat = op.attributes.get("dataflow.repeat")
    passes = repeat.value.data if repeat is not None else 1
    resident = rb < rows and passes == 1
    buf = fused_attention_buffer(rows, t, d, dv, eb, fusion=fusion, row_block=rb, key_block=kb, kv_resident=resident,
                                 key_chunk=max(tile.mac_cols, 1))  # fmt: skip
    reserve = op.attributes.get("dataflow.reserve")
    buf = max(buf, reserve.value.data if reserve is not None else 0)
    # a FLAT member fills its score rows a chunk of the MAC array's width at a time: its steps (and the K/V
    # tokens it takes) are those chunks, as fused_attention_buffer counts its K/V room
    chunk = kb if fusion == "online" else min(max(tile.mac_cols, 1), max(t, 1))
    loops = (("unit", b * h), ("row_block", -(-rows // rb)), ("key_block", -(-t // chunk)))
    steps = b * h * loops[1][1] * loops[2][1]
    return KernelPlan("attention", "compute", loops, (rb, kb), buf, cycles, macs, steps)


def _stage_plan(op: Operation, arch, eb: int) -> KernelPlan:
    """K or V of a group held in a memory tile, one unit at a time (``dataflow.stage_units``: that many; K/V
    computed on chip come whole), and streamed to the group's first member once per pass: no work, a buffer of
    the units it holds and two key blocks."""
    units, _, t, d = sp.shape_of(op.results[0])
    passes = op.attributes["dataflow.stage"].value.data
    kb = min(op.attributes["dataflow.key_block"].value.data, t)
    held = op.attributes["dataflow.stage_units"].value.data if "dataflow.stage_units" in op.attributes else 1
    # a stage that keeps a unit's first keys only (``dataflow.stage_keys``) passes the others through: two key
    # blocks of room for them
    kept = op.attributes["dataflow.stage_keys"].value.data if "dataflow.stage_keys" in op.attributes else t
    through = 2 * kb if kept < t else 0
    loops = (("unit", units), ("repeat", passes), ("block", -(-t // kb)))
    return KernelPlan("data", "memory", loops, (kb,), eb * d * (held * kept + 2 * kb + through), 0, 0,
                      units * passes * loops[2][1])


# ---------------------------------------------------------------------------
# butterfly stage kernels (the rule docs/simulator.md states for a `butterfly_stage` instruction)


def stage_kernel_cycles(stages, n: int, rows: int, tile, tile_kind: str, row_block: int = 0) -> int:
    """Cycles of a kernel running ``stages`` (``attnc.butterfly.Stage``) one after the other on
    ``rows`` rows of ``n`` columns. On a compute tile each stage is ``n / width`` GEMMs of
    ``[rows, width] x [width, width]`` (``width = radix * block``): ``n / width * ceil(rows /
    mac_rows) * ceil(width / mac_cols) * width`` cycles, plus one MAC-array fill per kernel (with a
    ``row_block`` R below the MAC array's height: ``ceil(rows / R)`` part-full row steps); on a
    butterfly tile its ``rows * n * width`` MACs run as 2x2 butterflies of 4 MACs, ``vector_lanes``
    a cycle."""
    macs = sum(rows * n * st.width for st in stages)
    if tile_kind == "butterfly":
        return -(-(-(-macs // 4)) // max(tile.vector_lanes, 1))
    if tile_kind == "sfu":
        return -(-macs // max(tile.vector_lanes, 1))
    mr, mc = max(tile.mac_rows, 1), max(tile.mac_cols, 1)
    cycles = sum(stage_mac_cycles(n, st.width, rows, mr, mc, row_block) for st in stages)
    return cycles + (mr + mc if macs else 0)


def stage_mac_cycles(n: int, width: int, rows: int, mac_rows: int, mac_cols: int, row_block: int = 0) -> int:
    """MAC-array cycles of one butterfly stage on a compute tile, fill excluded: ``n / width`` GEMMs
    ``[rows, width] x [width, width]``, the rows taken ``row_block`` at a time (0: all at once). The
    graph model (:mod:`attnc.cost.kernels`) charges a stage by this rule too."""
    return n // width * row_steps(rows, mac_rows, row_block) * -(-width // mac_cols) * width


def streamed_weight_bytes(stage_bytes: list[int]) -> int:
    """SRAM a stage kernel holds of weights streamed from DRAM once per pass: two tokens of its weight load's
    stream (one in use, the next arriving). The load sends the kernel's weights (a slice per stage, side by
    side) once per pass in DMA bursts; what a token puts in the kernel's buffers is the largest slice the
    kernel reads (:func:`consumed_bytes`) over the bursts, as ``lower-to-dataflow`` declares it."""
    bursts = max(1, math.ceil(sum(stage_bytes) / DMA_BURST))
    return 2 * math.ceil(max(stage_bytes, default=0) / bursts)


def _butterfly_plan(stages: list[Operation], body_ops: list[Operation], arch, eb: int) -> KernelPlan:
    """A kernel of butterfly stages: ``("rows", T)`` row blocks streamed through it, on the tile
    kind the pipeline planner chose (``dataflow.tile_kind``; compute without one)."""
    from attnc.butterfly import Stage

    first = stages[0]
    shp = sp.shape_of(first.input)
    n = shp[-1]
    rows = max(1, int(np.prod(shp[:-1], dtype=np.int64)))
    kind_attr = first.attributes.get(df.TILE_KIND)
    tile_kind = kind_attr.data if kind_attr is not None else "compute"
    tiles = arch.tiles_of(tile_kind) or arch.tiles_of("compute")
    tile_kind = tiles[0].kind
    tile = max(tiles, key=lambda t: (t.macs_per_cycle, t.vector_lanes, t.sram_bytes))
    sts = [Stage(*op.params()) for op in stages]
    rows_attr = first.attributes.get(df.ROWS)
    tokens = max(1, min(rows_attr.value.data if rows_attr is not None else 1, rows))
    rb_attr = first.attributes.get("row_block")
    row_block = rb_attr.value.data if rb_attr is not None else 0
    cycles = stage_kernel_cycles(sts, n, rows, tile, tile_kind, row_block)
    macs = sum(rows * n * st.width for st in sts)
    # two tokens of the row stream, held whole (one updated in place, the next arriving), and the weights;
    # with weights streamed P times (dataflow.weight_passes) each slice is applied to every row of the pass:
    # a pass's rows and the next token are held (butterfly_pipeline.kernel_need)
    token = -(-rows // tokens)
    passes_attr = first.attributes.get(df.WEIGHT_PASSES)
    if passes_attr is not None:
        # one (group, stride) slice's matrix at a time, double-buffered, as they arrive in the order used
        weights = streamed_weight_bytes([nbytes(op.weight.type) for op in stages])
        held = max(-(-rows // passes_attr.value.data), token) + token
    else:
        weights = sum(nbytes(op.weight.type) for op in stages)
        held = 2 * token
    block = row_block or max(1, min(token, max(tile.mac_rows, 1)))
    buf = weights + held * n * eb
    claims = [op.attributes["dataflow.reserve"].value.data for op in stages if "dataflow.reserve" in op.attributes]
    reserve = max(claims, default=0)
    # elementwise ops of the body (none in the planner's kernels) run on the lanes after the stages
    vector = sum(_elems(op.results[0].type) for op in body_ops if op not in stages and op.results
                 and not isinstance(op, sp.ConstantOp) and not sp.is_data_movement(op))  # fmt: skip
    cycles += math.ceil(vector / max(tile.vector_lanes, 1))
    return KernelPlan("gemm", tile_kind, (("rows", tokens),), (block, n), max(buf, reserve), cycles, macs, tokens)
