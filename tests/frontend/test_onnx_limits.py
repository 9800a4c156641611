"""Hostile ONNX: declared shapes over limits.TENSOR_ELEMENTS are refused at import, constants over
limits.FOLD_BYTES are not folded (the op stays in the graph, or a clean error says it is too large to fold),
and node names print escaped."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto as T
from onnx import helper, numpy_helper

from attnc.errors import AttncError
from attnc.frontend import fold
from attnc.frontend.onnx import import_onnx
from attnc.interpreter import interpret
from attnc.ir import print_module

F = T.FLOAT


def test_a_huge_input_is_refused(onnx_model) -> None:
    m = onnx_model([helper.make_node("Neg", ["x"], ["y"])], {"x": (F, [10**9, 10**9])}, {"y": (F, [10**9, 10**9])})
    with pytest.raises(AttncError, match="input 'x' .*tensor elements limit") as e:
        import_onnx(m, name="m.onnx")
    assert str(e.value).startswith("m.onnx: ") and "ATTNC_MAX_TENSOR_ELEMENTS" in str(e.value)


def test_a_huge_result_is_refused_naming_the_node(onnx_model) -> None:
    m = onnx_model([helper.make_node("MatMul", ["a", "b"], ["y"], name="mm")],
                   {"a": (F, [10**9, 1]), "b": (F, [1, 10**9])}, {"y": (F, [10**9, 10**9])})  # fmt: skip
    with pytest.raises(AttncError, match="node 'mm' \\(MatMul.*tensor elements limit"):
        import_onnx(m, name="m.onnx")


def _constant_of_shape(onnx_model, dims):
    value = numpy_helper.from_array(np.array([1.5], np.float32))
    return onnx_model(
        [helper.make_node("ConstantOfShape", ["s"], ["c"], value=value), helper.make_node("Add", ["x", "c"], ["y"])],
        {"x": (F, dims)}, {"y": (F, dims)}, {"s": np.array(dims, np.int64)},
    )  # fmt: skip


def test_constant_of_shape_over_the_fold_limit_stays_in_the_graph(onnx_model, monkeypatch) -> None:
    m = _constant_of_shape(onnx_model, [30, 40])
    x = np.arange(1200, dtype=np.float32).reshape(30, 40)
    folded = import_onnx(m)
    assert "sparse.broadcast" not in print_module(folded)
    monkeypatch.setenv("ATTNC_MAX_FOLD_BYTES", "1000")  # 30x40 f32 is 4800 bytes
    kept = import_onnx(m)
    assert "sparse.broadcast" in print_module(kept) and "dense<1.500000e+00> : tensor<1x1xf32>" in print_module(kept)
    np.testing.assert_array_equal(interpret(kept, {"x": x})["y"], interpret(folded, {"x": x})["y"])


def test_a_large_constant_of_shape_is_never_materialised(onnx_model, monkeypatch) -> None:
    # 5000x4000 f32 is 80 MB, over the default fold limit (64 MiB): the import leaves a broadcast, and the
    # interpreter refuses it before allocating (kept small, so that a regression costs no gigabytes)
    m = _constant_of_shape(onnx_model, [5000, 4000])
    module = import_onnx(m)
    assert "sparse.broadcast" in print_module(module)
    monkeypatch.setenv("ATTNC_MAX_TENSOR_BYTES", str(1 << 20))
    with pytest.raises(AttncError, match="tensor size limit"):
        interpret(module, {"x": np.zeros(1, np.float32)})


def test_a_constant_of_shape_beyond_numpy_is_a_clean_error(onnx_model) -> None:
    # 2^40 x 2^40 would be numpy's "Maximum allowed dimension exceeded"
    m = onnx_model([helper.make_node("ConstantOfShape", ["s"], ["y"])], {}, {"y": (F, ["a", "b"])},
                   {"s": np.array([2**40, 2**40], np.int64)})  # fmt: skip
    with pytest.raises(AttncError, match="tensor elements limit"):
        import_onnx(m, name="m.onnx")


def _range(onnx_model, n):
    return onnx_model(
        [helper.make_node("Range", ["a", "b", "d"], ["r"], name="rng"), helper.make_node("Cast", ["r"], ["rf"], to=F),
         helper.make_node("Add", ["x", "rf"], ["y"])],
        {"x": (F, [n])}, {"y": (F, [n])},
        {"a": np.array(0, np.int64), "b": np.array(n, np.int64), "d": np.array(1, np.int64)},
    )  # fmt: skip


def test_a_huge_range_is_too_large_to_fold(onnx_model) -> None:
    # 2e7 int64 is 160 MB, over the default fold limit; refused before ONNX's shape inference would
    # propagate (materialise) it -- as it would 6e8 (4.8 GB)
    with pytest.raises(AttncError) as e:
        import_onnx(_range(onnx_model, 20_000_000), name="m.onnx")
    msg = str(e.value)
    assert "node 'rng' (Range)" in msg and "too large to fold" in msg and "ATTNC_MAX_FOLD_BYTES" in msg


def test_a_range_over_a_small_fold_limit_is_a_clean_error(onnx_model, monkeypatch) -> None:
    m = _range(onnx_model, 1000)
    import_onnx(m)
    monkeypatch.setenv("ATTNC_MAX_FOLD_BYTES", "4000")  # 1000 int64 = 8000 bytes
    with pytest.raises(AttncError, match="too large to fold.*Range has no runtime lowering"):
        import_onnx(m, name="m.onnx")


def test_a_cast_over_the_fold_limit_becomes_a_runtime_op(onnx_model, monkeypatch) -> None:
    w = np.arange(64, dtype=np.float16).reshape(8, 8)
    m = onnx_model([helper.make_node("Cast", ["w"], ["wf"], to=F), helper.make_node("MatMul", ["x", "wf"], ["y"])],
                   {"x": (F, [2, 8])}, {"y": (F, [2, 8])}, {"w": w})  # fmt: skip
    x = np.ones((2, 8), np.float32)
    want = interpret(import_onnx(m), {"x": x})["y"]
    monkeypatch.setenv("ATTNC_MAX_FOLD_BYTES", "200")  # the f32 weight is 256 bytes
    kept = import_onnx(m)
    assert "sparse.cast" in print_module(kept)
    np.testing.assert_array_equal(interpret(kept, {"x": x})["y"], want)


def test_result_bytes_estimates() -> None:
    node = helper.make_node("Range", ["a", "b", "d"], ["r"])
    ins = [np.array(0, np.int64), np.array(10, np.int64), np.array(3, np.int64)]
    assert fold.result_bytes(node, ins, {}) == 4 * 8
    node = helper.make_node("Expand", ["x", "s"], ["y"])
    assert fold.result_bytes(node, [np.zeros((1, 3), np.float32), np.array([5, 1, 3])], {}) == 5 * 3 * 4
    node = helper.make_node("Tile", ["x", "r"], ["y"])
    assert fold.result_bytes(node, [np.zeros((2, 3), np.int8), np.array([4, 5])], {}) == 120
    assert fold.result_bytes(helper.make_node("Relu", ["x"], ["y"]), [np.zeros(3)], {}) is None


@pytest.mark.parametrize("op", ["Det", "Relu"])
def test_node_names_are_escaped(onnx_model, op: str) -> None:
    m = onnx_model([helper.make_node(op, ["x"], ["y"], name="n\nattnc: error: forged\u202e")],
                   {"x": (F, [2, 2])}, {"y": (F, [] if op == "Det" else [2, 2])})  # fmt: skip
    if op == "Relu":  # the checker's message quotes a name
        m.graph.node[0].input[0] = "missing\u202e\nattnc: error: forged"
    with pytest.raises(AttncError) as e:
        import_onnx(m, name="m.onnx")
    msg = str(e.value)
    assert "\n" not in msg and "\u202e" not in msg and "\\u202e" in msg, msg


def test_input_names_are_escaped(onnx_model) -> None:
    m = onnx_model([helper.make_node("Relu", ["x\u202e"], ["y"])], {"x\u202e": (F, ["n"])}, {"y": (F, ["n"])})
    with pytest.raises(AttncError) as e:
        import_onnx(m, name="m.onnx")
    assert "\u202e" not in str(e.value) and "symbolic dim" in str(e.value)


def test_a_malformed_range_bound_is_no_internal_error(onnx_model) -> None:
    # the fuzzer's case: the Range check before shape inference must not choke on a bad tensor
    m = _range(onnx_model, 10)
    init = m.graph.initializer[0]
    init.ClearField("int64_data")
    init.raw_data = b"\0" * 32  # 4 values for a scalar
    with pytest.raises(AttncError):
        import_onnx(m, name="m.onnx")
