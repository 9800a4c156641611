"""Building the ops of an expansion into dataflow kernels, shared by the rewrite patterns that make them.

Several patterns rewrite one op into many ops, each marked with the kernel it will belong to
(``dataflow.tag``) and the kernel's group (``dataflow.group``), which ``lower-to-dataflow`` then
partitions into kernels: the fused-attention schedules of ``fuse_attention``, the per-head
lowering of ``lower_dataflow``, the butterfly stage pipelines of ``butterfly_pipeline`` and the
GEMM row-block split of ``tile``. The builder that inserts and tags those ops, and the scalar
constants they share, live here rather than in any one of those modules because the concept --
"an op of kernel ``tag``" -- belongs to all of them and to none in particular.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import GROUP, TAG
from attnc.dialects.values import from_numpy, np_dtype
from xdsl.dialects.builtin import BytesAttr, DenseIntOrFPElementsAttr, StringAttr, TensorType
from xdsl.ir import Attribute, Operation, SSAValue
from xdsl.pattern_rewriter import PatternRewriter
from xdsl.rewriter import InsertPoint


class KernelBuilder:
    """Inserts the ops of one rewrite, in order, before ``anchor`` (the op being rewritten) through the
    pattern's ``rewriter``, optionally marking each with its kernel (``tag``) and kernel group."""

    def __init__(self, rewriter: PatternRewriter, anchor: Operation):
        self.rewriter = rewriter
        self.anchor = anchor

    def add(self, op: Operation, tag: str | None = None, group: str | None = None) -> SSAValue:
        """Insert ``op`` (tagged when ``tag``/``group`` are given) and return its first result."""
        if tag:
            op.attributes[TAG] = StringAttr(tag)
        if group:
            op.attributes[GROUP] = StringAttr(group)
        self.rewriter.insert(op, InsertPoint.before(self.anchor))
        return op.results[0]

    def replace_anchor(self, new: SSAValue) -> None:
        """Make the uses of the anchor's one result read ``new`` instead, and erase the anchor. (Not
        ``PatternRewriter.replace``, which would also hand the old result's name hint on to ``new``.)"""
        self.rewriter.replace_all_uses_with(self.anchor.results[0], new)
        self.rewriter.erase(self.anchor)


def splat(shape: Sequence[int], elt: Attribute, value: float) -> sp.ConstantOp:
    """A ``sparse.constant`` of ``shape`` whose elements all equal ``value``, stored as one element in the
    element type's own storage (bf16 is 2 bytes, i1 one byte)."""
    raw = from_numpy(np.asarray([value]).astype(np_dtype(elt)), elt).data.data
    return sp.ConstantOp(DenseIntOrFPElementsAttr(TensorType(elt, list(shape)), BytesAttr(raw)))
