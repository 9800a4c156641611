"""The fast mapper: greedy placement, a little simulated annealing, and
congestion-aware shortest-path routing, then moves of kernels off over-full
links. It gives CP-SAT a complete hint and is the fallback when the solver finds
nothing better in time. It ranks mappings as the solver does: link capacity
first (it is a hard limit), then the schedule-aware makespan estimate
(``attnc.passes.placement.phases``), then byte-hops.

Arrays and problems are turned into index-based views here (``ArrayView``,
``ProblemView``) that the CP-SAT model in ``place_route`` shares; the
independent checker in ``attnc.passes.placement.problem.validate`` does not use them.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import Counter, defaultdict, deque
from dataclasses import dataclass

from attnc.passes.placement.problem import (
    Mapping,
    MappingInfeasible,
    MappingProblem,
    MappingStats,
    explain_infeasible,
    must_cross,
    pigeonhole,
)
from attnc.passes.placement.phases import phases_of
from attnc.passes.placement.sram import SramUse

# Integer resolution of the CP-SAT model: a link's capacity is RATE_STEPS units,
# a stream's bytes at most BYTE_STEPS units, the schedule's length plus all the
# kernels' work CYCLE_STEPS units.
RATE_STEPS = 1024
BYTE_STEPS = 100
CYCLE_STEPS = 4000
# The annealer's weights on the crowding (``_Busy.crowd``) against the makespan estimate's, one annealing each:
# where the streams leave room a quarter relieves tiles one at a time among moves that keep the estimate;
# where they are tight (links at capacity) only the full weight moves kernels past their streams' pull.
CROWD = (0.25, 1.0)
# How much less crowded a crowding annealing must leave the array to be taken over the plain one, and how
# much larger its estimate may be (two annealings' estimates differ by about that whatever they weigh).
CROWD_MARGIN = 0.1
ESTIMATE_NOISE = 0.01
# Rounds of moving kernels off over-full links, after routing.
RELIEF_ROUNDS = 24


class ArrayView:
    """Tiles as indices 0..n-1 (sorted by position), directed links as indices, hop distances."""

    def __init__(self, arch):
        self.arch = arch
        graph = arch.graph()
        tiles = sorted(arch.tiles, key=lambda t: (t.y, t.x))
        self.pos = [(t.x, t.y) for t in tiles]
        self.index = {p: i for i, p in enumerate(self.pos)}
        self.kind = [t.kind for t in tiles]
        self.contexts = [t.contexts for t in tiles]
        self.sram = [t.sram_bytes for t in tiles]
        self.of_kind: dict[str, list[int]] = defaultdict(list)
        for i, k in enumerate(self.kind):
            self.of_kind[k].append(i)
        self.links: list[tuple[int, int]] = []
        self.cap: list[float] = []
        for a, b, data in sorted(graph.edges(data=True), key=lambda e: (self.index[e[0]], self.index[e[1]])):
            self.links.append((self.index[a], self.index[b]))
            self.cap.append(float(data["bytes_per_cycle"]))
        self.link_index = {l: i for i, l in enumerate(self.links)}
        self.out_links: list[list[int]] = [[] for _ in self.pos]
        self.in_links: list[list[int]] = [[] for _ in self.pos]
        for i, (a, b) in enumerate(self.links):
            self.out_links[a].append(i)
            self.in_links[b].append(i)
        self.capacity = min(self.cap) if self.cap else 1.0
        self.dist = [self._bfs(i) for i in range(len(self.pos))]

    def _bfs(self, start: int) -> list[int]:
        far = 1 << 20
        dist = [far] * len(self.pos)
        dist[start] = 0
        queue = deque([start])
        while queue:
            a = queue.popleft()
            for li in self.out_links[a]:
                b = self.links[li][1]
                if dist[b] == far:
                    dist[b] = dist[a] + 1
                    queue.append(b)
        return dist


class ProblemView:
    """Kernels and streams as indices, with the integer weights of the CP-SAT model."""

    def __init__(self, problem: MappingProblem, av: ArrayView):
        self.problem = problem
        self.kernels = problem.kernels
        self.streams = problem.streams
        self.kindex = {k.name: i for i, k in enumerate(self.kernels)}
        self.src = [self.kindex[s.src] for s in self.streams]
        self.dst = [self.kindex[s.dst] for s in self.streams]
        kinds = {k.name: k.kind for k in self.kernels}
        self.cross = [must_cross(s, kinds) for s in self.streams]
        self.rate_unit = av.capacity / RATE_STEPS
        self.r_int = [max(1, math.ceil(s.rate / self.rate_unit - 1e-9)) if s.rate > 0 else 0 for s in self.streams]
        max_bytes = max((s.bytes for s in self.streams), default=1)
        self.byte_unit = max(1, math.ceil(max_bytes / BYTE_STEPS))
        self.b_int = [math.ceil(s.bytes / self.byte_unit) for s in self.streams]
        # a link's capacity in rate units, rounded down as the streams' rates are rounded up: a mapping
        # within it in integers is within it in bytes per cycle
        self.cap_int = [math.floor(c / self.rate_unit + 1e-9) for c in av.cap]
        self.av_cap = list(av.cap)
        self.phases = phases_of(problem)
        span = sum(self.phases.lengths) + sum(k.cycles for k in self.kernels)
        self.cycle_unit = max(1, math.ceil(span / CYCLE_STEPS))
        self.c_int = [math.ceil(k.cycles / self.cycle_unit) for k in self.kernels]
        self.len_int = [round(n / self.cycle_unit) for n in self.phases.lengths]
        self.w_int = [tuple((j, round(w / self.cycle_unit)) for j, w in parts) for parts in self.phases.work]
        # a stream's time on a link per phase, in the same units, for a link of each capacity
        self.t_int: dict[tuple[int, float], tuple[tuple[int, int], ...]] = {}
        for si, parts in enumerate(self.phases.transfer):
            for cap in set(av.cap):
                self.t_int[si, cap] = tuple((j, round(nb / cap / self.cycle_unit)) for j, nb in parts)
        self.clash = clashes(self.kernels, self.w_int, self.len_int, {k: len(v) for k, v in av.of_kind.items()})
        self.cand = [av.of_kind.get(k.kind, []) for k in self.kernels]
        self.incident: list[list[int]] = [[] for _ in self.kernels]
        for si, (a, b) in enumerate(zip(self.src, self.dst)):
            self.incident[a].append(si)
            if b != a:
                self.incident[b].append(si)


@dataclass
class State:
    place: list[int]            # tile index per kernel
    routes: list[list[int]]     # tile-index path per stream


@dataclass(frozen=True)
class Score:
    """Exact objective terms of a state, and the integer ones the CP-SAT model sees. ``overload``: how
    far the fullest link is over its capacity (0 within it), the term that must be 0; ``max_load`` is
    reported, not ranked."""

    max_load: float
    overload: float
    byte_hops: int
    makespan: int
    o_int: int
    bh_int: int
    m_int: int
    loads: tuple[float, ...]
    iloads: tuple[int, ...]
    #: kernels that run at the same time (one nonzero SRAM phase, or one ``together`` group) on a tile beyond the
    #: first, summed: they take turns, which the estimate misses while their window has slack; plus, per tile,
    #: the pairs of clashing SRAM phases it holds (``clashes``): the gate runs them one after the other
    stacked: int = 0
    #: the work every tile has beyond each phase's length, summed over tiles and phases (``_Busy.crowd``, the
    #: model's units): the estimate's max sees only the busiest tile of a phase, this every one
    crowd: int = 0

    def key(self) -> tuple:
        return (round(self.overload, 9), self.makespan, self.crowd, self.stacked, self.byte_hops)


def score(av: ArrayView, pv: ProblemView, st: State) -> Score:
    loads = [0.0] * len(av.links)
    iloads = [0] * len(av.links)
    bh = bh_int = 0
    for si, path in enumerate(st.routes):
        s = pv.streams[si]
        hops = len(path) - 1
        bh += s.bytes * hops
        bh_int += pv.b_int[si] * hops
        for a, b in zip(path, path[1:]):
            li = av.link_index[(a, b)]
            loads[li] += s.rate
            iloads[li] += pv.r_int[si]
    over = max((load - cap for load, cap in zip(loads, av.cap)), default=0.0)
    o_int = max((load - cap for load, cap in zip(iloads, pv.cap_int)), default=0)
    busy = _Busy(pv, len(av.pos), st.place)
    links = pv.phases.link_work(st.routes, lambda a, b: av.cap[av.link_index[(a, b)]])
    per = _stacks(pv, st.place)
    gated = sum(1 for (t, key) in per for other in pv.clash.get(key, ()) if (t, other) in per and key < other)
    return Score(max(loads, default=0.0), max(0.0, over) if over > 1e-9 else 0.0, bh,
                 round(pv.phases.estimate(st.place, links)), max(0, o_int), bh_int,
                 busy.total(_link_time_int(av, pv, st.routes)), tuple(loads), tuple(iloads),
                 sum(n - 1 for n in per.values()) + gated, busy.crowd())


def stack_key(k) -> tuple | None:
    """What a kernel runs at the same time as: its nonzero SRAM phase, or its ``together`` group (None: no one)."""
    if k.phase:
        return ("phase", k.phase)
    return ("group", k.together) if k.together else None


def clashes(kernels, work: list[tuple[tuple[int, int], ...]], lengths: list[int],
            tiles: dict[str, int] | None = None) -> dict[tuple, frozenset]:  # fmt: skip
    """Pairs of nonzero SRAM phases that must not share a tile when the array has room, as ``stack_key``
    -> the keys it clashes with. A context of phase q waits on its tile for every context of a lower
    nonzero phase to finish (the simulator's gate), and a spill into phase q reads back only once all its
    consumers are open, so one tile holding both makes the whole of q wait for p. Where the windows say
    the two run one after the other that costs nothing; where each is busy more than half of the time
    their windows share, they stream into each other (FFN1 and FFN2 through DRAM) and the gate serialises
    two that would otherwise overlap. (A kernel that is busy a smaller part of that time -- an attention
    whose window the unplaced schedule stretches over the layer -- is left to the estimate.) The estimate's
    max over tiles sees this only on the busiest tile; the count of clashing pairs per tile sees it on
    every one. ``work``: each kernel's (phase, work) in the estimate's units, ``lengths`` the phases'.
    ``tiles``: how many tiles of each kind there are; two phases whose kernels of one kind outnumber that
    kind's tiles cannot all be kept apart (Transformer-XL's FFN1 and FFN2 on cloud: 64 parts each on 64
    compute tiles), and counting their pairs only pushed the placer to stack one phase's parts three and
    four to a tile (178K -> 416K cycles): such phases do not clash."""
    profile: dict[int, dict[int, int]] = {}
    count: dict[int, Counter] = defaultdict(Counter)
    for k, parts in zip(kernels, work):
        if k.phase:
            prof = profile.setdefault(k.phase, {})
            count[k.phase][k.kind] += 1
            for j, w in parts:
                prof[j] = max(prof.get(j, 0), w)
    out: dict[tuple, set] = defaultdict(set)
    ordered = sorted(profile)
    for i, p in enumerate(ordered):
        for q in ordered[i + 1:]:
            if tiles is not None and any(n > tiles.get(kind, 0) for kind, n in (count[p] + count[q]).items()):
                continue  # no room to keep them apart
            a, b = profile[p], profile[q]
            shared = a.keys() & b.keys()
            if 2 * sum(min(a[j], b[j]) for j in shared) > sum(lengths[j] for j in shared) > 0:
                out[("phase", p)].add(("phase", q))
                out[("phase", q)].add(("phase", p))
    return {key: frozenset(v) for key, v in out.items()}


def _stacks(pv: ProblemView, place: list[int]) -> defaultdict[tuple, int]:
    """How many kernels of each ``stack_key`` each tile holds: (tile, key) -> count."""
    out: defaultdict[tuple, int] = defaultdict(int)
    for k, t in enumerate(place):
        if (key := stack_key(pv.kernels[k])) is not None:
            out[t, key] += 1
    return out


def _link_time_int(av: ArrayView, pv: ProblemView, routes: list[list[int]]) -> dict[int, int]:
    """Per phase, the busiest link's time in the model's integer units."""
    per: dict[tuple[int, int], int] = defaultdict(int)
    for si, path in enumerate(routes):
        for a, b in zip(path, path[1:]):
            li = av.link_index[(a, b)]
            for j, w in pv.t_int[si, av.cap[li]]:
                per[li, j] += w
    top: dict[int, int] = defaultdict(int)
    for (_li, j), w in per.items():
        top[j] = max(top[j], w)
    return top


class _Busy:
    """Work per phase and tile in the model's integer units, and the makespan estimate it gives: per
    phase the larger of its length and its busiest tile's work."""

    def __init__(self, pv: ProblemView, n_tiles: int, place: list[int] | None = None) -> None:
        self.pv = pv
        self.col = [[0] * n_tiles for _ in pv.len_int]
        for k, t in enumerate(place or []):
            if t >= 0:
                self.add(k, t, 1)

    def add(self, k: int, t: int, sign: int) -> None:
        for j, w in self.pv.w_int[k]:
            self.col[j][t] += sign * w

    def top(self, j: int) -> int:
        return max(self.pv.len_int[j], max(self.col[j]))

    def total(self, links: dict[int, int] | None = None) -> int:
        """The estimate; ``links``: per phase the busiest link's time, when the routes are known."""
        links = links or {}
        return sum(max(self.top(j), links.get(j, 0)) for j in range(len(self.col)))

    def crowd(self) -> int:
        """The work each tile has beyond each phase's length, summed: the kernels that run at the same time
        and take turns on a tile (an attention's members, a GELU part and a butterfly stage), on every tile
        -- where the estimate's max over tiles sees only the busiest one, and so cannot tell one tile's
        relief from none until every such tile is relieved."""
        return sum(max(0, w - n) for col, n in zip(self.col, self.pv.len_int) for w in col)

    def join_cost(self, k: int, t: int, tops: dict[int, int]) -> int:
        """How much the estimate grows if ``k`` joins tile ``t`` (``tops``: the phases' current tops)."""
        return sum(max(0, self.col[j][t] + w - tops[j]) for j, w in self.pv.w_int[k])

    def move_cost(self, moves: list[tuple[int, int, int]], crowd: float = 0.0) -> float:
        """How much the estimate, plus ``crowd`` times the crowding, grows if each (kernel, from, to) moves
        (then undone)."""
        touched = {j for k, _a, _b in moves for j, _w in self.pv.w_int[k]}
        if not touched:
            return 0
        cells = {(j, t) for k, a, b in moves for j, _w in self.pv.w_int[k] for t in (a, b)}

        def measure() -> float:
            over = sum(max(0, self.col[j][t] - self.pv.len_int[j]) for j, t in cells)
            return sum(self.top(j) for j in touched) + crowd * over

        before = measure()
        for k, a, b in moves:
            self.add(k, a, -1)
            self.add(k, b, 1)
        after = measure()
        for k, a, b in moves:
            self.add(k, b, -1)
            self.add(k, a, 1)
        return after - before


def lower_bounds(av: ArrayView, pv: ProblemView) -> tuple[float, int, int]:
    """Trivial bounds on (max link load, byte-hops, makespan) that every mapping meets."""
    load_lb = 0.0
    out_rate: dict[int, float] = defaultdict(float)
    in_rate: dict[int, float] = defaultdict(float)
    bh_lb = 0
    for si, s in enumerate(pv.streams):
        if not pv.cross[si]:
            continue
        load_lb = max(load_lb, s.rate)
        out_rate[pv.src[si]] += s.rate
        in_rate[pv.dst[si]] += s.rate
        a, b = pv.cand[pv.src[si]], pv.cand[pv.dst[si]]
        if a and b:
            bh_lb += s.bytes * min(av.dist[x][y] for x in a for y in b)
    rates_in: dict[int, list[float]] = defaultdict(list)
    rates_out: dict[int, list[float]] = defaultdict(list)
    for si, s in enumerate(pv.streams):
        if pv.cross[si]:
            rates_out[pv.src[si]].append(s.rate)
            rates_in[pv.dst[si]].append(s.rate)
    for ki, k in enumerate(pv.kernels):
        tiles = pv.cand[ki]
        if not tiles:
            continue
        load_lb = max(load_lb, pigeonhole(rates_out[ki], max(len(av.out_links[t]) for t in tiles)),
                      pigeonhole(rates_in[ki], max(len(av.in_links[t]) for t in tiles)))
        # A kernel's outgoing streams share its tile's out-links (the tile with most links at best).
        outs = max(len(av.out_links[t]) for t in tiles) or 1
        ins = max(len(av.in_links[t]) for t in tiles) or 1
        load_lb = max(load_lb, out_rate[ki] / outs, in_rate[ki] / ins)
    # per phase: its length, its largest piece of work, its work of a kind spread over that kind's tiles
    ms_lb = 0.0
    for j, length in enumerate(pv.phases.lengths):
        by_kind: dict[str, float] = defaultdict(float)
        top = length
        for ki, parts in enumerate(pv.phases.work):
            for jj, w in parts:
                if jj == j:
                    by_kind[pv.kernels[ki].kind] += w
                    top = max(top, w)
        for kind, w in by_kind.items():
            n = len(av.of_kind.get(kind, []))
            if n:
                top = max(top, w / n)
        ms_lb += top
    return load_lb, bh_lb, math.floor(ms_lb)


# --------------------------------------------------------------------------- placement


def _order(pv: ProblemView) -> list[int]:
    """Kernels in dataflow order (sources first), ties in problem order: each
    kernel is placed after the producers it should sit next to."""
    indeg = [0] * len(pv.kernels)
    succ: list[list[int]] = [[] for _ in pv.kernels]
    for a, b in zip(pv.src, pv.dst):
        if a != b:
            succ[a].append(b)
            indeg[b] += 1
    ready = [i for i, d in enumerate(indeg) if d == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        k = heapq.heappop(ready)
        order.append(k)
        for n in succ[k]:
            indeg[n] -= 1
            if indeg[n] == 0:
                heapq.heappush(ready, n)
    seen = set(order)
    order += [i for i in range(len(pv.kernels)) if i not in seen]  # cycles: problem order
    return order


def greedy_place(av: ArrayView, pv: ProblemView) -> list[int] | None:
    """Each kernel, in dataflow order, on the tile where it grows the makespan estimate least (a tile
    idle in its phases), then nearest its placed neighbours."""
    n = len(pv.kernels)
    place = [-1] * n
    ctx = [0] * len(av.pos)
    sram = SramUse.of(av.sram, pv.kernels)
    busy = _Busy(pv, len(av.pos))
    # where the kernels need nearly every context of their tiles, a kernel that stacks on a busy tile (free in
    # the estimate while its phase has slack) strands those that come later: there the emptiest tile comes
    # before the nearest one
    demand: dict[tuple[int, ...], int] = defaultdict(int)
    for ki in range(n):
        demand[tuple(pv.cand[ki])] += 1
    tight = {c: d * 4 > sum(av.contexts[t] for t in c) * 3 for c, d in demand.items()}
    # kernels of one SRAM phase or one group run at the same time: two on one tile take turns, whatever the
    # estimate's slack
    same: dict[tuple, int] = defaultdict(int)
    for ki in _order(pv):
        tops = {j: busy.top(j) for j, _w in pv.w_int[ki]}
        spread = tight[tuple(pv.cand[ki])]
        phase = stack_key(pv.kernels[ki])
        best, best_cost = -1, None
        for t in pv.cand[ki]:
            if ctx[t] >= av.contexts[t] or not sram.fits(t, ki):
                continue
            cost = 0
            for si in pv.incident[ki]:
                other = pv.dst[si] if pv.src[si] == ki else pv.src[si]
                if place[other] >= 0:
                    cost += pv.b_int[si] * av.dist[t][place[other]]
            # Ties (and kernels with nothing placed yet) go to the emptiest tile: spreads load.
            stacked = same[t, phase] if phase is not None else 0
            gated = sum(same[t, q] > 0 for q in pv.clash.get(phase, ())) if phase is not None else 0
            grow = busy.join_cost(ki, t, tops)
            c = (stacked, grow, gated, ctx[t], cost, t) if spread else \
                (stacked, grow, gated, cost, ctx[t], t)
            if best_cost is None or c < best_cost:
                best, best_cost = t, c
        if best < 0:
            return _first_fit_decreasing(av, pv)
        place[ki] = best
        ctx[best] += 1
        same[best, phase] += 1
        sram.add(best, ki)
        busy.add(ki, best, 1)
    return place


def _first_fit_decreasing(av: ArrayView, pv: ProblemView) -> list[int] | None:
    """Packing without locality, for when the greedy order strands a kernel: largest buffers first, each on
    the tile where it grows the makespan estimate least (kernels of one phase on separate tiles, when the
    contexts are nearly all taken), then the best fit (the least room left)."""
    place = [-1] * len(pv.kernels)
    ctx = [0] * len(av.pos)
    sram = SramUse.of(av.sram, pv.kernels)
    busy = _Busy(pv, len(av.pos))
    for ki in sorted(range(len(pv.kernels)), key=lambda i: (-pv.kernels[i].buffer_bytes, i)):
        fits = [t for t in pv.cand[ki] if ctx[t] < av.contexts[t] and sram.fits(t, ki)]
        if not fits:
            return None
        tops = {j: busy.top(j) for j, _w in pv.w_int[ki]}
        t = min(fits, key=lambda t: (busy.join_cost(ki, t, tops), sram.left(t, ki), t))
        place[ki] = t
        ctx[t] += 1
        sram.add(t, ki)
        busy.add(ki, t, 1)
    return place


def anneal(av: ArrayView, pv: ProblemView, place: list[int], rng: random.Random, iterations: int,
           crowd: float = 0.0) -> list[int]:
    """Moves and swaps of kernels between tiles of their kind, minimising the makespan estimate
    (weighted to outrank a few hops) plus ``crowd`` times the crowding (``_Busy.crowd``), byte-hops and a
    link-pressure term."""
    place = list(place)
    if not pv.kernels or not pv.streams:
        return place
    movable = [i for i in range(len(pv.kernels)) if len(pv.cand[i]) > 1]
    if not movable:
        return place
    return _Annealer(av, pv, place, rng, crowd).run(movable, iterations)


class _Annealer:
    """The state of one annealing run: where each kernel is and what each tile holds."""

    def __init__(self, av: ArrayView, pv: ProblemView, place: list[int], rng: random.Random, crowd: float = 0.0) -> None:
        self.av, self.pv, self.place, self.rng, self.crowd = av, pv, place, rng, crowd
        n = len(pv.kernels)
        self.ctx = [0] * len(av.pos)
        self.sram = SramUse.of(av.sram, pv.kernels, place)
        self.on_tile: list[list[int]] = [[] for _ in av.pos]
        for ki, t in enumerate(place):
            self.ctx[t] += 1
            self.on_tile[t].append(ki)
        # Tile pressure: the stream rates of its kernels against the capacity of its
        # links. Byte-hops alone pile kernels with heavy streams onto one corner tile.
        self.io = [sum(pv.r_int[si] for si in pv.incident[ki]) for ki in range(n)]
        self.room = [0.5 * RATE_STEPS * (len(av.out_links[t]) + len(av.in_links[t])) for t in range(len(av.pos))]
        self.pressure = [0.0] * len(av.pos)
        for ki, t in enumerate(place):
            self.pressure[t] += self.io[ki]
        self.mu = 4.0 * (sum(pv.b_int) / max(1, len(pv.b_int))) / RATE_STEPS
        # one unit of the makespan estimate weighs as much as moving an average stream four hops
        self.wm = 4.0 * max(1.0, sum(pv.b_int) / max(1, len(pv.b_int)))
        self.busy = _Busy(pv, len(av.pos), place)
        # kernels of one nonzero SRAM phase per tile (Score.stacked): a kernel joining another of its phase costs
        # its own work, which the estimate misses while the phase's window has slack
        self.same = _stacks(pv, place)
        self.work = [sum(w for _j, w in pv.w_int[ki]) for ki in range(n)]

    def stack(self, moves: list[tuple[int, int, int]]) -> float:
        """What ``moves`` (kernel, from, to) change in stacked kernels of one phase, weighted by their work."""
        out = 0.0
        for ki, a, b in moves:
            p = stack_key(self.pv.kernels[ki])
            if p is not None:
                out += self.wm * self.work[ki] * ((self.same[b, p] >= 1) - (self.same[a, p] >= 2))
                # the first of its phase on b gates against b's clashing phases; the last to leave a frees a
                for q in self.pv.clash.get(p, ()):
                    out += self.wm * self.work[ki] * (
                        (self.same[b, p] == 0 and self.same[b, q] >= 1) - (self.same[a, p] == 1 and self.same[a, q] >= 1))
        return out

    def shift(self, ki: int, a: int, b: int) -> None:
        p = stack_key(self.pv.kernels[ki])
        if p is not None:
            self.same[a, p] -= 1
            self.same[b, p] += 1

    def over(self, t: int, extra: float = 0.0) -> float:
        return self.mu * max(0.0, self.pressure[t] + extra - self.room[t])

    def local(self, ki: int, t: int, skip: int = -1) -> int:
        """Byte-hops of ``ki``'s streams were it on tile ``t`` (leaving out the one to ``skip``)."""
        pv, c = self.pv, 0
        for si in pv.incident[ki]:
            other = pv.dst[si] if pv.src[si] == ki else pv.src[si]
            if other == skip:
                continue
            c += pv.b_int[si] * self.av.dist[t][self.place[other]]
        return c

    def accept(self, delta: float, temp: float) -> bool:
        return delta <= 0 or self.rng.random() < math.exp(-delta / temp)

    def run(self, movable: list[int], iterations: int) -> list[int]:
        pv, rng = self.pv, self.rng
        temp0 = max(1.0, sum(pv.b_int) / max(1, len(pv.b_int)))
        for it in range(iterations):
            temp = temp0 * (0.002 ** (it / iterations))
            ki = movable[rng.randrange(len(movable))]
            t_old = self.place[ki]
            t_new = pv.cand[ki][rng.randrange(len(pv.cand[ki]))]
            if t_new == t_old:
                continue
            if self.ctx[t_new] < self.av.contexts[t_new] and self.sram.fits(t_new, ki):
                self.move(ki, t_old, t_new, temp)
            else:  # tile full: swap with a kernel of the same kind already there
                self.swap(ki, t_old, t_new, temp)
        return self.place

    def move(self, ki: int, t_old: int, t_new: int, temp: float) -> None:
        io = self.io[ki]
        delta = self.local(ki, t_new) - self.local(ki, t_old)
        delta += self.over(t_new, io) + self.over(t_old, -io) - self.over(t_new) - self.over(t_old)
        delta += self.wm * self.busy.move_cost([(ki, t_old, t_new)], self.crowd) + self.stack([(ki, t_old, t_new)])
        if self.accept(delta, temp):
            self.shift(ki, t_old, t_new)
            self.busy.add(ki, t_old, -1)
            self.busy.add(ki, t_new, 1)
            self.pressure[t_old] -= io
            self.pressure[t_new] += io
            self.place[ki] = t_new
            self.ctx[t_old] -= 1
            self.ctx[t_new] += 1
            self.sram.add(t_old, ki, -1)
            self.sram.add(t_new, ki)
            self.on_tile[t_old].remove(ki)
            self.on_tile[t_new].append(ki)

    def swap(self, ki: int, t_old: int, t_new: int, temp: float) -> None:
        others = self.on_tile[t_new]
        if not others:
            return
        kj = others[self.rng.randrange(len(others))]
        sram = self.sram
        if not (sram.fits_exchange(t_new, kj, ki) and sram.fits_exchange(t_old, ki, kj)):
            return
        place = self.place
        before = self.local(ki, t_old) + self.local(kj, t_new, skip=ki)
        place[ki], place[kj] = t_new, t_old
        after = self.local(ki, t_new) + self.local(kj, t_old, skip=ki)
        shift = self.io[ki] - self.io[kj]
        delta = after - before + self.over(t_new, shift) + self.over(t_old, -shift) - self.over(t_new) - self.over(t_old)
        delta += self.wm * self.busy.move_cost([(ki, t_old, t_new), (kj, t_new, t_old)], self.crowd)
        if stack_key(self.pv.kernels[ki]) != stack_key(self.pv.kernels[kj]):
            delta += self.stack([(ki, t_old, t_new)]) + self.stack([(kj, t_new, t_old)])
        if self.accept(delta, temp):
            self.shift(ki, t_old, t_new)
            self.shift(kj, t_new, t_old)
            for k, a, b in ((ki, t_old, t_new), (kj, t_new, t_old)):
                self.busy.add(k, a, -1)
                self.busy.add(k, b, 1)
            self.pressure[t_new] += shift
            self.pressure[t_old] -= shift
            for k, a, b in ((ki, t_old, t_new), (kj, t_new, t_old)):
                sram.add(a, k, -1)
                sram.add(b, k)
            self.on_tile[t_new][self.on_tile[t_new].index(kj)] = ki
            self.on_tile[t_old][self.on_tile[t_old].index(ki)] = kj
        else:
            place[ki], place[kj] = t_old, t_new


# --------------------------------------------------------------------------- routing


def route_all(av: ArrayView, pv: ProblemView, place: list[int], rounds: int = 4) -> list[list[int]]:
    """Shortest paths, heaviest streams first, with links priced by how full they
    are and by how much a stream's bytes would stretch a phase on them (bursts that
    cross one link at the same time take turns); then rip up and reroute the streams
    on over-full links a few times."""
    loads = [0.0] * len(av.links)
    busy: list[dict[int, float]] = [defaultdict(float) for _ in av.links]  # link -> phase -> cycles
    routes: list[list[int]] = [[] for _ in pv.streams]
    order = sorted(range(len(pv.streams)), key=lambda s: (-pv.streams[s].rate, s))
    lengths = pv.phases.lengths
    # a phase stretched by 0.1% of the schedule costs as much as a hop
    per_cycle = 1000.0 / max(1.0, sum(lengths))

    def add(si: int, sign: float) -> None:
        for a, b in zip(routes[si], routes[si][1:]):
            li = av.link_index[(a, b)]
            loads[li] += sign * pv.streams[si].rate
            for j, nb in pv.phases.transfer[si]:
                busy[li][j] += sign * nb / av.cap[li]

    def stretch(si: int):
        parts = pv.phases.transfer[si]
        return lambda li: per_cycle * sum(max(0.0, busy[li][j] + nb / av.cap[li] - max(lengths[j], busy[li][j]))
                                          for j, nb in parts)

    def route(si: int) -> list[int]:
        return _cheapest(av, loads, place[pv.src[si]], place[pv.dst[si]], pv.streams[si].rate, stretch(si))

    for si in order:
        routes[si] = route(si)
        add(si, 1.0)
    for _ in range(rounds):
        over = {li for li, load in enumerate(loads) if load > av.cap[li] + 1e-9}
        if not over:
            break
        victims = [si for si in order if any(av.link_index[(a, b)] in over for a, b in zip(routes[si], routes[si][1:]))]
        for si in victims:
            add(si, -1.0)
            routes[si] = route(si)
            add(si, 1.0)
    return routes


def relieve(av: ArrayView, pv: ProblemView, place: list[int], routes: list[list[int]]) -> tuple[list[int], list[list[int]]]:
    """Move kernels off over-full links (link capacity is a hard limit): while a link is over, try each
    kernel with a stream on the fullest one on the nearest tiles of its kind with room, its streams
    rerouted around the others' load, and take the move that lowers the total excess most (ties: the
    smaller makespan estimate, then the shorter routes). Stops when every link is within capacity or
    no move helps."""
    place, routes = list(place), [list(r) for r in routes]
    loads = [0.0] * len(av.links)

    def add(si: int, path: list[int], sign: float) -> None:
        for a, b in zip(path, path[1:]):
            loads[av.link_index[(a, b)]] += sign * pv.streams[si].rate

    def excess() -> float:
        return sum(max(0.0, load - cap - 1e-9) for load, cap in zip(loads, av.cap))

    for si, path in enumerate(routes):
        add(si, path, 1.0)
    for _ in range(RELIEF_ROUNDS):
        before = excess()
        if before <= 0:
            break
        hot = max(range(len(av.links)), key=lambda li: (loads[li] - av.cap[li], -li))
        on_hot = [si for si, path in enumerate(routes)
                  if any(av.link_index[(a, b)] == hot for a, b in zip(path, path[1:]))]
        ctx = [0] * len(av.pos)
        for ki, t in enumerate(place):
            ctx[t] += 1
        sram = SramUse.of(av.sram, pv.kernels, place)
        busy = _Busy(pv, len(av.pos), place)
        best = None
        for ki in sorted({pv.src[si] for si in on_hot} | {pv.dst[si] for si in on_hot}):
            here = place[ki]
            near = sorted((t for t in pv.cand[ki] if t != here and ctx[t] < av.contexts[t] and sram.fits(t, ki)),
                          key=lambda t: (av.dist[here][t], t))[:8]
            mine = pv.incident[ki]
            for si in mine:
                add(si, routes[si], -1.0)
            for t in near:
                place[ki] = t
                trial = {}
                for si in mine:
                    trial[si] = _cheapest(av, loads, place[pv.src[si]], place[pv.dst[si]], pv.streams[si].rate)
                    add(si, trial[si], 1.0)
                hops = sum(pv.b_int[si] * (len(trial[si]) - len(routes[si])) for si in mine)
                key = (round(excess(), 9), busy.move_cost([(ki, here, t)]), hops, ki, t)
                for si in mine:
                    add(si, trial[si], -1.0)
                if best is None or key < best[0]:
                    best = (key, ki, t, trial)
            place[ki] = here
            for si in mine:
                add(si, routes[si], 1.0)
        if best is None or best[0][0] >= before - 1e-9:
            break
        _key, ki, t, trial = best
        place[ki] = t
        for si, path in trial.items():
            add(si, routes[si], -1.0)
            routes[si] = path
            add(si, path, 1.0)
    return place, routes


def _cheapest(av: ArrayView, loads: list[float], a: int, b: int, rate: float, extra=None) -> list[int]:
    """The cheapest path from ``a`` to ``b``: a hop costs 1, a fuller link a little more, an over-full
    link a lot; ``extra(link)`` adds a cost of its own."""
    if a == b:
        return [a]
    far = float("inf")
    dist = {a: 0.0}
    prev: dict[int, int] = {}
    heap = [(0.0, a)]
    while heap:
        d, v = heapq.heappop(heap)
        if v == b:
            break
        if d > dist.get(v, far):
            continue
        for li in av.out_links[v]:
            w = av.links[li][1]
            cap = av.cap[li]
            after = loads[li] + rate
            # One hop costs 1; a fuller link a little more; an over-full link a lot.
            cost = 1.0 + 0.5 * after / cap + (50.0 + 100.0 * (after - cap) / cap if after > cap + 1e-9 else 0.0)
            if extra is not None:
                cost += extra(li)
            nd = d + cost
            if nd < dist.get(w, far) - 1e-12:
                dist[w] = nd
                prev[w] = v
                heapq.heappush(heap, (nd, w))
    if b not in dist:
        raise MappingInfeasible(f"no path between tiles {av.pos[a]} and {av.pos[b]} in the array's links")
    path = [b]
    while path[-1] != a:
        path.append(prev[path[-1]])
    return path[::-1]


# --------------------------------------------------------------------------- entry point


def heuristic_state(av: ArrayView, pv: ProblemView, seed: int = 0, place: list[int] | None = None) -> State | None:
    """The greedy mapping (or, given ``place``, one from that packing), annealed, routed and relieved."""
    place = place or greedy_place(av, pv)
    if place is None:
        return None
    iterations = min(30000, 300 * len(pv.kernels))
    plain = _routed(av, pv, anneal(av, pv, place, random.Random(seed), iterations))
    # the crowding pulls kernels apart, against the streams that tie them together, and two annealings' estimates
    # differ by a few percent whatever they weigh: one that weighs it replaces the plain one only where it
    # relieves the tiles by a real margin, within link capacity and without growing the estimate beyond that noise
    a = score(av, pv, plain)
    best, best_key = plain, None
    for weight in CROWD:
        st = _routed(av, pv, anneal(av, pv, place, random.Random(seed), iterations, weight))
        b = score(av, pv, st)
        if (b.overload <= a.overload and b.makespan <= (1 + ESTIMATE_NOISE) * a.makespan
                and b.crowd <= (1 - CROWD_MARGIN) * a.crowd and (best_key is None or b.key() < best_key)):
            best, best_key = st, b.key()
    return best


def _routed(av: ArrayView, pv: ProblemView, place: list[int]) -> State:
    """``place`` routed, and relieved of over-full links where that scores better."""
    routes = route_all(av, pv, place)
    if any(load > cap + 1e-9 for load, cap in zip(score(av, pv, State(place, routes)).loads, av.cap)):
        moved = State(*relieve(av, pv, place, routes))
        if score(av, pv, moved).key() < score(av, pv, State(place, routes)).key():
            return moved
    return State(place, routes)


def to_mapping(av: ArrayView, pv: ProblemView, st: State, stats: MappingStats) -> Mapping:
    return Mapping(
        placement={k.name: av.pos[t] for k, t in zip(pv.kernels, st.place)},
        routes={s.name: [av.pos[t] for t in path] for s, path in zip(pv.streams, st.routes)},
        stats=stats,
    )


def fill_stats(stats: MappingStats, av: ArrayView, pv: ProblemView, sc: Score) -> MappingStats:
    stats.max_link_load, stats.byte_hops, stats.makespan = sc.max_load, sc.byte_hops, sc.makespan
    lb = lower_bounds(av, pv)
    stats.max_link_load_lb = max(stats.max_link_load_lb, lb[0])
    stats.byte_hops_lb = max(stats.byte_hops_lb, lb[1])
    stats.makespan_lb = max(stats.makespan_lb, lb[2])
    stats.link_capacity = av.capacity
    return stats


def views(problem: MappingProblem, arch) -> tuple[ArrayView, ProblemView]:
    """The solver-side views of a problem, after the counting checks that rule a mapping out cheaply."""
    why = explain_infeasible(problem, arch)
    if why:
        raise MappingInfeasible(f"cannot map onto {arch.name}: {why}")
    av = ArrayView(arch)
    return av, ProblemView(problem, av)


def heuristic_mapping(problem: MappingProblem, arch, *, seed: int = 0) -> Mapping:
    """Greedy placement + simulated annealing + congestion-aware routing + moves off
    over-full links. Links may still end up over capacity when none of that avoids
    it (``validate`` says so); ``place_and_route`` fixes that or refuses, naming the link."""
    start = time.perf_counter()
    av, pv = views(problem, arch)
    st = heuristic_state(av, pv, seed)
    if st is None:
        raise MappingInfeasible(
            f"cannot map onto {arch.name}: the greedy packing found no tile with free contexts and SRAM for every kernel"
        )
    sc = score(av, pv, st)
    seconds = time.perf_counter() - start
    stats = MappingStats(status="HEURISTIC", seconds=seconds, method="heuristic", heuristic_seconds=seconds,
                         heuristic_max_link_load=sc.max_load, heuristic_byte_hops=sc.byte_hops,
                         heuristic_makespan=sc.makespan)
    return to_mapping(av, pv, st, fill_stats(stats, av, pv, sc))
