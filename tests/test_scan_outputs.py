"""The scanner's outputs: report files read back equal to the report in memory (values, dtypes, odd
names, empty and error-only reports), and the figures of degenerate reports."""

from __future__ import annotations

import json
import os
import warnings

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


# ---- plots ------------------------------------------------------------------------------------------


def _plots():
    pytest.importorskip("matplotlib")
    from rankscope.scan import plots

    return plots


def _is_png(path) -> bool:
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_write_all_gives_every_figure_its_own_file(tmp_path, rng):
    """Names that slug alike ('w[0]' and 'w(0)', models 'a/b' and 'a_b', long names cut at the same
    120 characters) wrote over each other's figures, and write_all still listed each path."""
    plots = _plots()
    long = "blocks." * 20
    m1 = {"w[0]": rng.standard_normal((8, 6)), "w(0)": rng.standard_normal((8, 6)),
          long + "q": rng.standard_normal((8, 6)), long + "k": rng.standard_normal((8, 6))}
    rep = rs.scan([m1, {"w": rng.standard_normal((7, 5))}], progress=False)
    rep.layers["model"] = rep.layers["model"].map({"model_0": "a/b", "model_1": "a_b"})
    rep.evals = {(("a/b" if m == "model_0" else "a_b"), n): e for (m, n), e in rep.evals.items()}
    written = plots.write_all(rep, tmp_path / "figs")
    assert len(written) == 1 + 2 + 5  # histogram, a depth plot per model, an ESD per layer
    assert len(set(written)) == len(written)
    assert sorted(os.listdir(tmp_path / "figs")) == sorted(os.path.basename(p) for p in written)
    assert all(_is_png(p) for p in written)


def test_figures_of_reports_with_nothing_scanned(tmp_path):
    """Empty, error-only and skipped-only reports: the histogram of no layers, nothing else."""
    plots = _plots()
    for case, rep in {"empty": ScanReport(layer_frame([])), "errors": rs.scan([{}], progress=False),
                      "skipped": rs.scan({"b": np.zeros(3)}, progress=False)}.items():
        written = plots.write_all(rep, tmp_path / case)
        assert [os.path.basename(p) for p in written] == ["sv_min_hist.png"], case
        assert _is_png(written[0])


def test_esd_of_an_all_zero_layer_says_so(rng):
    """An all-zero matrix has no positive eigenvalue: its ESD says so, without matplotlib's warning
    about an empty legend."""
    plots = _plots()
    import matplotlib.pyplot as plt

    rep = rs.scan({"z": np.zeros((8, 6))}, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ax = plots.plot_esd(rep, "model", "z")
    assert [t.get_text() for t in ax.texts] == ["no positive eigenvalue: all singular values are 0"]
    assert ax.get_legend() is None
    plt.close(ax.figure)


def test_depth_plot_has_whole_layer_numbers(rng):
    plots = _plots()
    import matplotlib.pyplot as plt

    rep = rs.scan({"a": rng.standard_normal((9, 6)), "b": rng.standard_normal((9, 6))}, progress=False)
    ax = plots.plot_depth(rep, "model")
    ax.figure.canvas.draw()
    ticks = [t for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1]]
    assert ticks == [0.0, 1.0]
    plt.close(ax.figure)


@pytest.mark.parametrize("relative", [False, True])
def test_sv_min_histogram_counts_zero_s_min_from_any_report(tmp_path, rng, relative):
    """Layers with s_min = 0 are counted at the left edge, as documented, also from a JSON report
    (where log10 0 = -inf is null) and in the relative histogram of an all-zero layer (0/0)."""
    plots = _plots()
    import matplotlib.pyplot as plt

    rep = rs.scan({"z": np.zeros((6, 6)), "low": np.diag([1.0, 1.0, 1.0, 0.0]), "ok": rng.standard_normal((6, 4))},
                  progress=False)
    for r in (rep, _round_trip(rep, tmp_path / "r.json")):
        ax = plots.plot_sv_min_hist(r, relative=relative)
        assert ax.get_title() == "log10 s_min of 3 layers of 1 model(s): 2 below -8"
        assert all(float(t).is_integer() for t in ax.get_yticks())  # counts of layers
        plt.close(ax.figure)
