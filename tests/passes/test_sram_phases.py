"""SRAM phases (attnc.passes.sram_phases): with ``tile{share-sram=on}`` every compute kernel gets a phase, the
data between phases goes through DRAM spills, a load read by several phases is one load per phase, and the
kernels compute what the graph computes."""

import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from test_tile import ffn_model

from attnc.dialects import dataflow as df
from attnc.errors import AttncError
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret
from attnc.ir import main_func
from attnc.passes.sram_phases import is_dma
from attnc.pipeline import run_pipeline


def _lowered(share: str, arch: str = "edge", **kw):
    module, inputs = ffn_model(**kw)
    before = interpret(module, inputs)
    run_pipeline(module, f"tile{{arch={arch} share-sram={share}}},fuse-elementwise{{arch={arch}}},"
                         f"lower-to-dataflow{{arch={arch}}}")  # fmt: skip
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    return module, inputs, before, kernels


def test_each_gemm_is_a_phase_and_what_crosses_phases_goes_through_dram():
    module, inputs, before, kernels = _lowered("on")
    compute = [k for k in kernels if not is_dma(k)]
    phases = {k.sym_name.data.split("_")[0]: k.phase for k in compute}
    assert phases == {"gemm0": 1, "gemm1": 2}  # FFN1's parts (with their ReLU epilogue), then FFN2's
    assert all(k.phase == 0 for k in kernels if is_dma(k))
    spills = [k for k in kernels if k.kind.data == "dma_spill"]
    # the streams from FFN1's parts to FFN2's, cut over a few spills (edge's DMA contexts leave room for 4)
    assert 1 < len(spills) <= 4
    assert all(len(sp.inputs) == len(sp.outputs) >= 1 for sp in spills)
    fed_by = {}
    for sp in spills:
        for r in sp.outputs:
            for use in r.uses:
                fed_by.setdefault(use.operation, set()).add(sp)
    assert all(len(s) == 1 for s in fed_by.values())  # no reader takes from two spills
    for k in compute:
        for v in k.inputs:
            src = v.owner
            assert is_dma(src) or src.phase == k.phase, (k.sym_name.data, src.sym_name.data)
    np.testing.assert_allclose(interpret(module, inputs)["y"], before["y"], rtol=1e-5, atol=1e-5)


def test_without_sharing_no_kernel_has_a_phase_and_nothing_is_spilled():
    _, _, _, kernels = _lowered("off")
    assert all(k.phase == 0 for k in kernels)
    assert not any(k.kind.data == "dma_spill" for k in kernels)


def test_auto_shares_when_the_weights_are_more_than_the_compute_tiles_hold():
    # 2 x 1 MiB of f32 weights against edge's 256 KiB of compute-tile SRAM; cloud holds them
    _, _, _, kernels = _lowered("auto", rows=256, hidden=512, inner=512)
    assert any(k.phase for k in kernels)
    _, _, _, kernels = _lowered("auto", "cloud", rows=256, hidden=512, inner=512)
    assert not any(k.phase for k in kernels)


def test_a_graph_input_read_by_two_phases_is_loaded_once_per_phase():
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array(rng.standard_normal((256, 512)).astype(np.float32) / 16, "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((512, 256)).astype(np.float32) / 16, "w2")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["z"]), helper.make_node("Add", ["z", "x"], ["y"])]  # fmt: skip
    graph = helper.make_graph(nodes, "ffn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256, 256])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256, 256])], [w1, w2])
    module = import_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    inputs = {"x": rng.standard_normal((256, 256)).astype(np.float32)}
    before = interpret(module, inputs)
    run_pipeline(module, "tile{arch=edge share-sram=on},fuse-elementwise{arch=edge},lower-to-dataflow{arch=edge}")
    kernels = [k for k in main_func(module).body.block.ops if isinstance(k, df.KernelOp)]
    loads = [k for k in kernels if k.kind.data == "dma_load" and k.sym_name.data.startswith("load_x")]
    assert len(loads) == 2  # FFN1's row strips, and the residual FFN2's epilogue adds
    for load in loads:
        readers = {u.operation.phase for r in load.results for u in r.uses}
        assert len(readers) == 1
    np.testing.assert_allclose(interpret(module, inputs)["y"], before["y"], rtol=1e-5, atol=1e-5)


def test_share_sram_takes_auto_on_or_off():
    with pytest.raises(AttncError, match="share-sram must be auto, on or off"):
        run_pipeline(ffn_model()[0], "tile{arch=edge share-sram=maybe}")


@pytest.mark.parametrize("hidden, inner, shared", [(1024, 2048, True), (512, 1536, True), (256, 512, False)])
def test_auto_shares_on_cloud_when_the_weights_are_more_than_a_quarter_of_what_the_compute_tiles_hold(
        hidden, inner, shared):
    # 2 x 8 MiB or 2 x 3 MiB of f32 weights against cloud's 16 MiB of compute-tile SRAM: resident, next to each
    # other, every phase's grid would get a sliver of its tiles (T5's layer, 6.3 MB of f16 weights, declared 23 MB
    # resident); 2 x 0.5 MiB stay resident
    _, _, _, kernels = _lowered("auto", "cloud", rows=256, hidden=hidden, inner=inner)
    assert any(k.phase for k in kernels) == shared


def _bert_on_cloud(seq: int = 512):
    from example_script import load_make_examples

    from attnc.pipeline import DEFAULT_PIPELINE

    model, _ = load_make_examples().encoder(seq=seq, hidden=768, heads=12, ffn=3072, layers=1, half=True)
    module = import_onnx(model)
    run_pipeline(module, DEFAULT_PIPELINE)
    run_pipeline(module, "tile{arch=cloud share-sram=on},fuse-elementwise{arch=cloud}")
    return main_func(module)


def test_an_output_projection_reading_spills_is_charged_each_column_and_the_last_norm_gets_row_blocks():
    # sharing SRAM, each part of the output projection reads its row strip from the attention's spills: in
    # 24 columns its 0.8 MB input was read 24 times, out of one DMA tile per group (links at twice their
    # capacity), uncounted by the grid search; counted, it keeps to a few columns. And contexts were left for
    # the last LayerNorm, which otherwise ran on one tile alone
    fn = _bert_on_cloud()
    report = fn.attributes["attnc.tile_report"].data
    oproj = next(line for line in report.splitlines() if "@ 768x768 in" in line)
    cols = int(re.search(r" in \d+x(\d+) parts", oproj).group(1))
    dram = int(re.search(r"(\d+) DRAM bytes", oproj).group(1))
    strips = 512 * 768 * 2
    assert cols <= 4 and dram >= cols * strips + 768 * 768 * 2 + strips, oproj
    tags = {op.attributes["dataflow.tag"].data for op in fn.body.block.ops if "dataflow.tag" in op.attributes}
    # (it runs alone between phases: as many row blocks as contexts are left, not 4 to match the FFN's parts)
    assert sum(t.startswith("layer_norm") for t in tags) >= 16, sorted(tags)


def test_a_crossing_is_cut_over_spills_that_no_reader_straddles():
    # FFN2's parts each read a row strip made of several FFN1 parts' outputs: a strip stays in one spill (a
    # part fed by two could wait on one for tokens the other holds back), and the spills carry each value once
    _, _, _, kernels = _lowered("on", rows=256, hidden=512, inner=512)
    spills = [k for k in kernels if k.kind.data == "dma_spill"]
    assert len(spills) > 1
    carried = [v for sp in spills for v in sp.inputs]
    assert len(carried) == len(set(carried))
    for k in kernels:
        feeding = {v.owner for v in k.inputs if getattr(v.owner, "kind", None) is not None
                   and v.owner.kind.data == "dma_spill"}  # fmt: skip
        assert len(feeding) <= 1, k.sym_name.data
