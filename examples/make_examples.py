"""Write the example ONNX models and their inputs (needs only onnx and numpy).

    python examples/make_examples.py [OUT_DIR]      # default: this folder

This script is the source of truth for examples/*.onnx and examples/*.inputs.npz:
the output is byte-for-byte deterministic (fixed seeds, deterministic protobuf
serialization, .npz archives with fixed timestamps), and a test regenerates it
and compares with the checked-in files.

    bert_layer       BERT self-attention layer, user-written math (MatMul, Div, additive mask, Softmax), opset 17
    causal_decoder   GPT block: LayerNorm, fused QKV + Split, Trilu+Where causal mask, erf GELU FFN, opset 17
    gqa_block        grouped-query attention: 8 query heads, 2 kv heads repeated by Unsqueeze+Expand+Reshape, opset 18
    attention23      one opset-23 Attention node with is_causal=1
"""

from __future__ import annotations

import io
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
# IR versions of the onnx release that introduced each opset, so older runtimes load the files.
IR_VERSION = {17: 8, 18: 8, 23: 11}


class Graph:
    """A small builder: named initializers and nodes with generated output names."""

    def __init__(self, name: str, seed: int):
        self.name = name
        self.rng = np.random.default_rng(seed)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []
        self.count = 0

    def const(self, name: str, value: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def weight(self, name: str, shape: tuple[int, ...], scale: float | None = None) -> str:
        # default scale 1/sqrt(fan_in) keeps activations O(1) through the layer
        s = scale if scale is not None else 1.0 / np.sqrt(shape[0])
        return self.const(name, (self.rng.standard_normal(shape) * s).astype(np.float32))

    def ints(self, name: str, values: list[int]) -> str:
        return self.const(name, np.array(values, dtype=np.int64))

    def op(self, op_type: str, inputs: list[str], n_out: int = 1, name: str | None = None, **attrs: object) -> str | list[str]:
        self.count += 1
        base = name or f"{op_type.lower()}_{self.count}"
        outs = [base] if n_out == 1 else [f"{base}_{i}" for i in range(n_out)]
        self.nodes.append(helper.make_node(op_type, inputs, outs, name=f"{op_type}_{self.count}", **attrs))
        return outs[0] if n_out == 1 else outs

    def model(self, inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto], opset: int) -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, self.name, inputs, outputs, self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="attnc-examples", ir_version=IR_VERSION[opset]
        )
        onnx.checker.check_model(model, full_check=True)
        return model


def _linear(g: Graph, x: str, prefix: str, d_in: int, d_out: int) -> str:
    w = g.weight(f"{prefix}.weight", (d_in, d_out))
    b = g.weight(f"{prefix}.bias", (d_out,), scale=0.02)
    return g.op("Add", [g.op("MatMul", [x, w]), b])


def _ln_params(g: Graph, prefix: str, d: int) -> list[str]:
    scale = g.const(f"{prefix}.weight", (1.0 + 0.1 * g.rng.standard_normal(d)).astype(np.float32))
    return [scale, g.weight(f"{prefix}.bias", (d,), scale=0.1)]


def _layer_norm(g: Graph, x: str, prefix: str, d: int) -> str:
    return g.op("LayerNormalization", [x, *_ln_params(g, prefix, d)], axis=-1, epsilon=1e-5)


def _split_heads(g: Graph, x: str, seq: int, heads: int, head_dim: int, perm: list[int]) -> str:
    """(1, S, H*D) -> (1, H, S, D) (perm [0, 2, 1, 3]) or the transposed keys (perm [0, 2, 3, 1])."""
    r = g.op("Reshape", [x, g.ints(f"{x}.shape", [1, seq, heads, head_dim])])
    return g.op("Transpose", [r], perm=perm)


def _merge_heads(g: Graph, x: str, seq: int, hidden: int) -> str:
    t = g.op("Transpose", [x], perm=[0, 2, 1, 3])
    return g.op("Reshape", [t, g.ints(f"{t}.shape", [1, seq, hidden])])


def _vi(name: str, shape: list[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, FLOAT, shape)


def bert_layer(seq: int = 16, hidden: int = 64, heads: int = 4) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Also builds BERT-base sizes for benchmarks/frontend.py (hidden 768, 12 heads)."""
    d = hidden // heads
    g = Graph("bert_layer", seed=1)
    x = "hidden_states"
    q = _split_heads(g, _linear(g, x, "query", hidden, hidden), seq, heads, d, [0, 2, 1, 3])
    kt = _split_heads(g, _linear(g, x, "key", hidden, hidden), seq, heads, d, [0, 2, 3, 1])
    v = _split_heads(g, _linear(g, x, "value", hidden, hidden), seq, heads, d, [0, 2, 1, 3])
    scores = g.op("Div", [g.op("MatMul", [q, kt]), g.const("sqrt_head_dim", np.array(np.sqrt(d), np.float32))])
    probs = g.op("Softmax", [g.op("Add", [scores, "attention_mask"])], axis=-1)
    ctx = _merge_heads(g, g.op("MatMul", [probs, v]), seq, hidden)
    out = g.op("Add", [_linear(g, ctx, "output.dense", hidden, hidden), x])
    g.op("LayerNormalization", [out, *_ln_params(g, "output.norm", hidden)], name="output", axis=-1, epsilon=1e-12)
    model = g.model([_vi(x, [1, seq, hidden]), _vi("attention_mask", [1, 1, 1, seq])], [_vi("output", [1, seq, hidden])], 17)
    rng = np.random.default_rng(101)
    mask = np.zeros((1, 1, 1, seq), np.float32)
    mask[..., seq - 3 :] = -10000.0  # the last three tokens are padding
    return model, {x: rng.standard_normal((1, seq, hidden)).astype(np.float32), "attention_mask": mask}


def encoder(seq: int = 16, hidden: int = 64, heads: int = 4, ffn: int = 256, layers: int = 2,
            seed: int = 5, half: bool = False, part: str = "block") -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """A post-LN BERT encoder of ``layers`` blocks (self-attention, then an erf-GELU FFN), the model
    benchmarks/butterfly.py decomposes; not a shipped example. ``half``: f16 weights and data. ``part``:
    ``block`` (both sub-layers), or one block's ``attention`` or ``ffn`` sub-layer alone (x -> LN(x + f(x)))."""
    d = hidden // heads
    g = Graph("encoder", seed=seed)
    x = "hidden_states"
    for i in range(layers):
        p = f"layer{i}"
        if part in ("block", "attention"):
            q = _split_heads(g, _linear(g, x, f"{p}.query", hidden, hidden), seq, heads, d, [0, 2, 1, 3])
            kt = _split_heads(g, _linear(g, x, f"{p}.key", hidden, hidden), seq, heads, d, [0, 2, 3, 1])
            v = _split_heads(g, _linear(g, x, f"{p}.value", hidden, hidden), seq, heads, d, [0, 2, 1, 3])
            scale = g.const(f"{p}.sqrt_head_dim", np.array(np.sqrt(d), np.float32))
            ctx = _merge_heads(g, g.op("MatMul", [g.op("Softmax", [g.op("Div", [g.op("MatMul", [q, kt]), scale])],
                                                       axis=-1), v]), seq, hidden)  # fmt: skip
            attn = _linear(g, ctx, f"{p}.attention.output", hidden, hidden)
            x = _layer_norm(g, g.op("Add", [attn, x]), f"{p}.ln_1", hidden)
        if part in ("block", "ffn"):
            u = _linear(g, x, f"{p}.intermediate", hidden, ffn)
            erf = g.op("Erf", [g.op("Div", [u, g.const(f"{p}.sqrt2", np.array(np.sqrt(2.0), np.float32))])])
            half_u = g.op("Mul", [u, g.const(f"{p}.half", np.array(0.5, np.float32))])
            gelu = g.op("Mul", [half_u, g.op("Add", [erf, g.const(f"{p}.one", np.array(1.0, np.float32))])])
            x = _layer_norm(g, g.op("Add", [_linear(g, gelu, f"{p}.output", ffn, hidden), x]), f"{p}.ln_2", hidden)
    g.op("Identity", [x], name="output")
    if half:
        g.inits = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
                   if t.data_type == FLOAT else t for t in g.inits]  # fmt: skip
    vi = helper.make_tensor_value_info
    elt = TensorProto.FLOAT16 if half else FLOAT
    model = g.model([vi("hidden_states", elt, [1, seq, hidden])], [vi("output", elt, [1, seq, hidden])], 17)
    rng = np.random.default_rng(100 + seed)
    x0 = rng.standard_normal((1, seq, hidden)).astype(np.float16 if half else np.float32)
    return model, {"hidden_states": x0}


def _rms_norm(g: Graph, x: str, prefix: str, d: int) -> str:
    """x / sqrt(mean(x^2) + eps) * weight in the ops a torch export writes (Pow, ReduceMean, Add, Sqrt, Div,
    Mul), not ONNX's RMSNormalization (opset 23)."""
    ms = g.op("ReduceMean", [g.op("Pow", [x, g.const(f"{prefix}.two", np.array(2.0, np.float32))]),
                             g.ints(f"{prefix}.axes", [-1])], keepdims=1)  # fmt: skip
    rms = g.op("Sqrt", [g.op("Add", [ms, g.const(f"{prefix}.eps", np.array(1e-5, np.float32))])])
    scale = g.const(f"{prefix}.weight", (1.0 + 0.1 * g.rng.standard_normal(d)).astype(np.float32))
    return g.op("Mul", [g.op("Div", [x, rms]), scale])


def llama_layer(seq: int = 16, hidden: int = 64, heads: int = 8, kv_heads: int = 2, ffn: int = 176, seed: int = 6,
                half: bool = False) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:  # fmt: skip
    """A Llama-style decoder layer, the model benchmarks/layer.py measures; not a shipped example:
    x1 = x + O(attention(RMSNorm(x))), y = x1 + W_down(silu(W_gate h) * W_up h) with h = RMSNorm(x1).
    Grouped-query attention (``heads`` query heads sharing ``kv_heads`` key/value heads), causal, as one opset-23
    ``Attention`` node on 3-D inputs (its ``q_num_heads``/``kv_num_heads``: no seq x seq mask constant). No
    biases; rotary embeddings are left out (elementwise on Q and K, no MACs). ``half``: f16 weights and data."""
    d = hidden // heads
    g = Graph("llama_layer", seed=seed)
    x = "hidden_states"
    h = _rms_norm(g, x, "input_norm", hidden)
    q = g.op("MatMul", [h, g.weight("q_proj.weight", (hidden, heads * d))])
    k = g.op("MatMul", [h, g.weight("k_proj.weight", (hidden, kv_heads * d))])
    v = g.op("MatMul", [h, g.weight("v_proj.weight", (hidden, kv_heads * d))])
    ctx = g.op("Attention", [q, k, v], is_causal=1, q_num_heads=heads, kv_num_heads=kv_heads)
    x1 = g.op("Add", [x, g.op("MatMul", [ctx, g.weight("o_proj.weight", (hidden, hidden))])])
    h = _rms_norm(g, x1, "post_attention_norm", hidden)
    gate = g.op("MatMul", [h, g.weight("gate_proj.weight", (hidden, ffn))])
    up = g.op("MatMul", [h, g.weight("up_proj.weight", (hidden, ffn))])
    silu = g.op("Mul", [gate, g.op("Sigmoid", [gate])])
    down = g.op("MatMul", [g.op("Mul", [silu, up]), g.weight("down_proj.weight", (ffn, hidden))])
    g.op("Add", [x1, down], name="output")
    if half:
        g.inits = [numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16), t.name)
                   if t.data_type == FLOAT else t for t in g.inits]  # fmt: skip
    elt = TensorProto.FLOAT16 if half else FLOAT
    vi = helper.make_tensor_value_info
    model = g.model([vi(x, elt, [1, seq, hidden])], [vi("output", elt, [1, seq, hidden])], 23)
    rng = np.random.default_rng(100 + seed)
    return model, {x: rng.standard_normal((1, seq, hidden)).astype(np.float16 if half else np.float32)}


def causal_decoder() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    seq, hidden, heads, ffn = 16, 64, 4, 256
    d = hidden // heads
    g = Graph("causal_decoder", seed=2)
    x = "x"
    h = _layer_norm(g, x, "ln_1", hidden)
    q, k, v = g.op("Split", [_linear(g, h, "attn.qkv", hidden, 3 * hidden), g.ints("qkv_split", [hidden] * 3)], n_out=3, axis=-1)
    q = _split_heads(g, q, seq, heads, d, [0, 2, 1, 3])
    kt = _split_heads(g, k, seq, heads, d, [0, 2, 3, 1])
    v = _split_heads(g, v, seq, heads, d, [0, 2, 1, 3])
    scores = g.op("Mul", [g.op("MatMul", [q, kt]), g.const("scale", np.array(1.0 / np.sqrt(d), np.float32))])
    # TorchScript-style causal mask: lower triangle of ones -> bool -> Where(mask, scores, -inf)
    lower = g.op("Trilu", [g.const("ones", np.ones((seq, seq), np.float32))], upper=0)
    keep = g.op("Cast", [lower], to=TensorProto.BOOL)
    masked = g.op("Where", [keep, scores, g.const("neg_inf", np.array(-np.inf, np.float32))])
    probs = g.op("Softmax", [masked], axis=-1)
    ctx = _merge_heads(g, g.op("MatMul", [probs, v]), seq, hidden)
    x1 = g.op("Add", [x, _linear(g, ctx, "attn.out", hidden, hidden)])
    # FFN with exact GELU written out as 0.5 * u * (1 + erf(u / sqrt(2))) (Gelu is an opset-20 op)
    u = _linear(g, _layer_norm(g, x1, "ln_2", hidden), "mlp.fc", hidden, ffn)
    erf = g.op("Erf", [g.op("Div", [u, g.const("sqrt2", np.array(np.sqrt(2.0), np.float32))])])
    gelu = g.op("Mul", [g.op("Mul", [u, g.const("half", np.array(0.5, np.float32))]), g.op("Add", [erf, g.const("one", np.array(1.0, np.float32))])])
    g.op("Add", [x1, _linear(g, gelu, "mlp.proj", ffn, hidden)], name="y")
    model = g.model([_vi(x, [1, seq, hidden])], [_vi("y", [1, seq, hidden])], 17)
    rng = np.random.default_rng(102)
    return model, {x: rng.standard_normal((1, seq, hidden)).astype(np.float32)}


def gqa_block() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    seq, hidden, heads, kv_heads = 16, 64, 8, 2
    d = hidden // heads
    group = heads // kv_heads
    g = Graph("gqa_block", seed=3)
    x = "x"
    q = _split_heads(g, g.op("MatMul", [x, g.weight("q_proj.weight", (hidden, hidden))]), seq, heads, d, [0, 2, 1, 3])

    def kv(prefix: str) -> str:
        # (1, Hkv, S, D) -> unsqueeze (1, Hkv, 1, S, D) -> expand (1, Hkv, G, S, D) -> (1, Hq, S, D)
        t = _split_heads(g, g.op("MatMul", [x, g.weight(f"{prefix}.weight", (hidden, kv_heads * d))]), seq, kv_heads, d, [0, 2, 1, 3])
        u = g.op("Unsqueeze", [t, g.ints(f"{prefix}.axes", [2])])
        e = g.op("Expand", [u, g.ints(f"{prefix}.expand", [1, kv_heads, group, seq, d])])
        return g.op("Reshape", [e, g.ints(f"{prefix}.repeat", [1, heads, seq, d])])

    k, v = kv("k_proj"), kv("v_proj")
    scores = g.op("Mul", [g.op("MatMul", [q, g.op("Transpose", [k], perm=[0, 1, 3, 2])]), g.const("scale", np.array(1.0 / np.sqrt(d), np.float32))])
    ctx = _merge_heads(g, g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v]), seq, hidden)
    g.op("Add", [x, g.op("MatMul", [ctx, g.weight("o_proj.weight", (hidden, hidden))])], name="y")
    model = g.model([_vi(x, [1, seq, hidden])], [_vi("y", [1, seq, hidden])], 18)
    rng = np.random.default_rng(103)
    return model, {x: rng.standard_normal((1, seq, hidden)).astype(np.float32)}


def attention23() -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    shape = [1, 4, 16, 16]  # (batch, heads, seq, head_dim)
    g = Graph("attention23", seed=4)
    g.op("Attention", ["Q", "K", "V"], name="Y", is_causal=1)
    model = g.model([_vi(n, shape) for n in "QKV"], [_vi("Y", shape)], 23)
    rng = np.random.default_rng(104)
    return model, {n: rng.standard_normal(shape).astype(np.float32) for n in "QKV"}


EXAMPLES: dict[str, Callable[[], tuple[onnx.ModelProto, dict[str, np.ndarray]]]] = {
    "bert_layer": bert_layer,
    "causal_decoder": causal_decoder,
    "gqa_block": gqa_block,
    "attention23": attention23,
}


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An .npz archive like ``np.savez`` writes, but with fixed timestamps so it is reproducible."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)
    return buf.getvalue()


def write_examples(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in EXAMPLES.items():
        model, inputs = build()
        for path, data in (
            (out_dir / f"{name}.onnx", model.SerializeToString(deterministic=True)),
            (out_dir / f"{name}.inputs.npz", npz_bytes(inputs)),
        ):
            path.write_bytes(data)
            written.append(path)
    return written


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    for p in write_examples(out):
        print(p)
