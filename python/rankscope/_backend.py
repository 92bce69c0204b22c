"""Loads the compiled engines; reports what was built."""

from __future__ import annotations

import ctypes
import glob
import importlib.util
import os
from types import ModuleType

import scipy_openblas32

# The extension finds OpenBLAS through a relative RPATH to the installed scipy_openblas32 package;
# loading it here first also covers layouts where that path does not hold (editable installs).
_OPENBLAS = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
if os.path.exists(_OPENBLAS):
    ctypes.CDLL(_OPENBLAS, mode=ctypes.RTLD_GLOBAL)

from . import _core

_CUDA: ModuleType | None = None
_CUDA_ERROR: str | None = None
# Dependencies first: the wheels' libraries carry no RPATH to each other.
_NVIDIA_LIBS = ("libnvJitLink.so.*", "libcusparse.so.*", "libcublasLt.so.*", "libcublas.so.*", "libcusolver.so.*")


def _preload_nvidia_wheels() -> None:
    """Loads cuSOLVER/cuBLAS from NVIDIA's pip wheels wherever they are on sys.path (the extension's
    own RPATH covers wheels installed next to rankscope; this covers other layouts)."""
    try:
        import nvidia
    except ImportError:
        return
    for root in getattr(nvidia, "__path__", []):
        lib = os.path.join(root, "cu13", "lib")
        for pattern in _NVIDIA_LIBS:
            for path in sorted(glob.glob(os.path.join(lib, pattern))):
                try:
                    ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
                except OSError:
                    pass


def cuda_module() -> ModuleType | None:
    """rankscope._cuda, or None when it was not built or cannot load (see cuda_error())."""
    global _CUDA, _CUDA_ERROR
    if _CUDA is not None or _CUDA_ERROR is not None:
        return _CUDA
    try:
        from . import _cuda
    except ImportError as first:
        _preload_nvidia_wheels()
        try:
            from . import _cuda
        except ImportError:
            _CUDA_ERROR = str(first)
            return None
    _CUDA = _cuda
    return _CUDA


def cuda_error() -> str:
    """Why the CUDA backend cannot be used here ("" when it can)."""
    mod = cuda_module()
    if mod is None:
        if importlib.util.find_spec(f"{__package__}._cuda") is None:  # no such extension module was built
            return ("this rankscope install was built without the CUDA backend (`rankscope info` shows the build; "
                    "reinstall with RANKSCOPE_CUDA=ON where the CUDA toolkit or NVIDIA's CUDA wheels are)")
        return f"the CUDA backend failed to load: {_CUDA_ERROR}"
    if mod.device_count() == 0:
        return f"no usable CUDA device ({mod.no_device_reason()})"
    return ""


def cuda_built() -> bool:
    """True when the CUDA backend (rankscope._cuda) was built and loads."""
    return cuda_module() is not None


def cuda_available() -> bool:
    """True when the CUDA backend is built and a CUDA device is usable."""
    mod = cuda_module()
    return mod is not None and mod.device_count() > 0


def build_info() -> dict:
    """What this install was built with and will use: instruction set of the batched kernels, BLAS,
    threads, and whether the CUDA backend is present and has a device."""
    return {
        "cpu_isa": _core.isa(),
        "blas": _core.blas_config(),
        "num_threads": _core.get_num_threads(),
        "available_cpus": _core.available_cpus(),
        "compact_max_k": _core.compact_max_k(),
        "cuda": cuda_available(),
        "cuda_built": cuda_built(),
        "cuda_devices": cuda_module().device_count() if cuda_built() else 0,
    }
