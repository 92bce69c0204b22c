"""The scan itself: plan every model's layers, compute their spectra in batches, assemble the rows.

A run is plan → batched compute → assemble, never one layer at a time:

1. Models are taken in windows (consecutive models whose matrices hold up to ``window_mb``); the
   layer policy turns every tensor of a window into layers (nothing is read yet).
2. The window's tensors are ordered by matrix shape and cut into chunks of at most ``chunk_mb`` of
   matrix data. A reader thread loads chunk i + 1 (memory-mapped reads, bfloat16 widening, GGUF
   dequantisation, base-model deltas) while the engine computes chunk i with the GIL released, so
   reading, converting and computing overlap; at most two chunks are in memory at once.
3. The engine gets each chunk as one list of matrices (views of the loaded tensors, no copies), in
   float64 output. Matrices whose smallest singular value falls where the float64 Gram route is
   inaccurate (below ``refine_rtol`` · s₁, METRICS.md §0) are recomputed at once by the exact route,
   so sv_min, log10_sv_min, condition_number and the ranks are those of a float64 SVD of the stored
   weights.
4. Rows are assembled per layer (Conv2d slices pooled) with the metrics of rankscope.metrics and the
   WeightWatcher-compatible fits of rankscope.scan.fits.
"""

from __future__ import annotations

import concurrent.futures
import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import get_num_threads
from .. import metrics as _metrics
from .._api import svdvals
from .._arrays import is_real
from . import fits
from .layers import FLOAT_DTYPES, Layer, plan

ESTIMATORS = ("ww", "median", "xmin_peak", "xmin_peak_intended")


@dataclass
class ScanOptions:
    """Every option of a scan (the keyword arguments of rankscope.scan; documented there)."""

    device: str = "auto"
    conv: str = "slices"
    conv2d_norm: bool = True
    layers: Any = None
    min_dim: int | None = None
    max_dim: int | None = None
    split_qkv: bool = False
    rank_policy: str = "auto"
    estimator: str = "ww"
    fix_fingers: str | None = None
    xmin_max: float | None = None
    mp_fit: bool = False
    randomize: bool = False
    collapse_log10: float = -8.0
    collapse_rank_frac: float = 0.05
    alpha_range: tuple[float, float] = (2.0, 6.0)
    refine_rtol: float = 1e-6
    chunk_mb: float = 256.0
    window_mb: float = 1024.0
    keep_evals: bool = True
    seed: int | None = None

    def validate(self) -> None:
        if self.conv not in ("slices", "flatten"):
            raise ValueError(f"conv must be 'slices' or 'flatten', got {self.conv!r}")
        if self.rank_policy not in _metrics.POLICIES:
            raise ValueError(f"rank_policy must be one of {_metrics.POLICIES}, got {self.rank_policy!r}")
        if self.estimator not in ESTIMATORS:
            raise ValueError(f"estimator must be one of {ESTIMATORS}, got {self.estimator!r}")
        if self.fix_fingers not in (None, False, "xmin_peak"):
            raise ValueError(f"fix_fingers must be None or 'xmin_peak', got {self.fix_fingers!r}")
        if self.fix_fingers and self.estimator != "ww":
            raise ValueError("fix_fingers applies to estimator='ww' (WeightWatcher's xmin scan) only")
        if not (isinstance(self.collapse_rank_frac, (int, float)) and 0 <= self.collapse_rank_frac < 1):
            raise ValueError(f"collapse_rank_frac must be in [0, 1), got {self.collapse_rank_frac!r}")
        lo, hi = self.alpha_range
        if not lo < hi:
            raise ValueError(f"alpha_range must be (low, high) with low < high, got {self.alpha_range!r}")
        for name in ("chunk_mb", "window_mb", "refine_rtol"):
            v = getattr(self, name)
            if not (is_real(v) and 0 < v < math.inf):
                raise ValueError(f"{name} must be a positive finite number, got {v!r}")
        if not (is_real(self.collapse_log10) and math.isfinite(self.collapse_log10)):
            raise ValueError(f"collapse_log10 must be a finite number, got {self.collapse_log10!r}")
        if self.xmin_max is not None and not (is_real(self.xmin_max) and 0 < self.xmin_max < math.inf):
            raise ValueError(f"xmin_max must be None or a positive finite number, got {self.xmin_max!r}")
        for name in ("min_dim", "max_dim"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))
                                      and v >= 0):
                raise ValueError(f"{name} must be a non-negative int or None, got {v!r}")
            if v is not None:
                setattr(self, name, int(v))  # numpy integers (np.int64 from a config) as plain ints


def resolve_device(device: Any) -> int | None:
    """The CUDA device index to compute host matrices on, or None for the CPU ("auto": a GPU if the
    CUDA backend was built and sees one)."""
    from .._arrays import parse_device
    from .._backend import cuda_available

    if device in (None, "auto"):
        return parse_device("cuda") if cuda_available() else None
    return parse_device(device)


def stored_dtype(dtype: str) -> str:
    """The dtype whose eps sets rank tolerances: the stored float dtype; GGUF quantised tensors are
    ranked with bfloat16's eps (2⁻⁷, the step of Q8_0; coarser quants are noisier still)."""
    return dtype if dtype in FLOAT_DTYPES else "bfloat16"


# ---- work items --------------------------------------------------------------------------------


@dataclass
class _Tensor:
    """One tensor to read, with the layers cut from it."""

    model: int  # index into the window's models
    info: Any
    layers: list[Layer]
    base: Any = None  # TensorInfo of the base model (delta scans)

    @property
    def n_matrices(self) -> int:
        return sum(layer.count for layer in self.layers)

    @property
    def nbytes(self) -> int:
        r, c = self.layers[0].matrix_shape
        wide = 8 if self.info.dtype == "float64" else 4
        return self.n_matrices * r * c * wide

    @property
    def key(self) -> tuple:
        return (self.layers[0].matrix_shape, self.info.dtype == "float64")


def _host(m: Any) -> np.ndarray:
    """A numpy array of a matrix (torch tensors moved to the host, narrow floats widened)."""
    if isinstance(m, np.ndarray):
        return m
    t = m.detach()
    if t.dtype.is_floating_point and t.element_size() < 4:
        t = t.float()
    return t.cpu().numpy()


def _delta(a: Any, b: Any) -> np.ndarray:
    """a − b for a delta scan, computed in float64 and kept in float32 unless an input is float64."""
    ha = _host(a)
    d = ha.astype(np.float64) - _host(b).astype(np.float64)
    return d if ha.dtype == np.float64 else d.astype(np.float32)


def _load(t: _Tensor) -> list[Any]:
    """The tensor's matrices (views), or raises what reading it raised."""
    arr = t.info.load()  # torch tensors need no detach: svdvals reads values only
    if t.info.dtype.startswith("float8") and not isinstance(arr, np.ndarray):
        arr = arr.float()  # torch float8: the engine reads float16 and wider
    if t.base is not None:
        arr = _delta(arr, t.base.load())
    return [m for layer in t.layers for m in layer.cut(arr)]


def _chunks(tensors: list[_Tensor], budget: int) -> list[list[_Tensor]]:
    """Tensors ordered by matrix shape (first-seen order), cut into chunks of at most `budget` bytes.

    A chunk runs on across shapes: one engine call over many shapes balances the threads better
    than one per shape (ResNet-18: 0.20 s vs 0.25 s of engine time), and a matrix's values do not
    depend on what it is batched with."""
    groups: dict[tuple, list[_Tensor]] = {}
    for t in tensors:
        groups.setdefault(t.key, []).append(t)
    out, cur, size = [], [], 0
    for t in (t for group in groups.values() for t in group):
        if cur and size + t.nbytes > budget:
            out.append(cur)
            cur, size = [], 0
        cur.append(t)
        size += t.nbytes
    if cur:
        out.append(cur)
    return out


# ---- the run -----------------------------------------------------------------------------------


@dataclass
class _Loaded:
    tensors: list[_Tensor]
    mats: list[list[Any] | BaseException]  # per tensor: its matrices, or the error reading it


def _read_chunk(chunk: list[_Tensor]) -> _Loaded:
    mats: list[list[Any] | BaseException] = []
    for t in chunk:
        try:
            mats.append(_load(t))
        except Exception as e:  # noqa: BLE001 - one unreadable tensor becomes an error row
            mats.append(e)
    return _Loaded(chunk, mats)


def _spectra(mats: list[Any], method: str, device: int | None) -> list[np.ndarray]:
    if not mats:
        return []
    # device matrices (torch CUDA tensors) are computed on their own device whatever `device` says
    dev = f"cuda:{device}" if device is not None else None
    vals = svdvals(mats, method=method, dtype="float64", check_finite=False, device=dev)
    return [v if isinstance(v, np.ndarray) else v.cpu().numpy() for v in vals]


def needs_refine(s: np.ndarray, exact: bool, refine_rtol: float) -> bool:
    """Whether a descending Gram-route spectrum must be recomputed by the exact route: data not
    already on it (`exact`: float64) whose s_min < refine_rtol · s₁."""
    return not exact and bool(len(s)) and s[0] > 0 and not (s[-1] >= refine_rtol * s[0])


def refined_spectra(mats: list[Any], exact: list[bool], refine_rtol: float,
                    device: int | None) -> tuple[list[np.ndarray], np.ndarray]:
    """float64 singular values of `mats` (host numpy), and which were refined: matrices not already on
    the exact route (`exact[i]`: float64 data) whose s_min < refine_rtol · s₁ after the float64 Gram
    route are recomputed by the exact route, so the small end is that of a float64 SVD."""
    spectra = _spectra(mats, "auto", device)
    refined = np.zeros(len(mats), dtype=bool)
    redo = [i for i, s in enumerate(spectra) if needs_refine(s, exact[i], refine_rtol)]
    if redo:
        for i, s in zip(redo, _spectra([mats[i] for i in redo], "exact", device)):
            spectra[i] = s
            refined[i] = True
    return spectra, refined


def _compute(loaded: _Loaded, opts: ScanOptions, device: int | None, rng: np.random.Generator):
    """Spectra (refined where needed) and randomised spectra of every matrix of a loaded chunk.

    Returns per tensor either (spectra, refined flags, random spectra per layer) or the exception."""
    flat, owner = [], []
    for ti, ms in enumerate(loaded.mats):
        if isinstance(ms, BaseException):
            continue
        flat.extend(ms)
        owner.extend([ti] * len(ms))
    spectra, refined = refined_spectra(flat, [loaded.tensors[o].info.dtype == "float64" for o in owner],
                                       opts.refine_rtol, device)
    rand = _random_spectra(loaded, opts, device, rng) if opts.randomize else {}
    out: list[Any] = []
    pos = 0
    for ti, ms in enumerate(loaded.mats):
        if isinstance(ms, BaseException):
            out.append(ms)
            continue
        n = len(ms)
        out.append((spectra[pos:pos + n], refined[pos:pos + n], rand.get(ti)))
        pos += n
    return out


def _compute_each(loaded: _Loaded, opts: ScanOptions, device: int | None, rng: np.random.Generator) -> list:
    """_compute one tensor at a time (after the chunk as a whole failed): the error stays with the
    tensors that raise it."""
    out: list[Any] = []
    for t, ms in zip(loaded.tensors, loaded.mats):
        try:
            out.extend(_compute(_Loaded([t], [ms]), opts, device, rng))
        except Exception as e:  # noqa: BLE001 - this tensor's layers become error rows
            out.append(e)
    return out


def _random_spectra(loaded: _Loaded, opts: ScanOptions, device: int | None,
                    rng: np.random.Generator) -> dict[int, list[tuple[list[np.ndarray], list[np.ndarray]]]]:
    """Per tensor, per layer: (spectra of the replicas for the MP fit, spectra of one more shuffle for
    the distance), drawn as WeightWatcher's randomize=True draws them (fits.random_replicas: 5
    replicas below 100 eigenvalues). All shuffled matrices of the chunk go to the engine at once."""
    jobs, plan = [], []
    for ti, ms in enumerate(loaded.mats):
        if isinstance(ms, BaseException):
            continue
        pos = 0
        for li, layer in enumerate(loaded.tensors[ti].layers):
            host = [_host(m) for m in ms[pos:pos + layer.count]]
            pos += layer.count
            replicas = fits.random_replicas(layer.num_evals)
            plan.append((ti, li, len(jobs), replicas, len(host)))
            jobs.extend(h for _ in range(replicas + 1) for h in host)
    # One child generator per shuffle (deterministic for a seed whatever the scheduling); numpy's
    # permutation releases the GIL, so the shuffles (random access, ~15 ns per element: most of
    # randomize's own cost) run on the engine's threads in parallel.
    gens = rng.spawn(len(jobs))
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, get_num_threads())) as pool:
        shuffled = list(pool.map(fits.shuffled, jobs, gens))
    vals = _spectra(shuffled, "auto", device)
    out: dict[int, list] = {}
    for ti, li, start, replicas, k in plan:
        v = vals[start:start + (replicas + 1) * k]
        out.setdefault(ti, []).append((v[:replicas * k], v[replicas * k:]))
    return out


def run(models: Iterator, opts: ScanOptions, *, base_models: dict | None = None,
        on_window: Callable[[list[dict], dict], None] | None = None, progress: bool | None = None) -> None:
    """Scans `models` (ModelSource/SourceError items), calling on_window(rows, evals) after each window.

    `base_models`: tensor name → TensorInfo of the base model for delta scans (tensors it lacks, or
    whose shape differs, are skipped with the reason).
    """
    from tqdm.auto import tqdm

    opts.validate()
    device = resolve_device(opts.device)
    rng = np.random.default_rng(opts.seed)
    bar = tqdm(total=0, unit="matrix", disable=(not progress) if progress is not None else None, dynamic_ncols=True,
               desc="scan")
    t0 = time.perf_counter()
    done_bytes = 0
    try:
        window: list[tuple[Any, list[Layer]]] = []
        window_bytes = 0
        for src in _with_errors(models):
            if isinstance(src, dict):  # an error row for a whole file
                if window:
                    done_bytes = _run_window(window, opts, device, rng, base_models, on_window, bar, t0, done_bytes)
                    window, window_bytes = [], 0
                if on_window:
                    on_window([src], {})
                continue
            try:
                layers = plan(src.tensors(), conv=opts.conv, split_qkv=opts.split_qkv, layers=opts.layers,
                              min_dim=opts.min_dim, max_dim=opts.max_dim)
            except Exception as e:  # noqa: BLE001 - a model whose tensor list cannot be read
                if on_window:
                    on_window([_error_row(src, "", f"cannot list tensors: {type(e).__name__}: {e}")], {})
                src.close()
                continue
            if not layers:  # nothing to scan: the model still gets its row (after the earlier models')
                if window:
                    done_bytes = _run_window(window, opts, device, rng, base_models, on_window, bar, t0, done_bytes)
                    window, window_bytes = [], 0
                if on_window:
                    row = _error_row(src, "", "the model holds no tensors" if opts.layers is None
                                     else f"no tensor matches layers={opts.layers!r}")
                    on_window([row if opts.layers is None else {**row, "status": "skipped"}], {})
                src.close()
                continue
            size = sum(layer.count * layer.matrix_shape[0] * layer.matrix_shape[1] * 4 for layer in layers)
            if window and window_bytes + size > opts.window_mb * 2**20:
                done_bytes = _run_window(window, opts, device, rng, base_models, on_window, bar, t0, done_bytes)
                window, window_bytes = [], 0
            window.append((src, layers))
            window_bytes += size
        if window:
            _run_window(window, opts, device, rng, base_models, on_window, bar, t0, done_bytes)
    finally:
        bar.close()


def _with_errors(models: Iterator) -> Iterator:
    """ModelSources, and a row dict for each SourceError."""
    for src in models:
        if hasattr(src, "tensors"):
            yield src
        else:
            yield _error_row(src, "", src.error)


def _run_window(window, opts: ScanOptions, device, rng, base_models, on_window, bar, t0, done_bytes) -> int:
    tensors: list[_Tensor] = []
    evals: dict = {}
    order: list[tuple[int, Layer]] = []  # (model index, layer), report order
    for mi, (src, layers) in enumerate(window):
        by_tensor: dict[str, list[Layer]] = {}  # the layers of one tensor share its TensorInfo
        for layer in layers:
            order.append((mi, layer))
            if layer.skip is None:
                by_tensor.setdefault(layer.tensor, []).append(layer)
        for name, ls in by_tensor.items():
            info = ls[0].info
            base = None
            if base_models is not None:
                b = base_models.get(name)
                reason = ("not in the base model" if b is None else
                          f"shape {tuple(b.shape)} in the base model" if tuple(b.shape) != tuple(info.shape)
                          else None)
                if reason:
                    for layer in ls:
                        layer.skip, layer.count = f"delta scan: {reason}", 0
                    continue
                base = b
            tensors.append(_Tensor(mi, info, ls, base))
    bar.total += sum(t.n_matrices for t in tensors)
    bar.refresh()
    chunks = _chunks(tensors, int(opts.chunk_mb * 2**20))
    results: dict[int, Any] = {}  # id(layer) -> (spectra, refined, rand) or exception
    with concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="rankscope-read") as pool:
        pending = pool.submit(_read_chunk, chunks[0]) if chunks else None
        for ci in range(len(chunks)):
            loaded = pending.result()
            pending = pool.submit(_read_chunk, chunks[ci + 1]) if ci + 1 < len(chunks) else None
            try:
                per_tensor = _compute(loaded, opts, device, rng)
            except Exception:  # noqa: BLE001 - a tensor the engine refuses: find it, the others go on
                per_tensor = _compute_each(loaded, opts, device, rng)
            for t, res in zip(loaded.tensors, per_tensor):
                if isinstance(res, BaseException):
                    for layer in t.layers:
                        results[id(layer)] = res
                    continue
                spectra, refined, rand = res
                pos = 0
                for li, layer in enumerate(t.layers):
                    n = layer.count
                    results[id(layer)] = (spectra[pos:pos + n], refined[pos:pos + n], rand[li] if rand else None)
                    pos += n
            del loaded
            done_bytes += sum(t.nbytes for t in chunks[ci])
            bar.update(sum(t.n_matrices for t in chunks[ci]))
            elapsed = max(time.perf_counter() - t0, 1e-9)
            bar.set_postfix_str(f"{done_bytes / 2**20 / elapsed:.0f} MB/s", refresh=False)
    rows = []
    layer_ids = [0] * len(window)
    for mi, layer in order:
        src = window[mi][0]
        if layer.skip is not None:
            rows.append(_skip_row(src, layer))
            continue
        res = results.get(id(layer))
        if res is None or isinstance(res, BaseException):
            msg = "not computed" if res is None else f"{type(res).__name__}: {res}"
            rows.append(_error_row(src, layer.tensor, msg, layer))
            continue
        try:
            row, ev = _layer_row(src, layer, layer_ids[mi], *res, opts)
        except Exception as e:  # noqa: BLE001 - a fit or metric that breaks on one layer: its row says so
            rows.append(_error_row(src, layer.tensor, f"{type(e).__name__}: {e}", layer))
            continue
        layer_ids[mi] += 1
        rows.append(row)
        if opts.keep_evals and ev is not None:
            evals[(row["model"], row["name"])] = ev
    for src, _ in window:
        src.close()
    if on_window:
        on_window(rows, evals)
    return done_bytes


# ---- rows --------------------------------------------------------------------------------------


def _file_columns(src) -> dict:
    return {"model": src.name, "path": src.path or "", "file_size": src.size, "file_mtime": src.mtime}


def _error_row(src, tensor: str, message: str, layer: Layer | None = None) -> dict:
    row = {"model": src.name, "name": layer.name if layer else tensor, "tensor": tensor, "status": "error",
           "warning": message, "path": getattr(src, "path", None) or "",
           "file_size": getattr(src, "size", None), "file_mtime": getattr(src, "mtime", None)}
    if layer is not None:
        row.update(type=layer.kind, dtype=layer.dtype, shape="x".join(map(str, layer.shape)))
    return row


def _skip_row(src, layer: Layer) -> dict:
    return {**_file_columns(src), "name": layer.name, "tensor": layer.tensor, "type": layer.kind,
            "dtype": layer.dtype, "shape": "x".join(map(str, layer.shape)), "status": "skipped",
            "warning": layer.skip}


def _fit(evals: np.ndarray, opts: ScanOptions) -> dict:
    if opts.estimator == "ww":
        return fits.fit_powerlaw(evals, fix_fingers=opts.fix_fingers or None, xmin_max=opts.xmin_max)
    # the histogram estimators take log10 λ: zeros are dropped (the reference's torch.histc fails on them)
    hist = opts.estimator != "median"
    if hist and not np.any(evals > fits.EVALS_THRESH) and not np.min(evals) > 0:
        # nothing above 1e-5 to keep, and log10 0 among the rest: the reference cannot fit it either
        r = {"alpha": math.nan, "D": math.nan, "xmin": math.nan, "num_pl_spikes": 0}
    else:
        r = fits.fit_tempbalance(evals, estimator=opts.estimator, filter_zeros=hist)
    ok = r.get("alpha") is not None and np.isfinite(r["alpha"])
    return {**r, "xmax": float(np.max(evals)) if len(evals) else np.nan, "status": "success" if ok else "failed",
            "warning": "" if ok else "the power-law fit failed"}


def _layer_row(src, layer: Layer, layer_id: int, spectra: list[np.ndarray], refined: np.ndarray, rand,
               opts: ScanOptions) -> tuple[dict, np.ndarray | None]:
    row, ev = layer_row(layer, spectra, refined, rand, opts, layer_id=layer_id)
    return {**_file_columns(src), **row}, ev


def layer_row(layer: Layer, spectra: list[np.ndarray], refined: np.ndarray, rand, opts: ScanOptions, *,
              layer_id: int = 0) -> tuple[dict, np.ndarray | None]:
    """One layer's report columns (no file columns) from its matrices' float64 singular values, and its
    eigenvalues (pooled, conv2d_norm applied; None when the layer failed). `rand`: the randomised
    spectra of `_random_spectra`, or None."""
    row = {"name": layer.name, "layer_id": layer_id, "tensor": layer.tensor,
           "part": layer.part, "type": layer.kind, "dtype": layer.dtype, "shape": "x".join(map(str, layer.shape)),
           "N": layer.N, "M": layer.M, "Q": layer.N / layer.M, "rf": layer.rf, "refined": bool(refined.any())}
    stored = stored_dtype(layer.dtype)
    r, c = layer.matrix_shape
    sp = _metrics.from_values(list(spectra), shape=[(r, c)] * len(spectra))
    sp.dtypes = [stored] * len(spectra)
    sp.sorted = True
    names = ("matrix_rank", "rank_loss", "sv_min", "sv_max")
    tab = _metrics.evaluate(sp, names, policy=opts.rank_policy)
    col = {k: np.asarray([np.asarray(v) for v in tab[k]]) for k in names}
    warning = []
    if not all(np.all(np.isfinite(s)) for s in spectra):
        row.update(status="failed", warning="non-finite weights (NaN or Inf) or the solver failed")
        return row, None
    s_all = np.concatenate(spectra)
    scale = 0.5 if (layer.kind == "conv2d" and opts.conv == "slices" and opts.conv2d_norm) else 1.0
    with np.errstate(over="ignore"):
        ev = np.sort(s_all * s_all) * scale
    sv_max, sv_min = float(col["sv_max"].max()), float(col["sv_min"].min())
    row.update(num_evals=len(ev), sv_max=sv_max, sv_min=sv_min,
               log10_sv_min=math.log10(sv_min) if sv_min > 0 else -math.inf,
               log10_sv_min_rel=(math.log10(sv_min / sv_max) if sv_min > 0 else -math.inf) if sv_max > 0 else math.nan,
               condition_number=sv_max / sv_min if sv_min > 0 else math.inf,
               weak_rank_loss=int(np.count_nonzero(ev < 1e-6)))
    if not np.isfinite(ev[-1]):  # float64 weights with s_max > ~1.3e154: l = s² is inf
        row.update(status="failed", warning=f"eigenvalues l = s² overflow float64 (sv_max = {sv_max:.3g})")
        return row, None
    if opts.rank_policy == "ww":  # WeightWatcher: the rank of the pooled spectrum, rank loss per slice
        row["matrix_rank"] = int(fits.hard_rank_ww(ev, layer.N))
        row["rank_loss"] = int(col["rank_loss"].sum())
        row["entropy"] = float(fits.matrix_entropy_ww(ev, layer.N, rank=row["matrix_rank"]))
    else:
        row["matrix_rank"] = int(col["matrix_rank"].sum())
        row["rank_loss"] = int(col["rank_loss"].sum())
        row["entropy"] = float(fits.matrix_entropy(ev, row["matrix_rank"]))
    tot = float(s_all.sum())
    p = s_all[s_all > 0] / tot if tot > 0 else np.zeros(0)
    row["effective_rank"] = float(np.exp(-np.sum(p * np.log(p)))) if tot > 0 else 0.0
    fit = _fit(ev, opts)
    row.update({k: fit.get(k) for k in ("alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes")})
    status = fit.get("status", "success")
    if fit.get("warning"):
        warning.append(str(fit["warning"]))
    row.update(fits.norm_metrics(ev, fit["alpha"], N=layer.N, M=layer.M))
    if opts.mp_fit:
        row.update(_safe(lambda: fits.mp_fit(ev, N=layer.N, M=layer.M, rf=layer.rf), warning, "mp_fit"))
    if rand is not None:
        reps, one = rand
        rand_ev = np.sort(np.concatenate(reps) ** 2) * scale
        one_ev = np.sort(np.concatenate(one) ** 2) * scale
        row.update(_safe(lambda: fits.random_esd_metrics(ev, one_ev, N=layer.N, M=layer.M, rf=layer.rf,
                                                         pooled_rand_evals=rand_ev), warning, "randomize"))
    lo, hi = opts.alpha_range
    alpha = row.get("alpha")
    rel = row["log10_sv_min_rel"]
    # a fraction, not rank_loss > 0: a random square bfloat16 matrix has ~1 % of its singular values
    # below bfloat16's eps·s₁ (quarter-circle law), a random square float32 one ~0.05 % below numpy's
    # tolerance; neither is collapse
    row["rank_collapsed"] = bool(row["rank_loss"] > opts.collapse_rank_frac * layer.M * layer.count)
    row["sv_collapsed"] = bool(rel < opts.collapse_log10)
    row["alpha_out_of_range"] = bool(status == "success" and alpha is not None and np.isfinite(alpha)
                                     and not (lo <= alpha <= hi))
    row["collapsed"] = bool(row["rank_collapsed"] or row["sv_collapsed"])
    row["status"] = status
    row["warning"] = "; ".join(w for w in warning if w)
    return row, ev


def _safe(fn: Callable[[], dict], warning: list[str], what: str) -> dict:
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - a failed optional fit is a warning, not a lost row
        warning.append(f"{what} failed: {type(e).__name__}: {e}")
        warnings.warn(f"{what} failed on a layer: {e}", RuntimeWarning, stacklevel=2)
        return {}

