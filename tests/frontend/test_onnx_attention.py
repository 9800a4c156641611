"""The ONNX Attention op (opsets 23-25) imports to one sparse.attention, or to its
decomposition when qk_matmul_output is wanted; numerics against the ONNX reference."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper
from onnx.reference import ReferenceEvaluator

from attnc.dialects import sparse as sp
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret

F = T.FLOAT
RNG = np.random.default_rng(1)


def rand(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def attention_model(onnx_model, inputs, outputs, opset=23, **attrs):
    """inputs: {slot name: array}; the slots are Q K V attn_mask past_key past_value nonpad_kv_seqlen."""
    slots = ["Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen"]
    used = max(slots.index(k) for k in inputs) + 1
    names = [s if s in inputs else "" for s in slots[:used]]
    out_slots = ["Y", "present_key", "present_value", "qk_matmul_output"]
    out_names = [s if s in outputs else "" for s in out_slots[: max(out_slots.index(o) for o in outputs) + 1]]
    node = helper.make_node("Attention", names, out_names, name="attn", **attrs)
    types = {np.dtype(np.float32): F, np.dtype(np.bool_): T.BOOL, np.dtype(np.int64): T.INT64}
    ins = {k: (types[v.dtype], list(v.shape)) for k, v in inputs.items()}
    ref = ReferenceEvaluator(helper.make_model(
        helper.make_graph([node], "g", [helper.make_tensor_value_info(k, *ins[k]) for k in inputs],
                          [helper.make_tensor_value_info(o, F, None) for o in outputs]),
        opset_imports=[helper.make_opsetid("", opset)]))  # fmt: skip
    want = dict(zip(outputs, ref.run(None, inputs)))
    model = onnx_model([node], ins, {o: (F, list(want[o].shape)) for o in outputs}, opset=opset)
    return model, want


def run(model, inputs, want):
    module = import_onnx(model)
    got = interpret(module, inputs)
    for name, w in want.items():
        np.testing.assert_allclose(got[name], w, rtol=1e-5, atol=1e-5, err_msg=name)
    return [op for op in module.walk() if isinstance(op, sp.AttentionOp)], module


CASES = {
    "4d": ({"Q": rand(2, 3, 4, 8), "K": rand(2, 3, 6, 8), "V": rand(2, 3, 6, 5)}, {}),
    "4d_scaled_softcap": ({"Q": rand(1, 2, 4, 8), "K": rand(1, 2, 4, 8), "V": rand(1, 2, 4, 8)}, {"scale": 0.3, "softcap": 2.0}),
    "3d": ({"Q": rand(2, 4, 16), "K": rand(2, 6, 16), "V": rand(2, 6, 16)}, {"q_num_heads": 4, "kv_num_heads": 4}),
    "gqa_causal": ({"Q": rand(1, 4, 5, 8), "K": rand(1, 2, 5, 8), "V": rand(1, 2, 5, 8)}, {"is_causal": 1}),
    "3d_gqa": ({"Q": rand(1, 3, 32), "K": rand(1, 3, 8), "V": rand(1, 3, 8)}, {"q_num_heads": 4, "kv_num_heads": 1}),
    "bool_mask_shorter": (
        {"Q": rand(1, 2, 3, 4), "K": rand(1, 2, 6, 4), "V": rand(1, 2, 6, 4), "attn_mask": RNG.random((3, 4)) > 0.3},
        {},
    ),
    "float_mask_4d_causal": (
        {"Q": rand(2, 2, 4, 4), "K": rand(2, 2, 4, 4), "V": rand(2, 2, 4, 4), "attn_mask": rand(2, 1, 4, 4)},
        {"is_causal": 1},
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_imports_to_one_sparse_attention(onnx_model, case):
    inputs, attrs = CASES[case]
    model, want = attention_model(onnx_model, inputs, ["Y"], **attrs)
    ops, _ = run(model, inputs, want)
    assert len(ops) == 1
    att = ops[0]
    assert (att.causal is not None) == bool(attrs.get("is_causal"))
    assert att.causal_offset.value.data == 0
    if "scale" in attrs:
        assert att.scale.value.data == pytest.approx(attrs["scale"])
    if "softcap" in attrs:
        assert att.softcap.value.data == attrs["softcap"]


def test_past_key_value_gives_present_outputs_and_causal_offset(onnx_model):
    inputs = {
        "Q": rand(1, 4, 2, 8), "K": rand(1, 2, 2, 8), "V": rand(1, 2, 2, 8),
        "past_key": rand(1, 2, 5, 8), "past_value": rand(1, 2, 5, 8),
    }  # fmt: skip
    model, want = attention_model(onnx_model, inputs, ["Y", "present_key", "present_value"], is_causal=1)
    ops, module = run(model, inputs, want)
    assert len(ops) == 1
    assert ops[0].causal is not None and ops[0].causal_offset.value.data == 5
    assert ops[0].kv_heads.value.data == 2 and ops[0].heads.value.data == 4


@pytest.mark.parametrize("mode", [0, 1, 2, 3])
def test_qk_matmul_output_decomposes(onnx_model, mode):
    inputs = {"Q": rand(1, 4, 3, 4), "K": rand(1, 2, 5, 4), "V": rand(1, 2, 5, 4), "attn_mask": rand(3, 5)}
    model, want = attention_model(
        onnx_model, inputs, ["Y", "present_key", "present_value", "qk_matmul_output"],
        is_causal=1, softcap=3.0, qk_matmul_output_mode=mode,
    )  # fmt: skip
    ops, module = run(model, inputs, want)
    assert ops == []
    assert any(isinstance(op, sp.SoftmaxOp) for op in module.walk())


def test_nonpad_kv_seqlen_becomes_an_explicit_mask(onnx_model):
    inputs = {
        "Q": rand(2, 2, 1, 4), "K": rand(2, 2, 6, 4), "V": rand(2, 2, 6, 4),
        "nonpad_kv_seqlen": np.array([3, 6], np.int64),
    }  # fmt: skip
    model, want = attention_model(onnx_model, inputs, ["Y"], opset=24, is_causal=1)
    ops, _ = run(model, inputs, want)
    assert len(ops) == 1 and ops[0].causal is None and ops[0].mask is not None


def test_sliding_window_becomes_an_explicit_mask(onnx_model):
    inputs = {"Q": rand(1, 2, 6, 4), "K": rand(1, 2, 6, 4), "V": rand(1, 2, 6, 4)}
    model, want = attention_model(onnx_model, inputs, ["Y"], opset=25, is_causal=1, left_window_size=2)
    ops, _ = run(model, inputs, want)
    assert len(ops) == 1 and ops[0].causal is None and ops[0].mask is not None


def test_3d_attention_without_head_counts_is_an_error(onnx_model):
    from attnc.errors import AttncError

    node = helper.make_node("Attention", ["Q", "K", "V"], ["Y"], name="attn")
    model = onnx_model([node], {k: (F, [1, 2, 8]) for k in "QKV"}, {"Y": (F, [1, 2, 8])}, opset=23)
    with pytest.raises(AttncError, match="q_num_heads"):  # ONNX's strict shape inference says so first
        import_onnx(model)


def ms_attention_model(mask_shape, unidirectional):
    """com.microsoft.Attention as ORT's BERT optimizer emits it (packed QKV weights)."""
    b, s, hidden, heads = 2, 5, 16, 4
    ins = ["x", "w", "bias"] + (["mask"] if mask_shape else [])
    node = helper.make_node(
        "Attention", ins, ["y"], name="ms", domain="com.microsoft", num_heads=heads, unidirectional=unidirectional
    )
    inputs = [helper.make_tensor_value_info("x", F, [b, s, hidden])]
    if mask_shape:
        inputs.append(helper.make_tensor_value_info("mask", T.INT32, mask_shape))
    from onnx import numpy_helper

    graph = helper.make_graph(
        [node], "ms", inputs, [helper.make_tensor_value_info("y", F, [b, s, hidden])],
        [numpy_helper.from_array(rand(hidden, 3 * hidden) * 0.3, "w"), numpy_helper.from_array(rand(3 * hidden), "bias")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("mask_shape, unidirectional", [(None, 0), (None, 1), ([2, 5], 0), ([2], 0), ([2, 5], 1)])
def test_com_microsoft_attention_matches_onnxruntime(mask_shape, unidirectional):
    import onnxruntime as ort

    model = ms_attention_model(mask_shape, unidirectional)
    feeds = {"x": rand(2, 5, 16)}
    if mask_shape == [2, 5]:
        feeds["mask"] = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)
    elif mask_shape == [2]:
        feeds["mask"] = np.array([3, 5], np.int32)
    module = import_onnx(model)
    assert sum(isinstance(op, sp.AttentionOp) for op in module.walk()) == 1
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    np.testing.assert_allclose(interpret(module, feeds)["y"], want, rtol=1e-4, atol=1e-5)
