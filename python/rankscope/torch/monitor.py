"""Spectra during training: :class:`SpectralMonitor` computes the scanner's per-layer weight metrics
(and, optionally, activation diagnostics) every few optimizer steps, keeps their history and flags
layers that start to collapse.

One measurement is plan → batched compute → rows, as in the scanner (``rankscope.scan``): the model's
weight tensors are turned into matrices by the scanner's layer policy once (views of the parameters in
place, no state_dict copy), all matrices go to the engine in one call (grouped by shape there), and
each layer's row comes from the scanner's own ``layer_row``, so a monitored value equals what
``rankscope.scan(model)`` reports for the same weights.

On the CPU a measurement runs inside ``step()`` on the engine's thread pool. On CUDA it is queued:
the matrices are copied (one device copy per shape group, on the training stream, so later optimizer
steps cannot race with it) and their spectra computed on a side stream and copied to pinned host
memory; ``step()`` returns at once and the values are read back lazily (the next ``step()`` takes
those that are ready without waiting; ``history``, ``latest`` and ``flush()`` wait). Until then a
measurement holds that one device copy of the measured matrices (in their stored dtype).
"""

from __future__ import annotations

import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ACTIVATION_METRICS",
    "WEIGHT_METRICS",
    "MonitorEvent",
    "MonitorRecord",
    "SpectralMonitor",
    "SpectralMonitorWarning",
]

#: Weight metrics a monitor can record: the scanner's numeric columns (rankscope.scan's report).
WEIGHT_METRICS = ("num_evals", "alpha", "xmin", "D", "num_pl_spikes", "sv_max", "sv_min", "log10_sv_min", "log10_sv_min_rel",
                  "condition_number", "matrix_rank", "rank_loss", "weak_rank_loss", "entropy", "effective_rank",
                  "stable_rank", "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
                  "mp_softrank", "num_spikes")
#: Those that read the small end of the spectrum: they need the float64 route (and its refinement).
SMALL_END = frozenset({"sv_min", "log10_sv_min", "log10_sv_min_rel", "condition_number", "matrix_rank",
                       "rank_loss", "weak_rank_loss", "entropy"})
#: Those float32 Gram eigenvalues cannot give: the small end, and effective_rank (it sums every s).
NEEDS_FLOAT64 = SMALL_END | {"effective_rank"}
#: precision="float32" keeps a matrix's float32 spectrum only where its fit region is resolved: the
#: median eigenvalue at least this fraction of the largest (float32 Gram eigenvalues carry an absolute
#: error of ~k·eps32·λ_max, 1e-3 relative here at k = 768 and less above); others take the float64 route.
FLOAT32_MEDIAN_FLOOR = 1e-3
#: Activation diagnostics (rankscope.torch.capture's columns); the nc* ones need labels.
ACTIVATION_METRICS = ("rankme", "mean_std", "frac_below_gamma", "std_of_l2_normalized", "mean_pairwise_cosine",
                      "nc1", "nc1_topk", "nc1_quotient", "cdnv", "nc2_equinorm", "nc2_equiangularity",
                      "nc2_etf_error", "class_mean_rank", "class_mean_rank_centered")
DEFAULT_METRICS = ("alpha", "stable_rank", "rank_loss", "log10_sv_min", "effective_rank", "log_norm",
                   "log_spectral_norm", "rankme", "mean_std", "mean_pairwise_cosine", "nc1")
ESTIMATORS = ("median", "ww", "xmin_peak", "xmin_peak_intended")


class SpectralMonitorWarning(UserWarning):
    """A monitored layer started to collapse (the warning's text says which, how and at which step)."""


@dataclass(frozen=True)
class MonitorEvent:
    """A flagged change: `kind` is "rank_loss_rise", "alpha_out_of_range", "rankme_drop" or
    "non_finite"; `value` the metric now, `reference` what it is compared with (the first measured
    value, or the edge of the alpha range)."""

    step: int
    layer: str
    kind: str
    value: float
    reference: float
    message: str


@dataclass
class MonitorRecord:
    """One measurement, as writers receive it: `values[layer][metric]`, and per weight layer its
    singular values (pooled over Conv2d slices, descending, float64)."""

    step: int
    values: dict[str, dict[str, float]]
    spectra: dict[str, np.ndarray] = field(repr=False)
    seconds: float = 0.0  # host time the measurement took inside step() (queueing only on CUDA)

    def rows(self) -> list[tuple[int, str, str, float]]:
        """(step, layer, metric, value) of every value, as the history and the table writer hold them."""
        return [(self.step, layer, metric, v) for layer, vs in self.values.items() for metric, v in vs.items()]

    def scalars(self, prefix: str = "spectral") -> dict[str, float]:
        """The finite values as ``{f"{prefix}/{metric}/{layer}": value}`` (what loggers take)."""
        return {f"{prefix}/{metric}/{layer}": v for layer, vs in self.values.items() for metric, v in vs.items()
                if v is not None and math.isfinite(v)}


@dataclass
class _Pending:
    """A measurement started: its layers, the owner layer of each matrix, and either the host values
    (CPU) or, per shape group on CUDA, (matrix indices, pinned host values, the snapshot kept for the
    refinement) with the event that marks them ready."""

    step: int
    layers: list
    owner: list[int]
    activations: dict
    host: tuple[list[np.ndarray], np.ndarray] | None = None
    cuda: list | None = None
    event: Any = None
    seconds: float = 0.0


def _check_metrics(metrics: Sequence[str] | None) -> tuple[tuple[str, ...], tuple[str, ...]]:
    names = DEFAULT_METRICS if metrics is None else ((metrics,) if isinstance(metrics, str) else tuple(metrics))
    unknown = [m for m in names if m not in WEIGHT_METRICS and m not in ACTIVATION_METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; weight metrics: {', '.join(WEIGHT_METRICS)}; "
                         f"activation metrics: {', '.join(ACTIVATION_METRICS)}")
    return (tuple(m for m in names if m in WEIGHT_METRICS), tuple(m for m in names if m in ACTIVATION_METRICS))


class SpectralMonitor:
    """Per-layer spectra of a model's weights (and optional activation diagnostics) during training.

    Call :meth:`step` after each optimizer step; every `every` steps it measures every weight matrix
    of the model (the scanner's layer policy: Linear/Embedding as one matrix, Conv2d as pooled kh·kw
    slices, 3-D expert tensors one row per expert; 1-D tensors skipped) in one batched engine call,
    straight from the parameters, on their device. Rows are the scanner's (``rankscope.scan``): the
    same weights give the same values.

    Parameters
    ----------
    model : nn.Module
        The model being trained (on the CPU or a GPU).
    every : int
        Measure at the first call of :meth:`step` and then whenever `every` steps have passed since
        the last measurement (default 1).
    weights : bool
        Measure weight matrices (default True).
    layers : str or list of str, optional
        Keep weight tensors whose names match (a regular expression searched in the name, or a glob),
        as ``rankscope.scan(layers=...)``.
    activations : str, list of str or True, optional
        Modules whose outputs get activation diagnostics (RankMe, per-feature std, mean pairwise
        cosine, NC1 with labels) through :func:`rankscope.torch.capture`'s hooks: module names,
        patterns, or True for every nn.Linear. Computed on the batch passed to :meth:`step`, else on
        `probe`. The forward pass runs in eval mode under no_grad and reads the values back (it
        synchronises on CUDA).
    probe : batch or iterable of batches, optional
        What the activation diagnostics run on when :meth:`step` gets no batch: one batch (inputs,
        (inputs, labels) as a tuple or list, or a dict, as capture takes them), a list of such
        (inputs, labels) tuples/lists/dicts, or another re-iterable of batches (a DataLoader).
    num_classes : int, optional
        K for NC1 when batches carry integer labels (without it labels are ignored).
    metrics : list of str, optional
        What to record: any of :data:`WEIGHT_METRICS` and :data:`ACTIVATION_METRICS`. Default: alpha,
        stable_rank, rank_loss, log10_sv_min, effective_rank, log_norm, log_spectral_norm, and for
        activations rankme, mean_std, mean_pairwise_cosine, nc1 (with labels).
    estimator : "median", "ww", "xmin_peak" or "xmin_peak_intended"
        The power-law fit for alpha (the scanner's `estimator`): TempBalance's median-xmin Hill
        estimate (default; what TempBalance, Model Balancing and AlphaDecay use during training),
        WeightWatcher's xmin scan, or TempBalance's fix-finger peak.
    conv : "slices" or "flatten"
        Conv2d as pooled slices (default) or one out × in·kh·kw matrix.
    min_dim : int, optional
        Skip matrices whose smaller side is below this (default: none skipped, as the scanner).
    split_qkv : bool
        Measure fused query/key/value weights (nn.MultiheadAttention's in_proj_weight, GPT-2's
        c_attn, ...) as three layers, as ``rankscope.scan(split_qkv=True)``.
    precision : "auto", "float64" or "float32"
        "float64": the engine's float64 route, matrices whose s_min falls below 1e-6·s₁ recomputed
        by the exact route, as the scanner does. "float32": eigenvalues of float32 Gram matrices
        (torch, on the parameters' device), about twice as fast; they resolve nothing below
        ~3e-4·s₁, so only metrics that read the large end may use them (alpha, xmin, D, stable_rank,
        sv_max, the log norms, mp_softrank...); asking for a small-end metric (rank_loss,
        log10_sv_min, effective_rank, ...) with it is an error, and a matrix whose median eigenvalue
        is below 1e-3·λ_max (where alpha's median-xmin fit would read noise: a collapsing layer)
        is recomputed in float64. "auto" (default): float32 when every requested weight metric is a
        large-end one, else float64. ``benchmarks/bench_monitor.py`` measures how far float32 moves
        alpha: ~1e-5 of the fit's own standard error (α − 1)/√n.
    device : None, "cpu", "cuda" or "cuda:N"
        Where spectra are computed: default the parameters' device; "cpu" copies GPU parameters to the
        host first.
    log : writer, callable, path, or a list of them
        Each measurement (a :class:`MonitorRecord`) is handed to these once its values are read back:
        a callable ``f(record)``, a ``torch.utils.tensorboard.SummaryWriter`` (wrapped in
        :class:`rankscope.torch.TensorBoardWriter`), or a ``.csv``/``.parquet`` path
        (:class:`rankscope.torch.TableWriter`).
    on_event : callable, optional
        Called with each :class:`MonitorEvent`; default: a :class:`SpectralMonitorWarning` per event.
    alpha_range : (float, float)
        "alpha_out_of_range" when a layer's alpha leaves this range (default (2, 6), WeightWatcher's
        well-trained band): it was inside at an earlier measurement and is outside now (a layer that
        starts outside, as random initialisations above 6 do, is not flagged until it came in); it
        fires again only after alpha came back.
    rank_loss_rise : float
        "rank_loss_rise" when a layer's rank_loss exceeds its first measured value by at least
        max(1, rank_loss_rise · its number of singular values) (default 0.01).
    rankme_drop : float
        "rankme_drop" when an activation's RankMe falls below this fraction of its first value
        (default 0.5).
    warmup : int
        Events are judged from the first measurement at step >= `warmup` on (its values are the
        references "first" means above); earlier measurements are recorded, never flagged
        (default 0). RankMe often dips in the first tens of steps and recovers.
    min_evals : int
        alpha_out_of_range only for layers with at least this many eigenvalues (default 50: a
        power-law fit of fewer says little).

    Every event has hysteresis: once fired it is re-armed only after the metric came back past
    half the margin (alpha 5 % of the band inside it, rank loss to half the rise, RankMe above the
    midpoint between the drop line and its reference), so a metric hovering at its line fires once.
    tokens, spatial, forward :
        How activations become rows and how the model is called for them (as
        :func:`rankscope.torch.capture` takes them; `forward(model, inputs)` when ``model(inputs)``
        is not how the model is called).

    Attributes
    ----------
    history : pandas.DataFrame
        step, layer, metric, value: every recorded value (waits for pending measurements).
    latest : dict
        The last measurement's values, ``{layer: {metric: value}}``.
    events : list of MonitorEvent
    records : int
        Measurements taken.
    seconds : list of float
        Host seconds each measurement took inside :meth:`step` (on CUDA: queueing only).
    """

    def __init__(self, model: torch.nn.Module, *, every: int = 1, weights: bool = True,
                 layers: str | Sequence[str] | None = None, activations: str | Sequence[str] | bool | None = None,
                 probe: Any = None, num_classes: int | None = None, metrics: Sequence[str] | None = None,
                 estimator: str = "median", conv: str = "slices", min_dim: int | None = None,
                 split_qkv: bool = False, precision: str = "auto",
                 device: Any = None, log: Any = None, on_event: Callable[[MonitorEvent], None] | None = None,
                 alpha_range: tuple[float, float] = (2.0, 6.0), rank_loss_rise: float = 0.01,
                 rankme_drop: float = 0.5, warmup: int = 0, min_evals: int = 50, tokens: str = "mean",
                 spatial: str = "mean",
                 forward: Callable[[torch.nn.Module, Any], Any] | None = None):
        from ..scan.runner import ScanOptions

        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch nn.Module, got {type(model).__name__}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive int, got {every!r}")
        if estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
        if precision not in ("auto", "float64", "float32"):
            raise ValueError(f"precision must be 'auto', 'float64' or 'float32', got {precision!r}")
        self.weight_metrics, self.activation_metrics = _check_metrics(metrics)
        if precision == "auto":
            precision = "float64" if NEEDS_FLOAT64.intersection(self.weight_metrics) else "float32"
        elif precision == "float32":
            small = sorted(NEEDS_FLOAT64.intersection(self.weight_metrics))
            if small:
                raise ValueError(f"precision='float32' cannot resolve the small end of a spectrum; metrics {small} "
                                 "need precision='float64' (or leave them out)")
        if activations is not None and activations is not False and not self.activation_metrics:
            raise ValueError("activations= is set but metrics= names no activation metric")
        if isinstance(probe, Iterator):  # a generator would be used up by the first measurement
            raise TypeError(f"probe must be a batch or a re-iterable of batches (a list, a DataLoader), got a "
                            f"one-shot {type(probe).__name__}: pass list(...) of it")
        try:
            lo, hi = alpha_range
        except (TypeError, ValueError):
            raise ValueError(f"alpha_range must be (low, high), got {alpha_range!r}") from None
        if not lo < hi:
            raise ValueError(f"alpha_range must be (low, high) with low < high, got {alpha_range!r}")
        if not 0 < rankme_drop < 1:
            raise ValueError(f"rankme_drop must be in (0, 1), got {rankme_drop!r}")
        if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"warmup must be a non-negative int, got {warmup!r}")
        if isinstance(min_evals, bool) or not isinstance(min_evals, int) or min_evals < 1:
            raise ValueError(f"min_evals must be a positive int, got {min_evals!r}")
        if not rank_loss_rise >= 0:
            raise ValueError(f"rank_loss_rise must be >= 0, got {rank_loss_rise!r}")
        for name, f in (("on_event", on_event), ("forward", forward)):
            if f is not None and not callable(f):
                raise TypeError(f"{name} must be a callable or None, got {type(f).__name__}")
        if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)
                                        or num_classes < 2):
            raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
        self.model = model
        self.every = every
        self.weights = bool(weights)
        self.activations = None if activations is False else activations
        self.probe = probe
        self.num_classes = num_classes
        self.precision = precision
        self.device = None if device is None else torch.device(device)
        if self.device is not None and self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={device!r}, but torch sees no CUDA GPU")
        self.on_event = on_event
        self.alpha_range = (float(lo), float(hi))
        self.rank_loss_rise = float(rank_loss_rise)
        self.rankme_drop = float(rankme_drop)
        self.warmup, self.min_evals = int(warmup), int(min_evals)
        self.tokens, self.spatial, self.forward = tokens, spatial, forward
        self._opts = ScanOptions(conv=conv, layers=layers, min_dim=min_dim, split_qkv=bool(split_qkv),
                                 estimator=estimator, keep_evals=False, alpha_range=self.alpha_range)
        self._opts.validate()  # the scanner's refinement always applies: a collapsing layer's fit reads its small end
        self._writers = [_writer(w) for w in _as_list(log)]
        self._rows: list[tuple[int, str, str, float]] = []
        self._frame = None
        self._pending: list[_Pending] = []
        self._latest: dict[str, dict[str, float]] = {}
        self._first: dict[tuple[str, str], float] = {}
        self._flagged: set[tuple[str, str]] = set()
        self._plan_key: tuple | None = None
        self._plan: list = []
        self._stream = None
        self.events: list[MonitorEvent] = []
        self.seconds: list[float] = []
        self.records = 0
        self.steps = 0
        self._last: int | None = None

    # ---- the public loop -------------------------------------------------------------------------

    def step(self, batch: Any = None, *, step: int | None = None) -> bool:
        """Counts one optimizer step (or sets the count to `step`, e.g. a trainer's global step) and
        measures when due: at the first call, then every `every` steps (and at once when `step` went
        below the last measured step: a restarted run). `batch`: what the activation
        diagnostics run on this time (default `probe`). Returns whether it measured. Also hands on
        the finished measurements that were pending (CUDA) without waiting for the others."""
        self.steps = self.steps + 1 if step is None else int(step)
        # a step below the last measured one is a new run (or a resumed one): measure again
        due = self._last is None or self.steps < self._last or self.steps - self._last >= self.every
        if due:
            self.measure(batch, step=self.steps)  # polls
        else:
            self.poll()
        return due

    def measure(self, batch: Any = None, *, step: int | None = None) -> None:
        """Measures now, whatever the step count (`step` labels the record, default the count)."""
        t0 = time.perf_counter()
        step = self.steps if step is None else int(step)
        acts = self._measure_activations(batch) if self.activations is not None else {}
        layers = self._layers() if self.weights and self.weight_metrics else []
        pending = self._queue(step, layers, acts)
        self._last = step  # only once it is measured: a measurement that raised is still due
        pending.seconds = time.perf_counter() - t0
        self._pending.append(pending)
        self.records += 1
        self.poll()  # a CPU measurement is complete: hand it on now

    def poll(self) -> None:
        """Hands on the pending measurements whose values are ready, in order, without waiting."""
        while self._pending and (self._pending[0].event is None or self._pending[0].event.query()):
            self._finish(self._pending.pop(0))

    def _drain(self) -> None:
        """Waits for every pending measurement and hands it on (writers, events, history)."""
        while self._pending:
            p = self._pending.pop(0)
            if p.event is not None:
                p.event.synchronize()
            self._finish(p)

    def flush(self) -> None:
        """Waits for every pending measurement, hands it on, and flushes the writers."""
        self._drain()
        for w in self._writers:
            f = getattr(w, "flush", None)
            if f is not None:
                f()

    def close(self) -> None:
        """Flushes, then closes the writers that have a close()."""
        self.flush()
        for w in self._writers:
            c = getattr(w, "close", None)
            if c is not None:
                c()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def history(self):
        """step, layer, metric, value of every measurement so far (a pandas DataFrame; waits for the
        pending ones)."""
        import pandas as pd

        self._drain()
        if self._frame is None or len(self._frame) != len(self._rows):
            self._frame = pd.DataFrame(self._rows, columns=["step", "layer", "metric", "value"])
        return self._frame

    @property
    def latest(self) -> dict[str, dict[str, float]]:
        """The last measurement's values, {layer: {metric: value}} (waits for it)."""
        self._drain()
        return {k: dict(v) for k, v in self._latest.items()}

    def pivot(self, metric: str):
        """One metric as a table: a row per step, a column per layer (waits for pending values)."""
        h = self.history
        sub = h[h["metric"] == metric]
        if sub.empty:
            raise KeyError(f"no values of {metric!r} recorded; recorded: {sorted(set(h['metric']))}")
        return sub.pivot_table(index="step", columns="layer", values="value", sort=False)

    # ---- planning -----------------------------------------------------------------------------

    def _layers(self) -> list:
        """The scanner's layers of the model's parameters (re-planned when the parameters change)."""
        from ..scan.layers import name_filter, plan

        # a lazy module's weight has no shape before the first forward: measured once it has one
        owned = owned_parameters(self.model)
        params = [t for t in owned if not torch.nn.parameter.is_lazy(t[1])]
        key = tuple((n, id(p), tuple(p.shape), p.dtype, p.device) for n, p, _ in params)
        if key != self._plan_key:
            o = self._opts
            names = [n for n, _, _ in owned]
            if o.layers is not None and not any(map(name_filter(o.layers), names)):
                raise ValueError(f"layers={o.layers!r} matches no parameter of the model; its parameters: "
                                 f"{', '.join(names[:12])}{', ...' if len(names) > 12 else ''}")
            infos = tensor_infos(params, lambda p: (lambda: p.detach()))
            self._plan = [la for la in plan(infos, conv=o.conv, split_qkv=o.split_qkv, layers=o.layers,
                                            min_dim=o.min_dim, max_dim=o.max_dim) if la.skip is None]
            self._plan_key = key
        return self._plan

    # ---- weights -------------------------------------------------------------------------------

    def _queue(self, step: int, layers: list, acts: dict) -> _Pending:
        """Starts the spectra of `layers`' matrices: computed now on the CPU, queued on CUDA."""
        mats, owner = [], []
        for li, layer in enumerate(layers):
            ms = layer.cut(layer.info.load())
            mats.extend(ms)
            owner.extend([li] * len(ms))
        if not mats:
            return _Pending(step, layers, owner, acts, host=([], np.zeros(0, dtype=bool)))
        where = self.device or mats[0].device
        if where.type != "cuda":
            mats = [m.cpu() if m.device.type != "cpu" else m for m in mats]
            from ..scan.runner import refined_spectra

            if self.precision == "float32":
                vals = _float32_spectra(mats)
                refined = np.zeros(len(mats), dtype=bool)
                redo = [i for i, v in enumerate(vals) if _float32_unresolved(v)]
                if redo:
                    again, _ = refined_spectra([mats[i] for i in redo], [mats[i].dtype == torch.float64 for i in redo],
                                               self._opts.refine_rtol, None)
                    for i, v in zip(redo, again):
                        vals[i] = v
                        refined[i] = True
            else:
                vals, refined = refined_spectra(mats, [m.dtype == torch.float64 for m in mats], self._opts.refine_rtol,
                                                None)
            return _Pending(step, layers, owner, acts, host=(vals, refined))
        return self._queue_cuda(step, layers, mats, owner, acts, where)

    def _queue_cuda(self, step, layers, mats, owner, acts, where) -> _Pending:
        # One device copy per shape group on the training stream (the snapshot a later optimizer step
        # cannot race with), then spectra and a copy to pinned host memory on a side stream.
        mats = [m.to(where) for m in mats]
        main = torch.cuda.current_stream(where)
        if self._stream is None or self._stream.device != where:
            self._stream = torch.cuda.Stream(where)
        side = self._stream
        groups: dict[tuple, list[int]] = {}
        for i, m in enumerate(mats):
            groups.setdefault((tuple(m.shape), m.dtype == torch.float64), []).append(i)
        snaps = [(idx, torch.stack([mats[i] for i in idx])) for idx in groups.values()]
        side.wait_stream(main)
        out = []
        with torch.cuda.stream(side):
            for idx, snap in snaps:
                snap.record_stream(side)
                vals = _float32_spectra_torch(snap) if self.precision == "float32" else _cuda_svdvals(snap, exact=False)
                host = torch.empty(vals.shape, dtype=torch.float64, pin_memory=True)
                host.copy_(vals, non_blocking=True)
                out.append((idx, host, snap))
            event = torch.cuda.Event()
            event.record(side)
        return _Pending(step, layers, owner, acts, cuda=out, event=event)

    def _spectra_of(self, p: _Pending) -> tuple[list[np.ndarray], np.ndarray]:
        """(values per matrix, refined flags) of a finished measurement."""
        from ..scan.runner import needs_refine

        if p.host is not None:
            return list(p.host[0]), p.host[1]
        vals: list[np.ndarray] = [np.zeros(0)] * len(p.owner)
        refined = np.zeros(len(p.owner), dtype=bool)
        f32, rtol = self.precision == "float32", self._opts.refine_rtol
        for idx, host, snap in p.cuda:
            exact = snap.dtype == torch.float64
            h = host.numpy()
            for j, i in enumerate(idx):
                vals[i] = h[j]
            # float64 (float32 route), then the exact route, for the few matrices the faster route
            # cannot resolve
            redo = [j for j in range(len(idx)) if (_float32_unresolved(h[j]) if f32 else needs_refine(h[j], exact, rtol))]
            if not redo:
                continue
            again = list(_cuda_svdvals(snap[redo], exact=False)) if f32 else [None] * len(redo)
            ex = [r for r, s in enumerate(again) if s is None or needs_refine(s, exact, rtol)]
            if ex:
                for r, s in zip(ex, _cuda_svdvals(snap[[redo[r] for r in ex]], exact=True)):
                    again[r] = s
            for j, s in zip(redo, again):
                vals[idx[j]] = s
                refined[idx[j]] = True
        return vals, refined

    def _finish(self, p: _Pending) -> None:
        from ..scan.runner import layer_row

        values: dict[str, dict[str, float]] = {}
        spectra: dict[str, np.ndarray] = {}
        vals, refined = self._spectra_of(p)
        per: dict[int, list[int]] = {}
        for i, li in enumerate(p.owner):
            per.setdefault(li, []).append(i)
        for li, layer in enumerate(p.layers):
            idx = per.get(li, [])
            mats = [vals[i] for i in idx]
            row, _ = layer_row(layer, mats, refined[idx], None, self._opts)
            values[layer.name] = {m: _num(row.get(m)) for m in self.weight_metrics}
            if not all(np.isfinite(s).all() for s in mats):  # layer_row's failed row: NaN or Inf weights
                self._event(p.step, layer.name, "non_finite", math.nan, math.nan,
                            f"layer {layer.name!r}: {row.get('warning')}")
                continue
            # one matrix is already descending; pooled Conv2d slices are merged
            spectra[layer.name] = mats[0] if len(mats) == 1 else np.sort(np.concatenate(mats or [np.zeros(0)]))[::-1]
            self._check_weights(p.step, layer, values[layer.name])
        for name, v in p.activations.items():
            values[name] = v
            self._check_activations(p.step, name, v)
        record = MonitorRecord(p.step, values, spectra, p.seconds)
        self._rows.extend(record.rows())
        self._latest = values
        self.seconds.append(p.seconds)
        for w in self._writers:
            w(record)

    # ---- activations ---------------------------------------------------------------------------

    def _measure_activations(self, batch: Any) -> dict[str, dict[str, float]]:
        from .capture import capture

        if batch is not None:
            batches = [batch]
        elif self.probe is None:
            raise ValueError("activation diagnostics need a batch: pass probe= to SpectralMonitor or batch= to step()")
        else:
            p = self.probe
            many = isinstance(p, list) and bool(p) and all(isinstance(b, (tuple, list, dict)) for b in p)
            one = not many and (isinstance(p, (torch.Tensor, tuple, list, dict)) or not hasattr(p, "__iter__"))
            batches = [p] if one else p
        df = capture(self.model, batches, layers=None if self.activations is True else self.activations,
                     num_classes=self.num_classes, labels=None if self.num_classes else False,
                     tokens=self.tokens, spatial=self.spatial, forward=self.forward, progress=False)
        out = {}
        for row in df.to_dict("records"):
            out[row["layer"]] = {m: _num(row.get(m)) for m in self.activation_metrics if m in row}
        return out

    # ---- events --------------------------------------------------------------------------------

    def _check_weights(self, step: int, layer, v: dict[str, float]) -> None:
        if step < self.warmup:
            return
        name = layer.name
        a = v.get("alpha")
        if a is not None and math.isfinite(a) and layer.num_evals >= self.min_evals:
            lo, hi = self.alpha_range
            out = not lo <= a <= hi
            margin = 0.05 * (hi - lo)
            if (name, "alpha") not in self._first:  # a layer that starts outside (a random init is
                self._first[(name, "alpha")] = a    # typically above 6) is flagged once it has been
                self._flag(name, "alpha", out)       # inside and leaves
            else:
                edge = lo if a < lo else hi
                self._edge(step, name, "alpha", out, lo + margin <= a <= hi - margin, "alpha_out_of_range", a, edge,
                           f"layer {name!r}: alpha {a:.3g} left [{lo:g}, {hi:g}] at step {step}")
        rl = v.get("rank_loss")
        if rl is not None and math.isfinite(rl):
            first = self._first.setdefault((name, "rank_loss"), rl)
            thr = max(1.0, self.rank_loss_rise * layer.num_evals)
            self._edge(step, name, "rank_loss", rl - first >= thr, rl - first <= thr / 2, "rank_loss_rise", rl, first,
                       f"layer {name!r}: rank loss rose from {first:.0f} to {rl:.0f} of {layer.num_evals} "
                       f"singular values at step {step}")

    def _check_activations(self, step: int, name: str, v: dict[str, float]) -> None:
        r = v.get("rankme")
        if step < self.warmup or r is None or not math.isfinite(r):
            return
        first = self._first.setdefault((name, "rankme"), r)
        self._edge(step, name, "rankme", r < self.rankme_drop * first, r >= (1 + self.rankme_drop) / 2 * first,
                   "rankme_drop", r, first, f"layer {name!r}: RankMe fell from {first:.3g} to {r:.3g} at step {step}")

    def _edge(self, step: int, name: str, metric: str, bad: bool, clear: bool, kind: str, value: float,
              reference: float, message: str) -> None:
        """Fires `kind` when `bad` starts; re-armed only once `clear` (hysteresis: a metric hovering at
        its threshold fires once)."""
        key = (name, metric)
        if bad and key not in self._flagged:
            self._event(step, name, kind, value, reference, message)
            self._flagged.add(key)
        elif clear:
            self._flagged.discard(key)

    def _flag(self, name: str, metric: str, on: bool) -> None:
        if on:
            self._flagged.add((name, metric))
        else:
            self._flagged.discard((name, metric))

    def _event(self, step: int, layer: str, kind: str, value: float, reference: float, message: str) -> None:
        ev = MonitorEvent(step, layer, kind, float(value), float(reference), message)
        self.events.append(ev)
        if self.on_event is not None:
            self.on_event(ev)
        else:
            warnings.warn(message, SpectralMonitorWarning, stacklevel=_caller_level())


# ---- helpers -----------------------------------------------------------------------------------


def monitor_with_writer(model: torch.nn.Module, monitor_kwargs: dict, writer: Callable | None) -> SpectralMonitor:
    """A SpectralMonitor of `model` built from a callback's keyword arguments, with `writer` added to
    any `log=` they name (the framework callbacks' logging)."""
    kw = dict(monitor_kwargs)
    logs = _as_list(kw.pop("log", None))
    if writer is not None:
        logs.append(writer)
    return SpectralMonitor(model, log=logs, **kw)


_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _caller_level() -> int:
    """The warnings stacklevel of the first frame outside rankscope (the user's step() or flush())."""
    f, level = sys._getframe(1), 1
    while f is not None and os.path.abspath(f.f_code.co_filename).startswith(_PACKAGE):
        f, level = f.f_back, level + 1
    return level


def _num(v: Any) -> float:
    if v is None:
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _as_list(x: Any) -> list:
    if x is None:
        return []
    if isinstance(x, (list, tuple)):
        return list(x)
    return [x]


def _writer(w: Any) -> Callable[[MonitorRecord], None]:
    from .writers import TableWriter, TensorBoardWriter

    if isinstance(w, (str, bytes)) or hasattr(w, "__fspath__"):
        return TableWriter(w)
    if hasattr(w, "add_scalar") and hasattr(w, "add_histogram"):
        return TensorBoardWriter(w)
    if callable(w):
        return w
    raise TypeError(f"log must be a callable, a SummaryWriter, a .csv/.parquet path or a list of them, got "
                    f"{type(w).__name__}")


def _float32_unresolved(s: np.ndarray) -> bool:
    """Whether a float32-Gram spectrum (descending s) is too close to its noise floor for the fits."""
    return bool(len(s)) and s[0] > 0 and not (s[len(s) // 2] ** 2 >= FLOAT32_MEDIAN_FLOOR * s[0] ** 2)


def _gram(a: torch.Tensor) -> torch.Tensor:
    """The Gram matrix of the smaller side of each matrix of a (..., m, n) batch."""
    return a @ a.mT if a.shape[-2] <= a.shape[-1] else a.mT @ a


def _float32_spectra_torch(batch: torch.Tensor) -> torch.Tensor:
    """Singular values (descending, float64) of a (b, m, n) batch from float32 Gram eigenvalues;
    matrices holding NaN/Inf get NaN values (as the engine gives them with check_finite=False)."""
    a = batch.float()
    finite = torch.isfinite(a).flatten(1).all(dim=1)
    # no branch on `finite`: reading it would make the host wait for the GPU (the side stream)
    a = torch.where(finite[:, None, None], a, torch.zeros((), dtype=a.dtype, device=a.device))
    # float32 even when step() is called inside the training step's autocast region (its matmul
    # would run in bfloat16/float16)
    with torch.autocast(a.device.type, enabled=False):
        ev = torch.linalg.eigvalsh(_gram(a)).clamp_min_(0).flip(-1).double().sqrt_()
    return torch.where(finite[:, None], ev, torch.full((), math.nan, dtype=ev.dtype, device=ev.device))


def _float32_spectra(mats: Iterable[torch.Tensor]) -> list[np.ndarray]:
    mats = list(mats)
    out: list[np.ndarray] = [np.zeros(0)] * len(mats)
    groups: dict[tuple, list[int]] = {}
    for i, m in enumerate(mats):
        groups.setdefault(tuple(m.shape), []).append(i)
    for idx in groups.values():
        vals = _float32_spectra_torch(torch.stack([mats[i] for i in idx])).numpy()
        for j, i in enumerate(idx):
            out[i] = vals[j]
    return out


def _cuda_svdvals(batch: torch.Tensor, *, exact: bool) -> torch.Tensor:
    """float64 singular values of a CUDA batch on the current stream, by the engine's "auto" route
    (or its exact one): rankscope's CUDA backend when it is built, else torch's own (eigvalsh of the
    float64 Gram matrices, or svdvals in float64)."""
    from .._backend import cuda_available

    if cuda_available():
        from .._api import svdvals

        return svdvals(batch, method="exact" if exact else "auto", dtype="float64", check_finite=False)
    if exact or batch.dtype == torch.float64:
        return torch.linalg.svdvals(batch.double())
    return torch.linalg.eigvalsh(_gram(batch.double())).clamp_min_(0).flip(-1).sqrt_()


def owned_parameters(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter, str]]:
    """Every parameter of `model` as (name, tensor, owning module's class name), in module order."""
    return [(f"{prefix}.{pname}" if prefix else pname, p, type(mod).__name__)
            for prefix, mod in model.named_modules() for pname, p in mod._parameters.items() if p is not None]


def tensor_infos(params: list[tuple[str, torch.Tensor, str]], load: Callable[[torch.Tensor], Callable[[], Any]]):
    """The scanner's TensorInfo of each distinct parameter of `params` (a tied weight once, under its
    first name); `load(p)` is its loader."""
    from ..scan.sources import TensorInfo, _torch_dtype_name

    seen: set[int] = set()
    infos = []
    for name, p, owner in params:
        if id(p) not in seen:
            seen.add(id(p))
            infos.append(TensorInfo(name, tuple(p.shape), _torch_dtype_name(p), load(p), owner))
    return infos
