"""The fast mapper: greedy placement, a little simulated annealing, and
congestion-aware shortest-path routing. It gives CP-SAT a complete hint and is
the fallback when the solver finds nothing better in time.

Arrays and problems are turned into index-based views here (``ArrayView``,
``ProblemView``) that the CP-SAT model in ``place_route`` shares; the
independent checker in ``attnc.passes.placement.problem.validate`` does not use them.
"""

from __future__ import annotations

import heapq
import math
import random
import time
from collections import defaultdict, deque
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

# Integer resolution of the CP-SAT model: a link's capacity is RATE_STEPS units,
# a stream's bytes at most BYTE_STEPS units, the whole cycle count CYCLE_STEPS units.
RATE_STEPS = 256
BYTE_STEPS = 100
CYCLE_STEPS = 1000


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
        total_cycles = sum(k.cycles for k in self.kernels) or 1
        self.cycle_unit = max(1, math.ceil(total_cycles / CYCLE_STEPS))
        self.c_int = [math.ceil(k.cycles / self.cycle_unit) for k in self.kernels]
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
    """Exact objective terms of a state, and the integer ones the CP-SAT model sees."""

    max_load: float
    byte_hops: int
    makespan: int
    l_int: int
    bh_int: int
    m_int: int
    loads: tuple[float, ...]

    def key(self) -> tuple:
        return (round(self.max_load, 9), self.byte_hops, self.makespan)


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
    busy = [0] * len(av.pos)
    ibusy = [0] * len(av.pos)
    for ki, t in enumerate(st.place):
        busy[t] += pv.kernels[ki].cycles
        ibusy[t] += pv.c_int[ki]
    return Score(max(loads, default=0.0), bh, max(busy, default=0), max(iloads, default=0), bh_int,
                 max(ibusy, default=0), tuple(loads))


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
    ms_lb = max((k.cycles for k in pv.kernels), default=0)
    by_kind: dict[str, int] = defaultdict(int)
    for k in pv.kernels:
        by_kind[k.kind] += k.cycles
    for kind, cycles in by_kind.items():
        n = len(av.of_kind.get(kind, []))
        if n:
            ms_lb = max(ms_lb, math.ceil(cycles / n))
    return load_lb, bh_lb, ms_lb


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
    n = len(pv.kernels)
    place = [-1] * n
    ctx = [0] * len(av.pos)
    sram = [0] * len(av.pos)
    for ki in _order(pv):
        k = pv.kernels[ki]
        best, best_cost = -1, None
        for t in pv.cand[ki]:
            if ctx[t] >= av.contexts[t] or sram[t] + k.buffer_bytes > av.sram[t]:
                continue
            cost = 0
            for si in pv.incident[ki]:
                other = pv.dst[si] if pv.src[si] == ki else pv.src[si]
                if place[other] >= 0:
                    cost += pv.b_int[si] * av.dist[t][place[other]]
            # Ties (and kernels with nothing placed yet) go to the emptiest tile: spreads load.
            c = (cost, ctx[t], t)
            if best_cost is None or c < best_cost:
                best, best_cost = t, c
        if best < 0:
            return _first_fit_decreasing(av, pv)
        place[ki] = best
        ctx[best] += 1
        sram[best] += k.buffer_bytes
    return place


def _first_fit_decreasing(av: ArrayView, pv: ProblemView) -> list[int] | None:
    """Packing without locality, for when the greedy order strands a kernel."""
    place = [-1] * len(pv.kernels)
    ctx = [0] * len(av.pos)
    sram = [0] * len(av.pos)
    for ki in sorted(range(len(pv.kernels)), key=lambda i: (-pv.kernels[i].buffer_bytes, i)):
        k = pv.kernels[ki]
        fits = [t for t in pv.cand[ki] if ctx[t] < av.contexts[t] and sram[t] + k.buffer_bytes <= av.sram[t]]
        if not fits:
            return None
        t = min(fits, key=lambda t: (av.sram[t] - sram[t] - k.buffer_bytes, t))
        place[ki] = t
        ctx[t] += 1
        sram[t] += k.buffer_bytes
    return place


def anneal(av: ArrayView, pv: ProblemView, place: list[int], rng: random.Random, iterations: int) -> list[int]:
    """Moves and swaps of kernels between tiles of their kind, minimising byte-hops
    (Manhattan-like hop distance) plus a makespan term."""
    place = list(place)
    if not pv.kernels or not pv.streams:
        return place
    movable = [i for i in range(len(pv.kernels)) if len(pv.cand[i]) > 1]
    if not movable:
        return place
    return _Annealer(av, pv, place, rng).run(movable, iterations)


class _Annealer:
    """The state of one annealing run: where each kernel is and what each tile holds."""

    def __init__(self, av: ArrayView, pv: ProblemView, place: list[int], rng: random.Random) -> None:
        self.av, self.pv, self.place, self.rng = av, pv, place, rng
        n = len(pv.kernels)
        self.ctx = [0] * len(av.pos)
        self.sram = [0] * len(av.pos)
        self.on_tile: list[list[int]] = [[] for _ in av.pos]
        for ki, t in enumerate(place):
            self.ctx[t] += 1
            self.sram[t] += pv.kernels[ki].buffer_bytes
            self.on_tile[t].append(ki)
        # Tile pressure: the stream rates of its kernels against the capacity of its
        # links. Byte-hops alone pile kernels with heavy streams onto one corner tile.
        self.io = [sum(pv.r_int[si] for si in pv.incident[ki]) for ki in range(n)]
        self.room = [0.5 * RATE_STEPS * (len(av.out_links[t]) + len(av.in_links[t])) for t in range(len(av.pos))]
        self.pressure = [0.0] * len(av.pos)
        for ki, t in enumerate(place):
            self.pressure[t] += self.io[ki]
        self.mu = 4.0 * (sum(pv.b_int) / max(1, len(pv.b_int))) / RATE_STEPS

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
            k = pv.kernels[ki]
            if self.ctx[t_new] < self.av.contexts[t_new] and self.sram[t_new] + k.buffer_bytes <= self.av.sram[t_new]:
                self.move(ki, t_old, t_new, temp)
            else:  # tile full: swap with a kernel of the same kind already there
                self.swap(ki, t_old, t_new, temp)
        return self.place

    def move(self, ki: int, t_old: int, t_new: int, temp: float) -> None:
        io, bb = self.io[ki], self.pv.kernels[ki].buffer_bytes
        delta = self.local(ki, t_new) - self.local(ki, t_old)
        delta += self.over(t_new, io) + self.over(t_old, -io) - self.over(t_new) - self.over(t_old)
        if self.accept(delta, temp):
            self.pressure[t_old] -= io
            self.pressure[t_new] += io
            self.place[ki] = t_new
            self.ctx[t_old] -= 1
            self.ctx[t_new] += 1
            self.sram[t_old] -= bb
            self.sram[t_new] += bb
            self.on_tile[t_old].remove(ki)
            self.on_tile[t_new].append(ki)

    def swap(self, ki: int, t_old: int, t_new: int, temp: float) -> None:
        others = self.on_tile[t_new]
        if not others:
            return
        kj = others[self.rng.randrange(len(others))]
        bi, bj = self.pv.kernels[ki].buffer_bytes, self.pv.kernels[kj].buffer_bytes
        sram, cap = self.sram, self.av.sram
        if sram[t_new] - bj + bi > cap[t_new] or sram[t_old] - bi + bj > cap[t_old]:
            return
        place = self.place
        before = self.local(ki, t_old) + self.local(kj, t_new, skip=ki)
        place[ki], place[kj] = t_new, t_old
        after = self.local(ki, t_new) + self.local(kj, t_old, skip=ki)
        shift = self.io[ki] - self.io[kj]
        delta = after - before + self.over(t_new, shift) + self.over(t_old, -shift) - self.over(t_new) - self.over(t_old)
        if self.accept(delta, temp):
            self.pressure[t_new] += shift
            self.pressure[t_old] -= shift
            sram[t_new] += bi - bj
            sram[t_old] += bj - bi
            self.on_tile[t_new][self.on_tile[t_new].index(kj)] = ki
            self.on_tile[t_old][self.on_tile[t_old].index(ki)] = kj
        else:
            place[ki], place[kj] = t_old, t_new


# --------------------------------------------------------------------------- routing


def route_all(av: ArrayView, pv: ProblemView, place: list[int], rounds: int = 4) -> list[list[int]]:
    """Shortest paths, heaviest streams first, with links priced by how full they
    are; then rip up and reroute the streams on over-full links a few times."""
    loads = [0.0] * len(av.links)
    routes: list[list[int]] = [[] for _ in pv.streams]
    order = sorted(range(len(pv.streams)), key=lambda s: (-pv.streams[s].rate, s))

    def add(si: int, sign: float) -> None:
        for a, b in zip(routes[si], routes[si][1:]):
            loads[av.link_index[(a, b)]] += sign * pv.streams[si].rate

    for si in order:
        routes[si] = _cheapest(av, loads, place[pv.src[si]], place[pv.dst[si]], pv.streams[si].rate)
        add(si, 1.0)
    for _ in range(rounds):
        over = {li for li, load in enumerate(loads) if load > av.cap[li] + 1e-9}
        if not over:
            break
        victims = [si for si in order if any(av.link_index[(a, b)] in over for a, b in zip(routes[si], routes[si][1:]))]
        for si in victims:
            add(si, -1.0)
            routes[si] = _cheapest(av, loads, place[pv.src[si]], place[pv.dst[si]], pv.streams[si].rate)
            add(si, 1.0)
    return routes


def _cheapest(av: ArrayView, loads: list[float], a: int, b: int, rate: float) -> list[int]:
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


def heuristic_state(av: ArrayView, pv: ProblemView, seed: int = 0) -> State | None:
    place = greedy_place(av, pv)
    if place is None:
        return None
    rng = random.Random(seed)
    iterations = min(30000, 300 * len(pv.kernels))
    place = anneal(av, pv, place, rng, iterations)
    return State(place, route_all(av, pv, place))


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
    """Greedy placement + simulated annealing + congestion-aware routing. Links may
    end up over capacity when the greedy cannot avoid it (``validate`` says so);
    ``place_and_route`` fixes that or explains it."""
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
