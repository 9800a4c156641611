"""attnc.passes.placement.problem: the independent validator, the counting infeasibility checks and the picture."""

from __future__ import annotations

import pytest

from attnc.arch import load_arch
from attnc.errors import AttncError
from attnc.passes.placement.problem import (
    KernelSpec,
    Mapping,
    MappingProblem,
    StreamSpec,
    explain_infeasible,
    synthetic_attention,
    validate,
)


@pytest.fixture(scope="module")
def tiny():
    return load_arch("tiny")


def first(arch, kind, n=0):
    return arch.tiles_of(kind)[n].pos


def two_kernels(arch, rate=4.0):
    problem = MappingProblem(
        [KernelSpec("load", "dma", 64, 10), KernelSpec("gemm", "compute", 256, 100)],
        [StreamSpec("x", "load", "gemm", 1024, rate)],
    )
    return problem


def adjacent_pair(arch, kind_a, kind_b):
    g = arch.graph()
    for a in arch.tiles_of(kind_a):
        for b in arch.tiles_of(kind_b):
            if g.has_edge(a.pos, b.pos):
                return a.pos, b.pos
    raise AssertionError("no adjacent pair")


def test_valid_mapping_has_no_violations(tiny):
    problem = two_kernels(tiny)
    a, b = adjacent_pair(tiny, "dma", "compute")
    assert validate(problem, tiny, Mapping({"load": a, "gemm": b}, {"x": [a, b]})) == []


def test_wrong_kind_missing_kernel_and_unknown_tile(tiny):
    problem = two_kernels(tiny)
    c = first(tiny, "compute")
    errors = validate(problem, tiny, Mapping({"load": c, "gemm": (99, 99)}, {"x": [c]}))
    text = "\n".join(errors)
    assert "'load' needs a dma tile" in text
    assert "(99, 99)" in text
    errors = validate(problem, tiny, Mapping({"load": c}, {}))
    assert any("'gemm' is not placed" in e for e in errors)
    assert any("'x' has no route" in e for e in errors)


def test_route_must_connect_ends_over_links(tiny):
    problem = two_kernels(tiny)
    a, b = adjacent_pair(tiny, "dma", "compute")
    far = max((t.pos for t in tiny.tiles), key=lambda p: abs(p[0] - a[0]) + abs(p[1] - a[1]))
    errors = validate(problem, tiny, Mapping({"load": a, "gemm": b}, {"x": [a, far, b]}))
    assert any("not a link" in e for e in errors)
    errors = validate(problem, tiny, Mapping({"load": a, "gemm": b}, {"x": [a]}))
    assert any("ends at" in e for e in errors)
    errors = validate(problem, tiny, Mapping({"load": a, "gemm": b}, {"x": [b, a, b]}))
    assert any("starts at" in e for e in errors)


def test_link_capacity_contexts_and_sram(tiny):
    cap = tiny.noc.link_bytes_per_cycle
    a, b = adjacent_pair(tiny, "dma", "compute")
    problem = MappingProblem(
        [KernelSpec("l0", "dma", 8, 1), KernelSpec("l1", "dma", 8, 1), KernelSpec("g", "compute", 8, 1)],
        [StreamSpec("s0", "l0", "g", 10, cap * 0.75), StreamSpec("s1", "l1", "g", 10, cap * 0.5)],
    )
    m = Mapping({"l0": a, "l1": a, "g": b}, {"s0": [a, b], "s1": [a, b]})
    errors = validate(problem, tiny, m)
    assert len(errors) == 1 and f"link {a}->{b}" in errors[0] and "s0, s1" in errors[0]

    tile = tiny.tile(*b)
    many = MappingProblem([KernelSpec(f"k{i}", "compute", 1, 1) for i in range(tile.contexts + 1)], [])
    errors = validate(many, tiny, Mapping({k.name: b for k in many.kernels}, {}))
    assert any(f"{tile.contexts} contexts" in e for e in errors)
    fat = MappingProblem([KernelSpec("big", "compute", tile.sram_bytes + 1, 1)], [])
    errors = validate(fat, tiny, Mapping({"big": b}, {}))
    assert any("SRAM" in e for e in errors)


def test_explain_slots(tiny):
    n_sfu = len(tiny.tiles_of("sfu"))
    slots = sum(t.contexts for t in tiny.tiles_of("sfu"))
    problem = MappingProblem([KernelSpec(f"softmax_h{i}", "sfu", 16, 1) for i in range(slots + 1)], [])
    why = explain_infeasible(problem, tiny)
    assert why is not None
    assert f"needs {slots + 1} sfu kernels but tiny has {n_sfu} sfu tile" in why
    assert f"= {slots} slots" in why and "softmax_h0" in why


def test_explain_sram_and_missing_kind(tiny):
    biggest = max(t.sram_bytes for t in tiny.tiles_of("compute"))
    problem = MappingProblem([KernelSpec("gemm_q", "compute", biggest + 1024, 1),
                              KernelSpec("fft", "nonexistent", 1, 1)], [])
    why = explain_infeasible(problem, tiny)
    assert "kernel 'gemm_q' needs" in why and "the largest compute tile has" in why
    assert "no nonexistent tile" in why and "fft" in why


def test_explain_kernels_over_half_a_tile_each(tiny):
    # total SRAM fits, but kernels over half a tile's SRAM cannot pair up: one tile each, and there are
    # more of them than compute tiles
    tiles = tiny.tiles_of("compute")
    sram = min(t.sram_bytes for t in tiles)
    big = [KernelSpec(f"big{i}", "compute", sram // 2 + 64, 1) for i in range(len(tiles) + 1)]
    why = explain_infeasible(MappingProblem(big, []), tiny)
    assert f"{len(tiles) + 1} compute kernels each need more than half a compute tile's SRAM" in why
    assert f"tiny has {len(tiles)} compute tiles" in why
    assert explain_infeasible(MappingProblem(big[:-1], []), tiny) is None


def test_explain_stream_too_wide(tiny):
    cap = tiny.noc.link_bytes_per_cycle
    why = explain_infeasible(two_kernels(tiny, rate=cap * 2), tiny)
    assert f"stream 'x' needs {cap * 2:g} B/cycle" in why


def test_explain_feasible_is_none(tiny):
    assert explain_infeasible(synthetic_attention(1, 128, tiny), tiny) is None


def test_synthetic_attention_shape(tiny):
    p = synthetic_attention(5, 256, load_arch("edge"))
    assert len(p.kernels) == 5 * 8 + 2 * 2
    names = {k.name for k in p.kernels}
    assert all(s.src in names and s.dst in names for s in p.streams)


def test_picture_svg_and_png(tiny, tmp_path):
    problem = two_kernels(tiny)
    a, b = adjacent_pair(tiny, "dma", "compute")
    m = Mapping({"load": a, "gemm": b}, {"x": [a, b]})
    from attnc.passes.placement.picture import draw_mapping

    svg = draw_mapping(tiny, problem, m, tmp_path / "map.svg").read_text()
    assert svg.startswith("<?xml") and svg.rstrip().endswith("</svg>")
    assert sum(svg.count(f'id="tile-{t.x}-{t.y}"') for t in tiny.tiles) == len(tiny.tiles)
    assert "gemm" in svg
    png = draw_mapping(tiny, problem, m, tmp_path / "map.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(AttncError, match="must be .svg or .png"):
        draw_mapping(tiny, problem, m, tmp_path / "map.pdf")
