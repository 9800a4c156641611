"""fuse-attention + tile: the chosen kernels compute what the attention computes, and the search
honours the buffers, the array and the options it is given."""

import numpy as np
import pytest
from example_script import load_make_examples
from onnx import TensorProto, helper

from attnc.arch import load_arch
from attnc.dialects import dataflow as df
from attnc.dialects import sparse as sp
from attnc.errors import AttncError
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret
from attnc.ir import main_func, parse_module, print_module
from attnc.cost.attention import Shape
from attnc.passes.tile import search
from attnc.pipeline import run_pipeline


def attention_model(b=2, h=4, hkv=2, s=12, t=20, d=8, causal=False, mask=None, dtype=TensorProto.FLOAT):
    ins = [
        helper.make_tensor_value_info("Q", dtype, [b, h, s, d]),
        helper.make_tensor_value_info("K", dtype, [b, hkv, t, d]),
        helper.make_tensor_value_info("V", dtype, [b, hkv, t, d]),
    ]
    names = ["Q", "K", "V"]
    if mask is not None:
        ins.append(helper.make_tensor_value_info("M", mask, [1, 1, s, t]))
        names.append("M")
    node = helper.make_node("Attention", names, ["O"], is_causal=int(causal))
    graph = helper.make_graph([node], "attn", ins, [helper.make_tensor_value_info("O", dtype, [b, h, s, d])])
    return import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))


def inputs_for(module, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for arg, name in zip(main_func(module).body.block.args, ("Q", "K", "V", "M")):
        shape = sp.shape_of(arg)
        if "i1" in str(arg.type):
            x = rng.random(shape) > 0.3
            x[..., 0, :] = False  # a fully masked row gives zeros in every schedule
            out[name] = x
        else:
            out[name] = rng.standard_normal(shape).astype(np.float32)
    return out


CASES = {
    "plain": {},
    "causal": {"causal": True},
    "bool-mask": {"mask": TensorProto.BOOL},
    "additive-mask": {"mask": TensorProto.FLOAT},
    "mha": {"hkv": 4},
}


@pytest.mark.parametrize("mode", ["online", "flat", "unfused"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_scheduled_kernels_compute_the_attention(case, mode):
    module = attention_model(**CASES[case])
    inputs = inputs_for(module)
    before = interpret(module, inputs)
    run_pipeline(module, f"fuse-attention{{mode={mode}}},tile{{arch=edge groups=2 members=3}}")
    text = print_module(module)
    assert "attnc.fusion" not in text
    if mode == "unfused":
        # one spill per member: the probabilities (the softmax is the QKᵀ kernel's epilogue)
        assert text.count("dataflow.spill") == 6 and "fusion =" not in text
    else:
        assert text.count(f'fusion = "{mode}"') == 6
    after = interpret(module, inputs)
    np.testing.assert_allclose(after["O"], before["O"], rtol=0, atol=2e-6)
    # and the partitioning keeps them
    run_pipeline(module, "lower-to-dataflow{arch=edge}")
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    kinds = sorted(k.kind.data for k in kernels)
    if mode == "unfused":
        # edge's compute tiles have an exp unit: each softmax is its QKᵀ kernel's epilogue
        assert kinds.count("dma_spill") == 6 and kinds.count("softmax") == 0 and kinds.count("gemm") == 12
    else:
        assert kinds.count("attention") == 6
    np.testing.assert_allclose(interpret(module, inputs)["O"], before["O"], rtol=0, atol=2e-6)


def test_members_forward_k_and_v_along_the_group():
    module = attention_model()
    run_pipeline(module, "fuse-attention{mode=online},tile{arch=edge groups=1 members=3},lower-to-dataflow{arch=edge}")
    kernels = {k.sym_name.data: k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)}
    first, second, third = (kernels[f"attn0_g0_c{c}"] for c in range(3))
    # K and V of the second member come from the first, not from the DMA loads
    assert {v.owner for v in second.inputs} >= {first}
    assert {v.owner for v in third.inputs} >= {second}
    assert len(first.outputs) == 3 and len(third.outputs) == 1
    # streamed ports: one token per step of the member's loops
    steps = int(np.prod(third.trips.get_values()))
    assert third.tokens.get_values() == (steps,)


def test_forced_sizes_are_kept_and_round_trip():
    module = attention_model()
    run_pipeline(module, "fuse-attention{mode=online},tile{arch=edge groups=2 members=2 row-block=4 key-block=8}")
    ops = [o for o in main_func(module).body.block.ops if isinstance(o, sp.AttentionOp)]
    assert [o.schedule() for o in ops] == [("online", 4, 8)] * 4
    again = parse_module(print_module(module))
    assert print_module(again) == print_module(module)


def test_unmarked_attention_is_left_to_the_per_head_lowering():
    module = attention_model()
    run_pipeline(module, "tile{arch=edge}")
    assert sum(isinstance(o, sp.AttentionOp) and o.fusion is None for o in main_func(module).body.block.ops) == 1


def test_unknown_mode_is_one_error():
    module = attention_model()
    with pytest.raises(AttncError, match="mode must be one of"):
        run_pipeline(module, "fuse-attention{mode=fast}")


def test_a_forced_schedule_that_cannot_fit_says_why():
    module = attention_model(b=1, s=256, t=256, d=64)
    with pytest.raises(AttncError, match=r"no flat-head schedule fits edge \(\d+ buffers exceed the tile's SRAM\)"):
        run_pipeline(module, "fuse-attention{mode=flat-head},tile{arch=edge}")


BERT = dict(batch=1, heads=12, kv_heads=12, d=64, dv=64, eb=2, causal=False, causal_offset=0, has_mask=False,
            kv_from_dram=True)  # fmt: skip


@pytest.mark.parametrize("arch", ["edge", "cloud"])
def test_search_respects_the_buffer_and_prefers_fusion_at_length(arch):
    a = load_arch(arch)
    tile = a.tiles_of("compute")[0]
    for n in (512, 2048):
        sh = Shape(rows=n, keys=n, **BERT)
        best = search(sh, a, "auto").best
        assert best.buffer_bytes <= tile.sram_bytes
        assert best.schedule.mode in ("online", "flat")
        unfused = search(sh, a, "unfused").best
        assert unfused.cycles > best.cycles and unfused.dram_bytes > best.dram_bytes


def test_online_traffic_is_compulsory_when_rows_fit_and_unfused_grows_quadratically():
    a = load_arch("cloud")
    compulsory = {n: 4 * 12 * n * 64 * 2 for n in (512, 1024, 2048)}
    for n, minimum in compulsory.items():
        sh = Shape(rows=n, keys=n, **BERT)
        online = search(sh, a, "online").best
        assert online.schedule.passes == 1 and online.dram_bytes == minimum
        for mode in ("flat", "unfused"):
            assert search(sh, a, mode).best.dram_bytes >= minimum
    un = {n: search(Shape(rows=n, keys=n, **BERT), a, "unfused").best.dram_bytes for n in (512, 1024, 2048)}
    # quadratic: doubling N more than triples the traffic once the scores dominate
    assert un[2048] / un[1024] > 3 and un[1024] / un[512] > 3


def _staged_attention(keys: int, schedule: str):
    """An online attention of 64 queries against ``keys`` keys (2 heads of 16, f32) tiled on edge as one group of
    two 32-row members taking 8-row blocks, whose report must name ``schedule``, lowered: (module, inputs, the
    reference output, kernels by name, the K and V stages)."""
    module = attention_model(b=1, h=2, hkv=2, s=64, t=keys, d=16)
    inputs = inputs_for(module)
    before = interpret(module, inputs)
    run_pipeline(module, "fuse-attention{mode=online},tile{arch=edge groups=1 members=2 row-block=8 key-block=16}")
    assert schedule in main_func(module).attributes["attnc.tile_report"].data
    run_pipeline(module, "lower-to-dataflow{arch=edge}")
    kernels = {k.sym_name.data: k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)}
    stages = [k for k in kernels.values() if k.tile_kind.data == "memory"]
    assert sorted(k.sym_name.data for k in stages) == ["attn0_g0_kstage", "attn0_g0_vstage"]
    return module, inputs, before, kernels, stages


def test_passes_restream_k_and_v_from_memory_tiles_when_they_fit_there():
    # 512 keys of K and V do not fit a 16 KiB edge tile, so 32-row members walk 8-row blocks and
    # stream K/V four times; the memory tiles hold a unit of each, so DRAM is read once
    module, inputs, before, kernels, stages = _staged_attention(512, "passes=4 (K/V staged in memory tiles)")
    assert all(k.loop_schedule()[1] == ("repeat", 4) for k in stages)
    loads = [k for k in kernels.values() if k.kind.data == "dma_load"]
    assert all("repeat" not in dict(k.loop_schedule()) for k in loads)
    np.testing.assert_allclose(interpret(module, inputs)["O"], before["O"], rtol=0, atol=2e-6)


def test_passes_keep_the_first_keys_in_memory_tiles_when_a_unit_does_not_fit_there():
    # 2048 keys of f32 K (128 KiB a unit) do not fit an 80 KiB memory tile: each stage keeps the first 1216 keys
    # of a unit (its tile less two key blocks to send and two passing through), loaded once, and the other 832
    # come through a load that reads just them, strided over the units, once per pass
    module, inputs, before, kernels, stages = _staged_attention(
        2048, "passes=4 (keys 0..1216 of K/V kept in memory tiles, the rest re-read per pass)")
    for st in stages:
        assert st.buffer_bytes.value.data <= 80 * 1024
        assert list(st.attributes["input_repeats"].get_values()) == [1, 4]
        kept, through = (x.owner for x in st.inputs)
        assert "repeat" not in dict(kept.loop_schedule()) and dict(through.loop_schedule())["repeat"] == 4
        assert [sp.shape_of(x)[2] for x in st.inputs] == [1216, 832]
        assert [x.dram_offset.value.data for x in (kept, through)] == [0, 1216 * 16 * 4]
        assert list(through.dram_strides.get_values()) == [2048 * 16, 2048 * 16, 16, 1]
    assert not any(k.sym_name.data in ("load_K", "load_V") for k in kernels.values())
    np.testing.assert_allclose(interpret(module, inputs)["O"], before["O"], rtol=0, atol=2e-6)


def test_bert_attention_on_edge_reads_k_and_v_within_a_quarter_of_the_capacity_bound():
    """Issue 14: BERT-base attention on edge, f16, at seq 2K and 4K. A resident query row takes 456 B (its q,
    the f32 output accumulator, max, sum and double-buffered score block), a member's K/V blocks 4 KiB of its 16,
    so the compute tiles hold 416 rows at once; the memory tiles keep 624 keys of K and V between passes. The
    chosen schedule (24-row blocks, whole MAC-row tiles: 384 rows) keeps 608 and reads within 1.25x of that."""
    from attnc.cost.attention import capacity_bound

    arch = load_arch("edge")
    for n, passes in ((2048, 6), (4096, 11)):
        sh = Shape(1, 12, 12, n, n, 64, 64, 2, False, 0, False, True)
        bound = capacity_bound(sh, arch)
        assert (bound.rows, bound.row_bytes, bound.cached_keys) == (416, 456, 624)
        assert bound.passes == -(-n // 416)
        best = search(sh, arch, "online").best
        assert (best.schedule.passes, best.schedule.cached_keys) == (passes, 608)
        assert best.dram_bytes <= 1.25 * bound.dram_bytes
        # without the kept keys, K and V once per pass: over the quarter at 2K
        whole = 4 * 12 * n * 64 * 2 + (passes - 1) * 12 * n * 128 * 2
        assert (whole > 1.25 * bound.dram_bytes) == (n == 2048)


def ffn_model(rows=256, hidden=256, inner=512):
    from onnx import numpy_helper

    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((hidden, inner)).astype(np.float32) / 16, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((inner, hidden)).astype(np.float32) / 16, "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [rows, hidden])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [rows, hidden])], [w1, w2])
    model = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return model, {"x": rng.standard_normal((rows, hidden)).astype(np.float32)}


def test_projections_are_split_in_whole_heads_and_a_member_reads_only_the_parts_of_its_heads():
    model, inputs = load_make_examples().bert_layer(seq=256, hidden=256, heads=4)
    module = import_onnx(model)
    run_pipeline(module, "canonicalize,raise-attention,fuse-attention")
    before = interpret(module, inputs)
    # (their biases are merged too, and become the parts' epilogue in fuse-elementwise)
    run_pipeline(module, "tile{arch=cloud},fuse-elementwise{arch=cloud},lower-to-dataflow{arch=cloud}")
    report = main_func(module).attributes["attnc.tile_report"].data
    assert "@ 256x768 in" in report  # Q, K and V as one GEMM of their weights side by side
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    parts = [k for k in kernels if k.sym_name.data.startswith("gemm0_")]
    assert len(parts) % 3 == 0
    for k in kernels:
        if k in parts:
            continue
        # a member reads its own rows of Q and the K and V of its heads, never the rest of Q (the grid's column
        # blocks never straddle Q, K and V, whose merged biases are the parts' epilogue)
        read = {v.owner for v in k.inputs if v.owner in parts}
        assert len(read) <= 2 * (len(parts) // 3) + 1
    for name, want in before.items():
        np.testing.assert_allclose(interpret(module, inputs)[name], want, rtol=1e-4, atol=1e-4)

def test_without_an_exp_unit_only_the_unfused_schedule_is_offered():
    from attnc.arch import parse_arch, preset_text

    no_exp = parse_arch(preset_text("tiny").replace(", exp_per_cycle: 4", ""))
    sh = Shape(1, 2, 2, 64, 64, 16, 16, 2, False, 0, False, True)
    assert search(sh, no_exp, "auto").best.schedule.mode == "unfused"
    # ... its softmax a kernel of its own (on an sfu tile), the scores spilled to it
    assert not search(sh, no_exp, "auto").best.schedule.epilogue
    assert search(sh, load_arch("tiny"), "online").best.schedule.mode == "online"
    with pytest.raises(AttncError, match="no online schedule fits tiny .*no exp unit for a fused softmax"):
        search(sh, no_exp, "online")


def test_unfused_runs_the_softmax_in_the_qk_kernel_where_the_compute_tile_has_an_exp_unit():
    from attnc.arch import parse_arch, preset_text

    sh = Shape(1, 2, 2, 64, 64, 16, 16, 2, False, 0, False, True)
    with_exp = search(sh, load_arch("tiny"), "unfused").best
    no_exp = search(sh, parse_arch(preset_text("tiny").replace(", exp_per_cycle: 4", "")), "unfused").best
    assert with_exp.schedule.epilogue and not no_exp.schedule.epilogue
    # the scores stay on chip: only the probabilities are written and read back (the epilogue's QKᵀ takes the
    # rows whose score rows it holds, the sfu schedule's as many as its q tokens allow: K passes apart)
    from attnc.cost.attention import unfused_kv_passes

    tiny = load_arch("tiny")
    tile = max(tiny.tiles_of("compute"), key=lambda t: (t.macs_per_cycle, t.sram_bytes))
    k_passes = [unfused_kv_passes(sh, p.schedule, tiny, tile)[0] for p in (with_exp, no_exp)]
    rereads = (k_passes[0] - k_passes[1]) * 2 * 64 * 16 * 2
    scores = 2 * 64 * 64 * 2
    assert no_exp.dram_bytes - with_exp.dram_bytes == 2 * scores - rereads
    # auto is fused wherever a fused schedule fits: unfused is the baseline, asked for by name
    assert search(sh, load_arch("tiny"), "auto").best.schedule.mode != "unfused"


def test_a_long_attention_fills_each_member_with_rows():
    """BERT-base attention at seq 4K on edge streams K/V once per row block: the search fills each member's
    16 KiB with rows (24, three MAC-row tiles, not the power of two 16), so K/V are read 11 times, not 16."""
    from attnc.cost.attention import fused_attention_buffer

    arch = load_arch("edge")
    sh = Shape(1, 12, 12, 4096, 4096, 64, 64, 2, False, 0, False, True)
    s = search(sh, arch, "online").best.schedule
    rows = -(-4096 // s.members)
    assert (s.members, s.row_block, s.passes) == (16, 24, 11)
    assert s.row_block % arch.tiles_of("compute")[0].mac_rows == 0
    bigger = fused_attention_buffer(rows, 4096, 64, 64, 2, fusion="online", row_block=s.row_block + 8,
                                    key_block=s.key_block, kv_resident=False, key_chunk=8)  # fmt: skip
    assert s.buffer <= 16384 < bigger


def test_flat_members_take_k_and_v_in_chunks_of_the_mac_array_width():
    """A FLAT member fills its score rows a MAC-array chunk of keys at a time: its steps, and the blocks its
    memory stages re-send, are those chunks (8 keys on edge), not the whole key axis at once."""
    module = attention_model(b=1, h=2, hkv=2, s=64, t=128, d=16)
    inputs = inputs_for(module)
    before = interpret(module, inputs)
    run_pipeline(module, "fuse-attention{mode=flat},tile{arch=edge groups=1 members=2 row-block=8}")
    report = main_func(module).attributes["attnc.tile_report"].data
    assert "key_block=128 passes=4 (K/V staged in memory tiles)" in report
    run_pipeline(module, "lower-to-dataflow{arch=edge}")
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    stages = [k for k in kernels if k.tile_kind.data == "memory"]
    members = [k for k in kernels if k.kind.data == "attention"]
    assert len(stages) == 2 and len(members) == 2
    assert all(k.loop_schedule() == [("unit", 2), ("repeat", 4), ("block", 16)] for k in stages)
    assert all(k.loop_schedule() == [("unit", 2), ("row_block", 4), ("key_block", 16)] for k in members)
    assert all(list(k.tokens.get_values()) == [2 * 4 * 16] for k in stages)
    np.testing.assert_allclose(interpret(module, inputs)["O"], before["O"], rtol=0, atol=2e-6)


def test_k_and_v_computed_on_chip_are_staged_only_where_a_group_of_them_fits():
    """A stage loaded from DRAM for itself takes one unit at a time; K/V computed on chip come out of the
    read-back that also brings the members' Q, so a stage receives its group's K or V whole: BERT-base's
    twelve heads of K (768 KiB) do not fit an 80 KiB memory tile, and the passes re-read K/V from DRAM."""
    arch = load_arch("edge")
    forced = {"groups": 1, "members": 8, "row_block": 8, "key_block": 8}

    def chosen(heads: int, from_dram: bool):
        sh = Shape(1, heads, heads, 512, 512, 64, 64, 2, False, 0, False, from_dram)
        return search(sh, arch, "online", 8192, forced).best.schedule

    loaded, computed, one_head = chosen(12, True), chosen(12, False), chosen(1, False)
    assert loaded.passes == computed.passes == one_head.passes == 8
    assert loaded.staged and not loaded.spilled
    assert computed.spilled and not computed.staged
    assert one_head.staged  # 64 KiB of K and two key blocks fit a memory tile


def test_k_and_v_a_butterfly_makes_by_rows_reach_a_group_of_several_heads_through_dram():
    """A stage chain makes K and V a row block of every head at a time; a group that takes its heads one after
    the other would hold them whole in its first member (BERT-base on cloud at seq 512: 384 KiB on a 256 KiB
    tile), so even in one pass they are spilled and read back head by head. One head per group takes them as
    they come; K/V computed otherwise (a GEMM's grid, head by head) stream to the members as before."""
    arch = load_arch("cloud")

    def chosen(groups: int, by_rows: bool):
        sh = Shape(1, 12, 12, 512, 512, 64, 64, 2, False, 0, False, False, by_rows)
        members = 64 // groups if groups == 4 else 4
        forced = {"groups": groups, "members": members, "row_block": 512 // members, "key_block": 64}
        return search(sh, arch, "online", 262144, forced).best.schedule

    assert chosen(4, True).passes == 1 and chosen(4, True).spilled
    assert chosen(12, True).passes == 1 and not chosen(12, True).spilled  # a head per group
    assert chosen(4, False).passes == 1 and not chosen(4, False).spilled


def test_shape_marks_k_and_v_a_butterfly_matmul_computes():
    """``kv_by_rows`` follows K back through the head reshapes and the bias add to the butterfly matmul."""
    from attnc.passes.tile import shape_of
    from attnc.pipeline import DEFAULT_PIPELINE, parse_pipeline, with_butterfly

    model, _ = load_make_examples().encoder(seq=64, hidden=64, heads=4, ffn=128, layers=1, half=True)
    module = import_onnx(model)
    run_pipeline(module, with_butterfly(parse_pipeline(DEFAULT_PIPELINE), "linears=qkv"))
    (attn,) = [o for o in main_func(module).body.block.ops if isinstance(o, sp.AttentionOp)]
    assert shape_of(attn).kv_by_rows and not shape_of(attn).kv_from_dram
    plain = import_onnx(model)
    run_pipeline(plain, parse_pipeline(DEFAULT_PIPELINE))
    (attn,) = [o for o in main_func(plain).body.block.ops if isinstance(o, sp.AttentionOp)]
    assert not shape_of(attn).kv_by_rows
