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

Both kinds of tagging keep ``lower-to-dataflow``'s order: a kernel is built where its first op is, so every
value a kernel reads from another kernel must come from one whose first op is earlier (a large constant it
reads is moved before its first op, as its DMA load is made where the constant is). Transcendental ops
(exp, erf, tanh, sigmoid, rsqrt, ..., LayerNorm, softmax) become epilogues only on compute tiles with an exp
unit (``exp_per_cycle``); otherwise they stay in row kernels, which run on sfu tiles.

Tags only decide which kernel an op runs in: the IR computes the same numbers (the rewrites of step 1 are
exact: elementwise ops commute with slicing, and a row-wise op with slicing whole rows).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from attnc.cost.work import SFU_OPS
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import GROUP, TAG, i64_array
from attnc.ir import main_func
from attnc.passes.concat_folds import concat_spans
from attnc.passes.target import TargetPass
from xdsl.context import Context
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

    @classmethod
    def of(cls, block, special_on_compute: bool) -> Kernels:
        k = cls(special_on_compute)
        for op in block.ops:
            tag = op.attributes.get(TAG)
            if isinstance(tag, StringAttr):
                k.first.setdefault(tag.data, op)
                if isinstance(op, MAC_OPS):
                    k.mac.add(tag.data)
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
            # an operand assembled from several MAC kernels (a split GEMM's whole result) has no one producer
            found = {k.head(x): x for x in leaves(v) if self._producer(x)}
            if len(found) > 1:
                return
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

    def __init__(self, kernels: Kernels):
        self.kernels = kernels

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        k = self.kernels
        if not _fusible(op):
            return
        for v in op.operands:
            for leaf in leaves(v):
                tag = k.tag_of(leaf)
                if tag in k.rows and joins(k, op, tag, k.first[tag]):
                    join(k, op, tag, k.first[tag], None)
                    k.rows[tag].append(op)
                    rewriter.handle_operation_modification(op)
                    return
        tag = k.fresh(ROWS)
        op.attributes[TAG] = StringAttr(tag)
        k.first[tag] = op
        k.rows[tag] = [op]
        rewriter.handle_operation_modification(op)


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
        for pattern in (EpilogueIntoProducerPattern(kernels), ChainIntoRowKernelPattern(kernels)):
            PatternRewriteWalker(pattern, apply_recursively=False).rewrite_region(fn.body)
        # a "chain" of one op is the kernel it was already: keep its usual name
        for ops in kernels.rows.values():
            if len(ops) == 1:
                del ops[0].attributes[TAG]
