"""The multilayer butterfly dataflow: ``sparse.butterfly_matmul`` and ``sparse.fourier`` as
pipelines of stage kernels (``tile`` plans them with :func:`plan_butterflies` after the attention
schedules, then rewrites the ops with :class:`ExpandButterflyPattern`).

**Expansion.** A butterfly matmul is its stages one after the other
(``sparse.butterfly_stage``), after a ``sparse.gather`` with a constant index when its
input is bit-reversed. FNet's Fourier mixing is, per axis, the FFT of
:func:`attnc.butterfly.fft_stages` on interleaved (re, im) values: the real input is
padded with a zero imaginary part once (``[..., n] -> [..., n, 2]``), each axis is
brought next to the (re, im) pair by a transpose, flattened to ``[..., 2n]``, run through
its stages, put back in frequency order and transposed back, and the real part is sliced
out at the end. The digit reversal that ends each FFT is a reshape to the radices, a
transpose reversing them and a reshape (the mixed-radix digit reversal *is* that
transpose), so it needs no index constant. Data movement is buffer addressing:
lower-to-dataflow clones it into the kernels that read it, and a stage's own stride
permutation is its addressing ``[g, radix, stride, block]`` of the buffer, not a copy.

**Merging.** On a compute tile a stage of width ``w`` (radix x block) is ``n / w`` GEMMs
``[rows, w] x [w, w]``: a MAC array of ``c`` columns takes ``ceil(w / c)`` column passes per
row whatever ``w`` is, so a radix-2 stage of block 3 (BERT-base's 768-wide chains: 8 such
stages) runs at 6/32 = 19% of a 32x32 array. Consecutive stages merge exactly into one of
their radices' product (:func:`attnc.butterfly.merge`, the weights multiplied at compile
time): two radix-2 stages keep the MACs, three (width 24) take the time of one for 25% more
MACs. :func:`merge_runs` picks the merging that runs fewest MAC-array cycles, then fewest
MACs; the planner plans the chain both ways and keeps the merged plan when it is predicted
faster (a butterfly tile, charged by MACs, gains nothing from it). Only chains whose weights
are compile-time constants merge.

**Pipeline.** The stages of one op become ``groups x parts`` kernels (tagged like the
fused attention members): consecutive stages in a group share a kernel (kept as separate
ops in its body), and each stage of a group is split by columns into
``parts`` kernels, each owning a contiguous range of the stage's (group, stride) units and
so a set of columns; kernels of consecutive groups exchange exactly the columns they share
(a slice of the producer's output per consumer), the butterfly's stride permutation
carried by the NoC routes between parts. Splitting by columns is what lets a 768-wide
stage (18 KiB of f32 weights) fit a 16 KiB compute tile, and it runs the parts in
parallel. The kernels stream row blocks (``tokens`` > 1) to one another, so the
pipeline's stages overlap: k equal stages over T row blocks take (T + k - 1)/T of one
stage's time.

**Search.** For each chain: weights kept on chip, or streamed once per pass when they
crowd out the row buffers (147 KiB of f32 for a 768-wide full butterfly) -- from memory
tiles that hold them (read from DRAM once, re-sent over the NoC; each kernel's weights a
memory-tile context of their own) or, when those are taken, from DRAM -- x parts (powers of
two) x groups (consecutive stages balanced by a DP, never joining stages whose column sets
differ); each candidate's kernels go to the array's butterfly and compute tiles left free
by the rest of the graph, longest first, each to the tile where it would finish soonest
(the tile's own rule: a stage is a batch of ``[rows, radix*block] x [radix*block,
radix*block]`` GEMMs on a MAC array, or ``macs/4`` butterflies on a butterfly tile's lanes;
a far tile costs a row block's link time per hop to the neighbouring stages) x row blocks
(tokens). A token is streamed whole, so a kernel holds two of them (one updated in place,
the next arriving: what ``lower-to-dataflow`` declares), and a chain's last kernel, when it is one compute
kernel, what the epilogue ``fuse-elementwise`` gives it reads (:func:`epilogue_reads`: constants whole, two
of its row blocks of each residual or partial sum; the chain plans without them when nothing fits them),
and a kernel whose weights stream holds a whole pass's rows (each weight slice is applied to all of them) and the next token;
tokens of at most a MAC-array height (fewer rows run it part-full: ``row_block``), fine
enough for the kernels, and for the readers the chain streams into (``grain``). The
predicted cycles are the slowest tile's load stretched by the pipeline's fill, or the
DRAM traffic (at the chain's share, by MACs, of the bandwidth the chains of its phase share:
:func:`phase_dram_shares`) plus the fill DRAM cannot overlap. Every kernel stays configured for the
whole run, so each chain plans within its share (by MACs) of the free contexts and SRAM --
except the two axes of one Fourier op, which run one after the other (an axis's FFT needs
the whole result of the one before): they split every tile's contexts and SRAM, one chain
planned on a share (of ``AXIS_SHARES``) of each tile and the other on what it leaves, in
the order and share that minimise their summed predicted cycles (a wide sequence-axis chain
needs SRAM for its row blocks far more than its MACs say). The last axis is expanded last,
so the op's result leaves in row order and the row-wise ops after it overlap its chain.
The placer ranks byte-hops above the makespan and would stack pipeline neighbours on one
tile; so a kernel on a compute tile claims the share of the tile's SRAM that its cycles
are of the slowest tile's (any set of the chain's kernels on a tile then sums to about the
planned makespan), and a heavy kernel on a butterfly tile more than half of it. The
choices are reported in ``attnc.tile_report`` (``bfly<i>: ...`` lines).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
from attnc import butterfly as bf
from attnc.cost.work import stage_kernel_cycles, stage_mac_cycles, streamed_weight_bytes
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import RESERVE, ROWS, STAGE, TILE_KIND, WEIGHT_PASSES
from attnc.dialects.values import bitrev_permutation, from_numpy, np_dtype, to_numpy
from attnc.errors import AttncError
from attnc.passes.kernel_builder import KernelBuilder
from attnc.passes.sram_phases import SHARE_ATTR
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, StringAttr
from xdsl.ir import Operation, SSAValue
from xdsl.pattern_rewriter import PatternRewriter, PatternRewriteWalker, RewritePattern, op_type_rewrite_pattern

#: weight passes the planner tries when the weights do not stay on chip (each pass holds its rows while the
#: weights stream through once)
PASSES = (4, 8, 16, 32, 64, 128, 256, 512, 1024)
#: most row blocks a stage kernel streams (the simulator's finest segments, attnc.simulator.timing's
#: MAX_STREAMED_SEGMENTS: a consumer holding two tokens then works one token a segment)
MAX_TOKENS = 1024
#: candidates predicted within this fraction of the fastest count as equally fast (fewer kernels win)
TIE = 0.03
#: a stage kernel claims this fraction of its proportional share of the tile's SRAM (the rest is slack
#: for the placer's packing: a tile may then take up to 1/CLAIM of the slowest tile's planned cycles)
CLAIM = 0.85
#: the share of the memory tiles' links the planner lets re-sent weights use
NOC_SHARE = 0.5
#: on the constant holding a chain's weights, held in a memory tile and re-sent once per row block
WEIGHT_STAGE = "dataflow.weight_stage"


# ---------------------------------------------------------------------------
# expansion into stage ops (no kernels yet): the reference interpreter checks it


@dataclass
class Chain:
    """One run of stages along the last axis of ``x``: what the planner and the builder need."""

    name: str
    x: SSAValue
    stages: list[bf.Stage]
    weights: list  # per stage: an SSA value [g, s, k, k] or a numpy array (FFT twiddles)
    out: SSAValue | None = None
    plan: Plan | None = None
    cache: dict = field(default_factory=dict)
    #: the kernels its row blocks stream through after it (set by :func:`plan_butterflies`; 0: a chain alone)
    tail: int = 0
    #: most rows a token of its result may hold (what the kernels reading it have room for); 0: no limit
    grain: int = 0
    #: rows of a token of its input when a chain planned before it streams it (through row kernels): its
    #: first kernels hold two of those; 0: its own tokens
    in_rows: int = 0
    #: how many of its row streams (its input, its result) go through DRAM: a graph input it reads, a result
    #: that is stored; the others stream on chip from or to the kernels next to it (set by
    #: :func:`plan_butterflies`; 2, both, when nothing says otherwise)
    dram_streams: int = 2
    #: its share of the DRAM bandwidth, by MACs among the chains of its phase (the others run before or after
    #: it); 0: its share of the budget's MACs
    dram_share: float = 0.0
    #: what the epilogue ``fuse-elementwise`` gives the chain's last kernel reads, when that is one kernel on a
    #: compute tile: (row streams, bytes held whole) (:func:`epilogue_reads`; set by :func:`plan_butterflies`)
    epilogue: tuple[int, int] = (0, 0)

    @property
    def n(self) -> int:
        return sp.shape_of(self.x)[-1]

    @property
    def rows(self) -> int:
        return int(np.prod(sp.shape_of(self.x)[:-1], dtype=np.int64))

    @property
    def eb(self) -> int:
        return np_dtype(sp.elt_of(self.x)).itemsize


def matmul_chain(b: KernelBuilder, op: sp.ButterflyMatmulOp, name: str) -> Chain:
    x = op.input
    if op.structure.perm.data == "bitrev":
        idx = bitrev_permutation(sp.shape_of(x)[-1]).astype(np.int32)
        index = b.add(sp.ConstantOp(from_numpy(idx)))
        x = b.add(sp.GatherOp(x, index, len(sp.shape_of(x)) - 1))
    return Chain(name, x, op.stages(), list(op.factors))


def fourier_steps(b: KernelBuilder, op: sp.FourierOp, name: str, build) -> SSAValue:
    """Expand one Fourier op; ``build(chain)`` turns each axis's stage chain into ops and returns its result."""
    x = op.input
    shp = list(sp.shape_of(x))
    r = len(shp)
    elt = sp.elt_of(x)
    axes = fourier_axes(op)
    # complex, interleaved: [..., n] -> [..., n, 1] -> pad a zero imaginary part -> [..., n, 2]
    v = b.add(sp.ReshapeOp(x, shp + [1]))
    v = b.add(sp.PadOp(v, [0] * (r + 1) + [0] * r + [1], 0.0))
    for ai, a in enumerate(axes):
        n = shp[a]
        perm = [d for d in range(r) if d != a] + [a, r]
        inv = list(np.argsort(perm))
        t = v if perm == list(range(r + 1)) else b.add(sp.TransposeOp(v, perm))
        tshape = sp.shape_of(t)
        lead = list(tshape[:-2])
        flat = b.add(sp.ReshapeOp(t, lead + [2 * n]))
        sts, ws, _ = bf.fft_stages(n)
        ws = [w.astype(np_dtype(elt)) for w in ws]
        y = build(Chain(f"{name}_ax{ai}", flat, sts, ws))
        # digit reversal: position (d1, ..., dk) in radix (r1, ..., rk) holds frequency d1 + r1 (d2 + r2 (...))
        radices = bf.prime_radices(n)
        if len(radices) > 1:
            k = len(radices)
            y = b.add(sp.ReshapeOp(y, lead + radices + [2]))
            nl = len(lead)
            rev = list(range(nl)) + [nl + k - 1 - i for i in range(k)] + [nl + k]
            y = b.add(sp.TransposeOp(y, rev))
        y = b.add(sp.ReshapeOp(y, list(tshape)))
        v = y if perm == list(range(r + 1)) else b.add(sp.TransposeOp(y, inv))
    re = b.add(sp.SliceOp(v, [0] * (r + 1), shp + [1], [1] * (r + 1)))
    return b.add(sp.ReshapeOp(re, shp))


# ---------------------------------------------------------------------------
# column parts of a stage


@dataclass(frozen=True)
class View:
    """Part ``j`` of ``parts`` of a stage: its columns (sorted) and the local stage on them."""

    cols: tuple[int, ...]
    stage: bf.Stage
    g0: int
    g1: int
    s0: int
    s1: int


def view(st: bf.Stage, n: int, parts: int, j: int) -> View | None:
    """The columns of the ``j``-th of ``parts`` contiguous ranges of the stage's (G, S) units, or
    None when the units do not split so. Either whole groups G (contiguous columns, the stage
    itself on fewer groups) or, within one group, a range of strides S (``radix`` runs of
    columns, a stage of that many strides)."""
    g, s, _, _ = st.weight_shape(n)
    units = g * s
    if units % parts:
        return None
    per = units // parts
    f0 = j * per
    r, e = st.radix, st.block
    if per >= s:
        if per % s:
            return None
        g0, g1 = f0 // s, f0 // s + per // s
        return View(tuple(range(g0 * r * s * e, g1 * r * s * e)), bf.Stage(r, s, e), g0, g1, 0, s)
    if s % per:
        return None
    g0, s0 = f0 // s, f0 % s
    cols = [c for rho in range(r) for c in range(((g0 * r + rho) * s + s0) * e, ((g0 * r + rho) * s + s0 + per) * e)]
    return View(tuple(cols), bf.Stage(r, per, e), g0, g0 + 1, s0, s0 + per)


def _runs(idx: np.ndarray) -> list[tuple[int, int]]:
    """Maximal runs [a, b) of consecutive integers in the sorted ``idx``."""
    if not len(idx):
        return []
    cut = np.nonzero(np.diff(idx) != 1)[0]
    starts = [int(idx[0])] + [int(idx[c + 1]) for c in cut]
    ends = [int(idx[c]) + 1 for c in cut] + [int(idx[-1]) + 1]
    return list(zip(starts, ends))


def _pieces(producers: list[tuple[int, ...]], cols: tuple[int, ...]) -> list[tuple[int, int, int, int]] | None:
    """How a consumer assembles ``cols`` from producers' column sets: (first column, producer,
    start, end) per slice of a producer's output, in column order; None when the slices, put
    side by side in that order, would not be ``cols`` in order (it would need a gather)."""
    want = np.asarray(cols)
    out = []
    for p, pc in enumerate(producers):
        pa = np.asarray(pc)
        idx = np.nonzero(np.isin(pa, want))[0]
        for a, e in _runs(idx):
            # a run of positions is one slice; the slice is a run of columns where they step by one
            brk = [a] + [i for i in range(a + 1, e) if pa[i] != pa[i - 1] + 1] + [e]
            out += [(int(pa[u]), p, u, v) for u, v in zip(brk, brk[1:])]
    out.sort()
    got = [c for _, p, a, e in out for c in producers[p][a:e]]
    return out if got == list(cols) else None


def part_views(stages: list[bf.Stage], n: int, parts: int) -> list[list[View]] | None:
    views = []
    for st in stages:
        vs = [view(st, n, parts, j) for j in range(parts)]
        if any(v is None for v in vs):
            return None
        views.append(vs)
    return views


# ---------------------------------------------------------------------------
# planning


@dataclass
class Slot:
    """A tile the planner may put stage kernels on: what the rest of the graph leaves of it."""

    index: int
    kind: str
    tile: object  # attnc.arch.Tile
    contexts: int
    sram: int
    load: int = 0  # cycles of the current candidate's kernels on it (``busy`` included)
    used: int = 0  # kernels of the current candidate on it
    busy: int = 0  # cycles of the kernels already planned on it that run at the same time (same phase)


@dataclass
class Plan:
    parts: int
    groups: list[list[int]]
    kinds: list[str]  # per kernel, group-major
    slots: list[int]  # per kernel: the planned tile (an index into the slots)
    claims: list[int]  # per kernel: the SRAM it claims
    needs: list[int]  # per kernel: the SRAM it needs
    cycles: list[int]  # per kernel, on its planned tile kind
    tokens: int
    passes: int  # 1: weights loaded once and kept; else streamed from DRAM once per row block
    predicted: int
    bound: str
    candidates: int = 0
    blocks: list[int] = field(default_factory=list)  # per kernel: rows it computes at a time (0: a MAC height)
    staged: bool = False  # streamed weights come from memory tiles that hold them (DRAM read once), not DRAM
    bins: list[int] = field(default_factory=list)  # staged: free bytes of each memory tile (one piece each)
    held: list[int] = field(default_factory=list)  # staged: bytes of weights each memory tile holds
    pieces: list[int] = field(default_factory=list)  # staged: pieces (memory-tile contexts) each memory tile holds
    #: how many of the chain's stages each stage it runs merges (:func:`merge_runs`); empty: none merged
    runs: list[int] = field(default_factory=list)
    #: False when no grouping fits with the last kernel's epilogue counted: the plan leaves it out (the kernel
    #: then declares more than the plan claims, and placement may refuse it)
    epilogue: bool = True

    def text(self) -> str:
        per = [len(g) for g in self.groups]
        kinds = {k: self.kinds.count(k) for k in dict.fromkeys(self.kinds)}
        src = "memory tiles" if self.staged else "DRAM"
        weights = "weights kept on chip" if self.passes == 1 else f"weights streamed from {src} {self.passes} times"
        merged = f"merged as {self.runs}, " if self.runs else ""
        return (f"{merged}{len(self.groups)} groups of {per} stages x {self.parts} parts = {len(self.kinds)} kernels ("
                + ", ".join(f"{n} on {k}" for k, n in kinds.items()) + f"), {self.tokens} row blocks, {weights}; "
                f"slowest kernel {max(self.cycles)} cycles, predicted {self.predicted} cycles ({self.bound}-bound)"
                + ("" if self.epilogue else "; its epilogue's inputs not counted (no grouping fits them)"))


def token_rows(rows: int, tile, grain: int = 0) -> list[int]:
    """Rows a token (a row block streamed whole) may hold, largest first: a MAC-array height down to one row
    (fewer when SRAM is short: the MAC array then runs part-full), no more than ``grain`` (what the chain's
    readers hold, 0: no limit) and no fewer than MAX_TOKENS tokens allow, each a divisor of ``rows``."""
    most = max(1, min(rows, max(getattr(tile, "mac_rows", 0), 1) if tile is not None else rows))
    if grain:
        most = min(most, grain)
    least = -(-rows // MAX_TOKENS)
    # rows a whole number of tokens: tokens of unequal rows would make a reader's segments straddle them
    return [r for r in range(max(most, least), least - 1, -1) if rows % r == 0] or [max(most, least)]


def _groups(costs: list[int], joinable: list[bool], k: int) -> list[list[int]] | None:
    """``k`` consecutive groups of stages minimising the largest summed cost; ``joinable[i]`` says
    whether stages i and i+1 may share a group. None when no such split exists."""
    n = len(costs)
    inf = math.inf
    # best[j][m]: the least max cost splitting stages[:j] into m groups
    best = [[inf] * (k + 1) for _ in range(n + 1)]
    cut = [[-1] * (k + 1) for _ in range(n + 1)]
    best[0][0] = 0
    for j in range(1, n + 1):
        for m in range(1, min(j, k) + 1):
            total = 0
            for i in range(j - 1, -1, -1):  # the last group is stages[i:j]
                total += costs[i]
                if i < j - 1 and not joinable[i]:
                    break
                val = max(best[i][m - 1], total)
                if val < best[j][m]:
                    best[j][m], cut[j][m] = val, i
    if best[n][k] == inf:
        return None
    out, j, m = [], n, k
    while m:
        i = cut[j][m]
        out.append(list(range(i, j)))
        j, m = i, m - 1
    return out[::-1]


def row_blocks(tile, kind: str, rows: int, tokens: int) -> list[int]:
    """Rows a stage kernel computes at a time: a token's rows, at most a MAC-array height, on a compute
    tile; one row on a butterfly tile."""
    if kind != "compute":
        return [1]
    return [max(1, min(-(-rows // tokens), max(getattr(tile, "mac_rows", 0), 1)))]


def epilogue_bytes(streams: int, whole: int, token_rows: int, row_bytes: int) -> int:
    """SRAM a stage kernel holds for the epilogue ``fuse-elementwise`` gives it (a bias add, a residual add, another
    chain's partial sum, a layer norm): what it reads whole (``whole`` bytes: a bias, a norm's scale and shift) and
    two tokens of its own rows (``token_rows`` rows of ``row_bytes``) of each of the ``streams`` row streams it adds
    (one applied, the next arriving) -- what ``lower-to-dataflow`` declares for them (two tokens of each streamed
    input, every input it holds whole)."""
    return whole + 2 * streams * token_rows * row_bytes


def kernel_need(views: list[View], rows: int, tokens: int, eb: int, passes: int = 1, in_rows: int = 0) -> int:
    """SRAM a stage kernel needs, what ``lower-to-dataflow`` declares for it: two tokens of its row stream
    (one the stages update in place, the next arriving; a token is streamed whole, so its rows are held
    whole whatever the MAC array takes of them at a time) and its weights. Streamed weights pass through
    one (group, stride) slice's matrix at a time, double-buffered, as they arrive in the order the kernel
    uses them; each slice is applied to every row of the pass, so the kernel holds a whole pass's rows and
    the next token (a pass of one token: two tokens). Weights held in memory tiles arrive a stage's part
    at a time. The same rule as ``attnc.cost.work``'s stage kernels (the rows held are the tokens', whatever
    the MAC array takes of them at a time)."""
    n = len(views[0].cols)
    token = -(-rows // tokens)
    # (a chain's first kernels are sent the tokens of whatever streams its input: ``in_rows`` rows)
    arriving = max(token, in_rows)
    if passes == 1:
        return sum(int(np.prod(v.stage.weight_shape(n))) for v in views) * eb + 2 * arriving * n * eb
    weights = streamed_weight_bytes([int(np.prod(v.stage.weight_shape(n))) * eb for v in views])
    return weights + (max(-(-rows // passes), arriving) + arriving) * n * eb


def merge_runs(stages: list[bf.Stage], n: int, tile) -> list[int]:
    """How many consecutive stages each stage of the chain run on compute tiles merges (:func:`attnc.butterfly.
    merge`), fewest MAC-array cycles first, then fewest multiply-adds, then fewest stages; empty when merging
    saves no cycles. A stage of width ``w`` (radix times block) takes a MAC array of ``c`` columns ``ceil(w / c)``
    column passes per row (``stage_mac_cycles``): a radix-2 stage of block 3 (BERT-base's 768 wide chains)
    fills 6 of 32 columns, 19% of the array, and three such stages merged (radix 8, width 24) take the time of
    one for 25% more multiply-adds."""
    mr, mc = max(getattr(tile, "mac_rows", 0), 1), max(getattr(tile, "mac_cols", 0), 1)
    k = len(stages)
    # best[j]: (cycles, MACs, stages, runs) of stages[:j]
    best: list[tuple | None] = [(0, 0, 0, [])] + [None] * k
    for j in range(1, k + 1):
        width = stages[j - 1].block
        for i in range(j - 1, -1, -1):
            if i < j - 1 and not bf.joinable(stages[i], stages[i + 1]):
                break
            width *= stages[i].radix
            cand = best[i]
            key = (cand[0] + stage_mac_cycles(n, width, mr, mr, mc), cand[1] + width, cand[2] + 1, cand[3] + [j - i])
            if best[j] is None or key[:3] < best[j][:3]:
                best[j] = key
    alone = sum(stage_mac_cycles(n, st.width, mr, mr, mc) for st in stages)
    return best[k][3] if best[k][0] < alone else []


def merged_stages(stages: list[bf.Stage], runs: list[int]) -> list[bf.Stage]:
    """The stages ``runs`` (of :func:`merge_runs`; empty: none) merges ``stages`` into."""
    out, i = [], 0
    for r in runs or [1] * len(stages):
        out.append(bf.Stage(math.prod(st.radix for st in stages[i : i + r]), stages[i].stride, stages[i].block))
        i += r
    return out


def merged_chain(ch: Chain, runs: list[int]) -> Chain:
    """``ch`` with its stages merged as ``runs`` says, the merged weights computed at compile time (its
    weights must be known: :func:`_weight_source`)."""
    known = _weight_source(ch)
    assert known is not None and sum(runs) == len(ch.stages)
    dt = np_dtype(sp.elt_of(ch.x)) if ch.x is not None else known[0].dtype
    stages, weights, i = [], [], 0
    for r in runs:
        w, st = bf.merge(known[i : i + r], ch.stages[i : i + r])
        stages.append(st)
        weights.append(w.astype(dt))
        i += r
    return replace(ch, stages=stages, weights=weights, cache={})


def plan_chain(ch: Chain, arch, slots: list[Slot], *, max_parts: int = 16, max_kernels: int = 1 << 30,
               share: float = 1.0, sram_budget: int = 1 << 62, memory: list[int] | None = None,
               prefer_staged: bool = False) -> Plan:
    """The fastest feasible grouping of one chain on ``slots`` (see the module docstring); with
    ``prefer_staged``, weights held in memory tiles win ties with weights streamed from DRAM."""
    best: Plan | None = None
    count = 0
    # weights kept on chip, or streamed once per row block (more passes: more DRAM traffic, more overlap);
    # kept on chip wins ties
    streamable = _weight_source(ch) is not None  # one constant, which a repeated DMA load can re-read
    # within the chain's share of the free SRAM if it can, so the chains after it still fit
    # streamed weights may be held in memory tiles (``memory``: the SRAM each has free), read from DRAM
    # once and re-sent from there once per row block
    weight_bytes = sum(int(np.prod(st.weight_shape(ch.n))) for st in ch.stages) * ch.eb
    stageable = streamable and bool(memory) and sum(memory or []) >= weight_bytes
    order = (True, False) if prefer_staged else (False, True)
    options = [(1, False)] + [(p, st) for p in PASSES if p <= ch.rows and streamable for st in order
                              if not st or stageable]  # fmt: skip
    for budget in (sram_budget, 1 << 62):
        for passes, staged in options:
            if passes > 1 and best is not None and best.passes == 1:
                break  # weights that stay on chip do: streaming is for weights that do not fit at all. (Also for
                # ones that crowd the row buffers out, a part-full MAC array, once the simulator holds a streamed
                # kernel to what it declares: BERT-base's FFN chains on cloud at seq 2048, weights re-sent from
                # memory tiles 64 times, held 320 KB where they declare 77 KB.)
            cand, c = _search(ch, arch, slots, passes, max_parts, max_kernels, share, budget, staged, memory)
            count += c
            if cand is not None and (best is None or cand.predicted < best.predicted * (1 - TIE)):
                best = cand
        if best is not None:
            break
    if best is None and any(ch.epilogue):
        # no room beside the last kernel's rows for what its epilogue reads: planned without it, as before the
        # epilogue was counted (BERT-base's out projection on edge at seq 2048: a residual, a bias and a norm's
        # scale and shift beside 2-row tokens need 17.5 KiB, more than a tile)
        plan = plan_chain(replace(ch, epilogue=(0, 0), cache={}), arch, slots, max_parts=max_parts,
                          max_kernels=max_kernels, share=share, sram_budget=sram_budget, memory=memory,
                          prefer_staged=prefer_staged)  # fmt: skip
        plan.epilogue = False
        return plan
    if best is None:
        raise AttncError(
            f"tile: {ch.name}: no grouping of its {len(ch.stages)} stages fits the free tiles of {arch.name}"
        )
    best.candidates = count
    return best


def _split(ch: Chain, parts: int):
    """(views, first part sliceable from the input, joinable stage pairs, sliceable stage boundaries) of
    a chain split into ``parts`` column parts (None: its stages do not split so); computed once per chain."""
    key = ("split", parts)
    if key not in ch.cache:
        views = part_views(ch.stages, ch.n, parts)
        if views is None:
            ch.cache[key] = None
        else:
            first = _pieces([tuple(range(ch.n))], views[0][0].cols) is not None
            joinable = [all(views[i][j].cols == views[i + 1][j].cols for j in range(parts))
                        for i in range(len(views) - 1)]  # fmt: skip
            links = [joinable[i] or all(_pieces([v.cols for v in views[i]], views[i + 1][j].cols) is not None
                                        for j in range(parts)) for i in range(len(views) - 1)]  # fmt: skip
            ch.cache[key] = (views, first, joinable, links)
    return ch.cache[key]


def _pack(sizes: list[int], bins: list[int], most: int | list[int] = 1 << 30) -> list[int] | None:
    """First fit decreasing of ``sizes`` into ``bins`` (free bytes), at most ``most`` in a bin (or
    ``most[k]`` in bin k): the bin of each size, or None."""
    left = list(bins)
    cap = list(most) if isinstance(most, list) else [most] * len(bins)
    count = [0] * len(bins)
    out = [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: -sizes[i]):
        b = next((k for k in range(len(left)) if left[k] >= sizes[i] and count[k] < cap[k]), None)
        if b is None:
            return None
        left[b] -= sizes[i]
        count[b] += 1
        out[i] = b
    return out


class MemoryRoom(list):
    """The memory tiles' free bytes (the list) and free contexts (``contexts``), in the same order: the chains
    planned so far hold pieces of their weights there, a context each."""

    def __init__(self, free: list[int], contexts: list[int]):
        super().__init__(free)
        self.contexts = list(contexts)


def _memory_contexts(memory: list[int], arch) -> list[int]:
    """The contexts each memory tile has left for weight pieces: what ``memory`` says, if it is a
    :class:`MemoryRoom`, else all of them."""
    if isinstance(memory, MemoryRoom):
        return list(memory.contexts)
    return [max((t.contexts for t in arch.tiles_of("memory")), default=1)] * len(memory)


def _take_memory(memory: list[int], plan: Plan) -> None:
    """What a staged plan's pieces take of their memory tiles: bytes and a context each."""
    for mi, used in enumerate(plan.held if plan.staged else []):
        memory[mi] -= used
        if isinstance(memory, MemoryRoom) and plan.pieces:
            memory.contexts[mi] -= plan.pieces[mi]


def _search(ch: Chain, arch, slots, passes: int, max_parts: int, max_kernels: int, share: float,
            budget: int, staged: bool = False, memory: list[int] | None = None) -> tuple[Plan | None, int]:
    n, rows, eb = ch.n, ch.rows, ch.eb
    compute = [s for s in slots if s.kind == "compute"]
    ref = compute[0].tile if compute else None
    weights = sum(int(np.prod(st.weight_shape(n))) for st in ch.stages) * eb
    dram = ch.dram_streams * rows * n * eb + (1 if staged else passes) * weights
    # the chains that run at the same time share DRAM: this one gets its share (by MACs) of the bandwidth
    dram_cycles = dram / (arch.dram.bytes_per_cycle * min(1.0, max(ch.dram_share or share, 1e-3)))
    if staged:
        # the memory tiles send every copy over their links
        links = sum(len(arch.graph().out_edges((t.x, t.y))) for t in arch.tiles_of("memory"))
        dram_cycles = max(dram_cycles, passes * weights / max(links * arch.noc.link_bytes_per_cycle * NOC_SHARE, 1))
    count = 0
    best: Plan | None = None
    # a pass holds its rows while the weights stream through: its tokens are no larger than it
    pass_rows = -(-rows // passes)
    for r in token_rows(rows, ref, ch.grain):
        if r > pass_rows:
            continue
        # larger tokens (a fuller MAC array, fewer tokens) win ties; smaller ones may fit a faster tile
        cand, c = _search_tokens(ch, arch, slots, passes, max_parts, max_kernels, share, budget, staged, memory,
                                 -(-rows // r), dram_cycles, ref)
        count += c
        if cand is not None and (best is None or cand.predicted < best.predicted * (1 - TIE)):
            best = cand
        if best is not None and passes == 1:
            break  # weights kept: finer tokens would only run the MAC arrays emptier
    return best, count


def _search_tokens(ch: Chain, arch, slots, passes: int, max_parts: int, max_kernels: int, share: float,
                   budget: int, staged: bool, memory: list[int] | None, tokens: int, dram_cycles: float,
                   ref) -> tuple[Plan | None, int]:
    """The fastest candidate of :func:`_search` with ``tokens`` row blocks."""
    rows, eb = ch.rows, ch.eb
    best: Plan | None = None
    count = 0
    parts = 1
    while parts <= max_parts:
        split = _split(ch, parts)
        if split is None:
            break
        views, first, joinable, links = split
        if not first or not all(ok or same for ok, same in zip(links, joinable)):
            parts *= 2
            continue
        costs = [stage_kernel_cycles([views[i][0].stage], len(views[i][0].cols), rows, ref, "compute") if ref else 1
                 for i in range(len(views))]  # fmt: skip
        for k in range(1, len(views) + 1):
            if k * parts > max_kernels and (k > 1 or parts > 1):
                break
            groups = _groups(costs, joinable, k)
            if groups is None:
                continue
            # an unjoinable boundary must be a group boundary whose columns a consumer can slice
            if any(not links[g[-1]] for g in groups[:-1]):
                continue
            count += 1
            cand = _assign(ch, views, groups, parts, tokens, slots, dram_cycles, arch, passes, share, budget)
            if cand is not None and sum(cand.claims) > budget:
                continue
            if cand is not None and staged:
                # one piece per memory tile, each kernel's weights in one piece
                nl = [len(views[g[0]][0].cols) for g in groups]
                sizes = [sum(int(np.prod(views[i][0].stage.weight_shape(nl[gi]))) for i in g) * eb
                         for gi, g in enumerate(groups) for _ in range(parts)]  # fmt: skip
                # (a kernel's piece is a context of its own: at most the contexts the chains planned before
                # left a memory tile)
                where = _pack(sizes, memory, _memory_contexts(memory, arch))
                if where is None:
                    continue
                cand.staged = True
                cand.bins = list(memory)
                cand.held = [sum(sz for sz, w in zip(sizes, where) if w == b) for b in range(len(memory))]
                cand.pieces = [where.count(b) for b in range(len(memory))]
            if cand is None:
                continue
            if best is None or cand.predicted < best.predicted * (1 - TIE) or (
                cand.predicted <= best.predicted * (1 + TIE) and len(cand.kinds) < len(best.kinds)
            ):
                best = cand
        parts *= 2
    return best, count


#: a kernel's choice on one tile kind: (cycles, SRAM need, rows at a time)
_Option = tuple[int, int, int]


def _assign(ch: Chain, views, groups, parts, tokens, slots: list[Slot], dram_cycles, arch, passes: int = 1,
            frac: float = 1.0, budget: int = 1 << 62) -> Plan | None:
    """Put a candidate's kernels on the slots, longest first, each where it finishes soonest."""
    if not slots:
        return None
    kernels = [(gi, j) for gi in range(len(groups)) for j in range(parts)]  # (group index, part)
    for s in slots:
        s.load, s.used = s.busy, 0
    info = _kernel_options(ch, views, groups, kernels, tokens, passes, {s.kind: s.tile for s in slots})
    greedy = _place_greedy(ch, kernels, info, slots, parts, tokens, arch, budget // len(kernels))
    if greedy is None:
        return None
    placed, pick = greedy
    slowest = max(s.load for s in slots)
    # k groups in a pipeline over T row blocks: (T + k - 1) / T of the slowest tile's time; and the last row
    # block still goes through the ``tail`` kernels the chain streams into (a bias add, a LayerNorm, the next
    # chain) one row-block time each: few large blocks make the layer's pipeline drain in a few large steps
    pipe = slowest * (tokens + len(groups) + ch.tail - 1) / tokens
    # DRAM streams the rows in and out while the pipeline runs, but not while its first row block
    # fills it: the store cannot start before a row block has come through every group
    drain = len(groups) * slowest / tokens
    predicted = max(pipe, dram_cycles + drain) + arch.dram.latency_cycles
    kinds, where, claims, needs, cycles, blocks = [], [], [], [], [], []
    for kj in kernels:
        s = placed[kj]
        cyc, need, rb = pick[kj]
        kinds.append(s.kind)
        where.append(s.index)
        needs.append(need)
        cycles.append(cyc)
        # a token of fewer rows than the MAC array has runs it part-full (0: full row blocks)
        blocks.append(rb if s.kind == "compute" and rb < max(s.tile.mac_rows, 1) and rb < ch.rows else 0)
        claims.append(max(need, _claim(s, cyc, slowest, frac, len(kernels) == 1)))
    _shrink_claims(placed, where, claims, needs)
    return Plan(parts, groups, kinds, where, claims, needs, cycles, tokens, passes, math.ceil(predicted),
                "dram" if dram_cycles + drain >= pipe else "compute", blocks=blocks)


def _kernel_options(ch: Chain, views, groups, kernels, tokens: int, passes: int,
                    kinds_of: dict[str, object]) -> dict[tuple[int, int], dict[str, list[_Option]]]:
    """Per kernel and tile kind: the options for each row block it may use, largest first."""
    rows, eb = ch.rows, ch.eb
    info: dict[tuple[int, int], dict[str, list[_Option]]] = {}
    for gi, j in kernels:
        vs = [views[i][j] for i in groups[gi]]
        local = [v.stage for v in vs]
        nl = len(vs[0].cols)
        info[gi, j] = {}
        for kind, tile in kinds_of.items():
            need = kernel_need(vs, rows, tokens, eb, passes, in_rows=ch.in_rows if gi == 0 else 0)
            if gi == len(groups) - 1 and len(views[0]) == 1 and kind == "compute":
                # the chain ends in this one kernel: fuse-elementwise gives it the epilogue (on the tile's lanes)
                need += epilogue_bytes(*ch.epilogue, -(-rows // tokens), nl * eb)
            info[gi, j][kind] = [(stage_kernel_cycles(local, nl, rows, tile, kind, rb), need, rb)
                                 for rb in row_blocks(tile, kind, rows, tokens)]  # fmt: skip
    return info


def _place_greedy(ch: Chain, kernels, info, slots: list[Slot], parts: int, tokens: int, arch,
                  share: int = 1 << 62) -> tuple[dict[tuple[int, int], Slot], dict[tuple[int, int], _Option]] | None:
    """Longest kernel first, each on the slot where it would finish soonest (its load there plus what
    reaching its neighbouring stages costs), with the fastest row block that fits what is left of the
    slot's SRAM and, if one does, the kernel's ``share`` of the chain's SRAM budget (a larger block that
    only the slot holds would put the chain over its budget, and the chains after it would find no room);
    None when a kernel fits nowhere. Updates the slots' load and use."""
    n, rows, eb = ch.n, ch.rows, ch.eb
    sram_left = {s.index: s.sram for s in slots}

    def fit(kj, s: Slot) -> _Option | None:
        """The fastest row block of kernel ``kj`` whose buffers fit what is left of ``s`` (and its share)."""
        room = [o for o in info[kj][s.kind] if o[1] <= sram_left[s.index]]
        return next((o for o in room if o[1] <= share), room[0] if room else None)

    order = sorted(kernels, key=lambda kj: -max(opts[0][0] for opts in info[kj].values()))
    placed: dict[tuple[int, int], Slot] = {}
    link = max(arch.noc.link_bytes_per_cycle, 1)

    def cost(kj, s: Slot) -> float:
        # the tile's load with the kernel, plus what reaching it costs: a row block's cycles on a link
        # (what a far placement adds to the pipeline's fill) times the mean hops to the neighbouring
        # stages placed so far (two butterfly tiles on opposite sides of the mesh are fast but far apart)
        near = by_group.get(kj[0] - 1, []) + by_group.get(kj[0] + 1, [])
        hops = sum(abs(s.tile.x - x) + abs(s.tile.y - y) for x, y in near) / len(near) if near else 0
        return s.load + chosen[kj, s.index][0] + hops * row_bytes / link / tokens

    chosen: dict = {}
    pick: dict[tuple[int, int], _Option] = {}
    by_group: dict[int, list[tuple[int, int]]] = {}  # group -> the tiles of its kernels placed so far
    row_bytes = rows * n // parts * eb  # a kernel's columns of every row
    for kj in order:
        options = []
        for s in slots:
            o = fit(kj, s) if s.used < s.contexts else None
            if o is not None:
                chosen[kj, s.index] = o
                options.append(s)
        if not options:
            return None
        s = min(options, key=lambda s: (cost(kj, s), s.kind != "butterfly", s.index))
        pick[kj] = chosen[kj, s.index]
        s.load += pick[kj][0]
        s.used += 1
        sram_left[s.index] -= pick[kj][1]
        placed[kj] = s
        by_group.setdefault(kj[0], []).append((s.tile.x, s.tile.y))
    return placed, pick


def _claim(s: Slot, cyc: int, slowest: int, frac: float, alone: bool) -> int:
    """The SRAM share a kernel of ``cyc`` cycles claims on slot ``s`` beyond its need.

    The placer ranks byte-hops above the makespan and would stack pipeline neighbours on one tile; a
    kernel claims the share of its tile's free SRAM that its cycles are of the slowest tile's, so whatever
    set of the chain's kernels shares a tile sums to at most that many cycles (a chain of one kernel has
    no neighbour to be stacked with). On a butterfly tile -- few of them, with tight SRAM that proportional
    claims would make the placer's best-fit packing miss -- only a kernel of more than half the slowest
    tile's cycles claims more than half of it, so two such never share one."""
    if alone:
        return 0
    if s.kind == "compute":
        # (a chain that shares the array with others claims its share of that: ``frac``)
        return int(CLAIM * frac * s.sram * cyc / max(slowest, 1))
    return s.tile.sram_bytes // 2 + 1 if 2 * cyc > slowest else 0


def _shrink_claims(placed: dict[tuple[int, int], Slot], where: list[int], claims: list[int],
                   needs: list[int]) -> None:
    """Keep the plan's own packing feasible: a tile's claims beyond the needs shrink to what it has."""
    for slot in {s.index: s for s in placed.values()}.values():
        mine = [i for i, w in enumerate(where) if w == slot.index]
        extra = sum(claims[i] - needs[i] for i in mine)
        room = slot.sram - sum(needs[i] for i in mine)
        if extra > max(room, 0):
            for i in mine:
                claims[i] = needs[i] + max(0, (claims[i] - needs[i]) * max(room, 0) // extra)


def free_slots(arch, reserved: dict[str, int], used_sram: int, members: int) -> list[Slot]:
    """The butterfly and compute tiles with the contexts and SRAM the graph's other kernels leave:
    attention members take whole tiles (the first ones), the other compute kernels a context and a
    context's share of SRAM each, spread evenly."""
    slots = []
    for t in arch.tiles_of("butterfly"):
        slots.append(Slot(len(slots), "butterfly", t, t.contexts, t.sram_bytes))
    comp = arch.tiles_of("compute")
    if comp:
        per_member = min(used_sram // max(members, 1), max(t.sram_bytes for t in comp)) if members else 0
        others = reserved.get("compute", 0)
        # the other kernels' odd contexts go to the tiles the members leave first: a member tile's SRAM is
        # the member's, so a kernel counted there would take nothing from the tiles it will really share
        order = {i: j for j, i in enumerate([*range(members, len(comp)), *range(min(members, len(comp)))])}
        for i, t in enumerate(comp):
            share = t.sram_bytes // max(t.contexts, 1)
            mine = others // len(comp) + (1 if order[i] < others % len(comp) else 0)
            ctx = t.contexts - mine - (1 if i < members else 0)
            sram = t.sram_bytes - mine * share - (per_member if i < members else 0)
            if ctx > 0 and sram > 0:
                slots.append(Slot(len(slots), "compute", t, ctx, sram))
    return slots


def _commit(plan: Plan, slots: list[Slot], busy: bool = False) -> None:
    """What a chosen plan takes from its tiles (the next chain plans with the rest); ``busy``: the next chain
    runs at the same time, so the plan's kernel cycles also stay on their tiles' load."""
    for si, claim, cyc in zip(plan.slots, plan.claims, plan.cycles):
        s = slots[si]
        s.contexts -= 1
        s.sram -= claim
        s.busy += cyc if busy else 0
    slots[:] = [s for s in slots if s.contexts > 0 and s.sram > 0]
    for i, s in enumerate(slots):
        s.index = i


#: shares of each tile the chain planned first may take, for a Fourier op over two axes
AXIS_SHARES = (0.25, 1 / 3, 0.4, 0.5, 0.6, 2 / 3, 0.75)
#: most stage kernels of each axis's chain (the placer's packing of the array fails with many more:
#: two chains of 32 at seq 512 on edge do not place)
AXIS_KERNELS = 24


def _scaled(slots: list[Slot], share: float) -> list[Slot]:
    """``slots`` cut to ``share`` of each tile's contexts (at least one) and SRAM, indices kept (so a plan
    on them commits to ``slots``)."""
    ctx = (lambda c: c) if share >= 1 else (lambda c: max(1, round(c * share)))
    return [replace(s, contexts=ctx(s.contexts), sram=int(s.sram * share)) for s in slots]


@dataclass
class _Probe(Chain):
    """A chain by its dimensions only (the planner's look-ahead at an axis not yet expanded)."""

    dims: tuple[int, int, int] = (0, 0, 0)

    @property
    def n(self) -> int:
        return self.dims[0]

    @property
    def rows(self) -> int:
        return self.dims[1]

    @property
    def eb(self) -> int:
        return self.dims[2]


def fourier_axes(op: sp.FourierOp) -> list[int]:
    """The axes of a Fourier op in expansion order: the last axis last, so the chain that ends the op
    runs along its rows and streams them to the row-wise ops after it (a residual add, a layer norm)
    instead of those waiting for a transpose of the whole result."""
    r = len(sp.shape_of(op.input))
    return sorted({int(a) % r for a in op.axes.get_values()})


def plan_axes(op: sp.FourierOp, arch, slots: list[Slot], memory: list[int]) -> list[Plan] | None:
    """The plans of a two-axis Fourier op's chains (in expansion order), committed to ``slots`` and
    ``memory``; None for other axis counts. The axes' chains run one after the other but stay
    configured together, so they split each tile: one chain plans on a share of every tile's
    contexts and SRAM, the other on what it leaves; the order and share (of ``AXIS_SHARES``) are
    those with the least summed predicted cycles (a chain's cycles fall about as its SRAM grows: its
    row blocks fill the MAC arrays, so a wide sequence-axis chain needs far more than its MACs say)."""
    shp = sp.shape_of(op.results[0])
    axes = fourier_axes(op)
    if len(axes) != 2:
        return None
    total = int(np.prod(shp, dtype=np.int64))
    eb = np_dtype(sp.elt_of(op.input)).itemsize
    probes = []
    for ai, a in enumerate(axes):
        sts, ws, _ = bf.fft_stages(shp[a])
        probes.append(_Probe(f"probe{ai}", None, sts, ws, dims=(2 * shp[a], total // shp[a], eb)))

    def attempt(order: tuple[int, int], share: float):
        mine = [replace(s) for s in slots]
        mem = MemoryRoom(memory, memory.contexts) if isinstance(memory, MemoryRoom) else list(memory)
        plans: dict[int, Plan] = {}
        for ai, f in zip(order, (share, 1.0)):
            try:
                plan = plan_chain(probes[ai], arch, _scaled(mine, f), max_kernels=AXIS_KERNELS, memory=mem,
                                  prefer_staged=True)
            except AttncError:
                return math.inf, None
            _commit(plan, mine)
            for mi, used in enumerate(plan.held if plan.staged else []):
                mem[mi] -= used
            plans[ai] = plan
        return sum(p.predicted for p in plans.values()), plans

    best, plans, order = math.inf, None, None
    for o in ((1, 0), (0, 1)):  # the last axis (usually the narrower chain) planned first wins ties
        for share in AXIS_SHARES:
            t, ps = attempt(o, share)
            if t < best:
                best, plans, order = t, ps, o
    if plans is None:
        return None
    for ai in order:
        _commit(plans[ai], slots)
        _take_memory(memory, plans[ai])
    return [plans[ai] for ai in range(len(axes))]


# ---------------------------------------------------------------------------
# building the kernels' ops


def _const(b: KernelBuilder, arr: np.ndarray, elt) -> SSAValue:
    return b.add(sp.ConstantOp(from_numpy(np.ascontiguousarray(arr), elt)))


def _weight_source(ch: Chain) -> list[np.ndarray] | None:
    """The stage weights as numpy arrays when they are all known at compile time."""
    out = []
    for w in ch.weights:
        if isinstance(w, np.ndarray):
            out.append(w)
        elif isinstance(w.owner, sp.ConstantOp) and w.type == w.owner.value.type:
            out.append(to_numpy(w.owner.value))
        else:
            return None
    return out


def _stage_weights(b: KernelBuilder, chunks: list[np.ndarray], offsets: dict, plan: Plan, elt, name: str) -> dict:
    """Weights held in memory tiles: the kernels' weights in pieces of at most a memory tile's SRAM (each
    kernel's in one piece), each piece loaded once and re-sent once per row block by a memory-tile kernel.
    Returns (piece value, offset) per (stage, part)."""
    per_kernel: list[list[tuple[tuple[int, int], np.ndarray]]] = []
    keys = sorted(offsets, key=lambda k: offsets[k])
    it = iter(zip(keys, chunks))
    for grp in plan.groups:
        for _ in range(plan.parts):
            per_kernel.append([next(it) for _ in grp])
    out = {}
    # a piece per kernel, each its own memory-tile context: a context feeding two stage kernels would be a
    # fork-join (their outputs meet again downstream), which the timing model does not throttle (its copies
    # would pile up in the kernels' buffers)
    for ki, kern in enumerate(per_kernel):
        data = np.concatenate([c for _, c in kern]).astype(np_dtype(elt))
        hold = sp.ReshapeOp(_const(b, data, elt), [data.size])
        hold.attributes[WEIGHT_STAGE] = IntegerAttr(plan.passes, 64)
        held = b.add(hold, f"{name}_w{ki}", name)
        off = 0
        for key, c in kern:
            out[key] = (held, off)
            off += c.size
    return out


def build_chain(b: KernelBuilder, ch: Chain, plan: Plan) -> SSAValue:
    """The stage ops of ``ch`` for ``plan``, tagged per kernel; returns the chain's result."""
    if plan.runs:
        ch = merged_chain(ch, plan.runs)
    n, x = ch.n, ch.x
    views = part_views(ch.stages, n, plan.parts)
    assert views is not None
    weights = _ChainWeights(b, ch, plan, views)
    prev: list[tuple[tuple[int, ...], SSAValue]] = [(tuple(range(n)), x)]
    kid = 0
    for gi, grp in enumerate(plan.groups):
        outs = []
        for j in range(plan.parts):
            tag = f"{ch.name}_s{gi}" + (f"_p{j}" if plan.parts > 1 else "")
            cols = views[grp[0]][j].cols
            v = _assemble(b, x, prev, cols)
            for i in grp:
                v = b.add(_stage_op(v, weights.weight(i, j), views[i][j].stage, plan, kid), tag, ch.name)
            outs.append((cols, v))
            kid += 1
        prev = outs
    return _assemble(b, x, prev, tuple(range(n)))


def _stage_op(v: SSAValue, weight: SSAValue, st: bf.Stage, plan: Plan, kid: int) -> sp.ButterflyStageOp:
    """One stage of kernel ``kid`` on ``v``, marked with what the plan chose for the kernel."""
    op = sp.ButterflyStageOp(v, weight, st.radix, st.stride, st.block)
    op.attributes[ROWS] = IntegerAttr(plan.tokens, 64)
    op.attributes[TILE_KIND] = StringAttr(plan.kinds[kid])
    if plan.passes > 1:
        op.attributes[WEIGHT_PASSES] = IntegerAttr(plan.passes, 64)
    if plan.blocks and plan.blocks[kid]:
        # short of SRAM: fewer rows at a time than the MAC array has (it runs part-full)
        op.attributes["row_block"] = IntegerAttr(plan.blocks[kid], 64)
    if plan.claims[kid]:
        # what it claims, its need at least (its weights held in memory tiles arrive a stage's part at a time,
        # which the kernel's own ops do not say)
        op.attributes[RESERVE] = IntegerAttr(plan.claims[kid], 64)
    return op


def _assemble(b: KernelBuilder, x: SSAValue, producers: list[tuple[tuple[int, ...], SSAValue]],
              cols: tuple[int, ...]) -> SSAValue:
    """The columns ``cols`` of a chain on ``x``, from the producers' outputs (their columns, their value)."""
    shp = list(sp.shape_of(x))
    r = len(shp)
    pcs = _pieces([c for c, _ in producers], cols)
    assert pcs is not None
    if len(pcs) == 1 and (pcs[0][2], pcs[0][3]) == (0, sp.shape_of(producers[pcs[0][1]][1])[-1]):
        return producers[pcs[0][1]][1]
    # every piece is a slice (a whole one too): what a kernel reads of a producer is then the pieces
    # it takes of it, scaled by what it reads of their concatenation (attnc.cost.work.consumed_bytes)
    vals = [b.add(sp.SliceOp(producers[p][1], [0] * (r - 1) + [a], shp[:-1] + [e], [1] * r)) for _, p, a, e in pcs]
    return vals[0] if len(vals) == 1 else b.add(sp.ConcatOp(vals, r - 1))


class _ChainWeights:
    """Where each kernel's stage weights come from. Weights known at compile time are one constant holding
    every kernel's local factors (one DMA load for the chain), or, when the plan stages them, pieces held
    in memory tiles; each kernel's weight is then a slice of it. Other weights are sliced from the op's
    factor values."""

    def __init__(self, b: KernelBuilder, ch: Chain, plan: Plan, views: list[list[View]]):
        self.b, self.ch, self.plan, self.views = b, ch, plan, views
        self.elt = sp.elt_of(ch.x)
        self.known = _weight_source(ch)
        self.offsets: dict[tuple[int, int], int] = {}
        self.blob: SSAValue | None = None
        self.holders: dict = {}
        if self.known is None:
            return
        chunks, off = [], 0
        for grp in plan.groups:
            for j in range(plan.parts):
                for i in grp:
                    v = views[i][j]
                    w = np.asarray(self.known[i])[v.g0 : v.g1, v.s0 : v.s1]
                    self.offsets[i, j] = off
                    chunks.append(w.reshape(-1))
                    off += w.size
        if plan.staged:
            self.holders = _stage_weights(b, chunks, self.offsets, plan, self.elt, ch.name)
        elif plan.passes > 1:
            # weights streamed from DRAM: a constant (a load) per kernel, so each kernel is sent its own
            # weights once per pass, not the whole chain's
            it = iter(chunks)
            for grp in plan.groups:
                for j in range(plan.parts):
                    mine = [(i, next(it)) for i in grp]
                    blob = _const(b, np.concatenate([c for _, c in mine]).astype(np_dtype(self.elt)), self.elt)
                    blob.owner.attributes[WEIGHT_PASSES] = IntegerAttr(plan.passes, 64)
                    local = 0
                    for i, c in mine:
                        self.holders[i, j] = (blob, local)
                        local += c.size
        else:
            self.blob = _const(b, np.concatenate(chunks).astype(np_dtype(self.elt)), self.elt)
            if plan.passes > 1:
                self.blob.owner.attributes[WEIGHT_PASSES] = IntegerAttr(plan.passes, 64)

    def weight(self, i: int, j: int) -> SSAValue:
        """The weight of stage ``i`` in part ``j``: ``[g, s, radix*block, radix*block]`` of its own units."""
        b, v = self.b, self.views[i][j]
        wshape = list(v.stage.weight_shape(len(v.cols)))
        size = int(np.prod(wshape))
        if self.holders:
            src, off = self.holders[i, j]
            piece = b.add(sp.SliceOp(src, [off], [off + size], [1]))
            return b.add(sp.ReshapeOp(piece, wshape))
        if self.blob is not None:
            off = self.offsets[i, j]
            piece = b.add(sp.SliceOp(self.blob, [off], [off + size], [1]))
            return b.add(sp.ReshapeOp(piece, wshape))
        w = self.ch.weights[i]
        if isinstance(w, np.ndarray):
            return _const(b, w[v.g0 : v.g1, v.s0 : v.s1], self.elt)
        full = list(sp.shape_of(w))
        if [v.g0, v.s0] == [0, 0] and [v.g1, v.s1] == full[:2]:
            return w
        return b.add(sp.SliceOp(w, [v.g0, v.s0, 0, 0], [v.g1, v.s1, full[2], full[3]], [1, 1, 1, 1]))


# ---------------------------------------------------------------------------
# the decisions `tile` makes (planning) and the pattern that applies them


@dataclass
class ButterflyPlans:
    """The planner's decisions for a module: per butterfly matmul or Fourier op its name and the plan of
    each of its stage chains (in expansion order), and the report lines."""

    plans: dict[Operation, tuple[str, list[Plan]]] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)


def chain_probes(op: sp.ButterflyMatmulOp | sp.FourierOp, name: str) -> list[Chain]:
    """The stage chains ``op`` expands into, in expansion order, as the planner sees them: their stages,
    weights and dimensions (the values they will run on are made only when the op is expanded)."""
    if isinstance(op, sp.ButterflyMatmulOp):
        # (a bit-reversing gather before the stages keeps the input's shape)
        return [Chain(name, op.input, op.stages(), list(op.factors))]
    shp = sp.shape_of(op.input)
    total = int(np.prod(shp, dtype=np.int64))
    dt = np_dtype(sp.elt_of(op.input))
    probes: list[Chain] = []
    for ai, a in enumerate(fourier_axes(op)):
        sts, ws, _ = bf.fft_stages(shp[a])
        ws = [w.astype(dt) for w in ws]
        probes.append(_Probe(f"{name}_ax{ai}", None, sts, ws, dims=(2 * shp[a], total // shp[a], dt.itemsize)))
    return probes


def members_sram(buffers: int, queries: int) -> int:
    """SRAM the fused attention members hold, resident: their ``buffers`` and the ``queries`` they read whole from a
    kernel on chip -- unless a member's share of those is more than its buffers: then they go through DRAM
    (``lower_dataflow.spill_held_queries``) and take no SRAM (BERT-base's butterfly layer on edge at seq 512:
    96 KiB of queries a member beside its 11 KiB of buffers; counted, they hid the 5 KiB and 3 contexts each
    member's tile leaves the stage kernels)."""
    return buffers + queries if queries <= buffers else buffers


def plan_butterflies(fn, arch, reserved: dict[str, int], used_sram: int = 0, members: int = 0) -> ButterflyPlans:
    """Plan every butterfly matmul and Fourier op of ``fn`` into stage kernels on the tiles the rest of the
    graph leaves (see the module docstring), in program order, each chain on what the ones before it
    left; :class:`ExpandButterflyPattern` then builds the plans."""
    ops = [o for o in fn.body.block.ops if isinstance(o, (sp.ButterflyMatmulOp, sp.FourierOp))]
    out = ButterflyPlans()
    if not ops:
        return out
    # the reservation counted these ops' pipelines (butterfly_contexts): they are planned here instead
    reserved = dict(reserved, compute=max(0, reserved.get("compute", 0) - sum(butterfly_contexts(o) for o in ops)))
    if members and SHARE_ATTR not in fn.attributes:
        # resident, a member reads its queries from a kernel on chip in one token, and holds its share of them
        # whole next to its schedule's buffers (lower-to-dataflow declares them, up to the tile) -- or they spill
        used_sram = members_sram(used_sram, sum(
            _nbytes(o.q) for o in fn.body.block.ops
            if isinstance(o, sp.AttentionOp) and o.fusion is not None and not isinstance(o.q.owner, sp.ConstantOp)))
    # resident, every chain plans on what the ones before it left, each within its share of the SRAM: when a
    # later one finds no room (the shares are of bytes, the tiles are packed whole kernels at a time), the
    # chains plan again on smaller shares. Then, should no share leave room for what the chains' epilogues read,
    # the chains plan without counting it, each last kernel declaring more than its plan claims (BERT-base's
    # butterfly layer on edge at seq 2048, the epilogues counted: every share leaves an FFN chain no room)
    scales = SRAM_SHARES if SHARE_ATTR not in fn.attributes else SRAM_SHARES[:1]
    attempts = [(scale, True) for scale in scales] + [(scale, False) for scale in scales]
    for scale, epilogues in attempts:
        slots = free_slots(arch, reserved, used_sram, members)
        if not slots:
            raise AttncError(f"tile: the butterfly stages have no free butterfly or compute tile on {arch.name}")
        if SHARE_ATTR not in fn.attributes:
            _keep_for_row_parts(slots, row_part_contexts(fn, ops, arch, slots))
        try:
            return _plan_all(fn, ops, arch, slots, scale, epilogues)
        except AttncError:
            if (scale, epilogues) == attempts[-1]:
                raise
    raise AssertionError("unreachable")


#: the scales of each chain's SRAM share the resident planning tries, in order
SRAM_SHARES = (1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)


def _plan_all(fn, ops: list[Operation], arch, slots: list[Slot], scale: float, epilogues: bool = True) -> ButterflyPlans:
    """The plans of every op (see :func:`plan_butterflies`), each chain within ``scale`` of its SRAM share; with
    ``epilogues``, each last kernel counting what its epilogue reads where some grouping fits it."""
    out = ButterflyPlans()
    # memory tiles may hold streamed weights, unless an attention stages its K/V there
    staging = any(STAGE in o.attributes for o in fn.body.block.ops)
    mem_tiles = [] if staging else arch.tiles_of("memory")
    memory = MemoryRoom([t.sram_bytes for t in mem_tiles], [t.contexts for t in mem_tiles])
    names = {op: f"bfly{i}" for i, op in enumerate(ops)}
    shared = SHARE_ATTR in fn.attributes
    phase = butterfly_phases(fn, ops, streaming=not shared)
    tails = chain_tails(fn, ops, phase, shared)
    for group, budget in _phase_budgets(fn, ops, slots):
        dram_shares = phase_dram_shares(group, phase)
        budget = replace(budget, sram=int(budget.sram * scale))
        # sharing SRAM, each phase's chains plan on the tiles' whole SRAM (the contexts stay taken)
        mine = [replace(s) for s in slots] if shared else slots
        free = list(mine)
        for i, op in enumerate(group):
            # the chains of one phase run at the same time: each plans with the ones before it on the tiles
            # (a Q and a V chain on one butterfly tile take twice as long); other phases' chains run apart
            if i == 0 or phase[op] != phase[group[i - 1]]:
                for s in free:
                    s.busy = 0
            chains = chain_probes(op, names[op])
            for ch in chains:
                ch.tail = tails[op]
                ch.dram_share = dram_shares[op]
            chains[0].in_rows = _upstream_rows(op, out.plans)
            chains[-1].epilogue = epilogue_reads(op) if epilogues else (0, 0)
            if isinstance(op, sp.ButterflyMatmulOp) and not shared:
                # resident, a chain streams from and to the kernels next to it; only a graph input or a
                # stored result crosses DRAM (with SRAM phases, a crossing between phases is a spill)
                chains[0].dram_streams = _from_dram(op.input) + _to_dram(op.results[0])
            plans = _plan_op(op, chains, arch, free, memory, budget)
            out.plans[op] = (names[op], plans)
            out.reports += [f"{ch.name}: {ch.n} wide, {ch.rows} rows, {len(ch.stages)} stages: {plan.text()}"
                            for ch, plan in zip(chains, plans)]  # fmt: skip
        if mine is not slots:
            for s, m in zip(slots, mine):
                s.contexts = m.contexts
            slots[:] = [s for s in slots if s.contexts > 0]
            for i, s in enumerate(slots):
                s.index = i
    out.plans = {op: out.plans[op] for op in ops}
    return out


def phase_dram_shares(ops: list[Operation], phase: dict[Operation, int]) -> dict[Operation, float]:
    """Each op's share of the DRAM bandwidth: by MACs among the ops of its phase, which run at the same time (the
    others run before or after them). BERT's Q/K/V chains on cloud, given a twelfth of it with the output and
    FFN chains of the next phase, were planned DRAM-bound in one column part each at seq 2048 (141K cycles
    before the attention could start; 35K with their phase's third)."""
    macs = {op: _macs(op) for op in ops}
    together: dict[int, int] = {}
    for op in ops:
        together[phase[op]] = together.get(phase[op], 0) + macs[op]
    return {op: macs[op] / max(together[phase[op]], 1) for op in ops}


def row_part_contexts(fn, ops: list[Operation], arch, slots: list[Slot]) -> int:
    """Compute contexts to leave to the column parts of the elementwise chains with special functions, or before
    a norm, that the butterflies feed (a bias add and GELU between FFN1 and FFN2, the bias and residual adds
    before a layer norm): ``fuse-elementwise`` cuts such a chain by
    columns over the free contexts (attnc.passes.fuse_elementwise.plan_row_splits), and all of it streams
    between the stage pipelines, so it gets the share of the free compute contexts that its lane cycles are
    of its and the stages' cycles together. Resident kernels only; 0 when there is no such chain."""
    from attnc.cost.work import kernel_cost
    from attnc.passes.fuse_elementwise import ELEMENTWISE, needs_special

    comp = [s for s in slots if s.kind == "compute"]
    if not comp:
        return 0
    seen: set[Operation] = set()
    chains: list[list[Operation]] = []
    for op in ops:
        if not isinstance(op, sp.ButterflyMatmulOp):
            continue
        mine, todo, norm = [], list(op.results), False
        while todo:
            for use in todo.pop().uses:
                u = use.operation
                norm = norm or isinstance(u, sp.LayerNormOp)
                if u in seen or not (sp.is_data_movement(u) or isinstance(u, ELEMENTWISE)):
                    continue
                seen.add(u)
                todo += list(u.results)
                if isinstance(u, ELEMENTWISE):
                    mine.append(u)
        # (the ops before a norm are a row kernel of their own too: fuse-elementwise keeps the norm apart)
        if mine and (norm or any(needs_special(u) for u in mine)):
            chains.append(mine)
    if not chains:
        return 0
    tile = comp[0].tile
    lanes = sum(kernel_cost([u], [u.results[0].type], arch).cycles for c in chains for u in c)
    stages = 0
    for o in ops:
        if isinstance(o, sp.ButterflyMatmulOp):
            n, sts = sp.shape_of(o.input)[-1], o.stages()
            # (as the planner will likely run them: merged where the MAC array takes them wider)
            sts = merged_stages(sts, merge_runs(sts, n, tile))
            stages += stage_kernel_cycles(sts, n, int(np.prod(sp.shape_of(o.input)[:-1], dtype=np.int64)), tile,
                                          "compute")
    free = sum(s.contexts for s in comp)
    return min(free - len(comp), round(free * lanes / max(lanes + stages, 1)))


def _keep_for_row_parts(slots: list[Slot], keep: int) -> None:
    """Take ``keep`` contexts off the compute slots, one at a time from the one with the most left."""
    for _ in range(max(keep, 0)):
        s = max((s for s in slots if s.kind == "compute" and s.contexts > 1), key=lambda s: s.contexts, default=None)
        if s is None:
            break
        s.contexts -= 1


def _upstream_rows(op: Operation, planned: dict[Operation, tuple[str, list[Plan]]]) -> int:
    """Rows of a token of ``op``'s input when a chain planned before it streams it there through row kernels
    and data movement (they pass its tokens on: ``lower-to-dataflow``); 0 when none does."""
    best, seen, todo = 0, set(), [op.operands[0]]
    while todo:
        v = todo.pop()
        src = v.owner
        if not isinstance(src, Operation) or src in seen:
            continue
        seen.add(src)
        if src in planned:
            plan = planned[src][1][-1]
            rows = int(np.prod(sp.shape_of(src.results[0])[:-1], dtype=np.int64))
            best = max(best, -(-rows // plan.tokens))
        elif not isinstance(src, (*BARRIERS, sp.ButterflyMatmulOp, sp.ConstantOp)):
            todo += list(src.operands)
    return best


def epilogue_reads(op: Operation) -> tuple[int, int]:
    """What the epilogue of ``op``'s last stage kernel reads besides the chain's rows, as ``fuse-elementwise``
    fuses it when the chain ends in one compute kernel: (row streams, bytes held whole). The epilogue is the
    elementwise ops and layer norms that ``op``'s result reaches (through data movement) whose other operands
    need no MAC op after ``op``; one that does (the next chain's partial sum) joins that op's kernel, and so does
    all that depends on it. An other operand with as many elements as the kernel's share of the op is a row stream
    (a residual, an earlier chain's partial sum), a constant that folds into kernels (``lower-to-dataflow``'s
    rule) costs nothing, anything else is held whole (a bias, a norm's scale and shift), the kernel's share of it
    when the op is on a concatenation of several chains' results (``fuse-elementwise`` cuts it by columns)."""
    from attnc.passes.fuse_elementwise import ELEMENTWISE
    from attnc.passes.lower_dataflow import folds_into_kernels

    block = op.parent_block()
    if block is None or not isinstance(op, sp.ButterflyMatmulOp):
        return 0, 0
    out = op.results[0]
    size = int(np.prod(sp.shape_of(out), dtype=np.int64))
    inside: set[SSAValue] = {out}
    streams: set[SSAValue] = set()
    whole: dict[SSAValue, int] = {}
    after = False
    for u in block.ops:
        if u is op:
            after = True
            continue
        if not after or not u.results or not any(v in inside for v in u.operands):
            continue
        if sp.is_data_movement(u):
            inside.update(u.results)
            continue
        if not isinstance(u, (*ELEMENTWISE, sp.LayerNormOp)):
            continue
        others = [v for v in u.operands if v not in inside and v is not op.input]
        if any(_made_after(v, op) for v in others):
            continue
        share = size / max(int(np.prod(sp.shape_of(u.results[0]), dtype=np.int64)), 1)
        for v in others:
            src = _through_movement(v)
            if isinstance(src.owner, sp.ConstantOp) and folds_into_kernels(src.owner):
                continue
            if int(np.prod(sp.shape_of(v), dtype=np.int64)) * share == size:
                streams.add(v)
            else:
                whole[v] = math.ceil(_nbytes(v) * min(share, 1.0))
        inside.update(u.results)
    return len(streams), sum(whole.values())


def _through_movement(v: SSAValue) -> SSAValue:
    """The value ``v`` is data movement of (``v`` itself when it is not)."""
    while isinstance(v.owner, Operation) and sp.is_data_movement(v.owner) and v.owner.operands:
        v = v.owner.operands[0]
    return v


def _made_after(v: SSAValue, op: Operation) -> bool:
    """Whether ``v`` needs a MAC op (a butterfly, an attention, a matmul) after ``op`` in its block: the kernel
    ``fuse-elementwise`` puts an op reading it in starts after ``op``'s (the elementwise ops between are epilogues
    of those MAC ops' kernels, wherever they stand in the block)."""
    from attnc.passes.fuse_elementwise import MAC_OPS

    todo, seen = [v], set()
    while todo:
        src = todo.pop().owner
        if not isinstance(src, Operation) or isinstance(src, sp.ConstantOp) or src in seen:
            continue  # (a constant is known whenever it is placed)
        seen.add(src)
        if isinstance(src, (*MAC_OPS, sp.ButterflyMatmulOp, sp.FourierOp)):
            if op.is_before_in_block(src):
                return True
        else:
            todo += list(src.operands)
    return False


def _from_dram(v: SSAValue) -> int:
    """1 when ``v`` is a graph input (through data movement only): a load from DRAM; else 0."""
    return int(not isinstance(_through_movement(v).owner, Operation))


def _to_dram(v: SSAValue) -> int:
    """1 when ``v`` reaches the function's results through data movement only: a store to DRAM; else 0."""
    todo, seen = [v], set()
    while todo:
        x = todo.pop()
        for use in x.uses:
            op = use.operation
            if isinstance(op, func.ReturnOp):
                return 1
            if sp.is_data_movement(op) and op not in seen:
                seen.add(op)
                todo += list(op.results)
    return 0


#: ops that wait for whole tensors (no row stream passes through them): a resident layer's chains on either
#: side of one do not run at the same time
BARRIERS = (sp.FourierOp, sp.AttentionOp, sp.MatmulOp)


def butterfly_phases(fn, ops: list[Operation], streaming: bool = False) -> dict[Operation, int]:
    """Per butterfly matmul or Fourier op, how many MAC ops (butterflies, attentions, matmuls) lie on the
    longest path from the graph's inputs to it: with SRAM phases (``attnc.passes.sram_phases``) the ops of one
    count run in one phase (a block's Q/K/V butterflies, its FFN's side-by-side ones), those of different
    counts never at the same time. ``streaming`` (every kernel resident): only :data:`BARRIERS` count, since
    row blocks stream from one butterfly through the next (a block's output projection and FFN run at once)."""
    mac_ops = BARRIERS if streaming else (sp.ButterflyMatmulOp, *BARRIERS)
    depth: dict[SSAValue, int] = {}
    out: dict[Operation, int] = {}
    for op in fn.body.block.ops:
        d = max((depth.get(v, 0) for v in op.operands), default=0)
        if isinstance(op, (sp.ButterflyMatmulOp, sp.FourierOp)):
            out[op] = d
        for r in op.results:
            depth[r] = d + (1 if isinstance(op, mac_ops) else 0)
    return {op: out[op] for op in ops}


def chain_tails(fn, ops: list[Operation], phase: dict[Operation, int], shared: bool) -> dict[Operation, int]:
    """Each op's tail: the kernels its result's row blocks stream through before anything waits for a whole
    tensor -- per butterfly on the longest path of same-phase butterflies it streams into, that one and the
    row kernel before it, plus the row kernel after the last if something computes on it before it is stored
    (a block's output projection: LayerNorm, FFN1, GELU, FFN2, LayerNorm: 5; a lone linear's result goes
    straight to its store: 0). With SRAM phases a chain's result goes to a spill, which waits: 0."""
    if shared:
        return {op: 0 for op in ops}
    mine = set(ops)
    tail: dict[SSAValue, int] = {}
    for op in reversed(list(fn.body.block.ops)):
        for r in op.results:
            best = 0
            for use in r.uses:
                u = use.operation
                if isinstance(u, (func.ReturnOp, *BARRIERS)) or (u in mine and op in mine and phase[u] != phase[op]):
                    continue
                below = max((tail.get(x, 0) for x in u.results), default=0)
                if u in mine:  # the next chain, and the row kernel before it
                    best = max(best, 2 + below)
                elif sp.is_data_movement(u):
                    best = max(best, below)
                else:  # a row kernel (it or a later one counts once)
                    best = max(best, 1, below)
            tail[r] = best
    return {op: tail.get(op.results[0], 0) for op in ops}


def _phase_budgets(fn, ops: list[Operation], slots: list[Slot]) -> list[tuple[list[Operation], _ChainBudget]]:
    """The ops in planning order, grouped by what they share, each group with its budget. Without SRAM
    phases every kernel stays resident: one group, each op's chains a share (by MACs) of the free contexts
    and SRAM. With them (``tile`` set ``attnc.share_sram``) the ops of one phase (:func:`butterfly_phases`)
    share the tiles' SRAM, every phase all of it, while the contexts, held by every kernel for the whole run,
    are split over the phases: phase p of M_p MACs on k_p kernels takes about M_p / k_p, and the phases run
    one after the other, so the sum is least with k_p in proportion to sqrt(M_p)."""
    contexts = sum(s.contexts for s in slots)
    sram = sum(s.sram for s in slots)
    if SHARE_ATTR not in fn.attributes:
        return [(ops, _ChainBudget(sum(_macs(op) for op in ops), contexts, sram))]
    phase = butterfly_phases(fn, ops)
    groups: dict[int, list[Operation]] = {}
    for op in ops:
        groups.setdefault(phase[op], []).append(op)
    weight = {p: math.sqrt(sum(_macs(op) for op in g)) for p, g in groups.items()}
    total = sum(weight.values()) or 1.0
    return [(g, _ChainBudget(sum(_macs(op) for op in g), max(len(g), int(contexts * weight[p] / total)), sram))
            for p, g in sorted(groups.items())]  # fmt: skip


@dataclass(frozen=True)
class _ChainBudget:
    """What the chains share: every kernel stays configured for the whole run, so each op's chains get a
    share of the free contexts and SRAM by its MACs (at least one kernel)."""

    macs: int
    contexts: int
    sram: int


def _plan_op(op: Operation, chains: list[Chain], arch, slots: list[Slot], memory: list[int],
             budget: _ChainBudget) -> list[Plan]:
    """The plans of one op's chains, committed to ``slots`` and ``memory``."""
    axes = 1 if isinstance(op, sp.ButterflyMatmulOp) else len({int(a) for a in op.axes.get_values()})
    if isinstance(op, sp.FourierOp) and (axis_plans := plan_axes(op, arch, slots, memory)) is not None:
        # planned (and committed) together: the axes run one after the other (an axis's FFT needs the
        # previous axis's whole result), so they split every tile's contexts and SRAM instead of each
        # taking its MAC share of the array from what the one before left
        return axis_plans
    cap = max(1, int(budget.contexts * _macs(op) / max(budget.macs, 1)) // axes)
    frac = _macs(op) / max(budget.macs, 1) / axes
    plans = []
    compute = [s.tile for s in slots if s.kind == "compute"]
    for ch in chains:
        plan = plan_chain(ch, arch, slots, max_kernels=cap, share=frac, sram_budget=int(budget.sram * frac),
                          memory=memory)  # fmt: skip
        runs = merge_runs(ch.stages, ch.n, compute[0]) if compute and _weight_source(ch) is not None else []
        if runs:
            # the same chain with stages merged where a compute tile's MAC array takes them wider: the faster
            # plan wins (within the tie margin, the one of fewer kernels)
            try:
                alt = plan_chain(merged_chain(ch, runs), arch, slots, max_kernels=cap, share=frac,
                                 sram_budget=int(budget.sram * frac), memory=memory)  # fmt: skip
            except AttncError:
                alt = None
            if alt is not None and (alt.predicted < plan.predicted * (1 - TIE) or (
                    alt.predicted <= plan.predicted * (1 + TIE) and len(alt.kinds) < len(plan.kinds))):
                alt.runs = runs
                plan = alt
        _commit(plan, slots, busy=True)
        _take_memory(memory, plan)  # its pieces take that much of their memory tiles
        plans.append(plan)
    return plans


class ExpandButterflyPattern(RewritePattern):
    """Rewrites each ``sparse.butterfly_matmul`` and ``sparse.fourier`` that has plans into its stage
    kernels: the matmul's stages (after a bit-reversing gather when its input is bit-reversed), or per axis
    of the Fourier op the interleaved-complex FFT's stages between the layout changes around them (see the
    module docstring), each chain's ``sparse.butterfly_stage`` ops tagged per kernel as its plan groups and
    splits them. Ops without plans are left as they are."""

    def __init__(self, plans: dict[Operation, tuple[str, list[Plan]]]):
        self.plans = plans

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.ButterflyMatmulOp | sp.FourierOp, rewriter: PatternRewriter) -> None:
        if op not in self.plans:
            return
        name, plans = self.plans[op]
        b = KernelBuilder(rewriter, op)
        chain_plans = iter(plans)

        def build(ch: Chain) -> SSAValue:
            return build_chain(b, ch, next(chain_plans))

        if isinstance(op, sp.ButterflyMatmulOp):
            out = build(matmul_chain(b, op, name))
        else:
            out = fourier_steps(b, op, name, build)
        b.replace_anchor(out)


#: compute contexts the attention schedules leave for each stage chain (``tile`` reserves them)
CHAIN_CONTEXTS = 4


def butterfly_contexts(op: Operation) -> int:
    """Compute contexts to keep free for a butterfly matmul's or a Fourier op's stage pipelines when
    the attentions are scheduled first: a few per chain (up to its stage count), so a block's
    projections and FFN still have tiles and SRAM once the attention members have claimed theirs."""
    if isinstance(op, sp.ButterflyMatmulOp):
        return min(CHAIN_CONTEXTS, len(op.stages()))
    shp = sp.shape_of(op.results[0])
    return sum(min(CHAIN_CONTEXTS, len(bf.prime_radices(shp[int(a) % len(shp)])))
               for a in set(int(a) for a in op.axes.get_values()))  # fmt: skip


def _nbytes(v: SSAValue) -> int:
    return int(np.prod(sp.shape_of(v), dtype=np.int64)) * np_dtype(sp.elt_of(v)).itemsize


def _macs(op: Operation) -> int:
    """Multiply-adds of a butterfly matmul or a Fourier op once expanded (the planner's shares)."""
    shp = sp.shape_of(op.results[0])
    total = int(np.prod(shp, dtype=np.int64))
    if isinstance(op, sp.ButterflyMatmulOp):
        return total * sum(st.width for st in op.stages())
    r = len(shp)
    axes = {int(a) % r for a in op.axes.get_values()}
    return sum(2 * total * sum(st.width for st in bf.fft_stages(shp[a])[0]) for a in axes)


def expand_plain(fn) -> None:
    """Expand without planning (one kernel per stage, compute tiles, one row block): the
    interpreter's check of the expansion, and the form a module takes without an architecture."""
    ops = [o for o in fn.body.block.ops if isinstance(o, (sp.ButterflyMatmulOp, sp.FourierOp))]
    plans = {op: ("bfly", [_plain_plan(len(ch.stages)) for ch in chain_probes(op, "bfly")]) for op in ops}
    PatternRewriteWalker(ExpandButterflyPattern(plans), apply_recursively=False).rewrite_region(fn.body)


def _plain_plan(k: int) -> Plan:
    """One kernel per stage of a ``k``-stage chain, on compute tiles, one row block."""
    return Plan(1, [[i] for i in range(k)], ["compute"] * k, [0] * k, [0] * k, [0] * k, [0] * k, 1, 1, 0, "")
