"""The timing model against answers computed by hand, plus a roofline check on every example.

The hand cases are small bitstreams built with the dataclasses on the ``tiny`` array (4x4 MACs and
4 lanes per compute tile, 16 B/cycle links with 1 cycle per hop, 16 GiB/s DRAM with 100 ns latency).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from attnc.arch import load_arch
from attnc.backend.bitstream import (
    Bitstream,
    Buffer,
    DmaDescriptor,
    Instr,
    KernelConfig,
    Port,
    RouteConfig,
    TileConfig,
    decode,
    embed_arch,
    encode,
)  # fmt: skip
from attnc.errors import AttncError
from attnc.simulator.plots import plot
from attnc.simulator.timing import MAX_SEGMENTS, simulate
from attnc.simulator.trace import write_trace

EXAMPLES = Path(__file__).parents[2] / "examples"
TINY = load_arch("tiny")


def kernel(kid, name, kind, inputs, outputs, body=(), loops=(("steps", 1),), buffers=()):
    return KernelConfig(kid, name, kind, list(inputs), list(outputs), [], list(buffers), list(loops), list(body), 0)


def port(register, stream, shape, tokens=1, dtype="f32"):
    return Port(register, stream, dtype, list(shape), tokens)


def route(stream, src, dst, hops, nbytes):
    return RouteConfig(stream, f"s{stream}", src, dst, [tuple(h) for h in hops], 0, nbytes, 1.0)


#: the tiny array with 64 KiB of SRAM a tile (same banks, same ports): room for the tensors the NoC and DRAM cases
#: send whole, which tiny's 1-4 KiB tiles could not hold (the simulator refuses a tile that holds more than it has)
ROOMY = dataclasses.replace(TINY, source="", tiles=tuple(dataclasses.replace(t, sram_bytes=1 << 16) for t in TINY.tiles))
#: ... and with SRAM ports too wide to bind: for the cases that work out the NoC alone
WIDE_SRAM = dataclasses.replace(ROOMY, tiles=tuple(dataclasses.replace(t, sram_bank_bytes_per_cycle=1 << 20)
                                                   for t in ROOMY.tiles))  # fmt: skip


def bitstream(tiles: dict, routes=(), dma=(), arch=TINY):
    """``tiles``: {(x, y): [KernelConfig, ...]}; the tile kind comes from the tiny array."""
    src, fp = embed_arch(arch)
    cfgs = [TileConfig(x, y, arch.tile(x, y).kind, ks) for (x, y), ks in tiles.items()]
    bs = Bitstream(src, fp, cfgs, list(routes), list(dma))
    return decode(encode(bs))  # what the simulator gets is what the format carries


def gemm(kid, m, n, k, in_streams=(0, 1), out_stream=2):
    body = [Instr("matmul", [0, 1], [2], {"dtype": "f32", "shape": [m, n]})]
    loops = (("m", math.ceil(m / 4)), ("n", math.ceil(n / 4)), ("k", k))
    return kernel(kid, f"gemm{kid}", "gemm", [port(0, in_streams[0], [m, k]), port(1, in_streams[1], [k, n])],
                  [port(2, out_stream, [m, n])], body, loops)  # fmt: skip


# ---------------------------------------------------------------------------
# hand-computed cases


def test_single_gemm_is_macs_over_the_mac_array_plus_fill():
    stats = simulate(bitstream({(1, 1): [gemm(0, 64, 64, 64)]}))
    macs = 64 * 64 * 64
    assert stats.macs == macs
    assert stats.cycles == macs // 16 + (4 + 4)
    assert stats.utilization == pytest.approx(macs / (stats.cycles * TINY.total_macs_per_cycle))
    (tile,) = [t for t in stats.tiles if t.macs]
    assert tile.busy_cycles == stats.cycles and tile.macs == macs
    assert stats.kernels[0].segments == MAX_SEGMENTS


def test_partial_mac_tiles_cost_whole_steps():
    # 10 rows on a 4-row array: 3 row steps, the last one a quarter full
    stats = simulate(bitstream({(1, 1): [gemm(0, 10, 8, 16)]}))
    assert stats.cycles == 3 * 2 * 16 + 8
    assert stats.macs == 10 * 8 * 16


def dma_load(kid, dram_stream, stream, nbytes, tokens=1):
    n = nbytes // 4  # a port's shape is the whole tensor, whatever its tokens
    return kernel(kid, f"load{kid}", "dma_load", [port(0, dram_stream, [n], tokens)], [port(0, stream, [n], tokens)],
                  loops=(("burst", tokens),))  # fmt: skip


def dma_store(kid, stream, dram_stream, nbytes, tokens=1):
    n = nbytes // 4
    return kernel(kid, f"store{kid}", "dma_store", [port(0, stream, [n], tokens)], [port(0, dram_stream, [n], tokens)],
                  loops=(("burst", tokens),))  # fmt: skip


def test_dram_bound_load_is_latency_plus_bytes_over_bandwidth():
    nbytes = 1 << 16
    desc = DmaDescriptor((0, 0), "load", 1, 0, nbytes, [nbytes // 4], [1], "f32")
    stats = simulate(bitstream({(0, 0): [dma_load(0, 100, 1, nbytes)]}, dma=[desc]))
    assert stats.cycles == math.ceil(TINY.dram.latency_cycles + nbytes / TINY.dram.bytes_per_cycle)
    assert (stats.dram_read_bytes, stats.dram_write_bytes) == (nbytes, 0)


def test_dram_copy_through_one_link():
    nbytes = 1 << 14
    dram = (TINY.dram.latency_cycles + nbytes / TINY.dram.bytes_per_cycle)
    noc = nbytes / TINY.noc.link_bytes_per_cycle + TINY.noc.hop_latency
    tiles = {(0, 0): [dma_load(0, 100, 1, nbytes)], (1, 0): [dma_store(1, 1, 101, nbytes)]}
    descs = [DmaDescriptor((0, 0), "load", 1, 0, nbytes, [nbytes // 4], [1], "f32"),
             DmaDescriptor((1, 0), "store", 1, 1 << 20, nbytes, [nbytes // 4], [1], "f32")]  # fmt: skip
    # (the store takes the 16 KiB as one token: ROOMY's DMA tiles hold it)
    stats = simulate(bitstream(tiles, [route(1, 0, 1, [(0, 0), (1, 0)], nbytes)], descs, arch=ROOMY))
    assert stats.cycles == math.ceil(2 * dram + noc)
    assert stats.noc_byte_hops == nbytes
    assert (stats.dram_read_bytes, stats.dram_write_bytes) == (nbytes, nbytes)


def test_two_loads_share_the_dram_bandwidth():
    nbytes = 1 << 14
    tiles = {(0, 0): [dma_load(0, 100, 1, nbytes)], (1, 0): [dma_load(1, 101, 2, nbytes)]}
    descs = [DmaDescriptor((0, 0), "load", 1, 0, nbytes, [nbytes // 4], [1], "f32"),
             DmaDescriptor((1, 0), "load", 2, nbytes, nbytes, [nbytes // 4], [1], "f32")]  # fmt: skip
    stats = simulate(bitstream(tiles, dma=descs))
    assert stats.cycles == math.ceil(TINY.dram.latency_cycles + 2 * nbytes / TINY.dram.bytes_per_cycle)


def passthrough(kid, name, in_stream, out_stream, n, tokens=1, work=0, room=0):
    """A compute-tile kernel doing ``work`` chained adds per token of ``n`` floats (0: it only forwards its
    input); its ports carry the whole ``n * tokens`` floats in ``tokens`` tokens; it declares ``room`` tokens of
    double-buffered input buffer."""
    body, reg = [], 0
    for i in range(work):
        body.append(Instr("add", [reg, reg], [i + 1], {"dtype": "f32", "shape": [n * tokens]}))
        reg = i + 1
    buffers = [Buffer("in", 0, room * 4 * n, 1, True)] if room else []
    return kernel(kid, name, "elementwise", [port(0, in_stream, [n * tokens], tokens)],
                  [port(reg, out_stream, [n * tokens], tokens)], body, (("rows", tokens),), buffers)  # fmt: skip


def test_a_context_moves_at_most_its_tiles_sram_bytes_per_cycle():
    # a passthrough of 4 KiB on (1,1) with nothing to compute: 4 KiB arrive in its buffer and 4 KiB leave it, through
    # 2 banks of 64 bytes a cycle: 64 cycles. With ports too wide to bind it takes no time.
    n = 1024
    tile = TINY.tile(1, 1)
    assert tile.sram_bytes_per_cycle == 2 * 64
    stats = simulate(bitstream({(1, 1): [passthrough(0, "p", 10, 11, n)]}))
    assert stats.cycles == 2 * 4 * n // tile.sram_bytes_per_cycle and stats.kernels[0].sram_stall_cycles == 64
    # (a cycle is the least any traffic takes)
    assert simulate(bitstream({(1, 1): [passthrough(0, "p", 10, 11, n)]}, arch=WIDE_SRAM)).cycles == 1
    # work that takes longer than its traffic hides it: 8 adds of 1024 floats on 4 lanes, 2048 cycles, moving
    # 4 KiB in, 8 x (8 KiB read + 4 KiB written), 4 KiB out = 104 KiB: 832 cycles of SRAM
    stats = simulate(bitstream({(1, 1): [passthrough(0, "p", 10, 11, n, work=8)]}))
    assert stats.cycles == 8 * n // tile.vector_lanes and stats.kernels[0].sram_stall_cycles == 0


def test_a_context_streaming_more_than_its_buffers_runs_in_finer_segments():
    from attnc.backend.bitstream import Buffer

    # 64 KiB streamed in 512 tokens through 1 KiB of buffers: at least 4 x 64 KiB / 1 KiB = 256 segments, and
    # a segment takes one token at most (two of them double-buffer it): 512 segments of 128 bytes
    k = passthrough(0, "p", 10, 11, 32, tokens=512, work=1)
    k.buffers = [Buffer("work", 0, 1024, 1, True)]
    assert simulate(bitstream({(1, 1): [k]})).kernels[0].segments == 512
    k = passthrough(0, "p", 10, 11, 2, tokens=512, work=1)  # 4 KiB through 4 KiB: the usual 64
    k.buffers = [Buffer("work", 0, 4096, 1, True)]
    assert simulate(bitstream({(1, 1): [k]})).kernels[0].segments == MAX_SEGMENTS


def test_two_streams_sharing_a_link_take_twice_as_long():
    nbytes = 4096
    n = nbytes // 4
    alone = {(1, 1): [passthrough(0, "a", 10, 11, n)], (2, 1): [passthrough(2, "ca", 11, 12, n)]}
    r_a = route(11, 0, 2, [(1, 1), (2, 1)], nbytes)
    one = simulate(bitstream(alone, [r_a], arch=WIDE_SRAM))
    link = TINY.noc.link_bytes_per_cycle
    # + 2: the sender and the receiver each take one cycle to pass their bytes through their (wide) SRAM ports
    assert one.cycles == nbytes / link + 1 + 2
    # b's route (1,2) -> (1,1) -> (2,1) joins a's on the link (1,1) -> (2,1)
    both = dict(alone)
    both[(1, 2)] = [passthrough(1, "b", 20, 21, n)]
    both[(2, 1)] = both[(2, 1)] + [passthrough(3, "cb", 21, 22, n)]
    r_b = route(21, 1, 3, [(1, 2), (1, 1), (2, 1)], nbytes)
    two = simulate(bitstream(both, [r_a, r_b], arch=WIDE_SRAM))
    ends = {k.name: k.end for k in two.kernels}
    assert ends["ca"] == 2 * nbytes / link + 1 + 2
    assert ends["cb"] == 2 * nbytes / link + 2 + 2
    shared = [lk for lk in two.links if (lk.src, lk.dst) == ((1, 1), (2, 1))]
    assert shared[0].bytes == 2 * nbytes and shared[0].busy_cycles == 2 * nbytes / link
    assert two.noc_byte_hops == 3 * nbytes


def test_a_pipeline_runs_at_the_pace_of_its_slowest_kernel():
    tokens, n = 32, 16  # 16 floats per token: 64 bytes, 4 cycles on a link, 4 cycles of one add on 4 lanes
    tiles = {
        (1, 1): [passthrough(0, "fast_a", 0, 1, n, tokens, work=1)],
        (2, 1): [passthrough(1, "slow", 1, 2, n, tokens, work=4, room=2)],
        (2, 2): [passthrough(2, "fast_c", 2, 3, n, tokens, work=1, room=2)],
    }
    routes = [route(1, 0, 1, [(1, 1), (2, 1)], n * 4 * tokens), route(2, 1, 2, [(2, 1), (2, 2)], n * 4 * tokens)]
    stats = simulate(bitstream(tiles, routes))
    a, b, c = n // 4, 4 * n // 4, n // 4  # cycles per token
    hop = n * 4 / TINY.noc.link_bytes_per_cycle + TINY.noc.hop_latency
    assert stats.cycles == a + hop + tokens * b + hop + c
    # without streaming (one token) the three would run one after the other
    assert stats.cycles < tokens * (a + b + c)


def test_a_port_shape_is_the_whole_tensor_whatever_its_tokens():
    # the same two 4096-float adds with the stream between them in 1 or in 8 tokens: same work, same
    # bytes over the link; with 8 tokens the three stages overlap
    n = 4096
    link = TINY.noc.link_bytes_per_cycle

    def run(tokens):
        tiles = {(1, 1): [passthrough(0, "src", 10, 11, n // tokens, tokens, work=1)],
                 (2, 1): [passthrough(1, "add", 11, 12, n // tokens, tokens, work=1, room=2 if tokens > 1 else 0)]}
        # the route's bytes left 0: each token carries the port's whole bytes / tokens
        return simulate(bitstream(tiles, [route(11, 0, 1, [(1, 1), (2, 1)], 0)], arch=ROOMY))  # 16 KiB whole

    one, eight = run(1), run(8)
    assert one.vector_ops == eight.vector_ops == 2 * n
    assert one.noc_byte_hops == eight.noc_byte_hops == 4 * n
    assert one.cycles == n // 4 + (4 * n / link + 1) + n // 4
    # a token: 128 cycles of adds, 128 cycles on the link (+1 hop); the last add follows the last token. The
    # consumer declares room for 2 tokens (double-buffered), so 'src' sends token t only
    # once token t - 2 is released, and every other token waits the hop for that room (tokens 2, 4 and 6)
    per_token = n // 4 // 8
    assert per_token == 4 * n / link / 8
    assert eight.cycles == per_token + (per_token + 1) + 8 * per_token + 3


def test_contexts_on_one_tile_take_turns():
    stats = simulate(bitstream({(1, 1): [gemm(0, 16, 16, 16, (0, 1), 2), gemm(1, 16, 16, 16, (3, 4), 5)]}))
    each = 16 * 16 * 16 // 16 + 8
    assert stats.cycles == 2 * each
    first, second = sorted(stats.kernels, key=lambda k: k.end)
    # round-robin at segment granularity: both are under way until near the end
    assert second.start < first.end / 2


# ---------------------------------------------------------------------------
# errors


def test_buffers_larger_than_the_tile_are_refused():
    from attnc.backend.bitstream import Buffer

    big = gemm(0, 4, 4, 4)
    big.buffers = [Buffer("work", 0, 1 << 20, 1, True)]
    with pytest.raises(AttncError, match=r"^simulate: TILES: tile \(1,1\): its contexts' buffers need 1048576 bytes, "
                                         r"the tile has 4096$"):
        simulate(bitstream({(1, 1): [big]}))
    # the limit is the tile's, over all its contexts: two that fit alone do not fit together
    a, b = gemm(0, 4, 4, 4), gemm(1, 4, 4, 4, in_streams=(3, 4), out_stream=5)
    a.buffers, b.buffers = [Buffer("a", 0, 2048, 1, True)], [Buffer("b", 2048, 2049, 1, True)]
    with pytest.raises(AttncError, match="need 4097 bytes, the tile has 4096"):
        simulate(bitstream({(1, 1): [a, b]}))
    b.buffers = [Buffer("b", 2048, 2048, 1, True)]
    assert simulate(bitstream({(1, 1): [a, b]})).warnings == []


def test_a_buffer_names_banks_its_tile_has():
    from attnc.backend.bitstream import Buffer

    # the test tile has 2 banks: a buffer interleaved over both is counted by bytes alone ...
    k = gemm(0, 4, 4, 4)
    k.buffers = [Buffer("a", 0, 1, 1, False), Buffer("b", 1, 1024, 2, False), Buffer("c", 1025, 2049, 1, True)]
    stats = simulate(bitstream({(1, 1): [k]}))
    assert stats.kernels[0].buffer_banks == 2 and stats.warnings == []
    # ... one naming a third bank, or none, could not be loaded
    for banks in (3, 0):
        k.buffers[1] = Buffer("b", 1, 1024, banks, False)
        with pytest.raises(AttncError, match=rf"kernel 0 'gemm0' on tile \(1,1\): buffer 'b' is interleaved over "
                                             rf"{banks} banks, the tile has 2$"):
            simulate(bitstream({(1, 1): [k]}))


def test_a_route_through_a_non_link_is_an_error():
    n = 16
    tiles = {(1, 1): [passthrough(0, "a", 10, 11, n)], (2, 2): [passthrough(1, "c", 11, 12, n)]}
    with pytest.raises(AttncError, match=r"hop \(1, 1\) -> \(2, 2\) is not a link"):
        simulate(bitstream(tiles, [route(11, 0, 1, [(1, 1), (2, 2)], 64)]))


def test_a_kernel_on_the_wrong_tile_kind_is_an_error():
    with pytest.raises(AttncError, match=r"tile \(0,0\) is configured as compute but the array has a dma tile"):
        src, fp = embed_arch(TINY)
        simulate(Bitstream(src, fp, [TileConfig(0, 0, "compute", [gemm(0, 4, 4, 4)])]))


def test_a_cycle_of_streams_is_a_deadlock_error_not_a_hang():
    n = 16
    tiles = {(1, 1): [passthrough(0, "a", 1, 2, n, work=1)], (2, 1): [passthrough(1, "b", 2, 1, n, work=1)]}
    routes = [route(2, 0, 1, [(1, 1), (2, 1)], 64), route(1, 1, 0, [(2, 1), (1, 1)], 64)]
    with pytest.raises(AttncError, match="deadlocks: kernel 0 'a' waits for stream 1"):
        simulate(bitstream(tiles, routes))


# ---------------------------------------------------------------------------
# the examples: roofline, determinism, outputs


@pytest.fixture(scope="module")
def example_bitstreams():
    from attnc.backend.emit import emit_bitstream
    from attnc.frontend.onnx import import_onnx
    from attnc.pipeline import DEFAULT_PIPELINE, backend_passes, run_pipeline

    def compile_edge(path, **placer):
        # the pipeline `attnc compile` runs: what it writes must fit the array (no buffer over its SRAM)
        module = import_onnx(path)
        run_pipeline(module, DEFAULT_PIPELINE)
        run_pipeline(module, backend_passes("edge", **placer))
        return decode(encode(emit_bitstream(module, load_arch("edge"), {})))

    out = {}
    for path in sorted(EXAMPLES.glob("*.onnx")):
        try:  # the heuristic alone maps most examples at once; CP-SAT for the others
            out[path.stem] = compile_edge(path, heuristic_only=True)
        except AttncError:
            out[path.stem] = compile_edge(path, time_limit=10.0)
    return out


def test_every_example_respects_the_roofline(example_bitstreams):
    edge = load_arch("edge")
    assert len(example_bitstreams) >= 4
    for name, bs in example_bitstreams.items():
        stats = simulate(bs)
        dram = stats.dram_read_bytes + stats.dram_write_bytes
        bound = max(stats.macs / edge.total_macs_per_cycle, dram / edge.dram.bytes_per_cycle)
        assert stats.cycles >= bound, name
        assert stats.macs > 0 and stats.dram_read_bytes > 0 and stats.dram_write_bytes > 0, name
        assert 0 < stats.utilization <= 1, name
        assert all(t.busy_cycles <= stats.cycles for t in stats.tiles), name


def test_same_bitstream_same_stats(example_bitstreams):
    bs = example_bitstreams["bert_layer"]
    assert simulate(bs).to_json() == simulate(bs).to_json()
    assert simulate(bs, functional=True).cycles == simulate(bs).cycles


def test_stats_json_trace_and_plots(example_bitstreams, tmp_path):
    calls = []
    stats = simulate(example_bitstreams["bert_layer"], progress=lambda done, total: calls.append((done, total)))
    assert calls and calls[-1][0] == calls[-1][1]
    doc = json.loads(json.dumps(stats.to_json()))
    keys = ("cycles seconds macs dram_read_bytes dram_write_bytes sram_read_bytes sram_write_bytes noc_byte_hops "
            "energy_pj utilization tiles links events")  # fmt: skip
    assert set(keys.split()) <= set(doc)
    energy = doc["energy_pj"]
    assert set(energy) == {"total", *load_arch("edge").energy_pj}
    assert energy["total"] == pytest.approx(sum(v for k, v in energy.items() if k != "total"))
    assert energy["mac"] == pytest.approx(doc["macs"] * 1.5)
    assert doc["seconds"] == pytest.approx(doc["cycles"] / 940e6)
    assert {"busy_cycles", "macs", "utilization"} <= set(doc["tiles"][0])
    assert {"bytes", "busy_cycles", "utilization"} <= set(doc["links"][0])
    assert sum(lk["bytes"] for lk in doc["links"]) == doc["noc_byte_hops"]

    write_trace(stats, tmp_path / "trace.json")
    trace = json.loads((tmp_path / "trace.json").read_text())["traceEvents"]
    names = {e["args"]["name"] for e in trace if e["ph"] == "M" and e["name"] == "thread_name"}
    assert any(n.startswith("tile (") for n in names) and any(n.startswith("link (") for n in names)
    assert all(e["dur"] >= 0 for e in trace if e["ph"] == "X")

    paths = plot(stats, tmp_path / "plots")
    assert [p.name for p in paths] == ["timeline.png", "heatmap.png"]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in paths)
    # written by rename from a temporary file, which is gone, with a new file's permissions (not 0600)
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["heatmap.png", "timeline.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in paths)


def test_the_timing_model_imports_no_compiler_internals():
    internals = ("interpreter", "dialects", "passes", "frontend", "pipeline", "cost", "cli", "ir")
    code = (
        "import sys; import attnc.simulator.timing, attnc.simulator.trace, attnc.simulator.plots; "
        f"bad = [m for m in sys.modules if m.split('.')[:2] in [['attnc', n] for n in {internals!r}]"
        " or m in ('xdsl', 'onnx', 'torch')]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_mangled_configurations_give_stats_or_one_error(example_bitstreams):
    """Decoded bitstreams whose fields were changed at random (what the format cannot catch: absurd token
    counts, shapes and trip counts, broken routes, unknown streams and opcodes): every run ends, quickly,
    with stats or an AttncError, never another exception."""
    import copy
    import random

    rng = random.Random(5)
    base = example_bitstreams["bert_layer"]
    outcomes = {"stats": 0, "error": 0}
    for _ in range(300):
        bs = copy.deepcopy(base)
        for _ in range(rng.randint(1, 3)):
            c = rng.choice([c for t in bs.tiles for c in t.contexts])
            big = rng.choice([0, 1, 7, 2**31, 2**63])
            ports = c.inputs + c.outputs
            what = rng.randrange(8)
            if what == 0 and ports:
                rng.choice(ports).tokens = big
            elif what == 1 and ports:
                rng.choice(ports).shape = [big] * rng.randint(0, 3)
            elif what == 2:
                c.loops = [("x", big)] * rng.randint(0, 3)
            elif what == 3 and bs.routes:
                rng.choice(bs.routes).hops = [(rng.randint(0, 6), rng.randint(0, 6)) for _ in range(rng.randint(0, 4))]
            elif what == 4 and ports:
                rng.choice(ports).stream = rng.randint(0, 40)
            elif what == 5:
                c.kernel = rng.randint(0, 40)
            elif what == 6 and c.body:
                ins = rng.choice(c.body)
                ins.opcode = rng.choice(["matmul", "contract", "attention", "softmax", "add", "zzz"])
                ins.params[rng.choice(["shape", "equation"])] = rng.choice([big, "ab,bc->ac", [big, 3], [1.5], "x"])
            elif bs.routes:
                bs.routes.pop(rng.randrange(len(bs.routes)))
        try:
            simulate(bs)
            outcomes["stats"] += 1
        except AttncError as e:
            assert "bug" not in str(e)
            outcomes["error"] += 1
    assert outcomes["stats"] and outcomes["error"]


def test_a_new_flow_slows_its_neighbours_neighbours():
    # a: (1,1)->(2,1); b: (1,2)->(1,1)->(2,1); c and d (from (1,2) and (2,2)) join b on (1,2)->(1,1) at cycle 64. From then b gets 16/3,
    # so a, which shares only b's second link, speeds up to 16 - 16/3 B/cycle although c and d never touch it
    n = 1024  # floats: 4 KiB a stream
    tiles = {
        (1, 1): [passthrough(0, "a", 10, 11, n), passthrough(5, "c_sink", 13, 23, n), passthrough(6, "d_sink", 14, 24, n)],
        (1, 2): [passthrough(1, "b", 20, 21, n), passthrough(2, "c", 30, 13, 4 * 64, 1, work=1)],
        (2, 2): [passthrough(3, "d", 40, 14, 4 * 64, 1, work=1)],
        (2, 1): [passthrough(4, "sink", 11, 12, n), passthrough(7, "b_sink", 21, 22, n)],
    }  # fmt: skip
    tiles[(1, 2)][1].outputs[0].shape = tiles[(2, 2)][0].outputs[0].shape = [n]  # 4 KiB each, after 64 cycles of adds
    routes = [route(11, 0, 4, [(1, 1), (2, 1)], 4 * n), route(21, 1, 7, [(1, 2), (1, 1), (2, 1)], 4 * n),
              route(13, 2, 5, [(1, 2), (1, 1)], 4 * n), route(14, 3, 6, [(2, 2), (1, 2), (1, 1)], 4 * n)]  # fmt: skip
    stats = simulate(bitstream(tiles, routes, arch=WIDE_SRAM))
    # until cycle 64 a and b share (1,1)->(2,1): 8 B/cycle each, 512 bytes sent. Then b drops to 16/3 on the
    # first link and a takes the rest of the second: 32/3 B/cycle for its remaining 3584 bytes
    a_done = 64 + (4 * n - 64 * 8) / (16 - 16 / 3)
    # + 2: a and the sink each take one cycle to pass their bytes through their (wide) SRAM ports
    assert {k.name: k.end for k in stats.kernels}["sink"] == pytest.approx(a_done + 1 + 2)


def test_rates_recomputed_per_component_equal_a_global_recomputation(example_bitstreams, monkeypatch):
    """Max-min fairness splits over groups of flows that share links; redoing only the changed group must give
    the very numbers (and events) a pass over every flow gives."""
    from attnc.simulator import timing

    def figures(bs) -> str:
        out = simulate(bs).to_json()
        out.pop("events")  # a global pass schedules the first finisher of every part again: more (stale) events
        return json.dumps(out)

    bss = list(example_bitstreams.values())
    local = [figures(bs) for bs in bss]
    def one_part(self, changed):  # every flow, in one part: a global pass
        first = next((r for r in changed if self.on[r]), None)
        return dict.fromkeys(self.flows, first), [r for r in self.on if self.on[r]]

    monkeypatch.setattr(timing._Fluid, "_parts", one_part)
    assert [figures(bs) for bs in bss] == local


def test_the_simulator_charges_nothing_for_exactly_the_dialects_data_movement():
    """The simulator keeps its own list of free ops (it may not import the dialects); it must name the
    ops that carry the sparse dialect's DataMovement trait, and constants."""
    from attnc.dialects import sparse as sp
    from attnc.simulator.work import DATA_OPS

    moved = {op.name.removeprefix("sparse.") for op in sp.Sparse.operations if op.has_trait(sp.DataMovement)}
    assert DATA_OPS == moved | {"constant"}


def test_a_reduction_emits_a_result_block_only_when_its_k_loop_ends():
    # a GEMM of 2 row blocks (loops m=2, n=1, k=16: 32 steps, a step a segment) sends each block as two tokens to
    # a passthrough on the next tile: the first two leave once the first block's 16 k-steps are done, not a
    # quarter of the way (a partial sum is not a result, however finely it is cut into tokens); the rest at the end
    g = gemm(0, 8, 4, 16)
    g.outputs[0].tokens = 4
    sink = passthrough(1, "sink", 2, 3, 8, tokens=4, room=2)
    stats = simulate(bitstream({(1, 1): [g], (2, 1): [sink]}, [route(2, 0, 1, [(1, 1), (2, 1)], 4 * 8 * 4)]))
    k = {x.name: x for x in stats.kernels}
    assert k["gemm0"].segments == 32
    half = k["gemm0"].start + (k["gemm0"].end - k["gemm0"].start) / 2
    assert k["sink"].start >= half
    # with k outermost the steps make no result blocks by this rule: tokens leave as the segments go
    g.loops = [("k", 16), ("m", 2), ("n", 1)]
    early = simulate(bitstream({(1, 1): [g], (2, 1): [sink]}, [route(2, 0, 1, [(1, 1), (2, 1)], 4 * 8 * 4)]))
    assert {x.name: x for x in early.kernels}["sink"].start < half


def test_an_output_no_reduction_reaches_leaves_as_the_steps_go():
    # the GEMM of the test above also sends on a transposed copy of its lhs (as a fused attention's first member
    # passes the K/V it assembles to its group): no partial sum, so it leaves as the segments go, and the sink
    # starts while the GEMM still runs (timed as a result of the reduction, it started only after the GEMM
    # ended). Held back like a result, such a copy deadlocked Llama's attention groups: the other members'
    # buffers filled with queries while they waited for K/V the first member had not finished a row block for
    g = gemm(0, 8, 4, 16)
    g.body.append(Instr("transpose", [0], [3], {"dtype": "f32", "permutation": [1, 0], "shape": [16, 8]}))
    g.outputs.append(port(3, 5, [16, 8], 4))
    sink = passthrough(1, "sink", 5, 6, 32, tokens=4, room=2)
    stats = simulate(bitstream({(1, 1): [g], (2, 1): [sink]}, [route(5, 0, 1, [(1, 1), (2, 1)], 16 * 8 * 4)]))
    k = {x.name: x for x in stats.kernels}
    assert k["gemm0"].segments == 32
    assert k["sink"].start < k["gemm0"].end
