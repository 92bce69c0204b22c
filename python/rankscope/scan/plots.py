"""Figures of a scan (matplotlib, an optional extra: ``pip install "rankscope[plots]"``).

- :func:`plot_esd`: one layer's ESD on log-log axes, with the Marchenko–Pastur bulk edge and the
  fitted power law;
- :func:`plot_sv_min_hist`: the histogram of log10 s_min over every layer of a zoo, with the
  rank-collapse line (log10 s_min < −8);
- :func:`plot_depth`: alpha and rank loss along depth, one model;
- :func:`write_all`: all of them into a folder as PNG files.

Functions that draw take an ``ax=`` to compose with; those that write files use the Agg backend.
"""

from __future__ import annotations

import contextlib
import os
import re
from typing import Any

import numpy as np


def _plt():
    from .sources import optional_import

    optional_import("matplotlib", "plots")
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        with contextlib.suppress(Exception):  # a backend already in use stays
            matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _row(report, model: str, name: str):
    layers = report.layers
    hit = layers[(layers["model"] == model) & (layers["name"] == name)]
    if not len(hit):
        raise KeyError(f"no layer {name!r} of model {model!r} in the report")
    return hit.iloc[0]


def plot_esd(report, model: str, name: str, *, ax: Any = None, bins: int = 80) -> Any:
    """The ESD of one layer (log-log density of l = s²) with the MP bulk edge λ₊ and the power law
    fitted above xmin. Needs the eigenvalues (a scan with keep_evals=True, the default)."""
    plt = _plt()
    key = (model, name)
    if key not in report.evals:
        raise KeyError(f"the report holds no eigenvalues of {name!r} ({model!r}): scan with keep_evals=True")
    ev = np.asarray(report.evals[key], dtype=np.float64)
    row = _row(report, model, name)
    ev = ev[ev > 0]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4.2))
    if ev.size:
        lo, hi = np.log10(ev.min()), np.log10(ev.max())
        edges = np.logspace(lo, hi if hi > lo else lo + 1e-3, bins + 1)
        ax.hist(ev, bins=edges, density=True, color="royalblue", alpha=0.6, label="ESD")
        N, M = float(row["N"]), float(row["M"])
        if N > 0 and M > 0:
            # l = s² without 1/N: the MP bulk of an N × M matrix of variance σ² ends at N·σ²(1 + 1/√Q)²,
            # N·σ² = ‖W‖_F²/M = the mean eigenvalue (Conv2d slices: of the pooled ESD)
            edge = ev.mean() * (1 + 1 / np.sqrt(N / M)) ** 2
            ax.axvline(edge, color="darkorange", ls="--", label=f"MP bulk edge λ₊ = {edge:.3g}")
        alpha, xmin = row.get("alpha"), row.get("xmin")
        if alpha is not None and np.isfinite(alpha) and alpha > 1 and xmin is not None and np.isfinite(xmin) and xmin > 0:
            tail = ev[ev >= xmin]
            x = np.logspace(np.log10(xmin), np.log10(ev.max()), 50)
            # p(x) = (α−1)/xmin (x/xmin)^−α on the tail, scaled by the tail's share of the ESD
            p = (alpha - 1) / xmin * (x / xmin) ** (-alpha) * (tail.size / ev.size)
            ax.plot(x, p, color="crimson", lw=2, label=f"power law α = {alpha:.2f} (x ≥ xmin = {xmin:.3g})")
            ax.axvline(xmin, color="crimson", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "no positive eigenvalue: all singular values are 0", ha="center", va="center",
                transform=ax.transAxes)
    ax.set_xlabel("eigenvalue λ = s²")
    ax.set_ylabel("density")
    ax.set_title(f"{model}: {name}\n{row['shape']} {row['dtype']}, log10 s_min/s_max = {row['log10_sv_min_rel']:.2f}",
                 fontsize=9)
    if ev.size:
        ax.legend(fontsize=7)
    return ax


def plot_sv_min_hist(report, *, ax: Any = None, relative: bool = False, threshold: float = -8.0,
                     bins: int = 60) -> Any:
    """Histogram of log10 s_min over every scanned layer of every model (relative=True: of
    log10(s_min/s_max)), with the rank-collapse line at `threshold`. Layers with s_min = 0 are
    counted at the left edge."""
    plt = _plt()
    s = report.scanned
    col = "log10_sv_min_rel" if relative else "log10_sv_min"
    v = np.array(s[col], dtype=np.float64) if len(s) else np.zeros(0)
    v[np.asarray(s["sv_min"], dtype=np.float64) == 0] = -np.inf  # also where JSON wrote null, or 0/0
    v = v[~np.isnan(v)]
    finite = v[np.isfinite(v)]
    lo = min(finite.min() if finite.size else threshold, threshold) - 1
    v = np.where(np.isneginf(v), lo, v)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    ax.hist(v, bins=bins, color="slategray")
    ax.axvline(threshold, color="crimson", ls="--", label=f"rank collapse: < {threshold:g}")
    n_bad = int(np.sum(v < threshold))
    ax.set_xlabel("log10(s_min / s_max)" if relative else "log10 s_min")
    ax.yaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel("layers")
    n_models = s["model"].nunique() if len(s) else 0
    ax.set_title(f"log10 s_min of {v.size} layers of {n_models} model(s): {n_bad} below {threshold:g}", fontsize=9)
    ax.legend(fontsize=8)
    return ax


def plot_depth(report, model: str, *, ax: Any = None) -> Any:
    """alpha (left axis) and rank loss (right axis) of one model's layers in order, flagged layers marked."""
    plt = _plt()
    s = report.scanned
    s = s[s["model"] == model]
    if ax is None:
        _, ax = plt.subplots(figsize=(8, 4))
    x = np.arange(len(s))
    alpha = np.asarray(s["alpha"], dtype=np.float64)
    ax.plot(x, np.where(alpha > 0, alpha, np.nan), "o-", color="royalblue", ms=3, label="alpha")
    ax.axhspan(2, 6, color="royalblue", alpha=0.07)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("layer (scan order)")
    ax.set_ylabel("alpha", color="royalblue")
    ax2 = ax.twinx()
    ax2.bar(x, np.asarray(s["rank_loss"], dtype=np.float64), color="crimson", alpha=0.5, label="rank loss")
    ax2.set_ylabel("rank loss", color="crimson")
    bad = np.flatnonzero(np.asarray(s["collapsed"], dtype=bool))
    for b in bad:
        ax.axvline(b, color="crimson", lw=0.8, ls=":")
    ax.set_title(f"{model}: alpha and rank loss along depth ({len(bad)} collapsed)", fontsize=9)
    return ax


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:120] or "model"


def write_all(report, folder: str | os.PathLike, *, max_esd: int = 200) -> list[str]:
    """Writes PNG files into `folder`: the zoo histogram of log10 s_min, each model's depth plot, and
    the ESD of each layer (when there are more than `max_esd` layers: the flagged ones and the
    lowest log10 s_min/s_max, up to max_esd). Returns the paths written."""
    plt = _plt()
    os.makedirs(folder, exist_ok=True)
    written, used = [], set()

    def save(fig, name):
        stem, n = name[:-len(".png")], 1
        while name in used:  # names that slug alike: -2, -3, ...
            n += 1
            name = f"{stem}-{n}.png"
        used.add(name)
        path = os.path.join(os.fspath(folder), name)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    s = report.scanned
    fig, ax = plt.subplots(figsize=(6.5, 4))
    plot_sv_min_hist(report, ax=ax)
    save(fig, "sv_min_hist.png")
    for model in s["model"].unique():
        fig, ax = plt.subplots(figsize=(8, 4))
        plot_depth(report, model, ax=ax)
        save(fig, f"depth_{_slug(model)}.png")
    have = s[[(m, n) in report.evals for m, n in zip(s["model"], s["name"])]]
    if len(have) > max_esd:
        have = have.sort_values(["collapsed", "log10_sv_min_rel"], ascending=[False, True]).head(max_esd)
    for _, r in have.iterrows():
        fig, ax = plt.subplots(figsize=(6, 4.2))
        plot_esd(report, r["model"], r["name"], ax=ax)
        save(fig, f"esd_{_slug(r['model'])}__{_slug(r['name'])}.png")
    return written
