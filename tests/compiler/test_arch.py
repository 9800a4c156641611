"""attnc.arch: presets, the networkx view, fingerprints, round trips and every validation error."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import networkx as nx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from attnc.arch import (
    DATATYPES,
    ENERGY_ACTIONS,
    PRESETS,
    TILE_KINDS,
    Arch,
    Tile,
    dump_arch,
    load_arch,
    parse_arch,
    preset_text,
)
from attnc.cli import run
from attnc.errors import AttncError

KiB, MiB = 1 << 10, 1 << 20

# A small valid description; the error cases below break one thing in it each.
BASE = """\
version: 1
name: t
grid: {width: 3, height: 3}
clock_mhz: 1000
tile_kinds:
  compute: {contexts: 2, sram: 4 KiB, sram_banks: 2, mac_array: [4, 4], vector_lanes: 4}
  sfu: {contexts: 2, sram: 1 KiB, vector_lanes: 4}
  dma: {contexts: 2, sram: 0, dma_channels: 1}
layout:
  - D D D
  - S C C
  - D D D
noc: {topology: mesh, link_bytes_per_cycle: 16, hop_latency: 1, virtual_channels: 2}
dram: {bandwidth_gib_s: 8, latency_cycles: 50}
datatypes: [f32, f16]
energy_pj: {mac: 1.5, sram_byte: 1.0, noc_hop_byte: 1.0, dram_byte: 160, sfu_op: 4, butterfly_op: 1.5, vector_op: 0.8}
"""


def edit(old: str, new: str, text: str = BASE) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


# --- presets ------------------------------------------------------------------


def test_base_snippet_is_valid() -> None:
    arch = parse_arch(BASE)
    assert (arch.width, arch.height, arch.total_macs_per_cycle) == (3, 3, 32)
    assert arch.tile(0, 1).kind == "sfu" and arch.tile(1, 1).kind == "compute"
    assert arch.tile(0, 0).sram_bytes == 0 and arch.tile(0, 0).sram_banks == 0
    assert arch.tile(0, 1).sram_banks == 1  # default when omitted
    assert arch.dram.bytes_per_cycle == pytest.approx(8 * 2**30 / 1e9)


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name: str) -> None:
    arch = load_arch(name)
    assert arch.name == name
    assert arch.clock_mhz == 940
    assert len(arch.tiles) == arch.width * arch.height
    assert [t.pos for t in arch.tiles] == [(x, y) for y in range(arch.height) for x in range(arch.width)]
    for t in arch.tiles_of("dma"):
        assert arch.on_edge(*t.pos)
    for t in arch.tiles_of("compute"):
        assert t.macs_per_cycle > 0 and t.vector_lanes > 0
    assert set(ENERGY_ACTIONS) <= set(arch.energy_pj)
    assert "f32" in arch.datatypes
    assert load_arch(name) is arch  # presets are parsed once


def test_tiny_preset() -> None:
    arch = load_arch("tiny")
    assert (arch.width, arch.height) == (4, 4)
    counts = {k: len(arch.tiles_of(k)) for k in TILE_KINDS}
    assert 2 <= counts["compute"] <= 4 and counts["sfu"] == counts["memory"] == counts["butterfly"] == 1
    assert all(t.mac_rows == t.mac_cols == 4 for t in arch.tiles_of("compute"))
    assert all(2 <= t.contexts <= 4 for t in arch.tiles)


@pytest.mark.parametrize(
    "name, macs, sram, gib_s",
    [("edge", 32 * 32, 512 * KiB, 50), ("cloud", 256 * 256, 32 * MiB, 400)],
)
def test_flat_platform_totals(name: str, macs: int, sram: int, gib_s: float) -> None:
    """FLAT's edge and cloud platforms (Kao et al., ASPLOS 2023), in binary units at 940 MHz."""
    arch = load_arch(name)
    assert arch.total_macs_per_cycle == macs
    assert arch.total_sram_bytes == sram
    assert arch.dram.bandwidth_gib_s == gib_s
    assert arch.dram.bytes_per_cycle == pytest.approx(gib_s * 2**30 / 940e6)
    assert arch.dram.latency_cycles == 94  # 100 ns at 940 MHz
    assert all(arch.tiles_of(k) for k in TILE_KINDS)


def test_where_exp_runs() -> None:
    """Every preset's compute tiles have an exp unit (a fused attention's exps run there); without the key
    a compute tile has none; only compute tiles take it."""
    for name in PRESETS:
        for t in load_arch(name).tiles_of("compute"):
            assert t.exp_per_cycle == t.vector_lanes == t.special_per_cycle > 0
        assert all(t.special_per_cycle == t.vector_lanes for t in load_arch(name).tiles_of("sfu"))
    assert parse_arch(BASE).tile(1, 1).exp_per_cycle == 0
    assert parse_arch(edit("vector_lanes: 4}\n  sfu", "vector_lanes: 4, exp_per_cycle: 2}\n  sfu")).tile(1, 1).exp_per_cycle == 2
    with pytest.raises(AttncError, match=r"tile_kinds.sfu.exp_per_cycle: unknown key"):
        parse_arch(edit("sfu: {contexts: 2, sram: 1 KiB, vector_lanes: 4}", "sfu: {contexts: 2, sram: 1 KiB, vector_lanes: 4, exp_per_cycle: 4}"))
    with pytest.raises(AttncError, match=r"exp_per_cycle: must be at least 0"):
        parse_arch(edit("vector_lanes: 4}\n  sfu", "vector_lanes: 4, exp_per_cycle: -1}\n  sfu"))


def test_flat_cloud_is_cloud_with_the_1d_unit() -> None:
    """flat-cloud: cloud's MACs, SRAM, DRAM and mesh; its compute tiles' vector work is a 256-lane 1-D unit
    in all (4 lanes and 4 exps a cycle beside each 32x32 block)."""
    cloud, flat = load_arch("cloud"), load_arch("flat-cloud")
    assert flat.total_macs_per_cycle == cloud.total_macs_per_cycle == 65536
    assert flat.total_sram_bytes == 32 * MiB and flat.dram == cloud.dram and flat.noc == cloud.noc
    assert flat.layout_rows() == cloud.layout_rows()
    compute = flat.tiles_of("compute")
    assert sum(t.vector_lanes for t in compute) == sum(t.exp_per_cycle for t in compute) == 256
    assert sum(t.vector_lanes for t in flat.tiles_of("sfu")) == 256


def test_cloud_links_are_wider_than_edge() -> None:
    assert load_arch("cloud").noc.link_bytes_per_cycle > load_arch("edge").noc.link_bytes_per_cycle


# --- the networkx view ----------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_graph(name: str) -> None:
    arch = load_arch(name)
    g = arch.graph()
    w, h = arch.width, arch.height
    assert g.number_of_nodes() == w * h
    assert g.number_of_edges() == arch.num_links == 2 * ((w - 1) * h + w * (h - 1))
    for (x, y), data in g.nodes(data=True):
        assert data["tile"] == arch.tile(x, y)
    for (a, b), data in g.edges.items():
        assert abs(a[0] - b[0]) + abs(a[1] - b[1]) == 1
        assert g.has_edge(b, a)
        assert data == {"bytes_per_cycle": arch.noc.link_bytes_per_cycle, "latency": arch.noc.hop_latency}
    assert nx.is_strongly_connected(g)
    assert nx.is_frozen(g) and arch.graph() is g


def test_corner_tile_has_two_links() -> None:
    g = parse_arch(BASE).graph()
    assert sorted(g.successors((0, 0))) == [(0, 1), (1, 0)]
    assert g.out_degree((1, 1)) == 4


def test_tile_lookup_errors() -> None:
    arch = parse_arch(BASE)
    with pytest.raises(IndexError, match=r"\(3, 0\) is outside the 3x3 grid"):
        arch.tile(3, 0)
    with pytest.raises(ValueError, match="unknown tile kind 'gpu'"):
        arch.tiles_of("gpu")
    assert arch.tiles_of("memory") == []


# --- identity: equality, hashing, fingerprint -------------------------------------


def test_arch_is_hashable_and_compares_by_content() -> None:
    a, b = parse_arch(BASE), parse_arch("# a comment\n" + BASE.replace("{width: 3, height: 3}", "{height: 3, width: 3}"))
    assert a == b and hash(a) == hash(b) and {a: 1}[b] == 1
    assert a.source != b.source  # the text is kept for bitstreams but is not part of identity
    assert a.energy_pj == dict(a.energy_pj) and hash(a.energy_pj) == hash(b.energy_pj)


def test_arch_pickles() -> None:
    """Process pools (benchmarks, explore) send an Arch to workers."""
    import pickle

    arch = load_arch("edge")
    arch.graph()
    again = pickle.loads(pickle.dumps(arch))
    assert again == arch and again.source == arch.source and again.fingerprint() == arch.fingerprint()


@pytest.mark.parametrize("name", PRESETS)
def test_fingerprint_stable(name: str) -> None:
    arch = load_arch(name)
    fp = arch.fingerprint()
    assert isinstance(fp, bytes) and len(fp) == 8
    assert parse_arch(preset_text(name)).fingerprint() == fp
    assert parse_arch(dump_arch(arch)).fingerprint() == fp


def test_preset_fingerprints_are_pinned() -> None:
    """Bitstreams embed these: a change here means the presets (or the canonical form) changed,
    and old bitstreams are rejected as built for another architecture."""
    assert {p: load_arch(p).fingerprint().hex() for p in PRESETS} == {
        "tiny": "fd1f261abb1940d3",
        "edge": "6afc7752a8d23423",
        "cloud": "a1b543b41be853e5",
        "flat-cloud": "a1e68b804fd6216c",
    }


@pytest.mark.parametrize(
    "old, new",
    [
        ("name: t", "name: u"),
        ("  - S C C\n", "  - S C C\n  - C C C\n"),  # with height 4, below
        ("clock_mhz: 1000", "clock_mhz: 1001"),
        ("contexts: 2, sram: 4 KiB", "contexts: 3, sram: 4 KiB"),
        ("sram: 4 KiB", "sram: 8 KiB"),
        ("sram_banks: 2", "sram_banks: 4"),
        ("mac_array: [4, 4]", "mac_array: [4, 8]"),
        ("mac_array: [4, 4], vector_lanes: 4", "mac_array: [4, 4], vector_lanes: 8"),
        ("vector_lanes: 4}\n  sfu", "vector_lanes: 4, exp_per_cycle: 4}\n  sfu"),
        ("sfu: {contexts: 2, sram: 1 KiB, vector_lanes: 4}", "sfu: {contexts: 2, sram: 1 KiB, vector_lanes: 2}"),
        ("dma_channels: 1", "dma_channels: 2"),
        ("sram: 0, dma", "sram: 1 KiB, dma"),
        ("  - S C C", "  - C S C"),
        ("link_bytes_per_cycle: 16", "link_bytes_per_cycle: 32"),
        ("hop_latency: 1", "hop_latency: 2"),
        ("virtual_channels: 2", "virtual_channels: 1"),
        ("bandwidth_gib_s: 8", "bandwidth_gib_s: 9"),
        ("latency_cycles: 50", "latency_cycles: 51"),
        ("[f32, f16]", "[f32, f16, i8]"),
        ("[f32, f16]", "[f16, f32]"),
        ("mac: 1.5", "mac: 1.6"),
        ("dram_byte: 160", "dram_byte: 161"),
        ("vector_op: 0.8", "vector_op: 0.9"),
    ],
)
def test_fingerprint_changes_with_every_field(old: str, new: str) -> None:
    text = edit(old, new)
    if "C C C" in text:  # a row more: the grid grows with it
        text = edit("height: 3", "height: 4", text)
    a, b = parse_arch(BASE), parse_arch(text)
    assert a != b
    assert a.fingerprint() != b.fingerprint()


def test_fingerprint_ignores_spelling() -> None:
    """Same array, written differently: comments, key order, units, flow vs block style."""
    other = edit("sram: 4 KiB", "sram: 4096")
    other = edit("  - S C C", "  - SCC   # no spaces needed", other)
    other = edit("dram: {bandwidth_gib_s: 8, latency_cycles: 50}", "dram:\n  latency_cycles: 50\n  bandwidth_gib_s: 8.0", other)
    assert parse_arch(other).fingerprint() == parse_arch(BASE).fingerprint()


# --- round trips -------------------------------------------------------------------


@pytest.mark.parametrize("name", PRESETS)
def test_round_trip(name: str) -> None:
    arch = load_arch(name)
    assert parse_arch(arch.source) == arch
    again = parse_arch(dump_arch(arch))
    assert again == arch and dump_arch(again) == dump_arch(arch)


def test_latency_ns_converts_at_the_clock() -> None:
    arch = parse_arch(edit("latency_cycles: 50", "latency_ns: 50"))
    assert arch.dram.latency_cycles == 50  # 50 ns at 1000 MHz
    assert parse_arch(edit("latency_cycles: 50", "latency_ns: 10.1")).dram.latency_cycles == 11


@st.composite
def archs(draw: st.DrawFn) -> Arch:
    w, h = draw(st.integers(2, 7)), draw(st.integers(2, 7))
    letters = draw(st.lists(st.sampled_from("CSBMD"), min_size=w * h, max_size=w * h))
    letters[0], letters[w + 1 if h > 2 and w > 2 else 1] = "D", "C"  # a dma tile on the edge, a compute tile
    kinds = {"C": "compute", "S": "sfu", "B": "butterfly", "M": "memory", "D": "dma"}
    params = {}
    for kind in TILE_KINDS:
        banks = draw(st.integers(1, 8))
        p = {"contexts": draw(st.integers(1, 8)), "sram_bytes": banks * draw(st.integers(1, 1 << 16)), "sram_banks": banks}
        if kind == "compute":
            p |= {"mac_rows": draw(st.integers(1, 64)), "mac_cols": draw(st.integers(1, 64))}
        if kind in ("compute", "sfu", "butterfly"):
            p["vector_lanes"] = draw(st.integers(1, 64))
        if kind == "compute":
            p["exp_per_cycle"] = draw(st.integers(0, 64))
        if kind == "dma":
            p["dma_channels"] = draw(st.integers(1, 8))
        params[kind] = p
    tiles = []
    for i, letter in enumerate(letters):
        x, y = i % w, i // w
        if letter == "D" and not (x in (0, w - 1) or y in (0, h - 1)):
            letter = "C"
        tiles.append(Tile(x=x, y=y, kind=kinds[letter], **params[kinds[letter]]))
    arch = parse_arch(BASE)
    finite = st.floats(0.001, 1e4, allow_nan=False)
    return dataclasses.replace(
        arch,
        name=draw(st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,8}", fullmatch=True)),
        width=w,
        height=h,
        clock_mhz=draw(finite),
        tiles=tuple(tiles),
        dram=dataclasses.replace(arch.dram, bandwidth_gib_s=draw(finite), latency_cycles=draw(st.integers(0, 10**4))),
        datatypes=tuple(draw(st.lists(st.sampled_from(DATATYPES), min_size=1, unique=True))),
        energy_pj={a: draw(st.floats(0, 1e3, allow_nan=False)) for a in ENERGY_ACTIONS},
    )


@settings(max_examples=60, deadline=None)
@given(archs())
def test_dump_parse_round_trip(arch: Arch) -> None:
    again = parse_arch(dump_arch(arch))
    # bytes_per_cycle is derived from bandwidth and clock when parsing
    assert dataclasses.replace(again, dram=arch.dram) == arch
    assert again.dram.bytes_per_cycle == pytest.approx(arch.dram.bandwidth_gib_s * 2**30 / (arch.clock_mhz * 1e6))
    assert parse_arch(dump_arch(again)).fingerprint() == again.fingerprint()


# --- validation errors -----------------------------------------------------------

ERRORS = [
    # (old, new, expected message (regex, after "<arch>:LINE: "))
    # unknown and missing keys
    ("clock_mhz: 1000", "clock_mhz: 1000\nclock_mz: 3", r"5: clock_mz: unknown key \(did you mean 'clock_mhz'\?\)"),
    ("mac_array:", "mac_arry:", r"\d+: tile_kinds\.compute\.mac_arry: unknown key \(did you mean 'mac_array'\?\)"),
    ("hop_latency:", "hop_latncy:", r"noc\.hop_latncy: unknown key \(did you mean 'hop_latency'\?\)"),
    ("mac: 1.5", "mac: 1.5, watts: 2", r"16: energy_pj\.watts: unknown key \(expected one of mac, sram_byte, "),
    ("sfu: {contexts: 2,", "sfu: {mac_array: [1, 1], contexts: 2,", r"tile_kinds\.sfu\.mac_array: unknown key"),
    ("  sfu:", "  sfuu:", r"tile_kinds\.sfuu: unknown tile kind \(did you mean 'sfu'\?\)"),
    ("  sfu:", "  gpu:", r"tile_kinds\.gpu: unknown tile kind \(tile kinds are compute, sfu, "),
    ("name: t\n", "", r"1: top level: missing key 'name'"),
    ("contexts: 2, sram: 4 KiB", "sram: 4 KiB", r"tile_kinds\.compute: missing key 'contexts'"),
    ("vector_lanes: 4}\n  sfu", "sram_banks: 2}\n  sfu", r"duplicate key 'sram_banks'"),
    ("mac_array: [4, 4], ", "", r"tile_kinds\.compute: missing key 'mac_array'"),
    (", dma_channels: 1", "", r"tile_kinds\.dma: missing key 'dma_channels'"),
    ("latency_cycles: 50", "latency_cycles: 50, latency_ns: 3", r"dram: give exactly one of latency_ns and latency_cycles"),
    ("latency_cycles: 50", "", r"dram: give exactly one of latency_ns and latency_cycles"),
    # wrong types
    ("width: 3,", "width: three,", r"3: grid\.width: expected an integer, got a string \('three'\)"),
    ("width: 3,", "width: 3.0,", r"grid\.width: expected an integer, got a number"),
    ("contexts: 2, sram: 4", "contexts: true, sram: 4", r"tile_kinds\.compute\.contexts: expected an integer, got a boolean"),
    ("clock_mhz: 1000", "clock_mhz: fast", r"clock_mhz: expected a finite number, got a string"),
    ("clock_mhz: 1000", "clock_mhz: .inf", r"clock_mhz: expected a finite number"),
    ("grid: {width: 3, height: 3}", "grid: [3, 3]", r"grid: expected a mapping of keys to values, got a list"),
    ("name: t", "name: 12", r"name: expected a string, got an integer"),
    ("name: t", "name: a b", r"name: 'a b' must be letters, digits"),
    ("mac_array: [4, 4]", "mac_array: 16", r"tile_kinds\.compute\.mac_array: expected \[rows, cols\]"),
    ("mac_array: [4, 4]", "mac_array: [4, x]", r"tile_kinds\.compute\.mac_array\.cols: expected an integer"),
    ("[f32, f16]", "f32", r"datatypes: expected a non-empty list"),
    ("[f32, f16]", "[]", r"datatypes: expected a non-empty list"),
    ("[f32, f16]", "[f32, fp16]", r"datatypes\[1\]: unknown datatype 'fp16' \(known: .*did you mean 'f16'\?\)"),
    ("[f32, f16]", "[f32, f32]", r"datatypes\[1\]: 'f32' is listed twice"),
    ("  - D D D\n  - S", "  - [D, D, D]\n  - S", r"layout: expected a list of rows"),
    ("version: 1\n", "version: 1\ntopology: mesh\n", r"2: topology: unknown key \(expected one of version, name, description, grid, "),
    # sizes
    ("sram: 4 KiB", "sram: 4 KB", r"tile_kinds\.compute\.sram: unknown unit 'KB' \(use B, KiB, MiB, GiB: binary units; did you mean 'KiB'\?\)"),
    ("sram: 4 KiB", "sram: lots", r"tile_kinds\.compute\.sram: cannot read size 'lots'"),
    ("sram: 4 KiB", "sram: 1.3 B", r"tile_kinds\.compute\.sram: '1\.3 B' is not a whole number of bytes"),
    ("sram: 4 KiB", "sram: -4", r"tile_kinds\.compute\.sram: must be at least 0, got -4"),
    ("sram: 4 KiB", "sram: 8 GiB", r"tile_kinds\.compute\.sram: must be at most 4294967295"),
    ("sram: 4 KiB", "sram: [4]", r"tile_kinds\.compute\.sram: expected a size"),
    ("sram: 4 KiB", "sram: 0", r"tile_kinds\.compute\.sram: a compute tile needs a buffer \(only dma tiles may have 0\)"),
    ("sram: 4 KiB, sram_banks: 2", "sram: 4 KiB, sram_banks: 3", r"tile_kinds\.compute\.sram_banks: 3 banks do not divide 4096 bytes"),
    ("sram: 4 KiB, sram_banks: 2", "sram: 4 KiB, sram_banks: 0", r"tile_kinds\.compute\.sram_banks: must be positive, got 0"),
    ("sram: 0, dma", "sram: 0, sram_banks: 1, dma", r"tile_kinds\.dma\.sram_banks: must be 0 when sram is 0"),
    # impossible sizes
    ("width: 3,", "width: 0,", r"grid\.width: must be positive, got 0"),
    ("height: 3}", "height: 300}", r"grid\.height: must be at most 255, got 300"),
    ("clock_mhz: 1000", "clock_mhz: 0", r"clock_mhz: must be positive, got 0"),
    ("contexts: 2, sram: 4", "contexts: 0, sram: 4", r"tile_kinds\.compute\.contexts: must be positive, got 0"),
    ("mac_array: [4, 4]", "mac_array: [0, 4]", r"tile_kinds\.compute\.mac_array\.rows: must be positive, got 0"),
    ("mac_array: [4, 4], vector_lanes: 4", "mac_array: [4, 4], vector_lanes: 0", r"tile_kinds\.compute\.vector_lanes: must be positive"),
    ("dma_channels: 1", "dma_channels: 0", r"tile_kinds\.dma\.dma_channels: must be positive"),
    ("link_bytes_per_cycle: 16", "link_bytes_per_cycle: 0", r"noc\.link_bytes_per_cycle: must be positive"),
    ("hop_latency: 1", "hop_latency: -1", r"noc\.hop_latency: must be positive, got -1"),
    ("bandwidth_gib_s: 8", "bandwidth_gib_s: 0", r"dram\.bandwidth_gib_s: must be positive, got 0"),
    ("latency_cycles: 50", "latency_cycles: -1", r"dram\.latency_cycles: must be at least 0, got -1"),
    ("mac: 1.5", "mac: -1.5", r"energy_pj\.mac: must be at least 0, got -1\.5"),
    # layout
    ("  - D D D\n", "", r"9: layout: 2 rows for a grid of height 3"),
    ("  - S C C", "  - S C C C", r"11: layout\[1\]: 'S C C C' has 4 tiles for a grid of width 3"),
    ("  - S C C", "  - S X C", r"11: layout\[1\]: unknown tile code 'X' at column 1 \(codes: C compute, S sfu, "),
    ("  - S C C", "  - S . C", r"layout\[1\]: unknown tile code '\.' at column 1 .*every cell is a tile"),
    ("  - S C C", "  - S M C", r"layout\[1\]: 'M' at column 1: tile_kinds has no 'memory' entry"),
    ("  - S C C", "  - S D C", r"layout\[1\]: dma tile at \(1, 1\) is not on the edge of the grid"),
    ("  - D D D\n  - S C C\n  - D D D", "  - C C C\n  - S C C\n  - C C C", r"9: layout: the grid has no dma tile \('D'\); it needs at least one"),
    ("  - S C C", "  - S S S", r"layout: the grid has no compute tile \('C'\)"),
    # noc
    ("topology: mesh", "topology: torus", r"noc\.topology: unsupported topology 'torus' \(supported: mesh\)"),
    # version and syntax
    ("version: 1", "version: 2", r"1: version: unsupported format version 2 \(this attnc reads 1\)"),
    ("version: 1", "version: 2\nfuture_key: 1", r"1: version: unsupported format version 2"),
    ("version: 1", "version: '1'", r"version: expected an integer, got a string"),
    ("clock_mhz: 1000", "clock_mhz: [1000", r"YAML syntax error"),
    ("  - S C C", "  - S C C\n   bad: indent", r"YAML syntax error"),
    ("grid: {width: 3, height: 3}", "grid: {width: 3, height: 3}}", r"3: YAML syntax error"),
    ("name: t", "name: !!python/object:os.system t", r"YAML syntax error: could not determine a constructor"),
]


@pytest.mark.parametrize("old, new, message", ERRORS, ids=[f"{i}-{e[2][:30]}" for i, e in enumerate(ERRORS)])
def test_validation_errors(old: str, new: str, message: str) -> None:
    with pytest.raises(AttncError) as e:
        parse_arch(edit(old, new), source_name="my.yaml")
    text = str(e.value)
    assert "\n" not in text
    assert text.startswith("my.yaml:"), text
    assert re.search(rf"^my\.yaml:(\d+: )?(?:{message})", text), text


@pytest.mark.parametrize(
    "text, message",
    [
        ("", r"<arch>: empty architecture description"),
        ("# nothing\n", r"<arch>: empty architecture description"),
        ("- a\n- b\n", r"<arch>:1: expected a mapping at the top level"),
        ("1: x\n", r"<arch>:1: key 1 is not a string"),
        ("a: 1\na: 2\n", r"<arch>:2: duplicate key 'a' \(first at line 1\)"),
        ("\t- x", r"<arch>:1: YAML syntax error"),
    ],
)
def test_document_errors(text: str, message: str) -> None:
    with pytest.raises(AttncError, match=message):
        parse_arch(text)


def test_error_line_numbers_point_at_the_field() -> None:
    text = edit("hop_latency: 1", "hop_latency: 0")
    with pytest.raises(AttncError, match=r"^f\.yaml:13: noc\.hop_latency: must be positive"):
        parse_arch(text, "f.yaml")
    block = edit("noc: {topology: mesh, link_bytes_per_cycle: 16, hop_latency: 1, virtual_channels: 2}",
                 "noc:\n  topology: mesh\n  link_bytes_per_cycle: 16\n  hop_latency: 0\n  virtual_channels: 2")  # fmt: skip
    with pytest.raises(AttncError, match=r"^f\.yaml:16: noc\.hop_latency: must be positive"):
        parse_arch(block, "f.yaml")


# --- docs ---------------------------------------------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "arch.md"


def test_docs_full_example_is_the_edge_preset() -> None:
    example = re.search(r"```yaml\n(.*?)```", DOCS.read_text(), re.S)
    assert example is not None
    assert parse_arch(example.group(1)) == load_arch("edge")


def test_docs_error_examples_are_real() -> None:
    """The sample messages in docs/arch.md are what these edits of BASE produce."""
    shown = DOCS.read_text()
    for old, new in [
        ("mac_array:", "mac_arry:"),
        ("  - S C C", "  - S D C"),
        ("name: t\n", ""),
        ("width: 3,", "width: 0,"),
        ("version: 1", "version: 2"),
        ("grid: {width: 3, height: 3}", "grid: {width: 3, height: 3}}"),
    ]:
        with pytest.raises(AttncError) as e:
            parse_arch(edit(old, new), "my.yaml")
        assert str(e.value).split(", got")[0] in shown, str(e.value)


# --- load_arch and the CLI -----------------------------------------------------


def test_load_arch_from_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(BASE)
    assert load_arch(path) == load_arch(str(path)) == parse_arch(BASE)
    assert load_arch(path).source == BASE


def test_load_arch_errors(tmp_path: Path) -> None:
    with pytest.raises(AttncError, match=r"^'egde' is neither an architecture preset \(tiny, edge, cloud, flat-cloud\) nor an existing file \(did you mean 'edge'\?\)$"):
        load_arch("egde")
    with pytest.raises(AttncError, match=r"'nothing\.yaml' is neither"):
        load_arch("nothing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(AttncError, match=r"bad\.yaml: cannot read"):
        load_arch(bad)
    broken = tmp_path / "broken.yaml"
    broken.write_text(edit("width: 3,", "width: 0,"))
    with pytest.raises(AttncError, match=rf"^{re.escape(str(broken))}:3: grid\.width: must be positive"):
        load_arch(broken)
    with pytest.raises(AttncError, match="unknown architecture preset 'huge'"):
        preset_text("huge")


def test_cli_rejects_a_broken_arch_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "m.mlir"
    model.write_text("builtin.module {}\n")
    arch = tmp_path / "a.yaml"
    arch.write_text(edit("  - S C C", "  - S D C"))
    code = run(["compile", str(model), "-o", str(tmp_path / "o.mlir"), "-p", "", "--arch", str(arch)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == f"attnc: error: --arch {arch}:11: layout[1]: dma tile at (1, 1) is not on the edge of the grid\n"
    assert not (tmp_path / "o.mlir").exists()


def test_sram_port_width_is_read_checked_and_written_back() -> None:
    edge = load_arch("edge")
    assert {t.kind: t.sram_bytes_per_cycle for t in edge.tiles} == {
        "compute": 4 * 64, "sfu": 2 * 64, "butterfly": 2 * 64, "memory": 8 * 64, "dma": 1 * 128}
    # a file without it gets the default; the canonical text keeps a value that is not the default
    text = re.sub(r", sram_bank_bytes_per_cycle: \d+", "", preset_text("tiny"))
    assert {t.sram_bank_bytes_per_cycle for t in parse_arch(text).tiles} == {16}
    assert parse_arch(dump_arch(edge)) == edge
    with pytest.raises(AttncError, match="compute.sram_bank_bytes_per_cycle: must be positive, got 0"):
        parse_arch(preset_text("tiny").replace("sram_bank_bytes_per_cycle: 64", "sram_bank_bytes_per_cycle: 0", 1))
