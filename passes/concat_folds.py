"""Data movement over a concatenation of parts, moved onto the parts, so that a kernel reads only the parts
it needs.

A GEMM split into parts (:mod:`attnc.passes.gemm`) is put back together by a ``sparse.concat``; what reads
it reaches the parts through reshapes, transposes and slices (an attention member takes one head of a Q
projection, a GEMM part one row strip of an attention's output). ``lower-to-dataflow`` follows data movement
to the kernels it comes from, so a slice of a concatenation would make every part an input of the reader,
and every part's result would cross the network to it. These patterns rewrite, where the numbers stay the
same:

* ``slice(concat(xs))`` (step 1 along the concatenated axis) into the concatenation of the slices of the
  pieces it overlaps;
* ``transpose(concat(xs, a))`` into ``concat(transpose(x) for x in xs)`` along the axis ``a`` moves to;
* ``reshape(concat(xs, a))`` into ``concat(reshape(x) for x in xs)`` when each piece is a contiguous run of
  the reshaped axis (the reshape splits or merges ``a`` with dims inside it, at piece boundaries).

Ops tagged into a kernel (a part's forwarded copy) are left alone.
"""

from __future__ import annotations

import numpy as np
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import TAG
from xdsl.rewriter import InsertPoint
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)


def _concat_of(v) -> sp.ConcatOp | None:
    op = v.owner
    if isinstance(op, sp.ConcatOp) and TAG not in op.attributes and len(op.inputs) > 1:
        return op
    return None


def concat_spans(cat: sp.ConcatOp) -> tuple[int, list[tuple[int, int]]]:
    """The concatenation's axis (non-negative) and the [lo, hi) range of it each operand fills."""
    axis = cat.axis.value.data % len(sp.shape_of(cat.results[0]))
    out, lo = [], 0
    for x in cat.inputs:
        e = sp.shape_of(x)[axis]
        out.append((lo, lo + e))
        lo += e
    return axis, out


class SliceOfConcatPattern(RewritePattern):
    """A slice of a concatenation along its axis reads only the pieces it overlaps."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.SliceOp, rewriter: PatternRewriter) -> None:
        cat = _concat_of(op.operands[0])
        if cat is None or TAG in op.attributes:
            return
        axis, spans = concat_spans(cat)
        starts, ends = list(op.starts.get_values()), list(op.ends.get_values())
        steps = list(op.steps.get_values())
        if steps[axis] != 1:
            return
        s, e = starts[axis], ends[axis]
        hit = [(x, lo, hi) for x, (lo, hi) in zip(cat.inputs, spans) if lo < e and hi > s]
        shape = sp.shape_of(cat.results[0])
        narrow = any((starts[d], ends[d], steps[d]) != (0, shape[d], 1) for d in range(len(shape)) if d != axis)
        if not hit or (len(hit) == len(spans) and not narrow):
            return  # a slice of all pieces that keeps the other axes whole: nothing to move
        pieces = []
        for x, lo, hi in hit:
            st, en = list(starts), list(ends)
            st[axis], en[axis] = max(s, lo) - lo, min(e, hi) - lo
            if st == [0] * len(st) and en == list(sp.shape_of(x)) and all(v == 1 for v in steps):
                pieces.append(x)
                continue
            piece = sp.SliceOp(x, st, en, steps)
            rewriter.insert(piece, InsertPoint.before(op))
            pieces.append(piece.results[0])
        if len(pieces) == 1:
            rewriter.replace(op, [], [pieces[0]])
        else:
            rewriter.replace(op, sp.ConcatOp(pieces, axis))


class TransposeOfConcatPattern(RewritePattern):
    """A transpose of a concatenation is the concatenation of the pieces' transposes."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.TransposeOp, rewriter: PatternRewriter) -> None:
        cat = _concat_of(op.operands[0])
        if cat is None or TAG in op.attributes:
            return
        axis, _ = concat_spans(cat)
        perm = list(op.permutation.get_values())
        pieces = []
        for x in cat.inputs:
            t = sp.TransposeOp(x, perm)
            rewriter.insert(t, InsertPoint.before(op))
            pieces.append(t.results[0])
        rewriter.replace(op, sp.ConcatOp(pieces, perm.index(axis)))


def reshaped_pieces(src: list[int], dst: list[int], axis: int, spans: list[tuple[int, int]]) -> tuple[int, list[list[int]]] | None:
    """(the axis of ``dst`` the pieces lie along, each piece's shape in ``dst``), or None when a piece is not
    a contiguous run of one axis of ``dst``."""
    outer = int(np.prod(src[:axis], dtype=np.int64))
    inner = int(np.prod(src[axis + 1 :], dtype=np.int64))
    for b in range(len(dst)):
        if int(np.prod(dst[:b], dtype=np.int64)) != outer or dst[b] <= 1:
            continue
        q = int(np.prod(dst[b + 1 :], dtype=np.int64))
        if dst[b] * q != src[axis] * inner or any((lo * inner) % q for lo, _ in spans):
            continue
        return b, [[*dst[:b], (hi - lo) * inner // q, *dst[b + 1 :]] for lo, hi in spans]
    return None


class ReshapeOfConcatPattern(RewritePattern):
    """A reshape of a concatenation whose pieces stay contiguous runs of one axis is the concatenation of the
    pieces' reshapes."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.ReshapeOp, rewriter: PatternRewriter) -> None:
        cat = _concat_of(op.operands[0])
        if cat is None or TAG in op.attributes:
            return
        axis, spans = concat_spans(cat)
        got = reshaped_pieces(list(sp.shape_of(cat.results[0])), list(sp.shape_of(op.results[0])), axis, spans)
        if got is None:
            return
        b, shapes = got
        pieces = []
        for x, shape in zip(cat.inputs, shapes):
            r = sp.ReshapeOp(x, shape)
            rewriter.insert(r, InsertPoint.before(op))
            pieces.append(r.results[0])
        rewriter.replace(op, sp.ConcatOp(pieces, b))


def fold_concats(region) -> None:
    """Apply the three patterns to a fixed point, then drop the concatenations nothing reads any more."""
    PatternRewriteWalker(
        GreedyRewritePatternApplier([SliceOfConcatPattern(), TransposeOfConcatPattern(), ReshapeOfConcatPattern()]),
        apply_recursively=True,
    ).rewrite_region(region)
    for op in reversed(list(region.block.ops)):
        if sp.is_data_movement(op) and TAG not in op.attributes and op.results and not op.results[0].uses:
            op.detach()
            op.erase()
