"""svdvals against numpy.linalg.svd(compute_uv=False) of the float64 values the caller stored.

Tolerances: conftest.sv_tolerance (exact: 2·max(m, n)·eps64·s₁; gram: |δs²| ≤ 2·(k + √L)·eps64·s₁²).
"""

from __future__ import annotations

import numpy as np
import pytest
import rankscope as rs
from conftest import (
    COMPACT_MAX_K,
    DTYPES,
    EPS64,
    FW_DTYPES,
    SPECTRA,
    as_numpy,
    assert_descending,
    assert_sv_close,
    engineered,
    prescribed,
    route_of,
    stored64,
    to_framework,
    torch,
)

METHODS = ("auto", "exact", "gram")
# Smaller sides straddling every threshold: 1, 2, 3, the 32-wide edges of the compact kernels'
# register blocks, compact_max_k ± 1 (compact-gram → gram) and an odd size.
KS = sorted(
    {1, 2, 3, 31, 32, 33, 63, 64, 65, 97, COMPACT_MAX_K - 1, COMPACT_MAX_K, COMPACT_MAX_K + 1}
)


def _shape(k: int, orient: str) -> tuple[int, int]:
    if orient == "square":
        return k, k
    big = 2 * k + 5
    return (big, k) if orient == "tall" else (k, big)


# ---- routes --------------------------------------------------------------------------------------


def test_route_table():
    """Route invariants that do not depend on the (tuned) crossovers: float64 'auto' and every
    'exact' go to dgesdd; Gram routes are chosen otherwise, the compact kernel never above
    compact_max_k, always for small k, and the two-stage eigensolver for very large k."""
    c = COMPACT_MAX_K
    for dt in ("float16", "bfloat16", "float32", "float64"):
        auto = "exact" if dt == "float64" else None
        for m, n in ((1, 1), (3, 1000), (1000, 3), (33, 31), (c, c), (c + 1, c + 1), (4096, 4096)):
            assert route_of(dt, m, n, "exact") == "exact"
            r = route_of(dt, m, n, "gram")
            assert r in ("compact-gram", "gram", "gram-2stage")
            assert route_of(dt, m, n, "auto") == (auto or r)
            if min(m, n) <= 32:
                assert r == "compact-gram"
            if min(m, n) > c:
                assert r != "compact-gram"
        assert route_of(dt, 4096, 4096, "gram") == "gram-2stage"
    with pytest.raises(ValueError):
        route_of("float32", 3, 3, "fast")


def _route_boundaries(dtype="float32", method="gram"):
    """(m, n) pairs on both sides of the changes of route found by scanning k (square) and, for
    each k, L = max(m, n): the square changes and the first, middle and last k whose route changes
    with L (tall and wide)."""
    pairs = set()
    by_l = []
    for k in range(1, COMPACT_MAX_K + 3):
        if route_of(dtype, k, k, method) != route_of(dtype, k + 1, k + 1, method):
            pairs |= {(k, k), (k + 1, k + 1)}
        for L in range(k, 4 * k + 2):
            if route_of(dtype, k, L, method) != route_of(dtype, k, L + 1, method):
                by_l.append((k, L))
                break
    for k, L in {by_l[0], by_l[len(by_l) // 2], by_l[-1]} if by_l else ():
        pairs |= {(k, L), (k, L + 1), (L, k), (L + 1, k)}
    return sorted(pairs)


BOUNDARIES = _route_boundaries()


@pytest.mark.parametrize(
    "shape", BOUNDARIES or [pytest.param((1, 1), marks=pytest.mark.skip("no boundary"))]
)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_both_sides_of_route_boundaries(rng, shape, dtype):
    """Shapes just below and above every crossover the engine has now (found by asking it)."""
    x = rng.standard_normal((9, *shape)).astype(dtype)  # 9: a full 8-lane group and one more
    s = rs.svdvals(x, method="gram")
    assert_sv_close(s, x, "gram")


def test_boundaries_cover_compact_and_gram():
    routes = {route_of("float32", m, n, "gram") for m, n in BOUNDARIES}
    assert {"compact-gram", "gram"} <= routes, BOUNDARIES


@pytest.mark.parametrize("k", KS)
@pytest.mark.parametrize("orient", ["square", "tall", "wide"])
@pytest.mark.parametrize("framework,dtype", FW_DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_every_route_and_dtype(rng, framework, k, orient, dtype, method):
    m, n = _shape(k, orient)
    # three matrices per call: a compact group with partial lanes
    data = np.stack([rng.standard_normal((m, n)) for _ in range(3)])
    x = to_framework(data, framework, dtype)
    s = rs.svdvals(x, method=method)
    assert type(s) is type(x)
    out_dt = "float64" if dtype == "float64" else "float32"
    assert as_numpy(s).dtype.name == out_dt
    assert_descending(s)
    assert_sv_close(s, x, method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kind", SPECTRA)
@pytest.mark.parametrize(
    "shape", [(1, 1), (2, 2), (1000, 3), (3, 1000), (33, 31), (64, 64), (97, 70)]
)
def test_engineered_spectra(rng, kind, shape, method):
    a = engineered(rng, *shape, kind)
    for dtype in ("float32", "float64"):
        x = a.astype(dtype)
        s = rs.svdvals(x, method=method)
        assert_descending(s)
        assert_sv_close(s, x, method, msg=f"spectrum {kind}")


def test_gram_two_stage_route(rng):
    n = next(
        (
            k
            for k in (512, 520, 600, 1024, 1100)
            if route_of("float32", k, k + 3, "auto") == "gram-2stage"
        ),
        None,
    )
    if n is None:
        pytest.skip("no gram-2stage route at k <= 1100 in this build")
    a = engineered(rng, n, n + 3, "logspace").astype(np.float32)
    assert route_of("float32", n, n + 3, "auto") == "gram-2stage"
    s = rs.svdvals(a)
    assert_descending(s)
    assert_sv_close(s, a)


LAPACK_K = COMPACT_MAX_K + 44  # LAPACK's dsytrd, then the lane-batched tridiagonal eigenvalues


@pytest.mark.parametrize("kind", SPECTRA)
def test_lapack_gram_route_engineered(rng, kind):
    """The LAPACK Gram route (dsytrd per matrix, eigenvalues of the tridiagonal forms eight at a
    time in the compact kernels' lock-step dsterf) on engineered spectra, square and wide, in a
    batch of nine (a full group of eight and a partial one)."""
    for m, n in ((LAPACK_K, LAPACK_K), (LAPACK_K, 2 * LAPACK_K + 1)):
        assert route_of("float32", m, n, "gram") == "gram"
        a = np.stack([engineered(rng, m, n, kind) for _ in range(9)])
        for dtype in ("float32", "float64"):
            x = a.astype(dtype)
            s = rs.svdvals(x, method="gram")
            assert_descending(s)
            assert_sv_close(s, x, "gram", msg=f"spectrum {kind}, {dtype}")


def test_lapack_gram_route_lane_independence(rng):
    """On the LAPACK Gram route too a matrix's values are the same bits alone, in a full group of
    eight and in a partial group, and a NaN matrix (check_finite=False) leaves the others alone."""
    x = rng.standard_normal((10, LAPACK_K, LAPACK_K + 3)).astype(np.float32)
    together = rs.svdvals(x)
    alone = np.stack([rs.svdvals(x[i]) for i in range(len(x))])
    assert np.array_equal(together, alone)
    assert np.array_equal(rs.svdvals(x[7:10]), together[7:10])
    bad = x.copy()
    bad[4, 3, 5] = np.nan
    s = rs.svdvals(bad, check_finite=False)
    assert np.all(np.isnan(s[4]))
    assert np.array_equal(np.delete(s, 4, axis=0), np.delete(together, 4, axis=0))


@pytest.mark.parametrize("scale", [1e-300, 1e-150, 1e150, 1e300])
def test_lapack_gram_route_float64_extreme_scales(rng, scale):
    a = engineered(rng, LAPACK_K, LAPACK_K + 10, "gaussian")
    s = rs.svdvals(a * scale, method="gram")
    assert np.all(np.isfinite(s)), s
    assert_sv_close(s / scale, a, "gram", ref=np.linalg.svd(a, compute_uv=False))


# ---- empty and degenerate ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape", [(0, 0), (0, 5), (5, 0), (3, 0, 4), (2, 4, 0), (0, 4, 5), (0, 0, 0)]
)
@pytest.mark.parametrize("method", METHODS)
def test_empty(framework, shape, method):
    x = to_framework(np.zeros(shape), framework, "float32")
    s = rs.svdvals(x, method=method)
    assert tuple(s.shape) == (*shape[:-2], min(shape[-2:]))
    assert as_numpy(s).dtype == np.float32


@pytest.mark.parametrize("framework,dtype", FW_DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_zero_and_one_by_one(framework, dtype, method):
    z = rs.svdvals(to_framework(np.zeros((4, 7, 5)), framework, dtype), method=method)
    assert np.array_equal(as_numpy(z), np.zeros((4, 5)))
    one = rs.svdvals(
        to_framework(np.array([[[-3.0]], [[0.5]], [[0.0]]]), framework, dtype), method=method
    )
    assert np.array_equal(as_numpy(one).astype(float), [[3.0], [0.5], [0.0]])


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("scale", [1e-300, 1e-200, 1e-150, 1e150, 1e200, 1e300])
def test_float64_extreme_scales(rng, method, scale):
    """Gram routes rescale float64 data by a power of two, so entries of the Gram neither overflow
    nor underflow: s(c·A) = c·s(A) to the route's relative accuracy."""
    for shape in ((6, 9), (70, 70)):
        a = engineered(rng, *shape, "gaussian")
        ref = np.linalg.svd(a, compute_uv=False)
        s = rs.svdvals(a * scale, method=method)
        assert np.all(np.isfinite(s)), s
        assert_sv_close(s / scale, a, method, ref=ref)


def test_float32_extreme_scales(rng):
    a = rng.standard_normal((3, 20, 10))
    for scale in (1e-30, 1e30, 1e38 / 5):
        x = (a * scale).astype(np.float32)
        assert_sv_close(rs.svdvals(x), x)
    sub = np.float32(1e-44) * np.sign(rng.standard_normal((8, 5))).astype(np.float32)  # subnormals
    assert_sv_close(rs.svdvals(sub), sub)


# ---- dtypes --------------------------------------------------------------------------------------


@pytest.mark.parametrize("framework,dtype", FW_DTYPES)
def test_output_dtype_rules(rng, framework, dtype):
    x = to_framework(rng.standard_normal((2, 5, 4)), framework, dtype)
    default = rs.svdvals(x)
    assert as_numpy(default).dtype.name == ("float64" if dtype == "float64" else "float32")
    for want in ("float32", "float64", np.float32, np.float64, np.dtype("float64")):
        s = rs.svdvals(x, dtype=want)
        assert as_numpy(s).dtype == np.dtype(want)
        assert_sv_close(s, x)
    if framework == "torch":
        assert rs.svdvals(x, dtype=torch.float64).dtype == torch.float64
        assert rs.svdvals(x, dtype=torch.float32).dtype == torch.float32


def test_dtype_override_keeps_float64_accuracy(rng):
    """dtype=float64 on float32 data returns the float64 values, not float32-rounded ones."""
    x = rng.standard_normal((40, 30)).astype(np.float32)
    s64 = rs.svdvals(x, dtype="float64")
    s32 = rs.svdvals(x)
    assert s64.dtype == np.float64
    assert np.array_equal(s64.astype(np.float32), s32)
    assert not np.array_equal(s64, s32.astype(np.float64))


@pytest.mark.parametrize("dtype", [np.int8, np.int32, np.int64, np.uint8, np.uint16, np.bool_])
def test_integer_and_bool_inputs_become_float64(rng, dtype):
    a = rng.integers(0, 3, size=(4, 6, 5)).astype(dtype)
    s = rs.svdvals(a)
    assert s.dtype == np.float64
    assert_sv_close(s, a.astype(np.float64))
    t = torch.from_numpy(a)
    st = rs.svdvals(t)
    assert st.dtype == torch.float64
    assert np.array_equal(st.numpy(), s)


def test_float16_bfloat16_use_stored_values(rng):
    """Narrow inputs are compared with the SVD of their *rounded* values: the result must be closer
    to that than to the SVD of the unrounded float64 data, where the two differ clearly."""
    a = rng.standard_normal((16, 12))
    for dt in ("float16", "bfloat16"):
        x = to_framework(a, "torch", dt)
        s = rs.svdvals(x).double().numpy()
        stored = np.linalg.svd(stored64(x), compute_uv=False)
        unrounded = np.linalg.svd(a, compute_uv=False)
        assert np.abs(s - stored).max() < np.abs(s - unrounded).max() / 10
        assert_sv_close(torch.from_numpy(s.astype(np.float32)), x, ref=stored)


def test_big_endian_input(rng):
    a = rng.standard_normal((5, 7))
    s = rs.svdvals(a.astype(">f8"))
    assert np.array_equal(s, rs.svdvals(a))
    assert np.array_equal(rs.svdvals(a.astype(">f4")), rs.svdvals(a.astype("<f4")))


# ---- batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(0,), (1,), (5,), (2, 3), (3, 0), (2, 1, 3)])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
def test_batch_dims(rng, framework, batch, dtype, method):
    x = to_framework(rng.standard_normal((*batch, 9, 4)), framework, dtype)
    s = rs.svdvals(x, method=method)
    assert tuple(s.shape) == (*batch, 4)
    assert_sv_close(s, x, method)


def test_large_batch_many_groups(rng):
    """More matrices than lanes × threads: 8-lane groups, a partial group and several tasks."""
    x = rng.standard_normal((61, 33, 20)).astype(np.float32)
    s = rs.svdvals(x)
    assert_sv_close(s, x)


@pytest.mark.parametrize("method", METHODS)
def test_lane_independence(rng, method):
    """A matrix gives the same values alone, in a full 8-lane group, and in a partial group."""
    x = rng.standard_normal((11, 12, 7)).astype(np.float32)
    together = rs.svdvals(x, method=method)
    alone = np.stack([rs.svdvals(x[i], method=method) for i in range(len(x))])
    assert np.array_equal(together, alone)
    assert np.array_equal(rs.svdvals(x[3:6], method=method), together[3:6])


# ---- strides -------------------------------------------------------------------------------------


def _numpy_views(a):
    yield "transposed", np.swapaxes(a, -1, -2)
    yield "row step 2", a[..., ::2, :]
    yield "column step 3", a[..., ::3]
    yield "negative strides", a[::-1, ::-1, ::-2]
    yield "fortran order", np.asfortranarray(a)
    yield "batch transposed", np.transpose(a, (2, 0, 1))[:, 1:, :]
    yield "offset", a[1:, 2:, 1:]


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("method", METHODS)
def test_numpy_strided_views(rng, dtype, method):
    base = rng.standard_normal((9, 14, 11)).astype(dtype)
    for name, v in _numpy_views(base):
        assert not v.flags.c_contiguous or name == "offset"
        s = rs.svdvals(v, method=method)
        assert_sv_close(s, v, method, msg=name)
        assert np.array_equal(s, rs.svdvals(np.ascontiguousarray(v), method=method)), name


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_torch_strided_views(rng, dtype, method):
    base = to_framework(rng.standard_normal((10, 15, 12)), "torch", dtype)
    views = {
        "mT": base.mT,
        "rows 1::2": base[:, 1::2, :],
        "cols ::3": base[..., ::3],
        "permute": base.permute(2, 1, 0),
        "batch step": base[::3],
        "expand": base[0].expand(4, 15, 12),
        "narrow": base.narrow(1, 3, 9).narrow(2, 1, 10),
    }
    for name, v in views.items():
        s = rs.svdvals(v, method=method)
        assert isinstance(s, torch.Tensor)
        assert_sv_close(s, v, method, msg=name)
        assert torch.equal(s, rs.svdvals(v.contiguous(), method=method)), name


@pytest.mark.parametrize("method", METHODS)
def test_stride_zero_broadcast(rng, method):
    a = rng.standard_normal((6, 40)).astype(np.float32)
    b = np.broadcast_to(a, (50, 6, 40))
    s = rs.svdvals(b, method=method)
    assert np.all(s == s[0])
    assert_sv_close(s[0], a, method)
    # a matrix with a zero column stride: all columns equal, rank 1
    col = np.broadcast_to(rng.standard_normal((7, 1)), (7, 5))
    sc = rs.svdvals(col, method=method)
    assert_sv_close(sc, np.ascontiguousarray(col), method)
    assert sc[1:].max() <= 1e-7 * sc[0]


# ---- ragged lists --------------------------------------------------------------------------------


@pytest.mark.parametrize("method", METHODS)
def test_ragged_list(rng, framework, method):
    shapes = (
        [(5, 7)] * 11
        + [(7, 5)] * 3
        + [(1, 1), (0, 3), (40, 3), (3, 40), (33, 33), (70, 65), (64, 100)]
    )
    order = rng.permutation(len(shapes))
    dtypes = ["float32", "float64", "float16"]
    mats = []
    for j, i in enumerate(order):
        dt = dtypes[j % 3]
        mats.append(to_framework(rng.standard_normal(shapes[i]), framework, dt))
    out = rs.svdvals(mats, method=method)
    assert isinstance(out, list) and len(out) == len(mats)
    for x, s in zip(mats, out):
        assert type(s) is type(x)
        assert tuple(s.shape) == (min(x.shape),)
        assert as_numpy(s).dtype.name == ("float64" if "64" in str(x.dtype) else "float32")
        assert_sv_close(s, x, method)
    # each equals the same matrix done alone
    for x, s in zip(mats, out):
        alone = rs.svdvals(x, method=method)
        assert np.array_equal(as_numpy(alone), as_numpy(s))


def test_ragged_list_mixed_dtypes_same_shape(rng):
    """float32 and float64 matrices of one shape may share a compact group (method='gram')."""
    mats = [rng.standard_normal((9, 6)).astype(dt) for dt in ["float32", "float64"] * 6]
    out = rs.svdvals(mats, method="gram")
    for x, s in zip(mats, out):
        assert s.dtype == (np.float64 if x.dtype == np.float64 else np.float32)
        assert_sv_close(s, x, "gram")


def test_ragged_tuple_and_empty_list(rng):
    mats = (rng.standard_normal((3, 4)), rng.standard_normal((6, 2)))
    out = rs.svdvals(mats)
    assert isinstance(out, list) and [len(s) for s in out] == [3, 2]
    assert rs.svdvals([]) == []


def test_ragged_dtype_override(rng):
    mats = [rng.standard_normal((3, 4)).astype(np.float32), rng.standard_normal((6, 2))]
    out = rs.svdvals(mats, dtype="float64")
    assert all(s.dtype == np.float64 for s in out)
    out32 = rs.svdvals(mats, dtype="float32")
    assert all(s.dtype == np.float32 for s in out32)


# ---- nested lists --------------------------------------------------------------------------------


def test_nested_lists():
    s = rs.svdvals([[3, 0], [0, 1], [0, 0]])
    assert isinstance(s, list) and all(type(v) is float for v in s)
    assert s == pytest.approx([3.0, 1.0], abs=4 * EPS64)
    batch = [[[1.0, 2.0], [3.0, 4.0]], [[2.0, 0.0], [0.0, 2.0]]]
    sb = rs.svdvals(batch)
    assert isinstance(sb, list) and isinstance(sb[0], list)
    assert np.allclose(sb, np.linalg.svd(np.array(batch), compute_uv=False), rtol=4 * EPS64, atol=0)
    assert rs.svdvals([[]]) == []
    assert rs.svdvals([[1.5]]) == [1.5]


# ---- contracts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("framework,dtype", FW_DTYPES)
@pytest.mark.parametrize("method", METHODS)
def test_input_not_modified(rng, framework, dtype, method):
    for shape in ((12, 5, 4), (2, 70, 66), (3, 20, 21)):
        x = to_framework(rng.standard_normal(shape), framework, dtype)
        view = x.mT if framework == "torch" else np.swapaxes(x, -1, -2)
        before = stored64(x).copy()
        rs.svdvals(x, method=method)
        rs.svdvals(view, method=method)
        rs.svdvals([x[0], view[1]], method=method)
        rs.spectrum_report(x, method=method)
        assert np.array_equal(stored64(x), before)


def test_auto_picks_exact_for_float64_and_gram_otherwise(rng):
    a = engineered(rng, 30, 20, "logspace")
    assert np.array_equal(rs.svdvals(a), rs.svdvals(a, method="exact"))
    f = a.astype(np.float32)
    assert np.array_equal(rs.svdvals(f), rs.svdvals(f, method="gram"))
    # exact on float64 resolves values far below the Gram route's noise floor (1.5e-8 s₁)
    s = rs.svdvals(a)
    assert np.all(
        np.abs(s - np.logspace(0, -12, 20)) <= 1e-4 * np.logspace(0, -12, 20) + 4 * 30 * EPS64
    )


def test_deterministic(rng):
    x = rng.standard_normal((20, 40, 30)).astype(np.float32)
    for method in METHODS:
        assert np.array_equal(rs.svdvals(x, method=method), rs.svdvals(x, method=method))


@pytest.mark.parametrize(
    "shape", [(1, 1), (2, 2), (3, 1000), (1000, 3), (31, 33), (50, 50), (97, 97), (200, 97)]
)
@pytest.mark.parametrize("kind", ["logspace", "rank_deficient", "repeated", "clustered"])
def test_float64_exact_reproduces_prescribed_values(rng, shape, kind):
    """Engineered spectra down to 1e-12: method='exact' is as close to the prescribed values as
    numpy's own SVD of the same stored matrix (both dgesdd in float64; the stored matrix is the
    exact one rounded, which perturbs each value by ~eps64·s₁: that is numpy's error, and so ours
    may be at most 4× it, absolutely and relative to each value, plus max(m, n)·eps64·s₁, dgesdd's own
    error class, for when numpy is lucky: seen once at 50×50, numpy 1 ulp and us 24 ulps)."""
    m, n = shape
    k = min(m, n)
    s_true = prescribed(kind, k, rng)
    a = engineered(rng, m, n, s_true)
    got = rs.svdvals(a, method="exact")
    ref = np.linalg.svd(a, compute_uv=False)
    err, err_np = np.abs(got - s_true), np.abs(ref - s_true)
    floor = max(m, n) * EPS64 * s_true[0]
    assert err.max() <= 4 * err_np.max() + floor, (err.max(), err_np.max())
    pos = s_true > 0
    if pos.any():
        rel, rel_np = err[pos] / s_true[pos], err_np[pos] / s_true[pos]
        assert rel.max() <= 4 * rel_np.max() + 2 * EPS64 * s_true[0] / s_true[pos].min(), (rel.max(), rel_np.max())
    if kind == "logspace" and k > 1:
        # the smallest value (1e-12 s₁) is resolved to a few parts in 1e4, not lost in noise
        assert abs(got[-1] - 1e-12) <= 1e-3 * 1e-12 * max(1, max(m, n) / 100)


def test_gram_floor_for_float64(rng):
    """The documented limit of method='gram' on float64 data: values far below 1.5e-8·s₁ are noise,
    but within the route's absolute tolerance; values above it are accurate."""
    s_true = np.logspace(0, -12, 24)
    a = engineered(rng, 40, 24, s_true)
    s = rs.svdvals(a, method="gram")
    assert_sv_close(s, a, "gram")
    big = s_true > 1e-4  # δs ≈ k·eps64·s₁² / (2s): ≤ 3e-7 relative here
    assert np.all(np.abs(s - s_true)[big] <= 1e-5 * s_true[big])


# ---- instruction-set variants of the compact kernels ---------------------------------------------

_ISA_SCRIPT = """
import sys, numpy as np, rankscope as rs
data = np.load(sys.argv[1])
out = {k: rs.svdvals(data[k], method="gram") for k in data.files}
out["isa"] = np.array(rs.build_info()["cpu_isa"])
np.savez(sys.argv[2], **out)
"""


@pytest.mark.parametrize("isa", ["generic", "avx2", "avx512"])
def test_compact_kernel_isa_variants(rng, tmp_path, isa):
    """Every ISA variant (forced with RANKSCOPE_ISA, read once per process) gives correct values."""
    import os
    import subprocess
    import sys

    shapes = [
        (1, 1),
        (2, 3),
        (7, 5),
        (31, 40),
        (32, 32),
        (33, 90),
        (64, 64),
        (97, 150),
        (COMPACT_MAX_K, COMPACT_MAX_K),
    ]
    shapes = [s for s in shapes if route_of("float32", *s, "gram") == "compact-gram"]
    data = {
        f"{m}x{n}_{dt}": rng.standard_normal((11, m, n)).astype(dt)
        for m, n in shapes
        for dt in ("float32", "float64")
    }
    data["zeros_and_nan_free"] = np.zeros((9, 6, 6))
    np.savez(tmp_path / "in.npz", **data)
    env = {k: v for k, v in os.environ.items() if k != "RANKSCOPE_ISA"}
    best = subprocess.run(
        [sys.executable, "-c", "import rankscope as rs; print(rs.build_info()['cpu_isa'])"],
        env=env,
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    ).stdout.strip()
    env["RANKSCOPE_ISA"] = isa
    subprocess.run(
        [sys.executable, "-c", _ISA_SCRIPT, str(tmp_path / "in.npz"), str(tmp_path / "out.npz")],
        env=env,
        check=True,
        timeout=120,
    )
    out = np.load(tmp_path / "out.npz")
    ranking = ["generic", "avx2", "avx512"]
    expect = isa if ranking.index(isa) <= ranking.index(best) else best
    assert str(out["isa"]) == expect
    for key, x in data.items():
        assert_sv_close(out[key], x, "gram", msg=f"{key} with RANKSCOPE_ISA={isa}")


def test_compact_gram_float64_tiny_entries():
    """A rank-2 matrix with entries 1, 43 and t: Gram entries whose squares are subnormal once
    broke the compact kernel's Householder norms (s₁ = 47.23 instead of 43 at t = 1e-158); the
    engine now flushes Gram entries below 2^-500 of a unit-scaled matrix."""
    for t in (1e-152, 1e-154, 1e-156, 1e-158):
        a = np.zeros((12, 12))
        a[4, 4], a[8, 5], a[4, 8] = 1.0, 43.0, t
        assert route_of("float64", 12, 12, "gram") == "compact-gram"
        s = rs.svdvals(a, method="gram")
        assert_sv_close(s, a, "gram", msg=f"t = {t}")


@pytest.mark.parametrize(
    "a",
    [np.full((1, 1), 1e-310), np.full((2, 2), 1e-310), np.array([[2e-310, 1e-310], [0.0, 1e-310]])],
    ids=["1x1", "2x2", "2x2-mixed"],
)
def test_gram_float64_all_subnormal(a):
    """float64 data whose largest entry is subnormal: the power-of-two scale must not overflow."""
    s = rs.svdvals(a, method="gram")
    assert np.all(np.isfinite(s)), s
    assert_sv_close(s, a, "gram")
