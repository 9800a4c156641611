"""Placement and routing of dataflow kernels on the array with OR-Tools CP-SAT.

The model (the one-hot placement and flow routing that CGRA-ME and Loom use): one Boolean ``x[k, t]`` per kernel and tile of its
kind (exactly one per kernel; contexts per tile and SRAM per tile and SRAM phase as
linear constraints, ``_sram_limit``),
one Boolean ``f[s, l]`` per stream and directed link (flow conservation at each
tile, tied to where the stream's ends are placed), and a weighted objective

    W1 * link overload  +  W2 * makespan estimate  +  byte-hops

where the overload is how far the fullest link is over its capacity (0 within
it), the makespan estimate is the schedule's phases, each stretched by its
busiest tile (one integer per phase, ``attnc.passes.placement.phases``), and one
unit of a term outweighs every unit of the terms after it: lexicographic. A
mapping with overload is never returned, so link capacity is a hard limit; a
link below capacity costs nothing, so the solver spends no makespan to empty it.
Byte-hops only break ties. Trivial lower bounds are posted as constraints: they
close proofs faster.

Small problems are solved as one model. Larger ones run large-neighbourhood
search: fix everything outside a window of the array (or one group of kernels,
or the streams on the most loaded link), re-solve the window from the current
mapping as a hint, keep the result when it is no worse. Every solve runs on one
worker with a fixed seed and a deterministic-time limit, so two runs give the
same mapping; a wall-clock limit is only a safety net. The heuristic mapping is
the starting point and the fallback: the result is never worse than it.

Link capacity is a penalty inside the model (the overload term) rather than a
constraint so that an over-full heuristic hint is still a valid start and an LNS
window that cannot reach an over-full link still solves; a result with a link
over capacity is reported as ``MappingInfeasible`` naming the link and its
streams, and nothing is written.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import Any

from attnc.passes.placement.problem import Mapping, MappingInfeasible, MappingProblem, MappingStats
from attnc.passes.placement.sram import sram_need
from attnc.passes.placement.heuristic import (
    ArrayView,
    ProblemView,
    Score,
    State,
    fill_stats,
    heuristic_mapping,
    heuristic_state,
    score,
    to_mapping,
    views,
)

__all__ = ["place_and_route", "heuristic_mapping"]

# Deterministic time for the exact packing when the greedy ones fail.
PACK_DTIME = 2.0
# At most this many tile patterns in the exact packing of alike tiles.
PATTERN_LIMIT = 5000
# Monolithic model when it is this small (kernels, and stream x link flow Booleans).
MONOLITHIC_KERNELS = 40
MONOLITHIC_FLOWS = 10000
# LNS windows: at most this many flow Booleans per window model.
WINDOW_FLOWS = 6000
WINDOW_DTIME = 1.0
BUILD_SECONDS_PER_VAR = 1.2e-4
# One unit of deterministic time took about 3 s on the flow model here; scale
# so that time_limit is roughly wall seconds.
MONOLITHIC_DTIME_PER_SECOND = 0.35
STALL_ROUNDS = 40
# The wall-clock safety net: deterministic time is the binding limit (the mapping, and so the bitstream,
# must not depend on the machine's load), so the net sits far beyond what the deterministic budget takes
# on a loaded machine and only stops a search whose deterministic-time estimate has gone wrong.
SAFETY_SECONDS_PER_SECOND = 20
SAFETY_SECONDS = 120


def place_and_route(
    problem: MappingProblem,
    arch,
    *,
    time_limit: float = 10.0,
    seed: int = 0,
    heuristic_only: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Mapping:
    """Map ``problem`` onto ``arch``. ``time_limit`` bounds the solver's deterministic
    time (roughly seconds on one core); ``progress`` receives one-line messages."""
    start = time.perf_counter()
    say = progress or (lambda _msg: None)
    av, pv = views(problem, arch)
    hint = heuristic_state(av, pv, seed)
    if hint is None and not heuristic_only and problem.kernels:
        # the greedy packings failed: an exact packing (contexts and SRAM only) finds one or proves none
        place, kind = _pack(av, pv, seed, min(PACK_DTIME, time_limit * MONOLITHIC_DTIME_PER_SECOND))
        if kind is not None:
            raise MappingInfeasible(
                f"cannot map onto {arch.name}: CP-SAT proved that no placement fits the {kind} tiles' contexts and"
                f" SRAM ({_packing_summary(av, pv, kind)})")
        if place is not None:
            hint = heuristic_state(av, pv, seed, place)
            say("greedy packing failed; an exact packing found one")
    h_seconds = time.perf_counter() - start
    stats = MappingStats(heuristic_seconds=h_seconds)
    if hint is not None:
        hs = score(av, pv, hint)
        stats.heuristic_max_link_load, stats.heuristic_byte_hops, stats.heuristic_makespan = (
            hs.max_load, hs.byte_hops, hs.makespan)
        say(f"heuristic: makespan {hs.makespan}, {hs.byte_hops} byte-hops, max link {hs.max_load:g} B/cycle"
            + (f" ({hs.overload:g} over capacity)" if hs.overload else ""))
    if heuristic_only or not problem.kernels:
        if hint is None:
            raise MappingInfeasible(
                f"cannot map onto {arch.name}: the greedy packing found no tile with free contexts and SRAM"
                " for every kernel (try without --heuristic-only)")
        stats.status, stats.method, stats.seconds = "HEURISTIC", "heuristic", time.perf_counter() - start
        return _finish(av, pv, hint, fill_stats(stats, av, pv, score(av, pv, hint)))

    solver = _Solver(av, pv, seed, stats, say, deadline=start + SAFETY_SECONDS_PER_SECOND * time_limit + SAFETY_SECONDS)
    flows = len(problem.streams) * len(av.links)
    if len(problem.kernels) <= MONOLITHIC_KERNELS and flows <= MONOLITHIC_FLOWS:
        best, status = solver.monolithic(hint, time_limit)
        stats.method = "monolithic"
    else:
        if hint is None:
            raise MappingInfeasible(
                f"cannot map onto {arch.name}: no packing of {len(problem.kernels)} kernels into tile contexts and"
                " SRAM was found (the counting checks pass; the problem is too large for an exact packing proof)")
        best, status = solver.lns(hint, time_limit)
        stats.method = "lns"
    if best is None:
        if status == "INFEASIBLE":
            raise MappingInfeasible(
                f"cannot map onto {arch.name}: CP-SAT proved that no placement fits the tiles' contexts and SRAM"
                f" ({_packing_summary(av, pv)})")
        if hint is None:
            raise MappingInfeasible(f"cannot map onto {arch.name}: no placement found within {time_limit:g} s")
        best, status = hint, "HEURISTIC"
    # Never worse than the heuristic.
    if hint is not None and score(av, pv, hint).key() < score(av, pv, best).key():
        best, status = hint, "HEURISTIC"
    proven = False
    if score(av, pv, best).overload > 0 and status != "OPTIMAL":
        # over capacity: one more search for any mapping within it, which also proves there is none
        fit, proven = solver.within_capacity(best, time_limit)
        if fit is not None:
            best, status = fit, "FEASIBLE"
            say("a mapping within link capacity found by the capacity-only search")
    stats.status = status
    stats.seconds = time.perf_counter() - start
    return _finish(av, pv, best, fill_stats(stats, av, pv, score(av, pv, best)), proven=proven)


def solve_interruptibly(solver, model) -> int:
    """``solver.solve(model)``, but a KeyboardInterrupt (Ctrl-C) stops the search and is raised once the
    solver has returned, so the caller writes nothing. On the main thread the solve runs on a helper
    thread (CP-SAT releases the GIL) while the main thread waits, where Python delivers SIGINT."""
    if threading.current_thread() is not threading.main_thread():
        return solver.solve(model)
    result: dict[str, object] = {}
    done = threading.Event()

    def work() -> None:
        try:
            result["status"] = solver.solve(model)
        except BaseException as e:  # noqa: BLE001 -- handed to the main thread below
            result["error"] = e
        finally:
            done.set()

    threading.Thread(target=work, name="cp-sat", daemon=True).start()
    # An Event, not Thread.join: an interrupted join(timeout) can mark the thread finished while it runs
    # (CPython 3.11), and leaving the solver running at exit aborts the process.
    try:
        while not done.wait(0.1):
            pass
    except KeyboardInterrupt:
        solver.stop_search()
        done.wait()
        raise
    if "error" in result:
        raise result["error"]  # type: ignore[misc]
    return result["status"]  # type: ignore[return-value]


def _finish(av: ArrayView, pv: ProblemView, st: State, stats: MappingStats, proven: bool = False) -> Mapping:
    sc = score(av, pv, st)
    over = [li for li, load in enumerate(sc.loads) if load > av.cap[li] + 1e-9]
    if over:
        li = max(over, key=lambda i: (sc.loads[i] - av.cap[i], -i))
        a, b = av.links[li]
        users = [pv.streams[si].name for si, path in enumerate(st.routes) if any(
            (p, q) == (a, b) for p, q in zip(path, path[1:]))]
        kernels = sorted({n for si, path in enumerate(st.routes) if pv.streams[si].name in users
                          for n in (pv.streams[si].src, pv.streams[si].dst)})
        proven = proven or stats.status == "OPTIMAL"
        raise MappingInfeasible(
            f"cannot map onto {av.arch.name}: link {av.pos[a]}->{av.pos[b]}: streams need {sc.loads[li]:g} B/cycle,"
            f" capacity {av.cap[li]:g} ({len(over)} link{'s' if len(over) > 1 else ''} over capacity"
            f"{', proven unavoidable' if proven else ' in the best mapping found'}"
            f" after {stats.seconds:.1f} s): streams {_short(users)}; kernels {_short(kernels)}")
    return to_mapping(av, pv, st, stats)


def _short(names: list[str], limit: int = 6) -> str:
    return ", ".join(names) if len(names) <= limit else ", ".join(names[:limit]) + f", ... ({len(names)} in all)"


def _packing_summary(av: ArrayView, pv: ProblemView, only: str | None = None) -> str:
    parts = []
    kinds = [only] if only else sorted({k.kind for k in pv.kernels})
    for kind in kinds:
        ks = [k for k in pv.kernels if k.kind == kind]
        tiles = av.of_kind[kind]
        phased = any(k.phase for k in ks)
        need = sram_need((k.buffer_bytes, k.phase) for k in ks)  # all on one tile: resident + largest phase
        parts.append(
            f"{len(ks)} {kind} kernels needing {need} B{' (resident plus the largest SRAM phase)' if phased else ''}"
            f" in {len(tiles)} tiles of {sum(av.contexts[t] for t in tiles)} contexts and"
            f" {sum(av.sram[t] for t in tiles)} B")
    return "; ".join(parts)


def _sram_limit(m: Any, terms: list[tuple[Any, int, int]], cap: int, fixed: Counter | dict) -> None:
    """One tile's SRAM in a model: ``terms`` are (placement Boolean, buffer bytes, SRAM phase) of the kernels
    that may go there, ``fixed`` the bytes per phase of those already there. Phase 0 holds its buffers all
    the time and each phase p >= 1 reuses the others' addresses, so per p: phase 0 plus phase p fit; with
    phase 0 only, one sum (the constraint the model always had)."""
    from ortools.sat.python.cp_model import LinearExpr

    phases = sorted({p for _v, _b, p in terms if p} | {p for p, b in fixed.items() if p and b})
    resident = [(v, b) for v, b, p in terms if p == 0]
    for p in phases or [0]:
        part = resident + ([(v, b) for v, b, q in terms if q == p] if p else [])
        if part:
            m.add(LinearExpr.weighted_sum([v for v, _ in part], [b for _, b in part])
                  <= cap - fixed.get(0, 0) - (fixed.get(p, 0) if p else 0))



def _solve_packing(m: Any, seed: int, dtime: float) -> tuple[Any, int]:
    """Solve a packing model deterministically (one worker, a deterministic-time budget), Ctrl-C stopping it."""
    from ortools.sat.python import cp_model

    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = dtime
    solver.parameters.catch_sigint_signal = False
    return solver, solve_interruptibly(solver, m)

def _pack(av: ArrayView, pv: ProblemView, seed: int, dtime: float) -> tuple[list[int] | None, str | None]:
    """A placement within every tile's contexts and SRAM, ignoring streams, kind by kind (the kinds do
    not interact): (the placement or None, the first kind CP-SAT proved cannot be packed, or None)."""
    from ortools.sat.python import cp_model

    place = [-1] * len(pv.kernels)
    for kind in sorted({k.kind for k in pv.kernels}):
        by_pattern = _pack_alike(av, pv, kind, seed, dtime)
        if by_pattern == "infeasible":
            return None, kind
        if isinstance(by_pattern, dict):
            for k, t in by_pattern.items():
                place[k] = t
            continue
        ks = sorted((i for i, k in enumerate(pv.kernels) if k.kind == kind),
                    key=lambda i: (-pv.kernels[i].buffer_bytes, pv.kernels[i].phase, i))
        tiles = av.of_kind.get(kind, [])
        m = cp_model.CpModel()
        x = {(k, t): m.new_bool_var("") for k in ks for t in tiles}
        for k in ks:
            m.add_exactly_one(x[k, t] for t in tiles)
        for t in tiles:
            m.add(cp_model.LinearExpr.sum([x[k, t] for k in ks]) <= av.contexts[t])
            _sram_limit(m, [(x[k, t], pv.kernels[k].buffer_bytes, pv.kernels[k].phase) for k in ks], av.sram[t], {})
        # fewer equivalent packings to rule out: interchangeable kernels (same SRAM and SRAM phase) take
        # tiles in order, and, when the tiles are alike, the largest kernel takes the first
        index = {k: sum(i * x[k, t] for i, t in enumerate(tiles)) for k in ks}
        for a, b in zip(ks, ks[1:]):
            ka, kb = pv.kernels[a], pv.kernels[b]
            if (ka.buffer_bytes, ka.phase) == (kb.buffer_bytes, kb.phase):
                m.add(index[a] <= index[b])
        if ks and len({(av.contexts[t], av.sram[t]) for t in tiles}) == 1:
            m.add(x[ks[0], tiles[0]] == 1)
        solver, status = _solve_packing(m, seed, dtime)
        if status == cp_model.INFEASIBLE:
            return None, kind
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None, None
        for (k, t), var in x.items():
            if solver.boolean_value(var):
                place[k] = t
    return place, None


def _pack_alike(av: ArrayView, pv: ProblemView, kind: str, seed: int, dtime: float):
    """Packing one kind's kernels when its tiles are alike, by patterns: a pattern is a multiset of (buffer
    size, SRAM phase) one tile holds (within its contexts and SRAM), and the model only counts how many tiles
    take each pattern -- small, and free of the tiles' symmetry, so CP-SAT proves infeasibility at once where the
    one-hot model searches. Returns kernel -> tile, "infeasible", or None (tiles differ, too many patterns,
    or undecided)."""
    from itertools import combinations_with_replacement

    from ortools.sat.python import cp_model

    tiles = av.of_kind.get(kind, [])
    if not tiles or len({(av.contexts[t], av.sram[t]) for t in tiles}) != 1:
        return None
    ks = [i for i, k in enumerate(pv.kernels) if k.kind == kind]
    need = Counter((pv.kernels[k].buffer_bytes, pv.kernels[k].phase) for k in ks)
    sizes = sorted(need)
    ctx, sram = av.contexts[tiles[0]], av.sram[tiles[0]]
    patterns: list[Counter] = []
    for r in range(1, min(ctx, len(ks)) + 1):
        for combo in combinations_with_replacement(sizes, r):
            c = Counter(combo)
            if sram_need(combo) <= sram and all(c[z] <= need[z] for z in c):
                patterns.append(c)
                if len(patterns) > PATTERN_LIMIT:
                    return None
    m = cp_model.CpModel()
    y = [m.new_int_var(0, len(tiles), "") for _ in patterns]
    m.add(cp_model.LinearExpr.sum(y) <= len(tiles))
    for z in sizes:
        m.add(cp_model.LinearExpr.weighted_sum(y, [p[z] for p in patterns]) == need[z])
    solver, status = _solve_packing(m, seed, dtime)
    if status == cp_model.INFEASIBLE:
        return "infeasible"
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    pool = {z: [k for k in ks if (pv.kernels[k].buffer_bytes, pv.kernels[k].phase) == z] for z in sizes}
    out: dict[int, int] = {}
    free = iter(tiles)
    for p, var in zip(patterns, y):
        for _ in range(solver.value(var)):
            t = next(free)
            for z, n in sorted(p.items()):
                for _ in range(n):
                    out[pool[z].pop()] = t
    return out


class _Solver:
    def __init__(self, av: ArrayView, pv: ProblemView, seed: int, stats: MappingStats, say, deadline: float):
        self.av, self.pv, self.seed, self.stats, self.say = av, pv, seed, stats, say
        self.deadline = deadline
        self.bh_lb_int = sum(
            pv.b_int[si] * min(av.dist[x][y] for x in pv.cand[pv.src[si]] for y in pv.cand[pv.dst[si]])
            for si in range(len(pv.streams)) if pv.cross[si])
        # per phase: at least its length and its largest piece of work
        self.top_lb = [max([n] + [w for parts in pv.w_int for j, w in parts if j == jj])
                       for jj, n in enumerate(pv.len_int)]
        narrow = min(av.cap, default=1.0)
        self.top_ub = [n + sum(w for parts in pv.w_int for j, w in parts if j == jj)
                       + sum(w for si in range(len(pv.streams)) for j, w in pv.t_int.get((si, narrow), ()) if j == jj)
                       for jj, n in enumerate(pv.len_int)]
        # a route visits each tile at most once, so a stream crosses fewer links than there are tiles
        self.w2 = sum(pv.b_int) * len(av.pos) + 1

    def weights(self) -> int:
        """W1 > W2 * (largest makespan estimate) + largest byte-hops, so the weighted objective is
        lexicographic."""
        return (sum(self.top_ub) + 1) * self.w2

    # ------------------------------------------------------------------ model

    def solve(self, st: State | None, free_k: list[int], cand: dict[int, list[int]], free_s: list[int],
              region: set[int] | None, dtime: float, w1: int, symmetry: bool = False, capacity_only: bool = False):
        """Re-place ``free_k`` (on ``cand`` tiles) and re-route ``free_s`` (inside
        ``region``; None = the whole array) with everything else as in ``st``.
        Returns (new state or None, status name, objective bound, variables). ``capacity_only``: no
        objective, every link within capacity (a feasibility search, or a proof that none is)."""
        from ortools.sat.python import cp_model

        av = self.av
        m = cp_model.CpModel()
        nodes = range(len(av.pos)) if region is None else sorted(region)
        node_set = set(nodes)
        links = [li for li, (a, b) in enumerate(av.links) if a in node_set and b in node_set]
        # the variables are created in this order (placement, makespan, routes, load): the solver's
        # search, and so its answer for a seed, depends on it
        x, tops = self._placement(m, st, free_k, cand)
        f = self._routing(m, st, x, free_k, free_s, nodes, links)
        self._link_time(m, st, f, free_s, tops)
        makespan = cp_model.LinearExpr.sum(tops)
        over = self._overload(m, st, f, free_s, region, links)
        byte_hops = cp_model.LinearExpr.weighted_sum(list(f.values()), [self.pv.b_int[si] for (si, _li) in f])
        if region is None and len(free_k) == len(self.pv.kernels):
            m.add(byte_hops >= self.bh_lb_int)
        if capacity_only:
            # integer rates round up (less than a unit per stream): allow that much, so that INFEASIBLE
            # proves no mapping is within capacity in bytes per cycle; a mapping found is checked in them
            m.add(over <= len(free_s))
        else:
            m.minimize(w1 * over + self.w2 * makespan + byte_hops)

        hint_state = st
        if symmetry:
            hint_state = self._symmetry(m, x, st)
        if hint_state is not None:
            self._hint(m, x, f, hint_state, free_k, free_s, links)
        return self._run(m, st, x, f, free_s, links, region, dtime)

    def _placement(self, m, st: State | None, free_k: list[int], cand: dict[int, list[int]]):
        """One-hot placement of the free kernels, with contexts, SRAM (per SRAM phase) and work per tile and
        schedule phase counted against what the fixed kernels already use. Returns the placement variables and the makespan
        estimate (the sum of the phases' tops: each at least its length and every tile's work in it)."""
        from ortools.sat.python.cp_model import LinearExpr

        av, pv = self.av, self.pv
        free_set = set(free_k)
        x: dict[tuple[int, int], object] = {}
        for k in free_k:
            for t in cand[k]:
                x[k, t] = m.new_bool_var("")
            m.add_exactly_one(x[k, t] for t in cand[k])
        on_tile: dict[int, list[int]] = defaultdict(list)
        for (k, t) in x:
            on_tile[t].append(k)

        # Fixed usage by kernels outside the window.
        fctx, fbusy = Counter(), Counter()
        fsram: dict[int, Counter] = defaultdict(Counter)  # tile -> SRAM phase -> bytes
        if st is not None:
            for k, t in enumerate(st.place):
                if k not in free_set:
                    fctx[t] += 1
                    fsram[t][pv.kernels[k].phase] += pv.kernels[k].buffer_bytes
                    for j, w in pv.w_int[k]:
                        fbusy[t, j] += w
        fixed_top = [self.top_lb[j] for j in range(len(pv.len_int))]
        for (t, j), w in fbusy.items():
            fixed_top[j] = max(fixed_top[j], w)
        tops = [m.new_int_var(fixed_top[j], max(fixed_top[j], self.top_ub[j]), "") for j in range(len(pv.len_int))]
        for t, ks in on_tile.items():
            xs = [x[k, t] for k in ks]
            m.add(LinearExpr.sum(xs) <= av.contexts[t] - fctx[t])
            _sram_limit(m, [(x[k, t], pv.kernels[k].buffer_bytes, pv.kernels[k].phase) for k in ks], av.sram[t],
                        fsram.get(t, {}))
            for j in range(len(pv.len_int)):
                parts = [(x[k, t], w) for k in ks for jj, w in pv.w_int[k] if jj == j and w > 0]
                if parts:
                    m.add(tops[j] >= fbusy[t, j] + LinearExpr.weighted_sum([v for v, _ in parts],
                                                                           [w for _, w in parts]))
        return x, tops

    def _link_time(self, m, st: State | None, f, free_s: list[int], tops) -> None:
        """Each link's time per phase (the bytes routed over it then, over its bandwidth) bounds the
        phase's top, like a tile's work: the fixed streams' time plus the free streams routed over it."""
        from ortools.sat.python.cp_model import LinearExpr

        av, pv = self.av, self.pv
        fs_set = set(free_s)
        fixed: dict[tuple[int, int], int] = defaultdict(int)
        if st is not None:
            for si, path in enumerate(st.routes):
                if si not in fs_set:
                    for p, q in zip(path, path[1:]):
                        li = av.link_index[(p, q)]
                        for j, w in pv.t_int[si, av.cap[li]]:
                            fixed[li, j] += w
        terms: dict[tuple[int, int], list] = defaultdict(list)
        for (si, li), var in f.items():
            for j, w in pv.t_int[si, av.cap[li]]:
                if w > 0:
                    terms[li, j].append((var, w))
        for (li, j), parts in sorted(terms.items()):
            m.add(tops[j] >= fixed[li, j] + LinearExpr.weighted_sum([v for v, _ in parts], [w for _, w in parts]))
        for (li, j), w in sorted(fixed.items()):
            if (li, j) not in terms and w > 0:
                m.add(tops[j] >= w)

    def _routing(self, m, st: State | None, x, free_k: list[int], free_s: list[int], nodes, links: list[int]):
        """Flow routing of the free streams: one Boolean per stream and link, conserved at every tile
        between where the stream's ends are placed."""
        from ortools.sat.python.cp_model import LinearExpr

        av, pv = self.av, self.pv
        free_set = set(free_k)

        def at(k: int, v: int):
            if k in free_set:
                return x.get((k, v), 0)
            return 1 if st.place[k] == v else 0

        f: dict[tuple[int, int], object] = {}
        for si in free_s:
            a, b = pv.src[si], pv.dst[si]
            if a == b:
                continue
            for li in links:
                f[si, li] = m.new_bool_var("")
            for v in nodes:
                out = [f[si, li] for li in av.out_links[v] if (si, li) in f]
                inn = [f[si, li] for li in av.in_links[v] if (si, li) in f]
                m.add(LinearExpr.sum(out) - LinearExpr.sum(inn) == at(a, v) - at(b, v))
                # A tile forwards a stream at most once: no loops through it.
                if len(inn) > 1:
                    m.add_at_most_one(inn)
        return f

    def _overload(self, m, st: State | None, f, free_s: list[int], region: set[int] | None, links: list[int]):
        """How far the fullest link is over its capacity (0 within it): the fixed streams' load plus the
        free streams routed over it, less its capacity. In a window only the window's links count (the
        others' load cannot change; LNS compares whole states)."""
        from ortools.sat.python.cp_model import LinearExpr

        av, pv = self.av, self.pv
        fs_set = set(free_s)
        fixed_load = [0] * len(av.links)
        if st is not None:
            for si, path in enumerate(st.routes):
                if si not in fs_set:
                    for p, q in zip(path, path[1:]):
                        fixed_load[av.link_index[(p, q)]] += pv.r_int[si]
        ub = max(fixed_load, default=0) + sum(pv.r_int[si] for si in free_s)
        over = m.new_int_var(0, max(ub, 0), "link_overload")
        link_set = set(links)
        for li in range(len(av.links)):
            on = [si for si in free_s if (si, li) in f] if li in link_set else []
            if on:
                m.add(over >= fixed_load[li] - pv.cap_int[li]
                      + LinearExpr.weighted_sum([f[si, li] for si in on], [pv.r_int[si] for si in on]))
        return over

    def _run(self, m, st: State | None, x, f, free_s: list[int], links: list[int], region: set[int] | None,
             dtime: float):
        """Solve on one worker (reproducible for a seed) and read the placement and paths back."""
        from ortools.sat.python import cp_model

        av, pv = self.av, self.pv
        solver = cp_model.CpSolver()
        p = solver.parameters
        p.num_workers = 1
        p.random_seed = self.seed
        p.max_deterministic_time = dtime
        p.max_time_in_seconds = max(1.0, self.deadline - time.perf_counter())
        # Ctrl-C is ours, not the solver's: CP-SAT's own handler would end the search and let attnc go on.
        p.catch_sigint_signal = False
        if region is not None:
            p.cp_model_probing_level = 0
            p.symmetry_level = 0
        status = solve_interruptibly(solver, m)
        name = solver.status_name(status)
        nvars = len(m.proto.variables)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None, name, None, nvars, _dtime(solver)
        place = list(st.place) if st is not None else [-1] * len(pv.kernels)
        for (k, t), var in x.items():
            if solver.boolean_value(var):
                place[k] = t
        routes = [list(r) for r in st.routes] if st is not None else [[] for _ in pv.streams]
        for si in free_s:
            a, b = place[pv.src[si]], place[pv.dst[si]]
            used = [av.links[li] for li in links if (si, li) in f and solver.boolean_value(f[si, li])]
            routes[si] = _extract_path(used, a, b)
        return State(place, routes), name, solver.best_objective_bound, nvars, _dtime(solver)

    def _hint(self, m, x, f, st: State, free_k, free_s, links) -> None:
        for (k, t), var in x.items():
            m.add_hint(var, int(st.place[k] == t))
        av = self.av
        for si in free_s:
            on = {av.link_index[(p, q)] for p, q in zip(st.routes[si], st.routes[si][1:])}
            for li in links:
                if (si, li) in f:
                    m.add_hint(f[si, li], int(li in on))

    # ------------------------------------------------------------------ symmetry

    def _symmetry(self, m, x, st: State | None) -> State | None:
        """Order the anchor tiles of interchangeable groups (heads) and relabel the
        hint to match, else CP-SAT would reject it."""
        pv = self.pv
        classes = interchangeable_groups(pv)
        if not classes:
            return st
        for cls in classes:
            anchors = [members[0] for members in cls]
            idx = [sum(t * x[a, t] for t in self.pv.cand[a]) for a in anchors]
            for u, v in zip(idx, idx[1:]):
                m.add(u <= v)
        if st is None:
            return None
        place = list(st.place)
        perm: dict[int, int] = {}     # new kernel -> old kernel whose placement it takes
        for cls in classes:
            order = sorted(range(len(cls)), key=lambda g: (st.place[cls[g][0]], g))
            for g_new, g_old in enumerate(order):
                for k_new, k_old in zip(cls[g_new], cls[g_old]):
                    perm[k_new] = k_old
                    place[k_new] = st.place[k_old]
        # Streams follow their ends: new stream (a, b) takes the route of the old stream (perm a, perm b).
        pool: dict[tuple, list[int]] = defaultdict(list)
        for si, s in enumerate(pv.streams):
            pool[(pv.src[si], pv.dst[si], s.bytes, s.rate)].append(si)
        routes = [list(r) for r in st.routes]
        for si, s in enumerate(pv.streams):
            a, b = perm.get(pv.src[si], pv.src[si]), perm.get(pv.dst[si], pv.dst[si])
            routes[si] = list(st.routes[pool[(a, b, s.bytes, s.rate)].pop(0)]) if pool[(a, b, s.bytes, s.rate)] else routes[si]
        return State(place, routes)

    # ------------------------------------------------------------------ strategies

    def monolithic(self, hint: State | None, time_limit: float):
        pv = self.pv
        w1 = self.weights()
        every = list(range(len(pv.kernels)))
        cand = {k: pv.cand[k] for k in every}
        new, name, bound, nvars, _dt = self.solve(hint, every, cand, list(range(len(pv.streams))), None,
                                                  time_limit * MONOLITHIC_DTIME_PER_SECOND, w1, symmetry=True)
        self.stats.variables = nvars
        if new is not None:
            self.say(f"CP-SAT {name}: {nvars} variables")
        return new, name

    def within_capacity(self, hint: State, time_limit: float) -> tuple[State | None, bool]:
        """Any mapping with every link within capacity, searched on the whole model from ``hint``:
        (the mapping or None, whether CP-SAT proved there is none)."""
        pv = self.pv
        every = list(range(len(pv.kernels)))
        new, name, _bound, _nvars, _dt = self.solve(
            hint, every, {k: pv.cand[k] for k in every}, list(range(len(pv.streams))), None,
            time_limit * MONOLITHIC_DTIME_PER_SECOND, self.weights(), symmetry=True, capacity_only=True)
        if new is not None and score(self.av, pv, new).overload > 0:
            new = None  # within the rounding slack only: over capacity in bytes per cycle
        return new, name == "INFEASIBLE"

    def lns(self, start: State, time_limit: float):
        av, pv = self.av, self.pv
        rng = random.Random(self.seed)
        cur = start
        cur_sc = score(av, pv, cur)
        w1 = self.weights()
        spent, rounds, size, improved, stall = 0.0, 0, 4, False, 0
        width = max(p[0] for p in av.pos) + 1
        height = max(p[1] for p in av.pos) + 1
        groups = sorted({k.group for k in pv.kernels if k.group})
        kinds_of_round = ["hot", "window", "group", "window"] if groups else ["hot", "window"]
        max_vars = 0
        while spent < time_limit - 1e-6 and stall < STALL_ROUNDS and time.perf_counter() < self.deadline:
            strategy = kinds_of_round[rounds % len(kinds_of_round)]
            if strategy == "hot" and cur_sc.overload:  # around the fullest link, its streams free to move
                li = max(range(len(av.links)), key=lambda i: (cur_sc.loads[i] - av.cap[i], -i))
                cx, cy = av.pos[av.links[li][0]]
                x0, y0 = cx - size // 2 + rng.randrange(2), cy - size // 2 + rng.randrange(2)
                hot = [si for si, path in enumerate(cur.routes)
                       if any(av.link_index[(p, q)] == li for p, q in zip(path, path[1:]))]
            elif strategy == "hot":  # around the tile that stretches a phase most
                cx, cy = av.pos[_stretching_tile(pv, cur, rng)]
                x0, y0 = cx - size // 2 + rng.randrange(2), cy - size // 2 + rng.randrange(2)
                hot = []
            else:
                x0, y0 = rng.randrange(max(1, width - size + 1)), rng.randrange(max(1, height - size + 1))
                hot = []
            window = {t for t, (px, py) in enumerate(av.pos) if x0 <= px < x0 + size and y0 <= py < y0 + size}
            if strategy == "group":
                g = groups[rng.randrange(len(groups))]
                free_k = [k for k in range(len(pv.kernels)) if pv.kernels[k].group == g]
                window = {cur.place[k] for k in free_k}
                xs = [av.pos[t][0] for t in window]
                ys = [av.pos[t][1] for t in window]
                window = {t for t, (px, py) in enumerate(av.pos)
                          if min(xs) - 1 <= px <= max(xs) + 1 and min(ys) - 1 <= py <= max(ys) + 1}
            else:
                free_k = [k for k in range(len(pv.kernels)) if cur.place[k] in window]
            free_set = set(free_k)
            free_s = sorted({si for k in free_k for si in pv.incident[k]} | set(hot))
            cand = {k: [t for t in pv.cand[k] if t in window] or [cur.place[k]] for k in free_k}
            for k in free_k:
                if cur.place[k] not in cand[k]:
                    cand[k].append(cur.place[k])
            region = set(window)
            for si in free_s:
                for k in (pv.src[si], pv.dst[si]):
                    region |= set(cand[k]) if k in free_set else {cur.place[k]}
                region |= set(cur.routes[si])
            region = _box(av, region, margin=1)
            nlinks = sum(1 for a, b in av.links if a in region and b in region)
            if len(free_s) * nlinks > WINDOW_FLOWS and size > 2:
                size -= 1
                continue
            dt = min(WINDOW_DTIME, time_limit - spent)
            new, name, _bound, nvars, used = self.solve(cur, free_k, cand, free_s, region, dt, w1)
            # Charge model building too (it costs about as much as solving a small
            # window), by a deterministic measure: the number of variables.
            spent += used + nvars * BUILD_SECONDS_PER_VAR
            rounds += 1
            stall += 1
            max_vars = max(max_vars, nvars)
            if new is not None:
                sc = score(av, pv, new)
                if _lns_key(pv, sc) <= _lns_key(pv, cur_sc):
                    if _lns_key(pv, sc) < _lns_key(pv, cur_sc):
                        improved, stall = True, 0
                        self.say(f"LNS round {rounds} ({strategy}): makespan {sc.makespan}, "
                                 f"{sc.byte_hops} byte-hops, max link {sc.max_load:g} B/cycle")
                    cur, cur_sc = new, sc
            if name == "OPTIMAL" and size < max(width, height):
                size += 1
            elif name != "OPTIMAL" and size > 3:
                size -= 1
        if time.perf_counter() >= self.deadline:
            self.say("LNS stopped by the wall-clock safety net, not its deterministic budget: this mapping may "
                     "differ from another run's")
        self.stats.lns_rounds = rounds
        self.stats.variables = max_vars
        return cur, ("FEASIBLE" if improved or rounds else "HEURISTIC")


def _box(av: ArrayView, tiles: set[int], margin: int) -> set[int]:
    xs = [av.pos[t][0] for t in tiles]
    ys = [av.pos[t][1] for t in tiles]
    x0, x1, y0, y1 = min(xs) - margin, max(xs) + margin, min(ys) - margin, max(ys) + margin
    return {t for t, (px, py) in enumerate(av.pos) if x0 <= px <= x1 and y0 <= py <= y1}


def _extract_path(links: list[tuple[int, int]], a: int, b: int) -> list[int]:
    """The path from a to b through the links a flow uses (BFS: ignores any stray cycle)."""
    if a == b:
        return [a]
    succ: dict[int, list[int]] = defaultdict(list)
    for p, q in links:
        succ[p].append(q)
    prev = {a: a}
    frontier = [a]
    while frontier and b not in prev:
        nxt = []
        for v in frontier:
            for w in sorted(succ[v]):
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    if b not in prev:
        raise RuntimeError("CP-SAT flow does not connect its stream's ends")  # a model bug, not user input
    path = [b]
    while path[-1] != a:
        path.append(prev[path[-1]])
    return path[::-1]


def interchangeable_groups(pv: ProblemView) -> list[list[list[int]]]:
    """Classes of groups that can swap places wholesale: same kernels (kind, SRAM,
    cycles, pipeline stage) and swapping two of them maps the stream multiset onto
    itself. Each class is a list of groups, each a list of kernel indices aligned
    so that position i plays the same role in every group."""
    groups: dict[str, list[int]] = defaultdict(list)
    for ki, k in enumerate(pv.kernels):
        if k.group:
            groups[k.group].append(ki)

    def role(ki: int):
        k = pv.kernels[ki]
        return (k.pipeline[1] if k.pipeline else -1, k.kind, k.buffer_bytes, k.cycles, pv.w_int[ki], k.phase)

    for g in groups:
        groups[g].sort(key=lambda ki: (role(ki), ki))
    by_sig: dict[tuple, list[str]] = defaultdict(list)
    for g in sorted(groups):
        # Equal roles within a group are aligned by problem order; the stream check
        # below rejects any alignment that is not a true symmetry.
        by_sig[tuple(role(ki) for ki in groups[g])].append(g)
    base = Counter((pv.src[si], pv.dst[si], s.bytes, s.rate) for si, s in enumerate(pv.streams))
    def swaps(ref: list[int], other: list[int]) -> bool:
        swap = {}
        for a, b in zip(ref, other):
            swap[a], swap[b] = b, a
        moved = Counter((swap.get(pv.src[si], pv.src[si]), swap.get(pv.dst[si], pv.dst[si]), s.bytes, s.rate)
                        for si, s in enumerate(pv.streams))
        return moved == base

    classes: list[list[list[int]]] = []
    for names in by_sig.values():
        found: list[list[list[int]]] = []
        for g in names:
            for cls in found:
                if swaps(cls[0], groups[g]):
                    cls.append(groups[g])
                    break
            else:
                found.append([groups[g]])
        classes += [cls for cls in found if len(cls) > 1]
    return classes


def _dtime(solver) -> float:
    value = solver.deterministic_time
    return float(value() if callable(value) else value)


def _lns_key(pv: ProblemView, sc: Score) -> tuple:
    """LNS accepts a window's result when this does not grow: the overload, then the
    total excess over all links (a window can empty one of several full links),
    then the makespan estimate, then the crowding (``Score.crowd``) and the kernels stacked or gated on a
    tile (``Score.stacked``): the model does not see them, so a window may not add them; then byte-hops."""
    # in bytes per cycle, as the final check counts: the model's integer rates round up, so a link exactly
    # at capacity can look over it there
    excess = sum(max(0.0, load - cap - 1e-9) for load, cap in zip(sc.loads, pv.av_cap)) if sc.overload else 0.0
    return (round(sc.overload, 9), round(excess, 9), sc.m_int, sc.crowd, sc.stacked, sc.bh_int)


def _stretching_tile(pv: ProblemView, st: State, rng: random.Random) -> int:
    """The tile with the most work in the phase it stretches most (a random kernel's tile when none
    stretches one)."""
    busy: dict[tuple[int, int], int] = defaultdict(int)
    for k, t in enumerate(st.place):
        for j, w in pv.w_int[k]:
            busy[t, j] += w
    best = max(busy.items(), key=lambda kv: (kv[1] - pv.len_int[kv[0][1]], -kv[0][0]), default=None)
    if best is None or best[1] <= pv.len_int[best[0][1]]:
        return st.place[rng.randrange(len(st.place))] if st.place else 0
    return best[0][0]
