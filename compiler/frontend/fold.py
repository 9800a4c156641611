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

import math
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


def _declared_bytes(t: onnx.TypeProto | None) -> int | None:
    """The bytes of a value of type ``t`` if shape inference gave it a static shape (else None)."""
    if t is None or not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims = t.tensor_type.shape.dim
    if not all(d.HasField("dim_value") and d.dim_value >= 0 for d in dims):
        return None
    try:
        itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(t.tensor_type.elem_type)).itemsize
    except Exception:  # an undefined or string element type: count a byte per element
        itemsize = 1
    return math.prod(d.dim_value for d in dims) * itemsize


def _grown_bytes(node: onnx.NodeProto, ins: Sequence[Array | None]) -> int | None:
    """The bytes of the result of the ops whose small inputs make a large output, from the inputs alone."""
    op = node.op_type
    try:
        if op == "ConstantOfShape" and ins and ins[0] is not None:
            value = _attr(node, "value")
            itemsize = np.dtype(helper.tensor_dtype_to_np_dtype(value.data_type)).itemsize if value is not None else 4
            return math.prod(max(int(d), 0) for d in np.asarray(ins[0]).reshape(-1)) * itemsize
        if op == "Range" and len(ins) == 3 and all(x is not None for x in ins):
            start, limit, delta = (float(np.asarray(x).reshape(-1)[0]) for x in ins)
            n = math.ceil((limit - start) / delta) if delta else 0
            return max(n, 0) * np.asarray(ins[0]).dtype.itemsize
        if op == "Expand" and len(ins) == 2 and all(x is not None for x in ins):
            target = [int(d) for d in np.asarray(ins[1]).reshape(-1)]
            x = ins[0]
            rank = max(x.ndim, len(target))
            dims = [1] * (rank - x.ndim) + list(x.shape)
            target = [1] * (rank - len(target)) + target
            return math.prod(max(a, b) for a, b in zip(dims, target)) * x.dtype.itemsize
        if op == "Tile" and len(ins) == 2 and all(x is not None for x in ins):
            reps = [int(r) for r in np.asarray(ins[1]).reshape(-1)]
            return ins[0].size * math.prod(max(r, 0) for r in reps) * ins[0].dtype.itemsize
    except (ValueError, TypeError, OverflowError, ZeroDivisionError, IndexError):
        return None  # malformed operands: the evaluator reports them
    return None


def result_bytes(node: onnx.NodeProto, ins: Sequence[Array | None], declared: dict[str, onnx.TypeProto]) -> int | None:
    """An upper estimate of the bytes ``evaluate`` would allocate for ``node``'s outputs, taken before it
    runs: the larger of what shape inference declared and what the op's inputs imply; None if neither
    tells."""
    outs = [_declared_bytes(declared.get(o)) for o in node.output if o]
    sizes = [sum(outs)] if outs and None not in outs else []
    grown = _grown_bytes(node, ins)
    if grown is not None:
        sizes.append(grown)
    return max(sizes) if sizes else None


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
