"""float64 array operations on numpy arrays or torch tensors (CPU or CUDA) for the collapse modules.

The activation diagnostics (`collapse`) and the neural-collapse metrics (`neural_collapse`) are
small float64 reductions and d × d (or K × K) eigenproblems: they run on the caller's arrays with
the caller's library, numpy for host arrays and torch ops on the tensor's own device for torch
tensors, CPU and CUDA alike (so the CPU test of a torch tensor runs the very code a CUDA tensor
runs). rankscope's CUDA module is not needed for them. Importing this module imports neither torch
nor anything else: `Ops` holds the library that the input came with.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._arrays import is_cupy, is_torch, prepare

# Rows sorted at once by class_sums on the host (the sorted copy is one block, not the whole input).
_CLASS_SUM_BLOCK_BYTES = 32 << 20

_TORCH_FLOATS = ("float16", "bfloat16", "float32", "float64")


@dataclass(frozen=True)
class Ops:
    """The library (numpy or torch) and device an input lives on, and float64 helpers there."""

    kind: str  # "numpy", "torch" or "list" (nested Python lists: computed with numpy, lists out)
    device: Any = None  # torch.device for torch inputs

    @property
    def xp(self):
        return sys.modules["torch"] if self.kind == "torch" else np

    @property
    def where(self) -> str:
        """The device in words, for error messages."""
        return str(self.device) if self.kind == "torch" else "host (numpy)"

    def same_place(self, other: Ops) -> bool:
        if self.kind == "torch" or other.kind == "torch":
            return self.kind == other.kind and self.device == other.device
        return True

    # ---- construction ---------------------------------------------------------------------------

    def zeros(self, shape) -> Any:
        if self.kind == "torch":
            torch = self.xp
            return torch.zeros(shape, dtype=torch.float64, device=self.device)
        return np.zeros(shape)

    def full(self, shape, value: float) -> Any:
        if self.kind == "torch":
            torch = self.xp
            return torch.full(shape, value, dtype=torch.float64, device=self.device)
        return np.full(shape, value, dtype=np.float64)

    def eye(self, n: int) -> Any:
        if self.kind == "torch":
            torch = self.xp
            return torch.eye(n, dtype=torch.float64, device=self.device)
        return np.eye(n)

    def arange(self, n: int) -> Any:
        if self.kind == "torch":
            return self.xp.arange(n, device=self.device)
        return np.arange(n)

    def scalar(self, value: float) -> Any:
        """A 0-d float64 value here (a torch tensor on the device, or a numpy scalar)."""
        if self.kind == "torch":
            torch = self.xp
            return torch.tensor(value, dtype=torch.float64, device=self.device)
        return np.float64(value)

    # ---- operations that differ between the libraries ---------------------------------------------

    def svdvals(self, a: Any) -> Any:
        if self.kind == "torch":
            return self.xp.linalg.svdvals(a)
        return np.linalg.svd(a, compute_uv=False)

    def flip_last(self, a: Any) -> Any:
        return self.xp.flip(a, (-1,)) if self.kind == "torch" else a[..., ::-1]

    def argmax(self, a: Any, axis: int) -> Any:
        return a.argmax(dim=axis) if self.kind == "torch" else a.argmax(axis=axis)

    def argmin(self, a: Any, axis: int) -> Any:
        return a.argmin(dim=axis) if self.kind == "torch" else a.argmin(axis=axis)

    def log(self, a: Any) -> Any:
        """Natural log with log 0 = -inf and no warning."""
        if self.kind == "torch":
            return self.xp.log(a)
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.log(a)

    def divide(self, a: Any, b: Any) -> Any:
        """a / b without numpy's division warnings (x/0 = ±inf, 0/0 = NaN as IEEE says)."""
        if self.kind == "torch":
            return a / b
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.true_divide(a, b)

    def class_sums(self, h: Any, y: Any, k: int) -> Any:
        """(k, d) sums of the rows of h (n, d) by label y (n,) in 0..k-1."""
        if self.kind == "torch":
            return self.zeros((k, h.shape[1])).index_add_(0, y, h)
        out = np.zeros((k, h.shape[1]))
        rows = max(1, _CLASS_SUM_BLOCK_BYTES // (8 * max(1, h.shape[1])))
        for r0 in range(0, h.shape[0], rows):
            hb, yb = h[r0:r0 + rows], y[r0:r0 + rows]
            order = np.argsort(yb, kind="stable")
            ys = yb[order]
            starts = np.flatnonzero(np.r_[True, ys[1:] != ys[:-1]])
            out[ys[starts]] += np.add.reduceat(hb[order], starts, axis=0)
        return out

    def count(self, mask: Any, axis: Any = None) -> Any:
        """float64 number of True values (over `axis`, or all)."""
        if self.kind == "torch":
            torch = self.xp
            return mask.sum(dtype=torch.float64) if axis is None else mask.sum(dim=axis, dtype=torch.float64)
        return np.sum(mask, axis=axis, dtype=np.float64)

    def concat(self, arrays: list, axis: int) -> Any:
        return self.xp.cat(arrays, axis) if self.kind == "torch" else np.concatenate(arrays, axis=axis)

    def here(self, a: Any, a_ops: Ops, what: str) -> Any:
        """`a` (in the place `a_ops` describes) in this framework and on this device: host data may
        join CPU tensors (and CPU tensors host data); nothing is moved between host and GPU."""
        if self.same_place(a_ops):
            return a
        if self.kind == "torch" and self.device.type == "cpu" and a_ops.kind != "torch":
            return self.xp.from_numpy(np.ascontiguousarray(a))
        if self.kind != "torch" and a_ops.kind == "torch" and a_ops.device.type == "cpu":
            return a.numpy()
        raise ValueError(f"{what} is on {a_ops.where} but the data is on {self.where}")

    def class_counts(self, y: Any, k: int) -> Any:
        """float64 (k,) counts of each label."""
        c = self.xp.bincount(y, minlength=k)
        return c.to(self.xp.float64) if self.kind == "torch" else c.astype(np.float64)

    def to_numpy(self, a: Any) -> np.ndarray:
        """A host copy (synchronises with a CUDA device)."""
        if self.kind == "torch":
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def out(self, a: Any) -> Any:
        """A float64 (or int64) result in the caller's form: numpy (0-d as a scalar), a torch tensor
        on the input's device, or Python lists/floats for nested-list input."""
        if self.kind == "torch":
            return a
        a = np.asarray(a)
        if self.kind == "list":
            return a.tolist()
        return a[()] if a.ndim == 0 else a


def pow2_scale(x: Any, ops: Ops) -> Any:
    """2^⌊log₂ max |x|⌋ over x's finite entries (a device scalar), 1 for an empty or zero x: data
    divided by it (exactly: a power of two) has max |·| in [1, 2), so that its squares and Gram
    entries neither overflow nor underflow for finite float64 data beyond ~1e154 or below ~1e-154."""
    xp = ops.xp
    one = ops.scalar(1.0)
    if math.prod(x.shape) == 0:
        return one
    big = xp.amax(xp.where(xp.isfinite(x), xp.abs(x), ops.scalar(0.0)))
    return xp.where(big > 0, xp.exp2(xp.floor(xp.log2(xp.where(big > 0, big, one)))), one)


def as_float64(x: Any, what: str) -> tuple[Any, Ops, str]:
    """(float64 data, Ops, stored dtype name) of one input: numpy/lists/anything array-like on the
    host, torch tensors (CPU or CUDA) on their device. Integer and bool inputs become float64; the
    input is never modified (the float64 data is a copy unless it was float64 already)."""
    if is_torch(x):
        torch = sys.modules["torch"]
        if x.is_complex():
            raise TypeError(f"{what}: complex input ({x.dtype}) is not supported; pass the real matrix")
        name = str(x.dtype).removeprefix("torch.")
        if name not in _TORCH_FLOATS:
            if x.is_floating_point():
                raise TypeError(f"{what}: dtype {x.dtype} is not supported")
            name = "float64"
        if x.device.type not in ("cpu", "cuda"):
            raise ValueError(f"{what} is on device '{x.device}'; expected a CPU or CUDA tensor")
        return x.detach().to(torch.float64), Ops("torch", x.device), name
    if is_cupy(x):
        raise TypeError(f"{what}: CuPy arrays are not supported here; pass a torch tensor (torch.as_tensor) "
                        "or a numpy array")
    p = prepare(x, what)
    if p.dlpack_shape is not None:
        raise TypeError(f"{what}: {p.dtype} data from a DLPack-only object; convert it to float32 first")
    return np.asarray(p.data, dtype=np.float64), Ops("list" if p.kind == "list" else "numpy"), p.dtype


def as_labels(y: Any, ops: Ops, n: int, what: str = "labels") -> Any:
    """int64 labels (n,) in the framework and on the device of `ops` (numpy labels are accepted for
    CPU tensors, CPU labels are not moved to a GPU), or TypeError/ValueError."""
    if is_torch(y):
        torch = sys.modules["torch"]
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise TypeError(f"{what} must be integers, got {y.dtype}")
        if y.dtype == getattr(torch, "uint64", None) and y.numel():
            # int64 would wrap labels >= 2**63 to negatives: report the real value
            big = y.cpu().numpy()
            if int(big.max()) > np.iinfo(np.int64).max:
                raise ValueError(f"{what} must fit in int64 (and lie in 0..K-1), got label {int(big.max())}")
        if ops.kind == "torch":
            if y.device != ops.device:
                raise ValueError(f"{what} is on {y.device} but the features are on {ops.device}")
            t = y.to(torch.int64)
        elif y.device.type == "cpu":
            t = y.numpy().astype(np.int64)
        else:
            raise ValueError(f"{what} is on {y.device} but the features are in host memory")
    else:
        a = np.asarray(y)
        if a.dtype.kind not in "iu":
            raise TypeError(f"{what} must be integers, got dtype {a.dtype}")
        if a.dtype.kind == "u" and a.size and int(a.max()) > np.iinfo(np.int64).max:
            # int64 would wrap labels >= 2**63 to negatives: report the real value
            raise ValueError(f"{what} must fit in int64 (and lie in 0..K-1), got label {int(a.max())}")
        a = a.astype(np.int64)
        if ops.kind == "torch":
            if ops.device.type != "cpu":
                raise ValueError(f"{what} is in host memory but the features are on {ops.device}; "
                                 "pass labels on the same device")
            t = sys.modules["torch"].from_numpy(a)
        else:
            t = a
    if tuple(t.shape) != (n,):
        raise ValueError(f"{what} must have shape ({n},), one label per row of the features, got "
                         f"{tuple(t.shape)}")
    return t
