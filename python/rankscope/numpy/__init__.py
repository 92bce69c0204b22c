"""numpy-compatible entry points backed by rankscope's engine.

``rankscope.numpy.linalg`` has the signatures, semantics, result dtypes, shapes and exceptions of
``numpy.linalg``'s ``svd``, ``svdvals``, ``matrix_rank``, ``norm``, ``matrix_norm`` and ``cond``; calls
that only need the singular values of real float32/float64 matrices run on the engine, every other
call goes to numpy itself. ``rankscope.patch()`` swaps them into ``numpy.linalg`` for a block.
Every other ``numpy.linalg`` name is reachable through ``rankscope.numpy.linalg`` too (numpy's own).
"""

from . import linalg

__all__ = ["linalg"]
