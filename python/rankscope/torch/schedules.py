"""Layer-wise schedules from spectra, as TempBalance (NeurIPS 2023), Model Balancing and AlphaDecay
use them: per-layer alpha → per-parameter-group learning-rate (or weight-decay) multipliers.

Typical use, every N steps::

    groups = rankscope.torch.layer_param_groups(model, lr=0.1, momentum=0.9)
    opt = torch.optim.SGD(groups)
    monitor = rankscope.torch.SpectralMonitor(model, every=N, metrics=["alpha"])
    ...
    if monitor.step():                       # measured this step
        alpha = {k: v["alpha"] for k, v in monitor.latest.items()}
        rankscope.torch.apply_multipliers(opt, rankscope.torch.tempbalance_multipliers(alpha))

With an LR schedule, see :func:`apply_multipliers` and ``examples/tempbalance_schedule.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

__all__ = ["apply_multipliers", "layer_param_groups", "tempbalance_multipliers"]


def tempbalance_multipliers(alpha: Mapping[str, float], *, min_ratio: float = 0.5,
                            max_ratio: float = 1.5) -> dict[str, float]:
    """TempBalance's linear map (its ``tb_linear_map``) from per-layer alpha to multipliers.

    m_i = interp(α_i, [min α, max α], [min_ratio, max_ratio]): the layer with the smallest alpha (the
    most heavy-tailed, "over-trained") gets `min_ratio`, the largest (under-trained) `max_ratio`,
    linearly in between. TempBalance sets lr_i = m_i · lr with min_ratio = ``lr_min_ratio`` (0.5)
    and max_ratio = ``lr_min_ratio + lr_slope`` (1.5); AlphaDecay applies the same map to weight
    decay. Layers whose alpha is not finite (a failed fit) get 1.0 and are left out of min/max.
    When all finite alphas are equal every layer gets `max_ratio` (numpy.interp's value at a
    repeated end point, as in the reference).
    """
    if not isinstance(alpha, Mapping):
        raise TypeError(f"alpha must be a mapping of layer name → alpha, got {type(alpha).__name__}")
    if not (math.isfinite(min_ratio) and math.isfinite(max_ratio)) or min_ratio < 0 or max_ratio < min_ratio:
        raise ValueError(f"need 0 <= min_ratio <= max_ratio, got min_ratio={min_ratio!r}, max_ratio={max_ratio!r}")
    vals = {k: float(v) for k, v in alpha.items()}
    finite = [v for v in vals.values() if math.isfinite(v)]
    if not finite:
        return dict.fromkeys(vals, 1.0)
    lo, hi = min(finite), max(finite)
    return {k: float(np.interp(v, (lo, hi), (min_ratio, max_ratio))) if math.isfinite(v) else 1.0
            for k, v in vals.items()}


def layer_param_groups(model: torch.nn.Module, *, layers: Any = None, min_dim: int | None = None,
                       **defaults: Any) -> list[dict[str, Any]]:
    """Optimizer parameter groups, one per weight layer the monitor measures.

    Each module owning a measured weight (the scanner's layer policy: matrices, Conv kernels, expert
    stacks; `layers`/`min_dim` as in :class:`SpectralMonitor`) gives one group with its weight and
    its other direct parameters (the bias), tagged ``group["layer"]`` = the weight's name as the
    monitor reports it; everything else goes into one last group with ``layer=None``. `defaults`
    (lr=, weight_decay=, ...) are copied into every group.
    """
    from ..scan.layers import plan
    from .monitor import owned_parameters, tensor_infos

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    params = owned_parameters(model)
    infos = tensor_infos(params, lambda p: (lambda: None))
    kept = {info.name for info in infos}  # a tied weight once, under its first name
    owned: dict[str, list[tuple[str, torch.nn.Parameter]]] = {}
    for name, p, _ in params:
        if name in kept:
            owned.setdefault(name.rpartition(".")[0], []).append((name, p))
    measured = {la.tensor for la in plan(infos, layers=layers, min_dim=min_dim) if la.skip is None}
    groups, rest = [], []
    for members in owned.values():
        weights = [n for n, _ in members if n in measured]
        if weights:
            groups.append({"params": [p for _, p in members], "layer": weights[0], **defaults})
        else:
            rest.extend(p for _, p in members)
    if rest:
        groups.append({"params": rest, "layer": None, **defaults})
    return groups


def apply_multipliers(optimizer: torch.optim.Optimizer, multipliers: Mapping[str, float], *, key: str = "lr",
                      base: float | None = None) -> int:
    """Sets ``group[key] = base · multipliers[group["layer"]]`` for the optimizer's groups that name a
    layer (see :func:`layer_param_groups`); returns how many groups changed.

    `base` defaults to each group's own value of `key` when this function first saw it (kept in
    ``group["base_" + key]``). With an LR schedule, pass the scheduled rate as `base` after each
    ``scheduler.step()`` (TempBalance's way: the schedule sets the global rate, the map spreads it
    over layers). ``LambdaLR`` (and other schedulers that set each group's rate from its initial
    one) can be read back with ``base=scheduler.get_last_lr()[0]``; chainable schedulers
    (CosineAnnealingLR, StepLR, ...) multiply each group's current rate and would compound the
    multipliers, so compute the scheduled rate yourself with those.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    changed = 0
    for g in optimizer.param_groups:
        layer = g.get("layer")
        if layer is None or layer not in multipliers:
            continue
        if key not in g:
            raise KeyError(f"the optimizer's parameter groups have no {key!r}")
        b = g.setdefault(f"base_{key}", g[key]) if base is None else float(base)
        g[key] = b * float(multipliers[layer])
        changed += 1
    return changed
