"""JAX arrays in the main API: read in place through DLPack, results as JAX arrays (issue 19, part 5).

The oracle is numpy's float64 SVD of the stored values (conftest.assert_sv_close); metrics are checked
against formulas evaluated on that float64 spectrum. JAX holds float32 unless jax_enable_x64 is on,
so float64 cases run inside ``jax.enable_x64(True)``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rankscope as rs
from conftest import EPS, EPS32, assert_sv_close, engineered, ref_svdvals
from rankscope import _api

jax = pytest.importorskip("jax", reason="JAX arrays are tested only where jax is installed (pip install jax)")
jnp = jax.numpy

DTYPES = ("float16", "bfloat16", "float32", "float64")


def as_jax(a: np.ndarray, dtype: str):
    """float64 numpy data as a JAX array of `dtype` (float64 needs jax_enable_x64: call inside it)."""
    out = jnp.asarray(np.asarray(a, dtype=np.float64), dtype=dtype)
    assert out.dtype.name == dtype, "float64 JAX arrays need jax.enable_x64(True)"
    return out


def x64_for(dtype: str):
    """jax.enable_x64(True) for float64 cases, a no-op context otherwise."""
    return jax.enable_x64(dtype == "float64")


def stored(x) -> np.ndarray:
    return np.asarray(x).astype(np.float64)


def test_import_and_numpy_calls_leave_jax_unimported():
    code = textwrap.dedent(
        """
        import sys
        import numpy as np
        import rankscope as rs
        x = np.random.default_rng(0).standard_normal((3, 5, 4))
        rs.svdvals(x); rs.matrix_rank(x); rs.spectrum_report(x); rs.participation_ratio(x)
        rs.svdvals([x[0], x[1].T])
        print("jax" in sys.modules, "jaxlib" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"], out


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (7, 5), (4, 33), (6, 97, 31)])
@pytest.mark.parametrize("spectrum", ["logspace", "rank_deficient", "gaussian"])
def test_svdvals_match_numpy_float64(rng, dtype, shape, spectrum):
    *batch, m, n = shape
    a = np.stack([engineered(rng, m, n, spectrum) for _ in range(int(np.prod(batch, dtype=int)))]).reshape(shape)
    with x64_for(dtype):
        x = as_jax(a, dtype)
        before = np.asarray(x).copy()
        s = rs.svdvals(x)
        assert isinstance(s, jax.Array) and s.devices() == x.devices()
        assert s.dtype.name == ("float64" if dtype == "float64" else "float32")
        assert s.shape == (*batch, min(m, n))
        assert_sv_close(s, x)
        np.testing.assert_array_equal(np.asarray(x), before)  # the input is not modified
        for method in ("exact", "gram"):
            assert_sv_close(rs.svdvals(x, method=method), x, method=method)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_host_arrays_read_in_place(rng, monkeypatch, dtype):
    """The engine reads a numpy view of the JAX buffer itself (same address), not a copy."""
    seen = []
    original = rs._core.svdvals

    def spy(x, out, method):
        seen.append(x)
        return original(x, out, method)

    monkeypatch.setattr(rs._core, "svdvals", spy)
    with x64_for(dtype):
        x = as_jax(rng.standard_normal((5, 40, 30)), dtype)
        s = rs.svdvals(x)
        r = rs.matrix_rank(x)
    assert len(seen) == 2
    for got in seen:
        assert isinstance(got, np.ndarray) and not got.flags.owndata and not got.flags.writeable
        assert got.ctypes.data == x.unsafe_buffer_pointer()
        assert got.shape == x.shape and got.dtype.name == dtype
    assert_sv_close(s, x)
    np.testing.assert_array_equal(np.asarray(r), 30)  # Gaussian 40 × 30: full rank


def test_bfloat16_read_through_dlpack(rng, monkeypatch):
    """numpy cannot view bfloat16: the engine imports the JAX array itself through DLPack; what that
    import sees is JAX's own buffer (torch's DLPack import of the same array lands on its address)."""
    torch = pytest.importorskip("torch")
    seen = []
    original = rs._core.svdvals

    def spy(x, out, method):
        seen.append(x)
        return original(x, out, method)

    monkeypatch.setattr(rs._core, "svdvals", spy)
    x = as_jax(rng.standard_normal((3, 24, 17)), "bfloat16")
    s = rs.svdvals(x)
    assert len(seen) == 1 and seen[0] is x
    assert torch.from_dlpack(x).data_ptr() == x.unsafe_buffer_pointer()
    assert s.dtype == jnp.float32 and isinstance(s, jax.Array)
    assert_sv_close(s, x)


@pytest.mark.parametrize("dtype", DTYPES)
def test_metrics_against_float64_spectrum(rng, dtype):
    """Every metric function and spectrum_report: JAX arrays out, values from numpy's float64 SVD."""
    k, m = 12, 20
    a = np.stack([engineered(rng, m, k, "rank_deficient"), engineered(rng, m, k, "gaussian")])
    with x64_for(dtype):
        x = as_jax(a, dtype)
        s = ref_svdvals(x)  # float64 SVD of the stored values
        eps = EPS[dtype]
        tol = s[:, 0] * (m * eps if dtype in ("float32", "float64") else eps)  # METRICS.md §1, policy auto
        rank = (s > tol[:, None]).sum(-1)
        p = s / s.sum(-1, keepdims=True)
        expected = {
            "matrix_rank": rank,
            "rank_loss": k - rank,
            "sv_max": s[:, 0],
            "stable_rank": (s**2).sum(-1) / s[:, 0] ** 2,
            "nuclear_ratio": s.sum(-1) / s[:, 0],
            "effective_rank": np.exp(-np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1)), 0), -1)),
        }
        report = rs.spectrum_report(x)
        x64 = dtype == "float64"
        for name, want in expected.items():
            for got in (getattr(rs, name)(x), report[name]):
                assert isinstance(got, jax.Array) and got.shape == (2,), name
                if name in ("matrix_rank", "rank_loss"):
                    assert got.dtype.name == ("int64" if x64 else "int32")
                    np.testing.assert_array_equal(np.asarray(got), want, err_msg=name)
                else:
                    assert got.dtype.name == ("float64" if x64 else "float32")
                    # stored-data accuracy (gram route: ~eps32 for narrow inputs) + JAX's float32 rounding
                    rel = (1e-12 if x64 else 4 * EPS32) + (0 if dtype == "float64" else 8 * EPS32)
                    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=rel, err_msg=name)
        # the remaining metrics are the same numbers as for the same stored values given as numpy
        ref = rs.spectrum_report(np.asarray(x).astype(np.float32 if dtype == "bfloat16" else dtype))
        assert set(report) == set(ref)
        for name in ("sv_min", "log10_sv_min", "condition_number", "rankme", "energy_rank", "weak_rank_loss"):
            if dtype == "bfloat16":  # numpy has no bfloat16: the widened float32 copy has float32's eps
                continue
            np.testing.assert_allclose(np.asarray(report[name], dtype=np.float64),
                                       np.asarray(ref[name], dtype=np.float64), rtol=2 * EPS32, err_msg=name)
        for fn in (rs.sv_min, rs.sv_max, rs.log10_sv_min, rs.condition_number, rs.weak_rank_loss, rs.energy_rank,
                   rs.rankme, rs.effective_rank):
            got = fn(x)
            assert isinstance(got, jax.Array) and got.shape == (2,)


def test_one_matrix_gives_0d_arrays(rng):
    x = as_jax(engineered(rng, 9, 6, "rank_deficient"), "float32")
    r = rs.matrix_rank(x)
    assert isinstance(r, jax.Array) and r.shape == () and int(r) == 3
    c = rs.condition_number(x)
    assert isinstance(c, jax.Array) and c.shape == () and float(c) > 1e6  # three zero singular values


def test_ragged_list(rng):
    mats = [engineered(rng, 9, 4, "gaussian"), engineered(rng, 3, 17, "gaussian"), engineered(rng, 30, 30, "rank_deficient")]
    xs = [as_jax(a, "float32") for a in mats]
    out = rs.svdvals(xs)
    assert isinstance(out, list) and len(out) == 3
    for got, x in zip(out, xs):
        assert isinstance(got, jax.Array)
        assert_sv_close(got, x)
    ranks = rs.matrix_rank(xs)
    assert [type(r).__name__ for r in ranks] == [type(xs[0]).__name__] * 3
    assert [int(r) for r in ranks] == [4, 3, 15]


@pytest.mark.parametrize("center", [True, False])
def test_participation_ratio(rng, center):
    a = rng.standard_normal((3, 50, 8)) * np.logspace(0, -3, 8)
    x = as_jax(a, "float32")
    c = stored(x)
    if center:
        c = c - c.mean(-2, keepdims=True)
    cov = np.swapaxes(c, -1, -2) @ c
    want = np.trace(cov, axis1=-2, axis2=-1) ** 2 / (cov**2).sum((-2, -1))
    got = rs.participation_ratio(x, center=center)
    assert isinstance(got, jax.Array) and got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got, dtype=np.float64), want, rtol=2 * EPS32)
    # the jax.numpy path that CUDA arrays take, run here on the host array
    dev = _api._participation_ratio_jax(x, center, True)
    assert isinstance(dev, jax.Array) and dev.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(dev, dtype=np.float64), want, rtol=2 * EPS32)
    with jax.enable_x64(True):
        x64 = as_jax(a, "float64")
        got = _api._participation_ratio_jax(x64, center, True)
        assert got.dtype == jnp.float64
        c = a - a.mean(-2, keepdims=True) if center else a
        cov = np.swapaxes(c, -1, -2) @ c
        want = np.trace(cov, axis1=-2, axis2=-1) ** 2 / (cov**2).sum((-2, -1))
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-12)
        np.testing.assert_allclose(np.asarray(rs.participation_ratio(x64, center=center)), want, rtol=1e-12)


def test_x64_results_and_dtype_request(rng):
    a = rng.standard_normal((4, 6))
    x = as_jax(a, "float32")
    with pytest.warns(UserWarning, match="jax_enable_x64 is off"):
        s = rs.svdvals(x, dtype="float64")
    assert s.dtype == jnp.float32
    with jax.enable_x64(True):
        s = rs.svdvals(x, dtype="float64")
        assert s.dtype == jnp.float64
        np.testing.assert_allclose(np.asarray(s), ref_svdvals(x), rtol=1e-13, atol=1e-13 * float(s[0]))
        assert rs.matrix_rank(x).dtype == jnp.int64 and rs.sv_max(x).dtype == jnp.float64


def test_integer_inputs_converted(rng):
    a = rng.integers(-5, 6, size=(2, 5, 4))
    x = jnp.asarray(a, dtype=jnp.int32)
    s = rs.svdvals(x)
    assert isinstance(s, jax.Array)
    np.testing.assert_allclose(np.asarray(s, dtype=np.float64), np.linalg.svd(a.astype(float), compute_uv=False),
                               rtol=2 * EPS32, atol=1e-6 * float(np.abs(a).max()))


def test_non_finite(rng):
    a = rng.standard_normal((3, 6, 5))
    a[1, 2, 3] = np.nan
    x = as_jax(a, "float32")
    with pytest.raises(ValueError, match=r"NaN or Inf \(matrix at batch index \(1,\)"):
        rs.svdvals(x)
    s = np.asarray(rs.svdvals(x, check_finite=False))
    assert np.isnan(s[1]).all() and np.isfinite(s[[0, 2]]).all()
    assert_sv_close(s[[0, 2]], np.asarray(x)[[0, 2]])


def test_traced_values_rejected():
    @jax.jit
    def f(x):
        return rs.svdvals(x)

    with pytest.raises(TypeError, match="traced JAX value"):
        f(jnp.ones((3, 3)))


def test_complex_and_low_rank_errors():
    with pytest.raises(TypeError, match="complex"):
        rs.svdvals(jnp.ones((3, 3), dtype=jnp.complex64))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        rs.svdvals(jnp.ones(3))


@pytest.mark.cuda
def test_cuda_arrays(rng):
    """JAX CUDA arrays computed on their device (needs jax with CUDA and rankscope's CUDA backend)."""
    from rankscope._backend import cuda_available

    try:
        gpu = jax.devices("cuda")[0]
    except RuntimeError:
        pytest.skip("jax has no CUDA device")
    if not cuda_available():
        pytest.skip("rankscope's CUDA backend is not available")
    a = rng.standard_normal((16, 40, 24))
    x = jax.device_put(as_jax(a, "float32"), gpu)
    s = rs.svdvals(x)
    assert isinstance(s, jax.Array) and s.devices() == {gpu} and s.dtype == jnp.float32
    assert_sv_close(np.asarray(s), np.asarray(x))
    report = rs.spectrum_report(x)
    assert report["matrix_rank"].devices() == {gpu}
    np.testing.assert_array_equal(np.asarray(report["matrix_rank"]), 24)
    np.testing.assert_allclose(np.asarray(report["sv_max"]), ref_svdvals(np.asarray(x))[:, 0], rtol=4 * EPS32)
    pr = rs.participation_ratio(x)
    assert pr.devices() == {gpu}
    np.testing.assert_allclose(np.asarray(pr), np.asarray(rs.participation_ratio(np.asarray(x))), rtol=2 * EPS32)
    # the metric functions given JAX singular values on the GPU (host copy of k values, results back)
    sv = rs.metrics.stable_rank(s)
    assert isinstance(sv, jax.Array) and sv.devices() == {gpu}
    np.testing.assert_allclose(np.asarray(sv), np.asarray(rs.metrics.stable_rank(np.asarray(s))), rtol=2 * EPS32)


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_metrics_of_jax_cuda_values_never_need_cupy(rng, monkeypatch, dtype):
    """Singular values given as JAX CUDA arrays go through the host (the CUDA metric kernel reads torch
    and CuPy only): before, the metrics tried to import CuPy. Without a GPU the CUDA case is simulated:
    host JAX values prepared as if on a CUDA device, CuPy made unimportable; the results are the host
    results, as JAX arrays on the values' device, ragged lists too."""
    import rankscope.metrics as rm
    from rankscope import _arrays

    real = rm.prepare

    def as_if_on_cuda(x, what):
        p = real(x, what)
        return _arrays.Prepared(x, "jax", p.dtype, device="cuda", origin=x) if p.kind == "jax" else p

    s = np.sort(rng.random((3, 9)), axis=-1)[:, ::-1] * [[1.0], [1e-3], [4.0]]
    s[1, 5:] = 0
    x = jnp.asarray(s, dtype=dtype)
    host = np.asarray(x).astype(np.float32)
    want = {"matrix_rank": rs.metrics.matrix_rank(host, shape=(9, 12), dtype=dtype),
            "stable_rank": rs.metrics.stable_rank(host), "effective_rank": rs.metrics.effective_rank(host)}
    monkeypatch.setattr(rm, "prepare", as_if_on_cuda)
    monkeypatch.setitem(sys.modules, "cupy", None)
    for name, ref in want.items():
        got = rs.metrics.matrix_rank(x, shape=(9, 12)) if name == "matrix_rank" else getattr(rs.metrics, name)(x)
        assert isinstance(got, jax.Array) and got.devices() == x.devices(), name
        np.testing.assert_allclose(np.asarray(got, dtype=np.float64), ref, rtol=EPS32, err_msg=name)
    ragged = rs.metrics.stable_rank([x[0], x[2, :4]])
    assert all(isinstance(v, jax.Array) for v in ragged)
    np.testing.assert_allclose([float(v) for v in ragged],
                               [float(rs.metrics.stable_rank(host[0])), float(rs.metrics.stable_rank(host[2, :4]))],
                               rtol=EPS32)
