"""Review of rankscope.scan against WeightWatcher 0.7.7's analyze() and float64 numpy oracles on small
plain-torch models: the cases the broader parity tests (test_scan_ww.py) do not reach.

Tolerances as in test_scan_ww.py: both sides see the same float32 weights; fits to 1e-6 relative,
norms to 1e-9. Shapes, counts and ranks are compared exactly.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import rankscope as rs
import torch

ww = pytest.importorskip("weightwatcher")
logging.getLogger("weightwatcher").setLevel(logging.CRITICAL + 1)
pytestmark = pytest.mark.filterwarnings("ignore:Passing a dict to DataFrame.from_records")  # WW's own


def _ww_rows(model):
    details = ww.WeightWatcher(model=model).analyze()
    return {row["longname"]: row for _, row in details.iterrows()}


def _our_rows(model, **kw):
    rows = rs.scan(model, progress=False, rank_policy="ww", **kw).scanned
    return {row["tensor"].removesuffix(".weight"): row for _, row in rows.iterrows()}


def test_conv2d_kernel_wider_than_channels_is_out_by_in_slices(rng, tmp_path):
    """A torch Conv2d weight is (out, in, kh, kw) whatever its sizes. Conv2d(4, 4, 7) has out + in <
    kh + kw; it was read as (kh, kw, in, out) — 16 slices of 7 × 7 instead of 49 of 4 × 4 — so every
    column differed from WeightWatcher (which flips its own detection back for torch layers); state dicts
    and files, which carry no module type, were still read so."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 7), torch.nn.Conv2d(3, 6, 5))
    ours, theirs = _our_rows(model), _ww_rows(model)
    # the same weights from a state dict and from a safetensors file (no module type): the same rows
    from safetensors.torch import save_file

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(sd, str(tmp_path / "cnn.safetensors"))
    for other in (_our_rows(sd), _our_rows(tmp_path / "cnn.safetensors")):
        for name in ("0", "1"):
            for c in ("N", "M", "rf", "num_evals", "alpha", "sv_max", "sv_min", "matrix_rank"):
                assert other[name][c] == ours[name][c], (name, c)
    for name in ("0", "1"):
        o, t = ours[name], theirs[name]
        assert (o["N"], o["M"], o["rf"], o["num_evals"]) == (t["N"], t["M"], t["rf"], t["num_evals"]), name
        for c in ("alpha", "xmin", "D"):
            np.testing.assert_allclose(o[c], t[c], rtol=1e-6, err_msg=f"{name} {c}")
        for c in ("log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "stable_rank", "entropy"):
            np.testing.assert_allclose(o[c], t[c], rtol=1e-9, err_msg=f"{name} {c}")
        assert o["matrix_rank"] == t["matrix_rank"] and o["rank_loss"] == t["rank_loss"]
        # sv_max of the stored slices (WeightWatcher's is scaled by its conv2d_norm √½)
        W = dict(model.named_parameters())[f"{name}.weight"].detach().double().numpy()
        s = np.concatenate([np.linalg.svd(W[:, :, p, q], compute_uv=False)
                            for p in range(W.shape[2]) for q in range(W.shape[3])])
        np.testing.assert_allclose(o["sv_max"], s.max(), rtol=1e-9)
        np.testing.assert_allclose(o["sv_min"], s.min(), rtol=1e-6)


def test_float64_layer_whose_eigenvalues_overflow_is_a_failed_row(rng):
    """A float64 layer with s_max > ~1.3e154 has l = s² = inf. The scan raised 'evals holds NaN or Inf'
    from the entropy and lost every other layer; now that layer is a failed row that keeps its
    singular-value columns (those of a float64 SVD) and says why, and the other layers are unaffected."""
    A, B = rng.standard_normal((60, 40)), rng.standard_normal((30, 20))
    layers = rs.scan({"huge": A * 1e200, "ok": B}, progress=False).layers.set_index("name")
    huge, ok = layers.loc["huge"], layers.loc["ok"]
    assert huge["status"] == "failed" and "overflow" in huge["warning"]
    s = np.linalg.svd(A * 1e200, compute_uv=False)
    np.testing.assert_allclose([huge["sv_max"], huge["sv_min"]], [s.max(), s.min()], rtol=1e-12)
    alone = rs.scan({"ok": B}, progress=False).layers.set_index("name").loc["ok"]
    assert ok["status"] == "success"
    for c in ("alpha", "xmin", "D", "log_norm", "stable_rank", "entropy", "sv_min"):
        assert ok[c] == alone[c], c


@pytest.mark.parametrize("estimator", ["xmin_peak", "xmin_peak_intended"])
def test_histogram_estimators_on_an_all_zero_layer_fail_that_layer_only(rng, estimator):
    """TempBalance's histogram estimators take log10 λ; a zero layer has no λ > 1e-5 to keep, and the
    scan raised "estimator 'xmin_peak' needs filter_zeros=True ..." and lost every layer. Now the zero
    layer is a failed fit (alpha NaN, as the reference cannot fit it either); the others are fitted."""
    B = rng.standard_normal((30, 20)).astype(np.float32)
    layers = rs.scan({"zero": np.zeros((30, 20), np.float32), "ok": B}, progress=False,
                     estimator=estimator).layers.set_index("name")
    zero, ok = layers.loc["zero"], layers.loc["ok"]
    assert zero["status"] == "failed" and np.isnan(zero["alpha"]) and "fit failed" in zero["warning"]
    assert zero["matrix_rank"] == 0 and zero["log_norm"] == -np.inf
    alone = rs.scan({"ok": B}, progress=False, estimator=estimator).layers.set_index("name").loc["ok"]
    assert ok["status"] == "success" and ok["alpha"] == alone["alpha"] and ok["xmin"] == alone["xmin"]


def test_randomize_on_a_zero_layer_gives_nan_distances_without_numpy_warnings():
    """A zero layer's shuffled ESD is zero too: rand_distance and ww_softrank are 0/0 = NaN, as in
    WeightWatcher. They came with five bare numpy 'invalid value encountered in divide' warnings
    that named no layer (the row already says the fit failed)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        row = rs.scan({"zero": np.zeros((30, 20), np.float32)}, progress=False, randomize=True,
                      seed=0).layers.iloc[0]
    assert np.isnan(row["rand_distance"]) and np.isnan(row["ww_softrank"]) and row["ww_maxdist"] == 0
    assert row["status"] == "failed"


def test_a_layer_whose_row_cannot_be_built_is_an_error_row(rng, monkeypatch):
    """An exception while one layer's row is built (a fit or metric that breaks on its spectrum)
    aborted the whole scan; now that layer is an error row naming the exception, the others are the
    rows of a scan without it."""
    from rankscope.scan import fits

    real = fits.fit_powerlaw

    def breaks_on_five(evals, **kw):
        if len(evals) == 5:
            raise RuntimeError("fit exploded")
        return real(evals, **kw)

    sd = {"a": rng.standard_normal((9, 5)), "b": rng.standard_normal((12, 7))}
    alone = rs.scan({"b": sd["b"]}, progress=False).layers.set_index("name").loc["b"]
    monkeypatch.setattr(fits, "fit_powerlaw", breaks_on_five)
    rows = rs.scan(sd, progress=False).layers.set_index("name")
    assert rows.loc["a", "status"] == "error" and rows.loc["a", "warning"] == "RuntimeError: fit exploded"
    assert rows.loc["b", "status"] == alone["status"]
    for c in ("alpha", "sv_min", "stable_rank", "layer_id"):
        assert rows.loc["b", c] == alone[c], c
