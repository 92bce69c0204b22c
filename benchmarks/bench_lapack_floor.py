"""The floor under a ResNet-18 scan on this machine: what LAPACK's kernels cost at n = 512, alone and
with both cores busy, against what the issue-14 goal (≥ 20× WeightWatcher's analyze()) allows.

    python benchmarks/bench_lapack_floor.py [--n 512] [--out benchmarks/results/lapack-floor-<machine>-<date>.json]

ResNet-18's spectra are dominated by 28 eigenproblems of order 512: the 27 kh·kw slices of layer4's
three 512 × 512 3×3 convolutions and the Gram of the 1000 × 512 classifier. Each costs a Gram
(dsyrk, n³ flops) and a tridiagonal reduction (dsytrd, 4/3 n³ flops, half of it Level-2 dsymv that
streams the trailing matrix once per column). This script calls the engine's own OpenBLAS
(scipy-openblas32) through ctypes, single-threaded, in one process and then in as many concurrent
processes as there are cores, and reports per-call times and the machine-wide rate (calls/s with
every core busy). The lower bound for those 28 matrices is 28 / rate(dsyrk + dsytrd) in float64,
the accuracy contract (METRICS.md §0), and 28 / rate(ssyrk + ssytrd) for a float32 route that the
contract does not allow; both are set against WeightWatcher's analyze() time / 20, measured in the
same run, and against rankscope.scan's whole time.
"""

from __future__ import annotations

import argparse
import ctypes
import datetime
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from bench_scan import _machine, write_results

_L = ctypes.c_size_t(1)  # the hidden length of a Fortran character argument


def _lib():
    import scipy_openblas32

    lib = ctypes.CDLL(os.path.join(scipy_openblas32.get_lib_dir(), f"lib{scipy_openblas32.get_library()}.so"))
    lib.scipy_openblas_set_num_threads(1)
    return lib


def _i(v: int):
    return ctypes.byref(ctypes.c_int(v))


def _ptr(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


def _kernels(lib, n: int, dtype) -> dict:
    """Callables running one kernel call each on fresh copies of an n × n problem (Fortran order)."""
    p = "d" if dtype == np.float64 else "s"
    rng = np.random.default_rng(0)
    x = np.asfortranarray(rng.standard_normal((n, n)).astype(dtype))
    g0 = np.asfortranarray(x.T @ x)
    g, d, e, tau = g0.copy(order="F"), np.empty(n, dtype), np.empty(n, dtype), np.empty(n, dtype)
    info, query = ctypes.c_int(0), np.empty(1, dtype)
    sytrd = getattr(lib, f"scipy_{p}sytrd_")
    sytrd(b"L", _i(n), _ptr(g), _i(n), _ptr(d), _ptr(e), _ptr(tau), _ptr(query), _i(-1), ctypes.byref(info), _L)
    work = np.empty(int(query[0]), dtype)
    syrk = getattr(lib, f"scipy_{p}syrk_")
    one, zero = np.ones(1, dtype), np.zeros(1, dtype)

    def trd():
        g[...] = g0
        sytrd(b"L", _i(n), _ptr(g), _i(n), _ptr(d), _ptr(e), _ptr(tau), _ptr(work), _i(work.size),
              ctypes.byref(info), _L)

    def rk():
        syrk(b"L", b"T", _i(n), _i(n), _ptr(one), _ptr(x), _i(n), _ptr(zero), _ptr(g), _i(n), _L, _L)

    out = {f"{p}sytrd": trd, f"{p}syrk": rk}
    if dtype == np.float64:  # WeightWatcher's route: numpy.linalg.svd(compute_uv=False) = dgesdd 'N'
        a, s, iw = np.empty((n, n), order="F"), np.empty(n), np.empty(8 * n, np.int32)
        gesdd = lib.scipy_dgesdd_
        gesdd(b"N", _i(n), _i(n), _ptr(a), _i(n), _ptr(s), None, _i(1), None, _i(1), _ptr(query), _i(-1),
              _ptr(iw), ctypes.byref(info), _L)
        gwork = np.empty(int(query[0]))

        def sdd():
            a[...] = x
            gesdd(b"N", _i(n), _i(n), _ptr(a), _i(n), _ptr(s), None, _i(1), None, _i(1), _ptr(gwork),
                  _i(gwork.size), _ptr(iw), ctypes.byref(info), _L)

        out["dgesdd"] = sdd
    return out


def _worker(n: int, repeat: int, barrier, queue) -> None:
    lib = _lib()
    result = {}
    for dtype in (np.float64, np.float32):
        for name, fn in _kernels(lib, n, dtype).items():
            fn()
            barrier.wait()  # every process times the same kernel at the same time
            times = []
            for _ in range(repeat):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
            result[name] = statistics.median(times)
    queue.put(result)


def measure(n: int, procs: int, repeat: int) -> dict:
    """Median seconds per call of each kernel, each of `procs` processes running it at once."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(procs), ctx.Queue()
    ps = [ctx.Process(target=_worker, args=(n, repeat, barrier, queue)) for _ in range(procs)]
    for p in ps:
        p.start()
    results = [queue.get() for _ in ps]
    for p in ps:
        p.join()
    return {k: statistics.mean(r[k] for r in results) for k in results[0]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--matrices", type=int, default=28, help="eigenproblems of order n in the model")
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    cores = os.cpu_count() or 1
    alone = measure(args.n, 1, args.repeat)
    busy = measure(args.n, cores, args.repeat)
    rate = {k: cores / busy[k] for k in busy}  # calls per second with every core busy

    import rankscope as rs
    import torch
    import weightwatcher as ww
    from rankscope.scan.examples import resnet

    torch.manual_seed(0)
    model = resnet(18)
    rs.scan(model, progress=False)
    t_rs = []
    for _ in range(3):
        t = time.perf_counter()
        rs.scan(model, progress=False)
        t_rs.append(time.perf_counter() - t)
    t = time.perf_counter()
    ww.WeightWatcher(model=model).analyze()
    t_ww = time.perf_counter() - t

    k = args.matrices
    bound64 = k * (1 / rate["dsyrk"] + 1 / rate["dsytrd"])
    bound32 = k * (1 / rate["ssyrk"] + 1 / rate["ssytrd"])
    res = {
        "machine": _machine(), "date": datetime.date.today().isoformat(), "build": rs.build_info(),
        "n": args.n, "matrices": k, "cores": cores,
        "seconds_per_call_alone": alone, "seconds_per_call_all_cores_busy": busy,
        "machine_calls_per_s": rate,
        "gflops_per_s_all_cores": {name: rate[name] * (4 / 3 if "sytrd" in name else 1.0) * args.n**3 / 1e9
                                   for name in rate if "gesdd" not in name},
        "bound_float64_s": bound64, "bound_float32_s": bound32,
        "weightwatcher_analyze_s": t_ww, "goal_20x_s": t_ww / 20,
        "rankscope_scan_s": statistics.median(t_rs),
        "weightwatcher_gesdd_part_s": k * (1 / rate["dgesdd"]),
    }
    print(json.dumps(res, indent=1))
    write_results(res, "lapack-floor", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
