"""lower-to-dataflow: kernels and streams that compute exactly what the sparse IR computes."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from attnc.arch import load_arch
from attnc.dialects import dataflow as df
from attnc.dialects import sparse as sp
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret
from attnc.ir import main_func, parse_module, print_module
from attnc.pipeline import run_pipeline

EXAMPLES = Path(__file__).parents[2] / "examples"
# (example, heads x batch, causal)
CASES = {"bert_layer": (4, False), "causal_decoder": (4, True), "gqa_block": (8, False), "attention23": (4, True)}


def lowered(name: str, arch: str):
    module = import_onnx(EXAMPLES / f"{name}.onnx")
    run_pipeline(module, "canonicalize,raise-attention")
    inputs = dict(np.load(EXAMPLES / f"{name}.inputs.npz"))
    before = interpret(module, inputs)
    run_pipeline(module, f"lower-to-dataflow{{arch={arch}}}")
    return module, inputs, before


@pytest.mark.parametrize("name", sorted(CASES))
def test_numbers_are_kept(name):
    module, inputs, before = lowered(name, "tiny")
    after = interpret(module, inputs)
    for key, ref in before.items():
        np.testing.assert_allclose(after[key], ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_unfused_attention_is_three_kernels_per_head(name):
    heads, causal = CASES[name]
    module, _, _ = lowered(name, "edge")
    kernels = [op for op in module.walk() if isinstance(op, df.KernelOp)]
    assert not any(op.name == "sparse.attention" for op in module.walk())
    kinds = Counter(k.kind.data for k in kernels)
    assert kinds["softmax"] == heads
    assert sum(k.sym_name.data.endswith("_qk") for k in kernels) == heads
    assert sum(k.sym_name.data.endswith("_pv") for k in kernels) == heads
    softmax_bodies = [k for k in kernels if k.kind.data == "softmax"]
    assert all(any(o.name == "sparse.trilu" for o in k.body.walk()) == causal for k in softmax_bodies)
    # every func.return operand leaves through a DMA store; every graph input enters through a DMA load
    assert kinds["dma_store"] >= 1 and kinds["dma_load"] >= 1
    top = list(module.body.block.first_op.body.block.ops)
    assert all(isinstance(op, df.KernelOp) for op in top[:-1])


#: kernels the plain lowering (no ``tile``, no ``fuse-elementwise``) leaves holding a one-token activation whole
#: that is larger than their tiles: they declare it, and placement refuses them by name and bytes
OVER_TILE = {"tiny": {"layer_norm", "add", "attn0_g0_softmax", "attn0_g0_pv", "matmul_1", "add_2", "layer_norm_1",
                      "add_3", "div", "erf", "mul", "add_4", "mul_1", "matmul_3", "add_6"},
             "edge": {"erf", "mul_1"}, "cloud": set()}  # fmt: skip


@pytest.mark.parametrize("arch_name", ["tiny", "edge", "cloud"])
def test_kernels_declare_what_they_hold(arch_name):
    """Every kernel declares at least the inputs it holds whole (one token) and a token of each streamed one (a
    tiling plan that assumed blocks does not make a one-token input smaller); on cloud they all fit their tiles."""
    from attnc.cost.work import consumed_bytes

    arch = load_arch(arch_name)
    module, _, _ = lowered("causal_decoder", arch_name)
    kernels = [op for op in module.walk() if isinstance(op, df.KernelOp)]
    tokens = {r: int(t) for k in kernels for r, t in zip(k.outputs, k.tokens.get_values())}
    over = set()
    for k in kernels:
        biggest = max(t.sram_bytes for t in arch.tiles_of(k.tile_kind.data))
        declared = k.buffer_bytes.value.data
        if k.kind.data not in ("dma_load", "dma_store", "dma_spill"):
            held = [(consumed_bytes(a), tokens.get(v, 1)) for v, a in zip(k.inputs, k.body.block.args)
                    if isinstance(v.owner, df.KernelOp)]  # fmt: skip
            need = sum(b if t == 1 else -(-b // t) for b, t in held)
            assert need <= declared, (k.sym_name.data, need, declared)
        assert 0 < declared
        if declared > biggest:
            over.add(k.sym_name.data)
        gemm = k.kind.data == "gemm"
        assert (k.macs.value.data > 0) == gemm and (k.tile_kind.data == "compute" or not gemm)
    assert over == OVER_TILE[arch_name]


def test_lowered_ir_round_trips():
    module, inputs, before = lowered("gqa_block", "tiny")
    text = print_module(module)
    again = parse_module(text)
    assert print_module(again) == text
    np.testing.assert_allclose(interpret(again, inputs)["y"], before["y"], rtol=1e-5, atol=1e-6)


def test_lowering_twice_is_an_error():
    module, _, _ = lowered("attention23", "tiny")
    with pytest.raises(Exception, match="already dataflow IR"):
        run_pipeline(module, "lower-to-dataflow")


def test_heads_share_kernels_when_the_array_is_short_of_contexts():
    arch = load_arch("tiny")  # one sfu tile with 4 contexts, and the decoder has 2 layer norms and a gelu
    module, _, _ = lowered("causal_decoder", "tiny")
    kernels = [op for op in module.walk() if isinstance(op, df.KernelOp)]
    softmax = [k for k in kernels if k.kind.data == "softmax"]
    assert len(softmax) < 4 and sum(k.sym_name.data.endswith("_qk") for k in kernels) == len(softmax)
    sfu = [k for k in kernels if k.tile_kind.data == "sfu"]
    assert len(sfu) <= sum(t.contexts for t in arch.tiles_of("sfu"))


def test_an_unsplit_gemm_streams_a_weight_it_cannot_hold_and_reads_its_rows_by_blocks():
    # bert_layer on edge: each 64x64 f32 projection weight (16 KiB) is more than a GEMM's share of a tile (4 KiB),
    # so its load re-reads it once per row block of the output, in the (n, k) blocks the GEMM steps through, and
    # the hidden states reach the projections one row block at a time
    from attnc.passes.lower_dataflow import INPUT_REPEATS

    module, _, _ = lowered("bert_layer", "edge")
    kernels = [op for op in module.walk() if isinstance(op, df.KernelOp)]
    streamed = 0
    for k in kernels:
        trips = dict(k.loop_schedule())
        if k.kind.data != "gemm" or list(trips) != ["b", "m", "n", "k"]:
            continue
        for i, v in enumerate(k.inputs):
            load = v.owner
            if not (isinstance(load, df.KernelOp) and load.kind.data == "dma_load"
                    and any(isinstance(o, sp.ConstantOp) for o in load.body.block.ops)):
                continue  # fmt: skip
            passes = trips["b"] * trips["m"]
            assert load.loop_schedule() == [("repeat", passes), ("burst", trips["n"] * trips["k"])]
            assert list(load.tokens.get_values()) == [passes * trips["n"] * trips["k"]]
            assert list(k.attributes[INPUT_REPEATS].get_values())[i] == passes
            assert k.buffer_bytes.value.data < 16384  # what it holds is a block, not the weight
            streamed += 1
    assert streamed >= 4  # q, k, v and the output projection
    hidden = next(k for k in kernels if k.kind.data == "dma_load" and k.sym_name.data == "load_hidden_states")
    assert list(hidden.tokens.get_values()) == [2]  # the projections' two row blocks of 8 rows


def test_a_row_kernel_reads_what_is_loaded_for_it_by_rows_and_a_store_takes_tokens_that_fit(onnx_model):
    # a [256, 512] f32 layer norm on edge (512 KiB in, 512 KiB out; 8 KiB sfu tiles, 4 KiB dma tiles). Before, the
    # load brought x in one token (held whole by the kernel) and the store took y in one token (held whole on a
    # DMA tile): now x comes a row per token into a step per row, and y leaves in tokens two of which fit the
    # store's room, which the store declares; simulated, nothing holds more than it declares
    from onnx import TensorProto, helper

    from attnc.backend.bitstream import decode, encode
    from attnc.backend.emit import emit_bitstream
    from attnc.pipeline import backend_passes
    from attnc.simulator.timing import simulate

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]
    model = onnx_model(nodes, {"x": (TensorProto.FLOAT, [256, 512])}, {"y": (TensorProto.FLOAT, [256, 512])},
                       inits={"g": rng.standard_normal(512).astype(np.float32),
                              "b": rng.standard_normal(512).astype(np.float32)})  # fmt: skip
    module = import_onnx(model)
    passes = backend_passes("edge", time_limit=10.0, seed=0, heuristic_only=True)
    run_pipeline(module, passes[:-1])
    kernels = {k.sym_name.data: k for k in module.walk() if isinstance(k, df.KernelOp)}
    norm = next(k for k in kernels.values() if k.kind.data == "layer_norm")
    load = kernels["load_x"]
    assert list(load.tokens.get_values()) == [256] and norm.loop_schedule() == [("rows", 256)]
    store = kernels["store_y"]
    token = 256 * 512 * 4 // int(list(norm.tokens.get_values())[0])
    assert 2 * token <= store.buffer_bytes.value.data <= 4096
    run_pipeline(module, passes[-1:])
    stats = simulate(decode(encode(emit_bitstream(module, load_arch("edge"), {}))))
    assert stats.warnings == []
    for k in stats.kernels:
        if k.name in ("store_y", norm.sym_name.data):
            assert 0 < k.peak_buffer_bytes <= (store if k.name == "store_y" else norm).buffer_bytes.value.data


def test_unfused_attention_streams_kv_it_cannot_hold_re_read_per_row_block():
    # 2 heads of 512 keys x 16 (f32): a head's K is 32 KiB, more than the QKᵀ kernel's room on edge beside its
    # buffers, so the K load re-reads it once per row block of a member's rows (not once per head and row block:
    # a head's K is needed only during its own row blocks), the second member reads the first one's copy as many
    # times in as many tokens, and q comes in the kernel's row blocks; the numbers are the attention's
    from onnx import TensorProto, helper
    from attnc.passes.lower_dataflow import INPUT_REPEATS

    ins = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, 2, 512, 16]) for x in "QKV"]
    out = helper.make_tensor_value_info("O", TensorProto.FLOAT, [1, 2, 512, 16])
    graph = helper.make_graph([helper.make_node("Attention", ["Q", "K", "V"], ["O"])], "a", ins, [out])
    module = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))
    rng = np.random.default_rng(0)
    inputs = {x: rng.standard_normal((1, 2, 512, 16)).astype(np.float32) for x in "QKV"}
    before = interpret(module, inputs)["O"]
    run_pipeline(module, "canonicalize,raise-attention,fuse-attention{mode=unfused},"
                         "tile{arch=edge members=2 groups=1},lower-to-dataflow{arch=edge}")
    np.testing.assert_allclose(interpret(module, inputs)["O"], before, rtol=1e-5, atol=1e-6)
    kernels = {k.sym_name.data: k for k in module.walk() if isinstance(k, df.KernelOp)}
    first, second = kernels["attn0_g0_c0_qk"], kernels["attn0_g0_c1_qk"]
    t = dict(first.loop_schedule())
    blocks = t["b"] * t["n"] * t["k"]
    assert t["b"] == 2 and t["m"] > 1
    # a pass serves as many query rows as two of their tokens in a quarter of the kernel's room (16 KiB: 64 rows
    # of 64 bytes), not the MAC array's 8: 4 passes over the member's 256 rows instead of 32
    rows = list(first.tile.get_values())[0]
    assert rows == 64 and t["m"] == 256 // rows
    assert kernels["load_K"].loop_schedule() == [("repeat", t["m"]), ("burst", blocks)]
    assert list(kernels["load_K"].tokens.get_values()) == [t["m"] * blocks]
    k_in = next(i for i, v in enumerate(first.inputs) if v.owner is kernels["load_K"])
    assert list(first.attributes[INPUT_REPEATS].get_values())[k_in] == t["m"]
    copy = next(i for i, v in enumerate(second.inputs) if v.owner is first)
    assert list(first.tokens.get_values())[list(first.outputs).index(second.inputs[copy])] == t["m"] * blocks
    assert list(second.attributes[INPUT_REPEATS].get_values())[copy] == t["m"]
    assert list(kernels["load_Q"].tokens.get_values()) == [t["b"] * t["m"]]
    sram = {t.kind: t.sram_bytes for t in load_arch("edge").tiles}
    assert all(k.buffer_bytes.value.data <= sram[k.tile_kind.data] for k in kernels.values())


#: two groups of four online members (one (batch, head) unit each), blocks of 16 rows and keys
GROUPS = "canonicalize,raise-attention,fuse-attention{mode=online},tile{arch=edge members=4 row-block=16 key-block=16}"


def _attention(n: int, heads: int = 2, d: int = 16):
    """A bare Attention of ``heads`` heads over ``n`` tokens, its inputs and the reference output."""
    from onnx import TensorProto, helper

    ins = [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, heads, n, d]) for x in "QKV"]
    out = helper.make_tensor_value_info("O", TensorProto.FLOAT, [1, heads, n, d])
    node = helper.make_node("Attention", ["Q", "K", "V"], ["O"])
    graph = helper.make_graph([node], "attention", ins, [out])
    module = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)]))
    rng = np.random.default_rng(n)
    inputs = {x: rng.standard_normal((1, heads, n, d)).astype(np.float32) for x in "QKV"}
    return module, inputs, interpret(module, inputs)["O"]


def _loads(fn) -> dict[str, df.KernelOp]:
    return {k.sym_name.data: k for k in fn.body.block.ops if isinstance(k, df.KernelOp) and k.kind.data == "dma_load"}


def test_each_group_stages_a_load_of_just_its_units_of_k_and_v():
    """Two groups of an online attention, K and V staged in memory tiles: the partitioner's one load of K (and
    of V) feeds both groups' stages, each slicing its unit out of the whole; split, each stage reads a load of
    its own unit, at the unit's byte offset into K, and the numbers stay. Q, which every member streams, keeps
    its one load."""
    from attnc.passes.lower_dataflow import _Partitioner, split_sliced_loads

    module, inputs, ref = _attention(128)
    run_pipeline(module, GROUPS)
    fn = main_func(module)
    partitioner = _Partitioner(fn, load_arch("edge"))
    partitioner.run()
    before = _loads(fn)
    assert sorted(before) == ["load_K", "load_Q", "load_V"]
    stages = lambda v: sorted(u.operation.sym_name.data for u in v.uses if u.operation.tile_kind.data == "memory")
    assert stages(before["load_K"].outputs[0]) == ["attn0_g0_kstage", "attn0_g1_kstage"]
    split_sliced_loads(fn, partitioner)
    module.verify()
    after = _loads(fn)
    unit = 128 * 16 * 4  # one (batch, head) of K: contiguous in DRAM
    for x in "KV":
        for g in (0, 1):
            load = after[f"load_{x}_attn0_g{g}"]
            assert load.inputs[0] is fn.body.block.args["QKV".index(x)]
            assert sp.shape_of(load.outputs[0]) == (1, 1, 128, 16) and load.dram_offset.value.data == g * unit
            (reader,) = [u.operation for u in load.outputs[0].uses]
            assert reader.sym_name.data == f"attn0_g{g}_{x.lower()}stage"
            # the stage reads its unit as it comes: no slice of a whole K left in its body
            assert not any(isinstance(o, sp.SliceOp) for o in reader.body.block.ops)
    assert "load_Q" in after and after["load_Q"].dram_offset is None and len(after) == 5
    np.testing.assert_allclose(interpret(module, inputs)["O"], ref, rtol=1e-5, atol=1e-6)
    again = parse_module(print_module(module))  # the offset is part of the IR
    assert _loads(main_func(again))["load_K_attn0_g1"].dram_offset.value.data == unit


def test_loads_that_only_members_stream_stay_whole():
    """Without stages (each member streams K and V once, its rows within one block), every load stays one: a
    member drops the units it does not read, and one load per group would be one more DMA context sharing
    DRAM with the output's store."""
    module, inputs, ref = _attention(64)
    run_pipeline(module, GROUPS + ",lower-to-dataflow{arch=edge}")
    fn = main_func(module)
    assert not any(k.tile_kind.data == "memory" for k in fn.body.block.ops if isinstance(k, df.KernelOp))
    assert sorted(_loads(fn)) == ["load_K", "load_Q", "load_V"]
    np.testing.assert_allclose(interpret(module, inputs)["O"], ref, rtol=1e-5, atol=1e-6)


def test_a_region_load_must_lie_within_its_input():
    module, _, _ = _attention(128)
    run_pipeline(module, GROUPS + ",lower-to-dataflow{arch=edge}")
    from xdsl.dialects.builtin import IntegerAttr
    from xdsl.utils.exceptions import VerifyException

    load = _loads(main_func(module))["load_K_attn0_g1"]
    load.attributes["dram_offset"] = IntegerAttr(128 * 16 * 4 + 4, 64)  # one element past the end
    with pytest.raises(VerifyException, match="not within the input"):
        load.verify()
    del load.attributes["dram_offset"]  # a narrower body argument without an offset is no load of a region
    with pytest.raises(VerifyException, match="body arguments do not match"):
        load.verify()


def test_a_load_a_gemm_grid_streams_and_another_kernel_reads_is_two_loads(onnx_model):
    # y = x @ W + b + x on cloud, phases resident: the grid's first column streams x's row strips in k-chunks while
    # the parts' residual epilogue reads x by rows. Read by both through one load, x came as one token that every
    # part of the first column held whole (a whole tile per part in T5's 512-wide layer); now the grid streams its
    # own load (load_x) and the residual reads a second one, both in several tokens, and no part declares more
    # than a quarter of its tile
    from onnx import TensorProto, helper

    from attnc.pipeline import backend_passes

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["h"]),
             helper.make_node("Add", ["h", "x"], ["y"])]  # fmt: skip
    model = onnx_model(nodes, {"x": (TensorProto.FLOAT16, [512, 512])}, {"y": (TensorProto.FLOAT16, [512, 512])},
                       inits={"w": (rng.standard_normal((512, 512)) / 23).astype(np.float16),
                              "b": rng.standard_normal(512).astype(np.float16)})  # fmt: skip
    module = import_onnx(model)
    run_pipeline(module, "canonicalize")
    inputs = {"x": rng.standard_normal((512, 512)).astype(np.float16)}
    before = interpret(module, inputs)["y"]
    tile, fuse, lower, _ = backend_passes("cloud", time_limit=10.0, seed=0, heuristic_only=True)
    run_pipeline(module, [type(tile)(arch=tile.arch, share_sram="off"), fuse, lower])
    np.testing.assert_allclose(interpret(module, inputs)["y"], before, rtol=1e-2, atol=1e-2)
    kernels = [k for k in module.walk() if isinstance(k, df.KernelOp)]
    parts = [k for k in kernels if k.kind.data == "gemm"]
    assert len(parts) > 1
    loads = [k for k in kernels if k.kind.data == "dma_load" and "x" in k.sym_name.data]
    assert len(loads) == 2
    assert all(int(list(ld.tokens.get_values())[0]) > 1 for ld in loads)
    grid = [ld for ld in loads if ld.sym_name.data == "load_x"]
    assert len(grid) == 1 and {u.operation for u in grid[0].outputs[0].uses} <= set(parts)
    tile_sram = load_arch("cloud").tiles_of("compute")[0].sram_bytes
    assert max(k.buffer_bytes.value.data for k in parts) <= tile_sram // 4


def test_a_grid_part_passes_on_a_row_strip_joined_from_nested_concatenations_in_as_many_tokens():
    # T5's 512-wide layer on cloud with phases: an FFN2 part joins the FFN1 pieces a spill brings by rows, then
    # those by columns, and passes the strip on to the next part of its row. The copy went as one token (the
    # nested concatenation was not seen as a copy), which every later part held whole: 1 MiB on a 256 KiB tile
    from example_script import load_make_examples

    from attnc.pipeline import DEFAULT_PIPELINE

    model, _ = load_make_examples().encoder(seq=512, hidden=512, heads=8, ffn=2048, layers=1, half=True)
    module = import_onnx(model)
    run_pipeline(module, DEFAULT_PIPELINE)
    run_pipeline(module, "tile{arch=cloud share-sram=on},fuse-elementwise{arch=cloud},lower-to-dataflow{arch=cloud}")
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    tokens = {r: int(t) for k in kernels for r, t in zip(k.outputs, k.tokens.get_values())}
    nested = [k for k in kernels if k.kind.data == "gemm" and any(
        isinstance(v.owner, sp.ConcatOp) for c in k.body.block.ops if isinstance(c, sp.ConcatOp) for v in c.operands)]
    assert nested
    for k in nested:
        copy = k.outputs[0]
        assert tokens[copy] == tokens[k.inputs[0]] > 1


def _lowered_butterfly_layer(arch: str, seq: int, workload: str = "bert",
                             butterfly: str | None = "linears=qkv,out,ffn") -> list[df.KernelOp]:  # fmt: skip
    """The kernels of benchmarks/layer.py's ``workload`` layer (BERT-base), with butterfly Q/K/V, output and FFN
    linears unless ``butterfly`` is None, lowered for ``arch`` (not placed)."""
    import importlib.util

    from attnc.pipeline import DEFAULT_PIPELINE, backend_passes, parse_pipeline, with_butterfly

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "layer.py"
    spec = importlib.util.spec_from_file_location("layer_benchmark", path)
    layer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layer)
    model, _ = layer.layer_model(workload, seq)
    module = import_onnx(model)
    run_pipeline(module, with_butterfly(parse_pipeline(DEFAULT_PIPELINE), butterfly))
    run_pipeline(module, backend_passes(arch, time_limit=10.0, seed=0, heuristic_only=True)[:3])
    return [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]


def test_the_butterfly_layers_chains_and_members_take_their_inputs_in_tokens_they_hold():
    # BERT-base's butterfly layer on edge at seq 2048 (lowered, not placed): the simulator found 37 contexts over
    # their buffers. The Q/K/V chains and the output chain's residual each read the layer's input from a load of
    # their own; a stage kernel fed its weights again every row block walks them a chunk a step; the queries the
    # Q chain makes row by row reach the members (which walk them head by head) through a spill, not whole; and
    # no stage or row kernel declares less than its one-token inputs and a step's share of each stream
    from attnc.cost.work import consumed_bytes
    from attnc.passes.lower_dataflow import INPUT_REPEATS

    kernels = _lowered_butterfly_layer("edge", 2048)
    loads = [k for k in kernels if k.kind.data == "dma_load" and k.sym_name.data.startswith("load_hidden_states")]
    assert len(loads) == 4 and all(len({u.operation for u in ld.outputs[0].uses}) == 1 for ld in loads)
    members = [k for k in kernels if k.kind.data == "attention"]
    assert members
    for m in members:
        q = m.inputs[0].owner
        assert q.kind.data == "dma_spill" and list(q.tokens.get_values())[0] > 1
    chunked = [k for k in kernels if [n for n, _ in k.loop_schedule()] == ["rows", "chunk"]]
    assert len(chunked) >= 12
    tokens_of = {r: int(t) for k in kernels for r, t in zip(k.outputs, k.tokens.get_values())}
    for k in kernels:
        sched = k.loop_schedule()
        if [n for n, _ in sched][:1] != ["rows"] or k.tile_kind.data == "memory" or k.kind.data.startswith("dma"):
            continue
        steps = int(np.prod([t for _, t in sched]))
        reps = k.attributes.get(INPUT_REPEATS)
        reps = list(reps.get_values()) if reps is not None else [1] * len(k.inputs)
        need = 0
        for v, a, rep in zip(k.inputs, k.body.block.args, reps):
            read, t = consumed_bytes(a) * rep, tokens_of[v]
            need += read if t == 1 else -(-read // t) * (1 if t <= steps else t // steps + 1)
        assert need <= k.buffer_bytes.value.data, k.sym_name.data


def test_without_spills_the_butterfly_chains_share_one_load_of_the_layers_input():
    # BERT-base's butterfly layer on cloud at seq 512: K/V staged in memory tiles and the queries held whole by
    # the members, nothing spills, so the Q, K and V chains run in step and read the layer's input from one load
    # (three loads read 4.7 MB where 1.6 MB is the input); the residual add keeps a load of its own
    kernels = _lowered_butterfly_layer("cloud", 512)
    assert not [k for k in kernels if k.kind.data == "dma_spill"]
    loads = [k for k in kernels if k.kind.data == "dma_load" and k.sym_name.data.startswith("load_hidden_states")]
    assert len(loads) == 2
    chains = {u.operation.group.data for ld in loads for u in ld.outputs[0].uses
              if u.operation.group is not None and u.operation.group.data.startswith("bfly")}  # fmt: skip
    assert len(chains) == 3


def test_each_chains_load_sends_that_chains_row_blocks():
    # BERT-base's butterfly layer on edge at seq 512 (lowered, not placed): the Q/K/V chains and the output chain's
    # residual each read the layer's input from a load of their own, which sends a token per row block of that
    # chain (or per burst when bursts are finer). From the shared load's token -- the coarsest chain's, or a burst
    # of 2.7 rows -- the V and output chains' 1-row blocks arrived two at a time into buffers planned for one
    kernels = _lowered_butterfly_layer("edge", 512)
    loads = [k for k in kernels if k.kind.data == "dma_load" and k.sym_name.data.startswith("load_hidden_states")]
    assert len(loads) == 4
    finer = 0
    for load in loads:
        readers = {u.operation for u in load.outputs[0].uses}
        blocks = min(dict(u.loop_schedule())["rows"] for u in readers)
        bursts = dict(load.loop_schedule())["burst"]
        assert list(load.tokens.get_values()) == [max(bursts, blocks)], load.sym_name.data
        finer += blocks > min(dict(u.loop_schedule())["rows"] for ld in loads for u in
                              {x.operation for x in ld.outputs[0].uses})  # fmt: skip
    assert finer  # the chains' row blocks differ: a token for all of them would not fit each


def _gemm(seq: int, k: int, n: int, dtype=np.float32):
    """(module, inputs) of one linear x[seq, k] @ w[k, n] -> y (f32, or f16 for ``dtype`` np.float16)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    elt = TensorProto.FLOAT16 if dtype == np.float16 else TensorProto.FLOAT
    w = numpy_helper.from_array((rng.standard_normal((k, n)) / np.sqrt(k)).astype(dtype), "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "gemm",
                              [helper.make_tensor_value_info("x", elt, [seq, k])],
                              [helper.make_tensor_value_info("y", elt, [seq, n])], [w])  # fmt: skip
    module = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    return module, {"x": rng.standard_normal((seq, k)).astype(dtype)}


def test_a_gemm_grids_row_strip_comes_in_one_load_per_grid_row():
    """Cloud 512x768 @ 768x768: the row strip of an 8x8 grid of parts is read by the parts of its first column,
    each within its own rows. One load of all of it would be one DMA context taking a fair share of DRAM equal
    to each column's weight load while it carries as many bytes as all of them, so it is one load per grid row
    (or, with weight blocks held, per few grid rows), at that row block's byte offset; the numbers stay."""
    seq, k = 512, 768
    module, inputs = _gemm(seq, k, 768)
    ref = interpret(module, inputs)["y"]
    run_pipeline(module, "tile{arch=cloud},lower-to-dataflow{arch=cloud}")
    module.verify()
    fn = main_func(module)
    strips = {n_: ld for n_, ld in _loads(fn).items() if list(ld.inputs) == [fn.body.block.args[0]]}
    assert len(strips) > 1
    offsets = []
    for ld in strips.values():
        readers = [u.operation for u in ld.outputs[0].uses]
        assert readers and all(r.sym_name.data.endswith("c0") for r in readers)  # first parts of grid rows
        rows = sp.shape_of(ld.outputs[0])[0]
        offsets.append((ld.dram_offset.value.data, rows))
    offsets.sort()
    item = 4  # f32
    assert offsets[0][0] == 0 and sum(r for _, r in offsets) == seq
    assert all(b[0] == a[0] + a[1] * k * item for a, b in zip(offsets, offsets[1:]))  # contiguous row blocks
    np.testing.assert_allclose(interpret(module, inputs)["y"], ref, rtol=1e-4, atol=1e-4)


def test_the_butterfly_layers_norms_stream_by_columns_and_its_residual_joins_hold_the_residual():
    # BERT-base's butterfly layer on cloud at seq 512 (lowered, not placed). Each layer norm runs by columns: the
    # column parts of the adds before it sum their columns per row (a "reduce" kernel) and stream those sums, a
    # statistics kernel and the apply parts read them row block by row block. The residual add after the FFN
    # chains is a kernel of two streamed inputs (the chains' sum, the first norm's output) that declares room for
    # every token of both: with two or three, the first norm waited for it at every token while the FFN's
    # pipeline of stage kernels was still filling (171,818 -> 103,204 cycles with the column norms).
    from attnc.cost.work import consumed_bytes

    kernels = _lowered_butterfly_layer("cloud", 512)
    by_name = {k.sym_name.data: k for k in kernels}
    assert not any(k.kind.data == "layer_norm" for k in kernels)
    tokens_of = {r: int(t) for k in kernels for r, t in zip(k.outputs, k.tokens.get_values())}
    for stats in ("layer_norm_stats", "layer_norm_1_stats"):
        k = by_name[stats]
        assert k.inputs and all(tokens_of[v] > 1 for v in k.inputs)
        assert all(v.owner.kind.data == "reduce" for v in k.inputs)
    applied = [k for k in kernels if k.sym_name.data.startswith(("layer_norm_p", "layer_norm_1_p"))]
    assert len(applied) >= 8 and all(tokens_of[v] > 1 for k in applied for v in k.inputs if v.owner.kind.data
                                     not in ("dma_load",))  # fmt: skip
    joins = [k for k in kernels if k.sym_name.data.startswith("layer_norm_1_in_p")]
    assert joins
    for k in joins:
        streamed = [(v, a) for v, a in zip(k.inputs, k.body.block.args) if tokens_of.get(v, 1) > 1]
        assert len(streamed) == 2
        assert k.buffer_bytes.value.data >= sum(consumed_bytes(a) for _, a in streamed), k.sym_name.data


def _stores(fn) -> list[df.KernelOp]:
    return [k for k in fn.body.block.ops if isinstance(k, df.KernelOp) and k.kind.data == "dma_store"]


def test_a_gemm_grids_output_leaves_in_one_store_per_grid_row(monkeypatch):
    """Cloud 512x768 @ 768x768 (f32) in a grid of parts. Before: one store of the whole output, fed by every part (one
    DMA context: one fair share of DRAM against every load still running, one DMA tile's links). After: one
    store per grid row, of that row's parts, writing its row block at its byte offset (contiguous row blocks
    that tile the output), and the output is their concatenation; the numbers stay."""
    from attnc.passes import lower_dataflow

    def lower(split: bool):
        module, inputs = _gemm(512, 768, 768)
        if not split:
            monkeypatch.setattr(lower_dataflow, "split_output_stores", lambda fn, partitioner: None)
        run_pipeline(module, "tile{arch=cloud},lower-to-dataflow{arch=cloud}")
        monkeypatch.undo()
        module.verify()
        return module, inputs

    before, _ = lower(False)
    (whole,) = _stores(main_func(before))
    parts = {v.owner.sym_name.data for v in whole.inputs}
    grid_rows = {p.split("_r")[1].split("c")[0] for p in parts}
    assert whole.dram_offset is None and len(grid_rows) > 1
    module, inputs = lower(True)
    fn = main_func(module)
    stores = _stores(fn)
    assert len(stores) == len(grid_rows)
    rows = []
    for st in stores:
        mine = {v.owner.sym_name.data for v in st.inputs}
        (row,) = {p.split("_r")[1].split("c")[0] for p in mine}  # the parts of one grid row, all of them
        assert mine == {p for p in parts if p.split("_r")[1].split("c")[0] == row}
        rows.append((st.dram_offset.value.data, sp.shape_of(st.outputs[0])))
    rows.sort()
    block = 512 // len(grid_rows)
    assert [r[1] for r in rows] == [(block, 768)] * len(grid_rows)
    assert [off for off, _ in rows] == [i * block * 768 * 4 for i in range(len(grid_rows))]  # f32 rows, back to back
    ret = fn.body.block.last_op
    assert isinstance(ret.operands[0].owner, sp.ConcatOp)
    assert [k for k, _ in df.store_regions(ret.operands[0])] == sorted(stores, key=lambda k: k.dram_offset.value.data)
    np.testing.assert_allclose(interpret(module, inputs)["y"], interpret(before, inputs)["y"], rtol=1e-6, atol=1e-6)


def test_a_grid_that_holds_its_weights_reads_its_row_strip_in_fewer_loads(monkeypatch):
    """Cloud 512x768 @ 768x768 (f16): an 8x8 grid of parts that hold their weight blocks, each part two row
    blocks. Their first row block needs every weight block whole but only half of the strip, and each DMA
    context takes an equal share of DRAM: before, a load per grid row (8 strip loads against 8 weight loads) gave
    the strip half of DRAM, and the weights came late; after, each strip load reads two grid rows (4 loads, a
    third of DRAM, the strip's quarter of the first pass's bytes covered), each at its byte offset; the numbers
    stay."""
    from attnc.passes import gemm, lower_dataflow

    def strips(rows_per_load: int | None):
        module, inputs = _gemm(512, 768, 768, np.float16)
        # that grid, whatever the search would prefer (it takes 64-row blocks: one row block a part)
        predict = gemm._predict
        monkeypatch.setattr(gemm, "_predict", lambda name, dims, eb, resident, *a: predict(
            name, dims, eb, resident, *a) if resident and dims[3:6] == (8, 8, 32) else None)
        if rows_per_load is not None:
            monkeypatch.setattr(lower_dataflow, "_strip_rows_per_load", lambda *a: rows_per_load)
        run_pipeline(module, "tile{arch=cloud},lower-to-dataflow{arch=cloud}")
        monkeypatch.undo()
        module.verify()
        fn = main_func(module)
        loads = [ld for ld in _loads(fn).values() if list(ld.inputs) == [fn.body.block.args[0]]]
        return module, inputs, sorted(loads, key=lambda ld: ld.dram_offset.value.data)

    before, inputs, one = strips(1)
    assert len(one) == 8 and all(len(list(ld.outputs[0].uses)) == 1 for ld in one)
    after, _, two = strips(None)
    assert len(two) == 4
    item, k = 2, 768
    for i, ld in enumerate(two):
        assert ld.dram_offset.value.data == i * 128 * k * item and sp.shape_of(ld.outputs[0]) == (128, k)
        readers = sorted(u.operation.sym_name.data for u in ld.outputs[0].uses)
        assert readers == [f"gemm0_r{2 * i}c0", f"gemm0_r{2 * i + 1}c0"]  # the first parts of its two grid rows
    np.testing.assert_array_equal(interpret(after, inputs)["y"], interpret(before, inputs)["y"])


def _rmsnorm_then_linear(onnx_model, seq: int, d: int):
    """x -> RMSNorm (written in ONNX ops, as Llama's) -> @ W, f16, and the inputs."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Pow", ["x", "two"], ["sq"]),
             helper.make_node("ReduceMean", ["sq", "axes"], ["ms"], keepdims=1),
             helper.make_node("Add", ["ms", "eps"], ["mse"]), helper.make_node("Sqrt", ["mse"], ["rms"]),
             helper.make_node("Div", ["x", "rms"], ["xn"]), helper.make_node("Mul", ["xn", "g"], ["h"]),
             helper.make_node("MatMul", ["h", "w"], ["y"])]  # fmt: skip
    model = onnx_model(nodes, {"x": (TensorProto.FLOAT16, [1, seq, d])}, {"y": (TensorProto.FLOAT16, [1, seq, d])},
                       inits={"two": np.array(2, np.float16), "axes": np.array([-1], np.int64),
                              "eps": np.array(1e-5, np.float16), "g": rng.standard_normal(d).astype(np.float16),
                              "w": (rng.standard_normal((d, d)) / np.sqrt(d)).astype(np.float16)})  # fmt: skip
    return model, {"x": rng.standard_normal((1, seq, d)).astype(np.float16)}


def test_rmsnorm_row_parts_each_load_their_rows_a_row_a_token(onnx_model):
    # Llama's RMSNorm on cloud, cut into row parts (fuse-elementwise): every part read the one load of the [1, S, D]
    # input as one token and held its 64 rows whole (at D = 2048, 260 KiB on 256 KiB tiles). The reduction over the
    # last axis is row-wise and a run of the input's rows skips its batch axis of one, so each part now has a load
    # of its own rows (at their byte offset) that sends them a row a token, and declares far less than its rows
    from attnc.pipeline import DEFAULT_PIPELINE

    seq, d = 512, 1024
    model, inputs = _rmsnorm_then_linear(onnx_model, seq, d)
    module = import_onnx(model)
    run_pipeline(module, DEFAULT_PIPELINE)
    before = interpret(module, inputs)["y"]
    run_pipeline(module, "tile{arch=cloud},fuse-elementwise{arch=cloud},lower-to-dataflow{arch=cloud}")
    fn = main_func(module)
    kernels = [k for k in fn.body.block.ops if isinstance(k, df.KernelOp)]
    parts = [k for k in kernels if k.kind.data == "reduce"]
    assert len(parts) > 1
    offsets = []
    for k in parts:
        load = k.inputs[0].owner
        rows = sp.shape_of(load.outputs[0])[1]
        assert load.kind.data == "dma_load" and list(load.inputs) == [fn.body.block.args[0]]
        assert [u.operation for u in load.outputs[0].uses] == [k]
        assert list(load.tokens.get_values()) == [rows] and list(k.trips.get_values()) == [rows]
        assert k.buffer_bytes.value.data < rows * d * 2
        offsets.append((load.dram_offset.value.data, rows))
    offsets.sort()
    assert offsets[0][0] == 0 and sum(r for _, r in offsets) == seq
    assert all(b[0] == a[0] + a[1] * d * 2 for a, b in zip(offsets, offsets[1:]))
    np.testing.assert_allclose(interpret(module, inputs)["y"], before, rtol=1e-2, atol=1e-2)


def test_a_swiglu_gate_streams_into_the_up_projections_parts_a_sub_block_a_token(onnx_model):
    # silu(x @ Wg) * (x @ Wu) on cloud: the gate and up projections are two columns of one grid, and the product is
    # the up part's epilogue. The gate part's result went to it as one token, held whole (Llama on edge: 704 KiB in
    # a 16 KiB tile); it now comes a sub-block a token, in the order both parts walk their sub-blocks
    from onnx import TensorProto, helper

    from attnc.pipeline import DEFAULT_PIPELINE

    seq, d, f = 512, 512, 1408
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("MatMul", ["x", "wg"], ["g"]), helper.make_node("Sigmoid", ["g"], ["sg"]),
             helper.make_node("Mul", ["g", "sg"], ["silu"]), helper.make_node("MatMul", ["x", "wu"], ["u"]),
             helper.make_node("Mul", ["silu", "u"], ["y"])]  # fmt: skip
    model = onnx_model(nodes, {"x": (TensorProto.FLOAT16, [1, seq, d])}, {"y": (TensorProto.FLOAT16, [1, seq, f])},
                       inits={"wg": (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float16),
                              "wu": (rng.standard_normal((d, f)) / np.sqrt(d)).astype(np.float16)})  # fmt: skip
    module = import_onnx(model)
    run_pipeline(module, DEFAULT_PIPELINE)
    inputs = {"x": rng.standard_normal((1, seq, d)).astype(np.float16)}
    before = interpret(module, inputs)["y"]
    run_pipeline(module, "tile{arch=cloud},fuse-elementwise{arch=cloud},lower-to-dataflow{arch=cloud}")
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    gated = 0
    for k in kernels:
        for v in k.inputs:
            src = v.owner
            if k.kind.data != "gemm" or not isinstance(src, df.KernelOp) or src.kind.data != "gemm":
                continue
            if sp.shape_of(v) != sp.shape_of(k.outputs[-1]):
                continue  # a row strip or weight block passed along the grid
            trips = dict(src.loop_schedule())
            assert dict(k.loop_schedule()) == trips
            assert src.tokens.get_values()[list(src.outputs).index(v)] == trips["m"] * trips["n"] > 1
            gated += 1
    assert gated > 1
    np.testing.assert_allclose(interpret(module, inputs)["y"], before, rtol=1e-2, atol=1e-2)


def test_a_norm_wider_than_its_sfu_tile_takes_its_weights_again_every_row_a_chunk_a_step():
    # a 2048-wide LayerNorm after a GEMM on edge with phases (XLM's): its scale and bias (8 KiB) and a row (4 KiB)
    # do not fit an 8 KiB sfu tile. Before, it went to compute tiles in 16 row blocks, each reading a slice of
    # pieces that others read too (so not streamed): 136 KiB a part on 16 KiB tiles (in XLM's layer, where the
    # GEMMs take the compute contexts, it stayed whole on sfu: "needs 16 KiB"). Now one part per row strip of
    # the spilled GEMM result on sfu tiles, each taking its strip a row a token, and the scale and bias loaded
    # again every row in chunks, a step per chunk: every part declares at most an sfu tile
    from onnx import TensorProto, helper, numpy_helper

    from attnc.pipeline import DEFAULT_PIPELINE

    seq, k, d = 512, 512, 2048
    rng = np.random.default_rng(0)
    inits = {"w": (rng.standard_normal((k, d)) / np.sqrt(k)).astype(np.float16),
             "g": rng.standard_normal(d).astype(np.float16), "b": rng.standard_normal(d).astype(np.float16)}  # fmt: skip
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("LayerNormalization", ["h", "g", "b"], ["y"], axis=-1, epsilon=1e-5)]  # fmt: skip
    graph = helper.make_graph(nodes, "ln", [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, seq, k])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, seq, d])],
                              [numpy_helper.from_array(v, n) for n, v in inits.items()])  # fmt: skip
    module = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    run_pipeline(module, DEFAULT_PIPELINE)
    inputs = {"x": rng.standard_normal((1, seq, k)).astype(np.float16)}
    before = interpret(module, inputs)["y"]
    run_pipeline(module, "tile{arch=edge share-sram=on},fuse-elementwise{arch=edge},lower-to-dataflow{arch=edge}")
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    norms = [k for k in kernels if k.kind.data == "layer_norm"]
    sfu = max(t.sram_bytes for t in load_arch("edge").tiles_of("sfu"))
    assert len(norms) == 2 and all(k.tile_kind.data == "sfu" for k in norms)
    for k in norms:
        (_, rows), (chunk, chunks) = k.loop_schedule()
        assert rows == seq // 2 and chunk == "chunk" and chunks > 1
        assert k.buffer_bytes.value.data <= sfu
        spills = {v.owner for v in k.inputs if v.owner.kind.data == "dma_spill"}
        assert len(spills) == 1  # its own row strip's
        weights = [v.owner for v in k.inputs if v.owner.kind.data == "dma_load"]
        assert len(weights) == 2
        for w in weights:
            assert w.loop_schedule() == [("repeat", rows), ("burst", chunks)]
    np.testing.assert_allclose(interpret(module, inputs)["y"], before, rtol=1e-2, atol=1e-2)


def test_the_llama_layer_on_edge_lowers_to_kernels_its_tiles_hold_and_streams_kv_in_the_members_steps():
    # benchmarks/layer.py's Llama layer (TinyLlama's shape: 32 query heads sharing 4 K/V heads, width 2048) on
    # edge at seq 512. Its second RMSNorm takes the residual sum and its square from the split O projection: 8 KiB
    # of rows a step with 4 KiB of scale, which no 8 KiB sfu tile holds ("needs 12 KiB, the largest sfu tile has 8
    # KiB"); it now runs on compute tiles, a part per row strip. And the K/V spill sent the attention members 1 KiB
    # bursts while a member takes (and forwards to the next) an eighth of one a step, 8 query heads sharing each K/V
    # head: back-pressure counted in the next member's tokens never let a burst leave (the simulator deadlocked)
    kernels = _lowered_butterfly_layer("edge", 512, workload="llama", butterfly=None)
    arch = load_arch("edge")
    for k in kernels:
        assert k.buffer_bytes.value.data <= max(t.sram_bytes for t in arch.tiles_of(k.tile_kind.data)), k.sym_name
    members = [k for k in kernels if k.kind.data == "attention"]
    assert len(members) > 1
    (steps,) = {int(np.prod([t for _, t in k.loop_schedule()])) for k in members}
    spilled = 0
    for k in members:
        for v in k.inputs[-2:]:  # K and V: from the spill, or the copy the member before forwards
            src = v.owner
            assert src.tokens.get_values()[list(src.outputs).index(v)] == steps
            spilled += src.kind.data == "dma_spill"
    assert spilled == 2
