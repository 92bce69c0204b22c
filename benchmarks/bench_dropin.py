"""rankscope.numpy.linalg against numpy.linalg on the same calls: tiny single matrices (the Python
dispatch overhead) and batches of small ones (the engine), CPU.

Run: ``python -m pytest benchmarks/bench_dropin.py --benchmark-json=out.json`` (not collected by
the default test run: pyproject's testpaths is tests/), then ``python benchmarks/bench_dropin.py
out.json`` for the table. Each case runs numpy first, then rankscope, in the same process; the
rankscope row records numpy's median from that run and the ratio (numpy time / rankscope time).
Every row also records its accuracy: max |s − s_ref| / s₁ against float64 LAPACK on the same data
for the singular values, relative error for cond and the norms, and whether every rank equals
numpy's for matrix_rank. Goals (issue 19): one 3×3 float64 svd(compute_uv=False) within 2× numpy's
time; batches of small float32 matrices ≥ 5× faster than numpy.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import rankscope
import rankscope.numpy.linalg as rl

# name: (shape, dtype, op, pedantic iterations per round, rounds)
CASES = {
    # one tiny matrix: dispatch overhead
    "3x3 f64": ((3, 3), "float64", "svd", 2000, 25),
    "3x3 f32": ((3, 3), "float32", "svd", 2000, 25),
    "3x3 f64 svdvals": ((3, 3), "float64", "svdvals", 2000, 25),
    "3x3 f64 matrix_rank": ((3, 3), "float64", "matrix_rank", 2000, 25),
    "3x3 f64 cond": ((3, 3), "float64", "cond", 2000, 25),
    "3x3 f64 norm 2": ((3, 3), "float64", "norm2", 2000, 25),
    "3x3 f64 svd+uv (forwarded)": ((3, 3), "float64", "svd_uv", 2000, 25),
    "16x16 f64": ((16, 16), "float64", "svd", 200, 25),
    "17x17 f64 (forwarded)": ((17, 17), "float64", "svd", 200, 25),
    "64x64 f32": ((64, 64), "float32", "svd", 20, 15),
    "512x512 f32": ((512, 512), "float32", "svd", 1, 7),
    # batches of small matrices: the engine
    "10000x8x8 f32": ((10000, 8, 8), "float32", "svd", 1, 9),
    "1000x32x32 f32": ((1000, 32, 32), "float32", "svd", 1, 9),
    "4608x3x3 f32": ((4608, 3, 3), "float32", "svd", 1, 15),
    "100x64x64 f32": ((100, 64, 64), "float32", "svd", 1, 9),
    "1000x32x32 f64": ((1000, 32, 32), "float64", "svd", 1, 9),
    "10000x8x8 f32 matrix_rank": ((10000, 8, 8), "float32", "matrix_rank", 1, 9),
    "1000x32x32 f32 cond": ((1000, 32, 32), "float32", "cond", 1, 9),
    "1000x32x32 f32 matrix_norm 2": ((1000, 32, 32), "float32", "matrix_norm2", 1, 9),
    "1000x32x32 f32 matrix_norm nuc": ((1000, 32, 32), "float32", "matrix_norm_nuc", 1, 9),
}

OPS = {
    "svd": lambda la, x: la.svd(x, compute_uv=False),
    "svdvals": lambda la, x: la.svdvals(x),
    "svd_uv": lambda la, x: la.svd(x),
    "matrix_rank": lambda la, x: la.matrix_rank(x),
    "cond": lambda la, x: la.cond(x),
    "norm2": lambda la, x: la.norm(x, 2),
    "matrix_norm2": lambda la, x: la.matrix_norm(x, ord=2),
    "matrix_norm_nuc": lambda la, x: la.matrix_norm(x, ord="nuc"),
}
LIBS = {"numpy": np.linalg, "rankscope": rl}

_data: dict = {}
_numpy_median: dict = {}


def data(case: str) -> np.ndarray:
    """The case's input: Gaussian; for matrix_rank every other matrix made rank-deficient by one."""
    if case not in _data:
        _data.clear()
        shape, dtype, op = CASES[case][:3]
        x = np.random.default_rng(0).standard_normal(shape)
        if op == "matrix_rank" and len(shape) == 3:
            x[::2, :, -1] = x[::2, :, 0]
        _data[case] = x.astype(dtype)
    return _data[case]


def _accuracy(op: str, x: np.ndarray, out) -> dict:
    """This result against float64 LAPACK on the same data (a sample of 64 matrices of a batch)."""
    n = 64 if x.ndim == 3 else None
    xs, out_s = (x[:n], np.asarray(out)[:n]) if n else (x, np.asarray(out))
    ref = np.linalg.svd(xs.astype(np.float64), compute_uv=False)
    if op in ("svd", "svdvals"):
        return {"max_abs_err_rel_s1": float(np.max(np.abs(out_s - ref) / ref[..., :1]))}
    if op == "matrix_rank":
        return {"agrees_with_numpy": bool(np.array_equal(out, np.linalg.matrix_rank(x)))}
    if op == "svd_uv":
        return {}
    want = {"cond": ref[..., 0] / ref[..., -1], "norm2": ref[..., 0], "matrix_norm2": ref[..., 0],
            "matrix_norm_nuc": ref.sum(-1)}[op]
    return {"max_rel_err": float(np.max(np.abs(out_s / want - 1)))}


@pytest.mark.parametrize("lib", list(LIBS))
@pytest.mark.parametrize("case", list(CASES))
def test_dropin(benchmark, case, lib):
    shape, dtype, op, iterations, rounds = CASES[case]
    x = data(case)
    fn, la = OPS[op], LIBS[lib]
    benchmark.group = f"dropin {case}"
    benchmark.extra_info.update(case=case, lib=lib, op=op, dtype=dtype, shape=list(shape), numpy=np.__version__,
                                rankscope_threads=rankscope.get_num_threads(), load_average=os.getloadavg())
    out = benchmark.pedantic(fn, args=(la, x), rounds=rounds, iterations=iterations, warmup_rounds=2)
    if op != "svd_uv":
        benchmark.extra_info.update(_accuracy(op, x, out))
    median = benchmark.stats.stats.median
    if lib == "numpy":
        _numpy_median[case] = median
    elif case in _numpy_median:
        benchmark.extra_info["numpy_median_s"] = _numpy_median[case]
        benchmark.extra_info["ratio_vs_numpy"] = _numpy_median[case] / median
    # the fast path is the point of the rankscope rows: record whether it was taken
    if lib == "rankscope":
        calls = []
        real = rl._engine
        rl._engine = lambda *a: calls.append(a[2]) or real(*a)
        try:
            fn(la, x)
        finally:
            rl._engine = real
        benchmark.extra_info["engine_routes"] = sorted(set(calls)) or "forwarded to numpy"


def _fmt(t: float) -> str:
    return f"{t * 1e6:.1f} µs" if t < 1e-3 else f"{t * 1e3:.2f} ms"


def summarize(path: str) -> None:
    """Prints the markdown table of a --benchmark-json file of this module."""
    with open(path) as f:
        run = json.load(f)
    rows: dict = {}
    for b in run["benchmarks"]:
        info = b["extra_info"]
        rows.setdefault(info["case"], {})[info["lib"]] = (b["stats"]["median"], info)
    cpu = run["machine_info"].get("cpu", {})
    first = run["benchmarks"][0]["extra_info"]
    print(f"{cpu.get('brand_raw', '?')}, {cpu.get('count', '?')} CPUs; {run['datetime'][:10]}; numpy "
          f"{first.get('numpy', '?')}; rankscope on {first.get('rankscope_threads', '?')} threads; median of rounds.\n")
    print("| case | call | numpy | rankscope | numpy / rankscope | rankscope's route | accuracy (rankscope / numpy) |")
    print("|---|---|---|---|---|---|---|")
    for case, libs in rows.items():
        (tn, ni), (tr, ri) = libs["numpy"], libs["rankscope"]
        acc = ""
        for key, form in (("max_abs_err_rel_s1", "{:.1e}"), ("max_rel_err", "{:.1e}")):
            if key in ri:
                acc = f"{form.format(ri[key])} / {form.format(ni[key])}"
        if "agrees_with_numpy" in ri:
            acc = "ranks equal numpy's" if ri["agrees_with_numpy"] else "ranks differ"
        route = ri.get("engine_routes")
        route = ", ".join(route) if isinstance(route, list) else route
        print(f"| {case} | {ri['op']} | {_fmt(tn)} | {_fmt(tr)} | {tn / tr:.2f}× | {route} | {acc} |")


if __name__ == "__main__":
    summarize(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "results",
                                                                   "dropin-xeon-sapphirerapids-2core-2026-12-01.json"))
