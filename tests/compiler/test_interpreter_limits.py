"""The reference interpreter checks every value it materialises (inputs, op results, attention's scores)
against limits.TENSOR_BYTES before allocating it, and turns numpy's MemoryError into an AttncError."""

from __future__ import annotations

import numpy as np
import pytest

from attnc import interpreter
from attnc.dialects import sparse as sp
from attnc.errors import AttncError
from attnc.interpreter import interpret
from attnc.ir import parse_module


def _module(in_shape: str, out_shape: str, body: str) -> object:
    return parse_module(
        f'func.func @main(%x: tensor<{in_shape}xf32> {{attnc.name = "x"}}) -> (tensor<{out_shape}xf32> {{attnc.name = "y"}}) {{\n'
        f"{body}\n  func.return %y : tensor<{out_shape}xf32>\n}}\n"
    )  # fmt: skip


def test_a_huge_declared_input_is_refused_before_anything_is_converted() -> None:
    m = _module("1000000000", "1000000000", "  %y = sparse.neg %x : tensor<1000000000xf32> -> tensor<1000000000xf32>")
    with pytest.raises(AttncError) as e:
        interpret(m, {"x": np.zeros(3, np.float32)})  # the size is checked, not the mismatching shape
    assert "input 'x'" in str(e.value) and "4,000,000,000 bytes" in str(e.value) and "ATTNC_MAX_TENSOR_BYTES" in str(e.value)


def test_an_op_result_over_the_limit_is_refused_before_the_op_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _module("1x4", "1000x4", "  %y = sparse.broadcast %x : tensor<1x4xf32> -> tensor<1000x4xf32>")
    x = np.ones((1, 4), np.float32)
    assert interpret(m, {"x": x})["y"].shape == (1000, 4)
    monkeypatch.setenv("ATTNC_MAX_TENSOR_BYTES", "4000")
    ran = []
    monkeypatch.setitem(interpreter.IMPLS, sp.BroadcastOp, lambda op, args: ran.append(op))
    with pytest.raises(AttncError, match="result 0 of 'sparse.broadcast'.*16,000 bytes exceeds the tensor size limit of 4,000"):
        interpret(m, {"x": x})
    assert not ran


def test_attention_scores_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    t = "tensor<1x1x64x4xf32>"
    m = parse_module(
        f'func.func @main(%x: {t} {{attnc.name = "x"}}) -> ({t} {{attnc.name = "y"}}) {{\n'
        f"  %y = sparse.attention %x, %x, %x {{scale = 5.000000e-01 : f64, heads = 1 : i64, kv_heads = 1 : i64, "
        f"causal_offset = 0 : i64, softcap = 0.000000e+00 : f64}} : {t}, {t}, {t} -> {t}\n"
        f"  func.return %y : {t}\n}}\n"
    )
    x = np.ones((1, 1, 64, 4), np.float32)
    interpret(m, {"x": x})
    monkeypatch.setenv("ATTNC_MAX_TENSOR_BYTES", "8192")  # the inputs and result fit (1 KiB), 64x64 scores do not
    with pytest.raises(AttncError, match="attention scores.*16,384 bytes"):
        interpret(m, {"x": x})


def test_memory_error_is_a_clean_error(monkeypatch: pytest.MonkeyPatch) -> None:
    m = _module("4", "4", "  %y = sparse.neg %x : tensor<4xf32> -> tensor<4xf32>")

    def boom(op, args):
        raise MemoryError()

    monkeypatch.setitem(interpreter.IMPLS, sp.NegOp, boom)
    with pytest.raises(AttncError, match="'sparse.neg' ran out of memory"):
        interpret(m, {"x": np.zeros(4, np.float32)})


def test_input_names_are_escaped() -> None:
    m = _module("4", "4", "  %y = sparse.neg %x : tensor<4xf32> -> tensor<4xf32>")
    with pytest.raises(AttncError) as e:
        interpret(m, {"x": np.zeros(4, np.float32), "a\nattnc: error: forged": np.zeros(1)})
    assert "\n" not in str(e.value)
