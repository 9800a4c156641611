"""How each ONNX op becomes sparse ops.

A handler takes a :class:`Node` (the proto, its attributes, its inputs as SSA values
or known numpy arrays) and returns one value per ONNX output: an SSA value, a numpy
array (a result known at compile time, e.g. Shape), or None for an output it does
not produce. Inputs that fix a shape (Reshape's shape, Slice's starts, ...) must be
known at compile time; ``Node.known`` raises an AttncError naming the input otherwise.
The ONNX ``Attention`` op is at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from xdsl.dialects.builtin import (
    BFloat16Type,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
)
from xdsl.ir import Attribute, Operation, SSAValue

from attnc.dialects import sparse as sp
from attnc.dialects.values import elt_type, from_numpy, np_dtype
from attnc.errors import AttncError
from attnc.limits import shown

if TYPE_CHECKING:
    from attnc.frontend.onnx import Importer

Val = SSAValue | np.ndarray


class NotKnownError(AttncError):
    """An input that fixes a shape (Reshape's shape, Slice's starts, ...) depends on a
    model input. Binding that input to a value (``import_onnx(..., known_inputs=...)``)
    removes the error; the ONNX backend does so for integer inputs."""

# ---------------------------------------------------------------------------
# element types

_ELTS: dict[int, Attribute] = {
    TensorProto.FLOAT: Float32Type(),
    TensorProto.FLOAT16: Float16Type(),
    TensorProto.BFLOAT16: BFloat16Type(),
    TensorProto.DOUBLE: Float64Type(),
    TensorProto.INT64: IntegerType(64),
    TensorProto.INT32: IntegerType(32),
    TensorProto.INT16: IntegerType(16),
    TensorProto.INT8: IntegerType(8),
    TensorProto.UINT8: IntegerType(8, Signedness.UNSIGNED),
    TensorProto.UINT16: IntegerType(16, Signedness.UNSIGNED),
    TensorProto.UINT32: IntegerType(32, Signedness.UNSIGNED),
    TensorProto.UINT64: IntegerType(64, Signedness.UNSIGNED),
    TensorProto.BOOL: IntegerType(1),
}


def onnx_elt(code: int, what: str) -> Attribute:
    """IR element type of an ONNX TensorProto data type."""
    elt = _ELTS.get(code)
    if elt is None:
        tname = TensorProto.DataType.Name(code) if code in TensorProto.DataType.values() else str(code)
        raise AttncError(f"{what} has element type {tname}, which attnc does not support")
    return elt


def elt_onnx(elt: Attribute) -> int:
    for code, e in _ELTS.items():
        if e == elt:
            return code
    raise AttncError(f"element type {elt} has no ONNX equivalent")


def np_of_elt(elt: Attribute) -> np.dtype:
    """numpy dtype of known values of an element type (bf16 as ml_dtypes.bfloat16)."""
    return np.dtype(ml_dtypes.bfloat16) if isinstance(elt, BFloat16Type) else np_dtype(elt)


def elt_of_np(dt: np.dtype) -> Attribute:
    return BFloat16Type() if dt == np.dtype(ml_dtypes.bfloat16) else elt_type(dt)


def const_op(arr: np.ndarray, elt: Attribute | None = None) -> sp.ConstantOp:
    arr = np.asarray(arr)
    elt = elt or elt_of_np(arr.dtype)
    if arr.dtype == np.dtype(ml_dtypes.bfloat16):
        arr = arr.astype(np.float32)
    return sp.ConstantOp(from_numpy(arr, elt))


# ---------------------------------------------------------------------------
# per-node context


class Node:
    """One ONNX node being imported: attributes, inputs and helpers to build IR."""

    def __init__(self, proto: onnx.NodeProto, imp: Importer, ins: Sequence[Val | None]):
        self.proto = proto
        self.imp = imp
        self.ins = list(ins)
        self.op_type = proto.op_type
        self.opset = imp.opsets[""]
        self.attrs: dict[str, Any] = {}
        for a in proto.attribute:
            v = helper.get_attribute_value(a)
            self.attrs[a.name] = v.decode() if isinstance(v, bytes) else v

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def has(self, i: int) -> bool:
        return i < len(self.ins) and self.ins[i] is not None

    def value(self, i: int) -> SSAValue:
        if not self.has(i):
            raise AttncError(f"input {i} is required")
        return self.imp.value(self.proto.input[i])

    def known(self, i: int, what: str) -> np.ndarray:
        if not self.has(i):
            raise AttncError(f"input {i} ('{what}') is required")
        v = self.ins[i]
        if not isinstance(v, np.ndarray):
            raise NotKnownError(
                f"input {i} ('{what}', value {shown(self.proto.input[i])}) must be known at compile time, "
                "but it depends on a model input"
            )
        return v

    def opt_known(self, i: int, what: str) -> np.ndarray | None:
        return self.known(i, what) if self.has(i) else None

    def ints(self, i: int, what: str) -> list[int]:
        return [int(x) for x in self.known(i, what).reshape(-1)]

    def used(self, i: int) -> bool:
        out = self.proto.output
        return i < len(out) and bool(out[i]) and out[i] in self.imp.used

    def emit(self, op: Operation) -> SSAValue:
        return self.imp.emit(op)

    def const(self, arr: np.ndarray, elt: Attribute | None = None) -> SSAValue:
        return self.imp.materialize(np.asarray(arr), None, elt)

    def scalar(self, x: float | int | bool, like: SSAValue) -> SSAValue:
        """A rank-0 constant of ``like``'s element type."""
        elt = sp.elt_of(like)
        return self.const(np.asarray(x, dtype=np_dtype(elt)), elt)


Handler = Callable[[Node], Sequence[Val | None]]
OPS: dict[str, Handler] = {}


def op(*names: str) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for n in names:
            OPS[n] = fn
        return fn

    return register


def shape(v: SSAValue) -> tuple[int, ...]:
    return sp.shape_of(v)


def reshape(n: Node, x: SSAValue, shp: Sequence[int]) -> SSAValue:
    shp = [int(d) for d in shp]
    return x if list(shape(x)) == shp else n.emit(sp.ReshapeOp(x, shp))


def cast(n: Node, x: SSAValue, elt: Attribute) -> SSAValue:
    return x if sp.elt_of(x) == elt else n.emit(sp.CastOp(x, elt))


# ---------------------------------------------------------------------------
# elementwise

_UNARY = {
    "Neg": sp.NegOp, "Abs": sp.AbsOp, "Exp": sp.ExpOp, "Log": sp.LogOp, "Sqrt": sp.SqrtOp,
    "Reciprocal": sp.ReciprocalOp, "Tanh": sp.TanhOp, "Erf": sp.ErfOp, "Sigmoid": sp.SigmoidOp,
    "Relu": sp.ReluOp, "Floor": sp.FloorOp, "Ceil": sp.CeilOp, "Not": sp.NotOp, "IsNaN": sp.IsNanOp,
}  # fmt: skip


@op(*_UNARY)
def _unary(n: Node) -> list[Val]:
    return [n.emit(_UNARY[n.op_type](n.value(0)))]


@op("Gelu")
def _gelu(n: Node) -> list[Val]:
    from xdsl.dialects.builtin import StringAttr

    approx = n.attr("approximate", "none")
    return [n.emit(sp.GeluOp(n.value(0), {"approximate": StringAttr(approx)} if approx != "none" else None))]


@op("IsInf")
def _isinf(n: Node) -> list[Val]:
    x = n.value(0)
    pos, neg = n.attr("detect_positive", 1), n.attr("detect_negative", 1)
    inf = n.emit(sp.IsInfOp(x))
    if pos and neg:
        return [inf]
    if not pos and not neg:
        return [n.const(np.zeros(shape(x), dtype=bool))]
    sign = n.emit(sp.CmpOp(x, n.scalar(0, x), "gt" if pos else "lt"))
    return [n.emit(sp.AndOp(inf, sign))]


_BINARY = {"Add": sp.AddOp, "Sub": sp.SubOp, "Mul": sp.MulOp, "Div": sp.DivOp, "And": sp.AndOp, "Or": sp.OrOp, "Xor": sp.XorOp}
_CMP = {"Equal": "eq", "Less": "lt", "LessOrEqual": "le", "Greater": "gt", "GreaterOrEqual": "ge"}


@op(*_BINARY)
def _binary(n: Node) -> list[Val]:
    return [n.emit(_BINARY[n.op_type](n.value(0), n.value(1)))]


@op(*_CMP)
def _cmp(n: Node) -> list[Val]:
    return [n.emit(sp.CmpOp(n.value(0), n.value(1), _CMP[n.op_type]))]


@op("Pow")
def _pow(n: Node) -> list[Val]:
    x = n.value(0)
    # ONNX lets the exponent have another type; the dialect wants one element type
    return [n.emit(sp.PowOp(x, cast(n, n.value(1), sp.elt_of(x))))]


@op("Max", "Min", "Sum", "Mean")
def _variadic(n: Node) -> list[Val]:
    cls = {"Max": sp.MaxOp, "Min": sp.MinOp, "Sum": sp.AddOp, "Mean": sp.AddOp}[n.op_type]
    vals = [n.value(i) for i in range(len(n.ins))]
    acc = vals[0]
    for v in vals[1:]:
        acc = n.emit(cls(acc, v))
    if n.op_type == "Mean" and len(vals) > 1:
        acc = n.emit(sp.DivOp(acc, n.scalar(len(vals), acc)))
    return [acc]


@op("Where")
def _where(n: Node) -> list[Val]:
    return [n.emit(sp.WhereOp(n.value(0), n.value(1), n.value(2)))]


@op("Clip")
def _clip(n: Node) -> list[Val]:
    x = n.value(0)
    lo = n.value(1) if n.has(1) else None
    hi = n.value(2) if n.has(2) else None
    if lo is not None:
        x = n.emit(sp.MaxOp(x, lo))
    if hi is not None:
        x = n.emit(sp.MinOp(x, hi))
    return [x]


@op("Identity")
def _identity(n: Node) -> list[Val]:
    return [n.value(0)]


@op("Dropout")
def _dropout(n: Node) -> list[Val]:
    if n.has(2) and bool(n.known(2, "training_mode").reshape(-1)[0]):
        raise AttncError("Dropout in training mode is not supported (attnc compiles inference graphs)")
    x = n.value(0)
    mask = n.const(np.ones(shape(x), dtype=bool)) if n.used(1) else None
    return [x, mask]


@op("Cast")
def _cast(n: Node) -> list[Val]:
    return [cast(n, n.value(0), onnx_elt(n.attr("to"), "the target type"))]


@op("CastLike")
def _cast_like(n: Node) -> list[Val]:
    t = n.ins[1]
    elt = elt_of_np(t.dtype) if isinstance(t, np.ndarray) else sp.elt_of(t)
    x = n.ins[0]
    if isinstance(x, np.ndarray):
        # only the target's type matters: a known input stays known (CastLike(-inf, Q) feeds Pad values)
        return [x.astype(np_of_elt(elt))]
    return [cast(n, n.value(0), elt)]


# ---------------------------------------------------------------------------
# contractions and normalisations


@op("MatMul")
def _matmul(n: Node) -> list[Val]:
    return [n.emit(sp.MatmulOp(n.value(0), n.value(1)))]


@op("Gemm")
def _gemm(n: Node) -> list[Val]:
    a, b = n.value(0), n.value(1)
    if n.attr("transA", 0):
        a = n.emit(sp.TransposeOp(a, [1, 0]))
    if n.attr("transB", 0):
        b = n.emit(sp.TransposeOp(b, [1, 0]))
    y = n.emit(sp.MatmulOp(a, b))
    alpha, beta = float(n.attr("alpha", 1.0)), float(n.attr("beta", 1.0))
    if alpha != 1.0:
        y = n.emit(sp.MulOp(y, n.scalar(alpha, y)))
    if n.has(2) and beta != 0.0:
        c = n.value(2)
        if beta != 1.0:
            c = n.emit(sp.MulOp(c, n.scalar(beta, c)))
        y = n.emit(sp.AddOp(y, c))
    return [y]


@op("Einsum")
def _einsum(n: Node) -> list[Val]:
    return [n.emit(sp.ContractOp([n.value(i) for i in range(len(n.ins))], n.attr("equation")))]


@op("Softmax", "LogSoftmax")
def _softmax(n: Node) -> list[Val]:
    cls = sp.SoftmaxOp if n.op_type == "Softmax" else sp.LogSoftmaxOp
    x = n.value(0)
    shp = shape(x)
    if n.opset >= 13:
        return [n.emit(cls(x, int(n.attr("axis", -1)) % max(len(shp), 1)))]
    # before opset 13 the input is coerced to 2-D at `axis` and normalised over the second dim
    ax = int(n.attr("axis", 1)) % max(len(shp), 1)
    flat = reshape(n, x, [int(np.prod(shp[:ax])), int(np.prod(shp[ax:]))])
    return [reshape(n, n.emit(cls(flat, 1)), shp)]


@op("LayerNormalization")
def _layer_norm(n: Node) -> list[Val]:
    x, g = n.value(0), n.value(1)
    b = n.value(2) if n.has(2) else None
    rank = len(shape(x))
    ax = int(n.attr("axis", -1)) % rank
    eps = float(n.attr("epsilon", 1e-5))
    y = n.emit(sp.LayerNormOp(x, g, b, ax, eps))
    mean = inv = None
    if n.used(1) or n.used(2):
        # the stash outputs: statistics in the stash type, dims from `axis` kept as 1
        xs = cast(n, x, onnx_elt(n.attr("stash_type", TensorProto.FLOAT), "stash_type"))
        axes = list(range(ax, rank))
        mean = n.emit(sp.ReduceOp(xs, "mean", axes, True))
        d = n.emit(sp.SubOp(xs, mean))
        var = n.emit(sp.ReduceOp(n.emit(sp.MulOp(d, d)), "mean", axes, True))
        inv = n.emit(sp.RsqrtOp(n.emit(sp.AddOp(var, n.scalar(eps, var)))))
    return [y, mean, inv]


_REDUCE = {"ReduceMean": "mean", "ReduceSum": "sum", "ReduceMax": "max", "ReduceMin": "min", "ReduceProd": "prod"}


@op(*_REDUCE, "ReduceSumSquare", "ReduceL2")
def _reduce(n: Node) -> list[Val]:
    x = n.value(0)
    rank = len(shape(x))
    if n.has(1):
        axes: list[int] | None = n.ints(1, "axes")
    else:
        axes = n.attr("axes")
        axes = None if axes is None else [int(a) for a in axes]
    if not axes:
        if n.attr("noop_with_empty_axes", 0):
            return [x]
        axes = list(range(rank))
    keep = bool(n.attr("keepdims", 1))
    if n.op_type in ("ReduceSumSquare", "ReduceL2"):
        s = n.emit(sp.ReduceOp(n.emit(sp.MulOp(x, x)), "sum", axes, keep))
        return [n.emit(sp.SqrtOp(s)) if n.op_type == "ReduceL2" else s]
    return [n.emit(sp.ReduceOp(x, _REDUCE[n.op_type], axes, keep))]


# ---------------------------------------------------------------------------
# data movement


@op("Transpose")
def _transpose(n: Node) -> list[Val]:
    x = n.value(0)
    perm = n.attr("perm") or list(reversed(range(len(shape(x)))))
    perm = [int(p) % max(len(shape(x)), 1) for p in perm]
    if perm == sorted(perm):
        return [x]
    return [n.emit(sp.TransposeOp(x, perm))]


def reshape_target(in_shape: Sequence[int], target: Sequence[int], allowzero: bool) -> list[int]:
    out = [int(d) for d in target]
    if not allowzero:
        out = [in_shape[i] if d == 0 else d for i, d in enumerate(out)]
    if out.count(-1) > 1:
        raise AttncError(f"shape {list(target)} has more than one -1")
    if -1 in out:
        rest = int(np.prod([d for d in out if d != -1]))
        total = int(np.prod(in_shape))
        if rest == 0 or total % rest:
            raise AttncError(f"cannot reshape {list(in_shape)} to {list(target)}")
        out[out.index(-1)] = total // rest
    if int(np.prod(out)) != int(np.prod(in_shape)):
        raise AttncError(f"cannot reshape {list(in_shape)} to {list(target)}")
    return out


@op("Reshape")
def _reshape(n: Node) -> list[Val]:
    x = n.value(0)
    return [reshape(n, x, reshape_target(shape(x), n.ints(1, "shape"), bool(n.attr("allowzero", 0))))]


@op("Flatten")
def _flatten(n: Node) -> list[Val]:
    x = n.value(0)
    shp = shape(x)
    ax = int(n.attr("axis", 1))
    ax = ax + len(shp) if ax < 0 else ax
    return [reshape(n, x, [int(np.prod(shp[:ax])), int(np.prod(shp[ax:]))])]


def _axes_input(n: Node) -> list[int] | None:
    if n.has(1):
        return n.ints(1, "axes")
    axes = n.attr("axes")
    return None if axes is None else [int(a) for a in axes]


@op("Squeeze")
def _squeeze(n: Node) -> list[Val]:
    x = n.value(0)
    shp = shape(x)
    axes = _axes_input(n)
    if axes is None:
        keep = [d for d in shp if d != 1]
    else:
        drop = {a % len(shp) for a in axes}
        for a in drop:
            if shp[a] != 1:
                raise AttncError(f"cannot squeeze dim {a} of size {shp[a]}")
        keep = [d for i, d in enumerate(shp) if i not in drop]
    return [reshape(n, x, keep)]


@op("Unsqueeze")
def _unsqueeze(n: Node) -> list[Val]:
    x = n.value(0)
    axes = _axes_input(n) or []
    out = list(shape(x))
    r = len(out) + len(axes)
    for a in sorted(a % r for a in axes):
        out.insert(a, 1)
    return [reshape(n, x, out)]


@op("Expand")
def _expand(n: Node) -> list[Val]:
    x = n.value(0)
    target = tuple(np.broadcast_shapes(shape(x), tuple(n.ints(1, "shape"))))
    return [x if target == shape(x) else n.emit(sp.BroadcastOp(x, target))]


def slice_value(n: Node, x: SSAValue, starts, ends, axes, steps) -> SSAValue:
    shp = shape(x)
    rank = len(shp)
    axes = list(range(len(starts))) if axes is None else [a % rank for a in axes]
    steps = [1] * len(starts) if steps is None else steps
    st, en, sp_ = [0] * rank, list(shp), [1] * rank
    for a, s, e, p in zip(axes, starts, ends, steps):
        if p == 0:
            raise AttncError("a Slice step is 0")
        # ONNX clamps like Python's slice.indices (INT64_MAX/MIN mean "to the end")
        s, e, p = slice(int(s), int(e), int(p)).indices(shp[a])
        st[a], en[a], sp_[a] = s, e, p
    if st == [0] * rank and en == list(shp) and sp_ == [1] * rank:
        return x
    return n.emit(sp.SliceOp(x, st, en, sp_))


@op("Slice")
def _slice(n: Node) -> list[Val]:
    x = n.value(0)
    starts, ends = n.ints(1, "starts"), n.ints(2, "ends")
    axes = n.ints(3, "axes") if n.has(3) else None
    steps = n.ints(4, "steps") if n.has(4) else None
    return [slice_value(n, x, starts, ends, axes, steps)]


@op("Split")
def _split(n: Node) -> list[Val]:
    x = n.value(0)
    shp = shape(x)
    ax = int(n.attr("axis", 0)) % len(shp)
    nout = len(n.proto.output)
    if n.has(1):
        sizes = n.ints(1, "split")
    elif n.attr("split") is not None:
        sizes = [int(s) for s in n.attr("split")]
    else:
        parts = int(n.attr("num_outputs", nout))
        chunk = -(-shp[ax] // parts)  # opset 18: equal chunks, the last one smaller
        sizes = [min(chunk, shp[ax] - i * chunk) for i in range(parts)]
    if sum(sizes) != shp[ax]:
        raise AttncError(f"split sizes {sizes} do not add up to dim {ax} of size {shp[ax]}")
    outs: list[Val] = []
    pos = 0
    for s in sizes:
        outs.append(slice_value(n, x, [pos], [pos + s], [ax], [1]))
        pos += s
    return outs


@op("Concat")
def _concat(n: Node) -> list[Val]:
    vals = [n.value(i) for i in range(len(n.ins)) if n.has(i)]
    ax = int(n.attr("axis"))
    if len(vals) == 1:
        return [vals[0]]
    return [n.emit(sp.ConcatOp(vals, ax % len(shape(vals[0]))))]


@op("Gather")
def _gather(n: Node) -> list[Val]:
    x = n.value(0)
    return [n.emit(sp.GatherOp(x, n.value(1), int(n.attr("axis", 0)) % len(shape(x))))]


@op("Trilu")
def _trilu(n: Node) -> list[Val]:
    k = n.ints(1, "k")[0] if n.has(1) else 0
    return [n.emit(sp.TriluOp(n.value(0), k, bool(n.attr("upper", 1))))]


@op("Pad")
def _pad(n: Node) -> list[Val]:
    mode = n.attr("mode", "constant")
    if mode != "constant":
        raise AttncError(f"Pad mode '{mode}' is not supported (only 'constant')")
    x = n.value(0)
    rank = len(shape(x))
    pads = n.ints(1, "pads")
    value = n.opt_known(2, "constant_value")
    axes = n.ints(3, "axes") if n.has(3) else list(range(rank))
    axes = [a % rank for a in axes]
    full = [0] * (2 * rank)
    for i, a in enumerate(axes):
        full[a], full[a + rank] = pads[i], pads[i + len(axes)]
    if any(p < 0 for p in full):
        # negative pads crop: slice first, then pad the rest
        starts = [max(-full[i], 0) for i in range(rank)]
        ends = [shape(x)[i] - max(-full[i + rank], 0) for i in range(rank)]
        x = slice_value(n, x, starts, ends, None, None)
        full = [max(p, 0) for p in full]
    v = 0.0 if value is None or value.size == 0 else float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
    if not any(full):
        return [x]
    return [n.emit(sp.PadOp(x, full, v))]


# ---------------------------------------------------------------------------
# values known from static shapes


@op("Shape")
def _shape(n: Node) -> list[Val]:
    shp = np.array(shape(n.value(0)), dtype=np.int64)
    r = len(shp)
    start = int(n.attr("start", 0))
    end = n.attr("end")
    return [shp[slice(start, r if end is None else int(end))]]


@op("Size")
def _size(n: Node) -> list[Val]:
    return [np.array(int(np.prod(shape(n.value(0)))), dtype=np.int64)]


def _needs_known(what: str) -> Handler:
    def handler(n: Node) -> list[Val]:
        for i in range(len(n.ins)):
            if n.has(i):
                n.known(i, what)
        raise AssertionError("unreachable: a node with known inputs is folded (the importer reports one too large to)")

    handler.needs_known = True  # type: ignore[attr-defined]  # no runtime lowering: the importer must fold it
    return handler


@op("ConstantOfShape")
def _constant_of_shape(n: Node) -> list[Val]:
    # reached when the result is too large to fold: a one-element constant broadcast to the shape
    dims = n.ints(0, "shape")
    value = n.attr("value")
    arr = numpy_helper.to_array(value).reshape(-1)[:1] if value is not None else np.zeros(1, np.float32)
    if arr.size != 1:
        raise AttncError("the 'value' attribute of ConstantOfShape must hold one element")
    elt = onnx_elt(value.data_type, "ConstantOfShape's value") if value is not None else None
    one = n.const(arr.reshape([1] * len(dims)), elt)
    return [n.emit(sp.BroadcastOp(one, dims))]


OPS["Range"] = _needs_known("start, limit and delta")


def _constant(n: Node) -> list[Val]:
    raise AssertionError("unreachable: Constant is folded")


OPS["Constant"] = _constant

# ---------------------------------------------------------------------------
# the ONNX Attention op (opsets 23-25); onnx/reference/ops/op_attention.py is the
# definition followed here


def _split_heads(n: Node, x: SSAValue, heads: int, what: str) -> SSAValue:
    """(B, S, H*d) -> (B, H, S, d)."""
    b, s, hidden = shape(x)
    if heads <= 0 or hidden % heads:
        raise AttncError(f"{what} hidden size {hidden} is not a multiple of {heads} heads")
    return n.emit(sp.TransposeOp(reshape(n, x, [b, s, heads, hidden // heads]), [0, 2, 1, 3]))


def _repeat_heads(n: Node, x: SSAValue, reps: int) -> SSAValue:
    """np.repeat(x, reps, axis=1): kv head h serves query heads h*reps ... h*reps+reps-1."""
    b, h, s, d = shape(x)
    x5 = reshape(n, x, [b, h, 1, s, d])
    return reshape(n, n.emit(sp.BroadcastOp(x5, [b, h, reps, s, d])), [b, h * reps, s, d])


class _Bias:
    """Builds the additive attention bias of the reference implementation."""

    def __init__(self, n: Node, elt: Attribute, sq: int, skv: int):
        self.n, self.elt, self.sq, self.skv = n, elt, sq, skv
        self.zero = n.const(np.zeros((), np_dtype(elt)), elt)
        self.neginf = n.const(np.array(-np.inf, np_dtype(elt)), elt)

    def additive(self, allowed: SSAValue) -> SSAValue:
        return self.n.emit(sp.WhereOp(allowed, self.zero, self.neginf))

    def add(self, a: SSAValue | None, b: SSAValue) -> SSAValue:
        return b if a is None else self.n.emit(sp.AddOp(a, b))

    def diff(self, offset: int | SSAValue) -> SSAValue:
        """(i + offset) - j for query i and key j: (q, kv), or (B, 1, q, kv) for per-batch offsets."""
        i = np.arange(self.sq).reshape(-1, 1)
        j = np.arange(self.skv).reshape(1, -1)
        if isinstance(offset, int):
            return self.n.const((i + offset - j).astype(np.int64))
        n = self.n
        b = shape(offset)[0]
        off = reshape(n, offset, [b, 1, 1, 1])
        return n.emit(sp.SubOp(off, n.const((j - i).astype(sp_int(offset)).reshape(1, 1, self.sq, self.skv))))

    def causal(self, offset: int | SSAValue) -> SSAValue:
        d = self.diff(offset)
        return self.additive(self.n.emit(sp.CmpOp(d, self.n.scalar(0, d), "ge")))

    def window(self, offset: int | SSAValue, left: int, right: int) -> SSAValue:
        n = self.n
        d = self.diff(offset)
        allowed = None
        if left >= 0:
            allowed = n.emit(sp.CmpOp(d, n.scalar(left, d), "le"))
        if right >= 0:
            r = n.emit(sp.CmpOp(d, n.scalar(-right, d), "ge"))
            allowed = r if allowed is None else n.emit(sp.AndOp(allowed, r))
        assert allowed is not None
        return self.additive(allowed)

    def padding(self, nonpad: SSAValue) -> SSAValue:
        n = self.n
        b = shape(nonpad)[0]
        keys = n.const(np.arange(self.skv, dtype=sp_int(nonpad)).reshape(1, self.skv))
        allowed = n.emit(sp.CmpOp(keys, reshape(n, nonpad, [b, 1]), "lt"))
        return reshape(n, self.additive(allowed), [b, 1, 1, self.skv])


def sp_int(v: SSAValue) -> np.dtype:
    return np_dtype(sp.elt_of(v))


@op("Attention")
def _attention(n: Node) -> list[Val]:
    """ONNX opset-23 Attention: one ``sparse.attention`` when it can carry the node's masking, else the
    same attention with an additive bias, else (``qk_matmul_output`` wanted) the op-by-op decomposition."""
    q, k, v, rank = _attention_heads(n)
    past_k = n.value(4) if n.has(4) else None
    past_v = n.value(5) if n.has(5) else None
    if (past_k is None) != (past_v is None):
        raise AttncError("past_key and past_value must be given together")
    nonpad = n.value(6) if n.has(6) else None
    if nonpad is not None and past_k is not None:
        raise AttncError("nonpad_kv_seqlen cannot be combined with past_key/past_value")
    past_len = 0
    if past_k is not None and past_v is not None:
        past_len = shape(past_k)[2]
        k = n.emit(sp.ConcatOp([past_k, k], 2))
        v = n.emit(sp.ConcatOp([past_v, v], 2))
    present_k, present_v = k, v
    elt = sp.elt_of(q)
    sq, d = shape(q)[2], shape(q)[3]
    skv = shape(k)[2]
    scale = n.attr("scale")
    scale = 1.0 / float(np.sqrt(d)) if scale is None else float(scale)
    softcap = n.attr("softcap")
    causal = bool(n.attr("is_causal", 0))
    left, right = int(n.attr("left_window_size", -1)), int(n.attr("right_window_size", -1))
    window = left >= 0 or right >= 0
    mask = _attention_mask(n, elt, skv)

    if not n.used(3) and nonpad is None and not window:
        y = n.emit(
            sp.AttentionOp(
                q, k, v, mask, scale=scale, causal=causal, causal_offset=past_len, softcap=float(softcap or 0.0)
            )
        )
        return [_merge_heads(n, y, rank), present_k, present_v, None]

    # the additive bias, exactly as the reference builds it
    bias_b = _Bias(n, elt, sq, skv)
    per_batch = nonpad if past_k is None and nonpad is not None else None
    offset: int | SSAValue = past_len
    if per_batch is not None:
        offset = n.emit(sp.SubOp(per_batch, n.scalar(sq, per_batch)))
    mask_bias = None
    if mask is not None:
        mask_bias = bias_b.additive(mask) if sp.elt_of(mask) == IntegerType(1) else mask
    bias = mask_bias
    if causal:
        bias = bias_b.add(mask_bias, bias_b.causal(offset))
    if window:
        bias = bias_b.add(bias, bias_b.window(offset, left, right))
    if nonpad is not None:
        bias = bias_b.add(bias, bias_b.padding(nonpad))

    if not n.used(3):
        y = n.emit(sp.AttentionOp(q, k, v, bias, scale=scale, softcap=float(softcap or 0.0)))
        return [_merge_heads(n, y, rank), present_k, present_v, None]
    y, qk_out = _attention_decomposed(n, q, k, v, bias, bias_b, scale, softcap)
    return [_merge_heads(n, y, rank), present_k, present_v, qk_out]


def _attention_heads(n: Node) -> tuple[SSAValue, SSAValue, SSAValue, int]:
    """Q, K and V as (batch, heads, seq, dim), and the rank they came in."""
    q, k, v = n.value(0), n.value(1), n.value(2)
    rank = len(shape(q))
    if rank not in (3, 4) or len(shape(k)) != rank or len(shape(v)) != rank:
        raise AttncError(f"Q, K and V must all be 3-D or all 4-D, got {shape(q)}, {shape(k)}, {shape(v)}")
    if rank == 3:
        hq, hkv = n.attr("q_num_heads"), n.attr("kv_num_heads")
        if hq is None or hkv is None:
            raise AttncError("3-D Attention needs the q_num_heads and kv_num_heads attributes")
        q = _split_heads(n, q, int(hq), "Q")
        k = _split_heads(n, k, int(hkv), "K")
        v = _split_heads(n, v, int(hkv), "V")
    return q, k, v, rank


def _attention_mask(n: Node, elt: Attribute, skv: int) -> SSAValue | None:
    """attn_mask as a boolean or an additive mask in Q's type, padded to the key length (masked out)."""
    mask = n.value(3) if n.has(3) else None
    if mask is None:
        return None
    is_bool = sp.elt_of(mask) == IntegerType(1)
    if not is_bool:
        mask = cast(n, mask, elt)
    width = skv - shape(mask)[-1]
    if width > 0:  # a mask shorter than the keys: the rest is masked out
        r = len(shape(mask))
        pads = [0] * (2 * r)
        pads[-1] = width
        mask = n.emit(sp.PadOp(mask, pads, 0.0 if is_bool else float("-inf")))
    return mask


def _attention_decomposed(n: Node, q: SSAValue, k: SSAValue, v: SSAValue, bias: SSAValue | None, bias_b: _Bias,
                          scale: float, softcap: Any) -> tuple[SSAValue, SSAValue]:
    """The attention op by op, for a node whose ``qk_matmul_output`` is used: (output, that output)."""
    elt = sp.elt_of(q)
    hq_, hkv_ = shape(q)[1], shape(k)[1]
    mode = int(n.attr("qk_matmul_output_mode", 0))
    s = n.const(np.asarray(np.sqrt(scale), dtype=np_of_elt(elt)), elt)
    if hq_ != hkv_ and hkv_ > 0 and hq_ % hkv_ == 0:
        k = _repeat_heads(n, k, hq_ // hkv_)
        v = _repeat_heads(n, v, hq_ // hkv_)
    kt = n.emit(sp.TransposeOp(n.emit(sp.MulOp(k, s)), [0, 1, 3, 2]))
    qk = n.emit(sp.MatmulOp(n.emit(sp.MulOp(q, s)), kt))
    if softcap is not None and float(softcap) > 0:
        c = n.scalar(float(softcap), qk)
        qk = n.emit(sp.MulOp(n.emit(sp.TanhOp(n.emit(sp.DivOp(qk, c)))), c))
    with_bias = qk if bias is None else n.emit(sp.AddOp(qk, bias))
    qk_out = with_bias if mode == 2 else qk
    logits = with_bias
    precision = n.attr("softmax_precision")
    if precision is not None:
        logits = cast(n, logits, onnx_elt(int(precision), "softmax_precision"))
    p = n.emit(sp.SoftmaxOp(logits, 3))
    if bias is not None:
        row_max = n.emit(sp.ReduceOp(bias, "max", [len(shape(bias)) - 1], True))
        dead = n.emit(sp.CmpOp(row_max, bias_b.neginf, "eq"))
        p = n.emit(sp.WhereOp(dead, n.scalar(0, p), p))
    p = cast(n, p, elt)
    if mode == 3:
        qk_out = p
    return n.emit(sp.MatmulOp(p, v)), qk_out


def _merge_heads(n: Node, y: SSAValue, rank: int) -> SSAValue:
    """(B, H, S, dv) -> (B, S, H*dv) for 3-D Attention."""
    if rank == 4:
        return y
    b, h, s, dv = shape(y)
    return reshape(n, n.emit(sp.TransposeOp(y, [0, 2, 1, 3])), [b, s, h * dv])


# ---------------------------------------------------------------------------
# onnxruntime contrib ops: what ORT's BERT optimizer fuses TorchScript exports into

#: handlers of non-default domains, keyed by (domain, op_type)
DOMAIN_OPS: dict[tuple[str, str], Handler] = {}


def _ms_key_mask(n: Node, mask: SSAValue, b: int, skv: int) -> SSAValue:
    """com.microsoft mask_index as an i1 (B, 1, 1, T) "may attend" mask."""
    ms = shape(mask)
    if len(ms) == 2 and ms == (b, skv):  # raw mask: 0 masks the key
        allowed = n.emit(sp.CmpOp(mask, n.scalar(0, mask), "ne"))
    elif len(ms) == 1 and ms[0] == b:  # right padding: keys before the end position attend
        keys = n.const(np.arange(skv, dtype=np_dtype(sp.elt_of(mask))).reshape(1, skv))
        allowed = n.emit(sp.CmpOp(keys, reshape(n, mask, [b, 1]), "lt"))
    else:
        raise AttncError(f"mask_index of shape {list(ms)} is not supported (only (batch,) or (batch, kv_length))")
    return reshape(n, allowed, [b, 1, 1, skv])


def _ms_attention(n: Node) -> list[Val]:
    """com.microsoft.Attention: packed QKV projection, then multi-head attention."""
    for i, what in ((4, "past"), (5, "attention_bias"), (6, "past_sequence_length")):
        if n.has(i):
            raise AttncError(f"com.microsoft Attention with a '{what}' input is not supported")
    if n.used(1):
        raise AttncError("com.microsoft Attention's present output is not supported")
    x, w = n.value(0), n.value(1)
    heads = int(n.attr("num_heads"))
    qkv = n.emit(sp.MatmulOp(x, w))
    if n.has(2):
        qkv = n.emit(sp.AddOp(qkv, n.value(2)))
    total = shape(qkv)[-1]
    sizes = [int(s) for s in n.attr("qkv_hidden_sizes", [total // 3] * 3)]
    parts, pos = [], 0
    for s in sizes:
        part = slice_value(n, qkv, [pos], [pos + s], [-1], [1])
        parts.append(_split_heads(n, part, heads, "Q/K/V"))
        pos += s
    q, k, v = parts
    b, _, sq, d = shape(q)
    skv = shape(k)[2]
    scale = float(n.attr("scale", 0.0)) or 1.0 / float(np.sqrt(d))
    causal = bool(n.attr("unidirectional", 0))
    if not n.has(3):
        y = n.emit(sp.AttentionOp(q, k, v, None, scale=scale, causal=causal))
        return [_merge_heads(n, y, 3), None]
    # ORT masks with a large finite value (mask_filter_value), not -inf: a row with
    # every key masked still averages them. Causal and padding use the same value.
    allowed = _ms_key_mask(n, n.value(3), b, skv)
    if causal:
        tri = np.tril(np.ones((sq, skv), dtype=bool), skv - sq).reshape(1, 1, sq, skv)
        allowed = n.emit(sp.AndOp(allowed, n.const(tri)))
    filt = n.const(np.array(float(n.attr("mask_filter_value", -10000.0)), dtype=np_dtype(sp.elt_of(q))), sp.elt_of(q))
    bias = n.emit(sp.WhereOp(allowed, n.scalar(0, q), filt))
    y = n.emit(sp.AttentionOp(q, k, v, bias, scale=scale))
    return [_merge_heads(n, y, 3), None]


DOMAIN_OPS[("com.microsoft", "Attention")] = _ms_attention
