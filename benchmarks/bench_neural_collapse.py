"""NeuralCollapse accumulation throughput (GB/s of float32 features) against a plain torch
implementation of the same metrics, on the CPU.

    python benchmarks/bench_neural_collapse.py [--out benchmarks/results/neural-collapse-<machine>-<date>.json]

The plain torch version is what papers' code does (Papyan's notebook, rhubarbwu): keep every
feature, then class means with index_add_, Σ_W from the centred features (float64), Σ_B, NC1 =
tr(Σ_W Σ_B⁺)/K. rankscope's streaming NeuralCollapse(K, d) keeps O(K·d + d²) per-class shifted
moments in float64 and never stores the features. Predicted cost of either: one float64 d × d
rank-B update per batch (N·d² flops over the run: 2·65536·512² = 34 GFLOP, ~0.2–0.3 s at dgemm
rate), plus the class sums (N·d); the streaming version also forms per-class shifted products.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import numpy as np
import torch


def plain_torch(batches, K: int) -> float:
    H = torch.cat([h for h, _ in batches]).double()
    y = torch.cat([c for _, c in batches])
    d = H.shape[1]
    counts = torch.bincount(y, minlength=K).double()
    means = torch.zeros(K, d, dtype=torch.float64).index_add_(0, y, H) / counts[:, None]
    centred = H - means[y]
    sw = centred.T @ centred / H.shape[0]
    mg = means.mean(0)
    mc = means - mg
    sb = mc.T @ mc / K
    return float(torch.trace(sw @ torch.linalg.pinv(sb, hermitian=True)) / K)


def streaming(batches, K: int) -> float:
    import rankscope as rs

    nc = rs.NeuralCollapse(K, batches[0][0].shape[1])
    for h, c in batches:
        nc.update(h, c)
    return float(nc.compute()["nc1"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=65536)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out")
    args = ap.parse_args(argv)
    g = torch.Generator().manual_seed(0)
    means = torch.randn(args.k, args.d, generator=g) * 3
    y = torch.randint(0, args.k, (args.n,), generator=g)
    y[: args.k] = torch.arange(args.k)
    H = means[y] + torch.randn(args.n, args.d, generator=g)
    batches = [(H[i:i + args.batch], y[i:i + args.batch]) for i in range(0, args.n, args.batch)]
    gb = H.numel() * 4 / 1e9
    rows = {}
    for name, fn in (("plain torch (stores features)", plain_torch), ("rankscope.NeuralCollapse", streaming)):
        fn(batches, args.k)
        times, value = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            value = fn(batches, args.k)
            times.append(time.perf_counter() - t)
        med = statistics.median(times)
        rows[name] = {"seconds": med, "GB_per_s": gb / med, "nc1": value}
        print(f"{name:32s} {med * 1e3:8.1f} ms  {gb / med:6.2f} GB/s  nc1 = {value:.12g}")
    a, b = rows.values()
    result = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
              "date": datetime.date.today().isoformat(), "torch_threads": torch.get_num_threads(),
              "N": args.n, "d": args.d, "K": args.k, "batch": args.batch, "feature_GB": gb, "rows": rows,
              "speedup": a["seconds"] / b["seconds"], "nc1_rel_diff": abs(a["nc1"] - b["nc1"]) / abs(a["nc1"]),
              "extra_memory_streaming_bytes": (args.k * args.d * 3 + 2 * args.d**2) * 8,
              "extra_memory_plain_bytes": args.n * args.d * 8 * 2}
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}))
    out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                   f"neural-collapse-{platform.node() or 'host'}-{result['date']}.json")
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"written {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
