"""A GEMM part that holds its weight block (loops ("m", M), ("k", K)) and receives it in K k-chunks: it computes
its first row block as the chunks arrive and keeps them for the later row blocks, on hand-built bitstreams for
the ``tiny`` array (compute tiles of 4x4 MACs and 4 KiB; 16 B/cycle links; DRAM 18.28 B/cycle after 94 cycles)."""

from __future__ import annotations

import pytest

from attnc.arch import load_arch
from attnc.backend.bitstream import (
    Bitstream, Buffer, DmaDescriptor, Instr, IOEntry, KernelConfig, Port, RouteConfig, TileConfig, decode, embed_arch,
    encode,
)  # fmt: skip
from attnc.simulator.timing import simulate

TINY = load_arch("tiny")
BW, LAT, LINK = TINY.dram.bytes_per_cycle, TINY.dram.latency_cycles, TINY.noc.link_bytes_per_cycle
M, K, N = 8, 64, 8  # x [M, K] @ w [K, N], f16: the weight is 1 KiB
ROWS, CHUNKS = 2, 4  # the part's row blocks and k-chunks
W_BYTES = 2 * K * N


def part(tokens: int, loops=(("m", ROWS), ("k", CHUNKS))) -> Bitstream:
    """x (a DRAM-side stream, there from the start) @ w, loaded on (1,0) in ``tokens`` tokens, on (1,1)."""
    load = KernelConfig(0, "load_w", "dma_load", [Port(0, 100, "f16", [K, N], 1)], [Port(0, 1, "f16", [K, N], tokens)],
                        [], [], [("burst", tokens)], [], 0)  # fmt: skip
    body = [Instr("matmul", [0, 1], [2], {"dtype": "f32", "shape": [M, N]})]
    # the accumulator, the whole weight block and two x chunks
    buffers = [Buffer("acc", 0, 4 * M * N, 1, False), Buffer("w", 256, W_BYTES, 1, False),
               Buffer("x", 256 + W_BYTES, 2 * 2 * M * K // CHUNKS, 1, True)]  # fmt: skip
    gemm = KernelConfig(1, "part", "gemm", [Port(0, 2, "f16", [M, K], 1), Port(1, 1, "f16", [K, N], tokens)],
                        [Port(2, 3, "f32", [M, N], 1)], [], buffers, list(loops), body, 0)  # fmt: skip
    src, fp = embed_arch(TINY)
    tiles = [TileConfig(1, 0, "dma", [load]), TileConfig(1, 1, "compute", [gemm])]
    routes = [RouteConfig(1, "w", 0, 1, [(1, 0), (1, 1)], 0, W_BYTES, 1.0)]
    dma = [DmaDescriptor((1, 0), "load", 1, 0, W_BYTES, [K, N], [N, 1], "f16")]
    io = [IOEntry("w", "input", "f16", [K, N], 0, W_BYTES)]
    return decode(encode(Bitstream(src, fp, tiles, routes, dma, [], io)))


def by_name(stats):
    return {k.name: k for k in stats.kernels}


def test_a_held_block_streamed_in_k_chunks_starts_the_part_at_its_first_chunk():
    whole, chunked = simulate(part(1)), simulate(part(CHUNKS))
    w, c = by_name(whole), by_name(chunked)
    # whole: the part waits for the block (its DRAM time, then over the link); chunked: for the first chunk
    assert w["part"].start == pytest.approx(LAT + W_BYTES / BW + 1, abs=W_BYTES / LINK)
    assert c["part"].start == pytest.approx(LAT + W_BYTES / CHUNKS / BW + W_BYTES / CHUNKS / LINK + 1, abs=2)
    assert c["part"].start < w["part"].start - W_BYTES / 2 / LINK
    # the same work either way, done sooner by the chunks' overlap with it
    assert c["part"].busy_cycles == w["part"].busy_cycles
    assert chunked.cycles < whole.cycles
    # the block is kept to the end: the part holds all of it, never more
    assert c["part"].peak_buffer_bytes == W_BYTES


def test_a_part_without_the_held_shape_reads_its_chunks_in_step():
    # the same chunks to a context walking ("m", 2), ("n", 1), ("k", 4): its weight is read once per step's
    # share, as any stream, and released as it goes (it is not held whole)
    stats = simulate(part(CHUNKS, loops=(("m", ROWS), ("n", 1), ("k", CHUNKS))))
    assert by_name(stats)["part"].peak_buffer_bytes < W_BYTES
