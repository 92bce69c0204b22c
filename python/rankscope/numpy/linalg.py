"""Drop-in replacements for ``numpy.linalg``'s singular-value functions.

``svd``, ``svdvals``, ``matrix_rank``, ``norm``, ``matrix_norm`` and ``cond`` take numpy's arguments
and give numpy's results: the same dtypes, shapes, scalar-versus-array returns, exceptions and
messages. A call runs on rankscope's engine (batched, parallel over matrices) when all it needs are
the singular values of real floating matrices:

- the input is a plain ``numpy.ndarray`` (not a subclass, list or other array-like) of dtype float32
  or float64 in native byte order, with at least 2 dimensions and no empty dimension;
- ``svd(a, compute_uv=False)`` with ``hermitian=False``, ``svdvals``, ``matrix_rank`` with
  ``hermitian=False``, ``norm``/``matrix_norm`` with ``ord`` in {2, -2, "nuc"} over a pair of axes,
  ``cond`` with ``p`` in {None, 2, -2}.

Every other call is passed to numpy's own function unchanged (complex or integer inputs, vectors
wanted, other norms, subclasses and array-likes, empty shapes, ``hermitian=True``), and so is any
call whose input holds NaN or Inf, or whose matrices the engine's solver could not solve: the
result is always numpy's.

Accuracy on the engine. float64 inputs take the exact route (LAPACK dgesdd in float64, numpy's own
algorithm). float32 inputs take the float64 Gram route: each singular value carries an absolute
error of about eps64·s₁²/(2s) ≤ ~1.5e-8·s₁, below float32's own resolution eps32·s₁ ≈ 1.2e-7·s₁ and
far below numpy's float32 rank tolerance max(m, n)·eps32·s₁. Where the smallest singular value
itself is the result (``cond``, ``norm(ord=-2)``), float32 matrices whose s_k is below
2·sqrt((k + √L)·eps64/eps32)·s₁ (k = min(m, n), L = max(m, n); 5e-4·s₁ at 32 × 32) are recomputed
on the exact route, so those results keep float32 relative accuracy as numpy's do.
Single float64 matrices with min(m, n) > 16 go to numpy: there both run the same LAPACK routine on
one matrix (measured equal speed), and numpy's own result is then bit for bit numpy's. float16
inputs go to numpy, which raises TypeError for them as it always has.

Each function keeps a reference to numpy's original (its ``__wrapped__``; all of them in
``ORIGINALS``), captured when this module is first imported, so assigning these to
``numpy.linalg``'s attributes (see ``rankscope.patch``) forwards without recursion. numpy 1.x has no
``svdvals`` or ``matrix_norm`` (and no ``rtol`` for ``matrix_rank``, which then raises numpy's
TypeError for it): ``ORIGINALS`` and the patch leave them out, and this module's compute numpy 2.0's
definitions (``svd(x, compute_uv=False)``, ``norm(x, ord, axis=(-2, -1), keepdims)``). Names this
module does not define are looked up in ``numpy.linalg`` (``rankscope.numpy.linalg.inv`` is
numpy's ``inv``, ``LinAlgError`` numpy's exception).
"""

from __future__ import annotations

import inspect
from types import MappingProxyType

import numpy as np
from numpy import amax, amin, count_nonzero, errstate, inf, isnan, moveaxis, newaxis

from .._backend import _core

__all__ = ["ORIGINALS", "cond", "matrix_norm", "matrix_rank", "norm", "svd", "svdvals"]


def _original(name: str):
    """numpy.linalg's own function, even when this module's is installed there (by rankscope.patch);
    None where numpy has none (svdvals and matrix_norm are new in numpy 2.0)."""
    f = getattr(np.linalg, name, None)
    if getattr(f, "__module__", None) == __name__:
        f = f.__wrapped__
    return f


# numpy's own functions, by name: those this numpy has (numpy 1.x has no svdvals or matrix_norm)
_NUMPYS = {name: f for name in ("svd", "svdvals", "matrix_rank", "norm", "matrix_norm", "cond")
           if (f := _original(name)) is not None}
_np_svd = _NUMPYS["svd"]
_np_matrix_rank = _NUMPYS["matrix_rank"]
_np_norm = _NUMPYS["norm"]
_np_cond = _NUMPYS["cond"]
# numpy 1.x: matrix_rank(A, tol=None, hermitian=False), without rtol
_NP_RTOL = "rtol" in inspect.signature(_np_matrix_rank).parameters


def _np_svdvals(x, /):
    """numpy's svdvals; numpy 2.0's definition where numpy has none (numpy 1.x)."""
    if "svdvals" in _NUMPYS:
        return _NUMPYS["svdvals"](x)
    return _np_svd(x, compute_uv=False, hermitian=False)


def _np_matrix_norm(x, /, *, keepdims=False, ord="fro"):
    """numpy's matrix_norm; numpy 2.0's definition where numpy has none (numpy 1.x)."""
    if "matrix_norm" in _NUMPYS:
        return _NUMPYS["matrix_norm"](x, keepdims=keepdims, ord=ord)
    return _np_norm(np.asanyarray(x), axis=(-2, -1), keepdims=keepdims, ord=ord)


def _np_rank(A, tol, hermitian, rtol):
    """numpy's matrix_rank, passing rtol only when given (numpy 1.x then raises its own TypeError)."""
    if rtol is None:
        return _np_matrix_rank(A, tol, hermitian)
    return _np_matrix_rank(A, tol, hermitian, rtol=rtol)


# The engine call, a module global so that tests can see whether a call took the fast path.
_engine = _core.svdvals

_ndarray = np.ndarray
_empty = np.empty
_F32 = np.dtype(np.float32)
_F64 = np.dtype(np.float64)
_EPS = {_F32: np.finfo(np.float32).eps, _F64: np.finfo(np.float64).eps}
_ORD_TYPES = (int, float, str)

# Single float64 matrices larger than this go to numpy (same dgesdd on one matrix: equal speed
# measured from k = 32 up, engine ~1 µs faster below; benchmarks/bench_dropin.py).
_SINGLE_F64_MAX_K = 16
# Where s_k itself is the result, float32 matrices with s_k < _refine_below(k, L)·s_1 are recomputed on
# the exact route. The Gram route's error bound |δ(s²)| ≤ 2(k + √L)·eps64·s_1² (conftest.sv_tolerance;
# measured ≤ 0.3(k + √L)·eps64·s_1²) is a relative error (k + √L)·eps64·(s_1/s_k)² at s_k, which this
# threshold keeps below eps32/4, under the float32 rounding of the result.
def _refine_below(k: int, L: int) -> float:
    return 2.0 * ((k + L**0.5) * _EPS[_F64] / _EPS[_F32]) ** 0.5



def _values(a, small_end: bool = False):
    """Singular values of a's matrices from the engine, descending, in a's dtype; None to forward.

    `a` is a plain ndarray. small_end: the caller's result is s_k itself (cond, norm -2), so float32
    matrices whose s_k is small against s_1 are recomputed on the exact route.
    """
    dt = a.dtype
    if dt is _F64:
        method = "exact"
    elif dt is _F32:
        method = "gram"
    else:
        return None
    shape = a.shape
    if len(shape) < 2 or a.size == 0:
        return None
    m = shape[-2]
    n = shape[-1]
    k = min(m, n)
    if len(shape) == 2 and method == "exact" and k > _SINGLE_F64_MAX_K:
        return None
    refine = small_end and method == "gram"
    out = _empty(shape[:-2] + (k,), _F64 if refine else dt)
    try:
        status = _engine(a, out, method)
    except (TypeError, ValueError, BufferError):  # an input the engine cannot read: numpy can
        return None
    if status.any() if status.ndim else status:
        return None  # NaN/Inf input or no convergence: numpy decides what that gives
    if refine:
        flat = out.reshape(-1, k)
        bad = np.flatnonzero(~(flat[:, -1] >= _refine_below(k, m + n - k) * flat[:, 0]))
        if bad.size:
            batch = shape[:-2]
            sub = a[np.unravel_index(bad, batch)] if batch else a
            vals = _empty((bad.size, k) if batch else (k,), _F64)
            if _engine(sub, vals, "exact").any():
                return None
            flat[bad] = vals
        out = out.astype(_F32)
    return out


def svd(a, full_matrices=True, compute_uv=True, hermitian=False):
    """numpy.linalg.svd: singular value decomposition, or the singular values alone.

    Same signature, results and exceptions as numpy's. ``compute_uv=False`` (with
    ``hermitian=False``) on a float32/float64 ndarray of shape (..., m, n) returns the values,
    descending, shape (..., min(m, n)), in the input's dtype, from rankscope's engine; every other
    call, and the decomposition itself, is numpy's (see the module docstring for the rules).
    """
    if compute_uv or hermitian or type(a) is not _ndarray:
        return _np_svd(a, full_matrices, compute_uv, hermitian)
    s = _values(a)
    if s is None:
        return _np_svd(a, full_matrices, compute_uv, hermitian)
    return s


def svdvals(x, /):
    """numpy.linalg.svdvals: the singular values of each matrix of x, descending, shape (..., k).

    As numpy's (``svd(x, compute_uv=False, hermitian=False)``); float32/float64 ndarrays run on the
    engine, anything else is numpy's.
    """
    if type(x) is _ndarray:
        s = _values(x)
        if s is not None:
            return s
    return _np_svdvals(x)


def matrix_rank(A, tol=None, hermitian=False, *, rtol=None):
    """numpy.linalg.matrix_rank: count(s > tol) per matrix, as numpy computes it.

    tol defaults to s₁ · max(m, n) · eps(dtype) (or ``rtol`` · s₁); ``tol`` and ``rtol`` may be
    arrays broadcast against the batch. A matrix gives a numpy integer, a batch an intp array.
    Real float32/float64 ndarrays with ``hermitian=False`` take their singular values from the
    engine; the rest (vectors and scalars, hermitian=True, other dtypes, both tol and rtol given)
    is numpy's.
    """
    if hermitian or type(A) is not _ndarray or (rtol is not None and (tol is not None or not _NP_RTOL)):
        return _np_rank(A, tol, hermitian, rtol)
    S = _values(A)
    if S is None:
        return _np_rank(A, tol, hermitian, rtol)
    # numpy's own rule, on the same dtype of values
    if tol is None:
        if rtol is None:
            rtol = max(A.shape[-2:]) * _EPS[S.dtype]
        else:
            rtol = np.asarray(rtol)[..., newaxis]
        tol = S.max(axis=-1, keepdims=True, initial=0) * rtol
    else:
        tol = np.asarray(tol)[..., newaxis]
    return count_nonzero(S > tol, axis=-1)


def _matrix_axes(nd: int, axis):
    """(row, col) as non-negative axes of a two-axis norm, or None where numpy's checks decide."""
    if axis is None:
        return (0, 1) if nd == 2 else None
    if type(axis) is not tuple or len(axis) != 2:
        return None
    row, col = axis
    if type(row) is not int or type(col) is not int or not (-nd <= row < nd and -nd <= col < nd):
        return None
    row %= nd
    col %= nd
    return None if row == col else (row, col)


def _svd_norm(x, ord, axis, keepdims):
    """The 2, -2 or nuclear norm of x over axis from the engine's values, or None to forward."""
    if ord == 2:
        small_end = False
    elif ord == -2:
        small_end = True
    elif ord == "nuc":
        small_end = False
    else:
        return None
    nd = x.ndim
    axes = _matrix_axes(nd, axis)
    if axes is None:
        return None
    row, col = axes
    y = x if (row == nd - 2 and col == nd - 1) else moveaxis(x, (row, col), (-2, -1))
    s = _values(y, small_end)
    if s is None:
        return None
    # numpy's reductions (_multi_svd_norm), on the same dtype of values
    if ord == 2:
        ret = amax(s, axis=-1, initial=0)
    elif ord == -2:
        ret = amin(s, axis=-1)
    else:
        ret = np.sum(s, axis=-1, initial=0)
    if keepdims:
        shape = list(x.shape)
        shape[row] = 1
        shape[col] = 1
        ret = ret.reshape(shape)
    return ret


def norm(x, ord=None, axis=None, keepdims=False):
    """numpy.linalg.norm: matrix or vector norm, exactly as numpy's.

    The singular-value matrix norms (``ord`` 2, -2 or "nuc", over the two axes of a 2-D input or an
    ``axis`` pair) of float32/float64 ndarrays take their values from the engine; vector norms,
    the Frobenius, 1 and inf norms and everything else are numpy's.
    """
    if type(x) is _ndarray and type(ord) in _ORD_TYPES:
        ret = _svd_norm(x, ord, axis, keepdims)
        if ret is not None:
            return ret
    return _np_norm(x, ord, axis, keepdims)


def matrix_norm(x, /, *, keepdims=False, ord="fro"):
    """numpy.linalg.matrix_norm: the norm of each matrix over the last two axes, as numpy's.

    ``ord`` 2, -2 and "nuc" on float32/float64 ndarrays take their values from the engine; the
    default Frobenius norm and the others are numpy's.
    """
    if type(x) is _ndarray and type(ord) in _ORD_TYPES and x.ndim >= 2:
        ret = _svd_norm(x, ord, (-2, -1), keepdims)
        if ret is not None:
            return ret
    return _np_matrix_norm(x, keepdims=keepdims, ord=ord)


def cond(x, p=None):
    """numpy.linalg.cond: condition number of each matrix, as numpy's.

    ``p`` None or 2 gives s₁/s_k, -2 gives s_k/s₁ (inf for singular matrices: numpy's NaN-to-inf
    convention), from the engine's singular values for float32/float64 ndarrays; float32 matrices
    with a small s_k against s₁ (see the module docstring) are recomputed on the exact route, so that
    s_k keeps its relative accuracy.
    The other norms (``p`` 1, -1, inf, -inf, "fro") and other inputs are numpy's.
    """
    if type(x) is not _ndarray or not (p is None or (type(p) in (int, float) and (p == 2 or p == -2))):
        return _np_cond(x, p)
    s = _values(x, small_end=True)
    if s is None:
        return _np_cond(x, p)
    with errstate(all="ignore"):
        r = s[..., -1] / s[..., 0] if p == -2 else s[..., 0] / s[..., -1]
    # numpy turns NaN (0/0) into inf unless the input held NaN, which never reaches this point
    nan_mask = isnan(r)
    if nan_mask.any():
        if r.ndim > 0:
            r[nan_mask] = inf
        else:
            r = r.dtype.type(inf)
    return r


#: numpy.linalg's own functions, by name (the functions this module replaces; also each one's
#: ``__wrapped__``): those this numpy has, so numpy 1.x has no svdvals or matrix_norm here.
ORIGINALS = MappingProxyType(_NUMPYS)
for _name, _orig in ORIGINALS.items():
    globals()[_name].__wrapped__ = _orig
del _name, _orig


def __getattr__(name: str):
    # every other numpy.linalg name (inv, eigvalsh, LinAlgError, ...) is numpy's own
    if name.startswith("__"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    try:
        return getattr(np.linalg, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted(set(globals()) | {n for n in dir(np.linalg) if not n.startswith("_")})
