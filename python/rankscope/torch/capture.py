"""Activation capture: forward hooks that stream chosen layers' activations into rankscope's
accumulators (never storing them) and a per-layer table of the collapse diagnostics."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
import torch

from ..collapse import ActivationStats

__all__ = ["capture"]

_SCALARS = ("n_samples", "mean_std", "frac_below_gamma", "std_of_l2_normalized", "mean_pairwise_cosine", "rankme")


def _select(model: torch.nn.Module, layers: str | Sequence[str] | None) -> list[tuple[str, torch.nn.Module]]:
    """(name, module) pairs: every nn.Linear when `layers` is None; else the modules whose names equal
    one of `layers`, or match it as a regular expression (searched) or a glob."""
    named = [(n, m) for n, m in model.named_modules() if n]
    if layers is None:
        chosen = [(n, m) for n, m in named if isinstance(m, torch.nn.Linear)]
        if not chosen:
            raise ValueError("the model has no nn.Linear module; pass layers= (module names or a pattern)")
        return chosen
    pats = [layers] if isinstance(layers, str) else list(layers)
    if not pats or not all(isinstance(p, str) for p in pats):
        raise TypeError(f"layers must be a module name, a pattern, or a list of them, got {layers!r}")
    names = {n for n, _ in named}
    chosen = []
    for n, m in named:
        for p in pats:
            exact = p in names
            if (exact and n == p) or (not exact and (fnmatch.fnmatchcase(n, p) or _search(p, n))):
                chosen.append((n, m))
                break
    if not chosen:
        raise ValueError(f"no module of the model matches layers={layers!r}")
    return chosen


def _search(pattern: str, name: str) -> bool:
    try:
        return re.search(pattern, name) is not None
    except re.error:
        return False


def _rows(t: torch.Tensor, tokens: str, spatial: str) -> tuple[torch.Tensor, int]:
    """(rows, d) features of a batch of activations, and how many rows each sample gives.

    (B, d): as is. (B, C, H, W): spatial="mean" averages over H, W (global average pooling, the
    features a classifier head sees); "flatten" keeps C·H·W per sample. (B, T, d): tokens="mean"
    averages over tokens, "flatten" makes every token a row (its sample's label repeated)."""
    if t.ndim == 2:
        return t, 1
    if t.ndim == 4:
        if spatial == "mean":
            return t.mean(dim=(2, 3)), 1
        return t.reshape(t.shape[0], math.prod(t.shape[1:])), 1
    if t.ndim == 3:
        if tokens == "mean":
            return t.mean(dim=1), 1
        return t.reshape(t.shape[0] * t.shape[1], t.shape[2]), t.shape[1]
    if t.ndim == 1:
        return t[:, None], 1
    # explicit widths, not -1: a batch of 0 rows cannot infer one
    return t.reshape(t.shape[0], math.prod(t.shape[1:])), 1


def _split(batch: Any) -> tuple[Any, Any]:
    """(inputs, labels or None) of a loader's batch: (x, y, ...) tuples/lists and {"input"/"x", "label"/"y"} dicts.

    A tuple's second tensor is returned whatever its dtype; `_labels` decides whether a floating one
    is labels (only when neural collapse was asked for) or, say, regression targets (ignored)."""
    if isinstance(batch, (tuple, list)):
        if len(batch) >= 2 and isinstance(batch[1], torch.Tensor):
            return batch[0], batch[1]
        return batch[0], None
    if isinstance(batch, dict):
        x = next((batch[k] for k in ("input", "inputs", "x", "pixel_values", "input_ids") if k in batch), None)
        y = next((batch[k] for k in ("label", "labels", "y", "target", "targets") if k in batch), None)
        if x is None:
            raise ValueError(f"cannot find the inputs in a batch with keys {sorted(batch)}")
        return x, y
    return batch, None


def _labels(y: Any, i: int) -> torch.Tensor:
    """Batch i's labels as int64 (N,): integer tensors as they are, floating ones only when every
    value is a whole number (e.g. labels a dataset stored as float); anything else is a ValueError
    naming the batch, never a silent truncation."""
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y)
    y = y.reshape(-1)
    if y.is_complex() or y.dtype == torch.bool:
        raise ValueError(f"batch {i}: labels must be integers, got {y.dtype}")
    if y.is_floating_point():
        ok = torch.isfinite(y) & (y == torch.round(y)) & (y.abs() < 2.0 ** 53)
        if not bool(ok.all()):
            bad = float(y[~ok][0])
            raise ValueError(f"batch {i}: labels must be integers, got a {y.dtype} tensor holding {bad!r}")
    return y.long()


def _rows_of(x: Any) -> int | None:
    """The batch size of inputs that are one tensor (or a tuple/list starting with one), else None."""
    if isinstance(x, (tuple, list)) and x:
        x = x[0]
    if isinstance(x, torch.Tensor) and x.ndim >= 1:
        return int(x.shape[0])
    return None


def _to(x: Any, device: torch.device) -> Any:
    if isinstance(x, torch.Tensor):
        return x.to(device, non_blocking=True)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(e, device) for e in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _scalar(v: Any) -> float:
    if isinstance(v, torch.Tensor):
        return float(v.item())
    return float(np.asarray(v))


def capture(model: torch.nn.Module, loader: Iterable, *, layers: str | Sequence[str] | None = None,
            where: str = "output", labels: bool | None = None, num_classes: int | None = None,
            classifier: torch.nn.Linear | None = None, tokens: str = "mean", spatial: str = "mean",
            max_batches: int | None = None, passes: int = 1, forward: Callable[[torch.nn.Module, Any], Any] | None = None,
            gamma: float = 1.0, progress: bool | None = None, return_stats: bool = False):
    """Streams the activations of chosen layers over a loader into collapse accumulators.

    Forward hooks are registered on the chosen modules and removed on exit, also when the loop
    raises; each hook turns its batch of activations into rows (see `tokens`, `spatial`) and feeds
    them to a :class:`rankscope.collapse.ActivationStats` (and a
    :class:`rankscope.neural_collapse.NeuralCollapse` when there are labels), so memory is O(d²)
    per layer whatever the number of samples; activations are never stored. The model runs in eval
    mode under ``torch.no_grad()`` (every module's training mode is restored afterwards), on its own device.

    Parameters
    ----------
    model : nn.Module
        Any module, on the CPU or a GPU.
    loader : iterable of batches
        Each batch: inputs, or (inputs, labels, ...), or a dict with "input"/"x"/"input_ids" and
        "label"/"labels"/"y" keys. Integer labels (N,) are used for neural collapse; floating
        labels holding whole numbers are too when neural collapse is asked for (labels=True or
        num_classes/classifier given), else a tuple's floating second element is taken for
        regression targets and ignored; floating labels that are not whole numbers are a
        ValueError naming the batch. Batches of 0 rows are skipped.
    layers : str or list of str, optional
        Module names (as in ``model.named_modules()``), regular expressions or globs; default every
        nn.Linear.
    where : "output" or "input"
        Capture each module's output (default) or its first input (e.g. the penultimate features
        a classifier sees).
    labels : bool, optional
        Use the batches' labels for the neural-collapse metrics (default: when batches carry them).
    num_classes : int, optional
        K, needed with labels (default: the classifier's out_features when `classifier` is given).
    classifier : nn.Linear, optional
        The last layer (W, b) for NC3/NC4 on layers whose width is its in_features.
    tokens, spatial : "mean" or "flatten"
        How (B, T, d) and (B, C, H, W) activations become rows (see above).
    max_batches : int, optional
        Stop after this many batches (per pass).
    passes : 1 or 2
        Neural collapse in one pass over the loader (shifted moments, the default) or two (class
        means first, then the centred within-class scatter, as the reference implementations do;
        also gives NC4 when `classifier` is set). With 2 the loader is iterated twice: it must be
        re-iterable (a DataLoader or a list, not a generator) and yield the same samples.
    forward : callable, optional
        ``forward(model, inputs)`` when ``model(inputs)`` is not how the model is called.
    gamma : float
        The std threshold of `frac_below_gamma` (VICReg's γ).
    progress : bool, optional
        A tqdm bar over batches (default: on a terminal).
    return_stats : bool
        Also return the accumulators, {layer: {"activations": ActivationStats, "nc": NeuralCollapse}}.

    Returns
    -------
    pandas.DataFrame
        One row per layer: layer, where, d, n_samples, mean_std, frac_below_gamma,
        std_of_l2_normalized, mean_pairwise_cosine, rankme, and with labels the neural-collapse
        metrics (NeuralCollapse.compute()'s scalar entries, prefixed "nc_" where needed).
    """
    import pandas as pd

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
    if where not in ("output", "input"):
        raise ValueError(f"where must be 'output' or 'input', got {where!r}")
    for name, v in (("tokens", tokens), ("spatial", spatial)):
        if v not in ("mean", "flatten"):
            raise ValueError(f"{name} must be 'mean' or 'flatten', got {v!r}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int, got {max_batches!r}")
    if passes not in (1, 2) or isinstance(passes, bool):
        raise ValueError(f"passes must be 1 or 2, got {passes!r}")
    if num_classes is None and classifier is not None:
        num_classes = int(classifier.out_features)
    if num_classes is not None and (not isinstance(num_classes, int) or num_classes < 2):
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    chosen = _select(model, layers)
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    stats: dict[str, dict[str, Any]] = {name: {} for name, _ in chosen}
    state = {"labels": None, "pass": 1, "batches": 0, "empty": 0}
    # a floating second element of a tuple batch is labels only when neural collapse was asked for
    # (labels=True or num_classes/classifier given); otherwise it may be regression targets
    want_nc = labels is True or (labels is None and num_classes is not None)

    def hook_for(name: str):
        def hook(module, inputs, output):
            t = output if where == "output" else (inputs[0] if inputs else None)
            if isinstance(t, (tuple, list)):
                t = t[0]
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"layer {name!r}: its {where} is a {type(t).__name__}, not a tensor")
            rows, per = _rows(t.detach(), tokens, spatial)
            acc = stats[name]
            if state["pass"] == 1:
                if "activations" not in acc:
                    acc["activations"] = ActivationStats(int(rows.shape[-1]), gamma=gamma)
                acc["activations"].update(rows)
            y = state["labels"]
            if y is not None:
                if "nc" not in acc:
                    from ..neural_collapse import NeuralCollapse

                    W = b = None
                    if classifier is not None and classifier.in_features == rows.shape[-1]:
                        W, b = classifier.weight.detach(), (None if classifier.bias is None else
                                                            classifier.bias.detach())
                    acc["nc"] = NeuralCollapse(num_classes, int(rows.shape[-1]), passes=passes, W=W, b=b)
                yy = y.to(rows.device)
                acc["nc"].update(rows, yy.repeat_interleave(per) if per > 1 else yy)

        return hook

    from tqdm.auto import tqdm

    # each module's own mode: model.train(True) afterwards would also unfreeze a sub-module kept in
    # eval mode (frozen BatchNorm statistics while fine-tuning)
    modes = [(m, m.training) for m in model.modules()]
    handles = [m.register_forward_hook(hook_for(n)) for n, m in chosen]
    def one_pass(p: int) -> None:
        state["pass"] = p
        bar = tqdm(loader, total=max_batches, unit="batch", desc=f"capture (pass {p}/{passes})" if passes > 1
                   else "capture", disable=(not progress) if progress is not None else None)
        for i, batch in enumerate(bar):
            if max_batches is not None and i >= max_batches:
                break
            x, y = _split(batch)
            if (isinstance(batch, (tuple, list)) and isinstance(y, torch.Tensor) and y.is_floating_point()
                    and not want_nc):
                y = None  # float targets and no neural collapse asked for: not labels
            use = labels if labels is not None else y is not None
            if p == 1:
                state["batches"] += 1
            if _rows_of(x) == 0:  # an empty batch adds nothing (as ActivationStats.update): skip it
                if p == 1:
                    state["empty"] += 1
                continue
            if use:
                if y is None:
                    raise ValueError(f"labels=True but batch {i} carries no labels")
                if num_classes is None:
                    raise ValueError("the batches carry labels: pass num_classes= (or classifier=) for the "
                                     "neural-collapse metrics, or labels=False")
                state["labels"] = _labels(y, i)
            else:
                state["labels"] = None
            x = _to(x, device)
            if forward is not None:
                forward(model, x)
            else:
                model(x)
        bar.close()

    try:
        model.eval()
        with torch.no_grad():
            one_pass(1)
            if passes == 2:
                if not any("nc" in acc for acc in stats.values()):
                    raise ValueError("passes=2 is for the neural-collapse metrics: the batches carried no labels")
                for acc in stats.values():
                    if "nc" in acc:
                        acc["nc"].start_second_pass()
                one_pass(2)
    finally:
        for h in handles:
            h.remove()
        for m, mode in modes:
            m.training = mode
    rows = []
    for name, _ in chosen:
        acc = stats[name]
        if "activations" not in acc:
            why = ("every batch was empty (0 rows)" if state["batches"] and state["empty"] == state["batches"]
                   else "not called by the forward pass")
            rows.append({"layer": name, "where": where, "status": why})
            continue
        r: dict[str, Any] = {"layer": name, "where": where, "d": acc["activations"].d}
        try:
            res = acc["activations"].compute()
            r.update({k: (int(res[k]) if k == "n_samples" else _scalar(res[k])) for k in _SCALARS if k in res})
        except ValueError as e:
            r["status"] = str(e)
        if "nc" in acc:
            try:
                for k, v in acc["nc"].compute().items():
                    try:
                        val = _scalar(v)
                    except (TypeError, ValueError):
                        continue  # arrays (per-class values) stay in the accumulator
                    r[k if k.startswith("nc") or k in r else f"nc_{k}"] = val
            except ValueError as e:
                r["status"] = f"neural collapse: {e}"
        r.setdefault("status", "success")
        rows.append(r)
    df = pd.DataFrame(rows)
    if return_stats:
        return df, stats
    return df

