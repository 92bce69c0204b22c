"""VICReg and Barlow Twins penalties (METRICS.md §4): values and gradients against the reference
formulas written out in plain torch, the worked example, edge cases and errors.

Three paths run every body: ``numpy`` (rankscope.penalties, values only), ``torch``
(rankscope.torch on CPU tensors: the compiled core) and ``torch-ops`` (rankscope.torch forced onto
the torch-ops code that CUDA tensors run, tested here on the CPU as the GPU's oracle).

Tolerances. Values: for float32 inputs the contract, 1e-6 relative to the float64 reference on the
same (float32-representable) inputs: the results are float32 (rounding alone is 6e-8) and the one
float32 product carries ~eps32·sqrt(N) per entry, which averages out in the sums of squares.
float64 inputs: 1e-12 (every path accumulates in float64; measured ~1e-15). Barlow Twins adds an
absolute 16·eps64 per feature: (1 − c_ii)² loses digits when c_ii ≈ 1 in any float64 code.
Gradients (normwise, relative to max |g|): float64 to 1e-10 against autograd of the reference;
float32 to at most twice the error of the reference's own float32 autograd plus 16·eps32 (the
flash-attention rule; the float32 output rounding and the float32 product over N rows account for
the constant; measured ≤ 1e-6).
"""

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
from conftest import EPS32, EPS64
from rankscope import _penalties

PATHS = ("numpy", "torch", "torch-ops")
# N × d: odd sizes, N < d and N > d, both sides of each dtype's Gram threshold (float64: d > N;
# float32: d > 2N), N = 2 (the smallest allowed) and d = 1.
SHAPES = [
    (2, 1),
    (2, 2),
    (31, 33),
    (33, 31),
    (97, 31),
    (31, 97),
    (16, 32),
    (16, 33),
    (2, 97),
    (97, 1),
    (97, 97),
]
BATCHED = [(3, 33, 31), (2, 2, 31, 33), (4, 16, 40)]
RTOL = {"float32": 1e-6, "float64": 1e-12}


# ---- the reference formulas (plain torch, one process: nothing to gather) ------------------------


def off_diagonal(x):
    """facebookresearch/vicreg and barlowtwins, verbatim."""
    n, m = x.shape
    assert n == m
    return x.flatten()[:-1].view(n - 1, n + 1)[:, 1:].flatten()


def vicreg_reference(x, y, sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0, halve_variance=True):
    """facebookresearch/vicreg main_vicreg.py, VICReg.forward after the projector."""
    batch_size, num_features = x.shape
    repr_loss = F.mse_loss(x, y)
    x = x - x.mean(dim=0)
    y = y - y.mean(dim=0)
    std_x = torch.sqrt(x.var(dim=0) + 0.0001)
    std_y = torch.sqrt(y.var(dim=0) + 0.0001)
    h = 2 if halve_variance else 1
    std_loss = torch.mean(F.relu(1 - std_x)) / h + torch.mean(F.relu(1 - std_y)) / h
    cov_x = (x.T @ x) / (batch_size - 1)
    cov_y = (y.T @ y) / (batch_size - 1)
    cov_loss = off_diagonal(cov_x).pow_(2).sum().div(num_features) + off_diagonal(cov_y).pow_(
        2
    ).sum().div(num_features)
    loss = sim_coeff * repr_loss + std_coeff * std_loss + cov_coeff * cov_loss
    return loss, repr_loss, std_loss, cov_loss


def barlow_reference(z1, z2, lambd=0.0051, scale=1.0):
    """facebookresearch/barlowtwins main.py, BarlowTwins.forward after the projector (× scale)."""
    bn = torch.nn.BatchNorm1d(z1.shape[1], affine=False).to(z1.dtype)
    c = bn(z1).T @ bn(z2)
    c.div_(z1.shape[0])
    on_diag = torch.diagonal(c).add_(-1).pow_(2).sum()
    off_diag = off_diagonal(c).pow_(2).sum()
    return scale * (on_diag + lambd * off_diag)


def solo_learn_barlow(z1, z2, lamb=5e-3, scale_loss=0.025):
    """solo-learn's barlow_loss_func (its other convention for the same loss)."""
    n, d = z1.size()
    bn = torch.nn.BatchNorm1d(d, affine=False).to(z1.dtype)
    corr = torch.einsum("bi, bj -> ij", bn(z1), bn(z2)) / n
    diag = torch.eye(d, dtype=z1.dtype)
    cdif = (corr - diag).pow(2)
    cdif[~diag.bool()] *= lamb
    return scale_loss * cdif.sum()


def per_element(ref, z1, z2, **kw):
    """The reference on each (N, d) pair of a batch, float64, stacked: (B, outputs)."""
    a = torch.from_numpy(np.asarray(z1, dtype=np.float64)).reshape(-1, *z1.shape[-2:])
    b = torch.from_numpy(np.asarray(z2, dtype=np.float64)).reshape(-1, *z2.shape[-2:])
    rows = []
    for x, y in zip(a, b):
        out = ref(x, y, **kw)
        rows.append([float(t) for t in (out if isinstance(out, tuple) else (out,))])
    return np.array(rows)


# ---- inputs and the three paths ------------------------------------------------------------------


def branches(rng, shape, dtype="float64", offset=3.0):
    """Two correlated branches with a mean offset and per-feature scales straddling γ = 1."""
    *batch, n, d = shape
    mix = np.eye(d) + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    scale = rng.uniform(0.3, 1.6, d)
    z1 = (rng.standard_normal((*batch, n, d)) @ mix) * scale + offset * rng.standard_normal(d)
    z2 = z1 + 0.5 * rng.standard_normal(z1.shape) * scale
    return z1.astype(dtype), z2.astype(dtype)


@pytest.fixture
def path(request, monkeypatch):
    if request.param == "torch-ops":
        monkeypatch.setattr(tp, "_FORCE_TORCH_OPS", True)
    return request.param


def run(path, fn, *zs, **kw):
    """fn on numpy inputs through `path`; results as float64 numpy (a tuple for vicreg_loss)."""
    if path == "numpy":
        out = getattr(rp, fn)(*zs, **kw)
    else:
        out = getattr(rt, fn)(*(torch.from_numpy(np.asarray(z)) for z in zs), **kw)
    if isinstance(out, tuple):
        return tuple(np.asarray(_np(t), dtype=np.float64) for t in out)
    return np.asarray(_np(out), dtype=np.float64)


def _np(t):
    return t.detach().numpy() if isinstance(t, torch.Tensor) else t


def grads(fn, z1, z2, dtype, weights=None):
    """Gradients of Σ weights · outputs(fn) w.r.t. both inputs, as one float64 vector."""
    a = torch.tensor(z1, dtype=dtype, requires_grad=True)
    b = torch.tensor(z2, dtype=dtype, requires_grad=True)
    out = fn(a, b)
    out = out if isinstance(out, tuple) else (out,)
    weights = weights or [1.0] * len(out)
    sum(w * o.sum() for w, o in zip(weights, out)).backward()
    return torch.cat([a.grad.ravel(), b.grad.ravel()]).double().numpy()


def assert_grad_close(ours, ref64, ref32=None, dtype="float64", n=None):
    """float64: within 1e-10 relative (2e-9 for a batch of N = 2, whose Barlow Twins correlations are
    1 − O(BatchNorm's eps / var): c − 1 cancels to ~1e-5, so any float64 formulation of its gradient,
    the reference's included, carries ~1e-10 relative error; measured up to 4e-10 over 3000 seeds);
    float32: within twice the float32 reference's own error."""
    scale = np.max(np.abs(ref64))
    err = np.max(np.abs(ours - ref64)) / scale
    if dtype == "float64":
        assert err <= (2e-9 if n == 2 else 1e-10), err
    else:
        tol = 2 * np.max(np.abs(ref32 - ref64)) / scale + 16 * EPS32
        assert err <= tol, (err, tol)


# ---- values --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES + BATCHED)
def test_vicreg_matches_reference(rng, path, dtype, shape):
    z1, z2 = branches(rng, shape, dtype)
    ref = per_element(vicreg_reference, z1, z2)
    batch = shape[:-2]
    got = run(path, "vicreg_loss", z1, z2, reduction="none")
    for k in range(4):
        np.testing.assert_allclose(got[k], ref[:, k].reshape(batch), rtol=RTOL[dtype], atol=0)
    mean = run(path, "vicreg_loss", z1, z2)
    np.testing.assert_allclose(np.array(mean), ref.mean(axis=0), rtol=RTOL[dtype], atol=0)
    # the per-term functions compose the same numbers
    v = run(path, "variance_loss", z1, reduction="none") + run(
        path, "variance_loss", z2, reduction="none"
    )
    c = run(path, "covariance_loss", z1, reduction="none") + run(
        path, "covariance_loss", z2, reduction="none"
    )
    i = run(path, "invariance_loss", z1, z2, reduction="none")
    np.testing.assert_allclose(0.5 * v, ref[:, 2].reshape(batch), rtol=RTOL[dtype], atol=0)
    np.testing.assert_allclose(c, ref[:, 3].reshape(batch), rtol=RTOL[dtype], atol=0)
    np.testing.assert_allclose(i, ref[:, 1].reshape(batch), rtol=RTOL[dtype], atol=0)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES + BATCHED)
def test_barlow_twins_matches_reference(rng, path, dtype, shape):
    # (1 − c_ii)² loses digits when c_ii ≈ 1 (N = 2: c_ii = 1 − O(eps/var)) in any float64 code, the
    # reference's included: 2|1 − c_ii| · eps64 per feature, hence the absolute term.
    z1, z2 = branches(rng, shape, dtype)
    atol = 16 * EPS64 * shape[-1]
    ref = per_element(barlow_reference, z1, z2)[:, 0]
    got = run(path, "barlow_twins_loss", z1, z2, reduction="none")
    np.testing.assert_allclose(got, ref.reshape(shape[:-2]), rtol=RTOL[dtype], atol=atol)
    np.testing.assert_allclose(
        run(path, "barlow_twins_loss", z1, z2), ref.mean(), rtol=RTOL[dtype], atol=atol
    )
    solo = per_element(solo_learn_barlow, z1, z2)[:, 0]
    np.testing.assert_allclose(
        run(path, "barlow_twins_loss", z1, z2, lambd=5e-3, scale=0.025, reduction="none"),
        solo.reshape(shape[:-2]),
        rtol=RTOL[dtype],
        atol=0.025 * atol,
    )


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_float32_large_batch_accuracy(rng, path):
    """float32 products over N = 1024 rows (both sides), strong mean offset: still 1e-6 relative."""
    for shape in [(1024, 96), (96, 1024)]:
        z1, z2 = branches(rng, shape, "float32", offset=30.0)
        ref = per_element(vicreg_reference, z1, z2)[0]
        np.testing.assert_allclose(
            np.array(run(path, "vicreg_loss", z1, z2)), ref, rtol=1e-6, atol=0
        )
        bt = per_element(barlow_reference, z1, z2)[0, 0]
        np.testing.assert_allclose(run(path, "barlow_twins_loss", z1, z2), bt, rtol=1e-6)


def test_plan_sides():
    assert _penalties.plan("float64", 31, 31) == ("features", "float64", 31)
    assert _penalties.plan("float64", 31, 32) == ("gram", "float64", 31)
    assert _penalties.plan("float32", 16, 32) == ("features", "float32", 32)
    assert _penalties.plan("float32", 16, 33) == ("gram", "float64", 16)
    assert _penalties.plan("bfloat16", 16, 8) == ("features", "float32", 8)


# ---- the worked example and edge cases -----------------------------------------------------------

X = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]], dtype=np.float64)
Y = np.array([[1, 1], [1, 1], [-1, -1], [-1, -1]], dtype=np.float64)


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_worked_example(path, dtype):
    # X: both columns have var 2/3, C diagonal; Y: both var 4/3 (s > 1), C all 4/3.
    var1 = 1 - np.sqrt(2 / 3 + 1e-4)
    inv, cov = 0.5, 16 / 9
    for halve, var in ((True, var1 / 2), (False, var1)):
        got = run(path, "vicreg_loss", X.astype(dtype), Y.astype(dtype), halve_variance=halve)
        want = (25 * inv + 25 * var + cov, inv, var, cov)
        np.testing.assert_allclose(np.array(got), want, rtol=RTOL[dtype], atol=0)
    got = run(path, "vicreg_loss", X, Y)
    np.testing.assert_allclose(np.array(got), (16.570805, 0.5, 0.0917211, 1.7777778), rtol=5e-7)
    got = run(path, "vicreg_loss", X, Y, halve_variance=False)
    np.testing.assert_allclose([got[0], got[2]], (18.863833, 0.1834422), rtol=5e-7)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_all_equal_rows(path):
    z = np.full((2, 8, 5), 3.25)
    np.testing.assert_allclose(
        run(path, "variance_loss", z, reduction="none"), [0.99, 0.99], rtol=1e-12
    )
    np.testing.assert_allclose(run(path, "covariance_loss", z), 0.0, atol=0)
    got = run(path, "vicreg_loss", z, z + 1.0)
    np.testing.assert_allclose(
        np.array(got[1:]), (1.0, 0.99, 0.0), rtol=1e-12, atol=0
    )  # 0.495 a branch
    got = run(path, "vicreg_loss", z, z, halve_variance=False)
    np.testing.assert_allclose(got[2], 1.98, rtol=1e-12)
    if path != "numpy":  # the gradient there is exactly zero, not NaN
        # only the invariance term moves: 25 · 2(x − y)/(N d) = ∓50/40 per entry
        g = grads(
            lambda a, b: rt.vicreg_loss(a, b, reduction="none").loss, z, z + 1.0, torch.float64
        )
        want = np.concatenate([-np.ones(z.size), np.ones(z.size)]) * 50 / 40
        np.testing.assert_allclose(g, want, rtol=1e-12, atol=0)


# ---- gradients -----------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["torch", "torch-ops"], indirect=True)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SHAPES + [(512, 64)])
def test_gradients_match_autograd(rng, path, dtype, shape):
    z1, z2 = branches(rng, shape, dtype)
    tdt = getattr(torch, dtype)
    w = [1.0, 0.3, 0.7, 1.1]  # every output of vicreg_loss gets its own upstream gradient
    ours = grads(lambda a, b: tuple(rt.vicreg_loss(a, b)), z1, z2, tdt, w)
    ref64 = grads(vicreg_reference, z1, z2, torch.float64, w)
    ref32 = grads(vicreg_reference, z1, z2, torch.float32, w) if dtype == "float32" else None
    assert_grad_close(ours, ref64, ref32, dtype)
    ours = grads(rt.barlow_twins_loss, z1, z2, tdt)
    ref64 = grads(barlow_reference, z1, z2, torch.float64)
    ref32 = grads(barlow_reference, z1, z2, torch.float32) if dtype == "float32" else None
    assert_grad_close(ours, ref64, ref32, dtype, n=shape[-2])


@pytest.mark.parametrize("path", ["torch", "torch-ops"], indirect=True)
def test_batched_gradients_per_element(rng, path):
    z1, z2 = branches(rng, (2, 3, 9, 7))
    weights = torch.from_numpy(rng.uniform(0.5, 2.0, (2, 3)))
    a = torch.tensor(z1, requires_grad=True)
    b = torch.tensor(z2, requires_grad=True)
    out = rt.vicreg_loss(a, b, reduction="none")
    (weights * (out.loss + out.covariance)).sum().backward()
    for idx in np.ndindex(2, 3):
        x = torch.tensor(z1[idx], requires_grad=True)
        y = torch.tensor(z2[idx], requires_grad=True)
        ref = vicreg_reference(x, y)
        (float(weights[idx]) * (ref[0] + ref[3])).backward()
        np.testing.assert_allclose(a.grad[idx].numpy(), x.grad.numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(b.grad[idx].numpy(), y.grad.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("path", ["torch", "torch-ops"], indirect=True)
@pytest.mark.parametrize("shape", [(5, 3), (3, 7), (2, 4, 5)])
def test_gradcheck(rng, path, shape):
    # scaled so that every std is below γ = 1: the relu is active and away from its kink
    z1, z2 = (torch.tensor(0.4 * z, requires_grad=True) for z in branches(rng, shape, offset=0.5))
    torch.autograd.gradcheck(lambda a, b: tuple(rt.vicreg_loss(a, b, reduction="none")), (z1, z2))
    torch.autograd.gradcheck(lambda a, b: rt.barlow_twins_loss(a, b, reduction="none"), (z1, z2))
    torch.autograd.gradcheck(lambda a, b: rt.invariance_loss(a, b, reduction="none"), (z1, z2))
    torch.autograd.gradcheck(lambda a: rt.variance_loss(a, reduction="none"), (z1,))
    torch.autograd.gradcheck(lambda a: rt.covariance_loss(a, reduction="none"), (z1,))


ONCE_DIFFERENTIABLE = {
    "vicreg_loss": lambda a, b: rt.vicreg_loss(a, b).loss,
    "barlow_twins_loss": rt.barlow_twins_loss,
    "variance_loss": lambda a, b: rt.variance_loss(a),
    "covariance_loss": lambda a, b: rt.covariance_loss(a),
}


@pytest.mark.parametrize("path", ["torch", "torch-ops"], indirect=True)
@pytest.mark.parametrize("name", list(ONCE_DIFFERENTIABLE))
def test_double_backward_raises(rng, path, name):
    # once_differentiable alone let this through (the incoming gradient does not require grad)
    # and the second backward treated the first-order gradient as a constant: wrong numbers
    f = ONCE_DIFFERENTIABLE[name]
    z1, z2 = (torch.tensor(0.4 * z, requires_grad=True) for z in branches(rng, (6, 5), offset=0.5))
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(RuntimeError, match=f"{name}: double backward \\(create_graph=True\\)"):
        (g,) = torch.autograd.grad(f(z1 * w, z2), z1, create_graph=True)
        g.square().sum().backward()
    torch.autograd.gradcheck(f, (z1, z2))  # first order still fine
    (g,) = torch.autograd.grad(f(z1 * w, z2), z1)  # and create_graph=False is
    assert not g.requires_grad


@pytest.mark.parametrize("path", ["torch", "torch-ops"], indirect=True)
def test_invariance_double_backward(rng, path):
    # its backward is linear torch ops, so second-order gradients are right (F.mse_loss's)
    z1, z2 = (torch.tensor(z, requires_grad=True) for z in branches(rng, (2, 6, 5)))
    w = torch.rand(5, dtype=torch.float64, requires_grad=True)
    got = []
    for f in (lambda a, b: rt.invariance_loss(a, b), F.mse_loss):
        g1, g2 = torch.autograd.grad(f(z1 * w, z2), (z1, z2), create_graph=True)
        (g1.square().sum() + (g2 * z2).sum()).backward()
        got.append([t.grad.clone() for t in (w, z1, z2)])
        for t in (w, z1, z2):
            t.grad = None
    for a, b in zip(*got):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.autograd.gradgradcheck(lambda a, b: rt.invariance_loss(a, b), (z1, z2))


# ---- inputs: layouts, dtypes, the input left alone -----------------------------------------------


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_strided_inputs(rng, path):
    z1, z2 = branches(rng, (2, 40, 12))
    want = np.array(run(path, "vicreg_loss", z1, z2, reduction="none"))
    t1 = np.ascontiguousarray(np.swapaxes(z1, -1, -2)).swapaxes(-1, -2)  # column-major matrices
    big = np.zeros((2, 80, 24))
    big[:, ::2, ::2] = z2
    t2 = big[:, ::2, ::2]  # strided rows and columns
    got = np.array(run(path, "vicreg_loss", t1, t2, reduction="none"))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    np.testing.assert_allclose(
        run(path, "barlow_twins_loss", t1, t2), run(path, "barlow_twins_loss", z1, z2), rtol=1e-12
    )


@pytest.mark.parametrize("path", ["torch", "torch-ops"], indirect=True)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_inputs_torch(rng, path, dtype):
    z1, z2 = branches(rng, (33, 31), offset=1.0)
    a = torch.tensor(z1, dtype=dtype, requires_grad=True)
    b = torch.tensor(z2, dtype=dtype, requires_grad=True)
    out = rt.vicreg_loss(a, b)
    assert out.loss.dtype == torch.float32
    ref = per_element(vicreg_reference, a.detach().double().numpy(), b.detach().double().numpy())[0]
    np.testing.assert_allclose(np.array([float(t.detach()) for t in out]), ref, rtol=1e-6)
    out.loss.backward()
    assert a.grad.dtype == dtype and torch.isfinite(a.grad).all()
    bt = rt.barlow_twins_loss(a, b)
    assert bt.dtype == torch.float32


def test_half_inputs_numpy(rng):
    """The host API reads float16/bfloat16 in place (no float32 copy)."""
    z1, z2 = branches(rng, (33, 31), "float16", offset=1.0)
    ref = per_element(vicreg_reference, z1, z2)[0]
    np.testing.assert_allclose(np.array(rp.vicreg_loss(z1, z2)), ref, rtol=1e-6)
    a, b = torch.tensor(z1, dtype=torch.bfloat16), torch.tensor(z2, dtype=torch.bfloat16)
    ref = per_element(barlow_reference, a.double().numpy(), b.double().numpy())[0, 0]
    np.testing.assert_allclose(rp.barlow_twins_loss(a, b), ref, rtol=1e-6)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_inputs_not_modified(rng, path):
    z1, z2 = branches(rng, (2, 20, 30), "float32")
    c1, c2 = z1.copy(), z2.copy()
    if path == "numpy":
        rp.vicreg_loss(z1, z2)
        rp.barlow_twins_loss(z1, z2)
    else:
        a, b = torch.from_numpy(z1).requires_grad_(), torch.from_numpy(z2).requires_grad_()
        (rt.vicreg_loss(a, b).loss + rt.barlow_twins_loss(a, b)).backward()
    np.testing.assert_array_equal(z1, c1)
    np.testing.assert_array_equal(z2, c2)


def test_result_types(rng):
    z1, z2 = branches(rng, (3, 6, 4))
    assert isinstance(rp.covariance_loss(z1), np.float64)
    assert rp.covariance_loss(z1, reduction="none").shape == (3,)
    assert isinstance(rp.vicreg_loss(z1[0], z2[0], reduction="none").loss, np.float64)
    out = rt.vicreg_loss(
        torch.tensor(z1, dtype=torch.float32), torch.tensor(z2, dtype=torch.float32)
    )
    assert (
        isinstance(out, rt.VICRegLoss) and out.loss.dtype == torch.float32 and out.loss.shape == ()
    )
    assert rt.barlow_twins_loss(torch.tensor(z1), torch.tensor(z2), reduction="none").shape == (3,)
    assert rt.covariance_loss(torch.tensor(z1).to(torch.int64)).dtype == torch.float64
    assert np.isnan(rp.vicreg_loss(np.zeros((0, 4, 3)), np.zeros((0, 4, 3))).loss)


def test_import_is_lazy():
    code = textwrap.dedent("""
        import sys
        import numpy as np
        import rankscope, rankscope.penalties as rp
        rp.vicreg_loss(np.eye(3), np.eye(3))
        assert "torch" not in sys.modules, "rankscope or rankscope.penalties imported torch"
        assert "rankscope.torch" not in sys.modules
        import rankscope.torch
        assert "torch" in sys.modules
    """)
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- NaN and errors ------------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS, indirect=True)
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite(rng, path, bad):
    z1, z2 = branches(rng, (2, 3, 8, 5))
    clean = [
        np.array(run(path, "vicreg_loss", z1, z2, reduction="none")),
        run(path, "barlow_twins_loss", z1, z2, reduction="none"),
    ]
    z2[1, 2, 4, 3] = bad
    with pytest.raises(
        ValueError, match=r"z2 contains NaN or Inf .*batch index \(1, 2\).*check_finite=False"
    ):
        run(path, "vicreg_loss", z1, z2)
    for fn in ("barlow_twins_loss", "invariance_loss"):
        with pytest.raises(ValueError, match=r"z1 or z2 contains NaN or Inf .*\(1, 2\)"):
            run(path, fn, z1, z2)
    with pytest.raises(ValueError, match=r"z contains NaN or Inf .*\(1, 2\)"):
        run(path, "covariance_loss", z2)
    got = [
        np.array(run(path, "vicreg_loss", z1, z2, reduction="none", check_finite=False)),
        run(path, "barlow_twins_loss", z1, z2, reduction="none", check_finite=False),
    ]
    for g, c in zip(got, clean):
        assert np.all(np.isnan(g[..., 1, 2]))
        g[..., 1, 2] = c[..., 1, 2]
        np.testing.assert_allclose(g, c, rtol=1e-12)
    if path != "numpy":  # the other elements' gradients are those of clean data
        keep = torch.ones(2, 3, dtype=torch.bool)
        keep[1, 2] = False

        def kept_grads(y):
            a, b = torch.tensor(z1, requires_grad=True), torch.tensor(y, requires_grad=True)
            rt.vicreg_loss(a, b, reduction="none", check_finite=False).loss[keep].sum().backward()
            return a.grad[keep], b.grad[keep]

        for g, c in zip(kept_grads(z2), kept_grads(np.nan_to_num(z2, nan=0.0, posinf=0.0))):
            np.testing.assert_allclose(g, c, rtol=1e-12)


@pytest.mark.parametrize("path", PATHS, indirect=True)
def test_errors(path):
    z = np.zeros((4, 3))
    for fn in ("vicreg_loss", "barlow_twins_loss"):
        with pytest.raises(ValueError, match=r"N = 1 sample"):
            run(path, fn, np.ones((2, 1, 3)), np.ones((2, 1, 3)))
        with pytest.raises(ValueError, match="at least 2 dimensions"):
            run(path, fn, np.ones(3), np.ones(3))
        with pytest.raises(ValueError, match="same shape"):
            run(path, fn, z, np.zeros((5, 3)))
        with pytest.raises(TypeError, match="same dtype"):
            run(path, fn, z, z.astype(np.float32))
        with pytest.raises(ValueError, match="d = 0 features"):
            run(path, fn, np.zeros((4, 0)), np.zeros((4, 0)))
    for fn in ("variance_loss", "covariance_loss"):
        with pytest.raises(ValueError, match=r"N = 1 sample.*variance and covariance"):
            run(path, fn, np.ones((1, 3)))
    np.testing.assert_allclose(run(path, "invariance_loss", np.ones((1, 3)), np.zeros((1, 3))), 1.0)
    with pytest.raises(ValueError, match="reduction must be 'mean' or 'none'"):
        run(path, "vicreg_loss", z, z, reduction="sum")
    with pytest.raises(TypeError, match="gamma must be a real number"):
        run(path, "vicreg_loss", z, z, gamma="1")
    with pytest.raises(ValueError, match="eps must be a finite non-negative"):
        run(path, "variance_loss", z, eps=-1.0)
    with pytest.raises(ValueError, match="lambd must be a finite"):
        run(path, "barlow_twins_loss", z, z, lambd=float("nan"))


def test_torch_errors():
    z = torch.zeros(4, 3)
    with pytest.raises(TypeError, match="must be a torch.Tensor"):
        rt.vicreg_loss(np.zeros((4, 3)), z)
    with pytest.raises(TypeError, match="complex"):
        rt.covariance_loss(torch.zeros(4, 3, dtype=torch.complex64))
    with pytest.raises(ValueError, match="same device"):
        rt.vicreg_loss(z, torch.zeros(4, 3, device="meta"))
    with pytest.raises(TypeError, match="same dtype"):
        rt.vicreg_loss(z.half(), z)


# ---- GPU (run by `pytest -m cuda` on a lent GPU; skipped elsewhere) ---------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs torch with a CUDA GPU")
@pytest.mark.parametrize("shape", [(64, 48), (16, 200), (3, 40, 24)])
def test_cuda_equals_cpu(rng, shape):
    """CUDA tensors (torch ops, cuBLAS on the caller's stream) against the CPU core, in float64,
    values and closed-form gradients; and float32 with TF32 off."""
    for dtype, rtol in ((torch.float64, 1e-10), (torch.float32, 1e-5)):
        z1 = torch.from_numpy(rng.standard_normal(shape) + 3.0).to(dtype)
        z2 = z1 + 0.5 * torch.from_numpy(rng.standard_normal(shape)).to(dtype)
        prev = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        try:
            for fn in (lambda a, b: rt.vicreg_loss(a, b).loss, rt.barlow_twins_loss):
                out = {}
                for dev in ("cpu", "cuda"):
                    a = z1.to(dev).requires_grad_()
                    b = z2.to(dev).requires_grad_()
                    loss = fn(a, b)
                    loss.backward()
                    out[dev] = (loss.detach().cpu().double(), a.grad.cpu().double(), b.grad.cpu().double())
                for c, g in zip(out["cpu"], out["cuda"]):
                    torch.testing.assert_close(g, c, rtol=rtol, atol=rtol * float(c.abs().max()))
        finally:
            torch.backends.cuda.matmul.allow_tf32 = prev
