"""benchmarks/layer.py's own arithmetic: the layer's MACs and compulsory DRAM bytes counted from the ONNX graph,
and the rule that splits a compiled layer's busy cycles into sub-layers (on a small layer, compiled for real)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def layer() -> ModuleType:
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("layer_benchmark", BENCHMARKS / "layer.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_counts_of_an_encoder_layer(layer: ModuleType) -> None:
    s, h, f = 16, 64, 128
    model, _ = layer.make_examples().encoder(seq=s, hidden=h, heads=4, ffn=f, layers=1, half=True)
    macs, compulsory = layer.model_counts(model)
    assert macs == 4 * s * h * h + 2 * s * h * f + 2 * s * s * h  # Q/K/V/O, FFN, QK^T and PV
    weights = 4 * (h * h + h) + (h * f + f) + (f * h + h) + 2 * 2 * h  # linears with biases, two LayerNorms
    scalars = 4  # sqrt(d), sqrt(2), 0.5, 1 (GELU)
    assert compulsory == 2 * (2 * s * h + weights + scalars)  # f16: input and output once, every float weight


def test_counts_of_a_causal_gqa_layer(layer: ModuleType) -> None:
    s, h, heads, kv, f = 8, 32, 4, 2, 48
    model, _ = layer.make_examples().llama_layer(seq=s, hidden=h, heads=heads, kv_heads=kv, ffn=f, half=True)
    macs, _ = layer.model_counts(model)
    d = h // heads
    linears = s * h * (h + 2 * kv * d + h) + 3 * s * h * f
    assert macs == linears + 2 * heads * d * s * (s + 1) // 2  # causal: the scores on or below the diagonal


def test_sub_layer_rule_on_a_compiled_encoder_layer(layer: ModuleType) -> None:
    from attnc.arch import load_arch
    from attnc.backend.emit import emit_bitstream
    from attnc.frontend.onnx import import_onnx
    from attnc.pipeline import DEFAULT_PIPELINE, backend_passes, run_pipeline

    model, _ = layer.make_examples().encoder(seq=16, hidden=64, heads=4, ffn=128, layers=1, half=True)
    module = import_onnx(model)
    run_pipeline(module, DEFAULT_PIPELINE)
    run_pipeline(module, backend_passes("edge", time_limit=1.0, seed=0, heuristic_only=True))
    bs = emit_bitstream(module, load_arch("edge"), {})
    roles = layer.classify(bs)
    kernels = {c.kernel: c for t in bs.tiles for c in t.contexts}
    assert set(roles) == set(kernels) and set(roles.values()) <= {"dma", *layer.SUBLAYERS}
    by_role: dict[str, set[str]] = {}
    for k, c in kernels.items():
        by_role.setdefault(roles[k], set()).add(c.kind)
    assert by_role["dma"] <= {"dma_load", "dma_store"}
    assert "attention" in by_role["attention"]
    # a LayerNorm kernel of its own is a norm; one fused into a GEMM's epilogue is that GEMM's sub-layer
    assert all(roles[k] == "norms" for k, c in kernels.items() if c.kind == "layer_norm")
    assert "gemm" not in by_role.get("norms", set())
    # every linear is a projection or FFN; the FFN's weights are the 128-wide ones
    for k, c in kernels.items():
        if c.kind == "gemm":
            assert roles[k] in ("projection", "ffn")
    ffn = sum(1 for k, c in kernels.items() if c.kind == "gemm" and roles[k] == "ffn")
    proj = sum(1 for k, c in kernels.items() if c.kind == "gemm" and roles[k] == "projection")
    assert ffn >= 2 and proj >= 4  # two FFN linears, four projections (each maybe split over tiles)
    # the GELU between the FFN's linears is FFN work, not a norm
    assert {roles[k] for k, c in kernels.items() if any(i.opcode == "erf" for i in c.body)} <= {"ffn"}


def test_a_butterfly_layer_counts_its_factors_not_the_dense_weights(layer: ModuleType) -> None:
    """--butterfly: the compulsory bytes are the input, output and the float constants of the IR after the
    front end, where the butterfly factors have replaced the dense weights."""
    from attnc.frontend.onnx import import_onnx
    from attnc.pipeline import DEFAULT_PIPELINE, parse_pipeline, run_pipeline, with_butterfly

    model, _ = layer.make_examples().encoder(seq=16, hidden=64, heads=4, ffn=128, layers=1, half=True)
    _, dense = layer.model_counts(model)
    io = layer.io_bytes(model)
    assert io == 2 * 2 * 16 * 64
    plain = import_onnx(model)
    run_pipeline(plain, DEFAULT_PIPELINE)
    # the same weights the ONNX graph counts (the front end may fold a scalar or two)
    assert dense - io - 16 <= layer.constant_bytes(plain) <= dense - io
    module = import_onnx(model)
    run_pipeline(module, with_butterfly(parse_pipeline(DEFAULT_PIPELINE), "linears=qkv,out,ffn"))
    assert 0 < layer.constant_bytes(module) < dense - io


def test_speedups_take_the_dense_layer_of_the_run_else_the_csv(layer: ModuleType, tmp_path: Path) -> None:
    csv = tmp_path / "layer.csv"
    csv.write_text("arch,workload,seq,part,cycles,error\nedge,bert,512,layer,1000,\nedge,bert,2048,layer,8000,\n"
                   "cloud,bert,512,layer,,timeout\n")  # fmt: skip
    rows = [
        {"arch": "edge", "workload": "bert", "seq": 512, "part": "layer", "cycles": 600},
        {"arch": "edge", "workload": "bert", "seq": 512, "part": "layer", "cycles": 250, "variant": "butterfly"},
        {"arch": "edge", "workload": "bert", "seq": 2048, "part": "layer", "cycles": 2000, "variant": "butterfly"},
        {"arch": "cloud", "workload": "bert", "seq": 512, "part": "layer", "cycles": 50, "variant": "butterfly"},
    ]
    layer.add_speedups(rows, csv)
    assert (rows[1]["dense_cycles"], rows[1]["speedup"]) == (600, 2.4)  # the run's own dense point
    assert (rows[2]["dense_cycles"], rows[2]["speedup"]) == (8000, 4.0)  # from the CSV
    assert "speedup" not in rows[3] and "speedup" not in rows[0]  # no dense figure; a dense row has none
