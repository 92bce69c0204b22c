"""rankscope.torch.linalg against torch.linalg (issue 19, part 2).

Values: against the float64 singular values of the stored data (numpy's SVD, conftest.assert_sv_close,
or torch's float64 functions on the widened tensor), with tolerances from the engine's routes
(conftest.sv_tolerance: exact ~max(m, n)·eps64·s₁; float32 via the float64 Gram route, as accurate as
the data, then rounded to float32). Semantics (dtypes, shapes, errors and their messages, out=,
warnings): against torch's own functions (ORIGINALS) on the same arguments. Whether the engine ran or
torch's function was called is observed by spying on both.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rankscope as rs
import torch
from conftest import EPS32, EPS64, assert_sv_close, engineered, ref_svdvals, sv_tolerance
from rankscope.torch import linalg as L

NAMES = ("svdvals", "matrix_rank", "matrix_norm", "cond")
FLOATS = (torch.float32, torch.float64)
EPS = {torch.float32: EPS32, torch.float64: EPS64}


@pytest.fixture
def calls(monkeypatch):
    """Counts, per function, the engine's runs ("engine") and the calls handed to torch (name)."""
    seen = {"engine": 0, **{n: 0 for n in NAMES}}
    core = rs._core.svdvals

    def engine(*a, **k):
        seen["engine"] += 1
        return core(*a, **k)

    monkeypatch.setattr(rs._core, "svdvals", engine)
    for name in NAMES:
        original = L.ORIGINALS[name]

        def spy(*a, _name=name, _orig=original, **k):
            seen[_name] += 1
            return _orig(*a, **k)

        monkeypatch.setitem(L._TORCH, name, spy)
    return seen


def tensor(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(dtype)


def batch_of(rng, shape, spectrum) -> np.ndarray:
    *batch, m, n = shape
    count = int(np.prod(batch, dtype=int))
    return np.stack([engineered(rng, m, n, spectrum) for _ in range(count)]).reshape(shape)


def route(dtype, m, n, method="auto") -> str:
    return rs._core.route(str(dtype).removeprefix("torch."), m, n, method)


def s64(A: torch.Tensor) -> np.ndarray:
    """float64 singular values of the stored values (the oracle)."""
    return ref_svdvals(A.detach().to(torch.float64).numpy())


SHAPES = [(1, 1), (2, 2), (3, 3), (5, 3), (3, 7), (33, 31), (4, 97, 9), (2, 3, 8, 8)]
SPECTRA = ("logspace", "rank_deficient", "gaussian", "clustered")


# ---- values ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spectrum", SPECTRA)
def test_svdvals_against_float64(rng, calls, dtype, shape, spectrum):
    A = tensor(batch_of(rng, shape, spectrum), dtype)
    before = A.clone()
    s = L.svdvals(A)
    assert calls["engine"] == 1 and calls["svdvals"] == 0
    assert s.dtype == dtype and s.shape == (*shape[:-2], min(shape[-2:]))
    assert_sv_close(s, A)
    assert torch.equal(A, before)


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("spectrum", ("logspace", "rank_deficient", "gaussian"))
def test_norms_and_cond_against_float64(rng, calls, dtype, shape, spectrum):
    A = tensor(batch_of(rng, shape, spectrum), dtype)
    *_, m, n = shape
    ref = s64(A)
    tol = sv_tolerance(route(dtype, m, n), m, n, ref, "float64")  # the engine's float64 values
    rnd = 0.0 if dtype == torch.float64 else EPS32  # the result's one rounding to float32
    for ord, want, err in ((2, ref[..., 0], tol[..., 0]), (-2, ref[..., -1], tol[..., -1]),
                           ("nuc", ref.sum(-1), tol.sum(-1))):
        got = L.matrix_norm(A, ord)
        assert got.dtype == dtype and got.shape == shape[:-2]
        np.testing.assert_array_less(np.abs(got.numpy() - want), err + rnd * want + 1e-300, err_msg=str(ord))
    # cond = s1/sk: relative error of sk plus that of s1, plus the rounding
    with np.errstate(divide="ignore", invalid="ignore"):
        want = ref[..., 0] / ref[..., -1]
        rel = tol[..., -1] / ref[..., -1] + tol[..., 0] / ref[..., 0] + rnd
        for p, w in ((None, want), (2, want), (-2, 1 / want)):
            got = L.cond(A, p)
            assert got.dtype == dtype and got.shape == shape[:-2]
            got = got.numpy().astype(np.float64)
            finite = rel < 0.5  # sk above the route's noise floor: cond is defined by the data
            np.testing.assert_allclose(got[finite], w[finite], rtol=float(np.max(rel[finite], initial=0)) * 1.01,
                                       err_msg=f"p={p}")
            # below the floor: a huge (or inf) condition number, as torch gives at its own floor
            assert np.all(got[~finite] > 1e6) if p != -2 else np.all(got[~finite] < 1e-6)
    assert calls["engine"] == 6 and calls["matrix_norm"] == calls["cond"] == 0


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", [(4, 4), (7, 3), (3, 40), (6, 33, 31), (2, 2, 64, 16)])
def test_matrix_rank_against_float64_and_torch(rng, calls, dtype, shape):
    """Rank-deficient matrices, and spectra with values just above and below torch's tolerance."""
    *batch, m, n = shape
    k, eps = min(m, n), EPS[dtype]
    default_rtol = max(m, n) * eps
    mats = []
    for i in range(int(np.prod(batch, dtype=int))):
        r = int(rng.integers(0, k + 1))
        s = np.concatenate([np.logspace(0, -2, r), np.zeros(k - r)]) if i % 2 else np.concatenate(
            [np.ones(r), np.full(k - r, default_rtol)])  # values at 1 and at the tolerance's own scale
        if i % 2 == 0 and r < k:
            s[r:] *= rng.choice([1e-2, 1e2], size=k - r)  # 100x below or above tol
        mats.append(engineered(rng, m, n, np.sort(s)[::-1]))
    A = tensor(np.stack(mats).reshape(shape), dtype)
    ref = s64(A)
    for kw in ({}, {"atol": 0.5}, {"rtol": 0.2}, {"atol": 1e-3, "rtol": 0.05}, {"atol": 0.0}, {"atol": -1.0},
               {"rtol": 1e-3}, {"hermitian": False}):
        atol = kw.get("atol")
        rtol = kw.get("rtol", 0.0 if atol is not None and atol > 0 else default_rtol)
        tol = np.maximum(0.0 if atol is None else atol, rtol * ref[..., :1])
        # Matrices with a value within twice the engine's error of tol are ambiguous, and skipped. float32:
        # the Gram route's bound (~1e-8·s₁ at most, 30× below the smallest tolerance here: none is
        # skipped). float64: dgesdd on both sides, measured within 0.1·max(m, n)·eps64·s₁ (conftest),
        # while torch's default tolerance max(m, n)·eps64·s₁ sits at the stored data's own rounding
        # level: a few matrices may be skipped.
        if route(dtype, m, n) == "exact":
            err = 0.1 * max(m, n) * EPS64 * ref[..., :1]
        else:
            err = sv_tolerance(route(dtype, m, n), m, n, ref, "float64")
        clear = ~np.any(np.abs(ref - tol) <= 2 * err, axis=-1) | (ref[..., 0] == 0)  # zero matrices: rank 0
        assert clear.mean() >= (1.0 if dtype == torch.float32 else 0.5), (kw, clear)
        want = (ref > tol).sum(-1)
        got = L.matrix_rank(A, **kw)
        assert got.dtype == torch.int64 and got.shape == tuple(batch)
        np.testing.assert_array_equal(got.numpy()[clear], want[clear], err_msg=str(kw))
        # torch's float32/float64 LAPACK agrees wherever no value is within its own error of tol
        theirs = L.ORIGINALS["matrix_rank"](A, **kw).numpy()
        safe = ~np.any(np.abs(ref - tol) <= 4 * k * eps * ref[..., :1], axis=-1)
        np.testing.assert_array_equal(theirs[safe], want[safe], err_msg=str(kw))
    assert calls["matrix_rank"] == 0 and calls["engine"] == 8


@pytest.mark.parametrize("kw", [{"rtol": 1e-9}, {"atol": 1e-9}, {"atol": 1e-10, "rtol": 1e-11}])
def test_matrix_rank_small_tolerances_use_dgesdd(rng, monkeypatch, kw):
    """float32 matrices of rank 10 in 40×30: their rounding to float32 leaves 20 singular values near
    1e-8..1e-7·s₁, which a tolerance of 1e-9 counts. The Gram route cannot resolve them; the engine
    then counts dgesdd's values, which match the float64 oracle."""
    methods = []
    core = rs._core.svdvals

    def spy(x, out, method):
        methods.append(method)
        return core(x, out, method)

    monkeypatch.setattr(rs._core, "svdvals", spy)
    A = tensor(np.stack([engineered(rng, 40, 30, np.r_[np.ones(10), np.zeros(20)]) for _ in range(8)]))
    ref = s64(A)
    tol = np.maximum(kw.get("atol", 0.0), kw.get("rtol", 0.0) * ref[..., :1])
    err = 0.1 * 40 * EPS64 * ref[..., :1]  # dgesdd on both sides (conftest)
    clear = ~np.any(np.abs(ref - tol) <= 2 * err, axis=-1)
    assert clear.mean() >= 0.5
    got = L.matrix_rank(A, **kw).numpy()
    np.testing.assert_array_equal(got[clear], (ref > tol).sum(-1)[clear])
    assert methods == ["auto", "exact"]
    assert np.all((ref > tol).sum(-1) > 10)  # the rounding's values count: not a trivial case
    methods.clear()
    L.matrix_rank(A)  # torch's default tolerance: the Gram route alone
    assert methods == ["auto"]


def test_special_matrices(calls):
    for dtype in FLOATS:
        Z = torch.zeros(2, 3, 4, dtype=dtype)
        assert torch.equal(L.svdvals(Z), torch.zeros(2, 3, dtype=dtype))
        assert torch.equal(L.matrix_rank(Z), torch.zeros(2, dtype=torch.int64))
        assert torch.isnan(L.cond(Z)).all() and torch.isnan(L.cond(Z, -2)).all()  # 0/0, as torch
        assert torch.isnan(L.ORIGINALS["cond"](Z)).all()
        assert torch.equal(L.matrix_norm(Z, 2), torch.zeros(2, dtype=dtype))
        D = torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=dtype))
        assert L.cond(D).item() == torch.inf and L.cond(D, -2).item() == 0.0
        assert L.matrix_rank(D).item() == 2
        one = torch.tensor([[-3.0]], dtype=dtype)
        assert L.svdvals(one).tolist() == [3.0] and L.cond(one).item() == 1.0 and L.matrix_norm(one, "nuc") == 3.0
    assert calls["engine"] == 2 * 11 and sum(calls[n] for n in NAMES) == 0


@pytest.mark.parametrize("dtype", FLOATS)
def test_strided_and_expanded_inputs(rng, calls, dtype):
    base = tensor(rng.standard_normal((6, 30, 20)), dtype)
    views = [base.mT, base[:, 2::3, 1:], base[::2].transpose(0, 2), base.narrow(2, 5, 9),
             tensor(rng.standard_normal((1, 7, 5)), dtype).expand(4, 7, 5)]
    for V in views:
        assert_sv_close(L.svdvals(V), V)
        np.testing.assert_array_equal(L.matrix_rank(V).numpy(), min(V.shape[-2:]))
    assert calls["svdvals"] == 0 and calls["engine"] == 2 * len(views)


def test_matrix_norm_dims_keepdim_dtype(rng, calls):
    A = tensor(rng.standard_normal((2, 5, 4, 3)), torch.float32)
    for dim in ((-2, -1), (0, 1), (3, 1), [1, 3], (-1, 0), (2, -4)):
        d0, d1 = (d % 4 for d in dim)
        ref = s64(A.movedim((d0, d1), (2, 3)))
        kappa = float(np.max(ref[..., 0] / ref[..., -1]))
        for ord, want in ((2, ref[..., 0]), (-2, ref[..., -1]), ("nuc", ref.sum(-1))):
            for keepdim in (False, True):
                got = L.matrix_norm(A, ord, dim, keepdim)
                theirs = L.ORIGINALS["matrix_norm"](A, ord, dim, keepdim)
                assert got.shape == theirs.shape and got.dtype == theirs.dtype
                g = got.reshape(want.shape) if keepdim else got
                # Gaussian 5×4 / 4×3 / 2×5 matrices: well above the Gram route's floor
                np.testing.assert_allclose(g.numpy(), want, rtol=4 * EPS32, err_msg=f"{dim} {ord} {keepdim}")
            got64 = L.matrix_norm(A, ord, dim, dtype=torch.float64)  # dgesdd on the widened values
            assert got64.dtype == torch.float64
            np.testing.assert_allclose(got64.numpy(), want, rtol=8 * max(A.shape) * EPS64 * kappa)
    assert calls["matrix_norm"] == 0


# ---- which calls go to torch ----------------------------------------------------------------------


def _forwarded_cases(rng):
    A = tensor(rng.standard_normal((3, 5, 4)))
    cases = [
        ("svdvals", (A.to(torch.complex64),), {}),
        ("svdvals", (A.half(),), {}),
        ("svdvals", (A.bfloat16(),), {}),
        ("svdvals", (torch.ones(3, 4, dtype=torch.int64),), {}),
        ("svdvals", (torch.empty(2, 0, 3),), {}),
        ("svdvals", (torch.empty(0, 3, 3),), {}),
        ("svdvals", (A,), {"driver": "gesvd"}),
        ("svdvals", (A,), {"out": torch.empty(0, dtype=torch.float64)}),
        ("svdvals", (torch.full((3, 3), float("nan")),), {}),
        ("svdvals", (torch.full((3, 3), float("inf")),), {}),
        ("svdvals", (A.to_sparse(),), {}),
        ("svdvals", (torch.ones(3),), {}),
        ("svdvals", ([[1.0, 2.0]],), {}),
        ("svdvals", (A.to("meta"),), {}),
        ("matrix_rank", (A,), {"hermitian": True}),
        ("matrix_rank", (A, 0.5), {}),
        ("matrix_rank", (A,), {"tol": 0.5}),
        ("matrix_rank", (A,), {"atol": torch.tensor(0.5)}),
        ("matrix_rank", (A,), {"rtol": torch.tensor([0.1, 0.2, 0.3]).unsqueeze(-1)}),
        ("matrix_rank", (A,), {"out": torch.empty(0, dtype=torch.int32)}),
        ("matrix_rank", (A.double().to(torch.complex128),), {}),
        ("matrix_norm", (A,), {}),
        ("matrix_norm", (A, 1), {}),
        ("matrix_norm", (A, float("inf")), {}),
        ("matrix_norm", (A, True), {}),
        ("matrix_norm", (A, 3), {}),
        ("matrix_norm", (A, 2), {"dim": (0, 0)}),
        ("matrix_norm", (A, 2), {"dim": (0, 5)}),
        ("matrix_norm", (A, 2), {"dim": 1}),
        ("matrix_norm", (A, 2), {"dim": (torch.tensor(2), 1)}),
        ("matrix_norm", (A, 2), {"dtype": torch.float16}),
        ("matrix_norm", (A.double(), 2), {"dtype": torch.float32}),
        ("matrix_norm", (A, 2), {"dtype": torch.complex64}),
        ("matrix_norm", (A, "nuc"), {"out": torch.empty(0, dtype=torch.float64)}),
        ("matrix_norm", (torch.empty(2, 0, 3), -2), {}),
        ("cond", (A, 1), {}),
        ("cond", (A, "fro"), {}),
        ("cond", (A[:, :4], "fro"), {}),
        ("cond", (A, float("inf")), {}),
        ("cond", (A,), {"out": torch.empty(0, dtype=torch.float64)}),
        ("cond", (torch.empty(0, 3),), {}),
        ("cond", (A.half(),), {}),
    ]
    return cases


def _outcome(fn, args, kwargs):
    """(result, error type, error message, warning messages) of one call; out= tensors copied first."""
    kwargs = {k: (v.clone() if k == "out" and v is not args[0] else v) for k, v in kwargs.items()}
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        try:
            r = fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001 - the error itself is compared
            return None, type(e), str(e), [str(x.message).split(" (Triggered internally")[0] for x in w]
    return r, None, None, [str(x.message).split(" (Triggered internally")[0] for x in w]


def test_forwarded_calls_match_torch(rng, calls):
    """Everything the engine does not cover goes to torch's function with the arguments as given:
    the same result, error type and message, and warnings."""
    for name, args, kwargs in _forwarded_cases(rng):
        before = dict(calls)
        ours = _outcome(getattr(L, name), args, kwargs)
        assert calls[name] == before[name] + 1 and calls["engine"] <= before["engine"] + 1, (name, kwargs)
        theirs = _outcome(L.ORIGINALS[name], args, kwargs)
        assert ours[1:] == theirs[1:], (name, kwargs, ours[1:], theirs[1:])
        if ours[0] is not None:
            r, t = ours[0], theirs[0]
            assert r.dtype == t.dtype and r.shape == t.shape and r.device == t.device, (name, kwargs)
            if r.device.type != "meta":
                torch.testing.assert_close(r, t, equal_nan=True, rtol=0, atol=0)


def test_out_aliasing_the_input_goes_to_torch(rng, calls):
    x = tensor(rng.standard_normal((3, 5, 4)))
    y = x.clone()
    ours, theirs = _outcome(L.svdvals, (x,), {"out": x}), _outcome(L.ORIGINALS["svdvals"], (y,), {"out": y})
    assert ours[1:] == theirs[1:] and calls["svdvals"] == 1 and calls["engine"] == 0
    assert torch.equal(x, y) and x.shape == y.shape


def test_nan_and_inf_handled_by_torch(calls):
    """The engine flags non-finite matrices; torch then decides (LinAlgError, or NaN values)."""
    A = torch.eye(3).repeat(4, 1, 1)
    A[2, 1, 1] = float("nan")
    for name in ("svdvals", "matrix_rank"):
        with pytest.raises(torch.linalg.LinAlgError, match="non-finite"):
            getattr(L, name)(A)
    assert calls["engine"] == 2 and calls["svdvals"] == calls["matrix_rank"] == 1


# ---- gradients ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_gradients_are_torchs(rng, calls, dtype):
    A0 = tensor(rng.standard_normal((3, 6, 4)), dtype)
    fns = [
        ("svdvals", lambda f, A: f(A).sum()),
        ("matrix_norm", lambda f, A: f(A, 2).sum() + f(A, "nuc").sum() + f(A, -2, dim=(0, 2)).sum()),
        ("cond", lambda f, A: f(A).sum() + f(A, -2).sum()),
    ]
    for name, loss in fns:
        grads = []
        for f in (getattr(L, name), L.ORIGINALS[name]):
            A = A0.clone().requires_grad_()
            loss(f, A).backward()
            grads.append(A.grad)
        assert torch.equal(grads[0], grads[1]), name
    assert calls["engine"] == 0
    # the gradient is a real one (not zero or stale): against finite differences in float64
    A = tensor(rng.standard_normal((5, 3)), torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda x: L.svdvals(x), (A,))
    assert torch.autograd.gradcheck(lambda x: L.matrix_norm(x, "nuc"), (A,))
    assert torch.autograd.gradcheck(lambda x: L.cond(x), (A,))


def test_no_grad_and_parameters_use_the_engine(rng, calls):
    P = torch.nn.Parameter(tensor(rng.standard_normal((7, 5))))
    with torch.no_grad():
        s = L.svdvals(P)
        r = L.matrix_rank(P)
    assert calls["engine"] == 2 and calls["svdvals"] == 0
    assert not s.requires_grad and s.grad_fn is None and r.item() == 5
    assert_sv_close(s, P.detach())
    with torch.inference_mode():
        assert_sv_close(L.svdvals(P), P.detach())
    assert calls["engine"] == 3
    s = L.svdvals(P)  # grad mode on: torch's function, differentiable
    assert s.grad_fn is not None and calls["svdvals"] == 1


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # torch.func's own import
def test_functorch_and_forward_ad_go_to_torch(rng, calls):
    import torch.autograd.forward_ad as fwad

    A = tensor(rng.standard_normal((4, 5, 3)), torch.float64)
    v = torch.vmap(L.svdvals)(A)
    torch.testing.assert_close(v, torch.vmap(L.ORIGINALS["svdvals"])(A), rtol=0, atol=0)
    g = torch.func.grad(lambda x: L.matrix_norm(x, 2))(A[0])
    torch.testing.assert_close(g, torch.func.grad(lambda x: L.ORIGINALS["matrix_norm"](x, 2))(A[0]), rtol=0, atol=0)
    t = torch.randn_like(A)
    with fwad.dual_level():
        ours = fwad.unpack_dual(L.svdvals(fwad.make_dual(A, t))).tangent
        theirs = fwad.unpack_dual(L.ORIGINALS["svdvals"](fwad.make_dual(A, t))).tangent
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    assert calls["engine"] == 0 and calls["svdvals"] >= 2 and calls["matrix_norm"] >= 1


def test_torch_compile_traces_torchs_ops(rng, calls):
    """Under torch.compile (Dynamo, here with the eager backend to keep it quick) the functions trace
    into torch's own ops, in one graph."""
    A = tensor(rng.standard_normal((4, 5, 3)))

    def f(x):
        return L.matrix_norm(x, 2) + L.cond(x, -2) + L.matrix_rank(x, atol=0.1) + L.svdvals(x).sum(-1)

    got = torch.compile(f, fullgraph=True, backend="eager")(A)
    O = L.ORIGINALS
    want = O["matrix_norm"](A, 2) + O["cond"](A, -2) + O["matrix_rank"](A, atol=0.1) + O["svdvals"](A).sum(-1)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert calls["engine"] == 0


def test_out_and_grad_error_as_torch(rng):
    A = tensor(rng.standard_normal((3, 3))).requires_grad_()
    for name, args in (("svdvals", ()), ("matrix_norm", (2,)), ("cond", ()), ("matrix_rank", ())):
        dtype = torch.int64 if name == "matrix_rank" else torch.float32
        ours = _outcome(getattr(L, name), (A, *args), {"out": torch.empty(0, dtype=dtype)})
        theirs = _outcome(L.ORIGINALS[name], (A, *args), {"out": torch.empty(0, dtype=dtype)})
        assert ours[1:] == theirs[1:], name


# ---- out= -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_out(rng, calls, dtype):
    A = tensor(rng.standard_normal((4, 6, 5)), dtype)
    cases = [("svdvals", (), dtype, (4, 5)), ("matrix_rank", (), torch.int64, (4,)),
             ("matrix_norm", (-2,), dtype, (4,)), ("matrix_norm", ("nuc", (0, 1), True), dtype, (1, 1, 5)),
             ("cond", (), dtype, (4,)), ("cond", (-2,), dtype, (4,))]
    for name, args, odt, shape in cases:
        ours, theirs = getattr(L, name), L.ORIGINALS[name]
        want = ours(A, *args)
        for out in (torch.empty(0, dtype=odt), torch.full(shape, -7, dtype=odt),
                    torch.empty((*shape, 2), dtype=odt)[..., 0]):  # empty, the right shape, strided
            r = ours(A, *args, out=out)
            assert r is out and out.shape == shape and torch.equal(out, want), name
        # a wrong non-empty shape is resized with torch's deprecation warning
        message = (r"An output with one or more elements was resized since it had shape \[3\], which does not match "
                   rf"the required output shape \[{', '.join(map(str, shape))}\]")
        for f in (ours, theirs):
            out = torch.zeros(3, dtype=odt)
            with pytest.warns(UserWarning, match=message):
                r = f(A, *args, out=out)
            assert r is out and out.shape == shape
    assert sum(calls[n] for n in NAMES) == 0


# ---- semantics over a grid of arguments -----------------------------------------------------------


GRID_SHAPES = [(3, 3), (1, 4), (6, 2), (2, 5, 3), (3, 1, 2, 2)]


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("shape", GRID_SHAPES)
def test_grid_against_torch(rng, calls, dtype, shape):
    """Each engine-eligible call: same dtype, shape and device as torch's function; values within
    the engine's tolerance of torch's float64 result on the widened data."""
    A = tensor(rng.standard_normal(shape), dtype)
    W = A.to(torch.float64)
    nd = len(shape)
    calls_grid = [("svdvals", (), {})]
    for kw in ({}, {"atol": 0.3}, {"rtol": 0.4}, {"atol": 0.1, "rtol": 1e-3}):
        calls_grid.append(("matrix_rank", (), kw))
    for ord in (2, -2, "nuc", 2.0, -2.0):
        for dim in ((-2, -1), (nd - 1, nd - 2), (0, nd - 1)):
            for keepdim in (False, True):
                calls_grid.append(("matrix_norm", (ord, dim, keepdim), {}))
                calls_grid.append(("matrix_norm", (ord,), {"dim": dim, "keepdim": keepdim, "dtype": torch.float64}))
    for p in (None, 2, -2, 2.0):
        calls_grid.append(("cond", (p,), {}))
    for name, args, kw in calls_grid:
        before = calls["engine"]
        got = getattr(L, name)(A, *args, **kw)
        assert calls["engine"] == before + 1 and calls[name] == 0, (name, args, kw)
        theirs = L.ORIGINALS[name](A, *args, **kw)
        assert (got.dtype, got.shape, got.device) == (theirs.dtype, theirs.shape, theirs.device), (name, args, kw)
        ref = L.ORIGINALS[name](W, *args, **kw)
        if name == "matrix_rank":
            assert torch.equal(got, ref), (name, kw)  # Gaussian matrices: no value near these tolerances
            continue
        ref = ref.numpy()
        # Gaussian matrices this small: s_k / s_1 > 1e-4 but for rare draws; the Gram route's relative
        # error of s_k is then below 1e-8, so the result's float32 rounding dominates
        s = s64(A)
        kappa = float(np.max(s[..., 0] / s[..., -1]))
        rtol = (EPS32 if got.dtype == torch.float32 else 0) + 8 * max(shape) * EPS64 * kappa**2 + 1e-14 * kappa
        np.testing.assert_allclose(got.numpy(), ref, rtol=rtol, err_msg=f"{name} {args} {kw}")


def test_errors_match_torch(rng):
    A = tensor(rng.standard_normal((3, 4)))
    bad = [
        ("svdvals", (torch.ones(3, 3, dtype=torch.int32),), {}),
        ("svdvals", (torch.ones(3),), {}),
        ("svdvals", (A,), {"out": torch.empty(0, dtype=torch.float64)}),
        ("svdvals", (A,), {"out": torch.empty(0, device="meta")}),
        ("svdvals", (A,), {"driver": "gesvdj"}),
        ("matrix_rank", (A,), {"out": torch.empty(0, dtype=torch.bool)}),
        ("matrix_rank", (torch.ones(3),), {}),
        ("matrix_norm", (A, 3), {}),
        ("matrix_norm", (A, 2), {"dim": (0, 0)}),
        ("matrix_norm", (A, 2), {"dim": (0, 2)}),
        ("matrix_norm", (A, 2), {"dim": (0,)}),
        ("matrix_norm", (A, 2), {"dtype": torch.int64}),
        ("matrix_norm", (A, "nuc"), {"out": torch.empty(0, dtype=torch.float64)}),
        ("matrix_norm", (torch.ones(3), 2), {}),
        ("cond", (A, "fro"), {}),
        ("cond", (A, 1), {}),
        ("cond", (A,), {"out": torch.empty(0, dtype=torch.int64)}),
        ("cond", (torch.ones(3),), {}),
    ]
    for name, args, kwargs in bad:
        ours = _outcome(getattr(L, name), args, kwargs)
        theirs = _outcome(L.ORIGINALS[name], args, kwargs)
        assert theirs[1] is not None, (name, kwargs)  # each case is an error in torch
        assert ours[1:] == theirs[1:], (name, kwargs, ours[1:], theirs[1:])


# ---- patching -------------------------------------------------------------------------------------


def test_patched_into_torch_linalg(rng, monkeypatch, calls):
    """torch.linalg's attributes replaced by these: no recursion, torch's Python callers reach them,
    and the originals stay reachable (for rankscope.patch)."""
    for name in NAMES:
        monkeypatch.setattr(torch.linalg, name, getattr(L, name))
        assert L._original(name) is L.ORIGINALS[name]  # a re-import while patched still finds torch's
        assert getattr(L, name)._torch_original is L.ORIGINALS[name]
    assert set(L.ORIGINALS) == set(NAMES) and all(type(f).__name__ == "builtin_function_or_method"
                                                  for f in L.ORIGINALS.values())
    A = tensor(rng.standard_normal((2, 5, 4)))
    for name, args in (("svdvals", ()), ("matrix_rank", ()), ("matrix_norm", ("fro",)), ("cond", (1,))):
        C = A.to(torch.complex64) if name != "cond" else A[:, :4]  # forwarded: must not recurse
        getattr(torch.linalg, name)(C, *args)
    before = calls["engine"]
    n = torch.norm(A, p="nuc", dim=(-2, -1))  # torch.norm calls torch.linalg.matrix_norm from Python
    assert calls["engine"] == before + 1
    np.testing.assert_allclose(n.numpy(), s64(A).sum(-1), rtol=4 * EPS32)


def test_docstrings():
    for name in NAMES:
        doc = getattr(L, name).__doc__
        assert doc and "torch.linalg." + name in doc and "gradient" in doc.lower()
    assert L.__doc__ and "ORIGINALS" in L.__doc__


# ---- CUDA -----------------------------------------------------------------------------------------


@pytest.mark.cuda
def test_cuda_tensors(rng, calls):
    """CUDA tensors through the engine's CUDA backend on the caller's stream, against the host."""
    from rankscope._backend import cuda_available

    if not (torch.cuda.is_available() and cuda_available()):
        pytest.skip("needs a CUDA device, torch with CUDA and rankscope's CUDA backend")
    calls_before = dict(calls)
    A = tensor(batch_of(rng, (64, 40, 24), "logspace")).cuda()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        s = L.svdvals(A)
        r = L.matrix_rank(A)
        n = L.matrix_norm(A, -2, keepdim=True)
        c = L.cond(A)
    torch.cuda.synchronize()
    assert calls == calls_before  # the host engine never ran, and torch was not asked
    assert s.device == A.device and s.dtype == torch.float32 and r.dtype == torch.int64
    assert_sv_close(s.cpu(), A.cpu())
    torch.testing.assert_close(r.cpu(), L.matrix_rank(A.cpu()))
    assert n.shape == (64, 1, 1)
    torch.testing.assert_close(c.cpu(), L.cond(A.cpu()), rtol=1e-3, atol=0)
