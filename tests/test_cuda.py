"""The CUDA backend: built where CI expects it, clear errors without a GPU, and (on a GPU, `-m cuda`)
every result against numpy's float64 SVD and the CPU engine."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rankscope as rs
import torch
from conftest import EPS64, SPECTRA, engineered, ref_svdvals, stored64, sv_tolerance
from rankscope import _core
from rankscope._backend import cuda_available, cuda_built, cuda_error, cuda_module

needs_gpu = pytest.mark.skipif(
    not (cuda_available() and torch.cuda.is_available()),
    reason=f"needs a CUDA GPU with rankscope's CUDA backend and torch with CUDA ({cuda_error() or 'torch has no CUDA'})",
)
TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


def test_cuda_module_built():
    """CI (RANKSCOPE_CUDA=ON) builds the CUDA backend on every run: it must be there and load."""
    if os.environ.get("RANKSCOPE_CUDA", "").upper() != "ON":
        pytest.skip("RANKSCOPE_CUDA=ON was not requested for this build")
    assert cuda_built(), cuda_error()
    mod = cuda_module()
    assert mod.device_count() >= 0 and mod.SMALL_MAX_K == 128


@pytest.mark.skipif(cuda_available(), reason="this machine has a usable GPU")
def test_no_gpu_gives_clear_error():
    a = np.eye(3)
    with pytest.raises(ValueError, match="device='cuda'") as e:
        rs.svdvals(a, device="cuda")
    # in plain words: never built (it said "failed to load: cannot import name '_cuda'"), or no device
    expected = "no usable CUDA device" if cuda_built() else "was built without the CUDA backend"
    assert expected in str(e.value) and "cannot import name" not in str(e.value), e.value
    assert np.allclose(rs.svdvals(a), 1.0)  # the CPU engine is unaffected


def test_bad_device_name():
    with pytest.raises(ValueError, match="device must be"):
        rs.svdvals(np.eye(2), device="tpu")


# ---- the GPU's per-matrix code, run on the host ----------------------------------------------------


@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("kind", SPECTRA)
def test_tiny_gram_route_on_host(rng, dtype, kind):
    """cpp/kernels/tiny_gram.h (one thread per matrix on the GPU) against numpy float64, with the gram
    route's tolerance: every k of the route, L from k to the route's limit, tall and wide, strided."""
    for k in range(1, 5):
        for L in sorted({k, k + 1, 9, 31, 64}):
            a = engineered(rng, L, k, kind) * rng.uniform(0.1, 10)
            x = torch.from_numpy(a).to(TORCH_DTYPES[dtype])
            for view in (x, x.T, x.T.contiguous().T):
                values, status = _core._tiny_gram_svals(view)
                assert status == 0
                ref = ref_svdvals(view)
                tol = sv_tolerance("gram", *view.shape, ref, "float64")
                err = np.abs(values - ref)
                assert (err <= tol).all(), f"{tuple(view.shape)} {kind}: {err.max():.3e} > {tol.max():.3e}"


def test_tiny_gram_route_extremes_and_nan(rng):
    a = engineered(rng, 7, 3, "gaussian")
    ref = np.linalg.svd(a, compute_uv=False)
    for scale in (1e-300, 1e-160, 1e160, 1e300):  # float64 is unit-scaled: no overflow, no underflow
        values, status = _core._tiny_gram_svals(a * scale)
        assert status == 0
        np.testing.assert_allclose(values / scale, ref, rtol=0, atol=8 * (3 + np.sqrt(7)) * EPS64 * ref[0])
    values, status = _core._tiny_gram_svals(np.zeros((5, 4)))
    assert status == 0 and np.array_equal(values, np.zeros(4))
    for bad in (np.nan, np.inf, -np.inf):
        b = a.copy()
        b[4, 1] = bad
        values, status = _core._tiny_gram_svals(b)
        assert status == 1 and np.isnan(values).all()
    with pytest.raises(ValueError, match="tiny route"):
        _core._tiny_gram_svals(np.ones((5, 5)))
    with pytest.raises(ValueError, match="tiny route"):
        _core._tiny_gram_svals(np.ones((65, 2)))


# ---- on a GPU --------------------------------------------------------------------------------------


def gpu_route(dtype, m, n, method, count=1):
    return cuda_module().route(dtype, m, n, method, count, torch.cuda.get_device_properties(0).multi_processor_count)


def check(got, x_host, route, msg=""):
    """got (device values) against numpy's float64 SVD of the stored data, with the route's tolerance."""
    a = stored64(x_host)
    *_, m, n = a.shape
    ref = ref_svdvals(a)
    g = got.detach().cpu().to(torch.float64).numpy()
    assert g.shape == ref.shape, (g.shape, ref.shape)
    tol = sv_tolerance("exact" if route.startswith("exact") else "gram", m, n, ref,
                       str(got.dtype).removeprefix("torch."))
    if route == "exact-gesvdj":
        # cuSOLVER's Jacobi SVD accumulates more rounding than dgesdd: measured 65 ulps of s₁ at 32×32
        # (H100, 2026-11-23), just over dgesdd's 2·L·eps; 3× that bound.
        tol = 3 * tol
    err = np.abs(g - ref)
    bad = ~(err <= tol)
    assert not bad.any(), f"{route} {m}×{n} {msg}: max |err| {err.max():.3e}, {bad.sum()} values over tolerance"


SHAPES = [(1, 1), (3, 3), (2, 5), (4, 64), (65, 2), (5, 5), (64, 5), (31, 33), (32, 32), (33, 33), (64, 64), (65, 65), (100, 7), (128, 128),
          (129, 129), (200, 97), (300, 520), (5000, 64), (1000, 3)]


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("method", ["auto", "gram", "exact"])
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize("shape", SHAPES)
def test_gpu_matches_numpy(rng, shape, dtype, method):
    m, n = shape
    kinds = ["logspace", "rank_deficient", "clustered"]
    host = np.stack([engineered(rng, m, n, kinds[i % 3]) for i in range(3)])
    x = torch.from_numpy(host).to(TORCH_DTYPES[dtype]).cuda()
    got = rs.svdvals(x, method=method)
    assert got.is_cuda and got.dtype == (torch.float64 if dtype == "float64" else torch.float32)
    check(got, x.cpu(), gpu_route(dtype, m, n, method, 3), f"{dtype} {method}")
    cpu = rs.svdvals(x.cpu(), method=method)
    assert torch.all(got.cpu()[..., :-1] >= got.cpu()[..., 1:])  # descending
    assert cpu.shape == got.shape


@needs_gpu
@pytest.mark.cuda
def test_gpu_large_batches_every_route(rng):
    """Many matrices per route (the tiny and small kernels, cuBLAS Gram + small kernel, XsyevBatched,
    gesvdj, gesvd)."""
    for (b, m, n, dtype, method) in [(4608, 3, 3, "float32", "auto"), (1000, 4, 50, "float64", "gram"),
                                     (500, 64, 64, "float32", "auto"), (300, 20, 6000, "float32", "gram"),
                                     (40, 160, 200, "float32", "auto"), (200, 16, 30, "float64", "auto"),
                                     (6, 40, 50, "float64", "exact"), (10, 5000, 100, "float32", "gram")]:
        host = engineered(rng, m, n, "logspace")[None] * rng.uniform(0.5, 2.0, (b, 1, 1))
        x = torch.from_numpy(host).to(TORCH_DTYPES[dtype]).cuda()
        got = rs.svdvals(x, method=method)
        check(got, x.cpu(), gpu_route(dtype, m, n, method, b), f"batch {b}")


@needs_gpu
@pytest.mark.cuda
def test_gpu_noncontiguous_and_ragged(rng):
    base = torch.from_numpy(rng.standard_normal((4, 70, 90))).float().cuda()
    for x in (base.transpose(-1, -2), base[:, ::2, 1::3], base[::2, :33, :31], base.permute(1, 2, 0)[..., :2].transpose(0, 2)):
        check(rs.svdvals(x), x.cpu(), gpu_route("float32", x.shape[-2], x.shape[-1], "auto", 2))
    # 7 batch dimensions that cannot be merged (more than a kernel argument holds): one descriptor each
    many = torch.from_numpy(rng.standard_normal((3, 4, 3, 4, 3, 4, 3, 6, 5))).float().cuda()
    x = many[::2, ::3, ::2, ::3, ::2, ::3, ::2]
    got = rs.svdvals(x)
    assert got.shape == (2,) * 7 + (5,)
    check(got, x.cpu(), gpu_route("float32", 6, 5, "auto", 128))
    mats = [torch.from_numpy(rng.standard_normal(s)).to(dt).cuda()
            for s, dt in [((5, 3), torch.float32), ((64, 64), torch.float64), ((3, 5), torch.float32),
                          ((200, 130), torch.float32), ((1, 1), torch.float16), ((0, 4), torch.float32)]]
    got = rs.svdvals(mats)
    assert isinstance(got, list) and len(got) == len(mats)
    for g, x in zip(got, mats):
        dt = str(x.dtype).removeprefix("torch.")
        assert g.is_cuda
        check(g, x.cpu(), gpu_route(dt, *x.shape, "auto", 1))


@needs_gpu
@pytest.mark.cuda
def test_gpu_empty_and_nan(rng):
    assert rs.svdvals(torch.zeros((3, 0, 4), device="cuda")).shape == (3, 0)
    assert rs.svdvals(torch.zeros((0, 5, 4), device="cuda")).shape == (0, 4)
    x = torch.from_numpy(rng.standard_normal((4, 40, 30))).float().cuda()
    x[2, 3, 4] = float("nan")
    for method in ("auto", "exact"):
        with pytest.raises(ValueError, match="NaN or Inf"):
            rs.svdvals(x, method=method)
        got = rs.svdvals(x, method=method, check_finite=False).cpu()
        cpu = rs.svdvals(x.cpu(), method=method, check_finite=False)
        assert torch.isnan(got[2]).all() and torch.isnan(cpu[2]).all()
        assert torch.isfinite(got[[0, 1, 3]]).all()


@needs_gpu
@pytest.mark.cuda
def test_gpu_respects_caller_stream(rng):
    """Input produced on a side stream, computed there without synchronising: correct results."""
    s = torch.cuda.Stream()
    host = torch.from_numpy(rng.standard_normal((64, 64, 64))).float()
    with torch.cuda.stream(s):
        x = host.cuda(non_blocking=False) * 2.0
        torch.cuda._sleep(10_000_000)  # keep the stream busy: a wrong stream would read too early
        y = x + 1.0
        got = rs.svdvals(y, check_finite=False)
    s.synchronize()
    check(got, y.cpu(), gpu_route("float32", 64, 64, "auto", 64))


@needs_gpu
@pytest.mark.cuda
def test_gpu_threads(rng):
    xs = [torch.from_numpy(rng.standard_normal((50, 48, 40))).float().cuda() for _ in range(8)]

    def work(i):
        s = torch.cuda.Stream()
        with torch.cuda.stream(s):
            for _ in range(3):
                r = rs.svdvals(xs[i])
        s.synchronize()
        return r

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(work, range(8)))
    for x, r in zip(xs, results):
        check(r, x.cpu(), gpu_route("float32", 48, 40, "auto", 50))


@needs_gpu
@pytest.mark.cuda
def test_gpu_chunking(rng, monkeypatch):
    monkeypatch.setenv("RANKSCOPE_CUDA_WORKSPACE_MB", "1")
    host = rng.standard_normal((40, 200, 150))
    x = torch.from_numpy(host).float().cuda()
    for method in ("gram", "exact"):
        check(rs.svdvals(x, method=method), x.cpu(), gpu_route("float32", 200, 150, method, 40), method)


@needs_gpu
@pytest.mark.cuda
def test_gpu_metrics_on_device(rng):
    host = np.stack([engineered(rng, 60, 40, k) for k in ("rank_deficient", "logspace", "zero")])
    x = torch.from_numpy(host).float().cuda()
    rep = rs.spectrum_report(x)
    ref = rs.spectrum_report(x.cpu())
    for name, v in rep.items():
        assert v.is_cuda, name
        r = ref[name].numpy()
        if name in ("matrix_rank", "rank_loss", "weak_rank_loss", "energy_rank"):
            assert v.dtype == torch.int64 and np.array_equal(v.cpu().numpy(), r), name
        else:
            np.testing.assert_allclose(v.cpu().numpy(), r, rtol=1e-5, atol=1e-12, err_msg=name)
    s = torch.from_numpy(rng.random((5, 9))).cuda()
    np.testing.assert_allclose(rs.metrics.effective_rank(s).cpu().numpy(), rs.metrics.effective_rank(s.cpu()).numpy(),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="non-negative"):
        rs.metrics.stable_rank(-s)
    pr = rs.participation_ratio(x)
    np.testing.assert_allclose(pr.cpu().numpy(), rs.participation_ratio(x.cpu()).numpy(), rtol=1e-10)


@needs_gpu
@pytest.mark.cuda
def test_gpu_host_input_with_device(rng):
    a = engineered(rng, 30, 20, "logspace")
    got = rs.svdvals(a, device="cuda")
    assert isinstance(got, np.ndarray)
    np.testing.assert_allclose(got, np.linalg.svd(a, compute_uv=False), atol=100 * EPS64)


@needs_gpu
@pytest.mark.cuda
@pytest.mark.parametrize("dtype", list(TORCH_DTYPES))
@pytest.mark.parametrize(("m", "n", "per_slot"), [(64, 64, 7), (33, 20, 1), (20, 33, 1000), (300, 130, 3)])
def test_gpu_streamed_host_batches(rng, monkeypatch, dtype, m, n, per_slot):
    """Host batches through HostStager in several chunks, for row-major and column-major (staged
    transposed) inputs; up to k = 128 bitwise the values of the same batch on the device."""
    count = 23
    a = np.stack([engineered(rng, m, n, "logspace") for _ in range(count)])
    x = torch.from_numpy(a).to(TORCH_DTYPES[dtype])
    monkeypatch.setenv("RANKSCOPE_CUDA_STAGING_MB", repr(per_slot * m * n * x.element_size() / 2**20))
    got = rs.svdvals(x, device="cuda")
    assert got.device.type == "cpu" and got.shape == (count, min(m, n))
    if min(m, n) <= cuda_module().SMALL_MAX_K:  # our kernels: each matrix's values whatever the batch
        assert torch.equal(got, rs.svdvals(x.cuda()).cpu())
    check(got, x, gpu_route(dtype, m, n, "auto", min(count, per_slot)))
    xt = x.transpose(-1, -2).contiguous().transpose(-1, -2)  # column-major: staged as n × m
    check(rs.svdvals(xt, device="cuda"), xt, gpu_route(dtype, n, m, "auto", min(count, per_slot)))


@needs_gpu
@pytest.mark.cuda
def test_gpu_streamed_numpy_ragged_nan_threads(rng, monkeypatch):
    monkeypatch.setenv("RANKSCOPE_CUDA_STAGING_MB", "0.01")
    mats = [engineered(rng, m, n, "gaussian") for m, n in [(9, 4), (40, 40), (4, 9), (9, 4), (1, 1), (0, 3)]]
    got = rs.svdvals(mats, device="cuda")
    for g, a in zip(got, mats):
        assert isinstance(g, np.ndarray) and g.dtype == np.float64
        check(torch.from_numpy(g), a, "exact-gesvd" if min(a.shape) > 32 else "exact-gesvdj")
    x = np.stack([engineered(rng, 16, 16, "gaussian") for _ in range(50)]).astype(np.float32)
    x[31, 2, 2] = np.inf
    with pytest.raises(ValueError, match=r"NaN or Inf \(matrix at batch index \(31,\)"):
        rs.svdvals(x, device="cuda")
    v = rs.svdvals(x, device="cuda", check_finite=False)
    assert np.isnan(v[31]).all() and np.isfinite(np.delete(v, 31, axis=0)).all()
    report = rs.spectrum_report(np.delete(x, 31, axis=0), device="cuda:0")
    np.testing.assert_allclose(report["sv_max"], rs.spectrum_report(np.delete(x, 31, axis=0))["sv_max"], rtol=1e-6)
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda i: rs.svdvals(np.delete(x, 31, axis=0) * (i + 1), device="cuda"), range(6)))
    base = rs.svdvals(np.delete(x, 31, axis=0))
    for i, r in enumerate(results):
        np.testing.assert_allclose(r, base * (i + 1), rtol=1e-5, atol=1e-6 * (i + 1))


@needs_gpu
@pytest.mark.cuda
def test_gpu_cupy(rng):
    cp = pytest.importorskip("cupy")
    a = cp.asarray(rng.standard_normal((7, 30, 20)), dtype=cp.float32)
    got = rs.svdvals(a)
    assert isinstance(got, cp.ndarray)
    check(torch.from_dlpack(got), torch.from_dlpack(a).cpu(), gpu_route("float32", 30, 20, "auto", 7))
    assert isinstance(rs.matrix_rank(a), cp.ndarray)
