"""Neural-collapse metrics (Papyan, Han & Donoho 2020), deep neural collapse, and a streaming accumulator.

Formulas are those of METRICS.md §6. Notation: features h_i (rows of H, N × d; trailing feature
dimensions are flattened, so (N, C, H, W) activations work), labels y_i in 0..K−1, class means
μ_c, global mean μ_G = the mean of the class means (Papyan's notebook, rhubarbwu/neural-collapse;
``weighted=True``: the sample mean, as Zhu et al. 2021), M̃ the K × d matrix of rows μ_c − μ_G,

    Σ_W = (1/N) Σ_i (h_i − μ_{y_i})(h_i − μ_{y_i})ᵀ,    Σ_B = (1/K) Σ_c (μ_c − μ_G)(μ_c − μ_G)ᵀ.

======================  ==========================================================================
function                value
======================  ==========================================================================
`nc1`                   tr(Σ_W Σ_B⁺) / K; Σ_B⁺ drops eigenvalues ≤ d · eps(stored dtype) · λ₁ (the
                        scipy/torch pinv rule, never numpy's fixed 1e-15, which inverts round-off);
                        ``variant="topk"`` inverts exactly the top K − 1 eigenpairs (Papyan's
                        notebook; K − 1 for the sample-mean μ_G too, see `nc1`); ``per_class=False``
                        omits the / K, as the notebook reports it
`nc1_quotient`          tr Σ_W / tr Σ_B
`cdnv`                  mean over pairs c < c′ of (V_c + V_c′) / (2 ‖μ_c − μ_c′‖²), V_c the mean
                        squared distance of class c's features to μ_c (Galanti et al. 2022)
`nc2_equinorm`          std(‖μ_c − μ_G‖) / mean (ddof 1)
`nc2_equiangularity`    Σ_{c≠c′} |cos(μ̃_c, μ̃_c′) + 1/(K−1)| / (K(K−1))
`nc2_etf_error`         ‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F, G = M̃M̃ᵀ (not squared); the NC2
                        functions take ``on="W"`` for the rows of the classifier W instead
`nc3`                   ‖W/‖W‖_F − M̃/‖M̃‖_F‖_F² (Papyan); ``variant="zhu"``:
                        ‖WM̃ᵀ/‖WM̃ᵀ‖_F − (I − 11ᵀ/K)/√(K−1)‖_F (not squared)
`nc4`                   1 − agreement of the nearest (uncentred, Euclidean) class mean and
                        argmax(W h + b); ``bias=False`` drops b
`class_mean_rank`       rank of the class-mean matrix (uncentred: ≤ K; ``center=True``: of M̃,
                        ≤ K − 1): count(s > max(atol, rtol · s₁)), atol 1e-6 by default
`deep_neural_collapse`  the above (but NC3/NC4) for every layer of a list: a pandas DataFrame
======================  ==========================================================================

Everything is computed in float64, with numpy for host inputs and with torch ops on the tensor's
device for torch tensors (CPU or CUDA), and returned as a float64 (rank: int64) scalar in the
caller's framework: a numpy scalar, or a 0-d tensor on the input's device.

Errors: a class without samples raises ValueError naming it; so do labels outside 0..K−1 and
K = 1 for NC1, CDNV, NC2 and NC3 (they compare classes). K is ``num_classes=`` when given, else
the number of rows of W, else max(label) + 1 (a ValueError, before allocating, when that exceeds
the number of samples N: some class would be empty). NaN/Inf features raise ValueError
(``check_finite=False``: NaN results). `NeuralCollapse(K, d)` refuses at construction a K, d whose
float64 accumulators exceed the machine's RAM.

`NeuralCollapse` accumulates the same statistics over batches in O(K d + d²) memory, in one pass
(shifted moments) or two (class means, then the centred Σ_W, as the reference implementations do).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ._arrays import eps_of, is_real
from ._xp import Ops, as_float64, as_labels, pow2_scale

__all__ = [
    "NeuralCollapse",
    "cdnv",
    "class_mean_rank",
    "deep_neural_collapse",
    "nc1",
    "nc1_quotient",
    "nc2_equiangularity",
    "nc2_equinorm",
    "nc2_etf_error",
    "nc3",
    "nc4",
]

_ROW_BLOCK = 4096  # rows per block for NC4's (rows × K) distance and logit matrices


# ---- statistics shared by the one-shot functions and the accumulator ---------------------------------


@dataclass
class _Moments:
    """Sufficient statistics of labelled features for every metric: counts, class means, and Σ_W
    through its quadratic forms (Σ_W itself is never needed for the one-shot functions)."""

    ops: Ops
    counts: Any  # (K,) float64
    means: Any  # (K, d)
    quad: Callable[[Any], Any] | None  # V (d, r) -> diag(Vᵀ Σ_W V), shape (r,); None: see _moments(within=)
    tr_sw: Any  # tr Σ_W (None with quad)
    var_c: Any  # (K,) V_c = (1/N_c) Σ_{y_i = c} ‖h_i − μ_c‖² (None with quad)
    eps: float  # eps of the dtype the features were stored in
    weighted: bool
    sw: Any = None  # Σ_W / scale² (d, d), when it was formed (the accumulator)
    # quad, tr_sw, var_c and sw are those of the features divided by `scale` (a power of two near
    # max |h|, see _unit: squares neither overflow nor underflow): every metric that reads them is
    # scale-invariant and pairs them with unit_centred_means()
    scale: Any = 1.0

    @property
    def K(self) -> int:
        return int(self.means.shape[0])

    @property
    def d(self) -> int:
        return int(self.means.shape[1])

    def global_mean(self) -> Any:
        xp = self.ops.xp
        if self.weighted:
            return (self.counts @ self.means) / xp.sum(self.counts)
        return xp.mean(self.means, axis=0)

    def centred_means(self) -> Any:
        return self.means - self.global_mean()

    def unit_centred_means(self) -> Any:
        """centred_means() / scale: on the scale of the within-class statistics."""
        return self.centred_means() / self.scale


def _unit(x: Any, ops: Ops) -> tuple[Any, Any]:
    """(x / scale, scale) with scale = pow2_scale(x, ops): max |x / scale| in [1, 2). The scale-invariant
    metrics work on x / scale so that sums of squares neither overflow (finite float64 data beyond
    ~1e154 gave NaN and inf) nor underflow (below ~1e-154: inf, or ±0 cancelling to wrong values);
    a power of two divides exactly, so results in the normal range are unchanged."""
    scale = pow2_scale(x, ops)
    return x / scale, scale


def _check_classes(counts_host: np.ndarray) -> None:
    empty = np.flatnonzero(counts_host == 0)
    if empty.size:
        more = f" (and {empty.size - 1} more)" if empty.size > 1 else ""
        raise ValueError(f"class {int(empty[0])} has no samples{more}; every class 0..K-1 needs at least one")


def _features(H: Any, what: str = "H") -> tuple[Any, Ops, str]:
    a, ops, dtype = as_float64(H, what)
    if a.ndim < 2:
        raise ValueError(f"{what} must have shape (N, d) (or (N, ...), flattened), got {tuple(a.shape)}")
    return a.reshape((a.shape[0], math.prod(a.shape[1:]))), ops, dtype  # not -1: N may be 0


def _num_classes(num_classes: Any, what: str = "num_classes") -> int | None:
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
        raise ValueError(f"{what} must be a positive int, got {num_classes!r}")
    return int(num_classes)


def _physical_memory() -> int | None:
    """Bytes of host RAM, or None where the OS does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, OSError, ValueError):
        return None


def _check_footprint(K: int, d: int) -> None:
    """NeuralCollapse keeps float64 (K, d) shifts and class sums, a (d, d) scatter and K-vectors;
    refuse up front (naming K and d) when they cannot fit in this machine's RAM, instead of a
    MemoryError on the first update. GPU memory is not queried here (no device is known yet)."""
    need = 8 * (2 * K * d + d * d + 3 * K)
    ram = _physical_memory()
    if ram is not None and need > ram:
        raise ValueError(f"NeuralCollapse(K={K}, d={d}) needs {need / 2**30:.3g} GiB of float64 accumulators "
                         f"(2·K·d + d² + 3·K values), more than this machine's {ram / 2**30:.3g} GiB of RAM; "
                         "check K (num_classes) and d")


def _checked_labels(labels: Any, ops: Ops, n: int, K: int | None) -> tuple[Any, int]:
    """int64 labels on the features' device and K (given, or max + 1), or ValueError."""
    y = as_labels(labels, ops, n)
    if n == 0:
        raise ValueError("no samples: H has 0 rows")
    lo, hi = int(y.min()), int(y.max())
    if K is None:
        if lo >= 0 and hi + 1 > n:
            # K = max + 1 classes from n < K samples: some class is necessarily empty (and a huge label
            # would allocate K x d class sums first)
            raise ValueError(f"the largest label is {hi}, so K = max(label) + 1 = {hi + 1} classes, more than the "
                             f"{n} samples: K > N leaves empty classes; pass num_classes= if you mean it")
        K = hi + 1
    if lo < 0 or hi >= K:
        raise ValueError(f"labels must lie in 0..K-1 = 0..{K - 1}; got label {lo if lo < 0 else hi}")
    return y, K


def _matrix(W: Any, ops: Ops, K: int | None, d: int | None, what: str = "W") -> Any:
    """The classifier (K, d) as float64 in the features' framework and on their device."""
    w, wops, _ = as_float64(W, what)
    if w.ndim != 2:
        raise ValueError(f"{what} must be a (K, d) matrix (rows = classes), got shape {tuple(w.shape)}")
    if (K is not None and w.shape[0] != K) or (d is not None and w.shape[1] != d):
        raise ValueError(f"{what} must have shape ({K if K is not None else 'K'}, {d if d is not None else 'd'}), "
                         f"got {tuple(w.shape)}")
    return ops.here(w, wops, what)


def _vector(b: Any, ops: Ops, K: int, what: str = "b") -> Any:
    v, vops, _ = as_float64(b, what)
    if tuple(v.shape) != (K,):
        raise ValueError(f"{what} must have shape ({K},), got {tuple(v.shape)}")
    return ops.here(v, vops, what)


def _finite(x: Any, ops: Ops, what: str, check_finite: bool) -> bool:
    """Whether x holds only finite values; NaN/Inf raise ValueError naming x when check_finite."""
    if bool(ops.xp.isfinite(x).all()):
        return True
    if check_finite:
        raise ValueError(f"{what} contains NaN or Inf; pass check_finite=False to get NaN results instead")
    return False


def _moments(H: Any, labels: Any, num_classes: Any, weighted: bool, W: Any = None, check_finite: bool = True,
             *, within: bool) -> tuple[_Moments | None, Any, Any, Any]:
    """(_Moments or None when the features hold NaN/Inf and check_finite is false, h, y, ops).

    within=False leaves out Σ_W's statistics (quad, tr_sw, var_c are None) for the callers that read
    only the class means: they come from the N × d deviations h − μ_y, which those callers would
    otherwise allocate (twice N·d float64 at the peak) and never read."""
    h, ops, dtype = _features(H)
    K = _num_classes(num_classes)
    if W is not None:
        try:  # nested lists too (a ragged one is reported by _matrix)
            w_shape = tuple(W.shape) if hasattr(W, "shape") else np.shape(W)
        except ValueError:
            w_shape = ()
        w_rows = int(w_shape[0]) if len(w_shape) == 2 else None
        if K is not None and w_rows is not None and w_rows != K:
            raise ValueError(f"W has {w_rows} rows but num_classes={K}")
        K = K if K is not None else w_rows
    y, K = _checked_labels(labels, ops, h.shape[0], K)
    xp = ops.xp
    if not bool(xp.isfinite(h).all()):
        if check_finite:
            raise ValueError("H contains NaN or Inf; pass check_finite=False to get NaN results instead")
        return None, h, y, ops
    counts = ops.class_counts(y, K)
    _check_classes(ops.to_numpy(counts))
    means = ops.class_sums(h, y, K) / counts[:, None]
    if not within:
        return _Moments(ops, counts, means, None, None, None, eps_of(dtype), bool(weighted)), h, y, ops
    _, scale = _unit(h, ops)
    dev = (h - means[y]) / scale
    n = h.shape[0]
    rowsq = xp.sum(dev * dev, axis=1)
    var_c = ops.class_sums(rowsq[:, None], y, K)[:, 0] / counts

    def quad(v):
        p = dev @ v
        return xp.sum(p * p, axis=0) / n

    m = _Moments(ops, counts, means, quad, xp.sum(rowsq) / n, var_c, eps_of(dtype), bool(weighted), scale=scale)
    return m, h, y, ops


def _need_two(K: int, what: str) -> None:
    if K < 2:
        raise ValueError(f"{what} compares classes: it needs K >= 2 classes, got K = {K}")


def _sb_eig(m: _Moments) -> tuple[Any, Any]:
    """The eigenvalues of Σ_B = M̃ᵀM̃ / K (descending; the rest are 0) and the within-class quadratic
    forms of its eigenvectors: what both NC1 variants read."""
    xp = m.ops.xp
    _, s, vh = xp.linalg.svd(m.unit_centred_means(), full_matrices=False)
    return s * s / m.K, m.quad(xp.swapaxes(vh, 0, 1))


def _nc1(m: _Moments, variant: str, per_class: bool, eig: tuple[Any, Any] | None = None) -> Any:
    """NC1 (`variant` "pinv" or "topk"); `eig`: _sb_eig(m) when already computed."""
    ops, xp = m.ops, m.ops.xp
    K, d = m.K, m.d
    lam, q = _sb_eig(m) if eig is None else eig
    if variant == "pinv":
        keep = lam > d * m.eps * lam[0]
    else:  # rank Σ_B ≤ K − 1 for either μ_G: Σ_c w_c (μ_c − μ_G) = 0 with w_c = 1/K or N_c/N
        keep = ops.arange(lam.shape[0]) < K - 1
    inv = xp.where(keep, ops.divide(1.0, xp.where(keep, lam, ops.scalar(1.0))), ops.scalar(0.0))
    if variant == "topk":  # the notebook inverts the top K-1 eigenvalues whatever they are (0 -> inf)
        inv = xp.where(keep & (lam == 0), ops.scalar(math.inf), inv)
    value = xp.sum(q * inv)
    value = xp.where(lam[0] > 0, value, ops.scalar(math.nan))  # Σ_B = 0: all class means coincide
    return value / K if per_class else value


def _tr_sb(m: _Moments) -> Any:
    c = m.unit_centred_means()
    return m.ops.xp.sum(c * c) / m.K


def _cdnv(m: _Moments) -> Any:
    ops, xp = m.ops, m.ops.xp
    K = m.K
    c = m.unit_centred_means()  # distances are translation invariant; centring keeps the Gram entries small
    g = c @ xp.swapaxes(c, 0, 1)
    sq = g.diagonal()
    dist2 = xp.clip(sq[:, None] + sq[None, :] - 2 * g, 0.0, None)
    ratio = ops.divide((m.var_c[:, None] + m.var_c[None, :]) / 2, dist2)
    upper = xp.triu(ops.full((K, K), 1.0), 1) > 0
    return xp.sum(xp.where(upper, ratio, ops.scalar(0.0))) / (K * (K - 1) / 2)


def _row_norms(x: Any, ops: Ops) -> Any:
    return ops.xp.sqrt(ops.xp.sum(x * x, axis=1))


def _equinorm(x: Any, ops: Ops) -> Any:
    xp = ops.xp
    norms = _row_norms(_unit(x, ops)[0], ops)
    mean = xp.mean(norms)
    std = xp.sqrt(xp.sum((norms - mean) ** 2) / (x.shape[0] - 1))
    return ops.divide(std, mean)


def _equiangularity(x: Any, ops: Ops) -> Any:
    xp = ops.xp
    K = x.shape[0]
    x = _unit(x, ops)[0]
    u = ops.divide(x, _row_norms(x, ops)[:, None])
    cos = u @ xp.swapaxes(u, 0, 1)
    off = xp.abs(cos + 1.0 / (K - 1)) * (1.0 - ops.eye(K))
    return xp.sum(off) / (K * (K - 1))


def _etf_target(K: int, ops: Ops) -> Any:
    return (ops.eye(K) - ops.full((K, K), 1.0 / K)) / math.sqrt(K - 1)


def _fro(x: Any, ops: Ops) -> Any:
    u, big = _unit(x, ops)
    return ops.xp.sqrt(ops.xp.sum(u * u)) * big


def _etf_distance(g: Any, ops: Ops) -> Any:
    """‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F of a K × K matrix G."""
    return _fro(ops.divide(g, _fro(g, ops)) - _etf_target(g.shape[0], ops), ops)


def _etf_error(x: Any, ops: Ops) -> Any:
    u = _unit(x, ops)[0]
    return _etf_distance(u @ ops.xp.swapaxes(u, 0, 1), ops)


def _nc3(w: Any, mt: Any, ops: Ops, variant: str) -> Any:
    if variant == "papyan":
        r = ops.divide(w, _fro(w, ops)) - ops.divide(mt, _fro(mt, ops))
        return ops.xp.sum(r * r)
    return _etf_distance(_unit(w, ops)[0] @ ops.xp.swapaxes(_unit(mt, ops)[0], 0, 1), ops)


def _rank(x: Any, ops: Ops, atol: float, rtol: float | None) -> Any:
    s = ops.svdvals(x)
    tol = atol
    if rtol:
        tol = ops.xp.clip(rtol * s[0], atol, None) if s.shape[0] else atol
    r = ops.xp.sum(s > tol)
    return r.to(ops.xp.int64) if ops.kind == "torch" else np.int64(r)


_METRICS = ("nc1", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangularity", "nc2_etf_error", "class_mean_rank",
            "class_mean_rank_centered")  # what _metrics gives (and nc1_topk after nc1 with topk=True)


def _metrics(m: _Moments, atol: float, rtol: float | None, variant: str = "pinv", topk: bool = False) -> dict:
    """The metrics of the class means and Σ_W that `deep_neural_collapse` (a row) and
    `NeuralCollapse.compute` report, in the order of _METRICS: NC1 with `variant` (and "nc1_topk"
    when `topk`), as 0-d float64 (ranks int64) arrays on the device."""
    ops = m.ops
    mt = m.centred_means()
    eig = _sb_eig(m)
    out = {"nc1": _nc1(m, variant, True, eig)}
    if topk:
        out["nc1_topk"] = _nc1(m, "topk", True, eig)
    out.update(
        nc1_quotient=ops.divide(m.tr_sw, _tr_sb(m)),
        cdnv=_cdnv(m),
        nc2_equinorm=_equinorm(mt, ops),
        nc2_equiangularity=_equiangularity(mt, ops),
        nc2_etf_error=_etf_error(mt, ops),
        class_mean_rank=_rank(m.means, ops, atol, rtol),
        class_mean_rank_centered=_rank(mt, ops, atol, rtol),
    )
    return out


def _nan_metrics(ops: Ops, topk: bool = False) -> dict:
    """_metrics' entries for NaN/Inf features (check_finite=False): NaN, ranks −1 (as
    `class_mean_rank`)."""
    bad_rank = ops.xp.tensor(-1, device=ops.device) if ops.kind == "torch" else np.int64(-1)
    keys = _METRICS[:1] + (("nc1_topk",) if topk else ()) + _METRICS[1:]
    return {k: ops.out(bad_rank) if k.startswith("class_mean_rank") else _nan(ops) for k in keys}


def _check_tols(atol: Any, rtol: Any) -> None:
    for name, v in (("atol", atol), ("rtol", rtol)):
        if v is not None and not (is_real(v, finite=True) and v >= 0):
            raise ValueError(f"{name} must be a finite non-negative number, got {v!r}")
    if atol is None:
        raise ValueError("atol must be a number (default 1e-6)")


def _ncc_centring(means: Any, ops: Ops) -> tuple[Any, Any, Any, Any, Any]:
    """(centre, scale, (means − centre) / scale, their squared norms, means): what `_agreements` needs
    of the class means. The nearest mean does not change with translation (centring keeps the
    distances accurate) or scale (dividing by max |means − centre| keeps the squares finite and
    normal)."""
    xp = ops.xp
    centre = xp.mean(means, axis=0)
    mc, scale = _unit(means - centre, ops)
    return centre, scale, mc, xp.sum(mc * mc, axis=1), means


def _nearest_means(blk: Any, centring: tuple[Any, Any, Any, Any, Any], ops: Ops) -> Any:
    """Index of the nearest class mean of each row of blk, ties to the lowest index as the direct
    argmin_c ‖h − μ_c‖² of the references. The expanded ‖μ_c‖² − 2 h·μ_c (cheap, one product) is
    off by at most (d + 4) · eps64 · (‖h‖ + ‖μ_c‖)² (on the centred, scaled values), which can break
    exact ties the wrong way; the classes within twice that of the best are compared again by their
    direct distances."""
    xp = ops.xp
    centre, scale, mc, msq, means = centring
    x = (blk - centre) / scale
    score = msq[None, :] - 2 * (x @ xp.swapaxes(mc, 0, 1))
    reach = xp.sqrt(xp.sum(x * x, axis=1)) + xp.amax(xp.sqrt(msq))
    tol = 2 * (x.shape[1] + 4) * float(np.finfo(np.float64).eps) * reach * reach
    best = xp.amin(score, axis=1)
    near = score <= (best + tol)[:, None]  # at least the best class of every row
    rows, cls = near.nonzero(as_tuple=True) if ops.kind == "torch" else np.nonzero(near)
    dist = ops.full(tuple(score.shape), math.inf)
    for i in range(0, rows.shape[0], _ROW_BLOCK):
        r, c = rows[i:i + _ROW_BLOCK], cls[i:i + _ROW_BLOCK]
        diff = (blk[r] - means[c]) / scale
        dist[r, c] = xp.sum(diff * diff, axis=1)
    return ops.argmin(dist, 1)


def _agreements(h: Any, centring: tuple[Any, Any, Any, Any, Any], w: Any, b: Any, ops: Ops) -> Any:
    """Number of rows whose nearest class mean is the classifier's argmax (float64, on the device);
    `centring`: _ncc_centring(class means)."""
    xp = ops.xp
    total = ops.scalar(0.0)
    for i in range(0, h.shape[0], _ROW_BLOCK):
        blk = h[i:i + _ROW_BLOCK]
        logits = blk @ xp.swapaxes(w, 0, 1)
        if b is not None:
            logits = logits + b
        total = total + ops.count(_nearest_means(blk, centring, ops) == ops.argmax(logits, 1))
    return total


def _nan(ops: Ops) -> Any:
    return ops.out(ops.scalar(math.nan))


def _check_variant(variant: str, allowed: tuple, what: str = "variant") -> None:
    if variant not in allowed:
        raise ValueError(f"{what} must be one of {', '.join(map(repr, allowed))}, got {variant!r}")


# ---- one-shot functions ---------------------------------------------------------------------------------

_ARGS = """
    H : array_like (N, d) (or (N, ...): flattened)
        Features, one row per sample: numpy, torch (CPU or CUDA) or anything numpy reads.
    labels : integer array_like (N,)
        Classes in 0..K−1, in the framework (and on the device) of H; numpy labels also go with
        CPU tensors.
    num_classes : int, optional
        K; default max(label) + 1 (or the rows of W). Every class needs a sample.
    weighted : bool
        μ_G = the sample mean (Zhu et al.) instead of the mean of the class means.
    check_finite : bool
        NaN/Inf features raise ValueError (default); False gives NaN.
"""


def nc1(H: Any, labels: Any, *, variant: str = "pinv", weighted: bool = False, per_class: bool = True,
        num_classes: int | None = None, check_finite: bool = True) -> Any:
    """NC1, within-class variability collapse: tr(Σ_W Σ_B⁺) / K (→ 0 under collapse).

    Σ_B⁺ keeps the eigenvalues λ > d · eps(stored dtype) · λ₁ of Σ_B (float32 features: eps32,
    whatever the float64 computation), computed from the SVD of M̃ rather than of Σ_B. NaN when all
    class means coincide (Σ_B = 0).

    Parameters
    ----------""" + _ARGS + """    variant : {"pinv", "topk"}
        "topk": invert exactly the top K − 1 eigenpairs of Σ_B, as Papyan's notebook does with
        scipy's svds (a zero among them gives inf). K − 1 with weighted=True too: the weighted rows
        satisfy Σ_c (N_c/N)(μ_c − μ_G) = 0, so Σ_B has rank ≤ K − 1 for unbalanced classes as well
        (METRICS.md §6 says K there; inverting a K-th, zero eigenvalue would give inf).
    per_class : bool
        Divide by K (default); False gives the notebook's tr(Σ_W Σ_B⁺).
    """
    _check_variant(variant, ("pinv", "topk"))
    m, _, _, ops = _moments(H, labels, num_classes, weighted, check_finite=check_finite, within=True)
    if m is None:
        return _nan(ops)
    _need_two(m.K, "nc1")
    return ops.out(_nc1(m, variant, per_class))


def nc1_quotient(H: Any, labels: Any, *, weighted: bool = False, num_classes: int | None = None,
                 check_finite: bool = True) -> Any:
    """tr Σ_W / tr Σ_B (Hui et al. 2022; Tirer et al. 2023): NC1 without the pseudo-inverse.

    Parameters
    ----------""" + _ARGS
    m, _, _, ops = _moments(H, labels, num_classes, weighted, check_finite=check_finite, within=True)
    if m is None:
        return _nan(ops)
    _need_two(m.K, "nc1_quotient")
    return ops.out(ops.divide(m.tr_sw, _tr_sb(m)))


def cdnv(H: Any, labels: Any, *, num_classes: int | None = None, check_finite: bool = True) -> Any:
    """Class-distance normalised variance (Galanti et al. 2022): the mean over pairs c < c′ of
    (V_c + V_c′) / (2 ‖μ_c − μ_c′‖²), V_c = (1/N_c) Σ_{y_i = c} ‖h_i − μ_c‖².

    Pairwise distances come from the Gram matrix of the centred class means (O(K² d), no K × K × d
    tensor). Parameters as for `nc1` (``weighted`` does not change CDNV)."""
    m, _, _, ops = _moments(H, labels, num_classes, False, check_finite=check_finite, within=True)
    if m is None:
        return _nan(ops)
    _need_two(m.K, "cdnv")
    return ops.out(_cdnv(m))


def _nc2_rows(H, labels, on, W, weighted, num_classes, check_finite, what) -> tuple[Any, Ops]:
    _check_variant(on, ("means", "W"), "on")
    if on == "W":
        if W is None:
            raise ValueError(f"{what}(on='W') needs the classifier: pass W=")
        w, ops, _ = as_float64(W, "W")
        if w.ndim != 2:
            raise ValueError(f"W must be a (K, d) matrix (rows = classes), got shape {tuple(w.shape)}")
        if num_classes is not None and w.shape[0] != _num_classes(num_classes):
            raise ValueError(f"W has {w.shape[0]} rows but num_classes={num_classes}")
        _need_two(int(w.shape[0]), what)
        return (w if _finite(w, ops, "W", check_finite) else None), ops
    if H is None or labels is None:
        raise ValueError(f"{what}(on='means') needs H and labels")
    m, _, _, ops = _moments(H, labels, num_classes, weighted, check_finite=check_finite, within=False)
    if m is None:
        return None, ops
    _need_two(m.K, what)
    return m.centred_means(), ops


_NC2_ARGS = """    on : {"means", "W"}
        "means" (default): the centred class means M̃ of H; "W": the rows of the classifier W
        (uncentred, as Papyan's notebook and Zhu et al.), H and labels then unused.
    W : array_like (K, d), optional
        The classifier's weights, needed for on="W".
"""


def nc2_equinorm(H: Any = None, labels: Any = None, *, on: str = "means", W: Any = None, weighted: bool = False,
                 num_classes: int | None = None, check_finite: bool = True) -> Any:
    """NC2 equinorm: std(‖μ_c − μ_G‖) / mean(‖μ_c − μ_G‖), ddof 1 (→ 0 under collapse).

    Parameters
    ----------""" + _ARGS + _NC2_ARGS
    x, ops = _nc2_rows(H, labels, on, W, weighted, num_classes, check_finite, "nc2_equinorm")
    return _nan(ops) if x is None else ops.out(_equinorm(x, ops))


def nc2_equiangularity(H: Any = None, labels: Any = None, *, on: str = "means", W: Any = None,
                       weighted: bool = False, num_classes: int | None = None, check_finite: bool = True) -> Any:
    """NC2 equiangularity: Σ_{c≠c′} |cos(μ̃_c, μ̃_c′) + 1/(K−1)| / (K(K−1)) (→ 0 for a simplex ETF).

    Parameters
    ----------""" + _ARGS + _NC2_ARGS
    x, ops = _nc2_rows(H, labels, on, W, weighted, num_classes, check_finite, "nc2_equiangularity")
    return _nan(ops) if x is None else ops.out(_equiangularity(x, ops))


def nc2_etf_error(H: Any = None, labels: Any = None, *, on: str = "means", W: Any = None, weighted: bool = False,
                  num_classes: int | None = None, check_finite: bool = True) -> Any:
    """NC2 simplex-ETF error: ‖G/‖G‖_F − (I − 11ᵀ/K)/√(K−1)‖_F with G = M̃M̃ᵀ (not squared).

    Parameters
    ----------""" + _ARGS + _NC2_ARGS
    x, ops = _nc2_rows(H, labels, on, W, weighted, num_classes, check_finite, "nc2_etf_error")
    return _nan(ops) if x is None else ops.out(_etf_error(x, ops))


def nc3(H: Any, labels: Any, W: Any, *, variant: str = "papyan", weighted: bool = False,
        num_classes: int | None = None, check_finite: bool = True) -> Any:
    """NC3, self-duality of classifier and class means.

    "papyan" (default): ‖W/‖W‖_F − M̃/‖M̃‖_F‖_F² (the notebook's ‖Wᵀ/‖W‖ − M̃ᵀ/‖M̃‖‖², squared);
    "zhu": ‖WM̃ᵀ/‖WM̃ᵀ‖_F − (I − 11ᵀ/K)/√(K−1)‖_F (not squared; rhubarbwu's alignment error).

    Parameters
    ----------""" + _ARGS + """    W : array_like (K, d)
        The last layer's weights, rows = classes, in the framework and on the device of H.
    """
    _check_variant(variant, ("papyan", "zhu"))
    m, _, _, ops = _moments(H, labels, num_classes, weighted, W=W, check_finite=check_finite, within=False)
    if m is None:
        return _nan(ops)
    _need_two(m.K, "nc3")
    w = _matrix(W, ops, m.K, m.d)
    if not _finite(w, ops, "W", check_finite):
        return _nan(ops)
    return ops.out(_nc3(w, m.centred_means(), ops, variant))


def nc4(H: Any, labels: Any, W: Any, b: Any = None, *, bias: bool = True, num_classes: int | None = None,
        check_finite: bool = True) -> Any:
    """NC4, convergence to the nearest-class-centre rule: 1 − the fraction of samples whose nearest
    class mean (uncentred, Euclidean) is the classifier's prediction argmax(W h + b).

    ``bias=False`` (or b=None) leaves b out, as rhubarbwu does. Ties go to the lowest class index
    on both sides. Logits are computed in float64 from the stored values.

    Parameters
    ----------""" + _ARGS + """    W, b : array_like (K, d) and (K,)
        The last layer's weights and bias, in the framework and on the device of H.
    """
    m, h, _, ops = _moments(H, labels, num_classes, False, W=W, check_finite=check_finite, within=False)
    if m is None:
        return _nan(ops)
    w = _matrix(W, ops, m.K, m.d)
    bb = _vector(b, ops, m.K) if (b is not None and bias) else None
    if not (_finite(w, ops, "W", check_finite) and (bb is None or _finite(bb, ops, "b", check_finite))):
        return _nan(ops)
    return ops.out(1.0 - _agreements(h, _ncc_centring(m.means, ops), w, bb, ops) / h.shape[0])


def class_mean_rank(H: Any, labels: Any, *, center: bool = False, atol: float = 1e-6, rtol: float | None = None,
                    num_classes: int | None = None, check_finite: bool = True) -> Any:
    """Rank of the class-mean matrix (K × d): count(s > max(atol, rtol · s₁)), as int64.

    Uncentred (default) it is at most K; ``center=True`` ranks M̃ (rows μ_c − mean of the class
    means), at most K − 1. atol is absolute (default 1e-6, on the scale of the features); rtol
    (default none) is relative to the largest singular value. −1 for NaN features with
    check_finite=False."""
    _check_tols(atol, rtol)
    m, _, _, ops = _moments(H, labels, num_classes, False, check_finite=check_finite, within=False)
    if m is None:
        return _nan_metrics(ops)["class_mean_rank"]
    x = m.centred_means() if center else m.means
    return ops.out(_rank(x, ops, float(atol), rtol))


# ---- deep neural collapse -------------------------------------------------------------------------------


def _layer_items(layers: Any, names: Any) -> list[tuple[str, str, Any]]:
    if isinstance(layers, dict):
        items = list(layers.items())
    elif isinstance(layers, (list, tuple)):
        if names is not None and len(names) != len(layers):
            raise ValueError(f"names has {len(names)} entries but layers has {len(layers)}")
        items = [(str(names[i]) if names is not None else str(i), x) for i, x in enumerate(layers)]
    else:
        raise TypeError(f"layers must be a list of feature matrices (or of (pre, post) pairs) or a dict "
                        f"name -> matrix, got {type(layers).__name__}")
    out = []
    for name, x in items:
        if isinstance(x, (tuple, list)) and len(x) == 2 and all(hasattr(e, "shape") for e in x):
            out += [(str(name), "pre", x[0]), (str(name), "post", x[1])]
        else:
            out.append((str(name), "", x))
    return out


def deep_neural_collapse(layers: Any, labels: Any, *, names: Any = None, weighted: bool = False,
                         variant: str = "pinv", atol: float = 1e-6, rtol: float | None = None,
                         num_classes: int | None = None, check_finite: bool = True):
    """Neural collapse through the depth of a network: one row per layer (and stage).

    Parameters
    ----------
    layers : list or dict
        Feature matrices (N, d_l) (or (N, ...), flattened) of the same N samples, one per layer;
        an item may be a (pre, post) pair, the features before and after the activation, which gives
        two rows (stage "pre" and "post"). A dict maps layer names to matrices or pairs.
    labels : integer array_like (N,)
        The samples' classes (shared by every layer).
    names : list of str, optional
        Layer names for a list (default "0", "1", ...).
    weighted, variant :
        As for `nc1` (and `weighted` for the NC2 columns).
    atol, rtol :
        The class-mean rank tolerance, as for `class_mean_rank`.

    Returns
    -------
    pandas.DataFrame with columns layer, stage, d, nc1, nc1_quotient, cdnv, nc2_equinorm,
    nc2_equiangularity, nc2_etf_error, class_mean_rank (uncentred, ≤ K) and
    class_mean_rank_centered (≤ K − 1), as Python floats/ints (values on a GPU are copied back).
    """
    import pandas as pd  # a rankscope dependency, imported only here

    _check_variant(variant, ("pinv", "topk"))
    _check_tols(atol, rtol)
    rows = []
    for name, stage, x in _layer_items(layers, names):
        m, h, _, _ = _moments(x, labels, num_classes, weighted, check_finite=check_finite, within=True)
        row = {"layer": name, "stage": stage, "d": int(h.shape[1])}
        if m is None:
            row.update({k: -1 if k.startswith("class_mean_rank") else math.nan for k in _METRICS})
        else:
            _need_two(m.K, "deep_neural_collapse")
            row.update({k: int(v) if k.startswith("class_mean_rank") else float(v)
                        for k, v in _metrics(m, float(atol), rtol, variant).items()})
        rows.append(row)
    return pd.DataFrame(rows)


# ---- streaming --------------------------------------------------------------------------------------------


class NeuralCollapse:
    """Every neural-collapse metric of features fed in batches, in O(K d + d²) memory whatever N.

    Parameters
    ----------
    K, d : int
        Number of classes and feature dimension (batches (B, d), or (B, ...) flattened to d).
    passes : {1, 2}
        1 (default): one pass over the data. Per class, the features are shifted by a first-batch
        estimate of the class mean (the mean of that class in the first batch that has it) and the
        shifted sums Σ(h − s_c), Σ(h − s_c)(h − s_c)ᵀ, Σ‖h − s_c‖² are accumulated in float64; then
        N Σ_W = Σ(h − s_y)(h − s_y)ᵀ − Σ_c N_c δ_c δ_cᵀ with δ_c = μ_c − s_c small. The raw form
        Σhhᵀ − Σ N_c μ_c μ_cᵀ cancels catastrophically exactly when NC1 is small (within-class
        scatter tiny next to the means), the case that matters; shifting by the class means first
        does not.
        2: the reference implementations' two passes. Feed every batch, call
        `start_second_pass()`, which fixes the class means, then feed the same batches again: the
        second pass accumulates the centred Σ_W (and the NC4 agreement). `compute()` checks that
        both passes saw the same number of samples of each class.
    weighted : bool
        μ_G = the sample mean instead of the mean of the class means (see `nc1`).
    W, b : array_like (K, d) and (K,), optional
        The classifier. W gives the NC2-on-W and NC3 entries of `compute()` (unless compute gets
        its own W). With passes=2 it also gives NC4: nearest class mean vs argmax(W h + b) is
        counted during the second pass, once the class means are known. One pass cannot know the
        class means while it reads the data, so passes=1 has no "nc4" entry.
    bias : bool
        False leaves b out of the NC4 predictions.
    check_finite : bool
        True (default): `update` raises ValueError for NaN/Inf features, and a W or b holding
        NaN/Inf raises ValueError (at the first batch, or in `compute` for its own W). False:
        such features or classifier give NaN metrics from `compute` (the entries computed from
        them; n_samples still counts every row).

    Batches are numpy arrays or torch tensors, all in one framework and on one device; CUDA tensors
    are accumulated on their device, in float64. `update` synchronises with the device to check
    the labels (and finiteness).

    Example
    -------
    >>> nc = NeuralCollapse(10, 512, passes=2, W=model.fc.weight, b=model.fc.bias)  # doctest: +SKIP
    >>> for x, y in loader: nc.update(features(x), y)
    >>> nc.start_second_pass()
    >>> for x, y in loader: nc.update(features(x), y)
    >>> nc.compute()["nc1"]
    """

    def __init__(self, K: int, d: int, *, passes: int = 1, weighted: bool = False, W: Any = None, b: Any = None,
                 bias: bool = True, check_finite: bool = True):
        self.K = _num_classes(K, "K")
        self.d = _num_classes(d, "d")
        if passes not in (1, 2) or isinstance(passes, bool):
            raise ValueError(f"passes must be 1 or 2, got {passes!r}")
        _check_footprint(self.K, self.d)
        if b is not None and W is None:
            raise ValueError("b was given without W")
        self.passes, self.weighted, self.bias, self.check_finite = passes, bool(weighted), bool(bias), check_finite
        self._W_in, self._b_in = W, b
        self.reset()

    def reset(self) -> None:
        """Forget every batch (the framework and device too)."""
        self._ops: Ops | None = None
        self._pass = 1
        self._eps = 0.0
        self._W = self._b = None
        self._scale = None  # the first batch's pow2_scale: the shifted sums are of (h − s_y) / scale
        self._agree = self._ncc = None
        self._bad = False  # a batch held NaN/Inf features (check_finite=False): NaN metrics

    @property
    def current_pass(self) -> int:
        """1 or 2: the pass that `update` feeds."""
        return self._pass

    def _start(self, ops: Ops) -> None:
        K, d = self.K, self.d
        self._ops = ops
        self._counts = ops.zeros(K)
        self._shift = ops.zeros((K, d))
        self._seen = ops.zeros(K) > 0
        self._s1 = ops.zeros((K, d))
        if self.passes == 1:
            self._s2 = ops.zeros((d, d))
            self._q = ops.zeros(K)
        self._clf_ok = True  # False: W or b holds NaN/Inf (check_finite=False), their entries NaN
        if self._W_in is not None:
            self._W = _matrix(self._W_in, ops, K, d)
            self._clf_ok = _finite(self._W, ops, "W", self.check_finite)
            if self._b_in is not None and self.bias and self.passes == 2:
                self._b = _vector(self._b_in, ops, K)
                self._clf_ok = _finite(self._b, ops, "b", self.check_finite) and self._clf_ok

    def update(self, features: Any, labels: Any) -> None:
        """Adds a batch: features (B, d) (or (B, ...)) and integer labels (B,) in 0..K−1."""
        h, ops, dtype = _features(features, "features")
        if h.shape[1] != self.d:
            raise ValueError(f"features must have d = {self.d} features per row, got shape {tuple(h.shape)}")
        if self._ops is None:
            if self._pass == 2:
                raise ValueError("start_second_pass() was called before any batch")
            self._start(ops)
            self._scale = pow2_scale(h, ops)
        elif not self._ops.same_place(ops):
            raise ValueError(f"features are on {ops.where}, earlier batches were on {self._ops.where}; feed one "
                             "framework and device (or reset())")
        y = as_labels(labels, self._ops, h.shape[0])
        if h.shape[0] == 0:
            return
        xp = self._ops.xp
        if bool(((y < 0) | (y >= self.K)).any()):
            got = self._ops.to_numpy(y)
            raise ValueError(f"labels must lie in 0..K-1 = 0..{self.K - 1}; got label "
                             f"{int(got[(got < 0) | (got >= self.K)][0])}")
        if not bool(xp.isfinite(h).all()):
            if self.check_finite:
                raise ValueError("features contain NaN or Inf; pass check_finite=False to get NaN results instead")
            self._bad = True
        self._eps = max(self._eps, eps_of(dtype))
        o = self._ops
        if self._pass == 1:
            cnt = o.class_counts(y, self.K)
            sums = o.class_sums(h, y, self.K)
            new = (cnt > 0) & ~self._seen
            batch_mean = sums / xp.where(cnt > 0, cnt, o.scalar(1.0))[:, None]
            self._shift = xp.where(new[:, None], batch_mean, self._shift)
            self._seen = self._seen | new
            dev = (h - self._shift[y]) / self._scale
            self._counts = self._counts + cnt
            self._s1 = self._s1 + o.class_sums(dev, y, self.K)
            if self.passes == 1:
                self._s2 = self._s2 + xp.swapaxes(dev, 0, 1) @ dev
                self._q = self._q + o.class_sums(xp.sum(dev * dev, axis=1)[:, None], y, self.K)[:, 0]
        else:
            dev = (h - self._means[y]) / self._scale
            self._counts2 = self._counts2 + o.class_counts(y, self.K)
            self._sw = self._sw + xp.swapaxes(dev, 0, 1) @ dev
            self._q = self._q + o.class_sums(xp.sum(dev * dev, axis=1)[:, None], y, self.K)[:, 0]
            if self._W is not None:
                self._agree = self._agree + _agreements(h, self._ncc, self._W, self._b, o)

    def _first_pass_means(self, counts_host: np.ndarray | None = None) -> Any:
        """`counts_host`: the host copy of the counts when the caller has one (each copy synchronises)."""
        _check_classes(self._ops.to_numpy(self._counts) if counts_host is None else counts_host)
        return self._shift + self._scale * (self._s1 / self._counts[:, None])

    def start_second_pass(self) -> None:
        """passes=2: fixes the class means from the first pass; feed the same batches again next."""
        if self.passes != 2:
            raise ValueError("start_second_pass() is for NeuralCollapse(..., passes=2)")
        if self._pass == 2:
            raise ValueError("the second pass has already started")
        if self._ops is None:
            raise ValueError("start_second_pass() was called before any batch")
        o = self._ops
        self._means = self._first_pass_means()
        self._counts2 = o.zeros(self.K)
        self._sw = o.zeros((self.d, self.d))
        self._q = o.zeros(self.K)
        if self._W is not None:
            self._agree = o.scalar(0.0)
            self._ncc = _ncc_centring(self._means, o)
        self._pass = 2

    def class_means(self) -> Any:
        """The class means (K, d), float64, in the batches' framework and on their device."""
        if self._ops is None:
            raise ValueError("no batch has been fed")
        return self._ops.out(self._means if self._pass == 2 else self._first_pass_means())

    def _statistics(self) -> tuple[_Moments, np.ndarray]:
        """(the moments, the class counts copied to the host: the one copy that compute() makes)."""
        o = self._ops
        if o is None:
            raise ValueError("no batch has been fed")
        xp = o.xp
        counts_host = o.to_numpy(self._counts)
        _check_classes(counts_host)
        n = float(counts_host.sum())
        if self.passes == 1:
            means = self._first_pass_means(counts_host)
            delta = self._s1 / xp.sqrt(self._counts)[:, None]  # rows √N_c δ_c
            sw = (self._s2 - xp.swapaxes(delta, 0, 1) @ delta) / n
            q = self._q - xp.sum(delta * delta, axis=1)
        else:
            if self._pass != 2:
                raise ValueError("passes=2: call start_second_pass() and feed the data again before compute()")
            seen2 = o.to_numpy(self._counts2)
            if not np.array_equal(seen2, counts_host):
                c = int(np.flatnonzero(seen2 != counts_host)[0])
                raise ValueError(f"the second pass saw {int(seen2[c])} samples of class {c}, the first "
                                 f"{int(counts_host[c])}: feed the same data in both passes")
            means, sw, q = self._means, self._sw / n, self._q
        sw = (sw + xp.swapaxes(sw, 0, 1)) / 2

        def quad(v):
            return xp.sum(v * (sw @ v), axis=0)

        var_c = xp.clip(q, 0.0, None) / self._counts
        return _Moments(o, self._counts, means, quad, xp.sum(var_c * self._counts) / n, var_c, self._eps,
                        self.weighted, sw, self._scale), counts_host

    def within_class_covariance(self) -> Any:
        """Σ_W (d, d), float64, in the batches' framework and on their device."""
        m, _ = self._statistics()
        return m.ops.out(m.sw * m.scale * m.scale)

    def compute(self, W: Any = None, *, atol: float = 1e-6, rtol: float | None = None) -> dict:
        """Every metric of the data fed so far, as the one-shot functions give them on all of it.

        Keys: n_samples; nc1, nc1_topk (per class, / K), nc1_quotient, cdnv, nc2_equinorm,
        nc2_equiangularity, nc2_etf_error, class_mean_rank, class_mean_rank_centered (tolerance
        atol/rtol as for `class_mean_rank`); with a classifier W (here or at construction) also
        nc2_equinorm_W, nc2_equiangularity_W, nc2_etf_error_W, nc3 (Papyan) and nc3_zhu; with W at
        construction and passes=2, nc4. K < 2 raises ValueError. Values are float64 (ranks int64) in the
        batches' framework, on their device.
        """
        _check_tols(atol, rtol)
        m, counts_host = self._statistics()
        o = m.ops
        _need_two(self.K, "NeuralCollapse.compute")
        n = float(counts_host.sum())
        out = {"n_samples": round(n)}
        if self._bad:
            out.update(_nan_metrics(o, topk=True))
        else:
            out.update((k, o.out(v)) for k, v in _metrics(m, float(atol), rtol, "pinv", topk=True).items())
        mt = m.centred_means()
        w = _matrix(W, o, self.K, self.d) if W is not None else self._W
        if w is not None:
            w_ok = _finite(w, o, "W", self.check_finite) if W is not None else self._clf_ok
            names = ("nc2_equinorm_W", "nc2_equiangularity_W", "nc2_etf_error_W", "nc3", "nc3_zhu")
            if not w_ok:
                out.update((k, _nan(o)) for k in names)
            elif self._bad:  # the NC2-on-W entries do not depend on the features
                out.update((k, o.out(v)) for k, v in zip(names[:3], (_equinorm(w, o), _equiangularity(w, o),
                                                                     _etf_error(w, o))))
                out.update((k, _nan(o)) for k in names[3:])
            else:
                vals = (_equinorm(w, o), _equiangularity(w, o), _etf_error(w, o), _nc3(w, mt, o, "papyan"),
                        _nc3(w, mt, o, "zhu"))
                out.update((k, o.out(v)) for k, v in zip(names, vals))
        if self._agree is not None:
            out["nc4"] = o.out(1.0 - self._agree / n) if self._clf_ok and not self._bad else _nan(o)
        return out
