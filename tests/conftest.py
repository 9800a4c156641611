"""Shared pytest hooks and fixtures."""

from __future__ import annotations

import pytest

CONFORMANCE_MODULE = "test_onnx_conformance.py"


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2])
    return str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:  # noqa: ARG001
    """One line with the ONNX conformance score (works with xdist: reports reach the controller)."""
    stats = terminalreporter.stats

    def count(key: str, reason: str | None = None) -> int:
        return sum(
            1
            for r in stats.get(key, [])
            if CONFORMANCE_MODULE in getattr(r, "nodeid", "")
            and getattr(r, "when", "call") in ("call", "setup")
            and (reason is None or reason in _skip_reason(r))
        )

    passed, failed = count("passed"), count("failed") + count("error")
    excluded = count("skipped", "exclude pattern")
    if passed or failed or excluded:
        terminalreporter.write_line(f"onnx conformance: {passed} passed, {failed} failed, {excluded} excluded")


@pytest.fixture
def onnx_model():
    """Build a checked ONNX model: ``onnx_model(nodes, inputs, outputs, inits=..., opset=...)``
    with inputs/outputs given as {name: (TensorProto type, shape)} and inits as {name: array}."""
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    def build(nodes, inputs, outputs, inits=None, opset=21):
        graph = helper.make_graph(
            nodes,
            "test",
            [helper.make_tensor_value_info(n, t, s) for n, (t, s) in inputs.items()],
            [helper.make_tensor_value_info(n, t, s) for n, (t, s) in outputs.items()],
            [numpy_helper.from_array(np.asarray(v), n) for n, v in (inits or {}).items()],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        model.ir_version = min(model.ir_version, 10)  # what onnxruntime accepts
        onnx.checker.check_model(model)
        return model

    return build
