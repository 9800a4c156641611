"""attnc.butterfly: stages, exact recovery of butterfly and Monarch matrices, the FFT as stages,
and the projection's error as the structure grows."""

import numpy as np
import pytest

from attnc import butterfly as bf


def exact(kind, n, factors, block, seed=0):
    sts = bf.stages(kind, n, factors, block)
    return bf.matrix(bf.random_factors(sts, n, np.random.default_rng(seed)), sts, n)


def to_interleaved(z):
    return np.stack([z.real, z.imag], axis=-1).reshape(*z.shape[:-1], 2 * z.shape[-1])


def from_interleaved(y):
    return y[..., 0::2] + 1j * y[..., 1::2]


@pytest.mark.parametrize("kind,n,factors,block", [
    ("block", 16, 4, 1), ("block", 48, 3, 3), ("monarch", 24, 2, 4), ("monarch", 12, 2, 3),
])  # fmt: skip
def test_apply_is_x_times_matrix(kind, n, factors, block):
    sts = bf.stages(kind, n, factors, block)
    ws = bf.random_factors(sts, n, np.random.default_rng(1))
    x = np.random.default_rng(2).standard_normal((3, 5, n))
    np.testing.assert_allclose(bf.apply(x, ws, sts), x @ bf.matrix(ws, sts, n), rtol=1e-12, atol=1e-12)


def test_stage_acts_on_the_strided_pairs_it_names():
    # radix 2, stride 2, block 1 on n = 8: positions p and p + 2 within each half of 4 pair up
    st = bf.Stage(2, 2, 1)
    assert st.weight_shape(8) == (2, 2, 2, 2)
    w = np.zeros(st.weight_shape(8))
    w[..., 0, 1] = w[..., 1, 0] = 1.0  # swap the pair
    np.testing.assert_array_equal(bf.apply_stage(np.arange(8.0), w, st), [2, 3, 0, 1, 6, 7, 4, 5])


@pytest.mark.parametrize("n,block", [(8, 1), (16, 1), (64, 2), (48, 3), (768, 3)])
def test_block_butterflies_are_recovered_exactly_at_every_factor_count(n, block):
    lv = bf.levels(n, block)
    for factors in range(1, lv + 1):
        w = exact("block", n, factors, block, seed=factors)
        fit = bf.project(w, "block", factors, block)
        assert fit.error < 1e-6, (factors, fit.error)
        np.testing.assert_allclose(bf.matrix(fit.weights, fit.stages, n), w, atol=1e-6 * np.abs(w).max())
        # the family is nested: the full butterfly holds it too
        assert bf.project(w, "block", lv, block).error < 1e-6


def test_a_float32_butterfly_is_recovered_to_float32_precision():
    w = exact("block", 768, 8, 3, seed=7).astype(np.float32)
    assert bf.project(w, "block", 8, 3).error < 1e-6


@pytest.mark.parametrize("n,block", [(12, 3), (16, 4), (48, 6), (64, 8), (768, 24)])
def test_monarch_matrices_are_recovered_exactly(n, block):
    w = exact("monarch", n, 2, block, seed=n)
    fit = bf.project(w, "monarch", 2, block)
    assert fit.error < 1e-6
    assert [st for st in fit.stages] == [bf.Stage(block, 1, 1), bf.Stage(n // block, block, 1)]


def test_projection_error_does_not_grow_with_factors_or_block():
    rng = np.random.default_rng(11)
    for n in (64, 96, 768):
        w = rng.standard_normal((n, n))
        b0 = bf.fit_block(n, 1)
        by_factors = [bf.project(w, "block", f, b0).error for f in range(1, bf.levels(n, b0) + 1)]
        assert all(b <= a + 1e-12 for a, b in zip(by_factors, by_factors[1:])), by_factors
        assert by_factors[-1] < by_factors[0]
        blocks = [b0 << i for i in range(bf.levels(n, b0))]  # 3, 6, 12, ... for 96 and 768
        full = [bf.project(w, "block", bf.levels(n, b), b).error for b in blocks]
        assert all(b <= a + 1e-12 for a, b in zip(full, full[1:])), full
        two = [bf.project(w, "block", 2, b).error for b in blocks if bf.levels(n, b) >= 2]
        assert all(b <= a + 1e-12 for a, b in zip(two, two[1:])), two
        assert full[-1] < 1e-9  # one factor of two n/2 blocks: the whole matrix


def test_refinement_never_increases_the_error_and_lowers_it_on_a_random_matrix():
    w = np.random.default_rng(5).standard_normal((32, 32))
    errors = [bf.project(w, "block", 5, 1, iters=k).error for k in (0, 1, 5, 30)]
    assert all(b <= a for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0] - 1e-3
    fit = bf.project(w, "block", 5, 1, iters=30)
    assert 0 < fit.iterations <= 30
    # on an exact butterfly there is nothing to gain, and nothing is lost
    e = exact("block", 32, 5, 1)
    assert bf.project(e, "block", 5, 1, iters=10).error < 1e-6


def test_refinement_works_on_monarch_too():
    w = np.random.default_rng(6).standard_normal((36, 36))
    e0 = bf.project(w, "monarch", 2, 6).error
    assert bf.project(w, "monarch", 2, 6, iters=10).error <= e0  # closed form: already a stationary point


def test_counts():
    sts = bf.stages("block", 1024, 10, 1)
    assert bf.mac_count(sts, 1024) == 2 * 1024 * 10
    assert bf.param_count(sts, 1024) == 2 * 1024 * 10
    assert bf.mac_count(bf.stages("block", 768, 8, 3), 768) == 768 * 6 * 8
    assert bf.mac_count(bf.stages("block", 1024, 3, 1), 1024) == 2 * 1024 * 3
    mon = bf.stages("monarch", 768, 2, 24)
    assert bf.mac_count(mon, 768) == 768 * 24 + 768 * 32
    assert bf.param_count(mon, 768) == 32 * 24 * 24 + 24 * 32 * 32
    assert bf.Stage(2, 4, 3).weight_shape(48) == (2, 4, 6, 6)
    assert [bf.fit_block(768, b) for b in (1, 3, 4, 7, 13)] == [3, 3, 6, 12, 24]
    assert bf.fit_block(1024, 1) == 1 and bf.fit_block(7, 1) == 7
    assert bf.levels(768, 3) == 8


@pytest.mark.parametrize("args,msg", [
    (("block", 12, 2, 1), "not block 1 times a power of two"),
    (("block", 16, 5, 1), "1..4 factors, not 5"),
    (("block", 16, 0, 1), "not 0"),
    (("monarch", 16, 3, 4), "2 factors, not 3"),
    (("monarch", 16, 2, 5), "does not divide"),
    (("dft", 16, 2, 1), "unknown butterfly kind"),
])  # fmt: skip
def test_impossible_structures_are_refused(args, msg):
    with pytest.raises(bf.ButterflyError, match=msg):
        bf.stages(*args)


def test_project_refuses_a_rectangular_weight():
    with pytest.raises(bf.ButterflyError, match="square"):
        bf.project(np.ones((4, 8)), "block", 2, 1)


@pytest.mark.parametrize("n", [8, 12, 7, 768, 2048])
def test_fft_stages_compute_numpy_fft(n):
    rng = np.random.default_rng(n)
    z = rng.standard_normal((3, n)) + 1j * rng.standard_normal((3, n))
    sts, ws, order = bf.fft_stages(n)
    assert sorted(order.tolist()) == list(range(n))
    assert all(st.block == 2 for st in sts) and np.prod([st.radix for st in sts]) == n
    y = from_interleaved(bf.apply(to_interleaved(z), ws, sts))
    dft = np.empty_like(y)
    dft[..., order] = y  # position p holds frequency order[p]
    want = np.fft.fft(z)
    np.testing.assert_allclose(dft, want, atol=1e-9 * np.abs(want).max())


def test_fourier_is_the_real_part_of_fft2_and_the_stages_compute_it():
    x = np.random.default_rng(0).standard_normal((2, 12, 8)).astype(np.float32)
    got = bf.fourier(x, (-2, -1))
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, np.fft.fft2(x).real, rtol=1e-5, atol=1e-4)
    # the same mixing as FFT stages: along the hidden axis, then along the sequence axis
    z = x.astype(np.complex128)
    for axis in (-1, -2):
        zt = np.moveaxis(z, axis, -1)
        sts, ws, order = bf.fft_stages(zt.shape[-1])
        y = from_interleaved(bf.apply(to_interleaved(zt), ws, sts))
        freq = np.empty_like(y)
        freq[..., order] = y
        z = np.moveaxis(freq, -1, axis)
    np.testing.assert_allclose(z.real, got, rtol=1e-5, atol=1e-4)


def test_top_svd_is_lapacks_truncated_svd():
    rng = np.random.default_rng(4)
    wide = rng.standard_normal((5, 3, 6, 40))
    low = rng.standard_normal((4, 6, 2)) @ rng.standard_normal((4, 2, 40))  # rank 2 < k = 3
    zero = np.zeros((2, 6, 40))
    for x in (wide, low, zero):
        u, s, vt = bf._top_svd(x, 3)
        ru, rs, rvt = np.linalg.svd(x, full_matrices=False)
        ru, rs, rvt = ru[..., :3], rs[..., :3], rvt[..., :3, :]
        np.testing.assert_allclose(s, rs, rtol=1e-10, atol=1e-12)
        # vectors agree up to the sign of each pair
        sign = np.sign(np.sum(u * ru, axis=-2))[..., None, :]
        np.testing.assert_allclose(u * sign, ru, atol=1e-9)
        np.testing.assert_allclose(vt * np.swapaxes(sign, -1, -2), rvt, atol=1e-9)
    # blocks the Gram matrix cannot resolve are LAPACK's own
    u, s, vt = bf._top_svd(low, 3)
    ru, rs, rvt = np.linalg.svd(low, full_matrices=False)
    np.testing.assert_array_equal(vt, rvt[..., :3, :])


def test_a_rank_deficient_matrix_projects_finitely():
    w = np.random.default_rng(8).standard_normal((96, 3)) @ np.random.default_rng(9).standard_normal((3, 96))
    for factors in (1, 2, 4, 5):
        fit = bf.project(w, "block", factors, 3)
        assert np.isfinite(fit.error) and fit.error < 1
    z = np.zeros((48, 48))
    assert bf.project(z, "block", 4, 3).error == 0.0


@pytest.mark.parametrize("n,block,runs", [(768, 3, [3, 3, 2]), (768, 3, [2, 2, 2, 2]), (64, 1, [6]), (96, 3, [1, 4])])
def test_merged_stages_compute_what_the_stages_did(n, block, runs):
    """Joinable consecutive stages merged into one give the same result as applied one after the other."""
    rng = np.random.default_rng(0)
    sts = bf.stages("block", n, bf.levels(n, block), block)
    ws = bf.random_factors(sts, n, rng)
    x = rng.standard_normal((3, n))
    mw, ms, i = [], [], 0
    for r in runs:
        w, st = bf.merge(ws[i : i + r], sts[i : i + r])
        assert st == bf.Stage(2**r, sts[i].stride, block) and w.shape == st.weight_shape(n)
        mw.append(w)
        ms.append(st)
        i += r
    np.testing.assert_allclose(bf.apply(x, mw, ms), bf.apply(x, ws, sts), rtol=1e-10, atol=1e-12)


def test_only_joinable_stages_merge():
    """Stages join when they have one block and the second's stride is the first's times its radix; a stride
    gap or another block is refused."""
    a, b, c = bf.Stage(2, 1, 3), bf.Stage(2, 2, 3), bf.Stage(2, 4, 3)
    assert bf.joinable(a, b) and bf.joinable(b, c) and not bf.joinable(a, c)
    assert not bf.joinable(a, bf.Stage(2, 2, 6))
    with pytest.raises(bf.ButterflyError):
        bf.merge([np.zeros(a.weight_shape(24)), np.zeros(c.weight_shape(24))], [a, c])
