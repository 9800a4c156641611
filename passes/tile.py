"""tile: choose each attention's schedule with a cost model, then build it.

For every ``sparse.attention`` marked by ``fuse-attention`` the pass enumerates a
pruned space -- mode (online, FLAT row-block, FLAT head, unfused), groups and
members (powers of two up to the array's compute tiles), row block and key block
(powers of two, and the whole extent; a row block that fills the tile too) -- drops candidates whose buffers do not fit
the tile or whose kernels do not fit the array's contexts, predicts the cycles of
the rest (:func:`predict`) and keeps the cheapest. Options force any part of the choice:
``tile{mode=online,members=4,key-block=128}``.

Each step decides for the whole module first and then rewrites the IR with a pattern
that applies the decisions: the attention search (one SRAM budget shared by every
attention) -> :class:`attnc.passes.fuse_attention.FuseAttentionPattern`; the
butterfly stage-pipeline planner, on the tiles the attentions leave ->
:class:`attnc.passes.butterfly_pipeline.ExpandButterflyPattern`; the GEMM grids, on what
both leave -> :class:`attnc.passes.gemm.GemmGridPattern`.

The prediction (:func:`attnc.cost.attention.predict`) is first-order on purpose, fast
enough to score thousands of candidates; ``attnc.cost`` estimates the lowered graph
afterwards, and the simulator measures it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
from attnc.cost.attention import Prediction, Shape, capacity_bound, fused_attention_buffer, predict
from attnc.cost.work import SFU_OPS, kernel_cost, nbytes
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import TAG, TILE_KIND
from attnc.dialects.values import np_dtype
from attnc.errors import AttncError
from attnc.ir import main_func
from attnc.limits import shown
from attnc.passes.target import TargetPass
from attnc.passes.butterfly_pipeline import ExpandButterflyPattern, butterfly_contexts, plan_butterflies
from attnc.passes.fuse_attention import FUSION_ATTR, MODES, FuseAttentionPattern, Schedule, check_schedule
from attnc.passes.concat_folds import fold_concats
from attnc.passes.sram_phases import SHARE_ATTR
from attnc.passes.gemm import GemmGridPattern, macs, merge_shared_lhs, plan_gemms, splittable, unmerge
from attnc.passes.gemm import phases as gemm_phases
from xdsl.context import Context
from xdsl.dialects import func
from xdsl.dialects.builtin import FloatAttr, IntegerAttr, ModuleOp, StringAttr
from xdsl.ir import BlockArgument, Operation
from xdsl.pattern_rewriter import PatternRewriteWalker, RewritePattern

#: the schedule chosen for an attention, and the search's figures, kept on @main for reports
REPORT_ATTR = "attnc.tile_report"
#: schedules predicted within this fraction of the fastest count as equally fast
TIE = 0.03


@dataclass
class SearchResult:
    best: Prediction
    candidates: int
    feasible: int
    seconds: float
    rejected: dict[str, int] = field(default_factory=dict)


def shape_of(op: sp.AttentionOp) -> Shape:
    b, hq, s, d = sp.shape_of(op.q)
    hkv, t = sp.shape_of(op.k)[1], sp.shape_of(op.k)[2]

    def from_dram(v) -> bool:
        return isinstance(v, BlockArgument) or isinstance(v.owner, sp.ConstantOp)

    return Shape(b, hq, hkv, s, t, d, sp.shape_of(op.v)[3], np_dtype(sp.elt_of(op.q)).itemsize,
                 op.causal is not None, op.causal_offset.value.data, op.mask is not None,
                 from_dram(op.k) and from_dram(op.v), _from_butterfly(op.k) or _from_butterfly(op.v))  # fmt: skip


def _from_butterfly(v) -> bool:
    """Whether ``v`` is a butterfly matmul's result, through data movement and elementwise ops (its bias add):
    a stage chain makes it a row block of every column at a time (``butterfly_pipeline``)."""
    seen = set()
    todo = [v]
    while todo:
        x = todo.pop()
        op = x.owner if not isinstance(x, BlockArgument) else None
        if op is None or op in seen:
            continue
        seen.add(op)
        if isinstance(op, sp.ButterflyMatmulOp):
            return True
        if sp.is_data_movement(op) or isinstance(op, (*sp.UNARY_OPS, *sp.BINARY_OPS)):
            todo.extend(op.operands)
    return False


def _pow2_upto(n: int, start: int = 1) -> list[int]:
    out, x = [], max(1, start)
    while x < n:
        out.append(x)
        x *= 2
    return out + [n]


def _passes(sh: Shape, rows: int, row_block: int, fusion: str, budget: int, key_block: int,
            chunk: int) -> tuple[int, int]:
    """(passes over K/V, buffer bytes) for a member of ``rows`` queries: one pass when the
    rows fit at once or K and V stay resident, else one per row block."""
    args = (rows, sh.keys, sh.d, sh.dv, sh.eb)
    kw = {"fusion": fusion, "row_block": row_block, "key_block": key_block, "key_chunk": chunk}
    if row_block >= rows:
        return 1, fused_attention_buffer(*args, kv_resident=False, **kw)
    resident = fused_attention_buffer(*args, kv_resident=True, **kw)
    if resident <= budget:
        return 1, resident
    return -(-rows // row_block), fused_attention_buffer(*args, kv_resident=False, **kw)


def candidates(sh: Shape, arch, mode: str, budget: int, forced: dict,
               reserved: dict[str, int] | None = None) -> tuple[list[Schedule], dict[str, int]]:
    """The pruned space, with the reasons candidates were dropped. ``reserved`` counts the
    contexts per tile kind that the graph's other kernels need."""
    reserved = reserved or {}
    tiles = len(arch.tiles_of("compute"))
    compute_slots = sum(t.contexts for t in arch.tiles_of("compute")) - reserved.get("compute", 0)
    sfu_slots = sum(t.contexts for t in arch.tiles_of("sfu")) - reserved.get("sfu", 0)
    dma_slots = sum(t.contexts for t in arch.tiles_of("dma")) - reserved.get("dma", 0)
    tile = arch.tiles_of("compute")[0]
    modes = {"auto": ("online", "flat", "flat-head", "unfused"), "flat": ("flat", "flat-head"),
             "flat-row": ("flat",)}.get(mode, (mode,))  # fmt: skip
    out: list[Schedule] = []
    rejected: dict[str, int] = {}

    def reject(why: str) -> None:
        rejected[why] = rejected.get(why, 0) + 1

    def sizes(key: str, natural: list[int], cap: int) -> list[int]:
        # a forced size replaces the natural ones (clamped to what the shape allows)
        return [min(forced[key], cap)] if forced.get(key) else natural

    for m in modes:
        if m != "unfused" and tile.exp_per_cycle <= 0:
            # a fused attention computes its exps where its scores are: on the compute tile's exp unit
            reject("the compute tiles have no exp unit for a fused softmax")
            continue
        members = [1] if m == "flat-head" else sizes("members", _pow2_upto(min(sh.rows, tiles)), sh.rows)
        for c in members:
            for g in sizes("groups", _pow2_upto(min(sh.units, max(1, tiles // c))), sh.units):
                rows_c = -(-sh.rows // c)
                if m == "unfused":
                    # the softmax in the QKᵀ kernel, where the compute tile has an exp unit and its claim (half
                    # the budget) holds whole score rows (f32) in half of it: one spill, no sfu kernel, its
                    # MAC array taking that many rows a step (part-full below its height); or on an sfu tile
                    # with the scores spilled to it (full MAC rows, twice the DRAM traffic): the model chooses
                    fit = budget // 4 // max(sh.keys * max(sh.eb, 4), 1)
                    epilogues = [min(fit, max(tile.mac_rows, 1), rows_c)] if tile.exp_per_cycle > 0 and fit else []
                    for epilogue in [*epilogues, 0]:
                        sfu_need = 0 if epilogue else g * c
                        if (g * c > compute_slots // 2 or sfu_need > sfu_slots
                                or (1 if epilogue else 2) * g * c + 4 > dma_slots):  # fmt: skip
                            reject("kernels do not fit the array's contexts")
                            continue
                        if sfu_need and not _softmax_rows_fit(sh, arch, sfu_need):
                            reject("a score row per softmax kernel exceeds the sfu tiles' SRAM")
                            continue
                        out.append(Schedule("unfused", g, c, rows_c, sh.keys, epilogue=epilogue))
                    continue
                if g * c > min(tiles, compute_slots) or 4 > dma_slots:
                    reject("more members than compute tiles")
                    continue
                fusion = "online" if m == "online" else "flat"
                rbs = [rows_c] if m == "flat-head" else sizes("row_block", _pow2_upto(rows_c), rows_c)
                kbs = [sh.keys] if fusion == "flat" else sizes(
                    "key_block", _pow2_upto(sh.keys, min(sh.keys, max(tile.mac_cols, 1))), sh.keys
                )
                for kb in kbs:
                    # besides the powers of two, the row block that fills the budget: each pass over K and V
                    # then serves as many rows as the tile holds (the fewest passes, the least K/V traffic)
                    filled = [] if m == "flat-head" or forced.get("row_block") else [
                        _filling_row_block(sh, rows_c, fusion, budget, kb, tile.mac_cols, max(tile.mac_rows, 1))]
                    for r in dict.fromkeys(rbs + [f for f in filled if f and f not in rbs]):
                        passes, need = _passes(sh, rows_c, r, fusion, budget, kb, tile.mac_cols)
                        if need > budget:
                            reject("buffers exceed the tile's SRAM")
                            continue
                        block = kb if fusion == "online" else min(sh.keys, max(tile.mac_cols, 1))
                        staged = passes > 1 and _stageable(sh, arch, g, block, reserved)
                        # (kept keys take two more DMA loads: K's and V's kept and passed-through ranges)
                        cached = (_cacheable_keys(sh, arch, g, block, reserved)
                                  if passes > 1 and not staged and 6 <= dma_slots else 0)  # fmt: skip
                        # K/V computed on chip that a member streams several times go through DRAM once; so
                        # do K/V a stage chain makes a row block of all heads at a time when a group takes
                        # several heads one after the other (the first member would hold them whole, each
                        # larger than its tile's share): the read-back brings them head by head
                        spilled = not staged and not sh.kv_from_dram and (
                            passes > 1 or sh.kv_by_rows and -(-sh.units // g) > 1)
                        if spilled and 4 + 2 * g > dma_slots:
                            reject("K/V spills do not fit the DMA tiles' contexts")
                            continue
                        out.append(Schedule(fusion, g, c, r, kb, passes, need, staged, spilled=spilled,
                                            stream_block=block, cached_keys=cached))
    if mode == "auto" and any(s.mode != "unfused" for s in out):
        # unfused is the baseline: ``auto`` falls back to it only when no fused schedule fits. At a few
        # hundred cycles its first-order prediction can undercut a fused one, but it spills N² values to
        # DRAM and takes twice the contexts, which the placer may then not find
        dropped = sum(s.mode == "unfused" for s in out)
        if dropped:
            rejected["unfused: a fused schedule fits"] = dropped
        out = [s for s in out if s.mode != "unfused"]
    return out, rejected


def _softmax_rows_fit(sh: Shape, arch, kernels: int) -> bool:
    """Whether ``kernels`` unfused softmax kernels, spread evenly over the sfu tiles, each hold a score row (the
    least they stream their spilled scores in, lower-to-dataflow's ``stream_unfused_attention``) in their
    tile's SRAM."""
    tiles = arch.tiles_of("sfu")
    if not tiles:
        return False
    per_tile = -(-kernels // len(tiles))
    return per_tile * sh.keys * sh.eb <= max(t.sram_bytes for t in tiles)


def _filling_row_block(sh: Shape, rows: int, fusion: str, budget: int, key_block: int, chunk: int,
                       mac_rows: int) -> int:
    """The row block of a member of ``rows`` queries that streams K and V the fewest times within ``budget``:
    the largest that fits, in whole MAC-array row tiles (a partial tile costs a whole one), then evened out
    over the passes it needs; 0 when not even one row fits."""
    def need(r: int) -> int:
        return fused_attention_buffer(r, sh.keys, sh.d, sh.dv, sh.eb, fusion=fusion, row_block=r,
                                      key_block=key_block, kv_resident=False, key_chunk=chunk)  # fmt: skip

    lo, hi = 0, rows
    while lo < hi:  # the buffer grows with the rows
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid) <= budget else (lo, mid - 1)
    if not lo:
        return 0
    step = mac_rows if lo >= mac_rows else 1
    lo -= lo % step
    even = -(-rows // -(-rows // lo))
    return min(lo, -(-even // step) * step)


def _stageable(sh: Shape, arch, groups: int, key_block: int, reserved: dict[str, int]) -> bool:
    """Whether the memory tiles can hold what a stage of K and one of V per group receive at once (with two
    key blocks each), so that passes re-read them on chip instead of from DRAM. A stage loaded from DRAM for
    itself takes one unit at a time; K and V computed on chip come out of the read-back that also brings the
    members' Q rows, which the members pace row block by row block while a stage takes a unit per pass, so
    that read-back runs ahead of the members (the timing model cannot pace one context by both) and a stage
    holds its group's K or V whole."""
    if reserved.get("memory", 0):
        return False
    kb = min(key_block, sh.keys)
    units = 1 if sh.kv_from_dram else -(-sh.units // groups)
    need = sh.eb * max(sh.d, sh.dv) * (units * sh.keys + 2 * kb)
    slots = sum(min(t.contexts, t.sram_bytes // need) for t in arch.tiles_of("memory")) if need else 0
    return slots >= 2 * groups


def _cacheable_keys(sh: Shape, arch, groups: int, key_block: int, reserved: dict[str, int]) -> int:
    """The first keys of a unit's K and V that two memory-tile stages (one for K, one for V, on tiles of their
    own where there are two) can keep from one pass to the next when the whole unit does not fit
    (:func:`_stageable`): each holds its keys, two key blocks of them to send and two of the others passing
    through, in whole key blocks; 0 when not one block fits, or the memory tiles are taken, or K and V are
    computed on chip (their read-back comes whole), or there are several groups (each would need stages of its
    own). Passes after the first then read only the other keys from DRAM."""
    tiles = sorted((t.sram_bytes for t in arch.tiles_of("memory") if t.contexts), reverse=True)
    if reserved.get("memory", 0) or not tiles or groups != 1 or not sh.kv_from_dram:
        return 0
    room = tiles[1] if len(tiles) > 1 else tiles[0] // 2
    kb = min(key_block, sh.keys)
    keys = room // (sh.eb * max(sh.d, sh.dv)) - 4 * kb
    keys -= keys % kb
    return keys if kb <= keys < sh.keys else 0


def search(sh: Shape, arch, mode: str = "auto", budget: int | None = None, forced: dict | None = None,
           reserved: dict[str, int] | None = None) -> SearchResult:
    """The cheapest feasible schedule of one attention, by :func:`predict`."""
    start = time.perf_counter()
    tile = max(arch.tiles_of("compute"), key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    budget = tile.sram_bytes if budget is None else budget
    cands, rejected = candidates(sh, arch, mode, budget, forced or {}, reserved)
    if not cands:
        why = "; ".join(f"{n} {r}" for r, n in sorted(rejected.items())) or "no candidate"
        raise AttncError(f"tile: no {mode} schedule fits {arch.name} ({why})")
    preds = [predict(sh, s, arch, tile) for s in cands]
    # schedules whose K/V chain fits the links' headroom, unless none does (then the placer decides)
    routable = [p for p in preds if p.cycles >= 0]
    if routable:
        rejected["K/V chain over the links' headroom"] = len(preds) - len(routable)
        preds = routable
    else:
        for p in preds:
            p.cycles = -p.cycles
    # fastest first; within TIE of the fastest, the least DRAM traffic (it is most of the energy)
    fastest = min(p.cycles for p in preds)
    best = min((p for p in preds if p.cycles <= fastest * (1 + TIE)), key=lambda p: (p.dram_bytes, p.cycles, p.kernels))
    return SearchResult(best, len(cands) + sum(rejected.values()), len(cands), time.perf_counter() - start, rejected)


@dataclass(frozen=True)
class TilePass(TargetPass):
    """tile: pick each marked attention's schedule by the cost model and build it."""

    name = "tile"

    mode: str = ""
    groups: int = 0
    members: int = 0
    row_block: int = 0
    key_block: int = 0
    gemm_parts: int = -1  # parts per large GEMM (a grid of row x column blocks): -1 chooses, 1 keeps them whole
    share_sram: str = "auto"  # on: phases reuse SRAM (data crossing them goes through DRAM); off; auto decides

    def __post_init__(self) -> None:
        # checked when the pipeline is parsed, before any model is read
        super().__post_init__()
        if self.mode and self.mode not in MODES:
            raise AttncError(f"tile: mode must be one of {', '.join(MODES)}, got {shown(self.mode)}")
        for opt in ("groups", "members", "row_block", "key_block"):
            if getattr(self, opt) < 0:
                raise AttncError(f"tile: {opt.replace('_', '-')} must be >= 0 (0 chooses), got {getattr(self, opt)}")
        if self.gemm_parts < -1:
            raise AttncError(f"tile: gemm-parts must be >= 1, or -1 to choose, got {self.gemm_parts}")
        if self.share_sram not in ("auto", "on", "off"):
            raise AttncError(f"tile: share-sram must be auto, on or off, got {shown(self.share_sram)}")

    def apply(self, ctx: Context, op: ModuleOp) -> None:
        arch = self.target()
        fn = main_func(op)
        self.refuse_empty(fn)
        forced = {"groups": self.groups, "members": self.members, "row_block": self.row_block,
                  "key_block": self.key_block}  # fmt: skip
        # each step decides for the whole module (the attentions share one SRAM budget, the stage chains
        # plan on what the attentions leave, the GEMM split on what both leave), then applies its decisions
        # projections of one value (Q, K, V) become one GEMM first: the decisions below count its parts once
        merged = merge_shared_lhs(fn) if self.gemm_parts != 1 else {}
        shared = shares_sram(fn, arch, self.share_sram, self.gemm_parts)
        if shared:
            fn.attributes[SHARE_ATTR] = IntegerAttr(1, 64)
        if shared and not self.members and not self.groups and self.gemm_parts != 1:
            forced.update(_members_for_grids(fn, arch, self.mode, forced, merged))
        attention = schedule_attentions(fn, arch, self.mode, forced, shared)
        _rewrite(fn, FuseAttentionPattern(attention.schedules))
        reports = attention.reports
        # butterfly matmuls and Fourier mixing: stage pipelines on the tiles the attentions leave
        members = sum(1 for o in fn.body.block.ops if isinstance(o, sp.AttentionOp) and o.fusion is not None)
        # (sharing SRAM, the members are a phase of their own: later phases get the tiles' SRAM back)
        used_sram = 0 if shared else attention.used_sram
        chains = plan_butterflies(fn, arch, _reserved(fn), used_sram, members)
        _rewrite(fn, ExpandButterflyPattern(chains.plans))
        reports += chains.reports
        # every large GEMM across the compute tiles of its phase, on the contexts and SRAM the rest leave
        chosen = [o for o in fn.body.block.ops if splittable(o)]
        g = _GemmRoom.of(fn, arch, chosen, merged, shared, members > 0)
        # members on every compute tile leave each tile what they do not claim: no part may need more
        computes = arch.tiles_of("compute")
        part_cap = None
        if members >= len(computes) and used_sram:
            part_cap = min(t.sram_bytes for t in computes) - -(-used_sram // members)
        gemms = _plan_grids(fn, arch, self.gemm_parts, used_sram, g, chosen, members, part_cap, shared, merged)
        if shared and (extra := _row_block_contexts(fn, arch, gemms.grids)):
            g = replace(g, others=g.others + extra)
            gemms = _plan_grids(fn, arch, self.gemm_parts, used_sram, g, chosen, members, part_cap, shared, merged)
        for o in merged:
            if o not in gemms.grids:
                unmerge(o)
        _rewrite(fn, GemmGridPattern(gemms.grids))
        # what reads some of a grid's parts (a member, one head of a projection) reads only those
        fold_concats(fn.body)
        reports += gemms.reports
        if reports:
            fn.attributes[REPORT_ATTR] = StringAttr("\n".join(reports))


def _requested(a: sp.AttentionOp, mode: str) -> str:
    """The schedule mode an attention is to get: the pass's, else what ``fuse-attention`` marked ("" none)."""
    req = a.attributes.get(FUSION_ATTR)
    return mode or (req.data if isinstance(req, StringAttr) else "")


@dataclass(frozen=True)
class _GemmRoom:
    """What the GEMM planning is given besides SRAM: the contexts other kernels take (``reserved``,
    ``others``: compute ones besides the GEMMs), the DMA contexts left to the GEMMs' loads, each GEMM's head
    width, and the GEMMs whose parts read their row strip from DRAM."""

    reserved: dict[str, int]
    others: int
    dma_free: int
    heads: dict
    direct: set

    @staticmethod
    def of(fn: func.FuncOp, arch, gemms: list, merged: dict, shared: bool, attention: bool) -> _GemmRoom:
        reserved = _reserved(fn)
        # the DMA contexts the rest leave to the GEMMs' weight loads (each counted in `reserved` once)
        dma_free = sum(t.contexts for t in arch.tiles_of("dma")) - reserved["dma"] + len(gemms)
        if shared:  # the DRAM spills between phases and the per-phase loads of shared inputs
            dma_free -= 2 * (len(gemms) + (1 if attention else 0))
        # a Q/K/V projection's column blocks hold whole heads, so a member reads only the parts of its heads
        heads = {o: w for o in gemms if (w := _head_width(o.result))}
        for o, width in merged.items():
            heads[o] = int(np.gcd(width, _gcd_heads(o)))
        direct = {o for o in gemms if shared and _fed_by_attention(o.lhs)}
        return _GemmRoom(reserved, reserved["compute"] - len(gemms), dma_free, heads, direct)


#: row blocks (compute contexts) kept for each norm when phases share SRAM, as a share of the compute tiles
NORM_BLOCKS = 8


def _row_block_contexts(fn: func.FuncOp, arch, grids: dict) -> int:
    """Compute contexts to leave to the norms' row blocks when phases share SRAM (0: none). ``fuse-elementwise``
    cuts a norm into row blocks within the contexts the other kernels leave, less its headroom (an eighth), and
    runs them on compute tiles when those have special-function units. Sharing SRAM, a norm between two phases
    runs alone: a norm that takes one tile longer than the fastest GEMM grid (``grids``) is a stretch of the
    layer worth some GEMM parts. With every context given to the grids and the members, the BERT layer's last
    LayerNorm ran as one kernel on one tile for 86K of its 229K cycles on cloud at seq 512 (on edge the grids
    take far longer than a norm, and their parts are worth more)."""
    from attnc.passes.fuse_elementwise import HEADROOM

    computes = arch.tiles_of("compute")
    if not computes or not grids or not all(t.special_per_cycle > 0 for t in computes):
        return 0
    norms = [o for o in fn.body.block.ops if isinstance(o, (sp.LayerNormOp, sp.SoftmaxOp))]
    fastest = min(grid.cycles for grid in grids.values())
    if not any(kernel_cost([o], [o.results[0].type], arch).cycles > fastest for o in norms):
        return 0
    total = sum(t.contexts for t in computes)
    return total // HEADROOM + len(norms) * max(1, len(computes) // NORM_BLOCKS)


def _plan_grids(fn: func.FuncOp, arch, parts: int, used_sram: int, g: _GemmRoom, gemms: list, members: int,
                part_cap: int | None, shared: bool, merged: dict):
    """The GEMM grids. A direct grid's parts each read their row strip from DRAM, which the grid search counts
    once per row: when the other columns' reads would make the grid DRAM-bound beyond the tie margin of its
    predicted time, that GEMM is planned again as one column of parts (each reads its strip once). On cloud the
    output projection's 2x24 grid read 18.9 MB for a 0.8 MB input (24 streams of each member's output out of
    one DMA tile: links over capacity, a place-route of 100 s); on edge the extra reads hide under compute."""
    heads = dict(g.heads)

    def plan():
        return plan_gemms(fn, arch, parts, used_sram, g.others, gemms, heads, members, g.dma_free, part_cap,
                          shared, merged, g.direct)  # fmt: skip

    out = plan()
    dram = max(arch.dram.bytes_per_cycle, 1e-9)
    redo = [o for o, grid in out.grids.items() if grid.direct and grid.cols > 1
            and (grid.dram_bytes + (grid.cols - 1) * nbytes(o.lhs.type)) / dram > (1 + TIE) * grid.cycles]
    for o in redo:
        heads[o] = sp.shape_of(o.rhs)[1]
    return plan() if redo else out


def _members_for_grids(fn: func.FuncOp, arch, mode: str, forced: dict, merged: dict) -> dict[str, int]:
    """The attentions' members and groups when phases share SRAM (empty: the search's own choice). Contexts are
    not shared: every phase's kernels keep theirs, so members the attention gains are parts the GEMM grids lose
    (on edge, 16 members leave an FFN grid 8 parts). Tries the search's choice, then one group of half as many
    members, and so on, and keeps the one whose attentions plus GEMM phases are predicted fastest."""
    ops = list(fn.body.block.ops)
    todo = [(a, m) for a in ops if isinstance(a, sp.AttentionOp) and a.fusion is None
            and (m := _requested(a, mode)) and m != "per-head"]  # fmt: skip
    gemms = [o for o in ops if splittable(o)]
    if not todo or not gemms:
        return {}
    tile = max(arch.tiles_of("compute"), key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    g = _GemmRoom.of(fn, arch, gemms, merged, True, True)
    level = gemm_phases(fn, gemms)

    def predicted(pick: dict[str, int]) -> tuple[float, int] | None:
        cycles, count = 0.0, 0
        for a, chosen in todo:
            try:
                best = search(shape_of(a), arch, chosen, tile.sram_bytes, {**forced, **pick}, g.reserved).best
            except AttncError:
                return None
            cycles += best.cycles
            count += best.schedule.groups * best.schedule.members
        plans = plan_gemms(fn, arch, -1, 0, g.others, gemms, g.heads, count, g.dma_free, None, True, merged,
                           g.direct)  # fmt: skip
        by: dict[int, float] = {}
        for op in gemms:
            grid = plans.grids.get(op)
            t = grid.cycles if grid else macs(op) / max(tile.macs_per_cycle, 1)
            by[level[op]] = max(by.get(level[op], 0.0), t)
        return cycles + sum(by.values()), count

    free = predicted({})
    if free is None:
        return {}
    best, best_pick = free[0], {}
    m = max(1, free[1] // max(1, len(todo)))
    while m > 1:
        m //= 2
        got = predicted({"groups": 1, "members": m})
        if got is not None and got[0] < best * (1 - TIE):
            best, best_pick = got[0], {"groups": 1, "members": m}
    return best_pick


def _rewrite(fn: func.FuncOp, pattern: RewritePattern) -> None:
    """Apply ``pattern`` once to each op of @main (the ops it rewrites are those the search decided on)."""
    PatternRewriteWalker(pattern, apply_recursively=False).rewrite_region(fn.body)


@dataclass
class AttentionSchedules:
    """The tile search's decisions for a module: each scheduled attention's name and schedule, the
    report lines, and the compute-tile SRAM the members take (the butterfly and GEMM planning use
    what is left)."""

    schedules: dict[sp.AttentionOp, tuple[str, Schedule]] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)
    used_sram: int = 0


def shares_sram(fn: func.FuncOp, arch, option: str = "auto", gemm_parts: int = -1) -> bool:
    """Whether the module's phases share SRAM. ``auto``: when it has large GEMMs (or a GEMM and an attention) in
    more than one phase and its weights are more than a quarter of what the compute tiles hold, so that keeping
    every phase's kernels resident would leave each a sliver of its tile: next to the attention's members (half a
    tile each) the grids of every phase split the rest, and a grid that reads another phase's result directly
    holds its row strips whole. (BERT-base on cloud, 14 MB of weights on 16.8 MB: resident, its FFN grids got
    24-32 parts of 64 KB and the layer took 231K cycles at seq 512; sharing, 182K. T5's 512-wide layer, 6.3 MB:
    resident, its kernels declared 23 MB and no packing fit.)"""
    if option != "auto":
        return option == "on"
    ops = list(fn.body.block.ops)
    gemms = [o for o in ops if splittable(o)]
    attention = [o for o in ops if isinstance(o, sp.AttentionOp) and o.fusion is None]
    if gemm_parts == 1 or not gemms or len(set(gemm_phases(fn, gemms).values())) + bool(attention) < 2:
        return False
    weights = sum(nbytes(o.rhs.type) for o in gemms)
    return 4 * weights > sum(t.sram_bytes for t in arch.tiles_of("compute"))


def schedule_attentions(fn: func.FuncOp, arch, mode: str, forced: dict, shared: bool = False) -> AttentionSchedules:
    """Choose the schedule of every attention that ``fuse-attention`` marked (or of every attention, when
    ``mode`` forces one), in program order: each searched alone, all within the SRAM of the compute tiles
    (the members of the ones before claim theirs; ``shared``: each attention is a phase of its own, with the
    whole tiles). Consumes the marks and records the predictions on ``fn`` for reports; the IR is rewritten
    afterwards, by :class:`FuseAttentionPattern`."""
    attention = [o for o in fn.body.block.ops if isinstance(o, sp.AttentionOp) and o.fusion is None]
    reserved = _reserved(fn)
    tile = max(arch.tiles_of("compute"), key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    # next to other compute kernels a member leaves one context's share of its tile to them
    full = tile.sram_bytes - (tile.sram_bytes // max(tile.contexts, 1) if reserved["compute"] and not shared else 0)
    # the GEMM grids of the other phases take SRAM on the same tiles: a member keeps to half a tile, unless no
    # schedule fits in half (then the members take what they need and the grids get less)
    half = min(full, tile.sram_bytes // 2) if any(splittable(o) for o in fn.body.block.ops) and not shared else full
    # a butterfly layer's stage chains and the row kernels after them (a bias add, GELU, a residual add, a norm,
    # cut by columns) spread over every tile: a member keeps to one context's share of its tile, if a fused
    # schedule fits in it (else the unfused one it falls back to re-reads K/V per row block: on edge at seq
    # 2048, 2.6x the cycles of the fused members with the whole tile)
    share = tile.sram_bytes // max(tile.contexts, 1)
    if any(isinstance(o, sp.ButterflyMatmulOp) for o in fn.body.block.ops) and not shared and share < half:
        share_budget = share
    else:
        share_budget = None
    out = AttentionSchedules()
    for i, a in enumerate(attention):
        chosen = _requested(a, mode)
        a.attributes.pop(FUSION_ATTR, None)
        if not chosen or chosen == "per-head":
            continue
        res = None
        if share_budget is not None:
            try:
                res = search(shape_of(a), arch, chosen, share_budget, forced, reserved)
                budget = share_budget
            except AttncError:
                res = None
            if res is not None and res.best.schedule.mode == "unfused" and chosen != "unfused":
                res = None
        if res is None:
            budget = half
            try:
                res = search(shape_of(a), arch, chosen, budget, forced, reserved)
            except AttncError:
                if half >= full:
                    raise
                budget = full
                res = search(shape_of(a), arch, chosen, budget, forced, reserved)
        p = res.best
        out.reports.append(
            f"attn{i}: {p.schedule.text()}; predicted {p.cycles} cycles ({p.bound}-bound), "
            f"{p.dram_bytes} DRAM bytes, {p.buffer_bytes} B buffer/member; "
            f"{res.feasible} of {res.candidates} candidates in {res.seconds * 1e3:.1f} ms"
            + _bound_text(shape_of(a), p, arch)
        )
        for k, v in (("cycles", p.cycles), ("dram_bytes", p.dram_bytes)):
            fn.attributes[f"attnc.attn{i}.predicted_{k}"] = IntegerAttr(v, 64)
        fn.attributes[f"attnc.attn{i}.search_seconds"] = FloatAttr(res.seconds, 64)
        members, reserve = _member_claims(p.schedule, arch, tile, budget, reserved, 0 if shared else out.used_sram)
        if shared:  # no other phase's kernel needs the rest of the tile: a member claims what it uses
            reserve = min(reserve, p.schedule.buffer) if reserve else 0
        sched = replace(p.schedule, reserve=reserve)
        check_schedule(a, sched, f"attn{i}")
        out.schedules[a] = (f"attn{i}", sched)
        out.used_sram += members * max(p.schedule.buffer, reserve)
    return out


def _bound_text(sh: Shape, p: Prediction, arch) -> str:
    """A fused schedule's K/V passes and resident rows against the capacity bound (empty for unfused)."""
    sched = p.schedule
    if sched.mode == "unfused" or not arch.tiles_of("compute"):
        return ""
    b = capacity_bound(sh, arch)
    rows = sched.groups * sched.members * min(sched.row_block, -(-sh.rows // sched.members))
    return (f"; {rows} query rows resident, {sched.passes} K/V passes; capacity bound {b.rows} rows "
            f"({b.row_bytes} B each), {b.passes} passes, {b.cached_keys} keys kept in memory tiles: "
            f"{b.dram_bytes} DRAM bytes ({p.dram_bytes / max(b.dram_bytes, 1):.2f}x)")


def _member_claims(sched: Schedule, arch, tile, budget: int, reserved: dict[str, int],
                   used_sram: int) -> tuple[int, int]:
    """(kernels that claim SRAM, the bytes each claims) of a schedule. A member claims more than half its
    tile (its buffer, if more, up to what the search budgeted): placing two on one tile would halve their
    speed for fewer byte-hops, a trade the placer's objective would otherwise make, and the rest of the tile
    is left to the kernels of other phases (the GEMM parts), when the other compute kernels' shares leave
    that much; unfused, a member's QKᵀ and PV GEMMs run one after the other, so they claim half each."""
    unfused = sched.mode == "unfused"
    members = sched.groups * sched.members * (2 if unfused else 1)
    claim = budget // 2 if unfused else min(budget, max(sched.buffer, tile.sram_bytes // max(tile.contexts, 1)))
    share = tile.sram_bytes // max(tile.contexts, 1)
    room = sum(t.sram_bytes for t in arch.tiles_of("compute")) - reserved["compute"] * share - used_sram
    return members, claim if members and members * claim <= room else 0


def _reserved(fn) -> dict[str, int]:
    """Contexts per tile kind the graph's kernels other than attention need (as
    lower-to-dataflow will make them: one kernel per compute op, a DMA kernel per graph
    input, weight and result)."""
    from attnc.passes.lower_dataflow import SMALL_CONSTANT_BYTES, folds_into_kernels

    out = {"compute": 0, "sfu": 0, "dma": len(fn.body.block.args) + len(fn.function_type.outputs.data)}
    stage_tags: set[str] = set()
    for o in fn.body.block.ops:
        if isinstance(o, sp.ConstantOp):
            # a butterfly's factors become one constant of its stage pipeline (counted at the op)
            factors = o.result.uses and all(isinstance(u.operation, sp.ButterflyMatmulOp) and u.index > 0
                                            for u in o.result.uses)  # fmt: skip
            out["dma"] += nbytes(o.result.type) > SMALL_CONSTANT_BYTES and not factors
        elif isinstance(o, (sp.ButterflyMatmulOp, sp.FourierOp)):
            # one weight load per stage chain (a Fourier op: one per axis), and room for its pipeline
            out["dma"] += 1 if isinstance(o, sp.ButterflyMatmulOp) else len(set(o.axes.get_values()))
            out["compute"] += butterfly_contexts(o)
        elif isinstance(o, sp.AttentionOp) or not o.results or folds_into_kernels(o):
            continue
        elif isinstance(o, sp.ButterflyStageOp) and TAG in o.attributes:
            # a planned stage kernel (several stage ops share one) sits on the tile the planner chose
            tag = o.attributes[TAG].data
            kind = o.attributes.get(TILE_KIND, StringAttr("compute")).data
            if tag not in stage_tags and kind == "compute":
                out["compute"] += 1
            stage_tags.add(tag)
        elif _joins_producer(o):
            continue
        else:
            out["sfu" if isinstance(o, SFU_OPS) else "compute"] += 1
    return out


def _joins_producer(op: Operation) -> bool:
    """Whether ``fuse-elementwise`` will run an elementwise op inside another kernel: an epilogue of the GEMM
    or attention that makes one of its operands, or the next op of a chain (so it takes no context)."""
    from attnc.passes.fuse_elementwise import ELEMENTWISE, MAC_OPS

    if not isinstance(op, ELEMENTWISE):
        return False
    for v in op.operands:
        src = v.owner
        while isinstance(src, Operation) and sp.is_data_movement(src) and src.operands:
            src = src.operands[0].owner
        if isinstance(src, (*MAC_OPS, *ELEMENTWISE, sp.LayerNormOp)):
            return True
    return False


def _feeds_attention(v, depth: int = 8) -> bool:
    """Whether ``v`` reaches an attention before another GEMM (through data movement and elementwise ops,
    a bias add say): a Q/K/V projection. Its row blocks would reach every attention kernel whole (a
    kernel's slice of a concatenation reads all of it), so those stay one kernel."""
    if depth == 0:
        return False
    for use in v.uses:
        op = use.operation
        if isinstance(op, sp.AttentionOp):
            return True
        if op.results and not isinstance(op, (sp.MatmulOp, sp.ContractOp)) and _feeds_attention(op.results[0], depth - 1):
            return True
    return False


def _gcd_heads(op: sp.MatmulOp) -> int:
    """The head widths the column slices of a merged projection feed, as one divisor (0 if none); the slices
    may follow the merged bias add."""
    uses = [u for u in op.result.uses]
    uses += [v for u in uses if isinstance(u.operation, sp.AddOp) for v in u.operation.results[0].uses]
    return int(np.gcd.reduce([_head_width(u.operation.results[0]) for u in uses
                              if isinstance(u.operation, sp.SliceOp)] or [0]))  # fmt: skip


def _head_width(v, depth: int = 8) -> int:
    """The width of a head of the attention ``v`` reaches before another GEMM (through data movement and
    elementwise ops: a Q, K or V projection), or 0."""
    if depth == 0:
        return 0
    for use in v.uses:
        op = use.operation
        if isinstance(op, sp.AttentionOp):
            return sp.shape_of(op.operands[use.index])[-1] if use.index < 3 else 0
        if op.results and not isinstance(op, (sp.MatmulOp, sp.ContractOp)) and (w := _head_width(op.results[0], depth - 1)):
            return w
    return 0


def _fed_by_attention(v, depth: int = 8) -> bool:
    """Whether ``v`` comes from an attention before another GEMM: an output projection, whose row blocks
    would each read every attention kernel's output."""
    op = v.owner
    if depth == 0 or not isinstance(op, Operation):
        return False
    if isinstance(op, sp.AttentionOp):
        return True
    if isinstance(op, (sp.MatmulOp, sp.ContractOp)):
        return False
    return any(_fed_by_attention(x, depth - 1) for x in op.operands)
