"""The operation-cost table (docs/simulator.md, "Operation costs") counted by hand on small kernels, timed by
the simulator from bitstreams: which unit each op runs on, how many lane and special-function operations it
is, and the compiler's copy of the table (attnc.cost.op_costs) against the simulator's."""

from __future__ import annotations

import pytest

from attnc.arch import load_arch
from attnc.backend.bitstream import Bitstream, Instr, KernelConfig, Port, TileConfig, decode, embed_arch, encode
from attnc.errors import AttncError
from attnc.simulator.timing import simulate
from attnc.simulator.work import context_cycles, kernel_work

TINY = load_arch("tiny")  # compute (1, 1): 4x4 MACs, 4 lanes, exp unit 4/cycle; sfu (3, 1): 4 lanes
SFU, COMPUTE, BUTTERFLY = (3, 1), (1, 1), (0, 1)


class Run:
    """The simulator's stats of a one-context run and the context's compute cycles on its tile (the work
    rule alone: what the event model adds for SRAM and links is not this table's business)."""

    def __init__(self, stats, cycles):
        self.stats, self.cycles = stats, cycles

    def __getattr__(self, name):
        return getattr(self.stats, name)


def run(pos, inputs, body, arch=TINY):
    """One context on tile ``pos``: its inputs come from DRAM-side streams (there at time 0), its last
    result leaves on a stream nobody reads."""
    ports = [Port(i, 10 + i, "f32", list(shape), 1) for i, shape in enumerate(inputs)]
    last = body[-1]
    out = Port(last.results[0], 30, "f32", list(last.params["shape"]), 1)
    cfg = KernelConfig(0, "k", "elementwise", ports, [out], [], [], [("steps", 1)], list(body), 0)
    src, fp = embed_arch(arch)
    tile = arch.tile(*pos)
    stats = simulate(decode(encode(Bitstream(src, fp, [TileConfig(pos[0], pos[1], tile.kind, [cfg])]))))
    c = context_cycles(kernel_work(cfg, tile), tile)
    assert stats.kernels[0].busy_cycles >= c.compute + c.fill
    return Run(stats, c.compute + c.fill)


def op(opcode, operands, result, shape, **params):
    return Instr(opcode, list(operands), [result], {"dtype": "f32", "shape": list(shape), **params})


# ---------------------------------------------------------------------------
# row-wise ops and activations on an sfu tile: lane and special operations alike, 4 a cycle


def test_softmax():
    # [2, 8] along the last axis: per element max, x - m, sum, * (1/sum) and one exp; per row one reciprocal
    stats = run(SFU, [[2, 8]], [op("softmax", [0], 1, [2, 8], axis=-1)])
    assert stats.sfu_ops == 16 * (4 + 1) + 2 == 82
    assert stats.cycles == -(-82 // 4) == 21
    # along axis 0: 8 rows of 2
    assert run(SFU, [[2, 8]], [op("softmax", [0], 1, [2, 8], axis=0)]).sfu_ops == 16 * 5 + 8


def test_log_softmax():
    # per element max, x - m, sum, x - (m + log sum), one exp; per row m + log sum and the log
    stats = run(SFU, [[2, 8]], [op("log_softmax", [0], 1, [2, 8], axis=-1)])
    assert stats.sfu_ops == 16 * (4 + 1) + 2 * (1 + 1) == 84


def test_layer_norm_with_and_without_bias():
    # per element: sum x, x - mean, (x - mean)^2, sum, * rstd, * gamma (+ beta); per row: /L twice, + eps
    # and one rsqrt
    body = [op("layer_norm", [0, 1, 2], 3, [2, 8], axis=-1, epsilon=1e-5)]
    stats = run(SFU, [[2, 8], [8], [8]], body)
    assert stats.sfu_ops == 16 * 7 + 2 * (3 + 1) == 120
    assert stats.cycles == 30
    no_bias = run(SFU, [[2, 8], [8]], [op("layer_norm", [0, 1], 2, [2, 8], axis=-1, epsilon=1e-5)])
    assert no_bias.sfu_ops == 16 * 6 + 2 * 4 == 104
    # over the last two axes of [2, 2, 4]: 2 rows of 8
    both = run(SFU, [[2, 2, 4], [2, 4]], [op("layer_norm", [0, 1], 2, [2, 2, 4], axis=-2, epsilon=1e-5)])
    assert both.sfu_ops == 104


def test_gelu_in_both_forms():
    # erf form: x/sqrt2, erf, 1 + e, x * (..), * 0.5; tanh form: x*x, * 0.044715, + 1, x * (..),
    # * sqrt(2/pi), tanh, 1 + t, x * (..), * 0.5
    erf = run(SFU, [[4, 8]], [op("gelu", [0], 1, [4, 8], approximate="none")])
    tanh = run(SFU, [[4, 8]], [op("gelu", [0], 1, [4, 8], approximate="tanh")])
    assert erf.sfu_ops == 32 * (4 + 1) and erf.cycles == 40
    assert tanh.sfu_ops == 32 * (8 + 1) and tanh.cycles == 72


def test_silu_and_rms_norm_as_the_graph_writes_them():
    # SiLU = x * sigmoid(x): one special function and one multiply per element
    silu = run(SFU, [[4, 8]], [op("sigmoid", [0], 1, [4, 8]), op("mul", [0, 1], 2, [4, 8])])
    assert silu.sfu_ops == 32 + 32 and silu.cycles == 16
    # RMSNorm over rows of 8: x*x (16), mean (16, it counts its input), + eps (2), rsqrt (2), x * r (16),
    # * gamma (16)
    body = [
        op("mul", [0, 0], 2, [2, 8]),
        op("reduce", [2], 3, [2, 1], kind="mean", axes=[1], keepdims=1),
        op("add", [3], 4, [2, 1]),
        op("rsqrt", [4], 5, [2, 1]),
        op("mul", [0, 5], 6, [2, 8]),
        op("mul", [6, 1], 7, [2, 8]),
    ]
    stats = run(SFU, [[2, 8], [8]], body)
    assert stats.sfu_ops == 16 + 16 + 2 + 2 + 16 + 16 == 68
    assert stats.cycles == 17


# ---------------------------------------------------------------------------
# which unit: a compute tile's lanes and exp unit, a butterfly tile


def test_a_compute_tile_runs_special_functions_on_its_exp_unit():
    # GELU over 32 elements: 128 lane ops on 4 lanes (32 cycles), then 32 erfs on the exp unit (4 a cycle: 8)
    stats = run(COMPUTE, [[4, 8]], [op("gelu", [0], 1, [4, 8])])
    assert (stats.vector_ops, stats.sfu_ops) == (128, 32)
    assert stats.cycles == 32 + 8
    # a slower exp unit takes longer
    import dataclasses

    slow = dataclasses.replace(
        TINY, source="",
        tiles=tuple(dataclasses.replace(t, exp_per_cycle=1) if t.kind == "compute" else t for t in TINY.tiles),
    )  # fmt: skip
    assert run(COMPUTE, [[4, 8]], [op("gelu", [0], 1, [4, 8])], arch=slow).cycles == 32 + 32


def test_a_butterfly_tile_has_no_special_function_unit():
    with pytest.raises(AttncError, match=r"butterfly tile \(0, 1\) is given 32 special-function operations"):
        run(BUTTERFLY, [[4, 8]], [op("exp", [0], 1, [4, 8])])
    # an add is 16 butterflies (2 elements each)
    assert run(BUTTERFLY, [[4, 8]], [op("add", [0, 0], 1, [4, 8])]).butterfly_ops == 16


# ---------------------------------------------------------------------------
# fused attention on the presets' compute tiles: the bound docs/arch.md derives


def _fused(arch_name, q, kv, **params):
    arch = load_arch(arch_name)
    body = [Instr("attention", [0, 1, 2], [3], {"dtype": "f32", "shape": q[:-1] + kv[-1:], "scale": 0.125, **params})]
    ports = [Port(i, 10 + i, "f32", list(s), 1) for i, s in enumerate([q, kv, kv])]
    cfg = KernelConfig(0, "attn", "attention", ports, [Port(3, 30, "f32", q[:-1] + kv[-1:], 1)], [], [],
                       [("steps", 1)], body, 0)  # fmt: skip
    src, fp = embed_arch(arch)
    stats = simulate(decode(encode(Bitstream(src, fp, [TileConfig(1, 1, "compute", [cfg])]))))
    c = context_cycles(kernel_work(cfg, arch.tile(1, 1)), arch.tile(1, 1))
    return Run(stats, c.compute + c.fill)


def test_flat_on_flat_cloud_is_eight_times_the_mac_time():
    # one 32x32 tile, 4 lanes, 4 exps a cycle; 64 rows x 256 keys, d = 64: MAC cycles
    # 2*8*64 + 2*2*256 = 2048; lanes 4 ops x 16384 scores / 4 = 16384 cycles; exps (16384 + 64) / 4 = 4112
    stats = _fused("flat-cloud", [1, 1, 64, 64], [1, 1, 256, 64], fusion="flat", row_block=64, key_block=256)
    assert stats.vector_ops == 4 * 64 * 256 and stats.sfu_ops == 64 * 256 + 64
    assert stats.cycles == 16384 + 64 == 8 * 2048 + 64


def test_online_on_cloud_keeps_the_mac_array_busy():
    # 256 rows x 1024 keys in key blocks of 256, d = dv = 64, on 32x32 MACs with 32 lanes and 32 exps:
    # MAC cycles 8*(8*4*64 + 2*1024) = 32768; lane ops 3*256*1024 + 3 rescales * 256*(64 + 4) + 256*64 =
    # 855040 (26720 cycles); exps 262144 + 3*256 + 256 = 263168 (8224 cycles): the MAC array binds
    stats = _fused("cloud", [1, 1, 256, 64], [1, 1, 1024, 64], fusion="online", row_block=256, key_block=256)
    assert stats.vector_ops == 855040 and stats.sfu_ops == 263168
    assert stats.cycles == 32768 + 64


# ---------------------------------------------------------------------------
# the compiler's table is the simulator's


def test_the_compiler_table_is_the_simulators():
    from attnc.cost import op_costs as oc
    from attnc.simulator import work as sw

    assert set(oc.OP_COSTS) == set(sw.PASSES)
    for name, c in oc.OP_COSTS.items():
        assert (c.lane, c.special, c.lane_row, c.special_row) == sw.PASSES[name], name
    assert oc.DEFAULT == oc.OpCost(1, 0, 0, 0)
    assert (oc.FLAT_SCORE.lane, oc.FLAT_SCORE.special) == sw.FLAT_PER_SCORE
    assert (oc.ONLINE_SCORE.lane, oc.ONLINE_SCORE.special) == sw.ONLINE_PER_SCORE


@pytest.mark.parametrize(
    "name, shape, params, operands",
    [("softmax", [3, 5], {"axis": -1}, 1), ("softmax", [3, 5], {"axis": 0}, 1), ("log_softmax", [2, 3, 4], {"axis": 1}, 1),
     ("layer_norm", [2, 3, 4], {"axis": -1}, 3), ("layer_norm", [2, 3, 4], {"axis": 1}, 2), ("gelu", [6], {}, 1),
     ("gelu", [6], {"approximate": "tanh"}, 1), ("exp", [2, 2], {}, 1), ("add", [2, 2], {}, 2)],
)  # fmt: skip
def test_the_compiler_counts_each_op_as_the_simulator_does(name, shape, params, operands):
    from attnc.cost import op_costs as oc

    ins = Instr(name, list(range(operands)), [9], {"dtype": "f32", "shape": shape, **params})
    ports = [Port(i, 10 + i, "f32", shape if i == 0 else shape[-1:], 1) for i in range(operands)]
    cfg = KernelConfig(0, "k", "elementwise", ports, [], [], [], [("steps", 1)], [ins], 0)
    w = kernel_work(cfg, TINY.tile(*SFU))
    elements = 1
    for d in shape:
        elements *= d
    rows = oc.row_count(name, shape, params.get("axis", -1))
    assert (w.lane_ops, w.special_ops) == oc.vector_work(name, elements, rows, approximate=params.get("approximate", ""),
                                                         operands=operands)  # fmt: skip


def test_a_matmul_with_a_row_block_runs_the_mac_array_part_full():
    # [2, 10, 8] x [8, 6] on 4x4 MACs: all rows at once, ⌈10/4⌉ = 3 row steps; 2 rows at a time (an unfused
    # QKᵀ holding two whole score rows for its softmax epilogue), 5 blocks of 1 part-full step; 8 at a time,
    # 2 blocks (8 and 2 rows) of ⌈8/4⌉ = 2 steps. Each step: ⌈6/4⌉ column steps of k = 8 cycles, per batch
    from attnc.cost.kernels import body_work
    from attnc.dialects import sparse as sp
    from attnc.ir import parse_module, main_func

    def cycles(row_block):
        params = {"row_block": row_block} if row_block else {}
        w = kernel_work(KernelConfig(0, "k", "gemm", [Port(0, 10, "f32", [2, 10, 8], 1), Port(1, 11, "f32", [8, 6], 1)],
                                     [], [], [], [("steps", 1)], [op("matmul", [0, 1], 2, [2, 10, 6], **params)], 0),
                        TINY.tile(*COMPUTE))  # fmt: skip
        assert w.macs == 2 * 10 * 6 * 8
        attr = f" {{row_block = {row_block} : i64}}" if row_block else ""
        module = parse_module(
            "func.func @main(%a: tensor<2x10x8xf32>, %b: tensor<8x6xf32>) -> tensor<2x10x6xf32> {\n"
            f"  %c = sparse.matmul %a, %b{attr} : tensor<2x10x8xf32>, tensor<8x6xf32> -> tensor<2x10x6xf32>\n"
            "  func.return %c : tensor<2x10x6xf32>\n}"
        )
        mm = [o for o in main_func(module).body.block.ops if isinstance(o, sp.MatmulOp)]
        assert body_work(mm, TINY.tile(*COMPUTE)).mac_cycles == w.mac_cycles  # the compiler counts the same
        return w.mac_cycles

    per_step = 2 * 2 * 8  # batch x column steps x k
    assert cycles(0) == 3 * per_step
    assert cycles(2) == 5 * per_step
    assert cycles(8) == 4 * per_step
    assert cycles(16) == cycles(0)
