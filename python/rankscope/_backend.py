"""Loads the compiled engine; reports what was built."""

from __future__ import annotations

import ctypes
import os

import scipy_openblas32

# The extension finds OpenBLAS through a relative RPATH to the installed scipy_openblas32 package;
# loading it here first also covers layouts where that path does not hold (editable installs).
_OPENBLAS = os.path.join(scipy_openblas32.get_lib_dir(), "libscipy_openblas.so")
if os.path.exists(_OPENBLAS):
    ctypes.CDLL(_OPENBLAS, mode=ctypes.RTLD_GLOBAL)

from . import _core


def cuda_available() -> bool:
    """True when the CUDA backend (rankscope._cuda) is built and can be imported."""
    try:
        from . import _cuda  # noqa: F401
    except ImportError:
        return False
    return True


def build_info() -> dict:
    """What this install was built with and will use: instruction set of the batched kernels, BLAS,
    threads, and whether the CUDA backend is present."""
    return {
        "cpu_isa": _core.isa(),
        "blas": _core.blas_config(),
        "num_threads": _core.get_num_threads(),
        "available_cpus": _core.available_cpus(),
        "compact_max_k": _core.compact_max_k(),
        "cuda": cuda_available(),
    }
