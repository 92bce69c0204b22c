"""Review of the collapse diagnostics and neural-collapse metrics: edge cases found against float64
numpy transcriptions of the reference formulas (see tests/test_collapse.py and
tests/test_neural_collapse.py for the transcriptions themselves).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import rankscope.collapse as rc
import rankscope.neural_collapse as nc
import torch
from conftest import EPS64, to_framework
from test_collapse import ref_entropy_rows, softmax
from test_neural_collapse import ref_nc4


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


# ---- attention entropy ------------------------------------------------------------------------------


def test_attention_entropy_eps_zero_is_zero_log_zero(rng, framework):
    """eps=0 is −Σ A ln(A + 0) with 0 ln 0 = 0, the eps=None value; it gave NaN (0 · ln 0) for every
    row holding a zero weight (a one-hot or masked-out key)."""
    a = softmax(rng.standard_normal((3, 5)))
    a[0] = 0.0
    a[0, 2] = 1.0  # one-hot
    a[1, 1] = 0.0
    a[1] /= a[1].sum()
    x = to_framework(a, framework)
    ref = ref_entropy_rows(a)
    got = _np(rc.attention_entropy(x, eps=0.0, reduce="none"))
    np.testing.assert_allclose(got, ref, rtol=0, atol=4 * EPS64)
    assert float(rc.attention_entropy(x, eps=0.0)) == pytest.approx(ref.mean(), rel=1e-14)
    # eps > 0 is unchanged: a zero weight contributes 0 · ln(eps) = 0
    np.testing.assert_allclose(_np(rc.attention_entropy(x, eps=1e-6, reduce="none")),
                               ref_entropy_rows(a, eps=1e-6), rtol=0, atol=4 * EPS64)


def test_attention_entropy_ignores_nan_at_masked_keys(rng, framework):
    """softmax over a fully masked query row (all logits −inf) is a NaN row; with the mask that
    produced it those entries are masked out and must be ignored, as the docstring says of masked
    entries. They raised "A contains NaN" (check_finite=True) or made every row of the matrix NaN
    (check_finite=False)."""
    q, k = 4, 6
    keep = np.ones((2, q, k), bool)
    keep[0, 1] = False  # a fully masked query row
    keep[1, :, 4:] = False  # key padding
    logits = np.where(keep, rng.standard_normal((2, q, k)), -np.inf)
    with np.errstate(invalid="ignore"):
        a = softmax(logits)
    assert np.isnan(a[0, 1]).all()
    x = to_framework(a, framework)
    m = torch.from_numpy(keep) if framework == "torch" else keep
    ref = ref_entropy_rows(np.where(keep, a, 0.0), keep, normalized=True)
    for check in (True, False):
        got = _np(rc.attention_entropy(x, mask=m, normalized=True, reduce="none", check_finite=check))
        np.testing.assert_allclose(got, ref, rtol=0, atol=4 * EPS64)  # NaN only for the masked row
        mean = float(rc.attention_entropy(x, mask=m, normalized=True, check_finite=check))
        assert mean == pytest.approx(np.nanmean(ref), rel=1e-14)
    # NaN at a key that takes part is still an error
    b = a.copy()
    b[1, 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"NaN or Inf.*batch index \(1,\)"):
        rc.attention_entropy(to_framework(b, framework), mask=m)


# ---- NC4 ties ---------------------------------------------------------------------------------------

# Integer features where sample 9 (class 0) is exactly equidistant from the means of classes 0
# and 1 (‖h − μ₀‖² = ‖h − μ₁‖² = 3.8125, exactly representable): the nearest class centre is then
# class 0, the lowest index, in the reference (argmin of the direct distances, Papyan's notebook).
_TIE_H = [[1, 2], [0, 0], [1, 0], [-1, -3], [3, -2], [0, -2], [2, 1], [1, 3], [0, 3], [-1, 2], [-2, 2], [2, 2]]
_TIE_W = [[-2, 1], [2, -2], [-1, -2]]
_TIE_B = [1, -1, 0]


def _ref_nc4_means(h, mu, y, W, b):
    """ref_nc4 with given class means (argmin of the direct distances, first index on ties)."""
    ncc = np.array([np.argmin([np.sum((x - m) ** 2) for m in mu]) for x in h])
    return 1 - np.mean(ncc == np.argmax(h @ W.T + b, axis=1))


def _stream_nc4(h, y, K, W, b, framework, sizes):
    """(nc4, ref_nc4 on the stream's own class means): the streamed means come from shifted sums and
    may differ from the one-shot's by an ulp, which moves exact ties; the rule must be the same."""
    st = nc.NeuralCollapse(K, h.shape[1], passes=2, W=to_framework(W, framework), b=to_framework(b, framework))
    for _ in range(2):
        i = 0
        for s in sizes:
            yy = torch.from_numpy(y[i:i + s]) if framework == "torch" else y[i:i + s]
            st.update(to_framework(h[i:i + s], framework), yy)
            i += s
        if st.current_pass == 1:
            st.start_second_pass()
    return float(st.compute()["nc4"]), _ref_nc4_means(h, _np(st.class_means()), y, W, b)


def test_nc4_exact_ties_go_to_the_lowest_class(framework):
    """An exact tie in the nearest-class-centre distances goes to the lowest class index (as the
    docstring says and the references do). The expanded form ‖μ‖² − 2 h·μ around the mean of the
    means rounds the two tied distances apart and picked class 1."""
    h = np.array(_TIE_H, dtype=np.float64)
    y = np.arange(12) % 3
    W, b = np.array(_TIE_W, dtype=np.float64), np.array(_TIE_B, dtype=np.float64)
    ref = ref_nc4(h, y, 3, W, b)
    yy = torch.from_numpy(y) if framework == "torch" else y
    got = nc.nc4(to_framework(h, framework), yy, to_framework(W, framework), to_framework(b, framework))
    assert float(got) == ref
    got_s, ref_s = _stream_nc4(h, y, 3, W, b, framework, (5, 7))
    assert got_s == ref_s


def test_nc4_matches_direct_distances_on_integer_features(rng, framework):
    """Small integer features are full of exact distance ties: NC4 (one-shot and streaming) equals
    the reference's direct ‖h − μ_c‖² argmin on each of many draws."""
    for _ in range(60):
        K, d, n = int(rng.integers(2, 5)), int(rng.integers(1, 4)), 12
        h = rng.integers(-3, 4, (n, d)).astype(np.float64)
        y = np.arange(n) % K
        W = rng.integers(-2, 3, (K, d)).astype(np.float64)
        b = rng.integers(-1, 2, K).astype(np.float64)
        ref = ref_nc4(h, y, K, W, b)
        yy = torch.from_numpy(y) if framework == "torch" else y
        got = nc.nc4(to_framework(h, framework), yy, to_framework(W, framework), to_framework(b, framework))
        assert float(got) == ref, (h.tolist(), W.tolist(), b.tolist())
        got_s, ref_s = _stream_nc4(h, y, K, W, b, framework, (5, n - 5))
        assert got_s == ref_s, (h.tolist(), W.tolist(), b.tolist())


def test_nc4_near_ties_large_offset(rng, framework):
    """A common offset of 1e6 on top of well separated classes: the candidate tolerance does not
    change clear decisions (the reference on the same float64 data)."""
    K, d, n = 4, 5, 80
    mu = 3 * rng.standard_normal((K, d))
    y = np.arange(n) % K
    h = 1e6 + mu[y] + rng.standard_normal((n, d))
    W = rng.standard_normal((K, d))
    b = -W @ np.full(d, 1e6)
    yy = torch.from_numpy(y) if framework == "torch" else y
    got = nc.nc4(to_framework(h, framework), yy, to_framework(W, framework), to_framework(b, framework))
    assert float(got) == pytest.approx(ref_nc4(h, y, K, W, b), abs=1e-15)
    assert math.isfinite(float(got))


def test_classifier_as_nested_lists_sets_K(rng):
    """W as nested lists gives K = its rows, as an array W does: a class without samples is named
    (it said "W must have shape (2, 4)", K taken from the labels because a list has no .shape)."""
    h = rng.standard_normal((12, 4))
    y = np.arange(12) % 2
    W = rng.standard_normal((3, 4))
    for fn in (lambda w: nc.nc4(h, y, w), lambda w: nc.nc3(h, y, w)):
        for w in (W, W.tolist()):
            with pytest.raises(ValueError, match="class 2 has no samples"):
                fn(w)
    y3 = np.arange(12) % 3
    assert float(nc.nc4(h, y3, W.tolist())) == float(nc.nc4(h, y3, W))
