"""CP-SAT placement and routing, checked by the independent validator in attnc.passes.placement.problem."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import attnc.passes.placement.cpsat as cpsat
import attnc.passes.placement.heuristic as heuristic
from attnc.arch import load_arch
from attnc.passes.placement.problem import KernelSpec, MappingInfeasible, MappingProblem, StreamSpec, synthetic_attention, validate
from attnc.passes.placement.heuristic import ArrayView, ProblemView
from attnc.passes.placement.cpsat import heuristic_mapping, interchangeable_groups, place_and_route


@pytest.fixture(scope="module")
def tiny():
    return load_arch("tiny")


def key(stats):
    # link capacity is hard (every returned mapping is within it), then makespan, then byte-hops
    return (stats.makespan, stats.byte_hops)


def heuristic_key(stats):
    return (stats.heuristic_makespan, stats.heuristic_byte_hops)


def test_one_head_on_tiny_is_optimal_and_valid(tiny):
    problem = synthetic_attention(1, 128, tiny)
    m = place_and_route(problem, tiny, time_limit=2)
    assert validate(problem, tiny, m) == []
    s = m.stats
    assert s.status == "OPTIMAL" and s.method == "monolithic"
    assert key(s) <= heuristic_key(s)
    assert s.max_link_load_lb <= s.max_link_load and s.byte_hops_lb <= s.byte_hops and s.makespan_lb <= s.makespan
    # One phase (no schedule): the estimate is the busiest tile, and optimal means every kernel of the
    # busiest kind alone on a tile of its own where it can be.
    assert s.makespan == s.makespan_lb
    assert s.max_link_load <= tiny.noc.link_bytes_per_cycle
    assert s.variables > 0


def test_two_runs_are_identical(tiny):
    problem = synthetic_attention(2, 256, tiny)
    a = place_and_route(problem, tiny, time_limit=1, seed=3)
    b = place_and_route(problem, tiny, time_limit=1, seed=3)
    assert a.placement == b.placement and a.routes == b.routes
    assert validate(problem, tiny, a) == []


def test_heuristic_alone_is_valid_and_marked(tiny):
    problem = synthetic_attention(2, 128, tiny)
    h = heuristic_mapping(problem, tiny, seed=1)
    assert validate(problem, tiny, h) == []
    assert h.stats.status == "HEURISTIC" and h.stats.method == "heuristic"
    m = place_and_route(problem, tiny, heuristic_only=True, seed=1)
    assert m.placement == h.placement and m.stats.status == "HEURISTIC"


def test_lns_path_valid_and_never_worse(tiny, monkeypatch):
    monkeypatch.setattr(cpsat, "MONOLITHIC_KERNELS", 0)
    problem = synthetic_attention(2, 256, tiny)
    messages = []
    m = place_and_route(problem, tiny, time_limit=1.5, progress=messages.append)
    assert m.stats.method == "lns" and m.stats.lns_rounds > 0
    assert validate(problem, tiny, m) == []
    assert key(m.stats) <= heuristic_key(m.stats)
    assert messages and messages[0].startswith("heuristic:")


def test_slots_infeasible_says_why(tiny):
    problem = synthetic_attention(3, 128, tiny)   # 6 sfu kernels, tiny has 1 sfu tile of 4 contexts
    with pytest.raises(MappingInfeasible, match=r"needs 6 sfu kernels but tiny has 1 sfu tile x 4 contexts = 4 slots"):
        place_and_route(problem, tiny, time_limit=1)
    with pytest.raises(MappingInfeasible, match="sfu"):
        heuristic_mapping(problem, tiny)


def five_into_one(tiny):
    # Five 0.75-capacity streams into one compute kernel: 3.75 links' worth into a
    # tile with 4 in-links, but no two can share an in-link.
    cap = tiny.noc.link_bytes_per_cycle
    kernels = [KernelSpec("sink", "compute", 16, 10)] + [KernelSpec(f"src{i}", "dma", 16, 10) for i in range(5)]
    streams = [StreamSpec(f"s{i}", f"src{i}", "sink", 100, cap * 0.75) for i in range(5)]
    return MappingProblem(kernels, streams)


def test_pigeonhole_counting_check(tiny):
    with pytest.raises(MappingInfeasible, match=r"kernel 'sink' has 5 ingoing streams but a compute tile has 4 in-links"):
        place_and_route(five_into_one(tiny), tiny, time_limit=1)


def test_solver_proves_link_overload_and_names_it(tiny, monkeypatch):
    # Without the counting checks, CP-SAT must find the overload itself.
    monkeypatch.setattr(heuristic, "explain_infeasible", lambda problem, arch: None)
    with pytest.raises(MappingInfeasible) as info:
        place_and_route(five_into_one(tiny), tiny, time_limit=2)
    text = str(info.value)
    assert "B/cycle, capacity" in text and "proven unavoidable" in text and "sink" in text


def test_interchangeable_heads(tiny):
    av = ArrayView(tiny)
    pv = ProblemView(synthetic_attention(6, 128, load_arch("edge")), av)
    classes = interchangeable_groups(pv)
    # Heads 0-3 share one output projection, heads 4-5 another: two classes.
    sizes = sorted(len(c) for c in classes)
    assert sizes == [2, 4]
    for cls in classes:
        roles = [[pv.kernels[k].name.rsplit("_h", 1)[0] for k in group] for group in cls]
        assert all(r == roles[0] for r in roles)


@st.composite
def small_problems(draw):
    n_compute = draw(st.integers(1, 6))
    n_dma = draw(st.integers(1, 4))
    kernels = [KernelSpec(f"c{i}", "compute", draw(st.integers(1, 1024)), draw(st.integers(1, 500)))
               for i in range(n_compute)]
    kernels += [KernelSpec(f"d{i}", "dma", draw(st.integers(1, 256)), draw(st.integers(1, 500))) for i in range(n_dma)]
    names = [k.name for k in kernels]
    streams = []
    for i in range(draw(st.integers(0, 8))):
        a, b = draw(st.sampled_from(names)), draw(st.sampled_from(names))
        if a != b:
            streams.append(StreamSpec(f"s{i}", a, b, draw(st.integers(1, 4096)), draw(st.sampled_from([1.0, 2.0, 4.0, 8.0]))))
    return MappingProblem(kernels, streams)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_problems())
def test_random_problems_map_validly_or_explain(tiny, problem):
    try:
        m = place_and_route(problem, tiny, time_limit=0.5)
    except MappingInfeasible as e:
        assert str(e).startswith("cannot map onto tiny:")
        return
    assert validate(problem, tiny, m) == []
    assert key(m.stats) <= heuristic_key(m.stats)
