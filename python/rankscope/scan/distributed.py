"""Distributed scans on Ray: one Ray task per model, each running the single-machine scanner.

``rankscope.scan(source, ray=True | "auto" | "host:port" | "ray://host:port", ...)`` comes here.
A run is list → submit → stream back:

1. One task lists the models of `source` where the files are (on the cluster, so that a driver
   connected through Ray Client needs no copy of them): the same :func:`open_sources` walk as the
   single-machine scan, giving each model's name, path, size and modification time. Files that
   cannot be opened become error rows there, as they do in one process.
2. Models that an existing report at `out` already holds (same path, size and mtime) are skipped;
   every other model is one Ray task that calls :func:`rankscope.scan` on that one path, with the
   same options, and returns its layer table and eigenvalues. A whole sharded checkpoint or Hugging
   Face folder is one model, hence one task.
3. Results are merged as tasks finish, in the order the models were listed, into the
   :class:`ScanReport` the single-machine scan returns (same rows, same order), and the report at
   `out` is rewritten atomically after every batch of finished tasks: a driver killed half-way
   loses only the models in flight.

A task that fails (an exception in the scanner, a worker process that dies, a node that is lost) is
retried by Ray up to `max_retries` times (``retry_exceptions=True``); after that its model is one
row with status "error" and the failure, and the scan goes on. Files must be at the same paths on
every node (a shared file system); relative paths are made absolute on the driver.

Ray is an optional extra (``pip install "rankscope[ray]"``), imported only here, and this module is
imported only by ``scan(..., ray=...)``.
"""

from __future__ import annotations

import math
import numbers
import os
import socket
import time
import types
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from .._arrays import is_real
from .report import Resume, ScanReport, layer_frame
from .runner import ScanOptions, _error_row
from .sources import SourceError, optional_import

#: Retries of a failed task when max_retries is not given (Ray's own default for tasks is 3).
DEFAULT_MAX_RETRIES = 3


def _ray():
    return optional_import("ray", "ray", "distributed scans (ray=...)")


def check_address(ray: Any) -> str | None:
    """The address to pass to ``ray.init`` for a `ray=` argument (None: Ray's default), or raises."""
    if ray is True:
        return None
    if isinstance(ray, str) and ray.strip():
        return ray.strip()
    raise TypeError(f"ray must be True, or a Ray address ('auto', 'host:port', 'ray://host:port') as a "
                    f"non-empty str; got {ray!r}")


def task_resources(device: str, *, num_cpus: float | None, num_gpus: float | None,
                   cluster_gpus: float) -> dict:
    """Ray resources of one task, and the device string the task scans on.

    CPUs: `num_cpus` (default 1). GPUs: `num_gpus`, else 1 when `device` asks for CUDA ("cuda",
    "cuda:N", or "auto" on a cluster that has GPUs) and 0 otherwise. Ray gives a task its GPUs as
    ``CUDA_VISIBLE_DEVICES``, so a task scans on "cuda" (its first visible device), not "cuda:N".
    """
    cpus = 1.0 if num_cpus is None else num_cpus
    if not (is_real(cpus, finite=True) and cpus > 0):
        raise ValueError(f"num_cpus must be a positive number, got {num_cpus!r}")
    wants_cuda = isinstance(device, str) and (device == "cuda" or device.startswith("cuda:"))
    if num_gpus is None:
        gpus = 1.0 if wants_cuda or (device in (None, "auto") and cluster_gpus > 0) else 0.0
    elif is_real(num_gpus, finite=True) and num_gpus >= 0:
        gpus = float(num_gpus)
    else:
        raise ValueError(f"num_gpus must be a non-negative number, got {num_gpus!r}")
    if gpus > 0 and cluster_gpus <= 0:
        raise ValueError(f"device={device!r} with num_gpus={gpus:g} asks each Ray task for a GPU, and the Ray "
                         "cluster has none: pass device='cpu' (or num_gpus=0)")
    if wants_cuda and gpus == 0:
        raise ValueError(f"device={device!r} needs num_gpus > 0 on Ray (a task sees only the GPUs Ray gives it)")
    task_device = "cuda" if wants_cuda else device
    return {"num_cpus": float(cpus), "num_gpus": gpus, "device": task_device}


def check_fits(res: dict, nodes: list[dict]) -> None:
    """Raises when no node has the CPUs or GPUs one task asks for (`nodes`: ``ray.nodes()``): Ray
    would keep every such task pending for ever."""
    alive = [n.get("Resources", {}) for n in nodes if n.get("Alive", True)]
    for arg, key in (("num_cpus", "CPU"), ("num_gpus", "GPU")):
        most = max((r.get(key, 0.0) for r in alive), default=0.0)
        if res[arg] > most:
            raise ValueError(f"{arg}={res[arg]:g} asks each Ray task for more {key}s than any node of the Ray "
                             f"cluster has ({most:g}): no task could ever start; pass {arg} <= {most:g}")


# ---- what runs on the cluster ------------------------------------------------------------------


def _list_models(items: list[str], many: bool, name: str | None, base: Any) -> list[tuple]:
    """("model", name, path, size, mtime, task_path) or ("error", name, path, message) per model.

    `task_path` is what a task hands to scan() to get exactly this model back under this name: the
    file given (a sharded index file's model has its folder as `path`), or the model's own path
    inside a folder (a zoo's file or model folder, or the model folder given)."""
    from . import _base_tensors
    from .sources import open_sources

    if base is not None:  # a bad base fails the scan here, before any task, as in one process
        _base_tensors(base).close()
    out: list[tuple] = []
    for item in items:
        for src in open_sources(item, name=None if many else name):
            if isinstance(src, SourceError):
                out.append(("error", src.name, src.path, src.error))
                continue
            src.close()
            task_path = item if os.path.isfile(item) else src.path
            out.append(("model", src.name, src.path, src.size, src.mtime, task_path))
    return out


def _scan_model(path: str, name: str, opts: ScanOptions, base: Any, threads: int) -> tuple[pd.DataFrame, dict]:
    """One task: the single-machine scan of one model, on `threads` engine threads."""
    import rankscope
    from rankscope.scan import scan

    rankscope.set_num_threads(threads)
    report = scan(path, name=name, base=base, progress=False, **vars(opts))
    return report.layers, report.evals


# ---- the driver --------------------------------------------------------------------------------


def _paths(source: Any, base: Any) -> tuple[list[str], bool, Any]:
    """Absolute paths of `source` (one path or a list), whether it was a list, and the base path."""
    many = isinstance(source, (list, tuple))
    items = list(source) if many else [source]
    for i, x in enumerate(items):
        if not isinstance(x, (str, os.PathLike)):
            where = f"source[{i}]" if many else "source"
            what = ("an in-memory model (a Ray scan reads files on the cluster: save it, or scan it without ray=)"
                    if isinstance(x, Mapping) or hasattr(x, "state_dict") else type(x).__name__)
            raise TypeError(f"{where}: ray= scans paths (str or os.PathLike) to files every node can read; got {what}")
    if base is not None and not isinstance(base, (str, os.PathLike)):
        raise TypeError(f"base: ray= delta scans take the base model as a path; got {type(base).__name__}")
    absolute = [os.path.abspath(os.fspath(x)) for x in items]
    return absolute, many, None if base is None else os.path.abspath(os.fspath(base))


def _failure(e: BaseException, max_retries: int) -> str:
    ray = _ray()
    if isinstance(e, ray.exceptions.RayTaskError) and getattr(e, "cause", None) is not None:
        detail = f"{type(e.cause).__name__}: {e.cause}"
    else:
        lines = str(e).strip().splitlines()
        detail = f"{type(e).__name__}: {lines[0] if lines else ''}"
    return f"Ray task failed after {max_retries} retries: {detail}"


def _unwrap(e: BaseException) -> BaseException:
    """The user-facing exception of a failed listing task (a bad base: ValueError, a missing extra)."""
    cause = getattr(e, "cause", None)
    return cause if isinstance(cause, (ValueError, TypeError, ImportError)) else e


def scan_on_ray(source: Any, ray: Any, *, opts: ScanOptions, options: dict, base: Any = None, out: Any = None,
                resume: bool = True, progress: bool | None = None, name: str | None = None,
                max_retries: int | None = None, num_cpus: float | None = None,
                num_gpus: float | None = None) -> ScanReport:
    """``rankscope.scan(source, ray=ray, ...)``: documented there. `opts` are validated, `options` is
    the report's options dict."""
    address = check_address(ray)
    retries = DEFAULT_MAX_RETRIES if max_retries is None else max_retries
    if not (isinstance(retries, numbers.Integral) and not isinstance(retries, (bool, np.bool_)) and retries >= 0):
        raise ValueError(f"max_retries must be a non-negative int, got {max_retries!r}")
    retries = int(retries)
    # the arguments fail here, before a local instance starts or an address is waited on
    task_resources(opts.device, num_cpus=num_cpus, num_gpus=num_gpus, cluster_gpus=math.inf)
    items, many, base_path = _paths(source, base)
    ray_mod = _ray()
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    resumed = Resume(out, resume)

    started = _connect(ray_mod, address)
    jobs: dict = {}  # ObjectRef -> (index, model record)
    frames: dict[int, pd.DataFrame] = {}
    try:
        res = task_resources(opts.device, num_cpus=num_cpus, num_gpus=num_gpus,
                             cluster_gpus=float(ray_mod.cluster_resources().get("GPU", 0)))
        task_opts = ScanOptions(**{**vars(opts), "device": res["device"]})
        threads = max(1, int(res["num_cpus"]))
        # looked up per run, not bound at import: the tests replace _scan_model to fail on purpose
        scan_task = ray_mod.remote(_scan_model).options(num_cpus=res["num_cpus"], num_gpus=res["num_gpus"],
                                                        max_retries=retries, retry_exceptions=True)
        list_task = ray_mod.remote(_list_models).options(num_cpus=1, max_retries=retries)
        try:
            entries = ray_mod.get(list_task.remote(items, many, name, base_path))
        except ray_mod.exceptions.RayTaskError as e:
            raise _unwrap(e) from None
        check_fits(res, ray_mod.nodes())  # after the listing: an autoscaling cluster has a node by now

        evals: dict = {}
        for i, entry in enumerate(entries):
            kind, path = entry[0], entry[2]
            size, mtime = entry[3:5] if kind == "model" else (None, None)
            model = resumed.admit(entry[1], path, size, mtime)
            if model is None:
                continue
            if kind == "error":
                frames[i] = layer_frame([_error_row(SourceError(model, path, entry[3]), "", entry[3])])
                continue
            rec = types.SimpleNamespace(name=model, path=path, size=size, mtime=mtime)
            jobs[scan_task.remote(entry[5], model, task_opts, base_path, threads)] = (i, rec)

        def done_frames() -> list[pd.DataFrame]:
            return [frames[i] for i in sorted(frames)]

        bar = tqdm(total=len(jobs), unit="model", disable=(not progress) if progress is not None else None,
                   dynamic_ncols=True, desc="scan (ray)")
        pending = list(jobs)
        scanned = 0
        try:
            while pending:
                ready, pending = ray_mod.wait(pending, num_returns=1)
                if pending:  # everything else already finished: one report write for all of them
                    more, pending = ray_mod.wait(pending, num_returns=len(pending), timeout=0)
                    ready += more
                for ref in ready:
                    i, rec = jobs[ref]
                    try:
                        layers, ev = ray_mod.get(ref)
                    except ray_mod.exceptions.RayError as e:
                        layers, ev = layer_frame([_error_row(rec, "", _failure(e, retries))]), {}
                    frames[i] = layers
                    evals.update(ev)
                    scanned += int(layers["status"].isin(("success", "failed")).sum())
                bar.update(len(ready))
                bar.set_postfix_str(f"{scanned / max(time.perf_counter() - t0, 1e-9):.1f} layers/s", refresh=False)
                resumed.save(done_frames(), options)
        finally:
            bar.close()
    except BaseException:
        for ref, (i, _) in jobs.items():  # a driver interrupted (or failing) stops its tasks
            if i not in frames:
                ray_mod.cancel(ref)
        raise
    finally:
        if started:
            ray_mod.shutdown()
    return resumed.report(done_frames(), evals=evals, options=options, seconds=time.perf_counter() - t0)


def _connect(ray_mod, address: str | None) -> bool:
    """Connects to Ray (or starts a local instance); True when this call did, so the scan shuts it
    down at the end. A connection the caller made with ray.init is used as it is."""
    if ray_mod.is_initialized():
        if address is not None:
            raise ValueError(f"ray={address!r}: Ray is already initialised in this process; pass ray=True to "
                             "scan on that connection, or call ray.shutdown() first")
        return False
    kwargs = {"include_dashboard": False} if address in (None, "local") else {}
    if address is not None:
        _probe(address, "ray")
    else:  # Ray's default connects to RAY_ADDRESS when it is set
        _probe(os.environ.get("RAY_ADDRESS"), "RAY_ADDRESS")
    try:
        ray_mod.init(address=address, **kwargs)
    except ConnectionError as e:
        raise ConnectionError(f"ray={address!r}: cannot connect to the Ray cluster: {e}") from e
    return True


def _probe(address: str | None, what: str) -> None:
    """A cluster address "host:port" where nothing answers fails in seconds (Ray itself retries for
    minutes); "auto", "local", "ray://..." and malformed addresses are left to Ray."""
    host, sep, port = (address or "").strip().rpartition(":")
    if not sep or "://" in host or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=10).close()
    except OSError as e:
        raise ConnectionError(f"{what}={address!r}: cannot connect to the Ray cluster: nothing answers at "
                              f"{host}:{port} ({e}); is `ray start --head` running there?") from None
