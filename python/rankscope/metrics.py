"""Rank metrics from precomputed singular values (METRICS.md §1–2).

Every function here takes singular values `s` (shape (..., k), any order, or a list of 1-D spectra)
so that one spectrum serves many metrics; the functions of the same names in `rankscope` take
matrices and compute the spectrum first. All metrics are computed in float64 and returned as
float64 (counts as int64) in the framework of `s`.

Hard-rank tolerances (`matrix_rank`, `rank_loss`): tol = max(atol, rtol · s₁), and a value counts
when s > tol (strict). The `policy` picks rtol when neither atol nor rtol is given:

=========  ===========================================  ====================================
policy     rtol                                         use
=========  ===========================================  ====================================
"numpy"    max(m, n) · eps(dtype)                       numpy.linalg.matrix_rank
"data"     eps(dtype)                                   the level rounding to dtype reaches
"nr"       ½ · sqrt(m + n + 1) · eps(dtype)             Numerical Recipes
"ww"       max(m, n) · eps(float64)                     WeightWatcher parity
"auto"     "numpy" for float32/float64, "data" for      the default
           float16/bfloat16
=========  ===========================================  ====================================

eps is the eps of the dtype the matrix was *stored* in (pass ``dtype=``; default: the dtype of `s`).
``atol``/``rtol`` follow torch.linalg.matrix_rank: either alone sets the other to 0.

Conventions: a zero spectrum gives 0 for every rank-type metric (matrix_rank, effective_rank, rankme,
stable_rank, participation_ratio, nuclear_ratio, energy_rank), condition_number inf and
log10_sv_min -inf; an empty spectrum gives rank 0 and NaN for sv_min/sv_max/log10_sv_min/
condition_number; a spectrum holding NaN gives NaN, and -1 for the integer counts.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _core
from ._arrays import Prepared, eps_of, is_ragged, is_real, prepare, to_framework

__all__ = [
    "POLICIES",
    "condition_number",
    "effective_rank",
    "energy_rank",
    "log10_sv_min",
    "matrix_rank",
    "nuclear_ratio",
    "participation_ratio",
    "rank_loss",
    "rankme",
    "report",
    "stable_rank",
    "sv_max",
    "sv_min",
    "weak_rank_loss",
]

NAMES: tuple[str, ...] = tuple(_core.metric_names())
_COLUMN = {name: i for i, name in enumerate(NAMES)}
_COUNTS = frozenset({"matrix_rank", "rank_loss", "weak_rank_loss", "energy_rank"})
POLICIES = ("auto", "numpy", "data", "nr", "ww")


@dataclass
class Spectra:
    """Spectra ready for the core: `values` is (B, k) float32/float64 numpy or a list of 1-D ones."""

    values: Any
    m: np.ndarray  # float64 (B,), NaN where unknown
    n: np.ndarray
    dtypes: list  # stored dtype name per row
    like: Any  # Prepared (regular) or list of Prepared (ragged)
    batch_shape: tuple = ()
    sorted: bool = False

    @property
    def ragged(self) -> bool:
        return isinstance(self.like, list)

    @property
    def first(self) -> Prepared | None:
        if self.ragged:
            return self.like[0] if self.like else None
        return self.like

    @property
    def on_cuda(self) -> bool:
        return self.first is not None and self.first.on_cuda

    def wrap(self, column: Any) -> Any:
        """One metric column in the caller's form (device columns stay on the device)."""
        if self.on_cuda:
            return list(column) if self.ragged else column.reshape(self.batch_shape)
        if self.ragged:
            return [to_framework(np.asarray(column[i]), p) for i, p in enumerate(self.like)]
        return to_framework(column.reshape(self.batch_shape), self.like)


def _real(name: str, v: Any, finite: bool = False) -> float:
    """v as a float, or TypeError naming `name` for non-numbers (bools, strings, arrays, None); with
    finite=True also ValueError unless finite and >= 0 (the other range checks are the core's)."""
    if not is_real(v):
        raise TypeError(f"{name} must be a real number, got {v!r}")
    try:
        f = float(v)
    except OverflowError:  # a Python int beyond float range
        f = math.inf
    if finite and not (math.isfinite(f) and f >= 0):
        raise ValueError(f"{name} must be a finite non-negative number, got {v}")
    return f


def _tolerances(sp: Spectra, policy: str, atol: float | None, rtol: float | None) -> np.ndarray:
    """(B, 2) rows (rtol, atol) of tol = max(atol, rtol · s₁) for the chosen policy."""
    rows = len(sp.dtypes)
    out = np.zeros((rows, 2))
    if atol is not None or rtol is not None:
        if policy != "auto":
            raise ValueError("give either policy= or atol=/rtol=, not both")
        for name, v in (("atol", atol), ("rtol", rtol)):
            if v is not None:
                _real(name, v, finite=True)
        out[:, 0] = 0.0 if rtol is None else rtol
        out[:, 1] = 0.0 if atol is None else atol
        return out
    if policy not in POLICIES:
        raise ValueError(f"policy must be one of {POLICIES}, got {policy!r}")
    eps = np.array([eps_of(d) for d in sp.dtypes])
    narrow = np.array([d in ("float16", "bfloat16") for d in sp.dtypes], dtype=bool)
    mx, total = np.maximum(sp.m, sp.n), sp.m + sp.n
    if policy == "auto":
        rt = np.where(narrow, eps, mx * eps)
        needs_shape = ~narrow
    elif policy == "numpy":
        rt, needs_shape = mx * eps, np.ones(rows, bool)
    elif policy == "data":
        rt, needs_shape = eps, np.zeros(rows, bool)
    elif policy == "nr":
        rt, needs_shape = 0.5 * np.sqrt(total + 1) * eps, np.ones(rows, bool)
    else:  # ww
        rt, needs_shape = mx * eps_of("float64"), np.ones(rows, bool)
    if np.any(needs_shape & np.isnan(mx)):
        raise ValueError(
            f"rank policy {policy!r} needs the matrix shape: pass shape=(m, n) "
            "(or atol=/rtol=, or policy='data')"
        )
    out[:, 0] = rt
    return out


def evaluate(
    sp: Spectra,
    names: Sequence[str],
    *,
    policy: str = "auto",
    atol: float | None = None,
    rtol: float | None = None,
    tau: float = 0.99,
    eps: float = 1e-7,
    on: str = "s",
    threshold: float = 1e-6,
) -> dict:
    """The named metrics of every spectrum in `sp`, each in the caller's form."""
    if on not in ("s", "s2"):
        raise ValueError(f"on must be 's' or 's2', got {on!r}")
    tau, eps, threshold = _real("tau", tau), _real("eps", eps, finite=True), _real("threshold", threshold)
    tol = _tolerances(sp, policy, atol, rtol) if {"matrix_rank", "rank_loss", "tol"} & set(names) else (
        np.zeros((len(sp.dtypes), 2))
    )
    if sp.on_cuda:
        table = _evaluate_cuda(sp, tol, tau, eps, on == "s2", threshold)
    else:
        table = np.empty((len(sp.dtypes), len(NAMES)))
        _core.spectrum_metrics(sp.values, tol, table, tau, eps, on == "s2", threshold,
                               not sp.sorted)
    result = {}
    for name in names:
        col = table[:, _COLUMN[name]]
        if name in _COUNTS:
            col = col.long() if sp.on_cuda and sp.first.kind == "torch" else col.astype(np.int64)
        result[name] = sp.wrap(col)
    return result


def _evaluate_cuda(sp: Spectra, tol: np.ndarray, tau: float, eps: float, on_s2: bool, threshold: float):
    """The metric table of device spectra, computed and left on their device (float64, rows × NAMES)."""
    from ._backend import cuda_module

    p = sp.first
    rows = len(sp.dtypes)
    values = sp.values
    if p.kind == "torch":
        import torch as xp

        dev = p.data.device
        table = xp.empty((rows, len(NAMES)), dtype=xp.float64, device=dev)
        if rows and np.all(tol == tol[:1]):  # one tolerance rule for every row: fill on the device
            tol_d = xp.empty((rows, 2), dtype=xp.float64, device=dev)
            tol_d[:, 0] = float(tol[0, 0])
            tol_d[:, 1] = float(tol[0, 1])
        else:
            tol_d = xp.as_tensor(np.ascontiguousarray(tol), device=dev)
        if not sp.sorted:
            values = [v.sort(descending=True).values for v in values] if sp.ragged else values.sort(
                -1, descending=True).values
    else:
        import cupy as xp

        with xp.cuda.Device(p.device_index):
            table = xp.empty((rows, len(NAMES)), dtype=xp.float64)
            tol_d = xp.asarray(np.ascontiguousarray(tol))
            if not sp.sorted:
                values = [xp.sort(v)[::-1] for v in values] if sp.ragged else xp.sort(values, axis=-1)[..., ::-1]
    cuda_module().spectrum_metrics(values, tol_d, table, tau, eps, on_s2, threshold, p.stream())
    return table


def _device_values(p: Prepared, what: str) -> Any:
    """float32/float64 singular values on their device (float16/bfloat16 converted), checked ≥ 0."""
    data = p.data
    if p.dtype in ("float16", "bfloat16"):
        data = data.float() if p.kind == "torch" else data.astype("float32")
    if bool((data < 0).any()):
        raise ValueError(f"{what}: singular values must be non-negative")
    return data


def _host_values(p: Prepared, what: str) -> np.ndarray:
    """A float32/float64 numpy view (or small copy for float16/bfloat16) of singular values."""
    data = p.data
    if p.kind == "jax" and p.dtype == "bfloat16":  # numpy cannot view JAX's bfloat16: k values, widened
        return np.asarray(p.origin.astype("float32"))
    if p.dlpack_shape is not None:
        raise TypeError(f"{what}: {p.dtype} singular values from a DLPack-only object; convert them to float32")
    if p.kind == "torch":
        data = (data.float() if p.dtype in ("float16", "bfloat16") else data).numpy()
    elif p.dtype == "float16":
        data = data.astype(np.float32)
    return data


def _jax_values_to_host(p: Prepared) -> Prepared:
    """JAX singular values on a CUDA device, copied to the host (k values a spectrum): the CUDA metric
    kernel reads torch and CuPy arrays only. The results go back to the values' device as JAX arrays
    (to_framework puts them there from the host)."""
    data = p.origin
    if p.dtype in ("float16", "bfloat16"):
        data = data.astype("float32")
    return dataclasses.replace(p, data=np.asarray(data), device="cpu", dtype=p.dtype, dlpack_shape=None)


def _prepare_values(s: Any, what: str) -> Prepared:
    p = prepare(s, what)
    return _jax_values_to_host(p) if p.kind == "jax" and p.on_cuda else p


def from_values(s: Any, shape: Any = None, dtype: Any = None, what: str = "s") -> Spectra:
    """Spectra from user-given singular values; `shape`: (m, n) or one per spectrum; `dtype`: stored dtype."""
    stored = None if dtype is None else _stored_name(dtype)
    if is_ragged(s):
        items = [_prepare_values(e, f"{what}[{i}]") for i, e in enumerate(s)]
        for i, p in enumerate(items):
            if len(p.shape) != 1:
                raise ValueError(f"{what}[{i}] must be 1-D (one spectrum), got shape {p.shape}")
        get = _device_values if items and items[0].on_cuda else _host_values
        values = [get(p, what) for p in items]
        m, n = _shapes(shape, len(items), np.array([p.shape[0] for p in items]))
        return Spectra(values, m, n, [stored or p.dtype for p in items], items)
    p = _prepare_values(s, what)
    if len(p.shape) < 1:
        raise ValueError(f"{what} must have at least 1 dimension (..., k), got a scalar")
    v = _device_values(p, what) if p.on_cuda else _host_values(p, what)
    batch = p.shape[:-1]
    rows = int(np.prod(batch, dtype=np.int64))
    values = v.reshape((rows, p.shape[-1]))
    m, n = _shapes(shape, rows, np.full(rows, p.shape[-1]))
    return Spectra(values, m, n, [stored or p.dtype] * rows, p, batch_shape=batch)


def _stored_name(dtype: Any) -> str:
    name = str(dtype).removeprefix("torch.") if type(dtype).__module__ == "torch" else None
    if name is None:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = str(dtype)
    if name not in ("float16", "bfloat16", "float32", "float64"):
        raise TypeError(f"dtype must name float16, bfloat16, float32 or float64, got {dtype!r}")
    return name


def _shapes(shape: Any, rows: int, k: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(m, n) per spectrum from `shape`, checked: whole numbers >= 0 whose smaller side holds at
    least the k[i] values given."""
    if shape is None:
        nan = np.full(rows, np.nan)
        return nan, nan.copy()
    try:
        arr = np.asarray(shape, dtype=np.float64)
    except (TypeError, ValueError):
        arr = None
    if arr is not None and arr.shape == (2,):
        arr = np.broadcast_to(arr, (rows, 2))
    if arr is None or arr.shape != (rows, 2):
        raise ValueError(f"shape must be (m, n) or one (m, n) per spectrum, got {shape!r}")
    if not (np.all(np.isfinite(arr)) and np.all(arr >= 0) and np.all(arr == np.floor(arr))):
        raise ValueError(f"shape must hold whole numbers >= 0, got {shape!r}")
    small = arr.min(axis=1)
    if np.any(small < k):
        i = int(np.flatnonzero(small < k)[0])
        raise ValueError(f"shape {tuple(int(x) for x in arr[i])} cannot have {int(k[i])} singular values "
                         f"(at most min(m, n) = {int(small[i])})")
    return arr[:, 0].copy(), arr[:, 1].copy()


# ---- public functions on singular values -----------------------------------------------------------

_RANK_DOC = """
    Parameters
    ----------
    s : array_like (..., k) or list of 1-D arrays
        Singular values (any order).
    shape : (m, n) or list of (m, n), optional
        Shape of the matrix the values came from; needed by the "numpy", "nr" and "ww" policies.
    dtype : dtype, optional
        The dtype the matrix was stored in (sets eps); default: the dtype of `s`.
    atol, rtol : float, optional
        Absolute and relative tolerance, tol = max(atol, rtol · s₁) (torch semantics).
    policy : {"auto", "numpy", "data", "nr", "ww"}
        How rtol is chosen when atol/rtol are not given (module docstring).
"""


def matrix_rank(s, *, shape=None, dtype=None, atol=None, rtol=None, policy="auto"):
    """Number of singular values above the tolerance, count(s > tol), as int64.
    """ + _RANK_DOC
    sp = from_values(s, shape, dtype)
    return evaluate(sp, ["matrix_rank"], policy=policy, atol=atol, rtol=rtol)["matrix_rank"]


def rank_loss(s, *, shape=None, dtype=None, atol=None, rtol=None, policy="auto"):
    """k − matrix_rank: how many singular values are numerically zero, as int64.
    """ + _RANK_DOC
    sp = from_values(s, shape, dtype)
    return evaluate(sp, ["rank_loss"], policy=policy, atol=atol, rtol=rtol)["rank_loss"]


def weak_rank_loss(s, *, threshold=1e-6):
    """WeightWatcher's weak rank loss: #{s² < threshold} (on eigenvalues l = s²), as int64."""
    return evaluate(from_values(s), ["weak_rank_loss"], threshold=threshold)["weak_rank_loss"]


def sv_min(s):
    """Smallest singular value (NaN for an empty spectrum)."""
    return evaluate(from_values(s), ["sv_min"])["sv_min"]


def sv_max(s):
    """Largest singular value, the spectral norm (NaN for an empty spectrum)."""
    return evaluate(from_values(s), ["sv_max"])["sv_max"]


def log10_sv_min(s):
    """log10 of the smallest singular value (−inf for 0). Below −8: the rank-collapse flag of the literature."""
    return evaluate(from_values(s), ["log10_sv_min"])["log10_sv_min"]


def condition_number(s):
    """s₁ / s_k (inf when s_k = 0, the zero matrix included)."""
    return evaluate(from_values(s), ["condition_number"])["condition_number"]


def effective_rank(s, *, on="s"):
    """Roy & Vetterli's effective rank exp(H(p)), p = s/Σs (on="s") or p = s²/Σs² (on="s2").

    On W = [[3, 0], [0, 1], [0, 0]]: 1.7548 with on="s", 1.3841455 with on="s2". Zero matrix: 0.
    """
    return evaluate(from_values(s), ["effective_rank"], on=on)["effective_rank"]


def rankme(s, *, eps=1e-7):
    """RankMe (Garrido et al. 2023): exp(−Σ p ln p), p = s/‖s‖₁ + eps, on the raw (uncentred) spectrum."""
    return evaluate(from_values(s), ["rankme"], eps=eps)["rankme"]


def stable_rank(s):
    """Σ s² / s₁² = ‖W‖_F² / ‖W‖₂²."""
    return evaluate(from_values(s), ["stable_rank"])["stable_rank"]


def participation_ratio(s):
    """(Σ l)² / Σ l² with l = s²: pass the singular values of the *centred* data for the PR of its covariance."""
    return evaluate(from_values(s), ["participation_ratio"])["participation_ratio"]


def nuclear_ratio(s):
    """Σ s / s₁ (nuclear norm over spectral norm)."""
    return evaluate(from_values(s), ["nuclear_ratio"])["nuclear_ratio"]


def energy_rank(s, *, tau=0.99):
    """Smallest r with Σ_{i≤r} s_i² ≥ tau · Σ s² (tau in (0, 1]), as int64."""
    return evaluate(from_values(s), ["energy_rank"], tau=tau)["energy_rank"]


def report(s, *, shape=None, dtype=None, atol=None, rtol=None, policy="auto", tau=0.99, eps=1e-7, on="s",
           threshold=1e-6) -> dict:
    """Every metric of this module at once: a dict name → result (the `tol` used included)."""
    sp = from_values(s, shape, dtype)
    return evaluate(sp, NAMES, policy=policy, atol=atol, rtol=rtol, tau=tau, eps=eps, on=on, threshold=threshold)
