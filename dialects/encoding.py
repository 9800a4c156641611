"""Tensor encodings of the `sparse` dialect.

An encoding sits in the encoding slot of a builtin ``tensor`` type and says which
values of the tensor may be non-zero (or kept) and how the tensor is stored:

    tensor<64x64xf32, #sparse.nm<n = 2, m = 4, axis = 1>>
    tensor<64x64xf32, #sparse.block<block = [16, 16], grid = [4, 4], layout = [1, 0, ...]>>
    tensor<256x256xf32, #sparse.butterfly<kind = "block", factors = 4, block = 16, perm = "none">>
    tensor<1x12x128x128xf32, #sparse.dynamic<mode = "topk", k = 32, axis = -1, fill = -inf>>
    tensor<64x64xf32, #sparse.compressed<levels = ["dense", "compressed"], pos = 32, crd = 32>>
    tensor<64x64xf32, #sparse.dense>

A value of an encoded tensor type is the dense value *projected* onto the encoding
(see ``attnc.dialects.values.project`` for the exact semantics each one has); the
reference interpreter applies that projection wherever ``sparse.convert`` asks for it.
All encodings share one textual form, ``<key = value, ...>``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from xdsl.dialects.builtin import ArrayAttr, FloatData, IntAttr, StringAttr
from xdsl.ir import Attribute, ParametrizedAttribute
from xdsl.irdl import irdl_attr_definition
from xdsl.parser import AttrParser
from xdsl.printer import Printer
from xdsl.utils.exceptions import VerifyException


def _fmt_float(x: float) -> str:
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return repr(float(x))


class SparseEncodingAttr(ParametrizedAttribute):
    """Base of every tensor encoding; parameters print as ``key = value``."""

    def print_parameters(self, printer: Printer) -> None:
        fields = [f for f, _ in type(self).get_irdl_definition().parameters]
        if not fields:
            return
        parts = []
        for f, p in zip(fields, self.parameters, strict=True):
            parts.append(f"{f} = {_print_value(p)}")
        printer.print_string("<" + ", ".join(parts) + ">")

    @classmethod
    def parse_parameters(cls, parser: AttrParser) -> Sequence[Attribute]:
        fields = [(f, c) for f, c in cls.get_irdl_definition().parameters]
        if not fields:
            return []
        values: dict[str, Attribute] = {}
        parser.parse_punctuation("<")
        while True:
            key = parser.parse_identifier(f" in {cls.name} (a parameter name)")
            parser.parse_punctuation("=")
            values[key] = _parse_value(parser)
            if parser.parse_optional_punctuation(",") is None:
                break
        parser.parse_punctuation(">")
        names = [f for f, _ in fields]
        unknown = set(values) - set(names)
        if unknown:
            parser.raise_error(f"{cls.name}: unknown parameter(s) {sorted(unknown)}; expected {names}")
        missing = [n for n in names if n not in values]
        if missing:
            parser.raise_error(f"{cls.name}: missing parameter(s) {missing}")
        return [values[n] for n in names]


def _print_value(p: Attribute) -> str:
    if isinstance(p, IntAttr):
        return str(p.data)
    if isinstance(p, FloatData):
        return _fmt_float(p.data)
    if isinstance(p, StringAttr):
        return f'"{p.data}"'
    if isinstance(p, ArrayAttr):
        return "[" + ", ".join(_print_value(x) for x in p.data) + "]"
    raise TypeError(f"unprintable encoding parameter {p}")


def _parse_value(parser: AttrParser) -> Attribute:
    if parser.parse_optional_punctuation("[") is not None:
        items: list[Attribute] = []
        if parser.parse_optional_punctuation("]") is None:
            while True:
                items.append(_parse_value(parser))
                if parser.parse_optional_punctuation(",") is None:
                    break
            parser.parse_punctuation("]")
        return ArrayAttr(items)
    if (s := parser.parse_optional_str_literal()) is not None:
        return StringAttr(s)
    neg = parser.parse_optional_punctuation("-") is not None
    if parser.parse_optional_keyword("inf") is not None:
        return FloatData(-math.inf if neg else math.inf)
    num = parser.parse_number()
    if neg:
        num = -num
    return FloatData(float(num)) if isinstance(num, float) else IntAttr(num)


def _ints(a: ArrayAttr) -> tuple[int, ...]:
    return tuple(x.data for x in a.data)  # type: ignore[attr-defined]


@irdl_attr_definition
class DenseEncodingAttr(SparseEncodingAttr):
    """Every element stored; the same as no encoding. ``#sparse.dense``"""

    name = "sparse.dense"


@irdl_attr_definition
class NMEncodingAttr(SparseEncodingAttr):
    """N:M structured sparsity: of every M consecutive elements along ``axis``, at
    most N are non-zero. ``#sparse.nm<n = 2, m = 4, axis = 1>``"""

    name = "sparse.nm"
    n: IntAttr
    m: IntAttr
    axis: IntAttr

    def __init__(self, n: int, m: int, axis: int = -1):
        super().__init__(IntAttr(n), IntAttr(m), IntAttr(axis))

    def verify(self) -> None:
        if not 0 < self.n.data <= self.m.data:
            raise VerifyException(f"#sparse.nm needs 0 < n <= m, got {self.n.data}:{self.m.data}")


@irdl_attr_definition
class ButterflyEncodingAttr(SparseEncodingAttr):
    """The matrix (last two dims, square) is a product of ``factors`` stages of a
    ``kind`` structure with blocks of ``block`` (``attnc.butterfly`` defines them):
    ``"block"``, the block butterfly of Dao et al. (size ``block · 2^L``, factor ``i``
    pairing blocks at stride ``2^i``, ``1 <= factors <= L``), or ``"monarch"`` (two
    block-diagonal factors, ``block x block`` then ``n/block x n/block``). ``perm =
    "bitrev"`` reverses the bits of the input index first.

        #sparse.butterfly<kind = "block", factors = 8, block = 3, perm = "none">
    """

    name = "sparse.butterfly"
    kind: StringAttr
    factors: IntAttr
    block: IntAttr
    perm: StringAttr

    def __init__(self, factors: int, block: int, perm: str = "none", kind: str = "block"):
        super().__init__(StringAttr(kind), IntAttr(factors), IntAttr(block), StringAttr(perm))

    def verify(self) -> None:
        if self.factors.data < 1 or self.block.data < 1:
            raise VerifyException("#sparse.butterfly needs factors >= 1 and block >= 1")
        if self.kind.data not in ("block", "monarch"):
            raise VerifyException(f'#sparse.butterfly kind must be "block" or "monarch", got "{self.kind.data}"')
        if self.kind.data == "monarch" and self.factors.data != 2:
            raise VerifyException(f"#sparse.butterfly: a Monarch matrix has 2 factors, got {self.factors.data}")
        if self.perm.data not in ("none", "bitrev"):
            raise VerifyException(f'#sparse.butterfly perm must be "none" or "bitrev", got "{self.perm.data}"')


@irdl_attr_definition
class BlockEncodingAttr(SparseEncodingAttr):
    """Block sparsity over the last two dims: a ``grid`` of ``block``-shaped tiles of
    which those with layout 1 (row-major over the grid) are stored.
    ``#sparse.block<block = [16, 16], grid = [2, 2], layout = [1, 0, 0, 1]>``"""

    name = "sparse.block"
    block: ArrayAttr[IntAttr]
    grid: ArrayAttr[IntAttr]
    layout: ArrayAttr[IntAttr]

    def __init__(self, block: Sequence[int], grid: Sequence[int], layout: Sequence[int]):
        super().__init__(
            ArrayAttr([IntAttr(x) for x in block]),
            ArrayAttr([IntAttr(x) for x in grid]),
            ArrayAttr([IntAttr(int(x)) for x in layout]),
        )

    def verify(self) -> None:
        b, g, lay = _ints(self.block), _ints(self.grid), _ints(self.layout)
        if len(b) != 2 or len(g) != 2 or min(b) < 1 or min(g) < 1:
            raise VerifyException("#sparse.block needs a 2-d block and a 2-d grid of positive sizes")
        if len(lay) != g[0] * g[1] or any(x not in (0, 1) for x in lay):
            raise VerifyException(f"#sparse.block layout must hold {g[0] * g[1]} entries of 0 or 1, got {len(lay)}")


@irdl_attr_definition
class DynamicMaskEncodingAttr(SparseEncodingAttr):
    """A mask chosen at run time along ``axis``: ``mode = "topk"`` keeps the ``k``
    largest values, ``mode = "threshold"`` keeps values >= ``threshold``; the others
    become ``fill`` (``-inf`` for attention scores, 0 for activations).
    ``#sparse.dynamic<mode = "topk", k = 32, threshold = 0.0, axis = -1, fill = -inf>``"""

    name = "sparse.dynamic"
    mode: StringAttr
    k: IntAttr
    threshold: FloatData
    axis: IntAttr
    fill: FloatData

    def __init__(self, mode: str, k: int = 0, threshold: float = 0.0, axis: int = -1, fill: float = 0.0):
        super().__init__(StringAttr(mode), IntAttr(k), FloatData(threshold), IntAttr(axis), FloatData(fill))

    def verify(self) -> None:
        if self.mode.data not in ("topk", "threshold"):
            raise VerifyException(f'#sparse.dynamic mode must be "topk" or "threshold", got "{self.mode.data}"')
        if self.mode.data == "topk" and self.k.data < 1:
            raise VerifyException("#sparse.dynamic topk needs k >= 1")


COMPRESSED_LEVELS = ("dense", "compressed", "singleton")


@irdl_attr_definition
class CompressedEncodingAttr(SparseEncodingAttr):
    """Per-dimension storage levels in the CSR/CSF family (``dense``, ``compressed``,
    ``singleton``) with position/coordinate bit widths. Values are unchanged; only the
    storage differs. ``#sparse.compressed<levels = ["dense", "compressed"], pos = 32, crd = 32>``"""

    name = "sparse.compressed"
    levels: ArrayAttr[StringAttr]
    pos: IntAttr
    crd: IntAttr

    def __init__(self, levels: Sequence[str], pos: int = 32, crd: int = 32):
        super().__init__(ArrayAttr([StringAttr(x) for x in levels]), IntAttr(pos), IntAttr(crd))

    def level_names(self) -> tuple[str, ...]:
        return tuple(x.data for x in self.levels.data)

    def verify(self) -> None:
        for lv in self.level_names():
            if lv not in COMPRESSED_LEVELS:
                raise VerifyException(f"#sparse.compressed level must be one of {COMPRESSED_LEVELS}, got {lv!r}")
        for w in (self.pos.data, self.crd.data):
            if w not in (0, 8, 16, 32, 64):
                raise VerifyException(f"#sparse.compressed bit widths must be 0, 8, 16, 32 or 64, got {w}")


ENCODINGS = [
    DenseEncodingAttr,
    NMEncodingAttr,
    ButterflyEncodingAttr,
    BlockEncodingAttr,
    DynamicMaskEncodingAttr,
    CompressedEncodingAttr,
]


def verify_encoding_for_shape(enc: Attribute, shape: Sequence[int]) -> None:
    """Check that ``enc`` can describe a tensor of ``shape``."""
    rank = len(shape)
    if isinstance(enc, NMEncodingAttr):
        ax = enc.axis.data
        if not -rank <= ax < rank:
            raise VerifyException(f"#sparse.nm axis {ax} out of range for rank {rank}")
        if shape[ax] % enc.m.data:
            raise VerifyException(f"#sparse.nm: dim {ax} of size {shape[ax]} is not a multiple of m={enc.m.data}")
    elif isinstance(enc, BlockEncodingAttr):
        if rank < 2:
            raise VerifyException("#sparse.block needs a tensor of rank >= 2")
        b, g = _ints(enc.block), _ints(enc.grid)
        if (shape[-2], shape[-1]) != (b[0] * g[0], b[1] * g[1]):
            raise VerifyException(
                f"#sparse.block: grid {g[0]}x{g[1]} of {b[0]}x{b[1]} blocks does not tile {shape[-2]}x{shape[-1]}"
            )
    elif isinstance(enc, ButterflyEncodingAttr):
        if rank < 2 or shape[-1] != shape[-2]:
            raise VerifyException("#sparse.butterfly needs square matrices in the last two dims")
        n, bs, f = shape[-1], enc.block.data, enc.factors.data
        if enc.kind.data == "monarch":
            if n % bs:
                raise VerifyException(f"#sparse.butterfly: Monarch block {bs} does not divide size {n}")
        elif n % bs or (n // bs) & (n // bs - 1):
            raise VerifyException(f"#sparse.butterfly: size {n} is not block {bs} times a power of two")
        elif f > max((n // bs).bit_length() - 1, 1):
            raise VerifyException(
                f"#sparse.butterfly: a size-{n} butterfly with block {bs} has at most "
                f"{max((n // bs).bit_length() - 1, 1)} factors, got {f}"
            )
    elif isinstance(enc, DynamicMaskEncodingAttr):
        ax = enc.axis.data
        if not -rank <= ax < rank:
            raise VerifyException(f"#sparse.dynamic axis {ax} out of range for rank {rank}")
        if enc.mode.data == "topk" and enc.k.data > shape[ax]:
            raise VerifyException(f"#sparse.dynamic topk k={enc.k.data} exceeds dim size {shape[ax]}")
    elif isinstance(enc, CompressedEncodingAttr):
        if len(enc.levels.data) != rank:
            raise VerifyException(f"#sparse.compressed has {len(enc.levels.data)} levels for a rank-{rank} tensor")
