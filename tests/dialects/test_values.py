"""Exact semantics of the tensor encodings (attnc.dialects.values.project)."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from attnc.dialects.encoding import (
    BlockEncodingAttr,
    ButterflyEncodingAttr,
    CompressedEncodingAttr,
    DynamicMaskEncodingAttr,
    NMEncodingAttr,
)
from attnc import butterfly as bf
from attnc.dialects.values import EncodingError, bitrev_permutation, from_numpy, project, to_numpy
from xdsl.dialects.builtin import BFloat16Type

floats = st.floats(-100, 100, allow_nan=False, width=32)


@settings(max_examples=50, deadline=None)
@given(x=arrays(np.float32, (4, 8), elements=floats), nm=st.sampled_from([(1, 4), (2, 4), (2, 8), (4, 8)]),
       axis=st.sampled_from([0, 1]))
def test_nm_keeps_the_n_largest_of_every_group(x, nm, axis):
    n, m = nm
    if x.shape[axis] % m:
        return
    y = project(x, NMEncodingAttr(n, m, axis))
    groups = np.moveaxis(y, axis, -1).reshape(-1, m)
    src = np.moveaxis(x, axis, -1).reshape(-1, m)
    assert ((groups != 0).sum(-1) <= n).all()
    # kept values are the originals, and no dropped value is larger than a kept one
    kept = groups != 0
    assert np.array_equal(groups[kept], src[kept])
    for g, s in zip(groups, src):
        order = np.argsort(-np.abs(s), kind="stable")
        assert set(np.flatnonzero(g)) <= set(order[:n])
    assert np.array_equal(project(y, NMEncodingAttr(n, m, axis)), y)  # idempotent


def test_block_zeroes_absent_blocks():
    x = np.arange(32, dtype=np.float32).reshape(4, 8) + 1
    y = project(x, BlockEncodingAttr([2, 4], [2, 2], [1, 0, 0, 1]))
    assert (y[:2, :4] == x[:2, :4]).all() and (y[2:, 4:] == x[2:, 4:]).all()
    assert not y[:2, 4:].any() and not y[2:, :4].any()


def test_dynamic_topk_and_threshold():
    x = np.array([[3.0, 1.0, 2.0, 2.0], [0.0, -1.0, 5.0, 4.0]], dtype=np.float32)
    y = project(x, DynamicMaskEncodingAttr("topk", k=2, axis=-1, fill=-np.inf))
    assert y.tolist() == [[3.0, -np.inf, 2.0, -np.inf], [-np.inf, -np.inf, 5.0, 4.0]]
    y = project(x, DynamicMaskEncodingAttr("threshold", threshold=2.0, axis=-1, fill=0.0))
    assert y.tolist() == [[3.0, 0.0, 2.0, 2.0], [0.0, 0.0, 5.0, 4.0]]


def test_compressed_keeps_values():
    x = np.eye(4, dtype=np.float32)
    assert project(x, CompressedEncodingAttr(["dense", "compressed"])) is x


@pytest.mark.parametrize("kind, factors, block, n", [("monarch", 2, 4, 16), ("monarch", 2, 2, 8), ("block", 3, 1, 8),
                                                    ("block", 2, 3, 12)])  # fmt: skip
def test_butterfly_encoding_keeps_a_matrix_of_its_structure(kind, factors, block, n):
    sts = bf.stages(kind, n, factors, block)
    m = bf.matrix(bf.random_factors(sts, n, np.random.default_rng(0)), sts, n)
    y = project(m.astype(np.float32), ButterflyEncodingAttr(factors, block, kind=kind))
    np.testing.assert_allclose(y, m, rtol=1e-4, atol=1e-4)


def test_monarch_projection_is_nearest():
    rng = np.random.default_rng(1)
    a = rng.standard_normal((16, 16))
    p = project(a, ButterflyEncodingAttr(2, 4, kind="monarch"))
    # the residual is orthogonal to the projection (blockwise rank-1 SVD truncation)
    assert abs(np.sum((a - p) * p)) < 1e-8
    assert np.linalg.norm(a - p) < np.linalg.norm(a)


def test_butterfly_bitrev_permutes_the_input_index():
    n = 8
    sts = bf.stages("block", n, 3, 1)
    m = bf.matrix(bf.random_factors(sts, n, np.random.default_rng(2)), sts, n)
    inv = np.argsort(bitrev_permutation(n))
    np.testing.assert_allclose(project(m[inv], ButterflyEncodingAttr(3, 1, perm="bitrev")), m[inv], atol=1e-10)


def test_butterfly_encoding_rejects_a_size_it_cannot_have():
    with pytest.raises(EncodingError, match="power of two"):
        project(np.eye(12, dtype=np.float32), ButterflyEncodingAttr(2, 5))


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64, np.int64, np.int32, np.int8, np.uint8, np.bool_])
def test_constants_round_trip(dtype):
    x = (np.arange(12).reshape(3, 4) % 3).astype(dtype)
    y = to_numpy(from_numpy(x))
    assert y.dtype == x.dtype and np.array_equal(x, y)


def test_bf16_constants_round_to_nearest_even():
    x = np.array([1.0, 1.00390625, 3.14159], dtype=np.float32)
    y = to_numpy(from_numpy(x, BFloat16Type()))
    assert y.tolist() == [1.0, 1.0, 3.140625]
