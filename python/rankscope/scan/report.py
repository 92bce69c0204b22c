"""The scan's result: per-layer and per-model tables, errors, and their files (CSV, Parquet, JSON).

Column names follow WeightWatcher's `analyze()` where it has them (METRICS.md §1–3), so a user can
switch; the extra columns say where a row came from and whether the layer looks collapsed.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

#: Leading columns: where the row comes from.
ID_COLUMNS = ("model", "name", "layer_id", "tensor", "part", "type", "dtype", "shape")
#: WeightWatcher-compatible columns (METRICS.md §1–3), in WeightWatcher's spelling.
WW_COLUMNS = ("N", "M", "Q", "rf", "num_evals", "sv_max", "sv_min", "log10_sv_min", "matrix_rank", "rank_loss",
              "weak_rank_loss", "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "alpha_weighted",
              "log_alpha_norm", "log_norm", "log_spectral_norm", "stable_rank", "entropy", "mp_softrank",
              "num_spikes")
#: rankscope's own metric columns.
EXTRA_COLUMNS = ("effective_rank", "log10_sv_min_rel", "condition_number", "refined")
#: Collapse flags: rank_collapsed (rank_loss > collapse_rank_frac · M), sv_collapsed
#: (log10(s_min/s_max) < collapse_log10), alpha_out_of_range (alpha outside alpha_range), and
#: collapsed = rank_collapsed or sv_collapsed.
FLAG_COLUMNS = ("rank_collapsed", "sv_collapsed", "alpha_out_of_range", "collapsed")
STATUS_COLUMNS = ("status", "warning")
#: Where the model came from, for resuming a scan (path, size and modification time).
FILE_COLUMNS = ("path", "file_size", "file_mtime")
#: Columns of mp_fit=True (WeightWatcher's names) and randomize=True.
MP_COLUMNS = ("sigma_mp", "bulk_min", "bulk_max", "W_scale")
RANDOM_COLUMNS = ("max_rand_eval", "rand_distance", "ww_softrank", "ww_maxdist", "rand_num_spikes", "num_traps",
                  "rand_sigma_mp", "rand_mp_softrank", "rand_bulk_max", "rand_bulk_min", "rand_W_scale")

LAYER_COLUMNS = ID_COLUMNS + WW_COLUMNS + EXTRA_COLUMNS + FLAG_COLUMNS + STATUS_COLUMNS + FILE_COLUMNS
#: Text columns (read back as text whatever they hold: a model "0001", a tensor "NA").
TEXT_COLUMNS = ("model", "name", "tensor", "type", "dtype", "shape", "status", "warning", "path")
#: Number columns (NaN where a row has none).
NUMBER_COLUMNS = (("layer_id", "part") + WW_COLUMNS + tuple(c for c in EXTRA_COLUMNS if c != "refined")
                  + ("file_size", "file_mtime") + MP_COLUMNS + RANDOM_COLUMNS)

#: status values: "success" (fitted), "failed" (spectrum computed, power-law fit failed or non-finite
#: weights), "skipped" (not a matrix: the reason is in `warning`), "error" (could not be read).
STATUSES = ("success", "failed", "skipped", "error")


def _columns(df: pd.DataFrame) -> list[str]:
    known = [c for c in LAYER_COLUMNS if c in df.columns]
    extra = [c for c in df.columns if c not in LAYER_COLUMNS]
    # optional blocks (mp_fit, randomize) go before the flags, in their own order
    head = [c for c in known if c not in FLAG_COLUMNS + STATUS_COLUMNS + FILE_COLUMNS]
    tail = [c for c in known if c in FLAG_COLUMNS + STATUS_COLUMNS + FILE_COLUMNS]
    opt = [c for c in MP_COLUMNS + RANDOM_COLUMNS if c in extra]
    return head + opt + [c for c in extra if c not in opt] + tail


@dataclass
class ScanReport:
    """What `rankscope.scan` found.

    Attributes
    ----------
    layers : pandas.DataFrame
        One row per scanned layer (per matrix for expert stacks and split QKV blocks), plus a row per
        skipped tensor (status "skipped", the reason in `warning`) and per tensor or file that could
        not be read (status "error"). Columns: ``LAYER_COLUMNS`` (WeightWatcher's names where it has
        them), and the mp_fit / randomize columns when asked for.
    errors : pandas.DataFrame
        The rows of `layers` with status "error": model, tensor (empty for a whole file), path, error.
    evals : dict
        (model, name) → the layer's eigenvalues l = s² as fitted (ascending; Conv2d slices pooled and
        scaled as WeightWatcher does), for plots; empty when the scan ran with keep_evals=False.
    options : dict
        The options the scan ran with.
    resumed : dict
        For a scan that extended an existing report at `out`: "from" (its path), "unchanged" (the
        models skipped because their files are unchanged since) and "not_listed" (models the
        report held that this scan did not list at all: their rows are kept too); empty otherwise.
    """

    layers: pd.DataFrame
    evals: dict = field(default_factory=dict, repr=False)
    options: dict = field(default_factory=dict)
    seconds: float = float("nan")
    resumed: dict = field(default_factory=dict)

    @property
    def errors(self) -> pd.DataFrame:
        bad = self.layers[self.layers["status"] == "error"] if len(self.layers) else self.layers
        return pd.DataFrame({"model": bad.get("model", []), "tensor": bad.get("tensor", []),
                             "path": bad.get("path", []), "error": bad.get("warning", [])}).reset_index(drop=True)

    @property
    def scanned(self) -> pd.DataFrame:
        """The rows of layers whose spectrum was computed (status success or failed)."""
        return self.layers[self.layers["status"].isin(("success", "failed"))]

    @property
    def flagged(self) -> pd.DataFrame:
        """Scanned layers with any collapse flag, worst (lowest relative log10 s_min) first."""
        s = self.scanned
        return s[s["collapsed"].astype(bool)].sort_values(["rank_loss", "log10_sv_min_rel"],
                                                          ascending=[False, True])

    @property
    def models(self) -> pd.DataFrame:
        """One row per model: counts, means of alpha, stable rank and the log norms, flagged layers."""
        return model_table(self.layers)

    def __repr__(self) -> str:
        s = self.scanned
        n_models = self.layers["model"].nunique() if len(self.layers) else 0
        return (f"ScanReport({n_models} models, {len(s)} layers scanned, {int(s['collapsed'].astype(bool).sum())} "
                f"flagged, {len(self.errors)} errors)")

    # ---- files ----------------------------------------------------------------------------------

    def to_csv(self, path: str | os.PathLike, **kw) -> None:
        """The layer table as CSV (pandas' to_csv; index omitted)."""
        _atomic(path, lambda p: self.layers.to_csv(p, index=False, **kw))

    def to_parquet(self, path: str | os.PathLike, **kw) -> None:
        """The layer table as Parquet (needs pyarrow: pip install "rankscope[parquet]")."""
        _PARQUET.require()
        _atomic(path, lambda p: _parquet_frame(self.layers).to_parquet(p, index=False, **kw))

    def records(self) -> list[dict]:
        """The layer table as a list of JSON-ready row dicts (numpy scalars as Python ones; NaN and
        ±inf as None)."""
        return [{k: _json_value(v) for k, v in r.items()} for r in self.layers.to_dict(orient="records")]

    def to_json(self, path: str | os.PathLike) -> None:
        """The layer table as a JSON list of rows (NaN and ±inf as null; strict JSON)."""
        text = json.dumps({"layers": self.records(), "options": _jsonable(self.options)}, indent=1, allow_nan=False)
        _atomic(path, lambda p: _write_text(p, text))

    def save(self, path: str | os.PathLike) -> None:
        """to_csv, to_parquet or to_json by the file's extension (.csv, .parquet, .json)."""
        getattr(self, report_format(str(path)).write)(path)

    @classmethod
    def read(cls, path: str | os.PathLike) -> ScanReport:
        """A report written by save() (CSV, Parquet or JSON), without the eigenvalues."""
        return cls(normalize(report_format(str(path)).read(path)))


def normalize(df: pd.DataFrame) -> pd.DataFrame:
    """Column order and dtypes of a layer table (after concatenation or reading back a file)."""
    for c in LAYER_COLUMNS:
        if c not in df.columns:
            df[c] = np.nan
    for c in FLAG_COLUMNS + ("refined",):
        df[c] = df[c].map(lambda v: bool(v) if isinstance(v, (bool, np.bool_)) or v in (0, 1) else
                          (str(v).lower() == "true" if isinstance(v, str) else False))
    for c in TEXT_COLUMNS:
        df[c] = df[c].map(lambda v: "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v))
    for c in NUMBER_COLUMNS:  # None (in-memory models have no file size) or JSON's all-null columns: NaN
        if c in df.columns and df[c].dtype == object:
            df[c] = pd.to_numeric(df[c])
    return df[_columns(df)].reset_index(drop=True)


def layer_frame(rows: Sequence[dict]) -> pd.DataFrame:
    return normalize(pd.DataFrame.from_records(list(rows)) if rows else pd.DataFrame(columns=list(LAYER_COLUMNS)))


def model_table(layers: pd.DataFrame) -> pd.DataFrame:
    """Per-model summary of a layer table (the means are over scanned layers, NaN-skipping)."""
    cols = ["model", "path", "num_layers", "num_skipped", "num_errors", "num_flagged", "num_rank_collapsed",
            "num_sv_collapsed", "num_alpha_out_of_range", "alpha", "stable_rank", "log_norm", "log_spectral_norm",
            "alpha_weighted", "log_alpha_norm", "min_log10_sv_min_rel", "status"]
    if not len(layers):
        return pd.DataFrame(columns=cols)
    out = []
    for model, g in layers.groupby("model", sort=False):
        s = g[g["status"].isin(("success", "failed"))]
        row: dict[str, Any] = {"model": model, "path": g["path"].iloc[0],
                               "num_layers": len(s), "num_skipped": int((g["status"] == "skipped").sum()),
                               "num_errors": int((g["status"] == "error").sum()),
                               "num_flagged": int(s["collapsed"].astype(bool).sum()),
                               "num_rank_collapsed": int(s["rank_collapsed"].astype(bool).sum()),
                               "num_sv_collapsed": int(s["sv_collapsed"].astype(bool).sum()),
                               "num_alpha_out_of_range": int(s["alpha_out_of_range"].astype(bool).sum())}
        for c in ("alpha", "stable_rank", "log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm"):
            v = pd.to_numeric(s[c], errors="coerce")
            v = v[np.isfinite(v)] if c != "alpha" else v[np.isfinite(v) & (v > 0)]
            row[c] = float(v.mean()) if len(v) else np.nan
        rel = pd.to_numeric(s["log10_sv_min_rel"], errors="coerce")
        row["min_log10_sv_min_rel"] = float(rel.min()) if len(rel) else np.nan
        row["status"] = "error" if len(s) == 0 and row["num_errors"] else "success"
        out.append(row)
    return pd.DataFrame(out, columns=cols)


def resume_keys(layers: pd.DataFrame) -> set[tuple[str, int, float]]:
    """(path, size, mtime) of the files a report holds (errors excluded: those are tried again)."""
    if not len(layers):
        return set()
    keys = set()
    for (path, size, mtime), g in layers.groupby(["path", "file_size", "file_mtime"], dropna=True):
        if path and (g["status"] != "error").any():
            keys.add(file_key(path, size, mtime))
    return keys


class Resume:
    """How a scan's rows join those of the report it extends at `out`, for the single-machine scan
    and the Ray driver alike: which models to skip, the models' names, the merged table, its writes.

    With `resume` and a report at `out`, its rows are read and the files it holds (same path, size
    and modification time; files that failed are tried again) are skipped. Each model the scan
    lists goes through :meth:`admit`, in order; :meth:`save` rewrites the report at `out`
    (atomically) with what finished so far, :meth:`report` gives the final one.
    """

    def __init__(self, out: str | os.PathLike | None, resume: bool):
        self.out = out
        if out is not None and os.path.isdir(out):  # neither read nor replaced (os.replace) by a report
            raise IsADirectoryError(f"out: {os.fspath(out)!r} is a folder, not a report file")
        read = out is not None and resume and os.path.exists(out)
        try:
            self.previous = ScanReport.read(out).layers if read else layer_frame([])
        except Exception as e:
            raise ValueError(f"out: cannot resume from the report at {os.fspath(out)!r} ({type(e).__name__}: {e}); "
                             "move it away, or pass resume=False (--no-resume) to overwrite it") from e
        if out is not None:  # fail before any scanning if the report cannot be written there
            folder = os.path.dirname(os.path.abspath(out))
            try:
                with tempfile.NamedTemporaryFile(dir=folder, prefix=".rankscope-probe-"):
                    pass
            except OSError as e:
                raise type(e)(f"out: cannot write a report in {folder!r}: {e.strerror or e}") from e
        self.done = resume_keys(self.previous)
        self.saved = False
        self._rescanned: set[str] = set()  # paths scanned again: their old rows are replaced
        self._unchanged: list[str] = []  # models skipped: the report holds their unchanged files
        self._listed: set[str] = set()  # every path this scan listed
        self._seen: dict[str, int] = {}

    def admit(self, name: str, path: str | None, size: int | None, mtime: float | None) -> str | None:
        """None when the report holds this model's file already (skip it); else the model's name in
        this scan: `name`, or ``name#2``, ``name#3``, ... for later models of the same name (two
        in-memory models, two listed files of one stem). A file that could not be opened has no
        size or mtime, so it is never skipped. The old rows of an admitted path are dropped."""
        if path:
            self._listed.add(str(path))
        if file_key(path, size, mtime) in self.done:
            self._unchanged.append(name)
            return None
        if path:
            self._rescanned.add(str(path))
        n = self._seen.get(name, 0)
        self._seen[name] = n + 1
        return f"{name}#{n + 1}" if n else name

    def merged(self, frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
        """The report's layer table: the rows kept from the previous report, then `frames` in order."""
        old = self.previous
        if len(old):
            old = old[~old["path"].isin(self._rescanned)]
        return merge([old, *frames])

    def save(self, frames: Iterable[pd.DataFrame], options: dict) -> None:
        """Rewrite the report at `out` (if any) with the rows finished so far."""
        if self.out is not None:
            ScanReport(self.merged(frames), options=options).save(self.out)
            self.saved = True

    def report(self, frames: Iterable[pd.DataFrame], *, evals: dict, options: dict, seconds: float) -> ScanReport:
        """The final report; written to `out` unless :meth:`save` has written these rows already
        (the caller saves after every change, so the last save holds them)."""
        report = ScanReport(self.merged(frames), evals=evals, options=options, seconds=seconds)
        old = self.previous
        if len(old):
            others = old[~old["path"].isin(self._listed)]
            report.resumed = {"from": os.fspath(self.out), "unchanged": list(self._unchanged),
                              "not_listed": list(dict.fromkeys(others["model"]))}
        if self.out is not None and not self.saved:
            report.save(self.out)
        return report


def file_key(path: str | None, size: int | None, mtime: float | None) -> tuple[str, int, float] | None:
    if path is None or size is None or mtime is None:
        return None
    return (str(path), int(size), round(float(mtime), 3))


def merge(frames: Iterable[pd.DataFrame]) -> pd.DataFrame:
    frames = [f for f in frames if len(f)]
    if not frames:
        return layer_frame([])
    return normalize(pd.concat(frames, ignore_index=True))


def _parquet_frame(df: pd.DataFrame) -> pd.DataFrame:
    out = df.copy()
    for c in out.columns:  # object columns of mixed types do not go to Parquet
        if out[c].dtype == object:
            out[c] = out[c].map(lambda v: None if v is None else str(v) if not isinstance(v, str) else v)
    return out


def _json_value(v: Any) -> Any:
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, np.bool_):
        return bool(v)
    return v


def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        try:
            json.dumps(v, allow_nan=False)
            out[k] = v
        except (TypeError, ValueError):
            out[k] = repr(v)
    return out


def _write_text(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _atomic(path: str | os.PathLike, write) -> None:
    """Write to a temporary file next to `path`, then rename: a killed scan never leaves half a report."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = os.path.join(d, f".{os.path.basename(path)}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


@dataclass(frozen=True)
class ReportFormat:
    """One report file format: the ScanReport method that writes it, the reader of its layer
    table, and the optional (module, extra) the writer needs."""

    write: str
    read: Callable[[str | os.PathLike], pd.DataFrame]
    needs: tuple[str, str] | None = None

    def require(self) -> None:
        """Raise the ImportError naming the extra when the writer's optional module is missing."""
        if self.needs is not None:
            from .sources import optional_import

            optional_import(*self.needs)


def _read_json(path: str | os.PathLike) -> pd.DataFrame:
    with open(path) as f:
        doc = json.load(f)
    return pd.DataFrame(doc["layers"] if isinstance(doc, dict) else doc)


def _read_parquet(path: str | os.PathLike) -> pd.DataFrame:
    # one open, read whole: pyarrow given a path opens it more than once, and a scan that replaces
    # the report in between (its atomic rewrite) made it read one file's footer with another's pages
    with open(path, "rb") as f:
        return pd.read_parquet(io.BytesIO(f.read()))


def _read_csv(path: str | os.PathLike) -> pd.DataFrame:
    # only the empty field (to_csv's NaN) is missing, and the text columns stay text: pandas' default
    # NA strings turned tensors named "NA" or "null" into "", its number parsing a model "0001" into 1
    return pd.read_csv(path, keep_default_na=False, na_values=[""], dtype=dict.fromkeys(TEXT_COLUMNS, str))


_PARQUET = ReportFormat("to_parquet", _read_parquet, ("pyarrow", "parquet"))
#: Report formats by lower-case file suffix: save(), read() and scan(out=) all look them up here.
FORMATS = {".csv": ReportFormat("to_csv", _read_csv),
           ".parquet": _PARQUET, ".pq": _PARQUET, ".json": ReportFormat("to_json", _read_json)}


def report_format(path: str, argument: str | None = None) -> ReportFormat:
    """The format of a report file by its suffix, or ValueError (prefixed with `argument`, the
    parameter that gave the path, when there is one)."""
    fmt = FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        where = f"{argument}: " if argument else ""
        raise ValueError(f"{where}cannot tell the report format from {path!r}: use .csv, .parquet or .json")
    return fmt
