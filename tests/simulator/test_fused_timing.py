"""The timing rule of a fused ``attention`` instruction (spec 2) against cycles worked out by hand on the
``tiny`` array: 4x4 MACs, 4 vector lanes, so a MAC-array fill of 4 + 4 = 8 cycles."""

from __future__ import annotations

import pytest

from attnc.arch import load_arch
from attnc.backend.bitstream import Bitstream, Instr, KernelConfig, Port, TileConfig, decode, embed_arch, encode
from attnc.errors import AttncError
from attnc.simulator.timing import simulate

TINY = load_arch("tiny")


def attention_kernel(q, k, v, *, mask=None, extra=(), arch=TINY, **params):
    """One context on compute tile (1, 1) whose inputs come from DRAM-side streams (there at time 0)."""
    shapes = [q, k, v] + ([mask] if mask else [])
    inputs = [Port(i, 10 + i, "i1" if i == 3 else "f32", list(sh), 1) for i, sh in enumerate(shapes)]
    out = list(q[:-1]) + [v[-1]]
    body = [Instr("attention", list(range(len(shapes))), [4], {"dtype": "f32", "shape": out, "scale": 0.5, **params})]
    reg = 4
    for opcode in extra:  # elementwise ops after the attention, on its result
        body.append(Instr(opcode, [reg], [reg + 1], {"dtype": "f32", "shape": out}))
        reg += 1
    cfg = KernelConfig(0, "attn", "attention", inputs, [Port(reg, 20, "f32", out, 1)], [], [], [("steps", 1)], body, 0)
    src, fp = embed_arch(arch)
    return simulate(decode(encode(Bitstream(src, fp, [TileConfig(1, 1, "compute", [cfg])]))))


def test_online_full_blocks():
    # 2 row blocks x 2 key blocks of 4: per step 4*4*8 = 128 MACs, 1*1*4 + 1*1*4 = 8 MAC cycles,
    # 3*16 lane ops (max, s - m, sum) and 16 exps; each row block's second step rescales its 4 rows
    # (4 * (dv + 4) lane ops, 4 exps), then 1/l (4 exps) and o * (1/l) (4*4 lane ops)
    stats = attention_kernel([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], fusion="online", row_block=4, key_block=4)
    assert stats.macs == 4 * 128
    assert stats.vector_ops == 4 * 48 + 2 * 32 + 2 * 16 == 288
    assert stats.sfu_ops == 4 * 16 + 2 * 4 + 2 * 4 == 80  # on the tile's exp unit, 4 a cycle
    assert stats.cycles == max(4 * 8, 288 // 4, 80 // 4) + 8 == 80


def test_causal_steps_are_skipped():
    # S = T = 8, R = Kb = 2: row block i runs key blocks 0..i, 10 of 16 steps; a step: 2*2*8 = 32 MACs,
    # ceil(2/4)*ceil(2/4)*4 + ceil(2/4)*ceil(4/4)*2 = 6 MAC cycles, 3*4 = 12 lane ops, 4 exps; 6 of the steps
    # are not their row block's first and rescale (2*(4 + 4) = 16 lane ops, 2 exps); 4 finals of 8 + 2
    stats = attention_kernel([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], fusion="online", row_block=2, key_block=2,
                             causal=1, causal_offset=0)  # fmt: skip
    assert stats.macs == 10 * 32
    assert stats.vector_ops == 10 * 12 + 6 * 16 + 4 * 8 == 248
    assert stats.sfu_ops == 10 * 4 + 6 * 2 + 4 * 2 == 60
    assert stats.cycles == max(10 * 6, 248 // 4, 60 // 4) + 8 == 70


def test_partial_blocks_and_a_causal_offset():
    # S = 5, T = 7, R = 2, Kb = 3, offset 1. Row blocks (rows 0-1, 2-3, 4), key blocks (0-2, 3-5, 6);
    # a step runs when j*3 <= last row + 1: (0,0), (1,0), (1,1), (2,0), (2,1)
    q, kv = [1, 1, 5, 4], [1, 1, 7, 4]
    stats = attention_kernel(q, kv, kv, fusion="online", row_block=2, key_block=3, causal=1, causal_offset=1)
    assert stats.macs == 3 * (2 * 3 * 8) + 2 * (1 * 3 * 8) == 192
    # steps (3*r*3 lane ops, r*3 exps each), rescales of the second steps of row blocks 1 and 2 (r*(4 + 4),
    # r exps), then the finals (r*4, r exps)
    lane = 3 * (3 * 2 * 3) + 2 * (3 * 1 * 3) + (2 * 8 + 1 * 8) + (8 + 8 + 4)
    assert stats.vector_ops == lane == 116
    assert stats.sfu_ops == 3 * 6 + 2 * 3 + (2 + 1) + (2 + 2 + 1) == 32
    assert stats.cycles == max(5 * (4 + 3), -(-116 // 4), 32 // 4) + 8 == 43
    # offset -2: row block 0 runs nothing (and pays no final); blocks 1 and 2 run key block 0 only
    stats = attention_kernel(q, kv, kv, fusion="online", row_block=2, key_block=3, causal=1, causal_offset=-2)
    assert stats.macs == 2 * 3 * 8 + 1 * 3 * 8
    assert stats.vector_ops == (3 * 2 * 3) + (3 * 1 * 3) + (8 + 4) == 39
    assert stats.sfu_ops == (6 + 3) + (2 + 1) == 12
    assert stats.cycles == max(2 * 7, -(-39 // 4), 12 // 4) + 8 == 22


def test_flat_with_a_mask_is_mac_bound_and_faster_than_the_legacy_rule():
    # flat: one key block of all 16 keys. 2 heads x 2 row blocks of 4 rows: per step 4*16*64 MACs,
    # 1*4*32 + 1*8*16 = 256 MAC cycles, 4*64 + 64 (mask) = 320 lane ops, 64 exps + 4 reciprocals
    q, kv, mask = [1, 2, 8, 32], [1, 2, 16, 32], [1, 1, 8, 16]
    stats = attention_kernel(q, kv, kv, mask=mask, fusion="flat", row_block=4, key_block=3)  # key_block ignored
    assert stats.macs == 4 * 4 * 16 * 64
    assert stats.vector_ops == 4 * 320
    assert stats.sfu_ops == 4 * 68
    assert stats.cycles == max(4 * 256, 4 * 320 // 4, 4 * 68 // 4) + 8 == 1032
    # without `fusion`: two GEMMs, then the mask's add and a softmax over the 2*8*16 scores (4 lane ops and
    # an exp each, a reciprocal per row), serially
    legacy = attention_kernel(q, kv, kv, mask=mask)
    assert legacy.macs == stats.macs
    assert legacy.vector_ops == 5 * 256 and legacy.sfu_ops == 256 + 16
    assert legacy.cycles == (2 * 2 * 4 * 32 + 2 * 2 * 8 * 16) + 5 * 256 // 4 + 272 // 4 + 8 == 1420


def test_gqa_counts_query_heads_and_other_ops_add_serially():
    # 4 query heads on 2 kv heads: 4 units of 1 row block x 1 key block (R = 8, Kb = 8), each 8*8*8 MACs,
    # 2*2*4 + 2*1*8 = 32 MAC cycles, 3*64 + 8*4 (o * 1/l) = 224 lane ops, 64 + 8 exps (one step: no rescale)
    q, kv = [1, 4, 8, 4], [1, 2, 8, 4]
    stats = attention_kernel(q, kv, kv, fusion="online", row_block=8, key_block=8, extra=("exp", "neg"))
    assert stats.macs == 4 * 8 * 8 * 8
    attn = max(4 * 32, 4 * 224 // 4, 4 * 72 // 4) + 8
    # then, over the 4*8*4 outputs, the exp on the exp unit and the neg on the lanes, one after the other
    # (no second fill)
    assert stats.cycles == attn + 128 // 4 + 128 // 4 == 232 + 64
    assert stats.vector_ops == 4 * 224 + 128
    assert stats.sfu_ops == 4 * 72 + 128


def test_a_compute_tile_without_an_exp_unit_refuses_a_fused_attention():
    import dataclasses

    tiles = tuple(dataclasses.replace(t, exp_per_cycle=0) if t.kind == "compute" else t for t in TINY.tiles)
    no_exp = dataclasses.replace(TINY, tiles=tiles, source="")
    with pytest.raises(AttncError, match=r"attention runs its exps on the tile's exp unit, and the tile has none"):
        attention_kernel([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], fusion="online", row_block=4, key_block=4,
                         arch=no_exp)  # fmt: skip
    # nor the softmax of an unscheduled attention (64 exps, 8 reciprocals) and an exp over its 8x4 output
    with pytest.raises(AttncError, match=r"compute tile \(1, 1\) is given 104 special-function operations"):
        attention_kernel([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], extra=("exp",), arch=no_exp)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"fusion": "fused", "row_block": 2, "key_block": 2}, "fusion 'fused' is not one of 'flat', 'online'"),
        ({"fusion": "online", "row_block": 2}, "row_block and key_block >= 1, got 2 and -1"),
        ({"fusion": "online", "row_block": 0, "key_block": 2}, "row_block and key_block >= 1, got 0 and 2"),
    ],
)
def test_bad_schedules_are_one_error(params, message):
    with pytest.raises(AttncError, match=message):
        attention_kernel([1, 1, 8, 4], [1, 1, 8, 4], [1, 1, 8, 4], **params)


def test_the_cost_model_implements_the_same_rule():
    """The compiler's rule (attnc.cost.attention.attention_work) is written independently from the same spec:
    both agree exactly."""
    import random

    from attnc.backend.bitstream import Instr as I
    from attnc.cost.attention import attention_work
    from attnc.simulator.work import fused_attention_work

    rng = random.Random(3)
    for _ in range(500):
        b, h, g = rng.randint(1, 2), rng.choice([1, 2, 4]), rng.choice([1, 2])
        q, kv = [b, h, rng.randint(1, 40), rng.choice([4, 8, 64])], [b, max(h // g, 1), rng.randint(1, 40)]
        k, v = kv + [q[-1]], kv + [rng.choice([4, 16, 64])]
        fusion, mask, causal = rng.choice(["flat", "online"]), rng.random() < 0.3, rng.random() < 0.5
        r, kb, off = rng.randint(1, q[2] + 3), rng.randint(1, kv[2] + 3), rng.randint(-10, 10)
        rows, cols, lanes = rng.choice([(4, 4, 4), (32, 32, 32), (8, 16, 8)])
        params = {"fusion": fusion, "row_block": r, "key_block": kb, "causal": int(causal), "causal_offset": off}
        exps = rng.choice([1, 4, lanes])
        ours = fused_attention_work(I("attention", [0, 1, 2] + [3] * mask, [4], params), [q, k, v], q[:-1] + v[-1:],
                                    rows, cols, lanes, exps)  # fmt: skip
        theirs = attention_work(q, k, v, fusion=fusion, row_block=r, key_block=kb, causal=causal, causal_offset=off,
                                has_mask=mask, rows=rows, cols=cols, lanes=lanes, exps=exps)  # fmt: skip
        got = (ours.macs, ours.mac_cycles, ours.lane_ops, ours.cycles, ours.special_ops)
        assert got == (theirs.macs, theirs.mac_cycles, theirs.lane_ops, theirs.cycles, theirs.special_ops), (q, k, v, params)
