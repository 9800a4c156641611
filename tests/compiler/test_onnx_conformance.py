"""ONNX's own operator test cases (``onnx.backend.test``) run on attnc's reference
backend: every node case of the ops the frontend claims, including every Attention
case. Cases attnc does not run are listed in EXCLUDED with the reason.

tests/conftest.py prints "onnx conformance: N passed, M failed, K excluded" at the end.
"""

from __future__ import annotations

import re
import warnings

import onnx.backend.test
from onnx import TensorProto
from onnx.backend.test.loader import load_model_tests

from attnc.frontend.onnx import MIN_OPSET
from attnc.onnx_backend import ReferenceBackend

#: ops whose node cases run, as the snake-case stem of their case names
OPS = [
    "attention", "softmax", "logsoftmax", "matmul", "gemm", "einsum", "layer_normalization", "gelu", "erf",
    "transpose", "reshape", "where", "tril", "triu", "add", "sub", "mul", "div", "pow", "sqrt", "exp", "log",
    "tanh", "neg", "abs", "reciprocal", "sigmoid", "relu", "floor", "ceil", "not", "and", "or", "xor",
    "equal", "less", "less_equal", "greater", "greater_equal", "isnan", "isinf", "concat", "slice", "gather",
    "unsqueeze", "squeeze", "expand", "cast", "castlike", "reduce_mean", "reduce_sum", "reduce_max",
    "reduce_min", "reduce_prod", "range", "split", "flatten", "identity", "dropout", "constant",
    "constantofshape", "shape", "size", "max", "min", "sum", "mean", "pad", "clip",
]  # fmt: skip

#: cases matched by OPS that attnc does not run, each with why
EXCLUDED: dict[str, str] = {
    "test_gather_elements_0": "GatherElements is another op (same name stem as Gather)",
    "test_gather_elements_1": "GatherElements is another op (same name stem as Gather)",
    "test_gather_elements_negative_indices": "GatherElements is another op (same name stem as Gather)",
    "test_split_to_sequence_1": "SplitToSequence: sequences are outside attnc's tensor-only IR",
    "test_split_to_sequence_2": "SplitToSequence: sequences are outside attnc's tensor-only IR",
    "test_split_to_sequence_nokeepdims": "SplitToSequence: sequences are outside attnc's tensor-only IR",
    "test_identity_sequence": "sequence-typed input: outside attnc's tensor-only IR",
    "test_identity_opt": "optional-typed input: outside attnc's tensor-only IR",
}
for _t in ("float", "float16", "bfloat16", "int32"):
    for _sign in ("positive", "negative"):
        EXCLUDED[f"test_range_{_t}_type_{_sign}_delta_expanded"] = (
            "Range's function body is a Loop (control flow), outside attnc's static dataflow IR"
        )

_SUPPORTED_TYPES = {
    TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE, TensorProto.INT64,
    TensorProto.INT32, TensorProto.INT16, TensorProto.INT8, TensorProto.UINT8, TensorProto.UINT16,
    TensorProto.UINT32, TensorProto.UINT64, TensorProto.BOOL,
}  # fmt: skip

_PATTERN = re.compile(rf"^test_({'|'.join(OPS)})(_.*)?$")


def _excluded_by_rule(case) -> str | None:
    """Reasons that follow from a case's model alone (old opsets, unsupported element types)."""
    opset = {o.domain or "": o.version for o in case.model.opset_import}.get("", 0)
    if opset < MIN_OPSET:
        return f"opset {opset}: attnc imports opset {MIN_OPSET} and newer (the newer node case of the op runs)"
    for v in (*case.model.graph.input, *case.model.graph.output):
        if v.type.HasField("tensor_type") and v.type.tensor_type.elem_type not in _SUPPORTED_TYPES:
            name = TensorProto.DataType.Name(v.type.tensor_type.elem_type)
            return f"element type {name}: outside attnc's types (f32, f16, bf16, f64, integers, bool)"
    return None


with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the case generators warn about their own inf/nan data
    bt = onnx.backend.test.BackendTest(ReferenceBackend, __name__)
    for _case in load_model_tests(kind="node"):  # cached: BackendTest just built them
        if _PATTERN.match(_case.name) and _case.name not in EXCLUDED and (_why := _excluded_by_rule(_case)):
            EXCLUDED[_case.name] = _why

for _op in OPS:
    bt.include(rf"^test_{_op}(_.*)?_cpu$")
for _name in EXCLUDED:
    bt.exclude(rf"^{re.escape(_name)}_cpu$")

# node cases only (the "simple" and "pytorch-converted" collections use old opsets throughout), and
# only those of OPS: the other generated cases would be thousands of "not included" skips
NodeCases = bt.test_cases["OnnxBackendNodeModelTest"]
for _attr in list(vars(NodeCases)):
    if _attr.startswith("test_") and not (_attr.endswith("_cpu") and _PATTERN.match(_attr[: -len("_cpu")])):
        delattr(NodeCases, _attr)
