"""Butterfly and Monarch matrices, and the FFT, as chains of stages (numpy).

Every structured matrix here is a product of *stages*. A stage with radix ``r``,
stride ``s`` and block ``e`` acts on the last axis (length ``n``) of its input, seen
as ``[g, r, s, e]`` with ``g = n / (r s e)``: for every ``(G, S)`` it multiplies the
``r·e`` values ``x[G, :, S, :]`` by its own ``(r·e) x (r·e)`` matrix ``w[G, S]``:

    y[G, ρ, S, ε] = Σ_{ρ', ε'} w[G, S, ρ·e + ε, ρ'·e + ε'] · x[G, ρ', S, ε']

so ``w`` has shape ``[g, s, r·e, r·e]`` and a stage costs ``n·r·e`` multiply-adds per
row. The structures built from stages (``kind`` of ``#sparse.butterfly``):

* ``block`` (Dao et al. 2019, block form): ``n = b·2^L``; factor ``i`` (``i = 0 ..
  F-1``, applied first to last) is the stage ``(2, 2^i, b)``: it pairs block ``p`` with
  block ``p + 2^i`` through a ``2b x 2b`` matrix. ``F = L`` is the full butterfly
  (``2 b n L`` MACs); fewer factors are its first ``F`` factors, a block-diagonal
  matrix whose blocks are full ``b·2^F`` butterflies. The family is nested: more
  factors or a larger block can only lower the projection error.
* ``monarch`` (Dao et al. 2022): two factors, ``(b, 1, 1)`` then ``(n/b, b, 1)``;
  block-diagonal ``R`` with ``n/b`` blocks of ``b x b`` and ``P L Pᵀ`` with ``b``
  blocks of ``n/b x n/b``. Its projection from dense is closed-form.

The *matrix* of a factor list is the ``W`` with ``x @ W == apply(x, factors)``, the
layout of an ONNX ``MatMul`` weight. The FFT of length ``n`` (any factorisation into
primes) is a chain of complex stages in decimation-in-frequency order, run on
interleaved (re, im) values as real stages of block 2, then a digit-reversal gather.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

KINDS = ("block", "monarch")


@dataclass(frozen=True)
class Stage:
    radix: int
    stride: int
    block: int

    @property
    def width(self) -> int:
        return self.radix * self.block

    def weight_shape(self, n: int) -> tuple[int, int, int, int]:
        k = self.width
        return (n // (k * self.stride), self.stride, k, k)

    def macs(self, n: int) -> int:
        """Multiply-adds per row of length ``n``."""
        return n * self.width


class ButterflyError(ValueError):
    """A size, block or factor count that the structure cannot have."""


def log2_exact(m: int) -> int | None:
    return m.bit_length() - 1 if m > 0 and m & (m - 1) == 0 else None


def levels(n: int, block: int) -> int:
    """L with ``n = block · 2^L``."""
    if block < 1 or n % block or (lv := log2_exact(n // block)) is None:
        raise ButterflyError(f"size {n} is not block {block} times a power of two")
    return lv


def fit_block(n: int, block: int) -> int:
    """The smallest block >= ``block`` that a size-``n`` butterfly can have (``n / b`` a
    power of two); a hidden size of 768 takes blocks 3, 6, 12, 24, ..."""
    for b in range(max(1, block), n + 1):
        if n % b == 0 and log2_exact(n // b) is not None:
            return b
    return n


def stages(kind: str, n: int, factors: int, block: int) -> list[Stage]:
    """The stages of a ``kind`` structure of size ``n`` (see the module docstring)."""
    if kind == "monarch":
        if factors != 2:
            raise ButterflyError(f"a Monarch matrix has 2 factors, not {factors}")
        if block < 1 or n % block:
            raise ButterflyError(f"Monarch block {block} does not divide size {n}")
        return [Stage(block, 1, 1), Stage(n // block, block, 1)]
    if kind != "block":
        raise ButterflyError(f"unknown butterfly kind {kind!r} (expected one of {', '.join(KINDS)})")
    lv = levels(n, block)
    if not 1 <= factors <= max(lv, 1):
        raise ButterflyError(f"a size-{n} butterfly with block {block} has 1..{max(lv, 1)} factors, not {factors}")
    if lv == 0:  # n == block: one dense block
        return [Stage(1, 1, block)]
    return [Stage(2, 1 << i, block) for i in range(factors)]


# ---------------------------------------------------------------------------
# applying stages


def apply_stage(x: np.ndarray, w: np.ndarray, st: Stage) -> np.ndarray:
    """One stage on the last axis of ``x`` (computed in ``x``'s dtype)."""
    n = x.shape[-1]
    g, s, k, _ = st.weight_shape(n)
    lead = x.shape[:-1]
    xv = x.reshape(*lead, g, st.radix, s, st.block)
    xv = np.swapaxes(xv, -3, -2).reshape(*lead, g, s, k)  # [..., g, s, r·e]
    yv = np.matmul(w.astype(x.dtype, copy=False), xv[..., None])[..., 0]
    yv = yv.reshape(*lead, g, s, st.radix, st.block)
    return np.swapaxes(yv, -3, -2).reshape(x.shape)


def apply(x: np.ndarray, weights: list[np.ndarray], sts: list[Stage]) -> np.ndarray:
    for w, st in zip(weights, sts, strict=True):
        x = apply_stage(x, w, st)
    return x


def joinable(a: Stage, b: Stage) -> bool:
    """Whether stage ``b`` right after ``a`` is, with it, one stage (:func:`merge`): same block, and ``b``
    mixes the digit just above the ones ``a`` mixes (its stride is ``a``'s stride times ``a``'s radix)."""
    return a.block == b.block and b.stride == a.stride * a.radix


def merge(weights: list[np.ndarray], sts: list[Stage]) -> tuple[np.ndarray, Stage]:
    """Consecutive joinable stages as one: ``(r_1 r_2 ..., s_1, e)``, its weight the product of theirs
    (float64). Exact (``apply`` gives the same up to rounding); the merged stage's ``n·r_1 r_2 ...·e``
    multiply-adds per row equal the stages' summed ``n·(r_1 + r_2 + ...)·e`` for two radix-2 stages and
    exceed them beyond. Merging ``a`` (radix ``p``, stride ``s``) and ``b`` (radix ``q``, stride ``s p``):
    the merged radix digit is ``q``'s digit times ``p`` plus ``p``'s, and for every ``(G, S)``

        w[G, S, (β, α, ε), (β'', α'', ε'')] = Σ_δ w_b[G, α s + S, (β, ε), (β'', δ)] · w_a[G q + β'', S, (α, δ), (α'', ε'')]
    """
    w, st = np.asarray(weights[0], dtype=np.float64), sts[0]
    for wb, nb in zip(weights[1:], sts[1:], strict=True):
        if not joinable(st, nb):
            raise ButterflyError(f"stages {st} and {nb} do not merge")
        p, q, s, e = st.radix, nb.radix, st.stride, st.block
        g = w.shape[0] // q
        wa = w.reshape(g, q, s, p, e, p, e)  # [G, β'', S, α, δ, α'', ε'']
        wbr = np.asarray(wb, dtype=np.float64).reshape(g, p, s, q, e, q, e)  # [G, α, S, β, ε, β'', δ]
        m = np.einsum("gasbcqd,gqsadze->gsbacqze", wbr, wa, optimize=True)
        st = Stage(p * q, s, e)
        w = m.reshape(g, s, st.width, st.width)
    return w, st


def _grouped(cols: np.ndarray, st: Stage) -> np.ndarray:
    """Feature-major values ``cols`` (``[n, T]``: feature ``i`` of row ``t`` at ``[i, t]``) as
    ``[g, s, r·e, T]``, the operand of one batched GEMM per stage."""
    n, t = cols.shape
    g, s, k, _ = st.weight_shape(n)
    return np.swapaxes(cols.reshape(g, st.radix, s, st.block, t), 1, 2).reshape(g, s, k, t)


def _ungrouped(yv: np.ndarray, st: Stage) -> np.ndarray:
    g, s, _, t = yv.shape
    return np.swapaxes(yv.reshape(g, s, st.radix, st.block, t), 1, 2).reshape(-1, t)


def _identity_through(weights: list[np.ndarray], sts: list[Stage], n: int) -> list[np.ndarray]:
    """The stages applied to the identity, feature-major: ``[I, W_1ᵀ, (W_1 W_2)ᵀ, ...]``.
    The ``n`` rows are the columns of one batched GEMM per stage instead of ``n·g·s`` tiny
    matrix-vector products (50x faster than ``apply`` at n = 768)."""
    out = [np.eye(n)]
    for w, st in zip(weights, sts, strict=True):
        out.append(_ungrouped(np.matmul(w.astype(np.float64, copy=False), _grouped(out[-1], st)), st))
    return out


def matrix(weights: list[np.ndarray], sts: list[Stage], n: int) -> np.ndarray:
    """The dense ``W`` (``x @ W == apply(x, ...)``) of a factor list, in float64."""
    return np.ascontiguousarray(_identity_through(weights, sts, n)[-1].T)


def param_count(sts: list[Stage], n: int) -> int:
    return sum(int(np.prod(st.weight_shape(n))) for st in sts)


def mac_count(sts: list[Stage], n: int) -> int:
    """Multiply-adds per row."""
    return sum(st.macs(n) for st in sts)


def random_factors(sts: list[Stage], n: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Factors whose product keeps unit scale (each block scaled by 1/sqrt(width))."""
    return [rng.standard_normal(st.weight_shape(n)) / math.sqrt(st.width) for st in sts]


# ---------------------------------------------------------------------------
# projecting a dense matrix onto a structure


def _top_svd(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ``k`` leading singular triples ``(u, s, vt)`` of every matrix of the stack ``x``
    (``[..., r, c]``, ``r <= c``), as ``np.linalg.svd`` truncated to ``k`` gives them (up to
    rounding and the signs of the vectors), 2x faster for the many small, wide blocks of a
    butterfly projection: ``u`` from the eigenvectors of the ``r x r`` Gram matrix, then
    ``uᵀx = s·vt``. The Gram matrix resolves ``u_k`` to about ``eps·(s_1/s_k)²``, so where
    ``s_k < 1e-3·s_1`` (a rank-deficient block, say, whose null rows LAPACK completes)
    those matrices go through LAPACK's SVD instead, and the result is the same to ~1e-10."""
    _, vec = np.linalg.eigh(x @ np.swapaxes(x, -1, -2))  # eigenvalues ascending
    u = vec[..., ::-1][..., :k]
    proj = np.swapaxes(u, -1, -2) @ x  # s·vt
    s = np.linalg.norm(proj, axis=-1)
    weak = ~(s[..., -1] > 1e-3 * s[..., 0])
    vt = proj / np.where(weak[..., None], 1.0, s)[..., None]
    if weak.any():
        su, ss, svt = np.linalg.svd(x[weak], full_matrices=False)
        u[weak], s[weak], vt[weak] = su[..., :k], ss[..., :k], svt[..., :k, :]
    return u, s, vt


def _monarch(a: np.ndarray, b: int) -> list[np.ndarray]:
    """Closed-form Frobenius-nearest Monarch factors of the operator ``a`` (y = a x):
    ``a[l·b + j, k·b + i] = w2[0, j, l, k] · w1[k, 0, j, i]``, so each ``(j, k)`` slice over
    ``(l, i)`` is rank one and one SVD per slice projects exactly (Dao et al. 2022). The
    ``b·n/b`` SVDs run as one batched call."""
    n = a.shape[0]
    m = n // b
    slices = a.reshape(m, b, m, b).transpose(1, 2, 0, 3)  # [j, k, l, i]
    u, s, vt = np.linalg.svd(slices, full_matrices=False)
    root = np.sqrt(s[..., 0])  # [j, k]
    w2 = (root[..., None] * u[..., :, 0]).transpose(0, 2, 1)[None]  # [1, j, l, k]
    w1 = (root[..., None] * vt[..., 0, :]).transpose(1, 0, 2)[:, None]  # [k, 1, j, i]
    return [np.ascontiguousarray(w1), np.ascontiguousarray(w2)]


def _block_split(a: np.ndarray, b: int, lv: int) -> list[np.ndarray]:
    """Hierarchical projection of the operators ``a[p]`` (``P`` of size ``b·2^lv``) onto
    full block butterflies: the top factor mixes the two halves and everything below acts
    on each half alone, so for every position ``S`` and input half ``q`` the rows
    ``a[(·, S, ·), (q, ·)]`` factor as (top-factor columns, 2b x b) times (b rows of the
    half's operator): a rank-``b`` truncated SVD per (S, q), then the halves are split the
    same way. Exact when ``a`` is a block butterfly; a projection otherwise. Each level is
    one batched SVD over every (problem, S, q); problem ``p``'s half ``q`` becomes problem
    ``2p + q`` of the next level, which is the order of the G axis of the lower factors."""
    tops = []
    while lv > 1:
        p, n = a.shape[0], a.shape[1]
        half, s = n // 2, n // (2 * b)
        rows = a.reshape(p, 2, s, b, 2, half)  # [p, ρ, S, ε, q, input within the half]
        blk = rows.transpose(0, 2, 4, 1, 3, 5).reshape(p, s, 2, 2 * b, half)  # [p, S, q, (ρ, ε), input]
        u, sv, vt = _top_svd(blk, b)
        cols = u[..., :b] * sv[..., None, :b]  # [p, S, q, 2b, b]: the top factor's columns of half q
        tops.append(cols.transpose(0, 1, 3, 2, 4).reshape(p, s, 2 * b, 2 * b))
        a = vt[..., :b, :].transpose(0, 2, 1, 3, 4).reshape(2 * p, half, half)  # [p, q, (S, ε), input]
        lv -= 1
    return [a.reshape(a.shape[0], 1, 2 * b, 2 * b).copy()] + tops[::-1]


def _block_project(a: np.ndarray, b: int, factors: int) -> list[np.ndarray]:
    """First ``factors`` block-butterfly factors of operator ``a``: its block diagonal (blocks
    of ``b·2^factors``) projected block by block."""
    n = a.shape[0]
    w = b << factors
    diag = np.stack([a[i : i + w, i : i + w] for i in range(0, n, w)])
    return _block_split(diag, b, factors)


@dataclass
class Fit:
    weights: list[np.ndarray]
    stages: list[Stage]
    error: float  # ||W - W_fit||_F / ||W||_F
    iterations: int


def project(w: np.ndarray, kind: str, factors: int, block: int, *, iters: int = 0) -> Fit:
    """Project the weight ``w`` (``n x n``, ``x @ w`` layout) onto a structure. Monarch is
    closed-form; block butterflies start from the hierarchical SVD split and, with
    ``iters > 0``, are refined by gradient steps with a backtracking line search that
    only ever lowers the error."""
    n = w.shape[0]
    if w.shape != (n, n):
        raise ButterflyError(f"a butterfly weight is square, got {w.shape}")
    sts = stages(kind, n, factors, block)
    a = np.asarray(w, dtype=np.float64).T  # operator form, y = a x
    if kind == "monarch":
        ws = _monarch(a, block)
    elif sts[0].radix == 1:
        ws = [a.reshape(1, 1, n, n).copy()]
    else:
        ws = _block_project(a, block, factors)
    norm = float(np.linalg.norm(w)) or 1.0
    ws, done = refine(np.asarray(w, dtype=np.float64), ws, sts, iters)
    err = float(np.linalg.norm(matrix(ws, sts, n) - w)) / norm
    return Fit(ws, sts, err, done)


def _grads(target: np.ndarray, ws: list[np.ndarray], sts: list[Stage]) -> tuple[float, list[np.ndarray]]:
    """Loss ½||I·stages - target||² and its gradient per factor (reverse mode through the
    stages, feature-major as in :func:`matrix`)."""
    acts = _identity_through(ws, sts, target.shape[0])
    up = acts[-1] - target.T  # d loss / d output, feature-major
    loss = 0.5 * float(np.sum(up * up))
    grads: list[np.ndarray] = [np.empty(0)] * len(ws)
    for i in range(len(ws) - 1, -1, -1):
        uv, xv = _grouped(up, sts[i]), _grouped(acts[i], sts[i])
        grads[i] = np.matmul(uv, np.swapaxes(xv, -1, -2))  # Σ_t u[a, t] x[b, t]
        up = _ungrouped(np.matmul(np.swapaxes(ws[i], -1, -2), uv), sts[i])
    return loss, grads


def refine(target: np.ndarray, ws: list[np.ndarray], sts: list[Stage], iters: int) -> tuple[list[np.ndarray], int]:
    """Up to ``iters`` steepest-descent steps on the Frobenius error (backtracking: a step
    is taken only if it lowers the error, so the result is never worse than the start)."""
    if iters <= 0:
        return ws, 0
    loss, grads = _grads(target, ws, sts)
    lr, done = 1.0, 0
    for done in range(1, iters + 1):
        gn = sum(float(np.sum(g * g)) for g in grads)
        if gn < 1e-24 * max(loss, 1e-300) or loss == 0.0:
            break
        while lr > 1e-12:
            trial = [w - lr * g for w, g in zip(ws, grads)]
            tl, tg = _grads(target, trial, sts)
            if tl < loss - 1e-4 * lr * gn:
                ws, loss, grads = trial, tl, tg
                lr *= 2.0
                break
            lr *= 0.5
        else:
            break
    return ws, done


# ---------------------------------------------------------------------------
# the FFT as complex stages


def prime_radices(n: int) -> list[int]:
    """Radices of a mixed-radix FFT of length ``n``: its prime factors, 2s first."""
    out, m, p = [], n, 2
    while m > 1:
        while m % p == 0:
            out.append(p)
            m //= p
        p += 1 if p == 2 else 2
        if p * p > m and m > 1:
            out.append(m)
            break
    return out


def _real_block(c: np.ndarray) -> np.ndarray:
    """The real (2k x 2k) matrix of a complex (k x k) one on interleaved (re, im) values."""
    k = c.shape[-1]
    out = np.zeros((*c.shape[:-2], 2 * k, 2 * k))
    out[..., 0::2, 0::2] = c.real
    out[..., 0::2, 1::2] = -c.imag
    out[..., 1::2, 0::2] = c.imag
    out[..., 1::2, 1::2] = c.real
    return out


def fft_stages(n: int) -> tuple[list[Stage], list[np.ndarray], np.ndarray]:
    """(stages, real weights, order) computing ``numpy.fft.fft`` of length ``n`` on
    interleaved complex values ``[re0, im0, re1, im1, ...]`` (last axis 2n): stage ``t``
    splits each contiguous sub-transform of length ``m = r·m'`` into ``r`` of length
    ``m'`` (decimation in frequency, twiddles folded into the stage matrices), which
    leaves frequency ``order[p]`` at position ``p``."""
    sts: list[Stage] = []
    ws: list[np.ndarray] = []
    m = n
    for r in prime_radices(n):
        mm = m // r  # stride: positions j2 within a sub-transform
        j1 = np.arange(r)
        k1 = np.arange(r)
        j2 = np.arange(mm)
        # W[j2, k1, j1] = ω_m^{j2·k1} · ω_r^{j1·k1}, ω_x = exp(-2πi/x)
        c = np.exp(-2j * np.pi * (np.outer(j2, k1)[:, :, None] / m + np.outer(k1, j1)[None, :, :] / r))
        blk = _real_block(c)  # [mm, 2r, 2r] acting on (ρ, re/im)
        g = n // m
        ws.append(np.broadcast_to(blk, (g, mm, 2 * r, 2 * r)).copy())
        sts.append(Stage(r, mm, 2))
        m = mm
    order = np.zeros(1, dtype=np.int64)
    for r in reversed(prime_radices(n)):
        # a length r·m' transform leaves k1 + r·k2 at position k1·m' + (position of k2)
        order = (np.arange(r)[:, None] + r * order[None, :]).reshape(-1)
    return sts, ws, order


def fourier(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """FNet mixing, the reference: the real part of the DFT over ``axes``."""
    return np.fft.fftn(x, axes=axes).real.astype(x.dtype)
