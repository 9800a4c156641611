"""butterfly-decompose: linear layers become butterfly (or Monarch) matrices, and chosen
attention blocks become FNet Fourier mixing (FABNet's hybrid of ABfly and FBfly blocks).

    attnc opt model.mlir -p 'canonicalize,raise-attention,butterfly-decompose{layers=0,1 linears=qkv,ffn block=3}'

Runs on @main's sparse IR after ``raise-attention``: block ``i`` is the ``i``-th
``sparse.attention`` in program order. A *linear layer* is a ``sparse.matmul`` whose rhs
is a 2-D ``sparse.constant`` weight ``[din, dout]``; its role is

* ``qkv``: its result reaches an attention's q, k or v through data movement (reshape,
  transpose, slice, concat, broadcast, gather by constant indices) and constant bias
  adds: a (fused) Q/K/V projection of that attention's block;
* ``out``: its lhs comes from an attention's result through data movement;
* ``ffn``: any other, in the block of the nearest preceding attention (block 0 if none).

Options:

* ``layers``: blocks whose linear layers of the roles in ``linears`` become butterflies:
  ``all`` (default), ``none`` or block indexes (``layers=0,2``);
* ``linears``: any of ``qkv``, ``out``, ``ffn`` (default all three);
* ``fourier``: blocks whose attention sub-layer becomes ``sparse.fourier`` over the
  (seq, hidden) axes of its input: ``none`` (default), ``all`` or indexes;
* ``kind``: ``block`` (Dao's block butterfly, default) or ``monarch``;
* ``block``: the block size; per layer the smallest size >= it with ``n/block`` a power
  of two (``attnc.butterfly.fit_block``: 768 with block 1 takes 3). 0 (default) means 1
  for ``block`` and, for ``monarch``, the divisor of ``n`` nearest ``sqrt(n)``;
* ``factors``: block-butterfly factors, 0 (default) for all ``L = log2(n/block)``
  (a larger count is capped at ``L``); Monarch has 2;
* ``iters``: gradient refinement steps after the SVD split (default 0).

A square weight becomes one ``sparse.butterfly_matmul`` whose factor constants (in the
weight's dtype) are ``attnc.butterfly.project(W)``. ``dout = k·din`` becomes ``k``
butterflies of size ``din`` on the same input, concatenated on the last axis
(``W = [W_1 | ... | W_k]``); ``din = k·dout`` slices the input into ``k`` chunks, one
butterfly of size ``dout`` each, summed (``W`` stacked by rows). Any other shape stays
dense and is reported as skipped. Bias adds and everything else stay as they are:

    %w = sparse.constant {value = dense<...> : tensor<16x32xf32>} : tensor<16x32xf32>
    %y = sparse.matmul %x, %w : tensor<1x8x16xf32>, tensor<16x32xf32> -> tensor<1x8x32xf32>

becomes (block 1, all 4 factors)

    %a = sparse.butterfly_matmul %x[%a0, %a1, %a2, %a3] {structure = #sparse.butterfly<kind = "block", factors = 4, block = 1, perm = "none">} : tensor<1x8x16xf32>[tensor<8x1x2x2xf32>, tensor<4x2x2x2xf32>, tensor<2x4x2x2xf32>, tensor<1x8x2x2xf32>] -> tensor<1x8x16xf32>
    %b = sparse.butterfly_matmul %x[%b0, %b1, %b2, %b3] {...} : ... -> tensor<1x8x16xf32>
    %y = sparse.concat %a, %b {axis = 2 : i64} : (tensor<1x8x16xf32>, tensor<1x8x16xf32>) -> tensor<1x8x32xf32>

A Fourier block: the value the block's output projection (plus its bias add) produced
is replaced by ``sparse.fourier %x {axes = array<i64: -2, -1>}`` where ``%x`` is the
common input of the block's Q/K/V projections, and the projections and the attention,
now dead, are erased. (When an exporter reshapes or transposes the sub-layer around the
projections, as torch's ``nn.MultiheadAttention`` does to (seq, batch, hidden), the
farthest-back layout of the input that some reshaped/transposed form of the output
shares is used.)

    %q = sparse.matmul %x, %wq ...   %k = ...   %v = ...
    %o = sparse.attention %q', %k', %v' ...
    %p = sparse.matmul %o', %wo ...
    %r = sparse.add %p, %bo ...
    %y = sparse.add %x, %r ...

becomes

    %f = sparse.fourier %x {axes = array<i64: -2, -1>} : tensor<1x8x16xf32> -> tensor<1x8x16xf32>
    %y = sparse.add %x, %f ...

The rewrites are two patterns: :class:`FourierMixingPattern` (the chosen blocks, first,
so the projections it erases are not fitted) and :class:`ButterflyLinearPattern`, which
applies the fits the pass chose for each remaining linear layer.

The pass records what it did on @main as the JSON string attribute
``attnc.butterfly_report`` (``layers``: one row per decomposed linear with block, role,
name, shape, structure, error = ||W - W_fit||_F / ||W||_F, dense/butterfly MACs per token
and parameters; ``skipped`` with the reason; ``fourier``: per block what it replaced and
the MACs per token before and after); :func:`format_report` renders it as a table and
:func:`decompose_summary` totals it. Weight names are the constants' ``attnc.name`` when
the importer keeps one, else positions such as ``block0.ffn.1``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from xdsl.context import Context
from xdsl.dialects.builtin import IntegerType, ModuleOp, StringAttr
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern, op_type_rewrite_pattern
from xdsl.rewriter import InsertPoint

from attnc import butterfly as bf
from attnc.dialects import sparse as sp
from attnc.dialects.encoding import ButterflyEncodingAttr
from attnc.dialects.values import from_numpy, np_dtype, to_numpy
from attnc.errors import AttncError
from attnc.ir import NAME_ATTR, main_func
from attnc.limits import shown

REPORT_ATTR = "attnc.butterfly_report"
ROLES = ("qkv", "out", "ffn")
#: ops that only move or repeat values: a projection stays a projection through them
MOVES = (sp.ReshapeOp, sp.TransposeOp, sp.SliceOp, sp.ConcatOp, sp.BroadcastOp)
#: how far the role search follows data movement
DEPTH = 16


def _fail(msg: str) -> AttncError:
    return AttncError(f"butterfly-decompose: {msg}")


# ---------------------------------------------------------------------------
# options


def _tokens(value: Any) -> list[str]:
    """An option value (a tuple from a pipeline string, or a Python str/int/sequence) as
    lower-case tokens: ``"0,1"``, ``(0, 1)`` and ``0`` alike."""
    items = value if isinstance(value, (tuple, list)) else (value,)
    out = []
    for item in items:
        out += [t.strip().lower() for t in str(item).split(",") if t.strip()]
    return out


def _blocks(value: Any, option: str, count: int) -> set[int]:
    """The block indexes an ``all``/``none``/indexes option selects among ``count`` blocks."""
    toks = _tokens(value)
    if toks in (["all"], []):
        return set(range(count))
    if toks == ["none"]:
        return set()
    out = set()
    for t in toks:
        if not t.isdigit():
            raise _fail(f"{option} must be 'all', 'none' or block indexes (0, 1, ...), got {shown(t)}")
        i = int(t)
        if i >= count and count == 0:
            raise _fail(f"{option} names block {i} but the model has no sparse.attention")
        if i >= count:
            raise _fail(f"{option} names block {i} but the model has {count} block(s) (0..{count - 1})")
        out.add(i)
    return out


def nearest_sqrt_divisor(n: int) -> int:
    """The divisor of ``n`` nearest ``sqrt(n)`` (the smaller on a tie): 768 -> 24, 3072 -> 48."""
    root = math.sqrt(n)
    return min((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - root), d))


class _Skip(Exception):
    """A linear layer that stays dense; the message says why."""


@dataclass(frozen=True)
class Structure:
    kind: str
    factors: int
    block: int

    def text(self) -> str:
        return f"{self.kind} F={self.factors} b={self.block}"


# ---------------------------------------------------------------------------
# finding linear layers and their roles


@dataclass
class Linear:
    op: sp.MatmulOp
    weight: sp.ConstantOp
    block: int
    role: str
    attention: sp.AttentionOp | None  # the attention a qkv/out projection belongs to
    name: str = ""


def _constant(v: SSAValue) -> bool:
    return isinstance(v.owner, sp.ConstantOp)


def _moves(op: Operation, index: int = 0) -> bool:
    """Whether ``op`` only moves the values of its operand ``index``: reshape, transpose,
    slice, concat, broadcast, or a gather by constant indices (torch's split of a fused QKV)."""
    if isinstance(op, sp.GatherOp):
        return index == 0 and _constant(op.indices)
    return isinstance(op, MOVES)


def _feeds(v: SSAValue, depth: int = DEPTH) -> sp.AttentionOp | None:
    """The attention whose q, k or v ``v`` reaches through data movement and constant bias adds."""
    if depth == 0:
        return None
    for use in v.uses:
        op = use.operation
        if isinstance(op, sp.AttentionOp) and use.index < 3:
            return op
        bias = isinstance(op, sp.AddOp) and _constant(op.operands[1 - use.index])
        if (_moves(op, use.index) or bias) and (a := _feeds(op.results[0], depth - 1)) is not None:
            return a
    return None


def _fed_by(v: SSAValue, depth: int = DEPTH) -> sp.AttentionOp | None:
    """The attention whose result ``v`` comes from through data movement."""
    op = v.owner
    if isinstance(op, sp.AttentionOp):
        return op
    if depth == 0 or not isinstance(op, Operation) or not _moves(op):
        return None
    for x in op.operands[:1] if isinstance(op, sp.GatherOp) else op.operands:
        if (a := _fed_by(x, depth - 1)) is not None:
            return a
    return None


def find_linears(fn) -> tuple[list[sp.AttentionOp], list[Linear]]:
    """@main's attentions (the blocks) and its linear layers with their block and role."""
    attention: list[sp.AttentionOp] = []
    linears: list[Linear] = []
    for op in fn.body.block.ops:
        if isinstance(op, sp.AttentionOp):
            attention.append(op)
            continue
        if not isinstance(op, sp.MatmulOp) or not isinstance(w := op.rhs.owner, sp.ConstantOp):
            continue
        if len(sp.shape_of(op.rhs)) != 2:
            continue
        if (a := _feeds(op.result)) is not None:
            role = "qkv"
        elif (a := _fed_by(op.lhs)) is not None:
            role = "out"
        else:
            role, a = "ffn", None
        linears.append(Linear(op, w, -1, role, a))
    index = {id(a): i for i, a in enumerate(attention)}
    count: dict[tuple[int, str], int] = {}
    order = {id(op): i for i, op in enumerate(fn.body.block.ops)}
    for lin in linears:
        if lin.attention is not None:
            lin.block = index[id(lin.attention)]
        else:  # the nearest preceding attention's block (attention is in program order)
            lin.block = max([i for i, a in enumerate(attention) if order[id(a)] < order[id(lin.op)]], default=0)
        j = count.get((lin.block, lin.role), 0)
        count[(lin.block, lin.role)] = j + 1
        named = lin.weight.attributes.get(NAME_ATTR)
        lin.name = named.data if isinstance(named, StringAttr) else f"block{lin.block}.{lin.role}.{j}"
    return attention, linears


# ---------------------------------------------------------------------------
# rewriting


def _insert(rewriter: PatternRewriter, op: Operation, anchor: Operation) -> SSAValue:
    rewriter.insert(op, InsertPoint.before(anchor))
    return op.results[0]


def _erase_dead(rewriter: PatternRewriter, start: list[Operation]) -> set[int]:
    """Erase the ops of ``start`` and their producers that nothing uses any more; the ids erased."""
    erased: set[int] = set()
    work = list(start)
    while work:
        op = work.pop()
        if op.parent is None or isinstance(op, ModuleOp) or not isinstance(op, sp.SparseOp):
            continue
        if any(r.uses.get_length() for r in op.results):
            continue
        producers = [x.owner for x in op.operands if isinstance(x.owner, Operation)]
        rewriter.erase(op)
        erased.add(id(op))
        work += producers
    return erased


def _fit(
    w: np.ndarray, structure_of: Callable[[int], Structure], iters: int
) -> tuple[str, list[bf.Fit], Structure, float]:
    """(mode, fits, structure, relative error) of weight ``w``: one square butterfly, or
    pieces to ``concat`` (dout = k·din) or ``sum`` (din = k·dout)."""
    din, dout = w.shape
    if din == dout:
        mode, parts = "one", [w]
    elif dout % din == 0:
        mode, parts = "concat", [w[:, j * din : (j + 1) * din] for j in range(dout // din)]
    elif din % dout == 0:
        mode, parts = "sum", [w[j * dout : (j + 1) * dout, :] for j in range(din // dout)]
    else:
        raise _Skip(f"neither {din} nor {dout} is a multiple of the other")
    st = structure_of(parts[0].shape[0])
    fits = [bf.project(p, st.kind, st.factors, st.block, iters=iters) for p in parts]
    # the pieces partition W, so their squared errors add up
    sq = sum((f.error * float(np.linalg.norm(p))) ** 2 for f, p in zip(fits, parts))
    return mode, fits, st, math.sqrt(sq) / (float(np.linalg.norm(w)) or 1.0)


@dataclass(frozen=True)
class LinearFit:
    """A linear layer's butterfly form: one square butterfly (``mode`` "one"), or pieces to ``concat``
    (dout = k·din) or ``sum`` (din = k·dout), with their fitted factors and structure."""

    mode: str
    fits: list[bf.Fit]
    structure: Structure


class ButterflyLinearPattern(RewritePattern):
    """Rewrites each linear layer (``sparse.matmul`` by a weight) that has a fit into
    ``sparse.butterfly_matmul`` ops whose factors are constants in the weight's dtype: one, or one per
    column block of W concatenated, or one per row block of W (on a slice of the input each) summed; the
    weight and whatever only it used are erased."""

    def __init__(self, fits: dict[sp.MatmulOp, LinearFit]):
        self.fits = fits

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.MatmulOp, rewriter: PatternRewriter) -> None:
        if op not in self.fits:
            return
        fit_ = self.fits[op]
        mode, st = fit_.mode, fit_.structure
        x = op.lhs
        elt = sp.elt_of(op.rhs)
        dt = np_dtype(elt)
        shape = sp.shape_of(x)
        outs = []
        for j, fit in enumerate(fit_.fits):
            xin = x
            if mode == "sum":
                n = sp.shape_of(op.result)[-1]
                starts = [0] * (len(shape) - 1) + [j * n]
                ends = list(shape[:-1]) + [(j + 1) * n]
                xin = _insert(rewriter, sp.SliceOp(x, starts, ends, [1] * len(shape)), op)
            factors = [_insert(rewriter, sp.ConstantOp(from_numpy(np.asarray(w, dtype=dt), elt)), op)
                       for w in fit.weights]  # fmt: skip
            enc = ButterflyEncodingAttr(len(fit.stages), st.block, "none", st.kind)
            outs.append(_insert(rewriter, sp.ButterflyMatmulOp(xin, factors, enc), op))
        y = outs[0]
        if mode == "concat":
            y = _insert(rewriter, sp.ConcatOp(outs, -1), op)
        elif mode == "sum":
            for o in outs[1:]:
                y = _insert(rewriter, sp.AddOp(y, o), op)
        rewriter.replace_all_uses_with(op.result, y)
        _erase_dead(rewriter, [op])


def _fourier_macs(shape: tuple[int, ...]) -> int:
    """Multiply-adds per token (row of the hidden axis) of Re(fft2) over the last two axes as
    real stages on interleaved complex values, as the back end expands ``sparse.fourier``."""
    seq, hidden = shape[-2], shape[-1]
    per_row = {m: bf.mac_count(bf.fft_stages(m)[0], 2 * m) for m in {seq, hidden}}
    return round(per_row[hidden] + hidden * per_row[seq] / seq)


def _layout_chain(v: SSAValue, backward: bool) -> list[SSAValue]:
    """``v`` and the values it is a reshape/transpose of (``backward``), or that single-use
    reshapes/transposes make of it (forward)."""
    chain = [v]
    while True:
        if backward:
            op = v.owner
            if not isinstance(op, (sp.ReshapeOp, sp.TransposeOp)):
                return chain
            v = op.input
        else:
            uses = list(v.uses)
            if len(uses) != 1 or not isinstance(op := uses[0].operation, (sp.ReshapeOp, sp.TransposeOp)):
                return chain
            v = op.result
        chain.append(v)


@dataclass(frozen=True)
class _FourierSite:
    """What Fourier mixing replaces in one block: the value ``target`` (the output projection's, with its
    bias add, in the layout that matches the input's) becomes the mixing of ``x`` (the sub-layer's input)."""

    x: SSAValue
    target: SSAValue
    projections: list[Linear]  # the Q/K/V projections, then the output projection


def _fourier_site(where: str, att: sp.AttentionOp, linears: list[Linear]) -> _FourierSite:
    """The sub-layer around ``att`` that Fourier mixing replaces; an AttncError when it has no such shape."""
    qkv = [lin for lin in linears if lin.role == "qkv" and lin.attention is att]
    outs = [lin for lin in linears if lin.role == "out" and lin.attention is att]
    if not qkv:
        raise _fail(f"{where}: no Q/K/V projection (a matmul by a constant weight) feeds its sparse.attention")
    if len({id(lin.op.lhs) for lin in qkv}) != 1:
        raise _fail(f"{where}: its Q/K/V projections read different inputs, so there is no one sub-layer input")
    if len(outs) != 1:
        raise _fail(f"{where}: expected one output projection reading its attention, found {len(outs)}")
    x, out = qkv[0].op.lhs, outs[0].op
    target = out.result
    uses = list(target.uses)
    if len(uses) == 1 and isinstance(add := uses[0].operation, sp.AddOp) and _constant(add.operands[1 - uses[0].index]):
        target = add.result  # the bias add belongs to the projection
    # an exporter may lay the sub-layer out differently around the projections (torch's MHA works on
    # (seq, batch, hidden)): match the farthest-back layout of the input with the output's
    xs = _layout_chain(x, backward=True)
    ys = _layout_chain(target, backward=False)
    pair = next(((xc, yc) for xc in reversed(xs) for yc in ys
                 if sp.shape_of(xc) == sp.shape_of(yc) and len(sp.shape_of(xc)) >= 2), None)  # fmt: skip
    if pair is None:
        raise _fail(
            f"{where}: the sub-layer input {sp.shape_of(x)} and the projection output {sp.shape_of(target)} "
            "differ (or have rank < 2), so Fourier mixing cannot replace it"
        )
    return _FourierSite(pair[0], pair[1], qkv + outs)


class FourierMixingPattern(RewritePattern):
    """Rewrites the attention sub-layer of each chosen block (``blocks``: its ``sparse.attention`` -> the
    block index) into FNet's Fourier mixing: the value its output projection (plus bias add) produces
    becomes ``sparse.fourier`` over the (seq, hidden) axes of the input its Q/K/V projections share, and
    the projections and the attention, now dead, are erased.

    A block that is not such a sub-layer is left as it is: the user asked for it, so its error is kept in
    ``failures`` for the pass to raise once the walk is over (an error raised inside a pattern would come
    back with the whole module printed into it). ``rows`` holds the report row of each block replaced."""

    def __init__(self, blocks: dict[sp.AttentionOp, int], linears: list[Linear]):
        self.blocks = blocks
        self.linears = linears
        self.rows: dict[int, dict[str, Any]] = {}
        self.failures: dict[int, AttncError] = {}

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.AttentionOp, rewriter: PatternRewriter) -> None:
        if op not in self.blocks:
            return
        i = self.blocks[op]
        where = f"fourier block {i}"
        try:
            site = _fourier_site(where, op, self.linears)
        except AttncError as e:
            self.failures[i] = e
            return
        shape = sp.shape_of(site.x)
        _, hq, sq, d = sp.shape_of(op.q)
        skv, dv = sp.shape_of(op.v)[2], sp.shape_of(op.v)[3]
        weights = sum(int(np.prod(sp.shape_of(lin.op.rhs))) for lin in site.projections)
        dense = weights + hq * skv * (d + dv) * sq // shape[-2]
        f = sp.FourierOp(site.x, (-2, -1))
        anchor = site.target.owner
        assert isinstance(anchor, Operation)
        _insert(rewriter, f, anchor)
        rewriter.replace_all_uses_with(site.target, f.result)
        erased = _erase_dead(rewriter, [anchor])
        if id(op) not in erased:
            self.failures[i] = _fail(f"{where}: its sparse.attention result has uses besides the output projection")
            return
        self.rows[i] = {
            "block": i,
            "input": list(shape),
            "replaced": [f"sparse.attention ({hq} heads, {sq} queries x {skv} keys)"]
            + [lin.name for lin in site.projections],
            "dense_macs": int(dense),
            "fourier_macs": _fourier_macs(shape),
            "ops_erased": len(erased),
        }


# ---------------------------------------------------------------------------
# the pass


@dataclass(frozen=True)
class ButterflyDecomposePass(ModulePass):
    """butterfly-decompose: butterfly linear layers (ABfly) and Fourier mixing blocks (FBfly)."""

    name = "butterfly-decompose"

    layers: tuple[int | str, ...] = ("all",)
    linears: tuple[str, ...] = ROLES
    fourier: tuple[int | str, ...] = ("none",)
    kind: str = "block"
    block: int = 0
    factors: int = 0
    iters: int = 0

    def __post_init__(self) -> None:
        self._check()  # when the pipeline is parsed, before any model is read

    def _check(self) -> None:
        if self.kind not in bf.KINDS:
            raise _fail(f"kind must be one of {', '.join(bf.KINDS)}, got {shown(self.kind)}")
        for opt in ("block", "factors", "iters"):
            if getattr(self, opt) < 0:
                raise _fail(f"{opt} must be >= 0, got {getattr(self, opt)}")
        if self.kind == "monarch" and self.factors not in (0, 2):
            raise _fail(f"a Monarch matrix has 2 factors, got factors={self.factors}")
        for role in _tokens(self.linears):
            if role not in ROLES:
                raise _fail(f"linears takes {', '.join(ROLES)}, got {shown(role)}")

    def structure(self, n: int) -> Structure:
        """The structure a size-``n`` butterfly gets under these options (``_Skip`` if none)."""
        if self.kind == "monarch":
            b = self.block or nearest_sqrt_divisor(n)
            if n % b:
                raise _Skip(f"Monarch block {b} does not divide {n}")
            if b in (1, n):
                raise _Skip(f"a Monarch matrix of size {n} with block {b} is dense")
            return Structure("monarch", 2, b)
        b = bf.fit_block(n, max(self.block, 1))
        if b >= n:
            raise _Skip(f"no block >= {max(self.block, 1)} below {n} leaves a power of two ({n}/block)")
        lv = bf.levels(n, b)
        if lv == 1:
            raise _Skip(f"a size-{n} butterfly with block {b} is one factor: the dense matrix")
        return Structure("block", min(self.factors, lv) if self.factors else lv, b)

    def fit_linears(self, linears: list[Linear], chosen: set[int], roles: set[str],
                    report: dict[str, Any]) -> dict[sp.MatmulOp, LinearFit]:
        """The butterfly fit of each linear layer of a chosen block and role, in program order; the
        report gets a row per layer fitted and per layer skipped (with the reason)."""
        fits: dict[sp.MatmulOp, LinearFit] = {}
        for lin in linears:
            if lin.block not in chosen or lin.role not in roles:
                continue
            row: dict[str, Any] = {"block": lin.block, "role": lin.role, "name": lin.name,
                                   "shape": list(sp.shape_of(lin.op.rhs))}  # fmt: skip
            try:
                if isinstance(sp.elt_of(lin.op.rhs), IntegerType):
                    raise _Skip("an integer weight")
                if sp.encoding_of(lin.op.rhs) is not None:
                    raise _Skip(f"the weight already has the encoding {sp.encoding_of(lin.op.rhs)}")
                w = _weight(lin.weight)
                mode, pieces, st, error = _fit(w, self.structure, self.iters)
            except _Skip as e:
                report["skipped"].append({**row, "reason": str(e)})
                continue
            n = w.shape[1] if mode == "sum" else w.shape[0]  # the size of each butterfly
            row.update(
                structure=st.text() + (f" x{len(pieces)} {mode}" if mode != "one" else ""),
                error=error,
                dense_macs=int(w.size),
                butterfly_macs=sum(bf.mac_count(f.stages, n) for f in pieces),
                dense_params=int(w.size),
                butterfly_params=sum(bf.param_count(f.stages, n) for f in pieces),
                iterations=max(f.iterations for f in pieces),
            )
            fits[lin.op] = LinearFit(mode, pieces, st)
            report["layers"].append(row)
        return fits

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        self._check()
        fn = main_func(op)
        attention, linears = find_linears(fn)
        blocks = max(len(attention), 1)
        chosen = _blocks(self.layers, "layers", blocks)
        roles = set(_tokens(self.linears))
        fourier = sorted(_blocks(self.fourier, "fourier", len(attention)))
        report: dict[str, Any] = {
            "options": {"kind": self.kind, "block": self.block, "factors": self.factors, "iters": self.iters},
            "layers": [],
            "skipped": [],
            "fourier": [],
        }
        # the Fourier blocks first: the linear layers they replace are gone before the fits are chosen
        mixing = FourierMixingPattern({attention[i]: i for i in fourier}, linears)
        PatternRewriteWalker(mixing, apply_recursively=False).rewrite_region(fn.body)
        for i in fourier:
            if i in mixing.failures:
                raise mixing.failures[i]
            report["fourier"].append(mixing.rows[i])
        fits = self.fit_linears([lin for lin in linears if lin.op.parent is not None], chosen, roles, report)
        PatternRewriteWalker(ButterflyLinearPattern(fits), apply_recursively=False).rewrite_region(fn.body)
        fn.attributes[REPORT_ATTR] = StringAttr(json.dumps(report))


def _weight(c: sp.ConstantOp) -> np.ndarray:
    return to_numpy(c.value).astype(np.float64)


# ---------------------------------------------------------------------------
# reading the report


def report_of(module: ModuleOp) -> dict[str, Any] | None:
    """The decomposition report recorded on the module, @main or any top-level op, if any."""
    for holder in [module, *module.ops]:
        attr = holder.attributes.get(REPORT_ATTR)
        if isinstance(attr, StringAttr):
            return json.loads(attr.data)
    return None


def decompose_summary(module: ModuleOp) -> dict[str, Any]:
    """Totals of the report: over the decomposed linear layers, MACs per token and parameters
    dense and butterfly and the max/mean relative error; the MACs per token of the linears it
    left dense (``skipped_macs``); over the Fourier blocks, the MACs per token they replaced
    and the Fourier mixing's. Zeros when the pass did not run."""
    rep = report_of(module) or {"layers": [], "skipped": [], "fourier": []}
    rows, four = rep["layers"], rep["fourier"]
    errors = [r["error"] for r in rows]
    return {
        "layers": len(rows),
        "skipped": len(rep["skipped"]),
        "skipped_macs": sum(int(np.prod(r["shape"])) for r in rep["skipped"]),
        "dense_macs": sum(r["dense_macs"] for r in rows),
        "butterfly_macs": sum(r["butterfly_macs"] for r in rows),
        "dense_params": sum(r["dense_params"] for r in rows),
        "butterfly_params": sum(r["butterfly_params"] for r in rows),
        "max_error": max(errors, default=0.0),
        "mean_error": sum(errors) / len(errors) if errors else 0.0,
        "fourier_blocks": len(four),
        "fourier_replaced_macs": sum(f["dense_macs"] for f in four),
        "fourier_macs": sum(f["fourier_macs"] for f in four),
    }


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.1f}x" if b else "-"


def format_report(module: ModuleOp) -> str:
    """The decomposition as a table (one line per linear layer), the skipped layers, the
    Fourier blocks and the totals; empty when the pass did not run."""
    rep = report_of(module)
    if rep is None:
        return ""
    o = rep["options"]
    lines = [
        f"butterfly-decompose (kind {o['kind']}, block {o['block'] or 'auto'}, "
        f"factors {o['factors'] or 'full'}, iters {o['iters']}):"
    ]
    head = ("block", "role", "name", "shape", "structure", "error", "MACs/token dense", "butterfly", "", "params dense",
            "butterfly", "")  # fmt: skip
    table = [head]
    for r in rep["layers"]:
        table.append((
            str(r["block"]), r["role"], r["name"], "x".join(map(str, r["shape"])), r["structure"], f"{r['error']:.4f}",
            str(r["dense_macs"]), str(r["butterfly_macs"]), _ratio(r["dense_macs"], r["butterfly_macs"]),
            str(r["dense_params"]), str(r["butterfly_params"]), _ratio(r["dense_params"], r["butterfly_params"]),
        ))  # fmt: skip
    if rep["layers"]:
        widths = [max(len(row[c]) for row in table) for c in range(len(head))]
        for row in table:
            lines.append("  " + "  ".join(cell.ljust(wd) for cell, wd in zip(row, widths)).rstrip())
    else:
        lines.append("  no linear layer decomposed")
    for s in rep["skipped"]:
        shape = "x".join(map(str, s["shape"]))
        lines.append(f"  skipped block {s['block']} {s['role']} {s['name']} {shape}: {s['reason']}")
    for f in rep["fourier"]:
        lines.append(
            f"  fourier block {f['block']}: {', '.join(f['replaced'])} -> sparse.fourier over (seq, hidden) of "
            f"{'x'.join(map(str, f['input']))}; MACs/token {f['dense_macs']} -> {f['fourier_macs']}"
        )
    t = decompose_summary(module)
    if t["layers"]:
        lines.append(
            f"  total: {t['layers']} layers, MACs/token {t['dense_macs']} -> {t['butterfly_macs']} "
            f"({_ratio(t['dense_macs'], t['butterfly_macs'])}), params {t['dense_params']} -> {t['butterfly_params']} "
            f"({_ratio(t['dense_params'], t['butterfly_params'])}), error max {t['max_error']:.4f} "
            f"mean {t['mean_error']:.4f}"
        )
    return "\n".join(lines) + "\n"
