"""VICReg and Barlow Twins penalties on host arrays, values only (METRICS.md §4).

The same compiled forward pass as the differentiable versions in `rankscope.torch` (use those to
train). Inputs are (..., N, d) batches of N samples × d features — numpy arrays, torch CPU tensors
or anything with ``__dlpack__`` on the host, read in place whatever their strides; float16/bfloat16
are read as they are (each element converted to float64 while reading), integer/bool inputs
converted to float64. Statistics use the rows passed in (the reference implementations gather
across devices first: that is the caller's business). Results are float64: numpy scalars with
``reduction="mean"`` (the mean over the leading batch dimensions), batch-shaped arrays with
``reduction="none"``.

Precision: column means, variances, the invariance term and every sum of squares are accumulated in
float64; the one product of each penalty (the d × d covariance, or the N × N Gram matrix of the
centred batch when that is cheaper) is formed by BLAS in float32 for float32 and narrower inputs on
the d × d side and in float64 otherwise. Tested to 1e-6 relative against the float64 reference
formulas (facebookresearch/vicreg, facebookresearch/barlowtwins).

NaN/Inf: ``check_finite=True`` (default) raises ValueError naming the batch index; with False the
affected batch elements get NaN and the others are unaffected.
"""

from __future__ import annotations

from typing import Any

from . import _penalties as P
from ._arrays import Prepared, prepare

__all__ = [
    "VICRegLoss",
    "barlow_twins_loss",
    "covariance_loss",
    "invariance_loss",
    "variance_loss",
    "vicreg_loss",
]

VICRegLoss = P.VICRegLoss


def _host(z: Any, what: str, fn: str, min_samples: int) -> Prepared:
    p = prepare(z, what)
    if p.on_cuda:
        raise ValueError(
            f"{fn}: {what} is on a CUDA device; rankscope.penalties computes on the host (values "
            f"only): use rankscope.torch.{fn} for device tensors, or move {what} to the host"
        )
    P.check_shape(p.shape, what, fn, min_samples)
    return p


def _pair(z1: Any, z2: Any, fn: str, min_samples: int = 2) -> tuple[Prepared, Prepared]:
    p1, p2 = _host(z1, "z1", fn, min_samples), _host(z2, "z2", fn, min_samples)
    P.check_pair(p1.shape, p2.shape, p1.dtype, p2.dtype, "cpu", "cpu", fn)
    return p1, p2


def vicreg_loss(
    z1,
    z2,
    *,
    sim_coeff=25.0,
    std_coeff=25.0,
    cov_coeff=1.0,
    gamma=1.0,
    eps=1e-4,
    halve_variance=True,
    reduction="mean",
    check_finite=True,
) -> VICRegLoss:
    """VICReg (Bardes, Ponce & LeCun 2022) loss of two branches (..., N, d), values only.

    invariance = mean((z1 − z2)²); variance = h · Σ_branches mean_j relu(γ − sqrt(var_j + eps))
    (var with ddof 1; h = ½ when ``halve_variance``, as facebookresearch/vicreg and lightly;
    solo-learn uses h = 1); covariance = Σ_branches Σ_{i≠j} C_ij² / d with C = Zcᵀ Zc / (N − 1);
    loss = sim_coeff · invariance + std_coeff · variance + cov_coeff · covariance.

    Returns a `VICRegLoss` named tuple (loss, invariance, variance, covariance) of float64 values.
    N < 2 raises ValueError (the variance is undefined).
    """
    red = P.check_reduction(reduction)
    g, e = P.check_real("gamma", gamma), P.check_real("eps", eps, nonneg=True)
    a_sim, a_std, a_cov = (
        P.check_real(n, v)
        for n, v in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff))
    )
    p1, p2 = _pair(z1, z2, "vicreg_loss")
    inv, var, cov, bad, _ = P.vicreg_host([p1.data, p2.data], p1.dtype, p1.shape, g, e, True, False)
    batch = tuple(p1.shape[:-2])
    if check_finite:
        P.raise_non_finite(bad, batch, ("z1", "z2"))
    terms = P.vicreg_combine(inv, var, cov, halve_variance, a_sim, a_std, a_cov)
    return VICRegLoss(*(P.reduce(t, batch, red) for t in terms))


def invariance_loss(z1, z2, *, reduction="mean", check_finite=True):
    """mean((z1 − z2)²) over the N·d entries of each pair (F.mse_loss), float64."""
    red = P.check_reduction(reduction)
    p1, p2 = _pair(z1, z2, "invariance_loss", min_samples=1)
    inv, bad = P.invariance_host(p1.data, p2.data, p1.shape)
    batch = tuple(p1.shape[:-2])
    if check_finite:
        P.raise_non_finite(bad, batch, ("z1 or z2",))
    return P.reduce(inv, batch, red)


def variance_loss(z, *, gamma=1.0, eps=1e-4, reduction="mean", check_finite=True):
    """VICReg's variance term of one branch: mean_j relu(γ − sqrt(var_j + eps)), var with ddof 1.

    Not halved: VICReg's variance (with ``halve_variance``) is
    ½ · (variance_loss(z1) + variance_loss(z2)).
    All-equal rows give relu(γ − sqrt(eps)) = 0.99 with the defaults.
    """
    red = P.check_reduction(reduction)
    g, e = P.check_real("gamma", gamma), P.check_real("eps", eps, nonneg=True)
    p = _host(z, "z", "variance_loss", 2)
    _, var, _, bad, _ = P.vicreg_host([p.data], p.dtype, p.shape, g, e, False, False)
    batch = tuple(p.shape[:-2])
    if check_finite:
        P.raise_non_finite(bad, batch, ("z",))
    return P.reduce(var[:, 0], batch, red)


def covariance_loss(z, *, reduction="mean", check_finite=True):
    """VICReg's covariance term of one branch: Σ_{i≠j} C_ij² / d, C = Zcᵀ Zc / (N − 1)."""
    red = P.check_reduction(reduction)
    p = _host(z, "z", "covariance_loss", 2)
    _, _, cov, bad, _ = P.vicreg_host([p.data], p.dtype, p.shape, 1.0, 0.0, True, False)
    batch = tuple(p.shape[:-2])
    if check_finite:
        P.raise_non_finite(bad, batch, ("z",))
    return P.reduce(cov[:, 0], batch, red)


def barlow_twins_loss(
    z1, z2, *, lambd=0.0051, scale=1.0, eps=1e-5, reduction="mean", check_finite=True
):
    """Barlow Twins (Zbontar et al. 2021) loss of two branches (..., N, d), float64 values.

    Each branch is batch-normalised without affine parameters (BatchNorm1d(affine=False) in training
    mode: biased variance, ``eps``); c = ẑ₁ᵀ ẑ₂ / N;
    loss = scale · (Σ_i (1 − c_ii)² + lambd · Σ_{i≠j} c_ij²). Defaults are
    facebookresearch/barlowtwins'; lightly and solo-learn use ``lambd=5e-3``, solo-learn also
    ``scale=0.025``.
    """
    red = P.check_reduction(reduction)
    lam, sc = P.check_real("lambd", lambd), P.check_real("scale", scale)
    e = P.check_real("eps", eps, nonneg=True)
    p1, p2 = _pair(z1, z2, "barlow_twins_loss")
    on, off, bad, _ = P.barlow_host(p1.data, p2.data, p1.dtype, p1.shape, e, False)
    batch = tuple(p1.shape[:-2])
    if check_finite:
        P.raise_non_finite(bad, batch, ("z1 or z2",))
    return P.reduce(sc * (on + lam * off), batch, red)
