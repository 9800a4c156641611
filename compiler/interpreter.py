"""The reference interpreter: executes sparse-dialect IR with numpy.

It is the oracle for every pass and for the simulator, so each op's numpy
implementation here *is* that op's meaning. Each op computes in its operands'
numpy dtype and rounds its result to its result type; bf16, which numpy lacks, is
held in float32 and rounded to bf16 after every op.

Wide accumulation (the rule the functional simulator follows too; docs/simulator.md,
"Functional model"): the ops that accumulate -- matmul, contract, butterfly stages,
attention, layer_norm and the sum/mean/prod reductions -- keep their accumulators and
running statistics in f32 when their operands are f16 or bf16 (:func:`wide`), as a MAC
array and a softmax unit do, and round once, at their result. A lone softmax or
log_softmax op computes in its operand's dtype, as ONNX's reference does (its
conformance data for f16 relies on it); in a kernel its operand is held in f32.
Attention multiplies the f32 accumulator of Q·Kᵀ by its scale and keeps the scores,
the softmax's max and sum (or the online cascade's running max, sum and output) and
the probabilities in f32. Inside a ``dataflow.kernel`` f16 values are held in f32
from op to op and rounded where they leave the kernel (its results) or at an explicit
cast, so a GEMM's epilogue (the attention scale, a bias) works on the accumulator.

    outputs = interpret(module, {"x": x})        # keyed by graph names
    results = run_func(main_func(module), [x])   # positional
"""

from __future__ import annotations

import math
import weakref
from collections.abc import Callable, Mapping, Sequence

import numpy as np
from xdsl.dialects import func
from xdsl.dialects.builtin import BFloat16Type, ModuleOp, TensorType
from xdsl.ir import Attribute, Block, Operation, SSAValue
from xdsl.traits import IsTerminator

from attnc import butterfly as bf
from attnc import limits
from attnc.arch.datatypes import element_bytes
from attnc.dialects import dataflow as df
from attnc.dialects import sparse as sp
from attnc.dialects.values import bitrev_permutation, np_dtype, project, to_numpy
from attnc.errors import AttncError
from attnc.ir import io_names, main_func
from attnc.limits import shown

Impl = Callable[[Operation, list[np.ndarray]], np.ndarray]
IMPLS: dict[type[Operation], Impl] = {}


def impl(*op_types: type[Operation]) -> Callable[[Impl], Impl]:
    """Register a numpy implementation for one or more op classes."""

    def register(fn: Impl) -> Impl:
        for t in op_types:
            IMPLS[t] = fn
        return fn

    return register


class InterpreterError(AttncError):
    """An op could not be evaluated on the given values."""


# ---------------------------------------------------------------------------
# dtype handling


def round_bf16(x: np.ndarray) -> np.ndarray:
    """Round float32 values to the nearest bfloat16 (ties to even), kept as float32."""
    f = np.array(x, dtype=np.float32, order="C")  # not ascontiguousarray: it turns 0-d into 1-d
    u = f.view(np.uint32)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    out = rounded.view(np.float32)
    return np.where(np.isnan(f), f, out)


def wide(dt: np.dtype) -> np.dtype:
    """The dtype a value of dtype ``dt`` is accumulated and held in inside an op or a kernel: f32 for
    f16 (bf16 is held in f32 already), the dtype itself otherwise (f32, f64, integers, bool)."""
    dt = np.dtype(dt)
    return np.dtype(np.float32) if dt == np.float16 else dt


def widened(*xs: np.ndarray) -> list[np.ndarray]:
    """The operands in the dtype they accumulate in: numpy's promotion of theirs, widened by :func:`wide`."""
    w = wide(np.result_type(*xs))
    return [np.asarray(x).astype(w, copy=False) for x in xs]


def finish(x: np.ndarray | np.generic, ty: Attribute) -> np.ndarray:
    """Cast a computed value to the storage of result type ``ty``."""
    assert isinstance(ty, TensorType)
    x = np.asarray(x)
    with np.errstate(invalid="ignore", over="ignore"):
        out = x.astype(np_dtype(ty.element_type), copy=False)
    if isinstance(ty.element_type, BFloat16Type):
        out = round_bf16(out)
    want = tuple(ty.get_shape())
    if out.shape != want:
        out = np.broadcast_to(out, want)
    return out


# ---------------------------------------------------------------------------
# execution


def type_bytes(ty: Attribute) -> int:
    """The bytes a value of tensor type ``ty`` takes in the interpreter (bf16 is held in float32)."""
    assert isinstance(ty, TensorType)
    n = 1
    for d in ty.get_shape():
        n *= max(int(d), 0)
    return n * np.dtype(np_dtype(ty.element_type)).itemsize


def check_size(ty: Attribute, what: str) -> None:
    """Refuse to materialise a value of type ``ty`` above ``limits.TENSOR_BYTES`` (before allocating it)."""
    limits.check(type_bytes(ty), f"{what} ({shown(ty, 80)[1:-1]})", limits.TENSOR_BYTES)


def _check_temporaries(op: Operation) -> None:
    # the values an op computes on the way that are larger than its result: attention's score matrix
    if isinstance(op, sp.AttentionOp):
        q, k = sp.shape_of(op.operands[0]), sp.shape_of(op.operands[1])
        scores = math.prod(q[:-1]) * k[-2] * wide(np_dtype(sp.elt_of(op.operands[0]))).itemsize  # held in f32
        limits.check(scores, f"the attention scores of '{op.name}' ({'x'.join(map(str, [*q[:-1], k[-2]]))})",
                     limits.TENSOR_BYTES)  # fmt: skip


def held(x: np.ndarray) -> np.ndarray:
    """A kernel's intermediate value as the kernel holds it: f16 widened to f32 (``x`` already has the
    op's result type; a cast or convert has rounded it to that type first)."""
    return x.astype(wide(x.dtype), copy=False)


def eval_op(op: Operation, args: Sequence[np.ndarray], *, in_kernel: bool = False) -> list[np.ndarray]:
    """Evaluate one op on numpy values; the results have the op's result types. A result (or temporary)
    above ``limits.TENSOR_BYTES`` is refused before the op runs. ``in_kernel``: the op is in a kernel's
    body, where f16 values stay in f32 between ops (rounded only by casts and at the kernel's results)."""
    fn = IMPLS.get(type(op))
    if fn is None:
        raise InterpreterError(f"the reference interpreter has no implementation of '{op.name}'")
    for i, r in enumerate(op.results):
        check_size(r.type, f"result {i} of '{op.name}'")
    _check_temporaries(op)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        out = fn(op, list(args))
    outs = out if isinstance(out, tuple) else (out,)
    if in_kernel and not isinstance(op, (sp.CastOp, sp.ConvertOp, sp.ConstantOp)):
        return [_finish_held(o, r.type) for o, r in zip(outs, op.results, strict=True)]
    results = [finish(o, r.type) for o, r in zip(outs, op.results, strict=True)]
    return [held(x) for x in results] if in_kernel else results


def _finish_held(x: np.ndarray | np.generic, ty: Attribute) -> np.ndarray:
    """A value cast to the f32 a kernel holds a result of type ``ty`` in (f16 and bf16 are not rounded)."""
    assert isinstance(ty, TensorType)
    dt = np_dtype(ty.element_type)
    x = np.asarray(x)
    with np.errstate(invalid="ignore", over="ignore"):
        out = x.astype(wide(dt), copy=False)
    want = tuple(ty.get_shape())
    return out if out.shape == want else np.broadcast_to(out, want)


def run_func(fn: func.FuncOp, args: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Run a ``func.func`` on positional numpy arguments."""
    block = fn.body.blocks.first
    assert block is not None
    return run_block(block, args)


def run_block(block: Block, args: Sequence[np.ndarray], *, in_kernel: bool = False) -> list[np.ndarray]:
    """Run a block on positional arguments; its terminator's operands are the results. ``in_kernel``:
    the block is a kernel's body (see :func:`eval_op`); its arguments are widened on entry."""
    env: dict[SSAValue, np.ndarray] = {}
    for a, x in zip(block.args, args, strict=True):
        env[a] = x.astype(wide(x.dtype), copy=False) if in_kernel else x
    for op in block.ops:
        if op.has_trait(IsTerminator):
            return [env[v] for v in op.operands]
        try:
            results = eval_op(op, [env[v] for v in op.operands], in_kernel=in_kernel)
        except AttncError:
            raise
        except MemoryError:
            raise InterpreterError(
                f"evaluating '{op.name}' ran out of memory (lower {limits.TENSOR_BYTES.env}, now "
                f"{limits.TENSOR_BYTES.value():,} bytes, to refuse such tensors up front)"
            ) from None
        except Exception as e:  # numpy errors name no op: say which one failed
            raise InterpreterError(f"evaluating '{op.name}' failed: {shown(e, 200)[1:-1]}") from e
        for r, x in zip(op.results, results):
            env[r] = x
    raise InterpreterError("a block has no terminator")


def check_inputs(fn: func.FuncOp, inputs: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Order, validate and convert named inputs for ``fn``'s arguments."""
    names, _ = io_names(fn)
    extra = sorted(set(inputs) - set(names))
    if extra:
        raise AttncError(f"unknown input(s) {', '.join(shown(e, 40) for e in extra[:8])}; "
                         f"the model's inputs are {', '.join(shown(n, 40) for n in names[:8])}")  # fmt: skip
    for name, ty in zip(names, fn.function_type.inputs.data):
        check_size(ty, f"input {shown(name)}")  # every declared input, before any is converted
    args = []
    for name, ty in zip(names, fn.function_type.inputs.data):
        assert isinstance(ty, TensorType)
        shape = tuple(ty.get_shape())
        if name not in inputs:
            raise AttncError(f"missing input {shown(name)} (shape {list(shape)}, {ty.element_type})")
        x = np.asarray(inputs[name])
        if x.shape != shape:
            raise AttncError(f"input {shown(name)} has shape {list(x.shape)}, the model expects {list(shape)}")
        want = np_dtype(ty.element_type)
        if isinstance(ty.element_type, BFloat16Type) and x.dtype.name == "bfloat16":
            x = x.astype(np.float32)
        elif x.dtype != want:
            raise AttncError(f"input {shown(name)} has dtype {x.dtype}, the model expects {ty.element_type} ({want})")
        args.append(x)
    return args


def interpret(module: ModuleOp, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run ``@main`` on inputs keyed by graph input names; outputs keyed by output names."""
    fn = main_func(module)
    args = check_inputs(fn, inputs)
    _, out_names = io_names(fn)
    return dict(zip(out_names, run_func(fn, args), strict=True))


# ---------------------------------------------------------------------------
# constants and encodings

_CONSTANTS: weakref.WeakKeyDictionary[Operation, np.ndarray] = weakref.WeakKeyDictionary()


@impl(sp.ConstantOp)
def _constant(op: sp.ConstantOp, args: list[np.ndarray]) -> np.ndarray:
    # decoding a large weight costs a copy; keep one per constant op
    val = _CONSTANTS.get(op)
    if val is None:
        val = to_numpy(op.value)
        val.flags.writeable = False
        _CONSTANTS[op] = val
    return val


@impl(sp.ConvertOp)
def _convert(op: sp.ConvertOp, args: list[np.ndarray]) -> np.ndarray:
    return project(args[0], sp.encoding_of(op.result))


@impl(sp.CastOp)
def _cast(op: sp.CastOp, args: list[np.ndarray]) -> np.ndarray:
    x = args[0]
    dt = np_dtype(sp.elt_of(op.result))
    if dt == np.bool_:
        return x != 0
    if dt.kind in "iu" and x.dtype.kind == "f":
        return np.trunc(np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)).astype(dt)
    return x.astype(dt)


# ---------------------------------------------------------------------------
# elementwise

_erf = np.frompyfunc(math.erf, 1, 1)


def erf(x: np.ndarray) -> np.ndarray:
    """Exact (libm) error function, elementwise."""
    return _erf(x.astype(np.float64)).astype(np.float64)


_UNARY: dict[type[Operation], Callable[[np.ndarray], np.ndarray]] = {
    sp.NegOp: np.negative,
    sp.AbsOp: np.abs,
    sp.ExpOp: np.exp,
    sp.LogOp: np.log,
    sp.SqrtOp: np.sqrt,
    sp.RsqrtOp: lambda x: 1 / np.sqrt(x),
    sp.ReciprocalOp: lambda x: 1 / x,
    sp.TanhOp: np.tanh,
    sp.ErfOp: erf,
    sp.SigmoidOp: lambda x: 1 / (1 + np.exp(-x)),
    sp.ReluOp: lambda x: np.maximum(x, np.zeros((), x.dtype)),
    sp.FloorOp: np.floor,
    sp.CeilOp: np.ceil,
    sp.NotOp: np.logical_not,
    sp.IsNanOp: np.isnan,
    sp.IsInfOp: np.isinf,
}


@impl(*_UNARY)
def _unary(op: Operation, args: list[np.ndarray]) -> np.ndarray:
    return _UNARY[type(op)](args[0])


@impl(sp.GeluOp)
def _gelu(op: sp.GeluOp, args: list[np.ndarray]) -> np.ndarray:
    x = args[0].astype(np.float64)
    if op.approximate is not None and op.approximate.data == "tanh":
        return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / math.sqrt(2)))


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        q = np.abs(a) // np.where(b == 0, 1, np.abs(b))
        return np.where((a < 0) != (b < 0), -q, q)  # truncate toward zero
    return a / b


def _pow(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if a.dtype.kind in "iu":
        return np.power(a.astype(np.float64), b).astype(a.dtype)
    return np.power(a, b)


_BINARY: dict[type[Operation], Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    sp.AddOp: np.add,
    sp.SubOp: np.subtract,
    sp.MulOp: np.multiply,
    sp.DivOp: _int_div,
    sp.PowOp: _pow,
    sp.MaxOp: np.maximum,
    sp.MinOp: np.minimum,
    sp.AndOp: np.logical_and,
    sp.OrOp: np.logical_or,
    sp.XorOp: np.logical_xor,
}
_CMP = {"eq": np.equal, "ne": np.not_equal, "lt": np.less, "le": np.less_equal, "gt": np.greater, "ge": np.greater_equal}


@impl(*_BINARY)
def _binary(op: Operation, args: list[np.ndarray]) -> np.ndarray:
    return _BINARY[type(op)](args[0], args[1])


@impl(sp.CmpOp)
def _cmp(op: sp.CmpOp, args: list[np.ndarray]) -> np.ndarray:
    return _CMP[op.predicate.data](args[0], args[1])


@impl(sp.WhereOp)
def _where(op: sp.WhereOp, args: list[np.ndarray]) -> np.ndarray:
    return np.where(args[0], args[1], args[2])


# ---------------------------------------------------------------------------
# contractions, reductions, normalisation


@impl(sp.MatmulOp)
def _matmul(op: sp.MatmulOp, args: list[np.ndarray]) -> np.ndarray:
    return np.matmul(*widened(args[0], args[1]))


@impl(sp.ContractOp)
def _contract(op: sp.ContractOp, args: list[np.ndarray]) -> np.ndarray:
    ins, out, _ = sp.parse_einsum(op.equation.data, [a.shape for a in args])
    return np.einsum(",".join(ins) + "->" + out, *(widened(*args) if args else args), optimize=len(args) > 2)


@impl(sp.ButterflyStageOp)
def _butterfly_stage(op: sp.ButterflyStageOp, args: list[np.ndarray]) -> np.ndarray:
    x, w = args[0], args[1]
    return bf.apply_stage(x.astype(wide(x.dtype), copy=False), w, bf.Stage(*op.params()))


@impl(sp.ButterflyMatmulOp)
def _butterfly_matmul(op: sp.ButterflyMatmulOp, args: list[np.ndarray]) -> np.ndarray:
    x = args[0]
    if op.structure.perm.data == "bitrev":
        x = x[..., bitrev_permutation(x.shape[-1])]
    for w, st in zip(args[1:], op.stages(), strict=True):  # each stage accumulates wide and rounds, as a stage op
        x = bf.apply_stage(x.astype(wide(x.dtype), copy=False), w, st).astype(x.dtype)
        if isinstance(sp.elt_of(op.result), BFloat16Type):
            x = round_bf16(x)
    return x


@impl(sp.FourierOp)
def _fourier(op: sp.FourierOp, args: list[np.ndarray]) -> np.ndarray:
    return bf.fourier(args[0], tuple(int(a) for a in op.axes.get_values()))


_REDUCE = {"sum": np.sum, "mean": np.mean, "max": np.max, "min": np.min, "prod": np.prod}


@impl(sp.ReduceOp)
def _reduce(op: sp.ReduceOp, args: list[np.ndarray]) -> np.ndarray:
    axes = tuple(int(a) for a in op.axes.get_values())
    if not axes:
        return args[0]
    x, kind = args[0], op.kind.data
    if x.size == 0 and kind in ("max", "min"):  # ONNX: the identity of an empty max/min is -inf/+inf
        shape = sp.shape_of(op.result)
        return np.full(shape, -np.inf if kind == "max" else np.inf)
    if kind in ("sum", "mean", "prod"):  # an accumulator: f32 for f16
        x = x.astype(wide(x.dtype), copy=False)
    return _REDUCE[kind](x, axis=axes, keepdims=op.keepdims is not None)


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Softmax along ``axis`` in ``x``'s dtype (ONNX's reference does the same; a softmax kernel gets its
    operand held in f32); a slice that is -inf everywhere gives zeros."""
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isneginf(m), 0, m)
    e = np.exp(x - m)
    s = np.sum(e, axis=axis, keepdims=True)
    return e / np.where(s == 0, 1, s)


@impl(sp.SoftmaxOp)
def _softmax(op: sp.SoftmaxOp, args: list[np.ndarray]) -> np.ndarray:
    return softmax(args[0], op.axis.value.data)


@impl(sp.LogSoftmaxOp)
def _log_softmax(op: sp.LogSoftmaxOp, args: list[np.ndarray]) -> np.ndarray:
    x, ax = args[0], op.axis.value.data
    m = np.max(x, axis=ax, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    return x - m - np.log(np.sum(np.exp(x - m), axis=ax, keepdims=True))


@impl(sp.LayerNormOp)
def _layer_norm(op: sp.LayerNormOp, args: list[np.ndarray]) -> np.ndarray:
    args = widened(*args)  # mean and variance in f32 for f16 (ONNX's stash_type)
    x = args[0]
    ax = op.axis.value.data % x.ndim
    axes = tuple(range(ax, x.ndim))
    mean = np.mean(x, axis=axes, keepdims=True)
    var = np.mean(np.square(x - mean), axis=axes, keepdims=True)
    y = (x - mean) / np.sqrt(var + np.asarray(op.epsilon.value.data, dtype=x.dtype)) * args[1]
    return y + args[2] if len(args) > 2 else y


# ---------------------------------------------------------------------------
# data movement


@impl(sp.TransposeOp)
def _transpose(op: sp.TransposeOp, args: list[np.ndarray]) -> np.ndarray:
    return np.transpose(args[0], [int(p) for p in op.permutation.get_values()])


@impl(sp.ReshapeOp)
def _reshape(op: sp.ReshapeOp, args: list[np.ndarray]) -> np.ndarray:
    return np.reshape(args[0], sp.shape_of(op.result))


@impl(sp.BroadcastOp)
def _broadcast(op: sp.BroadcastOp, args: list[np.ndarray]) -> np.ndarray:
    return np.broadcast_to(args[0], sp.shape_of(op.result))


@impl(sp.SliceOp)
def _slice(op: sp.SliceOp, args: list[np.ndarray]) -> np.ndarray:
    idx = []
    for s, e, st in zip(op.starts.get_values(), op.ends.get_values(), op.steps.get_values()):
        idx.append(slice(int(s), None if (st < 0 and e == -1) else int(e), int(st)))
    return args[0][tuple(idx)]


@impl(sp.ConcatOp)
def _concat(op: sp.ConcatOp, args: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(args, axis=op.axis.value.data)


@impl(sp.GatherOp)
def _gather(op: sp.GatherOp, args: list[np.ndarray]) -> np.ndarray:
    data, idx = args
    ax = op.axis.value.data
    n = data.shape[ax]
    if idx.size and (idx.min() < -n or idx.max() >= n):
        raise InterpreterError(f"sparse.gather: an index is out of range for axis {ax} of size {n}")
    return np.take(data, idx.astype(np.int64), axis=ax)


@impl(sp.PadOp)
def _pad(op: sp.PadOp, args: list[np.ndarray]) -> np.ndarray:
    pads = [int(p) for p in op.pads.get_values()]
    r = args[0].ndim
    return np.pad(args[0], [(pads[i], pads[i + r]) for i in range(r)], constant_values=op.value.value.data)


@impl(sp.TriluOp)
def _trilu(op: sp.TriluOp, args: list[np.ndarray]) -> np.ndarray:
    k = op.k.value.data
    return np.triu(args[0], k) if op.upper is not None else np.tril(args[0], k)


# ---------------------------------------------------------------------------
# attention


def attention(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    mask: np.ndarray | None,
    *,
    scale: float,
    causal: bool = False,
    causal_offset: int = 0,
    softcap: float = 0.0,
    key_block: int = 0,
) -> np.ndarray:
    """The meaning of ``sparse.attention`` (see its docstring); ``key_block > 0`` computes it
    the online way, one block of keys at a time. Everything is computed in ``wide(q.dtype)``
    (f32 for f16): the scale multiplies the Q·Kᵀ accumulator, and the scores, the softmax
    statistics, the probabilities and the output stay wide; the caller rounds the output once."""
    hq, hkv = q.shape[1], k.shape[1]
    if hq != hkv:
        k = np.repeat(k, hq // hkv, axis=1)
        v = np.repeat(v, hq // hkv, axis=1)
    q, k, v = widened(q, k, v)
    s = np.matmul(q, np.swapaxes(k, -1, -2)) * np.asarray(scale, dtype=q.dtype)
    if softcap > 0:
        s = softcap * np.tanh(s / softcap)
    sq, skv = s.shape[-2:]
    bias = np.zeros((sq, skv), dtype=s.dtype)
    if mask is not None:
        bias = bias + (np.where(mask, 0, -np.inf).astype(s.dtype) if mask.dtype == np.bool_ else mask.astype(s.dtype))
    if causal:
        i = np.arange(sq)[:, None]
        j = np.arange(skv)[None, :]
        bias = bias + np.where(j <= i + causal_offset, 0, -np.inf).astype(s.dtype)
    if key_block > 0:
        return _online(s + bias, v, key_block)
    p = softmax(s + bias, -1)
    dead = np.isneginf(np.max(bias, axis=-1, keepdims=True))
    p = np.where(dead, np.zeros((), p.dtype), p)
    return np.matmul(p, v)


def _online(s: np.ndarray, v: np.ndarray, key_block: int) -> np.ndarray:
    """softmax(s) @ v as a running max, sum and rescaled partial output over blocks of keys
    (FuseMax's one-pass cascade), all held in ``s``'s (wide) dtype; a row whose keys are all
    masked gives zeros."""
    dt = s.dtype
    shape = s.shape[:-1] + (1,)
    m = np.full(shape, -np.inf, dt)
    total = np.zeros(shape, dt)
    acc = np.zeros(s.shape[:-1] + v.shape[-1:], dt)
    for j in range(0, s.shape[-1], key_block):
        blk = s[..., j : j + key_block]
        m_new = np.maximum(m, np.max(blk, axis=-1, keepdims=True))
        # while the running max is still -inf (nothing seen) subtract 0: exp(-inf) = 0 weights
        ref = np.where(np.isneginf(m_new), np.zeros((), dt), m_new)
        corr = np.exp(m - ref)
        p = np.exp(blk - ref)
        total = total * corr + np.sum(p, axis=-1, keepdims=True)
        acc = acc * corr + np.matmul(p, v[..., j : j + key_block, :])
        m = m_new
    return np.where(total == 0, np.zeros((), dt), acc / np.where(total == 0, 1, total)).astype(dt)


@impl(sp.AttentionOp)
def _attention(op: sp.AttentionOp, args: list[np.ndarray]) -> np.ndarray:
    q, k, v = args[:3]
    mask = args[3] if len(args) > 3 else None
    return attention(
        q,
        k,
        v,
        mask,
        scale=op.scale.value.data,
        causal=op.causal is not None,
        causal_offset=op.causal_offset.value.data,
        softcap=op.softcap.value.data,
        key_block=op.key_block.value.data if op.fusion is not None and op.fusion.data == "online" else 0,
    )


# ---------------------------------------------------------------------------
# dataflow


@impl(df.KernelOp)
def _kernel(op: df.KernelOp, args: list[np.ndarray]) -> tuple[np.ndarray, ...]:
    # a kernel computes what its body computes; the schedule only says how. Its body holds f16 values in
    # f32 (the tile's datapath); eval_op rounds the kernel's results to their types as they leave it.
    # a load of a contiguous region of its input (a store of a region computes the region: the output is the
    # concatenation of its region stores, df.store_regions)
    if op.dram_offset is not None and op.kind.data == "dma_load":
        part = op.body.block.args[0].type
        first = op.dram_offset.value.data // element_bytes(str(part.element_type))
        flat = args[0].reshape(-1)
        if op.dram_strides is not None:  # a strided region (a range of keys of every unit)
            item = flat.itemsize
            strides = [int(v) * item for v in op.dram_strides.get_values()]
            args = [np.lib.stride_tricks.as_strided(flat[first:], part.get_shape(), strides).copy()]
        else:
            args = [flat[first:first + math.prod(part.get_shape())].reshape(part.get_shape())]
    return tuple(run_block(op.body.block, args, in_kernel=True))
