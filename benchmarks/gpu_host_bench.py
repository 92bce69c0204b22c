"""GPU benchmark of host-resident batches: rankscope.svdvals(numpy, device="cuda") (streamed through
pinned staging slots, uploads overlapping compute) against the plain way, torch.from_numpy(x).cuda()
then rankscope on the device tensor then .cpu(), and against the parts: the upload alone (pageable and
pinned) and the device compute alone.

Wall-clock medians (time.perf_counter; every variant ends with the values on the host). float32.

Expected (H100 SXM, PCIe 5 x16, written before measuring): the streamed path costs
max(host gather, upload, compute) per chunk plus one chunk of fill, so
  - transfer-bound rows (10000×64×64: 164 MB, compute 5 ms) ≈ the pinned upload time (~4–7 ms at
    25–40 GB/s) plus a chunk, about 1.5–2× faster than torch's pageable .cuda() + compute;
  - compute-bound rows (2304×512×512: 2.4 GB, compute 746 ms) ≈ the compute time, the ~100 ms upload
    hidden under it.

    python benchmarks/gpu_host_bench.py --out benchmarks/results/gpu-host-<device>-<date>.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np
import torch

import rankscope as rs

ROWS = [(10000, 64, 64), (4608, 3, 3), (2304, 512, 512), (200, 512, 512), (16, 4096, 4096), (8, 11008, 4096)]
STAGING_SWEEP_MB = (8, 32, 128)


def wall(fn, reps: int, warm: int = 1) -> float:
    """Median milliseconds of fn(), which must leave nothing queued on the GPU."""
    for _ in range(warm):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def bench_row(x: np.ndarray, reps: int) -> dict:
    b, m, n = x.shape
    pinned = torch.from_numpy(x).pin_memory()
    xd = torch.from_numpy(x).cuda()

    def upload_pageable():
        torch.from_numpy(x).cuda()
        torch.cuda.synchronize()

    def upload_pinned():
        pinned.cuda(non_blocking=True)
        torch.cuda.synchronize()

    def compute_only():
        rs.svdvals(xd)  # check_finite=True: waits for the stream

    def via_torch():
        rs.svdvals(torch.from_numpy(x).cuda()).cpu()

    def streamed():
        rs.svdvals(x, device="cuda")

    row = {"batch": b, "m": m, "n": n, "gbytes": x.nbytes / 1e9}
    row["upload_pageable_ms"] = wall(upload_pageable, reps)
    row["upload_pinned_ms"] = wall(upload_pinned, reps)
    row["compute_ms"] = wall(compute_only, reps)
    row["via_torch_ms"] = wall(via_torch, reps)
    row["streamed_ms"] = wall(streamed, reps)
    sweep = {}
    for mb in STAGING_SWEEP_MB:
        os.environ["RANKSCOPE_CUDA_STAGING_MB"] = str(mb)
        sweep[mb] = wall(streamed, reps)
    os.environ.pop("RANKSCOPE_CUDA_STAGING_MB", None)
    row["streamed_by_staging_mb"] = sweep
    row["floor_ms"] = max(row["upload_pinned_ms"], row["compute_ms"])
    # Same values either way (the same kernels on the same data, up to batch-dependent routes).
    got, ref = rs.svdvals(x[:64], device="cuda"), rs.svdvals(xd[:64]).cpu().numpy()
    row["max_rel_diff_vs_device"] = float(np.max(np.abs(got - ref) / np.maximum(ref[:, :1], 1e-30)))
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None)
    ap.add_argument("--rows", default=None, help="comma-separated row numbers to run (default: all)")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
    rng = np.random.default_rng(0)
    results = []
    for b, m, n in rows:
        x = rng.standard_normal((b, m, n), dtype=np.float32)
        row = bench_row(x, args.reps if x.nbytes < 2e9 else 3)
        torch.cuda.empty_cache()
        results.append(row)
        print(f"{b}×{m}×{n} ({row['gbytes']:.2f} GB): streamed {row['streamed_ms']:.1f} ms  via torch "
              f"{row['via_torch_ms']:.1f} ms  ({row['via_torch_ms'] / row['streamed_ms']:.2f}×)  upload pinned "
              f"{row['upload_pinned_ms']:.1f} / pageable {row['upload_pageable_ms']:.1f} ms  compute "
              f"{row['compute_ms']:.1f} ms  floor {row['floor_ms']:.1f} ms  by staging MB "
              + " ".join(f"{k}:{v:.1f}" for k, v in row["streamed_by_staging_mb"].items()), flush=True)
    if args.out:
        meta = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "rankscope": rs.__version__,
                "host": platform.node(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                "build": rs.build_info()}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "rows": results}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
