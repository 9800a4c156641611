"""fuse-attention: choose how each ``sparse.attention`` runs on the array, and build it.

An attention with q (B, Hq, S, d), k (B, Hkv, T, d) and v (B, Hkv, T, dv) runs on
``groups x members`` compute tiles. The B*Hkv key/value heads ("units", each with
its Hq/Hkv query heads) are split into ``groups`` contiguous ranges, and a group's
query rows into ``members`` contiguous slices, one kernel each. A group's K and V
enter at its first member and are forwarded member to member, so every link
carries them once (the spatial reuse FLAT and FuseMax get from a shared buffer).

Modes (the ``mode`` option; ``tile`` picks the sizes with the cost model):

* ``online``: each member runs one fused ``sparse.attention`` that walks blocks of
  ``key_block`` keys with a running max and sum (FuseMax); nothing of size N×N
  exists, and K and V are read once when a member's rows fit its buffer.
* ``flat``: the same kernels with FLAT's row-block fusion: ``row_block`` query rows
  against all keys at once, 3-pass softmax; the score buffer grows with N.
* ``unfused``: the baseline without fusion: per member a QKᵀ kernel, a softmax
  kernel and a PV kernel, with the scores and the probabilities spilled to DRAM
  between them (``dma_spill`` kernels), so DRAM traffic grows with N².
* ``auto``: ``tile`` chooses among the three.

This pass only records the requested mode on each attention
(``attnc.fusion``); ``tile`` chooses the sizes and calls :func:`expand` to
rewrite the op into tagged per-kernel ops that ``lower-to-dataflow`` partitions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import GROUP, REPEAT, RESERVE, SPILL, STAGE, TAG
from attnc.dialects.values import from_numpy, np_dtype
from attnc.errors import AttncError
from attnc.ir import main_func
from xdsl.context import Context
from xdsl.dialects.builtin import (
    BytesAttr,
    DenseIntOrFPElementsAttr,
    IntegerAttr,
    ModuleOp,
    StringAttr,
    TensorType,
    UnitAttr,
    i1,
)
from xdsl.ir import Operation, SSAValue
from xdsl.passes import ModulePass
from xdsl.rewriter import InsertPoint, Rewriter

#: the requested mode of an attention, set by this pass and read by ``tile``
FUSION_ATTR = "attnc.fusion"
#: the chosen schedule, recorded by ``tile`` on the ops it makes (for reports)
MODES = ("auto", "online", "flat", "flat-row", "flat-head", "unfused", "per-head")


@dataclass(frozen=True)
class Schedule:
    """How one attention runs: mode, the kernel grid, and the fused kernels' blocks."""

    mode: str  # online | flat | unfused
    groups: int
    members: int
    row_block: int
    key_block: int
    passes: int = 1  # times a member streams its group's K and V (1: read once)
    buffer: int = 0  # on-chip bytes a fused member needs (reports)
    staged: bool = False  # passes > 1 re-stream K/V from a memory tile, not from DRAM
    reserve: int = 0  # SRAM a fused member claims on its tile: the search planned one member per tile
    spilled: bool = False  # passes > 1 re-read K/V computed on chip from DRAM: written once, read per pass

    def text(self) -> str:
        s = f"{self.mode} groups={self.groups} members={self.members}"
        if self.mode != "unfused":
            s += f" row_block={self.row_block} key_block={self.key_block} passes={self.passes}"
            if self.staged:
                s += " (K/V staged in memory tiles)"
            if self.spilled:
                s += " (K/V spilled to DRAM, re-read per pass)"
        return s


def split(n: int, parts: int, i: int) -> tuple[int, int]:
    """The i-th of ``parts`` balanced contiguous ranges of range(n)."""
    return i * n // parts, (i + 1) * n // parts


class _Builder:
    def __init__(self, anchor: Operation):
        self.anchor = anchor

    def add(self, op: Operation, tag: str | None = None, group: str | None = None) -> SSAValue:
        if tag:
            op.attributes[TAG] = StringAttr(tag)
        if group:
            op.attributes[GROUP] = StringAttr(group)
        Rewriter.insert_op(op, InsertPoint.before(self.anchor))
        return op.results[0]


def _slice(b: _Builder, x: SSAValue, starts, ends) -> SSAValue:
    shp = sp.shape_of(x)
    if list(starts) == [0] * len(shp) and list(ends) == list(shp):
        return x
    return b.add(sp.SliceOp(x, list(starts), list(ends), [1] * len(shp)))


def _splat(shape: Sequence[int], elt, value) -> sp.ConstantOp:
    # one element in the element type's own storage (bf16 is 2 bytes, i1 one byte)
    raw = from_numpy(np.asarray([value]).astype(np_dtype(elt)), elt).data.data
    return sp.ConstantOp(DenseIntOrFPElementsAttr(TensorType(elt, list(shape)), BytesAttr(raw)))


def expand(op: sp.AttentionOp, sched: Schedule, name: str) -> None:
    """Rewrite ``op`` into tagged per-kernel ops for ``sched`` (the numbers stay those of the op)."""
    b = _Builder(op)
    q, k, v, mask = op.q, op.k, op.v, op.mask
    bsz, hq, s, d = sp.shape_of(q)
    hkv, t = sp.shape_of(k)[1], sp.shape_of(k)[2]
    dv = sp.shape_of(v)[3]
    rep = hq // hkv
    units = bsz * hkv
    if sched.groups > units or sched.members > s:
        raise AttncError(f"fuse-attention: {name}: {sched.text()} does not fit {units} kv heads and {s} query rows")
    qu = b.add(sp.ReshapeOp(q, [units, rep, s, d]))
    ku = b.add(sp.ReshapeOp(k, [units, 1, t, d]))
    vu = b.add(sp.ReshapeOp(v, [units, 1, t, dv]))
    mu = None
    if mask is not None:
        ms = sp.shape_of(mask)
        full = b.add(sp.BroadcastOp(mask, [bsz, hq, s, t])) if list(ms) != [bsz, hq, s, t] else mask
        mu = b.add(sp.ReshapeOp(full, [units, rep, s, t]))
    outs = []
    for g in range(sched.groups):
        u0, u1 = split(units, sched.groups, g)
        kin = _slice(b, ku, [u0, 0, 0, 0], [u1, 1, t, d])
        vin = _slice(b, vu, [u0, 0, 0, 0], [u1, 1, t, dv])
        if sched.staged:
            kin, vin = (_stage(b, x, sched, f"{name}_g{g}_{n}stage", f"{name}/g{g}") for x, n in ((kin, "k"), (vin, "v")))
        elif sched.spilled:
            kin, vin = (_spill(b, x, f"{name}_g{g}_{n}spill", f"{name}/g{g}") for x, n in ((kin, "k"), (vin, "v")))
        rows = []
        for c in range(sched.members):
            r0, r1 = split(s, sched.members, c)
            tag = f"{name}_g{g}_c{c}" if sched.groups * sched.members > 1 else name
            group = f"{name}/g{g}"
            qc = _slice(b, qu, [u0, 0, r0, 0], [u1, rep, r1, d])
            mc = None if mu is None else _slice(b, mu, [u0, 0, r0, 0], [u1, rep, r1, t])
            if sched.mode == "unfused":
                o = _unfused_member(b, op, qc, kin, vin, mc, r0, tag, group, sched.reserve)
            else:
                attn = sp.AttentionOp(
                    qc, kin, vin, mc, scale=op.scale.value.data, causal=op.causal is not None,
                    causal_offset=op.causal_offset.value.data + r0, softcap=op.softcap.value.data,
                    fusion="flat" if sched.mode == "flat" else "online",
                    row_block=min(sched.row_block, r1 - r0), key_block=t if sched.mode == "flat" else sched.key_block,
                )  # fmt: skip
                if sched.passes > 1:
                    attn.attributes[REPEAT] = IntegerAttr(sched.passes, 64)
                if sched.reserve:
                    attn.attributes[RESERVE] = IntegerAttr(sched.reserve, 64)
                o = b.add(attn, tag, group)
            rows.append(o)
            if c + 1 < sched.members:
                # forward K and V to the next member: a copy out of this kernel's buffer
                fwd = f"{tag}_qk" if sched.mode == "unfused" else tag
                kin = b.add(sp.ReshapeOp(kin, sp.shape_of(kin)), fwd, group)
                vin = b.add(sp.ReshapeOp(vin, sp.shape_of(vin)), f"{tag}_pv" if sched.mode == "unfused" else tag, group)
        outs.append(rows[0] if len(rows) == 1 else b.add(sp.ConcatOp(rows, 2)))
    out = outs[0] if len(outs) == 1 else b.add(sp.ConcatOp(outs, 0))
    out = b.add(sp.ReshapeOp(out, [bsz, hq, s, dv]))
    op.result.replace_all_uses_with(out)
    Rewriter.erase_op(op)


def _stage(b: _Builder, x: SSAValue, sched: Schedule, tag: str, group: str) -> SSAValue:
    op = sp.ReshapeOp(x, sp.shape_of(x))
    op.attributes[STAGE] = IntegerAttr(sched.passes, 64)
    op.attributes["dataflow.key_block"] = IntegerAttr(sched.key_block, 64)
    return b.add(op, tag, group)


def _spill(b: _Builder, x: SSAValue, tag: str, group: str) -> SSAValue:
    op = sp.ReshapeOp(x, sp.shape_of(x))
    op.attributes[SPILL] = UnitAttr()
    return b.add(op, tag, group)


def _unfused_member(b: _Builder, op: sp.AttentionOp, qc, kin, vin, mc, r0: int, tag: str, group: str,
                    reserve: int = 0) -> SSAValue:
    """QKᵀ -> DRAM -> softmax -> DRAM -> PV for one member's rows; its two GEMM kernels claim ``reserve``
    bytes of their tiles' SRAM (the placer would stack them otherwise, as it would fused members)."""
    elt = sp.elt_of(qc)
    u, rep, rows, _ = sp.shape_of(qc)
    t = sp.shape_of(kin)[2]
    kt = b.add(sp.TransposeOp(kin, [0, 1, 3, 2]))
    scale = b.add(_splat([], elt, op.scale.value.data))
    qk = b.add(sp.MatmulOp(qc, kt), f"{tag}_qk", group)
    s = scaled_scores(b, qk, scale, op, f"{tag}_qk", group)
    s = _spill(b, s, f"{tag}_spill_s", group)
    zero, neginf = b.add(_splat([], elt, 0.0)), b.add(_splat([], elt, -np.inf))
    causal = op.causal_offset.value.data + r0 if op.causal is not None else None
    p = masked_softmax(b, s, mc, causal, (rows, t), zero, neginf, f"{tag}_softmax", group)
    p = _spill(b, p, f"{tag}_spill_p", group)
    pv = b.add(sp.MatmulOp(p, vin), f"{tag}_pv", group)
    if reserve:
        for v in (qk, pv):
            v.owner.attributes[RESERVE] = IntegerAttr(reserve, 64)
    return pv


def scaled_scores(b: _Builder, s: SSAValue, scale: SSAValue, op: sp.AttentionOp, tag: str, group: str) -> SSAValue:
    """The scores ``s`` (Q·Kᵀ) times ``scale``, soft-capped as ``op`` says, each op tagged ``tag``."""
    s = b.add(sp.MulOp(s, scale), tag, group)
    cap = op.softcap.value.data
    if cap > 0:
        s = b.add(sp.MulOp(s, b.add(_splat([], sp.elt_of(s), 1.0 / cap))), tag, group)
        s = b.add(sp.TanhOp(s), tag, group)
        s = b.add(sp.MulOp(s, b.add(_splat([], sp.elt_of(s), cap))), tag, group)
    return s


def masked_softmax(bld, s: SSAValue, mask: SSAValue | None, causal_offset: int | None, rows_keys: tuple[int, int],
                   zero: SSAValue, neginf: SSAValue, tag: str, group: str) -> SSAValue:
    """softmax over the keys of ``s`` plus its bias -- an i1 mask (false: -inf) or an additive one, and the
    causal triangle when ``causal_offset`` is given -- with rows masked everywhere giving zeros, as
    ``sparse.attention`` defines it. Every op is tagged ``tag`` (one softmax kernel)."""
    allowed = additive = None
    if mask is not None:
        if sp.elt_of(mask) == i1:
            allowed = mask
        else:
            additive = mask
    if causal_offset is not None:
        ones = bld.add(_splat(list(rows_keys), i1, 1))
        tri = bld.add(sp.TriluOp(ones, causal_offset, upper=False), tag, group)
        allowed = tri if allowed is None else bld.add(sp.AndOp(allowed, tri), tag, group)
    bias = None
    if allowed is not None:
        bias = bld.add(sp.WhereOp(allowed, zero, neginf), tag, group)
        if additive is not None:
            bias = bld.add(sp.AddOp(bias, additive), tag, group)
    elif additive is not None:
        bias = additive
    if bias is not None:
        s = bld.add(sp.AddOp(s, bias), tag, group)
    p = bld.add(sp.SoftmaxOp(s, -1), tag, group)
    if bias is not None:
        top = bld.add(sp.ReduceOp(bias, "max", [-1], keepdims=True), tag, group)
        dead = bld.add(sp.CmpOp(top, neginf, "eq"), tag, group)
        p = bld.add(sp.WhereOp(dead, zero, p), tag, group)
    return p


@dataclass(frozen=True)
class FuseAttentionPass(ModulePass):
    """fuse-attention: request a fused (or unfused) dataflow for every attention; ``tile`` sizes it."""

    name = "fuse-attention"

    mode: str = "auto"

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        if self.mode not in MODES:
            raise AttncError(f"fuse-attention: mode must be one of {', '.join(MODES)}, got '{self.mode}'")
        for a in main_func(op).body.block.ops:
            if isinstance(a, sp.AttentionOp) and a.fusion is None:
                a.attributes[FUSION_ATTR] = StringAttr(self.mode)
