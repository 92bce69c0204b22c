"""The model-zoo scanner: which layers of a model, a checkpoint or a folder of checkpoints collapsed.

``rankscope.scan(source, ...)`` (this module is callable: it is :func:`scan`) reads every weight
matrix, computes its spectrum on the engine in batches by shape, and returns a :class:`ScanReport`
with WeightWatcher-compatible columns, rankscope's rank metrics and collapse flags. The CLI is
``rankscope scan PATH...``. Parts: :mod:`.sources` (readers), :mod:`.layers` (tensor → matrices),
:mod:`.runner` (batched compute), :mod:`.fits` (power-law and MP fits), :mod:`.report` (tables and
files), :mod:`.plots` (figures). The array API of ``rankscope`` never imports this package.
"""

from __future__ import annotations

import os
import sys
import time
import types
from typing import Any

from .report import Resume, ScanReport, layer_frame, report_format
from .runner import ScanOptions, run
from .sources import ModelSource, SourceError, TensorInfo, open_sources

__all__ = ["ModelSource", "ScanOptions", "ScanReport", "SourceError", "TensorInfo", "open_sources", "scan"]


def scan(source: Any, *, base: Any = None, device: str = "auto", conv: str = "slices", conv2d_norm: bool = True,
         layers: str | list[str] | None = None, min_dim: int | None = None, max_dim: int | None = None,
         split_qkv: bool = False, rank_policy: str = "auto", estimator: str = "ww", fix_fingers: str | None = None,
         xmin_max: float | None = None, mp_fit: bool = False, randomize: bool = False,
         collapse_log10: float = -8.0, collapse_rank_frac: float = 0.05, alpha_range: tuple[float, float] = (2.0, 6.0), out: str | None = None,
         resume: bool = True, progress: bool | None = None, keep_evals: bool = True, seed: int | None = None,
         name: str | None = None, chunk_mb: float = 256.0, window_mb: float = 1024.0,
         refine_rtol: float = 1e-6, ray: bool | str | None = None, max_retries: int | None = None,
         num_cpus: float | None = None, num_gpus: float | None = None) -> ScanReport:
    """Scans the weight matrices of one model or many.

    Parameters
    ----------
    source : nn.Module, state_dict, path, or a list of these
        A torch ``nn.Module``; a state_dict (names → torch tensors or numpy arrays); a ``.safetensors``
        file (memory-mapped, bfloat16 included, no torch needed); a sharded checkpoint folder with its
        ``*.index.json``; a Hugging Face model folder; ``.pt``/``.pth``/``.bin``/``.ckpt``
        (``torch.load(weights_only=True, mmap=True)``); ``.npz``; ``.gguf`` (the ``gguf`` package,
        dequantised per tensor); ``.onnx`` initializers (the ``onnx`` package); or a folder holding
        many of these (a zoo: one model per file or model folder). A file that cannot be read becomes
        a row with status "error" and the scan goes on.
    base : same kinds as `source`, optional
        Delta scan: every tensor is replaced by W − W_base for the tensors both share with the same
        shape (fine-tune vs base, as WeightWatcher's ``base_model``); the others are skipped.
    device : "auto", "cpu", "cuda" or "cuda:N"
        Where spectra are computed; "auto" (default) picks a GPU when the CUDA backend sees one.
        Parameters of a model on a GPU are computed on their own device.
    conv : "slices" or "flatten"
        Conv2d as kh·kw slices of out × in with their eigenvalues pooled (WeightWatcher's way,
        default), or one out × in·kh·kw matrix.
    conv2d_norm : bool
        Scale pooled Conv2d eigenvalues by ½ as WeightWatcher does (its ``conv2d_norm``; default True).
        Affects the spectrum-based columns (alpha, xmin, log norms), not sv_min/sv_max or the ranks,
        which are those of the stored slices.
    layers : str or list of str, optional
        Keep tensors whose names match: a regular expression searched in the name, or a glob.
    min_dim, max_dim : int, optional
        Skip matrices whose smaller side is below `min_dim` or whose larger side is above `max_dim`
        (reported as skipped). Nothing else is size-limited: embeddings and LM heads are scanned.
    split_qkv : bool
        Split fused query/key/value weights (one side 3× the other) into three rows.
    rank_policy : "auto", "numpy", "data", "nr" or "ww"
        Rank tolerance (METRICS.md §1). "auto" follows the stored dtype; "ww" reproduces
        WeightWatcher's matrix_rank, rank_loss and entropy exactly (float64 eps whatever the dtype).
    estimator : "ww", "median", "xmin_peak" or "xmin_peak_intended"
        The power-law fit: WeightWatcher's xmin scan (default), or TempBalance's training-time
        estimators (median xmin Hill estimate; the fix-finger histogram peak as its code does it, or
        as evidently intended). `fix_fingers="xmin_peak"` applies WeightWatcher's own fix to "ww";
        `xmin_max` is its upper end of the xmin range.
    mp_fit, randomize : bool
        WeightWatcher's Marchenko–Pastur fit (sigma_mp, num_spikes, mp_softrank, bulk_min/max), and
        the element-shuffled ESD (rand_distance, ww_softrank, num_traps, ...).
    collapse_log10 : float
        `sv_collapsed` when log10(s_min / s_max) < this (default −8, the literature's rank-collapse line).
    collapse_rank_frac : float
        `rank_collapsed` when rank_loss exceeds this fraction of the smaller side (default 0.05; 0:
        any rank loss). Not 0 by default: a random square bfloat16 matrix already has ~1 % of its
        singular values below bfloat16's eps·s₁ (the quarter-circle law), so its rank loss is ~1 %.
    alpha_range : (low, high)
        `alpha_out_of_range` when a fitted alpha lies outside it (default (2, 6)).
    out : path, optional
        Write the report there (.csv, .parquet or .json) after every window of models, so a killed
        scan keeps what finished. With `resume` (default) and an existing report at `out`, files it
        already holds (same path, size and modification time) are not scanned again and its rows are
        kept.
    progress : bool, optional
        A tqdm bar over matrices (default: only when stderr is a terminal).
    keep_evals : bool
        Keep each layer's eigenvalues in ``report.evals`` for plots (default True).
    seed : int, optional
        Seed of the shuffles of `randomize`.
    name : str, optional
        Model name for an in-memory source (default "model").
    chunk_mb, window_mb : float
        Memory bounds: matrix data per engine call (two chunks are in memory at once) and per window
        of models grouped together. Peak extra memory is about 2·chunk_mb plus the largest tensor
        widened to float32 plus the engine's per-thread workspaces.
    refine_rtol : float
        Matrices whose smallest singular value is below refine_rtol · s₁ after the float64 Gram
        route are recomputed by the exact route (float64 SVD), so that the small end is that of the
        stored weights (default 1e-6: above it the Gram route's relative error is below 1e-4).
    ray : True or str, optional
        Scan on Ray (``pip install "rankscope[ray]"``), one task per model, each running this scan on
        its one path; the report is the same, rows and order (with `randomize`, the shuffled-ESD
        columns are those of scanning each model alone with `seed`). True: Ray's default connection (the
        ``RAY_ADDRESS`` cluster, else one started with ``ray start`` on this machine, else a new local
        instance, stopped at the end); or an address: "auto", "host:port", "ray://host:port". A Ray
        connection already made with ``ray.init`` is used as it is (ray=True). Sources must be paths
        that every node can read at the same place; `base` too. With `out`, the report is rewritten
        as tasks finish. See :mod:`rankscope.scan.distributed`.
    max_retries : int, optional
        With `ray`: how many times a failed task (an exception, a dead worker or node) is retried
        before its model becomes an error row (default 3).
    num_cpus, num_gpus : float, optional
        With `ray`: the CPUs (default 1, also the task's engine threads) and GPUs each task asks Ray
        for (default 1 when `device` asks for CUDA, or is "auto" and the cluster has GPUs; else 0).

    Returns
    -------
    ScanReport
        ``.layers`` (DataFrame, one row per layer), ``.models``, ``.errors``, ``.evals``, and
        ``save``/``to_csv``/``to_parquet``/``to_json``.
    """
    opts = ScanOptions(device=device, conv=conv, conv2d_norm=conv2d_norm, layers=layers, min_dim=min_dim,
                       max_dim=max_dim, split_qkv=split_qkv, rank_policy=rank_policy, estimator=estimator,
                       fix_fingers=fix_fingers, xmin_max=xmin_max, mp_fit=mp_fit, randomize=randomize,
                       collapse_log10=collapse_log10, collapse_rank_frac=collapse_rank_frac, alpha_range=tuple(alpha_range), refine_rtol=refine_rtol,
                       chunk_mb=chunk_mb, window_mb=window_mb, keep_evals=keep_evals, seed=seed)
    opts.validate()
    if ray is None or ray is False:
        given = [k for k, v in (("max_retries", max_retries), ("num_cpus", num_cpus), ("num_gpus", num_gpus))
                 if v is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for scans on Ray (ray=True or an address)")
    if out is not None:  # a bad report path or a missing writer fails now, not after the first window
        report_format(os.fspath(out), "out").require()
    if ray is not None and ray is not False:
        from .distributed import scan_on_ray  # imports ray; the single-machine scan never does

        return scan_on_ray(source, ray, opts=opts, options=_options(opts, base), base=base, out=out, resume=resume,
                           progress=progress, name=name, max_retries=max_retries, num_cpus=num_cpus,
                           num_gpus=num_gpus)
    t0 = time.perf_counter()
    resumed = Resume(out, resume)
    base_tensors = _base_tensors(base) if base is not None else None

    frames: list = []
    evals: dict = {}
    options = _options(opts, base)

    def on_window(rows: list[dict], ev: dict) -> None:
        frames.append(layer_frame(rows))
        evals.update(ev)
        resumed.save(frames, options)

    def models():
        for src in open_sources(source, name=name):
            # a SourceError has no size or mtime: never skipped
            as_name = resumed.admit(src.name, getattr(src, "path", None), getattr(src, "size", None),
                                    getattr(src, "mtime", None))
            if as_name is None:
                src.close()
                continue
            src.name = as_name
            yield src

    try:
        run(models(), opts, base_models=base_tensors, on_window=on_window, progress=progress)
    finally:
        if base_tensors is not None:
            base_tensors.close()
    return resumed.report(frames, evals=evals, options=options, seconds=time.perf_counter() - t0)


class _BaseTensors(dict):
    """name → TensorInfo of the base model of a delta scan (kept open until the scan ends)."""

    def __init__(self, src: ModelSource):
        super().__init__((t.name, t) for t in src.tensors())
        self.source = src

    def close(self) -> None:
        self.source.close()


def _base_tensors(base: Any) -> _BaseTensors:
    items = list(open_sources(base, name="base"))
    if len(items) != 1:
        for it in items:
            if hasattr(it, "close"):
                it.close()
        raise ValueError(f"base must be one model, got {len(items)}")
    if isinstance(items[0], SourceError):
        raise ValueError(f"base model cannot be read: {items[0].error}")
    return _BaseTensors(items[0])


def _options(opts: ScanOptions, base: Any) -> dict:
    d = {k: v for k, v in vars(opts).items()}
    d["alpha_range"] = list(opts.alpha_range)
    d["base"] = None if base is None else (os.fspath(base) if isinstance(base, (str, os.PathLike)) else type(base).__name__)
    return d


class _CallableModule(types.ModuleType):
    """`rankscope.scan` is this package; calling it calls :func:`scan`."""

    def __call__(self, *args: Any, **kwargs: Any) -> ScanReport:
        return scan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
