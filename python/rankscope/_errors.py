"""Exception types raised by rankscope."""

import numpy as np

__all__ = ["LinAlgError"]


class LinAlgError(np.linalg.LinAlgError):
    """A LAPACK (or cuSOLVER) routine failed; the message names the routine."""
