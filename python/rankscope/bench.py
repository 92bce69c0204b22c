"""``rankscope bench``: what the engine buys you on this machine, against numpy (and torch).

Every case is float32 data (seed 0) timed in this process: the median of `runs` calls after one
warm-up call (time.perf_counter), for rankscope, ``numpy.linalg.svd(compute_uv=False)`` and, when
torch is importable, ``torch.linalg.svdvals`` (lists of matrices are looped over by numpy and torch).
Accuracy is max |s - s_ref| / s_1 against float64 LAPACK (``numpy.linalg.svd`` in float64) over the
first 8 matrices of each case; matrix_rank rows compare every rank with ``numpy.linalg.matrix_rank``.
Every other matrix has its last column equal to its first (rank-deficient by one), so the rank
comparison is not only about full-rank matrices.

Imported by the CLI only (``import rankscope`` does not import it).
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import numpy as np

import rankscope as rs

#: Mixed-shape list, a model zoo's kind of shapes (numpy and torch loop over it).
_MIXED = ([(64, 64)] * 48 + [(256, 64)] * 12 + [(64, 256)] * 12 + [(768, 768)] * 2 + [(1024, 256)] * 2
          + [(512, 3)] * 16)
_MIXED_QUICK = [(64, 64)] * 16 + [(128, 32)] * 8 + [(32, 128)] * 8 + [(256, 256)] * 2 + [(512, 3)] * 8

#: name: batch shape (..., m, n) or a list of (m, n) shapes.
CASES: dict[str, Any] = {
    "4608x3x3": (4608, 3, 3),
    "2000x64x64": (2000, 64, 64),
    "8x512x512": (8, 512, 512),
    "4x1024x256": (4, 1024, 256),
    "mixed-list": _MIXED,
}
QUICK_CASES: dict[str, Any] = {
    "4608x3x3": (4608, 3, 3),
    "500x64x64": (500, 64, 64),
    "4x256x256": (4, 256, 256),
    "4x512x128": (4, 512, 128),
    "mixed-list": _MIXED_QUICK,
}
#: Matrices of each case checked against float64 LAPACK.
SAMPLE = 8
#: Keys of every row; svdvals rows add err_rankscope, err_numpy (and err_torch), matrix_rank rows
#: ranks_agree and rank_mismatches; torch_ms, vs_torch and err_torch only when torch is importable.
KEYS = ("op", "case", "matrices", "device", "runs", "rankscope_ms", "numpy_ms", "vs_numpy")


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


def _data(spec, seed: int):
    """float32 Gaussian matrices; every other one with its last column equal to its first."""
    rng = np.random.default_rng(seed)
    if isinstance(spec, list):
        mats = [rng.standard_normal(tuple(s), dtype=np.float32) for s in spec]
        for a in mats[1::2]:
            if a.shape[1] > 1:
                a[:, -1] = a[:, 0]
        return mats
    x = rng.standard_normal(tuple(spec), dtype=np.float32)
    if x.shape[-1] > 1:
        flat = x.reshape(-1, *x.shape[-2:])
        flat[1::2, :, -1] = flat[1::2, :, 0]
    return x


def _matrices(x) -> list:
    return list(x) if isinstance(x, list) else list(x.reshape(-1, *x.shape[-2:]))


def _timed(fn: Callable[[], Any], runs: int, sync: Callable[[], None] | None = None) -> tuple[float, Any]:
    """(median milliseconds of `runs` calls after one warm-up, the last result)."""
    out = fn()
    if sync:
        sync()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        out = fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3, out


def _error(values: list, ref: list) -> float:
    return max(float(np.max(np.abs(np.asarray(v, dtype=np.float64) - r)) / r[0]) if r.size and r[0] > 0 else 0.0
               for v, r in zip(values, ref))


def _ratio(base: float, ours: float) -> float:
    return base / ours if ours > 0 else 0.0


def _values(out, listed: bool) -> list:
    """Per-matrix 1-D values of a result (a list, or an array (..., k))."""
    return list(out) if listed else list(np.asarray(out).reshape(-1, np.shape(out)[-1]))


def _case(name: str, x, device: str, runs: int, torch, torch_dev: str, tsync, rs_dev) -> list[dict]:
    """The svdvals and matrix_rank rows of one case."""
    mats = _matrices(x)
    listed = isinstance(x, list)
    ref = [np.linalg.svd(a.astype(np.float64), compute_uv=False) for a in mats[:SAMPLE]]
    base = {"case": name, "matrices": len(mats), "device": device, "runs": runs}

    ours_ms, ours = _timed(lambda: rs.svdvals(x, device=rs_dev), runs)
    np_ms, theirs = _timed(lambda: [np.linalg.svd(a, compute_uv=False) for a in x] if listed
                           else np.linalg.svd(x, compute_uv=False), runs)
    row = {"op": "svdvals", **base, "rankscope_ms": ours_ms, "numpy_ms": np_ms,
           "vs_numpy": _ratio(np_ms, ours_ms), "err_rankscope": _error(_values(ours, listed)[:SAMPLE], ref),
           "err_numpy": _error(_values(theirs, listed)[:SAMPLE], ref)}
    if torch is not None:
        tx = [torch.from_numpy(a).to(torch_dev) for a in x] if listed else torch.from_numpy(x).to(torch_dev)
        t_ms, tout = _timed(lambda: [torch.linalg.svdvals(a) for a in tx] if listed
                            else torch.linalg.svdvals(tx), runs, tsync)
        tvals = [t.cpu().numpy() for t in tout] if listed else _values(tout.cpu().numpy(), False)
        row.update(torch_ms=t_ms, vs_torch=_ratio(t_ms, ours_ms), err_torch=_error(tvals[:SAMPLE], ref))

    ours_ms, ranks = _timed(lambda: rs.matrix_rank(x, device=rs_dev), runs)
    np_ms, np_ranks = _timed(lambda: [np.linalg.matrix_rank(a) for a in x] if listed
                             else np.linalg.matrix_rank(x), runs)
    mismatches = int(np.count_nonzero(np.ravel(np.asarray(ranks)) != np.ravel(np.asarray(np_ranks))))
    return [row, {"op": "matrix_rank", **base, "rankscope_ms": ours_ms, "numpy_ms": np_ms,
                  "vs_numpy": _ratio(np_ms, ours_ms), "ranks_agree": mismatches == 0,
                  "rank_mismatches": mismatches}]


def run(quick: bool = False, device: str = "cpu", cases: dict[str, Any] | None = None,
        runs: int | None = None, seed: int = 0) -> list[dict]:
    """Benchmark rows (plain Python values, JSON-safe): one svdvals and one matrix_rank row per case.

    quick: the small cases (QUICK_CASES, 3 runs) instead of CASES (5 runs). device: "cpu", or "cuda"
    (rankscope computes the host data on the GPU; torch, when it has CUDA, on GPU tensors; numpy on
    the host). cases: {name: batch shape or list of shapes} to run instead. Raises RuntimeError for
    "cuda" without a usable GPU, ValueError for another device.
    """
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    if device == "cuda":
        from ._backend import cuda_available

        if not cuda_available():
            raise RuntimeError("--device cuda: no usable GPU (rankscope's CUDA backend is not built or sees "
                               "no CUDA device; rankscope info says which)")
    torch = _torch()
    torch_dev = "cuda" if device == "cuda" and torch is not None and torch.cuda.is_available() else "cpu"
    tsync = torch.cuda.synchronize if torch is not None and torch_dev == "cuda" else None
    rs_dev = "cuda" if device == "cuda" else None
    cases = cases if cases is not None else (QUICK_CASES if quick else CASES)
    runs = runs if runs is not None else (3 if quick else 5)
    rows: list[dict] = []
    for name, spec in cases.items():
        rows += _case(name, _data(spec, seed), device, runs, torch, torch_dev, tsync, rs_dev)
    for r in rows:  # strict JSON: no NaN or Infinity
        for k, v in r.items():
            if isinstance(v, float) and not math.isfinite(v):
                r[k] = None
    return rows


def _ms(v) -> str:
    return "–" if v is None else f"{v:.1f} ms" if v >= 1 else f"{v:.2f} ms"


def format_table(rows: list[dict]) -> str:
    """A plain-text table of run()'s rows, with a line on this machine and versions."""
    torch = _torch()
    info = rs.build_info()
    head = (f"rankscope {rs.__version__} ({info.get('cpu_isa')}, {info.get('num_threads')} threads), "
            f"numpy {np.__version__}, "
            + (f"torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch is not None
               else "torch not installed: no torch columns"))
    has_torch = any("torch_ms" in r for r in rows)
    cols = ["op", "case", "rankscope", "numpy"] + (["torch"] if has_torch else []) + ["vs numpy"] + (
        ["vs torch"] if has_torch else []) + ["err rankscope / numpy" + (" / torch" if has_torch else "")]
    table = []
    for r in rows:
        cells = [r["op"], r["case"], _ms(r["rankscope_ms"]), _ms(r["numpy_ms"])]
        if has_torch:
            cells.append(_ms(r.get("torch_ms")))
        cells.append(f"{r['vs_numpy']:.1f}x")
        if has_torch:
            cells.append(f"{r['vs_torch']:.1f}x" if r.get("vs_torch") is not None else "–")
        if r["op"] == "matrix_rank":
            cells.append("ranks equal numpy's" if r["ranks_agree"] else
                         f"{r['rank_mismatches']} of {r['matrices']} ranks differ from numpy's")
        else:
            errs = [r["err_rankscope"], r["err_numpy"]] + ([r["err_torch"]] if "err_torch" in r else [])
            cells.append(" / ".join(f"{e:.1e}" for e in errs))
        table.append(cells)
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(cols)]
    lines = [head, "", "  ".join(c.ljust(w) for c, w in zip(cols, widths))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(t, widths)).rstrip() for t in table]
    if rows:
        lines += ["", (f"median of {rows[0]['runs']} runs after a warm-up, float32 data, device {rows[0]['device']}; "
                       f"err: max |s - s_ref| / s1 against float64 LAPACK over the first {SAMPLE} matrices")]
    return "\n".join(lines)
