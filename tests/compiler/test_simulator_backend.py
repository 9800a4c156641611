"""ONNX's Attention node cases (``onnx.backend.test``) through ``SimulatorBackend``: import, compile
for ``cloud`` (heuristic placement, CP-SAT only if it fails), encode, decode, simulate.

Which cases run: every ``test_attention*`` node case, ``*_expanded`` variants included, plus every node
case of a few other ops the lowering turns into kernels (SUBSET_OPS; split checks outputs that several DMA
stores read from one stream). Cases that cannot run are in EXCLUDED with the reason; they fail in the
compiler, not in the simulator.

Tolerance: each case's own rtol/atol, except that f16 and bf16 outputs may differ by two units in the
last place near 1: the lowering unfuses attention into per-head kernels (Q·Kᵀ, scale, softmax, ·V)
that round to f16/bf16 after each kernel, where ONNX's reference rounds once. On those cases the
simulator equals the reference interpreter run on the lowered (dataflow) IR exactly.
"""

from __future__ import annotations

import re
import warnings

import numpy as np
import pytest
from onnx import TensorProto
from onnx.backend.test.loader import load_model_tests

from attnc.frontend.onnx import MIN_OPSET
from attnc.onnx_backend import SimulatorBackend

SUBSET_OPS = ["softmax", "layer_normalization", "gelu", "matmul", "einsum", "trilu", "where", "split"]

EXCLUDED: dict[str, str] = {
    f"test_split_to_sequence_{n}": "SplitToSequence: sequences are outside attnc's tensor-only IR"
    for n in ("1", "2", "nokeepdims")
}
for _name in ("test_attention_4d_gqa_with_past_and_present", "test_attention_3d_gqa_with_past_and_present"):
    EXCLUDED[_name] = "cannot map onto cloud: the past-value DMA load needs more bandwidth than a DMA tile's links carry"

_PATTERN = re.compile(rf"^test_(attention|{'|'.join(SUBSET_OPS)})(_.*)?$")
# an ulp near 1 is 2**-10 (f16) and 2**-7 (bf16, in the test below); allow two
_LOW_PRECISION_ATOL = {np.dtype(np.float16): 2 * 2.0**-10}

with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # the case generators warn about their own inf/nan data
    CASES = sorted((c for c in load_model_tests(kind="node") if _PATTERN.match(c.name)), key=lambda c: c.name)


def _rule(case) -> str | None:
    """Reasons that follow from a case's model alone."""
    opset = {o.domain or "": o.version for o in case.model.opset_import}.get("", 0)
    if opset < MIN_OPSET:
        return f"opset {opset}: attnc imports opset {MIN_OPSET} and newer"
    for v in (*case.model.graph.input, *case.model.graph.output):
        t = v.type.tensor_type.elem_type if v.type.HasField("tensor_type") else None
        if t in (TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2, TensorProto.STRING, None):
            return "element type outside attnc's types"
    return None


def _params():
    out = []
    for c in CASES:
        why = EXCLUDED.get(c.name) or _rule(c)
        marks = [pytest.mark.skip(reason=why)] if why else []
        out.append(pytest.param(c, id=c.name, marks=marks))
    return out


def _bf16(case) -> bool:
    return any(v.type.tensor_type.elem_type == TensorProto.BFLOAT16 for v in case.model.graph.output)


@pytest.mark.parametrize("case", _params())
def test_node_case_on_simulator(case) -> None:
    inputs, expected = case.data_sets[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = SimulatorBackend.prepare(case.model).run(inputs)
    assert len(got) == len(expected)
    for g, want in zip(got, expected):
        want = np.asarray(want)
        assert g.shape == want.shape
        atol = case.atol
        if _bf16(case):
            atol = max(atol, 2 * 2.0**-7)
        atol = max(atol, _LOW_PRECISION_ATOL.get(want.dtype, 0.0))
        np.testing.assert_allclose(
            np.asarray(g, np.float64), np.asarray(want, np.float64), rtol=case.rtol, atol=atol, equal_nan=True
        )
