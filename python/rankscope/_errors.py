"""Exception types raised by rankscope."""

import numpy as np

__all__ = ["CudaError", "LinAlgError"]


class LinAlgError(np.linalg.LinAlgError):
    """A LAPACK (or cuSOLVER) routine failed; the message names the routine."""


class CudaError(RuntimeError):
    """A CUDA runtime, cuBLAS or cuSOLVER call failed; the message names the call and the error."""
