"""On-chip buffers in the timing model: peak bytes held per context and per tile, back-pressure of producers
(DMA loads and compute contexts) on their consumers' buffers (and where it is left out because it could
deadlock), on hand-built bitstreams
for the ``tiny`` array (compute tiles at (1..2, 1..2) with 4 KiB of SRAM in 2 banks and 4 lanes; 16 B/cycle
links, 1 cycle per hop; DRAM 18.28 B/cycle after 94 cycles)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attnc.arch import load_arch
from attnc.backend.bitstream import (
    Bitstream, Buffer, DmaDescriptor, Instr, IOEntry, KernelConfig, Port, RouteConfig, TileConfig, decode, embed_arch,
    encode,
)  # fmt: skip
from attnc.simulator.functional import run
from attnc.simulator.timing import simulate

TINY = load_arch("tiny")
BW, LAT, LINK = TINY.dram.bytes_per_cycle, TINY.dram.latency_cycles, TINY.noc.link_bytes_per_cycle
TOKENS, PER = 32, 16  # 32 tokens of 16 floats (64 bytes)
N = TOKENS * PER


def kernel(kid, name, kind, inputs, outputs, body=(), loops=(("steps", 1),), buffers=()):
    return KernelConfig(kid, name, kind, list(inputs), list(outputs), [], list(buffers), list(loops), list(body), 0)


def port(register, stream, n=N, tokens=TOKENS):
    return Port(register, stream, "f32", [n], tokens)


def route(stream, src, dst, hops, nbytes=4 * N):
    return RouteConfig(stream, f"s{stream}", src, dst, [tuple(h) for h in hops], 0, nbytes, 1.0)


def load(kid, stream, address=0, dram_stream=100):
    return kernel(kid, f"load{kid}", "dma_load", [port(0, dram_stream)], [port(0, stream)], loops=(("burst", TOKENS),))


def adds(kid, name, in_streams, out_stream, work, buffers=()):
    """``work`` chained adds per token of the sum of its inputs: 16 * work / 4 = 4 * work cycles a token."""
    body = []
    for i in range(1, len(in_streams)):
        body.append(Instr("add", [i - 1 if i == 1 else 100 + i - 1, i], [100 + i], {"dtype": "f32", "shape": [N]}))
    reg = 100 + len(in_streams) - 1 if len(in_streams) > 1 else 0
    for i in range(work):
        body.append(Instr("add", [reg, reg], [200 + i], {"dtype": "f32", "shape": [N]}))
        reg = 200 + i
    inputs = [port(i, s) for i, s in enumerate(in_streams)]
    return kernel(kid, name, "elementwise", inputs, [port(reg, out_stream)], body, (("rows", TOKENS),), buffers)


def make(tiles, routes, dma=(), io=()):
    src, fp = embed_arch(TINY)
    cfgs = [TileConfig(x, y, TINY.tile(x, y).kind, ks) for (x, y), ks in tiles.items()]
    return decode(encode(Bitstream(src, fp, cfgs, list(routes), list(dma), [], list(io))))


def slow_consumer(room=256, store=False):
    """A 2 KiB load on (1,0) in 32 tokens feeding 8 adds a token (32 cycles) on (1,1), whose double-buffered
    input buffer holds ``room`` bytes; with ``store``, the result goes back to DRAM through (0,0)."""
    tiles = {(1, 0): [load(0, 1)], (1, 1): [adds(1, "slow", [1], 2, work=8, buffers=[Buffer("in", 0, room, 1, True)])]}
    routes = [route(1, 0, 1, [(1, 0), (1, 1)])]
    dma = [DmaDescriptor((1, 0), "load", 1, 0, 4 * N, [N], [1], "f32")]
    io = [IOEntry("x", "input", "f32", [N], 0, 4 * N)]
    if store:
        tiles[(0, 0)] = [kernel(2, "store", "dma_store", [port(0, 2)], [port(0, 101)], loops=(("burst", TOKENS),),
                                buffers=[Buffer("in", 0, 2 * 4 * PER, 1, True)])]  # fmt: skip
        routes.append(route(2, 1, 2, [(1, 1), (1, 0), (0, 0)]))
        dma.append(DmaDescriptor((0, 0), "store", 2, 4 * N, 4 * N, [N], [1], "f32"))
        io.append(IOEntry("y", "output", "f32", [N], 4 * N, 4 * N))
    return make(tiles, routes, dma, io)


def by_name(stats):
    return {k.name: k for k in stats.kernels}


def test_a_load_is_held_back_by_a_slow_consumer():
    stats = simulate(slow_consumer(room=256))
    k = by_name(stats)
    token = 4 * PER  # 64 bytes
    # 256 bytes of double-buffered room = 4 tokens: the load may run at most 4 tokens ahead of the adds
    # the first token: out of DRAM, then alone over the link (the stream's later tokens queue behind it,
    # in order), then 1 cycle for the hop
    first = LAT + token / BW + token / LINK + 1
    slow = 4 * 8  # cycles of adds per token
    assert k["load0"].throttled and not k["slow"].throttled
    # the load sends token t once the consumer has released t - 4, and fetches the next one into its own staging
    # meanwhile: its last segment starts once token 30 has left, i.e. once the consumer has released 27 tokens
    assert k["load0"].end == pytest.approx(first + 27 * slow + token / BW)
    assert k["load0"].end > LAT + N * 4 / BW + 700  # far later than the DRAM alone allows
    assert stats.cycles == math.ceil(first + TOKENS * slow)  # the consumer never starves
    assert k["slow"].peak_buffer_bytes == 4 * token
    tile = next(t for t in stats.tiles if (t.x, t.y) == (1, 1))
    assert tile.peak_buffer_bytes == 4 * token
    assert stats.to_json()["tiles"][[(t.x, t.y) for t in stats.tiles].index((1, 1))]["peak_buffer_bytes"] == 256
    assert stats.warnings == []


def test_a_load_streams_token_by_token_whatever_its_loops_say():
    bs = slow_consumer(room=256)
    bs.tiles[0].contexts[0].loops = [("burst", 1)]  # one step, 32 tokens on its port
    stats = simulate(bs)
    assert by_name(stats)["load0"].segments == TOKENS
    assert stats.cycles == simulate(slow_consumer(room=256)).cycles


def test_a_context_is_cut_finer_than_the_caps_when_a_segment_would_not_fit(monkeypatch):
    # the caps on segments (all 4 here) would group 8 tokens (512 bytes) a segment into buffers of two (128 bytes):
    # the adds and the store are cut into 16 segments instead, two tokens each, the fewest that fit
    from attnc.simulator import timing

    for cap in ("MAX_SEGMENTS", "MAX_STREAMED_SEGMENTS", "MAX_DMA_SEGMENTS"):
        monkeypatch.setattr(timing, cap, 4)
    monkeypatch.setattr(timing, "OVERFLOW_IS_ERROR", False)
    stats = simulate(slow_consumer(room=2 * 4 * PER, store=True))
    k = by_name(stats)
    assert k["slow"].segments == k["store"].segments == TOKENS // 2
    assert k["slow"].peak_buffer_bytes <= 2 * 4 * PER and k["store"].peak_buffer_bytes <= 2 * 4 * PER
    assert stats.warnings == []
    # without the refinement, the caps' grain holds 8 tokens at once in each
    monkeypatch.setattr(timing, "MAX_FINE_SEGMENTS", 4)
    coarse = simulate(slow_consumer(room=2 * 4 * PER, store=True))
    assert by_name(coarse)["slow"].segments == 4
    assert sum("one segment works on 512 bytes" in w for w in coarse.warnings) == 2


@pytest.fixture
def overflow_warns(monkeypatch):
    """The simulator times an overflowing configuration with a warning instead of refusing it (OVERFLOW_IS_ERROR
    off): what the cases below measure is what the overflowing contexts held."""
    from attnc.simulator import timing

    monkeypatch.setattr(timing, "OVERFLOW_IS_ERROR", False)


def test_the_depth_is_what_the_buffers_hold_and_at_least_a_segments_span(overflow_warns):
    # no declared room: the load still sends the token the consumer's next segment works on (one at a time, each
    # once the one before is released), and the consumer is named: it cannot hold what it works on
    stats = simulate(slow_consumer(room=0))
    assert by_name(stats)["slow"].peak_buffer_bytes == 4 * PER
    assert stats.warnings == ["kernel 1 'slow' on tile (1,1): one segment works on 64 bytes of its inputs (0 held "
                              "whole + 64 of its streams' tokens), it declares 0 (timed as if they fit)"]  # fmt: skip
    # a token is fetched only once the one before is released: DRAM latency and transfer at every token
    assert stats.cycles > simulate(slow_consumer(room=256)).cycles + TOKENS * (4 * PER / BW)
    # 3 tokens of room: never more than 3 held, whatever the load could send
    assert by_name(simulate(slow_consumer(room=3 * 4 * PER)))["slow"].peak_buffer_bytes == 3 * 4 * PER
    # ... and room for everything lets the load run at the DRAM's pace
    free = simulate(slow_consumer(room=4096))
    assert by_name(free)["load0"].end == pytest.approx(LAT + 4 * N / BW)
    assert by_name(free)["slow"].peak_buffer_bytes > 16 * 4 * PER
    assert free.warnings == []


def test_timing_only_and_functional_runs_agree():
    bs = slow_consumer(room=256, store=True)
    x = np.linspace(-1, 1, N, dtype=np.float32)
    np.testing.assert_array_equal(run(bs, {"x": x})["y"], x * 256)  # 8 doublings
    timed = simulate(bs)
    assert simulate(bs, functional=True).cycles == timed.cycles
    assert by_name(timed)["load0"].throttled


def test_two_loads_into_one_consumer_are_both_throttled():
    # K and V of a fused attention: two loads, one consumer; each load waits for the consumer, which may
    # wait for the other load, but never for one that is held back by it: both are throttled. The
    # consumer's 256 double-buffered bytes are shared by its two inputs: 2 tokens each
    tiles = {
        (1, 0): [load(0, 1)],
        (2, 0): [load(1, 2, dram_stream=102)],
        (1, 1): [adds(2, "slow", [1, 2], 3, work=8, buffers=[Buffer("in", 0, 256, 1, True)])],
    }
    routes = [route(1, 0, 2, [(1, 0), (1, 1)]), route(2, 1, 2, [(2, 0), (2, 1), (1, 1)])]
    dma = [DmaDescriptor((1, 0), "load", 1, 0, 4 * N, [N], [1], "f32"),
           DmaDescriptor((2, 0), "load", 2, 4 * N, 4 * N, [N], [1], "f32")]  # fmt: skip
    stats = simulate(make(tiles, routes, dma))
    k = by_name(stats)
    assert k["load0"].throttled and k["load1"].throttled
    assert k["slow"].peak_buffer_bytes == 2 * 2 * 4 * PER
    slow = 4 * 9  # the sum of the two inputs, then 8 doublings
    assert TOKENS * slow < stats.cycles < TOKENS * slow + 200  # the consumer sets the pace, from its first token


def fork_join(fwd_tokens=TOKENS, room=256):
    """load -> slow on (1,1) and load -> fwd on (2,1) -> slow; fwd's output in ``fwd_tokens`` tokens; slow
    declares ``room`` bytes."""
    fwd = adds(1, "fwd", [1], 2, work=1, buffers=[Buffer("in", 0, 128, 1, True)])
    fwd.outputs[0].tokens = fwd_tokens
    slow = adds(2, "slow", [1, 2], 3, work=8, buffers=[Buffer("in", 0, room, 1, True)])
    slow.inputs[1].tokens = fwd_tokens
    tiles = {(1, 0): [load(0, 1)], (2, 1): [fwd], (1, 1): [slow]}
    routes = [route(1, 0, 1, [(1, 0), (2, 0), (2, 1)]), route(1, 0, 2, [(1, 0), (1, 1)]),
              route(2, 1, 2, [(2, 1), (1, 1)])]  # fmt: skip
    dma = [DmaDescriptor((1, 0), "load", 1, 0, 4 * N, [N], [1], "f32")]
    return simulate(make(tiles, routes, dma))


def test_a_fork_join_in_step_is_throttled():
    # the load waits for 'slow' and 'fwd', 'slow' for 'fwd' and the load, each for its share a step: the least
    # advanced of them always has what its next step needs, so the cycle of waits cannot deadlock and every
    # producer is held to its consumers' room
    stats = fork_join()
    k = by_name(stats)
    assert k["load0"].throttled and k["fwd"].throttled
    # 256 bytes shared by two inputs: 2 tokens of room each
    assert k["slow"].peak_buffer_bytes <= 4 * 4 * PER
    assert k["fwd"].peak_buffer_bytes <= 2 * 4 * PER
    assert TOKENS * 36 <= stats.cycles < TOKENS * 36 + 200  # the consumer sets the pace
    assert stats.warnings == []


def test_a_fork_join_through_a_whole_tensor_is_not_throttled():
    # 'fwd' sends its result in one token: 'slow' needs all of it, so 'fwd' needs all of the load, which would
    # wait for 'slow' if it were held back: it runs free, and 'slow' buffers what it sends (its whole tile: the
    # load's 2 KiB and fwd's)
    stats = fork_join(fwd_tokens=1, room=4096)
    k = by_name(stats)
    assert not k["load0"].throttled and not k["fwd"].throttled
    assert k["load0"].end == pytest.approx(LAT + 4 * N / BW)  # as fast as DRAM allows
    assert 256 < k["slow"].peak_buffer_bytes <= 4096
    assert stats.cycles >= TOKENS * 32
    assert stats.warnings == []


def crossed(b_tokens):
    """load0 -> a, load0 -> b -> c; load1 -> c, load1 -> a; b's output in ``b_tokens`` tokens. Each kernel declares
    two tokens of each input (c all of its tile: it may take b's result whole)."""
    b = adds(3, "b", [1], 3, work=1, buffers=[Buffer("in", 0, 2 * 4 * PER, 1, True)])
    b.outputs[0].tokens = b_tokens
    c = adds(4, "c", [3, 2], 11, work=8, buffers=[Buffer("in", 0, 4096, 1, True)])
    c.inputs[0].tokens = b_tokens
    tiles = {
        (1, 0): [load(0, 1)],
        (3, 2): [load(1, 2, dram_stream=102)],
        (1, 1): [adds(2, "a", [1, 2], 10, work=8, buffers=[Buffer("in", 0, 4 * 4 * PER, 1, True)])],
        (2, 1): [b],
        (2, 2): [c],
    }
    routes = [
        route(1, 0, 2, [(1, 0), (1, 1)]), route(1, 0, 3, [(1, 0), (2, 0), (2, 1)]),
        route(2, 1, 4, [(3, 2), (2, 2)]), route(2, 1, 2, [(3, 2), (2, 2), (1, 2), (1, 1)]),
        route(3, 3, 4, [(2, 1), (2, 2)]),
    ]  # fmt: skip
    dma = [DmaDescriptor((1, 0), "load", 1, 0, 4 * N, [N], [1], "f32"),
           DmaDescriptor((3, 2), "load", 2, 4 * N, 4 * N, [N], [1], "f32")]  # fmt: skip
    return simulate(make(tiles, routes, dma))


def test_back_pressure_that_would_close_a_cycle_of_waits_is_left_out():
    # with b's result in one token, throttling both loads could deadlock: load0 waits for a, a for load1,
    # load1 for c, c for all of b, b for load0. load0 (first by id) is throttled, load1 is not.
    stats = crossed(b_tokens=1)
    k = by_name(stats)
    assert k["load0"].throttled and not k["load1"].throttled
    assert all(x.end > 0 for x in stats.kernels)
    # ... the same cycle with every wait in step cannot deadlock: both loads and b are held back
    stats = crossed(b_tokens=TOKENS)
    k = by_name(stats)
    assert k["load0"].throttled and k["load1"].throttled and k["b"].throttled
    assert all(x.end > 0 for x in stats.kernels)


def test_a_compute_producer_is_held_back_by_a_small_consumer_buffer():
    # 'fast' (4 cycles a token, its input from DRAM-side) on (1,1) streams 32 tokens of 64 bytes to 'slow'
    # (32 cycles a token) on (2,1), whose 256 double-buffered bytes hold 4 of them. A token crosses the link in
    # 64/16 = 4 cycles + 1 hop. 'fast' sends token t once 'slow' has released t - 4 and computes the next one
    # meanwhile into its own output buffer: tokens 0..3 leave at 4, 8, 12, 16; 'slow' runs token t from
    # 9 + 32 t and releases it at 9 + 32 (t + 1); token 30 leaves at the release of token 26, 9 + 32 * 27 = 873,
    # and 'fast' computes its last token from then on.
    fast = adds(0, "fast", [100], 1, work=1)
    slow = adds(1, "slow", [1], 2, work=8, buffers=[Buffer("in", 0, 256, 1, True)])
    stats = simulate(make({(1, 1): [fast], (2, 1): [slow]}, [route(1, 0, 1, [(1, 1), (2, 1)])]))
    k = by_name(stats)
    assert k["fast"].throttled and not k["slow"].throttled
    assert k["fast"].end == 9 + 32 * 27 + 4  # free, it would end at 32 * 4 = 128
    assert stats.cycles == 9 + 32 * TOKENS  # 'slow' never waits
    assert k["slow"].peak_buffer_bytes == 4 * 4 * PER  # exactly its room
    assert stats.warnings == []


def _over_tile():
    """One 8 KiB token from (1,1) into (2,1), a kernel that declares no buffers on a 4 KiB tile."""
    n = 2048
    src = kernel(0, "src", "elementwise", [Port(0, 10, "f32", [n], 1)], [Port(1, 11, "f32", [n], 1)],
                 [Instr("add", [0, 0], [1], {"dtype": "f32", "shape": [n]})])  # fmt: skip
    dst = kernel(1, "dst", "elementwise", [Port(0, 11, "f32", [n], 1)], [Port(1, 12, "f32", [n], 1)],
                 [Instr("add", [0, 0], [1], {"dtype": "f32", "shape": [n]})])  # fmt: skip
    return make({(1, 1): [src], (2, 1): [dst]}, [route(11, 0, 1, [(1, 1), (2, 1)], 4 * n)])


def test_input_buffers_beyond_the_tile_are_refused(monkeypatch):
    # one 8 KiB token from (1,1) into (2,1), whose tile has 4 KiB: the hardware cannot hold it
    from attnc.errors import AttncError
    from attnc.simulator import timing

    bs = _over_tile()
    with pytest.raises(AttncError, match=r"tile \(2,1\): its contexts' input buffers held 8192 bytes at the peak, "
                                         r"the tile has 4096 \(kernel 1 'dst' held 8192 \(declares 0\)\)$"):
        simulate(bs)
    monkeypatch.setattr(timing, "OVERFLOW_IS_ERROR", False)  # or timed with a warning that says so
    assert simulate(bs).warnings == [
        "tile (2,1): its contexts' input buffers held 8192 bytes at the peak, the tile has 4096 "
        "(kernel 1 'dst' held 8192 (declares 0)) (timed as if they fit)"
    ]


def test_input_buffers_within_the_tile_are_reported():
    # the same 8 KiB token in two halves into a tile of 4 KiB: one at a time fits (the second is sent once the
    # first has been released), and the peaks say how much was held
    n = 2048
    src = kernel(0, "src", "elementwise", [Port(0, 10, "f32", [n], 2)], [Port(1, 11, "f32", [n], 2)],
                 [Instr("add", [0, 0], [1], {"dtype": "f32", "shape": [n]})], loops=[("rows", 2)])  # fmt: skip
    dst = kernel(1, "dst", "elementwise", [Port(0, 11, "f32", [n], 2)], [Port(1, 12, "f32", [n], 2)],
                 [Instr("add", [0, 0], [1], {"dtype": "f32", "shape": [n]})], loops=[("rows", 2)],
                 buffers=[Buffer("in", 0, 4096, 1, True)])  # fmt: skip
    stats = simulate(make({(1, 1): [src], (2, 1): [dst]}, [route(11, 0, 1, [(1, 1), (2, 1)], 4 * n)]))
    assert by_name(stats)["dst"].peak_buffer_bytes == 4096
    assert by_name(stats)["src"].peak_buffer_bytes == 0  # its input is DRAM-side: not held on chip
    assert stats.warnings == []
    doc = stats.to_json()
    assert {"peak_buffer_bytes", "buffer_banks", "throttled"} <= set(doc["kernels"][0])


def test_the_summary_names_the_fullest_buffers():
    stats = simulate(slow_consumer(room=256))
    assert "fullest buffers: tile (1,1) held 256 B of its 4096 B at the peak; 1 source(s) held back" in stats.summary()


def test_a_source_stuck_on_its_throttle_is_named_in_the_deadlock_error(monkeypatch):
    # the depth rule cannot deadlock; a depth of 0 (no room at all) would, and the error says who waits for whom
    from attnc.errors import AttncError
    from attnc.simulator import timing

    real = timing._Sim._back_pressure

    def no_room(self):
        real(self)
        for k in self.kernels.values():
            for th in k.throttles:
                th.depth = 0

    monkeypatch.setattr(timing._Sim, "_back_pressure", no_room)
    with pytest.raises(AttncError, match=r"kernel 0 'load0' is held back by kernel 1 'slow' \(0 of its tokens released"):
        simulate(slow_consumer(room=256))


def test_an_overflow_is_one_clear_error(monkeypatch):
    # the default (OVERFLOW_IS_ERROR: no configuration the compiler writes overflows) refuses the run with every
    # line the warnings of the measuring mode give: the context that cannot hold one segment, then the tile over
    # its SRAM
    from attnc.errors import AttncError
    from attnc.simulator import timing

    assert timing.OVERFLOW_IS_ERROR
    with pytest.raises(AttncError) as e:
        simulate(slow_consumer(room=0))
    monkeypatch.setattr(timing, "OVERFLOW_IS_ERROR", False)
    warned = simulate(slow_consumer(room=0)).warnings
    assert str(e.value) == ("simulate: TILES: the configuration holds more than the array's buffers can (1 problem): "
                            + warned[0].removesuffix(" (timed as if they fit)"))
    assert str(e.value).endswith("kernel 1 'slow' on tile (1,1): one segment works on 64 bytes of its inputs (0 held "
                                 "whole + 64 of its streams' tokens), it declares 0")  # fmt: skip
    monkeypatch.setattr(timing, "OVERFLOW_IS_ERROR", True)
    assert simulate(slow_consumer(room=256)).warnings == []  # within its buffers: timed as ever


def test_attnc_simulate_refuses_a_bitstream_over_its_buffers(tmp_path, capsys):
    """A hand-made bitstream whose tile (2,1) receives an 8 KiB token into 4 KiB of SRAM: `attnc simulate` says
    which tile, context and bytes in one line and exits 2 (the functional results of a configuration the hardware
    cannot hold are not given either)."""
    from cli_helpers import assert_user_error, call

    bs = _over_tile()
    path = tmp_path / "over.bit"
    path.write_bytes(encode(bs))
    assert_user_error(*call(capsys, "simulate", path, "--timing-only")[::2],
                      "tile (2,1): its contexts' input buffers held 8192 bytes at the peak, the tile has 4096 "
                      "(kernel 1 'dst' held 8192 (declares 0))")  # fmt: skip


def staged_kv(passes=4):
    """Fused attention's K/V path in miniature: load_K (1,0) and load_V (2,0) each stream N floats in TOKENS
    tokens into a stage on the memory tile (0,2), which holds them and re-sends them ``passes`` times (its
    ``("repeat", P)`` loop: it reads its input during the first pass, a wait for all of its load) to one
    member on (1,1) that takes a token of each a step."""

    def stage(kid, name, src, dst, at):
        body = [Instr("reshape", [0], [1], {"dtype": "f32", "shape": [N]})]
        return kernel(kid, name, "data", [port(0, src)], [port(1, dst, tokens=passes * TOKENS)], body,
                      (("repeat", passes), ("block", TOKENS)), [Buffer("kv", at, 4 * N + 2 * 4 * PER, 1, True)])  # fmt: skip

    body = [Instr("add", [0, 1], [2], {"dtype": "f32", "shape": [N]})]
    member = kernel(4, "member", "attention", [port(0, 3, tokens=passes * TOKENS), port(1, 4, tokens=passes * TOKENS)],
                    [port(2, 5, tokens=passes * TOKENS)], body, (("row_block", passes), ("key_block", TOKENS)),
                    [Buffer("work", 0, 4 * 4 * 4 * PER, 2, True)])  # fmt: skip
    tiles = {(1, 0): [load(0, 1)], (2, 0): [load(1, 2, dram_stream=102)],
             (0, 2): [stage(2, "kstage", 1, 3, 0), stage(3, "vstage", 2, 4, 8192)], (1, 1): [member]}  # fmt: skip
    routes = [route(1, 0, 2, [(1, 0), (0, 0), (0, 1), (0, 2)]), route(2, 1, 3, [(2, 0), (2, 1), (2, 2), (1, 2), (0, 2)]),
              route(3, 2, 4, [(0, 2), (1, 2), (1, 1)], passes * 4 * N),
              route(4, 3, 4, [(0, 2), (1, 2), (1, 1)], passes * 4 * N)]  # fmt: skip
    dma = [DmaDescriptor((1, 0), "load", 1, 0, 4 * N, [N], [1], "f32"),
           DmaDescriptor((2, 0), "load", 2, 4 * N, 4 * N, [N], [1], "f32")]  # fmt: skip
    return simulate(make(tiles, routes, dma))


def test_both_stages_of_k_and_v_are_held_to_the_member_buffers():
    # each load waits for its stage (its room) and each stage for all of its load (the first pass reads it): a
    # two-context loop the depth rules out, which must not count as a wait for all of a producer on the walk
    # that checks the V stage's back-pressure (member -> K stage -> load_K -> K stage -> member -> V stage):
    # with it the V stage ran free and its member buffered the passes it sent ahead
    stats = staged_kv()
    k = by_name(stats)
    assert k["load0"].throttled and k["load1"].throttled
    assert k["kstage"].throttled and k["vstage"].throttled
    assert k["member"].peak_buffer_bytes <= 4 * 4 * 4 * PER
    assert stats.warnings == []


def two_producers_into_a_store():
    """'fast' (4 cycles a token) on (1,1) and 'slow' (32 cycles a token) on (2,1), inputs DRAM-side, each send 32
    tokens of 64 bytes to one DMA store on (1,0) (two ports, its 512 double-buffered bytes: 4 tokens of each),
    as a GEMM grid's parts send their blocks of the result."""
    fast = adds(0, "fast", [100], 1, work=1)
    slow = adds(1, "slow", [101], 2, work=8)
    store = kernel(2, "store", "dma_store", [port(0, 1), port(1, 2)], [port(2, 103, n=2 * N, tokens=1)],
                   [Instr("concat", [0, 1], [2], {"axis": 0, "dtype": "f32", "shape": [2 * N]})],
                   loops=(("burst", TOKENS),), buffers=[Buffer("work", 0, 512, 1, True)])  # fmt: skip
    routes = [route(1, 0, 2, [(1, 1), (1, 0)]), route(2, 1, 2, [(2, 1), (2, 0), (1, 0)])]
    dma = [DmaDescriptor((1, 0), "store", 1, 0, 8 * N, [2 * N], [1], "f32")]
    io = [IOEntry("y", "output", "f32", [2 * N], 0, 8 * N)]
    return make({(1, 1): [fast], (2, 1): [slow], (1, 0): [store]}, routes, dma, io)


def test_a_store_writes_the_blocks_of_its_inputs_as_they_arrive():
    # each descriptor block has its own DRAM address, so the store writes whichever token has arrived, a token a
    # segment (64 segments): 'fast' is held back only by the store's own pace, never by 'slow'. Its first 4 tokens
    # fill the store's room for it (4 + 5 cycles each: compute, the link, the hop); the store's first write waits
    # for DRAM's latency (94 cycles), then it writes a token in 64 / 18.28 = 3.5 cycles, faster than 'fast' makes
    # them: 'fast' ends within a token of 94 + 28 * 4 (tokens 4..31 after the first write). Were the store to take
    # its share of both inputs at each segment, 'fast' could run only 4 tokens ahead of 'slow' (32 cycles a
    # token): it would end near 32 * 27.
    stats = simulate(two_producers_into_a_store())
    k = by_name(stats)
    assert k["store"].segments == 2 * TOKENS
    assert LAT + 28 * 4 <= k["fast"].end <= LAT + 29 * 4 + 2 * (4 * PER / BW)
    # 'slow' sets the end: its last token at 32 * 32, over a link (4 cycles) and two hops, then written (3.5)
    assert stats.cycles == math.ceil(32 * TOKENS + 4 * PER / LINK + 2 + 4 * PER / BW)
    assert k["slow"].end == 32 * TOKENS and stats.warnings == []  # never held back
    assert stats.dram_write_bytes == 8 * N


def partly_staged_k(passes=4):
    """A K stage that keeps a unit's first keys only, in miniature: load 'kept' (1,0) streams N floats once into
    the stage on the memory tile (0,2), which keeps them; load 'through' (2,0) streams the other N floats once per
    pass (its ``("repeat", P)`` loop); each pass the stage sends both (their concatenation) to a member on (1,1)
    that takes a token a step."""
    kept = load(0, 1)
    through = kernel(1, "through", "dma_load", [port(0, 102)], [port(0, 2, tokens=passes * TOKENS)],
                     loops=(("repeat", passes), ("burst", TOKENS)))  # fmt: skip
    body = [Instr("concat", [0, 1], [2], {"dtype": "f32", "shape": [2 * N], "axis": 0})]
    stage = kernel(2, "kstage", "data", [port(0, 1), port(1, 2, tokens=passes * TOKENS)],
                   [port(2, 3, n=2 * N, tokens=passes * 2 * TOKENS)], body, (("repeat", passes), ("block", 2 * TOKENS)),
                   [Buffer("kv", 0, 4 * N + 4 * 4 * PER, 1, True)])  # fmt: skip
    member = kernel(3, "member", "attention", [port(0, 3, n=2 * N, tokens=passes * 2 * TOKENS)],
                    [port(1, 4, tokens=passes * TOKENS)], [Instr("reshape", [0], [1], {"dtype": "f32", "shape": [N]})],
                    (("row_block", passes), ("key_block", 2 * TOKENS)), [Buffer("work", 0, 4 * 4 * 4 * PER, 2, True)])  # fmt: skip
    tiles = {(1, 0): [kept], (2, 0): [through], (0, 2): [stage], (1, 1): [member]}
    routes = [route(1, 0, 2, [(1, 0), (0, 0), (0, 1), (0, 2)]),
              route(2, 1, 2, [(2, 0), (2, 1), (2, 2), (1, 2), (0, 2)], passes * 4 * N),
              route(3, 2, 3, [(0, 2), (1, 2), (1, 1)], passes * 8 * N)]  # fmt: skip
    dma = [DmaDescriptor((1, 0), "load", 1, 0, 4 * N, [N], [1], "f32"),
           DmaDescriptor((2, 0), "load", 2, 4 * N, 4 * N, [N], [1], "f32")]  # fmt: skip
    return simulate(make(tiles, routes, dma))


def test_a_stage_reads_what_it_passes_through_in_every_pass_and_what_it_keeps_in_the_first():
    # the input that comes again each pass (its load repeats) is read as the passes go: the stage holds two
    # tokens of it, not the P copies the first pass would otherwise wait for; the kept input is read in the first
    passes = 4
    stats = partly_staged_k(passes)
    k = by_name(stats)
    assert stats.dram_read_bytes == 4 * N + passes * 4 * N
    assert k["kstage"].peak_buffer_bytes <= 4 * N + 4 * 4 * PER
    # the link to the member carries the passes (read in the first pass, the stage would start sending only once
    # all P copies had come: 1,477 cycles, not 1,137)
    assert stats.cycles < 1.2 * passes * 2 * 4 * N / LINK
    assert stats.warnings == []
