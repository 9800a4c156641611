"""The back-end passes refuse zero-size tensors with a clean error (a batch-0 attention was a
ZeroDivisionError inside tile, a K=0 matmul one inside lower-to-dataflow)."""

from __future__ import annotations

import pytest

from attnc.errors import AttncError
from attnc.ir import parse_module
from attnc.pipeline import run_pipeline

ATTENTION = """func.func @main(%q: tensor<0x4x8x16xf32> {attnc.name = "q"}, %m: tensor<1x1x8x8xi1> {attnc.name = "m"}) -> (tensor<0x4x8x16xf32> {attnc.name = "o"}) {
  %o = sparse.attention %q, %q, %q mask %m : tensor<1x1x8x8xi1> {scale = 0.25 : f64, heads = 4 : i64, kv_heads = 4 : i64, causal, causal_offset = 0 : i64, softcap = 0.0 : f64} : tensor<0x4x8x16xf32>, tensor<0x4x8x16xf32>, tensor<0x4x8x16xf32> -> tensor<0x4x8x16xf32>
  func.return %o : tensor<0x4x8x16xf32>
}
"""

MATMUL = """func.func @main(%x: tensor<4x0xf32> {attnc.name = "x"}, %w: tensor<0x8xf32> {attnc.name = "w"}) -> (tensor<4x8xf32> {attnc.name = "y"}) {
  %y = sparse.matmul %x, %w : tensor<4x0xf32>, tensor<0x8xf32> -> tensor<4x8xf32>
  func.return %y : tensor<4x8xf32>
}
"""


@pytest.mark.parametrize("text, op", [(ATTENTION, "sparse.attention"), (MATMUL, "sparse.matmul")])
@pytest.mark.parametrize("spec", ["fuse-attention,tile{arch=tiny}", "fuse-attention{mode=per-head},tile{arch=tiny}",
                                  "lower-to-dataflow{arch=tiny}"])  # fmt: skip
def test_empty_tensors_are_refused(text: str, op: str, spec: str) -> None:
    with pytest.raises(AttncError) as e:
        run_pipeline(parse_module(text), spec)
    assert op in str(e.value) and "empty (zero-size)" in str(e.value) and spec.split(",")[-1].split("{")[0] in str(e.value)
