"""Review of the collapse diagnostics and neural-collapse metrics: edge cases found against float64
numpy transcriptions of the reference formulas (see tests/test_collapse.py and
tests/test_neural_collapse.py for the transcriptions themselves).
"""

from __future__ import annotations

import numpy as np
import pytest
import rankscope.collapse as rc
import torch
from conftest import EPS64, to_framework
from test_collapse import ref_entropy_rows, softmax


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
