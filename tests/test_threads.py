"""Thread count control, results independent of it, and concurrent calls from Python threads."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import rankscope as rs
from conftest import assert_sv_close, sv_tolerance, torch
from rankscope import _core


@pytest.fixture
def restore_threads():
    before = rs.get_num_threads()
    yield before
    rs.set_num_threads(before)
    assert rs.get_num_threads() == before


def test_set_get(restore_threads):
    from rankscope._backend import cuda_module

    for n in (1, 2, 3, 7, 1):
        rs.set_num_threads(n)
        assert rs.get_num_threads() == n
        assert rs.build_info()["num_threads"] == n
        if cuda_module() is not None:  # the CUDA backend's staging copies follow the same setting
            assert cuda_module().get_num_threads() == n
    rs.set_num_threads(0)  # n <= 0: the default
    default = rs.get_num_threads()
    env = os.environ.get("RANKSCOPE_NUM_THREADS")
    assert default == (int(env) if env and int(env) > 0 else _core.available_cpus())
    rs.set_num_threads(-5)
    assert rs.get_num_threads() == default
    for bad in (2.0, "2", None):
        with pytest.raises(TypeError):
            rs.set_num_threads(bad)
    assert rs.get_num_threads() == default


def test_refused_thread_counts_keep_the_pool(restore_threads):
    """An absurd count is a ValueError, and so is one the system will not start (here: an address
    space too small for 4000 thread stacks); the pool keeps its threads, computes, and the process
    exits cleanly (a partly started pool used to crash the interpreter at exit)."""
    before = rs.get_num_threads()
    for n in (10**5, 2**31 - 1, 2**40):
        with pytest.raises(ValueError, match="above the limit"):
            rs.set_num_threads(n)
        assert rs.get_num_threads() == before
    code = (
        "import resource, numpy as np, rankscope as rs\n"
        "vm = next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmSize:')) * 1024\n"
        "resource.setrlimit(resource.RLIMIT_AS, (vm + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))\n"
        "rs.set_num_threads(2)\n"
        "try:\n"
        "    rs.set_num_threads(4000)\n"
        "except ValueError as e:\n"
        "    print('refused:', e)\n"
        "print(rs.get_num_threads(), rs.svdvals(np.eye(3)[None].repeat(20, 0)).sum())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    if lines[0].startswith("refused:"):  # the limit bit (it does unless stacks are tiny)
        assert "would not start 4000 threads" in lines[0] and "still 2" in lines[0], lines
        lines = lines[1:]
    assert lines[0].split()[0] in ("2", "4000") and float(lines[0].split()[1]) == 60.0, lines


def test_environment_default():
    code = "import rankscope as rs; print(rs.get_num_threads(), rs.build_info()['num_threads'])"
    env = dict(os.environ, RANKSCOPE_NUM_THREADS="3")
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["3", "3"]


def _workload(rng):
    """A mix of every route: compact groups (full and partial), gram, exact, one big matrix."""
    return {
        "compact32": rng.standard_normal((21, 12, 9)).astype(np.float32),
        "compact64": rng.standard_normal((10, 40, 33)),
        "gram": rng.standard_normal((3, 140, 150)).astype(np.float32),
        "exact": rng.standard_normal((5, 30, 25)),
        "one_big": rng.standard_normal((300, 260)).astype(np.float32),
        "one_big_exact": rng.standard_normal((200, 180)),
        "ragged": [
            rng.standard_normal(s).astype(np.float32)
            for s in [(5, 4)] * 9 + [(140, 139), (3, 50), (70, 70)]
        ],
    }


def _run_all(work):
    out = {}
    for name, x in work.items():
        for method in ("auto", "gram", "exact"):
            out[name, method] = rs.svdvals(x, method=method)
    out["report"] = rs.spectrum_report(work["compact32"])
    return out


def _equal(a, b):
    if isinstance(a, list):
        return all(_equal(u, v) for u, v in zip(a, b))
    if isinstance(a, dict):
        return all(_equal(a[k], b[k]) for k in a)
    return np.array_equal(np.asarray(a), np.asarray(b))


def test_results_identical_for_1_and_2_threads(rng, restore_threads):
    """Parallelism over matrices never changes a result. One big matrix runs threaded BLAS instead:
    bitwise equal too for float32 data (its products are exact in float64, so the order the BLAS
    kernels accumulate in does not matter up to FMA use) and for dgesdd; float64 data on the Gram
    route may change with the thread count (measured up to ~20·eps64·s₁ on the smallest values), so
    there the two runs must agree within the route's own tolerance (conftest.sv_tolerance)."""
    work = _workload(rng)
    rs.set_num_threads(1)
    one = _run_all(work)
    rs.set_num_threads(2)
    two = _run_all(work)
    rs.set_num_threads(4)  # more threads than this machine's cores is allowed
    four = _run_all(work)
    for key in one:
        for other in (two, four):
            if key in (("one_big_exact", "gram"),):
                a, b = np.asarray(one[key]), np.asarray(other[key])
                tol = sv_tolerance("gram", *work[key[0]].shape, a, "float64")
                assert np.all(np.abs(a - b) <= tol), key
            else:
                assert _equal(one[key], other[key]), key
    for name in ("compact32", "gram", "one_big"):
        assert_sv_close(one[name, "auto"], work[name])


def test_concurrent_python_threads(rng):
    """8 Python threads calling at once (the GIL is released inside): every result is what a lone
    call gives."""
    work = _workload(rng)
    items = [(name, method) for name in work for method in ("auto", "gram", "exact")]
    expected = {key: rs.svdvals(work[key[0]], method=key[1]) for key in items}
    torch_x = torch.from_numpy(work["compact32"]).mT
    expected["torch"] = rs.svdvals(torch_x)
    barrier = threading.Barrier(8)

    def job(i):
        barrier.wait()
        bad = []
        for r in range(3):
            for j in range(len(items)):
                key = items[(i + j) % len(items)]
                got = rs.svdvals(work[key[0]], method=key[1])
                if not _equal(got, expected[key]):
                    bad.append(key)
            if not torch.equal(rs.svdvals(torch_x), expected["torch"]):
                bad.append("torch")
        return bad

    with ThreadPoolExecutor(max_workers=8) as ex:
        results = list(ex.map(job, range(8)))
    assert results == [[]] * 8


def test_concurrent_calls_while_resizing(rng, restore_threads):
    """set_num_threads while other threads compute: running calls finish with correct results."""
    x = rng.standard_normal((64, 20, 16)).astype(np.float32)
    expected = rs.svdvals(x)
    stop = threading.Event()

    def resize():
        n = 0
        while not stop.is_set():
            rs.set_num_threads(1 + n % 3)
            n += 1
        return n

    def compute(_):
        return all(np.array_equal(rs.svdvals(x), expected) for _ in range(30))

    with ThreadPoolExecutor(max_workers=5) as ex:
        resizer = ex.submit(resize)
        ok = list(ex.map(compute, range(4)))
        stop.set()
        assert resizer.result() > 0
    assert all(ok)


def test_forked_children_compute_with_a_fresh_pool():
    """A child of fork() (e.g. a torch DataLoader worker) has no pool workers: it must neither hang
    nor crash, get the parent's results, and run its loops on new workers."""
    import multiprocessing as mp

    a = np.random.default_rng(0).standard_normal((200, 64, 64)).astype(np.float32)
    ref = rs.svdvals(a)  # the parent's pool is running

    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_child_svdvals, args=(q, a, ref)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0]
    for _ in procs:
        threads, err = q.get(timeout=5)
        assert threads == rs.get_num_threads()
        assert err == 0.0


def _child_svdvals(q, a, ref):
    q.put((rs.get_num_threads(), float(np.abs(rs.svdvals(a) - ref).max())))
