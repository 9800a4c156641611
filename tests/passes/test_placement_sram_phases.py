"""SRAM phases in placement: kernels of different phases p >= 1 share a tile's SRAM, phase 0 counts against
every phase. Checked on the tiny array (four alike compute tiles of 4 KiB and 4 contexts) by the placers, the
exact packing, the counting checks and the independent validator."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc.passes.placement.cpsat as cpsat
from attnc.arch import load_arch
from attnc.passes.placement.cpsat import heuristic_mapping, place_and_route
from attnc.passes.placement.heuristic import views
from attnc.passes.placement.problem import (
    KernelSpec,
    Mapping,
    MappingInfeasible,
    MappingProblem,
    StreamSpec,
    explain_infeasible,
    validate,
)
from attnc.passes.placement.sram import SramUse, sram_need


@pytest.fixture(scope="module")
def tiny():
    return load_arch("tiny")


@pytest.fixture(scope="module")
def sram(tiny):
    sizes = {t.sram_bytes for t in tiny.tiles_of("compute")}
    assert len(sizes) == 1
    return sizes.pop()


def fillers(tiny, size, n=None):
    """Phase-0 kernels of ``size`` bytes, one per compute tile but one (or ``n``)."""
    n = len(tiny.tiles_of("compute")) - 1 if n is None else n
    return [KernelSpec(f"fill{i}", "compute", size, 10) for i in range(n)]


def with_stream(kernels):
    # a DMA load feeding the first phased kernel, so that the mapping has a route to check too
    ks = [KernelSpec("load", "dma", 64, 10), *kernels]
    return MappingProblem(ks, [StreamSpec("x", "load", kernels[-1].name, 256, 1.0)])


def test_sram_need_is_resident_plus_the_largest_phase():
    assert sram_need([]) == 0
    assert sram_need([(100, 0), (50, 0)]) == 150
    assert sram_need([(100, 0), (300, 1), (200, 2), (150, 2)]) == 100 + 350
    use = SramUse([1000], [100, 300, 200, 150, 701], [0, 1, 2, 2, 0])
    for k in range(4):
        use.add(0, k)
    assert use.need(0) == 450
    assert use.fits(0, 4) is False and use.left(0, 4) == 1000 - 1151
    use.add(0, 2, -1)
    assert use.need(0) == 400 and use.fits_exchange(0, 1, 2)  # 300 of phase 1 out, 200 of phase 2 in
    assert not use.fits_exchange(0, 0, 4)  # 100 resident out, 701 resident in: 701 + 300
    assert use.fits_exchange(0, 1, 4)  # phase 1's 300 out, 701 resident in: 801 + phase 2's 150
    assert not use.fits_exchange(0, 3, 4)  # phase 2's 150 out, 701 resident in: 801 + phase 1's 300


@pytest.mark.parametrize("solver", ["cpsat", "heuristic"])
def test_two_phases_over_a_tiles_sram_together_share_the_only_tile_left(tiny, sram, solver):
    # three tiles full with resident kernels; a and b need 3/4 of a tile each: only in different phases
    # do they fit the fourth tile together
    ab = [KernelSpec("a", "compute", 3 * sram // 4, 100, phase=1), KernelSpec("b", "compute", 3 * sram // 4, 100, phase=2)]
    problem = with_stream([*fillers(tiny, sram), *ab])
    assert explain_infeasible(problem, tiny) is None
    if solver == "cpsat":
        m = place_and_route(problem, tiny, time_limit=1)
    else:
        m = heuristic_mapping(problem, tiny)
    assert validate(problem, tiny, m) == []
    assert m.placement["a"] == m.placement["b"]
    assert m.placement["a"] not in {m.placement[f.name] for f in fillers(tiny, sram)}


def test_the_same_phase_cannot_share(tiny, sram):
    ab = [KernelSpec("a", "compute", 3 * sram // 4, 100, phase=1), KernelSpec("b", "compute", 3 * sram // 4, 100, phase=1)]
    problem = with_stream([*fillers(tiny, sram), *ab])
    why = explain_infeasible(problem, tiny)
    assert why is not None and "5 compute kernels (resident or of SRAM phase 1) each need more than half" in why
    with pytest.raises(MappingInfeasible, match="no two share a tile"):
        place_and_route(problem, tiny, time_limit=1)


def test_phase_totals_bound_the_kinds_sram(tiny, sram):
    # resident 3/4 of every tile; phases 1 and 2 each a tile's worth in quarters: the phases fit side by
    # side (their plain sum would not), one more quarter of phase 1 does not
    n = len(tiny.tiles_of("compute"))
    ks = [KernelSpec(f"r{i}", "compute", 3 * sram // 4, 1) for i in range(n)]
    ks += [KernelSpec(f"p{i}", "compute", sram // 4, 1, phase=1 + i % 2) for i in range(8)]
    assert explain_infeasible(MappingProblem(ks, []), tiny) is None
    ks.append(KernelSpec("one_more", "compute", sram // 4, 1, phase=1))
    why = explain_infeasible(MappingProblem(ks, []), tiny)
    assert why is not None and "(resident plus the largest SRAM phase)" in why


def _resident_against_a_phase(tiny, sram, phase_c):
    # three tiles hold 3/4 of their SRAM resident; a (phase 1) needs 3/4 of a tile and c 3/8: neither fits
    # beside a filler, so both go on the fourth tile, which holds them only if c is not resident
    ks = [*fillers(tiny, 3 * sram // 4), KernelSpec("a", "compute", 3 * sram // 4, 10, phase=1),
          KernelSpec("c", "compute", 3 * sram // 8, 10, phase=phase_c)]
    return MappingProblem(ks, [])


@pytest.mark.parametrize("alike", [True, False])
def test_phase_zero_counts_against_every_phase_in_the_exact_packing(tiny, sram, alike, monkeypatch):
    if not alike:  # the one-hot packing model, which tiles that differ get
        monkeypatch.setattr(cpsat, "_pack_alike", lambda *a, **k: None)
    resident = _resident_against_a_phase(tiny, sram, 0)
    assert explain_infeasible(resident, tiny) is None  # no count rules it out
    av, pv = views(resident, tiny)
    assert cpsat._pack(av, pv, 0, 1.0) == (None, "compute")
    phased = _resident_against_a_phase(tiny, sram, 2)
    av, pv = views(phased, tiny)
    place, kind = cpsat._pack(av, pv, 0, 1.0)
    assert kind is None and place is not None
    assert place[pv.kindex["a"]] == place[pv.kindex["c"]]
    m = Mapping({k.name: av.pos[t] for k, t in zip(pv.kernels, place)}, {})
    assert validate(phased, tiny, m) == []


def test_phase_zero_counts_against_every_phase_when_placing(tiny, sram):
    with pytest.raises(MappingInfeasible, match="CP-SAT proved that no placement fits the compute tiles"):
        place_and_route(_resident_against_a_phase(tiny, sram, 0), tiny, time_limit=1)
    phased = _resident_against_a_phase(tiny, sram, 2)
    m = place_and_route(phased, tiny, time_limit=1)
    assert validate(phased, tiny, m) == [] and m.placement["a"] == m.placement["c"]


def test_the_lns_windows_keep_the_phases_apart(tiny, sram, monkeypatch):
    # LNS re-places windows with the other kernels fixed: their bytes count per phase
    monkeypatch.setattr(cpsat, "MONOLITHIC_KERNELS", 0)
    ks = [KernelSpec(f"k{i}", "compute", 3 * sram // 8, 50 + i, phase=i % 3) for i in range(12)]
    streams = [StreamSpec(f"s{i}", f"k{i}", f"k{i + 1}", 512, 1.0) for i in range(11)]
    problem = MappingProblem(ks, streams)
    m = place_and_route(problem, tiny, time_limit=1)
    assert m.stats.method == "lns" and validate(problem, tiny, m) == []


def test_the_validator_names_an_over_full_phase(tiny, sram):
    pos = tiny.tiles_of("compute")[0].pos
    ks = [KernelSpec("r", "compute", sram // 2, 1), KernelSpec("a", "compute", sram // 2, 1, phase=1),
          KernelSpec("b", "compute", sram // 2, 1, phase=2), KernelSpec("b2", "compute", 64, 1, phase=2)]
    problem = MappingProblem(ks, [])
    errors = validate(problem, tiny, Mapping({k.name: pos for k in ks}, {}))
    assert len(errors) == 1
    assert f"needs {sram + 64} B of SRAM in phase 2" in errors[0] and "r, b, b2" in errors[0]
    assert validate(MappingProblem(ks[:3], []), tiny, Mapping({k.name: pos for k in ks[:3]}, {})) == []
    # the resident kernels alone over the tile: named as before, without a phase
    fat = [KernelSpec("r", "compute", sram + 1, 1), KernelSpec("a", "compute", 8, 1, phase=1)]
    errors = validate(MappingProblem(fat, []), tiny, Mapping({k.name: pos for k in fat}, {}))
    assert errors == [f"tile {pos} needs {sram + 1} B of SRAM, it has {sram}: r"]


@st.composite
def phased_problems(draw):
    n = draw(st.integers(2, 12))
    kernels = [KernelSpec(f"c{i}", "compute", draw(st.integers(256, 3072)), draw(st.integers(1, 500)),
                          phase=draw(st.integers(0, 3))) for i in range(n)]
    kernels.append(KernelSpec("d", "dma", 64, 10))
    names = [k.name for k in kernels]
    streams = []
    for i in range(draw(st.integers(0, 6))):
        a, b = draw(st.sampled_from(names)), draw(st.sampled_from(names))
        if a != b:
            streams.append(StreamSpec(f"s{i}", a, b, draw(st.integers(1, 4096)), draw(st.sampled_from([1.0, 2.0]))))
    return MappingProblem(kernels, streams)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(phased_problems())
def test_random_phased_problems_map_validly_or_explain(tiny, problem):
    h = None
    try:
        h = heuristic_mapping(problem, tiny)
    except MappingInfeasible:
        pass
    if h is not None:
        assert validate(problem, tiny, h) == []
    try:
        m = place_and_route(problem, tiny, time_limit=0.5)
    except MappingInfeasible as e:
        assert str(e).startswith("cannot map onto tiny:") and h is None
        return
    assert validate(problem, tiny, m) == []


def test_kernels_of_one_phase_are_spread_over_the_tiles_when_contexts_are_tight(tiny):
    # four compute tiles of four contexts, four phases of four kernels: the only placement without two kernels
    # of one phase on a tile (which would take turns) is one of each phase per tile; the estimate's windows are
    # long enough to hide the stacking, and streams between the kernels of a phase pull them onto one tile
    computes = len(tiny.tiles_of("compute"))
    contexts = tiny.tiles_of("compute")[0].contexts
    ks = [KernelSpec(f"k{p}_{i}", "compute", 256, 100, window=(1000 * p, 1000 * p + 900), phase=p + 1)
          for p in range(contexts) for i in range(computes)]  # fmt: skip
    streams = [StreamSpec(f"s{p}_{i}", f"k{p}_{i}", f"k{p}_{i + 1}", 4096, 1.0)
               for p in range(contexts) for i in range(computes - 1)]  # fmt: skip
    problem = MappingProblem(ks, streams)
    for m in (heuristic_mapping(problem, tiny), place_and_route(problem, tiny, time_limit=2)):
        validate(problem, tiny, m)
        per = {}
        for k in ks:
            per.setdefault((m.placement[k.name], k.phase), []).append(k.name)
        assert all(len(names) == 1 for names in per.values()), per
