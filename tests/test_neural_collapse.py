"""Neural-collapse metrics (METRICS.md §6) against float64 numpy implementations of the formulas and
transcriptions of the two reference implementations:

- Papyan, Han & Donoho's notebook (the `analysis()` function copied into most NC code): class means
  M (d × C), μ_G = mean of the class means, Σ_W from per-sample outer products / N,
  Σ_B = M̃M̃ᵀ/C, ``svds(Sb, k=C-1)`` and tr(Σ_W Σ_B⁻¹) without / C; CoV of the centred mean norms
  and of the classifier row norms (torch.std, ddof 1); the "coherence" Σ|cos + 1/(C−1)|/(C(C−1))
  of means and classifier rows; ‖Wᵀ/‖W‖ − M̃/‖M̃‖‖²; the NCC mismatch against argmax of the
  network's logits (with bias).
- rhubarbwu/neural-collapse (neural_collapse/measure.py, kernels.py, util.py, accumulate.py):
  ``covariance_pinv``/``variability_pinv`` with V_inter = M̃ᵀM̃ / K (the current code; older
  versions divided by D) and torch's pinv, ``covariance_ratio``, ``variability_cdnv`` with
  ``symm_reduce`` (mean over i < j), ``simplex_etf_error`` and ``self_duality_error`` via
  ``structure_error``, and the DecAccumulator's NCC-vs-argmax(XWᵀ) agreement (no bias).

Tolerances: everything on both sides is float64. Traces, norms and sums over N ≤ 10³ samples agree
to ~N·eps64 relative; NC1 adds the pseudo-inverse, whose kept eigenvalues are well separated from
the cut in these tests, so RTOL = 1e-9 (the ratio tr(Σ_W Σ_B⁺) amplifies rounding by the
condition number of the kept part of Σ_B, ≤ 10² here) leaves a wide margin while any formula
difference (a /K, ddof, a different μ_G) changes the results at O(1/K) or O(1/N).
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import rankscope.neural_collapse as nc
import torch
from conftest import EPS32, EPS64, to_framework
from scipy.sparse.linalg import svds

RTOL = 1e-9


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _close(got, ref, rtol=RTOL, atol=0.0):
    np.testing.assert_allclose(_np(got).astype(np.float64), ref, rtol=rtol, atol=atol)


def _labels(y: np.ndarray, framework: str):
    return torch.from_numpy(y) if framework == "torch" else y


# ---- engineered features ---------------------------------------------------------------------------


def simplex_etf(rng, K: int, d: int, scale: float = 1.0) -> np.ndarray:
    """K × d rows of a simplex ETF: scale·(I − 11ᵀ/K)·Uᵀ with U (d × K) orthonormal (d ≥ K)."""
    u, _ = np.linalg.qr(rng.standard_normal((d, K)))
    return scale * (np.eye(K) - 1.0 / K) @ u.T * math.sqrt(K / (K - 1))


def planted(rng, K=5, d=12, per_class=(20, 40), noise=0.3, offset=2.0, balanced=False):
    """Features = ETF class means + a common offset + Gaussian noise; labels shuffled."""
    means = simplex_etf(rng, K, d) + offset * rng.standard_normal(d)
    counts = np.full(K, per_class[0]) if balanced else rng.integers(per_class[0], per_class[1] + 1, K)
    y = rng.permutation(np.repeat(np.arange(K), counts))
    h = means[y] + noise * rng.standard_normal((len(y), d))
    return h, y, means


# ---- the formulas, in numpy float64 -------------------------------------------------------------------


def ref_stats(h, y, K, weighted=False):
    h = np.asarray(h, dtype=np.float64)
    n, d = h.shape
    mu = np.stack([h[y == c].mean(axis=0) for c in range(K)])
    counts = np.array([(y == c).sum() for c in range(K)])
    mu_g = h.mean(axis=0) if weighted else mu.mean(axis=0)
    mt = mu - mu_g
    sw = np.zeros((d, d))
    for i in range(n):
        r = h[i] - mu[y[i]]
        sw += np.outer(r, r)
    sw /= n
    sb = mt.T @ mt / K
    var_c = np.array([np.sum((h[y == c] - mu[c]) ** 2) / counts[c] for c in range(K)])
    return {"mu": mu, "mt": mt, "sw": sw, "sb": sb, "var_c": var_c, "counts": counts}


def ref_nc1(h, y, K, weighted=False, stored_eps=EPS64):
    s = ref_stats(h, y, K, weighted)
    d = h.shape[1]
    return np.trace(s["sw"] @ np.linalg.pinv(s["sb"], rcond=d * stored_eps)) / K


def ref_cdnv(s, K):
    vals = [(s["var_c"][a] + s["var_c"][b]) / (2 * np.sum((s["mu"][a] - s["mu"][b]) ** 2))
            for a in range(K) for b in range(a + 1, K)]
    return np.mean(vals)


def ref_equinorm(x):
    n = np.linalg.norm(x, axis=1)
    return np.std(n, ddof=1) / n.mean()


def ref_equiangularity(x):
    K = len(x)
    u = x / np.linalg.norm(x, axis=1, keepdims=True)
    return sum(abs(u[a] @ u[b] + 1 / (K - 1)) for a in range(K) for b in range(K) if a != b) / (K * (K - 1))


def ref_etf_error(x):
    K = len(x)
    g = x @ x.T
    return np.linalg.norm(g / np.linalg.norm(g) - (np.eye(K) - 1 / K) / math.sqrt(K - 1))


def ref_nc4(h, y, K, w, b):
    mu = np.stack([h[y == c].mean(axis=0) for c in range(K)])
    ncc = np.array([np.argmin([np.sum((x - m) ** 2) for m in mu]) for x in h])
    lin = np.argmax(h @ w.T + (0 if b is None else b), axis=1)
    return 1 - np.mean(ncc == lin)


# ---- transcriptions of the reference code ---------------------------------------------------------


def papyan_notebook(h: np.ndarray, y: np.ndarray, C: int, W: np.ndarray, b: np.ndarray) -> dict:
    """The notebook's analysis() on one 'batch' holding every sample (torch, float64)."""
    h, target, W, bias = (torch.from_numpy(h), torch.from_numpy(y), torch.from_numpy(W), torch.from_numpy(b))
    N = [0] * C
    mean = [0] * C
    Sw = 0
    NCC_match_net = 0
    M = None  # the class means (d × C), set after the 'Mean' pass
    output = h @ W.T + bias
    for computation in ("Mean", "Cov"):
        for c in range(C):
            idxs = (target == c).nonzero(as_tuple=True)[0]
            h_c = h[idxs, :]
            if computation == "Mean":
                mean[c] += torch.sum(h_c, dim=0)
                N[c] += h_c.shape[0]
            else:
                z = h_c - mean[c].unsqueeze(0)
                cov = torch.matmul(z.unsqueeze(-1), z.unsqueeze(1))
                Sw += torch.sum(cov, dim=0)
                net_pred = torch.argmax(output[idxs, :], dim=1)
                NCC_scores = torch.stack([torch.norm(h_c[i, :] - M.T, dim=1) for i in range(h_c.shape[0])])
                NCC_pred = torch.argmin(NCC_scores, dim=1)
                NCC_match_net += sum(NCC_pred == net_pred).item()
        if computation == "Mean":
            for c in range(C):
                mean[c] /= N[c]
            M = torch.stack(mean).T
        else:
            Sw /= sum(N)
    muG = torch.mean(M, dim=1, keepdim=True)
    M_ = M - muG
    Sb = torch.matmul(M_, M_.T) / C
    M_norms = torch.norm(M_, dim=0)
    W_norms = torch.norm(W.T, dim=0)
    eigvec, eigval, _ = svds(Sb.numpy(), k=C - 1, random_state=0)
    inv_Sb = eigvec @ np.diag(eigval ** (-1)) @ eigvec.T

    def coherence(V):
        G = V.T @ V
        G += torch.ones((C, C), dtype=G.dtype) / (C - 1)
        G -= torch.diag(torch.diag(G))
        return torch.norm(G, 1).item() / (C * (C - 1))

    return {
        "Sw_invSb": np.trace(Sw.numpy() @ inv_Sb),
        "norm_M_CoV": (torch.std(M_norms) / torch.mean(M_norms)).item(),
        "norm_W_CoV": (torch.std(W_norms) / torch.mean(W_norms)).item(),
        "cos_M": coherence(M_ / M_norms),
        "cos_W": coherence(W.T / W_norms),
        "W_M_dist": (torch.norm(W.T / torch.norm(W.T, "fro") - M_ / torch.norm(M_, "fro")) ** 2).item(),
        "NCC_mismatch": 1 - NCC_match_net / sum(N),
    }


class Rhubarb:
    """rhubarbwu/neural-collapse's measures, transcribed (torch, float64)."""

    @staticmethod
    def accumulate(h, y, K, weighted=False):
        X, Y = torch.from_numpy(h), torch.from_numpy(y)
        idxs = (Y[:, None] == torch.arange(K)).to(torch.float64)  # MeanAccumulator.class_idxs
        ns = idxs.sum(0)
        totals = idxs.T @ X
        eps = torch.finfo(torch.float64).eps
        avg = totals / (ns[:, None] + eps)
        avg_G = ns @ avg / (ns.sum() + eps) if weighted else avg.mean(dim=0)
        diff = X - avg[Y]  # CovarAccumulator
        V_intra = diff.mT @ diff / (ns.sum() + eps)
        V = (idxs.T @ diff**2).sum(dim=-1) / ns  # VarNormAccumulator.totals / ns_samples
        return avg, avg_G, V_intra, V

    @staticmethod
    def covariance_pinv(M, V_intra, m_G):
        (K, _), M_centred = M.shape, M - m_G
        V_inter = M_centred.mT @ M_centred / K
        return torch.trace(torch.linalg.pinv(V_inter) @ V_intra).item() / K

    @staticmethod
    def covariance_ratio(M, V_intra, m_G):
        (K, _), M_centred = M.shape, M - m_G
        V_inter = M_centred.mT @ M_centred / K
        return (torch.trace(V_intra) / torch.trace(V_inter)).item()

    @staticmethod
    def variability_cdnv(M, V):
        var_avgs = (V[:, None] + V[None, :]) / 2
        M_diff = M.unsqueeze(1) - M
        grid = var_avgs / torch.sum(M_diff * M_diff, dim=-1)
        n = grid.shape[0]
        upper = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)  # symm_reduce: mean over i < j
        return (grid[upper].sum() / (n * (n - 1) / 2)).item()

    @staticmethod
    def structure_error(A, B):
        K = A.shape[0]
        struct = B @ A.mT
        struct = struct / torch.linalg.matrix_norm(struct)
        struct = struct + 1 / K / math.sqrt(K - 1)
        struct.diagonal().sub_(1 / math.sqrt(K - 1))
        return torch.linalg.matrix_norm(struct).item()

    @staticmethod
    def agreement(h, M, W):
        X = torch.from_numpy(h)
        dots = torch.inner(X, M)
        dists = torch.norm(X, dim=-1)[:, None] ** 2 + torch.norm(M, dim=-1)[None, :] ** 2 - 2 * dots
        return (dists.argmin(-1) == (X @ W.mT).argmax(-1)).to(torch.float64).mean().item()


# ---- one-shot functions against the formulas ----------------------------------------------------------


@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_metric_against_formulas(rng, framework, weighted, dtype):
    K, d = 5, 12
    h, y, _ = planted(rng, K, d, noise=0.5)
    x = to_framework(h, framework, dtype)
    h = _np(x).astype(np.float64)  # what was stored
    before = h.copy()
    lab = _labels(y, framework)
    s = ref_stats(h, y, K, weighted)
    eps = EPS64 if dtype == "float64" else EPS32
    _close(nc.nc1(x, lab, weighted=weighted), ref_nc1(h, y, K, weighted, eps))
    _close(nc.nc1(x, lab, weighted=weighted, per_class=False), K * ref_nc1(h, y, K, weighted, eps))
    _close(nc.nc1_quotient(x, lab, weighted=weighted), np.trace(s["sw"]) / np.trace(s["sb"]))
    _close(nc.cdnv(x, lab), ref_cdnv(s, K))
    _close(nc.nc2_equinorm(x, lab, weighted=weighted), ref_equinorm(s["mt"]))
    _close(nc.nc2_equiangularity(x, lab, weighted=weighted), ref_equiangularity(s["mt"]))
    _close(nc.nc2_etf_error(x, lab, weighted=weighted), ref_etf_error(s["mt"]))
    w = rng.standard_normal((K, d))
    b = rng.standard_normal(K)
    wf, bf = to_framework(w, framework), to_framework(b, framework)
    mt = s["mt"]
    _close(nc.nc3(x, lab, wf, weighted=weighted),
           np.sum((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2))
    a = w @ mt.T
    _close(nc.nc3(x, lab, wf, variant="zhu", weighted=weighted), ref_etf_error_cross(a))
    _close(nc.nc4(x, lab, wf, bf), ref_nc4(h, y, K, w, b), atol=0)
    _close(nc.nc4(x, lab, wf, bf, bias=False), ref_nc4(h, y, K, w, None), atol=0)
    for on_w in (nc.nc2_equinorm, nc.nc2_equiangularity, nc.nc2_etf_error):
        ref = {"nc2_equinorm": ref_equinorm, "nc2_equiangularity": ref_equiangularity,
               "nc2_etf_error": ref_etf_error}[on_w.__name__](w)
        _close(on_w(on="W", W=wf), ref)
    got = nc.nc1(x, lab)
    if framework == "torch":
        assert isinstance(got, torch.Tensor) and got.dtype == torch.float64 and got.ndim == 0
    else:
        assert isinstance(got, np.floating)
    np.testing.assert_array_equal(_np(x).astype(np.float64), before)  # inputs are not modified


@pytest.mark.parametrize("c", [2.0**530, 1e300, 1e-160, 1e-300])
def test_extreme_float64_scales(rng, framework, c):
    """Finite float64 features at c·h, where squares and Gram entries overflow (c·h beyond ~1e154)
    or underflow (below ~1e-154): the scale-invariant metrics equal the formulas on h, NC4 with W/c
    (the same logits) and the class-mean rank with atol·c. Before, NC1/CDNV/NC2 came out NaN, inf
    or wrong (equiangularity 1/3 for 0.46)."""
    K, d = 4, 9
    h, y, _ = planted(rng, K, d, noise=0.5)
    s = ref_stats(h, y, K)
    w, b = rng.standard_normal((K, d)), rng.standard_normal(K)
    x, lab = to_framework(h * c, framework), _labels(y, framework)
    wc, wf, bf = to_framework(w / c, framework), to_framework(w * c, framework), to_framework(b, framework)
    mt = s["mt"]
    _close(nc.nc1(x, lab), ref_nc1(h, y, K))
    _close(nc.nc1(x, lab, variant="topk"), ref_nc1(h, y, K))  # K − 1 well-separated eigenvalues
    _close(nc.nc1_quotient(x, lab), np.trace(s["sw"]) / np.trace(s["sb"]))
    _close(nc.cdnv(x, lab), ref_cdnv(s, K))
    _close(nc.nc2_equinorm(x, lab), ref_equinorm(mt))
    _close(nc.nc2_equiangularity(x, lab), ref_equiangularity(mt))
    _close(nc.nc2_etf_error(x, lab), ref_etf_error(mt))
    _close(nc.nc2_equiangularity(on="W", W=wf), ref_equiangularity(w))
    _close(nc.nc2_etf_error(on="W", W=wf), ref_etf_error(w))
    _close(nc.nc3(x, lab, wf), np.sum((w / np.linalg.norm(w) - mt / np.linalg.norm(mt)) ** 2))
    _close(nc.nc3(x, lab, wf, variant="zhu"), ref_etf_error_cross(w @ mt.T))
    _close(nc.nc4(x, lab, wc, bf), ref_nc4(h, y, K, w, b), atol=0)
    assert int(nc.class_mean_rank(x, lab, atol=1e-6 * c)) == K
    row = nc.deep_neural_collapse([x], lab).iloc[0]
    _close(row["nc1"], ref_nc1(h, y, K))
    _close(row["cdnv"], ref_cdnv(s, K))


def ref_etf_error_cross(a):
    K = len(a)
    return np.linalg.norm(a / np.linalg.norm(a) - (np.eye(K) - 1 / K) / math.sqrt(K - 1))


def test_topk_variant(rng):
    K, d = 4, 9
    h, y, _ = planted(rng, K, d, noise=0.4)
    s = ref_stats(h, y, K)
    lam, vec = np.linalg.eigh(s["sb"])
    top = vec[:, -(K - 1):] / lam[-(K - 1):]
    _close(nc.nc1(h, y, variant="topk"), np.trace(s["sw"] @ top @ vec[:, -(K - 1):].T) / K)
    # weighted μ_G, unbalanced classes: still rank K − 1 (Σ_c N_c (μ_c − μ_G) = 0), still K − 1 kept
    sw_ = ref_stats(h, y, K, weighted=True)
    lam, vec = np.linalg.eigh(sw_["sb"])
    assert len(set(np.bincount(y))) > 1 and lam[-K] < 1e-12 * lam[-1]
    _close(nc.nc1(h, y, variant="topk", weighted=True),
           np.trace(sw_["sw"] @ (vec[:, -(K - 1):] / lam[-(K - 1):]) @ vec[:, -(K - 1):].T) / K)


# ---- against the reference implementations --------------------------------------------------------


def test_papyan_notebook(rng):
    K, d = 6, 20
    h, y, means = planted(rng, K, d, per_class=(30, 30), noise=0.4, balanced=True)
    W = means - means.mean(0) + 0.3 * rng.standard_normal((K, d))
    b = 0.1 * rng.standard_normal(K)
    ref = papyan_notebook(h, y, K, W, b)
    # svds (ARPACK, tol 0) converges to machine precision; the notebook's Sw_invSb has no / C
    _close(nc.nc1(h, y, variant="topk", per_class=False), ref["Sw_invSb"], rtol=1e-8)
    _close(nc.nc1(h, y, per_class=False), ref["Sw_invSb"], rtol=1e-8)
    _close(nc.nc2_equinorm(h, y), ref["norm_M_CoV"])
    _close(nc.nc2_equinorm(on="W", W=W), ref["norm_W_CoV"])
    _close(nc.nc2_equiangularity(h, y), ref["cos_M"])
    _close(nc.nc2_equiangularity(on="W", W=W), ref["cos_W"])
    _close(nc.nc3(h, y, W), ref["W_M_dist"])
    _close(nc.nc4(h, y, W, b), ref["NCC_mismatch"], atol=0)


@pytest.mark.parametrize("weighted", [False, True])
def test_rhubarbwu(rng, weighted):
    K, d = 7, 15
    h, y, means = planted(rng, K, d, noise=0.6)
    W = torch.from_numpy(means + 0.5 * rng.standard_normal((K, d)))
    M, m_G, V_intra, V = Rhubarb.accumulate(h, y, K, weighted)
    # torch's pinv cut-off for float64 is max(d, d)·eps64·σ₁: the METRICS rule for float64 features
    _close(nc.nc1(h, y, weighted=weighted), Rhubarb.covariance_pinv(M, V_intra, m_G), rtol=1e-8)
    _close(nc.nc1_quotient(h, y, weighted=weighted), Rhubarb.covariance_ratio(M, V_intra, m_G), rtol=1e-8)
    _close(nc.cdnv(h, y), Rhubarb.variability_cdnv(M, V), rtol=1e-8)
    _close(nc.nc2_etf_error(h, y, weighted=weighted), Rhubarb.structure_error(M - m_G, M - m_G), rtol=1e-8)
    _close(nc.nc3(h, y, W, variant="zhu", weighted=weighted), Rhubarb.structure_error(M - m_G, W), rtol=1e-8)
    _close(nc.nc4(h, y, W, bias=False), 1 - Rhubarb.agreement(h, M, W), atol=0)


# ---- engineered collapse -----------------------------------------------------------------------------


def test_planted_etf_collapses_as_noise_vanishes(rng, framework):
    K, d, n = 6, 16, 40
    means = simplex_etf(rng, K, d, scale=3.0) + 5.0 * rng.standard_normal(d)
    y = rng.permutation(np.repeat(np.arange(K), n))
    z = rng.standard_normal((K * n, d))
    W = means - means.mean(0)  # the self-dual classifier; b cancels the global mean: W(h − μ_G)
    b = -W @ means.mean(0)
    last = None
    for noise in (1e-1, 1e-3, 1e-6):
        h = to_framework(means[y] + noise * z, framework)
        lab = _labels(y, framework)
        v = float(nc.nc1(h, lab))
        assert v < 10 * noise**2  # NC1 ∝ noise²
        if last is not None:
            assert v < 1e-3 * last
        last = v
        for fn in (nc.nc2_equinorm, nc.nc2_equiangularity, nc.nc2_etf_error):
            assert float(fn(h, lab)) < 10 * noise  # the estimated means deviate by O(noise/√n)
        assert float(nc.nc3(h, lab, to_framework(W, framework))) < 10 * noise**2 + 1e-14
        assert float(nc.nc3(h, lab, to_framework(W, framework), variant="zhu")) < 10 * noise
        assert float(nc.nc4(h, lab, to_framework(W, framework), to_framework(b, framework))) == 0.0
        assert int(nc.class_mean_rank(h, lab)) == K and int(nc.class_mean_rank(h, lab, center=True)) == K - 1
    assert float(nc.cdnv(h, lab)) < 1e-10


def test_pinv_cutoff_is_the_stored_dtypes(rng):
    """Σ_B with a genuine eigenvalue 1e-8·λ₁: float64 features keep it (cut d·eps64·λ₁ ≈ 7e-15·λ₁),
    float32 features drop it (cut d·eps32·λ₁ ≈ 4e-6·λ₁: their class means are not that accurate)."""
    K, d = 4, 30
    q, _ = np.linalg.qr(np.c_[np.ones(K), rng.standard_normal((K, K - 1))])
    coords = q[:, 1:] * np.array([1.0, 1.0, 1e-4])  # K points, centred, one direction 1e-4 as long
    means = 2.0 + coords @ np.linalg.qr(rng.standard_normal((d, K - 1)))[0].T
    y = np.repeat(np.arange(K), 10)
    noise = 1e-3 * rng.standard_normal((len(y), d))
    noise -= np.stack([noise[y == c].mean(0) for c in range(K)])[y]
    h32 = (means[y] + noise).astype(np.float32)
    h64 = h32.astype(np.float64)  # the same numbers
    lam = np.linalg.eigvalsh(ref_stats(h64, y, K)["sb"])[::-1]
    assert d * EPS64 < lam[K - 2] / lam[0] < d * EPS32  # the weak eigenvalue lies between the two cuts
    v64, v32 = float(nc.nc1(h64, y)), float(nc.nc1(h32, y))
    # the reference's weak eigenvalue, from eigh of Σ_B, is accurate to eps64·λ₁/λ_weak ≈ 2e-8
    _close(v64, ref_nc1(h64, y, K, stored_eps=EPS64), rtol=1e-6)
    _close(v32, ref_nc1(h64, y, K, stored_eps=EPS32), rtol=1e-9)
    assert v64 > 1e3 * v32  # the weak direction's noise, inverted, dominates in float64


def test_numpy_default_cutoff_inverts_round_off(rng):
    """numpy's fixed pinv cut-off (rcond=1e-15) on a Σ_B formed in float32 (as float32 accumulators
    form it) inverts its round-off, ~eps32·λ₁, and NC1 explodes to ~1e9; rankscope computes in
    float64 with the d·eps(stored) cut and matches the exact value."""
    K, d = 10, 400
    h, y, _ = planted(rng, K, d, per_class=(20, 20), noise=0.3, balanced=True)
    h32 = h.astype(np.float32)
    exact = ref_nc1(h32.astype(np.float64), y, K, stored_eps=EPS32)
    _close(nc.nc1(h32, y), exact, rtol=1e-8)
    mu = np.stack([h32[y == c].mean(0) for c in range(K)])  # float32 throughout
    mt = mu - mu.mean(0)
    sb32 = (mt.T @ mt / np.float32(K)).astype(np.float64)
    sw = ref_stats(h32, y, K)["sw"]
    naive = np.trace(sw @ np.linalg.pinv(sb32, rcond=1e-15)) / K
    assert abs(naive) > 1e4 * exact


# ---- class-mean rank and deep neural collapse --------------------------------------------------------


def test_class_mean_rank(rng, framework):
    K, d, r = 6, 20, 3
    basis = rng.standard_normal((r, d))
    means = rng.standard_normal((K, r)) @ basis  # class means in an r-dimensional subspace
    y = np.repeat(np.arange(K), 5)
    h = to_framework(means[y] + 0.0, framework)
    lab = _labels(y, framework)
    assert int(nc.class_mean_rank(h, lab)) == r
    assert int(nc.class_mean_rank(h, lab, center=True)) == r  # a generic subspace need not hold 0
    shifted = to_framework(means[y] + rng.standard_normal(d), framework)  # an offset adds a dimension
    assert int(nc.class_mean_rank(shifted, lab)) == r + 1
    assert int(nc.class_mean_rank(shifted, lab, center=True)) == r
    tiny = to_framework(np.vstack([means, means[:1] + 1e-8 * rng.standard_normal(d)])[np.r_[y, [K] * 5]], framework)
    lab7 = _labels(np.r_[y, [K] * 5], framework)
    assert int(nc.class_mean_rank(tiny, lab7)) == r  # 1e-8 below atol = 1e-6
    assert int(nc.class_mean_rank(tiny, lab7, atol=1e-12)) == r + 1
    assert int(nc.class_mean_rank(tiny, lab7, atol=0, rtol=1e-3)) == r
    assert int(nc.class_mean_rank(tiny, lab7, atol=np.float32(0), rtol=np.float64(1e-3))) == r  # numpy scalars
    with pytest.raises(ValueError, match="atol"):
        nc.class_mean_rank(tiny, lab7, atol=True)
    got = nc.class_mean_rank(h, lab)
    assert (got.dtype == torch.int64) if framework == "torch" else isinstance(got, np.integer)


def test_host_class_sums_in_blocks(rng, monkeypatch):
    """Host class sums sort one block of rows at a time (bounded extra memory): with blocks of 7 rows,
    classes spanning blocks and a class absent from all of them, the sums are np.add.at's, and the
    metrics built on them agree with the one-block run."""
    import rankscope._xp as xp

    n, d, K = 103, 6, 9
    h = rng.standard_normal((n, d))
    y = rng.integers(0, K - 1, n)  # class K - 1 never occurs
    ref = np.zeros((K, d))
    np.add.at(ref, y, h)
    one_block = nc.nc1(h, y)
    monkeypatch.setattr(xp, "_CLASS_SUM_BLOCK_BYTES", 7 * 8 * d)
    np.testing.assert_allclose(xp.Ops("numpy").class_sums(h, y, K), ref, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(nc.nc1(h, y), one_block, rtol=1e-12)


def test_deep_neural_collapse(rng):
    K, d, n = 5, 10, 30
    y = rng.permutation(np.repeat(np.arange(K), n))
    means = simplex_etf(rng, K, d, 2.0) + rng.standard_normal(d)
    layers, pairs = [], []
    for noise in (1.0, 0.3, 0.1, 0.01):  # deeper layers collapse more
        pre = means[y] + noise * rng.standard_normal((K * n, d))
        layers.append(pre)
        pairs.append((pre, np.maximum(pre, 0)))
    df = nc.deep_neural_collapse(layers, y, names=["l1", "l2", "l3", "l4"])
    assert isinstance(df, pd.DataFrame) and list(df["layer"]) == ["l1", "l2", "l3", "l4"]
    assert list(df.columns) == ["layer", "stage", "d", "nc1", "nc1_quotient", "cdnv", "nc2_equinorm",
                                "nc2_equiangularity", "nc2_etf_error", "class_mean_rank", "class_mean_rank_centered"]
    assert np.all(np.diff(df["nc1"]) < 0)
    for i, x in enumerate(layers):
        _close(df["nc1"][i], float(nc.nc1(x, y)))
        _close(df["cdnv"][i], float(nc.cdnv(x, y)))
        _close(df["nc2_etf_error"][i], float(nc.nc2_etf_error(x, y)))
    assert (df["class_mean_rank"] <= K).all() and (df["class_mean_rank_centered"] <= K - 1).all()
    assert (df["class_mean_rank"] == K).all() and (df["class_mean_rank_centered"] == K - 1).all()
    dp = nc.deep_neural_collapse({"fc1": pairs[0], "fc2": torch.from_numpy(pairs[1][1]).reshape(-1, 2, 5)}, y)
    assert list(dp["stage"]) == ["pre", "post", ""] and list(dp["layer"]) == ["fc1", "fc1", "fc2"]
    _close(dp["nc1"][1], float(nc.nc1(pairs[0][1], y)))
    _close(dp["nc1"][2], float(nc.nc1(pairs[1][1], y)))  # (N, 2, 5) flattened to (N, 10)


def test_deep_neural_collapse_matches_streaming(rng, framework):
    """A layer's row and NeuralCollapse.compute() on the same data: the same metrics, in the same
    order, with the same values (float64 on both sides; 1e-10 as for streaming vs one-shot), and a
    NaN layer's row (check_finite=False) has the same columns."""
    K, d = 5, 11
    h, y, _ = planted(rng, K, d, noise=0.5)
    x, lab = to_framework(h, framework), _labels(y, framework)
    acc = nc.NeuralCollapse(K, d, passes=2)
    acc.update(x, lab)
    acc.start_second_pass()
    acc.update(x, lab)
    got = acc.compute()
    nan = to_framework(np.full_like(h, np.nan), framework)
    df = nc.deep_neural_collapse([x, nan], lab, check_finite=False)
    topk = nc.deep_neural_collapse([x], lab, variant="topk")
    names = list(df.columns[3:])
    assert list(nc.deep_neural_collapse([nan], lab, check_finite=False).columns) == list(df.columns)
    assert names == [k for k in got if k not in ("n_samples", "nc1_topk")]
    for k in names:
        if k.startswith("class_mean_rank"):
            assert df[k][0] == int(got[k]) and df[k][1] == -1
        else:
            _close(df[k][0], float(got[k]), rtol=1e-10)
            assert math.isnan(df[k][1])
    _close(topk["nc1"][0], float(got["nc1_topk"]), rtol=1e-10)


# ---- the streaming accumulator ------------------------------------------------------------------------


def _batches(rng, n, sizes=None):
    perm = rng.permutation(n)
    if sizes is None:
        cuts = np.sort(rng.choice(np.arange(1, n), 6, replace=False))
    else:
        cuts = np.cumsum(sizes)[:-1]
    return np.split(perm, cuts)


def _feed(acc, h, y, parts, framework):
    for idx in parts:
        acc.update(to_framework(h[idx], framework), _labels(y[idx], framework))


KEYS = ("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangularity", "nc2_etf_error")


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("weighted", [False, True])
def test_streaming_matches_one_shot(rng, framework, passes, weighted):
    K, d = 6, 14
    h, y, means = planted(rng, K, d, noise=0.5)
    # a class that appears only in the last batch: its shift is set late
    late = y == K - 1
    order = np.r_[np.flatnonzero(~late), np.flatnonzero(late)]
    h, y = h[order], y[order]
    parts = np.split(np.arange(len(y)), [1, 9, 40, len(y) - int(late.sum())])
    W = means + 0.2 * rng.standard_normal((K, d))
    b = 0.1 * rng.standard_normal(K)
    Wf, bf = to_framework(W, framework), to_framework(b, framework)
    kw = {"W": Wf, "b": bf} if passes == 2 else {}
    acc = nc.NeuralCollapse(K, d, passes=passes, weighted=weighted, **kw)
    _feed(acc, h, y, parts, framework)
    if passes == 2:
        assert acc.current_pass == 1
        acc.start_second_pass()
        _feed(acc, h, y, parts[::-1], framework)  # any order within the pass
    got = acc.compute(W=None if passes == 2 else Wf)
    x, lab = to_framework(h, framework), _labels(y, framework)
    assert got["n_samples"] == len(y)
    ref = {
        "nc1": nc.nc1(x, lab, weighted=weighted),
        "nc1_topk": nc.nc1(x, lab, weighted=weighted, variant="topk"),
        "nc1_quotient": nc.nc1_quotient(x, lab, weighted=weighted),
        "cdnv": nc.cdnv(x, lab),
        "nc2_equinorm": nc.nc2_equinorm(x, lab, weighted=weighted),
        "nc2_equiangularity": nc.nc2_equiangularity(x, lab, weighted=weighted),
        "nc2_etf_error": nc.nc2_etf_error(x, lab, weighted=weighted),
        "nc2_etf_error_W": nc.nc2_etf_error(on="W", W=Wf),
        "nc3": nc.nc3(x, lab, Wf, weighted=weighted),
        "nc3_zhu": nc.nc3(x, lab, Wf, variant="zhu", weighted=weighted),
    }
    for key, value in ref.items():
        _close(got[key], float(value), rtol=1e-10)
        if framework == "torch":
            assert isinstance(got[key], torch.Tensor) and got[key].dtype == torch.float64
    assert int(got["class_mean_rank"]) == K and int(got["class_mean_rank_centered"]) == K - 1
    if passes == 2:
        _close(got["nc4"], float(nc.nc4(x, lab, Wf, bf)), atol=0)
    else:
        assert "nc4" not in got
    _close(acc.class_means(), np.stack([h[y == c].mean(0) for c in range(K)]), rtol=1e-12, atol=1e-15)
    _close(acc.within_class_covariance(), ref_stats(h, y, K)["sw"], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("passes", [1, 2])
@pytest.mark.parametrize("c", [2.0**530, 1e300, 1e-160, 1e-300, 2.0**-400])
def test_streaming_at_extreme_float64_scales(rng, framework, passes, c):
    """The accumulator fed c·h (squares beyond float64's range) gives the formulas' values on h, its
    class means c·μ, and Σ_W = c²·Σ_W(h) where that is a normal float64."""
    K, d = 4, 7
    h, y, _ = planted(rng, K, d, noise=0.5)
    w, b = rng.standard_normal((K, d)), rng.standard_normal(K)
    parts = np.array_split(np.arange(len(y)), 3)
    kw = {"W": to_framework(w / c, framework), "b": to_framework(b, framework)} if passes == 2 else {}
    acc = nc.NeuralCollapse(K, d, passes=passes, **kw)
    _feed(acc, h * c, y, parts, framework)
    if passes == 2:
        acc.start_second_pass()
        _feed(acc, h * c, y, parts, framework)
    got = acc.compute()
    s = ref_stats(h, y, K)
    _close(got["nc1"], ref_nc1(h, y, K))
    _close(got["nc1_quotient"], np.trace(s["sw"]) / np.trace(s["sb"]))
    _close(got["cdnv"], ref_cdnv(s, K))
    _close(got["nc2_equinorm"], ref_equinorm(s["mt"]))
    _close(got["nc2_equiangularity"], ref_equiangularity(s["mt"]))
    _close(got["nc2_etf_error"], ref_etf_error(s["mt"]))
    if passes == 2:
        _close(got["nc4"], ref_nc4(h, y, K, w, b), atol=0)
    _close(acc.class_means(), c * np.stack([h[y == k].mean(0) for k in range(K)]), rtol=1e-12)
    if 1e-150 < c < 1e150:
        _close(acc.within_class_covariance(), c * c * s["sw"], rtol=1e-9)


def test_one_pass_avoids_catastrophic_cancellation(rng, framework):
    """Features 1e7 from the origin, class means about 1 apart, within-class noise 1e-4 (NC1 ≈ 2e-8).
    The raw one-pass form Σhhᵀ − Σ N_c μ_c μ_cᵀ subtracts numbers of size 1e14 to get 1e-8 and keeps
    nothing (measured: NC1 of ±0.1, wrong by 10⁶×); shifted moments agree with the two-pass result
    to ~1e-9 (rtol 1e-6 leaves a margin for the shift estimates' luck)."""
    K, d = 4, 6
    means = 1e7 + simplex_etf(rng, K, d)
    y = rng.permutation(np.repeat(np.arange(K), 50))
    h = means[y] + 1e-4 * rng.standard_normal((len(y), d))
    parts = _batches(rng, len(y))
    one = nc.NeuralCollapse(K, d)
    _feed(one, h, y, parts, framework)
    two = nc.NeuralCollapse(K, d, passes=2)
    _feed(two, h, y, parts, framework)
    two.start_second_pass()
    _feed(two, h, y, parts, framework)
    r1, r2 = one.compute(), two.compute()
    exact = ref_nc1(h, y, K)
    assert exact < 1e-6
    for key in ("nc1", "nc1_quotient", "cdnv"):
        _close(r1[key], float(r2[key]), rtol=1e-6)
    _close(r1["nc1"], exact, rtol=1e-6)
    # the raw moments, accumulated the same way, in float64
    counts = np.bincount(y)
    mu = np.stack([h[y == c].sum(0) for c in range(K)]) / counts[:, None]
    sw_raw = (h.T @ h - (mu.T * counts) @ mu) / len(y)
    sb = ref_stats(h, y, K)["sb"]
    raw = np.trace(sw_raw @ np.linalg.pinv(sb, rcond=d * EPS64)) / K
    assert abs(raw - exact) > 1e3 * exact


def test_streaming_errors(rng):
    K, d = 3, 4
    h, y, means = planted(rng, K, d, per_class=(5, 5), balanced=True)
    one_w = nc.NeuralCollapse(K, d, W=means)  # one pass: W for NC2-on-W and NC3, no NC4
    one_w.update(h, y)
    res = one_w.compute()
    assert "nc4" not in res
    _close(res["nc3"], float(nc.nc3(h, y, means)), rtol=1e-10)
    with pytest.raises(ValueError, match="b was given without W"):
        nc.NeuralCollapse(K, d, b=np.zeros(K))
    with pytest.raises(ValueError, match="passes must be"):
        nc.NeuralCollapse(K, d, passes=3)
    acc = nc.NeuralCollapse(K, d)
    with pytest.raises(ValueError, match="no batch"):
        acc.compute()
    with pytest.raises(ValueError, match="start_second_pass"):
        acc.start_second_pass()
    acc.update(h[y != 2], y[y != 2])
    with pytest.raises(ValueError, match="class 2 has no samples"):
        acc.compute()
    with pytest.raises(ValueError, match="0..2; got label 3"):
        acc.update(h[:2], np.array([0, 3]))
    with pytest.raises(TypeError, match="integers"):
        acc.update(h[:2], np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        acc.update(h[:2], y[:3])
    with pytest.raises(ValueError, match="d = 4"):
        acc.update(h[:, :3], y)
    with pytest.raises(ValueError, match="earlier batches"):
        acc.update(torch.from_numpy(h), torch.from_numpy(y))
    with pytest.raises(ValueError, match="NaN"):
        acc.update(np.full((2, d), np.nan), y[:2])
    two = nc.NeuralCollapse(K, d, passes=2)
    two.update(h, y)
    with pytest.raises(ValueError, match="start_second_pass"):
        two.compute()
    two.start_second_pass()
    two.update(h[:5], y[:5])
    with pytest.raises(ValueError, match="second pass saw"):
        two.compute()
    one = nc.NeuralCollapse(1, d)
    one.update(h, np.zeros(len(h), np.int64))
    with pytest.raises(ValueError, match="K >= 2"):
        one.compute()


# ---- errors and edge cases of the one-shot functions ----------------------------------------------


def test_errors(rng, framework):
    K, d = 4, 5
    h, y, means = planted(rng, K, d, per_class=(6, 6), balanced=True)
    x, lab = to_framework(h, framework), _labels(y, framework)
    keep = y != 2
    with pytest.raises(ValueError, match="class 2 has no samples"):
        nc.nc1(to_framework(h[keep], framework), _labels(y[keep], framework), num_classes=K)
    with pytest.raises(ValueError, match="0..2; got label 3"):
        nc.nc1(x, lab, num_classes=3)
    neg = y.copy()
    neg[0] = -1
    with pytest.raises(ValueError, match="got label -1"):
        nc.cdnv(x, _labels(neg, framework))
    one = _labels(np.zeros(len(y), np.int64), framework)
    for fn in (nc.nc1, nc.nc2_equinorm, nc.nc2_equiangularity, nc.nc2_etf_error, nc.cdnv, nc.nc1_quotient):
        with pytest.raises(ValueError, match="K >= 2"):
            fn(x, one)
    with pytest.raises(ValueError, match="K >= 2"):
        nc.nc3(x, one, to_framework(means[:1], framework))
    with pytest.raises(ValueError, match="K >= 2"):
        nc.nc2_etf_error(on="W", W=to_framework(means[:1], framework))
    with pytest.raises(ValueError, match=r"shape \(24,\)"):
        nc.nc1(x, lab[:5])
    with pytest.raises(TypeError, match="integers"):
        nc.nc1(x, to_framework(y.astype(np.float64), framework))
    with pytest.raises(ValueError, match=r"shape \(4, 5\)"):
        nc.nc3(x, lab, to_framework(means[:, :3], framework))
    with pytest.raises(ValueError, match="rows but num_classes"):
        nc.nc4(x, lab, to_framework(means, framework), num_classes=5)
    with pytest.raises(ValueError, match="needs the classifier"):
        nc.nc2_etf_error(on="W")
    with pytest.raises(ValueError, match="variant"):
        nc.nc1(x, lab, variant="svds")
    with pytest.raises(ValueError, match=r"shape \(N, d\)"):
        nc.nc1(to_framework(h[:, 0], framework), lab)
    with pytest.raises(ValueError, match="NaN"):
        nc.nc1(to_framework(np.where(np.arange(d) == 1, np.nan, h), framework), lab)
    assert math.isnan(float(nc.nc1(to_framework(np.full_like(h, np.nan), framework), lab, check_finite=False)))
    assert int(nc.class_mean_rank(to_framework(np.full_like(h, np.inf), framework), lab, check_finite=False)) == -1
    # all class means equal: Σ_B = 0 and NC1 is undefined
    same = to_framework(np.tile(h[:1], (len(y), 1)), framework)
    assert math.isnan(float(nc.nc1(same, lab)))


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_classifier(rng, framework, bad):
    # W and b are checked like H: a ValueError naming them, NaN with check_finite=False (nc4 used to
    # give a fraction from argmax over NaN logits, nc3 NaN without an error)
    K, d = 3, 4
    h, y, means = planted(rng, K, d, per_class=(5, 8))
    x, lab = to_framework(h, framework), _labels(y, framework)
    w_bad = to_framework(np.where(np.arange(d) == 2, bad, means), framework)
    w, b = to_framework(means, framework), to_framework(np.array([0.0, bad, 1.0]), framework)
    calls = {
        "W": [lambda **k: nc.nc3(x, lab, w_bad, **k), lambda **k: nc.nc3(x, lab, w_bad, variant="zhu", **k),
              lambda **k: nc.nc4(x, lab, w_bad, **k), lambda **k: nc.nc2_etf_error(on="W", W=w_bad, **k)],
        "b": [lambda **k: nc.nc4(x, lab, w, b, **k)],
    }
    for what, fns in calls.items():
        for fn in fns:
            with pytest.raises(ValueError, match=f"^{what} contains NaN or Inf"):
                fn()
            assert math.isnan(float(fn(check_finite=False)))
    assert not math.isnan(float(nc.nc4(x, lab, w, b, bias=False)))  # b left out: not read
    # the streaming accumulator: at the first batch (W, b at construction) or in compute(W=)
    for kw in ({"W": w_bad}, {"W": w, "b": b}):
        acc = nc.NeuralCollapse(K, d, passes=2, **kw)
        with pytest.raises(ValueError, match="contains NaN or Inf"):
            acc.update(x, lab)
        acc = nc.NeuralCollapse(K, d, passes=2, check_finite=False, **kw)
        acc.update(x, lab)
        acc.start_second_pass()
        acc.update(x, lab)
        res = acc.compute()
        assert math.isnan(float(res["nc4"])) and math.isnan(float(res["nc3"]))
        assert float(res["nc1"]) == pytest.approx(float(nc.nc1(x, lab)), rel=1e-9)
    acc = nc.NeuralCollapse(K, d)
    acc.update(x, lab)
    with pytest.raises(ValueError, match="^W contains NaN or Inf"):
        acc.compute(W=w_bad)


def test_streaming_non_finite_features(rng, framework):
    # check_finite=False: NaN metrics (ranks -1, as class_mean_rank), not a LinAlgError from the eigensolver
    K, d = 3, 4
    h, y, means = planted(rng, K, d, per_class=(5, 8))
    hb = h.copy()
    hb[9, 1] = np.nan
    for passes in (1, 2):
        acc = nc.NeuralCollapse(K, d, passes=passes, W=to_framework(means, framework))
        with pytest.raises(ValueError, match="NaN or Inf"):
            acc.update(to_framework(hb, framework), _labels(y, framework))
        acc = nc.NeuralCollapse(K, d, passes=passes, W=to_framework(means, framework), check_finite=False)
        for _ in range(passes):
            acc.update(to_framework(h[:7], framework), _labels(y[:7], framework))
            acc.update(to_framework(hb[7:], framework), _labels(y[7:], framework))
            if acc.passes == 2 and acc.current_pass == 1:
                acc.start_second_pass()
        res = acc.compute()
        assert res["n_samples"] == len(y)
        for k, v in res.items():
            if k.startswith("class_mean_rank"):
                assert int(v) == -1
            elif k.endswith("_W"):  # the classifier alone: still its value
                assert float(v) == pytest.approx(float(getattr(nc, k[:-2])(on="W", W=means)), rel=1e-12)
            elif k != "n_samples":
                assert math.isnan(float(v)), k


def test_empty_inputs(rng, framework):
    # 0 rows: the "no samples" error, not numpy's reshape error; an empty batch is a no-op
    K, d = 3, 4
    for shape in ((0, d), (0, 2, 2)):
        for fn in (nc.nc1, nc.cdnv, nc.class_mean_rank):
            with pytest.raises(ValueError, match="no samples"):
                fn(to_framework(np.zeros(shape), framework), _labels(np.zeros(0, np.int64), framework))
    h, y, _ = planted(rng, K, d, per_class=(5, 8))
    empty = (to_framework(np.zeros((0, d)), framework), _labels(np.zeros(0, np.int64), framework))
    acc = nc.NeuralCollapse(K, d)
    acc.update(*empty)
    with pytest.raises(ValueError, match="class 0 has no samples"):
        acc.compute()
    acc.update(to_framework(h, framework), _labels(y, framework))
    acc.update(*empty)
    res = acc.compute()
    assert res["n_samples"] == len(y)
    _close(res["nc1"], float(nc.nc1(h, y)))


def test_mixed_frameworks(rng):
    K, d = 3, 4
    h, y, means = planted(rng, K, d, per_class=(5, 5), balanced=True)
    ref = float(nc.nc1(h, y))
    _close(nc.nc1(torch.from_numpy(h), y), ref)  # numpy labels with a CPU tensor
    _close(nc.nc3(torch.from_numpy(h), torch.from_numpy(y), means), float(nc.nc3(h, y, means)))
    _close(nc.nc1(h.tolist(), y.tolist()), ref)  # nested lists


# ---- GPU (a lent GPU runs these with -m cuda) -------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
def test_cuda_matches_cpu(rng):
    K, d = 5, 9
    h, y, means = planted(rng, K, d)
    hc, yc, wc = (torch.from_numpy(a).cuda() for a in (h, y, means))
    for fn in (nc.nc1, nc.nc1_quotient, nc.cdnv, nc.nc2_etf_error):
        got = fn(hc, yc)
        assert got.device.type == "cuda"
        _close(got, float(fn(h, y)), rtol=1e-10)
    _close(nc.nc4(hc, yc, wc), float(nc.nc4(h, y, means)), atol=0)
    acc = nc.NeuralCollapse(K, d, passes=2, W=wc)
    acc.update(hc, yc)
    acc.start_second_pass()
    acc.update(hc, yc)
    res = acc.compute()
    assert res["nc1"].device.type == "cuda"
    _close(res["nc1"], float(nc.nc1(h, y)), rtol=1e-10)
    with pytest.raises(ValueError, match="host memory"):
        nc.nc1(hc, y)


def test_label_extremes_refused_up_front():
    """A huge label with K inferred is a ValueError (K > N leaves empty classes), not an 8 TiB
    allocation; uint64 labels >= 2**63 are reported with their real value; NeuralCollapse refuses a
    K, d whose accumulators cannot fit before the first update."""
    import rankscope.neural_collapse as ncm

    h = np.random.default_rng(0).standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"K > N leaves empty classes; pass num_classes="):
        ncm.nc1(h, np.array([0, 1, 0, 2**40]))
    with pytest.raises(ValueError, match=r"K > N"):
        ncm.nc1(h, np.array([0, 1, 2, 9]))
    big = np.array([0, 1, 0, 2**63 + 1], dtype=np.uint64)
    with pytest.raises(ValueError, match=str(2**63 + 1)):
        ncm.nc1(h, big)
    acc = ncm.NeuralCollapse(2, 3)
    with pytest.raises(ValueError, match=str(2**63 + 1)):
        acc.update(h, big)
    with pytest.raises(ValueError, match=r"K=1099511627776, d=4"):
        ncm.NeuralCollapse(2**40, 4)
    with pytest.raises(ValueError, match=r"d=1099511627776"):
        ncm.NeuralCollapse(3, 2**40)
    ncm.NeuralCollapse(1000, 512)  # sane sizes still construct
