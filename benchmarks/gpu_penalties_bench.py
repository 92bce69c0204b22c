"""vicreg_loss forward + backward on a CUDA GPU against the official plain-torch formulation, float32,
CUDA-event medians after warm-up (for the next lent GPU; not yet run).

    python benchmarks/gpu_penalties_bench.py [--out FILE.json]

Rows (issue 15): N × d = 2048 × 8192 and 64 heads of 512 × 256. The official code forms the d × d
covariance (12·N·d² flops per pair); rankscope takes the cheaper side with the closed-form backward
(6·N·d², or the N × N Gram when d > 2N: 6·N²·d).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys

import torch

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_penalties import inputs, official  # noqa: E402  (the official formula, one definition)

import rankscope.torch as rt  # noqa: E402

CASES = [("2048x8192", 2048, 8192, 1), ("64 heads of 512x256", 512, 256, 64)]


def ours(x, y):
    return rt.vicreg_loss(x, y).loss


def timed(fn, x, y, repeats: int) -> tuple[float, float]:
    ms = []
    for i in range(repeats + 2):
        x.grad = y.grad = None
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        loss = fn(x, y)
        loss.backward()
        end.record()
        torch.cuda.synchronize()
        if i >= 2:
            ms.append(start.elapsed_time(end))
    return statistics.median(ms), float(loss.detach())


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", default="gpu-penalties.json")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = []
    for name, n, d, heads in CASES:
        z1, z2 = inputs(n, d, heads)
        x, y = z1.cuda().requires_grad_(), z2.cuda().requires_grad_()
        t_off, l_off = timed(official, x, y, args.repeats)
        t_us, l_us = timed(ours, x, y, args.repeats)
        row = {"case": name, "official_ms": t_off, "rankscope_ms": t_us, "speedup": t_off / t_us,
               "loss_rel_diff": abs(l_us - l_off) / abs(l_off)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    with open(args.out, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(0), "tf32": False, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
