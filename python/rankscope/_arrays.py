"""Input classification, dtype/device checks and output allocation.

One import path: every input becomes a numpy array or a torch tensor here (zero copy where the data
is already a floating array on the host), the compiled core imports those through DLPack, and results
are allocated here in the caller's framework so that the core only fills them.

JAX arrays are recognised without importing jax (a JAX array can only exist once jax is imported):
host arrays are read in place through DLPack, CUDA arrays through the CUDA backend's DLPack import,
and results come back as JAX arrays on the input's device, in JAX's canonical dtypes (float32/int32
unless ``jax_enable_x64`` is on, as ``jnp.asarray`` would give).
"""

from __future__ import annotations

import math
import numbers
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

# Stored dtype name -> (eps, dtype of the singular values returned by default).
_FLOATS = {
    "float16": (float(np.finfo(np.float16).eps), "float32"),
    "bfloat16": (2.0**-7, "float32"),
    "float32": (float(np.finfo(np.float32).eps), "float32"),
    "float64": (float(np.finfo(np.float64).eps), "float64"),
}


def eps_of(dtype_name: str) -> float:
    """Machine epsilon of a stored dtype (float16 2**-10, bfloat16 2**-7, ...)."""
    return _FLOATS[dtype_name][0]


def _torch():
    return sys.modules.get("torch")


def is_torch(x: Any) -> bool:
    t = _torch()
    return t is not None and isinstance(x, t.Tensor)


def is_cupy(x: Any) -> bool:
    cp = sys.modules.get("cupy")
    return cp is not None and isinstance(x, cp.ndarray)


def is_jax(x: Any) -> bool:
    """True for JAX arrays (tracers included); never imports jax."""
    jax = sys.modules.get("jax")
    return jax is not None and isinstance(x, getattr(jax, "Array", ()))


def jax_x64() -> bool:
    """Whether JAX holds 64-bit types (jax_enable_x64); only called once jax is imported."""
    return bool(sys.modules["jax"].config.read("jax_enable_x64"))


def _jax_device(a: Any) -> Any:
    (dev,) = a.devices()
    return dev


def _cuda_or_raise(what: str, where: str):
    """The CUDA module, or ValueError saying why device arrays cannot be used here."""
    from ._backend import cuda_error, cuda_module

    reason = cuda_error()
    if reason:
        raise ValueError(f"{what} is on {where}, but {reason}; move it to the host (.cpu() / .get()) first")
    return cuda_module()


def parse_device(device: Any) -> int | None:
    """The CUDA device index that `device=` asks for (None for the host), or ValueError.

    Accepts None, "cpu", "cuda" (torch's current device when torch has initialised CUDA, else 0),
    "cuda:N", and torch.device objects.
    """
    if device is None:
        return None
    name = str(device)
    if name == "cpu":
        return None
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    from ._backend import cuda_error, cuda_module

    reason = cuda_error()
    if reason:
        raise ValueError(f"device={name!r}: {reason}")
    if index:
        idx = int(index)
    else:
        torch = _torch()
        idx = torch.cuda.current_device() if torch is not None and torch.cuda.is_initialized() else 0
    count = cuda_module().device_count()
    if idx >= count:
        raise ValueError(f"device={name!r}: this machine has {count} CUDA device(s)")
    return idx


def host_view(out: Any) -> np.ndarray:
    """A numpy view of a host output (numpy array or CPU torch tensor) for the core to fill."""
    return out.numpy() if is_torch(out) else out


def is_real(v: Any, finite: bool = False) -> bool:
    """A real number, numpy scalars included (a config's np.int64), bools not; with `finite`, also
    finite. The one test behind the numeric options' checks."""
    return (isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_))
            and (not finite or math.isfinite(v)))


@dataclass
class Prepared:
    """A validated array: `data` is what the core reads (numpy array or torch tensor)."""

    data: Any
    kind: str  # "numpy", "torch", "cupy" or "list" (nested Python lists: results come back as lists)
    dtype: str  # the dtype the data was stored in: float16, bfloat16, float32 or float64
    dlpack_shape: tuple | None = None  # for objects the core reads through DLPack only
    device: str = "cpu"  # "cpu" or "cuda" (then `data` is a torch CUDA tensor, CuPy or JAX array)
    origin: Any = None  # kind "jax": the caller's JAX array (results go back to its device)

    @property
    def on_cuda(self) -> bool:
        return self.device == "cuda"

    @property
    def device_index(self) -> int:
        if self.kind == "torch":
            return self.data.device.index or 0
        if self.kind == "jax":
            return int(self.origin.__dlpack_device__()[1])
        return self.data.device.id

    def stream(self) -> int:
        """The caller's current CUDA stream on this array's device (its handle as an int).

        JAX exposes no current stream: its arrays are computed on the legacy default stream (0), on
        which JAX makes them ready when they are exported through DLPack, and the call waits for that
        stream before it returns (so that JAX, on its own streams, sees the results)."""
        if self.kind == "torch":
            return int(_torch().cuda.current_stream(self.data.device).cuda_stream)
        if self.kind == "jax":
            return 0
        import cupy

        with cupy.cuda.Device(self.device_index):
            return int(cupy.cuda.get_current_stream().ptr)

    @property
    def shape(self) -> tuple:
        return self.dlpack_shape if self.dlpack_shape is not None else tuple(self.data.shape)

    @property
    def eps(self) -> float:
        return eps_of(self.dtype)


def _prepare_numpy(a: np.ndarray, what: str, kind: str) -> Prepared:
    dt = a.dtype
    if dt.kind == "c":
        raise TypeError(f"{what}: complex input ({dt}) is not supported; pass the real matrix")
    if dt.kind in "biu":
        a = a.astype(np.float64)  # documented: integer/bool inputs are converted to float64
    elif dt.kind != "f" or dt.itemsize not in (2, 4, 8):
        raise TypeError(f"{what}: dtype {dt} is not supported; expected a real floating or integer array")
    elif not dt.isnative:
        a = a.astype(dt.newbyteorder("="))  # the core reads native byte order only
    return Prepared(a, kind, a.dtype.name)


def _prepare_torch(t: Any, what: str) -> Prepared:
    torch = _torch()
    # checked first: these have no strided data for DLPack (and t.dtype/t.to fail on some of them)
    if t.is_nested:
        raise TypeError(f"{what}: nested tensors are not supported; pass list({what}.unbind()) (a list of matrices)")
    if t.layout != torch.strided:
        raise TypeError(f"{what}: sparse tensors ({t.layout}) are not supported; pass {what}.to_dense()")
    if t.is_quantized:
        raise TypeError(f"{what}: quantized tensors ({t.dtype}) are not supported; pass {what}.dequantize()")
    if t.is_complex():
        raise TypeError(f"{what}: complex input ({t.dtype}) is not supported; pass the real matrix")
    if t.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        if t.is_floating_point():
            raise TypeError(f"{what}: dtype {t.dtype} is not supported")
        t = t.to(torch.float64)
    if t.requires_grad:
        t = t.detach()  # values only: no autograd through svdvals
    if t.is_neg():  # x.conj().imag: its memory holds −x, and DLPack exports the memory (a copy only then)
        t = t.resolve_neg()
    if t.device.type == "cuda":
        _cuda_or_raise(what, f"device '{t.device}'")
        return Prepared(t, "torch", str(t.dtype).removeprefix("torch."), device="cuda")
    if t.device.type != "cpu":
        raise ValueError(f"{what} is on device '{t.device}'; rankscope reads host and CUDA tensors only")
    return Prepared(t, "torch", str(t.dtype).removeprefix("torch."))


def _prepare_cupy(a: Any, what: str) -> Prepared:
    dt = np.dtype(a.dtype)
    if dt.kind == "c":
        raise TypeError(f"{what}: complex input ({dt}) is not supported; pass the real matrix")
    if dt.kind in "biu":
        a = a.astype(np.float64)
    elif dt.kind != "f" or dt.itemsize not in (2, 4, 8):
        raise TypeError(f"{what}: dtype {dt} is not supported; expected a real floating or integer array")
    _cuda_or_raise(what, f"CUDA device {a.device.id}")
    return Prepared(a, "cupy", np.dtype(a.dtype).name, device="cuda")


# DLPack device types (dlpack.h): where a JAX array lives.
_DL_CPU, _DL_CUDA, _DL_CUDA_HOST, _DL_CUDA_MANAGED = 1, 2, 3, 13


def _prepare_jax(x: Any, what: str) -> Prepared:
    """A JAX array: host data read in place through DLPack (the core's own import for bfloat16,
    which numpy cannot view), CUDA data through the CUDA backend's DLPack import."""
    if not type(x).__module__.startswith("jaxlib"):  # a tracer inside jit/vmap/grad: no data to read
        raise TypeError(
            f"{what} is a traced JAX value ({type(x).__name__}); rankscope needs concrete arrays: call it outside "
            "jax.jit/vmap/grad (or through jax.pure_callback)"
        )
    try:
        dev_type, _ = x.__dlpack_device__()
    except BufferError as e:
        raise ValueError(f"{what}: a JAX array sharded over several devices cannot be read ({e}); pass one shard "
                         "(x.addressable_shards[i].data) or gather it") from None
    dt = np.dtype(x.dtype)
    if dt.kind == "c":
        raise TypeError(f"{what}: complex input ({dt}) is not supported; pass the real matrix")
    if int(dev_type) in (_DL_CUDA, _DL_CUDA_MANAGED):
        _cuda_or_raise(what, f"JAX device {_jax_device(x)}")
        if dt.kind in "biu":  # converted on the device, in the widest float JAX holds
            x = x.astype("float64" if jax_x64() else "float32")
            dt = np.dtype(x.dtype)
        elif dt.name not in _FLOATS:
            raise TypeError(f"{what}: dtype {dt} is not supported; expected a real floating or integer array")
        return Prepared(x, "jax", dt.name, device="cuda", origin=x)
    if int(dev_type) not in (_DL_CPU, _DL_CUDA_HOST):
        raise ValueError(f"{what} is on JAX device {_jax_device(x)}; rankscope reads host and CUDA arrays only")
    if dt.name == "bfloat16":
        return Prepared(x, "jax", "bfloat16", dlpack_shape=tuple(x.shape), origin=x)
    p = _prepare_numpy(np.from_dlpack(x), what, "jax")  # a read-only view of the JAX buffer
    p.origin = x
    return p


def _prepare_dlpack_only(x: Any, what: str, numpy_error: Exception) -> Prepared:
    """Objects numpy cannot view (bfloat16, e.g. from JAX): the core reads them through DLPack itself."""
    from ._backend import _core

    try:
        shape, dtype, device = _core.describe(x)
    except (TypeError, ValueError, BufferError) as e:
        raise TypeError(f"{what}: cannot read {type(x).__name__} through DLPack ({e}; numpy: {numpy_error})") from None
    if device != "cpu":
        raise ValueError(f"{what} is not in host memory; this rankscope install reads host arrays only")
    return Prepared(x, "numpy", dtype, dlpack_shape=tuple(shape))


def prepare(x: Any, what: str = "x") -> Prepared:
    """Validates one array-like input without copying floating host data."""
    if isinstance(x, np.ma.MaskedArray):
        masked = int(np.ma.count_masked(x))
        if masked:  # np.asarray would silently read the values under the mask
            raise ValueError(f"{what}: masked array with {masked} masked entries; pass {what}.filled(...) or "
                             f"{what}.data (the values under the mask)")
        x = x.data
    if isinstance(x, np.ndarray):
        return _prepare_numpy(x, what, "numpy")
    if is_torch(x):
        return _prepare_torch(x, what)
    if is_cupy(x):
        return _prepare_cupy(x, what)
    if is_jax(x):
        return _prepare_jax(x, what)
    if isinstance(x, (list, tuple)):
        try:
            a = np.asarray(x)
        except ValueError as e:  # ragged nested lists
            raise ValueError(f"{what}: nested lists must form a regular array ({e}); for matrices (or spectra) of "
                             "different shapes pass a list of arrays") from None
        return _prepare_numpy(a, what, "list")
    if hasattr(x, "__dlpack__") and not hasattr(x, "__array_interface__"):
        try:
            a = np.from_dlpack(x)
        except (TypeError, BufferError, RuntimeError, ValueError) as e:
            return _prepare_dlpack_only(x, what, e)
        return _prepare_numpy(a, what, "numpy")
    try:
        a = np.asarray(x)
    except Exception as e:  # noqa: BLE001 - anything numpy cannot turn into an array
        raise TypeError(f"{what}: expected an array, got {type(x).__name__} ({e})") from None
    if a.dtype == object:
        raise TypeError(f"{what}: expected an array of numbers, got {type(x).__name__} (numpy reads it as dtype object)")
    return _prepare_numpy(a, what, "numpy")


def is_ragged(x: Any) -> bool:
    """A list/tuple of arrays (not of numbers or nested lists) is a ragged batch of matrices."""
    if not isinstance(x, (list, tuple)):
        return False
    if len(x) == 0:
        return True
    return all(isinstance(e, np.ndarray) or is_torch(e) or is_cupy(e) or hasattr(e, "__dlpack__") for e in x)


def prepare_matrices(x: Any, what: str = "x") -> list[Prepared]:
    """Validates each matrix of a ragged list (each 2-D, all on one device)."""
    items = [prepare(e, f"{what}[{i}]") for i, e in enumerate(x)]
    for i, p in enumerate(items):
        if len(p.shape) != 2:
            raise ValueError(f"{what}[{i}] must be a 2-D matrix, got shape {p.shape}")
    devices = {f"cuda:{p.device_index}" if p.on_cuda else "cpu" for p in items}
    if len(devices) > 1:
        raise ValueError(f"{what}: matrices on different devices ({', '.join(sorted(devices))})")
    return items


def normalize_dtype(dtype: Any) -> str | None:
    """'float32'/'float64' from a numpy/torch dtype, a type or a string; None stays None."""
    if dtype is None:
        return None
    if is_torch(dtype) or type(dtype).__module__ == "torch":
        name = str(dtype).removeprefix("torch.")
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
    if name not in ("float32", "float64"):
        raise TypeError(f"dtype must be float32 or float64, got {name}")
    return name


def empty(like: Prepared, shape: tuple, dtype: str) -> Any:
    """An uninitialised output of `shape` in `like`'s framework and device."""
    if like.kind == "torch":
        torch = _torch()
        return torch.empty(shape, dtype=getattr(torch, dtype), device=like.data.device)
    if like.kind == "cupy":
        import cupy

        with cupy.cuda.Device(like.device_index):
            return cupy.empty(shape, dtype=dtype)
    if like.kind == "jax" and like.on_cuda:
        # A fresh JAX buffer on the array's device that the CUDA backend fills through DLPack before
        # anything else can see it. float64 (the metrics' internal spectra) is allocated with x64 on.
        jax = sys.modules["jax"]
        with jax.enable_x64(True):
            return jax.numpy.zeros(shape, dtype=dtype, device=_jax_device(like.origin))
    return np.empty(shape, dtype=dtype)


def _to_jax(a: np.ndarray, like: Prepared) -> Any:
    """A host result as a JAX array on `like`'s device, in JAX's canonical dtype (float64 → float32
    and int64 → int32 unless jax_enable_x64 is on)."""
    jax = sys.modules["jax"]
    a = np.asarray(a)
    return jax.device_put(a.astype(jax.dtypes.canonicalize_dtype(a.dtype), copy=False), _jax_device(like.origin))


def to_framework(a: np.ndarray, like: Prepared) -> Any:
    """A host numpy result in `like`'s framework: numpy (0-d → scalar), torch, or Python lists."""
    if like.kind == "torch":
        # reshape: np.ascontiguousarray makes 0-d arrays 1-d, and one matrix's metric is a 0-d tensor
        return _torch().from_numpy(np.ascontiguousarray(a).reshape(a.shape)).to(like.data.device)
    if like.kind == "cupy":
        import cupy

        with cupy.cuda.Device(like.device_index):
            return cupy.asarray(a)
    if like.kind == "jax":
        return _to_jax(a, like)
    if like.kind == "list":
        return a.tolist()
    return a[()] if a.ndim == 0 else a


def finish(out: Any, like: Prepared) -> Any:
    """An output allocated by empty(), returned in the caller's form."""
    if like.kind == "jax":
        return out if like.on_cuda else _to_jax(out, like)
    return out.tolist() if like.kind == "list" else out
