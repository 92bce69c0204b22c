"""Differentiable VICReg and Barlow Twins penalties, closed-form backward passes (METRICS.md §4).

Inputs are (..., N, d) tensors of N samples × d features, batched over the leading dimensions.
Each loss is a `torch.autograd.Function` whose backward is the closed form of METRICS.md §4
(d cov/dZ = 4/(d(N−1)) · Zc · C_off, d var/dZ = −h/(d(N−1)) · Zc · diag(1[s_j < γ]/s_j),
d inv/dx = 2(x − y)/(N d); Barlow Twins through its batch norm), so autograd records no d × d tape:
one product is formed in the forward pass (the d × d covariance, or the N × N Gram matrix of the
centred batch when d is large) and one in the backward pass. These backward passes are once
differentiable: double backward (``torch.autograd.grad(..., create_graph=True)``, e.g. for a
gradient penalty) raises RuntimeError rather than giving wrong second-order gradients; write the
loss in plain torch ops for that. `invariance_loss` alone supports double backward (its backward
is linear and runs in torch ops).

Where it runs:

- CPU tensors go through rankscope's compiled core (float64 statistics, OpenBLAS for the product,
  threads over the batch and the two branches).
- CUDA tensors (and any other non-CPU device) use torch's own ops inside the same Functions, with
  the same closed forms and precision plan: the products run in cuBLAS on the caller's current
  stream and the data never leaves the device (no copy to the host, no synchronisation — except that
  ``check_finite=True``, the default, reads one flag per batch element back to raise for NaN/Inf).

Precision: column means, variances, the invariance term and every sum of squares are float64; the
product is float32 for float32 inputs on the d × d side (float64 on the N × N side, and for float64
inputs). Values are tested to 1e-6 relative against the float64 reference formulas.

Dtypes: float32/float64 tensors are used as they are; float16/bfloat16 tensors are converted to
float32 first (a copy; autograd casts the gradient back) and integer tensors to float64. Results are
float64 for float64 inputs and float32 otherwise.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np
import torch

from .. import _penalties as P

__all__ = [
    "VICRegLoss",
    "barlow_twins_loss",
    "covariance_loss",
    "invariance_loss",
    "variance_loss",
    "vicreg_loss",
]

VICRegLoss = P.VICRegLoss

# Tests set this to run the device (torch-ops) path on CPU tensors, as an oracle for the CUDA code.
_FORCE_TORCH_OPS = False

_F64 = torch.float64


def _use_core(z: torch.Tensor) -> bool:
    return z.device.type == "cpu" and not _FORCE_TORCH_OPS


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def _first_order_only(backward):
    """A closed-form backward run under no_grad, refusing double backward.

    `once_differentiable` raises only when an incoming gradient requires grad, so
    ``torch.autograd.grad(loss, z, create_graph=True)`` followed by a second backward would
    silently treat the first-order gradient as a constant (wrong second-order gradients). Grad
    mode is on inside a backward exactly when it runs with create_graph=True: refuse that.
    """

    @functools.wraps(backward)
    def wrapper(ctx, *grad_outputs):
        if torch.is_grad_enabled():
            raise RuntimeError(
                f"rankscope.torch.{ctx.fn}: double backward (create_graph=True) is not supported: "
                "its backward is a closed form, differentiable once. For second-order gradients "
                "(e.g. a gradient penalty) write the loss in plain torch ops "
                "(rankscope.torch.invariance_loss does support double backward)"
            )
        with torch.no_grad():
            return backward(ctx, *grad_outputs)

    return wrapper


# ---- inputs --------------------------------------------------------------------------------------


def _tensor(z: Any, what: str, fn: str) -> torch.Tensor:
    if not isinstance(z, torch.Tensor):
        raise TypeError(
            f"{fn}: {what} must be a torch.Tensor, got {type(z).__name__} "
            f"(rankscope.penalties.{fn} takes numpy arrays, values only)"
        )
    if z.is_complex():
        raise TypeError(f"{fn}: {what} is complex ({z.dtype}); the penalties take real tensors")
    if z.is_floating_point() and z.dtype not in (
        torch.float16,
        torch.bfloat16,
        torch.float32,
        _F64,
    ):
        raise TypeError(
            f"{fn}: {what} has dtype {z.dtype}; expected float16, bfloat16, float32 or float64"
        )
    return z


def _working(z: torch.Tensor) -> torch.Tensor:
    """float32/float64 as they are; float16/bfloat16 → float32 and integers → float64 (copies).
    A tensor with the negative bit (x.conj().imag) is resolved first (a copy): the core reads memory
    through DLPack, which holds −x."""
    z = z.resolve_neg()
    if not z.is_floating_point():
        return z.to(_F64)
    if z.dtype in (torch.float16, torch.bfloat16):
        return z.float()
    return z


def _one(z: Any, fn: str, min_samples: int = 2) -> torch.Tensor:
    t = _tensor(z, "z", fn)
    P.check_shape(tuple(t.shape), "z", fn, min_samples)
    return _working(t)


def _pair(z1: Any, z2: Any, fn: str, min_samples: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    t1, t2 = _tensor(z1, "z1", fn), _tensor(z2, "z2", fn)
    P.check_pair(
        tuple(t1.shape),
        tuple(t2.shape),
        _dtype_name(t1),
        _dtype_name(t2),
        str(t1.device),
        str(t2.device),
        fn,
    )
    P.check_shape(tuple(t1.shape), "z1", fn, min_samples)
    return _working(t1), _working(t2)


def _finish(t: torch.Tensor, batch: tuple, reduction: str, dtype: torch.dtype) -> torch.Tensor:
    """Per-element float64 values (B,) → batch-shaped or their mean, in the result dtype."""
    return (t.reshape(batch) if reduction == "none" else t.mean()).to(dtype)


def _flat(z: torch.Tensor) -> torch.Tensor:
    """(..., N, d) → (B, N, d) float64 (a copy on the device path)."""
    return z.detach().reshape(-1, *z.shape[-2:]).to(_F64)


def _host_empty(z: torch.Tensor) -> torch.Tensor:
    """An uninitialised host tensor like z, allocated by numpy: numpy advises transparent huge pages
    for large arrays, which halves the first-touch cost of a fresh gradient (measured 3.3 vs 7.2 ms
    for 33 MB)."""
    return torch.from_numpy(np.empty(tuple(z.shape), dtype=_dtype_name(z)))


def _check(bad: Any, batch: tuple, names: tuple[str, ...], check_finite: bool) -> None:
    if check_finite:
        P.raise_non_finite(
            bad.cpu().numpy() if isinstance(bad, torch.Tensor) else bad, batch, names
        )


def _mean_sq_diff(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """mean((x − y)²) per element (B,) float64 of two (B, N, d) float64 branches (see _flat); NaN
    (not inf) where an input holds NaN or Inf."""
    inv = (x - y).square().mean((-2, -1))
    finite = torch.isfinite(x).all(-1).all(-1) & torch.isfinite(y).all(-1).all(-1)
    return torch.where(finite, inv, torch.full_like(inv, float("nan")))


# ---- VICReg: the device (torch-ops) path ---------------------------------------------------------
# The same closed forms as cpp/metrics/penalties.cpp, batched with torch ops.


def _vicreg_device_forward(zs, gamma, eps, with_cov, side, work):
    n, d = zs[0].shape[-2:]
    n1 = n - 1
    var_t, cov_t, bad, saved = [], [], [], []
    flat = [_flat(z) for z in zs]
    for z64 in flat:
        mean = z64.mean(-2, keepdim=True)
        zc = z64 - mean
        var = zc.square().sum(-2) / n1
        bad.append(~torch.isfinite(mean[:, 0, :]).all(-1))
        var_t.append(torch.relu(gamma - torch.sqrt(var + eps)).mean(-1))
        mat = None
        if not with_cov:
            cov_t.append(torch.zeros_like(var_t[-1]))
        elif side == "features":
            a = zc.to(work)
            mat = a.mT @ a  # S = ZcᵀZc; only its off-diagonal part is used, forward and backward
            mat.diagonal(dim1=-2, dim2=-1).zero_()
            cov_t.append(mat.square().sum((-2, -1), dtype=_F64) / (n1 * n1 * d))
        else:
            mat = zc @ zc.mT  # G = ZcZcᵀ, ‖G‖_F = ‖ZcᵀZc‖_F
            off = mat.square().sum((-2, -1)) - (var * n1).square().sum(-1)
            cov_t.append(off.clamp_min(0) / (n1 * n1 * d))
        saved.append((mean, var, mat))
    bad = torch.stack(bad, 1)
    inv = _mean_sq_diff(flat[0], flat[1]) if len(zs) == 2 else None
    return inv, torch.stack(var_t, 1), torch.stack(cov_t, 1), bad, saved


def _vicreg_device_backward(zs, gamma, eps, side, work, saved, g_inv, g_var, g_cov):
    n, d = zs[0].shape[-2:]
    n1 = n - 1
    grads = []
    flat = [_flat(z) for z in zs]
    for r, z in enumerate(zs):
        mean, var, mat = saved[r]
        zc = flat[r] - mean
        s = torch.sqrt(var + eps)
        a_var = g_var[:, r, None]
        w = torch.where((s < gamma) & (a_var != 0), -a_var / (d * n1 * s), torch.zeros_like(s))
        alpha = 4.0 * g_cov[:, r] / (d * n1 * n1)
        if mat is None:
            g = zc * w[:, None, :]
        elif side == "features":
            m = alpha[:, None, None].to(work) * mat + torch.diag_embed(w).to(work)
            g = zc.to(work) @ m
        else:
            g = alpha[:, None, None] * (mat @ zc) + zc * (w - alpha[:, None] * var * n1)[:, None, :]
        if len(zs) == 2:
            ai = (2.0 / (n * d)) * g_inv[:, None, None]
            g = g + (ai * (flat[r] - flat[1 - r])).to(g.dtype)
        grads.append(g.to(z.dtype).reshape(z.shape))
    return grads


class _VICRegTerms(torch.autograd.Function):
    """Raw per-element VICReg terms of one or two branches, float64: inv (B,) (zeros for one
    branch), var (B, R) = mean_j relu(γ − s_j) (not halved), cov (B, R) = Σ_{i≠j} C_ij² / d."""

    @staticmethod
    def forward(ctx, fn, gamma, eps, with_cov, check_finite, *zs):
        shape = tuple(zs[0].shape)
        batch, (n, d), b = shape[:-2], shape[-2:], P.batch_size(shape)
        need = any(ctx.needs_input_grad[5:])
        ctx.fn = fn
        names = ("z1", "z2") if len(zs) == 2 else ("z",)
        side, work, _ = P.plan(_dtype_name(zs[0]), n, d)
        ctx.params = (gamma, eps, side, getattr(torch, work))
        if _use_core(zs[0]):
            host = [z.detach() for z in zs]
            inv, var, cov, bad, saved = P.vicreg_host(
                host, _dtype_name(zs[0]), shape, gamma, eps, with_cov, need
            )
            _check(bad, batch, names, check_finite)
            inv = torch.from_numpy(inv) if inv is not None else torch.zeros(b, dtype=_F64)
            var, cov = (
                torch.from_numpy(np.ascontiguousarray(var)),
                torch.from_numpy(np.ascontiguousarray(cov)),
            )
        else:
            inv, var, cov, bad, saved = _vicreg_device_forward(
                zs, gamma, eps, with_cov, side, ctx.params[3]
            )
            _check(bad, batch, names, check_finite)
            if inv is None:
                inv = torch.zeros(b, dtype=_F64, device=zs[0].device)
        ctx.saved = saved if need else None
        if need:
            ctx.save_for_backward(*zs)
        return inv, var, cov

    @staticmethod
    @_first_order_only
    def backward(ctx, g_inv, g_var, g_cov):
        zs = ctx.saved_tensors
        gamma, eps, side, work = ctx.params
        if _use_core(zs[0]):
            b, r = g_var.shape
            coef = np.empty((b, r, 3))
            coef[..., 0] = g_var.numpy()
            coef[..., 1] = g_cov.numpy()
            coef[..., 2] = g_inv.numpy()[:, None]
            grads = [_host_empty(z) for z in zs]
            P.vicreg_host_backward([z.detach() for z in zs], gamma, eps, coef, ctx.saved, grads)
        else:
            grads = _vicreg_device_backward(
                zs, gamma, eps, side, work, ctx.saved, g_inv, g_var, g_cov
            )
        return (None, None, None, None, None, *grads)


# ---- invariance ----------------------------------------------------------------------------------


class _InvarianceTerm(torch.autograd.Function):
    """mean((z1 − z2)²) per batch element (B,) float64. Its backward is linear torch ops, recorded
    by autograd under create_graph=True, so it supports double backward."""

    @staticmethod
    def forward(ctx, check_finite, z1, z2):
        shape = tuple(z1.shape)
        if _use_core(z1):
            inv, bad = P.invariance_host(z1.detach(), z2.detach(), shape)
            inv = torch.from_numpy(inv)
        else:
            inv = _mean_sq_diff(_flat(z1), _flat(z2))
            bad = torch.isnan(inv)[:, None]
        _check(bad, shape[:-2], ("z1 or z2",), check_finite)
        ctx.save_for_backward(z1, z2)
        return inv

    @staticmethod
    def backward(ctx, g):
        z1, z2 = ctx.saved_tensors
        n, d = z1.shape[-2:]
        scale = (g * (2.0 / (n * d))).to(z1.dtype).reshape(*z1.shape[:-2], 1, 1)
        diff = (z1 - z2) * scale
        return None, diff, -diff


# ---- Barlow Twins --------------------------------------------------------------------------------


def _barlow_device_forward(z1, z2, eps, side, work):
    n = z1.shape[-2]
    x, y = _flat(z1), _flat(z2)
    m1, m2 = x.mean(-2, keepdim=True), y.mean(-2, keepdim=True)
    xc, yc = x - m1, y - m2
    v1, v2 = xc.square().mean(-2), yc.square().mean(-2)  # BatchNorm: biased variance
    r1, r2 = torch.rsqrt(v1 + eps), torch.rsqrt(v2 + eps)
    h1, h2 = xc * r1[:, None, :], yc * r2[:, None, :]
    cd = (h1 * h2).sum(-2) / n
    on = (1 - cd).square().sum(-1)
    if side == "features":
        mats = (h1.to(work).mT @ h2.to(work),)  # N·c; its diagonal is replaced by the float64 cd
        mats[0].diagonal(dim1=-2, dim2=-1).zero_()
        off = mats[0].square().sum((-2, -1), dtype=_F64) / (n * n)
    else:
        mats = (h1 @ h1.mT, h2 @ h2.mT)
        off = ((mats[0] * mats[1]).sum((-2, -1)) / (n * n) - cd.square().sum(-1)).clamp_min(0)
    bad = ~(torch.isfinite(m1[:, 0, :]).all(-1) & torch.isfinite(m2[:, 0, :]).all(-1))
    return on, off, bad[:, None], (m1, r1, m2, r2, cd, mats)


def _barlow_device_backward(z1, z2, side, work, saved, a_on, a_off):
    n = z1.shape[-2]
    m1, r1, m2, r2, cd, mats = saved
    h1, h2 = (_flat(z1) - m1) * r1[:, None, :], (_flat(z2) - m2) * r2[:, None, :]
    a_on, a_off = a_on[:, None], a_off[:, None]
    if side == "features":
        mm = (2.0 / (n * n)) * a_off[:, :, None].to(work) * mats[0]
        mm = mm + torch.diag_embed(-2.0 * a_on * (1 - cd) / n).to(work)
        d1 = (h2.to(work) @ mm.mT).to(_F64)  # dL/dẑ₁ = ẑ₂ Mᵀ
        d2 = (h1.to(work) @ mm).to(_F64)  # dL/dẑ₂ = ẑ₁ M
    else:
        m = ((-2.0 * a_on * (1 - cd) - 2.0 * a_off * cd) / n)[:, None, :]
        alpha = (2.0 / (n * n)) * a_off[:, :, None]
        d1 = alpha * (mats[1] @ h1) + h2 * m
        d2 = alpha * (mats[0] @ h2) + h1 * m
    out = []
    for dz, h, r, z in ((d1, h1, r1, z1), (d2, h2, r2, z2)):
        g = (dz - dz.mean(-2, keepdim=True) - h * (dz * h).mean(-2, keepdim=True)) * r[:, None, :]
        out.append(g.to(z.dtype).reshape(z.shape))
    return out


class _BarlowTerms(torch.autograd.Function):
    """Raw Barlow Twins terms per batch element, float64: on = Σ(1 − c_ii)², off = Σ_{i≠j} c_ij²."""

    @staticmethod
    def forward(ctx, eps, check_finite, z1, z2):
        shape = tuple(z1.shape)
        n, d = shape[-2:]
        need = any(ctx.needs_input_grad[2:])
        ctx.fn = "barlow_twins_loss"
        side, work, _ = P.plan(_dtype_name(z1), n, d)
        ctx.params = (eps, side, getattr(torch, work))
        if _use_core(z1):
            on, off, bad, saved = P.barlow_host(
                z1.detach(), z2.detach(), _dtype_name(z1), shape, eps, need
            )
            on, off = (
                torch.from_numpy(np.ascontiguousarray(on)),
                torch.from_numpy(np.ascontiguousarray(off)),
            )
        else:
            on, off, bad, saved = _barlow_device_forward(z1, z2, eps, side, ctx.params[2])
        _check(bad, shape[:-2], ("z1 or z2",), check_finite)
        ctx.saved = saved if need else None
        if need:
            ctx.save_for_backward(z1, z2)
        return on, off

    @staticmethod
    @_first_order_only
    def backward(ctx, g_on, g_off):
        z1, z2 = ctx.saved_tensors
        eps, side, work = ctx.params
        if _use_core(z1):
            coef = np.stack([g_on.numpy(), g_off.numpy()], axis=1)
            g1, g2 = _host_empty(z1), _host_empty(z2)
            P.barlow_host_backward(z1.detach(), z2.detach(), eps, coef, ctx.saved, g1, g2)
        else:
            g1, g2 = _barlow_device_backward(z1, z2, side, work, ctx.saved, g_on, g_off)
        return None, None, g1, g2


# ---- public API ----------------------------------------------------------------------------------


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
    """VICReg (Bardes, Ponce & LeCun 2022) loss of two branches (..., N, d), differentiable.

    invariance = mean((z1 − z2)²) (F.mse_loss); variance = h · Σ_branches mean_j relu(γ − s_j),
    s_j = sqrt(var_j + eps), var with ddof 1, h = ½ when ``halve_variance``
    (facebookresearch/vicreg, lightly; solo-learn uses h = 1);
    covariance = Σ_branches Σ_{i≠j} C_ij² / d, C = Zcᵀ Zc / (N − 1);
    loss = sim_coeff · invariance + std_coeff · variance + cov_coeff · covariance.

    Statistics use the rows passed in (the reference gathers across devices first: gather before
    calling). ``reduction="mean"`` averages each term over the leading batch dimensions (e.g.
    heads); ``"none"`` returns batch-shaped tensors. N < 2 raises ValueError.
    ``check_finite=True`` raises ValueError for NaN/Inf inputs naming the batch index; False gives
    NaN for those elements.

    Returns a `VICRegLoss` named tuple (loss, invariance, variance, covariance), all differentiable.
    CPU tensors run in rankscope's compiled core; CUDA tensors in torch's own ops (cuBLAS on the
    caller's stream, no copy): see the module docstring.
    """
    red = P.check_reduction(reduction)
    g, e = P.check_real("gamma", gamma), P.check_real("eps", eps, nonneg=True)
    a_sim, a_std, a_cov = (
        P.check_real(k, v)
        for k, v in (("sim_coeff", sim_coeff), ("std_coeff", std_coeff), ("cov_coeff", cov_coeff))
    )
    x, y = _pair(z1, z2, "vicreg_loss")
    inv, var, cov = _VICRegTerms.apply("vicreg_loss", g, e, True, bool(check_finite), x, y)
    terms = P.vicreg_combine(inv, var, cov, halve_variance, a_sim, a_std, a_cov)
    batch = tuple(x.shape[:-2])
    return VICRegLoss(*(_finish(t, batch, red, x.dtype) for t in terms))


def invariance_loss(z1, z2, *, reduction="mean", check_finite=True) -> torch.Tensor:
    """mean((z1 − z2)²) over the N·d entries of each pair (F.mse_loss, batched), differentiable."""
    red = P.check_reduction(reduction)
    x, y = _pair(z1, z2, "invariance_loss", min_samples=1)
    return _finish(
        _InvarianceTerm.apply(bool(check_finite), x, y), tuple(x.shape[:-2]), red, x.dtype
    )


def variance_loss(z, *, gamma=1.0, eps=1e-4, reduction="mean", check_finite=True) -> torch.Tensor:
    """VICReg's variance term of one branch: mean_j relu(γ − sqrt(var_j + eps)), var ddof 1.

    Not halved: VICReg's variance (with ``halve_variance``) is
    ½ · (variance_loss(z1) + variance_loss(z2)).
    All-equal rows give relu(γ − sqrt(eps)) = 0.99 with the defaults.
    """
    red = P.check_reduction(reduction)
    g, e = P.check_real("gamma", gamma), P.check_real("eps", eps, nonneg=True)
    x = _one(z, "variance_loss")
    _, var, _ = _VICRegTerms.apply("variance_loss", g, e, False, bool(check_finite), x)
    return _finish(var[:, 0], tuple(x.shape[:-2]), red, x.dtype)


def covariance_loss(z, *, reduction="mean", check_finite=True) -> torch.Tensor:
    """VICReg's covariance term of one branch, Σ_{i≠j} C_ij² / d with C = Zcᵀ Zc / (N − 1)."""
    red = P.check_reduction(reduction)
    x = _one(z, "covariance_loss")
    _, _, cov = _VICRegTerms.apply("covariance_loss", 1.0, 1e-4, True, bool(check_finite), x)
    return _finish(cov[:, 0], tuple(x.shape[:-2]), red, x.dtype)


def barlow_twins_loss(
    z1, z2, *, lambd=0.0051, scale=1.0, eps=1e-5, reduction="mean", check_finite=True
) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021) loss of two branches (..., N, d), differentiable.

    Each branch is batch-normalised without affine parameters (BatchNorm1d(affine=False) in training
    mode: biased variance, ``eps``); c = ẑ₁ᵀ ẑ₂ / N;
    loss = scale · (Σ_i (1 − c_ii)² + lambd · Σ_{i≠j} c_ij²). Defaults are
    facebookresearch/barlowtwins'; lightly and solo-learn use ``lambd=5e-3``, solo-learn also
    ``scale=0.025``. c_ii is computed in float64 from the normalised data, so 1 − c_ii keeps its
    digits when the branches agree closely. Devices, reduction and check_finite as for
    `vicreg_loss`.
    """
    red = P.check_reduction(reduction)
    lam, sc = P.check_real("lambd", lambd), P.check_real("scale", scale)
    e = P.check_real("eps", eps, nonneg=True)
    x, y = _pair(z1, z2, "barlow_twins_loss")
    on, off = _BarlowTerms.apply(e, bool(check_finite), x, y)
    return _finish(sc * (on + lam * off), tuple(x.shape[:-2]), red, x.dtype)
