"""rankscope.patch(): rankscope's drop-in functions swapped into numpy.linalg / torch.linalg for a block."""

from __future__ import annotations

import contextlib
import importlib
import threading

# One process-wide state: module attributes are global, so is the patch.
_lock = threading.Lock()
_owner: int | None = None  # the thread holding the patch while any target is installed
_active: dict[str, list] = {}  # target -> [depth, target module, {name: attribute saved on entry}]


def _replacements(target: str) -> tuple:
    """(module to patch, {name: rankscope's function}) for "numpy" or "torch"."""
    if target == "numpy":
        import numpy

        from .numpy import linalg as ours

        return numpy.linalg, {name: getattr(ours, name) for name in ours.ORIGINALS}
    try:
        import torch
    except ImportError:
        raise ImportError("rankscope.patch(torch=True) needs torch: pip install torch") from None
    ours = importlib.import_module("rankscope.torch.linalg")
    return torch.linalg, {name: getattr(ours, name) for name in ours.ORIGINALS}


def _release(targets) -> None:
    """Leaves targets once (the caller holds _lock); the last leave restores what was there on entry."""
    global _owner
    for target in reversed(targets):
        entry = _active[target]
        entry[0] -= 1
        if entry[0] == 0:
            module, saved = entry[1], entry[2]
            for name, value in saved.items():
                setattr(module, name, value)
            del _active[target]
    if not _active:
        _owner = None


class patch(contextlib.ContextDecorator):
    """Swaps rankscope's drop-in functions into ``numpy.linalg`` (and ``torch.linalg``) for a block.

    ``with rankscope.patch():`` replaces ``numpy.linalg.svd``, ``svdvals``, ``matrix_rank``,
    ``norm``, ``matrix_norm`` and ``cond`` by those of :mod:`rankscope.numpy.linalg` (numpy's
    results, computed on the engine where only singular values of float matrices are needed) and
    puts the previous attributes back on exit, also when the block raises. ``torch=True`` does the
    same for ``torch.linalg``'s ``svdvals``, ``matrix_rank``, ``matrix_norm`` and ``cond`` with
    ``rankscope.torch.linalg`` (importing torch). Also usable as a decorator, and reusable.

    Only code that looks the functions up through the module sees the patch (``np.linalg.svd(x)``);
    a name bound earlier by ``from numpy.linalg import svd`` keeps numpy's function.

    Nesting: patches nest within one thread. An inner block that asks for a target already
    installed leaves it installed; one that adds a target (torch inside a numpy-only block) removes
    that target when it exits; the outermost exit restores numpy's and torch's own functions.

    Threads: the attributes are process-wide, so while a block is active every thread calls
    rankscope's functions (they are thread-safe and give numpy's results). Entering a patch from
    another thread while one is active raises RuntimeError: patch from one thread, around all the
    work, instead.

    Parameters
    ----------
    numpy : bool
        Patch ``numpy.linalg`` (default True).
    torch : bool
        Patch ``torch.linalg`` (default False); needs torch.
    """

    def __init__(self, numpy: bool = True, torch: bool = False):
        for name, value in (("numpy", numpy), ("torch", torch)):
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
        self._targets = tuple(t for t, on in (("numpy", numpy), ("torch", torch)) if on)

    def __repr__(self) -> str:
        return f"rankscope.patch(numpy={'numpy' in self._targets}, torch={'torch' in self._targets})"

    def __enter__(self):
        global _owner
        if not self._targets:
            return self
        # imports first, outside the lock: importing rankscope.torch.linalg may take a while
        plans = {t: _replacements(t) for t in self._targets}
        me = threading.get_ident()
        with _lock:
            if _owner is not None and _owner != me:
                raise RuntimeError(
                    "rankscope.patch() is already active in another thread; numpy.linalg and torch.linalg "
                    "are process-wide, so patch once, from one thread, around all the work"
                )
            done = []
            try:
                for target in self._targets:
                    if target in _active:
                        _active[target][0] += 1
                    else:
                        module, funcs = plans[target]
                        saved = {name: getattr(module, name) for name in funcs}
                        _active[target] = [1, module, saved]
                        for name, fn in funcs.items():
                            setattr(module, name, fn)
                    done.append(target)
                    _owner = me
            except BaseException:
                _release(done)
                raise
        return self

    def __exit__(self, *exc) -> None:
        if not self._targets:
            return
        with _lock:
            if _owner != threading.get_ident():
                raise RuntimeError("rankscope.patch() exited from a thread other than the one that entered it")
            _release(self._targets)


def active() -> dict[str, int]:
    """{target: nesting depth} of the patches now installed (empty when none): for tests and debugging."""
    with _lock:
        return {t: e[0] for t, e in _active.items()}
