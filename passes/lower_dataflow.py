"""lower-to-dataflow: partition @main's sparse IR into dataflow kernels.

Two steps, each keeping the numbers the reference interpreter computes:

1. ``sparse.attention`` that ``tile`` left unscheduled is expanded per (batch, head)
   into the unfused pipeline a dataflow array runs (:class:`LowerAttentionPerHeadPattern`):
   a QKᵀ GEMM kernel, a softmax kernel on a special-function tile (mask, causal bias
   and the fully-masked-row rule included) and a PV GEMM kernel. The head outputs
   are gathered back by data-movement ops. How many heads share a kernel is decided
   once for the module (:func:`heads_per_kernel`: the contexts the rest leaves).
2. Every compute op becomes a kernel of its own (ops tagged with the same
   ``dataflow.tag`` share one). Data-movement ops (reshape, transpose, slice,
   concat, broadcast, ...) and small constants are cloned into each kernel that
   reads them: on the array they are buffer addressing, not work. Graph inputs and
   large constants (weights) enter through DMA load kernels, results leave through
   DMA store kernels; a graph input that the memory stages of several groups each
   take a run of its leading axis from enters through one load per run
   (:func:`split_sliced_loads`).

Tile sizes, loop schedules, buffer sizes and cycle estimates come from the
architecture through the fixed rule of ``attnc.cost.work``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from attnc.arch.datatypes import element_bytes
from attnc.cost.attention import unfused_row_block
from attnc.cost.work import GEMM_BLOCK, SFU_OPS, consumed_bytes, kernel_cost, nbytes
from attnc.dialects import dataflow as df
from attnc.dialects import sparse as sp
from attnc.dialects.values import np_dtype
from attnc.dialects.dataflow import GROUP, REPEAT, RESERVE, ROWS, SPILL, STAGE, TAG, TILE_KIND, WEIGHT_PASSES
from attnc.errors import AttncError
from attnc.ir import io_names, main_func
from attnc.passes.target import TargetPass
from attnc.simulator.timing import MAX_STREAMED_SEGMENTS
from attnc.passes.concat_folds import fold_concats
from attnc.passes.fuse_attention import masked_softmax, scaled_scores
from attnc.passes.kernel_builder import KernelBuilder, splat
from attnc.passes import sram_phases
from attnc.passes.sram_phases import SHARE_ATTR, assign_phases
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import ArrayAttr, IntegerAttr, ModuleOp, StringAttr, TensorType
from xdsl.ir import Block, BlockArgument, Operation, SSAValue
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern, op_type_rewrite_pattern
from xdsl.rewriter import InsertPoint, Rewriter

#: constants up to this size are cloned into the kernels that use them (configuration data)
SMALL_CONSTANT_BYTES = 1024


def _head_slice(b: KernelBuilder, x: SSAValue, bi: int, hi: int) -> SSAValue:
    """x[bi, hi] of a rank-4 value as a 2-d matrix (size-1 dims broadcast)."""
    shp = sp.shape_of(x)
    bi = bi if shp[0] > 1 else 0
    hi = hi if shp[1] > 1 else 0
    s = b.add(sp.SliceOp(x, [bi, hi, 0, 0], [bi + 1, hi + 1, shp[2], shp[3]], [1, 1, 1, 1]))
    return b.add(sp.ReshapeOp(s, [shp[2], shp[3]]))


class LowerAttentionPerHeadPattern(RewritePattern):
    """Rewrites each ``sparse.attention`` that ``tile`` left unscheduled into the unfused pipeline per
    (batch, head): a QKᵀ GEMM kernel (scaled and soft-capped), a softmax kernel with the mask, the causal
    bias and the fully-masked-row rule, and a PV GEMM kernel, each kernel taking ``heads_per_kernel``
    consecutive (batch, head) units; the heads' outputs are concatenated back.

    ``names`` maps each op to lower to its kernels' name prefix; ``heads_per_kernel`` is the pass's
    decision for the whole module (:func:`heads_per_kernel`)."""

    def __init__(self, names: dict[sp.AttentionOp, str], heads_per_kernel: int = 1):
        self.names = names
        self.heads_per_kernel = heads_per_kernel

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.AttentionOp, rewriter: PatternRewriter) -> None:
        if op not in self.names:
            return
        name, per = self.names[op], self.heads_per_kernel
        bld = KernelBuilder(rewriter, op)
        bsz, hq, _, _ = sp.shape_of(op.q)
        elt = sp.elt_of(op.q)
        mask = op.mask
        if mask is not None and len(sp.shape_of(mask)) < 4:
            ms = sp.shape_of(mask)
            mask = bld.add(sp.ReshapeOp(mask, [1] * (4 - len(ms)) + list(ms)))
        consts = _HeadConstants(bld.add(splat([], elt, op.scale.value.data)), bld.add(splat([], elt, 0.0)),
                                bld.add(splat([], elt, -np.inf)))  # fmt: skip
        batches = []
        for bi in range(bsz):
            heads = []
            for hi in range(hq):
                unit = (bi * hq + hi) // per
                tag = f"{name}_b{bi}h{hi}" if per == 1 else f"{name}_g{unit}"
                group = f"{name}/b{bi}h{hi}" if per == 1 else f"{name}/g{unit}"
                heads.append(_lower_head(bld, op, mask, consts, bi, hi, tag, group))
            batches.append(heads[0] if len(heads) == 1 else bld.add(sp.ConcatOp(heads, 1)))
        bld.replace_anchor(batches[0] if len(batches) == 1 else bld.add(sp.ConcatOp(batches, 0)))


@dataclass(frozen=True)
class _HeadConstants:
    """The scalars every head's kernels share: the softmax scale, 0 and -inf."""

    scale: SSAValue
    zero: SSAValue
    neginf: SSAValue


def _lower_head(bld: KernelBuilder, op: sp.AttentionOp, mask: SSAValue | None, consts: _HeadConstants, bi: int,
                hi: int, tag: str, group: str) -> SSAValue:
    """The QKᵀ, softmax and PV kernels of (batch ``bi``, head ``hi``); returns its output as [1, 1, S, dv]."""
    sq, skv = sp.shape_of(op.q)[2], sp.shape_of(op.k)[2]
    dv = sp.shape_of(op.v)[3]
    rep = sp.shape_of(op.q)[1] // sp.shape_of(op.k)[1]
    qh = _head_slice(bld, op.q, bi, hi)
    kt = bld.add(sp.TransposeOp(_head_slice(bld, op.k, bi, hi // rep), [1, 0]))
    qk = bld.add(sp.MatmulOp(qh, kt), f"{tag}_qk", group)
    s = scaled_scores(bld, qk, consts.scale, op, f"{tag}_qk", group)
    mh = _head_slice(bld, mask, bi, hi) if mask is not None else None
    causal = op.causal_offset.value.data if op.causal is not None else None
    p = masked_softmax(bld, s, mh, causal, (sq, skv), consts.zero, consts.neginf, f"{tag}_softmax", group)
    vh = _head_slice(bld, op.v, bi, hi // rep)
    o = bld.add(sp.MatmulOp(p, vh), f"{tag}_pv", group)
    return bld.add(sp.ReshapeOp(o, [1, 1, sq, dv]))


# ---------------------------------------------------------------------------
# partitioning


def folds_into_kernels(op: Operation | None) -> bool:
    """Data movement and small constants: cloned into every kernel that reads them, never kernels of their own."""
    if isinstance(op, sp.ConstantOp):
        return nbytes(op.result.type) <= SMALL_CONSTANT_BYTES
    return sp.is_data_movement(op)


@dataclass
class _Kernel:
    name: str
    ops: list[Operation]
    group: str = ""


class _Partitioner:
    def __init__(self, fn: func.FuncOp, arch):
        self.fn = fn
        self.arch = arch
        self.block = fn.body.block
        self.streams: dict[SSAValue, SSAValue] = {}  # original value -> kernel output carrying it
        self.names: set[str] = set()
        self.kernel_of: dict[Operation, str] = {}

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self.names:
            name, i = f"{base}_{i}", i + 1
        self.names.add(name)
        return name

    def leaves(self, v: SSAValue, inside: set[Operation], seen: set[SSAValue] | None = None) -> list[SSAValue]:
        """The stream sources v depends on through cloneable data ops."""
        seen = set() if seen is None else seen
        if v in seen:
            return []
        seen.add(v)
        owner = v.owner
        if isinstance(owner, Operation) and owner in inside:
            return []
        if isinstance(owner, Operation) and folds_into_kernels(owner) and owner not in self.kernel_of:
            return [x for o in owner.operands for x in self.leaves(o, inside, seen)]
        return [v]

    def run(self) -> None:
        kernels: dict[str, _Kernel] = {}
        order: list[_Kernel] = []
        for op in list(self.block.ops):
            if isinstance(op, func.ReturnOp):
                continue
            # a tagged data op belongs to its kernel (a fused member forwarding K and V, a spill)
            if (folds_into_kernels(op) or isinstance(op, sp.ConstantOp)) and TAG not in op.attributes:
                continue
            tag = op.attributes.pop(TAG, None)
            group = op.attributes.pop(GROUP, None)
            key = tag.data if isinstance(tag, StringAttr) else f"#{id(op)}"
            if key not in kernels:
                base = tag.data if isinstance(tag, StringAttr) else op.name.removeprefix("sparse.")
                kernels[key] = _Kernel(self.unique(base), [], group.data if isinstance(group, StringAttr) else "")
                order.append(kernels[key])
            kernels[key].ops.append(op)
            self.kernel_of[op] = kernels[key].name
        # which values each producer must export
        exported: dict[Operation, list[SSAValue]] = {}
        consumers = [(set(k.ops), [o for op in k.ops for o in op.operands]) for k in order]
        ret = self.block.last_op
        assert isinstance(ret, func.ReturnOp)
        consumers += [(set(), [v]) for v in ret.operands]
        for inside, operands in consumers:
            for o in operands:
                for leaf in self.leaves(o, inside):
                    owner = leaf.owner
                    if isinstance(owner, Operation) and owner in self.kernel_of:
                        lst = exported.setdefault(owner, [])
                        if leaf not in lst:
                            lst.append(leaf)
        for k in order:
            outs = [v for op in k.ops for v in exported.get(op, [])]
            spill = len(k.ops) == 1 and k.ops[0].attributes.pop(SPILL, None) is not None
            self.build(k.name, k.ops, outs, k.group, dma="dma_spill" if spill else None)
        names = io_names(self.fn)[1]
        new_rets = []
        for v, name in zip(ret.operands, names):
            new_rets.append(self.build(self.unique(f"store_{name}"), [], [v], "", dma="dma_store")[0])
        for i, v in enumerate(new_rets):
            ret.operands[i] = v
        for op in reversed(list(self.block.ops)):
            if op is not ret and not isinstance(op, df.KernelOp) and not op.results[0].uses:
                Rewriter.erase_op(op)

    def source(self, leaf: SSAValue) -> SSAValue:
        """The stream that carries an original leaf value (DMA loads made on demand)."""
        if leaf in self.streams:
            return self.streams[leaf]
        owner = leaf.owner
        if isinstance(owner, sp.ConstantOp):
            label = f"load_const{len([n for n in self.names if n.startswith('load_const')])}"
            body_op = owner.clone()
            out = self._kernel(self.unique(label), [], [leaf.type], [body_op], [body_op.results[0]], "dma_load", owner)
        else:
            name = io_names(self.fn)[0][self.block.args.index(leaf)] if leaf in self.block.args else "value"
            out = self._kernel(self.unique(f"load_{name}"), [leaf], [leaf.type], [], None, "dma_load", None)
        self.streams[leaf] = out
        return out

    def _kernel(self, name, inputs, types, body_ops, yields, dma, anchor) -> SSAValue:
        block = Block(arg_types=[v.type for v in inputs])
        for op in body_ops:
            block.add_op(op)
        block.add_op(df.YieldOp(yields if yields is not None else list(block.args)))
        kop = self._kernel_op(name, inputs, block, dma, "")
        Rewriter.insert_op(kop, InsertPoint.at_start(self.block) if anchor is None else InsertPoint.before(anchor))
        return kop.results[0]

    def _kernel_op(self, name: str, inputs: list[SSAValue], block: Block, dma: str | None, group: str) -> df.KernelOp:
        """A kernel around a finished body (ending in its yield), costed for the architecture."""
        *body_ops, yield_op = list(block.ops)
        types = [v.type for v in yield_op.operands]
        cost = kernel_cost(body_ops, types, self.arch, dma=dma)
        # only fused attention kernels stream (their loop order is the order their inputs arrive in);
        # every other stream is one token, so its consumer starts when it is complete
        tokens = cost.tokens if cost.kind == "attention" or cost.tile_kind == "memory" else 1
        for op in body_ops:  # the staging markers have served the costing
            for key in (STAGE, "dataflow.key_block", "dataflow.stage_units", "dataflow.stage_keys",
                        "dataflow.weight_stage"):
                op.attributes.pop(key, None)
            if isinstance(op, sp.ButterflyStageOp):
                for key in (ROWS, TILE_KIND, RESERVE, WEIGHT_PASSES):
                    op.attributes.pop(key, None)
            elif isinstance(op, sp.MatmulOp):
                op.attributes.pop(RESERVE, None)
                op.attributes.pop(GEMM_BLOCK, None)
        return df.KernelOp(name, inputs, types, block, kind=cost.kind, tile_kind=cost.tile_kind, loops=cost.loops,
                           tile=cost.tile, buffer_bytes=cost.buffer_bytes, cycles=cost.cycles, macs=cost.macs,
                           tokens=[tokens] * len(types), group=group or None)  # fmt: skip

    def build(self, name: str, ops: list[Operation], outs: list[SSAValue], group: str, dma: str | None = None):
        inside = set(ops)
        mapping: dict[SSAValue, SSAValue] = {}
        inputs: list[SSAValue] = []
        block = Block()

        def materialize(v: SSAValue) -> SSAValue:
            if v in mapping:
                return mapping[v]
            owner = v.owner
            if isinstance(owner, Operation) and owner not in inside and folds_into_kernels(owner):
                copy_in(owner)
                return mapping[v]
            stream = v if isinstance(owner, df.KernelOp) else self.streams.get(v) or self.source(v)
            arg = block.insert_arg(v.type, len(block.args))
            inputs.append(stream)
            mapping[v] = arg
            return arg

        def copy_in(op: Operation) -> None:
            operands = [materialize(o) for o in op.operands]
            clone = op.clone()
            for i, o in enumerate(operands):
                clone.operands[i] = o
            block.add_op(clone)
            mapping.update(zip(op.results, clone.results))

        for op in ops:
            copy_in(op)
        block.add_op(df.YieldOp([materialize(v) for v in outs]))
        kop = self._kernel_op(name, inputs, block, dma, group)
        anchor = ops[0] if ops else self.block.last_op
        Rewriter.insert_op(kop, InsertPoint.before(anchor))
        for v, r in zip(outs, kop.results):
            self.streams[v] = r
        for op in reversed(ops):
            for r in op.results:
                if r in self.streams:
                    r.replace_all_uses_with(self.streams[r])
        return list(kop.results)


# ---------------------------------------------------------------------------
# a graph input read in disjoint runs of its leading axis: one load per run


def split_sliced_loads(fn: func.FuncOp, partitioner: _Partitioner) -> None:
    """A DMA load of a graph input that memory tiles stage (the K/V stages of a fused attention's groups) and
    whose readers each read within one run of its leading axis (a group takes its (batch, head) units) becomes
    one load per run, reading only that run's bytes of DRAM (``dram_offset``: a run of the leading axis is
    contiguous), and each reader reads its run's load. One load of the whole value multicasts every run to
    every stage: a stage, which keeps what it receives for its passes and declares room for its own units,
    would hold the other groups' too, the NoC carries them, and the groups' pipelines wait on one another
    through the shared load (a cycle the simulator's deadlock check finds, leaving the stages unthrottled).

    The row strip of a GEMM grid (every reader a part reading it as its matmul's left operand: the first part
    of each grid row, within its row block) is split too: one load of the whole strip is one DMA context, which
    the per-context fair share of DRAM gives as much as each column's weight load while it carries as many
    bytes as all of them, and every k-chunk of every part waits on it (cloud 512x768 @ 768x768: 1.40x its
    roofline with one load, 1.33x with one per grid row; 2048x3072 @ 3072x768: 1.62x, 1.12x).

    Other loads that only streaming readers take (a group's first member, Q for every member) stay whole: a member
    drops the tokens it does not read, and each more load is one more DMA context taking an equal share of
    DRAM from the one store of the output (split per group, cloud's BERT attention at seq 512, online, took
    8,827 cycles, not 7,235). Only where it is exact: every use of the input in a reader reaches, through
    reshapes, a slice whose leading axis (step 1) spans the same run, and any two readers' runs are equal or
    disjoint; and only while the DMA contexts leave an eighth of them free. Runs after the partitioner, before
    the stream passes, which then stream (bursts, tokens, re-reads per pass) each load as its readers take it."""
    block = fn.body.block
    contexts = sum(t.contexts for t in partitioner.arch.tiles_of("dma"))
    free = contexts - contexts // 8 - sum(1 for k in block.ops if isinstance(k, df.KernelOp) and sram_phases.is_dma(k))
    for load in [k for k in block.ops if isinstance(k, df.KernelOp) and _loads_graph_input(k, block)]:
        users = [(u.operation, u.index) for u in load.outputs[0].uses]
        if not users or not all(isinstance(u, df.KernelOp) for u, _ in users):
            continue
        strips = all(_grid_part(u) and _reaches_lhs(u, i) for u, i in users)
        runs = [_leading_run(u.body.block.args[i]) for u, i in users]
        if not strips and not any(u.tile_kind.data == "memory" for u, _ in users):
            # the row blocks of a row kernel (RMSNorm's parts) take their runs; other readers keep the load
            users, runs = map(list, zip(*[(x, r) for x, r in zip(users, runs) if r is not None and _row_wise(x[0])]
                                        or [((None, 0), None)]))  # fmt: skip
            if len(users) < 2:
                continue  # streaming readers only: they drop the runs they do not read (see the docstring)
        if any(r is None for r in runs):
            continue
        whole = load.inputs[0].type
        spans = sorted({(r.lo, r.hi) for r in runs})
        overlap = any(a[1] > b[0] for a, b in zip(spans, spans[1:]))
        if spans == [(0, _elems(whole))] or overlap or len(spans) - 1 > free:
            continue
        g = _strip_rows_per_load(load, [u for u, _ in users], spans, block) if strips else 1
        loads = [(spans[j][0], spans[j + g - 1][1], spans[j:j + g]) for j in range(0, len(spans), g)]
        free -= len(loads) - 1
        item = element_bytes(str(whole.element_type))
        for lo, hi, members in loads:
            readers = [(u, i, r) for (u, i), r in zip(users, runs) if (r.lo, r.hi) in members]
            t = readers[0][2].type
            body = Block(arg_types=[sp.tensor(_run_shape(t.get_shape(), hi - lo), t.element_type)])
            body.add_op(df.YieldOp([body.args[0]]))
            groups = {u.group.data for u, _, _ in readers if u.group is not None}
            tail = groups.pop().replace("/", "_") if len(groups) == 1 else f"e{lo}"  # named after its group
            twin = partitioner._kernel_op(partitioner.unique(f"{load.sym_name.data}_{tail}"), [load.inputs[0]],
                                          body, "dma_load", "")  # fmt: skip
            twin.attributes["dram_offset"] = IntegerAttr(lo * item, 64)
            Rewriter.insert_op(twin, InsertPoint.before(load))
            for u, i, run in readers:
                _read_run(u, i, run, twin.results[0], (lo, hi))
        if not load.outputs[0].uses:
            Rewriter.erase_op(load)


def split_cached_key_loads(fn: func.FuncOp, partitioner: _Partitioner) -> None:
    """A K/V stage that keeps only a unit's first keys (``fuse-attention``'s cached keys: its body concatenates
    two key ranges of its input, each a ``sparse.slice`` of one graph input's load) reads each range through a
    load of its own that reads just that range of every unit from DRAM (``dram_offset`` and ``dram_strides``:
    the input's strides). The range it keeps is loaded once; the range it passes through once per pass
    (``input_repeats``; :func:`stream_fused_inputs` repeats the load), so passes after the first read only the
    keys the stage does not keep."""
    block = fn.body.block
    for k in [k for k in block.ops if isinstance(k, df.KernelOp) and k.tile_kind.data == "memory"]:
        body = k.body.block
        cat = next((o for o in body.ops if isinstance(o, sp.ConcatOp)), None)
        passes = _stage_passes(k)
        if cat is None or len(k.inputs) != 1 or passes is None or not all(
                isinstance(x.owner, sp.SliceOp) for x in cat.operands):  # fmt: skip
            continue
        load = k.inputs[0].owner
        if not (isinstance(load, df.KernelOp) and _loads_graph_input(load, block) and load.dram_offset is None):
            continue
        slices = [x.owner for x in cat.operands]
        arg = body.args[0]
        # through reshapes only (a dense reshape keeps the elements' order: strides of the sliced shape)
        x = slices[0].input
        while x is not arg and isinstance(x.owner, sp.ReshapeOp):
            x = x.owner.input
        if x is not arg or any(s.input is not slices[0].input or any(v != 1 for v in s.steps.get_values())
                               for s in slices):  # fmt: skip
            continue
        shape = sp.shape_of(slices[0].input)
        strides = [int(np.prod(shape[i + 1:], dtype=np.int64)) for i in range(len(shape))]
        item = element_bytes(str(sp.elt_of(arg)))
        for j, s in enumerate(slices):
            starts = list(s.starts.get_values())
            region = Block(arg_types=[s.results[0].type])
            region.add_op(df.YieldOp([region.args[0]]))
            part = partitioner._kernel_op(partitioner.unique(f"{load.sym_name.data}_{k.sym_name.data}{j}"),
                                          [load.inputs[0]], region, "dma_load", "")  # fmt: skip
            part.attributes["dram_offset"] = IntegerAttr(sum(a * b for a, b in zip(starts, strides)) * item, 64)
            part.attributes["dram_strides"] = df.i64_array(strides)
            Rewriter.insert_op(part, InsertPoint.before(load))
            new = body.insert_arg(part.results[0].type, len(body.args))
            s.results[0].replace_all_uses_with(new)
            body.erase_op(s)
            k.operands = [*k.operands, part.results[0]]
        for op in reversed(list(body.ops)):
            if isinstance(op, sp.ReshapeOp) and not op.results[0].uses:
                body.erase_op(op)
        body.erase_arg(arg)
        k.operands = list(k.operands)[1:]
        # the kept keys come once, the others once per pass
        k.attributes[INPUT_REPEATS] = df.i64_array([1, passes])
        if not load.outputs[0].uses:
            Rewriter.erase_op(load)


def _stage_passes(k: df.KernelOp) -> int | None:
    """The passes of a memory-tile K/V stage (its ``("repeat", P)`` loop), or None for another kernel."""
    return dict(k.loop_schedule()).get("repeat")


def split_output_stores(fn: func.FuncOp, partitioner: _Partitioner) -> None:
    """The store of a graph output made of pieces each from its own streams -- its body concatenates them along an
    axis in which each is contiguous (a GEMM grid's output: one row block per grid row, each the concatenation of
    its row's parts) -- becomes one store per piece, writing only that piece's bytes of the output
    (``dram_offset``), and the output is the concatenation of their results (``df.store_regions``). One store of
    the whole output is one DMA context on one DMA tile: every part's result crosses that tile's few links, and
    it takes one fair share of DRAM against every load still running; the piece stores spread over DMA tiles and
    each writes its rows as its grid row finishes. Only for a grid's output (every input a grid's part), where the
    pieces read disjoint inputs (no stream goes to two stores), and only while the DMA contexts leave an eighth of
    them free. (A layer's output made by 32 row kernels, stored in 32 pieces, took 32 DMA contexts for nothing:
    the rows finish together; cloud's BERT layer at seq 512 went from 127,487 to 137,235 cycles.)"""
    block = fn.body.block
    ret = block.last_op
    assert isinstance(ret, func.ReturnOp)
    contexts = sum(t.contexts for t in partitioner.arch.tiles_of("dma"))
    free = contexts - contexts // 8 - sum(1 for k in block.ops if isinstance(k, df.KernelOp) and sram_phases.is_dma(k))
    for i, v in enumerate(list(ret.operands)):
        store = v.owner
        if not isinstance(store, df.KernelOp) or store.kind.data != "dma_store" or store.dram_offset is not None \
                or len(store.outputs) != 1 or len(list(v.uses)) != 1:
            continue
        if not all(isinstance(x.owner, df.KernelOp) and _grid_part(x.owner) for x in store.inputs):
            continue  # not a grid's output (a row kernel's parts each finish with the others: nothing to gain)
        pieces = _store_pieces(store)
        if pieces is None or len(pieces) - 1 > free:
            continue
        free -= len(pieces) - 1
        item = element_bytes(str(sp.elt_of(v)))
        body = store.body.block
        results, offset = [], 0
        for j, (piece, ops, args) in enumerate(pieces):
            part = Block(arg_types=[a.type for a in args])
            mapping: dict[SSAValue, SSAValue] = dict(zip(args, part.args))
            for op in body.ops:
                if op in ops:
                    part.add_op(op.clone(value_mapper=mapping))  # maps its operands, records its results
            part.add_op(df.YieldOp([mapping[piece]]))
            inputs = [store.inputs[a.index] for a in args]
            k = partitioner._kernel_op(partitioner.unique(f"{store.sym_name.data}_r{j}"), inputs, part, "dma_store", "")
            k.attributes["dram_offset"] = IntegerAttr(offset, 64)
            Rewriter.insert_op(k, InsertPoint.before(store))
            results.append(k.results[0])
            offset += _elems(piece.type) * item
        top = body.last_op.operands[0].owner
        assert isinstance(top, sp.ConcatOp)
        whole = sp.ConcatOp(results, top.axis.value.data)
        Rewriter.insert_op(whole, InsertPoint.before(ret))
        ret.operands[i] = whole.results[0]
        Rewriter.erase_op(store)


def _store_pieces(store: df.KernelOp) -> list[tuple[SSAValue, set[Operation], list[BlockArgument]]] | None:
    """The pieces a store's body concatenates into the value it writes, when each is contiguous in it (the dims
    before the axis are 1) and each is made from its own body arguments: per piece, the value, the body ops it
    is made by, and those arguments (in order); None otherwise."""
    body = store.body.block
    top = body.last_op.operands[0].owner
    if not isinstance(top, sp.ConcatOp) or len(top.inputs) < 2 \
            or int(np.prod(sp.shape_of(top.result)[: top.axis.value.data], dtype=np.int64)) != 1:
        return None
    pieces, seen = [], set()
    for piece in top.inputs:
        ops: set[Operation] = set()
        args: set[BlockArgument] = set()
        todo = [piece]
        while todo:
            x = todo.pop()
            if isinstance(x, BlockArgument):
                args.add(x)
            elif x.owner not in ops:
                ops.add(x.owner)
                todo.extend(x.owner.operands)
        if not args or args & seen:
            return None
        seen |= args
        pieces.append((piece, ops, sorted(args, key=lambda a: a.index)))
    return pieces


def _strip_rows_per_load(load: df.KernelOp, readers: list[df.KernelOp], spans: list[tuple[int, int]],
                         block: Block) -> int:
    """How many grid rows' runs (adjacent, contiguous together) one load of a row strip reads: 1, unless the parts
    hold their weight blocks. Those need every weight block whole and only their first row block of the strip
    before their first results (``_grid_part``: "resident"), and DRAM is shared fairly per DMA context, so a load
    per grid row gives the strip a share of DRAM beyond what that first pass needs of it, which the weights wait
    for: the strip takes the fewest loads whose fair share still covers its bytes' share of that pass (cloud
    512x768 @ 768x768, an 8x8 grid of two row blocks by 8 column loads: a load per grid row 7,770 cycles, per two
    7,398, per four 7,330)."""
    n = len(spans)
    if n < 2 or any(_grid_part(u) != "resident" for u in readers) or any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
        return 1
    groups = {u.group.data for u in readers if u.group is not None}
    parts = [k for k in block.ops if isinstance(k, df.KernelOp) and k.group is not None and k.group.data in groups]
    weights = {v.owner for k in parts for v in k.inputs
               if isinstance(v.owner, df.KernelOp) and v.owner.kind.data == "dma_load" and v.owner is not load}
    if not weights:
        return 1
    w_bytes = sum(nbytes(w.outputs[0].type) for w in weights)
    passes = max(dict(u.loop_schedule()).get("m", 1) for u in readers)
    first = nbytes(load.outputs[0].type) / passes  # what the first row block of every part reads of the strip
    need = first / (first + w_bytes)
    for loads in sorted(d for d in range(1, n + 1) if n % d == 0):
        if loads / (loads + len(weights)) >= need:
            return n // loads
    return 1


def _elems(t) -> int:
    return int(np.prod(t.get_shape(), dtype=np.int64))


def _loads_graph_input(k: df.KernelOp, block: Block) -> bool:
    """Whether ``k`` is a DMA load of a whole graph input (a body that yields its one argument)."""
    return (k.kind.data == "dma_load" and k.dram_offset is None and len(k.inputs) == 1 and len(k.outputs) == 1
            and k.inputs[0] in block.args and list(k.body.block.ops) == [k.body.block.last_op]
            and k.body.block.last_op.operands[0] is k.body.block.args[0])  # fmt: skip


@dataclass
class _Run:
    """The elements [lo, hi) (row-major) of a body argument within which its kernel reads, the slices that read
    them, and every op from the argument to those slices (reshapes, then the slices), outermost first."""

    lo: int
    hi: int
    slices: list[sp.SliceOp]
    chain: list[Operation]

    @property
    def type(self) -> TensorType:
        """The run as the first slice's operand shapes it: its leading axis cut to the run."""
        x = self.slices[0].input
        return sp.tensor(_run_shape(sp.shape_of(x), self.hi - self.lo), sp.elt_of(x))


def _lead(shape: Sequence[int]) -> int:
    """A shape's leading axis: its first of more than one element (the size-1 axes before it, a batch of one,
    leave the run of its range contiguous)."""
    return next((a for a, n in enumerate(shape) if n != 1), 0)


def _run_shape(shape: Sequence[int], elems: int) -> list[int]:
    """``shape`` with its leading axis (:func:`_lead`) cut to a run of ``elems`` elements."""
    a = _lead(shape)
    inner = int(np.prod(shape[a + 1:], dtype=np.int64))
    return [*shape[:a], elems // inner, *shape[a + 1:]]


def _leading_run(arg: SSAValue) -> _Run | None:
    """The run a kernel reads of its input ``arg``: every use reaches, through reshapes (which keep the
    row-major order), a slice taking a range of its operand's leading axis (step 1; the other axes as it
    likes), all the same elements of ``arg``; None otherwise (the kernel reads it in another way)."""
    chain: list[Operation] = []
    slices: list[sp.SliceOp] = []
    spans: set[tuple[int, int]] = set()

    def walk(v: SSAValue) -> bool:
        for use in v.uses:
            op = use.operation
            if isinstance(op, sp.ReshapeOp):
                chain.append(op)
                if not walk(op.results[0]):
                    return False
            elif isinstance(op, sp.SliceOp) and (span := _leading_span(op)) is not None:
                chain.append(op)
                slices.append(op)
                spans.add(span)
            else:
                return False
        return True

    if not walk(arg) or len(spans) != 1:
        return None
    lo, hi = spans.pop()
    return _Run(lo, hi, slices, chain)


def _leading_span(op: sp.SliceOp) -> tuple[int, int] | None:
    """The elements [lo, hi) of its operand that the leading-axis range of a slice covers (a contiguous run)."""
    shape = sp.shape_of(op.input)
    lead = _lead(shape)
    start, end, step = (int(a.get_values()[lead]) if shape else 0 for a in (op.starts, op.ends, op.steps))
    if not shape or step != 1 or end <= start:
        return None
    inner = int(np.prod(shape[lead + 1:], dtype=np.int64))
    return start * inner, end * inner


def _read_run(k: df.KernelOp, i: int, run: _Run, value: SSAValue, span: tuple[int, int] | None = None) -> None:
    """Make input ``i`` of ``k`` the run it reads (``value``, from the load of ``span``: the elements [lo, hi) of
    the input that hold the run, by default the run itself): each slice takes from the new argument (reshaped to
    the slice operand's inner axes) what it took of the run, and the ops that led to the slices go."""
    lo, hi = span or (run.lo, run.hi)
    block = k.body.block
    old = block.args[i]
    arg = block.insert_arg(value.type, i)
    for s in run.slices:
        shape = sp.shape_of(s.input)
        lead = _lead(shape)
        first = lo // int(np.prod(shape[lead + 1:], dtype=np.int64))  # where the load's value starts on that axis
        part = _run_shape(shape, hi - lo)
        x = arg
        if part != list(sp.shape_of(arg)):
            shaped = sp.ReshapeOp(arg, part)
            block.insert_op_before(shaped, s)
            x = shaped.results[0]
        starts, ends = list(s.starts.get_values()), list(s.ends.get_values())
        starts[lead], ends[lead] = starts[lead] - first, ends[lead] - first
        if starts == [0] * len(part) and ends == part and all(p == 1 for p in s.steps.get_values()):
            new = x  # the slice took the whole run
        else:
            new = sp.SliceOp(x, starts, ends, list(s.steps.get_values()))
            block.insert_op_before(new, s)
            new = new.results[0]
        s.results[0].replace_all_uses_with(new)
    for op in reversed(run.chain):
        if not any(r.uses for r in op.results):
            block.erase_op(op)
    block.erase_arg(old)
    k.operands[i] = value


@dataclass(frozen=True)
class LowerToDataflowPass(TargetPass):
    """lower-to-dataflow: partition sparse IR into dataflow kernels and streams for an architecture."""

    name = "lower-to-dataflow"


    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = self.target()
        fn = main_func(op)
        if any(isinstance(o, df.KernelOp) for o in fn.body.block.ops):
            raise AttncError("lower-to-dataflow: @main is already dataflow IR")
        self.refuse_empty(fn)
        # scheduled attentions (fused kernels made by `tile`) stay whole; the rest are lowered per head
        attention = [o for o in fn.body.block.ops if isinstance(o, sp.AttentionOp) and o.fusion is None]
        per_head = LowerAttentionPerHeadPattern({a: f"attn{i}" for i, a in enumerate(attention)},
                                                heads_per_kernel(fn, attention, arch))  # fmt: skip
        PatternRewriteWalker(per_head, apply_recursively=False).rewrite_region(fn.body)
        # a kernel that reads some of a GEMM's parts (a member one head of a projection) reads only those
        fold_concats(fn.body)
        partitioner = _Partitioner(fn, arch)
        partitioner.run()
        split_sliced_loads(fn, partitioner)
        split_cached_key_loads(fn, partitioner)
        split_output_stores(fn, partitioner)
        shared = fn.attributes.pop(SHARE_ATTR, None) is not None
        if shared:
            assign_phases(fn, arch, partitioner.unique)
        spill_held_queries(fn, partitioner)
        stream_fused_inputs(fn, arch)
        stream_butterfly_chains(fn, partitioner.unique, shared)
        split_grid_loads(fn, partitioner.unique)
        split_forked_loads(fn, partitioner.unique)
        stream_gemm_grids(fn)
        stream_gemm_weights(fn, arch)
        stream_unfused_attention(fn, arch)
        stream_gemm_rows(fn)
        stream_row_wise(fn)
        stream_spilled_rows(fn)
        stream_row_weights(fn, arch)
        stream_into_dma(fn, arch)
        size_stream_buffers(fn, arch)


#: per input of a fused kernel, how many times it is streamed in (K and V once per pass)
INPUT_REPEATS = "input_repeats"


def spill_held_queries(fn: func.FuncOp, partitioner: _Partitioner) -> None:
    """A value a compute kernel makes whole for fused attention members alone (a butterfly chain's queries after
    its bias add), of which a member's slice is more than its declared buffers, goes through DRAM: a
    ``dma_spill`` whose read side brings each member its slice in the blocks its loops take (unit by unit, a row
    block at a time; :func:`stream_fused_inputs` streams it). The producer makes rows of every head while a
    member walks one head's rows after another, so on chip the member would hold its whole slice (BERT-base's
    butterfly layer on edge at seq 2048: 384 KiB of queries in each 16 KiB member)."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    for k in kernels:
        if k.kind.data in ("dma_load", "dma_store", "dma_spill") or k.tile_kind.data == "memory":
            continue
        for j, r in enumerate(k.outputs):
            users = consumers.get(r, [])
            if list(k.tokens.get_values())[j] != 1 or not users or any(u.kind.data != "attention" for u, _ in users):
                continue
            if all(consumed_bytes(u.body.block.args[i]) <= u.buffer_bytes.value.data for u, i in users):
                continue
            block = Block(arg_types=[r.type])
            block.add_op(sp.ReshapeOp(block.args[0], sp.shape_of(r)))
            block.add_op(df.YieldOp([block.ops.last.results[0]]))
            spill = partitioner._kernel_op(partitioner.unique(f"{k.sym_name.data}_qspill"), [r], block, "dma_spill",
                                           users[0][0].group.data if users[0][0].group is not None else "")
            Rewriter.insert_op(spill, InsertPoint.after(k))
            for u, i in users:
                u.operands[i] = spill.outputs[0]


def _reaches(arg: SSAValue, target: SSAValue) -> bool:
    """Whether a body argument flows into ``target`` through data-movement ops only."""
    if arg is target:
        return True
    return any(
        sp.is_data_movement(u.operation) and _reaches(u.operation.results[0], target) for u in arg.uses
    )


def _consumers(kernels: list[df.KernelOp]) -> dict[SSAValue, list[tuple[df.KernelOp, int]]]:
    """Each kernel output's readers: (kernel, input index)."""
    out: dict[SSAValue, list[tuple[df.KernelOp, int]]] = {}
    for k in kernels:
        for i, v in enumerate(k.inputs):
            out.setdefault(v, []).append((k, i))
    return out


def _read_by_rows(users: list[tuple[df.KernelOp, int]], rows: int) -> bool:
    """Whether a value of ``rows`` rows has readers and every one reads it row block by row block (a fused
    attention streams in its own loop order, not by rows)."""
    return bool(users) and all(
        u.kind.data != "attention" and _row_aligned(u.body.block.args[i], rows) for u, i in users
    )


def stream_fused_inputs(fn: func.FuncOp, arch=None) -> None:
    """Stream the DMA loads that feed only fused attention kernels (one token per burst; K and V one token per
    key block a member takes, see :func:`_kv_block_bytes`), and make K/V loads re-read DRAM once per pass when
    a member streams K/V several times."""
    chunk = max((t.mac_cols for t in arch.tiles_of("compute")), default=8) if arch is not None else 8
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    # the spills of one phase (scores, or probabilities) run together and share DRAM: their cycles
    # (and so the rates the placer budgets for their streams) are those of all of them
    spills = [k for k in kernels if k.kind.data == "dma_spill"]
    for k in spills:
        k.cycles = IntegerAttr(k.cycles.value.data * max(1, len(spills) // 2), 64)
    repeats: dict[df.KernelOp, list[int]] = {}
    blocks: dict[df.KernelOp, list[int]] = {}  # per input of a member, the bytes of the K/V block it takes at once
    kv: dict[df.KernelOp, list[bool]] = {}  # per input of a member, whether it brings K or V
    for k in kernels:
        if k.kind.data != "attention":
            continue
        attn = next(o for o in k.body.block.ops if isinstance(o, sp.AttentionOp))
        attn.attributes.pop(RESERVE, None)
        rep = attn.attributes.pop(REPEAT, None)
        # (a member that keeps K and V resident -- several row blocks, one pass -- takes them whole per unit)
        streams_kv = rep is not None or attn.schedule()[1] >= sp.shape_of(attn.q)[2]
        blocks[k] = [_fused_block_bytes(attn, a, streams_kv, chunk) for a in k.body.block.args]
        passes = rep.value.data if rep is not None else 1
        kv[k] = [any(_reaches(a, x) for x in (attn.k, attn.v)) for a in k.body.block.args]
        reps = [passes if is_kv else 1 for is_kv in kv[k]]
        repeats[k] = reps
        if passes > 1:
            k.attributes[INPUT_REPEATS] = df.i64_array(reps)
    for k in kernels:
        # a K/V stage that passes some keys through reads them once per pass (``split_cached_key_loads``)
        if k.tile_kind.data == "memory" and (reps := k.attributes.get(INPUT_REPEATS)) is not None:
            repeats[k] = [int(r) for r in reps.get_values()]
    for k in kernels:
        # a load, or a spill of K/V computed on chip (written once, read back once per pass)
        if k.kind.data not in ("dma_load", "dma_spill") or not k.outputs:
            continue
        users = [u for r in k.outputs for u in consumers.get(r, [])]
        if not users or any(u.kind.data != "attention" and u.tile_kind.data != "memory" for u, _ in users):
            continue
        bursts = dict(k.loop_schedule()).get("burst", 1)
        # q, K and V go to the members in the blocks they take at once (a row block of q; K and V a key block,
        # or a unit's whole K or V where a member keeps them for all its row blocks), not in DMA bursts of several
        # blocks (tiny's 4 KiB burst is a whole compute tile): the token is the finest block a member takes,
        # counted over the whole value it loads
        block = min((blocks[u][i] for u, i in users if u in blocks and blocks[u][i]), default=0)
        if block and len(k.outputs) == 1 and (blocks_in := -(-nbytes(k.outputs[0].type) // block)) > bursts:
            # (a step per token: the load sends each block as it is read)
            bursts = blocks_in
            k.loops = ArrayAttr([StringAttr("burst")])
            k.trips = df.i64_array([bursts])
        k.tokens = df.i64_array([bursts] * len(k.outputs))
        passes = {repeats[u][i] if u in repeats else 1 for u, i in users}
        if len(passes) == 1 and (p := passes.pop()) > 1:
            k.loops = ArrayAttr([StringAttr("repeat"), StringAttr("burst")])
            k.trips = df.i64_array([p, bursts])
            k.tokens = df.i64_array([p * bursts] * len(k.outputs))
            k.cycles = IntegerAttr(p * k.cycles.value.data, 64)
        # grouped-query attention: the members' steps walk every query head, G of which share each K/V head, so
        # a member takes 1/G of a K/V burst a step and forwards it to the next member in those finer tokens; the
        # load sends its bursts in them too, else the next member's room (counted in its tokens) would be less
        # than one of the load's and back-pressure could never let a burst leave
        sent = int(k.tokens.get_values()[0])
        steps = {math.prod(t for _, t in u.loop_schedule()) if u in kv and kv[u][i] else 0 for u, i in users}
        if len(steps) == 1 and (n := steps.pop()) > sent and n % sent == 0 and len(set(k.tokens.get_values())) == 1:
            k.tokens = df.i64_array([n] * len(k.outputs))


def _fused_block_bytes(attn: sp.AttentionOp, arg: SSAValue, streams_kv: bool, chunk: int) -> int:
    """Bytes of input ``arg`` a fused member takes at once (0 for an input it reads otherwise, a mask): a row
    block of q; of K or V a key block when it streams them (:func:`_kv_block_bytes`), else a unit's whole K or V,
    which it keeps for all that unit's row blocks (``fused_attention_buffer``'s resident K/V)."""
    if any(_reaches(arg, x) for x in (attn.k, attn.v)):
        if streams_kv:
            return _kv_block_bytes(attn, chunk)
        x = attn.k if _reaches(arg, attn.k) else attn.v
        return sp.shape_of(x)[2] * sp.shape_of(x)[3] * np_dtype(sp.elt_of(x)).itemsize
    if _reaches(arg, attn.q):
        rows = min(attn.schedule()[1], sp.shape_of(attn.q)[2])
        return rows * sp.shape_of(attn.q)[3] * np_dtype(sp.elt_of(attn.q)).itemsize
    return 0


def _kv_block_bytes(attn: sp.AttentionOp, chunk: int) -> int:
    """Bytes of K (the larger of K and V) a fused member takes at once: its key block (FLAT: ``chunk`` keys, the
    MAC array's width, as :func:`attnc.cost.attention.fused_attention_buffer` counts it)."""
    fusion, _, kb = attn.schedule()
    t = sp.shape_of(attn.k)[2]
    keys = min(kb if fusion == "online" else chunk, t)
    return keys * max(sp.shape_of(attn.k)[3], sp.shape_of(attn.v)[3]) * np_dtype(sp.elt_of(attn.k)).itemsize


def heads_per_kernel(fn: func.FuncOp, attention: list[sp.AttentionOp], arch) -> int:
    """How many (batch, head) units one attention kernel takes: one, unless the
    per-head softmax and GEMM kernels would not fit the contexts of the array's
    special-function and compute tiles next to the model's other kernels."""
    units = sum(sp.shape_of(a.q)[0] * sp.shape_of(a.q)[1] for a in attention)
    if not units:
        return 1
    skip = (sp.ConstantOp, sp.AttentionOp, func.ReturnOp)
    others = [o for o in fn.body.block.ops if not folds_into_kernels(o) and not isinstance(o, skip)]
    sfu_other = sum(isinstance(o, SFU_OPS) for o in others)
    compute_other = len(others) - sfu_other
    sfu_free = max(1, sum(t.contexts for t in arch.tiles_of("sfu")) - sfu_other)
    compute_free = max(2, sum(t.contexts for t in arch.tiles_of("compute")) - compute_other)
    return max(1, math.ceil(units / sfu_free), math.ceil(2 * units / compute_free))


# ---------------------------------------------------------------------------
# butterfly stage pipelines stream row blocks


def _stage_rows(k: df.KernelOp) -> int | None:
    """The rows a stage kernel walks (its first stage's input rows), or None for other kernels."""
    for op in k.body.block.ops:
        if isinstance(op, sp.ButterflyStageOp):
            return int(np.prod(sp.shape_of(op.input)[:-1], dtype=np.int64))
    return None


#: ops that work row by row (a consumer of a row-streamed value may start on its first row blocks)
_ROW_OPS = (sp.ButterflyStageOp, sp.MatmulOp, sp.CastOp, *sp.UNARY_OPS, *sp.BINARY_OPS)


def _row_reduce(op: Operation) -> bool:
    """A reduction of each row along the last axis alone, kept as a column (a row's sum)."""
    if not isinstance(op, sp.ReduceOp) or op.keepdims is None:
        return False
    rank = len(sp.shape_of(op.input))
    return bool(rank) and [a % rank for a in op.axes.get_values()] == [rank - 1]


def _row_aligned(v: SSAValue, rows: int) -> bool:
    """Whether every use of ``v`` reads it row block by row block: through data movement that keeps
    each of its ``rows`` rows' elements together (reshapes; slices, concats, gathers, pads and
    transposes behind a prefix of untouched dims holding a multiple of ``rows``) into row-wise ops
    (as their data operand, not a stage's weight) or out of the kernel."""
    shp = sp.shape_of(v)

    def behind(axes: list[int]) -> bool:
        lo = min(axes, default=len(shp))
        prefix = int(np.prod(shp[:lo], dtype=np.int64))
        return rows > 0 and prefix % rows == 0

    for use in v.uses:
        op = use.operation
        if isinstance(op, df.YieldOp):
            continue
        if isinstance(op, sp.ReshapeOp):
            ok = True
        elif isinstance(op, sp.SliceOp):
            st, en = list(op.starts.get_values()), list(op.ends.get_values())
            ok = behind([d for d in range(len(shp)) if (st[d], en[d]) != (0, shp[d])])
        elif isinstance(op, sp.ConcatOp):
            ok = behind([op.axis.value.data % len(shp)])
        elif isinstance(op, sp.GatherOp):
            ok = use.index == 0 and behind([op.axis.value.data % len(shp)])
        elif isinstance(op, sp.PadOp):
            pads = list(op.pads.get_values())
            ok = behind([d for d in range(len(shp)) if pads[d] or pads[d + len(shp)]])
        elif isinstance(op, sp.TransposeOp):
            perm = list(op.permutation.get_values())
            ok = behind([d for d in range(len(shp)) if perm[d] != d])
        elif isinstance(op, sp.LayerNormOp) and use.index == 0 and op.axis.value.data % len(shp) == len(shp) - 1:
            continue  # normalises each row alone; its result is the kernel's business
        elif _row_reduce(op):
            continue  # reduces each row alone (a column part's share of a norm's sums)
        elif isinstance(op, _ROW_OPS):
            # a stage's or a matmul's data operand (not its weight), either side of an elementwise op
            ok = use.index == 0 or not isinstance(op, (sp.ButterflyStageOp, sp.MatmulOp))
            if ok:
                continue  # the op's own loops take the rows; its result is the kernel's business
        else:
            ok = False
        if not ok or not (op.results and _row_aligned(op.results[0], rows)):
            return False
    return True


def stream_butterfly_chains(fn: func.FuncOp, unique: Callable[[str], str], shared: bool = False) -> None:
    """Stage kernels stream their row blocks to consumers that read them row by row (the next
    stages, a bias add, a store), and the DMA loads that feed only stage kernels that way stream
    one token per burst; everything else keeps one token. A load several chains read is one per chain
    when phases share SRAM (``shared``) or a kernel spills to DRAM (:func:`_load_per_chain`)."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    rows_of = {k: _stage_rows(k) for k in kernels}
    for k in kernels:
        rows = rows_of[k]
        if rows is None:
            continue
        tokens = dict(k.loop_schedule()).get("rows", 1)
        if tokens <= 1:
            continue
        out = list(k.tokens.get_values())
        for j, r in enumerate(k.outputs):
            if _read_by_rows(consumers.get(r, []), rows):
                out[j] = tokens
        k.tokens = df.i64_array(out)
    for k in kernels:
        # a piece of a chain's weights held in a memory tile: its stage kernels read it once per pass
        if k.tile_kind.data == "memory" and k.outputs and (passes := dict(k.loop_schedule()).get("repeat", 1)) > 1:
            users = [u for r in k.outputs for u in consumers.get(r, [])]
            if users and all(rows_of.get(u) for u, _ in users):
                _repeat_inputs(users, passes)
    spills = shared or any(k.kind.data == "dma_spill" for k in kernels)
    for k in kernels:
        if k.kind.data != "dma_load" or not k.outputs:
            continue
        const = next((o for o in k.body.block.ops if isinstance(o, sp.ConstantOp)), None)
        if const is not None:
            passes = const.attributes.pop(WEIGHT_PASSES, None)
            if passes is not None and passes.value.data > 1:
                _repeat_weights(k, passes.value.data, consumers.get(k.outputs[0], []))
            continue
        users = consumers.get(k.outputs[0], [])
        if not _streams_to_stages(users, rows_of, k.outputs[0]):
            continue
        # a token per burst, or per row block of its stages when those are finer: a token is what a stage's
        # buffers take in at once, not a burst four times their size
        blocks = min(dict(u.loop_schedule()).get("rows", 1) for u, _ in users if rows_of.get(u))
        tokens = df.i64_array([max(dict(k.loop_schedule()).get("burst", 1), blocks)])
        if any(not rows_of.get(u) for u, _ in users):
            _load_again_for_others(k, users, rows_of, unique, tokens)
        k.tokens = tokens
        stage_users = [(u, j) for u, j in users if rows_of.get(u)]
        if spills or not _held_downstream(stage_users, kernels, consumers):
            _load_per_chain(k, stage_users, unique)
    for k in kernels:
        if rows_of[k]:
            _walk_weight_chunks(k)


def _walk_weight_chunks(k: df.KernelOp) -> None:
    """A stage kernel whose weights come again every row block (``('repeat', P)``, P its row blocks) in C chunks
    a pass applies each chunk to the row block as it arrives: its loops become ``('rows', P), ('chunk', C)``, a
    step per chunk. With a step per row block a step would need the whole pass of weights at once (C chunks next
    to the row block: 12 KiB on edge's 8 KiB butterfly tiles), which is not how it runs (the planner counts two
    chunks, ``cost.work.streamed_weight_bytes``)."""
    sched = k.loop_schedule()
    if [n for n, _ in sched] != ["rows"]:
        return
    rows = sched[0][1]
    reps = k.attributes.get(INPUT_REPEATS)
    if reps is None:
        return
    chunks = 1
    for v, rep in zip(k.inputs, reps.get_values()):
        src = v.owner
        if rep != rows or not isinstance(src, df.KernelOp):
            continue
        t = list(src.tokens.get_values())[list(src.outputs).index(v)]
        if t % rows == 0:
            chunks = max(chunks, t // rows)
    if chunks > 1:
        k.loops = ArrayAttr([StringAttr("rows"), StringAttr("chunk")])
        k.trips = df.i64_array([rows, chunks])


def _held_downstream(stages: list[tuple[df.KernelOp, int]], kernels: list[df.KernelOp], consumers: dict) -> bool:
    """Whether every stage chain of ``stages`` (the first kernels of the chains reading one load) ends, through
    its own kernels and row-wise ones (a bias add), only in kernels that take its result whole as it comes:
    fused attention members (which hold their queries) and K/V stages on memory tiles. Such chains never wait
    for one another downstream, so they run in step."""
    groups = {u.group.data for u, _ in stages if u.group is not None}
    if len(groups) < 2:
        return False
    by_group: dict[str, list[df.KernelOp]] = {}
    for k in kernels:
        if k.group is not None:
            by_group.setdefault(k.group.data, []).append(k)
    for g in groups:
        todo, seen = list(by_group.get(g, [])), set()
        while todo:
            k = todo.pop()
            if k in seen:
                continue
            seen.add(k)
            for r in k.outputs:
                for u, _ in consumers.get(r, []):
                    if u.kind.data == "attention" or u.tile_kind.data == "memory":
                        continue
                    if (u.group is not None and u.group.data == g) or _row_wise(u):
                        todo.append(u)
                    else:
                        return False
    return True


def _load_per_chain(k: df.KernelOp, stages: list[tuple[df.KernelOp, int]], unique: Callable[[str], str]) -> None:
    """A value several stage chains read (a layer's input: the Q, K and V chains, and the output projection's
    residual) is loaded once per chain (for the stage kernels of the chain that read it: its first stage's column
    parts, which read in step) when an attention spills its K/V to DRAM. From one load it would reach the chains at
    the pace of the slowest (the producer sends a token when every consumer has room for it), and the chains run
    far apart: the query chain feeds the attention that the key and value chains' spills feed too, and the output
    chain waits for the attention's result. Held to one chain, each load runs in step with it; the value comes
    from DRAM again instead of waiting in the chains' buffers, unthrottled (BERT-base's butterfly layer on edge at
    seq 2048: 3 MB in 8 KiB tiles), or deadlocking them. Without spills, chains that end only in kernels taking
    their results whole as they come (the caller's checks, :func:`_held_downstream`: K/V staged in memory tiles,
    the queries held by the members, as on cloud) run in step, and one load feeds them all: BERT-base's
    butterfly layer on cloud at seq 512 read its input three times (4.7 MB, 10K cycles of DRAM before the
    attention could start)."""
    chains: dict[str, list[df.KernelOp]] = {}  # by chain (the column parts of one stage read in step)
    for u, _ in stages:
        name = u.group.data if u.group is not None else u.sym_name.data
        if u not in chains.setdefault(name, []):
            chains[name].append(u)
    bursts = dict(k.loop_schedule()).get("burst", 1)
    loads = [k] + [_fork_load(k, [(u, j) for u in readers for j, v in enumerate(u.inputs) if v is k.outputs[0]],
                              unique, name) for name, readers in list(chains.items())[1:]]  # fmt: skip
    for load, readers in zip(loads, chains.values()):
        # each load in its own chain's row blocks (a token per burst, or per row block when those are finer):
        # in the finest chain's blocks a token would be a fraction of another chain's row block, in a burst a
        # fraction of a row (BERT-base's Q, K and V chains on edge at seq 512: 1 row and 4 rows a block, 192
        # bursts of 2.7 rows, which a stage kernel holding two 1-row blocks does not fit)
        blocks = min(dict(u.loop_schedule()).get("rows", 1) for u in readers)
        load.tokens = df.i64_array([max(bursts, blocks)])


def _load_again_for_others(k: df.KernelOp, users: list[tuple[df.KernelOp, int]], rows_of: dict,
                           unique: Callable[[str], str], tokens: ArrayAttr) -> None:
    """A loaded value that stage chains and a later row kernel both read (a block's input, which its
    residual add reads after the attention): the row kernel gets a load of its own. From one load the
    value would stream to the chains and wait whole in the row kernel's buffers until the chains' results
    reach it (the fork-join is not throttled); read twice from DRAM, each load runs in step with its
    readers. The stage kernels keep ``k``; both loads send ``tokens`` (the chains' row blocks, so the row
    kernel holds two of them, not the whole)."""
    again = _fork_load(k, [(u, j) for u, j in users if not rows_of.get(u)], unique, "again")
    again.tokens = tokens


def _streams_to_stages(users: list[tuple[df.KernelOp, int]], rows_of: dict, v: SSAValue) -> bool:
    """Whether a loaded value may stream in row blocks: stage kernels read it row block by row block, and
    so does every other reader -- a row-wise kernel (a residual add, a layer norm) or a store (an input
    that also feeds a block's residual path would otherwise come whole, and every chain reading it would
    hold all of it)."""
    rows = int(np.prod(sp.shape_of(v)[:-1], dtype=np.int64))
    stages = [(u, i) for u, i in users if rows_of.get(u)]
    if not stages or not all(_row_aligned(u.body.block.args[i], rows_of[u]) for u, i in stages):
        return False
    others = [(u, i) for u, i in users if not rows_of.get(u)]
    return all(_row_wise(u) or u.kind.data == "dma_store" for u, _ in others) and (
        not others or _read_by_rows(others, rows))


def _row_wise(k: df.KernelOp) -> bool:
    """Whether every op of ``k`` works row by row along the last axis (elementwise ops and casts, a layer norm
    over the last axis, a reduction of the last axis alone kept as a column -- a row sum, RMSNorm's mean of
    squares --, data movement and constants)."""
    if k.kind.data not in ("elementwise", "layer_norm", "reduce"):
        return False
    for op in k.body.block.ops:
        if isinstance(op, (df.YieldOp, sp.ConstantOp, sp.CastOp, *sp.UNARY_OPS, *sp.BINARY_OPS, sp.WhereOp)) \
                or folds_into_kernels(op) or _row_reduce(op):
            continue
        rank = len(sp.shape_of(op.operands[0])) if op.operands else 0
        if isinstance(op, sp.LayerNormOp) and op.axis.value.data % max(rank, 1) == rank - 1:
            continue
        return False
    return True


def stream_row_wise(fn: func.FuncOp) -> None:
    """Row-wise kernels (a bias add, GELU's ops, a residual add, a layer norm) fed row blocks by a
    streaming producer pass them on as they come, to consumers that read them row by row, so a chain
    of them overlaps with the stages before it and with each other instead of each waiting for the
    whole tensor. Kernels come in program order, so a producer is settled before its consumers."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    # row streams: what stage kernels stream (a fused attention streams in its own loop order, not by rows)
    tokens_of = {r: int(t) for k in kernels if _stage_rows(k) for r, t in zip(k.outputs, k.tokens.get_values())}
    for k in kernels:
        streamed = max((tokens_of.get(v, 1) for v in k.inputs), default=1)
        if streamed <= 1 or not _row_wise(k):
            continue
        out = list(k.tokens.get_values())
        for j, r in enumerate(k.outputs):
            rows = int(np.prod(sp.shape_of(r)[:-1], dtype=np.int64))
            if rows >= streamed and _read_by_rows(consumers.get(r, []), rows):
                out[j] = streamed
                tokens_of[r] = streamed
        k.tokens = df.i64_array(out)
        # a step per token that comes: with fewer steps than tokens a step would take several at once
        sched = k.loop_schedule()
        if [n for n, _ in sched] == ["rows"] and sched[0][1] < streamed:
            k.trips = df.i64_array([streamed])


def _repeat_weights(k: df.KernelOp, passes: int, users: list[tuple[df.KernelOp, int]],
                    bursts: int | None = None) -> None:
    """A value that does not stay on chip (a stage chain's weights, an unsplit GEMM's weight, an unfused
    attention's K or V): the load or spill reads it from DRAM once per row block, in ``bursts`` tokens a pass
    (its own bursts by default), and its consumers (each pass needs its copy) read it that many times."""
    if bursts is None:
        bursts = dict(k.loop_schedule()).get("burst", 1)
    k.loops = ArrayAttr([StringAttr("repeat"), StringAttr("burst")])
    k.trips = df.i64_array([passes, bursts])
    k.tokens = df.i64_array([passes * bursts] * len(k.outputs))
    k.cycles = IntegerAttr(passes * k.cycles.value.data, 64)
    _repeat_inputs(users, passes)


def _repeat_inputs(users: list[tuple[df.KernelOp, int]], passes: int) -> None:
    """Each consumer reads its input ``passes`` times (the routes carry that many copies)."""
    for u, i in users:
        reps = u.attributes.get(INPUT_REPEATS)
        vals = list(reps.get_values()) if reps is not None else [1] * len(u.inputs)
        vals[i] = passes
        u.attributes[INPUT_REPEATS] = df.i64_array(vals)


# ---------------------------------------------------------------------------
# GEMM grids stream their operands in k-chunks


#: a part of a GEMM grid that reads its row strip several times (attnc.passes.gemm.A_PASSES)
A_PASSES = "dataflow.a_passes"


def _copied_input(k: df.KernelOp, j: int) -> int | None:
    """The input whose copy output ``j`` of ``k`` is (through data movement; for a concatenation of inputs, a
    row strip made of the parts a spill brings, the first of them, however the concatenations nest: T5's FFN2
    joins its pieces by rows, then those by columns), or None."""
    def root(v: SSAValue) -> SSAValue:
        while isinstance(v.owner, Operation) and sp.is_data_movement(v.owner) and len(v.owner.operands) == 1:
            v = v.owner.operands[0]
        return v

    def leaves(v: SSAValue) -> list[SSAValue]:
        v = root(v)
        if isinstance(v.owner, sp.ConcatOp):
            return [x for o in v.owner.operands for x in leaves(o)]
        return [v]

    args = k.body.block.args
    parts = leaves(k.body.block.last_op.operands[j])
    return args.index(parts[0]) if all(v in args for v in parts) else None


def _grid_part(k: df.KernelOp) -> str | None:
    """"streamed" for a part of a GEMM grid that streams both operands in k-chunks, "resident" for one that
    holds its weight block whole (it needs it before its first step), None for other kernels."""
    if k.kind.data != "gemm":
        return None
    return {("m", "n", "k"): "streamed", ("m", "k"): "resident"}.get(tuple(n.data for n in k.loops.data))


def _reaches_lhs(k: df.KernelOp, i: int) -> bool:
    """Whether input ``i`` of kernel ``k`` is (through data movement) the left operand of its matmul."""
    mm = next(o for o in k.body.block.ops if isinstance(o, sp.MatmulOp))
    return _reaches(k.body.block.args[i], mm.lhs)


def _fork_load(k: df.KernelOp, readers: list[tuple[df.KernelOp, int]], unique: Callable[[str], str],
               suffix: str = "rest") -> df.KernelOp:
    """A second load of what DMA load ``k`` reads (from DRAM again, named ``<k>_<suffix>``), placed after it,
    which ``readers`` (kernel, input index) read instead."""
    twin = k.clone()
    twin.attributes["sym_name"] = StringAttr(unique(f"{k.sym_name.data}_{suffix}"))
    k.parent_block().insert_op_after(twin, k)
    for u, i in readers:
        u.operands[i] = twin.results[0]
    return twin


def _grid_lhs(u: df.KernelOp, i: int) -> bool:
    """Whether input ``i`` of ``u`` is one a GEMM grid streams in k-chunks (:func:`stream_gemm_grids`)."""
    return _grid_part(u) == "streamed" or (_grid_part(u) is not None and _reaches_lhs(u, i))


def split_grid_loads(fn: func.FuncOp, unique: Callable[[str], str]) -> None:
    """A DMA load that GEMM grid parts stream in k-chunks and other kernels read too (a layer's input: the QKV
    grid's rows and the residual of the output projection) becomes two loads, one for each: one load serves its
    readers in one token order, and the others' order (a whole value, or row blocks) would leave the grid's row
    strips as one token each, held whole by every part (T5's 512-wide layer on cloud: 48 QKV parts of a whole
    tile each, which no packing fits). The second load reads the value from DRAM again."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    for k in kernels:
        if k.kind.data != "dma_load" or len(k.outputs) != 1 or len(k.loops.data) != 1:
            continue
        users = consumers.get(k.outputs[0], [])
        others = [(u, i) for u, i in users if not _grid_lhs(u, i)]
        if others and len(others) < len(users):
            _fork_load(k, others, unique)


def stream_gemm_grids(fn: func.FuncOp) -> None:
    """The parts of a GEMM grid (``tile``'s :class:`attnc.passes.gemm.GemmGridPattern`) stream: a weight
    block's load (made to re-send it once per row sub-block by ``stream_butterfly_chains``) and a row strip's
    load re-sent once per column sub-block come in one token per burst, and the load of a block its parts hold
    whole in one token per k-chunk (they compute their first row block as it arrives); the copies a part
    passes on along its row and down its column carry as many tokens as their input, read as many times; a
    part's result is one token per sub-block when DMA stores or spills take it (they write blocks in any
    order), else one token."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    for k in kernels:
        # a row strip or a weight block read from DRAM (a load, or a spill between phases) by the first part of
        # a row or column: a token per burst
        if k.kind.data in ("dma_load", "dma_spill") and k.outputs and len(k.loops.data) == 1:
            users = [u for r in k.outputs for u in consumers.get(r, [])]
            if users and all(_grid_part(u) == "streamed" or (_grid_part(u) and _reaches_lhs(u, i)) for u, i in users):
                k.tokens = df.i64_array([dict(k.loop_schedule()).get("burst", 1)] * len(k.outputs))
            elif users and all(_grid_part(u) == "resident" and not _reaches_lhs(u, i) for u, i in users):
                # the weight block of parts that hold it: one token per k-chunk, so that a part computes its first
                # row block as the chunks arrive instead of waiting for the whole block
                chunks = {dict(u.loop_schedule())["k"] for u, _ in users}
                if len(chunks) == 1:
                    k.tokens = df.i64_array([chunks.pop()] * len(k.outputs))
    tokens_of = {r: int(t) for k in kernels for r, t in zip(k.outputs, k.tokens.get_values())}
    for k in kernels:
        mm = next((o for o in k.body.block.ops if isinstance(o, sp.MatmulOp) and A_PASSES in o.attributes), None)
        if mm is None:
            continue
        passes = mm.attributes.pop(A_PASSES).value.data
        for i, v in enumerate(k.inputs):
            load = v.owner
            if (isinstance(load, df.KernelOp) and load.kind.data in ("dma_load", "dma_spill") and len(load.loops.data) == 1
                    and _reaches_lhs(k, i)):  # fmt: skip
                _repeat_weights(load, passes, [u for r in load.outputs for u in consumers.get(r, [])])
                for r, t in zip(load.outputs, load.tokens.get_values()):
                    tokens_of[r] = int(t)
    for k in kernels:
        if _grid_part(k) is None:
            continue
        reps = k.attributes.get(INPUT_REPEATS)
        reps = list(reps.get_values()) if reps is not None else [1] * len(k.inputs)
        out = list(k.tokens.get_values())
        for j, r in enumerate(k.outputs):
            users = consumers.get(r, [])
            i = _copied_input(k, j)
            if i is not None:
                # a copy passed on: as many tokens as its input, read as often by the next part
                out[j] = tokens_of.get(k.inputs[i], 1)
                if reps[i] > 1:
                    _repeat_inputs(users, int(reps[i]))
            elif users and (all(u.kind.data in ("dma_store", "dma_spill") for u, _ in users)
                            or all(_epilogue_block_input(k, r, u, i) for u, i in users)):
                # a sub-block a token, as it is done: to DMA, or (the gate of a SwiGLU) to the up projection's
                # parts, which take each as their own block's reduction ends
                trips = dict(k.loop_schedule())
                out[j] = trips.get("m", 1) * trips.get("n", 1)
            else:
                out[j] = 1
            tokens_of[r] = out[j]
        k.tokens = df.i64_array(out)


def _epilogue_block_input(k: df.KernelOp, r: SSAValue, u: df.KernelOp, i: int) -> bool:
    """Whether input ``i`` of ``u`` (value ``r``, a result of grid part ``k``) is read by ``u``'s epilogue alone, a
    sub-block at a time in ``k``'s order: both are streamed grid parts walking the same (m, n) sub-blocks of
    results of one shape, and the input reaches no operand of ``u``'s matmul. Then ``k`` sends its sub-blocks
    as they are done and ``u`` takes each as its own block's reduction ends (the simulator's rule for an input
    with one token per result block that no matmul reads), instead of holding ``k``'s result whole."""
    if _grid_part(k) != "streamed" or _grid_part(u) != "streamed":
        return False
    mine, theirs = k.loop_schedule(), u.loop_schedule()
    if mine[:2] != theirs[:2]:
        return False
    mm = [o for o in u.body.block.ops if isinstance(o, (sp.MatmulOp, sp.ContractOp))]
    if len(mm) != 1 or sp.shape_of(mm[0].results[0]) != sp.shape_of(r):
        return False
    reach, todo = set(), [u.body.block.args[i]]
    while todo:  # what the input flows into, through any op
        v = todo.pop()
        if v not in reach:
            reach.add(v)
            todo += [r for use in v.uses for r in use.operation.results]
    return not any(v in reach for v in mm[0].operands)


# ---------------------------------------------------------------------------
# an unsplit GEMM's weight: held whole when it fits, else streamed block by block


def stream_gemm_weights(fn: func.FuncOp, arch) -> None:
    """The weight of an unsplit GEMM kernel (loops b, m, n, k), loaded by DMA for it alone, is held whole in its
    buffers when it fits next to them in the kernel's share of a tile (its buffer grows by the weight's bytes);
    else it streams in the (n, k) blocks the kernel's steps read, one token a step, and the load reads it from
    DRAM once per row block of the output (a ("repeat", b·m) loop: the DRAM bytes count every pass). Either way
    what the kernel holds of its weight is in its declared buffers, not a whole tensor it has no room for."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    tiles = arch.tiles_of("compute")
    if not tiles:
        return
    tile = max(tiles, key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    share = tile.sram_bytes // max(tile.contexts, 1)
    for k in kernels:
        if not _unsplit_gemm(k):
            continue
        trips = k.loop_schedule()
        mm = next((o for o in k.body.block.ops if isinstance(o, sp.MatmulOp)), None)
        if mm is None:
            continue
        for i, v in enumerate(k.inputs):
            load = v.owner
            if not (isinstance(load, df.KernelOp) and _is_weight_load(load) and len(load.loops.data) == 1
                    and [u for u, _ in consumers.get(v, [])] == [k] and _reaches(k.body.block.args[i], mm.rhs)):
                continue
            weight = nbytes(v.type)
            buf = k.buffer_bytes.value.data
            if buf + weight <= share:
                k.buffer_bytes = IntegerAttr(buf + weight, 64)
                continue
            t = dict(trips)
            _repeat_weights(load, t["b"] * t["m"], [(k, i)], t["n"] * t["k"])


# ---------------------------------------------------------------------------
# unfused attention: its GEMMs stream K/V and q, the spills between them stream by rows


def _single_matmul(k: df.KernelOp) -> sp.MatmulOp | None:
    """The one matmul of an unsplit GEMM kernel, or None."""
    mms = [o for o in k.body.block.ops if isinstance(o, (sp.MatmulOp, sp.ContractOp))]
    return mms[0] if _unsplit_gemm(k) and len(mms) == 1 and isinstance(mms[0], sp.MatmulOp) else None


def _batched_rhs(k: df.KernelOp, mm: sp.MatmulOp) -> bool:
    """Whether the right operand of ``k``'s matmul has the kernel's ``b`` loop as its batch (each unit, a kv
    head, its own K or V: it is needed only during that unit's row blocks), not one weight every unit reads."""
    shp = sp.shape_of(mm.rhs)
    return len(shp) > 2 and int(np.prod(shp[:-2], dtype=np.int64)) == dict(k.loop_schedule())["b"]


def _read_side(v: SSAValue) -> df.KernelOp | None:
    """The DMA load or spill (one loop of bursts, not a weight) whose output ``v`` is: its read side reads DRAM in
    any order, so it can send each reader its slice in the blocks the reader takes."""
    src = v.owner
    if (isinstance(src, df.KernelOp) and src.kind.data in ("dma_load", "dma_spill") and len(src.loops.data) == 1
            and not _is_weight_load(src)):  # fmt: skip
        return src
    return None


def _gemm_readers(users: list[tuple[df.KernelOp, int]], rhs: bool) -> list[tuple[df.KernelOp, sp.MatmulOp]] | None:
    """The unsplit GEMMs reading a value as their matmul's right (``rhs``, batched) or left operand, when every
    reader is one; else None."""
    out = []
    for u, i in users:
        mm = _single_matmul(u)
        if mm is None or not _reaches(u.body.block.args[i], mm.rhs if rhs else mm.lhs):
            return None
        if rhs and not _batched_rhs(u, mm):
            return None
        out.append((u, mm))
    return out or None


def _stream_kv(k: df.KernelOp, i: int, consumers, room) -> None:
    """Input ``i`` of ``k`` (an unsplit GEMM's batched right operand: an unfused attention's K or V) loaded or
    spilled for GEMMs alone: held whole when it fits the kernel's room next to what it declares; else it streams
    in the (n, k) blocks the steps read, one token a step, and the read side reads it from DRAM once per row block
    of a unit's output (a ("repeat", m) loop over all the units' blocks: unit u's K is needed only during u's row
    blocks, so the DRAM bytes are m x K, not b·m x K), each reader reading it m times."""
    src = _read_side(k.inputs[i])
    if src is None or list(src.tokens.get_values()) != [1] * len(src.outputs):
        return
    users = [u for r in src.outputs for u in consumers.get(r, [])]
    readers = _gemm_readers(users, rhs=True)
    if readers is None:
        return
    trips = [dict(u.loop_schedule()) for u, _ in readers]
    plan = {(t["m"], t["b"] * t["n"] * t["k"]) for t in trips}
    if len(plan) != 1:
        return  # readers walking it at different grains: left whole
    if all(consumed_bytes(u.body.block.args[j]) + u.buffer_bytes.value.data <= room(u) for u, j in users):
        return
    (passes, blocks), = plan
    if passes == 1:  # one row block a unit: read once, in the blocks its readers take
        src.tokens = df.i64_array([blocks] * len(src.outputs))
        return
    _repeat_weights(src, passes, users, blocks)


def _stream_rows_from_dram(v: SSAValue, consumers, blocks_of: Callable[[df.KernelOp], int | None]) -> None:
    """A one-token value a DMA load or spill brings its readers alone comes in ``blocks_of(reader)`` tokens (the
    readers' row blocks; every reader the same), the read side sending each reader its slice in that order."""
    src = _read_side(v)
    users = consumers.get(v, [])
    if src is None or not users:
        return
    j = list(src.outputs).index(v)
    out = list(src.tokens.get_values())
    blocks = {blocks_of(u) for u, _ in users}
    if out[j] != 1 or len(blocks) != 1 or (n := blocks.pop()) is None or n <= 1:
        return
    out[j] = n
    src.tokens = df.i64_array(out)


def _lhs_blocks(k: df.KernelOp) -> int | None:
    """The tokens an unsplit GEMM takes its left operand in: its row blocks when a row block of it (m rows by the
    whole reduction) is no larger than a row block of the f32 accumulators (n columns), the kernel then holding
    that row block while it walks the column blocks (QKᵀ: 8 rows of q against 512 keys); else its (m, k) blocks,
    each read once, the kernel walking a block's column blocks with the output row block accumulating in its
    buffer (PV: 8 rows of 512 probabilities, 64 output columns)."""
    mm = _single_matmul(k)
    if mm is None or min(len(sp.shape_of(mm.lhs)), len(sp.shape_of(mm.rhs))) < 2:
        return None  # a vector operand (ONNX MatMul of a 1-D tensor) has no row blocks
    t = dict(k.loop_schedule())
    m, kk = sp.shape_of(mm.lhs)[-2:]
    rows = -(-m // t["m"])
    a_row = rows * kk * np_dtype(sp.elt_of(mm.lhs)).itemsize
    c_row = rows * sp.shape_of(mm.rhs)[-1] * 4
    return t["b"] * t["m"] * (1 if a_row <= c_row else t["k"])


def _softmax_rows(k: df.KernelOp) -> int | None:
    """The rows of a softmax kernel (kind ``softmax``, its softmaxes over the last axis): it may take them one a
    step; None for other kernels."""
    if k.kind.data != "softmax" or not k.outputs:
        return None
    sms = [o for o in k.body.block.ops if isinstance(o, sp.SoftmaxOp)]
    if not sms or any(o.axis.value.data % len(sp.shape_of(o.operands[0])) != len(sp.shape_of(o.operands[0])) - 1
                      for o in sms):  # fmt: skip
        return None
    return int(np.prod(sp.shape_of(k.outputs[0])[:-1], dtype=np.int64))


def _forward_copies(k: df.KernelOp, consumers, tokens_of: dict) -> None:
    """The K/V copies an unfused member's GEMM passes on to the next member carry as many tokens as their input,
    read as many times by the next member."""
    reps = k.attributes.get(INPUT_REPEATS)
    reps = list(reps.get_values()) if reps is not None else [1] * len(k.inputs)
    out = list(k.tokens.get_values())
    for j, r in enumerate(k.outputs):
        i = _copied_input(k, j)
        if i is None or (t := tokens_of.get(k.inputs[i], 1)) <= 1:
            continue
        out[j] = t
        tokens_of[r] = t
        if reps[i] > 1:
            _repeat_inputs(consumers.get(r, []), int(reps[i]))
    k.tokens = df.i64_array(out)


def stream_unfused_attention(fn: func.FuncOp, arch) -> None:
    """The kernels of an unfused attention (``fuse-attention{mode=unfused}``: per member a QKᵀ GEMM, a softmax and
    a PV GEMM, the scores and probabilities spilled between them) hold what fits their tiles, as any GEMM on the
    array whose operand does not fit streams it: K (V) is held whole when it fits, else re-read per row block
    (:func:`_stream_kv`) and forwarded member to member in those tokens (:func:`_forward_copies`); q and the
    spilled probabilities come in the GEMMs' row blocks, the spilled scores one row per token to a softmax taking
    a row a step (the read side of a load or spill reads DRAM in any order)."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    room = _room(kernels, arch)
    for k in kernels:  # program order: a member's K/V copies are settled before the next member reads them
        mm = _single_matmul(k)
        if mm is not None:
            _widen_row_block(k, mm, room(k), arch)
            for i, arg in enumerate(k.body.block.args):
                if _reaches(arg, mm.rhs) and _batched_rhs(k, mm):
                    _stream_kv(k, i, consumers, room)
                elif _reaches(arg, mm.lhs) and _gemm_readers(consumers.get(k.inputs[i], []), rhs=False):
                    _stream_rows_from_dram(k.inputs[i], consumers, _lhs_blocks)
            _forward_copies(k, consumers, {r: int(t) for q in kernels for r, t in zip(q.outputs, q.tokens.get_values())})
        elif (rows := _softmax_rows(k)) is not None and all(_read_side(v) for v in k.inputs if _reaches_softmax(k, v)):
            streamed = False
            for v in k.inputs:
                if _reaches_softmax(k, v) and len(consumers.get(v, [])) == 1:
                    before = list(v.owner.tokens.get_values())
                    _stream_rows_from_dram(v, consumers, lambda _u, n=rows: n)
                    streamed |= list(v.owner.tokens.get_values()) != before
            if streamed:
                k.trips = df.i64_array([rows])


def _widen_row_block(k: df.KernelOp, mm: sp.MatmulOp, room: int, arch) -> None:
    """An unfused GEMM whose K (V) does not fit its room beside its buffers streams it once per row block
    (:func:`_stream_kv`): it takes :func:`attnc.cost.attention.unfused_row_block`'s rows a step (whole MAC-array
    row tiles, ``tile`` [rows, cols, chunk]) instead of the MAC array's height, so that each pass serves as many
    query rows as two tokens of its left operand in a quarter of its room allow. Same MACs, same results;
    fewer passes of K (V) from DRAM and fewer tokens through the member chain."""
    if not _batched_rhs(k, mm) or "row_block" in mm.attributes:
        return  # a QKᵀ with its softmax epilogue takes the rows whose whole score rows it holds
    arg = next((a for a in k.body.block.args if _reaches(a, mm.rhs)), None)
    if arg is None or consumed_bytes(arg) + k.buffer_bytes.value.data <= room:
        return  # held whole: read once whatever the row block
    t = dict(k.loop_schedule())
    m, kk = sp.shape_of(mm.lhs)[-2:]
    n = sp.shape_of(mm.rhs)[-1]
    eb = np_dtype(sp.elt_of(mm.lhs)).itemsize
    tile = [int(v) for v in k.tile.get_values()]
    # the left operand's token a row (``_lhs_blocks``): the whole reduction when a row of it is no larger than a
    # row of the f32 accumulators (QKᵀ), else a k-chunk of it (PV)
    row_bytes = kk * eb if kk * eb <= n * 4 else min(kk, tile[2]) * eb
    mr = max((t.mac_rows for t in arch.tiles_of(k.tile_kind.data)), default=1)
    rows = unfused_row_block(m, row_bytes, room, mr)
    if rows <= -(-m // t["m"]):
        return
    k.trips = df.i64_array([-(-m // rows) if name == "m" else trips for name, trips in k.loop_schedule()])
    k.tile = df.i64_array([rows, *tile[1:]])


def _reaches_softmax(k: df.KernelOp, v: SSAValue) -> bool:
    """Whether input ``v`` of ``k`` is (through data movement or elementwise ops) the data a softmax normalises
    (the scores, not a mask)."""
    arg = k.body.block.args[list(k.inputs).index(v)]
    sm = next(o for o in k.body.block.ops if isinstance(o, sp.SoftmaxOp))
    return _reaches(arg, sm.operands[0]) or any(u.operation is sm for u in arg.uses)


def _room(kernels: list[df.KernelOp], arch) -> Callable[[df.KernelOp], int]:
    """The SRAM a kernel may declare with its kind's tiles still able to hold every kernel: a tile's SRAM over the
    kernels of its kind that one tile must hold at once when they are spread evenly -- those of its SRAM phase
    (phases >= 1 reuse the same addresses, docs/simulator.md "SRAM phases") plus the resident ones -- and never
    less than a tile's SRAM over its contexts (the bound before phases were counted)."""
    count: dict[tuple[str, int], int] = {}
    for k in kernels:
        key = (k.tile_kind.data, k.phase)
        count[key] = count.get(key, 0) + 1

    def room(k: df.KernelOp) -> int:
        kind = k.tile_kind.data
        tiles = arch.tiles_of(kind)
        if not tiles:
            return 0
        sram = max(t.sram_bytes for t in tiles)
        share = max(t.sram_bytes // max(t.contexts, 1) for t in tiles)
        phases = [n for (kd, p), n in count.items() if kd == kind and p]
        at_once = count.get((kind, 0), 0) + (count.get((kind, k.phase), 0) if k.phase else max(phases, default=0))
        return max(share, sram // max(1, -(-at_once // len(tiles))))

    return room


def _keeps_rows(v: SSAValue) -> bool:
    """Whether every use of ``v`` reads it row by row (a row: its elements along the last axis): through slices,
    concatenations (a row of a concat along the last axis is the parts' rows side by side) and reshapes that keep
    the last axis, into elementwise ops or a layer norm over the last axis, or out of the kernel."""
    shp = sp.shape_of(v)
    for use in v.uses:
        op = use.operation
        if isinstance(op, df.YieldOp):
            continue
        if isinstance(op, (*sp.UNARY_OPS, *sp.BINARY_OPS, sp.WhereOp)):
            continue  # row by row; its result is the kernel's business
        if isinstance(op, sp.LayerNormOp) and use.index == 0 and op.axis.value.data % max(len(shp), 1) == len(shp) - 1:
            continue
        if _row_reduce(op):
            continue
        if isinstance(op, sp.ReshapeOp):
            out = sp.shape_of(op.results[0])
            if not shp or not out or out[-1] != shp[-1]:
                return False
        elif not isinstance(op, (sp.SliceOp, sp.ConcatOp)):
            return False
        if not _keeps_rows(op.results[0]):
            return False
    return True


def stream_spilled_rows(fn: func.FuncOp) -> None:
    """A row-wise kernel (a layer norm, a residual add) reads what a DMA load or spill brings it for it alone row
    by row: the value comes in one token per row and the kernel takes a step per row, so it holds a row of each
    input (and the next) instead of every input whole (BERT-base on edge: the layer norms held 771 KiB of spilled
    GEMM parts in an 8 KiB tile). Weights (constants a load brings) stay whole."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    for k in kernels:
        if not _row_wise(k) or not k.outputs:
            continue
        streamed = []
        for v, arg in zip(k.inputs, k.body.block.args):
            src = v.owner
            if not (isinstance(src, df.KernelOp) and src.kind.data in ("dma_load", "dma_spill")) or _is_weight_load(src):
                continue
            j = list(src.outputs).index(v)
            if list(src.tokens.get_values())[j] != 1 or any(u is not k for u, _ in consumers.get(v, [])):
                continue
            if src.attributes.get(INPUT_REPEATS) is not None or len(src.loops.data) != 1 or not _keeps_rows(arg):
                continue
            streamed.append((src, j, int(np.prod(sp.shape_of(v)[:-1], dtype=np.int64))))
        if not streamed:
            continue
        rows = int(np.prod(sp.shape_of(k.outputs[0])[:-1], dtype=np.int64))
        k.trips = df.i64_array([rows])
        for src, j, n in streamed:
            out = list(src.tokens.get_values())
            out[j] = max(n, 1)
            src.tokens = df.i64_array(out)


#: the most chunks a row kernel's weights are cut into when they come again every row
ROW_WEIGHT_CHUNKS = 16


def stream_row_weights(fn: func.FuncOp, arch) -> None:
    """A row-wise kernel taking its rows a row a token whose weights (constants loaded for row kernels alone: a
    norm's scale and bias) and a row of each streamed input do not fit its largest tile (XLM's 2048-wide
    LayerNorm on edge: 8 KiB of scale and bias next to a 4 KiB row, on 8 KiB sfu tiles) has its weights sent
    again every row, in C equal chunks a pass, and takes a step per chunk (loops ``('rows', R), ('chunk', C)``):
    it holds its row through the row's chunk steps (statistics, then the row normalised a chunk at a time) and
    two chunks of each weight, not the weights whole. C is the fewest chunks (at most ``ROW_WEIGHT_CHUNKS``)
    with which a row and two chunks of each weight fit three quarters of the tile (the rest: the next row's
    first tokens). The loads read the weights from DRAM
    once per row (their ``('repeat', R)`` loop counts every pass)."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    tokens_of = {r: int(t) for k in kernels for r, t in zip(k.outputs, k.tokens.get_values())}
    for k in kernels:
        sched = k.loop_schedule()
        if not _row_wise(k) or [n for n, _ in sched] != ["rows"] or k.attributes.get(INPUT_REPEATS) is not None:
            continue
        rows = sched[0][1]
        sram = max((t.sram_bytes for t in arch.tiles_of(k.tile_kind.data)), default=0)
        weights, row = [], 0
        for v, arg in zip(k.inputs, k.body.block.args):
            src = v.owner
            if not isinstance(src, df.KernelOp):
                continue
            if tokens_of.get(v, 1) == rows:
                row += -(-consumed_bytes(arg) // rows)
            elif _is_weight_load(src) and tokens_of.get(v, 1) == 1 and len(src.loops.data) == 1 and all(
                    _row_wise(u) and u.loop_schedule() == sched for u, _ in consumers.get(v, [])):  # fmt: skip
                weights.append((src, consumed_bytes(arg)))
            else:
                row = -1  # an input held whole that is no weight: not this kernel
                break
        held = sum(b for _, b in weights)
        if row <= 0 or not weights or row + held <= sram:
            continue
        chunks = next((c for c in range(2, ROW_WEIGHT_CHUNKS + 1)
                       if all(b % c == 0 for _, b in weights) and row + 2 * held // c <= sram * 3 // 4), None)  # fmt: skip
        if chunks is None:
            continue
        for src, _ in weights:
            users = [u for r in src.outputs for u in consumers.get(r, [])]
            if src.attributes.get(INPUT_REPEATS) is None and dict(src.loop_schedule()).get("repeat") is None:
                _repeat_weights(src, rows, users, chunks)
                tokens_of[src.outputs[0]] = rows * chunks
        for u in {u for src, _ in weights for r in src.outputs for u, _ in consumers.get(r, [])}:
            u.loops = ArrayAttr([StringAttr("rows"), StringAttr("chunk")])
            u.trips = df.i64_array([rows, chunks])


def stream_into_dma(fn: func.FuncOp, arch) -> None:
    """A DMA store or spill stages what it writes in its tile's buffer, so its inputs come in tokens two of
    which, of every input, fit the room its tiles have for it (:func:`_room`): an output that only DMA stores
    and spills read is sent in its tokens cut into equal pieces until they are that small (a GEMM part's
    sub-block in several tokens, a row kernel's result in row blocks), and the DMA kernel declares two tokens
    of each input (one written out, the next arriving). A store or spill fed one huge token would hold the
    whole value in a buffer of a few KiB."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    room = _room(kernels, arch)
    for k in kernels:
        if k.kind.data not in ("dma_store", "dma_spill"):
            continue
        ins = [v for v in k.inputs if isinstance(v.owner, df.KernelOp)]
        if not ins:
            continue
        per = max(room(k) // (2 * len(ins)), 1)  # bytes a token of each input may take
        need = 0
        for v in ins:
            src = v.owner
            j = list(src.outputs).index(v)
            out = list(src.tokens.get_values())
            readers = consumers.get(v, [])
            if not sram_phases.is_dma(src) and all(u.kind.data in ("dma_store", "dma_spill") for u, _ in readers):
                token = -(-nbytes(v.type) // out[j])
                if token > per:
                    out[j] *= -(-token // per)
                    src.tokens = df.i64_array(out)
            need += 2 * -(-nbytes(v.type) // out[j])
        need = min(need, max((t.sram_bytes for t in arch.tiles_of(k.tile_kind.data)), default=0))
        if need > k.buffer_bytes.value.data:
            k.buffer_bytes = IntegerAttr(need, 64)


#: tokens of each streamed input a kernel declares room for when its tiles have it: one computed on, one arriving,
#: and one more for the jitter of a stream that several consumers release at slightly different times (a row
#: strip forwarded along a GEMM grid's row: with two, the edge GEMM 768x3072 at seq 512 took 1.52M cycles, with
#: three 1.18M)
RUN_AHEAD = 3


def size_stream_buffers(fn: func.FuncOp, arch) -> None:
    """A kernel that streams an input (more than one token) declares at least the room it holds at once: every
    input it holds whole (a weight, a one-token input) and two tokens of each streamed one (one computed on, the
    next arriving), or when that would not fit the room its tiles have for it (:func:`_room`), that room, and
    never less than one token of each (its producers then wait for each release); then ``RUN_AHEAD`` tokens
    where the kernels of its tile kind that hold their buffers at once still fit their tiles (one a tile, or
    leaving an eighth of the SRAM for placement to pack several onto a tile). The simulator holds a producer to exactly what its consumer declares (docs/simulator.md,
    "Back-pressure"), so a token of room less is a stall at every token."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    tokens_of = {r: int(t) for k in kernels for r, t in zip(k.outputs, k.tokens.get_values())}
    room = _room(kernels, arch)
    wants: list[tuple[df.KernelOp, int, int]] = []  # (kernel, what it holds whole, a token of each streamed input)
    for k in kernels:
        if k.kind.data in ("dma_load", "dma_store", "dma_spill") or k.tile_kind.data == "memory":
            continue
        reps = k.attributes.get(INPUT_REPEATS)
        reps = [int(r) for r in reps.get_values()] if reps is not None else [1] * len(k.inputs)
        whole, token = 0, 0
        # (the timing model groups a streaming context's steps into at most MAX_STREAMED_SEGMENTS)
        steps = max(1, min(int(np.prod([t for _, t in k.loop_schedule()], dtype=np.int64)), MAX_STREAMED_SEGMENTS))
        by_rows = [n for n, _ in k.loop_schedule()][:1] == ["rows"]
        for v, arg, rep in zip(k.inputs, k.body.block.args, reps):
            if not isinstance(v.owner, df.KernelOp):
                continue
            read, t = consumed_bytes(arg) * rep, tokens_of.get(v, 1)
            if t > 1:
                # a row kernel's step (a stage kernel's, a weight chunk of a row block) works on its share of the
                # tokens: one when they are no finer than its steps, else its share and one more (a step need not
                # start on a token); a GEMM part's tokens are its k-chunks, one a step
                token += -(-read // t) * (1 if t <= steps or not by_rows else t // steps + 1)
            else:
                whole += read
        if token:
            wants.append((k, whole, token))
        elif whole > k.buffer_bytes.value.data:
            # what it holds whole is what it holds: a tiling plan that assumed its inputs stream in blocks does
            # not make a one-token input smaller (a [16, 16] score matrix into a softmax planned for two row
            # blocks); beyond a tile, placement refuses the kernel by name
            k.buffer_bytes = IntegerAttr(whole, 64)

    def declare(k: df.KernelOp, whole: int, token: int, tokens: int) -> int:
        """What ``k`` declares for ``tokens`` of each streamed input, or as much as its room holds (the simulator
        gives the room beyond one token of each to the ports a token at a time, the smallest first:
        docs/simulator.md, "Back-pressure"); within a tile, but never less than what one of its segments works
        on (its whole inputs and a token of each streamed one): when no tile holds that, the schedule needs
        another cut (a finer token, a re-read), and placement refuses the kernel naming it and its bytes rather
        than the hardware running it over its SRAM."""
        sram = max((t.sram_bytes for t in arch.tiles_of(k.tile_kind.data)), default=0)
        need = max(min(whole + tokens * token, max(room(k), k.buffer_bytes.value.data)), whole + token)
        return max(min(need, max(sram, whole + token)), k.buffer_bytes.value.data)

    for k, whole, token in wants:
        k.buffer_bytes = IntegerAttr(declare(k, whole, token, 2), 64)
    used: dict[tuple[str, int], list[int]] = {}
    for k in kernels:
        got = used.setdefault((k.tile_kind.data, k.phase), [0, 0])
        got[0] += k.buffer_bytes.value.data
        got[1] += 1

    def grow(k: df.KernelOp, more: int) -> None:
        """``more`` bytes on ``k``'s declaration where the kernels of its tile kind that hold their buffers at once
        (a phase's and the resident ones) still fit their tiles: one kernel a tile, or with an eighth of the SRAM
        left for placement to pack several onto a tile."""
        kind, tiles = k.tile_kind.data, arch.tiles_of(k.tile_kind.data)
        phases = [k.phase] if k.phase else [p for (kd, p) in used if kd == kind]

        def fits(p: int) -> bool:
            held, n = (a + (b if p else 0) for a, b in zip(used.get((kind, 0), [0, 0]), used.get((kind, p), [0, 0])))
            sram = sum(t.sram_bytes for t in tiles)
            return held + more <= (sram if n <= len(tiles) else sram * 7 // 8)

        if more > 0 and all(fits(p) for p in phases):
            k.buffer_bytes = IntegerAttr(k.buffer_bytes.value.data + more, 64)
            used[kind, k.phase][0] += more

    # a fork that joins again (a residual add: one input straight from a kernel, the other from that kernel
    # through a pipeline of stage kernels): the straight input runs as far ahead as the pipeline is deep, in tokens
    # that wait in the join's buffers; with a few tokens of room the fork's producer waits for the join at every
    # token, and the pipeline, fed by it, runs at the pace of its own latency. So the join declares room for every
    # token of its streamed inputs (the simulator gives room to the ports level by level), within a tile -- before
    # the run-ahead of the others, which a join needs more
    consumers = _consumers(kernels)
    below: dict[df.KernelOp, set[df.KernelOp]] = {}

    def after(a: df.KernelOp) -> set[df.KernelOp]:
        if a not in below:
            below[a] = _downstream(a, consumers)
        return below[a]

    def through_stages(a: df.KernelOp, b: df.KernelOp) -> bool:
        return any(_stage_rows(s) and (b is s or b in after(s)) for s in after(a))

    for k, whole, token in wants:
        srcs = [v.owner for v in k.inputs if isinstance(v.owner, df.KernelOp) and tokens_of.get(v, 1) > 1]
        # (the long side goes through butterfly stage kernels: a GEMM grid's join is balanced by ``tile``'s rules)
        if any(a is not b and through_stages(a, b) for a in srcs for b in srcs):
            sram = max((t.sram_bytes for t in arch.tiles_of(k.tile_kind.data)), default=0)
            full = whole + max(tokens_of.get(v, 1) for v in k.inputs) * token
            grow(k, min(full, sram * 7 // 8) - k.buffer_bytes.value.data)
    # then the third token of each
    for k, whole, token in wants:
        grow(k, declare(k, whole, token, RUN_AHEAD) - k.buffer_bytes.value.data)


def _is_weight_load(k: df.KernelOp) -> bool:
    """Whether ``k`` is a DMA load of a constant (a weight)."""
    return k.kind.data == "dma_load" and any(isinstance(o, sp.ConstantOp) for o in k.body.block.ops)


# ---------------------------------------------------------------------------
# an unsplit GEMM reads its rows block by block


def _unsplit_gemm(k: df.KernelOp) -> bool:
    """Whether ``k`` is a GEMM kernel of its own (loops b, m, n, k), not a grid part or a fused kernel."""
    return k.kind.data == "gemm" and [n for n, _ in k.loop_schedule()] == ["b", "m", "n", "k"]


def _gemm_rows(k: df.KernelOp) -> int | None:
    """The row blocks an unsplit GEMM kernel (loops b, m, n, k) walks, or None for other kernels."""
    if not _unsplit_gemm(k):
        return None
    if sum(isinstance(o, (sp.MatmulOp, sp.ContractOp)) for o in k.body.block.ops) != 1:
        return None  # several GEMMs (heads sharing a kernel) run one after the other, not row block by row block
    t = dict(k.loop_schedule())
    return t["b"] * t["m"]


def _softmax_row_blocks(k: df.KernelOp) -> int | None:
    """The row blocks a softmax kernel (kind ``softmax``) walks, when every op of it that reads its inputs works
    row by row (elementwise ops, a softmax or log-softmax or a reduction over the last axis, a reshape keeping it):
    it may take its inputs and give its result a row block a step. None for other kernels, and for a softmax
    kernel with an op that mixes rows (a transpose of the scores, a reduction across rows)."""
    if k.kind.data != "softmax" or not k.outputs:
        return None
    data = set(k.body.block.args)
    for op in k.body.block.ops:
        if isinstance(op, df.YieldOp) or not any(v in data for v in op.operands):
            continue  # constants and what is computed from them alone (a causal mask) hold no rows of the inputs
        rank = len(sp.shape_of(op.operands[0]))
        last = rank - 1
        if isinstance(op, (sp.SoftmaxOp, sp.LogSoftmaxOp)):
            ok = op.axis.value.data % max(rank, 1) == last
        elif isinstance(op, sp.ReduceOp):
            ok = _row_reduce(op)
        elif isinstance(op, sp.ReshapeOp):
            out = sp.shape_of(op.results[0])
            ok = bool(out) and rank > 0 and out[-1] == sp.shape_of(op.operands[0])[-1]
        else:
            ok = isinstance(op, (*sp.UNARY_OPS, *sp.BINARY_OPS, sp.WhereOp))
        if not ok:
            return None
        data.update(op.results)
    return dict(k.loop_schedule()).get("rows")


def _row_blocks(k: df.KernelOp) -> int | None:
    """The row blocks ``k`` produces its result in, in row order: an unsplit GEMM's, a row-wise kernel's, a
    softmax kernel's that works row by row, a DMA load's (it reads any order); None when it does not produce by
    rows."""
    if k.kind.data == "dma_load":
        return 1 << 30
    if _row_wise(k):
        return dict(k.loop_schedule()).get("rows", 1)
    return _gemm_rows(k) or _softmax_row_blocks(k)


def _downstream(k: df.KernelOp, consumers) -> set[df.KernelOp]:
    """The kernels that read, directly or through other kernels, what ``k`` computes."""
    seen: set[df.KernelOp] = set()
    todo = [k]
    while todo:
        for r in todo.pop().outputs:
            for u, _ in consumers.get(r, []):
                if u not in seen:
                    seen.add(u)
                    todo.append(u)
    return seen


def split_forked_loads(fn: func.FuncOp, unique: Callable[[str], str]) -> None:
    """A DMA load of an activation that unsplit GEMMs read row block by row block and that a kernel after those
    GEMMs reads too (a block's input: its projections and the residual add after attention) becomes two loads,
    the later readers reading the second. Through one load the fork joins again at the later reader, which waits
    for the GEMMs' results as a whole: holding the load back to what the GEMMs' buffers take could deadlock, so
    the simulator does not, and every GEMM ends up holding the whole activation (GQA's block on tiny: 4 KiB of
    x in each 4 KiB compute tile next to its weight's tokens). The second load reads the value from DRAM again."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    for k in kernels:
        if k.kind.data != "dma_load" or len(k.outputs) != 1 or len(k.loops.data) != 1 or _is_weight_load(k):
            continue
        users = consumers.get(k.outputs[0], [])
        rows = [(u, i) for u, i in users if _gemm_rows(u) and (mm := _single_matmul(u)) is not None
                and _reaches(u.body.block.args[i], mm.lhs)]
        if not rows:
            continue
        # (a GEMM after another that reads the value as its own row operand -- an unfused attention's next member,
        # after the K it forwards -- streams it alike and stays)
        after = set().union(*(_downstream(g, consumers) for g, _ in rows))
        later = [(u, i) for u, i in users if u in after and (u, i) not in rows]
        if later and len(later) < len(users):
            _fork_load(k, later, unique)


def stream_gemm_rows(fn: func.FuncOp) -> None:
    """A one-token value every reader of which reads row block by row block, and at least one is an unsplit
    GEMM or a row-by-row softmax kernel, streams in their row blocks (the fewest of them, and no more than its
    producer makes): a GEMM then holds one row block of its activation (and the next) instead of the whole of
    it, and a producer that works by rows (a load, a row-wise kernel, another GEMM, a softmax) sends each block
    as it is done. An attention lowered per head (QKᵀ, softmax, PV kernels) so streams its scores and
    probabilities a row block at a time: a [16, 16] f32 score matrix per head is a quarter of tiny's 2 KiB sfu
    tile, and four heads' softmaxes share it."""
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    consumers = _consumers(kernels)
    for k in kernels:
        made = _row_blocks(k)
        if made is None or made <= 1:
            continue
        out = list(k.tokens.get_values())
        for j, r in enumerate(k.outputs):
            users = consumers.get(r, [])
            if out[j] != 1 or not users or k.attributes.get(INPUT_REPEATS) is not None and k.kind.data == "dma_load":
                continue
            rows = int(np.prod(sp.shape_of(r)[:-1], dtype=np.int64))
            blocks = [_gemm_rows(u) or _softmax_row_blocks(u) for u, _ in users]
            if not any(blocks) or not _read_by_rows(users, rows):
                continue
            if any(b is None and not (_row_wise(u) or u.kind.data == "dma_store") for b, (u, _) in zip(blocks, users)):
                continue
            tokens = min([b for b in blocks if b] + [made, rows])
            if tokens > 1:
                out[j] = tokens
        k.tokens = df.i64_array(out)
