"""canonicalize: constant folding, identity folding, reshape/transpose merging, DCE, CSE.

    attnc opt model.mlir -p canonicalize

Each rewrite pattern below handles one concern; ``CanonicalizePass`` runs them to a
fixed point with xDSL's greedy driver (which also erases dead ``Pure`` ops), then
deduplicates identical pure ops, constants included, with xDSL's CSE. Folding
evaluates ops with the reference interpreter's own implementation, so a folded
constant holds exactly what the op would have computed at run time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp, TensorType
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)
from xdsl.transforms.common_subexpression_elimination import cse
from xdsl.transforms.dead_code_elimination import RemoveUnusedOperations

from attnc.dialects import sparse as sp

#: results with more elements than this are not folded (they would bloat the IR)
#: unless they only move a constant's elements around (reshape, transpose)
FOLD_LIMIT = 1 << 20


def const_value(v: SSAValue) -> np.ndarray | None:
    """The numpy value of ``v`` if a ``sparse.constant`` defines it, else None."""
    op = v.owner
    if not isinstance(op, sp.ConstantOp):
        return None
    from attnc.interpreter import eval_op  # lazily: the interpreter imports the dialect

    return eval_op(op, [])[0]


def is_splat(v: SSAValue, value: float) -> bool:
    """True if ``v`` is a constant whose every element equals ``value``."""
    c = const_value(v)
    return c is not None and c.size > 0 and bool(np.all(c == value))


def _size(t: TensorType) -> int:
    return int(np.prod(t.get_shape()))


class FoldConstantOp(RewritePattern):
    """An op whose operands are all constants becomes a constant."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if isinstance(op, sp.ConstantOp) or op.dialect_name() != "sparse" or len(op.results) != 1:
            return
        if not all(isinstance(o.owner, sp.ConstantOp) for o in op.operands):
            return
        ty = op.results[0].type
        if not isinstance(ty, TensorType):
            return
        if _size(ty) > FOLD_LIMIT and not isinstance(op, (sp.ReshapeOp, sp.TransposeOp)):
            return
        from attnc.dialects.values import from_numpy
        from attnc.interpreter import eval_op

        try:
            value = eval_op(op, [const_value(o) for o in op.operands])[0]
        except Exception:  # leave ops the interpreter cannot evaluate (e.g. bad indices) to run time
            return
        rewriter.replace(op, sp.ConstantOp(from_numpy(value, ty.element_type), ty))


class FoldSameTypeIdentity(RewritePattern):
    """reshape, broadcast, cast, convert and reduce are identities when their result
    type equals their input type (a reduce then only reduces dims of size 1)."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if isinstance(op, (sp.ReshapeOp, sp.BroadcastOp, sp.CastOp, sp.ConvertOp, sp.ReduceOp)):
            if op.input.type == op.result.type:
                rewriter.replace(op, [], [op.input])


class FoldIdentityTranspose(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.TransposeOp, rewriter: PatternRewriter) -> None:
        perm = [int(p) for p in op.permutation.get_values()]
        if perm == list(range(len(perm))):
            rewriter.replace(op, [], [op.input])


class FoldFullSlice(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.SliceOp, rewriter: PatternRewriter) -> None:
        shape = sp.shape_of(op.input)
        starts, ends, steps = (tuple(int(x) for x in a.get_values()) for a in (op.starts, op.ends, op.steps))
        if all(s == 0 for s in starts) and ends == shape and all(s == 1 for s in steps):
            rewriter.replace(op, [], [op.input])


class FoldNeutralOperand(RewritePattern):
    """x * 1, 1 * x, x / 1, x + 0, 0 + x and x - 0 are x (when the constant does not
    broadcast x)."""

    #: op -> (its neutral element, whether it may stand on the left too)
    NEUTRAL: ClassVar[dict[type[Operation], tuple[int, bool]]] = {
        sp.MulOp: (1, True),
        sp.DivOp: (1, False),
        sp.AddOp: (0, True),
        sp.SubOp: (0, False),
    }

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        rule = self.NEUTRAL.get(type(op))
        if rule is None:
            return
        neutral, commutes = rule
        lhs, rhs = op.operands
        candidates = [(lhs, rhs), (rhs, lhs)] if commutes else [(lhs, rhs)]
        for x, c in candidates:
            if x.type == op.results[0].type and is_splat(c, neutral):
                rewriter.replace(op, [], [x])
                return


class FoldDoubleNot(RewritePattern):
    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.NotOp, rewriter: PatternRewriter) -> None:
        if isinstance(inner := op.input.owner, sp.NotOp):
            rewriter.replace(op, [], [inner.input])


class MergeReshapes(RewritePattern):
    """reshape(reshape(x)) is one reshape of x."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.ReshapeOp, rewriter: PatternRewriter) -> None:
        if isinstance(inner := op.input.owner, sp.ReshapeOp):
            rewriter.replace(op, sp.ReshapeOp(inner.input, sp.shape_of(op.result)))


class MergeTransposes(RewritePattern):
    """transpose(transpose(x, p), q) is transpose(x, [p[i] for i in q])."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.TransposeOp, rewriter: PatternRewriter) -> None:
        if isinstance(inner := op.input.owner, sp.TransposeOp):
            p = [int(i) for i in inner.permutation.get_values()]
            q = [int(i) for i in op.permutation.get_values()]
            rewriter.replace(op, sp.TransposeOp(inner.input, [p[i] for i in q]))


def merge_groups(src: tuple[int, ...], dst: tuple[int, ...]) -> list[list[int]] | None:
    """If reshaping ``src`` to ``dst`` only merges runs of adjacent dims, the run of
    ``src`` dims behind each ``dst`` dim; else None."""
    groups: list[list[int]] = []
    i = 0
    for d in dst:
        group: list[int] = []
        size = 1
        while size != d:
            if i == len(src) or size * src[i] > d:
                return None
            size *= src[i]
            group.append(i)
            i += 1
        groups.append(group)
    if not groups or any(src[j] != 1 for j in range(i, len(src))):
        return None
    groups[-1].extend(range(i, len(src)))  # trailing size-1 dims
    return groups


class TransposeBeforeMergingReshape(RewritePattern):
    """transpose(reshape(x)) where the reshape only merges dims is a transpose of x
    (moving whole runs of dims) followed by the reshape. Exporters transpose a 4-D
    tensor through a 3-D view; this lets the transposes meet and merge."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.TransposeOp, rewriter: PatternRewriter) -> None:
        reshape = op.input.owner
        if not isinstance(reshape, sp.ReshapeOp):
            return
        groups = merge_groups(sp.shape_of(reshape.input), sp.shape_of(reshape.result))
        if groups is None:
            return
        perm = [j for p in op.permutation.get_values() for j in groups[int(p)]]
        moved = sp.TransposeOp(reshape.input, perm)
        rewriter.replace(op, [moved, sp.ReshapeOp(moved.result, sp.shape_of(op.result))])


PATTERNS: tuple[RewritePattern, ...] = (
    RemoveUnusedOperations(),
    FoldConstantOp(),
    FoldSameTypeIdentity(),
    FoldIdentityTranspose(),
    FoldFullSlice(),
    FoldNeutralOperand(),
    FoldDoubleNot(),
    MergeReshapes(),
    MergeTransposes(),
    TransposeBeforeMergingReshape(),
)


def canonicalize(module: Operation) -> None:
    """Run the canonicalization patterns to a fixed point, then CSE, then the patterns
    again (merged duplicates can make new ops foldable)."""
    for _ in range(2):
        PatternRewriteWalker(GreedyRewritePatternApplier(list(PATTERNS))).rewrite_module(module)
        cse(module)


@dataclass(frozen=True)
class CanonicalizePass(ModulePass):
    name = "canonicalize"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        canonicalize(op)
