"""ONNX's own operator test cases (``onnx.backend.test``) run on attnc's reference
backend: every node case of the ops the frontend claims, and every Attention case.

The summary line "onnx conformance: N passed, M failed, K excluded" is printed at the
end of the run by tests/conftest.py.
"""

from __future__ import annotations

import re
import warnings

import onnx.backend.test

from attnc.onnx_backend import ReferenceBackend

#: ops whose node cases must pass (matched as test_<snake name>_...)
OPS = [
    "attention", "softmax", "logsoftmax", "matmul", "gemm", "einsum", "layer_normalization", "gelu", "erf",
    "transpose", "reshape", "where", "tril", "triu", "add", "sub", "mul", "div", "pow", "sqrt", "exp", "log",
    "tanh", "neg", "abs", "reciprocal", "sigmoid", "relu", "floor", "ceil", "not", "and", "or", "xor",
    "equal", "less", "less_equal", "greater", "greater_equal", "isnan", "isinf", "concat", "slice", "gather",
    "unsqueeze", "squeeze", "expand", "cast", "castlike", "reduce_mean", "reduce_sum", "reduce_max",
    "reduce_min", "reduce_prod", "range", "split", "flatten", "identity", "dropout", "constant",
    "constantofshape", "shape", "size", "max", "min", "sum", "mean", "pad", "clip",
]  # fmt: skip

#: cases of those ops that attnc does not run, each with why
EXCLUDED: dict[str, str] = {
    "test_attention_4d_linear_attention": "not scaled dot-product attention",
}

#: prefixes that belong to other ops with a common stem (test_max_... vs test_maxpool_...)
_OTHER_OPS = ("test_maxpool", "test_maxunpool", "test_max_pool", "test_min_max", "test_reduce_log_sum",
              "test_reduce_sum_square", "test_reduce_l1", "test_reduce_l2", "test_sub_byte",
              "test_gather_elements", "test_gathernd", "test_split_to_sequence", "test_castlike_float8",
              "test_constant_pad", "test_edge_pad", "test_reflect_pad", "test_wrap_pad",
              "test_expand_dims", "test_size_", "test_range_float_type_positive_delta_expanded_")  # fmt: skip

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the case generators warn about their own inf/nan data
    bt = onnx.backend.test.BackendTest(ReferenceBackend, __name__)

for _op in OPS:
    bt.include(rf"^test_{_op}(_.*)?_cpu$")
for _name in EXCLUDED:
    bt.exclude(rf"^{re.escape(_name)}(_cpu)?$")

globals().update(bt.test_cases)
