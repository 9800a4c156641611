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
* ``unfused``: the baseline without fusion, layer by layer: per member a QKᵀ
  kernel whose epilogue is the softmax over its whole score rows (when the compute
  tiles have an exp unit; else a softmax kernel of its own on an sfu tile, the
  scores spilled to it) and a PV kernel, the probabilities spilled to DRAM between
  them (``dma_spill`` kernels), so DRAM traffic grows with N².
* ``auto``: ``tile`` chooses among the three.

This pass only records the requested mode on each attention (``attnc.fusion``,
:class:`RequestFusionPattern`): the sizes need the architecture and one SRAM budget
shared by every attention of the module, so ``tile`` chooses them and then applies
:class:`FuseAttentionPattern`, which rewrites each op into tagged per-kernel ops that
``lower-to-dataflow`` partitions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from attnc.dialects import sparse as sp
from attnc.cost.attention import split
from attnc.dialects.dataflow import REPEAT, RESERVE, SPILL, STAGE

#: on a K/V stage: how many of its units it holds at once (1: loaded a unit at a time; all: computed on chip)
STAGE_UNITS = "dataflow.stage_units"
#: on a K/V stage that keeps part of each unit: the keys it keeps (absent: all of them)
STAGE_KEYS = "dataflow.stage_keys"
from attnc.errors import AttncError
from attnc.ir import main_func
from attnc.limits import shown
from attnc.passes.kernel_builder import KernelBuilder, splat
from xdsl.context import Context
from xdsl.dialects.builtin import IntegerAttr, ModuleOp, StringAttr, UnitAttr, i1
from xdsl.ir import BlockArgument, SSAValue
from xdsl.passes import ModulePass
from xdsl.pattern_rewriter import (
    PatternRewriter,
    PatternRewriteWalker,
    RewritePattern,
    op_type_rewrite_pattern,
)

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
    #: unfused: the query rows the QKᵀ kernel takes at a time when the softmax is its epilogue (its compute
    #: tile has an exp unit and SRAM for that many whole score rows), so only the probabilities go through
    #: DRAM; 0: the softmax is a kernel of its own on an sfu tile, the scores spilled to it
    epilogue: int = 0
    stream_block: int = 0  # keys of K/V a member takes at once (online: the key block; FLAT: a MAC-array chunk)
    #: passes > 1 with a unit's K and V too large for the memory tiles: its first ``cached_keys`` keys stay in
    #: them from one pass to the next, so each pass after the first reads only the other keys from DRAM
    cached_keys: int = 0

    def text(self) -> str:
        s = f"{self.mode} groups={self.groups} members={self.members}"
        if self.mode == "unfused" and self.epilogue:
            s += f" (softmax in the QKᵀ kernel, {self.epilogue} rows at a time)"
        if self.mode != "unfused":
            s += f" row_block={self.row_block} key_block={self.key_block} passes={self.passes}"
            if self.staged:
                s += " (K/V staged in memory tiles)"
            if self.spilled:
                s += " (K/V spilled to DRAM, re-read per pass)"
            if self.cached_keys:
                s += f" (keys 0..{self.cached_keys} of K/V kept in memory tiles, the rest re-read per pass)"
        return s


def check_schedule(op: sp.AttentionOp, sched: Schedule, name: str) -> None:
    """Raise unless ``sched`` fits ``op``: no more groups than kv heads, no more members than query rows."""
    units = sp.shape_of(op.q)[0] * sp.shape_of(op.k)[1]
    rows = sp.shape_of(op.q)[2]
    if sched.groups > units or sched.members > rows:
        raise AttncError(f"fuse-attention: {name}: {sched.text()} does not fit {units} kv heads and {rows} query rows")


class FuseAttentionPattern(RewritePattern):
    """Rewrites each ``sparse.attention`` that ``tile`` scheduled into the tagged per-kernel ops of its
    :class:`Schedule` (the numbers stay those of the op): the kv heads become units, each group slices
    its units' K and V (staged in memory tiles or spilled to DRAM when its members re-stream them),
    each member computes its slice of the query rows -- one fused ``sparse.attention`` (online or FLAT),
    or unfused QKᵀ, softmax and PV kernels -- and forwards K and V to the next member, and the members'
    and groups' results are concatenated back. Attentions without a schedule are left as they are.

    ``schedules`` maps each op to rewrite to its name (the kernels' tag prefix) and schedule; the search
    that chose them (``attnc.passes.tile``) shares one SRAM budget over the module, so it runs first
    and this pattern only applies its decisions."""

    def __init__(self, schedules: Mapping[sp.AttentionOp, tuple[str, Schedule]]):
        self.schedules = schedules

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.AttentionOp, rewriter: PatternRewriter) -> None:
        if op not in self.schedules:
            return
        name, sched = self.schedules[op]
        b = KernelBuilder(rewriter, op)
        bsz, hq, s, _ = sp.shape_of(op.q)
        units = _Units.of(b, op)
        outs = [_expand_group(b, op, sched, name, units, g) for g in range(sched.groups)]
        out = outs[0] if len(outs) == 1 else b.add(sp.ConcatOp(outs, 0))
        b.replace_anchor(b.add(sp.ReshapeOp(out, [bsz, hq, s, sp.shape_of(op.v)[3]])))


@dataclass(frozen=True)
class _Units:
    """An attention's operands with its B*Hkv key/value heads as one leading "unit" axis: q and the mask
    ``[units, rep, S, ...]``, k and v ``[units, 1, T, ...]``."""

    q: SSAValue
    k: SSAValue
    v: SSAValue
    mask: SSAValue | None
    count: int
    rep: int

    @staticmethod
    def of(b: KernelBuilder, op: sp.AttentionOp) -> _Units:
        bsz, hq, s, d = sp.shape_of(op.q)
        hkv, t = sp.shape_of(op.k)[1], sp.shape_of(op.k)[2]
        dv = sp.shape_of(op.v)[3]
        rep, units = hq // hkv, bsz * hkv
        qu = b.add(sp.ReshapeOp(op.q, [units, rep, s, d]))
        ku = b.add(sp.ReshapeOp(op.k, [units, 1, t, d]))
        vu = b.add(sp.ReshapeOp(op.v, [units, 1, t, dv]))
        mu = None
        if op.mask is not None:
            full = op.mask
            if list(sp.shape_of(op.mask)) != [bsz, hq, s, t]:
                full = b.add(sp.BroadcastOp(op.mask, [bsz, hq, s, t]))
            mu = b.add(sp.ReshapeOp(full, [units, rep, s, t]))
        return _Units(qu, ku, vu, mu, units, rep)


def _expand_group(b: KernelBuilder, op: sp.AttentionOp, sched: Schedule, name: str, units: _Units,
                  g: int) -> SSAValue:
    """Group ``g``: its units' K and V enter at its first member and pass member to member; returns the
    members' results concatenated along the query rows."""
    s, d = sp.shape_of(op.q)[2], sp.shape_of(op.q)[3]
    t, dv = sp.shape_of(op.k)[2], sp.shape_of(op.v)[3]
    u0, u1 = split(units.count, sched.groups, g)
    group = f"{name}/g{g}"
    kin = _slice(b, units.k, [u0, 0, 0, 0], [u1, 1, t, d])
    vin = _slice(b, units.v, [u0, 0, 0, 0], [u1, 1, t, dv])
    if sched.cached_keys:
        # the stage keeps a unit's first keys (loaded once) and passes the others through (loaded per pass):
        # both loads read their key range of every unit straight from DRAM (lower-to-dataflow's
        # ``split_cached_key_loads``)
        c = sched.cached_keys
        kin, vin = (
            _stage(b, b.add(sp.ConcatOp([_slice(b, x, [u0, 0, 0, 0], [u1, 1, c, w]),
                                         _slice(b, x, [u0, 0, c, 0], [u1, 1, t, w])], 2),
                            f"{name}_g{g}_{n}stage", group),
                   sched, f"{name}_g{g}_{n}stage", group, keys=c)
            for x, n, w in ((units.k, "k", d), (units.v, "v", dv))
        )
    elif sched.staged:
        # K/V computed on chip come whole, not a unit at a time: the stage holds its group's units at once
        held = 1 if _from_dram(op.k) and _from_dram(op.v) else u1 - u0
        kin, vin = (_stage(b, x, sched, f"{name}_g{g}_{n}stage", group, held) for x, n in ((kin, "k"), (vin, "v")))
    elif sched.spilled:
        kin, vin = (_spill(b, x, f"{name}_g{g}_{n}spill", group) for x, n in ((kin, "k"), (vin, "v")))
    rows = []
    for c in range(sched.members):
        r0, r1 = split(s, sched.members, c)
        tag = f"{name}_g{g}_c{c}" if sched.groups * sched.members > 1 else name
        qc = _slice(b, units.q, [u0, 0, r0, 0], [u1, units.rep, r1, d])
        mc = None if units.mask is None else _slice(b, units.mask, [u0, 0, r0, 0], [u1, units.rep, r1, t])
        if sched.mode == "unfused":
            rows.append(_unfused_member(b, op, qc, kin, vin, mc, r0, tag, group, sched.reserve, sched.epilogue))
        else:
            rows.append(_fused_member(b, op, qc, kin, vin, mc, r0, r1, sched, tag, group))
        if c + 1 < sched.members:
            # forward K and V to the next member: a copy out of this kernel's buffer (unfused: out of the
            # QKᵀ and the PV kernel, the ones that read them)
            kin = b.add(sp.ReshapeOp(kin, sp.shape_of(kin)), f"{tag}_qk" if sched.mode == "unfused" else tag, group)
            vin = b.add(sp.ReshapeOp(vin, sp.shape_of(vin)), f"{tag}_pv" if sched.mode == "unfused" else tag, group)
    return rows[0] if len(rows) == 1 else b.add(sp.ConcatOp(rows, 2))


def _fused_member(b: KernelBuilder, op: sp.AttentionOp, qc: SSAValue, kin: SSAValue, vin: SSAValue,
                  mc: SSAValue | None, r0: int, r1: int, sched: Schedule, tag: str, group: str) -> SSAValue:
    """One member's kernel: a fused ``sparse.attention`` over query rows [r0, r1) of its group's units,
    marked with the passes it streams K and V in and the SRAM it claims."""
    t = sp.shape_of(kin)[2]
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
    return b.add(attn, tag, group)


def _slice(b: KernelBuilder, x: SSAValue, starts, ends) -> SSAValue:
    shp = sp.shape_of(x)
    if list(starts) == [0] * len(shp) and list(ends) == list(shp):
        return x
    return b.add(sp.SliceOp(x, list(starts), list(ends), [1] * len(shp)))


def _from_dram(v: SSAValue) -> bool:
    """Whether ``v`` is a graph input or a constant (a DMA load brings it in any order), through data movement."""
    while not isinstance(v, BlockArgument) and sp.is_data_movement(v.owner):
        v = v.owner.operands[0]
    return isinstance(v, BlockArgument) or isinstance(v.owner, sp.ConstantOp)


def _stage(b: KernelBuilder, x: SSAValue, sched: Schedule, tag: str, group: str, held: int = 1,
           keys: int = 0) -> SSAValue:
    op = sp.ReshapeOp(x, sp.shape_of(x))
    op.attributes[STAGE] = IntegerAttr(sched.passes, 64)
    if keys:
        # the keys of a unit it keeps (the others pass through it each pass)
        op.attributes[STAGE_KEYS] = IntegerAttr(keys, 64)
    # the units it holds at once (cost.work's stage plan declares them)
    op.attributes[STAGE_UNITS] = IntegerAttr(held, 64)
    # the stage re-sends K/V in the blocks a member takes at once (a FLAT member's key block is every key)
    op.attributes["dataflow.key_block"] = IntegerAttr(sched.stream_block or sched.key_block, 64)
    return b.add(op, tag, group)


def _spill(b: KernelBuilder, x: SSAValue, tag: str, group: str) -> SSAValue:
    op = sp.ReshapeOp(x, sp.shape_of(x))
    op.attributes[SPILL] = UnitAttr()
    return b.add(op, tag, group)


def _unfused_member(b: KernelBuilder, op: sp.AttentionOp, qc, kin, vin, mc, r0: int, tag: str, group: str,
                    reserve: int = 0, epilogue: int = 0) -> SSAValue:
    """One member's rows, layer by layer: QKᵀ, softmax, PV, the probabilities through DRAM (spilled) between
    the softmax and PV. With ``epilogue`` R > 0 the softmax runs in the QKᵀ kernel on the whole score rows of
    R query rows at a time (what a layer-by-layer mapper does when the compute tile can evaluate exp: the
    scores never leave the tile; the matmul's ``row_block`` R says its MAC array takes R rows a step); else it
    is a kernel of its own (an sfu tile's), the scores spilled to DRAM before it. Its two GEMM kernels claim
    ``reserve`` bytes of their tiles' SRAM (the placer would stack them otherwise, as it would fused members)."""
    elt = sp.elt_of(qc)
    rows = sp.shape_of(qc)[2]
    t = sp.shape_of(kin)[2]
    kt = b.add(sp.TransposeOp(kin, [0, 1, 3, 2]))
    scale = b.add(splat([], elt, op.scale.value.data))
    mm = sp.MatmulOp(qc, kt)
    if epilogue:
        mm.attributes["row_block"] = IntegerAttr(epilogue, 64)
    qk = b.add(mm, f"{tag}_qk", group)
    s = scaled_scores(b, qk, scale, op, f"{tag}_qk", group)
    if not epilogue:
        s = _spill(b, s, f"{tag}_spill_s", group)
    zero, neginf = b.add(splat([], elt, 0.0)), b.add(splat([], elt, -np.inf))
    causal = op.causal_offset.value.data + r0 if op.causal is not None else None
    p = masked_softmax(b, s, mc, causal, (rows, t), zero, neginf, f"{tag}_qk" if epilogue else f"{tag}_softmax", group)
    p = _spill(b, p, f"{tag}_spill_p", group)
    pv = b.add(sp.MatmulOp(p, vin), f"{tag}_pv", group)
    if reserve:
        for v in (qk, pv):
            v.owner.attributes[RESERVE] = IntegerAttr(reserve, 64)
    return pv


def scaled_scores(b: KernelBuilder, s: SSAValue, scale: SSAValue, op: sp.AttentionOp, tag: str, group: str) -> SSAValue:
    """The scores ``s`` (Q·Kᵀ) times ``scale``, soft-capped as ``op`` says, each op tagged ``tag``."""
    s = b.add(sp.MulOp(s, scale), tag, group)
    cap = op.softcap.value.data
    if cap > 0:
        s = b.add(sp.MulOp(s, b.add(splat([], sp.elt_of(s), 1.0 / cap))), tag, group)
        s = b.add(sp.TanhOp(s), tag, group)
        s = b.add(sp.MulOp(s, b.add(splat([], sp.elt_of(s), cap))), tag, group)
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
        ones = bld.add(splat(list(rows_keys), i1, 1))
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


class RequestFusionPattern(RewritePattern):
    """Marks a ``sparse.attention`` that is not a fused kernel yet with the requested mode
    (``attnc.fusion = "<mode>"``), replacing an earlier request."""

    def __init__(self, mode: str):
        self.mode = StringAttr(mode)

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.AttentionOp, rewriter: PatternRewriter) -> None:
        if op.fusion is None and op.attributes.get(FUSION_ATTR) != self.mode:
            op.attributes[FUSION_ATTR] = self.mode
            rewriter.notify_op_modified(op)


@dataclass(frozen=True)
class FuseAttentionPass(ModulePass):
    """fuse-attention: request a fused (or unfused) dataflow for every attention; ``tile`` sizes it."""

    name = "fuse-attention"

    mode: str = "auto"

    def __post_init__(self) -> None:
        # checked when the pipeline is parsed, before any model is read
        if self.mode not in MODES:
            raise AttncError(f"fuse-attention: mode must be one of {', '.join(MODES)}, got {shown(self.mode)}")

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        PatternRewriteWalker(RequestFusionPattern(self.mode), apply_recursively=False).rewrite_region(main_func(op).body)
