"""Compile-time evaluation of ONNX nodes whose inputs are all known.

Shape subgraphs (Shape -> Gather -> Concat -> Reshape, Range -> Less -> Where, ...)
must disappear before the IR is built, since sparse-dialect shapes are static. The
ONNX reference implementation is the definition of every op, so a node whose
inputs are all known is run by ``onnx.reference.ReferenceEvaluator`` on its own.
A few ops that are cheap and frequent in shape subgraphs are evaluated with numpy
directly: building an evaluator costs about a millisecond, and exported models carry
hundreds of such nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx
from onnx import helper

Array = np.ndarray


def _attr(node: onnx.NodeProto, name: str, default=None):
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _axes(node: onnx.NodeProto, ins: Sequence[Array | None]) -> list[int] | None:
    if len(ins) > 1 and ins[1] is not None:
        return [int(a) for a in np.asarray(ins[1]).reshape(-1)]
    axes = _attr(node, "axes")
    return None if axes is None else [int(a) for a in axes]


def _unsqueeze(node: onnx.NodeProto, ins: Sequence[Array | None]) -> list[Array]:
    x = ins[0]
    axes = _axes(node, ins) or []
    r = x.ndim + len(axes)
    shape = list(x.shape)
    for a in sorted(a % r for a in axes):
        shape.insert(a, 1)
    return [x.reshape(shape)]


def _squeeze(node: onnx.NodeProto, ins: Sequence[Array | None]) -> list[Array]:
    x = ins[0]
    axes = _axes(node, ins)
    if axes is None:
        return [x.reshape([d for d in x.shape if d != 1])]
    return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]


def _gather(node: onnx.NodeProto, ins: Sequence[Array | None]) -> list[Array]:
    return [np.take(ins[0], np.asarray(ins[1], dtype=np.int64), axis=int(_attr(node, "axis", 0)))]


def _concat(node: onnx.NodeProto, ins: Sequence[Array | None]) -> list[Array]:
    return [np.concatenate([x for x in ins if x is not None], axis=int(_attr(node, "axis")))]


class _NotFast(Exception):
    """A fast path declines these operands; the reference evaluator folds them."""


def _binary(fn: Callable[[Array, Array], Array]) -> Callable[[onnx.NodeProto, Sequence[Array | None]], list[Array]]:
    def run(node: onnx.NodeProto, ins: Sequence[Array | None]) -> list[Array]:
        a, b = ins
        if a.dtype.kind not in "iub" or a.dtype != b.dtype:
            raise _NotFast  # let the reference evaluator decide float/bf16 details
        return [np.asarray(fn(a, b)).astype(a.dtype)]

    return run


# integer-only fast paths: the reference evaluator stays the definition for floats
FAST: dict[str, Callable[[onnx.NodeProto, Sequence[Array | None]], list[Array]]] = {
    "Unsqueeze": _unsqueeze,
    "Squeeze": _squeeze,
    "Gather": _gather,
    "Concat": _concat,
    "Add": _binary(np.add),
    "Sub": _binary(np.subtract),
    "Mul": _binary(np.multiply),
    "Identity": lambda node, ins: [ins[0]],
}


def evaluate(node: onnx.NodeProto, ins: Sequence[Array | None], opsets: dict[str, int]) -> list[Array | None]:
    """Outputs of ``node`` on the known inputs ``ins`` (None for an omitted optional input)."""
    fast = FAST.get(node.op_type) if node.domain in ("", "ai.onnx") else None
    if fast is not None and all(x is None or isinstance(x, np.ndarray) for x in ins):
        try:
            return [None if o is None else np.asarray(o) for o in fast(node, ins)]
        except _NotFast:
            pass
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(node, opsets=opsets)
    feeds = {name: x for name, x in zip(node.input, ins) if name}
    outs = ev.run(None, feeds)
    return [None if o is None else np.asarray(o) for o in outs]
