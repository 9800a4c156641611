"""raise-attention: rewrite every softmax attention pattern into one ``sparse.attention``.

    attnc opt model.mlir -p canonicalize,raise-attention

Recognised (after ``canonicalize`` has folded shape and mask subgraphs to constants):

- ``softmax(QK * c + mask) @ V`` where QK is ``matmul(q, transpose(k))`` or the
  einsum ``...qd,...kd->...qk``, the scale is any chain of multiplications or
  divisions by positive scalar constants, on the scores or split between q and k
  (the dynamo exporter multiplies q and kᵀ by sqrt(scale) each), masks are added
  (``add``) or filled (``where(m, s, -inf)`` / ``where(m, -inf, s)``: an i1 mask),
  and the final product is a matmul or the einsum ``...qk,...kd->...qd``; an exporter's
  ``where(isnan(P), 0, P)`` after the softmax is part of the pattern;
- 2-D, 3-D (batch*heads, S, d) and 4-D operands; lower ranks are reshaped to 4-D
  around the op, and batch/head broadcasting of the products becomes explicit;
- then, on any ``sparse.attention`` (raised or imported): a constant mask that is
  exactly a causal triangle becomes ``causal`` (with its offset), an additive mask
  ``where(m, 0, -inf)`` becomes the i1 mask ``m``, and key/value heads repeated by
  ``reshape(broadcast(reshape(kv)))`` or a gather become GQA operands (kv_heads < heads).

Raising only happens when the rewritten op computes the same function: the softmax
is over the key axis, every intermediate score value has a single use (scores or
probabilities that escape block raising), and scales are scalar constants; a
pattern that only partly matches is left as it is.

One difference is accepted: a query row whose keys are all masked gives zeros in
``sparse.attention`` (the ONNX Attention convention), while a raw softmax over a row
of -inf gives NaN (onnxruntime) and a row filled with a finite large negative value
gives the uniform average of V.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import ModuleOp
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    GreedyRewritePatternApplier,
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

from attnc.dialects import sparse as sp
from attnc.passes import attention_patterns as pat
from attnc.passes.canonicalize import PATTERNS as CANONICALIZE_PATTERNS
from attnc.passes.canonicalize import const_value


class Builder:
    """Collects the new ops of one rewrite, to insert them all before the matched op."""

    def __init__(self) -> None:
        self.ops: list[Operation] = []

    def emit(self, op: Operation) -> SSAValue:
        self.ops.append(op)
        return op.results[0]

    def constant(self, value: float, elt: Attribute) -> SSAValue:
        from attnc.dialects.values import from_numpy, np_dtype

        return self.emit(sp.ConstantOp(from_numpy(np.asarray(value, dtype=np_dtype(elt)), elt)))

    def transpose(self, v: SSAValue, perm: Sequence[int]) -> SSAValue:
        return v if list(perm) == list(range(len(perm))) else self.emit(sp.TransposeOp(v, perm))

    def reshape(self, v: SSAValue, shape: Sequence[int]) -> SSAValue:
        return v if sp.shape_of(v) == tuple(shape) else self.emit(sp.ReshapeOp(v, shape))

    def broadcast(self, v: SSAValue, shape: Sequence[int]) -> SSAValue:
        return v if sp.shape_of(v) == tuple(shape) else self.emit(sp.BroadcastOp(v, shape))

    def to4(self, v: SSAValue) -> SSAValue:
        shape = sp.shape_of(v)
        return self.reshape(v, (1,) * (4 - len(shape)) + shape)


def pad4(shape: tuple[int, ...]) -> tuple[int, ...]:
    return (1,) * (4 - len(shape)) + shape


def _probabilities(p: SSAValue) -> sp.SoftmaxOp | None:
    """The softmax behind the left operand of the final product, looking through the
    ``where(isnan(P), 0, P)`` that exporters add after it."""
    if pat.uses(p) != 1:
        return None
    op = p.owner
    if isinstance(op, sp.WhereOp) and isinstance(isnan := op.cond.owner, sp.IsNanOp):
        inner = op.rhs
        if isnan.input != inner or pat.scalar(op.lhs) != 0 or pat.uses(op.cond) != 1:
            return None
        # P itself may only feed the isnan and the where
        if sp.shape_of(inner) != sp.shape_of(p) or {id(u) for u in pat.users(inner)} != {id(op), id(isnan)}:
            return None
        if pat.uses(inner) != 2:
            return None
        op = inner.owner
    if not isinstance(op, sp.SoftmaxOp):
        return None
    rank = len(sp.shape_of(op.result))
    return op if op.axis.value.data % rank == rank - 1 else None


def _combine_masks(b: Builder, biases: list[pat.Bias], elt: Attribute) -> SSAValue | None:
    terms: list[tuple[bool, SSAValue]] = []
    for bias in biases:
        m = bias.value
        if bias.boolean and bias.negate:
            m = b.emit(sp.NotOp(m))
        elif not bias.boolean and bias.factor != 1.0:
            m = b.emit(sp.MulOp(m, b.constant(bias.factor, elt)))
        terms.append((bias.boolean, m))
    if not terms:
        return None
    if all(boolean for boolean, _ in terms):
        mask = terms[0][1]
        for _, m in terms[1:]:
            mask = b.emit(sp.AndOp(mask, m))
        return mask
    values = []
    for boolean, m in terms:
        if boolean:  # true attends: 0, false: -inf
            m = b.emit(sp.WhereOp(m, b.constant(0.0, elt), b.constant(-np.inf, elt)))
        values.append(m)
    mask = values[0]
    for m in values[1:]:
        mask = b.emit(sp.AddOp(mask, m))
    return mask


class RaiseSoftmaxAttention(RewritePattern):
    """``softmax(scale * q @ kᵀ + mask) @ v`` (see the module docstring) -> sparse.attention."""

    def match_and_rewrite(self, op: Operation, rewriter: PatternRewriter) -> None:
        if not isinstance(op, (sp.MatmulOp, sp.ContractOp)):
            return
        pv = pat.as_product(op)
        if pv is None or not pat.is_identity(pv.lhs_perm):
            return
        # the product in (*batch, Sq, dv) order, before an einsum's output permutation
        result_shape = sp.shape_of(op.results[0])
        out_shape = tuple(result_shape[pv.out_perm.index(i)] for i in range(len(pv.out_perm)))
        softmax = _probabilities(pv.lhs)
        if softmax is None:
            return
        scores = pat.scores_chain(softmax.input)
        if scores is None:
            return
        qk = pat.as_product(scores.qk)
        if qk is None or not pat.is_identity(qk.out_perm):
            return
        q_side, k_side = pat.look_through(qk.lhs), pat.look_through(qk.rhs)
        q_perm = pat.compose(qk.lhs_perm, q_side.perm)
        k_perm = pat.compose(qk.rhs_perm, k_side.perm)
        # v = transpose(rhs', swap) where rhs' = transpose(V, rhs_perm) is (*b, dv, Skv)
        v_perm = pat.compose(pat.swap_last(len(pv.rhs_perm)), pv.rhs_perm)
        ranks = [len(q_perm), len(k_perm), len(v_perm), len(out_shape), len(sp.shape_of(softmax.result))]
        if max(ranks) > 4 or min(ranks) < 2:
            return
        bo, ho, sq, dv = pad4(out_shape)
        _, hk, skv, d = pad4(pat.product_shape(k_side.base, k_perm))
        hkv = max(hk, pad4(pat.product_shape(pv.rhs, v_perm))[1])
        if ho % hkv:
            return
        scale = scores.scale * q_side.scale * k_side.scale
        elt = sp.elt_of(op.results[0])

        b = Builder()
        q = b.to4(b.transpose(q_side.base, q_perm))
        k = b.to4(b.transpose(k_side.base, k_perm))
        v = b.to4(b.transpose(pv.rhs, v_perm))
        q = b.broadcast(q, (bo, ho, sq, d))
        k = b.broadcast(k, (bo, hkv, skv, d))
        v = b.broadcast(v, (bo, hkv, skv, dv))
        mask = _combine_masks(b, scores.biases, elt)
        att = b.emit(sp.AttentionOp(q, k, v, mask, scale=scale))
        result = b.transpose(b.reshape(att, out_shape), pv.out_perm)
        rewriter.replace(op, b.ops, [result])


def _rebuild(
    op: sp.AttentionOp,
    b: Builder,
    *,
    k: SSAValue | None = None,
    v: SSAValue | None = None,
    mask: SSAValue | None | bool = True,
    causal_offset: int | None = None,
) -> SSAValue:
    """A copy of ``op`` with some operands replaced (``mask=True`` keeps the mask) and,
    given ``causal_offset``, made causal."""
    return b.emit(
        sp.AttentionOp(
            op.q,
            k if k is not None else op.k,
            v if v is not None else op.v,
            op.mask if mask is True else mask,  # type: ignore[arg-type]
            scale=op.scale.value.data,
            causal=op.causal is not None or causal_offset is not None,
            causal_offset=causal_offset if causal_offset is not None else op.causal_offset.value.data,
            softcap=op.softcap.value.data,
        )
    )


class CausalMaskToAttribute(RewritePattern):
    """A constant mask that is exactly the causal triangle becomes ``causal``."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.AttentionOp, rewriter: PatternRewriter) -> None:
        if op.mask is None or op.causal is not None:
            return
        mask = const_value(op.mask)
        if mask is None:
            return
        sq, skv = sp.shape_of(op.q)[2], sp.shape_of(op.k)[2]
        offset = pat.causal_offset(mask, sq, skv)
        if offset is None or (offset >= skv - 1 and sq > 0):
            return  # a mask that hides nothing is not causal (and is left for other folds)
        b = Builder()
        rewriter.replace(op, b.ops, [_rebuild(op, b, mask=None, causal_offset=offset)])


class AdditiveMaskToBoolean(RewritePattern):
    """An additive mask ``where(m, 0, -inf)`` is the i1 mask ``m``."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.AttentionOp, rewriter: PatternRewriter) -> None:
        if op.mask is None or (found := pat.i1_from_additive(op.mask)) is None:
            return
        cond, negate = found
        b = Builder()
        if negate:
            cond = b.emit(sp.NotOp(cond))
        rewriter.replace(op, b.ops, [_rebuild(op, b, mask=cond)])


class CollapseRepeatedHeads(RewritePattern):
    """Keys and values whose heads repeat kv_heads < heads heads become GQA operands."""

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.AttentionOp, rewriter: PatternRewriter) -> None:
        rk, rv = pat.head_repeat(op.k), pat.head_repeat(op.v)
        if rk is None or rv is None or rk[1] != rv[1]:
            return
        hkv = rk[1]
        b = Builder()
        bk, _, s, d = sp.shape_of(op.k)
        dv = sp.shape_of(op.v)[3]
        k = b.reshape(rk[0], (bk, hkv, s, d))
        v = b.reshape(rv[0], (bk, hkv, s, dv))
        rewriter.replace(op, b.ops, [_rebuild(op, b, k=k, v=v)])


PATTERNS: tuple[RewritePattern, ...] = (
    RaiseSoftmaxAttention(),
    CausalMaskToAttribute(),
    AdditiveMaskToBoolean(),
    CollapseRepeatedHeads(),
)


def raise_attention(module: ModuleOp) -> None:
    # the canonicalization patterns clean up the reshapes and transposes raising inserts
    PatternRewriteWalker(GreedyRewritePatternApplier([*PATTERNS, *CANONICALIZE_PATTERNS])).rewrite_module(module)


@dataclass(frozen=True)
class RaiseAttentionPass(ModulePass):
    name = "raise-attention"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        raise_attention(op)
