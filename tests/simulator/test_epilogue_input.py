"""An input that a reducing context's epilogue alone reads (no matmul operand comes from it), in one token per
result block, is read as each block's reduction ends: a SwiGLU gate multiplied into the up projection's sub-blocks,
which its producer sends as its own blocks end. Needed evenly over the steps (the rule for other streams), the
consumer would wait at a block's first step for what the producer makes at that block's last."""

from __future__ import annotations

from attnc.backend.bitstream import Instr, KernelConfig, Port
from attnc.simulator.timing import _InPort, _read_at_block_ends

BLOCKS, CHUNKS = 4, 3  # the part's (m, n) sub-blocks and the k-chunks of each


def part(gate_feeds_matmul: bool) -> KernelConfig:
    """A GEMM part: x (reg 0) @ w (reg 1) in k-chunks, times the gate (reg 2) on each finished sub-block; or the
    gate scaling x before the matmul (then the matmul reads it at every step)."""
    if gate_feeds_matmul:
        body = [Instr("mul", [0, 2], [3]), Instr("matmul", [3, 1], [4])]
    else:
        body = [Instr("matmul", [0, 1], [3]), Instr("reshape", [2], [5]), Instr("mul", [3, 5], [4])]
    ins = [Port(0, 10, "f16", [8, 8], BLOCKS * CHUNKS), Port(1, 11, "f16", [8, 8], BLOCKS * CHUNKS),
           Port(2, 12, "f16", [8, 8], BLOCKS)]  # fmt: skip
    return KernelConfig(0, "up", "gemm", ins, [Port(4, 13, "f16", [8, 8], BLOCKS)], [], [],
                        [("m", 1), ("n", BLOCKS), ("k", CHUNKS)], body, 0)  # fmt: skip


def ports(cfg: KernelConfig) -> list[_InPort]:
    return [_InPort(p.stream, p.tokens, False) for p in cfg.inputs]


def test_the_gate_is_needed_when_each_sub_blocks_reduction_ends():
    steps = BLOCKS * CHUNKS
    cfg = part(gate_feeds_matmul=False)
    x, w, gate = got = ports(cfg)
    _read_at_block_ends(cfg, got, steps, BLOCKS, steps)
    assert x.share is None and w.share is None
    assert gate.in_step and gate.share is not None
    # sub-block j ends at step 3j + 2: its gate token is needed by then, not at its first step, and freed then
    assert [gate.need(i, steps) for i in range(steps)] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    assert [gate.released(i, steps) for i in range(steps)] == [0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4]
    # (the even rule: token j at the first step of block j)
    assert [x.need(i, steps) for i in range(0, steps, CHUNKS)] == [1, 4, 7, 10]
    assert [_InPort(12, BLOCKS, False).need(i, steps) for i in range(0, steps, CHUNKS)] == [1, 2, 3, 4]


def test_an_input_that_reaches_the_matmul_is_read_in_step():
    steps = BLOCKS * CHUNKS
    cfg = part(gate_feeds_matmul=True)
    got = ports(cfg)
    _read_at_block_ends(cfg, got, steps, BLOCKS, steps)
    assert all(p.share is None and not p.in_step for p in got)
