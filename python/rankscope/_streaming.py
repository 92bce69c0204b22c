"""Host-resident matrices computed on a GPU, chunk by chunk (the C++ half is cuda/staging.h).

Matrices are copied, in their own dtype, into one of two pinned staging slots; a slot is uploaded on a
copy stream while the other slot's chunk computes, and its values come back through pinned memory
into the host output. The batch never has to fit in GPU memory, and the host-side copy of one chunk
overlaps the GPU's work on the previous one. A slot holds about RANKSCOPE_CUDA_STAGING_MB MiB of input
(default 32), and at least one matrix.

Matrices stored closer to column-major are staged as their transposes (same singular values), so that
the copy reads whole rows.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from . import _core
from ._arrays import Prepared

DEFAULT_STAGING_MB = 32


class Stager(Protocol):
    """The interface of `rankscope._cuda.HostStager` (tests drive the same loop with a CPU stand-in)."""

    chunk: int

    def load(self, slot: int, x: Any, b0: int, b1: int, transposed: bool, at: int = 0) -> None: ...

    def submit(self, slot: int, nb: int, method: str) -> None: ...

    def wait(self, slot: int) -> tuple[np.ndarray, np.ndarray]: ...


# (device, dtype, rows, cols, values dtype, chunk) -> Stager
StagerFactory = Callable[[int, str, int, int, str, int], Stager]


def _gpu_stager(device: int, dtype: str, rows: int, cols: int, otype: str, chunk: int) -> Stager:
    from ._backend import cuda_module

    return cuda_module().HostStager(device, dtype, rows, cols, otype, chunk)


def staging_bytes() -> int:
    """Bytes of input per staging slot: RANKSCOPE_CUDA_STAGING_MB, else DEFAULT_STAGING_MB MiB."""
    env = os.environ.get("RANKSCOPE_CUDA_STAGING_MB")
    if not env:
        return DEFAULT_STAGING_MB << 20
    try:
        mb = float(env)
    except ValueError:
        mb = -1.0
    if not mb > 0:
        raise ValueError(f"RANKSCOPE_CUDA_STAGING_MB must be a positive number of MiB, got {env!r}")
    return int(mb * 2**20)


def chunk_size(matrix_bytes: int, count: int) -> int:
    """Matrices per slot: as many as fit staging_bytes(), at least 1, at most count."""
    return max(1, min(count, staging_bytes() // max(matrix_bytes, 1)))


def _itemsize(dtype: str) -> int:
    return 2 if dtype in ("float16", "bfloat16") else int(np.dtype(dtype).itemsize)


def _pipeline(stager: Stager, count: int, load: Callable[[int, int, int], None],
              store: Callable[[int, int, np.ndarray, np.ndarray], None], method: str) -> None:
    """Runs matrices 0 .. count through the stager's two slots, chunk by chunk.

    load(slot, b0, b1) fills a slot with matrices b0 .. b1; store(b0, b1, values, status) takes their
    results. A slot is loaded again only after its previous chunk's results were taken, so at any time
    one chunk is being loaded on the host while the other one is on the GPU.
    """
    chunk = stager.chunk
    pending: list[tuple[int, int] | None] = [None, None]

    def drain(slot: int) -> None:
        b0, b1 = pending[slot]
        pending[slot] = None
        values, status = stager.wait(slot)
        store(b0, b1, values, status)

    starts = range(0, count, chunk)
    for c, b0 in enumerate(starts):
        slot = c % 2
        if pending[slot] is not None:
            drain(slot)
        b1 = min(count, b0 + chunk)
        load(slot, b0, b1)
        stager.submit(slot, b1 - b0, method)
        pending[slot] = (b0, b1)
    for c in (len(starts), len(starts) + 1):  # the older chunk first
        if pending[c % 2] is not None:
            drain(c % 2)


def svdvals_batch(p: Prepared, out: np.ndarray, method: str, device: int,
                  make_stager: StagerFactory | None = None) -> np.ndarray:
    """Singular values of the host batch p (..., m, n) on GPU `device` into `out`, a host (count, k)
    view of the result. Returns the status bytes (count,)."""
    *batch, m, n = p.shape
    count = int(np.prod(batch, dtype=np.int64))
    status = np.zeros(count, dtype=np.int8)
    if count == 0 or min(m, n) == 0:
        return status
    transposed = bool(_core.prefers_transposed(p.data))
    rows, cols = (n, m) if transposed else (m, n)
    stager = (make_stager or _gpu_stager)(device, p.dtype, rows, cols, out.dtype.name,
                         chunk_size(rows * cols * _itemsize(p.dtype), count))

    def load(slot: int, b0: int, b1: int) -> None:
        stager.load(slot, p.data, b0, b1, transposed)

    def store(b0: int, b1: int, values: np.ndarray, st: np.ndarray) -> None:
        out[b0:b1] = values
        status[b0:b1] = st

    _pipeline(stager, count, load, store, method)
    return status


def svdvals_list(items: Sequence[Prepared], outs: Sequence[np.ndarray], method: str, device: int,
                 make_stager: StagerFactory | None = None) -> np.ndarray:
    """The same for a list of host matrices of any shapes into host 1-D outputs; matrices of one staged
    shape and dtype share chunks. Returns the status bytes (len(items),)."""
    status = np.zeros(len(items), dtype=np.int8)
    groups: dict[tuple[str, int, int], list[int]] = {}
    flips: list[bool] = []
    for i, p in enumerate(items):
        m, n = p.shape
        flips.append(bool(min(m, n) > 0 and _core.prefers_transposed(p.data)))
        if min(m, n) > 0:
            rows, cols = (n, m) if flips[i] else (m, n)
            groups.setdefault((p.dtype, rows, cols), []).append(i)
    for (dtype, rows, cols), idx in groups.items():
        otype = outs[idx[0]].dtype.name
        stager = (make_stager or _gpu_stager)(device, dtype, rows, cols, otype, chunk_size(rows * cols * _itemsize(dtype), len(idx)))

        def load(slot: int, b0: int, b1: int, idx=idx, stager=stager) -> None:
            for j, i in enumerate(idx[b0:b1]):
                stager.load(slot, items[i].data, 0, 1, flips[i], j)

        def store(b0: int, b1: int, values: np.ndarray, st: np.ndarray, idx=idx) -> None:
            for j, i in enumerate(idx[b0:b1]):
                outs[i][:] = values[j]
                status[i] = st[j]

        _pipeline(stager, len(idx), load, store, method)
    return status
