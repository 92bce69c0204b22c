"""Functions on matrices: singular values and every metric of `rankscope.metrics` computed from them."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np

from . import _core, _streaming, metrics
from ._arrays import (
    Prepared,
    empty,
    finish,
    host_view,
    is_jax,
    is_ragged,
    jax_x64,
    normalize_dtype,
    parse_device,
    prepare,
    prepare_matrices,
    to_framework,
)
from ._backend import cuda_module
from ._errors import batch_index, non_finite_error


def _check_status(status: np.ndarray, check_finite: bool, where) -> None:
    """Raises for NaN/Inf inputs (when asked) and warns about matrices the solver could not solve."""
    bad = np.flatnonzero(status == 1)
    if check_finite and bad.size:
        raise non_finite_error("x", where(bad[0]), bad.size)
    failed = np.flatnonzero(status == 2)
    if failed.size:
        shown = ", ".join(str(where(i)) for i in failed[:5]) + (", ..." if failed.size > 5 else "")
        warnings.warn(
            f"the eigensolver (LAPACK on the host, cuSOLVER or rankscope's kernels on the GPU) did not converge "
            f"for {failed.size} matrices ({shown}); their results are NaN",
            RuntimeWarning,
            stacklevel=3,
        )


def _regular(x: Any, what: str = "x") -> Prepared:
    p = prepare(x, what)
    if len(p.shape) < 2:
        raise ValueError(f"{what} must have at least 2 dimensions (..., m, n), got shape {p.shape}")
    return p


def _run(x: Any, method: str, dtype: str | None, check_finite: bool, host: bool, device: int | None = None):
    """Singular values of a regular batch or a ragged list, on the host or on a GPU.

    Device inputs are computed on their own GPU, on the caller's current stream; host inputs on the
    host, or on GPU `device` (streamed through pinned staging buffers, see _streaming) when it is not
    None. Returns (values, like): values in the caller's framework (host=False), or for the metrics
    host numpy (host=True; device spectra stay on the device), `like` the Prepared input(s).
    On the GPU the call waits for the caller's stream only when check_finite is true (to read each
    matrix's status); otherwise it returns as soon as the work is queued.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be 'auto', 'exact' or 'gram', got {method!r}")
    if is_ragged(x):
        items = prepare_matrices(x)
        gpu = bool(items) and items[0].on_cuda
        outs = []
        for p in items:
            dt = dtype or ("float64" if p.dtype == "float64" else "float32")
            k = min(p.shape)
            outs.append(np.empty(k, dtype=dt) if host and not gpu else empty(p, (k,), dt))
        if gpu:
            # JAX arrays: always wait, JAX reads the results on its own streams (Prepared.stream)
            sync = check_finite or items[0].kind == "jax"
            status = cuda_module().svdvals_list([p.data for p in items], outs, method, items[0].stream(), sync)
        elif device is not None:
            status = _streaming.svdvals_list(items, [host_view(o) for o in outs], method, device)
        else:
            status = _core.svdvals_list([p.data for p in items], outs, method)
        _check_status(status, check_finite, lambda i: f"x[{i}]")
        return outs, items
    p = _regular(x)
    *batch, m, n = p.shape
    dt = dtype or ("float64" if p.dtype == "float64" else "float32")
    shape = (*batch, min(m, n))
    out = np.empty(shape, dtype=dt) if host and not p.on_cuda else empty(p, shape, dt)
    if min(m, n) == 0:  # no values: nothing to compute (the core would still visit every matrix)
        return out, p
    if p.on_cuda:
        status = cuda_module().svdvals(p.data, out, method, p.stream(), check_finite or p.kind == "jax")
    elif device is not None:
        # a view: out is freshly allocated, contiguous
        flat = host_view(out).reshape(int(np.prod(batch, dtype=np.int64)), min(m, n))
        status = _streaming.svdvals_batch(p, flat, method, device)
    else:
        status = _core.svdvals(p.data, out, method)
    _check_status(status, check_finite,
                  lambda i: batch_index(i, batch))
    return out, p


def svdvals(x: Any, *, method: str = "auto", dtype: Any = None, check_finite: bool = True,
            device: Any = None) -> Any:
    """Singular values of each matrix, descending: shape (..., min(m, n)).

    Parameters
    ----------
    x : array_like (..., m, n), or a list of 2-D arrays of different shapes
        numpy arrays and torch CPU tensors are read in place (any strides, transposed views included);
        float16/bfloat16 are converted while reading; integer/bool inputs are converted to float64.
    method : {"auto", "exact", "gram"}
        "exact": LAPACK dgesdd in float64. "gram": eigenvalues of the float64 Gram matrix of the smaller
        side (values below ~1.5e-8·s₁ are noise). "auto": "gram" for float32 and narrower inputs (as
        accurate as their data), "exact" for float64.
    dtype : float32 or float64, optional
        Output dtype; default float64 for float64 inputs, float32 otherwise.
    check_finite : bool
        Raise ValueError for NaN/Inf inputs (default); if False such matrices get NaN values and the
        others are unaffected. On the GPU, True waits for the caller's stream (to read each matrix's
        status); False queues the work and returns at once (matrices that fail to converge then get
        NaN without a warning).
    device : "cpu", "cuda", "cuda:N" or None
        Where to compute host inputs (default: the host). "cuda" streams them through the GPU in
        chunks (pinned staging buffers of RANKSCOPE_CUDA_STAGING_MB MiB, default 32, so the batch
        need not fit in GPU memory; no torch or CuPy needed) and returns host values, as for the
        host. "cuda" alone is torch's current device, or device 0. Device inputs (torch CUDA
        tensors, CuPy arrays) are always computed on their own device, on the caller's current
        stream, without a copy.

    Returns
    -------
    The values in the caller's framework: numpy in → numpy out, torch in → torch out (same device),
    JAX in → JAX out (same device; float32 unless jax_enable_x64 is on), nested lists in → lists out,
    a list of matrices → a list of 1-D results.
    """
    dt = normalize_dtype(dtype)
    if dt == "float64" and _jax_without_x64(x):
        warnings.warn("dtype=float64 requested for a JAX array, but jax_enable_x64 is off: the values are returned "
                      "as float32 (as JAX truncates)", UserWarning, stacklevel=2)
        dt = "float32"
    values, like = _run(x, method, dt, check_finite, host=False, device=parse_device(device))
    if isinstance(like, list):
        return [finish(v, p) for v, p in zip(values, like)]
    return finish(values, like)


def _jax_without_x64(x: Any) -> bool:
    """Whether x is a JAX array (or a list of them) while JAX holds no 64-bit types."""
    first = x[0] if isinstance(x, (list, tuple)) and x else x
    return is_jax(first) and not jax_x64()


def _jax_spectra_to_host(values: Any, like: Any) -> tuple[Any, Any]:
    """Spectra of JAX CUDA arrays, copied to the host for the metrics (k values a matrix); the
    metrics then go back to the arrays' device as JAX arrays (see _arrays.to_framework)."""
    if isinstance(like, list):
        return [np.asarray(v) for v in values], [dataclasses.replace(p, device="cpu") for p in like]
    return np.asarray(values), dataclasses.replace(like, device="cpu")


def _spectra(x: Any, method: str, check_finite: bool, device: Any = None) -> metrics.Spectra:
    """float64 spectra (host) of matrices, with their shapes and stored dtypes, for the metrics."""
    values, like = _run(x, method, "float64", check_finite, host=True, device=parse_device(device))
    first = like[0] if isinstance(like, list) and like else like
    if isinstance(first, Prepared) and first.kind == "jax" and first.on_cuda:
        values, like = _jax_spectra_to_host(values, like)
    if isinstance(like, list):
        m = np.array([p.shape[0] for p in like], dtype=np.float64)
        n = np.array([p.shape[1] for p in like], dtype=np.float64)
        return metrics.Spectra(values, m, n, [p.dtype for p in like], like, sorted=True)
    *batch, mm, nn = like.shape
    rows = int(np.prod(batch, dtype=np.int64))
    return metrics.Spectra(
        values.reshape((rows, min(mm, nn))),
        np.full(rows, float(mm)),
        np.full(rows, float(nn)),
        [like.dtype] * rows,
        like,
        batch_shape=tuple(batch),
        sorted=True,
    )


_COMMON = """
    x : array_like (..., m, n) or list of 2-D arrays
        As for `svdvals`; the result has the batch shape (a scalar for one matrix), or is a list.
    method, check_finite, device :
        As for `svdvals` (device="cuda" computes the spectra of host inputs on the GPU; the metrics
        are then computed on the host).
"""


def matrix_rank(x, *, atol=None, rtol=None, policy="auto", method="auto", check_finite=True, device=None):
    """Numerical rank: count(s > tol) with tol = max(atol, rtol · s₁), as int64.

    Parameters
    ----------""" + _COMMON + """    atol, rtol : float, optional
        torch.linalg.matrix_rank semantics (either alone sets the other to 0).
    policy : {"auto", "numpy", "data", "nr", "ww"}
        Used when atol/rtol are not given. "auto" (default) applies numpy's rule
        tol = s₁ · max(m, n) · eps(dtype) to float32/float64 inputs and tol = s₁ · eps(dtype) to
        float16/bfloat16 inputs, where numpy's rule would call any matrix wider than 128 (bfloat16) or
        1024 (float16) rank 0. eps is that of the dtype the data is stored in. See rankscope.metrics.
    """
    return metrics.evaluate(_spectra(x, method, check_finite, device), ["matrix_rank"], policy=policy, atol=atol,
                            rtol=rtol)["matrix_rank"]


def rank_loss(x, *, atol=None, rtol=None, policy="auto", method="auto", check_finite=True, device=None):
    """min(m, n) − matrix_rank, as int64 (same tolerance arguments as `matrix_rank`).

    Parameters
    ----------""" + _COMMON
    return metrics.evaluate(_spectra(x, method, check_finite, device), ["rank_loss"], policy=policy, atol=atol,
                            rtol=rtol)["rank_loss"]


def _simple(name: str, doc: str):
    def fn(x, *, method="auto", check_finite=True, device=None):
        return metrics.evaluate(_spectra(x, method, check_finite, device), [name])[name]

    fn.__name__ = fn.__qualname__ = name
    fn.__doc__ = doc + "\n\n    Parameters\n    ----------" + _COMMON
    fn.__module__ = "rankscope"
    return fn


def weak_rank_loss(x, *, threshold=1e-6, method="auto", check_finite=True, device=None):
    """WeightWatcher's weak rank loss #{s² < threshold}, as int64."""
    return metrics.evaluate(_spectra(x, method, check_finite, device), ["weak_rank_loss"],
                            threshold=threshold)["weak_rank_loss"]


sv_min = _simple("sv_min", "Smallest singular value (NaN for an empty matrix).")
sv_max = _simple("sv_max", "Largest singular value: the spectral norm (NaN for an empty matrix).")
log10_sv_min = _simple("log10_sv_min", "log10 of the smallest singular value (−inf for 0).")
condition_number = _simple("condition_number", "s₁ / s_k (inf when s_k = 0, the zero matrix included).")
stable_rank = _simple("stable_rank", "‖W‖_F² / ‖W‖₂² = Σ s² / s₁² (0 for the zero matrix).")
nuclear_ratio = _simple("nuclear_ratio", "Σ s / s₁ (0 for the zero matrix).")


def effective_rank(x, *, on="s", method="auto", check_finite=True, device=None):
    """Roy & Vetterli's effective rank exp(H(p)), p = s/Σs (on="s", default) or s²/Σs² (on="s2").

    Zero matrix: 0.0."""
    return metrics.evaluate(_spectra(x, method, check_finite, device), ["effective_rank"], on=on)["effective_rank"]


def rankme(x, *, eps=1e-7, method="auto", check_finite=True, device=None):
    """RankMe (Garrido et al. 2023) of raw, uncentred embeddings: exp(−Σ p ln p), p = s/‖s‖₁ + eps."""
    return metrics.evaluate(_spectra(x, method, check_finite, device), ["rankme"], eps=eps)["rankme"]


def energy_rank(x, *, tau=0.99, method="auto", check_finite=True, device=None):
    """Smallest r with Σ_{i≤r} s_i² ≥ tau · Σ s², as int64."""
    return metrics.evaluate(_spectra(x, method, check_finite, device), ["energy_rank"], tau=tau)["energy_rank"]


def participation_ratio(x, *, center=True, check_finite=True):
    """Participation ratio of the covariance of rows: tr(C)² / ‖C‖_F², C = Xcᵀ Xc (no eigensolver).

    x is (..., N, d), rows are samples. center=True subtracts the mean row first (the covariance);
    center=False uses the raw second-moment matrix. Computed in float64 from the smaller of
    Xcᵀ Xc and Xc Xcᵀ. Zero (or constant, when centred) data gives 0.0.
    """
    if is_ragged(x):
        return [_participation_ratio(e, center, check_finite, f"x[{i}]") for i, e in enumerate(x)]
    return _participation_ratio(x, center, check_finite, "x")


def _participation_ratio(x: Any, center: bool, check_finite: bool, what: str):
    """participation_ratio of one array (..., N, d); `what` names it in errors."""
    p = _regular(x, what)
    if p.kind == "jax" and p.on_cuda:
        return _participation_ratio_jax(p.data, center, check_finite, what)
    if p.on_cuda:
        return _participation_ratio_device(p, center, check_finite, what)
    if p.dlpack_shape is not None and p.kind != "jax":
        raise TypeError(f"{what}: {p.dtype} data that only DLPack can read ({type(p.data).__name__}); "
                        "participation_ratio reads numpy, torch and JAX arrays: convert it to float32 first")
    a = metrics._host_values(p, what) if p.kind == "torch" else p.data
    a = np.asarray(a, dtype=np.float64)
    if check_finite and not np.all(np.isfinite(a)):
        raise ValueError(f"{what} contains NaN or Inf; pass check_finite=False to get NaN results instead")
    if center and a.shape[-2] > 0:  # (no samples: nothing to centre, and numpy warns of an empty mean)
        # Shift by the first row before centring: the result is the same, but constant columns become
        # exact zeros (x - mean(x) leaves rounding residue, whose PR is garbage instead of 0.0).
        a = a - a[..., :1, :]
        a = a - a.mean(axis=-2, keepdims=True)
    # over the largest |entry| (PR is scale-free): C's squares must not overflow or underflow
    big = np.max(np.abs(a), axis=(-2, -1), keepdims=True) if a.size else np.ones(a.shape[:-2] + (1, 1))
    a = a / np.where(big > 0, big, 1.0)
    at = np.swapaxes(a, -1, -2)
    c = at @ a if a.shape[-1] <= a.shape[-2] else a @ at
    tr = np.trace(c, axis1=-2, axis2=-1)
    fro2 = np.sum(c * c, axis=(-2, -1))
    with np.errstate(invalid="ignore", divide="ignore"):
        pr = np.where(fro2 > 0, tr * tr / np.where(fro2 > 0, fro2, 1.0), 0.0)
    pr = np.where(np.isnan(tr), np.nan, pr)
    return to_framework(np.asarray(pr), p)


def _participation_ratio_device(p: Prepared, center: bool, check_finite: bool, what: str = "x"):
    """participation_ratio of a torch CUDA tensor or CuPy array, in float64 on its device."""
    if p.kind == "torch":
        import torch as xp

        a = p.data.to(xp.float64)
    else:
        import cupy as xp

        a = p.data.astype(xp.float64)
    if check_finite and not bool(xp.isfinite(a).all()):
        raise ValueError(f"{what} contains NaN or Inf; pass check_finite=False to get NaN results instead")
    if center:
        a = a - a[..., :1, :]
        a = a - a.mean(-2, keepdims=True) if p.kind == "cupy" else a - a.mean(-2, keepdim=True)
    if a.numel() if p.kind == "torch" else a.size:  # over the largest |entry|, as on the host
        big = (xp.abs(a).amax((-2, -1), keepdim=True) if p.kind == "torch"
               else xp.abs(a).max(axis=(-2, -1), keepdims=True))
        a = a / xp.where(big > 0, big, xp.ones_like(big))
    at = a.transpose(-1, -2) if p.kind == "torch" else xp.swapaxes(a, -1, -2)
    c = at @ a if a.shape[-1] <= a.shape[-2] else a @ at
    tr = c.diagonal(0, -2, -1).sum(-1) if p.kind == "torch" else xp.trace(c, axis1=-2, axis2=-1)
    fro2 = (c * c).sum((-2, -1)) if p.kind == "torch" else (c * c).sum(axis=(-2, -1))
    safe = xp.where(fro2 > 0, fro2, xp.ones_like(fro2))
    pr = xp.where(fro2 > 0, tr * tr / safe, xp.zeros_like(fro2))
    return xp.where(xp.isnan(tr), tr, pr)


def _participation_ratio_jax(a: Any, center: bool, check_finite: bool, what: str = "x") -> Any:
    """participation_ratio of a JAX array with jax.numpy on its device: float64 (x64 switched on for
    the computation), the result in JAX's canonical dtype."""
    import jax
    import jax.numpy as jnp

    with jax.enable_x64(True):
        a = a.astype(jnp.float64)
        if check_finite and not bool(jnp.isfinite(a).all()):
            raise ValueError(f"{what} contains NaN or Inf; pass check_finite=False to get NaN results instead")
        if center:
            a = a - a[..., :1, :]
            a = a - a.mean(-2, keepdims=True)
        if a.size:  # over the largest |entry|, as on the host
            big = jnp.abs(a).max(axis=(-2, -1), keepdims=True)
            a = a / jnp.where(big > 0, big, 1.0)
        at = jnp.swapaxes(a, -1, -2)
        c = at @ a if a.shape[-1] <= a.shape[-2] else a @ at
        tr = jnp.trace(c, axis1=-2, axis2=-1)
        fro2 = (c * c).sum(axis=(-2, -1))
        pr = jnp.where(fro2 > 0, tr * tr / jnp.where(fro2 > 0, fro2, 1.0), 0.0)
        pr = jnp.where(jnp.isnan(tr), tr, pr)
    return pr.astype(jax.dtypes.canonicalize_dtype(jnp.float64))


def spectrum_report(x, *, method="auto", check_finite=True, device=None, atol=None, rtol=None, policy="auto", tau=0.99,
                    eps=1e-7, on="s", threshold=1e-6) -> dict:
    """One spectrum pass, every metric: a dict name → result, each shaped like `matrix_rank`'s.

    Keys: matrix_rank, rank_loss, weak_rank_loss, sv_min, sv_max, log10_sv_min, condition_number,
    effective_rank, rankme, stable_rank, participation_ratio (of the uncentred spectrum: (Σs²)²/Σs⁴),
    nuclear_ratio, energy_rank and tol (the rank tolerance used). Options as for the single metrics.
    """
    sp = _spectra(x, method, check_finite, device)
    return metrics.evaluate(sp, metrics.NAMES, policy=policy, atol=atol, rtol=rtol, tau=tau, eps=eps, on=on,
                            threshold=threshold)
