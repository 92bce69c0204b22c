"""rankscope.torch.vicreg_loss forward + backward against the official plain-torch VICReg
(facebookresearch/vicreg main_vicreg.py, VICReg.forward after the projector), float32, CPU.

    python benchmarks/bench_penalties.py [--repeats 7]
        [--out benchmarks/results/penalties-<machine>-<date>.json]

Each case times `loss = f(z1, z2); loss.backward()` from leaf tensors (median of --repeats runs
after one warm-up), checks that both give the same loss and gradients (relative to the float64
reference formula on the same inputs), and compares the time with the floor that the flop model
below gives at this machine's measured GEMM rates.

Flop model (written before measuring; N samples × d features, per pair of branches):

- official: per branch the forward GEMM x.T @ x (2Nd²) and its autograd backward, a GEMM for each
  operand (2 · 2Nd²): 12Nd² float32 per pair, plus O(d²) elementwise passes over the d × d matrices
  (off_diagonal's copy, pow, sum and their backward), which are memory-bound and dominate when
  d ≫ N.
- rankscope, d ≤ 2N (float32 on the d × d side): per branch SSYRK of ZcᵀZc (Nd²) forward and one
  SSYMM Zc·(αC_off + diag w) (2Nd²) backward: 6Nd² float32 per pair, half the official count.
- rankscope, d > 2N (the N × N Gram side, float64): per branch DSYRK of ZcZcᵀ (N²d) and DSYMM G·Zc
  (2N²d): 6N²d float64 per pair, plus O(Nd) passes (centring, float64 working copies).

========================  =================  ===================  ============================
case                      official (f32)     rankscope            predicted speed-up at peak
========================  =================  ===================  ============================
2048 × 2048               1.03e11            5.15e10 f32          2× (both GEMM-bound)
256 × 8192                2.06e11 + d² mem   3.22e9 f64           ≥ 30× (64× fewer flops)
512 × 512                 1.61e9             8.05e8 f32           2× (+ official's overheads)
64 heads of 512 × 256     2.58e10 (a loop)   1.29e10 f32          2× (+ the loop's overheads)
========================  =================  ===================  ============================

The floor of a row is its rankscope flop count at the measured float32 (float64) GEMM rate of this
machine, both threads (torch.mm on 2048 × 2048).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import rankscope
import rankscope.torch as rt
import torch
import torch.nn.functional as F

CASES = [  # name, N, d, heads
    ("2048x2048", 2048, 2048, 1),
    ("256x8192", 256, 8192, 1),
    ("512x512", 512, 512, 1),
    ("64 heads of 512x256", 512, 256, 64),
]


def off_diagonal(x):
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def official_vicreg(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0):
    """facebookresearch/vicreg main_vicreg.py, VICReg.forward after the projector (one process)."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    std_loss = torch.mean(F.relu(1 - std_x)) / 2 + torch.mean(F.relu(1 - std_y)) / 2
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(cov_y).pow_(
        2
    ).sum().div(num_features)
    return sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss


def official(x, y):
    """The official loss; batched inputs as its users write it: a loop over heads, averaged."""
    if x.dim() == 2:
        return official_vicreg(x, y)
    return sum(official_vicreg(a, b) for a, b in zip(x, y)) / x.shape[0]


def ours(x, y):
    return rt.vicreg_loss(x, y).loss


def flops(n, d, heads):
    off = 12.0 * n * d * d * heads
    if d > 2 * n:
        return off, 6.0 * n * n * d * heads, "float64"
    return off, 6.0 * n * d * d * heads, "float32"


def gemm_rate(dtype, n=2048, repeats=5) -> float:
    a = torch.randn(n, n, dtype=dtype)
    a @ a
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        a @ a
        ts.append(time.perf_counter() - t)
    return 2.0 * n**3 / min(ts)


def timed(fn, x, y, repeats):
    times = []
    for _ in range(repeats + 1):  # the first run warms up
        x.grad = y.grad = None
        t = time.perf_counter()
        loss = fn(x, y)
        loss.backward()
        times.append(time.perf_counter() - t)
    return times[1:], float(loss.detach()), torch.cat([x.grad.ravel(), y.grad.ravel()]).double()


def inputs(n, d, heads, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (heads, n, d) if heads > 1 else (n, d)
    scale = 0.3 + 1.3 * torch.rand(d, generator=g)  # per-feature stds straddling γ = 1
    z1 = torch.randn(shape, generator=g) * scale + 3.0
    z2 = z1 + 0.5 * torch.randn(shape, generator=g) * scale
    return z1, z2


def reference64(z1, z2):
    """Loss and gradients of the official formula in float64 on the same inputs (the truth)."""
    x = z1.double().requires_grad_()
    y = z2.double().requires_grad_()
    loss = official(x, y)
    loss.backward()
    return float(loss.detach()), torch.cat([x.grad.ravel(), y.grad.ravel()])


def machine() -> str:
    cpu = "cpu"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {rankscope._core.available_cpus()} CPUs available"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument(
        "--out",
        default=os.path.join(
            os.path.dirname(__file__),
            "results",
            "penalties-xeon-sapphirerapids-2core-2026-12-01.json",
        ),
    )
    args = ap.parse_args()

    rate32, rate64 = gemm_rate(torch.float32), gemm_rate(torch.float64)
    print(
        f"{machine()}; torch {torch.__version__} ({torch.get_num_threads()} threads), "
        f"rankscope {rankscope.get_num_threads()} threads; "
        f"GEMM rate float32 {rate32 / 1e9:.0f} GFLOP/s, "
        f"float64 {rate64 / 1e9:.0f} GFLOP/s"
    )
    rows = []
    hdr = (
        f"{'case':<22}{'official s':>11}{'rankscope s':>12}{'speed-up':>9}{'floor s':>9}"
        f"{'of floor':>9}"
        f"{'loss rel err (ours / official)':>32}{'grad rel err (ours / official)':>32}"
    )
    print(hdr)
    for name, n, d, heads in CASES:
        z1, z2 = inputs(n, d, heads)
        x, y = z1.clone().requires_grad_(), z2.clone().requires_grad_()
        t_off, l_off, g_off = timed(official, x, y, args.repeats)
        t_us, l_us, g_us = timed(ours, x, y, args.repeats)
        l64, g64 = reference64(z1, z2)
        gscale = float(g64.abs().max())
        err = {
            "loss_rel_err_ours": abs(l_us - l64) / abs(l64),
            "loss_rel_err_official": abs(l_off - l64) / abs(l64),
            "grad_rel_err_ours": float((g_us - g64).abs().max()) / gscale,
            "grad_rel_err_official": float((g_off - g64).abs().max()) / gscale,
            "loss_rel_diff_ours_vs_official": abs(l_us - l_off) / abs(l_off),
        }
        f_off, f_us, prec = flops(n, d, heads)
        floor = f_us / (rate64 if prec == "float64" else rate32)
        m_off, m_us = statistics.median(t_off), statistics.median(t_us)
        rows.append(
            {
                "case": name,
                "N": n,
                "d": d,
                "heads": heads,
                "dtype": "float32",
                "flops_official": f_off,
                "flops_rankscope": f_us,
                "rankscope_product_precision": prec,
                "official_s": m_off,
                "rankscope_s": m_us,
                "speedup": m_off / m_us,
                "floor_s": floor,
                "fraction_of_floor": floor / m_us,
                "official_runs_s": t_off,
                "rankscope_runs_s": t_us,
                **err,
            }
        )
        print(
            f"{name:<22}{m_off:>11.4f}{m_us:>12.4f}{m_off / m_us:>8.1f}×{floor:>9.4f}"
            f"{floor / m_us:>8.0%} "
            f"{err['loss_rel_err_ours']:>15.1e} / {err['loss_rel_err_official']:.1e}"
            f"{err['grad_rel_err_ours']:>19.1e} / {err['grad_rel_err_official']:.1e}"
        )
        del x, y, z1, z2
    result = {
        "benchmark": "vicreg_loss forward + backward vs facebookresearch/vicreg (plain torch), "
        "float32 CPU",
        "date": datetime.date.today().isoformat(),
        "machine": machine(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "rankscope_threads": rankscope.get_num_threads(),
        "blas": rankscope.build_info()["blas"],
        "gemm_gflops_float32": rate32 / 1e9,
        "gemm_gflops_float64": rate64 / 1e9,
        "load_average": os.getloadavg(),
        "repeats": args.repeats,
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
