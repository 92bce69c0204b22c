"""Property tests over shapes (0 and 1 included), dtypes, strides and values.

Hypothesis reports the falsifying example (and a reproduction blob) when one fails.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import rankscope as rs
from conftest import (
    EPS64,
    as_numpy,
    assert_sv_close,
    route_of,
    sv_tolerance,
    torch,
)
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from rankscope import metrics

# RANKSCOPE_HYPOTHESIS_EXAMPLES=2000 for a deeper search than the default run's
SETTINGS = settings(
    max_examples=int(os.environ.get("RANKSCOPE_HYPOTHESIS_EXAMPLES", "150")),
    deadline=None,
    print_blob=True,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.filter_too_much,
    ],
)
METHODS = ("auto", "exact", "gram")
# bounded so that float16 neither overflows nor squares out of range; subnormals allowed
BOUND = {"float16": 300.0, "float32": 1e6, "float64": 1e6}


@st.composite
def matrices(draw, max_side=12, batch=True, dtypes=("float16", "float32", "float64")):
    """A (possibly batched) matrix of a random dtype, as a random strided view of a larger array."""
    dtype = draw(st.sampled_from(dtypes))
    m = draw(st.integers(0, max_side))
    n = draw(st.integers(0, max_side))
    b = draw(st.sampled_from([(), (1,), (3,), (2, 2)])) if batch else ()
    step_m, step_n = draw(st.sampled_from([1, 2, -1])), draw(st.sampled_from([1, 3, -2]))
    shape = (*b, m * abs(step_m), n * abs(step_n))
    elements = st.floats(
        -BOUND[dtype], BOUND[dtype], width=int(dtype[-2:]), allow_nan=False, allow_infinity=False
    )
    base = draw(hnp.arrays(dtype, shape, elements=elements))
    view = base[..., ::step_m, ::step_n]
    if draw(st.booleans()):
        view = np.swapaxes(view, -1, -2)
    return view


def _framework(x, use_torch):
    return torch.from_numpy(x.copy(order="C")).mT.contiguous().mT if use_torch else x


@SETTINGS
@given(x=matrices(), method=st.sampled_from(METHODS), use_torch=st.booleans())
def test_svdvals_matches_numpy(x, method, use_torch):
    xx = _framework(x, use_torch)
    s = rs.svdvals(xx, method=method)
    assert tuple(s.shape) == (*x.shape[:-2], min(x.shape[-2:]))
    assert_sv_close(s, x, method)
    sn = as_numpy(s)
    assert np.all(sn >= 0)
    if sn.shape[-1] > 1:
        assert np.all(np.diff(sn.astype(np.float64), axis=-1) <= 0)


@SETTINGS
@given(x=matrices(), method=st.sampled_from(METHODS))
def test_transpose_invariance(x, method):
    s = rs.svdvals(x, method=method, dtype="float64")
    st_ = rs.svdvals(np.swapaxes(x, -1, -2), method=method, dtype="float64")
    *_, m, n = x.shape
    ref = np.linalg.svd(x.astype(np.float64), compute_uv=False) if min(m, n) and x.size else s
    tol = 2 * sv_tolerance(route_of(x.dtype.name, m, n, method), m, n, ref, "float64")
    assert np.all(np.abs(s - st_) <= tol)


@SETTINGS
@given(
    x=matrices(dtypes=("float64",)),
    c=st.floats(-1e3, 1e3).filter(lambda v: abs(v) > 1e-3),
    method=st.sampled_from(METHODS),
)
def test_scaling(x, c, method):
    """s(c·A) = |c|·s(A): float64, any c (the rounding of c·A is within the route's tolerance)."""
    s = rs.svdvals(x, method=method)
    sc = rs.svdvals(c * x, method=method)
    *_, m, n = x.shape
    ref = np.abs(c) * s
    tol = (
        2 * sv_tolerance(route_of("float64", m, n, method), m, n, ref, "float64") + 4 * EPS64 * ref
    )
    tol = (
        tol + abs(c) * 8 * np.finfo(np.float64).smallest_subnormal
    )  # s(A)'s subnormal steps, times |c|
    assert np.all(np.abs(sc - ref) <= tol)


@SETTINGS
@given(
    x=matrices(dtypes=("float16", "float32")), e=st.integers(-4, 4), method=st.sampled_from(METHODS)
)
def test_power_of_two_scaling_narrow(x, e, method):
    """Scaling narrow data by 2**e is exact, so s(2**e·A) = 2**e·s(A) to the route's tolerance."""
    c = np.float64(2.0**e)
    scaled = (x.astype(np.float64) * c).astype(x.dtype)
    assume(np.array_equal(scaled.astype(np.float64), x.astype(np.float64) * c))  # no over/underflow
    s = rs.svdvals(x, method=method, dtype="float64")
    sc = rs.svdvals(scaled, method=method, dtype="float64")
    *_, m, n = x.shape
    tol = 2 * sv_tolerance(route_of(x.dtype.name, m, n, method), m, n, c * s, "float64")
    assert np.all(np.abs(sc - c * s) <= tol)


@SETTINGS
@given(x=matrices(), method=st.sampled_from(METHODS))
def test_frobenius_norm(x, method):
    """Σ s² = ‖A‖_F² (the trace of the Gram)."""
    s = rs.svdvals(x, method=method, dtype="float64")
    a = x.astype(np.float64)
    fro2 = np.sum(a * a, axis=(-2, -1))
    *_, m, n = x.shape
    k, L = min(m, n), max(m, n)
    # atol: squares of subnormal-range values lose their precision on both sides
    assert np.allclose(np.sum(s * s, axis=-1), fro2, rtol=4 * (k + L) * EPS64, atol=1e-290)


@SETTINGS
@given(
    x=matrices(),
    method=st.sampled_from(METHODS),
    policy=st.sampled_from(["auto", "numpy", "data", "nr", "ww"]),
)
def test_rank_bounds(x, method, policy):
    r = np.asarray(rs.matrix_rank(x, method=method, policy=policy))
    loss = np.asarray(rs.rank_loss(x, method=method, policy=policy))
    *_, m, n = x.shape
    k = min(m, n)
    assert np.all((0 <= r) & (r <= k))
    assert np.array_equal(r + loss, np.full_like(r, k))
    s = rs.svdvals(x, method=method, dtype="float64")
    rep = metrics.report(s, shape=(m, n), dtype=x.dtype, policy=policy)
    assert np.array_equal(np.asarray(rep["matrix_rank"]), r)
    assert np.array_equal(
        np.asarray(rep["matrix_rank"]), np.sum(s > np.asarray(rep["tol"])[..., None], axis=-1)
    )


@SETTINGS
@given(x=matrices(max_side=10), method=st.sampled_from(METHODS))
def test_metric_bounds(x, method):
    rep = {
        k: np.atleast_1d(np.asarray(v)).reshape(-1)
        for k, v in rs.spectrum_report(x, method=method).items()
    }
    *_, m, n = x.shape
    k = min(m, n)
    if k == 0:
        assert np.all(rep["matrix_rank"] == 0) and np.all(np.isnan(rep["sv_max"]))
        return
    s = rs.svdvals(x, method=method, dtype="float64").reshape(-1, k)
    for i in range(s.shape[0]):
        row = {name: v[i] for name, v in rep.items()}
        nonzero = int(np.sum(s[i] > 0))
        assert row["sv_min"] <= row["sv_max"]
        assert row["condition_number"] >= 1 or row["sv_max"] == 0
        if s[i, 0] == 0:
            for name in (
                "effective_rank",
                "rankme",
                "stable_rank",
                "participation_ratio",
                "nuclear_ratio",
                "energy_rank",
                "matrix_rank",
            ):
                assert row[name] == 0, name
            continue
        slack = 1e-9 * k
        assert 1 - slack <= row["effective_rank"] <= nonzero + slack
        assert 1 - slack <= row["stable_rank"] <= row["participation_ratio"] + slack
        assert row["participation_ratio"] <= nonzero + slack
        assert 1 - slack <= row["nuclear_ratio"] <= nonzero + slack
        # values at or below tol add at most k·tol²/s₁² to the stable rank
        assert row["stable_rank"] <= row["matrix_rank"] + k * (row["tol"] / s[i, 0]) ** 2 + slack
        assert 1 <= row["energy_rank"] <= nonzero
        assert 1 <= row["matrix_rank"] <= k
        if row["sv_min"] > 0:
            assert row["log10_sv_min"] == pytest.approx(
                np.log10(row["sv_min"]), rel=1e-15, abs=1e-15
            )
        else:
            assert row["log10_sv_min"] == -np.inf


@SETTINGS
@given(data=st.data(), count=st.integers(0, 14))
def test_ragged_list_equals_one_by_one(data, count):
    shapes = data.draw(
        st.lists(st.tuples(st.integers(0, 9), st.integers(0, 9)), min_size=count, max_size=count)
    )
    # repeat some shapes so that compact groups form
    shapes = shapes + shapes[: count // 2]
    dtypes = data.draw(
        st.lists(
            st.sampled_from(["float16", "float32", "float64"]),
            min_size=len(shapes),
            max_size=len(shapes),
        )
    )
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    mats = [rng.standard_normal(sh).astype(dt) for sh, dt in zip(shapes, dtypes)]
    method = data.draw(st.sampled_from(METHODS))
    out = rs.svdvals(mats, method=method)
    assert len(out) == len(mats)
    for x, s in zip(mats, out):
        assert np.array_equal(s, rs.svdvals(x, method=method))


@SETTINGS
@given(
    s=hnp.arrays(
        np.float64,
        st.tuples(st.integers(0, 3), st.integers(0, 12)),
        elements=st.floats(0, 1e6, allow_subnormal=True),
    ),
    perm_seed=st.integers(0, 2**32 - 1),
)
def test_metrics_order_invariant(s, perm_seed):
    """metrics.* sort for themselves: any order of the values gives the same report."""
    rng = np.random.default_rng(perm_seed)
    shuffled = np.stack([rng.permutation(r) for r in s]) if s.shape[0] else s
    shape = (s.shape[-1], s.shape[-1] + 2)
    a = metrics.report(np.sort(s, axis=-1)[..., ::-1], shape=shape)
    b = metrics.report(shuffled, shape=shape)
    for name in a:
        assert np.array_equal(a[name], b[name], equal_nan=True), name


@pytest.mark.parametrize("method", METHODS)
@SETTINGS
@given(x=matrices(max_side=8, dtypes=("float32", "float64")))
def test_input_unchanged(method, x):
    before = x.copy()
    rs.svdvals(x, method=method)
    rs.spectrum_report(x, method=method)
    assert np.array_equal(x, before)
