"""The scanner's outputs: report files read back equal to the report in memory (values, dtypes, odd
names, empty and error-only reports), and the figures of degenerate reports."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import rankscope as rs
from rankscope.scan.report import ScanReport, layer_frame

FORMATS = [".csv", ".json", pytest.param(".parquet", marks=pytest.mark.skipif(
    not __import__("importlib").util.find_spec("pyarrow"), reason="needs pyarrow"))]


def _strict_json(path):
    return json.loads(open(path).read(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))


def _round_trip(rep: ScanReport, path) -> ScanReport:
    rep.save(path)
    return ScanReport.read(path)


@pytest.mark.parametrize("ext", FORMATS)
def test_names_that_look_like_missing_values_or_numbers_round_trip(tmp_path, rng, ext):
    """Model and tensor names are text whatever they look like: CSV read 'NA', 'nan', 'None', 'null'
    back as '' and a zoo's '0001' model as '1' (pandas' NA strings and number parsing)."""
    names = ["NA", "nan", "None", "null", "007", "1e5", "True", "  lead", "ñ/权重,\"q\"", "x" * 3000]
    model = {n: rng.standard_normal((6, 4)) for n in names}
    reps = [rs.scan(model, progress=False, name="0001"),
            rs.scan({"0": rng.standard_normal((5, 5)), "1": rng.standard_normal((5, 5))}, progress=False, name="1")]
    for i, rep in enumerate(reps):
        back = _round_trip(rep, tmp_path / f"r{i}{ext}").layers
        for c in ("model", "name", "tensor", "shape", "dtype", "status"):
            assert list(back[c]) == list(rep.layers[c]), c
    assert list(back["name"]) == ["0", "1"] and set(back["model"]) == {"1"}


def _reports(rng) -> dict[str, ScanReport]:
    experts = rng.standard_normal((3, 8, 6))
    return {
        "mixed": rs.scan({"moe.experts.w": experts, "a": rng.standard_normal((12, 7)), "bias": np.zeros(4),
                          "nan": np.full((5, 5), np.nan), "zero": np.zeros((6, 6))}, progress=False),
        "fits": rs.scan({"a": rng.standard_normal((40, 20))}, progress=False, mp_fit=True, randomize=True, seed=1),
        "errors_only": rs.scan([{}, {}], progress=False),
        "empty": ScanReport(layer_frame([])),
    }


@pytest.mark.parametrize("ext", FORMATS)
def test_read_back_equals_the_report_in_memory(tmp_path, rng, ext):
    """Every column comes back with its dtype and values (NaN where NaN; ±inf, which strict JSON writes
    as null, are NaN from JSON); numeric columns are numbers in memory too (file_size, file_mtime and
    part were object columns of None for in-memory models, and an error-only report read back from
    JSON had every metric column as object)."""
    for case, rep in _reports(rng).items():
        want = rep.layers
        back = _round_trip(rep, tmp_path / f"{case}{ext}").layers
        assert list(back.columns) == list(want.columns), case
        for c in ("part", "file_size", "file_mtime", "N", "sv_min", "alpha"):
            assert want[c].dtype.kind in "fi", (case, c, want[c].dtype)
        if ext == ".json":
            _strict_json(tmp_path / f"{case}{ext}")
            want = want.replace([np.inf, -np.inf], np.nan)
        if not len(want):
            assert len(back) == 0, case
            continue
        pd.testing.assert_frame_equal(back, want, check_exact=True, obj=f"{case}{ext}")
        for prop in ("models", "errors", "flagged"):
            pd.testing.assert_frame_equal(getattr(ScanReport(back), prop), getattr(ScanReport(want), prop),
                                          check_exact=True, obj=f"{case}{ext} {prop}")
