"""DMA ``("repeat", P)`` loops and ``dma_spill`` contexts (spec 3), in the timing and the functional model,
on bitstreams built by hand for the ``tiny`` array (DMA tiles on the top row, compute tiles at (1..2, 1..2);
16 B/cycle links with 1 cycle per hop; DRAM 16 GiB/s = 18.28 B/cycle after 94 cycles of latency)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnc.arch import load_arch
from attnc.backend.bitstream import (
    Bitstream, Buffer, DmaDescriptor, Instr, IOEntry, KernelConfig, Port, RouteConfig, TileConfig, decode, embed_arch, encode,
)  # fmt: skip
from attnc.errors import AttncError
from attnc.simulator.functional import Functional, run
from attnc.simulator.timing import simulate

TINY = load_arch("tiny")
BW, LAT = TINY.dram.bytes_per_cycle, TINY.dram.latency_cycles
N = 64  # floats per tensor: 256 bytes
X_AT, Y_AT, SPILL_AT = 0, 1024, 2048  # DRAM addresses: input, output, spilled intermediate


def kernel(kid, name, kind, inputs, outputs, body=(), loops=(("steps", 1),)):
    return KernelConfig(kid, name, kind, list(inputs), list(outputs), [], [], list(loops), list(body), 0)


def port(register, stream, n=N, tokens=1):
    return Port(register, stream, "f32", [n], tokens)


def desc(channel, direction, stream, address, n=N):
    return DmaDescriptor(channel, direction, stream, address, 4 * n, [n], [1], "f32")


def route(stream, src, dst, hops, nbytes=4 * N):
    return RouteConfig(stream, f"s{stream}", src, dst, [tuple(h) for h in hops], 0, nbytes, 1.0)


def make(tiles: dict, routes=(), dma=(), io=()):
    src, fp = embed_arch(TINY)
    cfgs = [TileConfig(x, y, TINY.tile(x, y).kind, ks) for (x, y), ks in tiles.items()]
    return decode(encode(Bitstream(src, fp, cfgs, list(routes), list(dma), [], list(io))))


def elementwise(kid, name, opcode, in_stream, out_stream, tokens=1):
    body = [Instr(opcode, [0, 0], [1], {"dtype": "f32", "shape": [N]})]
    return kernel(kid, name, "elementwise", [port(0, in_stream, tokens=tokens)], [port(1, out_stream, tokens=tokens)],
                  body, (("rows", tokens),))  # fmt: skip


def spill_graph(load_address=SPILL_AT):
    """x -> load (1,0) -> y = x + x on (1,1) -> spill on (2,0) -> z = y * y on (2,1) -> store (3,0) -> out."""
    tiles = {
        (1, 0): [kernel(0, "load_x", "dma_load", [port(0, 100)], [port(0, 1)])],
        (1, 1): [elementwise(1, "double", "add", 1, 2)],
        (2, 0): [kernel(2, "spill_y", "dma_spill", [port(0, 2)], [port(0, 3)])],
        (2, 1): [elementwise(3, "square", "mul", 3, 4)],
        (3, 0): [kernel(4, "store_z", "dma_store", [port(0, 4)], [port(0, 101)])],
    }
    routes = [route(1, 0, 1, [(1, 0), (1, 1)]), route(2, 1, 2, [(1, 1), (1, 0), (2, 0)]),
              route(3, 2, 3, [(2, 0), (2, 1)]), route(4, 3, 4, [(2, 1), (3, 1), (3, 0)])]  # fmt: skip
    dma = [desc((1, 0), "load", 1, X_AT), desc((2, 0), "store", 2, SPILL_AT), desc((2, 0), "load", 3, load_address),
           desc((3, 0), "store", 4, Y_AT)]  # fmt: skip
    io = [IOEntry("x", "input", "f32", [N], X_AT, 4 * N), IOEntry("z", "output", "f32", [N], Y_AT, 4 * N)]
    return make(tiles, routes, dma, io)


def test_a_spill_goes_through_dram_and_back():
    x = np.linspace(-2, 2, N, dtype=np.float32)
    out = run(spill_graph(), {"x": x})
    np.testing.assert_array_equal(out["z"], (x + x) * (x + x))
    # the value really comes back from DRAM: a load descriptor pointing elsewhere reads what is there (zeros)
    out = run(spill_graph(load_address=SPILL_AT + 4 * N), {"x": x})
    assert not out["z"].any()


def test_a_spill_without_its_descriptors_is_one_error():
    bs = spill_graph()
    bs.dma = [d for d in bs.dma if not (d.stream == 3 and d.direction == "load")]
    with pytest.raises(AttncError, match="'spill_y'.*dma_spill but no load descriptor of stream 3"):
        run(bs, {"x": np.zeros(N, np.float32)})


def test_spill_timing_writes_then_reads_back():
    stats = simulate(spill_graph())
    nbytes = 4 * N
    assert stats.dram_read_bytes == 2 * nbytes and stats.dram_write_bytes == 2 * nbytes  # load+spill, spill+store
    dram = LAT + nbytes / BW  # one DMA context moving 256 bytes
    hop = nbytes / TINY.noc.link_bytes_per_cycle  # a route streams its bytes through all its links at once
    adds = N // 4  # 64 elements on 4 lanes
    expected = (dram + (hop + 1) + adds + (hop + 2)  # load, route, add, 2-hop route to the spill
                + (LAT + 2 * nbytes / BW)  # the spill writes 256 bytes and reads them back
                + (hop + 1) + adds + (hop + 2) + dram)  # route, multiply, route, store  # fmt: skip
    assert stats.cycles == math.ceil(expected)


def test_a_streamed_spill_reads_each_token_after_writing_it():
    # 8 tokens of 64 floats from a compute kernel (64/4 = 16 cycles of adds each) to a spill one hop away:
    # a token is 256 B = 16 cycles on the link, and 2 * 256 / 18.28 = 28 cycles of DRAM for the spill,
    # so the spill is the bottleneck; it starts after the first token and its DRAM latency
    tokens, n = 8, N * 8
    producer = kernel(0, "src", "elementwise", [port(0, 10, n, tokens)], [port(1, 11, n, tokens)],
                      [Instr("add", [0, 0], [1], {"dtype": "f32", "shape": [n]})], (("rows", tokens),))  # fmt: skip
    spill = kernel(1, "spill", "dma_spill", [port(0, 11, n, tokens)], [port(0, 12, n, tokens)], loops=(("burst", tokens),))
    spill.buffers = [Buffer("stage", 0, 2 * 4 * n // tokens, 1, True)]  # two tokens: one written out, one arriving
    dma = [desc((1, 0), "store", 11, 0, n), desc((1, 0), "load", 12, 0, n)]
    stats = simulate(make({(1, 1): [producer], (1, 0): [spill]}, [route(11, 0, 1, [(1, 1), (1, 0)], 4 * n)], dma))
    first = N // 4 + 4 * N / TINY.noc.link_bytes_per_cycle + 1
    assert stats.cycles == math.ceil(first + LAT + tokens * 2 * 4 * N / BW)
    assert (stats.dram_read_bytes, stats.dram_write_bytes) == (4 * n, 4 * n)


def repeat_load(passes, bursts=2):
    """A load of 256 bytes re-read ``passes`` times, in ``bursts`` tokens a pass, to a kernel on (1,1)."""
    tokens = passes * bursts
    loops = (("repeat", passes), ("burst", bursts)) if passes > 1 else (("burst", bursts),)
    load = kernel(0, "load_k", "dma_load", [port(0, 100)], [port(0, 1, tokens=tokens)], loops=loops)
    use = elementwise(1, "use", "add", 1, 2, tokens=tokens)
    use.buffers = [Buffer("in", 0, 2048, 1, True)]  # room for every pass: the load is never held back
    io = [IOEntry("x", "input", "f32", [N], X_AT, 4 * N)]
    # the route carries what the consumer reads: the tensor once per pass
    return make({(1, 0): [load], (1, 1): [use]}, [route(1, 0, 1, [(1, 0), (1, 1)], passes * 4 * N)],
                [desc((1, 0), "load", 1, X_AT)], io)  # fmt: skip


def test_a_repeated_load_reads_dram_once_per_pass():
    one, three = simulate(repeat_load(1)), simulate(repeat_load(3))
    assert one.dram_read_bytes == 4 * N and three.dram_read_bytes == 3 * 4 * N
    assert three.noc_byte_hops == 3 * one.noc_byte_hops == 3 * 4 * N
    load_end = {k.name: k.end for k in three.kernels}["load_k"]
    assert load_end == pytest.approx(LAT + 3 * 4 * N / BW)
    assert {k.name: k.segments for k in three.kernels}["load_k"] == 6


def test_a_repeated_load_gives_the_value_once_in_the_functional_model():
    x = np.arange(N, dtype=np.float32)
    f = Functional(repeat_load(3))  # the consumer's result is not stored: watch the contexts' values
    seen = {}
    original = f.run_context

    def spy(c, args):
        outs = original(c, args)
        seen[c.config.name] = outs
        return outs

    f.run_context = spy
    f.run({"x": x})
    np.testing.assert_array_equal(seen["use"][0], x + x)
    assert seen["load_k"][0].shape == (N,)


def test_a_compiled_fused_attention_with_re_streamed_k_and_v():
    """The lowering's own bitstream: K and V re-read per row block (repeat loops), streamed ports; the
    functional model agrees with the reference interpreter and the timing model counts every pass."""
    from attnc.backend.emit import emit_bitstream
    from attnc.interpreter import interpret
    from attnc.ir import parse_module
    from attnc.passes.fuse_attention import FuseAttentionPass
    from attnc.passes.lower_dataflow import LowerToDataflowPass
    from attnc.passes.tile import TilePass
    from attnc.passes.placement.place_route import PlaceRoutePass
    from attnc.pipeline import run_pipeline
    from attnc.simulator.io import compare, random_inputs

    text = """builtin.module {
  func.func @main(%q: tensor<1x2x32x8xf32>, %k: tensor<1x1x64x8xf32>, %v: tensor<1x1x64x8xf32>) -> tensor<1x2x32x8xf32> {
    %o = sparse.attention %q, %k, %v {scale = 0.35355339059327373 : f64, heads = 2 : i64, kv_heads = 1 : i64, causal, causal_offset = 32 : i64, softcap = 0.0 : f64} : tensor<1x2x32x8xf32>, tensor<1x1x64x8xf32>, tensor<1x1x64x8xf32> -> tensor<1x2x32x8xf32>
    func.return %o : tensor<1x2x32x8xf32>
  }
}
"""
    module = parse_module(text)
    run_pipeline(module, [FuseAttentionPass(mode="online"), TilePass(arch="tiny", mode="online", members=2, row_block=4, key_block=8),
                          LowerToDataflowPass(arch="tiny"), PlaceRoutePass(arch="tiny", heuristic_only=True)])  # fmt: skip
    bs = decode(encode(emit_bitstream(module, TINY, {})))
    contexts = {c.name: c for t in bs.tiles for c in t.contexts}
    # K and V are re-streamed per row block: by their DMA loads, or by a memory tile that stages them
    repeated = {n: dict(c.loops)["repeat"] for n, c in contexts.items() if dict(c.loops).get("repeat", 1) > 1}
    assert len(repeated) == 2, repeated
    assert any(i.params.get("fusion") == "online" for c in contexts.values() for i in c.body)
    inputs = random_inputs(bs, seed=2)
    rows = compare(run(bs, inputs), interpret(parse_module(text), inputs))
    assert all(r.ok for r in rows), rows
    stats = simulate(bs)
    loads = [c for c in contexts.values() if c.kind == "dma_load"]
    descriptors = {d.stream: d.bytes for d in bs.dma if d.direction == "load"}
    q, kv = 2 * 32 * 8 * 4, 64 * 8 * 4
    expected = sum(repeated.get(c.name, 1) * descriptors[c.outputs[0].stream] for c in loads)
    assert stats.dram_read_bytes == expected >= q + 2 * kv
    # the re-streaming sources are held back by the member that consumes them
    assert all(k.throttled for k in stats.kernels if k.name in repeated)
    assert stats.cycles > 0


def two_spills_of_one_stream(first_kernel=2):
    """x -> load (1,0) -> y = x + x on (1,1) -> two spills on (2,0), each storing its half of y to its own
    region -> z = lo * hi on (2,1) -> store (3,0). Both spills read stream 2 and both store descriptors name
    it (K and V sliced out of one QKV projection on the BERT-base layer); ``first_kernel`` is the id of the
    spill of the low half (the other gets the next id): the descriptors are in kernel order."""
    h = N // 2

    def half(kid, name, start, out_stream):
        body = [Instr("slice", [0], [1], {"dtype": "f32", "shape": [h], "starts": [start], "ends": [start + h],
                                          "steps": [1]})]  # fmt: skip
        return kernel(kid, name, "dma_spill", [port(0, 2)], [port(1, out_stream, h)], body)

    lo, hi = first_kernel, 5 - first_kernel
    mul = Instr("mul", [0, 1], [2], {"dtype": "f32", "shape": [h]})
    tiles = {
        (1, 0): [kernel(0, "load_x", "dma_load", [port(0, 100)], [port(0, 1)])],
        (1, 1): [elementwise(1, "double", "add", 1, 2)],
        (2, 0): [half(lo, "spill_lo", 0, 3), half(hi, "spill_hi", h, 4)],
        (2, 1): [kernel(4, "mul", "elementwise", [port(0, 3, h), port(1, 4, h)], [port(2, 5, h)], [mul])],
        (3, 0): [kernel(6, "store_z", "dma_store", [port(0, 5, h)], [port(0, 101, h)])],
    }
    routes = [route(1, 0, 1, [(1, 0), (1, 1)]), route(2, 1, lo, [(1, 1), (1, 0), (2, 0)]),
              route(2, 1, hi, [(1, 1), (1, 0), (2, 0)]), route(3, lo, 4, [(2, 0), (2, 1)], 2 * N),
              route(4, hi, 4, [(2, 0), (2, 1)], 2 * N), route(5, 4, 6, [(2, 1), (3, 1), (3, 0)], 2 * N)]  # fmt: skip
    lo_at, hi_at = SPILL_AT, SPILL_AT + 2 * N
    stores = [(lo, desc((2, 0), "store", 2, lo_at, h)), (hi, desc((2, 0), "store", 2, hi_at, h))]
    dma = [desc((1, 0), "load", 1, X_AT), *(d for _, d in sorted(stores, key=lambda kd: kd[0])),
           desc((2, 0), "load", 3, lo_at, h), desc((2, 0), "load", 4, hi_at, h), desc((3, 0), "store", 5, Y_AT, h)]
    io = [IOEntry("x", "input", "f32", [N], X_AT, 4 * N), IOEntry("z", "output", "f32", [h], Y_AT, 2 * N)]
    return make(tiles, routes, dma, io)


@pytest.mark.parametrize("first_kernel", [2, 3])
def test_two_spills_of_one_stream_on_one_tile_each_use_their_own_descriptor(first_kernel):
    """Each spill writes through the store descriptor it claims (kernel order), not the first that names the
    stream: the second would write its half over the first's region and read its own back unwritten (the
    BERT-base layer on edge computed V = 0, or a layer norm's residual = 0, where two spills of one stream
    shared a DMA tile)."""
    x = np.linspace(-2, 2, N, dtype=np.float32)
    y = x + x
    out = run(two_spills_of_one_stream(first_kernel), {"x": x})
    np.testing.assert_array_equal(out["z"], y[: N // 2] * y[N // 2 :])
    # and each is timed writing its own half once (not both descriptors naming the stream)
    stats = simulate(two_spills_of_one_stream(first_kernel))
    assert stats.dram_write_bytes == 2 * N + 2 * N + 2 * N  # two halves and z
    assert stats.dram_read_bytes == 4 * N + 2 * N + 2 * N  # x and the two halves read back
