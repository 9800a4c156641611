"""The layer builders of examples/make_examples.py that benchmarks/layer.py measures (not shipped examples):
at small sizes they are valid ONNX, the reference interpreter agrees with onnxruntime, and the front end
raises their attention to one ``sparse.attention``."""

from __future__ import annotations

import numpy as np
import pytest
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret
from attnc.pipeline import DEFAULT_PIPELINE, run_pipeline
from example_script import load_make_examples


def _onnxruntime(model, inputs: dict[str, np.ndarray]) -> np.ndarray:
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["output"], inputs)[0]


@pytest.mark.parametrize("half", [False, True])
def test_llama_layer_matches_onnxruntime_and_raises_one_gqa_attention(half: bool) -> None:
    model, inputs = load_make_examples().llama_layer(seq=8, hidden=32, heads=4, kv_heads=2, ffn=48, half=half)
    module = import_onnx(model)
    run_pipeline(module, DEFAULT_PIPELINE)
    attentions = [op for op in module.walk() if op.name == "sparse.attention"]
    assert len(attentions) == 1
    assert attentions[0].causal is not None  # is_causal=1 kept, no mask tensor
    got = interpret(module, inputs)["output"]
    want = _onnxruntime(model, inputs)
    assert got.dtype == want.dtype == (np.float16 if half else np.float32)
    tol = 2e-2 if half else 1e-5
    np.testing.assert_allclose(got.astype(np.float64), want.astype(np.float64), rtol=tol, atol=tol)


def test_llama_layer_is_deterministic_and_has_the_gqa_weight_shapes() -> None:
    ex = load_make_examples()
    a, _ = ex.llama_layer(seq=8, hidden=32, heads=4, kv_heads=2, ffn=48)
    b, _ = ex.llama_layer(seq=8, hidden=32, heads=4, kv_heads=2, ffn=48)
    assert a.SerializeToString(deterministic=True) == b.SerializeToString(deterministic=True)
    dims = {t.name: list(t.dims) for t in a.graph.initializer}
    assert dims["q_proj.weight"] == [32, 32] and dims["k_proj.weight"] == [32, 16] == dims["v_proj.weight"]
    assert dims["gate_proj.weight"] == dims["up_proj.weight"] == [32, 48] and dims["down_proj.weight"] == [48, 32]
