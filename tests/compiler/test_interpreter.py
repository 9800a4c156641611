"""The reference interpreter: every op implemented, numbers against numpy and ONNX's reference."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx.reference.ops.op_attention import _compute_attention

from attnc.dialects.sparse import Sparse
from attnc.errors import AttncError
from attnc.interpreter import IMPLS, interpret, round_bf16, run_func
from attnc.ir import main_func, parse_module, set_io_names

OPS_FILE = Path(__file__).parents[1] / "dialects" / "sparse_ops.mlir"


def _module(args: str, body: str, results: str, names=None, outs=None):
    m = parse_module(f"func.func @main({args}) -> ({results.split(' : ')[1]}) {{\n{body}\n  func.return {results}\n}}")
    if names:
        set_io_names(main_func(m), names, outs)
    return m


def test_every_op_has_an_implementation():
    missing = [op.name for op in Sparse.operations if op not in IMPLS]
    assert not missing


def test_every_op_runs_on_the_round_trip_file():
    module = parse_module(OPS_FILE.read_text())
    rng = np.random.default_rng(0)
    args = [
        rng.random((4, 8)).astype(np.float32) + 0.5,
        rng.random(8).astype(np.float32) + 0.5,
        np.array([0, -1, 3, 2], dtype=np.int64),
        rng.random((4, 8)) > 0.5,
        rng.random((4, 8)).astype(np.float16),
    ]
    (out,) = run_func(main_func(module), args)
    np.testing.assert_allclose(out, args[0] + args[1], rtol=1e-6)


RNG = np.random.default_rng(1)
X = RNG.standard_normal((3, 4)).astype(np.float32)
Y = RNG.standard_normal(4).astype(np.float32)


@pytest.mark.parametrize(
    "body, expected",
    [
        ("sparse.exp %x : tensor<3x4xf32> -> tensor<3x4xf32>", np.exp(X)),
        ("sparse.erf %x : tensor<3x4xf32> -> tensor<3x4xf32>", np.vectorize(__import__("math").erf)(X)),
        ("sparse.sigmoid %x : tensor<3x4xf32> -> tensor<3x4xf32>", 1 / (1 + np.exp(-X))),
        ("sparse.rsqrt %a : tensor<3x4xf32> -> tensor<3x4xf32>", 1 / np.sqrt(np.abs(X))),
        ("sparse.sub %x, %y : tensor<3x4xf32>, tensor<4xf32> -> tensor<3x4xf32>", X - Y),
        ("sparse.pow %a, %y : tensor<3x4xf32>, tensor<4xf32> -> tensor<3x4xf32>", np.abs(X) ** Y),
        ("sparse.max %x, %y : tensor<3x4xf32>, tensor<4xf32> -> tensor<3x4xf32>", np.maximum(X, Y)),
        ("sparse.softmax %x {axis = 0 : i64} : tensor<3x4xf32> -> tensor<3x4xf32>", np.exp(X) / np.exp(X).sum(0)),
        (
            "sparse.log_softmax %x {axis = -1 : i64} : tensor<3x4xf32> -> tensor<3x4xf32>",
            X - np.log(np.exp(X).sum(-1, keepdims=True)),
        ),
        ('sparse.reduce %x {kind = "mean", axes = array<i64: 1>} : tensor<3x4xf32> -> tensor<3xf32>', X.mean(1)),
        (
            'sparse.reduce %x {kind = "prod", axes = array<i64: 0>, keepdims} : tensor<3x4xf32> -> tensor<1x4xf32>',
            X.prod(0, keepdims=True),
        ),
        ('sparse.contract %x, %y {equation = "ij,j->i"} : (tensor<3x4xf32>, tensor<4xf32>) -> tensor<3xf32>', X @ Y),
        ("sparse.matmul %x, %y : tensor<3x4xf32>, tensor<4xf32> -> tensor<3xf32>", X @ Y),
        (
            "sparse.layer_norm %x, %y bias %y : tensor<4xf32> {axis = -1 : i64, epsilon = 1.0e-05 : f64} "
            ": tensor<3x4xf32>, tensor<4xf32> -> tensor<3x4xf32>",
            (X - X.mean(-1, keepdims=True)) / np.sqrt(X.var(-1, keepdims=True) + 1e-5) * Y + Y,
        ),
        (
            "sparse.slice %x {starts = array<i64: 2, 3>, ends = array<i64: -1, 0>, steps = array<i64: -1, -2>} "
            ": tensor<3x4xf32> -> tensor<3x2xf32>",
            X[::-1, 3:0:-2],
        ),
        (
            "sparse.pad %x {pads = array<i64: 1, 0, 0, 2>, value = 7.0 : f64} : tensor<3x4xf32> -> tensor<4x6xf32>",
            np.pad(X, [(1, 0), (0, 2)], constant_values=7),
        ),
        ("sparse.trilu %x {k = 1 : i64, upper} : tensor<3x4xf32> -> tensor<3x4xf32>", np.triu(X, 1)),
        ("sparse.gelu %x {approximate = \"tanh\"} : tensor<3x4xf32> -> tensor<3x4xf32>",
         0.5 * X * (1 + np.tanh(np.sqrt(2 / np.pi) * (X + 0.044715 * X**3)))),
    ],
)
def test_op_numbers(body, expected):
    rtype = body.rsplit("-> ", 1)[1]
    m = _module(
        "%x: tensor<3x4xf32>, %y: tensor<4xf32>",
        f"  %a = sparse.abs %x : tensor<3x4xf32> -> tensor<3x4xf32>\n  %r = {body}",
        f"%r : {rtype}",
    )
    (out,) = run_func(main_func(m), [X, Y])
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=1e-6)


def test_integer_division_truncates_toward_zero():
    m = _module(
        "%a: tensor<4xi64>, %b: tensor<4xi64>",
        "  %r = sparse.div %a, %b : tensor<4xi64>, tensor<4xi64> -> tensor<4xi64>",
        "%r : tensor<4xi64>",
    )
    (out,) = run_func(main_func(m), [np.array([7, -7, 7, -7]), np.array([2, 2, -2, -2])])
    assert out.tolist() == [3, -3, -3, 3]


def test_half_precision_rounds_every_op():
    m = _module(
        "%a: tensor<3xbf16>, %b: tensor<3xbf16>",
        "  %r = sparse.add %a, %b : tensor<3xbf16>, tensor<3xbf16> -> tensor<3xbf16>",
        "%r : tensor<3xbf16>",
    )
    a = np.array([1.0, 256.0, 3.0], dtype=np.float32)
    b = np.array([2.0**-9, 1.0, 1e-3], dtype=np.float32)
    (out,) = run_func(main_func(m), [a, b])
    # bf16 keeps 8 significant bits: 256 + 1 rounds back to 256
    assert out.tolist() == round_bf16(a + b).tolist() == [1.0, 256.0, 3.0]


def test_inputs_are_checked_by_name():
    m = _module("%x: tensor<3x4xf32>", "  %r = sparse.neg %x : tensor<3x4xf32> -> tensor<3x4xf32>", "%r : tensor<3x4xf32>",
                ["x"], ["y"])
    assert interpret(m, {"x": X})["y"].tolist() == (-X).tolist()
    with pytest.raises(AttncError, match="missing input 'x'"):
        interpret(m, {})
    with pytest.raises(AttncError, match="unknown input"):
        interpret(m, {"x": X, "z": X})
    with pytest.raises(AttncError, match=r"input 'x' has shape \[4, 3\]"):
        interpret(m, {"x": X.T})
    with pytest.raises(AttncError, match="input 'x' has dtype float64"):
        interpret(m, {"x": X.astype(np.float64)})


def test_gather_out_of_range_is_a_clear_error():
    m = _module("%x: tensor<3x4xf32>, %i: tensor<1xi64>",
                "  %r = sparse.gather %x, %i {axis = 0 : i64} : tensor<3x4xf32>, tensor<1xi64> -> tensor<1x4xf32>",
                "%r : tensor<1x4xf32>")
    with pytest.raises(AttncError, match="out of range"):
        run_func(main_func(m), [X, np.array([3])])


@settings(max_examples=40, deadline=None)
@given(
    hkv=st.sampled_from([1, 2]),
    rep=st.sampled_from([1, 2]),
    sq=st.integers(1, 5),
    past=st.integers(0, 3),
    mask_kind=st.sampled_from(["none", "bool", "float"]),
    mask_rank=st.integers(2, 4),
    causal=st.booleans(),
    softcap=st.sampled_from([0.0, 2.0]),
    seed=st.integers(0, 2**16),
)
def test_attention_matches_onnx_reference(hkv, rep, sq, past, mask_kind, mask_rank, causal, softcap, seed):
    rng = np.random.default_rng(seed)
    b, d, hq = 2, 4, hkv * rep
    skv = sq + past
    q = rng.standard_normal((b, hq, sq, d)).astype(np.float32)
    k = rng.standard_normal((b, hkv, skv, d)).astype(np.float32)
    v = rng.standard_normal((b, hkv, skv, 3)).astype(np.float32)
    mshape = (b, hq, sq, skv)[4 - mask_rank :]
    mask = None
    if mask_kind == "bool":
        mask = rng.random(mshape) > 0.3
    elif mask_kind == "float":
        mask = np.where(rng.random(mshape) > 0.3, rng.standard_normal(mshape), -np.inf).astype(np.float32)
    mtype = "" if mask is None else f" mask %m : tensor<{'x'.join(map(str, mshape))}x{'i1' if mask_kind == 'bool' else 'f32'}>"
    m = _module(
        f"%q: tensor<{b}x{hq}x{sq}x{d}xf32>, %k: tensor<{b}x{hkv}x{skv}x{d}xf32>, %v: tensor<{b}x{hkv}x{skv}x3xf32>"
        + (f", %m: tensor<{'x'.join(map(str, mshape))}x{'i1' if mask_kind == 'bool' else 'f32'}>" if mask is not None else ""),
        f"  %r = sparse.attention %q, %k, %v{mtype} {{scale = 0.4 : f64, heads = {hq} : i64, kv_heads = {hkv} : i64, "
        f"{'causal, ' if causal else ''}causal_offset = {past} : i64, softcap = {softcap} : f64}} "
        f": tensor<{b}x{hq}x{sq}x{d}xf32>, tensor<{b}x{hkv}x{skv}x{d}xf32>, tensor<{b}x{hkv}x{skv}x3xf32> "
        f"-> tensor<{b}x{hq}x{sq}x3xf32>",
        f"%r : tensor<{b}x{hq}x{sq}x3xf32>",
    )
    args = [q, k, v] + ([mask] if mask is not None else [])
    (out,) = run_func(main_func(m), args)
    kw = {}
    if past:
        kw = dict(past_key=k[:, :, :past], past_value=v[:, :, :past])
    ref = _compute_attention(
        q, k[:, :, past:], v[:, :, past:], attn_mask=mask, scale=0.4, is_causal=causal,
        softcap=softcap if softcap else None, **kw,
    )[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-6), (np.float16, 4e-3)])
@pytest.mark.parametrize("key_block", [1, 3, 8, 40])
@pytest.mark.parametrize("masking", ["none", "bool", "causal", "softcap"])
def test_online_attention_equals_three_pass(dtype, tol, key_block, masking):
    from attnc.interpreter import attention

    rng = np.random.default_rng(key_block)
    q = rng.standard_normal((2, 4, 9, 8)).astype(dtype)
    k = rng.standard_normal((2, 2, 21, 8)).astype(dtype)
    v = rng.standard_normal((2, 2, 21, 5)).astype(dtype)
    mask = None
    kw: dict = {"scale": 0.35}
    if masking == "bool":
        mask = rng.random((2, 1, 9, 21)) > 0.4
        mask[1, 0, 2, :] = False  # a fully masked row gives zeros either way
    elif masking == "causal":
        kw.update(causal=True, causal_offset=-2)  # rows 0 and 1 see no key
    elif masking == "softcap":
        kw.update(softcap=1.5)
    three = attention(q, k, v, mask, **kw)
    online = attention(q, k, v, mask, key_block=key_block, **kw)
    assert online.dtype == three.dtype
    np.testing.assert_allclose(online.astype(np.float64), three.astype(np.float64), atol=tol, rtol=0)
    if masking in ("bool", "causal"):
        dead = (~mask.any(-1)) if masking == "bool" else np.zeros((1, 1, 9), bool)
        if masking == "causal":
            dead[..., :2] = True
        assert not np.any(online[np.broadcast_to(dead, online.shape[:-1])])


# ---------------------------------------------------------------------------
# wide accumulation: f16 accumulators and running statistics are f32, one rounding per result


def _f16_operands(m=8, k=256, n=8, seed=3):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((m, k)).astype(np.float16), rng.standard_normal((k, n)).astype(np.float16)


def test_f16_contractions_accumulate_in_f32():
    a, b = _f16_operands()
    want = (a.astype(np.float32) @ b.astype(np.float32)).astype(np.float16)
    for body in ("sparse.matmul %a, %b : tensor<8x256xf16>, tensor<256x8xf16> -> tensor<8x8xf16>",
                 'sparse.contract %a, %b {equation = "ik,kj->ij"} : (tensor<8x256xf16>, tensor<256x8xf16>) -> tensor<8x8xf16>'):
        m = _module("%a: tensor<8x256xf16>, %b: tensor<256x8xf16>", f"  %r = {body}", "%r : tensor<8x8xf16>")
        (out,) = run_func(main_func(m), [a, b])
        assert out.dtype == np.float16
        np.testing.assert_array_equal(out, want)


def test_f16_layer_norm_keeps_f32_statistics():
    x = (np.random.default_rng(4).standard_normal((4, 512)) * 4 + 30).astype(np.float16)
    g, b = np.float16([1.5]), np.float16([0.25])
    m = _module("%x: tensor<4x512xf16>, %g: tensor<1xf16>, %b: tensor<1xf16>",
                "  %r = sparse.layer_norm %x, %g bias %b : tensor<1xf16> {axis = -1 : i64, epsilon = 1.0e-05 : f64} : "
                "tensor<4x512xf16>, tensor<1xf16> -> tensor<4x512xf16>", "%r : tensor<4x512xf16>")
    (out,) = run_func(main_func(m), [x, g, b])
    w = x.astype(np.float32)
    mean = w.mean(-1, keepdims=True)
    want = (w - mean) / np.sqrt(((w - mean) ** 2).mean(-1, keepdims=True) + np.float32(1e-5)) * np.float32(1.5) + np.float32(0.25)
    np.testing.assert_array_equal(out, want.astype(np.float16))


SOFTMAX = """builtin.module {
  func.func @main(%x: tensor<4x512xf16>) -> tensor<4x512xf16> {
    %c = dataflow.kernel "sm"(%x) attributes {kind = "softmax", tile_kind = "sfu", loops = ["rows"], trips = array<i64: 1>, tile = array<i64: 4, 512>, buffer_bytes = 16384 : i64, cycles = 16 : i64, macs = 0 : i64, tokens = array<i64: 1>} : (tensor<4x512xf16>) -> tensor<4x512xf16> {
    ^bb0(%y: tensor<4x512xf16>):
      %r = sparse.softmax %y {axis = 1 : i64} : tensor<4x512xf16> -> tensor<4x512xf16>
      dataflow.yield %r : tensor<4x512xf16>
    }
    func.return %c : tensor<4x512xf16>
  }
}"""


def test_f16_softmax_is_onnx_alone_and_f32_in_a_kernel():
    x = (np.random.default_rng(4).standard_normal((4, 512)) * 4).astype(np.float16)
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    truth = e / e.sum(1, keepdims=True)
    ulp = np.spacing(truth.astype(np.float16)).astype(np.float64)
    # in a kernel (a softmax unit) the max, exponentials and sum are f32: correctly rounded
    (unit,) = run_func(main_func(parse_module(SOFTMAX)), [x])
    assert unit.dtype == np.float16 and (np.abs(unit - truth) / ulp).max() <= 0.51
    # alone it is ONNX's reference, step by step in f16 (ONNX's f16 conformance data is computed so)
    m = _module("%x: tensor<4x512xf16>", "  %r = sparse.softmax %x {axis = 1 : i64} : tensor<4x512xf16> -> tensor<4x512xf16>",
                "%r : tensor<4x512xf16>")
    (alone,) = run_func(main_func(m), [x])
    np.testing.assert_array_equal(alone, (lambda t: t / t.sum(1, keepdims=True))(np.exp(x - x.max(1, keepdims=True))))


@pytest.mark.parametrize("key_block", [0, 3])
def test_f16_attention_is_the_exact_value_rounded_once(key_block):
    from attnc.interpreter import attention, finish

    rng = np.random.default_rng(5)
    q, k, v = (rng.standard_normal(s).astype(np.float16) for s in ((1, 2, 6, 8), (1, 2, 96, 8), (1, 2, 96, 5)))
    m = _module(
        "%q: tensor<1x2x6x8xf16>, %k: tensor<1x2x96x8xf16>, %v: tensor<1x2x96x5xf16>",
        "  %r = sparse.attention %q, %k, %v {scale = 0.3 : f64, heads = 2 : i64, kv_heads = 2 : i64, "
        "causal_offset = 0 : i64, softcap = 0.0 : f64"
        + (f', fusion = "online", key_block = {key_block} : i64, row_block = 6 : i64' if key_block else "")
        + "} : tensor<1x2x6x8xf16>, tensor<1x2x96x8xf16>, tensor<1x2x96x5xf16> -> tensor<1x2x6x5xf16>",
        "%r : tensor<1x2x6x5xf16>",
    )
    (out,) = run_func(main_func(m), [q, k, v])
    s = q.astype(np.float64) @ np.swapaxes(k.astype(np.float64), -1, -2) * 0.3
    p = np.exp(s - s.max(-1, keepdims=True))
    truth = (p / p.sum(-1, keepdims=True)) @ v.astype(np.float64)
    ulps = np.abs(out.astype(np.float64) - truth) / np.spacing(np.abs(truth).astype(np.float16)).astype(np.float64)
    assert out.dtype == np.float16 and ulps.max() <= 0.51  # f16 statistics were off by many ulps
    assert attention(q, k, v, None, scale=0.3).dtype == np.float32  # held wide until the result type rounds it
    assert finish(attention(q, k, v, None, scale=0.3), main_func(m).function_type.outputs.data[0]).dtype == np.float16


KERNEL = """builtin.module {
  func.func @main(%a: tensor<8x256xf16>, %b: tensor<256x8xf16>) -> tensor<8x8xf16> {
    %c = dataflow.kernel "qk"(%a, %b) attributes {kind = "gemm", tile_kind = "compute", loops = ["m", "n", "k"], trips = array<i64: 1, 1, 1>, tile = array<i64: 8, 8, 256>, buffer_bytes = 8448 : i64, cycles = 16 : i64, macs = 16384 : i64, tokens = array<i64: 1>} : (tensor<8x256xf16>, tensor<256x8xf16>) -> tensor<8x8xf16> {
    ^bb0(%x: tensor<8x256xf16>, %y: tensor<256x8xf16>):
      %r = sparse.matmul %x, %y : tensor<8x256xf16>, tensor<256x8xf16> -> tensor<8x8xf16>
      %s = sparse.constant {value = dense<0.3535> : tensor<f16>} : tensor<f16>
      %e = sparse.mul %r, %s : tensor<8x8xf16>, tensor<f16> -> tensor<8x8xf16>
      dataflow.yield %e : tensor<8x8xf16>
    }
    func.return %c : tensor<8x8xf16>
  }
}"""


def test_a_kernel_holds_f16_in_f32_and_rounds_its_results():
    # the scale is an epilogue on the GEMM's f32 accumulator: one rounding, as the kernel's result leaves it
    a, b = _f16_operands()
    (out,) = run_func(main_func(parse_module(KERNEL)), [a, b])
    acc = a.astype(np.float32) @ b.astype(np.float32)
    scale = np.float32(np.float16(0.3535))
    assert out.dtype == np.float16
    np.testing.assert_array_equal(out, (acc * scale).astype(np.float16))
    per_op = (acc.astype(np.float16) * np.float16(0.3535)).astype(np.float16)
    assert not np.array_equal(out, per_op)  # rounding the accumulator first gives other numbers
    # a cast inside a kernel still rounds
    text = KERNEL.replace(
        "%e = sparse.mul %r, %s : tensor<8x8xf16>, tensor<f16> -> tensor<8x8xf16>",
        "%w = sparse.cast %r : tensor<8x8xf16> -> tensor<8x8xf16>\n      %e = sparse.mul %w, %s : tensor<8x8xf16>, tensor<f16> -> tensor<8x8xf16>",
    )
    (rounded,) = run_func(main_func(parse_module(text)), [a, b])
    np.testing.assert_array_equal(rounded, per_op)
