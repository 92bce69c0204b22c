"""METRICS.md §7: NaN/Inf, bad inputs and arguments give clear errors (or NaN data); no crashes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rankscope as rs
from conftest import COMPACT_MAX_K, as_numpy, route_of, to_framework, torch
from rankscope import metrics

METHODS = ("auto", "exact", "gram")


def _route_shapes():
    """One shape per route of float32 data with method='gram' (plus exact via method/float64)."""
    out = {"compact-gram": (7, 5)}
    for k in range(COMPACT_MAX_K - 1, COMPACT_MAX_K + 40):
        if route_of("float32", k, k, "gram") == "gram":
            out["gram"] = (k, k + 1)
            break
    return out


ROUTE_SHAPES = _route_shapes()


# ---- NaN and Inf ---------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", [(0,), (9,), (1, 2)])
def test_check_finite_names_the_batch_index(rng, bad, where):
    x = rng.standard_normal((2, 5, 6, 4)) if len(where) == 2 else rng.standard_normal((10, 6, 4))
    x[(*where, 3, 1)] = bad
    idx = str(
        tuple(
            int(i)
            for i in np.unravel_index(
                np.ravel_multi_index(where, x.shape[: len(where)]), x.shape[:-2]
            )
        )
    )
    for method in METHODS:
        with pytest.raises(ValueError, match=r"NaN or Inf.*" + re_escape(idx)) as e:
            rs.svdvals(x, method=method)
        assert "check_finite=False" in str(e.value)
        with pytest.raises(ValueError, match="NaN or Inf"):
            rs.matrix_rank(x, method=method)
        with pytest.raises(ValueError, match="NaN or Inf"):
            rs.spectrum_report(x, method=method)
    with pytest.raises(ValueError, match="NaN or Inf"):
        rs.participation_ratio(x)


def re_escape(s: str) -> str:
    import re

    return re.escape(s)


def test_check_finite_counts_more_and_names_list_items(rng):
    x = rng.standard_normal((6, 4, 4))
    x[[1, 3, 4], 0, 0] = np.nan
    with pytest.raises(ValueError, match=r"\(1,\) and 2 more"):
        rs.svdvals(x)
    mats = [rng.standard_normal((3, 3)), rng.standard_normal((5, 2)), rng.standard_normal((4, 4))]
    mats[2][1, 1] = np.inf
    with pytest.raises(ValueError, match=r"x\[2\]"):
        rs.svdvals(mats)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_only_affects_its_matrix(rng, dtype, method, bad):
    """check_finite=False: NaN values for the affected matrices, the others bitwise equal to the
    clean run, on every route (a NaN lane next to good lanes in a compact group included)."""
    shapes = list(ROUTE_SHAPES.values()) + [(3, 1), (1, 1), (40, 3)]
    for shape in shapes:
        clean = rng.standard_normal((11, *shape))
        dirty = clean.copy()
        dirty[2, shape[0] // 2, shape[1] - 1] = bad
        dirty[8, 0, 0] = -bad
        xc, xd = to_framework(clean, "torch", dtype), to_framework(dirty, "torch", dtype)
        sc = rs.svdvals(xc, method=method)
        sd = rs.svdvals(xd, method=method, check_finite=False)
        assert torch.isnan(sd[[2, 8]]).all(), (shape, route_of(dtype, *shape, method))
        good = [i for i in range(11) if i not in (2, 8)]
        assert torch.equal(sd[good], sc[good]), (shape, route_of(dtype, *shape, method))
        r = rs.spectrum_report(xd, method=method, check_finite=False)
        rc = rs.spectrum_report(xc, method=method)
        for name, v in r.items():
            if v.dtype == torch.int64:
                assert (v[[2, 8]] == -1).all(), name
            else:
                assert torch.isnan(v[[2, 8]]).all(), name
            assert torch.equal(v[good], rc[name][good]), name


def test_nan_in_ragged_list(rng):
    mats = [rng.standard_normal(s) for s in [(5, 4)] * 9 + [(80, 70), (3, 3)]]
    mats[4][0, 0] = np.nan
    mats[9][5, 5] = np.nan
    clean = rs.svdvals(
        [m if i not in (4, 9) else np.ones_like(m) for i, m in enumerate(mats)], method="gram"
    )
    got = rs.svdvals(mats, method="gram", check_finite=False)
    for i, (g, c) in enumerate(zip(got, clean)):
        if i in (4, 9):
            assert np.isnan(g).all()
        else:
            assert np.array_equal(g, c), i
    ranks = rs.matrix_rank(mats, check_finite=False)
    assert ranks[4] == -1 and ranks[9] == -1 and ranks[0] == 4


def test_participation_ratio_nan_without_check(rng):
    x = rng.standard_normal((3, 10, 4))
    x[1, 2, 3] = np.nan
    pr = rs.participation_ratio(x, check_finite=False)
    assert np.isnan(pr[1]) and np.isfinite(pr[[0, 2]]).all()
    assert np.array_equal(pr[[0, 2]], rs.participation_ratio(x[[0, 2]]))


@pytest.mark.parametrize("center", [True, False])
def test_participation_ratio_at_extreme_float64_scales(rng, center):
    """PR is scale-free: the same value for c·X at c = 1e±160 and 1e300, where the squares of the
    covariance's entries overflow or underflow; numpy and torch (and JAX on the host) alike."""
    x = rng.standard_normal((2, 9, 4))
    ref = rs.participation_ratio(x, center=center)
    for c in (1e160, 1e-160, 1e300):
        np.testing.assert_allclose(rs.participation_ratio(x * c, center=center), ref, rtol=1e-13)
        np.testing.assert_allclose(rs.participation_ratio(torch.from_numpy(x * c), center=center).numpy(), ref,
                                   rtol=1e-13)


# ---- bad inputs ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x", [np.ones(3), np.float64(2.0), 3.0, [1.0, 2.0], torch.ones(4), np.ones((0,))]
)
def test_fewer_than_two_dims(x):
    for fn in (
        rs.svdvals,
        rs.matrix_rank,
        rs.effective_rank,
        rs.spectrum_report,
        rs.participation_ratio,
    ):
        with pytest.raises(ValueError, match="2 dimensions"):
            fn(x)


@pytest.mark.parametrize(
    "x",
    [
        np.ones((3, 3), dtype=np.complex128),
        np.ones((3, 3), dtype=np.complex64),
        torch.ones(3, 3, dtype=torch.complex64),
        torch.ones(3, 3, dtype=torch.complex128),
    ],
)
def test_complex_rejected(x):
    for fn in (rs.svdvals, rs.matrix_rank, rs.participation_ratio):
        with pytest.raises(TypeError, match="complex"):
            fn(x)
    with pytest.raises(TypeError, match="complex"):
        rs.svdvals([x])
    with pytest.raises(TypeError, match="complex"):
        metrics.sv_max(x[0])


@pytest.mark.parametrize(
    "x",
    [
        np.array([[object(), 1], [2, 3]], dtype=object),
        np.array([["a", "b"], ["c", "d"]]),
        [["a", "b"], ["c", "d"]],
        "abc",
        b"abcd",
        None,
        {"a": 1},
        np.ones((2, 2), dtype=np.longdouble)
        if np.dtype(np.longdouble).itemsize > 8
        else np.ones((2, 2), "M8[s]"),
        np.ones((2, 2), dtype="M8[s]"),
        torch.ones(2, 2, dtype=torch.float8_e4m3fn)
        if hasattr(torch, "float8_e4m3fn")
        else np.ones((2, 2), "m8"),
    ],
    ids=lambda v: type(v).__name__,
)
def test_unsupported_types(x):
    with pytest.raises((TypeError, ValueError)) as e:
        rs.svdvals(x)
    assert e.type is TypeError or "dimensions" in str(e.value)


def test_ragged_nested_list():
    with pytest.raises(ValueError, match="regular array"):
        rs.svdvals([[1.0, 2.0], [3.0]])


def test_ragged_nested_list_says_how_to_pass_different_shapes():
    """A list of matrices of different shapes must hold arrays: one nested list among them made the
    whole list a nested list, and the error did not say so."""
    hint = r"regular array \(.*\); for matrices \(or spectra\) of different shapes pass a list of arrays"
    with pytest.raises(ValueError, match=r"^x: nested lists must form a " + hint):
        rs.svdvals([np.ones((3, 2)), [[1.0, 2.0], [3.0, 4.0]]])
    with pytest.raises(ValueError, match=r"^s: nested lists must form a " + hint):
        metrics.sv_max([[3.0, 1.0], [2.0]])


def test_ragged_list_with_3d_element(rng):
    with pytest.raises(ValueError, match=r"x\[1\] must be a 2-D matrix"):
        rs.svdvals([rng.standard_normal((3, 4)), rng.standard_normal((2, 3, 4))])
    with pytest.raises(ValueError, match="2-D"):
        rs.matrix_rank([torch.ones(3, 4), torch.ones(3)])


def test_meta_device_and_mixed_devices():
    """A torch 'meta' tensor stands for data on a device this build has no backend for."""
    meta = torch.ones(3, 4, device="meta")
    for fn in (rs.svdvals, rs.matrix_rank, rs.spectrum_report):
        with pytest.raises(ValueError, match="device"):
            fn(meta)
    with pytest.raises(ValueError, match="device"):
        rs.svdvals([torch.ones(3, 4), meta])
    with pytest.raises(ValueError, match="device"):
        metrics.effective_rank(torch.ones(3, device="meta"))


def test_bad_method_dtype():
    x = np.eye(3)
    for fn in (rs.svdvals, rs.matrix_rank, rs.spectrum_report, rs.stable_rank):
        with pytest.raises(ValueError, match="method"):
            fn(x, method="svd")
        with pytest.raises(ValueError, match="method"):
            fn([x, x], method="")
    for bad in (
        "float16",
        "int32",
        np.int64,
        "bfloat16",
        "complex128",
        torch.float16,
        "nonsense",
        3,
    ):
        with pytest.raises(TypeError, match="dtype"):
            rs.svdvals(x, dtype=bad)


def test_bad_metric_arguments():
    x = np.eye(3)
    with pytest.raises(ValueError, match="tau"):
        rs.energy_rank(x, tau=0)
    with pytest.raises(ValueError, match="tau"):
        rs.spectrum_report(x, tau=2.0)
    with pytest.raises(ValueError, match="eps"):
        rs.rankme(x, eps=-1.0)
    with pytest.raises(ValueError, match="policy"):
        rs.rank_loss(x, policy="NUMPY")
    with pytest.raises(ValueError, match="on"):
        rs.spectrum_report(x, on="l")
    with pytest.raises(TypeError):
        rs.svdvals(x, "exact")  # options are keyword-only
    with pytest.raises(TypeError):
        rs.set_num_threads(2.0)


@pytest.mark.parametrize("shape", [(0, 0), (0, 3), (3, 0), (4, 0, 2), (0, 2, 2)])
def test_empty_matrices(framework, shape):
    x = to_framework(np.zeros(shape), framework, "float32")
    s = rs.svdvals(x)
    assert tuple(s.shape) == (*shape[:-2], min(shape[-2:]))
    assert np.all(as_numpy(rs.matrix_rank(x)) == 0)
    assert np.all(as_numpy(rs.rank_loss(x)) == 0)
    assert [len(v) for v in rs.svdvals([np.zeros((0, 4)), np.zeros((2, 0))])] == [0, 0]
    assert list(rs.matrix_rank([np.zeros((0, 4)), np.zeros((2, 0))])) == [0, 0]


# ---- nothing crashes -----------------------------------------------------------------------------

_FUZZ = textwrap.dedent(
    """
    import numpy as np, torch, rankscope as rs
    from rankscope import metrics
    rng = np.random.default_rng(0)
    cases = [
        np.zeros((0, 0)), np.zeros((1, 0)), np.full((3, 3), np.nan), np.full((4, 2), np.inf),
        np.full((2, 9), 1e308), np.full((70, 70), 1e308),
        np.full((5, 5), 5e-324), np.full((70, 70), 5e-324),
        np.broadcast_to(np.ones((1, 1)), (3, 100000)), np.ones((1, 100000)).T,
        rng.standard_normal((7, 5))[::-1, ::-2], np.ones((2, 2), dtype=">f4"),
        np.ones((2, 3, 0, 4)),
        torch.full((3, 4), float("nan"), dtype=torch.bfloat16),
        torch.ones(3, 4, dtype=torch.float16) * 65504,
        torch.zeros(0, 3, 3), torch.ones(3, 3)[:, :0], [np.ones((3, 3)), np.full((2, 2), np.nan)],
        [], [[]], [[1]], [[True, False]], np.ones((2, 2), dtype=np.uint64) * (2**64 - 1),
    ]
    calls = [
        lambda x: rs.svdvals(x, check_finite=False),
        lambda x: rs.svdvals(x, method="gram", check_finite=False),
        lambda x: rs.svdvals(x, method="exact", check_finite=False),
        lambda x: rs.spectrum_report(x, check_finite=False),
        lambda x: rs.participation_ratio(x, check_finite=False),
        lambda x: rs.svdvals(x),
    ]
    n = 0
    for x in cases:
        for f in calls:
            try:
                f(x)
            except (ValueError, TypeError) as e:
                pass
            n += 1
    for s in ([np.nan], [np.inf, 1.0], [], [[]], [0.0, 0.0], [1e308, 1e308], [5e-324], [3.0, -0.0]):
        try:
            metrics.report(s, shape=(3, 3))
        except (ValueError, TypeError):
            pass
        n += 1
    print("done", n)
    """
)


def test_nothing_crashes():
    """Odd inputs in a child process: only ValueError/TypeError, never a crash or another error."""
    r = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _FUZZ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.startswith("done")
