"""Per-layer eigenvalue-spectrum fits of the model-zoo scanner (METRICS.md §3).

Every function takes ``evals``, the eigenvalues l = s² of one layer's ESD (a 1-D float64 array in
any order, already carrying whatever Conv2d scaling the caller applied) and reproduces the
WeightWatcher 0.7.7 column of the same name, or the TempBalance estimator, with the loops replaced
by array code:

- `fit_powerlaw`: ``alpha, xmin, xmax, D, sigma, num_pl_spikes, status, warning`` of WW's default
  fit (``pl_package="ww"``, ``fit="PL"``, ``xmax=None``), including its small-spectrum rule.
  WW scans every candidate xmin with an O(n) step each, O(N²) in all; here α comes for all
  candidates from one reversed cumulative sum, and the KS distance D is evaluated over the full
  tail only for sampled anchors and for the few candidates a lower bound cannot rule out.
- `fit_tempbalance`: the training-time estimators of ``net_esd_estimator`` (YefanZhou/TempBalance).
- `norm_metrics`, `matrix_entropy_ww`, `hard_rank_ww`, `matrix_entropy`: WW's ``apply_norm_metrics``
  columns and the quick Marchenko–Pastur form.
- `mp_fit`: WW's ``mp_fit=True`` columns; the KDE is computed once instead of once per σ.
- `random_esd_metrics`, `shuffled`, `random_replicas`: WW's ``randomize=True`` columns.

Known WeightWatcher 0.7.7 behaviours reproduced on purpose (the scanner's docs list them): a failed
fit reports alpha = -1 *and* the warning "over-trained"; its ``fix_fingers="xmin_peak"`` never
succeeds in 0.7.7 (see `fit_powerlaw`); the small-spectrum fit reports sigma = -1/√N when no
candidate is eligible; ``entropy`` adds 1e-10 to every p and to the rank.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "EVALS_THRESH",
    "fit_powerlaw",
    "fit_tempbalance",
    "hard_rank_ww",
    "matrix_entropy",
    "matrix_entropy_ww",
    "mp_fit",
    "norm_metrics",
    "random_esd_metrics",
    "random_replicas",
    "shuffled",
]

#: Eigenvalues at or below this are dropped before any power-law fit (WW's ``EVALS_THRESH``).
EVALS_THRESH = 1e-5
#: Spectra with fewer fitted eigenvalues use WW's small-N rule (``WW_powerlaw.SMALL_N_CUTOFF``).
SMALL_N_CUTOFF = 20
#: Smallest tail the small-N rule accepts (``fit_powerlaw_smallN(k_min=8)``).
SMALL_N_MIN_TAIL = 8
OVER_TRAINED_THRESH = 2.0
UNDER_TRAINED_THRESH = 6.0
#: WW's ``EPSILON`` in ``matrix_entropy``.
WW_EPSILON = 1e-10
#: Working-memory bound for one block of the candidate scan and of the MP grid.
BLOCK_BYTES = 32 * 2**20
_ANCHOR_STEP, _WINDOW_HALF = 64, 2
_TB_ESTIMATORS = ("median", "xmin_peak", "xmin_peak_intended", "goodness_of_fit")


# ---- input ---------------------------------------------------------------------------------------


def _sorted_evals(evals: Any, name: str = "evals") -> np.ndarray:
    """`evals` as a sorted (ascending) float64 copy; ValueError for bad input."""
    a = np.asarray(evals)
    if a.dtype.kind == "c":
        raise TypeError(f"{name} must be real, got {a.dtype}")
    a = np.array(a, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name} holds NaN or Inf")
    if a.size and a.min() < 0:
        raise ValueError(f"{name} must be eigenvalues l = s^2 >= 0, got min {a.min()!r}")
    a.sort()
    return a


# ---- the candidate scan (shared by WW and TempBalance) -------------------------------------------


def _tail_log_sums(x: np.ndarray) -> np.ndarray:
    """T_i = Σ_{j≥i} ln(x_j / x_i) for every candidate i = 0..N-2 of sorted positive x.

    WW computes ``sum(log x[i:]) - n*log x[i]`` per candidate; the same quantity is the reversed
    cumulative sum of the non-negative terms (N-1-k)·(ln x_{k+1} - ln x_k), which needs no
    cancellation, so T is as accurate as the logs themselves and WW's own rounding (about
    eps·n·|ln x_i| / T_i relative) is the whole difference.
    """
    lg = np.log(x)
    n = x.size
    w = np.arange(n - 1, 0, -1, dtype=np.float64)  # N-1-k for k = 0..N-2
    g = w * np.diff(lg)
    return np.cumsum(g[::-1])[::-1]


def _exact_D(
    x: np.ndarray, idx: np.ndarray, expo: np.ndarray, *, where: bool = False
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """D_i = max_t |1 - (x_{i+t}/x_i)^(1-α_i) - t/n_i| for the sorted candidates `idx`.

    The expression and its order of operations are WW's ``1 - (data[i:] / xmin) ** (-alpha + 1)
    - np.arange(n) / n``, so every term, hence D, is the value WW's loop computes from the same α.
    Rows are laid out on absolute positions j = i + t (no gather): a block of nearby candidates
    shares the columns j ≥ min i, and the few j < i of a row are masked. With ``where=True`` also
    returns, per candidate, the positions j of the largest and the smallest signed term.
    """
    N = x.size
    D = np.empty(idx.size)
    jhi = np.empty(idx.size, dtype=np.int64) if where else None
    jlo = np.empty(idx.size, dtype=np.int64) if where else None
    s = 0
    while s < idx.size:
        i0 = int(idx[s])
        # rows of nearby candidates only (the masked triangle stays small), within BLOCK_BYTES
        cap = max(1, BLOCK_BYTES // (8 * 4 * (N - i0)))
        e = max(s + 1, min(s + cap, int(np.searchsorted(idx, i0 + 128, side="right"))))
        i = idx[s:e]
        t = np.arange(i0, N)[None, :] - i[:, None]
        g = x[None, i0:] / x[i][:, None]
        with np.errstate(over="ignore", invalid="ignore"):  # in the masked j < i only
            np.power(g, expo[s:e, None], out=g)
        np.subtract(1, g, out=g)
        g -= t / (N - i)[:, None]
        g[t < 0] = 0.0
        if where:
            jhi[s:e] = i0 + np.argmax(g, axis=1)
            jlo[s:e] = i0 + np.argmin(g, axis=1)
        np.abs(g, out=g)
        D[s:e] = g.max(axis=1)
        s = e
    return D, jhi, jlo


def _points_D(x: np.ndarray, idx: np.ndarray, expo: np.ndarray, j: np.ndarray) -> np.ndarray:
    """max over the positions j[r, :] (clipped to the tail) of candidate idx[r]'s |term|: a lower
    bound on its D made of exactly the terms `_exact_D` takes the maximum of."""
    N = x.size
    j = np.clip(j, idx[:, None], N - 1)
    t = j - idx[:, None]
    g = 1 - (x[j] / x[idx][:, None]) ** expo[:, None] - t / (N - idx)[:, None]
    return np.abs(g).max(axis=1)


def _argmin_D(x: np.ndarray, expo: np.ndarray, active: np.ndarray) -> tuple[int, float]:
    """First index minimising D over candidates 0..N-2 (D = 1 where not `active`), and that D.

    Exact D for every candidate costs O(N²) terms, as in WW's loop. Most candidates cannot be the
    minimum, and a lower bound shows it: consecutive candidates share their tail, so their largest
    deviations sit at nearly the same positions. The exact D (and the positions of the extreme
    terms) of every 64th candidate give an upper bound U on the minimum and, around those
    positions, a few terms of each other candidate give a lower bound L_i (a maximum over a subset
    of its own terms). Candidates with L_i > U cannot be the minimum (nor tie with it); the rest
    get the exact D, smallest L first, tightening U as they go. The index and the D returned are
    therefore exactly those of the full scan.
    """
    N = x.size
    D = np.ones(N - 1)
    cand = np.flatnonzero(active)
    if cand.size == 0:
        return 0, 1.0
    if cand.size <= 128:
        D[cand] = _exact_D(x, cand, expo[cand])[0]
        i = int(np.argmin(D))
        return i, float(D[i])
    step, half = _ANCHOR_STEP, _WINDOW_HALF
    apos = np.unique(np.r_[np.arange(0, cand.size, step), cand.size - 1])
    Da, jhi, jlo = _exact_D(x, cand[apos], expo[cand[apos]], where=True)
    # nearest anchors before and after each candidate, both extreme positions of each, ± half
    before = np.searchsorted(apos, np.arange(cand.size), side="right") - 1
    after = np.minimum(before + 1, apos.size - 1)
    centres = np.stack([jhi[before], jlo[before], jhi[after], jlo[after]], axis=1)
    win = (centres[:, :, None] + np.arange(-half, half + 1)).reshape(cand.size, -1)
    lb = _points_D(x, cand, expo[cand], win)
    lb[apos] = Da
    exact = np.zeros(cand.size, dtype=bool)
    exact[apos] = True
    Dc = np.full(cand.size, np.inf)
    Dc[apos] = Da
    U = float(Da.min())
    if cand.size < N - 1:
        U = min(U, 1.0)
    todo = np.flatnonzero(~exact & (lb <= U))
    todo = todo[np.argsort(lb[todo], kind="stable")]
    while todo.size:
        blk = np.sort(todo[:64])
        Dc[blk] = _exact_D(x, cand[blk], expo[cand[blk]])[0]
        U = min(U, float(Dc[blk].min()))
        todo = todo[64:]
        todo = todo[lb[todo] <= U]
    D[cand] = Dc
    i = int(np.argmin(D))
    return i, float(D[i])


# ---- WeightWatcher's power-law fit ---------------------------------------------------------------


def _failed_fit() -> dict[str, Any]:
    return {
        "alpha": -1.0,
        "xmin": -1.0,
        "xmax": math.nan,
        "D": -1.0,
        "sigma": -1.0,
        "num_pl_spikes": -1,
        "status": "failed",
        "warning": _warning(-1.0),
    }


def _warning(alpha: float) -> str:
    if alpha < OVER_TRAINED_THRESH:
        return "over-trained"
    if alpha > UNDER_TRAINED_THRESH:
        return "under-trained"
    return ""


def _ww_scan(x: np.ndarray, allowed: np.ndarray | None = None) -> tuple[int, float, float, float]:
    """WW's ``WWFit`` on sorted positive data x: (index, alpha, D, sigma) of the chosen xmin.

    `allowed` (fix_fingers) restricts the candidates; the others keep D = 1 and cannot win unless
    nothing allowed beats 1.
    """
    N = x.size
    T = _tail_log_sums(x)
    n = N - np.arange(N - 1)
    nf = n.astype(np.float64)
    small = N < SMALL_N_CUTOFF
    with np.errstate(divide="ignore", invalid="ignore"):
        if small:
            ok = (n >= SMALL_N_MIN_TAIL) & (T > 1e-12)
            alphas = np.where(ok, 1.0 + (nf - 1.0) / T, 0.0)
        else:
            ok = np.ones(N - 1, dtype=bool)
            alphas = 1.0 + nf / T
    active = ok & (alphas > 1)
    if allowed is not None:
        active &= allowed
    sigmas = (alphas - 1) / np.sqrt(nf)
    if small and allowed is None and not active.any():
        # WW's fallback: the whole spectrum as the tail. Its sigma was computed before the
        # fallback alpha was set, so it stays (0 - 1)/sqrt(N).
        if T[0] <= 1e-12:
            return 0, 0.0, 1.0, float(sigmas[0])
        a0 = 1.0 + (N - 1.0) / T[0]
        d0 = float(np.max(np.abs(np.arange(N) / float(N) - (1.0 - (x / x[0]) ** (1.0 - a0)))))
        return 0, float(a0), d0, float(sigmas[0])
    if allowed is not None and not active.any():
        return -1, math.nan, math.nan, math.nan
    i, d = _argmin_D(x, 1 - alphas, active)
    if allowed is not None and not allowed[i]:
        # min D is 1 and a candidate outside the range came first: the first allowed one ties
        i, d = int(np.flatnonzero(allowed)[0]), 1.0
    return i, float(alphas[i]), d, float(sigmas[i])


def _xmin_peak_range(nz: np.ndarray, xmin_max: float | None) -> tuple[float, float]:
    """WW's fix_fingers='xmin_peak' candidate range (lo, hi), lo carrying WW's log10 quirk."""
    counts, edges = np.histogram(np.log10(nz), bins=100)
    xmin2 = 10 ** edges[int(np.argmax(counts))]
    hi = 1.5 * xmin2 if xmin_max is None else float(xmin_max)
    return float(np.log10(0.95 * xmin2)), float(hi)


def fit_powerlaw(
    evals: Any, *, fix_fingers: str | None = None, xmin_max: float | None = None
) -> dict[str, Any]:
    """WeightWatcher 0.7.7's power-law fit of one ESD (its ``alpha``, ``xmin``, ``D``, ... columns).

    The fitted data are x = the eigenvalues > 1e-5 (strict; `EVALS_THRESH`), sorted. Every x_k
    but the largest is a candidate xmin with tail x_k … x_N (n = N - k + 1 points, positional);
    α = 1 + n / Σ ln(x_j / xmin), and when α > 1, D = max_t |1 - (x_{k+t}/xmin)^(1-α) - t/n|
    (else D = 1). The first candidate minimising D wins. Spectra with N < 20 fitted values use WW's
    small-N rule instead: α = 1 + (n - 1)/Σ ln(x_j/xmin), only tails with n ≥ 8 and Σ > 1e-12 are
    eligible (the rest keep D = 1, α = 0), and if none is, the whole spectrum is the tail.

    Parameters
    ----------
    evals : array_like
        The eigenvalues l = s² (1-D, any order).
    fix_fingers : {None, "xmin_peak"}, optional
        ``"xmin_peak"``: WW's rule — a 100-bin ``np.histogram`` of log10 x; xmin2 = 10^(left edge of
        the fullest bin); only candidates with log10(0.95·xmin2) ≤ x_k ≤ `xmin_max` (default
        1.5·xmin2) compete. The lower limit compares a linear x with a log10 value exactly as WW's
        code does (it is therefore almost never binding). WeightWatcher 0.7.7 itself never completes
        this fit: with ``pl_package="ww"`` its ``WWFit`` cannot take an xmin range (numpy
        broadcasting error → status "failed"), and with ``pl_package="powerlaw"`` it passes a
        keyword powerlaw 2.x rejects. This is the rule its code evidently means, applied to its
        own estimator; when no candidate lies in the range (or, below 20 values, none in it is
        eligible) the fit fails.
    xmin_max : float, optional
        Upper end of the xmin range for ``fix_fingers="xmin_peak"``.

    Returns
    -------
    dict
        ``alpha, xmin, xmax, D, sigma, num_pl_spikes, status, warning``: sigma = (α - 1)/√n,
        xmax = the largest fitted value, num_pl_spikes = #{l ≥ xmin} over all of `evals`, status
        "success"/"failed", warning "over-trained" (α < 2), "under-trained" (α > 6) or "".
        A failed fit (fewer than 2 values above 1e-5, or no candidate in the fix_fingers range)
        gives WW's failure values: alpha = xmin = D = sigma = -1, num_pl_spikes = -1, and warning
        "over-trained" (WW tests the -1); xmax is NaN where WW leaves None.
    """
    if fix_fingers not in (None, False, "xmin_peak"):
        raise ValueError(f"fix_fingers must be None or 'xmin_peak', got {fix_fingers!r}")
    ev = _sorted_evals(evals)
    x = ev[ev > EVALS_THRESH]
    if x.size < 2:
        # WW: an empty sequence fails indexing, one value fails argmin over no candidates.
        return _failed_fit()
    allowed = None
    if fix_fingers == "xmin_peak":
        lo, hi = _xmin_peak_range(x, xmin_max)
        cand = x[:-1]
        allowed = (cand >= lo) & (cand <= hi)
    i, alpha, D, sigma = _ww_scan(x, allowed)
    if i < 0:
        return _failed_fit()
    xmin = float(x[i])
    return {
        "alpha": alpha,
        "xmin": xmin,
        "xmax": float(x[-1]),
        "D": D,
        "sigma": sigma,
        "num_pl_spikes": int(np.count_nonzero(ev >= xmin)),
        "status": "success",
        "warning": _warning(alpha),
    }


# ---- TempBalance's estimators --------------------------------------------------------------------


def _linspace_torch(start: float, end: float, steps: int) -> np.ndarray:
    """torch.linspace's values: start + i·step below the midpoint, end - (steps-1-i)·step above.

    (torch's vectorised kernel adds the step to a per-vector base instead: last-bit differences.)
    """
    step = (end - start) / (steps - 1)
    i = np.arange(steps)
    half = steps // 2
    return np.where(i < half, start + step * i, end - step * (steps - 1 - i))


def _histc_argmax(v: np.ndarray, bins: int) -> int:
    """Index of the fullest bin of torch.histc(v, bins, min=v.min(), max=v.max())."""
    lo, hi = float(v.min()), float(v.max())
    if lo == hi:  # torch widens a zero-width range to [lo - 1, hi + 1]
        lo, hi = lo - 1.0, hi + 1.0
    pos = ((v - lo) * bins / (hi - lo)).astype(np.int64)
    pos[pos == bins] = bins - 1
    return int(np.argmax(np.bincount(pos, minlength=bins)))


def fit_tempbalance(
    evals: Any,
    *,
    estimator: str = "median",
    filter_zeros: bool = False,
    conv_scaled: bool = False,
) -> dict[str, Any]:
    """Training-time power-law estimators of TempBalance's ``net_esd_estimator`` (METRICS.md §3).

    λ = sorted `evals` (``filter_zeros``: only λ > 1e-5, unless none is), N = count.

    - ``"median"`` (TempBalance "median", a.k.a. xmin_mid): i = ⌊N/2⌋, xmin = λ_i, n = N - i,
      α = 1 + n / Σ_{j≥i} ln(λ_j/λ_i), D = max_t |1 - (λ_{i+t}/xmin)^(1-α) - t/n| (D is computed
      whatever α is).
    - ``"xmin_peak"`` (TempBalance "fix-finger"): b = left edge of the fullest of 100 torch.histc
      bins of log10 λ over [min, max]; xmin2 = 10^b; the WW-style scan (α as above for each i < N-1,
      D only when α > 1, else D = 1; candidates outside the range keep α = 0, D = 1) over candidates
      with log10(0.95·xmin2) ≤ λ_i ≤ 1.5·xmin2; first argmin of D. The lower limit compares λ with a
      log10 value, exactly as the reference does.
    - ``"xmin_peak_intended"``: the same with the evidently intended 0.95·xmin2 ≤ λ_i.
    - ``"goodness_of_fit"`` (TempBalance "goodness-of-fit"): the unrestricted scan.

    The reference computes in the weights' dtype (float32 in practice; its t/n and histogram edges
    are float32 even for float64 weights); this computes everything in float64. λ = 0 (possible
    without ``filter_zeros``) gives α = NaN for that candidate, as the reference's log(0) does.

    Parameters
    ----------
    evals : array_like
        Eigenvalues l = s².
    estimator : {"median", "xmin_peak", "xmin_peak_intended", "goodness_of_fit"}
    filter_zeros : bool
        Drop λ ≤ 1e-5 first (TempBalance's ``filter_zeros``).
    conv_scaled : bool
        Apply TempBalance's Conv2d scaling here: multiply `evals` by conv_norm = 0.5 (it scales a
        Conv2d kernel by √0.5 before the per-slice SVD). Leave False for Linear layers and when the
        caller already scaled. Only xmin, the spectral norm, alphahat and (through the 1e-5 filter
        and the log10 quirk) the choice of xmin depend on it: α and D are scale-free.

    Returns
    -------
    dict
        ``alpha, D, xmin, num_pl_spikes`` (the tail size n), ``alphahat`` = α·log10 λ_max,
        ``spectral_norm`` = λ_max and ``norm`` = Σλ (both over all λ, TempBalance's columns).
        The scan estimators with a single λ give NaN (the reference fails there).
    """
    if estimator not in _TB_ESTIMATORS:
        raise ValueError(f"estimator must be one of {_TB_ESTIMATORS}, got {estimator!r}")
    eigs = _sorted_evals(evals)
    if eigs.size == 0:
        raise ValueError("evals is empty")
    if conv_scaled:
        eigs = eigs * 0.5
    spectral_norm = float(eigs[-1])
    norm = float(np.sum(eigs))
    lam = eigs
    if filter_zeros:
        nz = eigs[eigs > EVALS_THRESH]
        lam = nz if nz.size else eigs
    N = lam.size
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        lg = np.log(lam)
        if estimator == "median":
            i = int(N / 2)
            n = N - i
            if lam[i] > 0:
                T = np.sum(np.diff(lg[i:]) * np.arange(n - 1, 0, -1, dtype=np.float64))
                alpha = float(1 + np.float64(n) / T)
                D = float(np.max(np.abs(1 - (lam[i:] / lam[i]) ** (1 - alpha) - np.arange(n) / n)))
            else:
                alpha, D = math.nan, math.nan
        elif N < 2:
            i, n, alpha, D = 0, N, math.nan, math.nan
        else:
            allowed = np.ones(N - 1, dtype=bool)
            if estimator != "goodness_of_fit":
                if lam[0] <= 0:
                    raise ValueError(
                        "estimator 'xmin_peak' needs filter_zeros=True when evals holds zeros "
                        "(the reference's torch.histc fails on log10(0))"
                    )
                v = np.log10(lam)
                edges = _linspace_torch(float(v.min()), float(v.max()), 101)
                xmin2 = 10 ** edges[_histc_argmax(v, 100)]
                lo = np.log10(0.95 * xmin2) if estimator == "xmin_peak" else 0.95 * xmin2
                allowed = (lam[:-1] >= lo) & (lam[:-1] <= 1.5 * xmin2)
            T = np.zeros(N - 1)
            pos = lam[:-1] > 0
            first = int(np.argmax(pos)) if pos.any() else N - 1
            if first < N - 1:
                T[first:] = _tail_log_sums(lam[first:])
            nf = (N - np.arange(N - 1)).astype(np.float64)
            alphas = np.where(pos, 1 + nf / T, math.nan)
            alphas = np.where(allowed, alphas, 0.0)
            active = allowed & (alphas > 1)
            i, D = _argmin_D(lam, 1 - alphas, active)  # reads x_j, j >= i > zeros only
            n = N - i
            alpha = float(alphas[i])
    return {
        "alpha": float(alpha),
        "D": float(D),
        "xmin": float(lam[i]) if N else math.nan,
        "num_pl_spikes": int(n),
        "alphahat": float(alpha) * math.log10(spectral_norm) if spectral_norm > 0 else math.nan,
        "spectral_norm": spectral_norm,
        "norm": norm,
    }


# ---- norm metrics and entropies ------------------------------------------------------------------


def _log10_sum_pow(ev: np.ndarray, alpha: float) -> float:
    """log10 Σ l^α: WW's direct sum where it is finite and non-zero, else the same in log space."""
    if math.isnan(alpha):
        return math.nan
    with np.errstate(over="ignore", divide="ignore", under="ignore", invalid="ignore"):
        direct = float(np.sum(ev**alpha))
        if math.isfinite(direct) and direct > 0:
            return math.log10(direct)
        pos = ev > 0
        terms = np.full(ev.shape, -np.inf if alpha > 0 else (0.0 if alpha == 0 else np.inf))
        terms[pos] = alpha * np.log(ev[pos])
    top = float(terms.max()) if terms.size else -np.inf
    if not math.isfinite(top):
        return top / math.log(10) if top > 0 else -math.inf
    return (top + math.log(float(np.sum(np.exp(terms - top))))) / math.log(10)


def norm_metrics(
    evals: Any, alpha: float, *, N: int, M: int, tw: bool = False
) -> dict[str, float | int]:
    """WW's ``apply_norm_metrics`` columns and the quick Marchenko–Pastur soft rank.

    Parameters
    ----------
    evals : array_like
        The whole ESD, l = s² (WW uses every eigenvalue here, zeros included).
    alpha : float
        The power-law exponent (WW's fitted ``alpha``, -1 for a failed fit).
    N, M : int
        The larger and the smaller dimension of one matrix (Q = N/M).
    tw : bool
        Add the Tracy–Widom margin to the quick bulk edge (see below).

    Returns
    -------
    dict
        ``norm`` = Σl, ``log_norm`` = log10 Σl, ``spectral_norm`` = l_max,
        ``log_spectral_norm`` = log10 l_max, ``alpha``, ``alpha_weighted`` = α·log10 l_max,
        ``log_alpha_norm`` = log10 Σ l^α, ``stable_rank`` = Σl/l_max, and the quick MP form
        ``mp_softrank`` = λ₊/l_max, ``num_spikes`` = #{l > λ₊}.
        log_alpha_norm equals WW's value wherever WW's plain sum is finite and non-zero; where WW
        overflows to inf (or underflows to -inf) this gives the finite value, from log-space
        summation.
        Quick MP form: λ₊ = σ²(1 + 1/√Q)² with σ² = Σl / (number of eigenvalues) — the mean
        eigenvalue, N·(per-entry variance) since l = s² carries no 1/N; for one matrix this is
        ‖W‖_F²/M, for pooled Conv2d slices the mean over all slices. It is the bulk edge of WW's
        ``mp_fit`` with σ = 1 in WW's rescaled units (mean eigenvalue 1). ``tw=True`` counts
        l > λ₊ + m·√(Q^(-1/2) (λ₊/m)^(2/3) M^(-2/3)), m the mean eigenvalue: WW's Tracy–Widom
        margin in the same units.
    """
    ev = _sorted_evals(evals)
    if ev.size == 0:
        raise ValueError("evals is empty")
    alpha = float(alpha)
    with np.errstate(divide="ignore", invalid="ignore"):
        norm = float(np.sum(ev))
        lmax = float(np.max(ev))
        log_norm = float(np.log10(norm))
        log_spectral_norm = float(np.log10(lmax))
        stable_rank = norm / lmax if lmax > 0 else math.nan
    Q = N / M
    mean = norm / ev.size
    lam_plus = mean * (1 + 1 / math.sqrt(Q)) ** 2
    edge = lam_plus
    if tw:
        edge = lam_plus + mean * math.sqrt(Q**-0.5 * (lam_plus / mean) ** (2 / 3) * M ** (-2 / 3))
    return {
        "norm": norm,
        "log_norm": log_norm,
        "spectral_norm": lmax,
        "log_spectral_norm": log_spectral_norm,
        "alpha": alpha,
        "alpha_weighted": alpha * log_spectral_norm,
        "log_alpha_norm": _log10_sum_pow(ev, alpha),
        "stable_rank": stable_rank,
        "mp_softrank": lam_plus / lmax if lmax > 0 else math.nan,
        "num_spikes": int(np.count_nonzero(ev > edge)),
    }


def hard_rank_ww(evals: Any, N: int) -> int:
    """WW's ``matrix_rank`` column: #{s > s_max · N · eps(float64)}, s = √l, N the larger dim.

    (Not WW's ``RMT_Util.hard_rank`` helper, whose Numerical-Recipes tolerance divides by
    √(m + n + 1) where it should multiply; the column does not use it.)
    """
    s = np.sqrt(_sorted_evals(evals))
    return _hard_rank_ww(s, N) if s.size else 0


def _hard_rank_ww(s: np.ndarray, N: int) -> int:
    """#{s > s_max · N · eps(float64)} of a non-empty float64 s."""
    return int(np.count_nonzero(s > np.max(s) * N * np.finfo(np.float64).eps))


def matrix_entropy_ww(evals: Any, N: int, rank: int | None = None) -> float:
    """WW's ``entropy`` column: -Σ p' ln p' / ln(rank + 1e-10), p' = l/Σl + 1e-10.

    rank = `hard_rank_ww` (pass it when already computed). Reproduced operation for operation (l is
    recomputed as (√l)², as WW does). A zero spectrum gives NaN and an empty one -1, as in WW.
    """
    s = np.sqrt(_sorted_evals(evals))
    if s.size == 0:
        return -1.0
    if rank is None:
        rank = _hard_rank_ww(s, N)
    e = s * s
    with np.errstate(divide="ignore", invalid="ignore"):
        p = e / np.sum(e) + WW_EPSILON
        return float(-np.sum(p * np.log(p)) / np.log(rank + WW_EPSILON))


def matrix_entropy(evals: Any, rank: int) -> float:
    """Plain matrix entropy: -Σ p ln p / ln(rank), p = l/Σl, 0 ln 0 = 0 (METRICS.md §3).

    ``rank`` comes from the §1 rank policy in use. rank ≤ 1 or a zero spectrum give 0.0 (fully
    collapsed).
    """
    ev = _sorted_evals(evals)
    total = float(np.sum(ev))
    if rank <= 1 or total <= 0:
        return 0.0
    p = ev[ev > 0] / total
    return float(-np.sum(p * np.log(p)) / math.log(rank))


# ---- Marchenko–Pastur fit ------------------------------------------------------------------------


class _MPResidual:
    """WW's ``resid_mp(sigma, evals, Q, bw=0.1, allresid=False)`` with the KDE computed once.

    WW refits a linear-kernel KDE (sklearn ``KernelDensity``, bandwidth 0.1) of the same data at
    every σ the optimiser tries; it does not depend on σ. Here it is one banded sum over sorted data
    (sklearn's tree sums the same kernel values in log space, so the densities agree to ~1e-14
    relative), and the residual is evaluated for any number of σ at once.
    """

    def __init__(self, to_fit: np.ndarray, Q: float, bw: float = 0.1) -> None:
        d = np.sort(to_fit)
        xde = np.linspace(0, np.max(d) + 0.5, 1000)
        # a window a little wider than the kernel; the exact test is dist < bw below
        lo = np.searchsorted(d, xde - bw * (1 + 1e-9), side="right")
        hi = np.searchsorted(d, xde + bw * (1 + 1e-9), side="left")
        S = np.zeros(xde.size)
        width = int((hi - lo).max()) if xde.size else 0
        if width:
            rows = max(1, BLOCK_BYTES // (8 * 4 * width))
            cols = np.arange(width)
            for s in range(0, xde.size, rows):
                j = cols[None, :] + lo[s : s + rows, None]
                inside = j < hi[s : s + rows, None]
                dist = np.abs(xde[s : s + rows, None] - d[np.minimum(j, d.size - 1)])
                S[s : s + rows] = np.where(inside & (dist < bw), 1 - dist / bw, 0.0).sum(axis=1)
        # sklearn: log density = log(sum of kernels) + log kernel norm - log N
        log_knorm = -((0.5 * math.log(math.pi) - math.lgamma(1.5)) - math.log(2.0)) - math.log(bw)
        with np.errstate(divide="ignore"):
            yde = np.exp(np.log(S) + log_knorm - np.log(d.size))
        good = yde > 0.01  # WW drops density < 0.01 (and == 0.01 from both lists)
        self.n_bad = int(np.count_nonzero(yde < 0.01))
        self.x = xde[good]
        self.y = yde[good]
        self.Q = Q
        if self.x.size:
            self.x_peak = self.x[np.flatnonzero(self.y == np.max(self.y))[0]]
            self.x_top = np.max(self.x)

    def __call__(self, sigma: np.ndarray) -> np.ndarray:
        """Sum of squared residuals for each σ in the 1-D array `sigma`."""
        if self.x.size == 0:
            raise ValueError("no KDE point with density above 0.01")
        sig = np.asarray(sigma, dtype=np.float64).reshape(-1, 1)
        x, Q = self.x[None, :], self.Q
        rows = max(1, BLOCK_BYTES // (8 * 4 * (x.size + self.n_bad)))
        out = np.empty(sig.shape[0])
        for s in range(0, sig.shape[0], rows):
            sg = sig[s : s + rows]
            with np.errstate(divide="ignore", invalid="ignore"):
                if Q == 1:
                    ymp = np.nan_to_num((1 / (np.pi * sg * sg)) * np.sqrt(4 - x**2))
                    resid = ymp - self.y
                else:
                    y = 1 / Q
                    b = np.power(sg * (1 + np.sqrt(1 / Q)), 2)
                    a = np.power(sg * (1 - np.sqrt(1 / Q)), 2)
                    ymp = np.nan_to_num(
                        (1 / (2 * np.pi * sg * sg * x * y)) * np.sqrt((b - x) * (x - a))
                    )
                    off = (b < self.x_peak) | (b > self.x_top) | (a > self.x_peak)
                    resid = np.where(off, 1000.0, ymp - self.y)
            # WW appends one zero per dropped point before summing; same layout, same rounding.
            full = np.concatenate([resid, np.zeros((sg.shape[0], self.n_bad))], axis=1)
            out[s : s + rows] = np.sum(full**2, axis=1)
        return out


def _fit_sigma(to_plot: np.ndarray, Q: float) -> float:
    """WW's ``fit_density_with_range``: brute force over its σ grid, then ``fmin`` polishing."""
    from scipy import optimize

    lmax = np.max(to_plot)
    scale = np.sqrt(lmax / np.square(1.0 + 1.0 / np.sqrt(Q)))  # WW's calc_sigma
    grid = np.mgrid[slice(0.05 * scale, 2.0 * scale, 0.01 * scale)]
    resid = _MPResidual(np.sqrt(to_plot) if Q == 1 else to_plot, Q)
    start = grid[int(np.argmin(resid(grid)))]
    # scipy.optimize.brute's default finish, called as brute calls it.
    res = optimize.fmin(lambda p: float(resid(p)[0]), start, full_output=1, disp=False)
    return float(res[0][0])


def _mp_columns(evals: np.ndarray, N: int, M: int) -> dict[str, float | int]:
    """num_spikes, sigma_mp, mp_softrank, bulk_min, bulk_max, W_scale of WW's ``mp_fit``."""
    Q = N / M
    wnorm = np.sqrt(np.sum(evals))
    wscale = np.sqrt(evals.shape[0]) / wnorm
    to_plot = (wscale * wscale) * evals
    lambda_max = np.max(to_plot)
    s1 = _fit_sigma(to_plot, Q)
    bulk_max = (s1 * (1 + 1 / np.sqrt(Q))) ** 2
    bulk_min = (s1 * (1 - 1 / np.sqrt(Q))) ** 2
    TW = 1 / np.sqrt(Q) * np.power(bulk_max, 2 / 3) * np.power(M, -2 / 3)
    num_spikes = int(np.count_nonzero(to_plot > bulk_max + np.sqrt(TW)))
    return {
        "num_spikes": num_spikes,
        "sigma_mp": s1,
        "mp_softrank": float(bulk_max / lambda_max),
        "bulk_min": float(bulk_min / (wscale * wscale)),
        "bulk_max": float(bulk_max / (wscale * wscale)),
        "W_scale": float(wscale),
    }


_MP_FAILED = {
    "num_spikes": -1,
    "sigma_mp": -1.0,
    "mp_softrank": -1.0,
    "bulk_min": -1.0,
    "bulk_max": -1.0,
    "W_scale": -1.0,
}


def mp_fit(evals: Any, *, N: int, M: int, rf: int = 1) -> dict[str, float | int]:
    """WW's ``mp_fit=True`` columns for one ESD (``apply_mp_fit(random=False)``).

    WW rescales λ′ = λ·n/Σλ (``W_scale`` = √(n/Σλ)), fits σ by ``scipy.optimize.brute`` over
    σ ∈ [0.05, 2.0)·σ₀ in steps of 0.01·σ₀, σ₀ = √(λ′_max)/(1 + 1/√Q), minimising the squared
    residual between the MP density (Q = 1: the quarter-circle law on √λ′) and a linear-kernel KDE
    (bandwidth 0.1) of λ′ on 1000 points over [0, λ′_max + 0.5] with points of density < 0.01
    dropped, σ outside the admissible region costing 1000 per point; brute then polishes with
    ``scipy.optimize.fmin``. Here the whole grid is one array evaluation and fmin runs on the same
    residual function.

    Parameters
    ----------
    evals : array_like
        The whole ESD, l = s².
    N, M : int
        Larger and smaller dimension of one matrix; Q = N/M, M enters the Tracy–Widom margin.
    rf : int
        Receptive field (WW passes it and does not use it); kept for call parity.

    Returns
    -------
    dict
        ``num_spikes`` = #{λ′ > bulk_max′ + √TW}, TW = Q^(-1/2)·bulk_max′^(2/3)·M^(-2/3);
        ``sigma_mp`` (in rescaled units); ``mp_softrank`` = bulk_max′/λ′_max; ``bulk_max``,
        ``bulk_min`` = (σ(1 ± 1/√Q))² back in the units of `evals`; ``W_scale``. Where WW's fit
        raises (a zero spectrum, no KDE point above 0.01) every value is -1, as WW reports.
    """
    del rf
    ev = _sorted_evals(evals)
    if ev.size == 0 or not np.sum(ev) > 0:
        return dict(_MP_FAILED)
    try:
        return _mp_columns(ev, N, M)
    except ValueError:
        return dict(_MP_FAILED)


# ---- randomised ESD ------------------------------------------------------------------------------


def random_replicas(n_comp: int) -> int:
    """How many shuffled copies WW pools for the random ESD: 5 when n_comp < 100, else 1.

    (``apply_random_esd``: for each replica, each matrix of the layer is shuffled in turn, and the
    top n_comp eigenvalues of each are pooled. Its distance columns then use one further, separate
    single-replica shuffle.)
    """
    return 5 if n_comp < 100 else 1


def shuffled(W: Any, rng: np.random.Generator | np.random.RandomState | int | None) -> np.ndarray:
    """The element-shuffled copy of `W` that WW's ``random_eigenvalues`` takes the spectrum of.

    The flattened (C-order) entries of `W` are permuted and reshaped to ``W.shape``; `W` is not
    modified. With a ``np.random.RandomState`` seeded as WW's global state, the permutation is the
    one WW's ``np.random.shuffle`` draws. With a ``np.random.Generator`` (or a seed), one 63-bit
    draw of it seeds the core's Fisher–Yates shuffle (uniform like numpy's, ~5× faster: numpy's
    permutation costs ~13 ns per element even in cache), so a seed still fixes the result.
    """
    a = np.asarray(W)
    if isinstance(rng, np.random.RandomState):
        return rng.permutation(a.reshape(-1)).reshape(a.shape)
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    if a.dtype.itemsize not in (1, 2, 4, 8) or a.dtype.hasobject:
        return rng.permutation(a.reshape(-1)).reshape(a.shape)
    from .._backend import _core

    return _core.shuffled(np.ascontiguousarray(a), int(rng.integers(0, 2**63)))


def _jensen_shannon(p: np.ndarray, q: np.ndarray) -> float:
    """WW's jensen_shannon_distance: scipy.stats.entropy normalises p, q and m = (p+q)/2 itself."""
    from scipy.special import rel_entr

    m = (p + q) / 2

    def kl(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.sum(rel_entr(1.0 * a / np.sum(a), 1.0 * b / np.sum(b))))

    return math.sqrt((kl(p, m) + kl(q, m)) / 2)


def random_esd_metrics(
    evals: Any,
    rand_evals: Any,
    *,
    N: int,
    M: int,
    rf: int = 1,
    pooled_rand_evals: Any = None,
) -> dict[str, float | int]:
    """WW's ``randomize=True`` columns (``apply_random_esd`` + ``apply_mp_fit(random=True)``).

    Parameters
    ----------
    evals : array_like
        The layer's ESD.
    rand_evals : array_like
        The ESD of one element-shuffled copy (`shuffled`), same length as `evals`: WW's
        ``rand_distance``, ``ww_softrank`` and ``ww_maxdist`` use such a single shuffle.
    N, M, rf : int
        As in `mp_fit`.
    pooled_rand_evals : array_like, optional
        The pooled replicas (`random_replicas`) WW stores as ``rand_evals`` and feeds to
        ``max_rand_eval`` and the random MP fit; defaults to `rand_evals`. (WW draws it separately
        from the single shuffle above, so even with one replica its ``max_rand_eval`` and
        ``ww_softrank`` come from two different shuffles.)

    Returns
    -------
    dict
        ``max_rand_eval``; ``rand_distance`` = Jensen–Shannon distance between sorted `evals` and
        sorted `rand_evals`, each normalised to sum 1 (natural log); ``ww_softrank`` =
        max(rand)/max(evals); ``ww_maxdist`` = max(evals) - max(rand); and the random-ESD MP fit
        ``rand_num_spikes`` = ``num_traps``, ``rand_sigma_mp``, ``rand_mp_softrank``,
        ``rand_W_scale``, ``rand_bulk_max``, ``rand_bulk_min``.
    """
    ev = _sorted_evals(evals)
    single = _sorted_evals(rand_evals, "rand_evals")
    pooled = single if pooled_rand_evals is None else _sorted_evals(pooled_rand_evals)
    if single.shape != ev.shape:
        raise ValueError(
            f"rand_evals must have the length of evals ({ev.size}), got {single.size}; "
            "pass replicas as pooled_rand_evals"
        )
    if pooled.size == 0:
        raise ValueError("rand_evals is empty")
    fit = mp_fit(pooled, N=N, M=M, rf=rf)
    out: dict[str, float | int] = {"max_rand_eval": float(np.max(pooled))}
    if ev.size:
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero ESD: 0/0 = NaN, as in WW
            out["rand_distance"] = _jensen_shannon(ev, single)
            out["ww_softrank"] = float(np.max(single) / np.max(ev))
        out["ww_maxdist"] = float(np.max(ev) - np.max(single))
    out.update(
        {
            "rand_num_spikes": fit["num_spikes"],
            "num_traps": fit["num_spikes"],
            "rand_sigma_mp": fit["sigma_mp"],
            "rand_mp_softrank": fit["mp_softrank"],
            "rand_W_scale": fit["W_scale"],
            "rand_bulk_max": fit["bulk_max"],
            "rand_bulk_min": fit["bulk_min"],
        }
    )
    return out
