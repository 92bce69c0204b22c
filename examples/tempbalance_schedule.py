"""Layer-wise learning rates from spectra, TempBalance's way (NeurIPS 2023), with rankscope.torch.

Trains a small CNN on scikit-learn's 8×8 digits (plain torch, SGD with momentum, a cosine schedule
through ``LambdaLR``, CPU) twice: with one learning rate for every layer, and with TempBalance's layer-wise rates, which
every `--every` steps read each layer's alpha (the median-xmin Hill estimate of its eigenvalue
spectrum, from ``rankscope.torch.SpectralMonitor``) and spread the scheduled rate over the layers with
TempBalance's linear map: the layer with the smallest alpha (the most heavy-tailed, "most trained")
gets 0.5× the scheduled rate, the largest 1.5×, linearly in between::

    groups = rankscope.torch.layer_param_groups(model, lr=LR, momentum=0.9)   # one group per layer
    opt = torch.optim.SGD(groups)
    monitor = rankscope.torch.SpectralMonitor(model, every=N, metrics=["alpha"])
    ...
    sched.step()                                          # LambdaLR: every group back to the schedule
    if monitor.step():                                    # measured this step: new multipliers
        alpha = {k: v["alpha"] for k, v in monitor.latest.items()}
        mult = rankscope.torch.tempbalance_multipliers(alpha)
    rankscope.torch.apply_multipliers(opt, mult, base=sched.get_last_lr()[0])

``LambdaLR`` sets each group's rate from its initial one, so the scheduled rate is read back
unchanged; a chainable scheduler (CosineAnnealingLR, StepLR, ...) multiplies each group's current
rate and would compound the multipliers.

It prints each run's test accuracy, and for the TempBalance run every layer's alpha and learning-rate
multiplier at each update. On a task this small both runs reach about the same accuracy: the point is
the mechanics (one optimizer group per measured layer, the map, the scheduler interplay), not a
benchmark of TempBalance itself.

Run:  python examples/tempbalance_schedule.py [--steps 300] [--every 25] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from collections import OrderedDict

import numpy as np
import torch
from rankscope.torch import (
    SpectralMonitor,
    apply_multipliers,
    layer_param_groups,
    tempbalance_multipliers,
)
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

LR, MOMENTUM, BATCH, WEIGHT_DECAY = 0.05, 0.9, 64, 5e-4


def make_model() -> torch.nn.Sequential:
    nn = torch.nn
    return nn.Sequential(OrderedDict([
        ("conv1", nn.Conv2d(1, 32, 3, padding=1)), ("act1", nn.ReLU()),
        ("conv2", nn.Conv2d(32, 64, 3, padding=1)), ("act2", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
        ("flat", nn.Flatten()),
        ("fc3", nn.Linear(64 * 4 * 4, 128)), ("act3", nn.ReLU()),
        ("head", nn.Linear(128, 10)),
    ]))


def data(seed: int):
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    x = (x - x.mean()) / x.std()
    xtr, xte, ytr, yte = train_test_split(x, digits.target, test_size=0.2, random_state=seed, stratify=digits.target)
    return torch.from_numpy(xtr), torch.from_numpy(ytr).long(), torch.from_numpy(xte), torch.from_numpy(yte).long()


def train(tempbalance: bool, xtr, ytr, xte, yte, *, steps: int, every: int, seed: int) -> dict:
    torch.manual_seed(seed)
    model = make_model()
    groups = layer_param_groups(model, lr=LR, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, min_dim=8)
    opt = torch.optim.SGD(groups)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 0.5 * (1 + np.cos(np.pi * min(i, steps) / steps)))
    # conv1's slices are 32 × 1 (one singular value each): too small for a fit, left at the scheduled rate
    monitor = SpectralMonitor(model, every=every, metrics=["alpha"], min_dim=8, on_event=lambda e: None)
    g = torch.Generator().manual_seed(seed)
    updates = []  # (step, {layer: (alpha, multiplier)})
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        idx = torch.randint(0, len(xtr), (BATCH,), generator=g)
        loss = torch.nn.functional.cross_entropy(model(xtr[idx]), ytr[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()  # LambdaLR sets every group's lr to the scheduled one, from its initial lr
        if not tempbalance:
            continue
        measured = monitor.step(step=step)
        if measured:
            alpha = {k: v["alpha"] for k, v in monitor.latest.items()}
            mult = tempbalance_multipliers(alpha, min_ratio=0.5, max_ratio=1.5)
        scheduled = sched.get_last_lr()[0]
        apply_multipliers(opt, mult, base=scheduled)  # the scheduled rate, spread over layers
        if measured:  # each layer's rate as a multiple of the scheduled one, as applied
            ratio = {g_["layer"]: g_["lr"] / scheduled for g_ in opt.param_groups if scheduled > 0}
            updates.append((step, {k: (alpha[k], mult[k]) for k in alpha}, ratio))
    with torch.no_grad():
        acc = float((model(xte).argmax(1) == yte).float().mean())
    return {"accuracy": acc, "updates": updates, "seconds": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--every", type=int, default=25)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    xtr, ytr, xte, yte = data(args.seed)
    plain = train(False, xtr, ytr, xte, yte, steps=args.steps, every=args.every, seed=args.seed)
    tb = train(True, xtr, ytr, xte, yte, steps=args.steps, every=args.every, seed=args.seed)
    print(f"one learning rate : test accuracy {plain['accuracy']:.3f} ({plain['seconds']:.1f} s)")
    print(f"TempBalance rates : test accuracy {tb['accuracy']:.3f} ({tb['seconds']:.1f} s)")
    layers = list(tb["updates"][0][1]) if tb["updates"] else []
    print("\nstep  " + "  ".join(f"{name:>22}" for name in layers) + "   (alpha → lr multiplier)")
    for step, vals, _ in tb["updates"]:
        print(f"{step:4d}  " + "  ".join(f"{vals[k][0]:9.2f} → {vals[k][1]:9.2f}" for k in layers))


if __name__ == "__main__":
    main()
