"""Matchers for the pieces of an attention pattern, shared by the raise-attention patterns.

Each function looks at the IR without changing it: it either returns what it found
or None, so a pattern that only partly matches builds nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from xdsl.dialects.builtin import TensorType, i1
from xdsl.ir import Operation, SSAValue

from attnc.dialects import sparse as sp
from attnc.passes.canonicalize import const_value

#: a constant fill at or below this is "minus infinity" for a mask: exp(x - 1e4)
#: underflows to 0 in f32 (and f16/bf16) for any realistic score x
MASKED = -1.0e4


def uses(v: SSAValue) -> int:
    return v.uses.get_length()


def users(v: SSAValue) -> list[Operation]:
    return [u.operation for u in v.uses]


def scalar(v: SSAValue) -> float | None:
    """The value of a float constant whose elements are all equal, else None."""
    c = const_value(v)
    if c is None or c.size == 0 or c.dtype.kind != "f":
        return None
    first = c.reshape(-1)[0]
    if not np.all(c == first):
        return None
    return float(first)


def is_masked_fill(v: SSAValue) -> bool:
    """A constant that is -inf or a large negative everywhere (a masked_fill value)."""
    s = scalar(v)
    return s is not None and s <= MASKED


def scale_operand(op: Operation) -> tuple[SSAValue, float] | None:
    """For ``x * c``, ``c * x`` or ``x / c`` with a positive scalar constant c that does
    not broadcast x: ``(x, factor)``."""
    if isinstance(op, sp.MulOp):
        pairs = [(op.lhs, op.rhs), (op.rhs, op.lhs)]
    elif isinstance(op, sp.DivOp):
        pairs = [(op.lhs, op.rhs)]
    else:
        return None
    for x, c in pairs:
        s = scalar(c)
        if s is not None and s > 0 and x.type == op.results[0].type:
            return x, (s if isinstance(op, sp.MulOp) else 1.0 / s)
    return None


def compose(outer: Sequence[int], inner: Sequence[int]) -> list[int]:
    """The permutation of ``transpose(transpose(x, inner), outer)`` as one transpose of x."""
    return [inner[i] for i in outer]


@dataclass
class Operand:
    """``value == transpose(base, perm) * scale``, found by looking through scalar
    multiplications and transposes (none of which need to be single-use: the raised op
    reads ``base`` and leaves them to dead-code elimination)."""

    base: SSAValue
    perm: list[int]
    scale: float = 1.0


def look_through(v: SSAValue) -> Operand:
    perm = list(range(len(sp.shape_of(v))))
    scale = 1.0
    while True:
        op = v.owner
        if isinstance(op, sp.TransposeOp):
            perm = compose(perm, [int(p) for p in op.permutation.get_values()])
            v = op.input
        elif isinstance(op, Operation) and (found := scale_operand(op)) is not None:
            v, factor = found
            scale *= factor
        else:
            return Operand(v, perm, scale)


@dataclass
class Bias:
    """A term of the score bias: an additive float tensor, or an i1 tensor where true
    means attend (``negate``: where false means attend)."""

    value: SSAValue
    boolean: bool
    negate: bool = False
    factor: float = 1.0  # the scale applied to this (additive) term after it was added


@dataclass
class Scores:
    """``S = (q @ kᵀ) * scale + biases``, the input of the softmax."""

    qk: Operation
    scale: float
    biases: list[Bias] = field(default_factory=list)


def scores_chain(s: SSAValue) -> Scores | None:
    """Walk back from the softmax input through single-use scale, mask-add and
    masked-fill ops to the QK product (a matmul or contract)."""
    shape = sp.shape_of(s)
    scale = 1.0
    biases: list[Bias] = []
    while True:
        op = s.owner
        if not isinstance(op, Operation) or uses(s) != 1 or sp.shape_of(s) != shape:
            return None
        if isinstance(op, (sp.MatmulOp, sp.ContractOp)):
            return Scores(op, scale, biases)
        if (found := scale_operand(op)) is not None:
            s, factor = found
            scale *= factor
        elif isinstance(op, sp.AddOp):
            # the score side is the one that leads back to a product; try the lhs first
            nxt = _score_side(op.lhs, op.rhs)
            if nxt is None:
                return None
            s, bias = nxt
            if sp.elt_of(bias) == i1:
                return None
            biases.append(Bias(bias, False, factor=scale))
        elif isinstance(op, sp.WhereOp):
            if is_masked_fill(op.rhs) and sp.shape_of(op.lhs) == shape:
                biases.append(Bias(op.cond, True))
                s = op.lhs
            elif is_masked_fill(op.lhs) and sp.shape_of(op.rhs) == shape:
                biases.append(Bias(op.cond, True, negate=True))
                s = op.rhs
            else:
                return None
        else:
            return None


def _score_side(a: SSAValue, b: SSAValue) -> tuple[SSAValue, SSAValue] | None:
    """Split the operands of ``scores + bias`` into (scores, bias)."""
    for x, y in ((a, b), (b, a)):
        if _leads_to_product(x, 8) and len(sp.shape_of(y)) <= len(sp.shape_of(x)):
            return x, y
    return None


def _leads_to_product(v: SSAValue, depth: int) -> bool:
    op = v.owner
    if isinstance(op, (sp.MatmulOp, sp.ContractOp)):
        return True
    if depth == 0 or not isinstance(op, Operation):
        return False
    if (found := scale_operand(op)) is not None:
        return _leads_to_product(found[0], depth - 1)
    if isinstance(op, sp.AddOp):
        return _leads_to_product(op.lhs, depth - 1) or _leads_to_product(op.rhs, depth - 1)
    if isinstance(op, sp.WhereOp):
        return _leads_to_product(op.rhs if is_masked_fill(op.lhs) else op.lhs, depth - 1)
    return False


@dataclass
class Product:
    """A batched product ``lhs' @ rhs'`` where ``lhs' = transpose(lhs, lhs_perm)`` has
    dims (*batch, M, K) and ``rhs' = transpose(rhs, rhs_perm)`` has dims (*batch, N, K),
    giving (*batch, M, N); the op's result is that transposed by ``out_perm`` (an
    einsum may order its output dims differently)."""

    lhs: SSAValue
    rhs: SSAValue
    lhs_perm: list[int]
    rhs_perm: list[int]
    out_perm: list[int]


def swap_last(rank: int) -> list[int]:
    return [*range(rank - 2), rank - 1, rank - 2]


def is_identity(perm: Sequence[int]) -> bool:
    return list(perm) == list(range(len(perm)))


def as_product(op: Operation) -> Product | None:
    """Read a matmul or a two-operand contraction as (*b, M, K) x (*b, N, K) -> (*b, M, N)."""
    if isinstance(op, sp.MatmulOp):
        ra, rb = len(sp.shape_of(op.lhs)), len(sp.shape_of(op.rhs))
        if ra < 2 or rb < 2:
            return None
        rank = len(sp.shape_of(op.results[0]))
        return Product(op.lhs, op.rhs, list(range(ra)), swap_last(rb), list(range(rank)))
    if isinstance(op, sp.ContractOp) and len(op.inputs) == 2:
        a, b = op.inputs
        try:
            (la, lb), out, _ = sp.parse_einsum(op.equation.data, [sp.shape_of(a), sp.shape_of(b)])
        except Exception:
            return None
        if any(len(set(x)) != len(x) for x in (la, lb, out)):
            return None
        batch = "".join(c for c in out if c in la and c in lb)
        ms, ns = [c for c in out if c not in lb], [c for c in out if c not in la]
        ks = [c for c in la if c not in out]
        if len(ms) != 1 or len(ns) != 1 or len(ks) != 1 or ks[0] not in lb:
            return None
        want_a, want_b = batch + ms[0] + ks[0], batch + ns[0] + ks[0]
        if sorted(la) != sorted(want_a) or sorted(lb) != sorted(want_b):
            return None
        canonical = batch + ms[0] + ns[0]
        return Product(
            a, b, [la.index(c) for c in want_a], [lb.index(c) for c in want_b], [canonical.index(c) for c in out]
        )
    return None


def product_shape(x: SSAValue, perm: Sequence[int]) -> tuple[int, ...]:
    """The shape of ``transpose(x, perm)``."""
    shape = sp.shape_of(x)
    return tuple(shape[p] for p in perm)


def head_repeat(x: SSAValue) -> tuple[SSAValue, int] | None:
    """If the 4-D (B, H, S, d) value ``x`` repeats each of Hkv key/value heads G times
    (GQA: ``reshape(broadcast(reshape(kv)))`` as exporters write ``repeat_interleave``,
    or a gather of head indices ``[0]*G + [1]*G + ...``): ``(kv, Hkv)`` with kv either
    (B, Hkv, S, d) or (B, Hkv, 1, S, d)."""
    b, h, s, d = sp.shape_of(x)
    op = x.owner
    if isinstance(op, sp.ReshapeOp) and isinstance(bc := op.input.owner, sp.BroadcastOp):
        shape = sp.shape_of(bc.result)
        src = sp.shape_of(bc.input)
        if len(shape) == 5 and shape[0] == b and shape[3:] == (s, d) and shape[1] * shape[2] == h:
            if src == (b, shape[1], 1, s, d) and shape[2] > 1:
                return bc.input, shape[1]
    if isinstance(op, sp.GatherOp) and op.axis.value.data == 1:
        idx = const_value(op.indices)
        if idx is not None and idx.ndim == 1 and idx.size == h:
            n = sp.shape_of(op.input)[1]
            if n < h and h % n == 0 and np.array_equal(idx % n, np.repeat(np.arange(n), h // n)):
                return op.input, n
    if isinstance(op, sp.BroadcastOp):
        src = sp.shape_of(op.input)
        if len(src) == 4 and src[0] == b and src[1] == 1 and src[2:] == (s, d) and h > 1:
            return op.input, 1
    return None


def causal_offset(mask: np.ndarray, sq: int, skv: int) -> int | None:
    """The offset ``o`` if the constant mask is exactly "key j visible to query i iff
    j <= i + o" (o >= 0) for every batch and head, else None. i1 masks: true attends;
    float masks: 0 attends and -inf (or <= -1e4) hides."""
    if mask.ndim < 2 or mask.shape[-2:] != (sq, skv):
        return None
    first = mask[(0,) * (mask.ndim - 2)]
    if not np.all(mask == first):
        return None
    if first.dtype == np.bool_:
        visible = first
    else:
        visible = first == 0
        if not np.all(visible | (first <= MASKED)):
            return None
    o = int(np.count_nonzero(visible[0])) - 1
    if o < 0:
        return None
    i = np.arange(sq)[:, None]
    j = np.arange(skv)[None, :]
    return o if np.array_equal(visible, j <= i + o) else None


def i1_from_additive(v: SSAValue) -> tuple[SSAValue, bool] | None:
    """For an additive mask ``where(c, 0, -inf)`` (or ``where(c, -inf, 0)``): ``(c, negate)``."""
    op = v.owner
    if not isinstance(op, sp.WhereOp):
        return None
    if scalar(op.lhs) == 0 and is_masked_fill(op.rhs):
        return op.cond, False
    if is_masked_fill(op.lhs) and scalar(op.rhs) == 0:
        return op.cond, True
    return None


def tensor_type(shape: Sequence[int], like: SSAValue) -> TensorType:
    return sp.tensor(shape, sp.elt_of(like))
