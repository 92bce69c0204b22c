"""Exception types raised by rankscope."""

import numpy as np

__all__ = ["CudaError", "LinAlgError"]


class LinAlgError(np.linalg.LinAlgError):
    """A LAPACK (or cuSOLVER) routine failed; the message names the routine."""


class CudaError(RuntimeError):
    """A CUDA runtime, cuBLAS or cuSOLVER call failed; the message names the call and the error."""


def index_tuple(i: int, shape: tuple) -> tuple:
    """The multi-index of flat index `i` in an array of shape `shape` (() for a scalar shape)."""
    return tuple(int(j) for j in np.unravel_index(i, shape)) if shape else ()


def batch_index(i: int, batch: tuple) -> str:
    """ "at batch index (i, j, ...)" of flat matrix index `i` in a batch of shape `batch`."""
    return f"at batch index {index_tuple(i, batch)}"


def non_finite_error(what: str, where: str, count: int) -> ValueError:
    """The ValueError for NaN/Inf inputs: `what` (the argument) "contains NaN or Inf (matrix
    `where` and `count` − 1 more); pass check_finite=False ..."."""
    more = f" and {count - 1} more" if count > 1 else ""
    return ValueError(f"{what} contains NaN or Inf (matrix {where}{more}); pass check_finite=False to get NaN "
                      "results for such matrices instead")
