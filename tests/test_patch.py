"""rankscope.patch(): what it installs in numpy.linalg / torch.linalg, restoring, nesting, threads."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import threading

import numpy as np
import pytest
import rankscope as rs
import rankscope.numpy.linalg as rl
from conftest import ref_svdvals, route_of, sv_tolerance

NUMPY_NAMES = ("svd", "svdvals", "matrix_rank", "norm", "matrix_norm", "cond")
TORCH_NAMES = ("svdvals", "matrix_rank", "matrix_norm", "cond")


def numpy_attrs() -> dict:
    return {n: getattr(np.linalg, n) for n in NUMPY_NAMES}


@pytest.fixture(autouse=True)
def _no_patch_left():
    """Every test starts and ends with numpy's own functions installed."""
    before = numpy_attrs()
    assert rs._patch.active() == {}
    yield
    assert rs._patch.active() == {}
    assert numpy_attrs() == before


def test_swaps_numpy_linalg_for_the_block(rng):
    own = numpy_attrs()
    with rs.patch() as p:
        assert isinstance(p, rs.patch)
        for name in NUMPY_NAMES:
            assert getattr(np.linalg, name) is getattr(rl, name)
        assert rs._patch.active() == {"numpy": 1}
        x = rng.standard_normal((10, 6, 5)).astype(np.float32)
        s = np.linalg.svd(x, compute_uv=False)
        ref = ref_svdvals(x)
        assert s.dtype == np.float32 and np.all(np.abs(s - ref) <= sv_tolerance(route_of("float32", 6, 5, "gram"), 6,
                                                                                   5, ref, "float32"))
    for name in NUMPY_NAMES:
        assert getattr(np.linalg, name) is own[name]


def test_forwarded_calls_do_not_recurse(rng):
    """Under the patch the fallbacks (and numpy's functions calling each other) reach numpy's code."""
    a = rng.standard_normal((5, 5))
    want = {"svd": np.linalg.svd(a), "cond1": np.linalg.cond(a, 1), "fro": np.linalg.matrix_norm(a),
            "herm": np.linalg.matrix_rank(a + a.T, hermitian=True), "vec": np.linalg.norm(a[0]),
            "pinv": np.linalg.pinv(a)}
    with rs.patch():
        got = {"svd": np.linalg.svd(a), "cond1": np.linalg.cond(a, 1), "fro": np.linalg.matrix_norm(a),
               "herm": np.linalg.matrix_rank(a + a.T, hermitian=True), "vec": np.linalg.norm(a[0]),
               "pinv": np.linalg.pinv(a)}
    for k, w in want.items():
        for gi, wi in zip(got[k], w) if k == "svd" else [(got[k], w)]:
            np.testing.assert_array_equal(gi, wi, err_msg=k)


def test_restores_on_error():
    own = numpy_attrs()
    with pytest.raises(ZeroDivisionError), rs.patch():
        assert np.linalg.svd is rl.svd
        1 / 0  # noqa: B018
    assert numpy_attrs() == own


def test_restores_what_was_there_before(monkeypatch):
    def users_wrapper(*args, **kwargs):
        return rl.ORIGINALS["svd"](*args, **kwargs)

    monkeypatch.setattr(np.linalg, "svd", users_wrapper)
    with rs.patch():
        assert np.linalg.svd is rl.svd
        assert np.linalg.svd(np.eye(3), compute_uv=False).tolist() == [1.0, 1.0, 1.0]
    assert np.linalg.svd is users_wrapper
    monkeypatch.undo()


def test_nesting_within_a_thread():
    own = numpy_attrs()
    outer = rs.patch()
    with outer:
        with rs.patch():
            assert rs._patch.active() == {"numpy": 2}
            with outer:  # the same object re-entered
                assert rs._patch.active() == {"numpy": 3}
            assert np.linalg.cond is rl.cond
        assert rs._patch.active() == {"numpy": 1} and np.linalg.cond is rl.cond
    assert numpy_attrs() == own
    with outer:  # reusable after exit
        assert np.linalg.norm is rl.norm


def test_as_a_decorator(rng):
    @rs.patch()
    def rank(x):
        assert np.linalg.matrix_rank is rl.matrix_rank
        return np.linalg.matrix_rank(x)

    x = rng.standard_normal((4, 6, 6))
    x[1, :, 0] = 0
    assert rank(x).tolist() == [6, 5, 6, 6]
    assert rank(x[0]) == 6


def test_no_targets_is_a_no_op():
    own = numpy_attrs()
    with rs.patch(numpy=False):
        assert numpy_attrs() == own and rs._patch.active() == {}


@pytest.mark.parametrize("kwargs", [{"numpy": 1}, {"torch": "yes"}, {"numpy": None}])
def test_arguments_must_be_bools(kwargs):
    with pytest.raises(TypeError, match="must be a bool"):
        rs.patch(**kwargs)


def test_a_second_thread_cannot_enter_while_one_is_active(rng):
    errors, results = [], []
    x = rng.standard_normal((8, 5, 5)).astype(np.float32)

    def other():
        try:
            with rs.patch():
                pass
        except RuntimeError as e:
            errors.append(str(e))
        # while the patch is active, every thread calls rankscope's functions (numpy's answers)
        results.append((np.linalg.svdvals is rl.svdvals, np.linalg.svdvals(x)))

    with rs.patch():
        t = threading.Thread(target=other)
        t.start()
        t.join()
    assert len(errors) == 1 and "another thread" in errors[0]
    assert results[0][0] and results[0][1].shape == (8, 5)

    # once it is over, another thread may patch (and restores on its way out)
    def patched_elsewhere():
        with rs.patch():
            results.append(np.linalg.svd is rl.svd)

    t = threading.Thread(target=patched_elsewhere)
    t.start()
    t.join()
    assert results[-1] is True


def test_leaving_from_another_thread_raises():
    p = rs.patch()
    p.__enter__()
    errors = []

    def leave():
        try:
            p.__exit__(None, None, None)
        except RuntimeError as e:
            errors.append(e)

    t = threading.Thread(target=leave)
    t.start()
    t.join()
    assert errors and rs._patch.active() == {"numpy": 1}
    p.__exit__(None, None, None)


def test_import_rankscope_does_not_import_the_drop_in():
    code = ("import sys, rankscope; assert 'rankscope.numpy' not in sys.modules; rankscope.patch(); "
            "assert 'rankscope.numpy' not in sys.modules; rankscope.numpy.linalg.svdvals; "
            "assert 'rankscope.numpy.linalg' in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


HAVE_TORCH_LINALG = importlib.util.find_spec("rankscope.torch.linalg") is not None


@pytest.mark.skipif(not HAVE_TORCH_LINALG, reason="rankscope.torch.linalg (issue 19, part 2) is not in this tree")
def test_torch_linalg_for_the_block(rng):
    import torch

    tl = importlib.import_module("rankscope.torch.linalg")
    own = {n: getattr(torch.linalg, n) for n in TORCH_NAMES}
    x = torch.from_numpy(rng.standard_normal((6, 7, 5)).astype(np.float32))
    with rs.patch(torch=True):
        assert rs._patch.active() == {"numpy": 1, "torch": 1}
        for name in TORCH_NAMES:
            assert getattr(torch.linalg, name) is getattr(tl, name)
        s = torch.linalg.svdvals(x)
        assert np.linalg.svd is rl.svd
    assert {n: getattr(torch.linalg, n) for n in TORCH_NAMES} == own
    ref = ref_svdvals(x.numpy())
    assert s.dtype == torch.float32 and np.all(np.abs(s.numpy() - ref) <= sv_tolerance(
        route_of("float32", 7, 5, "gram"), 7, 5, ref, "float32"))


@pytest.mark.skipif(not HAVE_TORCH_LINALG, reason="rankscope.torch.linalg (issue 19, part 2) is not in this tree")
def test_torch_nested_inside_numpy():
    import torch

    own = torch.linalg.cond
    with rs.patch():
        with rs.patch(numpy=False, torch=True):
            assert torch.linalg.cond is not own and np.linalg.cond is rl.cond
            assert rs._patch.active() == {"numpy": 1, "torch": 1}
        assert torch.linalg.cond is own and np.linalg.cond is rl.cond
        assert rs._patch.active() == {"numpy": 1}
