"""The numpy meaning of every bitstream opcode, for the functional simulator.

A bitstream body is a list of ``Instr(opcode, operands, results, params)``; ``params`` holds the op's
attributes plus ``dtype`` and ``shape`` of its result. These implementations follow the semantics
written in the ``sparse`` dialect's docstrings, re-implemented here on purpose: the simulator must
depend on the bitstream alone, never on compiler modules, so that a bitstream is a real contract.

Each op computes in its operands' numpy dtype and rounds its result to the result's dtype; bf16
(which numpy lacks) is held in float32 and rounded to bf16 after every op, as the reference interpreter
does. The ops that accumulate -- matmul, contract, butterfly_stage, attention, layer_norm and the
sum/mean/prod reductions -- keep their accumulators and running statistics in f32 when the operands are
f16 or bf16 (:func:`wide`), as a MAC array and a softmax unit do, and round once, at their result
(docs/simulator.md, "Functional model"). Inside a kernel the simulator holds f16 values in f32 between
instructions (``functional.run_context``), so a GEMM's epilogue works on the accumulator and a softmax
kernel keeps its max and sum in f32.
"""

from __future__ import annotations

import math
import string
from collections.abc import Callable
from typing import Any

import numpy as np

from attnc.errors import AttncError


class SimulationError(AttncError):
    """A bitstream the functional simulator cannot execute; the message names the kernel and op."""


# ---------------------------------------------------------------------------
# dtypes

_FLOATS = {"f16": np.float16, "f32": np.float32, "f64": np.float64, "bf16": np.float32}


def np_dtype(name: str) -> np.dtype:
    """numpy dtype holding values of a bitstream dtype name ("f32", "i64", "ui8", "i1", "bf16", ...)."""
    if name in _FLOATS:
        return np.dtype(_FLOATS[name])
    if name == "i1":
        return np.dtype(np.bool_)
    for prefix, kind in (("ui", "uint"), ("si", "int"), ("i", "int")):
        if name.startswith(prefix) and name[len(prefix) :].isdigit():
            width = int(name[len(prefix) :])
            if width in (8, 16, 32, 64):
                return np.dtype(f"{kind}{width}")
            break
    raise SimulationError(f"dtype '{name}' is not supported by the simulator")


def wide(dt: np.dtype) -> np.dtype:
    """The dtype a value of dtype ``dt`` is accumulated and held in inside an op or a kernel: f32 for
    f16 (bf16 is held in f32 already), the dtype itself otherwise (f32, f64, integers, bool)."""
    dt = np.dtype(dt)
    return np.dtype(np.float32) if dt == np.float16 else dt


def widened(*xs: np.ndarray) -> list[np.ndarray]:
    """The operands in the dtype they accumulate in: numpy's promotion of theirs, widened by :func:`wide`."""
    w = wide(np.result_type(*xs))
    return [np.asarray(x).astype(w, copy=False) for x in xs]


def storage_bytes(name: str) -> int:
    """Bytes per element in DRAM and in the CONSTANTS section (i1: one byte, bf16: two)."""
    if name == "bf16":
        return 2
    return np_dtype(name).itemsize


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    f = np.array(x, dtype=np.float32, order="C")
    u = f.view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    return np.where(np.isnan(f), f, rounded.view(np.float32))


def from_bytes(raw: bytes | memoryview, dtype: str, shape: list[int]) -> np.ndarray:
    """A dense little-endian payload as an array (bf16: the upper halves of float32)."""
    n = math.prod(shape)
    size = storage_bytes(dtype)
    if len(raw) != n * size:
        raise SimulationError(f"{len(raw)} bytes cannot hold {dtype}{list(shape)} ({n * size} bytes)")
    if dtype == "bf16":
        half = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return half.view(np.float32).reshape(shape)
    if dtype == "i1":
        return (np.frombuffer(raw, dtype=np.uint8) != 0).reshape(shape)
    return np.frombuffer(raw, dtype=np_dtype(dtype).newbyteorder("<")).astype(np_dtype(dtype)).reshape(shape)


def to_bytes(x: np.ndarray, dtype: str) -> bytes:
    """The dense little-endian payload of an array of bitstream dtype ``dtype``."""
    if dtype == "bf16":
        return (round_bf16(x).view(np.uint32) >> 16).astype("<u2").tobytes()
    if dtype == "i1":
        return np.asarray(x, dtype=np.bool_).astype(np.uint8).tobytes()
    return np.ascontiguousarray(x, dtype=np_dtype(dtype).newbyteorder("<")).tobytes()


def stored(x: Any, dtype: str) -> np.ndarray:
    """A value rounded to bitstream dtype ``dtype``, as a stream, a buffer or DRAM holds it."""
    with np.errstate(invalid="ignore", over="ignore"):
        out = np.asarray(x).astype(np_dtype(dtype), copy=False)
    return round_bf16(out) if dtype == "bf16" else out


def finish(x: Any, params: dict[str, Any], held: bool = False) -> np.ndarray:
    """Cast a computed value to the result's dtype and shape named in ``params``. ``held``: to the dtype a
    kernel holds that result in between instructions (``wide``: f16 and bf16 stay in f32, unrounded)."""
    dtype, shape = params.get("dtype"), params.get("shape")
    if not isinstance(dtype, str) or not isinstance(shape, list):
        raise SimulationError("the instruction's params lack its result 'dtype' and 'shape'")
    if held:
        with np.errstate(invalid="ignore", over="ignore"):
            out = np.asarray(x).astype(wide(np_dtype(dtype)), copy=False)
    else:
        out = stored(x, dtype)
    want = tuple(int(d) for d in shape)
    if out.shape != want:
        try:
            out = np.broadcast_to(out, want)
        except ValueError:
            raise SimulationError(f"computed shape {list(out.shape)}, the params say {list(want)}") from None
    return out


# ---------------------------------------------------------------------------
# the opcodes

Impl = Callable[[list[np.ndarray], dict[str, Any]], Any]
OPS: dict[str, Impl] = {}


def op(*names: str) -> Callable[[Impl], Impl]:
    def register(fn: Impl) -> Impl:
        for n in names:
            OPS[n] = fn
        return fn

    return register


def _ints(params: dict[str, Any], key: str) -> list[int]:
    v = params.get(key)
    if isinstance(v, int) and not isinstance(v, bool):
        return [v]
    if not isinstance(v, list) or not all(isinstance(i, int) for i in v):
        raise SimulationError(f"param '{key}' must be a list of integers, got {v!r}")
    return [int(i) for i in v]


def _int(params: dict[str, Any], key: str, default: int | None = None) -> int:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, int):
        raise SimulationError(f"param '{key}' must be an integer, got {v!r}")
    return v


def _float(params: dict[str, Any], key: str, default: float | None = None) -> float:
    v = params.get(key, default)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise SimulationError(f"param '{key}' must be a number, got {v!r}")
    return float(v)


def _str(params: dict[str, Any], key: str, default: str | None = None) -> str:
    v = params.get(key, default)
    if not isinstance(v, str):
        raise SimulationError(f"param '{key}' must be a string, got {v!r}")
    return v


def _flag(params: dict[str, Any], key: str) -> bool:
    # unit attributes travel as 1 when present and are absent otherwise
    return bool(params.get(key, 0))


def _erf(x: np.ndarray) -> np.ndarray:
    return np.frompyfunc(math.erf, 1, 1)(x.astype(np.float64)).astype(np.float64)


_UNARY: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "neg": np.negative,
    "abs": np.abs,
    "exp": np.exp,
    "log": np.log,
    "sqrt": np.sqrt,
    "rsqrt": lambda x: 1 / np.sqrt(x),
    "reciprocal": lambda x: 1 / x,
    "tanh": np.tanh,
    "erf": _erf,
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "relu": lambda x: np.maximum(x, np.zeros((), x.dtype)),
    "floor": np.floor,
    "ceil": np.ceil,
    "not": np.logical_not,
    "isnan": np.isnan,
    "isinf": np.isinf,
}


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        q = np.abs(a) // np.where(b == 0, 1, np.abs(b))
        return np.where((a < 0) != (b < 0), -q, q)  # truncates toward zero, as ONNX Div does
    return a / b


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return np.power(a.astype(np.float64), b).astype(a.dtype)
    return np.power(a, b)


_BINARY: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "add": np.add,
    "sub": np.subtract,
    "mul": np.multiply,
    "div": _int_div,
    "pow": _pow,
    "max": np.maximum,
    "min": np.minimum,
    "and": np.logical_and,
    "or": np.logical_or,
    "xor": np.logical_xor,
}
_CMP = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal}


def _arity(args: list[np.ndarray], n: int, name: str) -> None:
    if len(args) != n:
        raise SimulationError(f"'{name}' takes {n} operand(s), got {len(args)}")


for _name, _fn in _UNARY.items():

    def _unary(args: list[np.ndarray], params: dict[str, Any], _fn=_fn, _name=_name) -> Any:
        _arity(args, 1, _name)
        return _fn(args[0])

    OPS[_name] = _unary

for _name, _fn in _BINARY.items():

    def _binary(args: list[np.ndarray], params: dict[str, Any], _fn=_fn, _name=_name) -> Any:
        _arity(args, 2, _name)
        return _fn(args[0], args[1])

    OPS[_name] = _binary


@op("cmp")
def _cmp(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 2, "cmp")
    pred = _str(params, "predicate")
    if pred not in _CMP:
        raise SimulationError(f"cmp predicate '{pred}' is not one of {sorted(_CMP)}")
    return _CMP[pred](args[0], args[1])


@op("where")
def _where(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 3, "where")
    return np.where(args[0], args[1], args[2])


@op("gelu")
def _gelu(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "gelu")
    x = args[0].astype(np.float64)
    if params.get("approximate") == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


@op("cast")
def _cast(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "cast")
    x, dt = args[0], np_dtype(_str(params, "dtype"))
    if dt == np.bool_:
        return x != 0
    if dt.kind in "iu" and x.dtype.kind == "f":
        return np.trunc(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)).astype(dt)
    return x.astype(dt)


@op("convert")
def _convert(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    # Bodies carry dense values; a change of encoding does not change a dense value. Sparse
    # encodings (projections such as N:M pruning) are not emitted into bitstreams yet.
    _arity(args, 1, "convert")
    return args[0]


@op("matmul")
def _matmul(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 2, "matmul")
    return np.matmul(*widened(args[0], args[1]))


def parse_einsum(equation: str, shapes: list[tuple[int, ...]]) -> tuple[list[str], str]:
    """Explicit per-operand index strings and the output string of an einsum (with ``...``)."""
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    ins = lhs.split(",")
    if len(ins) != len(shapes):
        raise SimulationError(f"einsum '{equation}' names {len(ins)} operands, got {len(shapes)}")
    used = set(c for c in eq if c.isalpha())
    spare = [c for c in string.ascii_letters if c not in used]
    ell_rank = max((len(s) - (len(spec) - 3) for spec, s in zip(ins, shapes) if "..." in spec), default=0)
    ell = "".join(spare[:ell_rank])
    explicit = []
    for spec, shp in zip(ins, shapes):
        if "..." in spec:
            n = len(shp) - (len(spec) - 3)
            spec = spec.replace("...", ell[ell_rank - n :] if n >= 0 else "?")
        if not all(c.isalpha() for c in spec) or len(spec) != len(shp):
            raise SimulationError(f"einsum operand '{spec}' does not fit shape {tuple(shp)}")
        explicit.append(spec)
    if not arrow:
        counts = {c: sum(s.count(c) for s in explicit) for c in set("".join(explicit))}
        out = ell + "".join(sorted(c for c in counts if counts[c] == 1 and c not in ell))
    else:
        out = out.replace("...", ell)
    return explicit, out


@op("contract")
def _contract(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    ins, out = parse_einsum(_str(params, "equation"), [a.shape for a in args])
    return np.einsum(",".join(ins) + "->" + out, *(widened(*args) if args else args), optimize=len(args) > 2)


@op("butterfly_stage")
def _butterfly_stage(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    """The last axis seen as [groups, radix, stride, block]; each (group, stride position) mixes its
    radix x block values through its own matrix (docs/simulator.md)."""
    _arity(args, 2, "butterfly_stage")
    x, w = args
    r, s, e = _int(params, "radix"), _int(params, "stride"), _int(params, "block")
    n = x.shape[-1]
    if r < 1 or s < 1 or e < 1 or n % (r * s * e) or w.shape != (n // (r * s * e), s, r * e, r * e):
        raise SimulationError(f"butterfly_stage: weights {w.shape} do not fit radix {r}, stride {s}, block {e} of {n}")
    g = n // (r * s * e)
    acc = wide(x.dtype)
    xs = x.reshape(*x.shape[:-1], g, r, s, e).astype(acc, copy=False)
    ws = w.reshape(g, s, r, e, r, e).astype(acc, copy=False)
    return np.einsum("gsabcd,...gcsd->...gasb", ws, xs).reshape(x.shape)


_REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


@op("reduce")
def _reduce(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "reduce")
    x, kind = args[0], _str(params, "kind")
    if kind not in _REDUCE:
        raise SimulationError(f"reduce kind '{kind}' is not one of {sorted(_REDUCE)}")
    axes = tuple(_ints(params, "axes"))
    if not axes:
        return x
    if x.size == 0 and kind in ("max", "min"):  # the identity of an empty max/min is -inf/+inf
        return np.full(_ints(params, "shape"), -np.inf if kind == "max" else np.inf)
    if kind in ("sum", "mean", "prod"):  # an accumulator: f32 for f16
        x = x.astype(wide(x.dtype), copy=False)
    return _REDUCE[kind](x, axis=axes, keepdims=_flag(params, "keepdims"))


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` in ``x``'s dtype (ONNX's reference does the same; a softmax kernel gets its
    operand held in f32); a slice that is -inf everywhere gives zeros."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isneginf(m), 0, m)
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(s == 0, 1, s)


@op("softmax")
def _softmax(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "softmax")
    return softmax(args[0], _int(params, "axis"))


@op("log_softmax")
def _log_softmax(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "log_softmax")
    x, ax = args[0], _int(params, "axis")
    m = np.max(x, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return x - m - np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True))


@op("layer_norm")
def _layer_norm(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    if len(args) not in (2, 3):
        raise SimulationError(f"'layer_norm' takes 2 or 3 operands, got {len(args)}")
    args = widened(*args)  # mean and variance in f32 for f16 (ONNX's stash_type)
    x = args[0]
    ax = _int(params, "axis") % max(x.ndim, 1)
    axes = tuple(range(ax, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.asarray(_float(params, "epsilon"), dtype=x.dtype)) * args[1]
    return y + args[2] if len(args) > 2 else y


@op("transpose")
def _transpose(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "transpose")
    return np.transpose(args[0], _ints(params, "permutation"))


@op("reshape")
def _reshape(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "reshape")
    return np.reshape(args[0], _ints(params, "shape"))


@op("broadcast")
def _broadcast(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "broadcast")
    return np.broadcast_to(args[0], _ints(params, "shape"))


@op("slice")
def _slice(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "slice")
    idx = []
    for s, e, st in zip(_ints(params, "starts"), _ints(params, "ends"), _ints(params, "steps"), strict=True):
        if st == 0:
            raise SimulationError("slice step 0")
        idx.append(slice(s, None if (st < 0 and e == -1) else e, st))
    return args[0][tuple(idx)]


@op("concat")
def _concat(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    return np.concatenate(args, axis=_int(params, "axis"))


@op("gather")
def _gather(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 2, "gather")
    data, idx = args
    ax = _int(params, "axis")
    n = data.shape[ax]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise SimulationError(f"gather: an index is out of range for axis {ax} of size {n}")
    return np.take(data, idx.astype(np.int64), axis=ax)


@op("pad")
def _pad(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "pad")
    pads, r = _ints(params, "pads"), args[0].ndim
    if len(pads) != 2 * r or min(pads, default=0) < 0:
        raise SimulationError(f"pad needs {2 * r} non-negative pads, got {pads}")
    # the pad value travels as 'pad_value' if the emitter names it so; 0 otherwise (see report)
    value = _float(params, "pad_value", _float(params, "value", 0.0))
    return np.pad(args[0], [(pads[i], pads[i + r]) for i in range(r)], constant_values=value)


@op("trilu")
def _trilu(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    _arity(args, 1, "trilu")
    k = _int(params, "k", 0)
    return np.triu(args[0], k) if _flag(params, "upper") else np.tril(args[0], k)


def _attention_operands(q, k, v, mask, *, causal: bool, causal_offset: int):
    """(q, k, v in the accumulator dtype with kv heads repeated for GQA, the additive bias of the mask and
    the causal rule in that dtype)."""
    if q.ndim != 4 or k.ndim != 4 or v.ndim != 4:
        raise SimulationError("attention: q, k and v must be 4-d (batch, heads, seq, head_dim)")
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        if hkv == 0 or hq % hkv:
            raise SimulationError(f"attention: {hq} query heads do not divide into {hkv} kv heads")
        k = np.repeat(k, hq // hkv, axis=1)
        v = np.repeat(v, hq // hkv, axis=1)
    q, k, v = widened(q, k, v)
    acc = q.dtype
    sq, skv = q.shape[-2], k.shape[-2]
    bias = np.zeros((sq, skv), dtype=acc)
    if mask is not None:
        bias = bias + (np.where(mask, 0, -np.inf).astype(acc) if mask.dtype == np.bool_ else mask.astype(acc))
    if causal:
        i = np.arange(sq)[:, None]
        j = np.arange(skv)[None, :]
        bias = bias + np.where(j <= i + causal_offset, 0, -np.inf).astype(acc)
    return q, k, v, bias


def _scores(q, k, scale: float, softcap: float) -> np.ndarray:
    # the scale multiplies the f32 accumulator of Q·Kᵀ (one rounding, at the attention's result)
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(scale, dtype=q.dtype)
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    return s


def attention(q, k, v, mask, *, scale: float, causal: bool, causal_offset: int, softcap: float) -> np.ndarray:
    """Scaled dot-product attention as the ``sparse.attention`` docstring defines it: GQA head
    sharing, softcap, i1 or additive mask, causal offset, rows masked everywhere give zeros
    (the 3-pass softmax per row: what ``fusion = "flat"`` and an op without ``fusion`` compute).
    Scores, softmax statistics, probabilities and the output accumulate in ``wide(q.dtype)`` (f32
    for f16); ``execute`` rounds the output once."""
    q, k, v, bias = _attention_operands(q, k, v, mask, causal=causal, causal_offset=causal_offset)
    s = _scores(q, k, scale, softcap)
    p = softmax(s + bias, -1)
    dead = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    p = np.where(dead, np.zeros((), p.dtype), p)
    return np.matmul(p, v)


def online_attention(q, k, v, mask, *, scale: float, causal: bool, causal_offset: int, softcap: float,
                     key_block: int) -> np.ndarray:  # fmt: skip
    """The same attention as a 1-pass cascade over blocks of ``key_block`` keys (``fusion = "online"``,
    FuseMax): a running row maximum ``m``, a running denominator ``l`` and a running output ``acc`` are
    rescaled by ``exp(m_old - m_new)`` at each block, and ``acc / l`` is the result; a row whose keys are
    all masked (``l == 0``) gives zeros. ``m``, ``l``, ``acc`` and each block's scores and weights are
    held in ``wide(q.dtype)`` (f32 for f16), block by block; ``execute`` rounds ``acc / l`` once."""
    if key_block < 1:
        raise SimulationError(f"attention: key_block must be at least 1, got {key_block}")
    q, k, v, bias = _attention_operands(q, k, v, mask, causal=causal, causal_offset=causal_offset)
    dt = q.dtype
    t = k.shape[-2]
    rows = np.broadcast_shapes(q.shape[:-1], bias.shape[:-1])
    m = np.full(rows + (1,), -np.inf, dtype=dt)
    l = np.zeros(rows + (1,), dtype=dt)
    acc = np.zeros(rows + (v.shape[-1],), dtype=dt)
    zero = np.zeros((), dt)
    for j0 in range(0, t, key_block):
        j1 = min(t, j0 + key_block)
        s = _scores(q, k[..., j0:j1, :], scale, softcap) + bias[..., j0:j1]
        m_new = np.maximum(m, np.max(s, axis=-1, keepdims=True))
        unseen = np.isneginf(m_new)  # every key so far masked: nothing to rescale, nothing to add
        safe = np.where(unseen, zero, m_new)
        corr = np.where(unseen, zero, np.exp(m - safe))
        p = np.where(unseen, zero, np.exp(s - safe))
        l = l * corr + np.sum(p, axis=-1, keepdims=True)
        acc = acc * corr + np.matmul(p, v[..., j0:j1, :])
        m = m_new
    dead = l == 0
    return np.where(dead, zero, acc / np.where(dead, np.ones((), dt), l))


@op("attention")
def _attention(args: list[np.ndarray], params: dict[str, Any]) -> Any:
    if len(args) not in (3, 4):
        raise SimulationError(f"'attention' takes 3 or 4 operands, got {len(args)}")
    common = dict(
        scale=_float(params, "scale"),
        causal=_flag(params, "causal"),
        causal_offset=_int(params, "causal_offset", 0),
        softcap=_float(params, "softcap", 0.0),
    )
    mask = args[3] if len(args) > 3 else None
    fusion = params.get("fusion", "flat")
    if fusion == "flat":  # row blocks do not change the numbers
        return attention(*args[:3], mask, **common)
    if fusion == "online":
        return online_attention(*args[:3], mask, key_block=_int(params, "key_block"), **common)
    raise SimulationError(f"attention: fusion {fusion!r} is not one of 'flat', 'online'")


#: opcodes whose meaning is a rounding to their result dtype, inside a kernel too
ROUNDING = frozenset({"cast", "convert", "constant"})


def execute(opcode: str, args: list[np.ndarray], params: dict[str, Any], in_kernel: bool = False) -> np.ndarray:
    """One instruction: its result, cast to the dtype and shape its params name. ``in_kernel``: as a
    kernel holds it for its next instruction -- f16 in f32 unrounded, except after a cast or convert,
    which round to their dtype (a context's output ports round, ``functional.run_context``)."""
    fn = OPS.get(opcode)
    if fn is None:
        raise SimulationError(f"unknown opcode '{opcode}'")
    try:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            if in_kernel and opcode not in ROUNDING:
                return finish(fn(args, params), params, held=True)
            x = finish(fn(args, params), params)
            return x.astype(wide(x.dtype), copy=False) if in_kernel else x
    except AttncError:
        raise
    except (ValueError, TypeError, IndexError, OverflowError, MemoryError, ZeroDivisionError) as e:
        raise SimulationError(f"'{opcode}' failed on operands {[list(a.shape) for a in args]}: {e}") from None
