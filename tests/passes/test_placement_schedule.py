"""The placer's hard link capacity and its schedule-aware makespan estimate, on the tiny array.

tiny's layout (x right, y down): dma row on top and bottom, then ``B C C S`` and ``M C C D``: one butterfly
tile (0, 1), one sfu tile (3, 1), one memory tile (0, 2), four compute tiles in the middle.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest

from attnc.arch import load_arch
from attnc.passes.placement.cpsat import heuristic_mapping, place_and_route
from attnc.passes.placement.phases import phases_of
from attnc.passes.placement.place_route import throttled
from attnc.passes.placement.problem import KernelSpec, MappingInfeasible, MappingProblem, StreamSpec, validate


@pytest.fixture(scope="module")
def tiny():
    return load_arch("tiny")


def _hops(mapping, name: str) -> int:
    return len(mapping.routes[name]) - 1


def test_the_only_mapping_within_capacity_takes_a_detour(tiny):
    # Two butterfly kernels (tiny's one butterfly tile) each stream 3/4 of a link to the one sfu tile,
    # three tiles east on the same row: both on the straight path would need 1.5 links, so one of them
    # must leave north or south and go round (5 hops instead of 3).
    cap = tiny.noc.link_bytes_per_cycle
    problem = MappingProblem(
        [KernelSpec("b1", "butterfly", 16, 100), KernelSpec("b2", "butterfly", 16, 100),
         KernelSpec("s", "sfu", 16, 100)],
        [StreamSpec("b1->s", "b1", "s", 1000, 0.75 * cap), StreamSpec("b2->s", "b2", "s", 1000, 0.75 * cap)])
    for m in (heuristic_mapping(problem, tiny), place_and_route(problem, tiny, time_limit=2)):
        assert validate(problem, tiny, m) == []
        assert sorted(_hops(m, s) for s in ("b1->s", "b2->s")) == [3, 5]
        assert m.stats.max_link_load == pytest.approx(0.75 * cap)


def over_the_butterfly_tile(tiny) -> MappingProblem:
    # Two butterfly kernels each send two streams of 3/4 of a link: four streams leave the butterfly
    # tile, which has three out-links, so two share one (1.5 links). No counting check sees it (each
    # kernel alone fits), so the solver has to.
    cap = tiny.noc.link_bytes_per_cycle
    kernels = [KernelSpec("b1", "butterfly", 16, 100), KernelSpec("b2", "butterfly", 16, 100),
               KernelSpec("s", "sfu", 16, 100), KernelSpec("c1", "compute", 16, 100),
               KernelSpec("c2", "compute", 16, 100)]
    streams = [StreamSpec(f"{a}->{b}", a, b, 1000, 0.75 * cap) for a, b in
               (("b1", "s"), ("b1", "c1"), ("b2", "s"), ("b2", "c2"))]
    return MappingProblem(kernels, streams)


def test_a_mapping_over_capacity_is_refused_naming_the_link(tiny):
    problem = over_the_butterfly_tile(tiny)
    cap = tiny.noc.link_bytes_per_cycle
    with pytest.raises(MappingInfeasible) as info:
        place_and_route(problem, tiny, time_limit=2)
    text = str(info.value)
    assert "link (0, 1)->" in text and f"need {1.5 * cap:g} B/cycle, capacity {cap:g}" in text
    assert "proven unavoidable" in text and "streams b" in text and "b1" in text
    # the greedy mapping alone is refused too (never written over capacity)
    with pytest.raises(MappingInfeasible, match=rf"link \(0, 1\)->.* B/cycle, capacity {cap:g}"):
        place_and_route(problem, tiny, heuristic_only=True)
    # at half the rates it fits, and the slowdown is charged to the kernels whose streams slowed
    half = throttled(problem, 0.5)
    m = place_and_route(half, tiny, time_limit=2)
    assert validate(half, tiny, m) == []
    assert half.kernel("b1").cycles == math.ceil(1000 / (0.375 * cap))
    assert half.kernel("b1").cycles > problem.kernel("b1").cycles


def fan_out(window_b, window_c) -> MappingProblem:
    # "a" feeds "b" and "c" (all compute); placed together, no stream crosses a link.
    kernels = [KernelSpec("a", "compute", 16, 1000, window=(0.0, 1000.0)),
               KernelSpec("b", "compute", 16, 1000, window=window_b),
               KernelSpec("c", "compute", 16, 1000, window=window_c)]
    streams = [StreamSpec("a->b", "a", "b", 4000, 4.0), StreamSpec("a->c", "a", "c", 4000, 4.0)]
    return MappingProblem(kernels, streams)


@pytest.mark.parametrize("solver", ["cpsat", "heuristic"])
def test_kernels_that_run_together_do_not_stack(tiny, solver):
    # a, b, c run at the same time (a streams to both as it computes): sharing a tile would make them
    # take turns, so they go on three tiles although that costs byte-hops.
    problem = fan_out((0.0, 1000.0), (0.0, 1000.0))
    m = place_and_route(problem, tiny, time_limit=2, heuristic_only=solver == "heuristic")
    assert validate(problem, tiny, m) == []
    assert len({m.placement[k] for k in "abc"}) == 3
    assert m.stats.makespan == 1000 and m.stats.byte_hops > 0


@pytest.mark.parametrize("solver", ["cpsat", "heuristic"])
def test_kernels_that_run_one_after_another_share_a_tile(tiny, solver):
    # a, then b, then c: one tile runs them in turn at no cost to the schedule, and no byte crosses a link.
    problem = fan_out((1000.0, 2000.0), (2000.0, 3000.0))
    m = place_and_route(problem, tiny, time_limit=2, heuristic_only=solver == "heuristic")
    assert validate(problem, tiny, m) == []
    assert len({m.placement[k] for k in "abc"}) == 1
    assert m.stats.makespan == 3000 and m.stats.byte_hops == 0
    # without a schedule every kernel is taken as running all the time: they spread again
    unknown = MappingProblem([replace(k, window=None) for k in problem.kernels], problem.streams)
    m = place_and_route(unknown, tiny, time_limit=2, heuristic_only=solver == "heuristic")
    assert len({m.placement[k] for k in "abc"}) == 3


def test_phases_split_work_by_overlap_and_merge_short_segments():
    ks = [KernelSpec("a", "compute", 1, 100, window=(0.0, 100.0)),
          KernelSpec("b", "compute", 1, 80, window=(50.0, 150.0)),
          KernelSpec("c", "compute", 1, 10, window=(150.0, 160.0)),
          KernelSpec("d", "dma", 1, 300, window=(150.0, 160.0))]   # more work than its window
    ph = phases_of(MappingProblem(ks, []))
    assert ph.lengths == (50.0, 50.0, 50.0, 10.0)
    assert ph.work[1] == ((1, 40.0), (2, 40.0))
    # busy at most all of its window: d's cycles beyond it would be a floor no placement lowers
    assert ph.work[3] == ((3, 10.0),)
    # on one tile: a and b overlap in [50, 100), stretching it to 50 + 40; c alone keeps its window
    assert ph.estimate([0, 0, 0, 1]) == 50 + 90 + 50 + 10
    assert ph.estimate([0, 1, 0, 2]) == 50 + 50 + 50 + 10
    merged = phases_of(MappingProblem(ks, []), max_phases=2)
    assert len(merged.lengths) == 2 and sum(merged.lengths) == 160.0


@pytest.mark.parametrize("solver", ["cpsat", "heuristic"])
def test_bursts_that_would_share_a_link_take_separate_routes(tiny, solver):
    # Both butterfly kernels (tiny's one butterfly tile) finish at 100, and the sfu kernel starts at 200
    # once it has both their outputs: each output crosses in the gap, 100 cycles at full link bandwidth.
    # On one straight path they would share its links and take 200; the only way to keep the gap is a
    # detour for one of them -- the rates are far within capacity, so only the links' time tells. (Both
    # on one tile, b1 and b2 take turns: 200 cycles, then the gap, then s: 400; sharing a path, 500.)
    cap = tiny.noc.link_bytes_per_cycle
    problem = MappingProblem(
        [KernelSpec("b1", "butterfly", 16, 100, window=(0.0, 100.0)),
         KernelSpec("b2", "butterfly", 16, 100, window=(0.0, 100.0)),
         KernelSpec("s", "sfu", 16, 100, window=(200.0, 300.0))],
        [StreamSpec("b1->s", "b1", "s", 100 * cap, 1.0), StreamSpec("b2->s", "b2", "s", 100 * cap, 1.0)])
    m = place_and_route(problem, tiny, time_limit=2, heuristic_only=solver == "heuristic")
    assert validate(problem, tiny, m) == []
    assert sorted(_hops(m, s) for s in ("b1->s", "b2->s")) == [3, 5]
    assert m.stats.makespan == 400


def test_a_packing_no_count_rules_out_is_proven_impossible(tiny):
    # 2n+1 kernels of 35% of a compute tile's SRAM on n tiles: two fit a tile, three do not, so one is
    # left over, though their total (and each one alone) fits and no kernel needs half a tile
    tiles = tiny.tiles_of("compute")
    size = int(0.35 * tiles[0].sram_bytes)
    ks = [KernelSpec(f"k{i}", "compute", size, 10) for i in range(2 * len(tiles) + 1)]
    with pytest.raises(MappingInfeasible, match="CP-SAT proved that no placement fits the compute tiles"):
        place_and_route(MappingProblem(ks, []), tiny, time_limit=2)
    # with one fewer, the exact packing (or the greedy one) maps them two to a tile
    m = place_and_route(MappingProblem(ks[:-1], []), tiny, time_limit=2)
    assert validate(MappingProblem(ks[:-1], []), tiny, m) == []


def test_exact_packing_of_alike_tiles_respects_contexts_and_sram(tiny):
    from attnc.passes.placement.cpsat import _pack
    from attnc.passes.placement.heuristic import views

    tiles = tiny.tiles_of("compute")
    sram = tiles[0].sram_bytes
    # 35% + 35% + 30% fills a tile exactly: the only packing uses every tile so
    ks = [KernelSpec(f"a{i}", "compute", int(0.35 * sram), 1) for i in range(2 * len(tiles))]
    ks += [KernelSpec(f"b{i}", "compute", sram - 2 * int(0.35 * sram), 1) for i in range(len(tiles))]
    problem = MappingProblem(ks, [])
    av, pv = views(problem, tiny)
    place, kind = _pack(av, pv, 0, 1.0)
    assert kind is None and place is not None
    used: dict[int, list[int]] = {}
    for k, t in enumerate(place):
        used.setdefault(t, []).append(pv.kernels[k].buffer_bytes)
    assert len(used) == len(tiles)
    assert all(sum(b) == sram and len(b) == 3 for b in used.values())


def _ffn(phase_b: int, window_b: tuple[float, float], parts: int = 2) -> MappingProblem:
    """Two GEMM halves of ``parts`` grid parts each, SRAM phases 1 and ``phase_b`` (the second's input comes
    out of DRAM as the first writes it), a byte stream from each first part to its second part that
    byte-hops would keep on one tile, and a DMA load into the sfu tile whose link time floors every
    phase of the estimate above what any compute tile holds."""
    ks = [KernelSpec(f"a{i}", "compute", 16, 1000, phase=1, window=(0.0, 1000.0)) for i in range(parts)]
    ks += [KernelSpec(f"b{i}", "compute", 16, 900, phase=phase_b, window=window_b) for i in range(parts)]
    ks += [KernelSpec("p", "dma", 16, 3200, window=(0.0, 3200.0)), KernelSpec("q", "sfu", 16, 3200, window=(0.0, 3200.0))]
    streams = [StreamSpec("p->q", "p", "q", 16 * 3200 * 3, 8.0)]
    streams += [StreamSpec(f"a{i}->b{i}", f"a{i}", f"b{i}", 4000, 4.0) for i in range(parts)]
    return MappingProblem(ks, streams)


@pytest.mark.parametrize("solver", ["cpsat", "heuristic"])
def test_sram_phases_that_run_together_do_not_share_a_tile(tiny, solver):
    # phase 2 on a tile with phase 1 waits (the gate) for it to end: while free tiles exist, none holds both,
    # although the estimate, floored by the link, would not see it and byte-hops would pair them
    problem = _ffn(2, (100.0, 1600.0))
    m = place_and_route(problem, tiny, time_limit=2, heuristic_only=solver == "heuristic")
    assert validate(problem, tiny, m) == []
    tiles = {k: m.placement[k] for k in ("a0", "a1", "b0", "b1")}
    assert {tiles["a0"], tiles["a1"]}.isdisjoint({tiles["b0"], tiles["b1"]})
    # one after the other the gate costs nothing: byte-hops pair them
    problem = _ffn(2, (1000.0, 1900.0))
    m = place_and_route(problem, tiny, time_limit=2, heuristic_only=solver == "heuristic")
    assert m.placement["a0"] == m.placement["b0"] and m.placement["a1"] == m.placement["b1"]


def test_only_sram_phases_busy_through_their_shared_window_clash(tiny):
    from attnc.passes.placement.heuristic import views

    _av, pv = views(_ffn(2, (100.0, 1600.0)), tiny)
    assert pv.clash == {("phase", 1): {("phase", 2)}, ("phase", 2): {("phase", 1)}}
    # the second busy a third of the time they share: left to the estimate
    assert views(_ffn(2, (500.0, 3200.0)), tiny)[1].clash == {}
    # one after the other: nothing to clash; one phase: the same-phase stacking rule, not this one
    assert views(_ffn(2, (1000.0, 1900.0)), tiny)[1].clash == {}
    assert views(_ffn(1, (100.0, 1600.0)), tiny)[1].clash == {}


def test_phases_with_more_parts_than_tiles_do_not_clash(tiny):
    # as many parts per phase as compute tiles (Transformer-XL's FFN1 and FFN2 on cloud: 64 each on 64): they
    # cannot be kept apart, and counting their pairs made the placer stack one phase's parts three and four to a
    # tile (178K -> 416K cycles). No clash: each tile holds one part of each phase, none two of one
    from attnc.passes.placement.heuristic import views

    n = len(tiny.tiles_of("compute"))
    problem = _ffn(2, (100.0, 1600.0), parts=n)
    assert views(problem, tiny)[1].clash == {}
    m = place_and_route(problem, tiny, time_limit=2, heuristic_only=True)
    assert validate(problem, tiny, m) == []
    for phase in "ab":
        tiles = [m.placement[f"{phase}{i}"] for i in range(n)]
        assert len(set(tiles)) == n


def six_at_once() -> MappingProblem:
    # six compute kernels that run at the same time, a chain of streams between them, on tiny's four compute
    # tiles: some tile holds two whatever the placement, so the estimate (the busiest tile) is 2000 for (2, 2,
    # 1, 1) and (2, 2, 2, 0) alike; only the crowding (work beyond the phase's length on every tile) tells that
    # the second takes turns on three tiles
    kernels = [KernelSpec(f"k{i}", "compute", 16, 1000, window=(0.0, 1000.0)) for i in range(6)]
    streams = [StreamSpec(f"k{i}->k{i + 1}", f"k{i}", f"k{i + 1}", 4000, 4.0) for i in range(5)]
    return MappingProblem(kernels, streams)


def test_the_crowding_sees_every_tile_the_estimate_sees_the_busiest(tiny):
    from attnc.passes.placement.heuristic import State, route_all, score, views

    problem = six_at_once()
    av, pv = views(problem, tiny)
    compute = av.of_kind["compute"]
    spread = [compute[i] for i in (0, 0, 1, 1, 2, 3)]
    piled = [compute[i] for i in (0, 0, 1, 1, 2, 2)]
    a, b = (score(av, pv, State(p, route_all(av, pv, p))) for p in (spread, piled))
    assert a.makespan == b.makespan == 2000
    assert 0 < a.crowd < b.crowd and a.key()[:3] < b.key()[:3]


def test_the_heuristic_relieves_every_tile_it_can(tiny):
    problem = six_at_once()
    m = place_and_route(problem, tiny, heuristic_only=True)
    assert validate(problem, tiny, m) == []
    per_tile = sorted(list(m.placement.values()).count(t) for t in set(m.placement.values()))
    assert m.stats.makespan == 2000 and per_tile == [1, 1, 2, 2]
