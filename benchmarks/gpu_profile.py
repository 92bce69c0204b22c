"""Kernel-level times of rankscope's GPU routes (torch.profiler over CUPTI): where a row's time goes.

    python benchmarks/gpu_profile.py
"""

from __future__ import annotations

import torch
from torch.profiler import ProfilerActivity, profile

import rankscope as rs

CASES = [(10000, 64, 64), (4608, 3, 3), (2000, 128, 128), (1000, 32, 32), (200, 512, 512)]

for b, m, n in CASES:
    x = torch.randn(b, m, n, device="cuda")
    for _ in range(3):
        rs.svdvals(x, check_finite=False)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            rs.svdvals(x, check_finite=False)
        torch.cuda.synchronize()
    print(f"== {b}x{m}x{n}: per call (5 calls)")
    rows = {}
    for e in prof.key_averages():
        if e.device_type.name == "CUDA" or getattr(e, "self_device_time_total", 0) > 0:
            t = getattr(e, "self_device_time_total", 0) / 5 / 1000
            if t > 0:
                rows[e.key[:90]] = t
    for k, t in sorted(rows.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {t:9.3f} ms  {k}")
