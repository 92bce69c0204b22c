"""Where a :class:`~rankscope.torch.SpectralMonitor` writes its measurements: TensorBoard scalars and
per-layer histograms of log10 s, and CSV/Parquet tables. A writer is any callable taking a
:class:`~rankscope.torch.monitor.MonitorRecord`; these two add ``flush()`` and ``close()``."""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

__all__ = ["TableWriter", "TensorBoardWriter"]


class TensorBoardWriter:
    """Writes each measurement to TensorBoard: a scalar ``{prefix}/{metric}/{layer}`` per value and,
    with `histograms`, a histogram ``{prefix}/log10_s/{layer}`` of each weight layer's log10 singular
    values.

    Parameters
    ----------
    writer : str or SummaryWriter
        A ``torch.utils.tensorboard.SummaryWriter``, or a log directory to open one in (needs the
        ``tensorboard`` package: ``pip install "rankscope[tensorboard]"``).
    prefix : str
        Tag prefix (default "rankscope").
    histograms : bool
        Also write the log10 s histograms (default True).
    """

    def __init__(self, writer: Any, *, prefix: str = "rankscope", histograms: bool = True):
        if isinstance(writer, (str, os.PathLike)):
            from ..scan.sources import optional_import

            optional_import("tensorboard", "tensorboard", "TensorBoard logging", who="rankscope.torch")
            from torch.utils.tensorboard import SummaryWriter

            writer, self._owned = SummaryWriter(os.fspath(writer)), True
        else:
            if not (hasattr(writer, "add_scalar") and hasattr(writer, "add_histogram")):
                raise TypeError(f"writer must be a SummaryWriter or a log directory, got {type(writer).__name__}")
            self._owned = False
        self.writer = writer
        self.prefix = prefix
        self.histograms = bool(histograms)

    def __call__(self, record) -> None:
        for tag, v in record.scalars(self.prefix).items():
            self.writer.add_scalar(tag, v, record.step)
        if self.histograms:
            for layer, s in record.spectra.items():
                pos = s[s > 0]
                if pos.size:
                    self.writer.add_histogram(f"{self.prefix}/log10_s/{layer}", np.log10(pos), record.step)

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.flush()
        if self._owned:
            self.writer.close()


class TableWriter:
    """Writes every value as a row (step, layer, metric, value) to a CSV or Parquet file.

    CSV rows are appended as each measurement arrives (the header once; an existing file is
    replaced when the writer opens it; the folder is created, and the file started again with its
    header if it was removed during the run). Parquet files cannot be appended to: the whole table is
    rewritten atomically on ``flush()``/``close()`` and every `rewrite_every` measurements (needs
    ``pyarrow``: ``pip install "rankscope[parquet]"``).
    """

    def __init__(self, path: str | os.PathLike, *, rewrite_every: int = 10):
        path = os.fspath(path)
        ext = os.path.splitext(path)[1].lower()
        if ext not in (".csv", ".parquet"):
            raise ValueError(f"a table path must end in .csv or .parquet, got {path!r}")
        if ext == ".parquet":
            from ..scan.sources import optional_import

            optional_import("pyarrow", "parquet", "Parquet output", who="rankscope.torch")
        self.path, self.kind = path, ext[1:]
        self.rewrite_every = int(rewrite_every)
        self._rows: list[tuple] = []
        self._records = 0
        if self.kind == "csv":
            self._header()

    def _header(self) -> None:
        # the folder too (as the Parquet writer and SummaryWriter do): a run's log folder is often not
        # made yet, or a clean-up removed it mid-run
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        with open(self.path, "w", encoding="utf-8") as f:
            f.write("step,layer,metric,value\n")

    def __call__(self, record) -> None:
        rows = record.rows()
        self._records += 1
        if self.kind == "csv":
            if not os.path.exists(self.path):  # removed since: start it again (with its header)
                self._header()
            with open(self.path, "a", encoding="utf-8") as f:
                f.writelines(f"{s},{_csv_field(la)},{m},{_csv_value(v)}\n" for s, la, m, v in rows)
            return
        self._rows.extend(rows)
        if self._records % max(1, self.rewrite_every) == 0:
            self.flush()

    def flush(self) -> None:
        if self.kind != "parquet":
            return
        import pandas as pd

        from ..scan.report import _atomic

        df = pd.DataFrame(self._rows, columns=["step", "layer", "metric", "value"])
        _atomic(self.path, lambda tmp: df.to_parquet(tmp, index=False))

    def close(self) -> None:
        self.flush()


def _csv_field(s: str) -> str:
    return f'"{s.replace(chr(34), chr(34) * 2)}"' if any(c in s for c in ',"\n') else s


def _csv_value(v: float) -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else repr(float(v))
