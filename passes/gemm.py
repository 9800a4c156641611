"""The GEMM dataflow of ``tile``: every large GEMM by a weight across the compute tiles of its phase.

A GEMM ``y[M, N] = a[M, K] @ w[K, N]`` becomes a grid of ``R x C`` parts, output-stationary: part (i, j)
computes the row block i and column block j of ``y``. It walks its block in sub-blocks of ``mb x nb`` outputs
(an f32 accumulator each), and each sub-block walks the reduction dimension in chunks of ``kc``: an A chunk
``[mb, kc]`` and a B chunk ``[kc, nb]`` double-buffered next to the accumulator, all within the part's share
of its tile's SRAM. The shared operands travel once per row or column of parts: the weight's column block j
is its own constant (its own DMA load), read by part (0, j) and passed down the column, each part forwarding
it through a copy that is one of its outputs (the simulator forwards such copies cut-through); the row strip
of ``a`` is read by part (i, 0) and passed along the row the same way. A part that walks ``mt`` row
sub-blocks needs its weight block ``mt`` times (the load streams it that often, in k-chunk order); one that
walks ``nt`` column sub-blocks needs its row strip ``nt`` times, which only a DMA load can re-send (``a``
a graph input read by nothing else), so with ``a`` made on chip a part takes all its columns at once.

:func:`grid_search` picks ``R, C, mb, nb, kc`` by a first-order cost model (MAC-array cycles of a part, DRAM
bytes, the bytes a chain link carries), like the attention search; :func:`plan_gemms` decides, for the whole
module, how many parts each GEMM gets: GEMMs that cannot run at the same time (one reads what the other
writes, FFN2 after FFN1) each take every tile (a tile runs several kernels through its contexts), GEMMs of
one phase (Q, K and V) share them. :class:`GemmGridPattern` applies the decisions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from attnc.cost.work import DMA_BURST
from attnc.dialects import sparse as sp
from attnc.dialects.dataflow import RESERVE, TAG, WEIGHT_PASSES, i64_array
from attnc.dialects.values import from_numpy, np_dtype, to_numpy
from attnc.passes.kernel_builder import KernelBuilder
from xdsl.dialects import func
from xdsl.dialects.builtin import IntegerAttr, NoneAttr
from xdsl.ir import BlockArgument, Operation
from xdsl.pattern_rewriter import PatternRewriter, RewritePattern, op_type_rewrite_pattern

#: a part's matmul carries its sub-block and k-chunk ([mb, nb, kc]) to the cost rule (attnc.cost.work)
GEMM_BLOCK = "dataflow.gemm_block"
#: how many times a part reads its row strip (its column sub-blocks), when a DMA load re-sends it
A_PASSES = "dataflow.a_passes"
#: GEMMs with fewer MACs than this stay one kernel (a grid costs a weight copy per part)
SPLIT_MIN_MACS = 1 << 22
#: grids predicted within this fraction of the fastest count as equally fast
TIE = 0.03
#: the lean grid of a (parts, budget) option: the least DRAM traffic among the fastest grid's shape predicted
#: within this fraction of its time (``grid_options``; the module's tie margin decides whether it is taken)
LEAN = 0.10


@dataclass(frozen=True)
class GemmGrid:
    """A GEMM as ``rows x cols`` parts, each walking ``mb x nb`` sub-blocks and ``kc``-chunks of K, claiming
    ``reserve`` bytes of SRAM; the figures the search predicted for it."""

    name: str
    rows: int
    cols: int
    mb: int
    nb: int
    kc: int
    reserve: int = 0
    a_passes: int = 1  # a part's reads of its row strip (> 1 only with a re-sent DMA load)
    w_passes: int = 1  # a part's reads of its weight block
    cycles: int = 0
    dram_bytes: int = 0
    buffer: int = 0
    resident: bool = False  # the part holds its weight block whole (read once) and streams its row strip
    #: every part reads its row strip from DRAM (a spill between SRAM phases) instead of from the part to its
    #: left: a strip that is an attention's heads spilled and transposed back could not be passed on as it
    #: arrives (a strip of spilled rows can: the simulator forwards a concatenation of inputs cut-through)
    direct: bool = False

    def text(self) -> str:
        held = ", weight block held" if self.resident else ""
        return f"{self.rows}x{self.cols} parts, blocks {self.mb}x{self.nb}, k-chunk {self.kc}{held}"


def part_buffer(mb: int, nb: int, kc: int, eb: int) -> int:
    """SRAM of a part: the f32 accumulator of a sub-block and the double-buffered A and B chunks."""
    return 4 * mb * nb + 2 * eb * kc * (mb + nb)


def _steps(n: int, unit: int) -> list[int]:
    """Block sizes to try along an extent of ``n``: multiples of the MAC array by powers of two, and ``n``."""
    out, x = [], max(1, unit)
    while x < n:
        out.append(x)
        x *= 2
    return out + [n]


def grid_search(name: str, m: int, k: int, n: int, eb: int, arch, parts: int, budget: int, a_dram: bool,
                col_unit: int = 1, col_width: int = 0) -> GemmGrid | None:
    """The cheapest grid of at most ``parts`` parts whose buffers fit ``budget`` bytes, or None (see
    :func:`grid_options`)."""
    return grid_options(name, m, k, n, eb, arch, parts, budget, a_dram, col_unit, col_width)[0]


def grid_options(name: str, m: int, k: int, n: int, eb: int, arch, parts: int, budget: int, a_dram: bool,
                 col_unit: int = 1, col_width: int = 0, shape: tuple[int, int] | None = None
                 ) -> tuple[GemmGrid | None, GemmGrid | None]:
    """The cheapest grid of at most ``parts`` parts whose buffers fit ``budget`` bytes and the lean grid (below),
    or (None, None).

    A part of ``Mi x Nj`` outputs in ``mt x nt`` sub-blocks takes ``mt * nt * ceil(mb/rows) * ceil(nb/cols)
    * K`` MAC-array cycles; DRAM carries the weight ``mt`` times, ``a`` ``nt`` times when a load re-sends it
    (else once, or not at all when it is made on chip) and ``y`` once; the links of a row chain carry the
    row strip ``nt`` times, those of a column chain the weight block ``mt`` times. The prediction is the
    largest of the three times. Column blocks are multiples of ``col_unit`` (whole heads of a projection) and,
    with ``col_width`` (the width of each GEMM merged into this one), never straddle two merged GEMMs, so that
    an epilogue of one of them (its bias add) joins the parts that make it.

    Also returns the *lean* grid: of the cheapest grid's shape (rows x cols), the one moving the fewest DRAM
    bytes predicted within ``LEAN`` of its time (often the cheapest itself). A part walking fewer, taller
    row sub-blocks reads its weight block fewer times, but its results leave later, so a GEMM alone predicts
    it slower (the drain after its last step); in a layer whose phases share DRAM the bytes it saves can be
    worth more (BERT-base on cloud at seq 512: FFN2's 4x8 parts read their 4.7 MB of weights twice in 64-row
    sub-blocks, once in 128-row ones). :func:`plan_gemms` weighs the two against the module's time. With
    ``shape``, the lean grid is of that shape instead (None if none fits)."""
    tile = max(arch.tiles_of("compute"), key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    mr, mc = max(tile.mac_rows, 1), max(tile.mac_cols, 1)
    link = max(arch.noc.link_bytes_per_cycle, 1)
    dram = max(arch.dram.bytes_per_cycle, 1e-9)
    best: GemmGrid | None = None
    seen: list[GemmGrid] = []
    # powers of two, and the divisors of the MAC-array blocks along each side (no part wastes a column)
    for r in sorted(set(_steps(min(parts, max(1, m // mr)), 1)) | _divisors(-(-m // mr), parts)):
        cols = set(_steps(max(1, parts // r), 1)) | _divisors(-(-n // mc), parts // r)
        if col_unit > 1:  # whole units per part: the divisors of the unit count
            units = n // col_unit
            cols = {c for c in range(1, units + 1) if units % c == 0 and r * c <= parts}
        for c in sorted(cols):
            if r * c > parts or (n // c) < 1 or (n // c) % col_unit or n % c and col_unit > 1:
                continue
            if col_width and col_width % (n // c) and (n // c) % col_width:
                continue
            mi, nj = -(-m // r), -(-n // c)
            for mb in _steps(mi, mr):
                for resident in (False, True):
                    for nb in [nj] if resident or not a_dram else _steps(nj, mc):
                        g = _predict(name, (m, k, n, r, c, mb, nb), eb, resident, a_dram, budget, (mr, mc), link,
                                     dram)  # fmt: skip
                        if g is not None:
                            seen.append(g)
                        if g is not None and (best is None or _better(g, best)):
                            best = g
    if best is None:
        return None, None
    return best, _lean(seen, shape or (best.rows, best.cols))


def _lean(seen: list[GemmGrid], shape: tuple[int, int]) -> GemmGrid | None:
    """Of the grids of ``shape`` (rows, cols), the one moving the fewest DRAM bytes predicted within ``LEAN`` of
    the fastest of them, or None."""
    same = [g for g in seen if (g.rows, g.cols) == shape]
    if not same:
        return None
    fast = min(g.cycles for g in same)
    return min((g for g in same if g.cycles <= fast * (1 + LEAN)), key=lambda g: (g.dram_bytes, g.cycles))


def _divisors(n: int, most: int) -> set[int]:
    return {d for d in range(1, min(n, most) + 1) if n % d == 0}


def _predict(name: str, dims: tuple[int, ...], eb: int, resident: bool, a_dram: bool, budget: int,
             mac: tuple[int, int], link: int, dram: float) -> GemmGrid | None:
    """One candidate's figures, or None when its buffers do not fit ``budget``. A part either streams its
    weight block in k-chunks with each sub-block (``mt`` times in all), or, ``resident``, holds it whole
    (read once, needed before its first step) and streams only its row strip."""
    m, k, n, r, c, mb, nb = dims
    mr, mc = mac
    mi, nj = -(-m // r), -(-n // c)
    acc = 4 * mb * nb
    held = k * nb * eb if resident else 0
    kc = min(k, (budget - acc - held) // max(2 * eb * (mb if resident else mb + nb), 1))
    if kc < min(k, mr):
        return None
    if resident:
        # the held block arrives chunk by chunk and the first step waits for its first chunk (and every other
        # column's, sharing DRAM with the row strips): chunks of a burst or a MAC array's depth, not the most the
        # buffers allow (cloud 768x768 at seq 512: chunks of 288 started the parts at cycle 2,697, of 32 at 438)
        kc = min(kc, max(mr, -(-DMA_BURST // (nb * eb))))
    mt, nt = -(-mi // mb), -(-nj // nb)
    w_passes = 1 if resident else mt
    # the last row and column sub-blocks take what is left of the part's block: MAC-array passes by their own size
    lm, ln = mi - (mt - 1) * mb, nj - (nt - 1) * nb
    passes = ((mt - 1) * -(-mb // mr) + -(-lm // mr)) * ((nt - 1) * -(-nb // mc) + -(-ln // mc))
    steps = passes * k + mr + mc
    y_bytes = m * n * eb
    moved = k * n * eb * w_passes + m * k * eb * (nt if a_dram else 1) + y_bytes
    chain = max(mi * k * eb * nt if c > 1 else 0, k * nj * eb * w_passes if r > 1 else 0) / link
    # the result leaves through one store per grid row (each fed over a link), all sharing DRAM. What every
    # part's last sub-block finishes drains after the last step at that rate, behind what is left of the
    # sub-block before it: while the parts compute, the stores get about two links' worth of DRAM next to the
    # loads (cloud, 768x3072 in 4x16 parts at seq 512 and 2048: column sub-blocks of 128 then 64 drained 1.53x
    # the last one's bytes at DRAM's rate, equal ones 1.0x; one sub-block of 128x192, 3 MB, 1.05x)
    rate = min(dram, r * link)
    store = y_bytes / rate
    last = -(-lm // mr) * -(-ln // mc) * k
    before = (lm * nb if nt > 1 else mb * ln) if mt * nt > 1 else 0
    left = max(0.0, r * c * before * eb - min(rate, 2 * link) * last)
    tail = r * c * lm * ln * eb / rate
    if resident:
        # held weight blocks stream in k-chunks during the first row block, which computes as they come: it ends
        # no sooner than every block (all sharing DRAM, each down its column) and its share of the row strips
        # have arrived; the later row blocks reuse what is held and stream their row strips only
        w_bytes = k * n * eb
        a_bytes = moved - w_bytes - y_bytes
        head = (w_bytes + a_bytes / mt) / -(-k // kc) / dram
        first = max(head + steps / mt, (w_bytes + a_bytes / mt) / dram, k * nj * eb / link)
        later = (mt - 1) / mt
        rest = max(steps * later, (a_bytes + y_bytes) * later / dram, chain * later, store * later)
        cycles = int(first + rest + tail)
    else:
        # the first step waits for the first chunks of every column's weight block and every row's strip, which
        # share DRAM
        head = kc * eb * (c * nb + (r * mb if a_dram else 0)) / dram
        cycles = int(max(head + steps + tail + left / rate, max(moved / dram, chain, store) + tail))
    buf = acc + held + 2 * eb * kc * (mb if resident else mb + nb)
    return GemmGrid(name, r, c, mb, nb, kc, 0, nt if a_dram else 1, w_passes, cycles, moved, buf, resident)


def _better(g: GemmGrid, best: GemmGrid) -> bool:
    """Faster beyond the tie margin; within it, less DRAM traffic, then fewer parts."""
    if g.cycles < best.cycles * (1 - TIE):
        return True
    if g.cycles > best.cycles * (1 + TIE):
        return False
    return (g.dram_bytes, g.rows * g.cols, g.cycles) < (best.dram_bytes, best.rows * best.cols, best.cycles)


@dataclass
class GemmPlans:
    """The GEMM planning's decisions: each GEMM's grid, and the report lines."""

    grids: dict[sp.MatmulOp, GemmGrid] = field(default_factory=dict)
    reports: list[str] = field(default_factory=list)


def macs(op: sp.MatmulOp) -> int:
    """The MACs of a GEMM: its result's elements times the reduction."""
    return int(np.prod(sp.shape_of(op.result), dtype=np.int64)) * sp.shape_of(op.lhs)[-1]


def splittable(op: Operation) -> bool:
    """A large GEMM by a plain 2-d weight, not yet part of a kernel."""
    if not isinstance(op, sp.MatmulOp) or TAG in op.attributes or not isinstance(op.rhs.owner, sp.ConstantOp):
        return False
    a, w = sp.shape_of(op.lhs), sp.shape_of(op.rhs)
    if len(a) < 2 or len(w) != 2 or not isinstance(op.rhs.type.encoding, NoneAttr):
        return False
    return macs(op) >= SPLIT_MIN_MACS


def merge_shared_lhs(fn: func.FuncOp) -> dict[sp.MatmulOp, int]:
    """GEMMs by plain 2-d weights that read the same value (the Q, K and V projections) become one GEMM by
    their weights side by side, each result a column slice of it: one grid over the tiles instead of three
    that would share them, and the row strip read once. Returns each merged GEMM's column unit: the
    greatest common divisor of the merged widths, so that no part straddles two of them (whole heads, when
    they feed an attention)."""
    groups: dict = {}
    for op in fn.body.block.ops:
        if splittable(op):
            groups.setdefault(op.lhs, []).append(op)
    out: dict[sp.MatmulOp, int] = {}
    for lhs, ops in groups.items():
        k = sp.shape_of(ops[0].rhs)[0]
        ops = [o for o in ops if sp.shape_of(o.rhs)[0] == k and sp.elt_of(o.rhs) == sp.elt_of(ops[0].rhs)]
        if len(ops) < 2:
            continue
        weights = [to_numpy(o.rhs.owner.value) for o in ops]
        merged = sp.ConstantOp(from_numpy(np.ascontiguousarray(np.concatenate(weights, axis=1)), sp.elt_of(ops[0].rhs)))
        mm = sp.MatmulOp(lhs, merged.result)
        first = ops[0]
        first.parent_block().insert_ops_before([merged, mm], first)
        shape = sp.shape_of(mm.result)
        lo = 0
        for o, w in zip(ops, weights):
            starts, ends = [0] * len(shape), list(shape)
            starts[-1], ends[-1] = lo, lo + w.shape[1]
            lo += w.shape[1]
            piece = sp.SliceOp(mm.result, starts, ends, [1] * len(shape))
            first.parent_block().insert_op_before(piece, first)
            o.result.replace_all_uses_with(piece.result)
        for o in ops:
            rhs = o.rhs.owner
            o.detach()
            o.erase()
            if isinstance(rhs, sp.ConstantOp) and not rhs.result.uses:
                rhs.detach()
                rhs.erase()
        out[mm] = int(np.gcd.reduce([w.shape[1] for w in weights]))
        _merge_biases(mm)
    return out


def _bias(piece: sp.SliceOp) -> sp.AddOp | None:
    """The add of a constant vector along the last axis that is the only reader of a merged GEMM's slice."""
    uses = list(piece.result.uses)
    if len(uses) != 1 or not isinstance(add := uses[0].operation, sp.AddOp):
        return None
    other = add.operands[1 - uses[0].index]
    width = sp.shape_of(piece.result)[-1]
    if not isinstance(other.owner, sp.ConstantOp) or list(sp.shape_of(other)) != [width] or add.result.type != piece.result.type:
        return None
    return add


def _merge_biases(mm: sp.MatmulOp) -> None:
    """Q, K and V each add their bias after the merged GEMM's slice: one add of the biases side by side on the
    merged result instead, before the slices, so that it runs as the grid parts' epilogue (three adds on the
    slices would straddle the parts, or each take a kernel of their own)."""
    pieces = [u.operation for u in mm.result.uses]
    adds = [_bias(p) if isinstance(p, sp.SliceOp) else None for p in pieces]
    if not adds or any(a is None for a in adds):
        return
    order = sorted(zip(pieces, adds), key=lambda pa: list(pa[0].starts.get_values())[-1])
    lo = 0
    for piece, _ in order:  # the slices tile the columns, in order
        if list(piece.starts.get_values())[-1] != lo:
            return
        lo = list(piece.ends.get_values())[-1]
    if lo != sp.shape_of(mm.result)[-1]:
        return
    consts = [next(o for o in a.operands if isinstance(o.owner, sp.ConstantOp)) for _, a in order]
    values = np.concatenate([to_numpy(c.owner.value) for c in consts])
    bias = sp.ConstantOp(from_numpy(np.ascontiguousarray(values), sp.elt_of(consts[0])))
    add = sp.AddOp(mm.result, bias.result)
    block = mm.parent_block()
    block.insert_ops_after([bias, add], mm)
    for piece, old in order:
        piece.operands[0] = add.result
        old.result.replace_all_uses_with(piece.result)
        old.detach()
        old.erase()
    for c in consts:
        if not c.uses:
            c.owner.detach()
            c.owner.erase()


def unmerge(mm: sp.MatmulOp) -> None:
    """Undo :func:`merge_shared_lhs` for one merged GEMM that got no grid: one GEMM per column slice again
    (whole GEMMs run on a tile each; merged, they would run one after the other on one)."""
    weight = to_numpy(mm.rhs.owner.value)
    elt = sp.elt_of(mm.rhs)
    block = mm.parent_block()
    # biases merged by _merge_biases: each part adds its own again
    merged_add = next((u.operation for u in mm.result.uses if isinstance(u.operation, sp.AddOp)), None)
    bias = None
    if merged_add is not None:
        bias_op = next(o.owner for o in merged_add.operands if isinstance(o.owner, sp.ConstantOp))
        bias = to_numpy(bias_op.value)
    for use in list((merged_add or mm).results[0].uses):
        piece = use.operation
        lo, hi = list(piece.starts.get_values())[-1], list(piece.ends.get_values())[-1]
        const = sp.ConstantOp(from_numpy(np.ascontiguousarray(weight[:, lo:hi]), elt))
        part = sp.MatmulOp(mm.lhs, const.result)
        new = [const, part]
        if bias is not None:
            b = sp.ConstantOp(from_numpy(np.ascontiguousarray(bias[lo:hi]), sp.elt_of(merged_add.results[0])))
            new += [b, sp.AddOp(part.result, b.result)]
        block.insert_ops_before(new, piece)
        piece.result.replace_all_uses_with(new[-1].results[0])
        piece.detach()
        piece.erase()
    if merged_add is not None:
        merged_add.detach()
        merged_add.erase()
        bias_op.detach()
        bias_op.erase()
    rhs = mm.rhs.owner
    mm.detach()
    mm.erase()
    rhs.detach()
    rhs.erase()


def phases(fn: func.FuncOp, gemms: list[sp.MatmulOp]) -> dict[sp.MatmulOp, int]:
    """Each GEMM's phase: 0 for those reading nothing another GEMM wrote, else one more than the latest
    GEMM it depends on (through any ops). GEMMs of one phase can run at once; others cannot."""
    level: dict = {}
    out: dict[sp.MatmulOp, int] = {}
    chosen = set(gemms)
    for op in fn.body.block.ops:
        below = max((level.get(v, -1) for v in op.operands), default=-1)
        if op in chosen:
            out[op] = below + 1
            below += 1
        for r in op.results:
            level[r] = below
    return out


def _a_from_dram(op: sp.MatmulOp) -> bool:
    """Whether the GEMM's left operand is a graph input that nothing else reads (through data movement),
    so that its DMA load may re-send it once per column sub-block."""
    v = op.lhs
    while not isinstance(v, BlockArgument):
        owner = v.owner
        if not isinstance(owner, sp.ReshapeOp) or len(list(v.uses)) != 1:
            return False
        v = owner.operands[0]
    return len(list(v.uses)) == 1 and len(list(op.lhs.uses)) == 1


def plan_gemms(fn: func.FuncOp, arch, parts: int = -1, used_sram: int = 0, reserved_compute: int = 0,
               gemms: list[sp.MatmulOp] | None = None, heads: dict | None = None, members: int = 0,
               dma_free: int | None = None, part_cap: int | None = None, shared: bool = False,
               widths: dict | None = None, direct: set | frozenset = frozenset()) -> GemmPlans:
    """Choose the grid of each of ``gemms`` (default: every :func:`splittable` one). ``reserved_compute``
    counts the compute contexts the other kernels take (a context share of SRAM each), ``members`` the
    attention members, ``used_sram`` the SRAM those claim, ``dma_free`` the DMA contexts left to the
    GEMMs' weight loads (default: all); ``heads`` maps a GEMM that feeds or reads an attention to its head width
    (its column blocks hold whole heads); ``part_cap`` the most SRAM a part may claim (what attention members
    on every tile leave). ``shared``: phases share SRAM (each phase has the whole ``room``) and every GEMM's
    left operand comes from DRAM (a load or a spill between phases), so a part may re-read its row strip.
    ``widths`` maps a merged GEMM to the width of each GEMM merged into it (see :func:`grid_search`); the
    parts of the GEMMs in ``direct`` each read their row strip from DRAM (``GemmGrid.direct``)."""
    widths = widths or {}
    heads = heads or {}
    gemms = [op for op in fn.body.block.ops if splittable(op)] if gemms is None else gemms
    if not gemms or parts == 1:
        return GemmPlans()
    computes = arch.tiles_of("compute")
    tile = max(computes, key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    tiles = len(computes)
    level = phases(fn, gemms)
    free = max(len(gemms), sum(t.contexts for t in computes) - reserved_compute - members)
    if dma_free is None:
        dma_free = sum(t.contexts for t in arch.tiles_of("dma"))
    ctx_share = tile.sram_bytes // max(tile.contexts, 1)
    # an eighth of the SRAM left as headroom: the placer packs whole kernels into tiles (bins), not bytes
    room = sum(t.sram_bytes for t in computes) * 7 // 8 - used_sram - max(reserved_compute, 0) * ctx_share
    options = {g: [(grid, budget) for grid, budget in
                   _options(g, i, arch, tiles if parts < 1 else parts, ctx_share, tile, heads.get(g, 1), shared,
                            widths.get(g, 0))
                   if part_cap is None or budget <= part_cap]
               for i, g in enumerate(gemms)}  # fmt: skip
    chosen = _allocate(options, level, tiles, free, room, tile.sram_bytes, dma_free, shared)
    out = GemmPlans()
    for i, g in enumerate(gemms):
        if g not in chosen:
            continue
        grid, budget = chosen[g]
        if grid.rows * grid.cols == 1:
            continue
        a, w = sp.shape_of(g.lhs), sp.shape_of(g.rhs)
        # a part claims its budget of SRAM, so that the placer does not stack more parts on a tile than fit
        grid = GemmGrid(**{**grid.__dict__, "reserve": budget, "direct": g in direct})
        out.grids[g] = grid
        out.reports.append(
            f"gemm{i}: {'x'.join(map(str, a))} @ {'x'.join(map(str, w))} in {grid.text()}; predicted "
            f"{grid.cycles} cycles, {grid.dram_bytes} DRAM bytes, {grid.buffer} B buffer/part"
        )
    return out


def _options(g: sp.MatmulOp, i: int, arch, most: int, ctx_share: int, tile, col_unit: int,
             a_dram: bool = False, col_width: int = 0) -> list[tuple[GemmGrid, int]]:
    """A GEMM's candidate (grid, SRAM budget per part): at most 1, 2, 4, ... ``most`` parts, each with one to
    all of its tile's context shares of SRAM; per (parts, budget) the cheapest grid and, when it moves fewer
    DRAM bytes, the lean one (:func:`grid_options`), and the lean one of the shape the smallest budget took. Of one footprint ``_allocate`` first takes the faster (the
    cheapest); its DRAM step may then trade it for the lean one within the module's tie margin."""
    a, w = sp.shape_of(g.lhs), sp.shape_of(g.rhs)
    m = int(np.prod(a[:-1], dtype=np.int64))
    eb = np_dtype(sp.elt_of(g.lhs)).itemsize
    out = []
    for parts in _steps(most, 1):
        first = None
        for j in range(1, max(tile.contexts, 1) + 1):
            budget = ctx_share * j
            args = (f"gemm{i}", m, a[-1], w[1], eb, arch, parts, budget, a_dram or _a_from_dram(g), col_unit,
                    col_width)  # fmt: skip
            grid, lean = grid_options(*args)
            if grid is not None:
                out.append((grid, budget))
                first = first or (grid.rows, grid.cols)
            if lean is not None and lean.dram_bytes < grid.dram_bytes:
                out.append((lean, budget))
            if grid is not None and first != (grid.rows, grid.cols):
                # the lean grid of the shape the smallest budget took, too: the DRAM step only trades a grid for
                # larger blocks of its own shape (cloud 2048x3072 @ 3072x768: 8x8 parts of 64x96 blocks at 64 KiB
                # read the weights 4 times, 79,877 cycles; at 128 KiB the fastest was 32x2, and 8x8 of 128x96,
                # read twice, 78,280, was not on offer)
                _, same = grid_options(*args, shape=first)
                if same is not None and same not in (grid, lean):
                    out.append((same, budget))
    return out


def _allocate(options: dict, level: dict, tiles: int, free: int, room: int, sram: int, dma_free: int,
              shared: bool = False) -> dict:
    """Each GEMM's option, greedily: from the smallest SRAM footprint (parts x budget) each, take the upgrade
    that saves the most predicted cycles per byte while the parts fit the free contexts and the footprints
    the SRAM ``room``. GEMMs of one phase with the same shapes (Q, K and V) move together. The time predicted
    is the sum over phases of the phase's time: its slowest GEMM, or its GEMMs' tile-cycles spread over the
    tiles, if more (GEMMs of a phase share tiles through contexts). ``shared``: the footprints of each phase
    (not of all) fit the room, and parts of different phases may share a tile."""
    classes: dict[tuple, list] = {}
    for g, opts in options.items():
        if opts:
            key = (level[g], tuple(sp.shape_of(g.lhs)), tuple(sp.shape_of(g.rhs)), len(opts))
            classes.setdefault(key, []).append(g)
    keys = list(classes)

    def foot(o) -> int:
        return o[0].rows * o[0].cols * o[1]

    def expand(pick: dict) -> dict:
        return {g: options[g][pick[key]] for key in keys for g in classes[key]}

    def total(ch: dict) -> float:
        by: dict[int, list] = {}
        for g, (grid, _) in ch.items():
            by.setdefault(level[g], []).append(grid)
        return sum(max(max(x.cycles for x in gs), sum(x.cycles * x.rows * x.cols for x in gs) / tiles)
                   for gs in by.values())  # fmt: skip

    def fits(ch: dict) -> bool:
        # parts over half a tile each need a tile of their own (sharing SRAM: within their phase)
        by = [[o for g, o in ch.items() if level[g] == lv] for lv in set(level[g] for g in ch)] if shared else [list(ch.values())]
        alone = max((sum(o[0].rows * o[0].cols for o in os if 2 * o[1] > sram) for os in by), default=0)
        # a weight block per column is a DMA load of its own (a GEMM left whole keeps one)
        loads = sum(o[0].cols for o in ch.values()) + len(options) - len(ch)
        return (sum(o[0].rows * o[0].cols for o in ch.values()) <= free and alone <= tiles
                and max((sum(foot(o) for o in os) for os in by), default=0) <= room and loads <= dma_free)  # fmt: skip

    def used(ch: dict) -> int:
        return sum(foot(o) for o in ch.values())

    def dram(ch: dict) -> int:
        return sum(o[0].dram_bytes for o in ch.values())

    pick = {key: min(range(len(options[classes[key][0]])), key=lambda j, k=key: (foot(options[classes[k][0]][j]),
                                                                                  options[classes[k][0]][j][0].cycles))
            for key in keys}  # fmt: skip
    chosen = expand(pick)
    while not fits(chosen) and keys:
        # the GEMMs whose smallest grid does not fit with the rest's stay whole (one kernel, as before)
        drop = max(keys, key=lambda k: sum(foot(options[g][pick[k]]) for g in classes[k]))
        keys.remove(drop)
        del pick[drop]
        chosen = expand(pick)
    while True:
        now, best = total(chosen), None
        for key in keys:
            for j in range(len(options[classes[key][0]])):
                if j == pick[key]:
                    continue
                trial = expand({**pick, key: j})
                gain = now - total(trial)
                if gain <= 0 or not fits(trial):
                    continue
                ratio = gain / max(used(trial) - used(chosen), 1)
                if best is None or ratio > best[0]:
                    best = (ratio, key, j)
        if best is None:
            break
        pick[best[1]] = best[2]
        chosen = expand(pick)
    # then, within the tie margin of that time, the upgrades that cut the most DRAM traffic per byte of SRAM: a
    # grid predicted compute-bound still waits on DRAM that its loads share with each other (fairly between
    # streams, not by need: on edge a row strip re-read six times got a ninth of DRAM and its parts stalled).
    # Only larger blocks for the same parts: a new grid shape there is a new layout the model has not weighed
    # against the rest (on cloud at seq 2048 it made the layer's FFN1 one row of 32 parts)
    # Nor, with phases sharing SRAM, larger parts that no longer fit on a tile next to the parts of the phase
    # before or after, with the eighth of headroom the room keeps: a phase that streams into the next overlaps it
    # only if their parts share tiles (BERT-base on cloud at seq 512: FFN1's 4x8 parts of 64 KiB next to FFN2's
    # of 128 KiB, 107,517 cycles; FFN1's in 192 KiB, predicted within the margin for 3.1 MB less DRAM, ran
    # before FFN2 instead, 183,322; in 128 KiB, 219,162)
    limit = total(chosen) * (1 + TIE)

    def apart(ch: dict) -> int:
        most: dict[int, int] = {}
        count: dict[int, int] = {}
        for g, (grid, budget) in ch.items():
            most[level[g]] = max(most.get(level[g], 0), budget)
            count[level[g]] = count.get(level[g], 0) + grid.rows * grid.cols
        # only phases whose parts together fit the tiles could run at once (on edge, 16 parts a phase on 16 tiles
        # of 16 KiB: each phase fills the array, and 12 KiB parts read 12.6 MB less than 4 KiB ones)
        return sum(1 for lv in most if lv + 1 in most and most[lv] + most[lv + 1] > sram * 7 // 8
                   and count[lv] + count[lv + 1] <= tiles) if shared else 0  # fmt: skip

    while True:
        best = None
        for key in keys:
            now = options[classes[key][0]][pick[key]][0]
            for j in range(len(options[classes[key][0]])):
                trial = expand({**pick, key: j})
                saved = dram(chosen) - dram(trial)
                grid = options[classes[key][0]][j][0]
                if (j == pick[key] or saved <= 0 or total(trial) > limit or not fits(trial)
                        or (grid.rows, grid.cols) != (now.rows, now.cols) or apart(trial) > apart(chosen)):  # fmt: skip
                    continue
                ratio = saved / max(used(trial) - used(chosen), 1)
                if best is None or ratio > best[0]:
                    best = (ratio, key, j)
        if best is None:
            return chosen
        pick[best[1]] = best[2]
        chosen = expand(pick)


def _split(n: int, parts: int, i: int, unit: int = 1) -> tuple[int, int]:
    """The i-th of ``parts`` contiguous ranges of range(n), in whole ``unit``s, balanced."""
    units = -(-n // unit)
    lo, hi = i * units // parts * unit, (i + 1) * units // parts * unit
    return min(lo, n), min(hi, n)


class GemmGridPattern(RewritePattern):
    """Rewrites each ``sparse.matmul`` that :func:`plan_gemms` chose into its grid of parts: the lhs
    flattened to rows and sliced into row strips, the weight cut into column blocks (a constant each), one
    matmul kernel per part (its block and k-chunk on the op), the strip passed along its row and the block
    down its column through copies, and the parts concatenated and reshaped back."""

    def __init__(self, grids: dict[sp.MatmulOp, GemmGrid]):
        self.grids = grids

    @op_type_rewrite_pattern
    def match_and_rewrite(self, op: sp.MatmulOp, rewriter: PatternRewriter) -> None:
        if op not in self.grids:
            return
        g = self.grids[op]
        b = KernelBuilder(rewriter, op)
        a = sp.shape_of(op.lhs)
        k, n = sp.shape_of(op.rhs)
        rows = int(np.prod(a[:-1], dtype=np.int64))
        flat = op.lhs if len(a) == 2 else b.add(sp.ReshapeOp(op.lhs, [rows, k]))
        weight = to_numpy(op.rhs.owner.value)
        elt = sp.elt_of(op.rhs)
        cols = [_split(n, g.cols, j) for j in range(g.cols)]
        down = []
        for c0, c1 in cols:
            const = sp.ConstantOp(from_numpy(np.ascontiguousarray(weight[:, c0:c1]), elt))
            if g.w_passes > 1:
                const.attributes[WEIGHT_PASSES] = IntegerAttr(g.w_passes, 64)
            down.append(b.add(const))
        strips = []
        for i in range(g.rows):
            r0, r1 = _split(rows, g.rows, i)
            strip = b.add(sp.SliceOp(flat, [r0, 0], [r1, k], [1, 1]))
            pieces = []
            for j in range(g.cols):
                tag = f"{g.name}_r{i}c{j}"
                mm = sp.MatmulOp(strip, down[j])
                mm.attributes[GEMM_BLOCK] = _i64s([min(g.mb, r1 - r0), min(g.nb, cols[j][1] - cols[j][0]), g.kc,
                                                   int(g.resident)])  # fmt: skip
                if g.reserve:
                    mm.attributes[RESERVE] = IntegerAttr(g.reserve, 64)
                if g.a_passes > 1 and (j == 0 or g.direct):
                    mm.attributes[A_PASSES] = IntegerAttr(g.a_passes, 64)
                pieces.append(b.add(mm, tag, g.name))
                # the strip goes on along the row and the weight block down the column, as copies out of
                # this part's buffers: each link carries them once instead of a DMA tile sending them to all
                if j + 1 < g.cols and not g.direct:
                    strip = b.add(sp.ReshapeOp(strip, sp.shape_of(strip)), tag, g.name)
                if i + 1 < g.rows:
                    down[j] = b.add(sp.ReshapeOp(down[j], sp.shape_of(down[j])), tag, g.name)
            strips.append(pieces[0] if len(pieces) == 1 else b.add(sp.ConcatOp(pieces, 1)))
        out = strips[0] if len(strips) == 1 else b.add(sp.ConcatOp(strips, 0))
        if len(a) != 2:
            out = b.add(sp.ReshapeOp(out, sp.shape_of(op.result)))
        b.replace_anchor(out)


def _i64s(vals: list[int]):
    return i64_array(vals)
