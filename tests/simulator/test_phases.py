"""SRAM phases in the timing and the functional model: contexts of different nonzero phases share a tile's SRAM
addresses, a phase opens once its tile's lower phases have finished, nothing streams into a context that is not
open (a spill stores early and reads back late), and what the simulator refuses. Hand-built bitstreams for the
``tiny`` array (compute tiles at (1..2, 1..2) with 4 KiB of SRAM and 4 lanes; DMA tiles on the top row; 16 B/cycle
links, 1 cycle per hop; DRAM 18.28 B/cycle after 94 cycles)."""

from __future__ import annotations

import numpy as np
import pytest

from attnc.arch import load_arch
from attnc.backend.bitstream import (
    Bitstream, Buffer, DmaDescriptor, Instr, IOEntry, KernelConfig, Port, RouteConfig, TileConfig, decode, embed_arch,
    encode,
)  # fmt: skip
from attnc.errors import AttncError
from attnc.simulator.functional import run
from attnc.simulator.timing import simulate

TINY = load_arch("tiny")
BW, LAT = TINY.dram.bytes_per_cycle, TINY.dram.latency_cycles
N = 64  # floats per tensor: 256 bytes, 16 cycles of one add on 4 lanes


def port(register, stream, n=N):
    return Port(register, stream, "f32", [n], 1)


def adds(kid, name, in_stream, out_stream, work=1, phase=0, buffers=()):
    """``work`` chained adds over N floats: 16 * work cycles, in 4 steps (so that contexts can take turns)."""
    body, reg = [], 0
    for i in range(work):
        body.append(Instr("add", [reg, reg], [10 + i], {"dtype": "f32", "shape": [N]}))
        reg = 10 + i
    return KernelConfig(kid, name, "elementwise", [port(0, in_stream)], [port(reg, out_stream)], [], list(buffers),
                        [("rows", 4)], body, 0, phase)  # fmt: skip


def dma(kid, name, kind, inputs, outputs, body=(), phase=0):
    return KernelConfig(kid, name, kind, list(inputs), list(outputs), [], [], [("burst", 1)], list(body), 0, phase)


def route(stream, src, dst, hops, nbytes=4 * N):
    return RouteConfig(stream, f"s{stream}", src, dst, [tuple(h) for h in hops], 0, nbytes, 1.0)


def desc(channel, direction, stream, address, n=N):
    return DmaDescriptor(channel, direction, stream, address, 4 * n, [n], [1], "f32")


def make(tiles, routes=(), descs=(), io=()):
    src, fp = embed_arch(TINY)
    cfgs = [TileConfig(x, y, TINY.tile(x, y).kind, ks) for (x, y), ks in tiles.items()]
    return decode(encode(Bitstream(src, fp, cfgs, list(routes), list(descs), [], list(io))))


def by_name(stats):
    return {k.name: k for k in stats.kernels}


# ---------------------------------------------------------------------------
# buffers that share addresses, and the gate


def two_phases(phase_a=1, phase_b=2, a=(0, 3072), b=(1024, 3072)):
    """Two contexts on tile (1,1) reading DRAM-side streams: ``a`` (10 adds, 160 cycles) and ``b`` (2 adds)."""
    ka = adds(0, "a", 100, 101, work=10, phase=phase_a, buffers=[Buffer("wa", a[0], a[1], 1, True)])
    kb = adds(1, "b", 102, 103, work=2, phase=phase_b, buffers=[Buffer("wb", b[0], b[1], 1, True)])
    return make({(1, 1): [ka, kb]})


def test_phases_share_addresses_and_the_higher_one_waits_for_the_lower():
    # 3072 + 3072 bytes overlapping on a 4 KiB tile: they never hold their buffers at the same time
    stats = simulate(two_phases())
    k = by_name(stats)
    assert k["a"].start == 0 and k["a"].end == 160
    assert k["b"].start == k["a"].end and k["b"].end == 160 + 32 == stats.cycles
    assert stats.tiles[0].buffer_bytes == 6144  # what the contexts declare; the tile holds 3072 at a time
    # the same two as residents would take turns from the start (both are ready at 0)
    both = make({(1, 1): [adds(0, "a", 100, 101, work=10), adds(1, "b", 102, 103, work=2)]})
    assert by_name(simulate(both))["b"].start < 160


def test_the_gate_waits_for_every_lower_phase_of_its_own_tile_only():
    tiles = {
        (1, 1): [adds(0, "p1", 100, 101, work=4, phase=1), adds(1, "p3", 102, 103, work=1, phase=3),
                 adds(2, "p2", 104, 105, work=2, phase=2)],
        (2, 1): [adds(3, "other_p3", 106, 107, work=1, phase=3)],  # no lower phase on its tile: open at once
    }  # fmt: skip
    k = by_name(simulate(make(tiles)))
    assert (k["p1"].start, k["p1"].end) == (0, 64)
    assert (k["p2"].start, k["p2"].end) == (64, 96)
    assert (k["p3"].start, k["p3"].end) == (96, 112)
    assert k["other_p3"].start == 0


def test_overlapping_buffers_of_one_phase_are_refused():
    # together too big for the tile: the capacity check names the phase and its kernels
    need = r"need 6144 bytes \(0 resident \+ 6144 in phase 1: kernels 0 'a', 1 'b'\), the tile has 4096$"
    with pytest.raises(AttncError, match=r"^simulate: TILES: tile \(1,1\): its contexts' buffers " + need):
        simulate(two_phases(1, 1))
    # small enough to fit side by side, but placed on the same addresses
    with pytest.raises(AttncError, match=r"buffer 'wa' \[0, 2048\) of kernel 0 'a' \(phase 2\) overlaps buffer 'wb' "
                                         r"\[1024, 2048\) of kernel 1 'b' \(phase 2\): only contexts of different "
                                         r"nonzero phases may share SRAM addresses"):
        simulate(two_phases(2, 2, a=(0, 2048), b=(1024, 1024)))
    simulate(two_phases(2, 2, a=(0, 2048), b=(2048, 1024)))  # side by side: fine


@pytest.mark.parametrize("phases", [(0, 0), (0, 1), (2, 0)])
def test_a_resident_buffer_overlapping_another_is_refused(phases):
    with pytest.raises(AttncError, match=r"overlaps .*: only contexts of different nonzero phases"):
        simulate(two_phases(*phases, a=(0, 1024), b=(512, 1024)))
    simulate(two_phases(*phases, a=(0, 1024), b=(1024, 1024)))


def test_resident_buffers_count_beside_the_largest_phase():
    # resident 1024 + max(phase 1: 2048, phase 2: 3072) = 4096: fits; one byte more does not
    def tile(extra):
        return make({(1, 1): [
            adds(0, "r", 100, 101, buffers=[Buffer("r", 0, 1024, 1, True)]),
            adds(1, "p1", 102, 103, phase=1, buffers=[Buffer("p1", 1024, 2048, 1, True)]),
            adds(2, "p2", 104, 105, phase=2, buffers=[Buffer("p2", 1024, 3072 + extra, 1, True)]),
        ]})  # fmt: skip

    simulate(tile(0))
    with pytest.raises(AttncError, match=r"need 4097 bytes \(1024 resident \+ 3073 in phase 2: kernels 2 'p2'\)"):
        simulate(tile(1))


def test_a_buffer_outside_the_tile_is_refused():
    with pytest.raises(AttncError, match=r"buffer 'wb' \[3500, 4500\) of kernel 1 'b' \(phase 2\) lies outside the "
                                         r"tile's SRAM \[0, 4096\)"):
        simulate(two_phases(a=(0, 1000), b=(3500, 1000)))
    simulate(two_phases(a=(0, 1000), b=(3000, 1000)))


# ---------------------------------------------------------------------------
# what may stream into a phased context


@pytest.mark.parametrize("src_phase", [1, 0])
def test_a_compute_stream_into_another_phase_is_refused(src_phase):
    tiles = {(2, 1): [adds(0, "src", 100, 1, phase=src_phase)], (1, 1): [adds(1, "dst", 1, 2, phase=2)]}
    with pytest.raises(AttncError, match=rf"^simulate: stream 1 from kernel 0 'src' \(phase {src_phase}\) into kernel "
                                         r"1 'dst' \(phase 2\): data crossing phases goes through DRAM"):
        simulate(make(tiles, [route(1, 0, 1, [(2, 1), (1, 1)])]))
    tiles[(2, 1)][0].phase = 2
    simulate(make(tiles, [route(1, 0, 1, [(2, 1), (1, 1)])]))  # the same phase: fine


def test_a_dma_load_feeding_two_phases_is_refused():
    tiles = {
        (1, 0): [dma(0, "load", "dma_load", [port(0, 100)], [port(0, 1)])],
        (1, 1): [adds(1, "one", 1, 2, phase=1)],
        (2, 1): [adds(2, "two", 1, 3, phase=2)],
    }
    routes = [route(1, 0, 1, [(1, 0), (1, 1)]), route(1, 0, 2, [(1, 0), (2, 0), (2, 1)])]
    with pytest.raises(AttncError, match=r"^simulate: dma_load kernel 0 'load' feeds contexts of different phases "
                                         r"\(kernel 1 'one' \(phase 1\), kernel 2 'two' \(phase 2\)\)"):
        simulate(make(tiles, routes))
    tiles[(2, 1)][0].phase = 1
    simulate(make(tiles, routes))


# ---------------------------------------------------------------------------
# back-pressure: nothing streams into a gated context


def gated_consumer(source: KernelConfig, source_tile, hops, descs=()):
    """``source`` streams 1 into 'use' (phase 2, tile (1,1)), gated by 'first' (phase 1: 20 adds, 320 cycles)."""
    tiles = {
        (1, 1): [adds(1, "first", 100, 101, work=20, phase=1), adds(2, "use", 1, 2, phase=2)],
        source_tile: [source],
    }
    return make(tiles, [route(1, 0, 2, hops)], descs)


def test_a_load_into_a_gated_context_waits_for_the_gate():
    load = dma(0, "load", "dma_load", [port(0, 50)], [port(0, 1)])
    stats = simulate(gated_consumer(load, (1, 0), [(1, 0), (1, 1)], [desc((1, 0), "load", 1, 0)]))
    k = by_name(stats)
    assert k["first"].end == 320
    assert k["load"].start == 320  # not at 0: its data would land in 'first''s addresses
    assert k["load"].end == pytest.approx(320 + LAT + 4 * N / BW)
    assert k["use"].start == pytest.approx(k["load"].end + 4 * N / 16 + 1)  # the route: 16 cycles and a hop


def test_a_compute_producer_waits_for_its_gated_consumer():
    # the producer is on another tile, of the consumer's phase, and open from the start: it holds back anyway
    stats = simulate(gated_consumer(adds(0, "src", 100, 1, phase=2), (2, 1), [(2, 1), (1, 1)]))
    k = by_name(stats)
    assert k["src"].start == k["first"].end == 320


def spill_into_gated(store_at=0, load_at=0):
    """'src' (resident, tile (2,1)) -> spill on (2,0) -> 'use' (phase 2, tile (1,1)), gated for 320 cycles."""
    tiles = {
        (2, 1): [adds(0, "src", 100, 1)],
        (2, 0): [dma(3, "spill", "dma_spill", [port(0, 1)], [port(0, 3)])],
        (1, 1): [adds(1, "first", 101, 102, work=20, phase=1), adds(2, "use", 3, 4, phase=2)],
    }
    routes = [route(1, 0, 3, [(2, 1), (2, 0)]), route(3, 3, 2, [(2, 0), (1, 0), (1, 1)])]
    descs = [desc((2, 0), "store", 1, store_at), desc((2, 0), "load", 3, load_at)]
    return make(tiles, routes, descs)


def test_a_spill_into_a_gated_context_writes_early_and_reads_back_after_the_gate():
    stats = simulate(spill_into_gated())
    k = by_name(stats)
    nbytes = 4 * N
    assert (stats.dram_write_bytes, stats.dram_read_bytes) == (nbytes, nbytes)
    arrived = k["src"].end + nbytes / 16 + 1  # the route (2,1) -> (2,0)
    assert k["spill"].start == pytest.approx(arrived)
    (slices,) = [t.slices for t in stats.tiles if (t.x, t.y) == (2, 0)]
    write, read = slices
    # the write side: latency and the bytes written, well before the gate opens
    assert write[2] == pytest.approx(arrived) and write[3] == pytest.approx(arrived + LAT + nbytes / BW)
    assert write[3] < 320
    # the read side: from the gate, latency and the bytes read
    assert read[2] == 320 and read[3] == pytest.approx(320 + LAT + nbytes / BW) == k["spill"].end
    assert k["use"].start == pytest.approx(k["spill"].end + nbytes / 16 + 2)  # a route streams over all its links


def test_a_spill_into_an_open_context_is_one_pass_as_before():
    tiles = {
        (2, 1): [adds(0, "src", 100, 1)],
        (2, 0): [dma(3, "spill", "dma_spill", [port(0, 1)], [port(0, 3)])],
        (1, 1): [adds(2, "use", 3, 4, phase=2)],  # phase 2, nothing below it on its tile: open
    }
    routes = [route(1, 0, 3, [(2, 1), (2, 0)]), route(3, 3, 2, [(2, 0), (1, 0), (1, 1)])]
    descs = [desc((2, 0), "store", 1, 0), desc((2, 0), "load", 3, 0)]
    stats = simulate(make(tiles, routes, descs))
    k = by_name(stats)
    assert k["spill"].end - k["spill"].start == pytest.approx(LAT + 2 * 4 * N / BW)  # both sides in one transfer


# ---------------------------------------------------------------------------
# a spill of several parts


def concat_spill(load_at=2048):
    """x -> load -> 'double' (x+x) and 'square' (x*x) -> one spill of their concatenation -> 'use' (y+y) ->
    store: z = concat(2x, x^2) * 2."""
    cat = [Instr("concat", [0, 1], [2], {"dtype": "f32", "shape": [2 * N], "axis": 0})]
    dbl = adds(1, "double", 1, 2)
    sq = KernelConfig(2, "square", "elementwise", [port(0, 1)], [port(1, 3)], [], [], [("rows", 1)],
                      [Instr("mul", [0, 0], [1], {"dtype": "f32", "shape": [N]})], 0)  # fmt: skip
    use = KernelConfig(4, "use", "elementwise", [port(0, 4, 2 * N)], [port(1, 5, 2 * N)], [], [], [("rows", 1)],
                       [Instr("add", [0, 0], [1], {"dtype": "f32", "shape": [2 * N]})], 0, 1)  # fmt: skip
    tiles = {
        (1, 0): [dma(0, "load", "dma_load", [port(0, 100)], [port(0, 1)])],
        (1, 1): [dbl],
        (2, 1): [sq],
        (2, 0): [dma(3, "spill", "dma_spill", [port(0, 2), port(1, 3)], [port(2, 4, 2 * N)], cat)],
        (1, 2): [use],
        (3, 0): [dma(5, "store", "dma_store", [port(0, 5, 2 * N)], [port(0, 101, 2 * N)])],
    }
    routes = [route(1, 0, 1, [(1, 0), (1, 1)]), route(1, 0, 2, [(1, 0), (2, 0), (2, 1)]),
              route(2, 1, 3, [(1, 1), (2, 1), (2, 0)]), route(3, 2, 3, [(2, 1), (2, 0)]),
              route(4, 3, 4, [(2, 0), (2, 1), (2, 2), (1, 2)], 8 * N),
              route(5, 4, 5, [(1, 2), (2, 2), (3, 2), (3, 1), (3, 0)], 8 * N)]  # fmt: skip
    descs = [desc((1, 0), "load", 1, 0), desc((2, 0), "store", 2, 2048, 2 * N), desc((2, 0), "load", 4, load_at, 2 * N),
             desc((3, 0), "store", 5, 4096, 2 * N)]  # fmt: skip
    io = [IOEntry("x", "input", "f32", [N], 0, 4 * N), IOEntry("z", "output", "f32", [2 * N], 4096, 8 * N)]
    return make(tiles, routes, descs, io)


def test_a_spill_of_several_inputs_stores_its_body_s_value():
    x = np.linspace(-2, 2, N, dtype=np.float32)
    out = run(concat_spill(), {"x": x})
    np.testing.assert_array_equal(out["z"], np.concatenate([x + x, x * x]) * 2)
    # read back from DRAM: a load descriptor elsewhere reads what is there (zeros)
    assert not run(concat_spill(load_at=6144), {"x": x})["z"].any()
    stats = simulate(concat_spill())
    # x loaded; the concatenation written once and read back once; z stored
    assert (stats.dram_read_bytes, stats.dram_write_bytes) == (4 * N + 8 * N, 8 * N + 8 * N)
    assert by_name(stats)["spill"].start >= max(by_name(stats)[n].end for n in ("double", "square"))


def test_a_load_shared_by_a_resident_and_a_gated_context_can_deadlock_and_says_why():
    # the load feeds 'resident' and 'late' (phase 2); 'late' opens after 'early' (phase 1), which needs what
    # 'resident' computes (spilled): the load holds back for 'late', so nothing moves. The hardware would hang;
    # the simulator says so (the compiler gives each consuming phase its own DMA context).
    tiles = {
        (1, 0): [dma(0, "load", "dma_load", [port(0, 100)], [port(0, 1)])],
        (2, 1): [adds(1, "resident", 1, 2)],
        (2, 0): [dma(2, "spill", "dma_spill", [port(0, 2)], [port(0, 3)])],
        (1, 1): [adds(3, "early", 3, 4, phase=1), adds(4, "late", 1, 5, phase=2)],
    }
    routes = [route(1, 0, 1, [(1, 0), (2, 0), (2, 1)]), route(1, 0, 4, [(1, 0), (1, 1)]),
              route(2, 1, 2, [(2, 1), (2, 0)]), route(3, 2, 3, [(2, 0), (1, 0), (1, 1)])]  # fmt: skip
    descs = [desc((1, 0), "load", 1, 0), desc((2, 0), "store", 2, 256), desc((2, 0), "load", 3, 256)]
    with pytest.raises(AttncError, match=r"^simulate: the configuration deadlocks: kernel 0 'load' holds its data "
                                         r"back for kernel 4 'late' \(phase 2\), which is not open yet; kernel 1 "
                                         r"'resident' waits for stream 1"):
        simulate(make(tiles, routes, descs))
    # with its own load, 'late' is served after the gate and the rest runs at once
    tiles[(3, 0)] = [dma(5, "load_late", "dma_load", [port(0, 100)], [port(0, 6)])]
    tiles[(1, 1)][1] = adds(4, "late", 6, 5, phase=2)
    routes[1] = route(6, 5, 4, [(3, 0), (2, 0), (1, 0), (1, 1)])
    k = by_name(simulate(make(tiles, routes, descs + [desc((3, 0), "load", 6, 0)])))
    assert k["load"].start == 0 and k["load_late"].start == k["early"].end


def _streamed_add(t: int, n: int):
    """A maker of contexts adding a stream of ``t`` tokens of ``n`` floats to itself, with two tokens of input
    room (one computed on, the next arriving)."""

    def streamed(kid, name, src, dst, phase=0):
        return KernelConfig(kid, name, "elementwise", [Port(0, src, "f32", [n], t)], [Port(1, dst, "f32", [n], t)],
                            [], [Buffer("in", 0, 2 * 4 * n // t, 1, True)], [("rows", t)],
                            [Instr("add", [0, 0], [1], {"dtype": "f32", "shape": [n]})], 0, phase)  # fmt: skip

    return streamed


def _streamed_spill(t: int, n: int) -> KernelConfig:
    """Spill 3: stream 1 in, stream 3 back, ``t`` tokens of ``n`` floats, two tokens of room."""
    return KernelConfig(3, "spill", "dma_spill", [Port(0, 1, "f32", [n], t)], [Port(0, 3, "f32", [n], t)], [],
                        [Buffer("stage", 0, 2 * 4 * n // t, 1, True)], [("burst", t)], [], 0)  # fmt: skip


def test_a_streamed_spill_reads_back_only_what_it_has_written_once_its_consumer_opens():
    # 8 tokens of 64 floats, one every 16 cycles; the consumer opens at 160, while the spill writes token 2
    t, n = 8, 8 * N
    streamed = _streamed_add(t, n)
    spill = _streamed_spill(t, n)
    tiles = {
        (2, 1): [streamed(0, "src", 100, 1)],
        (2, 0): [spill],
        (1, 1): [adds(1, "first", 101, 102, work=10, phase=1), streamed(2, "use", 3, 4, phase=2)],
    }
    routes = [route(1, 0, 3, [(2, 1), (2, 0)], 4 * n), route(3, 3, 2, [(2, 0), (1, 0), (1, 1)], 4 * n)]
    stats = simulate(make(tiles, routes, [desc((2, 0), "store", 1, 0, n), desc((2, 0), "load", 3, 0, n)]))
    k = by_name(stats)
    assert k["first"].end == 160
    assert (stats.dram_write_bytes, stats.dram_read_bytes) == (4 * n, 4 * n)
    # one DMA channel: token 0 is written from its arrival at 33 (latency, then 256 bytes), tokens 1 and 2 as
    # they come (the consumer is gated); after token 2 the read-back starts (latency again), and from then on
    # the spill reads back what it has written before writing the next token
    token = 4 * N / BW
    assert k["spill"].start == 33
    # the spill declares 2 tokens of room, so 'src' sends token 2 once token 0 is written (at
    # 33 + LAT + token) and it arrives 16 + 1 cycles later, after token 1 is written
    assert k["use"].start == pytest.approx(33 + LAT + token + 17 + token + LAT + token + 4 * N / 16 + 2)
    assert k["spill"].end == pytest.approx(33 + 2 * LAT + 2 * t * token + (17 - token))  # token 2's wait, above


def test_a_spill_carrying_several_streams_between_phases():
    # the compiler's form: one spill per pair of phases, output i is input i, each with its own descriptors
    two = [Instr("add", [0, 1], [2], {"dtype": "f32", "shape": [N]})]
    tiles = {
        (2, 1): [adds(0, "a", 100, 1, phase=1), adds(1, "b", 101, 2, phase=1)],
        (2, 0): [dma(2, "spill", "dma_spill", [port(0, 1), port(1, 2)], [port(0, 3), port(1, 4)])],
        (1, 1): [adds(3, "first", 102, 103, work=20, phase=1),
                 KernelConfig(4, "use", "elementwise", [port(0, 3), port(1, 4)], [port(2, 5)], [], [], [("rows", 4)],
                              two, 0, 2)],
    }  # fmt: skip
    routes = [route(1, 0, 2, [(2, 1), (2, 0)]), route(2, 1, 2, [(2, 1), (2, 0)]),
              route(3, 2, 4, [(2, 0), (1, 0), (1, 1)]), route(4, 2, 4, [(2, 0), (1, 0), (1, 1)])]  # fmt: skip
    descs = [desc((2, 0), "store", 1, 0), desc((2, 0), "store", 2, 256), desc((2, 0), "load", 3, 0),
             desc((2, 0), "load", 4, 256)]  # fmt: skip
    stats = simulate(make(tiles, routes, descs))
    k = by_name(stats)
    nbytes = 2 * 4 * N
    assert (stats.dram_write_bytes, stats.dram_read_bytes) == (nbytes, nbytes)
    assert k["spill"].end == pytest.approx(320 + LAT + nbytes / BW)  # read back from the gate
    assert k["use"].start > k["spill"].end


def test_a_producer_into_a_split_spill_is_held_back_by_its_store_alone():
    # src (phase 1) streams to 'first' (phase 1 on (1,1)) and to a spill whose reader 'use' (phase 2 on (1,1)) is
    # gated by 'first'. The spill's store waits for src only and its read-back for the gate: src waits for the
    # store's room, not for the gate, so no cycle of waits runs through a whole wait and src is held back to the
    # two tokens the spill declares (before the spill's two sides were one node, and src ran free)
    t, n = 8, 8 * N
    streamed = _streamed_add(t, n)
    spill = _streamed_spill(t, n)
    tiles = {
        (2, 1): [streamed(0, "src", 100, 1, phase=1)],
        (2, 0): [spill],
        (1, 1): [streamed(1, "first", 1, 102, phase=1), streamed(2, "use", 3, 4, phase=2)],
    }
    routes = [route(1, 0, 3, [(2, 1), (2, 0)], 4 * n), route(1, 0, 1, [(2, 1), (1, 1)], 4 * n),
              route(3, 3, 2, [(2, 0), (1, 0), (1, 1)], 4 * n)]  # fmt: skip
    stats = simulate(make(tiles, routes, [desc((2, 0), "store", 1, 0, n), desc((2, 0), "load", 3, 0, n)]))
    k = by_name(stats)
    assert k["src"].throttled
    assert k["spill"].peak_buffer_bytes <= 2 * 4 * n // t and k["first"].peak_buffer_bytes <= 2 * 4 * n // t
    assert k["use"].start >= k["first"].end and stats.warnings == []
