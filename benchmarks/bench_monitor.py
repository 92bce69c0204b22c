"""Overhead of rankscope.torch.SpectralMonitor in a training loop, against a TempBalance-style loop.

Cases (CPU here; the GPU rows when torch sees one):

- ``cnn``: a small CNN on digits-sized inputs (1×8×8, batch 64), the example's model shape.
- ``bert``: a BERT-base-shaped encoder (12 × nn.TransformerEncoderLayer(768, 12, 3072) + pooler;
  embeddings left out of the spectra, as the loop leaves them out), batch 8 × 128 tokens.

For each: the time of one training step (forward, backward, SGD), of one monitor measurement
(the default metrics: alpha by the median Hill estimate, stable rank, rank loss, log10 s_min,
effective rank, log norms, float64; and alpha + stable rank alone in float64 and with
precision="auto", which takes float32 Gram eigenvalues for them), and of the same per-layer alpha and
stable rank from the loop TempBalance, Model Balancing and AlphaDecay run (``torch.linalg.svdvals``
per matrix, then the Hill estimate). Overhead per step = measurement / every / step time, at
every = 1 and every = 100. Also: the float64 Gram products alone (the floor of the float64 route),
and how far float32 moves alpha compared with the fit's own standard error (alpha - 1)/sqrt(n).

    python benchmarks/bench_monitor.py [--quick] [--out benchmarks/results/monitor-<machine>-<date>.json]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time

import numpy as np
import torch

import rankscope
from rankscope.torch import SpectralMonitor

WEIGHT = ["alpha", "stable_rank", "rank_loss", "log10_sv_min", "effective_rank", "log_norm", "log_spectral_norm"]
LOOP = ["alpha", "stable_rank"]  # what the TempBalance-style loop computes


def cnn() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(64 * 16, 128), torch.nn.ReLU(), torch.nn.Linear(128, 10))


class Bert(torch.nn.Module):
    def __init__(self, layers: int = 12, d: int = 768, ff: int = 3072, vocab: int = 30522, classes: int = 2):
        super().__init__()
        self.embeddings = torch.nn.Embedding(vocab, d)
        layer = torch.nn.TransformerEncoderLayer(d, 12, ff, dropout=0.0, batch_first=True)
        self.encoder = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.pooler = torch.nn.Linear(d, d)
        self.classifier = torch.nn.Linear(d, classes)

    def forward(self, ids):
        h = self.encoder(self.embeddings(ids))
        return self.classifier(torch.tanh(self.pooler(h[:, 0])))


def tempbalance_loop(mats: list[torch.Tensor]) -> list[tuple[float, float]]:
    """Per matrix: torch.linalg.svdvals, then the median-xmin Hill estimate and the stable rank."""
    out = []
    for W in mats:
        s = torch.linalg.svdvals(W.detach())
        ev = torch.sort(s.double() ** 2).values
        i = len(ev) // 2
        n = len(ev) - i
        alpha = 1 + n / torch.sum(torch.log(ev[i:] / ev[i]))
        out.append((float(alpha), float(ev.sum() / ev[-1])))
    return out


def best(fn, reps: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return min(ts)


def case(name: str, model: torch.nn.Module, batch, loss_fn, layers: str | None, reps: int, device: str) -> dict:
    model = model.to(device)
    batch = tuple(b.to(device) for b in batch)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train_step():
        loss = loss_fn(model(batch[0]), batch[1])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sync()

    mon64 = SpectralMonitor(model, layers=layers, metrics=WEIGHT, on_event=lambda e: None)  # float64 (rank loss...)
    monA = SpectralMonitor(model, layers=layers, metrics=LOOP, precision="float64", on_event=lambda e: None)
    mon32 = SpectralMonitor(model, layers=layers, metrics=LOOP, on_event=lambda e: None)  # auto: float32 Gram
    assert mon32.precision == "float32"

    def measure(mon):
        def f():
            mon.measure()
            mon.flush()
        return f

    mats = [m for la in mon64._layers() for m in la.cut(la.info.load())]
    shapes = sorted({tuple(m.shape) for m in mats})
    t_step = best(train_step, reps)
    t64 = best(measure(mon64), reps)
    tA = best(measure(monA), reps)
    t32 = best(measure(mon32), reps)
    t_loop = best(lambda: (tempbalance_loop(mats), sync()), reps)

    host = [m.detach().double().cpu().numpy() for m in mats]

    def grams():
        for a in host:
            (a.T @ a) if a.shape[0] >= a.shape[1] else (a @ a.T)

    t_gram = best(grams, reps) if device == "cpu" else math.nan
    gram_flops = sum(max(a.shape) * min(a.shape) ** 2 for a in host)
    # float32 vs float64 alpha, in units of the fit's own standard error
    v64, v32 = monA.latest, mon32.latest
    dev = []
    for layer, v in v64.items():
        a64, a32 = v["alpha"], v32[layer]["alpha"]
        la = next(x for x in mon64._layers() if x.name == layer)
        n = la.num_evals - la.num_evals // 2
        sigma = (a64 - 1) / math.sqrt(n)
        dev.append(abs(a32 - a64) / sigma)
    row = {
        "case": name, "device": device, "matrices": len(mats), "shapes": [list(s) for s in shapes],
        "train_step_s": t_step, "monitor_default_metrics_s": t64, "monitor_loop_metrics_float64_s": tA,
        "monitor_loop_metrics_auto_float32_s": t32, "tempbalance_loop_s": t_loop,
        "speedup_vs_loop_default_metrics": t_loop / t64, "speedup_vs_loop_float64": t_loop / tA,
        "speedup_vs_loop_auto_float32": t_loop / t32,
        "overhead_every1_default": t64 / t_step, "overhead_every100_default": t64 / 100 / t_step,
        "overhead_every1_loop_metrics_auto": t32 / t_step, "overhead_every100_loop_metrics_auto": t32 / 100 / t_step,
        "gram_float64_s": t_gram, "gram_float64_gflop": gram_flops / 1e9,
        "gram_share_of_float64_monitor": t_gram / tA if device == "cpu" else math.nan,
        "alpha_float32_max_dev_in_fit_sigmas": max(dev), "alpha_float32_median_dev_in_fit_sigmas": float(np.median(dev)),
    }
    print(json.dumps(row, indent=1))
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="one repetition, a 4-layer encoder")
    ap.add_argument("--out", default=None)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    reps = 1 if args.quick else 3
    torch.manual_seed(0)
    rows = []
    x = torch.randn(64, 1, 8, 8)
    y = torch.randint(0, 10, (64,))
    rows.append(case("cnn", cnn(), (x, y), torch.nn.functional.cross_entropy, None, reps * 3, args.device))
    ids = torch.randint(0, 30522, (8, 128))
    lab = torch.randint(0, 2, (8,))
    rows.append(case("bert", Bert(layers=4 if args.quick else 12), (ids, lab), torch.nn.functional.cross_entropy,
                     "encoder|pooler", reps, args.device))
    result = {
        "benchmark": "bench_monitor", "date": time.strftime("%Y-%m-%d"),
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "engine_threads": rankscope.get_num_threads(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "device": args.device,
                    "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None},
        "rows": rows,
    }
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print("wrote", args.out)


if __name__ == "__main__":
    main()
