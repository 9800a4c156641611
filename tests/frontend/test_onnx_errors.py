"""Bad ONNX input gives one-line AttncErrors naming the file, input or node."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto as T
from onnx import helper

from attnc.errors import AttncError
from attnc.frontend import onnx_ops
from attnc.frontend.onnx import import_onnx, load_model, supported_ops
from attnc.interpreter import interpret

F = T.FLOAT


@pytest.fixture
def symbolic(onnx_model):
    return onnx_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, ["batch", "seq", 4])}, {"y": (F, ["batch", "seq", 4])})


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_symbolic_dims_are_bound_by_input_shapes(symbolic):
    module = import_onnx(symbolic, {"x": [2, 3, 4]})
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    np.testing.assert_array_equal(interpret(module, {"x": x})["y"], np.maximum(x, 0))


def test_unbound_symbolic_dim(symbolic):
    with pytest.raises(AttncError) as e:
        import_onnx(symbolic, name="m.onnx")
    assert one_line(e) == "m.onnx: input 'x' has symbolic dim 'batch' (dim 0); bind it with --input-shape x=..."


def test_input_shape_for_no_input(symbolic):
    with pytest.raises(AttncError, match=r"--input-shape names 'z', which is not an input \(inputs: x\)"):
        import_onnx(symbolic, {"x": [1, 2, 4], "z": [1]})


def test_input_shape_rank_mismatch(symbolic):
    with pytest.raises(AttncError, match="input 'x' has rank 3, --input-shape gives 2 dims"):
        import_onnx(symbolic, {"x": [1, 2]})


def test_input_shape_contradicts_a_static_dim(symbolic):
    with pytest.raises(AttncError, match="input 'x' has dim 2 = 4, --input-shape gives 8"):
        import_onnx(symbolic, {"x": [1, 2, 8]})


def test_unsupported_op_names_the_closest_ones_and_the_list(onnx_model):
    m = onnx_model([helper.make_node("HardSigmoid", ["x"], ["y"], name="hs")], {"x": (F, [4])}, {"y": (F, [4])}, opset=17)
    with pytest.raises(AttncError) as e:
        import_onnx(m, name="model.onnx")
    msg = one_line(e)
    n = len(supported_ops())
    assert msg == (f"model.onnx: node 'hs' (HardSigmoid, domain '', opset 17) is not supported; closest supported: "
                   f"Sigmoid (docs/onnx.md lists the {n} ops attnc imports)")  # fmt: skip
    assert len(msg) < 300


def test_custom_domain_op_is_unsupported():
    node = helper.make_node("FancyAttention", ["x"], ["y"], name="fa", domain="com.example")
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", F, [4])], [helper.make_tensor_value_info("y", F, [4])]
    )
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(AttncError, match=r"node 'fa' \(FancyAttention, domain 'com.example', opset 1\) is not supported"):
        import_onnx(m)


def test_shape_operand_must_be_known(onnx_model):
    m = onnx_model(
        [helper.make_node("Reshape", ["x", "s"], ["y"], name="r")],
        {"x": (F, [2, 6]), "s": (T.INT64, [2])},
        {"y": (F, [3, 4])},
    )
    with pytest.raises(onnx_ops.NotKnownError) as e:
        import_onnx(m, name="m.onnx")
    assert re.match(r"m.onnx: node 'r' \(Reshape, .*\): input 1 \('shape', value 's'\) must be known at compile time", one_line(e))


@pytest.mark.parametrize("opset, text", [(6, "opset 6 is older than 7"), (99, "opset 99 is newer than")])
def test_opset_out_of_range(onnx_model, opset, text):
    m = onnx_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, [4])}, {"y": (F, [4])}, opset=13)
    m.opset_import[0].version = opset
    with pytest.raises(AttncError, match=text):
        import_onnx(m, name="m.onnx")


def test_checker_failure_gives_its_first_line(onnx_model):
    m = onnx_model([helper.make_node("Relu", ["x"], ["y"])], {"x": (F, [4])}, {"y": (F, [4])})
    m.graph.node[0].input[0] = "nowhere"
    with pytest.raises(AttncError) as e:
        import_onnx(m, name="m.onnx")
    assert one_line(e).startswith("m.onnx: the ONNX checker rejects the model: ")


def test_missing_file(tmp_path):
    with pytest.raises(AttncError, match="nope.onnx: no such file"):
        load_model(tmp_path / "nope.onnx")


def test_directory(tmp_path):
    with pytest.raises(AttncError, match="is a directory"):
        import_onnx(tmp_path)


def test_truncated_file(tmp_path, onnx_model):
    m = onnx_model(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], {"x": (F, [1, 64])}, {"y": (F, [1, 64])},
        inits={"w": np.ones((64, 64), np.float32)},
    )  # fmt: skip
    data = m.SerializeToString()
    path = tmp_path / "cut.onnx"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(AttncError) as e:
        import_onnx(path)
    assert one_line(e).startswith(f"{path}: ")


def test_garbage_file(tmp_path):
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\xff\xfe this is not a protobuf \x00\x01" * 8)
    with pytest.raises(AttncError) as e:
        import_onnx(path)
    assert one_line(e).startswith(f"{path}: ")


def test_model_file_round_trip(tmp_path, onnx_model):
    m = onnx_model([helper.make_node("Neg", ["x"], ["y"])], {"x": (F, [3])}, {"y": (F, [3])})
    path = tmp_path / "neg.onnx"
    onnx.save(m, path)
    out = interpret(import_onnx(path), {"x": np.arange(3, dtype=np.float32)})
    np.testing.assert_array_equal(out["y"], -np.arange(3, dtype=np.float32))


def test_unexpected_failures_name_the_node_unless_debugging(onnx_model, monkeypatch):
    def broken(node):
        raise RuntimeError("boom")

    monkeypatch.setitem(onnx_ops.OPS, "Neg", broken)
    m = onnx_model([helper.make_node("Neg", ["x"], ["y"], name="n1")], {"x": (F, [3])}, {"y": (F, [3])})
    monkeypatch.delenv("ATTNC_DEBUG", raising=False)
    with pytest.raises(AttncError, match=r"node 'n1' \(Neg, domain '', opset 21\): RuntimeError: boom"):
        import_onnx(m)
    monkeypatch.setenv("ATTNC_DEBUG", "1")
    with pytest.raises(RuntimeError, match="boom"):
        import_onnx(m)


def test_dropout_in_training_mode_is_rejected(onnx_model):
    m = onnx_model(
        [helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="d")],
        {"x": (F, [3])},
        {"y": (F, [3])},
        inits={"r": np.float32(0.5), "t": np.bool_(True)},
    )
    with pytest.raises(AttncError, match="node 'd' .*training mode"):
        import_onnx(m)
