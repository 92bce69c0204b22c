"""Activation diagnostics: representation collapse, attention entropy and token rank collapse.

Formulas and conventions are those of METRICS.md §4 (diagnostics) and §5. Inputs are numpy arrays,
torch tensors (CPU or CUDA: computed with torch ops on the tensor's device), nested lists or
anything numpy can read; every statistic is computed in float64 and returned in float64 in the
caller's framework (numpy scalars/arrays, torch tensors on the input's device, or lists). Z-type
inputs are (..., N, d), rows = samples (batch), batched over the leading dimensions; a list of
matrices of different shapes gives a list of results. The input is never modified.

NaN/Inf: ``check_finite=True`` (default) raises ValueError naming the batch index; with False the
affected matrix gets NaN results and the others are unaffected.

`ActivationStats` accumulates the same statistics over batches in O(d²) memory whatever the number
of rows, for activations too large to hold at once.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import numpy as np

from ._arrays import eps_of, is_cupy, is_ragged, is_real, is_torch
from ._errors import batch_index, index_tuple, non_finite_error
from ._xp import Ops, as_float64, pow2_scale

__all__ = [
    "ActivationStats",
    "attention_entropy",
    "dimensional_collapse_spectrum",
    "feature_std",
    "mean_pairwise_cosine",
    "std_of_l2_normalized",
    "token_rank_collapse",
]


# ---- shared input handling --------------------------------------------------------------------------


def _bad_matrices(a: Any, ops: Ops, what: str, check_finite: bool, core: int = 2) -> Any:
    """Per-matrix "has NaN/Inf" flags (batch shape, host numpy), or None when all are finite.

    Raises ValueError naming the first bad batch index when check_finite is true."""
    xp = ops.xp
    if bool(xp.isfinite(a).all()):
        return None
    batch = tuple(a.shape[: a.ndim - core])
    flat = a.reshape((-1, *a.shape[a.ndim - core:])) if batch else a.reshape((1, *a.shape))
    per = ~xp.isfinite(flat).reshape((flat.shape[0], -1)).all(1)
    bad = ops.to_numpy(per).reshape(batch)
    if check_finite:
        idx = np.flatnonzero(bad.reshape(-1))
        raise non_finite_error(what, batch_index(int(idx[0]), batch), idx.size)
    return bad


def _rows(z: Any, what: str = "Z", min_rows: int = 2) -> tuple[Any, Ops]:
    """float64 (..., N, d) data with N >= min_rows and d >= 1, or ValueError."""
    a, ops, _ = as_float64(z, what)
    if a.ndim < 2:
        raise ValueError(f"{what} must have at least 2 dimensions (..., N, d), rows = samples; got shape "
                         f"{tuple(a.shape)}")
    n, d = a.shape[-2], a.shape[-1]
    if n < min_rows:
        why = "the batch variance (ddof 1) is undefined for N = 1" if min_rows == 2 else "no rows"
        raise ValueError(f"{what} has N = {n} rows, needs at least {min_rows}: {why}")
    if d < 1:
        raise ValueError(f"{what} has no features (d = 0)")
    return a, ops


def _fill_where(values: Any, bad: Any, ops: Ops, fill: float, extra_dims: int) -> Any:
    """values with `fill` at the batch indices flagged in `bad` (host bool, batch shape), whose
    entries span the last `extra_dims` axes."""
    if bad is None or not bad.any():
        return values
    mask = bad.reshape(bad.shape + (1,) * extra_dims)
    if ops.kind == "torch":
        mask = ops.xp.as_tensor(mask, device=ops.device)
    return ops.xp.where(mask, ops.scalar(fill), values)


def _nan_where(values: Any, bad: Any, ops: Ops, extra_dims: int = 0) -> Any:
    """values with NaN at the batch indices flagged in `bad` (host bool, batch shape)."""
    return _fill_where(values, bad, ops, math.nan, extra_dims)


def _zeroed(a: Any, bad: Any, ops: Ops, core: int = 2) -> Any:
    """a with the flagged matrices set to 0 (so that eigensolvers never see NaN)."""
    return _fill_where(a, bad, ops, 0.0, core)


def _l2_normalize(a: Any, ops: Ops) -> tuple[Any, Any]:
    """Rows divided by their L2 norm, zero rows left zero; and the (..., N) "row is non-zero" flags."""
    xp = ops.xp
    # each row over its largest |entry| first, so that squares neither overflow nor underflow
    # (finite float64 rows beyond ~1e154 or below ~1e-154 came out wrong)
    big = xp.amax(xp.abs(a), axis=-1, keepdims=True)
    nonzero = big > 0
    b = a / xp.where(nonzero, big, ops.scalar(1.0))
    norms = xp.sqrt(xp.sum(b * b, axis=-1, keepdims=True))
    u = xp.where(nonzero, b / xp.where(nonzero, norms, ops.scalar(1.0)), ops.scalar(0.0))
    return u, nonzero[..., 0]


def _batch_var(a: Any, ops: Ops) -> Any:
    """Per-column variance over the rows (axis -2), ddof 1, computed around the mean (two passes)."""
    xp = ops.xp
    c = a - xp.mean(a, axis=-2, keepdims=True)
    return xp.sum(c * c, axis=-2) / (a.shape[-2] - 1)


def _batch_std(a: Any, ops: Ops) -> Any:
    """Per-column std over the rows (axis -2), ddof 1, of each column over its largest |entry|, times
    that: the squares neither overflow nor underflow (finite float64 columns beyond ~1e154 gave inf,
    below ~1e-154 0)."""
    xp = ops.xp
    big = xp.amax(xp.abs(a), axis=-2, keepdims=True)
    big = xp.where(big > 0, big, ops.scalar(1.0))
    return xp.sqrt(_batch_var(a / big, ops)) * big[..., 0, :]


def _each(x: Any, fn, **kw) -> list:
    return [fn(e, **kw) for e in x]


# ---- §4 diagnostics -------------------------------------------------------------------------------------


def feature_std(Z: Any, *, gamma: float = 1.0, check_finite: bool = True) -> dict:
    """Per-feature standard deviation over the batch (ddof 1, no eps), its mean over the features and
    the fraction of features whose std is below `gamma` (VICReg's hinge target, γ = 1).

    Parameters
    ----------
    Z : array_like (..., N, d), or a list of 2-D arrays (then a list of dicts comes back)
        Rows are samples. N = 1 raises ValueError (the variance is undefined).
    gamma : float
        Threshold: a feature counts as collapsed when its std < gamma (strict).

    Returns
    -------
    dict with "mean_std" (...), "frac_below_gamma" (...), and "std" (..., d).
    """
    if is_ragged(Z):
        return _each(Z, feature_std, gamma=gamma, check_finite=check_finite)
    if not is_real(gamma, finite=True):
        raise ValueError(f"gamma must be a finite number, got {gamma!r}")
    a, ops = _rows(Z)
    bad = _bad_matrices(a, ops, "Z", check_finite)
    xp = ops.xp
    std = _batch_std(a, ops)
    frac = ops.count(std < float(gamma), -1) / a.shape[-1]
    return {
        "mean_std": ops.out(_nan_where(xp.mean(std, axis=-1), bad, ops)),
        "frac_below_gamma": ops.out(_nan_where(frac, bad, ops)),
        "std": ops.out(_nan_where(std, bad, ops, 1)),
    }


def std_of_l2_normalized(Z: Any, *, check_finite: bool = True) -> Any:
    """Mean over the features of the per-feature std (ddof 1) of the L2-normalised rows (lightly's
    `std_of_l2_normalized`, from SimSiam): about 1/√d for an isotropic cloud, 0 when every row has
    collapsed to one direction. Zero rows stay zero (lightly divides by max(‖z‖, 1e-12) instead:
    the same for any row with ‖z‖ ≥ 1e-12). Shape (...) for Z (..., N, d); N = 1 → ValueError."""
    if is_ragged(Z):
        return _each(Z, std_of_l2_normalized, check_finite=check_finite)
    a, ops = _rows(Z)
    bad = _bad_matrices(a, ops, "Z", check_finite)
    u, _ = _l2_normalize(a, ops)
    value = ops.xp.mean(ops.xp.sqrt(_batch_var(u, ops)), axis=-1)
    return ops.out(_nan_where(value, bad, ops))


def mean_pairwise_cosine(Z: Any, *, check_finite: bool = True) -> Any:
    """Mean cosine similarity over ordered pairs i ≠ j of rows, in O(N d):
    (‖Σ u_i‖² − N₊) / (N (N − 1)), u_i = z_i/‖z_i‖ (0 for a zero row), N₊ = number of non-zero rows.

    1 for rows collapsed to one direction, about 0 for an isotropic cloud. Pairs that involve a zero
    row count as cosine 0. Shape (...) for Z (..., N, d); N = 1 → ValueError (no pairs)."""
    if is_ragged(Z):
        return _each(Z, mean_pairwise_cosine, check_finite=check_finite)
    a, ops = _rows(Z)
    bad = _bad_matrices(a, ops, "Z", check_finite)
    xp = ops.xp
    u, nonzero = _l2_normalize(a, ops)
    s = xp.sum(u, axis=-2)
    n = a.shape[-2]
    n_plus = ops.count(nonzero, -1)
    value = (xp.sum(s * s, axis=-1) - n_plus) / (n * (n - 1))
    return ops.out(_nan_where(value, bad, ops))


def _sym_eigvals_desc(c: Any, ops: Ops) -> Any:
    """Eigenvalues of symmetric (..., m, m), descending, round-off below 0 clamped to 0."""
    w = ops.flip_last(ops.xp.linalg.eigvalsh(c))
    return ops.xp.clip(w, 0.0, None)


def _collapse_spectrum_of_centred(uc: Any, ops: Ops, dof: int) -> Any:
    """Eigenvalues (..., d) of ucᵀuc / dof from the smaller of ucᵀuc and uc ucᵀ (zeros appended)."""
    xp = ops.xp
    n, d = uc.shape[-2], uc.shape[-1]
    t = xp.swapaxes(uc, -1, -2)
    if d <= n:
        return _sym_eigvals_desc(t @ uc, ops) / dof
    w = _sym_eigvals_desc(uc @ t, ops) / dof
    return ops.concat([w, ops.zeros((*w.shape[:-1], d - n))], -1)


def dimensional_collapse_spectrum(Z: Any, *, check_finite: bool = True) -> dict:
    """Dimensional-collapse spectrum (Jing et al. 2022, facebookresearch/directclr): the eigenvalues
    of the covariance (ddof 1) of the L2-normalised rows, descending, round-off below 0 clamped to
    0, and their natural logs (log 0 = −inf). A collapsed dimension shows as a cliff to −inf (or to
    round-off level, about ln(eps64 · λ₁)).

    Returns a dict with "eigenvalues" (..., d) and "log_eigenvalues" (..., d). N = 1 → ValueError.
    """
    if is_ragged(Z):
        return _each(Z, dimensional_collapse_spectrum, check_finite=check_finite)
    a, ops = _rows(Z)
    bad = _bad_matrices(a, ops, "Z", check_finite)
    a = _zeroed(a, bad, ops)
    u, _ = _l2_normalize(a, ops)
    uc = u - ops.xp.mean(u, axis=-2, keepdims=True)
    w = _nan_where(_collapse_spectrum_of_centred(uc, ops, a.shape[-2] - 1), bad, ops, 1)
    return {"eigenvalues": ops.out(w), "log_eigenvalues": ops.out(ops.log(w))}


# ---- §5 attention ---------------------------------------------------------------------------------------


def _check_reduce(reduce: str) -> None:
    if reduce not in ("mean", "none"):
        raise ValueError(f"reduce must be 'mean' or 'none', got {reduce!r}")


def attention_entropy(A: Any, *, mask: Any = None, normalized: bool = False, eps: float | None = None,
                      reduce: str = "mean", check_finite: bool = True) -> Any:
    """Shannon entropy −Σ_j A_ij ln A_ij of each query row of attention weights (0 ln 0 = 0).

    Parameters
    ----------
    A : array_like (..., q, k)
        Attention probabilities: each query row (the last axis) sums to 1 over its unmasked keys.
        A row whose sum is off 1 by more than max(1e-3, 4 · eps(stored dtype)) raises ValueError (a
        valid bfloat16 row can sum to 0.998); so does a negative weight.
    mask : bool array_like broadcastable to A, optional
        True where a key takes part (the convention of the boolean ``attn_mask`` of
        torch.nn.functional.scaled_dot_product_attention; a key-padding mask of
        torch.nn.MultiheadAttention, True = padding, is the negation). Masked entries are ignored,
        NaN there too (softmax gives a NaN row for a query whose keys are all masked).
        Rows with no unmasked key give NaN and are left out of the mean.
    normalized : bool
        Divide by ln(number of unmasked keys), so that 1 is uniform attention; rows with a single
        key give 0.
    eps : float, optional
        Use −Σ A ln(A + eps) instead, as some papers do (0 ln(0 + eps) = 0, for eps = 0 too).
    reduce : {"mean", "none"}
        "mean" (default): one number, the mean over batch, heads and queries; "none": shape (..., q).
    """
    _check_reduce(reduce)
    if eps is not None and not (is_real(eps, finite=True) and eps >= 0):
        raise ValueError(f"eps must be a finite non-negative number or None, got {eps!r}")
    a, ops, stored = as_float64(A, "A")
    if a.ndim < 2:
        raise ValueError(f"A must have at least 2 dimensions (..., q, k), got shape {tuple(a.shape)}")
    xp = ops.xp
    if mask is None:
        n_keys = ops.full(a.shape[:-1], float(a.shape[-1]))
    else:
        keep = _bool_mask(mask, ops, tuple(a.shape))
        a = xp.where(keep, a, ops.scalar(0.0))  # before the NaN check: softmax of a fully masked row is NaN
        n_keys = ops.count(keep, -1)
    bad = _bad_matrices(a, ops, "A", check_finite)
    a = _zeroed(a, bad, ops)
    if bool((a < 0).any()):
        raise ValueError("A has negative weights; pass attention probabilities (softmax output)")
    rows = n_keys > 0
    sums = _fill_where(xp.sum(a, axis=-1), bad, ops, 1.0, 1)  # zeroed NaN/Inf matrices: NaN below, not an error
    tol = max(1e-3, 4.0 * eps_of(stored))
    off = rows & (xp.abs(sums - 1.0) > tol)
    if bool(off.any()):
        i = int(np.flatnonzero(ops.to_numpy(off).reshape(-1))[0])
        where = index_tuple(i, tuple(off.shape))
        raise ValueError(f"A's rows must sum to 1 over their unmasked keys (to within {tol:g}); the row at "
                         f"index {where} sums to {float(ops.to_numpy(sums).reshape(-1)[i])!r}")
    pos = a > 0  # 0 ln(0 + eps) = 0, for eps = 0 too
    shift = 0.0 if eps is None else float(eps)
    terms = xp.where(pos, a * ops.log(xp.where(pos, a, ops.scalar(1.0)) + shift), ops.scalar(0.0))
    h = -xp.sum(terms, axis=-1)
    if normalized:
        denom = ops.log(xp.where(n_keys > 1, n_keys, ops.scalar(2.0)))
        h = xp.where(n_keys > 1, h / denom, ops.scalar(0.0))
    h = xp.where(rows, h, ops.scalar(math.nan))
    h = _nan_where(h, bad, ops, 1)  # matrices with NaN/Inf (check_finite=False): NaN, and a NaN mean
    if reduce == "none":
        return ops.out(h)
    total = xp.sum(xp.where(rows, h, ops.scalar(0.0)))
    return ops.out(ops.divide(total, ops.count(rows)))


def _bool_mask(mask: Any, ops: Ops, shape: tuple) -> Any:
    """A boolean mask broadcast to `shape`, in the framework and on the device of `ops`."""
    if is_torch(mask):
        if mask.dtype != sys.modules["torch"].bool:
            raise TypeError(f"mask must be boolean (True where a key takes part), got {mask.dtype}")
        m = ops.here(mask, Ops("torch", mask.device), "mask")
    else:
        if is_cupy(mask):
            raise TypeError("mask: CuPy arrays are not supported here; pass a torch tensor or a numpy array")
        m = np.asarray(mask)
        if m.dtype != np.bool_:
            raise TypeError(f"mask must be boolean (True where a key takes part), got dtype {m.dtype}")
        m = ops.here(m, Ops("numpy"), "mask")
    try:
        return ops.xp.broadcast_to(m, shape)
    except (ValueError, RuntimeError):
        raise ValueError(f"mask of shape {tuple(m.shape)} does not broadcast to A's shape {shape}") from None


def _induced_norm(m: Any, ops: Ops) -> Any:
    """sqrt(‖M‖₁ ‖M‖_∞) with the induced norms (max column sum, max row sum) over (..., n, d)."""
    xp = ops.xp
    absm = xp.abs(m)
    one = xp.amax(xp.sum(absm, axis=-2), axis=-1)
    inf = xp.amax(xp.sum(absm, axis=-1), axis=-1)
    return xp.sqrt(one) * xp.sqrt(inf)  # not sqrt(one · inf): that product overflows from ~1e154


def token_rank_collapse(X: Any, *, center: str = "mean", reduce: str = "mean", check_finite: bool = True) -> Any:
    """Relative residual of token representations (Dong et al. 2021, "Attention is not all you need:
    pure attention loses rank doubly exponentially with depth"): per sequence
    r = ‖X − 1 x̄ᵀ‖ / ‖X‖ with x̄ the mean token and ‖M‖ = sqrt(‖M‖₁ ‖M‖_∞) the composite of the
    induced 1- and ∞-norms (max column sum, max row sum; not entrywise), as in the paper's plotting
    code (twistedcubic/attention-rank-collapse). 0 when every token is the same vector.

    Parameters
    ----------
    X : array_like (..., n, d)
        Token representations of each sequence (rows = tokens); or a list of 2-D arrays.
    center : {"mean", "rank1"}
        "mean": subtract the mean token (the default); "rank1": subtract the best rank-1
        approximation σ₁u₁v₁ᵀ instead (the paper's `compute_low_rank(x, 1)`).
    reduce : {"mean", "none"}
        Mean over sequences (default), or one value per sequence, shape (...).

    A zero sequence gives 0 (fully collapsed), not NaN.
    """
    if center not in ("mean", "rank1"):
        raise ValueError(f"center must be 'mean' or 'rank1', got {center!r}")
    _check_reduce(reduce)
    if is_ragged(X):
        return _each(X, token_rank_collapse, center=center, reduce=reduce, check_finite=check_finite)
    a, ops = _rows(X, "X", min_rows=1)
    xp = ops.xp
    bad = _bad_matrices(a, ops, "X", check_finite)
    a = _zeroed(a, bad, ops)
    if center == "mean":
        res = a - xp.mean(a, axis=-2, keepdims=True)
    else:
        u, s, vh = xp.linalg.svd(a, full_matrices=False)
        res = a - (u[..., :, :1] * s[..., None, :1]) @ vh[..., :1, :]
    num, den = _induced_norm(res, ops), _induced_norm(a, ops)
    r = xp.where(den > 0, num / xp.where(den > 0, den, ops.scalar(1.0)), ops.scalar(0.0))
    r = _nan_where(r, bad, ops)
    if reduce == "mean":
        r = xp.mean(r) if r.ndim else r
    return ops.out(r)


# ---- streaming ------------------------------------------------------------------------------------------


class ActivationStats:
    """The §4 diagnostics of activations fed in batches, in O(d²) memory whatever the number of rows.

    ``update(Z)`` takes a batch (B, d) (or (..., d): every leading index is a row) as a numpy array
    or a torch tensor; all batches must come from the same framework and device (CUDA tensors are
    accumulated on their device, in float64). ``compute()`` returns what the one-shot functions give
    on the concatenation of every batch:

    ==========================  =====================================================================
    key                         value
    ==========================  =====================================================================
    n_samples                   number of rows seen (int)
    mean_std, frac_below_gamma  `feature_std` (ddof 1); "std" the per-feature stds (d,)
    std_of_l2_normalized        `std_of_l2_normalized`
    mean_pairwise_cosine        `mean_pairwise_cosine`
    rankme                      RankMe (p = s/‖s‖₁ + rankme_eps) of the raw, uncentred activations: s
                                are the singular values of the stacked Z, from the eigenvalues of
                                the accumulated ZᵀZ in float64 (top min(N, d) of them)
    eigenvalues,                `dimensional_collapse_spectrum`
    log_eigenvalues
    ==========================  =====================================================================

    ``check_finite=True`` (default): `update` raises ValueError for a batch holding NaN/Inf; False:
    such a batch is counted in n_samples and every other statistic of `compute()` is NaN (the
    stream has no per-matrix results to keep apart).

    Variances come from moments shifted by the first batch's mean (float64), so a large common
    offset does not cancel catastrophically as raw moments Σz² − (Σz)²/N would; the sums are of the
    rows over a power of two near the first batch's max |z|, so that activations beyond ~1e154 or
    below ~1e-154 neither overflow nor underflow. The rankme spectrum
    carries the Gram route's absolute error ~eps64 · σ₁²/σ (METRICS.md §0), harmless for RankMe.
    """

    def __init__(self, d: int, *, gamma: float = 1.0, rankme_eps: float = 1e-7, check_finite: bool = True):
        if not isinstance(d, (int, np.integer)) or isinstance(d, bool) or d < 1:
            raise ValueError(f"d must be a positive int, got {d!r}")
        if not is_real(gamma, finite=True):
            raise ValueError(f"gamma must be a finite number, got {gamma!r}")
        if not (is_real(rankme_eps, finite=True) and rankme_eps >= 0):
            raise ValueError(f"rankme_eps must be a finite non-negative number, got {rankme_eps!r}")
        self.d, self.gamma, self.rankme_eps, self.check_finite = int(d), float(gamma), float(rankme_eps), check_finite
        self.reset()

    def reset(self) -> None:
        """Forget every batch (the framework and device too)."""
        self._ops: Ops | None = None
        self.n_samples = 0
        self._n_nonzero = None
        self._bad = False  # a batch held NaN/Inf (check_finite=False): every statistic NaN

    def _start(self, ops: Ops, a: Any, u: Any) -> None:
        d = self.d
        self._ops = ops
        self._scale = pow2_scale(a, ops)  # the z sums are of z / scale (exact: a power of two)
        self._shift_z = ops.xp.mean(a / self._scale, axis=0)
        self._shift_u = ops.xp.mean(u, axis=0)
        self._s1_z, self._s2_z = ops.zeros(d), ops.zeros(d)
        self._s1_u, self._s2_u = ops.zeros(d), ops.zeros((d, d))
        self._sum_u, self._zz = ops.zeros(d), ops.zeros((d, d))
        self._n_nonzero = ops.scalar(0.0)

    def update(self, Z: Any) -> None:
        """Adds a batch of rows (B, d) (or (..., d)). The batch is not kept."""
        a, ops, _ = as_float64(Z, "Z")
        if a.ndim < 1 or a.shape[-1] != self.d:
            raise ValueError(f"Z must have shape (B, {self.d}) (or (..., {self.d})), got {tuple(a.shape)}")
        if self._ops is not None and not self._ops.same_place(ops):
            raise ValueError(f"Z is on {ops.where}, earlier batches were on {self._ops.where}; feed one "
                             "framework and device (or reset())")
        a = a.reshape((-1, self.d))
        if a.shape[0] == 0:
            return
        xp = ops.xp
        if not bool(xp.isfinite(a).all()):
            if self.check_finite:
                raise ValueError("Z contains NaN or Inf; pass check_finite=False to get NaN results instead")
            self._bad = True
            a = xp.zeros_like(a)  # counted, but kept out of the sums (compute() gives NaN anyway)
        u, nonzero = _l2_normalize(a, ops)
        if self._ops is None:
            self._start(ops, a, u)
        a = a / self._scale
        zc = a - self._shift_z
        uc = u - self._shift_u
        self._s1_z += xp.sum(zc, axis=0)
        self._s2_z += xp.sum(zc * zc, axis=0)
        self._s1_u += xp.sum(uc, axis=0)
        self._s2_u += xp.swapaxes(uc, 0, 1) @ uc
        self._sum_u += xp.sum(u, axis=0)
        self._zz += xp.swapaxes(a, 0, 1) @ a
        self._n_nonzero = self._n_nonzero + ops.count(nonzero)
        self.n_samples += int(a.shape[0])

    def compute(self) -> dict:
        """Every statistic of the rows seen so far (see the class docstring); needs at least 2 rows.
        On a CUDA device the results stay there (rankme's spectrum is computed there too)."""
        n = self.n_samples
        if n < 2:
            raise ValueError(f"ActivationStats has seen {n} row(s); the batch variance needs at least 2")
        ops = self._ops
        xp = ops.xp
        var_z = xp.clip((self._s2_z - self._s1_z * self._s1_z / n) / (n - 1), 0.0, None)
        std = xp.sqrt(var_z) * self._scale
        frac = ops.count(std < self.gamma) / self.d
        cov_u = (self._s2_u - self._s1_u[:, None] * self._s1_u[None, :] / n) / (n - 1)
        cov_u = (cov_u + xp.swapaxes(cov_u, 0, 1)) / 2
        std_u = xp.mean(xp.sqrt(xp.clip(cov_u.diagonal(), 0.0, None)))
        cosine = (xp.sum(self._sum_u * self._sum_u) - self._n_nonzero) / (n * (n - 1))
        w = _sym_eigvals_desc(cov_u, ops)
        s = xp.sqrt(_sym_eigvals_desc(self._zz, ops)[: min(n, self.d)])
        total = xp.sum(s)
        p = s / xp.where(total > 0, total, ops.scalar(1.0)) + self.rankme_eps
        plogp = xp.where(p > 0, p * ops.log(xp.where(p > 0, p, ops.scalar(1.0))), ops.scalar(0.0))
        rankme = xp.where(total > 0, xp.exp(-xp.sum(plogp)), ops.scalar(0.0))  # zero data: 0
        out = {
            "mean_std": xp.mean(std),
            "frac_below_gamma": frac,
            "std": std,
            "std_of_l2_normalized": std_u,
            "mean_pairwise_cosine": cosine,
            "rankme": rankme,
            "eigenvalues": w,
            "log_eigenvalues": ops.log(w),
        }
        if self._bad:
            out = {k: xp.full_like(v, math.nan) for k, v in out.items()}
        return {"n_samples": n, **{k: ops.out(v) for k, v in out.items()}}
