"""The onnx.backend.base API of attnc (the conformance module runs prepare/run at scale)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper

from attnc import onnx_backend
from attnc.onnx_backend import ReferenceBackend


def test_supports_cpu_only():
    assert ReferenceBackend.supports_device("CPU")
    assert not ReferenceBackend.supports_device("CUDA")


def test_run_node_types_outputs_from_shape_inference():
    node = helper.make_node("Softmax", ["x"], ["y"], axis=-1)
    x = np.array([[1.0, 2.0, 3.0]], np.float32)
    (y,) = onnx_backend.run_node(node, [x])
    e = np.exp(x - x.max())
    np.testing.assert_allclose(y, e / e.sum(), rtol=1e-6)
    assert y.dtype == np.float32


def test_run_accepts_a_dict_and_returns_graph_order(onnx_model):
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Sub", ["a", "b"], ["d"])]
    m = onnx_model(nodes, {"a": (T.FLOAT, [2]), "b": (T.FLOAT, [2])}, {"d": (T.FLOAT, [2]), "s": (T.FLOAT, [2])})
    rep = ReferenceBackend.prepare(m)
    a, b = np.array([3.0, 4.0], np.float32), np.array([1.0, 1.0], np.float32)
    d, s = rep.run({"b": b, "a": a})
    np.testing.assert_array_equal(d, a - b)
    np.testing.assert_array_equal(s, a + b)


def test_shape_inputs_specialise_the_module_per_value(onnx_model):
    m = onnx_model(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        {"x": (T.FLOAT, [2, 6]), "shape": (T.INT64, [2])},
        {"y": (T.FLOAT, [-1, -1])},
    )
    rep = ReferenceBackend.prepare(m)
    x = np.arange(12, dtype=np.float32).reshape(2, 6)
    (y,) = rep.run([x, np.array([3, 4], np.int64)])
    assert y.shape == (3, 4)
    (y,) = rep.run([x, np.array([4, -1], np.int64)])
    assert y.shape == (4, 3)
    np.testing.assert_array_equal(y.reshape(-1), x.reshape(-1))


def test_outputs_take_the_declared_onnx_dtype():
    node = helper.make_node("Cast", ["x"], ["y"], to=onnx.TensorProto.BFLOAT16)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", T.FLOAT, [2])], [helper.make_tensor_value_info("y", T.BFLOAT16, [2])]
    )
    (y,) = ReferenceBackend.run_model(helper.make_model(graph), [np.array([1.0, 2.5], np.float32)])
    assert y.dtype.name == "bfloat16"
    np.testing.assert_array_equal(y.astype(np.float32), [1.0, 2.5])
