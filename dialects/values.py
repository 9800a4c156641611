"""Exact numeric meaning of the tensor encodings, and numpy <-> IR constants.

``project(x, enc)`` is what a value of type ``tensor<..., enc>`` holds when the dense
value ``x`` is converted to it (``sparse.convert``):

- dense, compressed: ``x`` unchanged (compressed only changes storage).
- N:M along ``axis``: in each group of M consecutive elements keep the N of largest
  magnitude (ties go to the lower index), zero the rest.
- block: zero every block whose layout entry is 0.
- dynamic top-k along ``axis``: keep the k largest values (ties to the lower index),
  the rest become ``fill``; threshold: keep values >= threshold, the rest ``fill``.
- butterfly: each matrix projected onto the structure (``attnc.butterfly.project``):
  Monarch by the closed-form blockwise rank-1 SVD (the Frobenius-nearest one), block
  butterflies by the hierarchical SVD split (exact on butterfly matrices; the
  butterfly-decompose pass can refine it further by iteration).
"""

from __future__ import annotations

import numpy as np
from xdsl.dialects.builtin import (
    BFloat16Type,
    BytesAttr,
    DenseIntOrFPElementsAttr,
    Float16Type,
    Float32Type,
    Float64Type,
    IntegerType,
    Signedness,
    TensorType,
)
from xdsl.ir import Attribute

from attnc import butterfly as bf
from attnc.dialects.encoding import (
    BlockEncodingAttr,
    ButterflyEncodingAttr,
    CompressedEncodingAttr,
    DenseEncodingAttr,
    DynamicMaskEncodingAttr,
    NMEncodingAttr,
)


class EncodingError(ValueError):
    """A value cannot be put in an encoding."""


# ---------------------------------------------------------------------------
# element types

_NP_OF_FLOAT = {Float16Type: np.float16, Float32Type: np.float32, Float64Type: np.float64}


def np_dtype(elt: Attribute) -> np.dtype:
    """numpy dtype that holds values of an IR element type (bf16 computes in f32)."""
    for cls, dt in _NP_OF_FLOAT.items():
        if isinstance(elt, cls):
            return np.dtype(dt)
    if isinstance(elt, BFloat16Type):
        return np.dtype(np.float32)
    if isinstance(elt, IntegerType):
        w = elt.width.data
        if w == 1:
            return np.dtype(np.bool_)
        unsigned = elt.signedness.data == Signedness.UNSIGNED
        return np.dtype(f"{'u' if unsigned else ''}int{w}")
    raise EncodingError(f"no numpy type for element type {elt}")


def elt_type(dtype: np.dtype | type) -> Attribute:
    """IR element type of a numpy dtype."""
    dt = np.dtype(dtype)
    if dt == np.bool_:
        return IntegerType(1)
    if dt.kind == "f":
        return {2: Float16Type(), 4: Float32Type(), 8: Float64Type()}[dt.itemsize]
    if dt.kind in "iu":
        return IntegerType(dt.itemsize * 8, Signedness.UNSIGNED if dt.kind == "u" else Signedness.SIGNLESS)
    raise EncodingError(f"unsupported numpy dtype {dt}")


def to_numpy(attr: DenseIntOrFPElementsAttr) -> np.ndarray:
    """The value of a dense elements attribute as a numpy array."""
    ty = attr.get_type()
    assert isinstance(ty, TensorType)
    elt = ty.element_type
    shape = tuple(ty.get_shape())
    raw = attr.data.data
    if isinstance(elt, BFloat16Type):
        arr = (np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        dt = arr.dtype
    elif isinstance(elt, IntegerType) and elt.width.data == 1:
        arr = np.frombuffer(raw, dtype=np.int8) != 0
        dt = arr.dtype
    else:
        dt = np_dtype(elt)
        arr = np.frombuffer(raw, dtype=dt.newbyteorder("<"))
    if arr.size == 1 and int(np.prod(shape)) != 1:
        arr = np.broadcast_to(arr, shape)  # a splat
    return arr.reshape(shape).astype(dt, copy=False)


def from_numpy(x: np.ndarray, elt: Attribute | None = None) -> DenseIntOrFPElementsAttr:
    """A dense elements attribute holding ``x`` (as element type ``elt`` if given)."""
    x = np.asarray(x)
    elt = elt or elt_type(x.dtype)
    ty = TensorType(elt, list(x.shape))
    if isinstance(elt, BFloat16Type):
        f = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
        raw = ((f + 0x7FFF + ((f >> 16) & 1)) >> 16).astype("<u2").tobytes()  # round to nearest even
    elif isinstance(elt, IntegerType) and elt.width.data == 1:
        raw = np.ascontiguousarray(x, dtype=np.int8).tobytes()
    else:
        raw = np.ascontiguousarray(x, dtype=np_dtype(elt).newbyteorder("<")).tobytes()
    return DenseIntOrFPElementsAttr(ty, BytesAttr(raw))


# ---------------------------------------------------------------------------
# projections


def _nm(x: np.ndarray, n: int, m: int, axis: int) -> np.ndarray:
    xm = np.moveaxis(x, axis, -1)
    g = xm.reshape(*xm.shape[:-1], xm.shape[-1] // m, m)
    # stable sort on -|x| keeps the lower index on ties
    order = np.argsort(-np.abs(g), axis=-1, kind="stable")
    keep = np.zeros(g.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :n], True, axis=-1)
    out = np.where(keep, g, np.zeros((), dtype=x.dtype)).reshape(xm.shape)
    return np.moveaxis(out, -1, axis)


def _block(x: np.ndarray, enc: BlockEncodingAttr) -> np.ndarray:
    bh, bw = (a.data for a in enc.block.data)
    gh, gw = (a.data for a in enc.grid.data)
    lay = np.array([a.data for a in enc.layout.data], dtype=bool).reshape(gh, gw)
    mask = np.kron(lay, np.ones((bh, bw), dtype=bool))
    return np.where(mask, x, np.zeros((), dtype=x.dtype))


def _dynamic(x: np.ndarray, enc: DynamicMaskEncodingAttr) -> np.ndarray:
    axis = enc.axis.data
    fill = np.asarray(enc.fill.data).astype(x.dtype)
    if enc.mode.data == "threshold":
        return np.where(x >= enc.threshold.data, x, fill)
    k = enc.k.data
    xm = np.moveaxis(x, axis, -1)
    order = np.argsort(-xm, axis=-1, kind="stable")
    keep = np.zeros(xm.shape, dtype=bool)
    np.put_along_axis(keep, order[..., :k], True, axis=-1)
    return np.moveaxis(np.where(keep, xm, fill), -1, axis)


def project(x: np.ndarray, enc: Attribute | None) -> np.ndarray:
    """The value ``x`` takes in encoding ``enc`` (see the module docstring)."""
    if enc is None or isinstance(enc, (DenseEncodingAttr, CompressedEncodingAttr)):
        return x
    if isinstance(enc, NMEncodingAttr):
        return _nm(x, enc.n.data, enc.m.data, enc.axis.data)
    if isinstance(enc, BlockEncodingAttr):
        return _block(x, enc)
    if isinstance(enc, DynamicMaskEncodingAttr):
        return _dynamic(x, enc)
    if isinstance(enc, ButterflyEncodingAttr):
        return _butterfly(x, enc)
    return x  # an encoding of another dialect: no value semantics known here


def _butterfly(x: np.ndarray, enc: ButterflyEncodingAttr) -> np.ndarray:
    n = x.shape[-1]
    perm = bitrev_permutation(n) if enc.perm.data == "bitrev" else None
    src = x.astype(np.float64).reshape(-1, n, n)
    out = np.empty_like(src)
    for i, m in enumerate(src):
        if perm is not None:
            m = m[perm]  # x @ W with x bit-reversed first: W's rows in bit-reversed order
        try:
            fit = bf.project(m, enc.kind.data, enc.factors.data, enc.block.data)
        except bf.ButterflyError as e:
            raise EncodingError(f"#sparse.butterfly: {e}") from None
        dense = bf.matrix(fit.weights, fit.stages, n)
        out[i] = dense[np.argsort(perm)] if perm is not None else dense
    return out.reshape(x.shape).astype(x.dtype)


def bitrev_permutation(n: int) -> np.ndarray:
    bits = max(n - 1, 1).bit_length()
    idx = np.arange(n)
    rev = np.zeros(n, dtype=np.int64)
    for b in range(bits):
        rev |= ((idx >> b) & 1) << (bits - 1 - b)
    return rev
