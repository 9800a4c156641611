"""raise-attention: each attention pattern becomes one sparse.attention computing the
same numbers (checked with the reference interpreter on random inputs), and patterns
that only partly match are left alone."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np
import pytest
from xdsl.dialects import func
from xdsl.dialects.builtin import FunctionType, ModuleOp, f32, i1, i64
from xdsl.ir import Block, Region, SSAValue

from attnc.dialects import sparse as sp
from attnc.dialects.values import from_numpy, np_dtype
from attnc.interpreter import interpret
from attnc.ir import make_context, main_func, parse_module, print_module, set_io_names
from attnc.passes.canonicalize import CanonicalizePass
from attnc.passes.raise_attention import RaiseAttentionPass

Emit = Callable[[sp.SparseOp], SSAValue]
B, H, S, D = 2, 4, 6, 8


def build(args: Sequence[sp.TensorType], body: Callable[..., Sequence[SSAValue]]) -> ModuleOp:
    block = Block(arg_types=list(args))

    def emit(op: sp.SparseOp) -> SSAValue:
        block.add_op(op)
        return op.results[0]

    outs = list(body(emit, *block.args))
    block.add_op(func.ReturnOp(*outs))
    fn = func.FuncOp("main", FunctionType.from_lists(list(args), [o.type for o in outs]), Region(block))
    set_io_names(fn, [f"x{i}" for i in range(len(args))], [f"y{i}" for i in range(len(outs))])
    module = ModuleOp([fn])
    module.verify()
    return module


def const(emit: Emit, value: object, elt=f32) -> SSAValue:
    return emit(sp.ConstantOp(from_numpy(np.asarray(value, dtype=np_dtype(elt)), elt)))


def t(*shape: int, elt=f32) -> sp.TensorType:
    return sp.tensor(shape, elt)


def counts(module: ModuleOp) -> Counter[str]:
    return Counter(op.name for op in module.walk())


def attention_ops(module: ModuleOp) -> list[sp.AttentionOp]:
    return [op for op in module.walk() if isinstance(op, sp.AttentionOp)]


def random_inputs(module: ModuleOp, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    fn = main_func(module)
    out = {}
    for i, ty in enumerate(fn.function_type.inputs.data):
        shape = tuple(ty.get_shape())
        if ty.element_type == i1:
            m = rng.random(shape) < 0.7
            m[..., 0] = True  # no fully masked rows: their convention differs on purpose
            out[f"x{i}"] = m
        else:
            out[f"x{i}"] = rng.standard_normal(shape).astype(np.float32)
    return out


def raise_and_check(module: ModuleOp) -> ModuleOp:
    """Run canonicalize,raise-attention and check the interpreter gives the same outputs."""
    inputs = random_inputs(module)
    before = interpret(module, inputs)
    ctx = make_context()
    CanonicalizePass().apply(ctx, module)
    RaiseAttentionPass().apply(ctx, module)
    module.verify()
    after = interpret(module, inputs)
    for key, want in before.items():
        np.testing.assert_allclose(after[key], want, rtol=1e-5, atol=1e-5, err_msg=print_module(module))
    return module


def assert_raised(module: ModuleOp, n: int = 1) -> list[sp.AttentionOp]:
    c = counts(module)
    assert c["sparse.attention"] == n, print_module(module)
    assert c["sparse.softmax"] == 0 and c["sparse.matmul"] == 0 and c["sparse.contract"] == 0, print_module(module)
    return attention_ops(module)


# ---------------------------------------------------------------------------
# pattern builders


def kt(emit: Emit, k: SSAValue) -> SSAValue:
    r = len(sp.shape_of(k))
    return emit(sp.TransposeOp(k, [*range(r - 2), r - 1, r - 2]))


def bert(mask_shape: tuple[int, ...] | None = (B, 1, 1, S)) -> ModuleOp:
    """MatMul -> Div(sqrt(d)) -> Add(mask) -> Softmax -> MatMul, as TorchScript and
    hand-written BERT attention export."""
    args = [t(B, H, S, D)] * 3 + ([t(*mask_shape)] if mask_shape else [])

    def body(emit: Emit, q, k, v, *mask):
        s = emit(sp.MatmulOp(q, kt(emit, k)))
        s = emit(sp.DivOp(s, const(emit, np.sqrt(D))))
        if mask:
            s = emit(sp.AddOp(s, mask[0]))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, -1)), v))]

    return build(args, body)


def test_bert_pattern_with_additive_mask() -> None:
    (att,) = assert_raised(raise_and_check(bert()))
    assert att.mask is not None and att.causal is None
    assert att.scale.value.data == pytest.approx(1 / np.sqrt(D))
    assert att.heads.value.data == att.kv_heads.value.data == H


def test_bert_pattern_without_mask() -> None:
    (att,) = assert_raised(raise_and_check(bert(None)))
    assert att.mask is None


def test_scale_after_mask_scales_the_mask() -> None:
    # softmax((qk + m) * c): the bias is m * c
    def body(emit: Emit, q, k, v, m):
        s = emit(sp.AddOp(emit(sp.MatmulOp(q, kt(emit, k))), m))
        s = emit(sp.MulOp(s, const(emit, 0.25)))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, 3)), v))]

    (att,) = assert_raised(raise_and_check(build([t(B, H, S, D)] * 3 + [t(S, S)], body)))
    assert att.scale.value.data == pytest.approx(0.25)


@pytest.mark.parametrize("scale_k_first", [False, True])
def test_split_scale_of_the_dynamo_exporter(scale_k_first: bool) -> None:
    s1 = float(np.sqrt(1 / np.sqrt(D)))

    def body(emit: Emit, q, k, v):
        qs = emit(sp.MulOp(q, const(emit, s1)))
        if scale_k_first:
            ks = kt(emit, emit(sp.MulOp(k, const(emit, s1))))
        else:
            ks = emit(sp.MulOp(kt(emit, k), const(emit, s1)))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(qs, ks)), -1)), v))]

    (att,) = assert_raised(raise_and_check(build([t(B, H, S, D)] * 3, body)))
    assert att.scale.value.data == pytest.approx(1 / np.sqrt(D))
    assert att.mask is None
    assert counts(raise_and_check(build([t(B, H, S, D)] * 3, body)))["sparse.mul"] == 0


def causal_model(mask: np.ndarray, form: str, sq: int = S, skv: int = S) -> ModuleOp:
    def body(emit: Emit, q, k, v):
        s = emit(sp.MulOp(emit(sp.MatmulOp(q, kt(emit, k))), const(emit, 0.5)))
        if form == "add":
            s = emit(sp.AddOp(s, const(emit, mask)))
        elif form == "where":  # where(mask, scores, -inf)
            s = emit(sp.WhereOp(const(emit, mask, i1), s, const(emit, -np.inf)))
        else:  # masked_fill: where(not mask, -inf, scores)
            s = emit(sp.WhereOp(const(emit, ~mask, i1), const(emit, -np.inf), s))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, -1)), v))]

    return build([t(B, H, sq, D), t(B, H, skv, D), t(B, H, skv, D)], body)


def tri(sq: int, skv: int, offset: int = 0) -> np.ndarray:
    return np.arange(skv)[None, :] <= np.arange(sq)[:, None] + offset


@pytest.mark.parametrize(
    "form, mask",
    [
        ("add", np.where(tri(S, S), 0, -np.inf)),
        ("add", np.where(tri(S, S), 0, np.finfo(np.float32).min)),
        ("add", np.where(tri(S, S), 0, -10000.0)[None, None]),
        ("where", tri(S, S)),
        ("masked_fill", tri(S, S)),
    ],
    ids=["-inf", "finfo.min", "-10000", "where", "masked_fill"],
)
def test_constant_causal_mask_becomes_the_causal_attribute(form: str, mask: np.ndarray) -> None:
    (att,) = assert_raised(raise_and_check(causal_model(mask, form)))
    assert att.causal is not None and att.mask is None and att.causal_offset.value.data == 0


def test_causal_mask_with_cached_keys_gives_an_offset() -> None:
    (att,) = assert_raised(raise_and_check(causal_model(np.where(tri(4, S, 2), 0, -np.inf), "add", sq=4)))
    assert att.causal is not None and att.mask is None and att.causal_offset.value.data == 2


@pytest.mark.parametrize(
    "mask",
    [
        np.where(tri(S, S, 0).T, 0, -np.inf),  # upper triangle: not causal
        np.where(tri(S, S), 0.5, -np.inf),  # visible positions are biased
        np.stack([np.where(tri(S, S), 0, -np.inf), np.zeros((S, S))])[:, None],  # differs per batch
    ],
    ids=["upper", "biased", "per-batch"],
)
def test_other_constant_masks_stay_masks(mask: np.ndarray) -> None:
    (att,) = assert_raised(raise_and_check(causal_model(mask.astype(np.float32), "add")))
    assert att.causal is None and att.mask is not None


def test_masked_fill_with_a_runtime_mask_becomes_an_i1_mask() -> None:
    def body(emit: Emit, q, k, v, keep):
        s = emit(sp.MatmulOp(q, kt(emit, k)))
        s = emit(sp.WhereOp(emit(sp.NotOp(keep)), const(emit, -np.inf), s))  # masked_fill(~keep, -inf)
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, -1)), v))]

    (att,) = assert_raised(raise_and_check(build([t(B, H, S, D)] * 3 + [t(B, 1, S, S, elt=i1)], body)))
    assert att.mask is not None and sp.elt_of(att.mask) == i1
    assert att.scale.value.data == 1.0
    assert counts(main_func(att.get_toplevel_object()))["sparse.not"] == 0  # not(not(m)) folded


def test_additive_mask_from_a_boolean_becomes_an_i1_mask() -> None:
    # SDPA with a bool attn_mask: where(mask, 0, -inf) is added to the scores
    def body(emit: Emit, q, k, v, keep):
        bias = emit(sp.WhereOp(keep, const(emit, 0.0), const(emit, -np.inf)))
        s = emit(sp.AddOp(emit(sp.MatmulOp(q, kt(emit, k))), bias))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, -1)), v))]

    (att,) = assert_raised(raise_and_check(build([t(B, H, S, D)] * 3 + [t(S, S, elt=i1)], body)))
    assert att.mask is not None and att.mask.type == t(S, S, elt=i1)


def test_nan_cleanup_after_softmax_is_part_of_the_pattern() -> None:
    # dynamo and TorchScript SDPA with a mask: where(isnan(P), 0, P)
    def body(emit: Emit, q, k, v, m):
        s = emit(sp.AddOp(emit(sp.MatmulOp(q, kt(emit, k))), m))
        p = emit(sp.SoftmaxOp(s, -1))
        p = emit(sp.WhereOp(emit(sp.IsNanOp(p)), const(emit, 0.0), p))
        return [emit(sp.MatmulOp(p, v))]

    (att,) = assert_raised(raise_and_check(build([t(B, H, S, D)] * 3 + [t(S, S)], body)))
    assert counts(main_func(att.get_toplevel_object()))["sparse.isnan"] == 0


HEADS_FIRST, HEADS_SECOND = (B, H, S, D), (B, S, H, D)


@pytest.mark.parametrize(
    "qk, pv, qk_shape, v_shape",
    [
        ("bhqd,bhkd->bhqk", "bhqk,bhkd->bhqd", HEADS_FIRST, HEADS_FIRST),
        ("...qd,...kd->...qk", "...qk,...kd->...qd", HEADS_FIRST, HEADS_FIRST),
        ("bhqd,bhkd->bhqk", None, HEADS_FIRST, HEADS_FIRST),
        # heads second, as einsum implementations of LLaMA/GPT-J write it: transposes are inserted
        ("bqhd,bkhd->bhqk", "bhqk,bkhd->bqhd", HEADS_SECOND, HEADS_SECOND),
        ("bhqd,bhkd->bhqk", "bhqk,bhkd->bqhd", HEADS_FIRST, HEADS_FIRST),
    ],
)
def test_einsum_forms(qk: str, pv: str | None, qk_shape: tuple[int, ...], v_shape: tuple[int, ...]) -> None:
    def body(emit: Emit, q, k, v):
        s = emit(sp.ContractOp([q, k], qk))
        s = emit(sp.MulOp(s, const(emit, 0.3)))
        p = emit(sp.SoftmaxOp(s, -1))
        out = emit(sp.ContractOp([p, v], pv)) if pv else emit(sp.MatmulOp(p, v))
        return [out]

    (att,) = assert_raised(raise_and_check(build([t(*qk_shape), t(*qk_shape), t(*v_shape)], body)))
    assert att.scale.value.data == pytest.approx(0.3)


def test_einsum_with_scores_in_another_order_is_left_alone() -> None:
    # scores (b, q, h, k): a softmax over k is still attention, but not a form raised here
    def body(emit: Emit, q, k, v):
        p = emit(sp.SoftmaxOp(emit(sp.ContractOp([q, k], "bhqd,bhkd->bqhk")), -1))
        return [emit(sp.ContractOp([p, v], "bqhk,bhkd->bhqd"))]

    not_raised(build([t(B, H, S, D)] * 3, body))


def test_batched_3d_form_of_torchscript_mha() -> None:
    # (B*H, S, d) operands and a (B*H, S, S) mask: reshaped to 4-D around the op
    def body(emit: Emit, q, k, v, m):
        s = emit(sp.AddOp(emit(sp.MatmulOp(q, kt(emit, k))), m))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, 2)), v))]

    module = raise_and_check(build([t(B * H, S, D)] * 3 + [t(B * H, S, S)], body))
    (att,) = assert_raised(module)
    assert sp.shape_of(att.q) == (1, B * H, S, D)
    assert att.scale.value.data == 1.0


def test_2d_single_head() -> None:
    def body(emit: Emit, q, k, v):
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(q, kt(emit, k))), -1)), v))]

    (att,) = assert_raised(raise_and_check(build([t(S, D)] * 3, body)))
    assert sp.shape_of(att.q) == (1, 1, S, D)


def test_broadcast_batch_of_keys_is_made_explicit() -> None:
    # k and v shared by every batch and head (matmul broadcasting): MQA with kv_heads = 1
    def body(emit: Emit, q, k, v):
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(q, kt(emit, k))), -1)), v))]

    (att,) = assert_raised(raise_and_check(build([t(B, H, S, D), t(S, D), t(S, D)], body)))
    assert att.kv_heads.value.data == 1 and sp.shape_of(att.k) == (B, 1, S, D)


def test_broadcast_batch_of_queries_is_made_explicit() -> None:
    # one query set against a batch of keys: q is broadcast to the batch
    def body(emit: Emit, q, k, v):
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(q, kt(emit, k))), -1)), v))]

    (att,) = assert_raised(raise_and_check(build([t(1, H, S, D), t(B, H, S, D), t(B, 1, S, D)], body)))
    assert sp.shape_of(att.q) == (B, H, S, D) and att.kv_heads.value.data == H


def gqa(repeat: str) -> ModuleOp:
    hkv = 2

    def rep(emit: Emit, x: SSAValue) -> SSAValue:
        if repeat == "expand":  # Unsqueeze -> Expand -> Reshape, as repeat_interleave exports
            x = emit(sp.ReshapeOp(x, (B, hkv, 1, S, D)))
            x = emit(sp.BroadcastOp(x, (B, hkv, H // hkv, S, D)))
            return emit(sp.ReshapeOp(x, (B, H, S, D)))
        idx = const(emit, np.repeat(np.arange(hkv), H // hkv), i64)
        return emit(sp.GatherOp(x, idx, 1))

    def body(emit: Emit, q, k, v):
        s = emit(sp.MatmulOp(q, kt(emit, rep(emit, k))))
        s = emit(sp.MulOp(s, const(emit, 1 / np.sqrt(D))))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, -1)), rep(emit, v)))]

    return build([t(B, H, S, D), t(B, hkv, S, D), t(B, hkv, S, D)], body)


@pytest.mark.parametrize("repeat", ["expand", "gather"])
def test_repeated_kv_heads_become_gqa(repeat: str) -> None:
    (att,) = assert_raised(raise_and_check(gqa(repeat)))
    assert att.heads.value.data == H and att.kv_heads.value.data == 2
    assert isinstance(att.k, SSAValue) and sp.shape_of(att.k) == (B, 2, S, D)


def test_two_attentions_in_one_function() -> None:
    def body(emit: Emit, q, k, v):
        o1 = emit(sp.MatmulOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(q, kt(emit, k))), -1)), v))
        o2 = emit(sp.MatmulOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(o1, kt(emit, k))), -1)), v))
        return [o2]

    assert_raised(raise_and_check(build([t(B, H, S, D)] * 3, body)), n=2)


# ---------------------------------------------------------------------------
# patterns that must not be raised


def not_raised(module: ModuleOp) -> Counter[str]:
    module = raise_and_check(module)
    c = counts(module)
    assert c["sparse.attention"] == 0, print_module(module)
    assert c["sparse.softmax"] == 1
    return c


def test_escaping_probabilities_block_raising() -> None:
    # need_weights=True: the probabilities are an output too
    def body(emit: Emit, q, k, v):
        p = emit(sp.SoftmaxOp(emit(sp.MatmulOp(q, kt(emit, k))), -1))
        return [emit(sp.MatmulOp(p, v)), p]

    not_raised(build([t(B, H, S, D)] * 3, body))


def test_escaping_scores_block_raising() -> None:
    def body(emit: Emit, q, k, v):
        s = emit(sp.MatmulOp(q, kt(emit, k)))
        p = emit(sp.SoftmaxOp(emit(sp.DivOp(s, const(emit, 2.0))), -1))
        return [emit(sp.MatmulOp(p, v)), s]

    not_raised(build([t(B, H, S, D)] * 3, body))


def test_softmax_over_the_query_axis_is_not_attention() -> None:
    def body(emit: Emit, q, k, v):
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(q, kt(emit, k))), 2)), v))]

    not_raised(build([t(B, H, S, D)] * 3, body))


def test_non_scalar_scale_is_not_raised() -> None:
    def body(emit: Emit, q, k, v):
        s = emit(sp.MatmulOp(q, kt(emit, k)))
        s = emit(sp.MulOp(s, const(emit, np.arange(1, S + 1, dtype=np.float32))))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, -1)), v))]

    not_raised(build([t(B, H, S, D)] * 3, body))


def test_partial_pattern_without_the_value_product_is_left_alone() -> None:
    def body(emit: Emit, q, k):
        return [emit(sp.ReduceOp(emit(sp.SoftmaxOp(emit(sp.MatmulOp(q, kt(emit, k))), -1)), "sum", [3], False))]

    c = not_raised(build([t(B, H, S, D)] * 2, body))
    assert c["sparse.matmul"] == 1


def test_exp_of_scores_is_not_a_mask() -> None:
    # a nonlinear op between the product and the softmax stops the match
    def body(emit: Emit, q, k, v):
        s = emit(sp.TanhOp(emit(sp.MatmulOp(q, kt(emit, k)))))
        return [emit(sp.MatmulOp(emit(sp.SoftmaxOp(s, -1)), v))]

    not_raised(build([t(B, H, S, D)] * 3, body))


# ---------------------------------------------------------------------------
# textual IR, as `attnc opt -p raise-attention` sees it

BERT_MLIR = """
builtin.module {
  func.func @main(%q: tensor<1x2x4x8xf32>, %k: tensor<1x2x4x8xf32>, %v: tensor<1x2x4x8xf32>, %m: tensor<1x1x1x4xf32>) -> tensor<1x2x4x8xf32> {
    %kt = sparse.transpose %k {permutation = array<i64: 0, 1, 3, 2>} : tensor<1x2x4x8xf32> -> tensor<1x2x8x4xf32>
    %s = sparse.matmul %q, %kt : tensor<1x2x4x8xf32>, tensor<1x2x8x4xf32> -> tensor<1x2x4x4xf32>
    %c = sparse.constant {value = dense<2.828427> : tensor<f32>} : tensor<f32>
    %d = sparse.div %s, %c : tensor<1x2x4x4xf32>, tensor<f32> -> tensor<1x2x4x4xf32>
    %a = sparse.add %d, %m : tensor<1x2x4x4xf32>, tensor<1x1x1x4xf32> -> tensor<1x2x4x4xf32>
    %p = sparse.softmax %a {axis = -1 : i64} : tensor<1x2x4x4xf32> -> tensor<1x2x4x4xf32>
    %o = sparse.matmul %p, %v : tensor<1x2x4x4xf32>, tensor<1x2x4x8xf32> -> tensor<1x2x4x8xf32>
    func.return %o : tensor<1x2x4x8xf32>
  }
}
"""


def test_textual_bert_pattern_gives_one_op() -> None:
    module = parse_module(BERT_MLIR)
    for names in (["q", "k", "v", "m"],):
        set_io_names(main_func(module), [f"x{i}" for i in range(len(names))], ["y0"])
    raise_and_check(module)
    ops = [op.name for op in main_func(module).body.ops]
    assert ops == ["sparse.attention", "func.return"], print_module(module)
