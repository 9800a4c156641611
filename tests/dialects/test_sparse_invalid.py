"""Each verifier of the sparse dialect rejects the IR it exists to reject."""

import pytest

from attnc.errors import AttncError
from attnc.ir import parse_module

ARGS = "%x: tensor<4x8xf32>, %y: tensor<8xf32>, %i: tensor<4xi64>, %b: tensor<4x8xi1>, %f: tensor<4xf32>"

CASES = {
    "constant-type": (
        "%0 = sparse.constant {value = dense<1.0> : tensor<4xf32>} : tensor<5xf32>",
        "does not match result type",
    ),
    "constant-nm-violated": (
        "%0 = sparse.constant {value = dense<[[1.0, 1.0, 1.0, 0.0]]> : tensor<1x4xf32>} "
        ": tensor<1x4xf32, #sparse.nm<n = 2, m = 4, axis = 1>>",
        "does not satisfy the encoding",
    ),
    "convert-shape": ("%0 = sparse.convert %x : tensor<4x8xf32> -> tensor<8x4xf32>", "result shape"),
    "convert-elt": ("%0 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf16>", "element types differ"),
    "cast-shape": ("%0 = sparse.cast %x : tensor<4x8xf32> -> tensor<4xf16>", "result shape"),
    "unary-shape": ("%0 = sparse.exp %x : tensor<4x8xf32> -> tensor<4xf32>", "result shape"),
    "unary-elt": ("%0 = sparse.exp %x : tensor<4x8xf32> -> tensor<4x8xf16>", "element types differ"),
    "predicate-elt": ("%0 = sparse.isnan %x : tensor<4x8xf32> -> tensor<4x8xf32>", "must be i1"),
    "gelu-approx": ('%0 = sparse.gelu %x {approximate = "fast"} : tensor<4x8xf32> -> tensor<4x8xf32>', "approximate"),
    "binary-broadcast": ("%0 = sparse.add %x, %f : tensor<4x8xf32>, tensor<4xf32> -> tensor<4x8xf32>", "do not broadcast"),
    "binary-shape": ("%0 = sparse.add %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<8xf32>", "result shape"),
    "binary-elt": ("%0 = sparse.mul %x, %i : tensor<4x8xf32>, tensor<4xi64> -> tensor<4x8xf32>", "element types differ"),
    "binary-result-elt": ("%0 = sparse.sub %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xi1>", "result element type"),
    "logical-operands": ("%0 = sparse.and %x, %x : tensor<4x8xf32>, tensor<4x8xf32> -> tensor<4x8xf32>", "must be i1"),
    "cmp-predicate": (
        '%0 = sparse.cmp %x, %y {predicate = "lte"} : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x8xi1>',
        "predicate must be",
    ),
    "where-cond": (
        "%0 = sparse.where %x, %x, %x : tensor<4x8xf32>, tensor<4x8xf32>, tensor<4x8xf32> -> tensor<4x8xf32>",
        "must be i1",
    ),
    "where-shape": (
        "%0 = sparse.where %b, %x, %y : tensor<4x8xi1>, tensor<4x8xf32>, tensor<8xf32> -> tensor<8xf32>",
        "result shape",
    ),
    "matmul-k": ("%0 = sparse.matmul %x, %x : tensor<4x8xf32>, tensor<4x8xf32> -> tensor<4x8xf32>", "contraction sizes"),
    "matmul-shape": ("%0 = sparse.matmul %x, %y : tensor<4x8xf32>, tensor<8xf32> -> tensor<4x1xf32>", "result shape"),
    "contract-arity": (
        '%0 = sparse.contract %x {equation = "ij,jk->ik"} : (tensor<4x8xf32>) -> tensor<4x4xf32>',
        "names 2 operands",
    ),
    "contract-rank": ('%0 = sparse.contract %x {equation = "ijk->i"} : (tensor<4x8xf32>) -> tensor<4xf32>', "does not fit"),
    "contract-size": (
        '%0 = sparse.contract %x, %x {equation = "ij,ji->i"} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<4xf32>',
        "has sizes",
    ),
    "contract-out": ('%0 = sparse.contract %x {equation = "ij->k"} : (tensor<4x8xf32>) -> tensor<4xf32>', "appears in no operand"),
    "contract-shape": ('%0 = sparse.contract %x {equation = "ij->ji"} : (tensor<4x8xf32>) -> tensor<4x8xf32>', "result shape"),
    "reduce-kind": (
        '%0 = sparse.reduce %x {kind = "l2", axes = array<i64: 1>} : tensor<4x8xf32> -> tensor<4xf32>',
        "kind must be",
    ),
    "reduce-axis": (
        '%0 = sparse.reduce %x {kind = "sum", axes = array<i64: 2>} : tensor<4x8xf32> -> tensor<4xf32>',
        "out of range",
    ),
    "reduce-shape": (
        '%0 = sparse.reduce %x {kind = "sum", axes = array<i64: 1>, keepdims} : tensor<4x8xf32> -> tensor<4xf32>',
        "result shape",
    ),
    "softmax-axis": ("%0 = sparse.softmax %x {axis = 2 : i64} : tensor<4x8xf32> -> tensor<4x8xf32>", "out of range"),
    "log-softmax-shape": ("%0 = sparse.log_softmax %x {axis = 1 : i64} : tensor<4x8xf32> -> tensor<8x4xf32>", "result shape"),
    "layer-norm-scale": (
        "%0 = sparse.layer_norm %x, %f {axis = -1 : i64, epsilon = 1.0e-05 : f64} : tensor<4x8xf32>, tensor<4xf32> "
        "-> tensor<4x8xf32>",
        "normalised dims",
    ),
    "layer-norm-axis": (
        "%0 = sparse.layer_norm %x, %y {axis = 3 : i64, epsilon = 1.0e-05 : f64} : tensor<4x8xf32>, tensor<8xf32> "
        "-> tensor<4x8xf32>",
        "out of range",
    ),
    "transpose-perm": (
        "%0 = sparse.transpose %x {permutation = array<i64: 0, 0>} : tensor<4x8xf32> -> tensor<4x4xf32>",
        "not a permutation",
    ),
    "transpose-shape": (
        "%0 = sparse.transpose %x {permutation = array<i64: 1, 0>} : tensor<4x8xf32> -> tensor<4x8xf32>",
        "result shape",
    ),
    "reshape-size": ("%0 = sparse.reshape %x : tensor<4x8xf32> -> tensor<3x8xf32>", "differ in size"),
    "broadcast": ("%0 = sparse.broadcast %y : tensor<8xf32> -> tensor<4x4xf32>", "does not broadcast"),
    "slice-arity": (
        "%0 = sparse.slice %x {starts = array<i64: 0>, ends = array<i64: 4>, steps = array<i64: 1>} "
        ": tensor<4x8xf32> -> tensor<4x8xf32>",
        "one start, end and step per dim",
    ),
    "slice-step": (
        "%0 = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 4, 8>, steps = array<i64: 1, 0>} "
        ": tensor<4x8xf32> -> tensor<4x8xf32>",
        "step of dim 1 is 0",
    ),
    "slice-bounds": (
        "%0 = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 4, 9>, steps = array<i64: 1, 1>} "
        ": tensor<4x8xf32> -> tensor<4x9xf32>",
        "out of range",
    ),
    "slice-shape": (
        "%0 = sparse.slice %x {starts = array<i64: 0, 0>, ends = array<i64: 4, 8>, steps = array<i64: 1, 2>} "
        ": tensor<4x8xf32> -> tensor<4x8xf32>",
        "result shape",
    ),
    "concat-mismatch": (
        "%0 = sparse.concat %x, %y {axis = 0 : i64} : (tensor<4x8xf32>, tensor<8xf32>) -> tensor<12x8xf32>",
        "differ outside axis",
    ),
    "concat-shape": (
        "%0 = sparse.concat %x, %x {axis = 1 : i64} : (tensor<4x8xf32>, tensor<4x8xf32>) -> tensor<8x8xf32>",
        "result shape",
    ),
    "gather-indices": (
        "%0 = sparse.gather %x, %f {axis = 0 : i64} : tensor<4x8xf32>, tensor<4xf32> -> tensor<4x8xf32>",
        "indices must be integers",
    ),
    "gather-shape": (
        "%0 = sparse.gather %x, %i {axis = 0 : i64} : tensor<4x8xf32>, tensor<4xi64> -> tensor<4xf32>",
        "result shape",
    ),
    "pad-arity": (
        "%0 = sparse.pad %x {pads = array<i64: 1>, value = 0.0 : f64} : tensor<4x8xf32> -> tensor<4x8xf32>",
        "non-negative pads",
    ),
    "pad-shape": (
        "%0 = sparse.pad %x {pads = array<i64: 0, 0, 1, 1>, value = 0.0 : f64} : tensor<4x8xf32> -> tensor<4x8xf32>",
        "result shape",
    ),
    "trilu-rank": ("%0 = sparse.trilu %y {k = 0 : i64} : tensor<8xf32> -> tensor<8xf32>", "rank >= 2"),
    "encoding-nm-size": (
        "%0 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.nm<n = 2, m = 3, axis = 1>>",
        "not a multiple of m",
    ),
    "encoding-nm-axis": (
        "%0 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.nm<n = 2, m = 4, axis = 2>>",
        "out of range",
    ),
    "encoding-block-tiling": (
        "%0 = sparse.convert %x : tensor<4x8xf32> -> "
        "tensor<4x8xf32, #sparse.block<block = [2, 2], grid = [2, 2], layout = [1, 1, 1, 1]>>",
        "does not tile",
    ),
    "encoding-butterfly-square": (
        '%0 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.butterfly<kind = "monarch", factors = 2, block = 2, perm = "none">>',
        "square",
    ),
    "encoding-butterfly-size": (
        "%s = sparse.constant {value = dense<1.0> : tensor<8x8xf32>} : tensor<8x8xf32>\n"
        '%0 = sparse.convert %s : tensor<8x8xf32> -> tensor<8x8xf32, #sparse.butterfly<kind = "block", factors = 1, block = 3, perm = "none">>',
        "power of two",
    ),
    "encoding-butterfly-factors": (
        "%s = sparse.constant {value = dense<1.0> : tensor<8x8xf32>} : tensor<8x8xf32>\n"
        '%0 = sparse.convert %s : tensor<8x8xf32> -> tensor<8x8xf32, #sparse.butterfly<kind = "block", factors = 4, block = 1, perm = "none">>',
        "at most 3 factors",
    ),
    "butterfly-stage-weight": (
        "%w = sparse.constant {value = dense<1.0> : tensor<1x2x4x4xf32>} : tensor<1x2x4x4xf32>\n"
        "%0 = sparse.butterfly_stage %x, %w {radix = 2 : i64, stride = 1 : i64, block = 2 : i64} "
        ": tensor<4x8xf32>, tensor<1x2x4x4xf32> -> tensor<4x8xf32>",
        "result shape",
    ),
    "butterfly-stage-divides": (
        "%w = sparse.constant {value = dense<1.0> : tensor<1x1x3x3xf32>} : tensor<1x1x3x3xf32>\n"
        "%0 = sparse.butterfly_stage %x, %w {radix = 3 : i64, stride = 1 : i64, block = 1 : i64} "
        ": tensor<4x8xf32>, tensor<1x1x3x3xf32> -> tensor<4x8xf32>",
        "does not divide",
    ),
    "butterfly-matmul-count": (
        "%w = sparse.constant {value = dense<1.0> : tensor<4x1x2x2xf32>} : tensor<4x1x2x2xf32>\n"
        "%0 = sparse.butterfly_matmul %x[%w] "
        '{structure = #sparse.butterfly<kind = "monarch", factors = 2, block = 2, perm = "none">} '
        ": tensor<4x8xf32>[tensor<4x1x2x2xf32>] -> tensor<4x8xf32>",
        "has 2 factors, got 1",
    ),
    "butterfly-matmul-shape": (
        "%w = sparse.constant {value = dense<1.0> : tensor<4x1x2x2xf32>} : tensor<4x1x2x2xf32>\n"
        "%0 = sparse.butterfly_matmul %x[%w, %w] "
        '{structure = #sparse.butterfly<kind = "monarch", factors = 2, block = 2, perm = "none">} '
        ": tensor<4x8xf32>[tensor<4x1x2x2xf32>, tensor<4x1x2x2xf32>] -> tensor<4x8xf32>",
        "factor 1 must be",
    ),
    "fourier-axes": ("%0 = sparse.fourier %x {axes = array<i64: 1, -1>} : tensor<4x8xf32> -> tensor<4x8xf32>", "distinct"),
    "encoding-dynamic-k": (
        "%0 = sparse.convert %x : tensor<4x8xf32> -> "
        'tensor<4x8xf32, #sparse.dynamic<mode = "topk", k = 9, threshold = 0.0, axis = -1, fill = 0.0>>',
        "exceeds dim size",
    ),
    "encoding-compressed-levels": (
        '%0 = sparse.convert %x : tensor<4x8xf32> -> tensor<4x8xf32, #sparse.compressed<levels = ["dense"], pos = 32, crd = 32>>',
        "levels for a rank-2",
    ),
}

ATTN = (
    "%0 = sparse.attention %q, %k, %v{mask} {{scale = 0.5 : f64, heads = {h} : i64, kv_heads = {hk} : i64, "
    "causal_offset = 0 : i64, softcap = {cap} : f64{fused}}} : {qt}, {kt}, {vt} -> {rt}"
)
ATTN_ARGS = (
    "%q: tensor<1x4x8x16xf32>, %k: tensor<1x2x8x16xf32>, %v: tensor<1x2x8x16xf32>, %k3: tensor<1x3x8x16xf32>, "
    "%m: tensor<1x1x8x7xi1>, %mf: tensor<1x1x8x8xf16>, %q3: tensor<4x8x16xf32>, %kd: tensor<1x2x8x8xf32>"
)
Q, K, V = "tensor<1x4x8x16xf32>", "tensor<1x2x8x16xf32>", "tensor<1x2x8x16xf32>"
ATTN_CASES = {
    "attention-rank": (dict(q="%q3", qt="tensor<4x8x16xf32>"), "must be 4-d"),
    "attention-heads-attr": (dict(h=8), "disagree with the operand shapes"),
    "attention-gqa": (dict(k="%k3", v="%k3", kt="tensor<1x3x8x16xf32>", vt="tensor<1x3x8x16xf32>", hk=3), "not a multiple"),
    "attention-head-dim": (dict(k="%kd", kt="tensor<1x2x8x8xf32>"), "head dim"),
    "attention-kv": (dict(v="%k3", vt="tensor<1x3x8x16xf32>"), "differ in heads"),
    "attention-mask-shape": (dict(mask=" mask %m : tensor<1x1x8x7xi1>"), "does not broadcast"),
    "attention-mask-type": (dict(mask=" mask %mf : tensor<1x1x8x8xf16>"), "must be i1 or have the element type"),
    "attention-softcap": (dict(cap="-1.0"), "softcap must be >= 0"),
    "attention-result": (dict(rt="tensor<1x4x8x8xf32>"), "result shape"),
    "attention-fusion-partial": (dict(fused=', fusion = "online"'), "come together"),
    "attention-fusion-kind": (dict(fused=', fusion = "tiled", row_block = 4 : i64, key_block = 4 : i64'), "fusion must be one of"),
    "attention-fusion-rows": (dict(fused=', fusion = "online", row_block = 9 : i64, key_block = 4 : i64'), "must lie in"),
    "attention-fusion-keys": (dict(fused=', fusion = "online", row_block = 8 : i64, key_block = 0 : i64'), "must lie in"),
    "attention-fusion-flat": (dict(fused=', fusion = "flat", row_block = 8 : i64, key_block = 4 : i64'), "all 8 keys at once"),
}


def _check(args: str, body: str, expected: str) -> None:
    text = f"func.func @main({args}) {{\n  {body}\n  func.return\n}}"
    with pytest.raises(AttncError) as info:
        parse_module(text)
    assert expected in str(info.value)


@pytest.mark.parametrize("case", sorted(CASES))
def test_invalid(case):
    body, expected = CASES[case]
    _check(ARGS, body, expected)


@pytest.mark.parametrize("case", sorted(ATTN_CASES))
def test_invalid_attention(case):
    fields, expected = ATTN_CASES[case]
    f = dict(q="%q", k="%k", v="%v", mask="", h=4, hk=2, cap="0.0", fused="", qt=Q, kt=K, vt=V, rt="tensor<1x4x8x16xf32>")
    f.update(fields)
    body = ATTN.format(**f).replace("%q,", f"{f['q']},").replace(" %k,", f" {f['k']},").replace(" %v", f" {f['v']}")
    _check(ATTN_ARGS, body, expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("#sparse.nm<n = 3, m = 2, axis = 0>", "0 < n <= m"),
        ("#sparse.nm<n = 1, m = 2>", "missing parameter"),
        ("#sparse.nm<n = 1, m = 2, axis = 0, k = 1>", "unknown parameter"),
        ('#sparse.butterfly<kind = "block", factors = 0, block = 2, perm = "none">', "factors >= 1"),
        ('#sparse.butterfly<kind = "block", factors = 2, block = 2, perm = "odd">', "perm must be"),
        ('#sparse.butterfly<kind = "fly", factors = 2, block = 2, perm = "none">', "kind must be"),
        ('#sparse.butterfly<kind = "monarch", factors = 3, block = 2, perm = "none">', "2 factors"),
        ("#sparse.block<block = [2], grid = [2, 2], layout = [1, 1, 1, 1]>", "2-d block"),
        ("#sparse.block<block = [2, 2], grid = [2, 2], layout = [1, 1, 1]>", "layout must hold 4"),
        ('#sparse.dynamic<mode = "random", k = 1, threshold = 0.0, axis = -1, fill = 0.0>', "mode must be"),
        ('#sparse.dynamic<mode = "topk", k = 0, threshold = 0.0, axis = -1, fill = 0.0>', "k >= 1"),
        ('#sparse.compressed<levels = ["hashed"], pos = 32, crd = 32>', "level must be one of"),
        ('#sparse.compressed<levels = ["dense"], pos = 12, crd = 32>', "bit widths"),
    ],
)
def test_invalid_encoding(text, expected):
    body = f"%0 = sparse.convert %y : tensor<8xf32> -> tensor<8xf32, {text}>"
    _check(ARGS, body, expected)
