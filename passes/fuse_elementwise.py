"""fuse-elementwise: bias adds, activations, residual adds, scalings, casts and norms join the kernel around them.

Without this pass ``lower-to-dataflow`` makes every elementwise op a kernel of its own, each sweeping the
whole tensor after the one before and sending it over the network again (BERT's GELU is six such kernels).
Here they become **epilogues** of the GEMM or fused-attention kernel that produces their input (the same
``dataflow.tag``, so ``lower-to-dataflow`` puts them in that kernel's body, run on its tile's lanes as the
MAC array's output leaves it), or, where no such kernel can take them, **one row-streaming vector kernel per
chain**. Three steps, each a rewrite pattern per concern:

1. :class:`SinkThroughReshapePattern` and :class:`SinkThroughConcatPattern` move an elementwise or row-wise
   op from the assembled result of a split GEMM (``tile``'s parts, concatenated and reshaped back) onto each
   part, its other operands sliced to match (a slice of a matching concatenation is the part itself). A
   row-wise op (LayerNorm, softmax, a row reduction) moves only through a concatenation of whole rows.
2. :class:`EpilogueIntoProducerPattern` tags an op into the kernel of the GEMM/attention that produces one of
   its operands (an unsplit GEMM gets a tag of its own first).
3. :class:`ChainIntoRowKernelPattern` gathers what is left, op after op, into row kernels (``rows<i>``).
4. :class:`SplitRowKernelPattern` cuts a row kernel over many rows into row blocks, a kernel each on a tile
   of its own (:func:`plan_row_splits` decides how many: about as long as a part of the GEMM or attention
   kernel next to it, within the free contexts). The rows are independent (a norm or softmax works along
   the last axes), so each part runs the whole chain on its rows; the parts share a ``dataflow.group``
   named after the kernel they were, so later passes see one phase. Parts with special functions run on
   compute tiles that have an exp unit (marked ``dataflow.tile_kind``): there are many more of those.

Both kinds of tagging keep ``lower-to-dataflow``'s order: a kernel is built where its first op is, so every
value a kernel reads from another kernel must come from one whose first op is earlier (a large constant it
reads is moved before its first op, as its DMA load is made where the constant is). Transcendental ops
(exp, erf, tanh, sigmoid, rsqrt, ..., LayerNorm, softmax) become epilogues only on compute tiles with an exp
unit (``exp_per_cycle``); otherwise they stay in row kernels, which run on sfu tiles.

Tags only decide which kernel an op runs in: the IR computes the same numbers (the rewrites of steps 1 and
4 are exact: elementwise ops commute with slicing, and a row-wise op with slicing whole rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from attnc.cost.work import SFU_OPS, kernel_cost, nbytes
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import GROUP, SPILL, STAGE, TAG, TILE_KIND, i64_array
from attnc.dialects.values import from_numpy
from attnc.ir import main_func
from attnc.passes.concat_folds import concat_spans
from attnc.passes.sram_phases import SHARE_ATTR
from attnc.passes.target import TargetPass
from xdsl.context import Context
from xdsl.dialects import builtin, func
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, NoneAttr, StringAttr, TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.rewriter import InsertPoint

#: ops that work element by element (any operand may broadcast)
ELEMENTWISE = (*sp.UNARY_OPS, *sp.BINARY_OPS, sp.CastOp, sp.WhereOp)
#: ops whose kernel does MACs: the producers an epilogue can join
MAC_OPS = (sp.MatmulOp, sp.ContractOp, sp.AttentionOp)
#: the tag prefix of the row kernels this pass makes
ROWS = "rows"


def _rank(v: SSAValue) -> int:
    return len(sp.shape_of(v))


def row_axes(op: Operation) -> set[int] | None:
    """The axes a row-wise op needs whole (normalised, reduced), as non-negative axes of its input; None
    for an op that is neither elementwise nor row-wise along trailing axes (it is left alone)."""
    if isinstance(op, ELEMENTWISE):
        return set()
    if isinstance(op, sp.LayerNormOp):
        r = _rank(op.input)
        return set(range(op.axis.value.data % r, r)) if r else None
    if isinstance(op, (sp.SoftmaxOp, sp.LogSoftmaxOp)):
        r = _rank(op.input)
        return {op.axis.value.data % r} if r else None
    if isinstance(op, sp.ReduceOp) and op.keepdims is not None:
        return {a % _rank(op.input) for a in op.axes.get_values()} if _rank(op.input) else None
    return None


def needs_special(op: Operation) -> bool:
    """Whether ``op`` evaluates a special function (exp, erf, rsqrt, ...), which a compute tile runs only
    with an exp unit."""
    return isinstance(op, SFU_OPS) and not isinstance(op, sp.ReduceOp)


def _fusible(op: Operation) -> bool:
    """An untagged elementwise or row-wise op with one plain tensor result (no encoding to keep)."""
    if TAG in op.attributes or len(op.results) != 1 or row_axes(op) is None:
        return False
    t = op.results[0].type
    return isinstance(t, TensorType) and isinstance(t.encoding, NoneAttr)


def _rebuilt(op: Operation, operands: Sequence[SSAValue], shape: Sequence[int]) -> Operation:
    """A copy of ``op`` on ``operands`` whose result has ``shape`` (same element type and attributes)."""
    elt = op.results[0].type.element_type
    return type(op).create(operands=list(operands), result_types=[TensorType(elt, list(shape))],
                           attributes=dict(op.attributes), properties=dict(op.properties))  # fmt: skip


@dataclass
class Kernels:
    """What the patterns share: the first op of each tagged kernel (where ``lower-to-dataflow`` builds it),
    the tags of kernels that do MACs, the row kernels made so far, and whether special functions may run
    on a compute tile."""

    special_on_compute: bool
    first: dict[str, Operation] = field(default_factory=dict)
    mac: set[str] = field(default_factory=set)
    rows: dict[str, list[Operation]] = field(default_factory=dict)
    #: the tags of butterfly stage kernels (``tile``'s stage pipelines), on any tile kind
    stages: set[str] = field(default_factory=set)

    @classmethod
    def of(cls, block, special_on_compute: bool) -> Kernels:
        k = cls(special_on_compute)
        for op in block.ops:
            tag = op.attributes.get(TAG)
            if isinstance(tag, StringAttr):
                k.first.setdefault(tag.data, op)
                if isinstance(op, MAC_OPS) or _stage_on_compute(op):
                    k.mac.add(tag.data)
                if isinstance(op, sp.ButterflyStageOp):
                    k.stages.add(tag.data)
        return k

    def fresh(self, base: str) -> str:
        i = len(self.first)
        while f"{base}{i}" in self.first:
            i += 1
        return f"{base}{i}"

    def tag_of(self, op: Operation) -> str | None:
        tag = op.attributes.get(TAG)
        return tag.data if isinstance(tag, StringAttr) else None

    def head(self, op: Operation) -> Operation:
        """The first op of ``op``'s kernel (``op`` itself when it is untagged: a kernel of its own)."""
        tag = self.tag_of(op)
        return self.first[tag] if tag is not None else op

    def in_mac_kernel(self, op: Operation | None) -> bool:
        return isinstance(op, Operation) and self.tag_of(op) in self.mac


def _stage_on_compute(op: Operation) -> bool:
    """A butterfly stage planned on a compute tile: its kernel computes its rows' values on the MAC array like
    a GEMM part, so an elementwise op on what one such kernel makes alone (a chain ending in one kernel) is its
    epilogue, run on the tile's lanes (a butterfly tile has no exp unit: its stages take none)."""
    if not isinstance(op, sp.ButterflyStageOp):
        return False
    kind = op.attributes.get(TILE_KIND)
    return not isinstance(kind, StringAttr) or kind.data == "compute"


def leaves(v: SSAValue) -> list[Operation]:
    """The ops that compute what ``v`` carries, through untagged data movement (cloned into each kernel that
    reads it); graph inputs and constants are no kernel's and are left out."""
    owner = v.owner
    if not isinstance(owner, Operation) or isinstance(owner, sp.ConstantOp):
        return []
    if sp.is_data_movement(owner) and TAG not in owner.attributes:
        return [x for o in owner.operands for x in leaves(o)]
    return [owner]


def constants(v: SSAValue) -> list[sp.ConstantOp]:
    """The constants ``v`` reads through untagged data movement."""
    owner = v.owner
    if isinstance(owner, sp.ConstantOp):
        return [owner]
    if isinstance(owner, Operation) and sp.is_data_movement(owner) and TAG not in owner.attributes:
        return [c for o in owner.operands for c in constants(o)]
    return []


def readers(v: SSAValue) -> list[Operation]:
    """The ops that read ``v``, through untagged data movement."""
    out = []
    for use in v.uses:
        op = use.operation
        if sp.is_data_movement(op) and TAG not in op.attributes and op.results:
            out += readers(op.results[0])
        else:
            out.append(op)
    return out


def joins(kernels: Kernels, op: Operation, tag: str | None, head: Operation) -> bool:
    """Whether ``op`` may join kernel ``tag`` (first op ``head``) without breaking ``lower-to-dataflow``'s
    order: what it reads from other kernels comes from kernels that start before ``head``, and what reads
    its result from other kernels starts after it."""
    for v in op.operands:
        for leaf in leaves(v):
            inside = leaf is head or (tag is not None and kernels.tag_of(leaf) == tag)
            if not inside and not kernels.head(leaf).is_before_in_block(head):
                return False
    for reader in readers(op.results[0]):
        if kernels.tag_of(reader) not in (tag, None) and not head.is_before_in_block(kernels.head(reader)):
            return False
    return True


def join(kernels: Kernels, op: Operation, tag: str, head: Operation, group: StringAttr | None) -> None:
    """Tag ``op`` into kernel ``tag``; the large constants it reads move before the kernel's first op (their
    DMA loads are made where they are)."""
    op.attributes[TAG] = StringAttr(tag)
    if group is not None:
        op.attributes[GROUP] = group
    block = head.parent_block()
    for v in op.operands:
        for c in constants(v):
            if not c.is_before_in_block(head):
                c.detach()
                block.insert_op_before(c, head)


# ---------------------------------------------------------------------------
# step 1: from a split GEMM's assembled result onto its parts


#: how many elementwise ops deep a value is still traced back to the MAC kernel it comes from
STEM_DEPTH = 16


def stem(kernels: Kernels, v: SSAValue, depth: int = STEM_DEPTH, seen: dict | None = None) -> Operation | None:
    """The op of a MAC kernel that ``v`` is computed from, directly or through untagged elementwise and
    row-wise ops (epilogues to be) whose other operands come from no other MAC kernel; else None."""
    seen = {} if seen is None else seen
    if v in seen:
        return seen[v]
    op = v.owner
    if kernels.in_mac_kernel(op):
        out = op
    elif depth == 0 or not isinstance(op, Operation) or not _fusible(op):
        out = None
    else:
        found = {kernels.head(s): s for x in op.operands if (s := stem(kernels, x, depth - 1, seen)) is not None}
        out = next(iter(found.values())) if len(found) == 1 else None
    seen[v] = out
    return out


def parts_of(kernels: Kernels, v: SSAValue) -> list[SSAValue] | None:
    """The parts ``v`` assembles when it is put together, by untagged concatenations (nested for a 2-D split)
    and reshapes that keep the last axis, from values computed in MAC kernels (or by epilogues to be of
    them), else None."""
    if stem(kernels, v) is not None:
        return [v]
    op = v.owner
    if isinstance(op, sp.ReshapeOp) and TAG not in op.attributes:
        same_rows = sp.shape_of(op.input)[-1:] == sp.shape_of(v)[-1:]
        return parts_of(kernels, op.input) if same_rows else None
    if not isinstance(op, sp.ConcatOp) or TAG in op.attributes:
        return None
    out = []
    for x in op.inputs:
        inner = parts_of(kernels, x)
        if inner is None:
            return None
        out += inner
    return out


def _reaches_stems(kernels: Kernels, v: SSAValue, axes: set[int]) -> bool:
    """Whether a row-wise op needing ``axes`` whole, moved through the concatenations behind ``v`` as far as
    they let it, ends up on values of single MAC kernels (where it can be an epilogue)."""
    op = v.owner
    if stem(kernels, v) is not None:
        return True
    rank = len(sp.shape_of(v))
    if isinstance(op, sp.ReshapeOp) and TAG not in op.attributes and axes == {rank - 1}:
        return sp.shape_of(op.input)[-1:] == sp.shape_of(v)[-1:] and _reaches_stems(
            kernels, op.input, {len(sp.shape_of(op.input)) - 1}
        )
    if not isinstance(op, sp.ConcatOp) or TAG in op.attributes or op.axis.value.data in axes:
        return False
    return all(_reaches_stems(kernels, x, axes) for x in op.inputs)


def _starts_before(kernels: Kernels, v: SSAValue, parts: list[SSAValue]) -> bool:
    """Whether everything ``v`` is computed from comes from kernels that start before each part's kernel."""
    heads = [kernels.head(s) for p in parts if (s := stem(kernels, p)) is not None]
    return all(kernels.head(leaf).is_before_in_block(h) for leaf in leaves(v) for h in heads)


class MergeReshapesPattern(RewritePattern):
    """An untagged reshape of an untagged reshape is one reshape, and none when it gives back its input's
    shape: the concatenation behind a chain of them shows (a tagged reshape is a kernel's copy, kept)."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.ReshapeOp, rewriter: PatternRewriter) -> None:
        if TAG in op.attributes:
            return
        if op.input.type == op.result.type:
            rewriter.replace_all_uses_with(op.result, op.input)
            rewriter.erase(op)
        elif isinstance(inner := op.input.owner, sp.ReshapeOp) and TAG not in inner.attributes:
            rewriter.replace(op, sp.ReshapeOp(inner.input, sp.shape_of(op.result)))


class SinkThroughReshapePattern(RewritePattern):
    """``f(reshape(c), y...)`` -> ``reshape(f(c, y'...))`` when ``c`` assembles a split GEMM's parts and the
    reshape keeps the last axis (it regroups rows, as ``tile``'s flattening does), so that the next pattern
    sees the concatenation. An operand ``y`` with the same rows (the full shape, or one value per row) is
    reshaped like ``c``; one that broadcasts along all but the last axis is kept. Row-wise ops move only when they work on the last axis alone."""

    def __init__(self, kernels: Kernels):
        self.kernels = kernels

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not _fusible(op):
            return
        axes = row_axes(op)
        out = list(sp.shape_of(op.results[0]))
        for i, x in enumerate(op.operands):
            r = x.owner
            if not isinstance(r, sp.ReshapeOp) or TAG in r.attributes or (axes and i != 0):
                continue
            c = r.input
            # towards the parts only: onto a concatenation of them or onto a part (reshaped into one)
            if stem(self.kernels, c) is None and (
                not isinstance(c.owner, sp.ConcatOp) or parts_of(self.kernels, c) is None
            ):
                continue
            cs, rs = list(sp.shape_of(c)), list(sp.shape_of(x))
            if not cs or not rs or cs == rs or cs[-1] != rs[-1] or axes not in (set(), {len(rs) - 1}):
                continue  # (a reshape to the same shape is the merging pattern's)
            if not axes and rs != out:
                continue  # the reshaped value is broadcast up: not a per-element map of it
            operands = self._operands(op, i, c, cs, rs, rewriter)
            if operands is None:
                continue
            new_shape = cs[:-1] + [out[-1]]  # a row reduction keeps the last axis as 1
            new = _rebuilt(op, operands, new_shape)
            if axes:  # the rank may change: the op works on the last axis
                last = len(cs) - 1
                if isinstance(new, sp.ReduceOp):
                    new.attributes["axes"] = i64_array([last])
                else:
                    new.attributes["axis"] = IntegerAttr(last, 64)
            rewriter.insert(new, InsertPoint.before(op))
            back = sp.ReshapeOp(new.results[0], out)
            rewriter.insert(back, InsertPoint.before(op))
            rewriter.replace_all_uses_with(op.results[0], back.results[0])
            rewriter.erase(op)
            if not r.result.uses:
                rewriter.erase(r)
            return

    @staticmethod
    def _operands(op, i, c, cs, rs, rewriter) -> list[SSAValue] | None:
        operands: list[SSAValue] = []
        for j, y in enumerate(op.operands):
            ys = list(sp.shape_of(y))
            if j == i:
                operands.append(c)
            elif isinstance(op, sp.LayerNormOp):
                operands.append(y)  # scale and bias broadcast over the last axis alone
            elif (yp := [1] * (len(rs) - len(ys)) + ys)[:-1] == rs[:-1]:
                # the same rows (one value per row, or a whole row each): regrouped like c
                rsh = sp.ReshapeOp(y, cs[:-1] + yp[-1:])
                rewriter.insert(rsh, InsertPoint.before(op))
                operands.append(rsh.result)
            elif all(d == 1 for d in ys[:-1]):
                if len(ys) > len(cs):
                    rsh = sp.ReshapeOp(y, [1] * (len(cs) - 1) + ys[-1:])
                    rewriter.insert(rsh, InsertPoint.before(op))
                    y = rsh.result
                operands.append(y)
            else:
                return None
        return operands


def piece(y: SSAValue, axis: int, lo: int, hi: int, anchor: Operation, rewriter: PatternRewriter) -> SSAValue:
    """Rows ``lo:hi`` of ``y`` along ``axis``: the operand of a concatenation along ``axis`` that spans
    them exactly, else a slice."""
    cat = y.owner
    if isinstance(cat, sp.ConcatOp) and TAG not in cat.attributes:
        cat_axis, spans = concat_spans(cat)
        if cat_axis == axis:
            for x, span in zip(cat.inputs, spans):
                if span == (lo, hi):
                    return x
    shp = list(sp.shape_of(y))
    st = [0] * len(shp)
    en = list(shp)
    st[axis], en[axis] = lo, hi
    s = sp.SliceOp(y, st, en, [1] * len(shp))
    rewriter.insert(s, InsertPoint.before(anchor))
    return s.result


class SinkThroughConcatPattern(RewritePattern):
    """``f(concat(p0, p1, ...), y...)`` -> ``concat(f(p0, y0...), f(p1, y1...), ...)`` when the ``p``s are
    computed in MAC kernels, so that each ``f(p)`` can become its part's epilogue. Each other operand ``y``
    is cut like the concatenation (a matching concatenation gives its operands, a broadcast axis stays
    whole) and must not be computed from the parts otherwise (then the pieces could not join them). A
    row-wise op moves only through a concatenation along an axis it does not need whole."""

    def __init__(self, kernels: Kernels):
        self.kernels = kernels

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not _fusible(op):
            return
        axes = row_axes(op)
        out = list(sp.shape_of(op.results[0]))
        for i, x in enumerate(op.operands):
            cat = x.owner
            if not isinstance(cat, sp.ConcatOp) or (axes and i != 0):
                continue
            parts = parts_of(self.kernels, x)
            if parts is None:
                continue
            axis = cat.axis.value.data
            if axis in axes or list(sp.shape_of(x))[axis] != out[axis] or len(sp.shape_of(x)) != len(out):
                continue
            if axes and not _reaches_stems(self.kernels, x, axes):
                continue  # its pieces would each still read several kernels: no use cutting it
            if not all(j == i or self._cuttable(y, axis, len(out), cat, parts) for j, y in enumerate(op.operands)):
                continue
            pieces, lo = [], 0
            for p in cat.inputs:
                hi = lo + sp.shape_of(p)[axis]
                operands = [p if j == i else self._cut(y, axis, len(out), lo, hi, op, rewriter)
                            for j, y in enumerate(op.operands)]  # fmt: skip
                shape = list(out)
                shape[axis] = hi - lo
                new = _rebuilt(op, operands, shape)
                rewriter.insert(new, InsertPoint.before(op))
                pieces.append(new.results[0])
                lo = hi
            joined = sp.ConcatOp(pieces, axis)
            rewriter.insert(joined, InsertPoint.before(op))
            rewriter.replace_all_uses_with(op.results[0], joined.result)
            rewriter.erase(op)
            if not cat.result.uses:
                rewriter.erase(cat)
            return

    def _cuttable(self, y: SSAValue, axis: int, rank: int, cat: sp.ConcatOp, parts: list[SSAValue]) -> bool:
        ya = axis - (rank - _rank(y))
        if ya < 0 or sp.shape_of(y)[ya] == 1:
            return _starts_before(self.kernels, y, parts)
        other = y.owner
        if isinstance(other, sp.ConcatOp) and other.axis.value.data == ya and ya == axis:
            sizes = [sp.shape_of(v)[axis] for v in other.inputs]
            if sizes == [sp.shape_of(v)[axis] for v in cat.inputs] and parts_of(self.kernels, y) is not None:
                return True
        return _starts_before(self.kernels, y, parts)

    @staticmethod
    def _cut(y: SSAValue, axis: int, rank: int, lo: int, hi: int, anchor: Operation,
             rewriter: PatternRewriter) -> SSAValue:  # fmt: skip
        ya = axis - (rank - _rank(y))
        if ya < 0 or sp.shape_of(y)[ya] == 1:
            return y
        return piece(y, ya, lo, hi, anchor, rewriter)


# ---------------------------------------------------------------------------
# step 2: epilogues


class EpilogueIntoProducerPattern(RewritePattern):
    """Tags an elementwise or row-wise op into the kernel of the GEMM or fused attention that computes one of
    its operands (the latest-starting one, when several do): its epilogue. An untagged GEMM becomes a
    kernel of its own tag first. Special functions join only where compute tiles have an exp unit."""

    def __init__(self, kernels: Kernels):
        self.kernels = kernels

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        k = self.kernels
        if not _fusible(op) or (needs_special(op) and not k.special_on_compute):
            return
        producers = []
        for v in op.operands:
            # an operand assembled from several MAC kernels (a split GEMM's whole result) has no one producer: it
            # is read like any input (a residual from another grid) by the kernel of another operand, if any
            found = {k.head(x): x for x in leaves(v) if self._producer(x)}
            if len(found) == 1:
                producers += found.values()
        if not producers:
            return
        # the producer whose kernel starts last: every other kernel op reads must start before it
        producer = producers[0]
        for p in producers[1:]:
            if k.head(producer).is_before_in_block(k.head(p)):
                producer = p
        tag = k.tag_of(producer)
        head = k.head(producer)
        if not joins(k, op, tag, head):
            return
        if tag is None:  # an unsplit GEMM: a kernel of its own, now with a tag its epilogue shares
            tag = k.fresh(producer.name.removeprefix("sparse."))
            producer.attributes[TAG] = StringAttr(tag)
            k.first[tag] = producer
            k.mac.add(tag)
        join(k, op, tag, head, producer.attributes.get(GROUP))
        rewriter.handle_operation_modification(op)

    def _producer(self, op: Operation) -> bool:
        """An op of a MAC kernel, or an untagged GEMM (a kernel of its own)."""
        k = self.kernels
        return k.in_mac_kernel(op) or (isinstance(op, (sp.MatmulOp, sp.ContractOp)) and k.tag_of(op) is None)


# ---------------------------------------------------------------------------
# step 3: row kernels


class ChainIntoRowKernelPattern(RewritePattern):
    """Gathers the elementwise and row-wise ops no MAC kernel took into row-streaming vector kernels: an op
    joins the row kernel that computes one of its operands when the order allows, else starts one."""

    def __init__(self, kernels: Kernels, arch=None):
        self.kernels = kernels
        self.arch = arch

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        k = self.kernels
        if not _fusible(op):
            return
        for v in op.operands:
            for leaf in leaves(v):
                tag = k.tag_of(leaf)
                if tag in k.rows and joins(k, op, tag, k.first[tag]):
                    if row_axes(op) and self._apart(k.rows[tag], op):
                        continue
                    join(k, op, tag, k.first[tag], None)
                    k.rows[tag].append(op)
                    rewriter.handle_operation_modification(op)
                    return
        tag = k.fresh(ROWS)
        op.attributes[TAG] = StringAttr(tag)
        k.first[tag] = op
        k.rows[tag] = [op]
        rewriter.handle_operation_modification(op)

    def _apart(self, chain: list[Operation], op: Operation) -> bool:
        """Whether row-wise ``op`` (a norm) starts a kernel of its own rather than join ``chain``: elementwise
        ops that butterfly stages feed (BERT's residual adds), longer than the stage kernels next to them, so
        that ``plan_row_splits`` cuts them by columns (a norm needs whole rows: with it, the chain is not cut)."""
        k = self.kernels
        if self.arch is None or any(row_axes(o) for o in chain) or not _fed_by_stages(k, chain):
            return False
        block = op.parent_block()
        near = neighbour_cycles(k, chain, _tagged_ops(block), self.arch) if block is not None else None
        return near is not None and _cycles(chain, self.arch) > near


# ---------------------------------------------------------------------------
# step 4: a row kernel over many rows, in row blocks across tiles


#: contexts of a tile kind that row-block parts leave free (one in this many), headroom for placement
HEADROOM = 8


@dataclass(frozen=True)
class RowSplit:
    """A row kernel cut into ``parts`` balanced blocks of its ``axis`` (counted from the end, ``extent``
    long); ``base`` names the group and prefixes the parts' tags; ``tile_kind`` is marked on each part when
    the cost rule would not pick it by itself (special functions on compute tiles with an exp unit). One part:
    the kernel stays whole and is only marked (its row step does not fit the tiles the rule picks)."""

    base: str
    axis: int
    extent: int
    parts: int
    tile_kind: str | None


def _broadcast(y: SSAValue, axis: int) -> bool:
    """Whether ``y`` is the same for every row along ``axis`` (counted from the end): it has no such axis
    or one of size 1."""
    return _rank(y) < -axis or sp.shape_of(y)[axis] == 1


def _link(v: SSAValue, inside: set[Operation]) -> list[sp.ReshapeOp] | None:
    """The untagged reshapes through which ``v`` carries a result of the chain's ops ``inside`` (innermost
    last), [] for a value of the chain or one computed without it, None for other data movement from it
    (a part could not compute its own block of it)."""
    owner = v.owner
    if not isinstance(owner, Operation) or owner in inside or not any(x in inside for x in leaves(v)):
        return []
    if isinstance(owner, sp.ReshapeOp) and TAG not in owner.attributes:
        inner = _link(owner.input, inside)
        return None if inner is None else [owner, *inner]
    return None


def _keeps_rows(v: SSAValue, axis: int, extent: int) -> bool:
    """Whether ``v`` has ``extent`` rows along ``axis`` (counted from the end)."""
    return _rank(v) >= -axis and sp.shape_of(v)[axis] == extent


def split_axis(chain: list[Operation], columns: bool = False) -> tuple[int, int] | None:
    """(axis counted from the end, extent) of the longest leading axis that every op of ``chain`` keeps
    (the same extent in each result, an operand from outside either of that extent or broadcast along it)
    and none needs whole; None when there is none. A chain's value an op reads through reshapes must keep
    the axis and everything after it (the reshapes regroup what comes before): a part reshapes its own
    block; through other data movement the chain is not split. ``columns``: the last axis instead (a chain
    of elementwise ops only)."""
    inside = set(chain)
    links = [_link(v, inside) for op in chain for v in op.operands]
    if any(x is None for x in links):
        return None
    best = None
    rank = min(_rank(op.results[0]) for op in chain)
    for axis in [-1] if columns and rank else range(-rank, -1):
        extent = sp.shape_of(chain[0].results[0])[axis]
        if extent < 2 or best is not None and extent <= best[1]:
            continue
        ok = all(_keeps_rows(op.results[0], axis, extent) and (_rank(op.results[0]) + axis) not in row_axes(op)
                 and all(v.owner in inside or _broadcast(v, axis) or _keeps_rows(v, axis, extent)
                         for v in op.operands)
                 for op in chain)  # fmt: skip
        ok = ok and all(sp.shape_of(r.input)[axis:] == sp.shape_of(r.result)[axis:]
                        and _keeps_rows(r.input, axis, extent) for rs in links for r in rs)  # fmt: skip
        if ok:
            best = (axis, extent)
    return best


def step_bytes(chain: list[Operation], axis: int) -> tuple[int, int]:
    """Bytes one row step of a row kernel of ``chain`` holds of its inputs (rows along ``axis``, counted from the
    end), as (row, same): one row of each operand from outside the chain that varies by row (as
    ``lower-to-dataflow`` streams a row kernel's inputs a row a token), and whole what is the same for every
    row (a norm's scale and bias)."""
    inside = set(chain)
    row, same, seen = 0, 0, set()
    for op in chain:
        for v in op.operands:
            if v in seen or v.owner in inside or not isinstance(v.type, TensorType):
                continue
            seen.add(v)
            if _broadcast(v, axis):
                same += nbytes(v.type)
            else:
                row += nbytes(v.type) // max(int(np.prod(sp.shape_of(v)[: _rank(v) + axis + 1], dtype=np.int64)), 1)
    return row, same


def _tagged_ops(block) -> dict[str, list[Operation]]:
    out: dict[str, list[Operation]] = {}
    for op in block.ops:
        tag = op.attributes.get(TAG)
        if isinstance(tag, StringAttr):
            out.setdefault(tag.data, []).append(op)
    return out


def _kind(ops: list[Operation]) -> str:
    """The tile kind a kernel of ``ops`` runs on: compute with a MAC op or no special function, else sfu
    (the cost rule's choice, attnc.cost.work); an attention's K/V stage holds them in a memory tile, its K/V
    spill is a DMA context."""
    if any(STAGE in op.attributes for op in ops):
        return "memory"
    if any(SPILL in op.attributes for op in ops):
        return "dma"
    if any(isinstance(op, MAC_OPS) for op in ops) or not any(isinstance(op, SFU_OPS) for op in ops):
        return "compute"
    return "sfu"


def kernels_on(block, kernels: Kernels, kind: str, skip: set[str]) -> int:
    """How many kernels of the module run on tiles of ``kind``, the row kernels ``skip`` left out: one per
    tag, one per untagged compute op (as ``lower-to-dataflow`` makes them), and for an attention it lowers
    per head, a QKᵀ and a PV kernel (compute) and a softmax kernel (sfu) per (batch, head), at most."""
    n = 0
    for tag, ops in _tagged_ops(block).items():
        n += tag not in skip and _kind(ops) == kind
    for op in block.ops:
        if TAG in op.attributes or isinstance(op, (sp.ConstantOp, func.ReturnOp)) or sp.is_data_movement(op):
            continue
        if isinstance(op, sp.AttentionOp):
            units = sp.shape_of(op.q)[0] * sp.shape_of(op.q)[1]
            n += 2 * units if kind == "compute" else units
        else:
            n += _kind([op]) == kind
    return n


def _cycles(ops: list[Operation], arch, kind: str | None = None) -> int:
    """The cost rule's cycles of a kernel of ``ops`` (on tiles of ``kind``, when given)."""
    mark = ops[0].attributes.get(TILE_KIND)
    if kind is not None:
        ops[0].attributes[TILE_KIND] = StringAttr(kind)
    try:
        out = next((op.results[0].type for op in ops if isinstance(op, MAC_OPS)), ops[-1].results[0].type)
        return kernel_cost(ops, [out], arch).cycles
    finally:
        if kind is not None and mark is None:
            del ops[0].attributes[TILE_KIND]


def neighbour_cycles(kernels: Kernels, chain: list[Operation], tagged: dict[str, list[Operation]], arch,
                     pick=min) -> int | None:
    """The cycles of the shortest GEMM, attention or butterfly stage kernel that computes one of ``chain``'s
    inputs or reads one of its results (a part of its grid, when split), or None when no such kernel is next
    to it."""
    inside = set(chain)
    near: dict = {}
    for op in chain:
        for x in [leaf for v in op.operands for leaf in leaves(v)] + readers(op.results[0]):
            tag = kernels.tag_of(x)
            if x in inside or tag in near:
                continue
            if tag in kernels.mac or tag in kernels.stages:
                near[tag] = tagged[tag]
            elif tag is None and isinstance(x, (sp.MatmulOp, sp.ContractOp)):
                near[x] = [x]
    return pick((_cycles(ops, arch) for ops in near.values()), default=None)


def _fed_by_stages(kernels: Kernels, chain: list[Operation], streams: set[str] | None = None) -> bool:
    """Whether a butterfly stage kernel (or a kernel of ``streams``) computes one of ``chain``'s inputs."""
    inside = set(chain)
    feeds = kernels.stages if streams is None else streams
    return any(kernels.tag_of(x) in feeds for op in chain for v in op.operands for x in leaves(v)
               if x not in inside)  # fmt: skip


def _row_streams(kernels: Kernels) -> set[str]:
    """The butterfly stage kernels and the row kernels that their row blocks reach, directly or through other
    row kernels: each streams every row block to every reader."""
    out = set(kernels.stages)
    grew = True
    while grew:
        grew = False
        for tag, chain in kernels.rows.items():
            if tag not in out and _fed_by_stages(kernels, chain, out):
                out.add(tag)
                grew = True
    return out


def _norm_after(chain: list[Operation]) -> sp.LayerNormOp | None:
    """The layer norm that reads what ``chain`` computes (through data movement), if one does."""
    inside = set(chain)
    return next((r for op in chain for r in readers(op.results[0]) if r not in inside and isinstance(r, sp.LayerNormOp)),
                None)  # fmt: skip


def _joins_residual(kernels: Kernels, last: Operation, tag: str) -> bool:
    """Whether ``last``, the last op of row kernel ``tag``, adds to what the kernel computed (fed by butterfly stage
    kernels) a value another kernel computes on chip (a residual: it comes from before the stages, on the short
    side of a fork that joins here). ``SplitNormByColumnsPattern`` gives such an add a kernel of its own per
    part, which ``plan_row_splits`` counts."""
    k = kernels
    if not isinstance(last, sp.AddOp) or not _fed_by_stages(k, k.rows.get(tag, []) or [
            o for o in last.parent_block().ops if k.tag_of(o) == tag]):
        return False
    inside = [v for v in last.operands if isinstance(v.owner, Operation) and k.tag_of(v.owner) == tag]
    outside = [x for v in last.operands for x in leaves(v) if k.tag_of(x) != tag]
    return len(inside) == 1 and bool(outside) and not any(k.tag_of(x) in k.stages for x in outside)


def row_strips(chain: list[Operation], axis: int) -> tuple[int, int]:
    """How many equal row strips an input of ``chain`` is concatenated from along ``axis`` (counted from the
    end): a split GEMM's row strips; 1 if none is. And the bytes of one strip of every input so cut (what a
    part holds when it shares a strip with another part and so takes it whole)."""
    inside = set(chain)
    count, held = 1, 0
    for op in chain:
        for y in op.operands:
            # (through reshapes that only regroup what comes before the axis)
            while (
                isinstance(r := y.owner, sp.ReshapeOp)
                and TAG not in r.attributes
                and _rank(r.input) >= -axis
                and sp.shape_of(r.input)[axis:] == sp.shape_of(y)[axis:]
            ):
                y = r.input
            cat = y.owner
            if isinstance(cat, sp.ConcatOp) and cat not in inside and TAG not in cat.attributes:
                cat_axis, spans = concat_spans(cat)
                if cat_axis == _rank(y) + axis and len({hi - lo for lo, hi in spans}) == 1:
                    if count == 1:
                        count = len(spans)
                    if len(spans) == count:
                        held += nbytes(y.type) // count
    return count, held


def aligned(parts: int, strips: int, most: int, room: int, whole: bool = False) -> int:
    """``parts`` made a count whose balanced blocks never straddle two of ``strips`` equal strips (a divisor
    or a multiple of ``strips``; with ``whole``, a divisor: each part reads whole strips, so that each strip
    has one reader): the next such count up if it is at most ``most`` and ``room``, else the next one down."""
    if strips < 2:
        return parts
    counts = [n for n in range(1, most + 1) if strips % n == 0 or (n % strips == 0 and not whole)]
    up = [n for n in counts if parts <= n <= room]
    return min(up) if up else max(n for n in counts if n <= parts)


def fit_parts(wants: list[tuple[int, int, float, int]], free: int,
              counts: list[list[int]] | None = None) -> list[int]:
    """Parts per chain within ``free`` contexts, from what each wants: ``(parts, contexts per part, cycles,
    least)`` (``cycles`` against the kernel next to it; ``least``: the parts below which the chain would be
    longer than the slowest kernel next to it), and the part counts each may take (``counts``, ascending: those
    aligned to the strips of its input; any count when None). Short of contexts, parts are taken where losing
    them lengthens a part least against that kernel (what the streams through the chain wait for), a chain
    stepping down to its next count: BERT's GELU, six lane operations an element over 3072 columns, is worth
    several times the parts of the bias and residual adds before a norm; a chain goes below its ``least`` only
    when every chain is there, and never below its smallest count."""
    counts = counts or [list(range(1, p + 1)) for p, *_ in wants]
    parts = [max([c for c in cs if c <= p] or cs[:1]) for (p, *_), cs in zip(wants, counts)]

    def over() -> bool:
        return sum(p * w[1] for p, w in zip(parts, wants)) > free

    def down(i: int) -> int | None:
        return max((c for c in counts[i] if c < parts[i]), default=None)

    for floor in (True, False):
        while over():
            able = [i for i in range(len(parts)) if (d := down(i)) is not None and (not floor or d >= wants[i][3])]
            if not able:
                break
            i = min(able, key=lambda i: (wants[i][2] / down(i), -parts[i]))
            parts[i] = down(i)
    return parts


@dataclass
class _Want:
    """What :func:`plan_row_splits` plans for one row chain."""

    chain: list[Operation]
    axis: tuple[int, int]  # (axis counted from the end, its extent)
    kind: str  # the tile kind its parts run on
    parts: int
    most: int  # the most parts it may take
    strips: int  # the equal row strips its input comes in (1: none)
    whole: bool  # a part sharing a strip would hold it whole, more than a tile: parts divide the strips
    per: int  # contexts a part takes (with a column-split norm's apply and residual kernels)
    stats: int  # contexts the chain takes besides its parts (a column-split norm's statistics kernel)
    load: float  # its cycles over the shortest kernel's next to it
    least: int  # the parts below which it would be longer than the slowest kernel next to it
    moved: bool  # its row step does not fit the tiles of its own kind: it runs on ``kind`` even as one part


def plan_row_splits(block, kernels: Kernels, arch,
                    shared: bool = False) -> dict[Operation, tuple[list[Operation], RowSplit]]:
    """Which row kernels to cut into row blocks, and into how many: a part about as long as the shortest
    GEMM/attention kernel next to the chain (its vector work no longer than that part's), at most one part
    per row and per tile of its kind, and all parts of all chains within the contexts of that kind that the
    module's other kernels leave (less an eighth as headroom, and the kernels a layer norm after a column split
    adds per part; parts go where they shorten the longest part most: :func:`fit_parts`). A
    chain whose input comes in equal row strips gets a divisor or a multiple of their number, so that no
    part straddles two (it would read both strips' parts). Keyed by each chain's first op. With ``shared``
    (the module's phases share SRAM) a chain takes as many parts as its rows, tiles and the free contexts
    allow: it runs alone between phases; and when a strip of its input is more than a tile's SRAM, no more
    parts than it has strips (each strip, spilled between phases, then has one reader, to which it streams
    back row by row, instead of being held whole by each of two)."""
    tagged = _tagged_ops(block)
    order = {op: i for i, op in enumerate(block.ops)}
    wanted: dict[str, _Want] = {}
    streams = _row_streams(kernels)
    for tag, chain in kernels.rows.items():
        chain = sorted(chain, key=order.__getitem__)
        # a butterfly chain streams its result in row blocks, every row block to every reader: a part of a row
        # split would hold all of them (it reads a block of rows that arrive spread over the whole stream),
        # while a part of a column split takes its columns of each row block as it comes. So a chain a stage
        # kernel feeds (or a row kernel they feed) is cut by columns, if it is elementwise, else not at all
        fed = tag in streams
        axis = split_axis(chain, columns=True) if fed else split_axis(chain)
        near = neighbour_cycles(kernels, chain, tagged, arch)
        if axis is None or not near:
            continue
        kind = _kind(chain)
        strips, held = row_strips(chain, axis[0])
        # a row step no sfu tile holds (XLM's 2048-wide LayerNorm: 8 KiB of scale and bias and a 4 KiB row in
        # 8 KiB) stays on sfu tiles, one part per row strip of its input (a part takes its strip's pieces a row a
        # token, not a token of every strip's), and lower-to-dataflow sends it its weights again every row, a
        # chunk a step (stream_row_weights); the compute tiles' contexts are the GEMMs'
        row, same = step_bytes(chain, axis[0])
        sfu = max(t.sram_bytes for t in arch.tiles_of("sfu"))
        # (only when a row leaves room for weight chunks: Llama's RMSNorm after a split O projection takes the
        # residual sum's row and its square's, 8 KiB at width 2048, which no 8 KiB sfu tile holds at all)
        wide = kind == "sfu" and strips > 1 and row + same > sfu and row < sfu * 3 // 4
        if kind == "sfu" and kernels.special_on_compute and not wide:
            kind = "compute"  # many more of them, and their exp units run the special functions
        most = min(axis[1], len(arch.tiles_of(kind)))
        # sharing SRAM, a row kernel between two phases runs alone (its neighbours wait for it or it for them):
        # as many parts as the contexts allow, not as many as hide it behind its neighbour
        cycles = _cycles(chain, arch, kind)
        parts = most if shared else min(-(-cycles // near), most)
        # a row step the tiles of its own kind cannot hold moves to ``kind`` (compute), even as one part
        moved = kind != _kind(chain) and row + same > max((t.sram_bytes for t in arch.tiles_of(_kind(chain))), default=0)
        if (wide or moved) and 1 < strips <= most:
            parts = most = strips
        if parts > 1 or moved:
            # sharing SRAM, the chain reads its input's strips back from the DRAM they were spilled to between
            # phases: a strip read by one part streams back a row per token, one that two parts share is held
            # whole by each (lower-to-dataflow's stream_spilled_rows), which no tile may be too small for
            # (BERT-base at seq 8192 on cloud: 16 layer-norm parts over 8 strips of 1024 rows each held 771 KiB)
            whole = shared and held > max((t.sram_bytes for t in arch.tiles_of(kind)), default=0)
            # a layer norm reading a column split runs by columns too (SplitNormByColumnsPattern): per part an
            # apply kernel and, when the chain ends in a residual add of a value computed on chip, a kernel of
            # its own for that, plus one statistics kernel; they take contexts of the same kind
            norm = _norm_after(chain) if fed else None
            per = 1 + (1 + _joins_residual(kernels, chain[-1], tag) if norm else 0)
            if norm is not None:
                # about half the norm's lane work joins each part (its sums; the rest is the apply kernels')
                cycles += _cycles([norm], arch, kind) // 2
            slowest = neighbour_cycles(kernels, chain, tagged, arch, max) or near
            wanted[tag] = _Want(chain, axis, kind, parts, most, strips, whole, per, int(norm is not None),
                                cycles / near, min(parts, -(-cycles // slowest)), moved)
    def free_of(kind: str) -> int:
        total = sum(t.contexts for t in arch.tiles_of(kind))
        mine = [w for w in wanted.values() if w.kind == kind]
        return total - total // HEADROOM - kernels_on(block, kernels, kind, set(wanted)) - sum(w.stats for w in mine)

    # short of compute contexts, the chains of plain lane work (no special function, no norm after them: a bias
    # add) move to sfu tiles with contexts to spare, smallest first: their lanes are a compute tile's, and the
    # contexts they leave are parts of the chains that need an exp unit (BERT's GELU on cloud)
    if "compute" in {w.kind for w in wanted.values()} and arch.tiles_of("sfu") and not shared:
        plain = sorted((w for w in wanted.values() if w.kind == "compute" and w.per == 1 and _kind(w.chain) == "compute"
                        and not any(needs_special(op) for op in w.chain)), key=lambda w: w.load)  # fmt: skip
        sfu_tiles = len(arch.tiles_of("sfu"))
        for w in plain:
            if sum(x.parts * x.per for x in wanted.values() if x.kind == "compute") <= free_of("compute"):
                break
            parts = min(w.parts, sfu_tiles, w.axis[1])
            if parts <= free_of("sfu") - sum(x.parts for x in wanted.values() if x.kind == "sfu"):
                w.kind, w.parts, w.most = "sfu", parts, min(w.most, sfu_tiles)
    for kind in {w.kind for w in wanted.values()}:
        mine = [w for w in wanted.values() if w.kind == kind]
        free = max(free_of(kind), len(mine))

        counts = [[n for n in range(1, w.most + 1) if w.strips < 2 or w.strips % n == 0
                   or (n % w.strips == 0 and not w.whole)] for w in mine]  # fmt: skip
        for w, parts in zip(mine, fit_parts([(w.parts, w.per, w.load, w.least) for w in mine], free, counts)):
            w.parts = parts
        headroom = sum(t.contexts for t in arch.tiles_of(kind)) // HEADROOM
        for w in mine:  # a moved chain keeps its part per strip, into the headroom if need be
            if w.moved and w.parts < w.strips <= w.most and \
                    sum(x.parts * x.per for x in mine) + (w.strips - w.parts) * w.per <= free + headroom:
                w.parts = w.strips
        for w in mine:
            if w.moved and w.parts == w.strips:
                continue  # kept at a part per strip: aligned already
            room = (free - sum(x.parts * x.per for x in mine)) // w.per + w.parts
            w.parts = aligned(w.parts, w.strips, w.most, room, whole=w.whole)
    out = {}
    names = set(tagged)
    for tag, w in wanted.items():
        chain, (axis, extent), kind, parts = w.chain, w.axis, w.kind, w.parts
        if parts < 2 and not w.moved:
            continue
        base = chain[0].name.removeprefix("sparse.") if len(chain) == 1 else tag
        name, i = base, 1
        while name in names - {tag}:
            name, i = f"{base}_{i}", i + 1
        names.add(name)
        marked = kind if kind != _kind(chain) else None
        out[chain[0]] = (chain, RowSplit(name, axis, extent, parts, marked))
    return out


class SplitRowKernelPattern(RewritePattern):
    """A row kernel planned by :func:`plan_row_splits` (matched at its first op) becomes its parts: each op
    of the chain once per block of rows, on the same block of its operands (a matching concatenation's
    operand, else a slice; what broadcasts along the rows stays whole), tagged ``<base>_p<j>`` in group
    ``<base>``; a result read outside the chain is the concatenation of its parts."""

    def __init__(self, kernels: Kernels, splits: dict[Operation, tuple[list[Operation], RowSplit]]):
        self.kernels = kernels
        self.splits = splits

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if op not in self.splits:
            return
        chain, s = self.splits.pop(op)
        if s.parts < 2:  # one part: the kernel only moves to the tile kind that holds its row step
            chain[0].attributes[TILE_KIND] = StringAttr(s.tile_kind)
            rewriter.handle_operation_modification(chain[0])
            return
        inside = set(chain)
        blocks = [(j * s.extent // s.parts, (j + 1) * s.extent // s.parts) for j in range(s.parts)]
        tags = [f"{s.base}_p{j}" for j in range(s.parts)]
        copies: dict[SSAValue, list[SSAValue]] = {}
        carried = _carried(chain)
        keep = inside | carried

        def block_of(y: SSAValue, j: int, lo: int, hi: int, anchor: Operation) -> SSAValue:
            if y in copies:
                return copies[y][j]
            if y.owner in carried:  # a chain's value regrouped: the part's own block, regrouped
                shape = list(sp.shape_of(y))
                shape[_rank(y) + s.axis] = hi - lo
                r = sp.ReshapeOp(block_of(y.owner.input, j, lo, hi, anchor), shape)
                rewriter.insert(r, InsertPoint.before(anchor))
                return r.result
            return y if _broadcast(y, s.axis) else piece(y, _rank(y) + s.axis, lo, hi, anchor, rewriter)

        for c in chain:
            res = c.results[0]
            axis = _rank(res) + s.axis
            outs = []
            for j, (lo, hi) in enumerate(blocks):
                operands = [block_of(y, j, lo, hi, c) for y in c.operands]
                shape = list(sp.shape_of(res))
                shape[axis] = hi - lo
                new = _rebuilt(c, operands, shape)
                new.attributes[TAG] = StringAttr(tags[j])
                new.attributes[GROUP] = StringAttr(s.base)
                if s.tile_kind is not None and c is chain[0]:
                    new.attributes[TILE_KIND] = StringAttr(s.tile_kind)
                rewriter.insert(new, InsertPoint.before(c))
                outs.append(new.results[0])
                self.kernels.first.setdefault(tags[j], new)
            copies[res] = outs
            if any(u.operation not in keep for u in res.uses):
                joined = sp.ConcatOp(outs, axis)
                rewriter.insert(joined, InsertPoint.before(c))
                rewriter.replace_uses_with_if(res, joined.result, lambda u: u.operation not in keep)
        block = op.parent_block()
        moved = [y.owner for c in chain for y in c.operands]
        for c in reversed([o for o in block.ops if o in keep]):
            rewriter.erase(c)
        # what assembled the chain's inputs whole, now that each part reads its own block
        while moved:
            x = moved.pop()
            if (
                isinstance(x, Operation)
                and x.parent is block
                and sp.is_data_movement(x)
                and TAG not in x.attributes
                and not any(r.uses for r in x.results)
            ):
                moved += [y.owner for y in x.operands]
                rewriter.erase(x)


class SplitNormByColumnsPattern(RewritePattern):
    """A layer norm over the last axis whose input is assembled from the column parts of a row kernel (BERT's
    residual add after a butterfly chain, cut by columns because the chain streams every row block to every
    reader) runs by columns too, in three steps that each stream row block by row block: every column part
    also sums its columns and their squares per row (in f32: a sum of 768 squares overflows f16), a small
    statistics kernel adds the parts' sums into each row's mean and 1/sqrt(variance + eps)
    (``E[x^2] - mean^2``, the biased variance the norm uses), and one apply kernel per column part normalises
    its columns, scaled and shifted by its slice of the norm's scale and bias. On one tile the norm's lane work
    (seven operations an element) is the whole tensor's; so its work is spread over the parts, the statistics
    kernel doing a few operations per row. Taken only when the norm alone is longer than a part of the kernel
    that feeds it."""

    def __init__(self, kernels: Kernels, arch):
        self.kernels = kernels
        self.arch = arch

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.LayerNormOp, rewriter: PatternRewriter) -> None:
        k = self.kernels
        x = op.input
        rank = _rank(x)
        if TAG in op.attributes or not rank or op.axis.value.data % rank != rank - 1:
            return
        cat = x.owner
        if not isinstance(cat, sp.ConcatOp) or TAG in cat.attributes:
            return
        axis, spans = concat_spans(cat)
        parts = list(cat.inputs)
        tags = [k.tag_of(v.owner) if isinstance(v.owner, Operation) else None for v in parts]
        if axis != rank - 1 or len(parts) < 2 or None in tags or len(set(tags)) != len(tags):
            return
        if any(t in k.mac or t in k.stages for t in tags):
            return
        tagged = _tagged_ops(op.parent_block())
        if _cycles([op], self.arch) <= max(_cycles(tagged[t], self.arch) for t in tags):
            return
        f32 = builtin.f32
        elt = sp.elt_of(x)
        width = sp.shape_of(x)[-1]
        names = set(tagged)
        base, i = "layer_norm", 1
        while base in names or f"{base}_stats" in names or any(f"{base}_p{j}" in names for j in range(len(parts))):
            base, i = f"layer_norm_{i}", i + 1
        made: list[Operation] = []

        def add(new: Operation, tag: str, group: str | None = None) -> SSAValue:
            new.attributes[TAG] = StringAttr(tag)
            if group is not None:
                new.attributes[GROUP] = StringAttr(group)
            rewriter.insert(new, InsertPoint.before(op))
            made.append(new)
            return new.results[0]

        def const(value: float) -> SSAValue:
            c = sp.ConstantOp(from_numpy(np.array([value], np.float32)))
            rewriter.insert(c, InsertPoint.before(op))
            return c.result

        sums, squares = [], []
        for j, (v, tag) in enumerate(zip(parts, tags)):
            last = v.owner
            if _joins_residual(k, last, tag):
                # the residual add and the sums leave the part for a kernel of their own: the part's stage chains
                # and the residual then meet in a kernel of two streamed inputs, which has room to hold the
                # residual's tokens while the chains' come through the pipeline (lower-to-dataflow)
                tag = f"{base}_in_p{j}"
                last.attributes[TAG] = StringAttr(tag)
                last.attributes[GROUP] = StringAttr(f"{base}_in")
                k.first[tag] = last
            wide = add(sp.CastOp(v, f32), tag)
            sums.append(add(sp.ReduceOp(wide, "sum", [-1], True), tag))
            # a row sum is lane work: the part stays on the tile kind it had (the cost rule puts reductions on sfu)
            sums[-1].owner.attributes[TILE_KIND] = StringAttr(_kind(tagged[tags[j]]))
            squares.append(add(sp.ReduceOp(add(sp.MulOp(wide, wide), tag), "sum", [-1], True), tag))
        stats = f"{base}_stats"
        s1, s2 = sums[0], squares[0]
        for a, b in zip(sums[1:], squares[1:]):
            s1 = add(sp.AddOp(s1, a), stats)
            s2 = add(sp.AddOp(s2, b), stats)
        inv = const(1.0 / width)
        mean = add(sp.MulOp(s1, inv), stats)
        var = add(sp.SubOp(add(sp.MulOp(s2, inv), stats), add(sp.MulOp(mean, mean), stats)), stats)
        rstd = add(sp.RsqrtOp(add(sp.AddOp(var, const(op.epsilon.value.data)), stats)), stats)
        mean, rstd = add(sp.CastOp(mean, elt), stats), add(sp.CastOp(rstd, elt), stats)
        if k.special_on_compute:
            k.first[stats] = next(o for o in made if k.tag_of(o) == stats)
            k.first[stats].attributes[TILE_KIND] = StringAttr("compute")
        outs = []
        for j, (v, (lo, hi)) in enumerate(zip(parts, spans)):
            tag = f"{base}_p{j}"
            y = add(sp.MulOp(add(sp.SubOp(v, mean), tag, base), rstd), tag, base)
            for w, apply in ((op.scale, sp.MulOp), (op.bias, sp.AddOp)):
                if w is not None:
                    w = w if _broadcast(w, -1) else piece(w, _rank(w) - 1, lo, hi, op, rewriter)
                    y = add(apply(y, w), tag, base)
            outs.append(y)
        for o in made:
            t = k.tag_of(o)
            k.first.setdefault(t, o)
        joined = sp.ConcatOp(outs, axis)
        rewriter.replace(op, joined)
        if not cat.result.uses:
            rewriter.erase(cat)


def _carried(chain: list[Operation]) -> set[sp.ReshapeOp]:
    """The reshapes that carry the chain's values from op to op and are read by nothing else: each part
    makes its own (others read the concatenated parts)."""
    inside = set(chain)
    out = {r for op in chain for v in op.operands for r in _link(v, inside) or []}
    while drop := {r for r in out if any(u.operation not in inside | out for u in r.result.uses)}:
        out -= drop
    return out


@dataclass(frozen=True)
class FuseElementwisePass(TargetPass):
    """fuse-elementwise: elementwise and row-wise ops run as epilogues of the GEMM/attention kernels that
    produce their inputs, or as one row kernel per chain (between ``tile`` and ``lower-to-dataflow``)."""

    name = "fuse-elementwise"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = self.target()
        fn = main_func(op)
        block = fn.body.block
        compute = arch.tiles_of("compute")
        special = bool(compute) and all(t.special_per_cycle > 0 for t in compute)
        kernels = Kernels.of(block, special)
        sink = [MergeReshapesPattern(), SinkThroughReshapePattern(kernels), SinkThroughConcatPattern(kernels)]
        PatternRewriteWalker(GreedyRewritePatternApplier(sink), apply_recursively=True).rewrite_region(fn.body)
        for pattern in (EpilogueIntoProducerPattern(kernels), ChainIntoRowKernelPattern(kernels, arch)):
            PatternRewriteWalker(pattern, apply_recursively=False).rewrite_region(fn.body)
        splits = plan_row_splits(block, kernels, arch, SHARE_ATTR in fn.attributes)
        split = {tag for tag, ops in kernels.rows.items() if any(op in splits for op in ops)}
        PatternRewriteWalker(SplitRowKernelPattern(kernels, splits), apply_recursively=False).rewrite_region(fn.body)
        # a "chain" of one op is the kernel it was already: keep its usual name
        for tag, ops in kernels.rows.items():
            if len(ops) == 1 and tag not in split:
                del ops[0].attributes[TAG]
        PatternRewriteWalker(SplitNormByColumnsPattern(kernels, arch), apply_recursively=False).rewrite_region(fn.body)
