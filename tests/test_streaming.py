"""Host batches streamed through the GPU (device="cuda" on host input), tested without a GPU.

The C++ gather that fills the pinned staging slots is checked against numpy indexing. The
double-buffered loop of rankscope._streaming, and the public API on top of it, are driven with
`CpuStager`: the same interface and slot discipline as rankscope._cuda.HostStager, the same gather,
but the CPU engine in place of upload, GPU compute and download. What remains GPU-only (the
streams, events and copies inside HostStager) is tested on a GPU in test_cuda.py.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import pytest
import rankscope as rs
import torch
from conftest import DTYPES, assert_sv_close, engineered, ref_svdvals, to_framework
from rankscope import _api, _arrays, _core, _streaming

TORCH_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32,
                "float64": torch.float64}


class CpuStager:
    """rankscope._cuda.HostStager's interface over the CPU engine, checking the slot discipline."""

    made: ClassVar[list[CpuStager]] = []

    def __init__(self, device, dtype, rows, cols, otype, chunk):
        assert device == 0 and chunk >= 1
        self.chunk, self.rows, self.cols = chunk, rows, cols
        self.inputs = [torch.empty((chunk, rows, cols), dtype=TORCH_DTYPES[dtype]) for _ in range(2)]
        self.values = [np.empty((chunk, min(rows, cols)), dtype=otype) for _ in range(2)]
        self.status: list = [None, None]
        self.submitted = [0, 0]
        self.busy = [False, False]
        self.max_busy = 0
        self.events: list[tuple] = []
        CpuStager.made.append(self)

    def load(self, slot, x, b0, b1, transposed, at=0):
        assert not self.busy[slot], "loaded a slot whose chunk is still on the GPU"
        assert 0 <= at and at + (b1 - b0) <= self.chunk
        _core._gather_matrices(x, b0, b1, transposed, self.inputs[slot][at:at + b1 - b0])
        self.events.append(("load", slot, b0, b1))

    def submit(self, slot, nb, method):
        assert not self.busy[slot] and 1 <= nb <= self.chunk
        self.status[slot] = _core.svdvals(self.inputs[slot][:nb], self.values[slot][:nb], method)
        self.submitted[slot] = nb
        self.busy[slot] = True
        self.max_busy = max(self.max_busy, sum(self.busy))
        self.events.append(("submit", slot, nb))

    def wait(self, slot):
        assert self.busy[slot]
        self.busy[slot] = False
        nb = self.submitted[slot]
        self.events.append(("wait", slot))
        # Scribble over the slot as a reused pinned buffer would be: results must have been copied.
        values, status = self.values[slot][:nb].copy(), self.status[slot].copy()
        self.values[slot].fill(np.nan)
        return values, status


@pytest.fixture
def cpu_gpu(monkeypatch):
    """The public API's device="cuda" path, with CpuStager in place of the GPU."""
    CpuStager.made = []
    monkeypatch.setattr(_streaming, "_gpu_stager", CpuStager)
    monkeypatch.setattr(_api, "parse_device", lambda d: None if d in (None, "cpu") else 0)
    return CpuStager.made


def staging_mb(monkeypatch, matrices: float, m: int, n: int, itemsize: int) -> None:
    """Sets the staging size to hold about `matrices` matrices m × n per slot."""
    monkeypatch.setenv("RANKSCOPE_CUDA_STAGING_MB", repr(matrices * m * n * itemsize / 2**20))


# ---- the gather --------------------------------------------------------------------------------


def _views(rng):
    base = rng.standard_normal((4, 6, 5, 7))
    return {
        "contiguous": base,
        "transposed": base.transpose(0, 1, 3, 2),
        "batch-transposed": base.transpose(1, 0, 2, 3),
        "reversed": base[::-1, :, ::-1, :],
        "non-mergeable": base[:, ::2, 1:, ::3],
        "broadcast": np.broadcast_to(base[0, 0], (3, 2, 5, 7)),
        "one-matrix": base[1, 2],
        "column": base[0, 0, :, :1],
    }


@pytest.mark.parametrize("name", ["contiguous", "transposed", "batch-transposed", "reversed", "non-mergeable",
                                  "broadcast", "one-matrix", "column"])
@pytest.mark.parametrize("transposed", [False, True])
def test_gather_matches_numpy_indexing(rng, name, transposed):
    x = _views(rng)[name]
    *_, m, n = x.shape
    flat = x.reshape(-1, m, n)  # numpy's own copy where needed: the oracle
    count = flat.shape[0]
    want = np.swapaxes(flat, -1, -2) if transposed else flat
    for b0, b1 in [(0, count), (0, 1), (count - 1, count), (count // 3, 2 * count // 3 + 1), (count, count)]:
        out = np.full((b1 - b0, *want.shape[1:]), np.nan)
        _core._gather_matrices(x, b0, b1, transposed, out)
        np.testing.assert_array_equal(out, want[b0:b1])


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_every_dtype_bitwise(rng, dtype):
    t = torch.from_numpy(rng.standard_normal((3, 9, 4))).to(TORCH_DTYPES[dtype]).transpose(-1, -2)[:, :, ::2]
    out = torch.empty((3, 4, 5), dtype=t.dtype)
    _core._gather_matrices(t, 0, 3, False, out)
    assert torch.equal(out, t.contiguous())


def test_gather_large_copy_uses_many_tasks(rng):
    """Over 1 MiB the rows are spread over the thread pool; the result must be the same."""
    x = rng.standard_normal((40, 300, 257))[:, :, :256]
    out = np.empty((37, 300, 256))
    _core._gather_matrices(x, 2, 39, False, out)
    np.testing.assert_array_equal(out, x[2:39])
    out_t = np.empty((37, 256, 300))
    _core._gather_matrices(x, 2, 39, True, out_t)
    np.testing.assert_array_equal(out_t, np.swapaxes(x[2:39], 1, 2))


def test_gather_rejects_bad_arguments(rng):
    x = rng.standard_normal((3, 4, 5))
    with pytest.raises(ValueError, match="outside the batch"):
        _core._gather_matrices(x, 2, 4, False, np.empty((2, 4, 5)))
    with pytest.raises(ValueError, match="C-contiguous float64 array of shape \\(1, 5, 4\\)"):
        _core._gather_matrices(x, 0, 1, True, np.empty((1, 4, 5)))
    with pytest.raises(ValueError, match="C-contiguous"):
        _core._gather_matrices(x, 0, 1, False, np.empty((1, 4, 5), dtype=np.float32))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        _core._gather_matrices(np.ones(3), 0, 1, False, np.empty((1, 1, 3)))


def test_prefers_transposed():
    a = np.ones((2, 6, 5))
    assert not _core.prefers_transposed(a)
    assert _core.prefers_transposed(a.transpose(0, 2, 1))
    assert _core.prefers_transposed(np.asfortranarray(a[0]))
    assert not _core.prefers_transposed(a[:, :1, :].transpose(0, 2, 1))  # a column: either way
    assert not _core.prefers_transposed(np.ones((4, 1)))


# ---- the double-buffered loop ------------------------------------------------------------------------


@pytest.mark.parametrize("per_slot", [0.5, 1, 2, 3, 7, 11, 12, 100])
@pytest.mark.parametrize("method", ["auto", "gram", "exact"])
def test_stream_batch_is_the_cpu_engine_chunk_by_chunk(rng, monkeypatch, per_slot, method):
    """Row-major input is staged as is: the values are bitwise those of the CPU engine on the whole batch,
    whatever the chunking (1 matrix per slot, uneven last chunk, one chunk, count + 1)."""
    x = np.stack([engineered(rng, 9, 6, "logspace") for _ in range(11)]).astype(np.float32)
    staging_mb(monkeypatch, per_slot, 9, 6, 4)
    p = _arrays.prepare(x)
    out = np.full((11, 6), np.nan, dtype=np.float32)
    CpuStager.made = []
    status = _streaming.svdvals_batch(p, out, method, 0, make_stager=CpuStager)
    want = np.empty((11, 6), dtype=np.float32)
    np.testing.assert_array_equal(status, _core.svdvals(x, want, method))
    np.testing.assert_array_equal(out, want)
    (st,) = CpuStager.made
    assert st.chunk == max(1, min(11, int(per_slot)))
    loads = [e for e in st.events if e[0] == "load"]
    assert [(b0, b1) for _, _, b0, b1 in loads] == [(b, min(11, b + st.chunk)) for b in range(0, 11, st.chunk)]
    assert st.max_busy == min(2, len(loads))  # both slots in flight once there are two chunks
    assert not any(st.busy)


def test_stream_batch_transposed_and_strided(rng, monkeypatch):
    """Column-major matrices are staged as their transposes; odd strides and batch dimensions work."""
    base = np.stack([engineered(rng, 12, 8, "rank_deficient") for _ in range(10)]).reshape(2, 5, 12, 8)
    x = np.asfortranarray(base.transpose(1, 0, 3, 2))[:, ::-1]  # (5, 2, 8, 12), column-major matrices
    staging_mb(monkeypatch, 3, 8, 12, 8)
    p = _arrays.prepare(x)
    out = np.empty((10, 8))
    CpuStager.made = []
    status = _streaming.svdvals_batch(p, out, "exact", 0, make_stager=CpuStager)
    assert CpuStager.made[0].rows == 12 and CpuStager.made[0].cols == 8  # staged as Aᵀ
    assert not status.any()
    assert_sv_close(out.reshape(5, 2, 8), x, "exact")


def test_stream_batch_empty_shapes_make_no_stager():
    for shape in [(0, 4, 3), (3, 0, 4), (2, 5, 0)]:
        p = _arrays.prepare(np.ones(shape))
        k = min(shape[-2:])
        out = np.empty((shape[0], k))
        CpuStager.made = []
        assert _streaming.svdvals_batch(p, out, "auto", 0, make_stager=CpuStager).shape == (shape[0],)
        assert CpuStager.made == []


def test_stream_list_groups_shapes_and_layouts(rng, monkeypatch):
    """A ragged list: matrices of one staged shape share chunks (a transposed 8×5 joins the 5×8 group),
    each result lands in its own output, empty matrices take no work."""
    shapes = [(5, 8), (7, 7), (8, 5), (5, 8), (0, 3), (7, 7), (5, 8), (1, 1), (5, 8)]
    mats = [engineered(rng, m, n, "gaussian") if m * n else np.ones((m, n)) for m, n in shapes]
    mats[2] = np.asfortranarray(mats[2])  # 8×5 column-major: staged as 5×8
    staging_mb(monkeypatch, 2, 5, 8, 8)
    items = _arrays.prepare_matrices(mats)
    outs = [np.full(min(s), np.nan) for s in shapes]
    CpuStager.made = []
    status = _streaming.svdvals_list(items, outs, "exact", 0, make_stager=CpuStager)
    assert not status.any()
    for o, a in zip(outs, mats):
        assert_sv_close(o, a, "exact")
    groups = sorted((st.rows, st.cols) for st in CpuStager.made)
    assert groups == [(1, 1), (5, 8), (7, 7)]
    five_by_eight = next(st for st in CpuStager.made if (st.rows, st.cols) == (5, 8))
    assert sum(e[0] == "submit" for e in five_by_eight.events) == 3  # 5 matrices, 2 per slot


def test_staging_size_from_environment(monkeypatch):
    monkeypatch.delenv("RANKSCOPE_CUDA_STAGING_MB", raising=False)
    assert _streaming.staging_bytes() == _streaming.DEFAULT_STAGING_MB << 20
    assert _streaming.chunk_size(1 << 20, 1000) == _streaming.DEFAULT_STAGING_MB
    assert _streaming.chunk_size(1 << 40, 1000) == 1  # a matrix larger than a slot still goes alone
    assert _streaming.chunk_size(16, 3) == 3
    monkeypatch.setenv("RANKSCOPE_CUDA_STAGING_MB", "1.5")
    assert _streaming.staging_bytes() == 3 << 19
    for bad in ["0", "-2", "lots", "nan"]:
        monkeypatch.setenv("RANKSCOPE_CUDA_STAGING_MB", bad)
        with pytest.raises(ValueError, match="RANKSCOPE_CUDA_STAGING_MB"):
            _streaming.staging_bytes()


# ---- the public API on top of it ----------------------------------------------------------------------


@pytest.mark.parametrize(("framework", "dtype"), [("numpy", "float32"), ("numpy", "float64"), ("numpy", "float16"),
                                                  ("torch", "bfloat16"), ("torch", "float32")])
def test_svdvals_device_cuda_host_input(rng, monkeypatch, cpu_gpu, framework, dtype):
    a = np.stack([engineered(rng, 20, 13, "logspace") for _ in range(6)]).reshape(3, 2, 20, 13)
    x = to_framework(a, framework, dtype)
    staging_mb(monkeypatch, 4, 20, 13, 2 if dtype in ("float16", "bfloat16") else np.dtype(dtype).itemsize)
    got = rs.svdvals(x, device="cuda")
    assert type(got) is type(x) and tuple(got.shape) == (3, 2, 13)
    assert str(got.dtype).removeprefix("torch.") == ("float64" if dtype == "float64" else "float32")
    assert len(cpu_gpu) == 1 and cpu_gpu[0].chunk == 4
    # the same values as the host engine: the stand-in runs the same engine on the same data
    want = rs.svdvals(x)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


def test_svdvals_device_cuda_lists_and_ragged(rng, cpu_gpu):
    a = engineered(rng, 4, 3, "gaussian")
    got = rs.svdvals(a.tolist(), device="cuda")
    assert isinstance(got, list)
    np.testing.assert_allclose(got, ref_svdvals(a), rtol=0, atol=1e-14)
    mats = [engineered(rng, 6, 4, "logspace"), torch.from_numpy(engineered(rng, 3, 9, "logspace"))]
    got = rs.svdvals([mats[0], mats[1].numpy()], device="cuda", dtype="float32")
    assert [g.dtype for g in got] == [np.float32, np.float32]
    for g, m in zip(got, mats):
        assert_sv_close(g, m if isinstance(m, np.ndarray) else m.numpy())


def test_svdvals_device_cuda_empty(cpu_gpu):
    for shape in [(3, 5, 0), (0, 4, 3), (2, 0, 0), (4, 0)]:
        got = rs.svdvals(np.ones(shape, dtype=np.float32), device="cuda")
        assert got.shape == (*shape[:-2], min(shape[-2:])) and got.dtype == np.float32
    assert rs.svdvals([np.ones((0, 3)), np.ones((2, 2))], device="cuda")[0].shape == (0,)
    assert cpu_gpu[-1].rows == 2  # only the 2×2 matrix took a stager


def test_device_cuda_nan_is_reported_as_on_host(rng, monkeypatch, cpu_gpu):
    x = np.stack([engineered(rng, 5, 5, "gaussian") for _ in range(7)])
    x[4, 2, 3] = np.nan
    staging_mb(monkeypatch, 2, 5, 5, 8)
    with pytest.raises(ValueError, match=r"NaN or Inf \(matrix at batch index \(4,\)"):
        rs.svdvals(x, device="cuda")
    got = rs.svdvals(x, device="cuda", check_finite=False)
    assert np.isnan(got[4]).all() and not np.isnan(np.delete(got, 4, axis=0)).any()


def test_metrics_take_device(rng, monkeypatch, cpu_gpu):
    x = np.stack([engineered(rng, 30, 10, "rank_deficient") for _ in range(5)])
    staging_mb(monkeypatch, 2, 30, 10, 8)
    on_gpu = rs.spectrum_report(x, device="cuda")
    on_host = rs.spectrum_report(x)
    assert len(cpu_gpu) == 1
    for name in on_host:
        np.testing.assert_array_equal(on_gpu[name], on_host[name], err_msg=name)
    assert np.array_equal(rs.matrix_rank(x, device="cuda"), np.full(5, 5))
    t = torch.from_numpy(x)
    assert torch.equal(rs.effective_rank(t, device="cuda"), rs.effective_rank(t))


def test_parse_device():
    assert _arrays.parse_device(None) is None
    assert _arrays.parse_device("cpu") is None
    assert _arrays.parse_device(torch.device("cpu")) is None
    for bad in ["tpu", "cuda:x", "cuda:-1", "gpu:0", 3]:
        with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:N'"):
            _arrays.parse_device(bad)
