"""Validation and compiled-core calls shared by `rankscope.penalties` (numpy) and `rankscope.torch`.

Nothing here imports torch: host arrays (numpy arrays, torch CPU tensors, anything the core imports
through DLPack) are passed to the core as they are, and results come back as float64 numpy arrays.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from . import _core
from ._errors import batch_index, non_finite_error

REDUCTIONS = ("mean", "none")


class VICRegLoss(NamedTuple):
    """VICReg loss and its three terms, each reduced as asked (``reduction="none"``: batch-shaped).

    ``loss = sim_coeff · invariance + std_coeff · variance + cov_coeff · covariance``, where
    ``variance`` and ``covariance`` are already summed over the two branches (and ``variance``
    halved when ``halve_variance``), as in facebookresearch/vicreg.
    """

    loss: Any
    invariance: Any
    variance: Any
    covariance: Any


# ---- argument checks -----------------------------------------------------------------------------


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return reduction


def check_real(name: str, value: Any, *, nonneg: bool = False) -> float:
    """A finite real option as float (bool is not a number here)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if not math.isfinite(v) or (nonneg and v < 0):
        raise ValueError(
            f"{name} must be a finite{' non-negative' if nonneg else ''} number, got {value!r}"
        )
    return v


def check_shape(shape: tuple, what: str, fn: str, min_samples: int) -> None:
    """(..., N, d) with N >= min_samples and d >= 1."""
    if len(shape) < 2:
        raise ValueError(
            f"{fn}: {what} must have at least 2 dimensions (..., N, d), got shape {tuple(shape)}"
        )
    n, d = shape[-2], shape[-1]
    if n < min_samples:
        why = {
            "barlow_twins_loss": "batch normalisation needs N >= 2",
            "invariance_loss": "the mean needs N >= 1",
        }.get(fn, "the variance and covariance (ddof 1) are undefined for N < 2")
        raise ValueError(f"{fn}: {what} has N = {n} sample(s) (rows, shape {tuple(shape)}); {why}")
    if d < 1:
        raise ValueError(f"{fn}: {what} has d = 0 features (shape {tuple(shape)})")


def check_pair(
    shape1: tuple, shape2: tuple, dtype1: str, dtype2: str, dev1: str, dev2: str, fn: str
) -> None:
    if tuple(shape1) != tuple(shape2):
        raise ValueError(
            f"{fn}: z1 and z2 must have the same shape, got {tuple(shape1)} and {tuple(shape2)}"
        )
    if dtype1 != dtype2:
        raise TypeError(f"{fn}: z1 and z2 must have the same dtype, got {dtype1} and {dtype2}")
    if dev1 != dev2:
        raise ValueError(f"{fn}: z1 and z2 must be on the same device, got {dev1} and {dev2}")


def raise_non_finite(bad: np.ndarray, batch: tuple, names: tuple[str, ...]) -> None:
    """ValueError naming the first batch element (and branch) whose input holds NaN or Inf.

    `bad` is a boolean (B, R) array (R = number of inputs, named by `names`).
    """
    bad = np.asarray(bad, dtype=bool).reshape(-1, len(names))
    flat = np.flatnonzero(bad.any(axis=1))
    if not flat.size:
        return
    b = int(flat[0])
    which = " and ".join(n for n, x in zip(names, bad[b]) if x) or names[0]
    raise non_finite_error(which, batch_index(b, batch), flat.size)


def reduce(values: np.ndarray, batch: tuple, reduction: str) -> Any:
    """Per-element float64 values (B,) → batch-shaped, or their mean; 0-d results as numpy scalars
    (as the rest of the library returns them). The mean of an empty batch is NaN."""
    if reduction == "none":
        out = values.reshape(batch)
        return out[()] if out.ndim == 0 else out
    return np.float64(values.mean()) if values.size else np.float64(np.nan)


def vicreg_combine(
    inv: Any, var: Any, cov: Any, halve_variance: bool, a_sim: float, a_std: float, a_cov: float
) -> tuple:
    """(loss, invariance, variance, covariance) per batch element from the raw terms: inv (B,),
    var and cov (B, R) per branch (numpy arrays or torch tensors alike)."""
    variance = (0.5 if halve_variance else 1.0) * var.sum(-1)
    covariance = cov.sum(-1)
    return a_sim * inv + a_std * variance + a_cov * covariance, inv, variance, covariance


# ---- the core on host arrays ---------------------------------------------------------------------


def plan(dtype: str, n: int, d: int) -> tuple[str, str, int]:
    """(side, work dtype, k): 'features' (d × d products, k = d) or 'gram' (N × N, k = N)."""
    side, work, k = _core.penalty_plan(dtype, int(n), int(d))
    return side, work, int(k)


def batch_size(shape: tuple) -> int:
    return int(np.prod(shape[:-2], dtype=np.int64))


class VICRegSaved(NamedTuple):
    """What the backward pass reads: float64 [mean, var] per branch, and the products (or None)."""

    stats: np.ndarray | None
    mats: np.ndarray | None


def vicreg_host(
    zs: list, dtype: str, shape: tuple, gamma: float, eps: float, with_cov: bool, save: bool
):
    """Raw per-branch VICReg terms of one or two host branches (..., N, d).

    Returns (inv (B,) or None, var (B, R), cov (B, R), non-finite (B, R) bool, VICRegSaved), all
    float64: var = mean_j relu(γ − s_j) (not halved), cov = Σ_{i≠j} C_ij² / d (0 when not with_cov).
    """
    b, r, (n, d) = batch_size(shape), len(zs), shape[-2:]
    terms = np.empty((b, r, 2))
    inv = np.empty(b) if r == 2 else None
    stats = mats = None
    if save:
        stats = np.empty((b, r, 2, d))
        if with_cov:
            _, work, k = plan(dtype, n, d)
            mats = np.empty((b, r, k, k), dtype=work)
    status = _core.vicreg_forward(zs, gamma, eps, with_cov, terms, inv, stats, mats)
    return inv, terms[..., 0], terms[..., 1], status != 0, VICRegSaved(stats, mats)


def vicreg_host_backward(
    zs: list, gamma: float, eps: float, coef: np.ndarray, saved: VICRegSaved, grads: list
) -> None:
    """Fills `grads` (host arrays like zs) with the gradient of Σ coef · [var, cov, inv]."""
    _core.vicreg_backward(
        zs, gamma, eps, np.ascontiguousarray(coef, dtype=np.float64), saved.stats, saved.mats, grads
    )


def invariance_host(z1: Any, z2: Any, shape: tuple):
    """mean((z1 − z2)²) per batch element (B,) float64 and the pair's non-finite flags (B, 1)."""
    out = np.empty(batch_size(shape))
    status = _core.invariance(z1, z2, out)
    return out, (status != 0)[:, None]


class BarlowSaved(NamedTuple):
    stats: np.ndarray | None
    cdiag: np.ndarray | None
    mats: np.ndarray | None


def barlow_host(z1: Any, z2: Any, dtype: str, shape: tuple, eps: float, save: bool):
    """Raw Barlow Twins terms: (on = Σ(1 − c_ii)² (B,), off = Σ_{i≠j} c_ij² (B,), the pair's
    non-finite flags (B, 1), BarlowSaved)."""
    b, (n, d) = batch_size(shape), shape[-2:]
    terms = np.empty((b, 2))
    saved = BarlowSaved(None, None, None)
    if save:
        side, work, k = plan(dtype, n, d)
        saved = BarlowSaved(
            np.empty((b, 4, d)),
            np.empty((b, d)),
            np.empty((b, 2 if side == "gram" else 1, k, k), dtype=work),
        )
    status = _core.barlow_forward(z1, z2, eps, terms, *saved)
    return terms[:, 0], terms[:, 1], (status != 0)[:, None], saved


def barlow_host_backward(
    z1: Any, z2: Any, eps: float, coef: np.ndarray, saved: BarlowSaved, g1: Any, g2: Any
) -> None:
    _core.barlow_backward(z1, z2, eps, np.ascontiguousarray(coef, dtype=np.float64), *saved, g1, g2)
