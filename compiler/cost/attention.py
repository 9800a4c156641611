"""The cost rules of a fused attention: the work of one fused kernel (the rule docs/simulator.md states for
a fused ``attention`` instruction), the on-chip bytes it needs, and the first-order prediction the tile
search ranks whole schedules by.

:func:`attention_work` is the compiler's one implementation of the fused rule: the kernel sizing of
:mod:`attnc.cost.work`, the graph model's kernel work (:mod:`attnc.cost.kernels`) and :func:`predict`
all call it. The simulator keeps its own, written independently from the same spec, and a test holds
the two to the same numbers.

:func:`predict` is first-order on purpose (fast enough to score thousands of candidates): members run in
parallel on their own tiles, each taking the cycles of :func:`attention_work`; DRAM moves Q, O and K/V
(times the passes) plus, unfused, the spilled scores and probabilities; the K/V chain and the Q fan-out
load their links. ``attnc.cost.estimate`` models the lowered graph afterwards, and the simulator
measures it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from attnc.cost import op_costs as oc
from attnc.errors import AttncError

#: the share of a link the search lets the K/V chain and the DMA fan-out plan on using
NOC_HEADROOM = 0.75


# ---------------------------------------------------------------------------
# one fused attention kernel


class AttentionWork(NamedTuple):
    macs: int
    mac_cycles: int
    lane_ops: int
    cycles: int
    special_ops: int = 0  # exps and reciprocals, on the tile's exp unit


def attention_work(
    q_shape: Sequence[int],
    k_shape: Sequence[int],
    v_shape: Sequence[int],
    *,
    fusion: str,
    row_block: int,
    key_block: int,
    causal: bool = False,
    causal_offset: int = 0,
    has_mask: bool = False,
    rows: int,
    cols: int,
    lanes: int,
    exps: int | None = None,
) -> AttentionWork:
    """MACs, MAC-array cycles, lane operations, cycles and special-function operations of one fused
    attention on a ``rows x cols`` MAC array with ``lanes`` vector lanes and an exp unit of ``exps``
    results per cycle (None: as many as lanes, what every preset has); the MAC array, the lanes and the
    exp unit are pipelined over the steps, so the cycles are the largest of the three plus one fill.
    The operations per score and per row are :mod:`attnc.cost.op_costs`'s. A tile without an exp unit
    (``exps`` 0) cannot run it: an error.

    Per (batch, head) unit, row block i (r rows) and key block j (kb keys); a causal step whose first
    key is masked for its last row is skipped. Closed form per row block: its executed key blocks are a
    prefix of n of them, all of Kb keys except possibly the last one of the key axis.
    """
    if fusion not in ("flat", "online"):
        raise AttncError(f"attention_work: unknown fusion {fusion!r}")
    *lead, s, d = (int(x) for x in q_shape)
    t = int(k_shape[-2])
    dv = int(v_shape[-1])
    units = math.prod(max(x, 0) for x in lead)
    rows, cols, lanes = max(rows, 1), max(cols, 1), max(lanes, 1)
    exps = lanes if exps is None else int(exps)
    if exps <= 0:
        raise AttncError("attention_work: a fused attention runs its exps on the tile's exp unit, and the tile has none")
    rb = max(1, min(int(row_block), max(s, 1)))
    # (with no keys at all, a flat block of one key keeps the causal reach below finite: no block runs)
    kb = max(t, 1) if fusion == "flat" else max(1, min(int(key_block), max(t, 1)))
    n_kb = -(-t // kb) if t > 0 else 0
    last_kb = t - (n_kb - 1) * kb if n_kb else 0
    full_cols, last_cols = -(-kb // cols), -(-last_kb // cols)

    def row_block_work(r: int, last_row: int) -> tuple[int, int, int, int]:
        if causal:
            reach = last_row + int(causal_offset)  # the last key the block's last row may see
            n = 0 if reach < 0 else min(n_kb, reach // kb + 1)
        else:
            n = n_kb
        if n == 0:
            return 0, 0, 0, 0
        keys = t if n == n_kb else n * kb
        col_steps = (n - 1) * full_cols + (last_cols if n == n_kb else full_cols)
        macs = r * keys * (d + dv)
        mac_cycles = -(-r // rows) * (col_steps * d + -(-dv // cols) * keys)
        if fusion == "flat":
            lane = oc.FLAT_SCORE.lane * r * keys
            special = oc.FLAT_SCORE.special * r * keys + oc.FLAT_ROW_SPECIAL * r
        else:  # rescales after the first step, then 1/l and the final multiply
            lane = oc.ONLINE_SCORE.lane * r * keys + (n - 1) * r * (dv + oc.ONLINE_RESCALE_LANE) + r * dv
            special = oc.ONLINE_SCORE.special * r * keys + (n - 1) * r * oc.ONLINE_RESCALE_SPECIAL
            special += oc.ONLINE_FINAL_SPECIAL * r
        if has_mask:
            lane += oc.MASK_LANE * r * keys
        return macs, mac_cycles, lane, special

    n_rb = -(-s // rb) if s > 0 else 0
    total = [0, 0, 0, 0]  # MACs, MAC cycles, lane ops, special ops
    if not causal and n_rb:
        # every row block sees every key: the full ones are alike, the last may be shorter
        full = row_block_work(rb, rb - 1)
        tail = row_block_work(s - (n_rb - 1) * rb, s - 1)
        total = [(n_rb - 1) * f + x for f, x in zip(full, tail)]
    else:
        for i in range(n_rb):
            r = min(rb, s - i * rb)
            total = [a + b for a, b in zip(total, row_block_work(r, i * rb + r - 1))]
    macs, mac_cycles, lane, special = (units * x for x in total)
    cycles = max(mac_cycles, -(-lane // lanes), -(-special // exps)) + (rows + cols if macs else 0)
    return AttentionWork(macs, mac_cycles, lane, cycles, special)


def fused_attention_buffer(rows: int, t: int, d: int, dv: int, eb: int, *, fusion: str, row_block: int,
                           key_block: int, kv_resident: bool, key_chunk: int = 8) -> int:
    """On-chip bytes a fused attention kernel needs: its query rows and output
    accumulator, the score block (double-buffered, so the vector unit works on one while
    the MAC array fills the other), the running max and sum (these three in f32), and K and V
    either whole (resident) or as double-buffered key blocks."""  # fmt: skip
    r = min(row_block, rows)
    kb = t if fusion == "flat" else min(key_block, t)
    # the output accumulator, the scores and the running max and sum are held in f32 (at least), whatever the
    # operands' type: the kernel rounds only its result (docs/simulator.md, the numerics rule)
    acc = max(eb, 4)
    need = eb * r * d + acc * (r * dv + 2 * r * kb + 2 * r)
    # streamed K and V come in blocks: the key block, or (flat, whose score rows span every key)
    # chunks of ``key_chunk`` keys (the MAC array's width) that fill the score rows piece by piece
    chunk = kb if fusion == "online" else min(t, key_chunk)
    need += eb * t * (d + dv) if kv_resident else eb * 2 * chunk * (d + dv)
    return need


# ---------------------------------------------------------------------------
# a whole attention schedule, first order (the tile search's ranking)


def split(n: int, parts: int, i: int) -> tuple[int, int]:
    """The i-th of ``parts`` balanced contiguous ranges of range(n): the query rows of member i, the
    (batch, head) units of group i."""
    return i * n // parts, (i + 1) * n // parts


@dataclass(frozen=True)
class Shape:
    """An attention as the cost of its schedules sees it."""

    batch: int
    heads: int
    kv_heads: int
    rows: int  # S, queries
    keys: int  # T
    d: int
    dv: int
    eb: int  # element bytes
    causal: bool
    causal_offset: int
    has_mask: bool
    kv_from_dram: bool  # K and V are graph inputs or constants: a DMA load can re-read them
    #: K and V are computed on chip a row block of every head at a time (a butterfly projection and its bias
    #: add), not head by head: a group that takes several units one after the other cannot take them as made
    kv_by_rows: bool = False

    @property
    def units(self) -> int:
        return self.batch * self.kv_heads

    @property
    def rep(self) -> int:
        return self.heads // self.kv_heads


class AttentionSchedule(Protocol):
    """What :func:`predict` reads of a schedule. The schedule itself is the tile pass's decision
    (``attnc.passes.fuse_attention.Schedule``); passes use the cost package, never the reverse."""

    @property
    def mode(self) -> str: ...
    @property
    def groups(self) -> int: ...
    @property
    def members(self) -> int: ...
    @property
    def row_block(self) -> int: ...
    @property
    def key_block(self) -> int: ...
    @property
    def passes(self) -> int: ...
    @property
    def buffer(self) -> int: ...
    @property
    def staged(self) -> bool: ...
    @property
    def spilled(self) -> bool: ...
    @property
    def cached_keys(self) -> int: ...
    @property
    def epilogue(self) -> int: ...


def unfused_row_block(rows: int, row_bytes: int, room: int, mac_rows: int) -> int:
    """The query rows an unfused GEMM takes a step when it streams K (V) several times: the most whole MAC-array
    row tiles (at most ``rows``) whose left-operand token, ``row_bytes`` a row (QKᵀ: a query row; PV: a row of
    its probability chunk, no wider), fits a quarter of its ``room`` -- two tokens of it (one worked on, the next
    arriving) in half, the K (V) tokens its steps walk in the other half. Each row block is one pass of K (V)
    from DRAM, so a wider block is fewer passes: on ``edge`` at seq 4096, 32 rows a step against the MAC array's
    8 read K and V 32 times a member instead of 128."""
    mr = max(mac_rows, 1)
    fit = room // 4 // max(row_bytes, 1) // mr * mr
    return max(mr, min(fit, -(-rows // mr) * mr))


def unfused_kv_passes(sh: Shape, sched: AttentionSchedule, arch, tile) -> tuple[int, int]:
    """Times an unfused schedule reads K and V from DRAM (lower-to-dataflow's ``stream_unfused_attention``): once
    when a group's K (V) fits its GEMM kernel's room beside the kernel's own buffers; else once per row block of
    the first member's rows -- a unit's K is needed only during its own row blocks, so the units of a kernel
    share the passes -- the QKᵀ kernel's row blocks the epilogue's rows (or :func:`unfused_row_block`'s), the PV
    kernel's :func:`unfused_row_block`'s. The room: a tile's SRAM over the GEMM kernels one tile holds when they are spread evenly, never
    less than a context's share; the kernel's own buffers, at least that share."""
    tiles = max(len(arch.tiles_of("compute")), 1)
    share = tile.sram_bytes // max(tile.contexts, 1)
    room = max(share, tile.sram_bytes // max(1, -(-2 * sched.groups * sched.members // tiles)))
    units_g, rows_c = -(-sh.units // sched.groups), -(-sh.rows // sched.members)
    mr = max(tile.mac_rows, 1)

    def passes(width: int, step: int) -> int:
        held = units_g * sh.keys * width * sh.eb
        return 1 if held + share <= room else -(-rows_c // max(min(step, rows_c), 1))

    step = unfused_row_block(rows_c, sh.d * sh.eb, room, mr)
    return passes(sh.d, sched.epilogue or step), passes(sh.dv, step)


@dataclass(frozen=True)
class CapacityBound:
    """The least DRAM traffic the array's SRAM allows a fused (online) attention of a shape: what a schedule's
    K/V passes are measured against (:func:`capacity_bound`)."""

    rows: int  # query rows whose running state the compute tiles hold at once, over all of them
    row_bytes: int  # on-chip bytes of one such row (its q, output accumulator, max, sum and score block)
    passes: int  # passes over a unit's K and V those rows need
    cached_keys: int  # keys of a unit's K and V the memory tiles hold from one pass to the next
    dram_bytes: int  # Q and O once, a unit's K and V once plus, per further pass, the keys not cached


def capacity_bound(sh: Shape, arch) -> CapacityBound:
    """The capacity bound of an online attention of ``sh`` on ``arch`` (docs/design.md, "K/V passes and the
    capacity bound"). A query row is resident where its running state is updated: beside a MAC array, so the
    compute tiles hold the rows of a pass, each as many as :func:`fused_attention_buffer` fits with the
    smallest key block a member takes (the MAC array's width, double-buffered K and V blocks). The memory tiles
    have no MAC array; swapping row state through them would put its bytes on their links once per key block
    (more than the links carry at key blocks that leave the compute tiles room for rows), so they count
    towards the bound as what they can do at that rate: keep keys of K and V from one pass to the next (two
    key blocks per stream in flight). Every unit's ``rep x rows`` query rows then take ``passes`` passes, and
    a unit's K and V are read once plus, per further pass, the keys the memory tiles do not keep."""
    computes = arch.tiles_of("compute")
    kb = min(max(max((t.mac_cols for t in computes), default=1), 1), sh.keys)

    def need(r: int) -> int:
        return fused_attention_buffer(r, sh.keys, sh.d, sh.dv, sh.eb, fusion="online", row_block=r,
                                      key_block=kb, kv_resident=False, key_chunk=kb)  # fmt: skip

    rows = 0
    for t in computes:
        lo, hi = 0, sh.rep * sh.rows
        while lo < hi:  # the buffer grows with the rows
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if need(mid) <= t.sram_bytes else (lo, mid - 1)
        rows += lo
    key_bytes = sh.eb * (sh.d + sh.dv)
    memory = sum(t.sram_bytes for t in arch.tiles_of("memory"))
    cached = min(sh.keys, max(0, memory // key_bytes - 2 * kb))
    passes = -(-sh.rep * sh.rows // rows) if rows else 0
    keys_read = sh.keys + max(passes - 1, 0) * (sh.keys - cached)
    q_bytes = sh.batch * sh.heads * sh.rows * sh.d * sh.eb
    o_bytes = sh.batch * sh.heads * sh.rows * sh.dv * sh.eb
    mask_bytes = sh.batch * sh.heads * sh.rows * sh.keys * (1 if sh.has_mask else 0)
    dram = q_bytes + o_bytes + mask_bytes + sh.units * keys_read * key_bytes
    return CapacityBound(rows, need(2) - need(1), passes, cached, dram)


@dataclass
class Prediction:
    schedule: AttentionSchedule
    cycles: int
    dram_bytes: int
    buffer_bytes: int
    kernels: int
    bound: str  # compute | dram | noc


def predict(sh: Shape, sched: AttentionSchedule, arch, tile) -> Prediction:
    """First-order cycles and DRAM bytes of one schedule of ``sh`` on ``arch``, its members on ``tile``
    (see the module docstring)."""
    g, c = sched.groups, sched.members
    eb = sh.eb
    q_bytes = sh.batch * sh.heads * sh.rows * sh.d * eb
    o_bytes = sh.batch * sh.heads * sh.rows * sh.dv * eb
    kv_bytes = sh.units * sh.keys * (sh.d + sh.dv) * eb
    mask_bytes = sh.batch * sh.heads * sh.rows * sh.keys * (1 if sh.has_mask else 0)
    bw = arch.dram.bytes_per_cycle
    link = arch.noc.link_bytes_per_cycle
    units_g = -(-sh.units // g)
    rows_c = -(-sh.rows // c)
    member = 0
    over = False
    if sched.mode == "unfused":
        scores = sh.units * sh.rep * sh.rows * sh.keys * eb
        # the probabilities spilled and read back; the scores too when the softmax is a kernel of its own
        spilled = 2 if sched.epilogue else 4
        # K and V re-read per row block where they do not fit the GEMMs' tiles
        kp, vp = unfused_kv_passes(sh, sched, arch, tile)
        rereads = sh.units * sh.keys * ((kp - 1) * sh.d + (vp - 1) * sh.dv) * eb
        dram = q_bytes + o_bytes + kv_bytes + mask_bytes + spilled * scores + rereads
        mr, mc = max(tile.mac_rows, 1), max(tile.mac_cols, 1)
        per = units_g * sh.rep
        # (the epilogue's rows a step: part-full MAC-array row steps when fewer than its rows)
        qk = per * oc.row_steps(rows_c, mr, sched.epilogue) * -(-sh.keys // mc) * sh.d
        pv = per * -(-rows_c // mr) * -(-sh.dv // mc) * sh.keys
        # the softmax's operations, + a mask's add and select
        soft = oc.OP_COSTS["softmax"]
        extra = 2 if sh.has_mask or sh.causal else 0
        if sched.epilogue:
            # on the compute tile: lane operations on its lanes (and the scale), exps on its exp unit
            lane = per * rows_c * (sh.keys * (soft.lane + 1 + extra) + soft.lane_row)
            special = per * rows_c * (sh.keys * soft.special + soft.special_row)
            sm = -(-lane // max(tile.vector_lanes, 1)) + -(-special // max(tile.exp_per_cycle, 1))
        else:
            # on the sfu lanes (lane and special operations alike)
            sfu = max((t.vector_lanes for t in arch.tiles_of("sfu")), default=max(tile.vector_lanes, 1))
            sm_ops = per * rows_c * (sh.keys * (soft.per_element + extra) + soft.lane_row + soft.special_row)
            sm = -(-sm_ops // sfu)
        # one token per stream: the phases of a member follow each other, the spills share DRAM
        member = qk + sm + pv
        spill = (spilled * scores + rereads) / bw
        cycles = member + spill
        bound = "dram" if spill > member else "compute"
        kernels = (3 if sched.epilogue else 5) * g * c + 4
        buffer = 0
    else:
        passes = sched.passes
        fusion = "flat" if sched.mode == "flat" else "online"
        if tile.exp_per_cycle <= 0:
            raise AttncError(
                f"tile: the compute tiles of {arch.name} have no exp unit (exp_per_cycle 0), so a {fusion} "
                "attention cannot run on them; use fuse-attention{mode=unfused}"
            )
        worst = 0
        # members differ only in their row count (and, causal, their first row)
        kinds = {(r1 - r0, r0 if sh.causal else 0) for r0, r1 in (split(sh.rows, c, ci) for ci in range(c)) if r1 > r0}
        for n, r0 in kinds:
            work = attention_work(
                (units_g * sh.rep, n, sh.d), (sh.keys, sh.d), (sh.keys, sh.dv), fusion=fusion,
                row_block=sched.row_block, key_block=sched.key_block, causal=sh.causal,
                causal_offset=sh.causal_offset + r0, has_mask=sh.has_mask, rows=tile.mac_rows, cols=tile.mac_cols,
                lanes=tile.vector_lanes, exps=tile.exp_per_cycle,
            )  # fmt: skip
            worst = max(worst, work.cycles)
        member = worst
        # (spilled: K/V written once, then read once per pass)
        dram = q_bytes + o_bytes + ((1 if sched.staged else passes) + sched.spilled) * kv_bytes + mask_bytes
        if sched.cached_keys:  # passes after the first read only the keys the memory tiles do not keep
            dram -= (passes - 1) * kv_bytes * sched.cached_keys // sh.keys
        usable = NOC_HEADROOM * link  # the rest of the graph's streams cross these links too
        chain = passes * kv_bytes / g / usable  # each chain link carries its group's K/V per pass
        fan = max(q_bytes, o_bytes, passes * kv_bytes / 2) / (3 * usable)  # through a DMA tile's links
        noc = max(chain, fan)
        cycles = max(member, dram / bw, noc)
        # the chain would have to run its links fuller than the headroom: the placer may not route it
        over = chain > member
        bound = "compute" if cycles == member else ("dram" if cycles == dram / bw else "noc")
        kernels = g * c + 5 + (2 * g if sched.staged or sched.spilled else 0) + (4 if sched.cached_keys else 0)
        buffer = sched.buffer
    cycles += arch.dram.latency_cycles + max(tile.mac_rows, 1) + max(tile.mac_cols, 1)
    # a schedule whose chain overfills its links comes back with negative cycles (the search drops it
    # while a schedule that fits exists)
    return Prediction(sched, -math.ceil(cycles) if over else math.ceil(cycles), int(dram), buffer, kernels, bound)
