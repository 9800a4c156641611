"""The `sparse` dialect: tensor-level ops of attention models on encoded tensors.

Every op works on builtin ``tensor`` values whose encoding slot may carry one of the
encodings of ``attnc.dialects.encoding``. Shapes are static: the frontend binds
every symbolic dimension before it builds IR. Elementwise ops broadcast like numpy.
The exact numeric meaning of each op is the reference interpreter's
(``attnc.interpreter``); the docstrings state it in words and show the textual form.
"""

from __future__ import annotations

import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from attnc import butterfly as bf
from attnc.dialects.encoding import (
    ENCODINGS,
    BlockEncodingAttr,
    ButterflyEncodingAttr,
    DenseEncodingAttr,
    NMEncodingAttr,
    verify_encoding_for_shape,
)
from xdsl.dialects.builtin import (
    I64,
    DenseArrayBase,
    DenseIntOrFPElementsAttr,
    FloatAttr,
    IntegerAttr,
    IntegerType,
    StringAttr,
    TensorType,
    UnitAttr,
    i1,
    i64,
)
from xdsl.ir import Attribute, Dialect, Operation, SSAValue
from xdsl.irdl import (
    AttrSizedOperandSegments,
    IRDLOperation,
    attr_def,
    irdl_op_definition,
    operand_def,
    opt_attr_def,
    opt_operand_def,
    result_def,
    traits_def,
    var_operand_def,
)
from xdsl.parser import Parser
from xdsl.printer import Printer
from xdsl.traits import OpTrait, Pure
from xdsl.utils.exceptions import VerifyException

# ---------------------------------------------------------------------------
# helpers shared by the verifiers


def shape_of(v: SSAValue | Attribute) -> tuple[int, ...]:
    t = v.type if isinstance(v, SSAValue) else v
    assert isinstance(t, TensorType)
    return tuple(t.get_shape())


def elt_of(v: SSAValue | Attribute) -> Attribute:
    t = v.type if isinstance(v, SSAValue) else v
    assert isinstance(t, TensorType)
    return t.element_type


def encoding_of(v: SSAValue | Attribute) -> Attribute | None:
    t = v.type if isinstance(v, SSAValue) else v
    assert isinstance(t, TensorType)
    enc = t.encoding
    return None if enc is None or isinstance(enc, (DenseEncodingAttr,)) or enc == _NO_ENCODING else enc


_NO_ENCODING = TensorType(i1, [1]).encoding


def tensor(shape: Sequence[int], elt: Attribute, encoding: Attribute | None = None) -> TensorType:
    if encoding is None:
        return TensorType(elt, list(shape))
    return TensorType(elt, list(shape), encoding)


def _ints(a: DenseArrayBase) -> tuple[int, ...]:
    return tuple(int(x) for x in a.get_values())


def i64_array(values: Sequence[int]) -> DenseArrayBase:
    return DenseArrayBase.from_list(i64, [int(v) for v in values])  # the instance: I64 is only a type constraint


def _norm_axis(axis: int, rank: int, what: str) -> int:
    if not -rank <= axis < max(rank, 1):
        raise VerifyException(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _broadcast(*shapes: Sequence[int]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(*[tuple(s) for s in shapes]))
    except ValueError:
        raise VerifyException(f"shapes {', '.join(str(tuple(s)) for s in shapes)} do not broadcast") from None


def _broadcasts_to(src: Sequence[int], dst: Sequence[int]) -> bool:
    try:
        return tuple(np.broadcast_shapes(tuple(src), tuple(dst))) == tuple(dst)
    except ValueError:
        return False


def _expect_shape(op: IRDLOperation, got: Sequence[int], want: Sequence[int]) -> None:
    if tuple(got) != tuple(want):
        raise VerifyException(f"{op.name}: result shape {tuple(got)} does not match the expected {tuple(want)}")


def _expect_same_elt(op: IRDLOperation, *vals: SSAValue) -> None:
    elts = {elt_of(v) for v in vals}
    if len(elts) != 1:
        raise VerifyException(f"{op.name}: element types differ ({', '.join(str(e) for e in elts)})")


def _is_int(t: Attribute) -> bool:
    return isinstance(t, IntegerType)


@dataclass(frozen=True)
class DataMovement(OpTrait):
    """The op only re-addresses values already in a buffer (a view, a copy or a layout change): on the
    array it is configuration of the address generators and DMA, not work for a compute unit. The
    back end folds such ops into the kernels around them and the cost models charge them nothing."""


def is_data_movement(op: Operation | None) -> bool:
    return op is not None and op.has_trait(DataMovement)


class SparseOp(IRDLOperation):
    """Base of every sparse op: checks encodings of results against their shapes."""

    def verify_(self) -> None:
        for r in self.results:
            if isinstance(r.type, TensorType) and (enc := r.type.encoding) is not None:
                if type(enc) in ENCODINGS:
                    verify_encoding_for_shape(enc, shape_of(r))
        try:
            self.verify_op()
        except VerifyException as e:
            msg = str(e)
            raise VerifyException(msg if msg.startswith(self.name) else f"{self.name}: {msg}") from None

    def verify_op(self) -> None:
        pass


class SingleInputOp(SparseOp):
    """Base of the ops with one tensor operand and one result, written
    ``%r = sparse.<op> %x {attrs} : type(x) -> type(r)``."""

    input = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$input attr-dict `:` type($input) `->` type($result)"


# ---------------------------------------------------------------------------
# constants and encodings


@irdl_op_definition
class ConstantOp(SparseOp):
    """A constant tensor. The result may carry an encoding; the value must then
    already lie on it (an N:M constant has at most N non-zeros per group).

        %w = sparse.constant {value = dense<...> : tensor<4x4xf32>} : tensor<4x4xf32, #sparse.nm<...>>
    """

    name = "sparse.constant"
    value = attr_def(DenseIntOrFPElementsAttr)
    result = result_def(TensorType)
    traits = traits_def(Pure())

    def __init__(self, value: DenseIntOrFPElementsAttr, result_type: TensorType | None = None):
        super().__init__(attributes={"value": value}, result_types=[result_type or value.type])

    def print(self, printer: Printer) -> None:
        # xDSL 0.74 prints inf/nan elements as hex integers and parses them back as
        # integer *values*; the raw hex-string form keeps the bits exact.
        value = self.value
        printer.print_string(" {value = ")
        if _has_non_finite(value):
            printer.print_string(f'dense<"0x{value.data.data.hex().upper()}"> : ')
            printer.print_attribute(value.type)
        else:
            printer.print_attribute(value)
        for name, attr in self.attributes.items():
            if name != "value":
                printer.print_string(f", {name} = ")
                printer.print_attribute(attr)
        printer.print_string("} : ")
        printer.print_attribute(self.result.type)

    @classmethod
    def parse(cls, parser: Parser) -> ConstantOp:
        attrs = parser.parse_optional_attr_dict()
        parser.parse_punctuation(":")
        ty = parser.parse_type()
        value = attrs.pop("value", None)
        if not isinstance(value, DenseIntOrFPElementsAttr) or not isinstance(ty, TensorType):
            parser.raise_error("sparse.constant needs {value = dense<...> : tensor<...>} : tensor<...>")
        op = cls(value, ty)
        op.attributes.update(attrs)
        return op

    def verify_op(self) -> None:
        vt = self.value.type
        if tuple(vt.get_shape()) != shape_of(self.result) or vt.get_element_type() != elt_of(self.result):
            raise VerifyException(f"sparse.constant: value type {vt} does not match result type {self.result.type}")
        enc = encoding_of(self.result)
        if isinstance(enc, (NMEncodingAttr, BlockEncodingAttr)):
            from attnc.dialects.values import project, to_numpy

            data = to_numpy(self.value)
            if not np.array_equal(project(data, enc), data):
                raise VerifyException(f"sparse.constant: the value does not satisfy the encoding {enc}")


def _has_non_finite(value: DenseIntOrFPElementsAttr) -> bool:
    elt = value.get_element_type()
    if isinstance(elt, IntegerType):
        return False
    from attnc.dialects.values import to_numpy

    return not bool(np.isfinite(to_numpy(value)).all())


@irdl_op_definition
class ConvertOp(SingleInputOp):
    """Projects a tensor onto the encoding of the result type (same shape and
    element type); the exact projection of each encoding is in ``attnc.dialects.values``.

        %s = sparse.convert %x : tensor<8x8xf32> -> tensor<8x8xf32, #sparse.nm<n = 2, m = 4, axis = 1>>
    """

    name = "sparse.convert"
    traits = traits_def(Pure(), DataMovement())

    def __init__(self, x: SSAValue, result_type: TensorType):
        super().__init__(operands=[x], result_types=[result_type])

    def verify_op(self) -> None:
        _expect_shape(self, shape_of(self.result), shape_of(self.input))
        _expect_same_elt(self, self.input, self.result)


@irdl_op_definition
class CastOp(SingleInputOp):
    """Element type conversion (numpy ``astype``; float to bool is ``x != 0``).

        %y = sparse.cast %x : tensor<4xf32> -> tensor<4xf16>
    """

    name = "sparse.cast"

    def __init__(self, x: SSAValue, elt: Attribute):
        super().__init__(operands=[x], result_types=[tensor(shape_of(x), elt)])

    def verify_op(self) -> None:
        _expect_shape(self, shape_of(self.result), shape_of(self.input))


# ---------------------------------------------------------------------------
# elementwise


class UnaryOp(SingleInputOp):
    #: the result is i1 (a predicate) rather than the input's element type
    PREDICATE_RESULT: ClassVar[bool] = False

    def __init__(self, x: SSAValue, attributes: dict[str, Attribute] | None = None):
        elt = i1 if self.PREDICATE_RESULT else elt_of(x)
        super().__init__(operands=[x], result_types=[tensor(shape_of(x), elt)], attributes=attributes or {})

    def verify_op(self) -> None:
        _expect_shape(self, shape_of(self.result), shape_of(self.input))
        if self.PREDICATE_RESULT:
            if elt_of(self.result) != i1:
                raise VerifyException(f"{self.name}: result must be i1")
        else:
            _expect_same_elt(self, self.input, self.result)


def _unary(opname: str, doc: str, predicate: bool = False) -> type[UnaryOp]:
    cls = type(
        "".join(p.capitalize() for p in opname.split("_")) + "Op",
        (UnaryOp,),
        {
            "name": f"sparse.{opname}",
            "PREDICATE_RESULT": predicate,
            "__annotations__": {"PREDICATE_RESULT": ClassVar[bool]},
            "__doc__": f"{doc}\n\n        %y = sparse.{opname} %x : tensor<4x8xf32> -> tensor<4x8xf32>\n",
            "__module__": __name__,
        },
    )
    return irdl_op_definition(cls)


NegOp = _unary("neg", "Elementwise negation.")
AbsOp = _unary("abs", "Elementwise absolute value.")
ExpOp = _unary("exp", "Elementwise e**x.")
LogOp = _unary("log", "Elementwise natural logarithm.")
SqrtOp = _unary("sqrt", "Elementwise square root.")
RsqrtOp = _unary("rsqrt", "Elementwise 1/sqrt(x).")
ReciprocalOp = _unary("reciprocal", "Elementwise 1/x.")
TanhOp = _unary("tanh", "Elementwise hyperbolic tangent.")
ErfOp = _unary("erf", "Elementwise Gauss error function.")
SigmoidOp = _unary("sigmoid", "Elementwise 1/(1+exp(-x)).")
ReluOp = _unary("relu", "Elementwise max(x, 0).")
FloorOp = _unary("floor", "Elementwise floor.")
CeilOp = _unary("ceil", "Elementwise ceiling.")
NotOp = _unary("not", "Logical negation of an i1 tensor.")
IsNanOp = _unary("isnan", "True where x is NaN (result i1).", predicate=True)
IsInfOp = _unary("isinf", "True where x is +inf or -inf (result i1).", predicate=True)


@irdl_op_definition
class GeluOp(UnaryOp):
    """GELU: ``x * Phi(x)`` exactly (``approximate = "none"``, via erf) or with the
    tanh approximation (``approximate = "tanh"``).

        %y = sparse.gelu %x {approximate = "tanh"} : tensor<4x8xf32> -> tensor<4x8xf32>
    """

    name = "sparse.gelu"
    approximate = opt_attr_def(StringAttr)

    def verify_op(self) -> None:
        super().verify_op()
        if self.approximate is not None and self.approximate.data not in ("none", "tanh"):
            raise VerifyException(f'sparse.gelu: approximate must be "none" or "tanh", got "{self.approximate.data}"')


class BinaryOp(SparseOp):
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs) `->` type($result)"
    PREDICATE_RESULT: ClassVar[bool] = False
    LOGICAL: ClassVar[bool] = False

    def __init__(self, a: SSAValue, b: SSAValue, attributes: dict[str, Attribute] | None = None):
        elt = i1 if self.PREDICATE_RESULT else elt_of(a)
        shape = _broadcast(shape_of(a), shape_of(b))
        super().__init__(operands=[a, b], result_types=[tensor(shape, elt)], attributes=attributes or {})

    def verify_op(self) -> None:
        _expect_same_elt(self, self.lhs, self.rhs)
        _expect_shape(self, shape_of(self.result), _broadcast(shape_of(self.lhs), shape_of(self.rhs)))
        want = i1 if self.PREDICATE_RESULT else elt_of(self.lhs)
        if elt_of(self.result) != want:
            raise VerifyException(f"{self.name}: result element type must be {want}")
        if self.LOGICAL and elt_of(self.lhs) != i1:
            raise VerifyException(f"{self.name}: operands must be i1")


def _binary(opname: str, doc: str, predicate: bool = False, logical: bool = False) -> type[BinaryOp]:
    cls = type(
        "".join(p.capitalize() for p in opname.split("_")) + "Op",
        (BinaryOp,),
        {
            "name": f"sparse.{opname}",
            "PREDICATE_RESULT": predicate,
            "LOGICAL": logical,
            "__annotations__": {"PREDICATE_RESULT": ClassVar[bool], "LOGICAL": ClassVar[bool]},
            "__doc__": f"{doc} Operands broadcast like numpy.\n\n"
            f"        %z = sparse.{opname} %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xf32>\n",
            "__module__": __name__,
        },
    )
    return irdl_op_definition(cls)


AddOp = _binary("add", "Elementwise sum.")
SubOp = _binary("sub", "Elementwise difference.")
MulOp = _binary("mul", "Elementwise product.")
DivOp = _binary("div", "Elementwise quotient (integers truncate toward zero, as ONNX Div).")
PowOp = _binary("pow", "Elementwise power x**y.")
MaxOp = _binary("max", "Elementwise maximum.")
MinOp = _binary("min", "Elementwise minimum.")
AndOp = _binary("and", "Logical and of i1 tensors.", logical=True)
OrOp = _binary("or", "Logical or of i1 tensors.", logical=True)
XorOp = _binary("xor", "Logical xor of i1 tensors.", logical=True)

CMP_PREDICATES = ("eq", "ne", "lt", "le", "gt", "ge")


@irdl_op_definition
class CmpOp(BinaryOp):
    """Elementwise comparison giving i1; ``predicate`` is one of eq, ne, lt, le, gt, ge.

        %m = sparse.cmp %x, %y {predicate = "lt"} : tensor<4xi64>, tensor<4xi64> -> tensor<4xi1>
    """

    name = "sparse.cmp"
    predicate = attr_def(StringAttr)
    PREDICATE_RESULT: ClassVar[bool] = True

    def __init__(self, a: SSAValue, b: SSAValue, predicate: str):
        super().__init__(a, b, {"predicate": StringAttr(predicate)})

    def verify_op(self) -> None:
        super().verify_op()
        if self.predicate.data not in CMP_PREDICATES:
            raise VerifyException(f"sparse.cmp: predicate must be one of {CMP_PREDICATES}, got {self.predicate.data!r}")


@irdl_op_definition
class WhereOp(SparseOp):
    """Select ``a`` where ``cond`` is true, else ``b``; the three broadcast.

        %z = sparse.where %c, %a, %b : tensor<4x4xi1>, tensor<f32>, tensor<4x4xf32> -> tensor<4x4xf32>
    """

    name = "sparse.where"
    cond = operand_def(TensorType)
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$cond `,` $lhs `,` $rhs attr-dict `:` type($cond) `,` type($lhs) `,` type($rhs) `->` type($result)"

    def __init__(self, c: SSAValue, a: SSAValue, b: SSAValue):
        shape = _broadcast(shape_of(c), shape_of(a), shape_of(b))
        super().__init__(operands=[c, a, b], result_types=[tensor(shape, elt_of(a))])

    def verify_op(self) -> None:
        if elt_of(self.cond) != i1:
            raise VerifyException("sparse.where: the condition must be i1")
        _expect_same_elt(self, self.lhs, self.rhs, self.result)
        _expect_shape(self, shape_of(self.result), _broadcast(*(shape_of(v) for v in self.operands)))


# ---------------------------------------------------------------------------
# contractions


def matmul_shape(a: Sequence[int], b: Sequence[int]) -> tuple[int, ...]:
    """numpy.matmul's result shape (1-d operands are promoted and squeezed)."""
    if not a or not b:
        raise VerifyException("matmul operands must have rank >= 1")
    a2 = (1, *a) if len(a) == 1 else tuple(a)
    b2 = (*b, 1) if len(b) == 1 else tuple(b)
    if a2[-1] != b2[-2]:
        raise VerifyException(f"matmul contraction sizes differ: {tuple(a)} x {tuple(b)}")
    batch = _broadcast(a2[:-2], b2[:-2])
    out = [*batch, a2[-2], b2[-1]]
    if len(b) == 1:
        out.pop(-1)
    if len(a) == 1:
        out.pop(-2 if len(b) != 1 else -1)
    return tuple(out)


@irdl_op_definition
class MatmulOp(SparseOp):
    """Matrix product with numpy ``matmul`` semantics (batch dims broadcast). Either
    operand may be encoded (e.g. an N:M weight). A ``row_block = R`` attribute (set by
    ``tile`` on an unfused QKᵀ whose softmax epilogue needs whole score rows) only tells
    the array to take the rows R at a time; the value is the same.

        %c = sparse.matmul %a, %b : tensor<2x8x16xf32>, tensor<16x4xf32> -> tensor<2x8x4xf32>
        %s = sparse.matmul %q, %kt {row_block = 4 : i64} : tensor<64x16xf32>, tensor<16x512xf32> -> tensor<64x512xf32>
    """

    name = "sparse.matmul"
    lhs = operand_def(TensorType)
    rhs = operand_def(TensorType)
    result = result_def(TensorType)
    traits = traits_def(Pure())
    assembly_format = "$lhs `,` $rhs attr-dict `:` type($lhs) `,` type($rhs) `->` type($result)"

    def __init__(self, a: SSAValue, b: SSAValue):
        super().__init__(operands=[a, b], result_types=[tensor(matmul_shape(shape_of(a), shape_of(b)), elt_of(a))])

    def verify_op(self) -> None:
        _expect_same_elt(self, self.lhs, self.rhs, self.result)
        _expect_shape(self, shape_of(self.result), matmul_shape(shape_of(self.lhs), shape_of(self.rhs)))


def parse_einsum(equation: str, shapes: Sequence[Sequence[int]]) -> tuple[list[str], str, dict[str, int]]:
    """Parse an einsum equation (with optional ``...``) against operand shapes; returns
    the explicit per-operand index strings, the output string and each index's size."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise VerifyException(f"einsum '{equation}' names {len(ins)} operands, got {len(shapes)}")
    used = set(c for c in eq if c.isalpha())
    spare = [c for c in string.ascii_letters if c not in used]
    ell_rank = 0
    for spec, shp in zip(ins, shapes):
        if "..." in spec:
            ell_rank = max(ell_rank, len(shp) - (len(spec) - 3))
    ell = "".join(spare[:ell_rank])
    explicit = []
    for spec, shp in zip(ins, shapes):
        if "..." in spec:
            n = len(shp) - (len(spec) - 3)
            if n < 0:
                raise VerifyException(f"einsum operand '{spec}' does not fit shape {tuple(shp)}")
            spec = spec.replace("...", ell[ell_rank - n :])
        if not all(c.isalpha() for c in spec) or len(spec) != len(shp):
            raise VerifyException(f"einsum operand '{spec}' does not fit shape {tuple(shp)}")
        explicit.append(spec)
    sizes: dict[str, int] = {}
    for spec, shp in zip(explicit, shapes):
        for c, d in zip(spec, shp):
            if c in sizes and sizes[c] != d and 1 not in (sizes[c], d):
                raise VerifyException(f"einsum index '{c}' has sizes {sizes[c]} and {d}")
            sizes[c] = max(sizes.get(c, d), d) if c in sizes else d
    if not arrow:
        counts = {c: sum(s.count(c) for s in explicit) for c in sizes}
        out = ell + "".join(sorted(c for c in sizes if counts[c] == 1 and c not in ell))
    else:
        out = out.replace("...", ell)
    for c in out:
        if c not in sizes:
            raise VerifyException(f"einsum output index '{c}' appears in no operand")
    return explicit, out, sizes


@irdl_op_definition
class ContractOp(SparseOp):
    """A generic contraction in einsum notation (what ONNX Einsum means): every
    index not in the output is summed over.

        %s = sparse.contract %q, %k {equation = "bhqd,bhkd->bhqk"} : (tensor<1x2x8x4xf32>, tensor<1x2x8x4xf32>) -> tensor<1x2x8x8xf32>
    """

    name = "sparse.contract"
    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    equation = attr_def(StringAttr)
    traits = traits_def(Pure())
    assembly_format = "$inputs attr-dict `:` functional-type($inputs, $result)"

    def __init__(self, inputs: Sequence[SSAValue], equation: str):
        _, out, sizes = parse_einsum(equation, [shape_of(v) for v in inputs])
        shape = [sizes[c] for c in out]
        super().__init__(
            operands=[inputs], result_types=[tensor(shape, elt_of(inputs[0]))], attributes={"equation": StringAttr(equation)}
        )

    def verify_op(self) -> None:
        if not self.inputs:
            raise VerifyException("sparse.contract needs at least one operand")
        _expect_same_elt(self, *self.inputs, self.result)
        _, out, sizes = parse_einsum(self.equation.data, [shape_of(v) for v in self.inputs])
        _expect_shape(self, shape_of(self.result), [sizes[c] for c in out])


# ---------------------------------------------------------------------------
# reductions and normalisations

REDUCE_KINDS = ("sum", "mean", "max", "min", "prod")


@irdl_op_definition
class ReduceOp(SingleInputOp):
    """Reduces ``axes`` with ``kind`` in sum, mean, max, min, prod; ``keepdims`` keeps
    them as size 1. An empty axes list reduces nothing (the identity).

        %s = sparse.reduce %x {kind = "max", axes = array<i64: 1>, keepdims} : tensor<4x8xf32> -> tensor<4x1xf32>
    """

    name = "sparse.reduce"
    kind = attr_def(StringAttr)
    axes = attr_def(DenseArrayBase)
    keepdims = opt_attr_def(UnitAttr)

    def __init__(self, x: SSAValue, kind: str, axes: Sequence[int], keepdims: bool):
        rank = len(shape_of(x))
        ax = sorted({a % rank for a in axes}) if rank else []
        shape = [1 if i in ax else d for i, d in enumerate(shape_of(x)) if keepdims or i not in ax]
        attrs: dict[str, Attribute] = {"kind": StringAttr(kind), "axes": i64_array(ax)}
        if keepdims:
            attrs["keepdims"] = UnitAttr()
        super().__init__(operands=[x], result_types=[tensor(shape, elt_of(x))], attributes=attrs)

    def verify_op(self) -> None:
        if self.kind.data not in REDUCE_KINDS:
            raise VerifyException(f"sparse.reduce: kind must be one of {REDUCE_KINDS}, got {self.kind.data!r}")
        shp = shape_of(self.input)
        ax = {_norm_axis(a, len(shp), "sparse.reduce axis") for a in _ints(self.axes)}
        keep = self.keepdims is not None
        want = [1 if i in ax else d for i, d in enumerate(shp) if keep or i not in ax]
        _expect_shape(self, shape_of(self.result), want)
        _expect_same_elt(self, self.input, self.result)


class _AxisOp(SingleInputOp):
    axis = attr_def(IntegerAttr[I64])

    def __init__(self, x: SSAValue, axis: int):
        super().__init__(operands=[x], result_types=[x.type], attributes={"axis": IntegerAttr(axis, 64)})

    def verify_op(self) -> None:
        _norm_axis(self.axis.value.data, len(shape_of(self.input)), f"{self.name} axis")
        _expect_shape(self, shape_of(self.result), shape_of(self.input))
        _expect_same_elt(self, self.input, self.result)


@irdl_op_definition
class SoftmaxOp(_AxisOp):
    """``exp(x - max) / sum(exp(x - max))`` along ``axis``; a slice that is all -inf
    gives zeros.

        %p = sparse.softmax %s {axis = -1 : i64} : tensor<4x8xf32> -> tensor<4x8xf32>
    """

    name = "sparse.softmax"


@irdl_op_definition
class LogSoftmaxOp(_AxisOp):
    """``x - max - log(sum(exp(x - max)))`` along ``axis``.

        %p = sparse.log_softmax %s {axis = -1 : i64} : tensor<4x8xf32> -> tensor<4x8xf32>
    """

    name = "sparse.log_softmax"


@irdl_op_definition
class LayerNormOp(SparseOp):
    """Normalises over the dims from ``axis`` to the last (mean and biased variance),
    then ``* scale (+ bias)``; scale and bias broadcast against those dims.

        %y = sparse.layer_norm %x, %g bias %b : tensor<768xf32> {axis = -1 : i64, epsilon = 1.0e-05 : f64} : tensor<2x8x768xf32>, tensor<768xf32> -> tensor<2x8x768xf32>
    """

    name = "sparse.layer_norm"
    input = operand_def(TensorType)
    scale = operand_def(TensorType)
    bias = opt_operand_def(TensorType)
    result = result_def(TensorType)
    axis = attr_def(IntegerAttr[I64])
    epsilon = attr_def(FloatAttr)
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(),)
    assembly_format = (
        "$input `,` $scale (`bias` $bias^ `:` type($bias))? attr-dict `:` type($input) `,` type($scale) `->` type($result)"
    )

    def __init__(self, x: SSAValue, scale: SSAValue, bias: SSAValue | None, axis: int, epsilon: float):
        super().__init__(
            operands=[x, scale, bias],
            result_types=[x.type],
            attributes={"axis": IntegerAttr(axis, 64), "epsilon": FloatAttr(epsilon, 64)},
        )

    def verify_op(self) -> None:
        shp = shape_of(self.input)
        ax = _norm_axis(self.axis.value.data, len(shp), "sparse.layer_norm axis")
        norm = shp[ax:]
        for v in (self.scale, self.bias):
            if v is not None and not _broadcasts_to(shape_of(v), norm):
                raise VerifyException(f"sparse.layer_norm: {shape_of(v)} does not broadcast to the normalised dims {norm}")
        _expect_shape(self, shape_of(self.result), shp)
        _expect_same_elt(self, *(v for v in (self.input, self.scale, self.bias, self.result) if v is not None))


# ---------------------------------------------------------------------------
# data movement


@irdl_op_definition
class TransposeOp(SingleInputOp):
    """Permutes dimensions: result dim i is input dim ``permutation[i]``.

        %t = sparse.transpose %x {permutation = array<i64: 0, 2, 1, 3>} : tensor<1x8x2x4xf32> -> tensor<1x2x8x4xf32>
    """

    name = "sparse.transpose"
    traits = traits_def(Pure(), DataMovement())
    permutation = attr_def(DenseArrayBase)

    def __init__(self, x: SSAValue, perm: Sequence[int]):
        shp = shape_of(x)
        super().__init__(
            operands=[x],
            result_types=[tensor([shp[p] for p in perm], elt_of(x))],
            attributes={"permutation": i64_array(perm)},
        )

    def verify_op(self) -> None:
        perm = _ints(self.permutation)
        shp = shape_of(self.input)
        if sorted(perm) != list(range(len(shp))):
            raise VerifyException(f"sparse.transpose: {list(perm)} is not a permutation of {len(shp)} dims")
        _expect_shape(self, shape_of(self.result), [shp[p] for p in perm])
        _expect_same_elt(self, self.input, self.result)


@irdl_op_definition
class ReshapeOp(SingleInputOp):
    """Row-major reshape to the result type's shape (same number of elements).

        %r = sparse.reshape %x : tensor<1x8x64xf32> -> tensor<1x8x2x32xf32>
    """

    name = "sparse.reshape"
    traits = traits_def(Pure(), DataMovement())

    def __init__(self, x: SSAValue, shape: Sequence[int]):
        super().__init__(operands=[x], result_types=[tensor(shape, elt_of(x))])

    def verify_op(self) -> None:
        if int(np.prod(shape_of(self.input))) != int(np.prod(shape_of(self.result))):
            raise VerifyException(f"sparse.reshape: {shape_of(self.input)} and {shape_of(self.result)} differ in size")
        _expect_same_elt(self, self.input, self.result)


@irdl_op_definition
class BroadcastOp(SingleInputOp):
    """Broadcasts (numpy ``broadcast_to``) to the result type's shape.

        %b = sparse.broadcast %x : tensor<1x8xf32> -> tensor<4x8xf32>
    """

    name = "sparse.broadcast"
    traits = traits_def(Pure(), DataMovement())

    def __init__(self, x: SSAValue, shape: Sequence[int]):
        super().__init__(operands=[x], result_types=[tensor(shape, elt_of(x))])

    def verify_op(self) -> None:
        if not _broadcasts_to(shape_of(self.input), shape_of(self.result)):
            raise VerifyException(f"sparse.broadcast: {shape_of(self.input)} does not broadcast to {shape_of(self.result)}")
        _expect_same_elt(self, self.input, self.result)


def slice_shape(shape: Sequence[int], starts: Sequence[int], ends: Sequence[int], steps: Sequence[int]) -> tuple[int, ...]:
    return tuple(len(range(s, e, st)) for s, e, st in zip(starts, ends, steps)) + tuple(shape[len(starts) :])


@irdl_op_definition
class SliceOp(SingleInputOp):
    """Strided slice, one (start, end, step) per dim as Python's ``range`` (already
    clamped: ``0 <= start, end <= dim`` for positive steps; ``end = -1`` means past
    the front for negative steps).

        %s = sparse.slice %x {starts = array<i64: 0, 2>, ends = array<i64: 4, 6>, steps = array<i64: 1, 1>} : tensor<4x8xf32> -> tensor<4x4xf32>
    """

    name = "sparse.slice"
    traits = traits_def(Pure(), DataMovement())
    starts = attr_def(DenseArrayBase)
    ends = attr_def(DenseArrayBase)
    steps = attr_def(DenseArrayBase)

    def __init__(self, x: SSAValue, starts: Sequence[int], ends: Sequence[int], steps: Sequence[int]):
        shape = slice_shape(shape_of(x), starts, ends, steps)
        super().__init__(
            operands=[x],
            result_types=[tensor(shape, elt_of(x))],
            attributes={"starts": i64_array(starts), "ends": i64_array(ends), "steps": i64_array(steps)},
        )

    def verify_op(self) -> None:
        shp = shape_of(self.input)
        st, en, sp = _ints(self.starts), _ints(self.ends), _ints(self.steps)
        if not len(st) == len(en) == len(sp) == len(shp):
            raise VerifyException(f"sparse.slice needs one start, end and step per dim ({len(shp)})")
        for d, (s, e, p) in enumerate(zip(st, en, sp)):
            if p == 0:
                raise VerifyException(f"sparse.slice: step of dim {d} is 0")
            lo, hi = (0, shp[d]) if p > 0 else (-1, shp[d] - 1)
            if not (lo <= s <= max(hi, lo) and lo <= e <= shp[d]):
                raise VerifyException(f"sparse.slice: bounds ({s}, {e}) of dim {d} are out of range for size {shp[d]}")
        _expect_shape(self, shape_of(self.result), slice_shape(shp, st, en, sp))
        _expect_same_elt(self, self.input, self.result)


@irdl_op_definition
class ConcatOp(SparseOp):
    """Concatenation along ``axis``.

        %c = sparse.concat %a, %b {axis = 2 : i64} : (tensor<1x2x4x8xf32>, tensor<1x2x3x8xf32>) -> tensor<1x2x7x8xf32>
    """

    name = "sparse.concat"
    inputs = var_operand_def(TensorType)
    result = result_def(TensorType)
    axis = attr_def(IntegerAttr[I64])
    traits = traits_def(Pure(), DataMovement())
    assembly_format = "$inputs attr-dict `:` functional-type($inputs, $result)"

    def __init__(self, inputs: Sequence[SSAValue], axis: int):
        shp = list(shape_of(inputs[0]))
        ax = axis % len(shp)
        shp[ax] = sum(shape_of(v)[ax] for v in inputs)
        super().__init__(
            operands=[inputs], result_types=[tensor(shp, elt_of(inputs[0]))], attributes={"axis": IntegerAttr(ax, 64)}
        )

    def verify_op(self) -> None:
        if not self.inputs:
            raise VerifyException("sparse.concat needs at least one operand")
        shp = list(shape_of(self.inputs[0]))
        ax = _norm_axis(self.axis.value.data, len(shp), "sparse.concat axis")
        for v in self.inputs:
            s = shape_of(v)
            if len(s) != len(shp) or any(a != b for i, (a, b) in enumerate(zip(s, shp)) if i != ax):
                raise VerifyException(f"sparse.concat: {s} and {tuple(shp)} differ outside axis {ax}")
        shp[ax] = sum(shape_of(v)[ax] for v in self.inputs)
        _expect_shape(self, shape_of(self.result), shp)
        _expect_same_elt(self, *self.inputs, self.result)


@irdl_op_definition
class GatherOp(SparseOp):
    """``numpy.take(data, indices, axis)``; negative indices count from the end.

        %g = sparse.gather %x, %i {axis = 0 : i64} : tensor<16x8xf32>, tensor<4xi64> -> tensor<4x8xf32>
    """

    name = "sparse.gather"
    input = operand_def(TensorType)
    indices = operand_def(TensorType)
    result = result_def(TensorType)
    axis = attr_def(IntegerAttr[I64])
    traits = traits_def(Pure(), DataMovement())
    assembly_format = "$input `,` $indices attr-dict `:` type($input) `,` type($indices) `->` type($result)"

    def __init__(self, x: SSAValue, idx: SSAValue, axis: int):
        shp = shape_of(x)
        ax = axis % len(shp)
        out = [*shp[:ax], *shape_of(idx), *shp[ax + 1 :]]
        super().__init__(operands=[x, idx], result_types=[tensor(out, elt_of(x))], attributes={"axis": IntegerAttr(ax, 64)})

    def verify_op(self) -> None:
        shp = shape_of(self.input)
        ax = _norm_axis(self.axis.value.data, len(shp), "sparse.gather axis")
        if not _is_int(elt_of(self.indices)) or elt_of(self.indices) == i1:
            raise VerifyException("sparse.gather: indices must be integers")
        _expect_shape(self, shape_of(self.result), [*shp[:ax], *shape_of(self.indices), *shp[ax + 1 :]])
        _expect_same_elt(self, self.input, self.result)


@irdl_op_definition
class PadOp(SingleInputOp):
    """Constant padding: ``pads`` holds every dim's amount before, then every dim's
    amount after (ONNX order); new elements are ``value``.

        %p = sparse.pad %x {pads = array<i64: 0, 0, 0, 2>, value = 0.0 : f64} : tensor<4x6xf32> -> tensor<4x8xf32>
    """

    name = "sparse.pad"
    traits = traits_def(Pure(), DataMovement())
    pads = attr_def(DenseArrayBase)
    value = attr_def(FloatAttr)

    def __init__(self, x: SSAValue, pads: Sequence[int], value: float):
        shp = shape_of(x)
        r = len(shp)
        out = [d + pads[i] + pads[i + r] for i, d in enumerate(shp)]
        super().__init__(
            operands=[x],
            result_types=[tensor(out, elt_of(x))],
            attributes={"pads": i64_array(pads), "value": FloatAttr(value, 64)},
        )

    def verify_op(self) -> None:
        shp = shape_of(self.input)
        pads = _ints(self.pads)
        r = len(shp)
        if len(pads) != 2 * r or min(pads, default=0) < 0:
            raise VerifyException(f"sparse.pad needs {2 * r} non-negative pads, got {list(pads)}")
        _expect_shape(self, shape_of(self.result), [d + pads[i] + pads[i + r] for i, d in enumerate(shp)])
        _expect_same_elt(self, self.input, self.result)


@irdl_op_definition
class TriluOp(SingleInputOp):
    """Keeps the upper (``upper``) or lower triangle of the last two dims, counted
    from diagonal ``k``; the rest becomes zero (false).

        %t = sparse.trilu %x {k = 0 : i64} : tensor<8x8xf32> -> tensor<8x8xf32>
    """

    name = "sparse.trilu"
    k = attr_def(IntegerAttr[I64])
    upper = opt_attr_def(UnitAttr)

    def __init__(self, x: SSAValue, k: int, upper: bool):
        attrs: dict[str, Attribute] = {"k": IntegerAttr(k, 64)}
        if upper:
            attrs["upper"] = UnitAttr()
        super().__init__(operands=[x], result_types=[x.type], attributes=attrs)

    def verify_op(self) -> None:
        if len(shape_of(self.input)) < 2:
            raise VerifyException("sparse.trilu needs rank >= 2")
        _expect_shape(self, shape_of(self.result), shape_of(self.input))
        _expect_same_elt(self, self.input, self.result)


# ---------------------------------------------------------------------------
# attention


@irdl_op_definition
class AttentionOp(SparseOp):
    """Scaled dot-product attention, the one op every attention pattern is raised to.

    q: (B, Hq, Sq, d), k: (B, Hkv, Skv, d), v: (B, Hkv, Skv, dv) -> (B, Hq, Sq, dv).
    Query head h reads key/value head ``h // (Hq / Hkv)`` (GQA/MQA when Hkv < Hq).
    ``S = (q @ kᵀ) * scale``; if ``softcap > 0``: ``S = softcap * tanh(S / softcap)``;
    then the bias is added: the optional mask broadcasts to (B, Hq, Sq, Skv) and is
    either i1 (true = attend, false = -inf) or additive; ``causal`` masks key j for
    query i unless ``j <= i + causal_offset`` (the offset is the number of cached
    keys before the queries). ``P = softmax(S)`` over keys, except that rows whose
    bias is -inf everywhere give zeros; the result is ``P @ v``.

    A fused schedule (set by the ``tile`` pass on the per-kernel attention ops it
    makes) says how the array computes it: ``fusion = "flat"`` sweeps ``row_block``
    query rows at a time over all keys with a 3-pass softmax (same numbers as
    above); ``fusion = "online"`` walks ``key_block`` keys at a time with a running
    max and sum and rescales the partial output (FuseMax's one-pass cascade), which
    rounds differently.

        %o = sparse.attention %q, %k, %v mask %m : tensor<1x1x8x8xi1> {scale = 0.125 : f64, heads = 2 : i64, kv_heads = 2 : i64, causal, causal_offset = 0 : i64, softcap = 0.0 : f64} : tensor<1x2x8x64xf32>, tensor<1x2x8x64xf32>, tensor<1x2x8x64xf32> -> tensor<1x2x8x64xf32>
    """

    name = "sparse.attention"
    q = operand_def(TensorType)
    k = operand_def(TensorType)
    v = operand_def(TensorType)
    mask = opt_operand_def(TensorType)
    result = result_def(TensorType)
    scale = attr_def(FloatAttr)
    heads = attr_def(IntegerAttr[I64])
    kv_heads = attr_def(IntegerAttr[I64])
    causal = opt_attr_def(UnitAttr)
    causal_offset = attr_def(IntegerAttr[I64])
    softcap = attr_def(FloatAttr)
    fusion = opt_attr_def(StringAttr)
    row_block = opt_attr_def(IntegerAttr[I64])
    key_block = opt_attr_def(IntegerAttr[I64])
    traits = traits_def(Pure())
    irdl_options = (AttrSizedOperandSegments(),)
    assembly_format = (
        "$q `,` $k `,` $v (`mask` $mask^ `:` type($mask))? attr-dict `:` type($q) `,` type($k) `,` type($v) `->` type($result)"
    )

    def __init__(
        self,
        q: SSAValue,
        k: SSAValue,
        v: SSAValue,
        mask: SSAValue | None = None,
        *,
        scale: float | None = None,
        causal: bool = False,
        causal_offset: int = 0,
        softcap: float = 0.0,
        fusion: str | None = None,
        row_block: int = 0,
        key_block: int = 0,
    ):
        b, hq, sq, d = shape_of(q)
        hkv, dv = shape_of(k)[1], shape_of(v)[3]
        attrs: dict[str, Attribute] = {
            "scale": FloatAttr(float(scale) if scale is not None else 1.0 / float(np.sqrt(d)), 64),
            "heads": IntegerAttr(hq, 64),
            "kv_heads": IntegerAttr(hkv, 64),
            "causal_offset": IntegerAttr(causal_offset, 64),
            "softcap": FloatAttr(float(softcap), 64),
        }
        if causal:
            attrs["causal"] = UnitAttr()
        if fusion is not None:
            attrs["fusion"] = StringAttr(fusion)
            attrs["row_block"] = IntegerAttr(row_block, 64)
            attrs["key_block"] = IntegerAttr(key_block, 64)
        super().__init__(operands=[q, k, v, mask], result_types=[tensor((b, hq, sq, dv), elt_of(q))], attributes=attrs)

    def verify_op(self) -> None:
        qs, ks, vs = shape_of(self.q), shape_of(self.k), shape_of(self.v)
        if not len(qs) == len(ks) == len(vs) == 4:
            raise VerifyException("sparse.attention: q, k and v must be 4-d (batch, heads, seq, head_dim)")
        b, hq, sq, d = qs
        if ks[0] != b or vs[0] != b:
            raise VerifyException(f"sparse.attention: batch sizes differ: q {b}, k {ks[0]}, v {vs[0]}")
        if ks[1] != vs[1] or ks[2] != vs[2]:
            raise VerifyException(f"sparse.attention: k {ks} and v {vs} differ in heads or sequence length")
        if ks[3] != d:
            raise VerifyException(f"sparse.attention: q head dim {d} differs from k head dim {ks[3]}")
        hkv = ks[1]
        if self.heads.value.data != hq or self.kv_heads.value.data != hkv:
            raise VerifyException(
                f"sparse.attention: heads={self.heads.value.data}, kv_heads={self.kv_heads.value.data} "
                f"disagree with the operand shapes ({hq}, {hkv})"
            )
        if hkv < 1 or hq % hkv:
            raise VerifyException(f"sparse.attention: {hq} query heads are not a multiple of {hkv} kv heads")
        if self.mask is not None:
            ms = shape_of(self.mask)
            if len(ms) > 4 or not _broadcasts_to(ms, (b, hq, sq, ks[2])):
                raise VerifyException(f"sparse.attention: mask {ms} does not broadcast to {(b, hq, sq, ks[2])}")
            if elt_of(self.mask) != i1 and elt_of(self.mask) != elt_of(self.q):
                raise VerifyException("sparse.attention: the mask must be i1 or have the element type of q")
        if self.softcap.value.data < 0:
            raise VerifyException("sparse.attention: softcap must be >= 0 (0 disables it)")
        self._verify_fusion(sq, ks[2])
        _expect_same_elt(self, self.q, self.k, self.v, self.result)
        _expect_shape(self, shape_of(self.result), (b, hq, sq, vs[3]))

    def _verify_fusion(self, sq: int, skv: int) -> None:
        given = [a is not None for a in (self.fusion, self.row_block, self.key_block)]
        if any(given) and not all(given):
            raise VerifyException("sparse.attention: fusion, row_block and key_block come together")
        if self.fusion is None:
            return
        fusion, rb, kb = self.fusion.data, self.row_block.value.data, self.key_block.value.data
        if fusion not in FUSIONS:
            raise VerifyException(f"sparse.attention: fusion must be one of {FUSIONS}, got {fusion!r}")
        if not (1 <= rb <= max(sq, 1)) or not (1 <= kb <= max(skv, 1)):
            raise VerifyException(
                f"sparse.attention: row_block {rb} and key_block {kb} must lie in [1, {sq}] and [1, {skv}]"
            )
        if fusion == "flat" and kb != skv:
            raise VerifyException(f"sparse.attention: flat fusion takes all {skv} keys at once, not key_block {kb}")

    def schedule(self) -> tuple[str, int, int] | None:
        """(fusion, row_block, key_block), or None for an unscheduled attention."""
        if self.fusion is None:
            return None
        return self.fusion.data, self.row_block.value.data, self.key_block.value.data


# ---------------------------------------------------------------------------
# butterfly structure (attnc.butterfly holds the math)


def _stage_weight_shape(n: int, radix: int, stride: int, block: int) -> tuple[int, int, int, int]:
    k = radix * block
    if radix < 1 or stride < 1 or block < 1 or n % (k * stride):
        raise VerifyException(f"radix {radix} x stride {stride} x block {block} does not divide the last dim {n}")
    return (n // (k * stride), stride, k, k)


@irdl_op_definition
class ButterflyStageOp(SparseOp):
    """One butterfly factor applied to the last axis: seen as ``[g, radix, stride, block]``,
    every ``(G, S)`` slice of ``radix·block`` values is multiplied by its own matrix
    ``w[G, S]`` (``attnc.butterfly.apply_stage``); ``w`` is ``[g, stride, radix·block,
    radix·block]``.

        %y = sparse.butterfly_stage %x, %w {radix = 2 : i64, stride = 4 : i64, block = 3 : i64} : tensor<16x48xf32>, tensor<2x4x6x6xf32> -> tensor<16x48xf32>
    """

    name = "sparse.butterfly_stage"
    input = operand_def(TensorType)
    weight = operand_def(TensorType)
    result = result_def(TensorType)
    radix = attr_def(IntegerAttr[I64])
    stride = attr_def(IntegerAttr[I64])
    block = attr_def(IntegerAttr[I64])
    traits = traits_def(Pure())
    assembly_format = "$input `,` $weight attr-dict `:` type($input) `,` type($weight) `->` type($result)"

    def __init__(self, x: SSAValue, w: SSAValue, radix: int, stride: int, block: int):
        super().__init__(
            operands=[x, w],
            result_types=[tensor(shape_of(x), elt_of(x))],
            attributes={k: IntegerAttr(v, 64) for k, v in (("radix", radix), ("stride", stride), ("block", block))},
        )

    def params(self) -> tuple[int, int, int]:
        return self.radix.value.data, self.stride.value.data, self.block.value.data

    def verify_op(self) -> None:
        shp = shape_of(self.input)
        if not shp:
            raise VerifyException("sparse.butterfly_stage needs an input of rank >= 1")
        _expect_shape(self, shape_of(self.weight), _stage_weight_shape(shp[-1], *self.params()))
        _expect_shape(self, shape_of(self.result), shp)
        _expect_same_elt(self, self.input, self.weight, self.result)


@irdl_op_definition
class ButterflyMatmulOp(SparseOp):
    """``x @ W`` for a square ``W`` given by its factors, the stages of ``structure`` (a
    ``#sparse.butterfly`` encoding) applied to the last axis one after the other (input
    index bit-reversed first when ``perm = "bitrev"``). A linear layer after
    butterfly-decompose; the back end expands it into a pipeline of stage kernels.

        %y = sparse.butterfly_matmul %x[%w0, %w1] {structure = #sparse.butterfly<kind = "monarch", factors = 2, block = 4, perm = "none">} : tensor<8x16xf32>[tensor<4x1x4x4xf32>, tensor<1x4x4x4xf32>] -> tensor<8x16xf32>
    """

    name = "sparse.butterfly_matmul"
    input = operand_def(TensorType)
    factors = var_operand_def(TensorType)
    result = result_def(TensorType)
    structure = attr_def(ButterflyEncodingAttr)
    traits = traits_def(Pure())
    assembly_format = (
        "$input `[` $factors `]` attr-dict `:` type($input) `[` type($factors) `]` `->` type($result)"
    )

    def __init__(self, x: SSAValue, factors: Sequence[SSAValue], structure: ButterflyEncodingAttr):
        super().__init__(
            operands=[x, list(factors)], result_types=[tensor(shape_of(x), elt_of(x))],
            attributes={"structure": structure},
        )  # fmt: skip

    def stages(self) -> list[bf.Stage]:
        st = self.structure
        return bf.stages(st.kind.data, shape_of(self.input)[-1], st.factors.data, st.block.data)

    def verify_op(self) -> None:
        shp = shape_of(self.input)
        if not shp:
            raise VerifyException("sparse.butterfly_matmul needs an input of rank >= 1")
        try:
            sts = self.stages()
        except bf.ButterflyError as e:
            raise VerifyException(str(e)) from None
        if len(self.factors) != len(sts):
            raise VerifyException(f"{self.structure} has {len(sts)} factors, got {len(self.factors)} operands")
        for i, (f, st) in enumerate(zip(self.factors, sts)):
            if shape_of(f) != st.weight_shape(shp[-1]):
                raise VerifyException(f"factor {i} must be {st.weight_shape(shp[-1])}, got {shape_of(f)}")
        _expect_shape(self, shape_of(self.result), shp)
        _expect_same_elt(self, self.input, *self.factors, self.result)


@irdl_op_definition
class FourierOp(SingleInputOp):
    """FNet token mixing: the real part of the discrete Fourier transform over ``axes``
    (``numpy.fft.fftn(x, axes=axes).real``). The back end expands it into complex
    butterfly stages.

        %y = sparse.fourier %x {axes = array<i64: -2, -1>} : tensor<1x16x8xf32> -> tensor<1x16x8xf32>
    """

    name = "sparse.fourier"
    axes = attr_def(DenseArrayBase)

    def __init__(self, x: SSAValue, axes: Sequence[int]):
        super().__init__(operands=[x], result_types=[x.type], attributes={"axes": i64_array(axes)})

    def verify_op(self) -> None:
        rank = len(shape_of(self.input))
        ax = [_norm_axis(a, rank, "sparse.fourier axis") for a in _ints(self.axes)]
        if not ax or len(set(ax)) != len(ax):
            raise VerifyException(f"sparse.fourier needs distinct axes, got {list(_ints(self.axes))}")
        if _is_int(elt_of(self.input)):
            raise VerifyException("sparse.fourier needs a floating-point input")
        _expect_shape(self, shape_of(self.result), shape_of(self.input))
        _expect_same_elt(self, self.input, self.result)


#: how a fused attention kernel walks its scores (see AttentionOp)
FUSIONS = ("flat", "online")

UNARY_OPS = [
    NegOp, AbsOp, ExpOp, LogOp, SqrtOp, RsqrtOp, ReciprocalOp, TanhOp, ErfOp, SigmoidOp, ReluOp, FloorOp,
    CeilOp, NotOp, IsNanOp, IsInfOp, GeluOp,
]  # fmt: skip
BINARY_OPS = [AddOp, SubOp, MulOp, DivOp, PowOp, MaxOp, MinOp, AndOp, OrOp, XorOp, CmpOp]

Sparse = Dialect(
    "sparse",
    [
        ConstantOp, ConvertOp, CastOp, *UNARY_OPS, *BINARY_OPS, WhereOp, MatmulOp, ContractOp, ReduceOp,
        SoftmaxOp, LogSoftmaxOp, LayerNormOp, TransposeOp, ReshapeOp, BroadcastOp, SliceOp, ConcatOp,
        GatherOp, PadOp, TriluOp, AttentionOp, ButterflyStageOp, ButterflyMatmulOp, FourierOp,
    ],  # fmt: skip
    ENCODINGS,
)

