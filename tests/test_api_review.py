"""Inputs a demanding numpy/PyTorch/JAX user passes to the array API, checked against numpy or closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import rankscope as rs
from rankscope import metrics

# ---- options a function does not take are refused, not ignored ------------------------------------


@pytest.mark.parametrize("fn", [rs.sv_min, rs.sv_max, rs.log10_sv_min, rs.condition_number, rs.stable_rank,
                                rs.nuclear_ratio])
@pytest.mark.parametrize("kw", [{"atol": 0.5}, {"policy": "junk"}, {"tau": 0.5}, {"on": "s2"}, {"foo": 1}])
def test_simple_metrics_refuse_options_they_do_not_take(fn, kw):
    """sv_max(x, atol=0.5) returned s₁ as if atol meant something; foo=1 raised 'evaluate() got ...'."""
    (name,) = kw
    with pytest.raises(TypeError, match=rf"{fn.__name__}\(\) got an unexpected keyword argument '{name}'"):
        fn(np.eye(3), **kw)


# ---- tau, eps, threshold: wrong types name the argument ------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda v: rs.energy_rank(np.eye(3), tau=v), "tau"),
        (lambda v: metrics.energy_rank([3.0, 1.0], tau=v), "tau"),
        (lambda v: rs.rankme(np.eye(3), eps=v), "eps"),
        (lambda v: metrics.rankme([3.0, 1.0], eps=v), "eps"),
        (lambda v: rs.weak_rank_loss(np.eye(3), threshold=v), "threshold"),
        (lambda v: metrics.weak_rank_loss([3.0, 1.0], threshold=v), "threshold"),
        (lambda v: rs.spectrum_report(np.eye(3), tau=v), "tau"),
        (lambda v: metrics.report([3.0, 1.0], shape=(2, 2), threshold=v), "threshold"),
    ],
)
@pytest.mark.parametrize("bad", [None, "0.5", [0.5], np.array([0.5, 0.9]), True, 1j])
def test_metric_parameters_of_the_wrong_type(call, name, bad):
    """Was: "float() argument must be ... not 'NoneType'", "could not convert string to float",
    "only 0-dimensional arrays ...", and tau="0.5" was accepted as 0.5."""
    with pytest.raises(TypeError, match=rf"^{name} must be a real number, got "):
        call(bad)


def test_metric_parameters_of_numeric_types_still_work():
    s = np.array([3.0, 1.0])
    assert metrics.energy_rank(s, tau=np.float32(0.5)) == 1
    assert metrics.energy_rank(s, tau=1) == 2
    assert metrics.weak_rank_loss(s, threshold=np.int64(2)) == 1
    p = np.array([0.75, 0.25]) + 1e-3
    assert metrics.rankme(s, eps=np.float64(1e-3)) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)


def test_rankme_infinite_eps_is_refused():
    """eps=inf gave rankme 0.0 (p = inf, exp(-inf))."""
    with pytest.raises(ValueError, match="eps must be a finite non-negative number, got inf"):
        metrics.rankme([3.0, 1.0], eps=float("inf"))
    with pytest.raises(ValueError, match="eps must be a finite"):
        rs.rankme(np.eye(3), eps=np.inf)
