"""rankscope.svdvals / matrix_rank against numpy and torch (CPU), float32 batches.

Run: ``pytest benchmarks/bench_svdvals.py --benchmark-json=out.json`` then
``python benchmarks/summarize.py out.json`` for the ratio table. Every case also records the accuracy
of each library against float64 LAPACK on the same (float32) data: max |s - s_ref| / s_1.
"""

from __future__ import annotations

import numpy as np
import pytest

import rankscope as rs

torch = pytest.importorskip("torch")

# name: (batch shape or list of shapes, rounds)
CASES = {
    "10000x64x64": ((10000, 64, 64), 5),
    "4608x3x3": ((4608, 3, 3), 20),
    "500x256x256": ((500, 256, 256), 3),
    "200x256x1024": ((200, 256, 1024), 3),
    "4x2048x2048": ((4, 2048, 2048), 2),
    "mixed-list": (
        [(64, 64)] * 96 + [(256, 64)] * 24 + [(64, 256)] * 24 + [(768, 768)] * 6 + [(3072, 768)] * 4
        + [(1000, 64)] * 2 + [(512, 3)] * 32,
        3,
    ),
}


def _data(spec, seed=0):
    rng = np.random.default_rng(seed)
    if isinstance(spec, list):
        return [rng.standard_normal(s, dtype=np.float32) for s in spec]
    return rng.standard_normal(spec, dtype=np.float32)


_cache: dict = {}


def data(case):
    if case not in _cache:
        _cache.clear()
        _cache[case] = _data(CASES[case][0])
    return _cache[case]


def _reference(x):
    """float64 LAPACK values of a sample of the batch (the first 8 matrices)."""
    sample = x[:8] if isinstance(x, list) else x[: min(len(x), 8)]
    return [np.linalg.svd(np.asarray(a, dtype=np.float64), compute_uv=False) for a in sample]


def _error(values, ref):
    return max(float(np.max(np.abs(np.asarray(v, dtype=np.float64) - r)) / r[0]) for v, r in zip(values, ref))


def _svd_lists(fn, x):
    return [fn(a) for a in x] if isinstance(x, list) else fn(x)


LIBS = {
    "rankscope": lambda x: rs.svdvals(x),
    "numpy": lambda x: _svd_lists(lambda a: np.linalg.svd(a, compute_uv=False), x),
    "torch": lambda x: _svd_lists(torch.linalg.svdvals, [torch.from_numpy(a) for a in x] if isinstance(x, list)
                                  else torch.from_numpy(x)),
}


@pytest.mark.parametrize("lib", list(LIBS))
@pytest.mark.parametrize("case", list(CASES))
def test_svdvals(benchmark, case, lib):
    x = data(case)
    benchmark.group = f"svdvals {case}"
    benchmark.extra_info.update(case=case, lib=lib, op="svdvals")
    out = benchmark.pedantic(LIBS[lib], args=(x,), rounds=CASES[case][1], iterations=1, warmup_rounds=1)
    vals = out if isinstance(out, list) else list(out[:8])
    ref = _reference(x)
    benchmark.extra_info["max_abs_err_rel_s1"] = _error([np.asarray(v) for v in vals], ref)
    if lib == "rankscope":  # the same computation before rounding the output to float32
        benchmark.extra_info["max_abs_err_rel_s1_f64_out"] = _error(rs.svdvals(x[:8], dtype=np.float64), ref)


RANK_LIBS = {
    "rankscope": lambda x: rs.matrix_rank(x),
    "numpy": lambda x: _svd_lists(np.linalg.matrix_rank, x),
}


@pytest.mark.parametrize("lib", list(RANK_LIBS))
@pytest.mark.parametrize("case", ["10000x64x64", "500x256x256", "mixed-list"])
def test_matrix_rank(benchmark, case, lib):
    x = data(case)
    benchmark.group = f"matrix_rank {case}"
    benchmark.extra_info.update(case=case, lib=lib, op="matrix_rank")
    out = benchmark.pedantic(RANK_LIBS[lib], args=(x,), rounds=CASES[case][1], iterations=1, warmup_rounds=1)
    ref = RANK_LIBS["numpy"](x)
    benchmark.extra_info["agrees_with_numpy"] = bool(np.array_equal(np.asarray(out), np.asarray(ref)))
