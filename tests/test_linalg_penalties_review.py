"""Review of the drop-ins (rankscope.numpy.linalg, rankscope.torch.linalg, rankscope.patch) and the
torch penalties: each test pins one difference from numpy/torch (or from the float64 reference
formulas) that was found and fixed."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rankscope.penalties as rp
import rankscope.torch as rt
import rankscope.torch.penalties as tp
import torch
import torch.nn.functional as F
from rankscope.torch import linalg as L

# ---- rankscope.torch.linalg ----------------------------------------------------------------------

# torch.linalg's own keyword name for the input of each function
TORCH_INPUT = {"svdvals": "A", "matrix_rank": "input", "matrix_norm": "input", "cond": "input"}


def _outcome(fn, kwargs):
    try:
        return fn(**kwargs), None, None
    except Exception as e:  # noqa: BLE001 - the error itself is compared
        return None, type(e), str(e)


@pytest.mark.parametrize("name", list(TORCH_INPUT))
def test_torch_input_passed_by_keyword_as_torch(rng, name):
    """torch.linalg.cond(input=A) (matrix_rank, matrix_norm alike; svdvals(A=A)) works in torch;
    ours said "missing 1 required positional argument: 'A'", and accepted A= where torch refuses it."""
    A = torch.from_numpy(rng.standard_normal((2, 4, 3)))
    for key in ("A", "input"):
        ours = _outcome(getattr(L, name), {key: A})
        theirs = _outcome(L.ORIGINALS[name], {key: A})
        assert ours[1:] == theirs[1:], (name, key, ours[1:], theirs[1:])
        if theirs[0] is not None:
            torch.testing.assert_close(ours[0], theirs[0])
    got = getattr(L, name)(**{TORCH_INPUT[name]: A})  # and the engine still computes it
    assert got.shape == L.ORIGINALS[name](A).shape


@pytest.mark.parametrize("ord", [2, -2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_matrix_norm_result_is_contiguous(rng, ord, dtype):
    """float64 batched ord=±2 norms were a strided view into the whole spectrum (stride (12, 4) for a
    (2, 3) result): .view(6) raised; torch's result is contiguous."""
    A = torch.from_numpy(rng.standard_normal((2, 3, 4, 4))).to(dtype)
    got = L.matrix_norm(A, ord)
    want = L.ORIGINALS["matrix_norm"](A, ord)
    assert got.is_contiguous() and got.stride() == want.stride()
    torch.testing.assert_close(got.view(6), want.view(6))


def test_torch_matrix_rank_negative_rtol_as_torch():
    """torch's tolerance is max(atol, rtol·s₁) with atol = 0 when not given: rtol < 0 counts s > 0.
    Ours used rtol·s₁ alone, so a negative rtol counted the zero singular values too (3, not 1)."""
    for dtype in (torch.float32, torch.float64):
        A = torch.zeros(2, 3, 3, dtype=dtype)
        A[:, 0, 0] = 1.0
        for kw in ({"rtol": -1.0}, {"rtol": -1e-3}, {"rtol": -1.0, "atol": -1.0}):
            torch.testing.assert_close(L.matrix_rank(A, **kw), L.ORIGINALS["matrix_rank"](A, **kw))


# ---- rankscope.numpy.linalg on numpy 1.x ---------------------------------------------------------

# numpy 1.x's numpy.linalg, simulated on this numpy: no svdvals or matrix_norm (numpy 2.0 added
# them), and matrix_rank(A, tol=None, hermitian=False) without rtol (numpy 1.26's source).
NUMPY1 = textwrap.dedent("""
    import numpy as np
    from numpy import asarray, count_nonzero, finfo
    from numpy.linalg import svd

    del np.linalg.svdvals, np.linalg.matrix_norm

    def matrix_rank(A, tol=None, hermitian=False):
        A = asarray(A)
        if A.ndim < 2:
            return int(not all(A == 0))
        S = svd(A, compute_uv=False, hermitian=hermitian)
        if tol is None:
            tol = S.max(axis=-1, keepdims=True) * max(A.shape[-2:]) * finfo(S.dtype).eps
        else:
            tol = asarray(tol)[..., np.newaxis]
        return count_nonzero(S > tol, axis=-1)

    np.linalg.matrix_rank = matrix_rank
""")


def test_numpy_linalg_on_numpy_1():
    """pyproject allows numpy>=1.23, but importing rankscope.numpy.linalg raised AttributeError
    ('numpy.linalg' has no attribute 'svdvals') there, so rankscope.patch() failed too; and
    matrix_rank's fallback passed rtol=None to a numpy matrix_rank without rtol (TypeError)."""
    code = NUMPY1 + textwrap.dedent("""
        import pytest
        import rankscope
        import rankscope.numpy.linalg as rl

        assert set(rl.ORIGINALS) == {"svd", "matrix_rank", "norm", "cond"}
        rng = np.random.default_rng(0)
        A = rng.standard_normal((3, 5, 4)) @ np.diag([1, 1, 1, 0.0])
        np.testing.assert_array_equal(rl.matrix_rank(A), [3, 3, 3])
        assert rl.matrix_rank(np.eye(3, dtype=np.int64)) == 3  # numpy's (forwarded)
        assert rl.matrix_rank(np.ones(3)) == 1
        for f in (rl.matrix_rank, matrix_rank):  # numpy 1.x has no rtol: the same TypeError
            with pytest.raises(TypeError, match="rtol"):
                f(A, rtol=0.5)
        # numpy 2.0's svdvals and matrix_norm, computed alike on numpy 1.x
        np.testing.assert_allclose(rl.svdvals(A), np.linalg.svd(A, compute_uv=False), rtol=1e-12)
        np.testing.assert_allclose(rl.svdvals([[3.0, 0], [0, 4]]), [4, 3])
        np.testing.assert_allclose(rl.matrix_norm(A, ord="nuc"), np.linalg.norm(A, "nuc", (-2, -1)))
        np.testing.assert_allclose(rl.matrix_norm(A), np.linalg.norm(A, axis=(-2, -1)))
        before = {n: getattr(np.linalg, n) for n in ("svd", "matrix_rank", "norm", "cond")}
        with rankscope.patch():
            assert np.linalg.matrix_rank is rl.matrix_rank
            assert not hasattr(np.linalg, "svdvals")
            np.testing.assert_array_equal(np.linalg.matrix_rank(A), [3, 3, 3])
        assert {n: getattr(np.linalg, n) for n in before} == before
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- the torch penalties -------------------------------------------------------------------------


def _neg_bit(t: torch.Tensor) -> torch.Tensor:
    """t's values as a real tensor with the negative bit set (x.conj().imag, public torch)."""
    c = torch.complex(torch.zeros_like(t), -t).conj()
    v = c.imag
    assert v.is_neg() and torch.equal(v, t)
    return v


@pytest.mark.parametrize("force_torch_ops", [False, True])
def test_torch_penalties_of_negative_bit_tensors(rng, monkeypatch, force_torch_ops):
    """x.conj().imag is a real tensor with torch's negative bit: the core read its memory (−x) through
    DLPack, so invariance_loss(x, y) gave mean((−x − y)²) and Barlow Twins the loss of −x."""
    monkeypatch.setattr(tp, "_FORCE_TORCH_OPS", force_torch_ops)
    x = torch.from_numpy(rng.standard_normal((2, 6, 4)) + 0.5)
    y = x + 0.3 * torch.from_numpy(rng.standard_normal((2, 6, 4)))
    fns = {
        "vicreg": lambda a, b: torch.stack(list(rt.vicreg_loss(a, b, reduction="none"))),
        "barlow": lambda a, b: rt.barlow_twins_loss(a, b, reduction="none"),
        "invariance": lambda a, b: rt.invariance_loss(a, b, reduction="none"),
    }
    for name, f in fns.items():
        a = x.clone().requires_grad_()
        n = _neg_bit(a)
        want = f(x.clone().requires_grad_(), y)
        got = f(n, y)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-14, msg=name)
        (g,) = torch.autograd.grad(got.sum(), a)
        xa = x.clone().requires_grad_()
        (g_want,) = torch.autograd.grad(f(xa, y).sum(), xa)
        torch.testing.assert_close(g, g_want, rtol=1e-10, atol=1e-12, msg=name)


def test_host_penalties_of_negative_bit_tensors(rng):
    """rankscope.penalties reads torch CPU tensors in place: a negative-bit tensor gave −x's values."""
    x = torch.from_numpy(rng.standard_normal((5, 3)))
    y = torch.from_numpy(rng.standard_normal((5, 3)))
    n = _neg_bit(x)
    np.testing.assert_allclose(rp.invariance_loss(n, y), float(F.mse_loss(x, y)), rtol=1e-12)
    np.testing.assert_allclose(rp.barlow_twins_loss(n, y), rp.barlow_twins_loss(x, y), rtol=1e-12)
    np.testing.assert_allclose(rp.vicreg_loss(y, n), rp.vicreg_loss(y, x), rtol=1e-12)
