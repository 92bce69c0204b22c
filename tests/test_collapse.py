"""Activation diagnostics (METRICS.md §4 diagnostics, §5) against float64 numpy re-implementations
of the formulas and transcriptions of the reference code:

- lightly's ``std_of_l2_normalized`` (lightly/utils/debug.py):
  ``torch.std(torch.nn.functional.normalize(z, dim=1), dim=0).mean()``;
- facebookresearch/directclr's spectrum: ``np.cov`` of the normalised embeddings, eigenvalues, log;
- twistedcubic/attention-rank-collapse ``paper-plotting/utils.py``: ``composite_norm(x) =
  sqrt(l1_matrix_norm(x) * linf_matrix_norm(x))`` with ``l1_matrix_norm = |x|.sum(-2).max(-1)``,
  and ``compute_low_rank(x, k=1)`` (the rank-1 SVD truncation) for center="rank1".

Tolerances: both sides compute in float64. Sums of N ≤ 10³ terms carry at most ~N·eps64 ≈ 2e-13
relative error (√N·eps typically), so RTOL = 1e-11 leaves a 50× margin and still catches any
formula difference (ddof, a missing 1/N, a different norm), which changes results at O(1/N) or more.
Eigenvalues of a symmetric d × d matrix carry absolute error ~d·eps64·λ₁ on either side.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rankscope.collapse as rc
import torch
from conftest import EPS64, to_framework

RTOL = 1e-11


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _close(got, ref, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(_np(got).astype(np.float64), ref, rtol=rtol, atol=atol)


def _check_form(got, framework: str):
    """Results come back in the caller's framework, float64."""
    if framework == "torch":
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64
    else:
        assert not isinstance(got, torch.Tensor) and np.asarray(got).dtype == np.float64


# ---- references -------------------------------------------------------------------------------------


def ref_normalize(z: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(z, axis=1, keepdims=True)
    return np.where(n > 0, z / np.where(n > 0, n, 1), 0.0)


def ref_feature_std(z: np.ndarray, gamma: float) -> tuple[float, float, np.ndarray]:
    std = np.array([np.std(z[:, j], ddof=1) for j in range(z.shape[1])])
    return std.mean(), np.mean(std < gamma), std


def lightly_std_of_l2_normalized(z: np.ndarray) -> float:
    """lightly.utils.debug.std_of_l2_normalized, transcribed (torch, float64)."""
    zt = torch.from_numpy(z)
    z_norm = torch.nn.functional.normalize(zt, dim=1)
    return float(torch.std(z_norm, dim=0).mean())


def ref_mean_pairwise_cosine(z: np.ndarray) -> float:
    """The O(N² d) definition: mean over i ≠ j of cos(z_i, z_j), 0 where a row is zero."""
    u = ref_normalize(z)
    c = u @ u.T
    n = len(z)
    return (c.sum() - np.trace(c)) / (n * (n - 1))


def directclr_spectrum(z: np.ndarray) -> np.ndarray:
    """directclr's dimensional-collapse plot: eigenvalues of np.cov of the normalised rows."""
    u = ref_normalize(z)
    c = np.cov(u.T) if z.shape[1] > 1 else np.array([[np.var(u[:, 0], ddof=1)]])
    return np.clip(np.sort(np.linalg.eigvalsh(c))[::-1], 0, None)


def ref_entropy_rows(a: np.ndarray, keep: np.ndarray | None = None, eps=None, normalized=False):
    """−Σ p ln p row by row, with explicit Python loops (0 ln 0 = 0)."""
    flat = a.reshape(-1, a.shape[-1])
    kf = np.ones_like(flat, dtype=bool) if keep is None else np.broadcast_to(keep, a.shape).reshape(flat.shape)
    out = []
    for row, k in zip(flat, kf):
        p = row[k]
        if p.size == 0:
            out.append(np.nan)
            continue
        h = -sum(x * math.log(x + eps) for x in p) if eps is not None else -sum(x * math.log(x) for x in p if x > 0)
        if normalized:
            h = h / math.log(p.size) if p.size > 1 else 0.0
        out.append(h)
    return np.array(out).reshape(a.shape[:-1])


def twisted_composite_norm(x: torch.Tensor) -> torch.Tensor:
    """attention-rank-collapse paper-plotting/utils.py, transcribed."""
    l1 = x.abs().sum(axis=-2 % x.ndim).max(axis=-1).values
    linf = x.transpose(-2, -1).abs().sum(axis=-2 % x.ndim).max(axis=-1).values
    return torch.sqrt(l1 * linf)


def ref_token_rank(x: np.ndarray, center: str) -> float:
    if center == "mean":
        res = x - x.mean(axis=0)
    else:  # compute_low_rank(x, k=1)
        u, s, vh = np.linalg.svd(x, full_matrices=False)
        res = x - s[0] * np.outer(u[:, 0], vh[0])
    # numpy's ord=1 / ord=inf matrix norms are the induced ones (max column / row sum)
    num = math.sqrt(np.linalg.norm(res, 1) * np.linalg.norm(res, np.inf))
    den = math.sqrt(np.linalg.norm(x, 1) * np.linalg.norm(x, np.inf))
    return num / den if den > 0 else 0.0


def softmax(x: np.ndarray, axis=-1) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ---- engineered inputs --------------------------------------------------------------------------------


def healthy(rng, n, d):
    return rng.standard_normal((n, d)) * rng.uniform(0.5, 2.0, d) + rng.standard_normal(d)


def dim_collapsed(rng, n, d, r):
    """Rows spanning an r-dimensional subspace (dimensional collapse) plus an offset."""
    return rng.standard_normal((n, r)) @ rng.standard_normal((r, d)) + 0.0


def fully_collapsed(rng, n, d):
    """Every row a positive multiple of one direction (complete collapse)."""
    v = rng.standard_normal(d)
    return rng.uniform(0.5, 3.0, (n, 1)) * v


# ---- feature_std / std_of_l2_normalized / mean_pairwise_cosine ------------------------------------------


@pytest.mark.parametrize("shape", [(2, 1), (2, 3), (33, 7), (97, 31), (5, 64)])
def test_diagnostics_against_references(rng, framework, shape):
    z = healthy(rng, *shape)
    z[rng.integers(0, shape[0])] = 0.0  # a zero row: stays zero after normalisation
    x = to_framework(z, framework)
    before = _np(x).copy()
    gamma = float(rng.uniform(0.5, 2.0))
    got = rc.feature_std(x, gamma=gamma)
    mean, frac, std = ref_feature_std(z, gamma)
    _close(got["mean_std"], mean)
    _close(got["frac_below_gamma"], frac)
    _close(got["std"], std)
    for v in got.values():
        _check_form(v, framework)
    _close(rc.std_of_l2_normalized(x), lightly_std_of_l2_normalized(z))
    _close(rc.mean_pairwise_cosine(x), ref_mean_pairwise_cosine(z), atol=16 * EPS64)
    _check_form(rc.mean_pairwise_cosine(x), framework)
    np.testing.assert_array_equal(_np(x), before)  # the input is not modified


def test_collapsed_embeddings(rng, framework):
    n, d = 50, 16
    full = to_framework(fully_collapsed(rng, n, d), framework)
    assert abs(float(rc.std_of_l2_normalized(full))) < 1e-15
    assert float(rc.mean_pairwise_cosine(full)) == pytest.approx(1.0, abs=1e-14)
    assert float(rc.feature_std(full)["mean_std"]) > 0  # the raw scale still varies
    # an isotropic cloud: std of the normalised rows about 1/√d, cosines about 0
    iso = to_framework(rng.standard_normal((4000, d)), framework)
    assert float(rc.std_of_l2_normalized(iso)) == pytest.approx(1 / math.sqrt(d), rel=0.05)
    assert abs(float(rc.mean_pairwise_cosine(iso))) < 0.01
    # constant features: std 0 and every dimension below gamma
    const = to_framework(np.tile(rng.standard_normal(d), (n, 1)), framework)
    fs = rc.feature_std(const)
    assert float(fs["mean_std"]) < 1e-15 and float(fs["frac_below_gamma"]) == 1.0


def test_batched_and_ragged(rng, framework):
    z = rng.standard_normal((2, 3, 20, 6))
    x = to_framework(z, framework)
    fs = rc.feature_std(x)
    s2 = rc.std_of_l2_normalized(x)
    mc = rc.mean_pairwise_cosine(x)
    assert tuple(fs["std"].shape) == (2, 3, 6) and tuple(s2.shape) == (2, 3) and tuple(mc.shape) == (2, 3)
    for i in range(2):
        for j in range(3):
            _close(fs["mean_std"][i, j], ref_feature_std(z[i, j], 1.0)[0])
            _close(s2[i, j], lightly_std_of_l2_normalized(z[i, j]))
            _close(mc[i, j], ref_mean_pairwise_cosine(z[i, j]), atol=16 * EPS64)
    mats = [rng.standard_normal((n, d)) for n, d in ((5, 3), (9, 12), (2, 1))]
    got = rc.std_of_l2_normalized([to_framework(m, framework) for m in mats])
    assert isinstance(got, list) and len(got) == 3
    for g, m in zip(got, mats):
        _close(g, lightly_std_of_l2_normalized(m))


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_scale_invariant_diagnostics_at_extreme_float64_scales(rng, framework):
    """The scale-invariant diagnostics give the same value for c·Z at c = 1e±160 and 1e300 (finite
    float64 data whose squares or norm products overflow or underflow), and a collapsed cloud of
    huge rows still has cosine 1."""
    Z = rng.standard_normal((2, 7, 5))
    fns = {"cosine": rc.mean_pairwise_cosine, "std_l2": rc.std_of_l2_normalized,
           "token_rank": lambda z: rc.token_rank_collapse(z, reduce="none"),
           "spectrum": lambda z: rc.dimensional_collapse_spectrum(z)["eigenvalues"]}
    for name, fn in fns.items():
        ref = np.asarray(fn(to_framework(Z, framework)), dtype=np.float64)
        for c in (1e160, 1e-160, 1e300):
            got = np.asarray(fn(to_framework(Z * c, framework)), dtype=np.float64)
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-15, err_msg=f"{name} at {c}")
    same = to_framework(np.full((3, 2), 1e160), framework)
    assert float(rc.mean_pairwise_cosine(same)) == pytest.approx(1.0, abs=1e-14)


def test_feature_std_at_extreme_float64_scales(rng, framework):
    """feature_std is homogeneous: c·Z has std c·std(Z) (the formula in float64 on Z) for c = 1e±160,
    1e±300, where the squares of the deviations overflow or underflow; gamma scales with it."""
    Z = rng.standard_normal((2, 9, 4)) * np.array([1.0, 1e-3, 3.0, 0.5])
    ref = np.stack([ref_feature_std(z, 1.0)[2] for z in Z])
    for c in (1e160, 1e-160, 1e300, 1e-300):
        out = rc.feature_std(to_framework(Z * c, framework), gamma=0.7 * c)
        np.testing.assert_allclose(np.asarray(out["std"], dtype=np.float64), ref * c, rtol=1e-14, err_msg=f"{c}")
        np.testing.assert_allclose(np.asarray(out["mean_std"], dtype=np.float64), ref.mean(-1) * c, rtol=1e-14)
        np.testing.assert_array_equal(np.asarray(out["frac_below_gamma"], dtype=np.float64),
                                      (ref < 0.7).mean(-1))


def test_float32_and_integer_inputs(rng):
    z = rng.standard_normal((40, 8)).astype(np.float32)
    _close(rc.std_of_l2_normalized(z), lightly_std_of_l2_normalized(z.astype(np.float64)))
    zi = rng.integers(-5, 5, (30, 4))
    _close(rc.feature_std(zi)["mean_std"], ref_feature_std(zi.astype(np.float64), 1.0)[0])
    zb = torch.from_numpy(z).to(torch.bfloat16)
    _close(rc.mean_pairwise_cosine(zb), ref_mean_pairwise_cosine(zb.double().numpy()), atol=16 * EPS64)
    assert rc.mean_pairwise_cosine(zb).dtype == torch.float64
    # nested lists come back as Python floats
    assert isinstance(rc.std_of_l2_normalized(z.astype(np.float64).tolist()), float)


# ---- dimensional-collapse spectrum ---------------------------------------------------------------------


@pytest.mark.parametrize("n,d,r", [(64, 16, 16), (64, 16, 5), (10, 32, 32), (3, 2, 2), (97, 33, 1)])
def test_dimensional_collapse_spectrum(rng, framework, n, d, r):
    z = dim_collapsed(rng, n, d, r)
    got = rc.dimensional_collapse_spectrum(to_framework(z, framework))
    ev, log_ev = _np(got["eigenvalues"]), _np(got["log_eigenvalues"])
    _check_form(got["eigenvalues"], framework)
    ref = directclr_spectrum(z)
    assert ev.shape == (d,) and np.all(np.diff(ev) <= 0) and np.all(ev >= 0)
    # each side's eigenvalues carry ~d·eps64·λ₁ absolute error (c = 8 for the covariance's own rounding),
    # plus the centring's: the rows are unit vectors, so each deviation u − ū is rounded by ~eps64, and
    # the covariance by ~eps64·√λ₁ where the rows nearly coincide (λ₁ ≪ 1: 3 rows, d = 2, λ₁ = 1e-4 were
    # 50 ulps of λ₁ apart; seed 114703119574488906106817601826002352292)
    np.testing.assert_allclose(ev, ref, rtol=0, atol=8 * d * EPS64 * (ref[0] + np.sqrt(ref[0])))
    # the rank of the normalised, centred rows: min(r, n - 1) non-zero values, then a cliff
    k = min(r, n - 1, d)
    assert np.all(ev[:k] > 1e-9 * ev[0])  # far above round-off; random data is never that close
    assert np.all(ev[k:] <= 8 * d * EPS64 * (ev[0] + np.sqrt(ev[0])))
    with np.errstate(divide="ignore"):  # log 0 = -inf (equal infinities pass), no warning; torch.log and
        np.testing.assert_allclose(log_ev, np.log(ev), rtol=4 * EPS64)  # np.log may differ by an ulp
    if n - 1 < d:  # the Gram route pads exact zeros
        assert np.all(np.isneginf(log_ev[n:]))


def test_spectrum_batched(rng):
    z = rng.standard_normal((3, 12, 5))
    got = rc.dimensional_collapse_spectrum(torch.from_numpy(z))["eigenvalues"]
    assert tuple(got.shape) == (3, 5)
    for i in range(3):
        np.testing.assert_allclose(got[i].numpy(), directclr_spectrum(z[i]), atol=40 * EPS64)


# ---- attention entropy --------------------------------------------------------------------------------


@pytest.mark.parametrize("normalized", [False, True])
def test_attention_entropy_against_loops(rng, framework, normalized):
    a = softmax(3 * rng.standard_normal((2, 3, 7, 9)))
    a[0, 0, 0] = 0.0
    a[0, 0, 0, 4] = 1.0  # a one-hot row: entropy 0 (0 ln 0 = 0)
    x = to_framework(a, framework)
    got = rc.attention_entropy(x, normalized=normalized, reduce="none")
    ref = ref_entropy_rows(a, normalized=normalized)
    assert tuple(got.shape) == (2, 3, 7)
    _close(got, ref, atol=4 * EPS64)
    assert float(got[0, 0, 0]) == 0.0
    _close(rc.attention_entropy(x, normalized=normalized), ref.mean())
    _check_form(rc.attention_entropy(x), framework)
    # the eps form of some papers: −Σ A ln(A + eps)
    _close(rc.attention_entropy(x, eps=1e-6, reduce="none"), ref_entropy_rows(a, eps=1e-6), atol=4 * EPS64)


def test_attention_entropy_extremes(framework):
    k = 8
    uniform = to_framework(np.full((4, k), 1.0 / k), framework)
    _close(rc.attention_entropy(uniform), math.log(k))
    _close(rc.attention_entropy(uniform, normalized=True), 1.0)
    one_key = to_framework(np.ones((3, 1)), framework)
    assert float(rc.attention_entropy(one_key, normalized=True)) == 0.0


def test_attention_entropy_mask(rng, framework):
    q, k = 6, 10
    lengths = np.array([10, 4, 1])  # key-padding: the last sequence has one key
    keep = np.arange(k)[None, None, :] < lengths[:, None, None]  # (3, 1, k) broadcasts over queries
    logits = np.where(keep, rng.standard_normal((3, q, k)), -np.inf)
    a = softmax(logits)
    x = to_framework(a, framework)
    m = torch.from_numpy(keep) if framework == "torch" else keep
    got = rc.attention_entropy(x, mask=m, normalized=True, reduce="none")
    ref = ref_entropy_rows(a, keep, normalized=True)
    _close(got, ref, atol=4 * EPS64)
    assert np.all(_np(got)[2] == 0.0)  # one key → 0
    # a fully masked row: NaN, left out of the mean
    keep2 = np.ones((q, k), bool)
    keep2[0] = False
    a2 = softmax(rng.standard_normal((q, k)))
    a2[0] = 0.0
    x2 = to_framework(a2, framework)
    m2 = torch.from_numpy(keep2) if framework == "torch" else keep2
    rows = _np(rc.attention_entropy(x2, mask=m2, reduce="none"))
    assert np.isnan(rows[0]) and np.all(np.isfinite(rows[1:]))
    _close(rc.attention_entropy(x2, mask=m2), rows[1:].mean())


def test_attention_row_sum_tolerance():
    k = 16
    # a bfloat16 row may sum to 0.998: accepted (tolerance 4·eps(bfloat16) = 0.031)
    a = torch.full((2, k), 1.0 / k)
    a[0, 0] -= 0.002
    assert torch.isfinite(rc.attention_entropy(a.to(torch.bfloat16)))
    # the same error in float32 (tolerance 1e-3) is not a distribution
    with pytest.raises(ValueError, match=r"sum to 1.*index \(0,\)"):
        rc.attention_entropy(a)
    with pytest.raises(ValueError, match="sum to 1"):
        rc.attention_entropy(torch.full((2, k), 0.9 / k).to(torch.bfloat16))
    with pytest.raises(ValueError, match="negative"):
        rc.attention_entropy(np.array([[1.5, -0.5]]))
    with pytest.raises(ValueError, match="reduce"):
        rc.attention_entropy(np.eye(3), reduce="sum")
    with pytest.raises(TypeError, match="boolean"):
        rc.attention_entropy(np.eye(3), mask=np.ones((3, 3)))
    with pytest.raises(ValueError, match="broadcast"):
        rc.attention_entropy(np.eye(3), mask=np.ones((2, 3), bool))


# ---- token rank collapse ------------------------------------------------------------------------------


@pytest.mark.parametrize("center", ["mean", "rank1"])
def test_token_rank_collapse_against_references(rng, framework, center):
    x = rng.standard_normal((2, 3, 11, 7)) + rng.standard_normal(7)
    got = rc.token_rank_collapse(to_framework(x, framework), center=center, reduce="none")
    assert tuple(got.shape) == (2, 3)
    ref = np.array([[ref_token_rank(x[i, j], center) for j in range(3)] for i in range(2)])
    _close(got, ref)
    _close(rc.token_rank_collapse(to_framework(x, framework), center=center), ref.mean())
    if center == "mean":  # the paper's plotting code, batched over (B, N, E)
        xt = torch.from_numpy(x)
        twisted = twisted_composite_norm(xt - xt.mean(dim=-2, keepdim=True)) / twisted_composite_norm(xt)
        _close(got, twisted.numpy())


def test_token_rank_collapse_engineered(rng, framework):
    n, d = 20, 8
    base = rng.standard_normal(d)
    for noise in (1e-1, 1e-3, 1e-6):
        x = base + noise * rng.standard_normal((n, d))
        r = float(rc.token_rank_collapse(to_framework(x, framework)))
        assert r < 20 * noise  # collapse to one token: r → 0 with the noise
    rank1 = np.outer(rng.standard_normal(n), rng.standard_normal(d))
    assert float(rc.token_rank_collapse(to_framework(rank1, framework), center="rank1")) < 1e-13
    assert float(rc.token_rank_collapse(to_framework(np.zeros((n, d)), framework))) == 0.0
    one = to_framework(rng.standard_normal((1, d)), framework)
    assert float(rc.token_rank_collapse(one)) == 0.0


# ---- errors and NaN ---------------------------------------------------------------------------------


def test_errors(framework):
    one_row = to_framework(np.ones((1, 4)), framework)
    for fn in (rc.feature_std, rc.std_of_l2_normalized, rc.mean_pairwise_cosine, rc.dimensional_collapse_spectrum):
        with pytest.raises(ValueError, match="N = 1"):
            fn(one_row)
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            fn(to_framework(np.ones(4), framework))
    with pytest.raises(TypeError, match="complex"):
        rc.feature_std(np.ones((3, 2), complex))
    with pytest.raises(ValueError, match="center"):
        rc.token_rank_collapse(np.ones((3, 2)), center="median")
    with pytest.raises(ValueError, match="gamma"):
        rc.feature_std(np.ones((3, 2)), gamma=float("nan"))


def test_check_finite(rng, framework):
    z = rng.standard_normal((2, 3, 10, 4))
    z[1, 2, 5, 1] = np.nan
    x = to_framework(z, framework)
    for fn in (rc.std_of_l2_normalized, rc.mean_pairwise_cosine, rc.token_rank_collapse):
        with pytest.raises(ValueError, match=r"batch index \(1, 2\)"):
            fn(x)
    got = _np(rc.std_of_l2_normalized(x, check_finite=False))
    assert np.isnan(got[1, 2]) and np.isfinite(np.delete(got.reshape(-1), 5)).all()
    _close(got[0, 0], lightly_std_of_l2_normalized(z[0, 0]))
    spec = _np(rc.dimensional_collapse_spectrum(x, check_finite=False)["eigenvalues"])
    assert np.isnan(spec[1, 2]).all() and np.isfinite(spec[0]).all()
    r = _np(rc.token_rank_collapse(x, check_finite=False, reduce="none"))
    assert np.isnan(r[1, 2]) and np.isfinite(r[0]).all()


def test_attention_entropy_check_finite(framework):
    # the NaN matrix gives NaN rows (and a NaN mean); its zeroed rows used to fail the row-sum check
    a = np.full((2, 3, 3, 4), 0.25)
    a[1, 0, 2, 1] = np.nan
    a[0, 2, 1] = np.inf
    x = to_framework(a, framework)
    with pytest.raises(ValueError, match=r"batch index \(0, 2\)"):
        rc.attention_entropy(x)
    got = _np(rc.attention_entropy(x, check_finite=False, reduce="none"))
    bad = np.zeros((2, 3), bool)
    bad[1, 0] = bad[0, 2] = True
    assert np.isnan(got[bad]).all()
    np.testing.assert_allclose(got[~bad], math.log(4), rtol=1e-15)
    assert math.isnan(float(rc.attention_entropy(x, check_finite=False)))
    m = np.ones(4, bool)
    _close(_np(rc.attention_entropy(x, mask=m, check_finite=False, reduce="none"))[0, 0], np.full(3, math.log(4)))
    with pytest.raises(ValueError, match="sum to 1"):  # the good matrices are still checked
        rc.attention_entropy(to_framework(np.where(bad[..., None, None], a, 0.2), framework), check_finite=False)


def test_numpy_scalar_options(rng, framework):
    # numpy real scalars are numbers (numbers.Real); bool is not
    z = to_framework(rng.standard_normal((10, 4)), framework)
    ref = rc.feature_std(z, gamma=1.0)
    for g in (np.float32(1), np.float64(1), np.int64(1), 1):
        _close(_np(rc.feature_std(z, gamma=g)["frac_below_gamma"]), _np(ref["frac_below_gamma"]))
    a = to_framework(np.full((3, 4), 0.25), framework)
    _close(_np(rc.attention_entropy(a, eps=np.float32(1e-6))), float(_np(rc.attention_entropy(a, eps=1e-6))),
           rtol=1e-7)  # float32(1e-6) differs from 1e-6 in the 8th digit
    st = rc.ActivationStats(4, gamma=np.float32(0.5), rankme_eps=np.float64(1e-7))
    assert st.gamma == 0.5
    for bad in (True, np.bool_(False), float("inf"), "1"):
        with pytest.raises(ValueError, match="gamma must be a finite number"):
            rc.feature_std(z, gamma=bad)
    with pytest.raises(ValueError, match="eps must be"):
        rc.attention_entropy(a, eps=np.float32(-1))


def test_activation_stats_check_finite(rng, framework):
    # check_finite=False: a NaN/Inf batch makes every statistic NaN (it used to raise LinAlgError)
    z = rng.standard_normal((12, 4))
    zb = z.copy()
    zb[7, 2] = np.inf
    with pytest.raises(ValueError, match="NaN or Inf"):
        _stream(rc.ActivationStats(4), zb, (5, 7), framework)
    for sizes in ((5, 7), (12,)):  # the bad batch first or later
        res = _stream(rc.ActivationStats(4, check_finite=False), zb, sizes, framework)
        assert res["n_samples"] == 12
        for k, v in res.items():
            if k != "n_samples":
                assert np.isnan(_np(v)).all(), k
        assert _np(res["std"]).shape == (4,) and _np(res["eigenvalues"]).shape == (4,)
    st = rc.ActivationStats(4, check_finite=False)
    st.update(to_framework(zb, framework))
    st.reset()  # forgets the bad batch too
    ref = _stream(st, z, (12,), framework)
    _close(_np(ref["mean_std"]), float(_np(rc.feature_std(z)["mean_std"])))


# ---- ActivationStats ------------------------------------------------------------------------------


def _stream(stats, z, sizes, framework):
    i = 0
    for s in sizes:
        stats.update(to_framework(z[i:i + s], framework))
        i += s
    assert i == len(z)
    return stats.compute()


@pytest.mark.parametrize("n,d", [(100, 8), (40, 64)])
def test_activation_stats_matches_one_shot(rng, framework, n, d):
    z = np.concatenate([healthy(rng, n // 2, d), dim_collapsed(rng, n - n // 2, d, 3)])
    z[3] = 0.0
    sizes = [1, 7, 33][: 2] + [n - 8]
    got = _stream(rc.ActivationStats(d, gamma=0.8), z, sizes, framework)
    zz = to_framework(z, framework)
    assert got["n_samples"] == n
    fs = rc.feature_std(zz, gamma=0.8)
    for key in ("mean_std", "frac_below_gamma", "std"):
        _close(got[key], _np(fs[key]), rtol=1e-10)
        _check_form(got[key], framework)
    _close(got["std_of_l2_normalized"], lightly_std_of_l2_normalized(z), rtol=1e-10)
    _close(got["mean_pairwise_cosine"], ref_mean_pairwise_cosine(z), rtol=1e-10, atol=64 * EPS64)
    # RankMe from the eigenvalues of ZᵀZ (float64): each of the k = min(N, d) singular values is off
    # by at most √(2·d·eps64)·σ₁ (the eigenvalues by 2·d·eps64·σ₁²), so each p = σ/Σσ by that over
    # Σσ, and H = −Σ p ln p (p ≥ rankme_eps = 1e-7, |ln p| ≤ 16.2) by Σ|δp|·(1 + |ln p|): a bound on
    # the relative error of exp(H). It matters here: Z is rank-deficient and the zero singular
    # values come out of the Gram route at ~1e-8·σ₁ (METRICS.md §0).
    import rankscope as rs

    s = np.linalg.svd(z, compute_uv=False)
    tol = len(s) * math.sqrt(2 * d * EPS64) * s[0] / s.sum() * (1 + math.log(1e7))
    _close(got["rankme"], float(rs.rankme(z)), rtol=tol)
    ev = directclr_spectrum(z)
    np.testing.assert_allclose(_np(got["eigenvalues"]), ev, rtol=0, atol=16 * d * EPS64 * ev[0])


@pytest.mark.parametrize("c", [1e160, 1e-160, 1e300, 1e-300])
def test_activation_stats_at_extreme_float64_scales(rng, framework, c):
    """Batches of c·Z, where the squares and ZᵀZ overflow or underflow (before: inf stds and
    LinAlgError from ZᵀZ = inf): the stds are c times the formula's on Z, the scale-invariant
    statistics (including RankMe and the spectrum) are the stream's own values for Z."""
    n, d = 90, 5
    z = healthy(rng, n, d) * np.array([1.0, 3.0, 0.5, 1e-2, 1.0])
    ref = _stream(rc.ActivationStats(d, gamma=0.8), z, [30, 30, 30], framework)
    got = _stream(rc.ActivationStats(d, gamma=0.8 * c), z * c, [30, 30, 30], framework)
    _close(got["std"], ref_feature_std(z, 0.8)[2] * c, rtol=1e-12)
    _close(got["mean_std"], ref_feature_std(z, 0.8)[0] * c, rtol=1e-12)
    _close(got["frac_below_gamma"], _np(ref["frac_below_gamma"]), rtol=0)
    for key in ("std_of_l2_normalized", "mean_pairwise_cosine", "rankme", "eigenvalues"):
        _close(got[key], _np(ref[key]), rtol=1e-12, atol=1e-15)


def test_activation_stats_large_offset(rng, framework):
    """A common offset of 1e8: the raw moments Σz² − (Σz)²/N lose every digit of the variance
    (each Σz² term is 1e16 × the variance); moments shifted by the first batch's mean do not."""
    n, d = 600, 4
    z = 1e8 + rng.standard_normal((n, d))
    got = _stream(rc.ActivationStats(d), z, [200, 200, 200], framework)
    ref = ref_feature_std(z, 1.0)[2]
    _close(got["std"], ref, rtol=1e-9)
    raw_var = ((z * z).sum(0) - z.sum(0) ** 2 / n) / (n - 1)
    assert np.max(np.abs(np.sqrt(np.abs(raw_var)) - ref) / ref) > 0.1  # the raw formula really fails


def test_activation_stats_rows_from_leading_dims(rng):
    z = rng.standard_normal((4, 5, 6))  # (batch, tokens, d): every (batch, token) is a row
    st = rc.ActivationStats(6)
    st.update(z)
    _close(st.compute()["mean_std"], ref_feature_std(z.reshape(-1, 6), 1.0)[0], rtol=1e-10)


def test_activation_stats_errors(rng):
    st = rc.ActivationStats(3)
    with pytest.raises(ValueError, match="at least 2"):
        st.compute()
    st.update(np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2"):
        st.compute()
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        st.update(np.ones((4, 2)))
    with pytest.raises(ValueError, match="earlier batches"):
        st.update(torch.ones(2, 3))
    with pytest.raises(ValueError, match="NaN"):
        st.update(np.full((2, 3), np.nan))
    st.reset()
    st.update(torch.ones(2, 3))  # a fresh start may change framework
    with pytest.raises(ValueError, match="d must be"):
        rc.ActivationStats(0)


# ---- GPU (a lent GPU runs these with -m cuda) -------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
def test_cuda_matches_cpu(rng):
    z = rng.standard_normal((3, 40, 12))
    zc = torch.from_numpy(z).cuda()
    for fn in (rc.std_of_l2_normalized, rc.mean_pairwise_cosine, rc.token_rank_collapse):
        got = fn(zc)
        assert got.device.type == "cuda"
        _close(got, _np(fn(z)), rtol=1e-10, atol=1e-15)
    _close(rc.dimensional_collapse_spectrum(zc)["eigenvalues"],
           _np(rc.dimensional_collapse_spectrum(z)["eigenvalues"]), rtol=0, atol=1e-13)
    a = softmax(rng.standard_normal((2, 5, 7)))
    _close(rc.attention_entropy(torch.from_numpy(a).cuda(), normalized=True), rc.attention_entropy(a, normalized=True))
    st = rc.ActivationStats(12)
    for part in zc.reshape(-1, 12).split(17):
        st.update(part)
    res = st.compute()
    assert res["rankme"].device.type == "cuda"
    _close(res["mean_pairwise_cosine"], ref_mean_pairwise_cosine(z.reshape(-1, 12)), rtol=1e-10, atol=1e-14)
    with pytest.raises(ValueError, match="earlier batches"):
        st.update(z[0])
