"""Drop-in replacements for torch.linalg's singular-value functions, computed by rankscope's engine.

``svdvals``, ``matrix_rank``, ``matrix_norm`` and ``cond`` take the arguments torch.linalg's functions
of the same names take and give the same results: dtypes, shapes, batching, ``out=``, errors and
their messages. The engine computes them when it can do so exactly as torch would; every other call is
handed to torch's own function, unchanged:

- engine: real float32 and float64 strided tensors on the CPU, or on CUDA when rankscope's CUDA
  backend is built and sees the device (on the caller's current stream; this path has not yet been
  run on a GPU), with at least one element; float32 by the float64 Gram route (as accurate as float32
  data, METRICS.md §0), float64 (or ``dtype=torch.float64`` for matrix_norm) by LAPACK's dgesdd;
- torch: gradients (``requires_grad`` with grad mode on, forward-mode AD, functorch transforms), so
  that gradients are always torch's; complex, float16/bfloat16, integer and other dtypes; empty
  shapes; ``driver=``; ``hermitian=True``; tensor-valued or positional tolerances; ``ord`` other than
  2, -2 and "nuc" (matrix_norm) and ``p`` other than None, 2 and -2 (cond); ``out=`` tensors of
  another dtype or device, or sharing memory with ``A``; tensor subclasses, torch function and
  dispatch modes, ``torch.compile`` tracing, non-CPU/CUDA devices; and any matrix holding NaN/Inf or
  that the engine's eigensolver could not solve (the engine reports those; torch then raises or
  returns what it does for them).

The engine's float32 values are the float64 values of the stored data, correctly rounded; torch's
float32 LAPACK is accurate to about eps32·s₁ absolutely, so the small singular values (and with them
``cond`` and ord=-2 norms) differ from torch's by that much, and matrix ranks agree except for values
within that distance of the tolerance.

``ORIGINALS`` maps each name to torch's own function, captured when this module is first imported, so
that torch.linalg's attributes may be replaced by these functions (``rankscope.patch(torch=True)``)
without recursion: the fallbacks call ``ORIGINALS``, never ``torch.linalg``. Each replacement also
carries its original as ``fn._torch_original``.
"""

from __future__ import annotations

import inspect
import warnings
from types import MappingProxyType
from typing import Any

import numpy as np
import torch
import torch.autograd.forward_ad as _fwad

from .._backend import _core, cuda_error, cuda_module

__all__ = ["ORIGINALS", "cond", "matrix_norm", "matrix_rank", "svdvals"]

_NAMES = ("svdvals", "matrix_rank", "matrix_norm", "cond")


def _original(name: str):
    fn = getattr(torch.linalg, name)
    return getattr(fn, "_torch_original", fn)  # torch.linalg already patched with ours: its original


#: torch.linalg's own functions, by name (the functions this module replaces).
ORIGINALS = MappingProxyType({name: _original(name) for name in _NAMES})
# What the fallbacks call (tests replace entries to see which calls fall back).
_TORCH = dict(ORIGINALS)

_ENGINE_DTYPES = (torch.float32, torch.float64)
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}
_EPS = {torch.float32: float(torch.finfo(torch.float32).eps), torch.float64: float(torch.finfo(torch.float64).eps)}
_CUDA: list = []  # [the CUDA module or None], resolved on first use


def _cuda():
    if not _CUDA:
        _CUDA.append(cuda_module() if not cuda_error() else None)
    return _CUDA[0]


def _engine_ok(A: Any) -> bool:
    """Whether the engine computes A exactly as torch would (see the module docstring)."""
    if torch.compiler.is_compiling():  # first: Dynamo traces torch's op, and none of the checks below
        return False
    if type(A) is not torch.Tensor and type(A) is not torch.nn.Parameter:
        return False
    if A.dtype not in _ENGINE_DTYPES or A.layout is not torch.strided or A.is_nested:
        return False
    if A.dim() < 2 or A.numel() == 0:
        return False
    if A.requires_grad and torch.is_grad_enabled():
        return False
    kind = A.device.type
    if kind == "cuda":
        if _cuda() is None:
            return False
    elif kind != "cpu":
        return False
    if A.is_neg() or _fwad._current_level >= 0:
        return False
    if torch._C._is_torch_function_mode_enabled() or torch._C._len_torch_dispatch_stack():
        return False
    return not torch._C._functorch.is_functorch_wrapped_tensor(A)


def _out_ok(out: Any, A: torch.Tensor, dtype: torch.dtype) -> bool:
    """out=None, or a tensor the engine's result can be copied into exactly as torch would."""
    if out is None:
        return True
    return (
        type(out) is torch.Tensor
        and out.dtype == dtype
        and out.device == A.device
        and out.layout is torch.strided
        and not out.requires_grad
        and out.untyped_storage().data_ptr() != A.untyped_storage().data_ptr()
    )


def _write_out(out: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """torch's out= convention: resize (warning when out had elements), then copy."""
    if out.shape != r.shape:
        if out.numel():
            warnings.warn(
                f"An output with one or more elements was resized since it had shape {list(out.shape)}, which does "
                f"not match the required output shape {list(r.shape)}. This behavior is deprecated, and in a future "
                "PyTorch release outputs will not be resized unless they have zero elements. You can explicitly "
                "reuse an out tensor t by resizing it, inplace, to zero elements with t.resize_(0).",
                UserWarning,
                stacklevel=3,
            )
        out.resize_(r.shape)
    return out.copy_(r)


def _spectrum(A: torch.Tensor, dtype: torch.dtype, method: str = "auto") -> Any:
    """Singular values of A (..., m, n) from the engine, descending, in `dtype`: a numpy array for a
    CPU tensor (the small steps after it are cheaper in numpy), a tensor on A's device for CUDA; None
    when a matrix holds NaN/Inf or did not converge (the caller then asks torch)."""
    if A.requires_grad:  # grad mode is off here (_engine_ok): a values-only read
        A = A.detach()
    *batch, m, n = A.shape
    shape = (*batch, min(m, n))
    if A.device.type == "cuda":
        s = torch.empty(shape, dtype=dtype, device=A.device)
        stream = torch.cuda.current_stream(A.device).cuda_stream
        status = _cuda().svdvals(A, s, method, stream, True)  # waits, as torch's own checks do
    else:
        s = np.empty(shape, dtype=_NUMPY[dtype])
        status = _core.svdvals(A.numpy(), s, method)  # a numpy view: the cheapest DLPack export
    return None if status.any() else s


def _tensor(r: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    """A result computed from _spectrum's values as a contiguous tensor, as torch returns (of `dtype`,
    if given; numpy results: converted in numpy, then shared with torch without a copy). s[..., 0] of
    a batch is a strided view into the whole spectrum: copied then."""
    if isinstance(r, torch.Tensor):
        return (r if dtype is None else r.to(dtype)).contiguous()
    return torch.from_numpy(np.asarray(r, dtype=None if dtype is None else _NUMPY[dtype], order="C"))


_NO_INPUT = object()  # the first argument's default: the input was not passed positionally


def _torch_call(name: str, A: Any, args: tuple, kwargs: dict) -> Any:
    """torch's own function on the arguments as given."""
    return _TORCH[name](*args, **kwargs) if A is _NO_INPUT else _TORCH[name](A, *args, **kwargs)


def _is_real_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_POS, _KW = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY


class _Params:
    """One function's parameters after A, as torch.linalg documents them: binds a call's arguments
    the way torch would, or gives None for anything else (torch's function then raises or decides,
    with the arguments exactly as given: its messages name what was passed)."""

    def __init__(self, input_name: str, positional: tuple, keyword: tuple):
        self.input_name = input_name  # torch's keyword name for the input
        self.positional = tuple(name for name, _ in positional)
        self.names = frozenset(name for name, _ in positional + keyword)
        self.defaults = dict(positional + keyword)
        self.signature = inspect.Signature(
            [inspect.Parameter(input_name, _POS)]
            + [inspect.Parameter(n, _POS, default=d) for n, d in positional]
            + [inspect.Parameter(n, _KW, default=d) for n, d in keyword]
        )

    def input(self, A: Any, kwargs: dict) -> tuple[Any, dict]:
        """The input, passed positionally or by torch's keyword name (svdvals(A=...), cond(input=...)),
        and the other keyword arguments (any other keyword, such as A= for cond, stays there: torch
        then raises its own TypeError)."""
        if A is _NO_INPUT and self.input_name in kwargs:
            kwargs = dict(kwargs)
            A = kwargs.pop(self.input_name)
        return A, kwargs

    def bind(self, args: tuple, kwargs: dict) -> dict | None:
        if not args and not kwargs:
            return self.defaults
        if len(args) > len(self.positional) or not kwargs.keys() <= self.names:
            return None
        bound = dict(self.defaults)
        bound.update(zip(self.positional, args))
        for name in kwargs:
            if name in self.positional[: len(args)]:
                return None  # given twice: torch's TypeError
        bound.update(kwargs)
        return bound


_SVDVALS = _Params("A", (), (("driver", None), ("out", None)))
_RANK = _Params("input", (), (("atol", None), ("rtol", None), ("hermitian", False), ("out", None)))
_NORM = _Params("input", (("ord", "fro"), ("dim", (-2, -1)), ("keepdim", False)), (("dtype", None), ("out", None)))
_COND = _Params("input", (("p", None),), (("out", None),))


def svdvals(A=_NO_INPUT, /, *args, **kwargs):
    """Singular values of A (..., m, n), descending: torch.linalg.svdvals(A, *, driver=None, out=None).

    The same arguments, result (real dtype of A, shape (..., min(m, n))), errors and ``out=``
    behaviour as torch's function. Real float32/float64 CPU (and CUDA, unverified) tensors are computed
    by rankscope's engine (float32 via the float64 Gram route, float64 via dgesdd); gradients,
    ``driver=`` and everything else listed in the module docstring go to torch's own function, so
    gradients are always torch's.
    """
    A, kwargs = _SVDVALS.input(A, kwargs)
    a = _SVDVALS.bind(args, kwargs)
    if a is not None and a["driver"] is None and _engine_ok(A) and _out_ok(a["out"], A, A.dtype):
        s = _spectrum(A, A.dtype)
        if s is not None:
            s = _tensor(s)
            return s if a["out"] is None else _write_out(a["out"], s)
    return _torch_call("svdvals", A, args, kwargs)


def matrix_rank(A=_NO_INPUT, /, *args, **kwargs):
    """Numerical rank of A (..., m, n), as int64: torch.linalg.matrix_rank.

    ``matrix_rank(A, *, atol=None, rtol=None, hermitian=False, out=None)`` (and torch's deprecated
    ``matrix_rank(A, tol, hermitian=False, *, out=None)``): count(s > max(atol, rtol · s₁)), rtol
    defaulting to max(m, n) · eps(A.dtype), or to 0 when atol > 0 is given (torch's rule, METRICS.md
    §1). The same results, errors and ``out=`` behaviour as torch's function. The engine computes the
    float64 singular values of real float32/float64 tensors and counts them against the tolerance in
    float64 (float32 by the Gram route, or by dgesdd when a tolerance given is too small for the Gram
    route to resolve, below about (k + √max(m, n))·2e-9·s₁); ``hermitian=True``, tensor or positional tolerances, gradients and everything else listed
    in the module docstring go to torch's own function.
    """
    A, kwargs = _RANK.input(A, kwargs)
    a = _RANK.bind(args, kwargs)
    if a is not None:
        atol, rtol, out = a["atol"], a["rtol"], a["out"]
        if (
            a["hermitian"] is False
            and (atol is None or _is_real_number(atol))
            and (rtol is None or _is_real_number(rtol))
            and _engine_ok(A)
            and _out_ok(out, A, torch.int64)
        ):
            m, n = A.shape[-2], A.shape[-1]
            if rtol is None:
                rtol = 0.0 if atol is not None and atol > 0 else _EPS[A.dtype] * max(m, n)
            s = _spectrum(A, torch.float64)
            tol = None if s is None else _rank_tol(s, atol, rtol)
            # The Gram route (float32) resolves a value near tol to c·eps64·s₁²/(2·tol), c = 2(k + √L)
            # (conftest.sv_tolerance); below tol = (k + √L)·eps64/eps32·s₁ that band is wider than the
            # data's own rounding, eps32·s₁: then count on dgesdd's values instead. Torch's default
            # tolerance, max(m, n)·eps32·s₁, is always above it.
            if tol is not None and A.dtype == torch.float32:
                floor = (min(m, n) + max(m, n) ** 0.5) * _EPS[torch.float64] / _EPS[torch.float32]
                if rtol < floor and bool((tol < floor * s[..., :1]).any()):  # tol ≥ rtol·s₁
                    s = _spectrum(A, torch.float64, "exact")
                    tol = None if s is None else _rank_tol(s, atol, rtol)
            if tol is not None:
                r = _tensor((s > tol).sum(-1))
                return r if out is None else _write_out(out, r)
    return _torch_call("matrix_rank", A, args, kwargs)


def _rank_tol(s: Any, atol: float | None, rtol: float) -> Any:
    """max(atol, rtol · s₁) of each spectrum, shaped (..., 1); atol is 0 when not given, as torch's
    (a negative rtol then counts the values above 0)."""
    tol = s[..., :1] * float(rtol)
    atol = 0.0 if atol is None else float(atol)
    return tol.clamp(min=atol) if isinstance(tol, torch.Tensor) else np.maximum(tol, atol)


def _matrix_dims(dim: Any, ndim: int) -> tuple[int, int] | None:
    """dim as two distinct non-negative axes of an ndim-array, or None (torch then raises or decides)."""
    if not isinstance(dim, (tuple, list)) or len(dim) != 2 or ndim < 2:
        return None
    if not all(isinstance(d, int) and not isinstance(d, bool) for d in dim):
        return None
    d0, d1 = (d + ndim if d < 0 else d for d in dim)
    if not (0 <= d0 < ndim and 0 <= d1 < ndim) or d0 == d1:
        return None
    return d0, d1


def _norm_dtype(A: torch.Tensor, dtype: Any) -> torch.dtype | None:
    """The dtype matrix_norm computes and returns in, when the engine can give it exactly."""
    if dtype is None or dtype == A.dtype:
        return A.dtype
    if A.dtype == torch.float32 and dtype == torch.float64:
        return torch.float64
    return None


def matrix_norm(A=_NO_INPUT, /, *args, **kwargs):
    """Matrix norm of A over two axes: torch.linalg.matrix_norm(A, ord="fro", dim=(-2, -1),
    keepdim=False, *, dtype=None, out=None).

    The same arguments, results (A's dtype, or ``dtype``), shapes (``keepdim``), errors and ``out=``
    behaviour as torch's function. ord=2 (largest singular value), -2 (smallest) and "nuc" (their
    sum) of real float32/float64 tensors are computed by the engine in float64 and rounded once
    (``dtype=torch.float64`` for float32 data: dgesdd on the widened values, as torch computes it);
    "fro", ±1, ±inf, gradients and everything else listed in the module docstring go to torch's own
    function, so gradients are always torch's.
    """
    A, kwargs = _NORM.input(A, kwargs)
    a = _NORM.bind(args, kwargs)
    if a is not None:
        ord, keepdim, out = a["ord"], a["keepdim"], a["out"]
        fast_ord = (type(ord) in (int, float) and ord in (2, -2)) or (type(ord) is str and ord == "nuc")
        if fast_ord and type(keepdim) is bool and _engine_ok(A):
            dims = _matrix_dims(a["dim"], A.dim())
            cdt = _norm_dtype(A, a["dtype"])
            if dims is not None and cdt is not None and _out_ok(out, A, cdt):
                last = (A.dim() - 2, A.dim() - 1)
                B = A if dims == last else A.movedim(dims, last)
                s = _spectrum(B, torch.float64, "exact" if cdt == torch.float64 else "auto")
                if s is not None:
                    v = _tensor(s[..., 0] if ord == 2 else s[..., -1] if ord == -2 else s.sum(-1), cdt)
                    if keepdim:
                        v = v.reshape([1 if d in dims else size for d, size in enumerate(A.shape)])
                    return v if out is None else _write_out(out, v)
    return _torch_call("matrix_norm", A, args, kwargs)


def cond(A=_NO_INPUT, /, *args, **kwargs):
    """Condition number of A (..., m, n): torch.linalg.cond(A, p=None, *, out=None).

    p=None or 2: s₁ / s_k; p=-2: s_k / s₁ (inf for an exactly singular matrix, NaN for the zero
    matrix, as torch gives), in A's real dtype with A's batch shape. The same arguments, results,
    errors and ``out=`` behaviour as torch's function. For real float32/float64 tensors the engine
    computes the singular values in float64 and the ratio is rounded once; the float32 Gram route may
    give exactly 0 (and cond inf) for a matrix whose smallest singular value is below ~1e-8·s₁, where
    torch's float32 SVD gives rounding noise of about 1e-7·s₁. Other p (which need square matrices),
    gradients and everything else listed in the module docstring go to torch's own function, so
    gradients are always torch's.
    """
    A, kwargs = _COND.input(A, kwargs)
    a = _COND.bind(args, kwargs)
    if a is not None:
        p, out = a["p"], a["out"]
        if (p is None or (type(p) in (int, float) and p in (2, -2))) and _engine_ok(A) and _out_ok(out, A, A.dtype):
            s = _spectrum(A, torch.float64)
            if s is not None:
                with np.errstate(divide="ignore", invalid="ignore"):  # x/0 = inf and 0/0 = NaN, as torch gives
                    c = s[..., -1] / s[..., 0] if p == -2 else s[..., 0] / s[..., -1]
                c = _tensor(c, A.dtype)
                return c if out is None else _write_out(out, c)
    return _torch_call("cond", A, args, kwargs)


for _fn, _params in ((svdvals, _SVDVALS), (matrix_rank, _RANK), (matrix_norm, _NORM), (cond, _COND)):
    _fn.__signature__ = _params.signature
    _fn._torch_original = ORIGINALS[_fn.__name__]
del _fn, _params
