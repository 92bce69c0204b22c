"""GPU benchmark: rankscope vs torch.linalg.svdvals, torch.linalg.eigvalsh of the Gram, and CuPy.

One process, every row of the CUDA issue, float32 inputs. Times are CUDA-event medians after warm-up.
torch.linalg.svdvals and CuPy loop over matrices (one solver call each), so on the big rows they are
timed on the first `sub` matrices and scaled to the batch (marked "~"). Accuracy: max |s − s_ref| / s₁
against numpy's float64 LAPACK SVD of the same float32 data, on a few matrices of the batch.

    python benchmarks/gpu_bench.py --out benchmarks/results/gpu-<device>-<date>.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import torch

import rankscope as rs

ROWS = [  # (batch, m, n, matrices to time the per-matrix loops on)
    (10000, 64, 64, 500),
    (4608, 3, 3, 4608),
    (2304, 512, 512, 24),
    (1000, 256, 1024, 50),
    (200, 512, 512, 24),
    (16, 4096, 4096, 2),
    (8, 11008, 4096, 1),
]
GOALS_MS = {(10000, 64, 64): 5.0, (2304, 512, 512): 600.0, (16, 4096, 4096): 600.0, (8, 11008, 4096): 300.0}
FP64_TFLOPS, HBM_TBS = 67.0, 3.0  # H100 SXM: float64 tensor-core peak; measured copy bandwidth ~3.0 TB/s


def timed(fn, reps: int, warm: int = 2) -> float:
    """Median milliseconds of fn() by CUDA events."""
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def floor_ms(b: int, m: int, n: int) -> tuple[float, float]:
    k, L = min(m, n), max(m, n)
    flops = b * (L * k * k + 4.0 / 3.0 * k**3)  # Gram (lower half) + tridiagonalisation
    return flops / (FP64_TFLOPS * 1e9), b * m * n * 4 / (HBM_TBS * 1e9)


def accuracy(x: torch.Tensor, s: torch.Tensor, count: int = 4) -> float:
    idx = np.linspace(0, x.shape[0] - 1, min(count, x.shape[0])).astype(int)
    a = x[idx].double().cpu().numpy()
    ref = np.linalg.svd(a, compute_uv=False)
    got = s[idx].double().cpu().numpy()
    return float(np.max(np.abs(got - ref) / ref[:, :1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: all)")
    ap.add_argument("--no-cupy", action="store_true")
    args = ap.parse_args()
    cp = None
    if not args.no_cupy:
        try:
            import cupy as cp
        except ImportError:
            cp = None
    dev = torch.cuda.get_device_name(0)
    results = []
    rows = ROWS if args.rows is None else [ROWS[int(i)] for i in args.rows.split(",")]
    print(f"# {dev}, torch {torch.__version__}, rankscope route per row; times in ms (median)")
    for b, m, n, sub in rows:
        torch.manual_seed(0)
        x = torch.randn(b, m, n, device="cuda", dtype=torch.float32)
        route = rs._backend.cuda_module().route("float32", m, n, "auto", b, torch.cuda.get_device_properties(0).multi_processor_count)
        big = b * m * n > 1e8
        reps = 3 if big else 10
        s = rs.svdvals(x)
        t_rs = timed(lambda: rs.svdvals(x, check_finite=False), reps)
        t_rs_sync = timed(lambda: rs.svdvals(x), reps)
        acc_rs = accuracy(x, s)
        xs = x[:sub]
        scale = b / sub
        t_torch = timed(lambda: torch.linalg.svdvals(xs), 1 if big else 3, warm=1) * scale
        acc_torch = accuracy(xs, torch.linalg.svdvals(xs))

        def eigh_gram():  # float32 Gram, as a torch user would write it; loops per matrix like svdvals
            g = xs.transpose(-1, -2) @ xs if m >= n else xs @ xs.transpose(-1, -2)
            return torch.linalg.eigvalsh(g)

        try:
            t_eigh = timed(eigh_gram, 1 if big else 3, warm=1) * scale
            e = eigh_gram().clamp_min(0).sqrt().flip(-1)
            acc_eigh = accuracy(xs, e)
        except RuntimeError as err:  # out of memory and the like
            t_eigh, acc_eigh = float("nan"), float("nan")
            print(f"  eigvalsh failed: {err}")
        t_cupy = float("nan")
        if cp is not None:
            xc = cp.from_dlpack(xs)
            t_cupy = timed(lambda: cp.linalg.svd(xc, compute_uv=False), 1, warm=1) * scale
        f_ms, b_ms = floor_ms(b, m, n)
        row = {
            "batch": b, "m": m, "n": n, "route": route,
            "rankscope_ms": t_rs, "rankscope_sync_ms": t_rs_sync, "rankscope_err": acc_rs,
            "torch_svdvals_ms": t_torch, "torch_svdvals_extrapolated_from": sub if sub < b else None,
            "torch_svdvals_err": acc_torch,
            "torch_eigvalsh_gram_ms": t_eigh, "torch_eigvalsh_extrapolated_from": sub if sub < b else None, "torch_eigvalsh_gram_err": acc_eigh,
            "cupy_svd_ms": t_cupy, "cupy_extrapolated_from": sub if sub < b else None,
            "floor_flops_ms": f_ms, "floor_bytes_ms": b_ms,
            "speedup_vs_torch_svdvals": t_torch / t_rs,
            "goal_ms": GOALS_MS.get((b, m, n)),
        }
        results.append(row)
        fl = max(f_ms, b_ms)
        print(f"{b}x{m}x{n} [{route}]: rankscope {t_rs:.2f} (sync {t_rs_sync:.2f}) err {acc_rs:.1e} | "
              f"torch.svdvals {'~' if sub < b else ''}{t_torch:.1f} err {acc_torch:.1e} "
              f"({t_torch / t_rs:.0f}x) | eigvalsh(Gram) {'~' if sub < b else ''}{t_eigh:.1f} err {acc_eigh:.1e} | "
              f"cupy {'~' if sub < b else ''}{t_cupy:.1f} | floor {fl:.3f} ({t_rs / fl:.0f}x over) | "
              f"goal {GOALS_MS.get((b, m, n))}", flush=True)
        del x
        torch.cuda.empty_cache()
    meta = {"device": dev, "torch": torch.__version__, "host": platform.node(), "date": time.strftime("%Y-%m-%d"),
            "rankscope": rs.__version__}
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
