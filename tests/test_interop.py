"""Array interchange: zero-copy reads, outputs in the caller's framework, DLPack/buffer objects."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest
import rankscope as rs
from conftest import assert_sv_close, to_framework, torch
from rankscope import _core, metrics

# ---- zero copy -----------------------------------------------------------------------------------


@pytest.fixture
def dlpack_spy(monkeypatch):
    """Records (data_ptr, shape, stride, dtype) of each torch tensor exported through __dlpack__."""
    seen = []
    original = torch.Tensor.__dlpack__

    def spy(self, *args, **kwargs):
        seen.append((self.data_ptr(), tuple(self.shape), tuple(self.stride()), self.dtype))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "__dlpack__", spy)
    return seen


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_torch_views_exported_in_place(rng, dlpack_spy, dtype):
    """The engine receives the caller's tensor itself (same pointer and strides), not a copy."""
    base = to_framework(rng.standard_normal((6, 30, 20)), "torch", dtype)
    for view in (base, base.mT, base[:, 2::3, 1:], base[::2].transpose(0, 2), base.narrow(2, 5, 9)):
        dlpack_spy.clear()
        s = rs.svdvals(view)
        inputs = [rec for rec in dlpack_spy if rec[1] == tuple(view.shape) and rec[3] == view.dtype]
        assert inputs, dlpack_spy
        assert inputs[0][0] == view.data_ptr() and inputs[0][2] == tuple(view.stride())
        assert_sv_close(s, view)


def test_torch_requires_grad_exported_without_copy(rng, dlpack_spy):
    x = torch.from_numpy(rng.standard_normal((8, 5))).requires_grad_()
    y = x * 2  # non-leaf with grad_fn
    for t in (x, y, y.mT):
        dlpack_spy.clear()
        s = rs.svdvals(t)
        assert not s.requires_grad and s.grad_fn is None
        assert any(rec[0] == t.data_ptr() and rec[2] == tuple(t.stride()) for rec in dlpack_spy)
        assert_sv_close(s, t.detach())
        r = rs.matrix_rank(t)
        assert r.dtype == torch.int64 and r.item() == 5
    assert x.grad is None


def test_numpy_strided_views_not_copied(rng):
    """No numpy copy in the Python layer: tracemalloc sees numpy's allocations, and the peak during
    a call on a 16 MB strided view stays far below its size (the engine's workspaces are C++)."""
    a = rng.standard_normal((4000, 1000)).astype(np.float32)  # 16 MB
    views = [
        a,
        a.T,
        a[::2],
        a[:, ::-3],
        a[::-1],
        np.asfortranarray(a),
        np.broadcast_to(a[:40], (40, 40, 1000)),
    ]
    rs.svdvals(a[:2])  # warm-up: imports, thread pool
    for v in views:
        tracemalloc.start()
        try:
            s = rs.svdvals(v)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < v.nbytes // 50 and peak < 1 << 20, (v.shape, v.strides, peak)
        assert s.shape == (*v.shape[:-2], min(v.shape[-2:]))


_BROADCAST = textwrap.dedent(
    """
    import resource, numpy as np, rankscope as rs
    col = np.array([1.0, 2.0, 3.0], dtype=np.float32)[:, None]
    rs.svdvals(np.ones((3, 8), np.float32))  # warm-up
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    b = np.broadcast_to(col, (3, 40_000_000))  # materialised: 480 MB float32, 960 MB float64
    s = rs.svdvals(b)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(repr((after - before) / 1024, ), float(s[0]), float(s[1]), float(s[2]))
    """
)


def test_huge_broadcast_view_not_materialised():
    """A stride-0 view of 3 × 40 000 000 (1 GB if copied to float64) goes through the compact route
    in panels: the child's peak RSS grows by far less than one copy."""
    assert rs._core.route("float32", 3, 40_000_000, "auto") == "compact-gram"
    r = subprocess.run(
        [sys.executable, "-c", _BROADCAST], capture_output=True, text=True, timeout=300, check=False
    )
    assert r.returncode == 0, r.stderr[-2000:]
    grew_mb, s1, s2, s3 = (float(v) for v in r.stdout.split())
    assert grew_mb < 100, f"peak RSS grew by {grew_mb:.0f} MB"
    exact = np.sqrt(14.0 * 40_000_000)  # rank 1: ‖col‖ · √L
    assert abs(s1 - exact) <= 1e-6 * exact
    # the Gram route's absolute error in s is ~√(L·eps64)·s₁ here (conftest.sv_tolerance)
    assert s2 <= 2 * np.sqrt(2 * (3 + np.sqrt(4e7)) * 2.2e-16) * exact and s3 <= s2


# ---- outputs in the caller's framework -----------------------------------------------------------


@pytest.mark.parametrize(
    "dtype,out",
    [
        ("float16", torch.float32),
        ("bfloat16", torch.float32),
        ("float32", torch.float32),
        ("float64", torch.float64),
    ],
)
def test_torch_in_torch_out(rng, dtype, out):
    x = to_framework(rng.standard_normal((3, 9, 7)), "torch", dtype)
    s = rs.svdvals(x)
    assert (
        isinstance(s, torch.Tensor)
        and s.dtype == out
        and s.device == x.device
        and s.shape == (3, 7)
    )
    assert_sv_close(s, x)
    r = rs.spectrum_report(x)
    for name, v in r.items():
        assert isinstance(v, torch.Tensor) and v.shape == (3,) and v.device == x.device, name
        assert v.dtype in (torch.int64, torch.float64), name
    one = rs.effective_rank(x[0])
    assert isinstance(one, torch.Tensor) and one.ndim == 0
    assert rs.matrix_rank(x[0]).ndim == 0


def test_numpy_in_numpy_out(rng):
    x = rng.standard_normal((2, 6, 4)).astype(np.float32)
    s = rs.svdvals(x)
    assert isinstance(s, np.ndarray) and s.dtype == np.float32
    r = rs.matrix_rank(x)
    assert isinstance(r, np.ndarray) and r.dtype == np.int64 and r.shape == (2,)
    r0 = rs.matrix_rank(x[0])
    assert isinstance(r0, np.int64)
    e0 = rs.effective_rank(x[0])
    assert isinstance(e0, np.float64)


def test_lists_in_lists_out():
    m = [[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]]
    s = rs.svdvals(m)
    assert isinstance(s, list) and s == pytest.approx([3.0, 1.0])
    r = rs.matrix_rank(m)
    assert type(r) is int and r == 2
    e = rs.effective_rank(m)
    assert type(e) is float and e == pytest.approx(1.7547654, abs=1e-7)
    b = rs.matrix_rank([m, m])
    assert b == [2, 2] and all(type(v) is int for v in b)
    rep = rs.spectrum_report([m, m])
    assert all(isinstance(v, list) for v in rep.values())
    assert metrics.matrix_rank([3.0, 1.0], shape=(3, 2)) == 2
    assert type(metrics.stable_rank([[3.0, 1.0]])[0]) is float


def test_ragged_outputs_follow_each_item(rng):
    a = rng.standard_normal((4, 3))
    t = torch.from_numpy(rng.standard_normal((2, 5))).float()
    out = rs.svdvals([a, t])
    assert isinstance(out[0], np.ndarray) and out[0].dtype == np.float64
    assert isinstance(out[1], torch.Tensor) and out[1].dtype == torch.float32
    ranks = rs.matrix_rank([a, t])
    assert (
        isinstance(ranks[0], np.int64) and isinstance(ranks[1], torch.Tensor) and ranks[1].ndim == 0
    )
    assert [int(v) for v in ranks] == [3, 2]


# ---- other producers -----------------------------------------------------------------------------


class DLPackOnly:
    """Has __dlpack__ and nothing else (no buffer protocol, no __array__)."""

    def __init__(self, x):
        self._x = x

    def __dlpack__(self, **kw):
        return self._x.__dlpack__(**kw)

    def __dlpack_device__(self):
        return self._x.__dlpack_device__()


@pytest.mark.parametrize("producer", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_dlpack_only_objects(rng, producer, dtype):
    x = to_framework(rng.standard_normal((3, 8, 5)), producer, dtype)
    obj = DLPackOnly(x)
    assert not hasattr(obj, "__array__") and not hasattr(obj, "__array_interface__")
    s = rs.svdvals(obj)
    assert_sv_close(s, x)
    assert isinstance(s, np.ndarray)
    assert list(rs.matrix_rank(obj)) == [5, 5, 5]
    out = rs.svdvals([DLPackOnly(x[0]), DLPackOnly(x[1].mT)])
    assert_sv_close(out[1], x[1].mT)


def test_dlpack_only_bfloat16(rng):
    """numpy has no bfloat16 (np.from_dlpack fails, e.g. for JAX bfloat16 arrays): the core reads the
    object through DLPack itself and the results come back as numpy float32."""
    x = to_framework(rng.standard_normal((3, 8, 5)), "torch", "bfloat16")
    s = rs.svdvals(DLPackOnly(x))
    assert isinstance(s, np.ndarray) and s.dtype == np.float32 and s.shape == (3, 5)
    assert_sv_close(s, x)
    assert list(rs.matrix_rank(DLPackOnly(x))) == [5, 5, 5]
    out = rs.svdvals([DLPackOnly(x[0]), DLPackOnly(x[1].mT)])
    assert_sv_close(out[1], x[1].mT)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_buffer_protocol_only(rng, dtype):
    a = rng.standard_normal((2, 7, 4)).astype(dtype)
    mv = memoryview(a)
    assert not hasattr(mv, "__dlpack__")
    s = rs.svdvals(mv)
    assert isinstance(s, np.ndarray)
    assert_sv_close(s, a)
    assert np.array_equal(s, rs.svdvals(a))


def test_core_reads_buffer_protocol_directly(rng):
    """The bindings' own buffer-protocol import (no DLPack), including strided memoryviews."""
    a = rng.standard_normal((9, 6))
    for src in (
        memoryview(a),
        memoryview(a)[::2],
        memoryview(a.astype(np.float32)),
        memoryview(a.astype(np.float16)),
    ):
        ref = np.asarray(src)
        out = np.empty(min(ref.shape), dtype=np.float64)
        status = _core.svdvals(src, out, "exact")
        assert status.shape == () and status == 0
        assert_sv_close(out, ref.astype(np.float64), "exact")
    out = np.empty(6)
    with pytest.raises(ValueError, match="out is read-only"):
        _core.svdvals(a, memoryview(out).toreadonly(), "auto")
    ro = np.empty(6)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="out is read-only"):
        _core.svdvals(a, ro, "auto")
    with pytest.raises(ValueError, match="min"):
        _core.svdvals(a, np.empty(5), "auto")
    with pytest.raises(TypeError, match="float32 or float64"):
        _core.svdvals(a, np.empty(6, dtype=np.float16), "auto")
    with pytest.raises(TypeError, match="expected an array"):
        _core.svdvals(object(), out, "auto")


def test_read_only_numpy(rng):
    a = rng.standard_normal((3, 6, 5))
    ro = a.copy()
    ro.flags.writeable = False
    assert np.array_equal(rs.svdvals(ro), rs.svdvals(a))
    assert np.array_equal(rs.matrix_rank(ro), [5, 5, 5])
    assert np.array_equal(rs.participation_ratio(ro), rs.participation_ratio(a))
    assert np.array_equal(metrics.effective_rank(rs.svdvals(ro)), rs.effective_rank(a))


def test_strides_not_multiple_of_itemsize():
    buf = np.zeros(400, dtype=np.uint8)
    odd = np.ndarray((4, 3), dtype=np.float64, buffer=buf.data, offset=1, strides=(36, 12))
    odd[...] = np.arange(12.0).reshape(4, 3)
    with pytest.raises(ValueError, match="strides"):
        rs.svdvals(odd)
    unaligned = np.ndarray((4, 3), dtype=np.float64, buffer=buf.data, offset=1, strides=(24, 8))
    unaligned[...] = np.arange(12.0).reshape(4, 3)
    assert not unaligned.flags.aligned
    assert_sv_close(rs.svdvals(unaligned), np.ascontiguousarray(unaligned))


def test_integer_torch_and_bool(rng):
    t = torch.from_numpy(rng.integers(-3, 4, size=(4, 6, 5)))
    s = rs.svdvals(t)
    assert s.dtype == torch.float64
    assert_sv_close(s, t.double())
    b = torch.eye(4, dtype=torch.bool)
    assert rs.matrix_rank(b).item() == 4
