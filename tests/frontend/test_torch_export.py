"""PyTorch models exported to ONNX by both exporters (TorchScript at opsets 17 and 18, dynamo at 17, 18 and 23)
import, raise to exactly one sparse.attention per attention, and compute what
onnxruntime computes on the same exported ONNX."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from torch import nn  # noqa: E402
from torch.nn import functional as F  # noqa: E402

from attnc.errors import AttncError  # noqa: E402
from attnc.frontend.torch import export_onnx, import_module, import_onnx_and_raise, load_exported_program  # noqa: E402
from attnc.interpreter import interpret  # noqa: E402
from attnc.ir import main_func  # noqa: E402

E, HEADS, S, BATCH = 32, 4, 8, 2
D = E // HEADS


class MHA(nn.Module):
    """nn.MultiheadAttention self-attention, optionally with a causal attn_mask."""

    def __init__(self, causal: bool = False):
        super().__init__()
        self.attn = nn.MultiheadAttention(E, HEADS, batch_first=True)
        self.causal = causal
        self.register_buffer("mask", torch.triu(torch.full((S, S), float("-inf")), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.causal:
            return self.attn(x, x, x, attn_mask=self.mask, is_causal=True, need_weights=False)[0]
        return self.attn(x, x, x, need_weights=False)[0]


class SDPA(nn.Module):
    """F.scaled_dot_product_attention on (B, H, S, d) inputs: causal, or with a mask input."""

    def __init__(self, causal: bool = False):
        super().__init__()
        self.causal = causal

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        if self.causal:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[0])


class GQA(nn.Module):
    """Grouped-query attention as LLaMA's repeat_kv writes it (expand + reshape), causal."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, h, s, d = k.shape
        k = k[:, :, None].expand(b, h, HEADS // h, s, d).reshape(b, HEADS, s, d)
        v = v[:, :, None].expand(b, h, HEADS // h, s, d).reshape(b, HEADS, s, d)
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


class BertSelfAttention(nn.Module):
    """Hand-written BERT attention block: Q/K/V Linear, split heads, scaled scores plus
    an additive padding mask, softmax, merge heads, output Linear, residual + LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(E, E) for _ in range(4))
        self.norm = nn.LayerNorm(E)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(b, s, HEADS, D).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(D)
        scores = scores + (1.0 - mask[:, None, None, :]) * -10000.0
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        ctx = ctx.transpose(1, 2).reshape(b, s, E)
        return self.norm(x + self.o(ctx))


class TwoLayers(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first, self.second = BertSelfAttention(), BertSelfAttention()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.second(self.first(x, mask), mask)


def _padding_mask() -> torch.Tensor:
    mask = torch.ones(BATCH, S)
    mask[1, S - 3 :] = 0  # the second sequence is padded
    return mask


def _bool_mask() -> torch.Tensor:
    mask = torch.rand(BATCH, 1, S, S) < 0.6
    return mask | torch.eye(S, dtype=torch.bool)  # every query sees at least one key


def _qkv() -> tuple[torch.Tensor, ...]:
    return tuple(torch.randn(BATCH, HEADS, S, D) for _ in range(3))


# name -> (model factory, example inputs, attentions in the model)
MODELS: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]], int]] = {
    "mha": (MHA, lambda: (torch.randn(BATCH, S, E),), 1),
    "mha_causal": (lambda: MHA(causal=True), lambda: (torch.randn(BATCH, S, E),), 1),
    "sdpa_causal": (lambda: SDPA(causal=True), _qkv, 1),
    "sdpa_float_mask": (SDPA, lambda: (*_qkv(), torch.randn(BATCH, 1, S, S)), 1),
    "sdpa_bool_mask": (SDPA, lambda: (*_qkv(), _bool_mask()), 1),
    "gqa": (GQA, lambda: (torch.randn(BATCH, HEADS, S, D), *(torch.randn(BATCH, 2, S, D) for _ in range(2))), 1),
    "bert": (BertSelfAttention, lambda: (torch.randn(BATCH, S, E), _padding_mask()), 1),
    "bert_two_layers": (TwoLayers, lambda: (torch.randn(BATCH, S, E), _padding_mask()), 2),
}
EXPORTERS = {
    "torchscript-17": (False, 17),
    "torchscript-18": (False, 18),
    "dynamo-17": (True, 17),
    "dynamo-18": (True, 18),
    "dynamo-23": (True, 23),
}
CASES = [pytest.param(m, e, id=f"{m}-{e}") for m in MODELS for e in EXPORTERS]


class Exported:
    """One export: the model, its inputs, the ONNX proto and the raised module."""

    def __init__(self, model: str, exporter: str):
        factory, make_inputs, self.attentions = MODELS[model]
        torch.manual_seed(0)
        self.module = factory().eval()
        self.args = make_inputs()
        dynamo, opset = EXPORTERS[exporter]
        self.proto = export_onnx(self.module, self.args, dynamo=dynamo, opset=opset)
        self.ir = import_onnx_and_raise(self.proto, f"{model}-{exporter}")


@pytest.fixture(scope="module")
def exports() -> Callable[[str, str], Exported]:
    cache: dict[tuple[str, str], Exported] = {}

    def get(model: str, exporter: str) -> Exported:
        if (model, exporter) not in cache:
            cache[model, exporter] = Exported(model, exporter)
        return cache[model, exporter]

    return get


def count(module: Any, name: str) -> int:
    return sum(op.name == name for op in module.walk())


@pytest.mark.parametrize("model, exporter", CASES)
def test_export_raises_one_attention_per_attention_and_matches_onnxruntime(
    exports: Callable[[str, str], Exported], model: str, exporter: str
) -> None:
    ex = exports(model, exporter)
    ex.ir.verify()
    assert count(ex.ir, "sparse.attention") == ex.attentions
    assert count(ex.ir, "sparse.softmax") == 0

    session = ort.InferenceSession(ex.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), ex.args)}
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    got = interpret(ex.ir, feeds)
    assert sorted(got) == sorted(want)
    for key, value in want.items():
        assert got[key].shape == value.shape and got[key].dtype == value.dtype
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model, exporter", [("mha_causal", "dynamo-18"), ("sdpa_causal", "torchscript-17")])
def test_causal_masks_become_the_causal_attribute(exports: Callable[[str, str], Exported], model: str, exporter: str) -> None:
    (att,) = [op for op in exports(model, exporter).ir.walk() if op.name == "sparse.attention"]
    assert att.causal is not None and att.mask is None


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_repeated_kv_heads_become_gqa(exports: Callable[[str, str], Exported], exporter: str) -> None:
    (att,) = [op for op in exports("gqa", exporter).ir.walk() if op.name == "sparse.attention"]
    assert (att.heads.value.data, att.kv_heads.value.data) == (HEADS, 2) and att.causal is not None


def test_import_module_names_inputs_and_raises() -> None:
    torch.manual_seed(0)
    module = import_module(SDPA(causal=True), _qkv(), dynamo=False, opset=17, input_names=["query", "key", "value"])
    fn = main_func(module)
    from attnc.ir import io_names

    assert io_names(fn)[0] == ["query", "key", "value"]
    assert count(module, "sparse.attention") == 1


def test_load_exported_program(tmp_path) -> None:
    torch.manual_seed(0)
    model = MHA().eval()
    x = torch.randn(BATCH, S, E)
    path = tmp_path / "mha.pt2"
    torch.export.save(torch.export.export(model, (x,)), str(path))
    module = load_exported_program(path)
    assert count(module, "sparse.attention") == 1
    (out,) = interpret(module, {"x": x.numpy()}).values()
    np.testing.assert_allclose(out, model(x).detach().numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p / "missing.pt2", "missing.pt2: no such file"),
        (lambda p: p, "is a directory"),
        (lambda p: (p / "junk.pt2").write_bytes(b"not a zip") and p / "junk.pt2", "not a saved torch.export program"),
    ],
    ids=["missing", "directory", "junk"],
)
def test_load_exported_program_errors(tmp_path, make, message: str) -> None:
    with pytest.raises(AttncError, match=message) as info:
        load_exported_program(make(tmp_path))
    assert "\n" not in str(info.value)


def test_export_failure_is_an_attnc_error() -> None:
    class Broken(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.numpy()  # cannot be traced

    with pytest.raises(AttncError, match=r"<torch Broken>: torch.onnx.export \(TorchScript, opset 17\) failed") as info:
        import_module(Broken(), torch.randn(2), dynamo=False, opset=17)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("model", sorted(MODELS))
def test_exported_models_compile_to_a_bitstream(exports: Callable[[str, str], Exported], model: str) -> None:
    """The back end takes every exported model: the dataflow IR computes what onnxruntime
    does, and the placed configuration encodes and decodes."""
    from attnc.arch import load_arch
    from attnc.backend import bitstream as bs
    from attnc.backend.emit import emit_bitstream
    from attnc.ir import parse_module, print_module
    from attnc.pipeline import run_pipeline

    ex = exports(model, "dynamo-18")
    module = parse_module(print_module(ex.ir))  # a copy: the cached IR stays sparse
    run_pipeline(module, "lower-to-dataflow{arch=edge}")
    session = ort.InferenceSession(ex.proto.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(session.get_inputs(), ex.args)}
    want = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    got = interpret(module, feeds)
    for key, value in want.items():
        np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-5)
    run_pipeline(module, "place-route{arch=edge heuristic-only=true}")
    arch = load_arch("edge")
    b = emit_bitstream(module, arch)
    assert bs.decode(bs.encode(b), expect_arch=arch) == b
