"""butterfly-decompose: the roles it finds, the IR it leaves, and its numbers against the
interpreter on the dense model whose weights are the pass's own projections."""

import json

import numpy as np
import onnx
import pytest
from example_script import load_make_examples
from onnx import numpy_helper

from attnc import butterfly as bf
from attnc.dialects import sparse as sp
from attnc.errors import AttncError
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret
from attnc.ir import io_names, main_func, parse_module, print_module
from attnc.passes.butterfly_decompose import (
    REPORT_ATTR,
    ButterflyDecomposePass,
    decompose_summary,
    find_linears,
    format_report,
    nearest_sqrt_divisor,
)
from attnc.pipeline import parse_pipeline, pipeline_spec, run_pipeline

EX = load_make_examples()


def raised(model):
    module = import_onnx(model)
    run_pipeline(module, "canonicalize,raise-attention")
    return module


def ops_of(module, cls):
    return [op for op in main_func(module).body.block.ops if isinstance(op, cls)]


def report(module):
    return json.loads(main_func(module).attributes[REPORT_ATTR].data)


def fitted(w, kind, factors, block):
    """The dense W_fit the pass should use for ``w`` (computed here from attnc.butterfly alone):
    square, [W_1 | ... | W_k] or W stacked by rows, each piece projected on its own."""
    din, dout = w.shape
    n = min(din, dout)
    pieces = [w[:, j * n : (j + 1) * n] for j in range(dout // n)] if dout >= din else \
        [w[j * n : (j + 1) * n, :] for j in range(din // n)]  # fmt: skip
    dense = []
    for p in pieces:
        fit = bf.project(p.astype(np.float64), kind, factors or bf.levels(n, block), block)
        dense.append(bf.matrix(fit.weights, fit.stages, n))
    return np.concatenate(dense, axis=1 if dout >= din else 0)


def with_weights(model, new: dict[str, np.ndarray]):
    """A copy of the ONNX model with some initializers replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in new:
            init.CopyFrom(numpy_helper.from_array(new[init.name].astype(np.float32), init.name))
    return out


def weights(model, names):
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n: inits[n] for n in names}


# ---------------------------------------------------------------------------
# roles


def roles(module):
    _, lins = find_linears(main_func(module))
    return sorted((lin.block, lin.role, tuple(sp.shape_of(lin.op.rhs))) for lin in lins)


def test_roles_of_a_bert_layer_a_fused_qkv_decoder_and_a_two_block_encoder():
    assert roles(raised(EX.bert_layer(16, 64, 4)[0])) == [(0, "out", (64, 64))] + [(0, "qkv", (64, 64))] * 3
    # fused QKV (one 64x192 projection, then Split) and the FFN after the attention
    assert roles(raised(EX.causal_decoder()[0])) == [
        (0, "ffn", (64, 256)), (0, "ffn", (256, 64)), (0, "out", (64, 64)), (0, "qkv", (64, 192)),
    ]  # fmt: skip
    # grouped-query attention: k and v projections are 64 -> 2 kv heads x 8, repeated to the 8 query heads
    gqa = [(0, "out", (64, 64))] + [(0, "qkv", (64, 16))] * 2 + [(0, "qkv", (64, 64))]
    assert roles(raised(EX.gqa_block()[0])) == gqa
    enc = raised(EX.encoder(seq=8, hidden=32, heads=2, ffn=64, layers=2)[0])
    per_block = [("ffn", (32, 64)), ("ffn", (64, 32)), ("out", (32, 32))] + [("qkv", (32, 32))] * 3
    assert roles(enc) == [(b, *r) for b in (0, 1) for r in per_block]


def test_a_model_without_attention_puts_every_linear_in_block_0():
    module = raised(EX.encoder(seq=8, hidden=32, heads=2, ffn=64, layers=1, part="ffn")[0])
    assert roles(module) == [(0, "ffn", (32, 64)), (0, "ffn", (64, 32))]


# ---------------------------------------------------------------------------
# exactness against the pass's own projection


@pytest.mark.parametrize("example,spec,kind,factors,block", [
    ("causal_decoder", "butterfly-decompose{block=2 factors=3}", "block", 3, 2),
    ("causal_decoder", "butterfly-decompose", "block", 6, 1),
    ("bert_layer", "butterfly-decompose{kind=monarch}", "monarch", 2, 8),
    ("encoder", "butterfly-decompose{kind=monarch block=4}", "monarch", 2, 4),
    ("gqa_block", "butterfly-decompose", "block", 0, 1),  # 0: full, 6 factors for 64, 4 for the 16-wide k/v
])  # fmt: skip
def test_output_equals_the_dense_model_with_the_projected_weights(example, spec, kind, factors, block):
    model, inputs = {
        "causal_decoder": EX.causal_decoder,
        "bert_layer": lambda: EX.bert_layer(16, 64, 4),
        "encoder": lambda: EX.encoder(seq=8, hidden=32, heads=2, ffn=64),
        "gqa_block": EX.gqa_block,
    }[example]()
    module = raised(model)
    dense_out = interpret(module, inputs)
    run_pipeline(module, spec)
    assert not [m for m in ops_of(module, sp.MatmulOp) if isinstance(m.rhs.owner, sp.ConstantOp)]
    bms = ops_of(module, sp.ButterflyMatmulOp)
    assert bms and all(m.structure.kind.data == kind and m.structure.block.data == block for m in bms)
    assert all(m.structure.factors.data == (factors or bf.levels(sp.shape_of(m.input)[-1], block)) for m in bms)
    # the reference: the same ONNX model, its 2-D weights replaced by W_fit
    names = [i.name for i in model.graph.initializer if len(i.dims) == 2 and i.name.endswith("weight")]
    ref_model = with_weights(model, {n: fitted(w, kind, factors, block) for n, w in weights(model, names).items()})
    ref = interpret(raised(ref_model), inputs)
    got = interpret(module, inputs)
    for k in ref:
        np.testing.assert_allclose(got[k], ref[k], rtol=1e-4, atol=1e-4)
        # and the projection really changed the model (the check above is not vacuous)
        assert np.abs(got[k] - dense_out[k]).max() > 1e-2
    rep = report(module)
    assert len(rep["layers"]) == len(names) and not rep["skipped"]
    for row in rep["layers"]:
        assert 0 < row["error"] < 1


def test_an_exact_butterfly_weight_gives_the_dense_models_numbers():
    model, inputs = EX.bert_layer(16, 64, 4)
    names = ["query.weight", "key.weight", "value.weight", "output.dense.weight"]
    sts = bf.stages("block", 64, 6, 1)
    rng = np.random.default_rng(9)
    exact = {n: bf.matrix(bf.random_factors(sts, 64, rng), sts, 64) for n in names}
    model = with_weights(model, exact)
    module = raised(model)
    dense_out = interpret(module, inputs)
    run_pipeline(module, "butterfly-decompose")
    assert len(ops_of(module, sp.ButterflyMatmulOp)) == 4
    got = interpret(module, inputs)
    np.testing.assert_allclose(got["output"], dense_out["output"], rtol=1e-5, atol=1e-5)
    assert all(row["error"] < 1e-6 for row in report(module)["layers"])


def test_the_decomposed_module_verifies_and_round_trips():
    module = raised(EX.causal_decoder()[0])
    run_pipeline(module, "butterfly-decompose{block=2}")
    module.verify()
    text = print_module(module)
    assert "sparse.butterfly_matmul" in text and "sparse.concat" in text and "sparse.slice" in text
    again = parse_module(text)
    assert print_module(again) == text
    assert report(again) == report(module)


def test_rectangular_weights_concat_and_sum_pieces_and_keep_the_bias():
    module = raised(EX.causal_decoder()[0])
    run_pipeline(module, "butterfly-decompose{linears=ffn}")
    fc, proj = sorted(report(module)["layers"], key=lambda r: r["name"])
    assert (fc["shape"], fc["structure"]) == ([64, 256], "block F=6 b=1 x4 concat")
    assert (proj["shape"], proj["structure"]) == ([256, 64], "block F=6 b=1 x4 sum")
    concat = ops_of(module, sp.ConcatOp)
    assert len(concat) == 1 and len(concat[0].inputs) == 4
    assert all(isinstance(v.owner, sp.ButterflyMatmulOp) for v in concat[0].inputs)
    assert len({id(v.owner.input) for v in concat[0].inputs}) == 1  # all four read the same x
    # the bias add now takes the concatenation
    assert any(isinstance(u.operation, sp.AddOp) for u in concat[0].result.uses)
    slices = [s for s in ops_of(module, sp.SliceOp)
              if isinstance(next(iter(s.result.uses)).operation, sp.ButterflyMatmulOp)]  # fmt: skip
    assert sorted(list(s.starts.get_values())[-1] for s in slices) == [0, 64, 128, 192]
    # qkv and out stay dense
    assert len([m for m in ops_of(module, sp.MatmulOp) if isinstance(m.rhs.owner, sp.ConstantOp)]) == 2


def test_weights_keep_their_dtype():
    model, inputs = EX.encoder(seq=8, hidden=32, heads=2, ffn=64, layers=1, half=True)
    module = raised(model)
    run_pipeline(module, "butterfly-decompose")
    bms = ops_of(module, sp.ButterflyMatmulOp)
    assert bms and all(str(sp.elt_of(f)) == "f16" for m in bms for f in m.factors)
    out = interpret(module, inputs)["output"]
    assert out.dtype == np.float16 and np.isfinite(out).all()


# ---------------------------------------------------------------------------
# Fourier blocks


def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_a_fourier_block_computes_x_plus_fft2_of_x_and_erases_the_attention():
    model, inputs = EX.bert_layer(16, 64, 4)
    module = raised(model)
    run_pipeline(module, "butterfly-decompose{fourier=0 layers=none}")
    assert not ops_of(module, sp.AttentionOp) and not ops_of(module, sp.MatmulOp)
    (f,) = ops_of(module, sp.FourierOp)
    assert f.input is main_func(module).body.block.args[0]
    assert list(f.axes.get_values()) == [-2, -1]
    x = inputs["hidden_states"].astype(np.float64)
    ln = weights(model, ["output.norm.weight", "output.norm.bias"])
    want = layer_norm(np.fft.fft2(x).real + x, ln["output.norm.weight"], ln["output.norm.bias"], 1e-12)
    np.testing.assert_allclose(interpret(module, inputs)["output"], want, rtol=1e-4, atol=1e-4)
    (four,) = report(module)["fourier"]
    assert four["block"] == 0 and four["input"] == [1, 16, 64]
    assert four["replaced"][1:] == ["block0.qkv.0", "block0.qkv.1", "block0.qkv.2", "block0.out.0"]
    assert four["dense_macs"] == 4 * 64 * 64 + 4 * 16 * (16 + 16)
    assert report(module)["layers"] == []


def test_fourier_and_butterfly_blocks_mix_in_one_model():
    model, inputs = EX.encoder(seq=8, hidden=32, heads=2, ffn=64, layers=3)
    module = raised(model)
    run_pipeline(module, "butterfly-decompose{fourier=1 layers=0,1 linears=qkv,ffn}")
    assert len(ops_of(module, sp.AttentionOp)) == 2 and len(ops_of(module, sp.FourierOp)) == 1
    done = sorted((r["block"], r["role"]) for r in report(module)["layers"])
    assert done == [(0, "ffn"), (0, "ffn"), (0, "qkv"), (0, "qkv"), (0, "qkv"), (1, "ffn"), (1, "ffn")]
    # block 2 and every out projection stay dense: block 0's and block 2's out, block 2's qkv and ffn
    dense = [m for m in ops_of(module, sp.MatmulOp) if isinstance(m.rhs.owner, sp.ConstantOp)]
    assert len(dense) == 2 + 3 + 2
    # the Fourier block reads the previous block's output (its post-LN value)
    (f,) = ops_of(module, sp.FourierOp)
    assert isinstance(f.input.owner, sp.LayerNormOp)
    assert np.isfinite(interpret(module, inputs)["output"]).all()
    assert decompose_summary(module)["fourier_blocks"] == 1


def test_the_fused_qkv_decoder_becomes_fnet():
    module = raised(EX.causal_decoder()[0])
    run_pipeline(module, "butterfly-decompose{fourier=all layers=none}")
    # the fused projection, its Split slices, the head reshapes and the attention are all gone
    for cls in (sp.AttentionOp, sp.SliceOp, sp.ReshapeOp, sp.TransposeOp):
        assert not ops_of(module, cls), cls
    assert [sp.shape_of(m.rhs) for m in ops_of(module, sp.MatmulOp)] == [(64, 256), (256, 64)]
    (f,) = ops_of(module, sp.FourierOp)
    assert isinstance(f.input.owner, sp.LayerNormOp)
    assert any(isinstance(u.operation, sp.AddOp) for u in f.result.uses)  # the residual add takes it
    module = raised(EX.causal_decoder()[0])
    run_pipeline(module, "butterfly-decompose{fourier=all}")
    # only the FFN is left to decompose
    assert sorted(r["role"] for r in report(module)["layers"]) == ["ffn", "ffn"]
    assert report(module)["fourier"][0]["replaced"][1:] == ["block0.qkv.0", "block0.out.0"]


# ---------------------------------------------------------------------------
# options, reports, errors


def test_options_parse_from_a_pipeline_string():
    (p,) = parse_pipeline("butterfly-decompose{layers=0,1 linears=ffn block=3 kind=monarch iters=2}")
    assert isinstance(p, ButterflyDecomposePass)
    assert p.layers == (0, 1) and p.block == 3 and p.kind == "monarch" and p.iters == 2
    assert "ffn" in str(p.linears)
    assert pipeline_spec(parse_pipeline(pipeline_spec([p]))) == pipeline_spec([p])
    (d,) = parse_pipeline("butterfly-decompose")
    assert d == ButterflyDecomposePass()
    (q,) = parse_pipeline("butterfly-decompose{linears=qkv,out fourier=none layers=all}")
    assert set(q.linears) == {"qkv", "out"}


def test_layers_and_linears_select_what_is_decomposed():
    model, _ = EX.encoder(seq=8, hidden=32, heads=2, ffn=64, layers=3)
    module = raised(model)
    run_pipeline(module, "butterfly-decompose{layers=0,2 linears=ffn,out}")
    got = sorted((r["block"], r["role"]) for r in report(module)["layers"])
    assert got == [(b, r) for b in (0, 2) for r in ("ffn", "ffn", "out")]
    module = raised(model)
    run_pipeline(module, "butterfly-decompose{layers=none}")
    assert not ops_of(module, sp.ButterflyMatmulOp) and report(module)["layers"] == []


def test_skipped_shapes_and_sizes_are_reported():
    text = """builtin.module {
  func.func @main(%x: tensor<4x48xf32>) -> (tensor<4x80xf32>, tensor<4x7xf32>, tensor<4x16xf32>) {
    %w = sparse.constant {value = dense<0.5> : tensor<48x80xf32>} : tensor<48x80xf32>
    %y = sparse.matmul %x, %w : tensor<4x48xf32>, tensor<48x80xf32> -> tensor<4x80xf32>
    %s = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 4, 7>, steps = array<i64: 1, 1>} : tensor<4x48xf32> -> tensor<4x7xf32>
    %v = sparse.constant {value = dense<0.25> : tensor<7x7xf32>} : tensor<7x7xf32>
    %z = sparse.matmul %s, %v : tensor<4x7xf32>, tensor<7x7xf32> -> tensor<4x7xf32>
    %t = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 4, 16>, steps = array<i64: 1, 1>} : tensor<4x48xf32> -> tensor<4x16xf32>
    %u = sparse.constant {value = dense<0.125> : tensor<16x16xf32>} : tensor<16x16xf32>
    %r = sparse.matmul %t, %u : tensor<4x16xf32>, tensor<16x16xf32> -> tensor<4x16xf32>
    func.return %y, %z, %r : tensor<4x80xf32>, tensor<4x7xf32>, tensor<4x16xf32>
  }
}"""
    module = parse_module(text)
    run_pipeline(module, "butterfly-decompose{kind=monarch block=3}")
    rep = report(module)
    why = {s["name"]: s["reason"] for s in rep["skipped"]}
    assert "neither 48 nor 80 is a multiple" in why["block0.ffn.0"]
    assert "Monarch block 3 does not divide 16" in why["block0.ffn.2"]
    assert "Monarch block 3 does not divide 7" in why["block0.ffn.1"]
    module = parse_module(text)
    run_pipeline(module, "butterfly-decompose{kind=monarch}")  # 7 is prime: its nearest-sqrt block is 1
    rep = report(module)
    why = {s["name"]: s["reason"] for s in rep["skipped"]}
    assert why["block0.ffn.1"] == "a Monarch matrix of size 7 with block 1 is dense"
    assert [(r["name"], r["structure"]) for r in rep["layers"]] == [("block0.ffn.2", "monarch F=2 b=4")]
    module = parse_module(text)
    run_pipeline(module, "butterfly-decompose")
    rep = report(module)
    assert [(r["name"], r["structure"]) for r in rep["layers"]] == [("block0.ffn.2", "block F=4 b=1")]  # 16 = 1 * 2^4
    assert {s["name"] for s in rep["skipped"]} == {"block0.ffn.0", "block0.ffn.1"}
    assert decompose_summary(module)["skipped_macs"] == 48 * 80 + 7 * 7
    assert "no block >= 1 below 7" in {s["name"]: s["reason"] for s in rep["skipped"]}["block0.ffn.1"]
    module = parse_module(text)
    run_pipeline(module, "butterfly-decompose{block=8}")  # 16 = 8 * 2: one 16x16 factor
    why = {s["name"]: s["reason"] for s in report(module)["skipped"]}
    assert why["block0.ffn.2"] == "a size-16 butterfly with block 8 is one factor: the dense matrix"
    assert "skipped block 0 ffn block0.ffn.1 7x7" in format_report(module)


def test_report_table_and_summary():
    module = raised(EX.causal_decoder()[0])
    assert format_report(module) == "" and decompose_summary(module)["layers"] == 0
    run_pipeline(module, "butterfly-decompose{block=2 factors=3}")
    table = format_report(module)
    for needle in ("block0.qkv.0", "block0.out.0", "block0.ffn.1", "64x192", "block F=3 b=2 x3 concat",
                   "total: 4 layers"):  # fmt: skip
        assert needle in table
    s = decompose_summary(module)
    rows = report(module)["layers"]
    assert s["layers"] == 4 and s["dense_macs"] == 64 * 192 + 64 * 64 + 2 * 64 * 256 == s["dense_params"]
    # 3 factors of 2x2-blocks-of-2 (4x4 matrices): 4 MACs per element each
    per64 = 3 * 64 * 4
    assert s["butterfly_macs"] == per64 * (3 + 1 + 4 + 4) == s["butterfly_params"]
    assert s["max_error"] == max(r["error"] for r in rows)
    assert s["mean_error"] == pytest.approx(np.mean([r["error"] for r in rows]))


@pytest.mark.parametrize("spec,msg", [
    ("butterfly-decompose{kind=fft}", "kind must be one of block, monarch, got 'fft'"),
    ("butterfly-decompose{linears=qkv,mlp}", "linears takes qkv, out, ffn, got 'mlp'"),
    ("butterfly-decompose{layers=3}", "layers names block 3 but the model has 1 block"),
    ("butterfly-decompose{layers=first}", "layers must be 'all', 'none' or block indexes"),
    ("butterfly-decompose{fourier=1}", "fourier names block 1"),
    ("butterfly-decompose{kind=monarch factors=3}", "a Monarch matrix has 2 factors, got factors=3"),
    ("butterfly-decompose{block=-1}", "block must be >= 0"),
])  # fmt: skip
def test_bad_options_are_user_errors(spec, msg):
    module = raised(EX.causal_decoder()[0])
    with pytest.raises(AttncError, match="butterfly-decompose: " + msg.replace("(", r"\(")):
        run_pipeline(module, spec)


def test_fourier_needs_projections_around_the_attention():
    module = raised(EX.attention23()[0])
    with pytest.raises(AttncError, match="fourier block 0: no Q/K/V projection"):
        run_pipeline(module, "butterfly-decompose{fourier=0}")
    ffn_only = raised(EX.encoder(seq=8, hidden=32, heads=2, ffn=64, layers=1, part="ffn")[0])
    with pytest.raises(AttncError, match="fourier names block 0 but the model has no sparse.attention"):
        run_pipeline(ffn_only, "butterfly-decompose{fourier=0}")


def test_nearest_sqrt_divisor():
    assert [nearest_sqrt_divisor(n) for n in (768, 3072, 64, 12, 7)] == [24, 48, 8, 3, 1]


def test_iters_refine_and_factors_cap_at_the_full_butterfly():
    model, _ = EX.bert_layer(16, 64, 4)
    errors = {}
    for spec in ("butterfly-decompose{linears=out}", "butterfly-decompose{linears=out iters=5}"):
        module = raised(model)
        run_pipeline(module, spec)
        (row,) = report(module)["layers"]
        errors[spec] = (row["error"], row["iterations"])
    (e0, i0), (e5, i5) = errors.values()
    assert i0 == 0 and 0 < i5 <= 5 and e5 < e0
    module = raised(model)
    run_pipeline(module, "butterfly-decompose{linears=out factors=20}")
    assert report(module)["layers"][0]["structure"] == "block F=6 b=1"  # 64 = 1 * 2^6


# ---------------------------------------------------------------------------
# a torch.export model: MultiheadAttention works on (seq, batch, hidden) and splits its fused QKV by gathers


@pytest.fixture(scope="module")
def exported():
    torch = pytest.importorskip("torch")
    from attnc.frontend.torch import import_module

    torch.manual_seed(0)
    layer = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True).eval()
    x = torch.randn(1, 8, 32)
    return torch, layer, x, import_module(layer, (x,), dynamo=True)


@pytest.fixture
def torch_layer(exported):
    import copy

    torch, layer, x, module = exported
    return torch, copy.deepcopy(layer), x, module.clone()


def test_a_torch_encoder_layer_decomposes_like_its_projected_weights(torch_layer):
    torch, layer, x, module = torch_layer
    assert roles(module) == [(0, "ffn", (32, 64)), (0, "ffn", (64, 32)), (0, "out", (32, 32)), (0, "qkv", (32, 96))]
    run_pipeline(module, "butterfly-decompose")
    (name,) = io_names(main_func(module))[1]
    got = interpret(module, {io_names(main_func(module))[0][0]: x.numpy()})[name]
    with torch.no_grad():  # torch keeps W as [out, in]: x @ W.T
        for p in (layer.self_attn.in_proj_weight, layer.self_attn.out_proj.weight, layer.linear1.weight,
                  layer.linear2.weight):  # fmt: skip
            p.copy_(torch.from_numpy(fitted(p.numpy().T.astype(np.float64), "block", 5, 1).T.astype(np.float32)))
        want = layer(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_a_torch_encoder_layer_becomes_an_fnet_layer(torch_layer):
    torch, layer, x, module = torch_layer
    run_pipeline(module, "butterfly-decompose{fourier=0 layers=none}")
    assert not ops_of(module, sp.AttentionOp)
    (f,) = ops_of(module, sp.FourierOp)
    assert sp.shape_of(f.input) == (1, 8, 32)  # (batch, seq, hidden), not MHA's (seq, batch, hidden)
    ins, (name,) = io_names(main_func(module))
    got = interpret(module, {ins[0]: x.numpy()})[name]
    with torch.no_grad():
        h = layer.norm1(x + torch.fft.fft2(x).real)
        want = layer.norm2(h + layer.linear2(torch.relu(layer.linear1(h)))).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
