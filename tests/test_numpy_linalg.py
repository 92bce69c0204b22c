"""rankscope.numpy.linalg: numpy's own test classes under the patch, and our checks against numpy.

numpy's results are the specification: every call either gives numpy's exceptions and messages or a
result of numpy's dtype, shape and type whose values agree with numpy's float64 SVD of the stored
data within the engine route's error bound (conftest.sv_tolerance). A spy on the engine call tells
the fast path from forwarding, so each test also checks which of the two a call took.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import rankscope.numpy.linalg as rl
from conftest import EPS32, EPS64, engineered, prescribed, ref_svdvals, route_of, sv_tolerance

NUMPY_NAMES = ("svd", "svdvals", "matrix_rank", "norm", "matrix_norm", "cond")


# ---- numpy's own tests ---------------------------------------------------------------------------

NUMPY_TESTS = os.path.join(os.path.dirname(np.__file__), "linalg", "tests", "test_linalg.py")
# the classes and functions of numpy's test_linalg.py that exercise svd, svdvals, matrix_rank, norm,
# matrix_norm and cond (svdvals' test is TestSVD::test_svdvals)
NUMPY_SELECTION = (
    "TestSVD", "TestSVDHermitian", "TestCond", "TestNormDouble", "TestNormSingle", "TestNormInt64",
    "TestNorm_NonSystematic", "TestMatrixRank", "test_reduced_rank", "test_matrix_norm",
    "test_matrix_norm_empty", "test_empty_matrix_rank",
)

# A pytest plugin for the child runs: it records every test's outcome and, patched, runs each test's
# body inside rankscope.patch() with the test module's own `from numpy.linalg import matrix_rank, norm`
# names rebound to ours, and counts the engine calls.
PLUGIN = textwrap.dedent('''
    import json, os
    import pytest

    PATCHED = os.environ["RS_SUITE_MODE"] == "patched"
    RESULTS = {}
    CALLS = [0]
    if PATCHED:
        import rankscope
        import rankscope.numpy.linalg as rl

        _engine = rl._engine

        def _spy(*args):
            CALLS[0] += 1
            return _engine(*args)

        rl._engine = _spy

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(item):
        if not PATCHED:
            yield
            return
        module = item.module
        saved = {n: getattr(module, n) for n in ("matrix_rank", "norm")}
        with rankscope.patch():
            for n in saved:
                setattr(module, n, getattr(rl, n))
            try:
                yield
            finally:
                for n, v in saved.items():
                    setattr(module, n, v)

    def pytest_runtest_logreport(report):
        if report.when == "call" or report.outcome != "passed":
            tag = "xfail" if hasattr(report, "wasxfail") else report.outcome
            RESULTS.setdefault(report.nodeid, []).append(report.when + ":" + tag)

    def pytest_sessionfinish(session):
        with open(os.environ["RS_SUITE_OUT"], "w") as f:
            json.dump({"results": RESULTS, "engine_calls": CALLS[0]}, f)
''')


def _suite_run(tmp_path, mode: str) -> subprocess.Popen:
    out = tmp_path / f"{mode}.json"
    env = dict(os.environ, RS_SUITE_MODE=mode, RS_SUITE_OUT=str(out),
               PYTHONPATH=os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]))
    # numpy's conftest (hypothesis profiles, FPU checks) is left out in both runs alike
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--noconftest", "-c", os.devnull,
           "--rootdir", str(tmp_path), "-p", "rs_suite_plugin", "-W", "ignore::pytest.PytestUnknownMarkWarning",
           *[f"{NUMPY_TESTS}::{name}" for name in NUMPY_SELECTION]]
    return subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_numpy_test_suite_passes_under_patch(tmp_path):
    """numpy's test classes for these functions end exactly as they do unpatched, test by test."""
    (tmp_path / "rs_suite_plugin.py").write_text(PLUGIN)
    runs = {mode: _suite_run(tmp_path, mode) for mode in ("plain", "patched")}
    logs = {mode: p.communicate(timeout=300)[0] for mode, p in runs.items()}
    got = {}
    for mode in runs:
        path = tmp_path / f"{mode}.json"
        assert path.exists(), f"{mode} run wrote no results:\n{logs[mode][-3000:]}"
        got[mode] = json.loads(path.read_text())
    plain, patched = got["plain"]["results"], got["patched"]["results"]
    assert len(plain) >= 90, f"only {len(plain)} numpy tests collected:\n{logs['plain'][-3000:]}"
    diff = {k: (plain.get(k), patched.get(k)) for k in plain.keys() | patched.keys() if plain.get(k) != patched.get(k)}
    assert not diff, f"outcomes differ (plain, patched): {diff}\n{logs['patched'][-3000:]}"
    # not vacuous: the patched run computed on the engine
    assert got["patched"]["engine_calls"] > 50, got["patched"]["engine_calls"]


# ---- helpers -------------------------------------------------------------------------------------


@pytest.fixture
def engine(monkeypatch):
    """The methods of the engine calls made while the test runs (empty: everything was forwarded)."""
    calls = []
    real = rl._engine

    def spy(a, out, method):
        calls.append(method)
        return real(a, out, method)

    monkeypatch.setattr(rl, "_engine", spy)
    return calls


def _assert_identical(got, want, what=""):
    """Same type, dtype, shape and bits (NaN equal to NaN), recursively through tuples."""
    assert type(got) is type(want), f"{what}: type {type(got).__name__} != numpy's {type(want).__name__}"
    if isinstance(want, tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_identical(g, w, what)
        return
    if isinstance(want, (np.ndarray, np.generic)):
        assert got.dtype == want.dtype, f"{what}: dtype {got.dtype} != numpy's {want.dtype}"
        assert np.shape(got) == np.shape(want), f"{what}: shape {np.shape(got)} != numpy's {np.shape(want)}"
    np.testing.assert_array_equal(got, want, err_msg=what)


def _call(fn, args, kwargs):
    try:
        return fn(*args, **kwargs), None
    except Exception as e:  # noqa: BLE001 - the comparison is of whatever numpy raises
        return None, e


def assert_forwarded(engine, name, *args, tried=False, **kwargs):
    """rankscope's `name` gives exactly numpy's result or exception, without calling the engine
    (tried: the engine may have been called, and reported the input it cannot decide on, NaN/Inf)."""
    del engine[:]
    got, got_err = _call(getattr(rl, name), args, kwargs)
    want, want_err = _call(rl.ORIGINALS[name], args, kwargs)
    what = f"{name}({', '.join(map(_short, args))}, {kwargs})"
    assert tried or not engine, f"{what} used the engine"
    if want_err is not None:
        assert type(got_err) is type(want_err), f"{what}: raised {got_err!r}, numpy {want_err!r}"
        assert str(got_err) == str(want_err), f"{what}: message {got_err} != numpy's {want_err}"
        return
    assert got_err is None, f"{what}: raised {got_err!r}, numpy returned {want!r}"
    _assert_identical(got, want, what)


def _short(a) -> str:
    return f"{type(a).__name__}{getattr(a, 'shape', '')}{getattr(a, 'dtype', '')}"


def assert_like_numpy(got, x, name, *args, **kwargs):
    """got has the type, dtype and shape of numpy's result for the same call."""
    want = rl.ORIGINALS[name](x, *args, **kwargs)
    assert type(got) is type(want), f"type {type(got).__name__} != numpy's {type(want).__name__}"
    assert got.dtype == want.dtype and np.shape(got) == np.shape(want), (got.dtype, np.shape(got), want.dtype,
                                                                         np.shape(want))


def stack(rng, batch, m, n, kind):
    """float64 (*batch, m, n) of engineered matrices (a fresh draw each)."""
    mats = [engineered(rng, m, n, kind) for _ in range(int(np.prod(batch, dtype=int)))]
    return np.array(mats).reshape(*batch, m, n)


def route(dtype, m, n):
    return "exact" if dtype == "float64" else route_of("float32", m, n, "gram")


# shapes straddle the compact kernels' limit (32) and the single-float64 forwarding limit (16)
SHAPES = [((), 1, 1), ((), 2, 2), ((), 3, 1), ((), 16, 16), ((), 17, 17), ((), 31, 33), ((), 32, 32),
          ((), 97, 5), ((), 5, 97), ((7,), 3, 3), ((40,), 8, 8), ((3, 2), 17, 16), ((5,), 33, 31),
          ((2,), 64, 200)]
KINDS = ("logspace", "rank_deficient", "clustered", "gaussian", "zero")


def _engine_expected(dtype, batch, m, n) -> bool:
    return not (dtype == "float64" and not batch and min(m, n) > rl._SINGLE_F64_MAX_K)


# ---- the API -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NUMPY_NAMES)
def test_signature_docstring_and_original(name):
    ours, theirs = getattr(rl, name), getattr(np.linalg, name)
    assert rl.ORIGINALS[name] is theirs and ours.__wrapped__ is theirs
    assert inspect.signature(ours, follow_wrapped=False) == inspect.signature(theirs)
    assert ours.__name__ == name and len(ours.__doc__) > 100


def test_original_unwraps_our_own_functions(monkeypatch):
    """Imported while numpy.linalg is patched, the module still captures numpy's functions."""
    for name in NUMPY_NAMES:
        monkeypatch.setattr(np.linalg, name, getattr(rl, name))
        assert rl._original(name) is rl.ORIGINALS[name]


def test_other_names_are_numpys():
    assert rl.inv is np.linalg.inv and rl.LinAlgError is np.linalg.LinAlgError and rl.eigvalsh is np.linalg.eigvalsh
    assert {"inv", "svd", "qr"} <= set(dir(rl))
    with pytest.raises(AttributeError, match="no_such_function"):
        rl.no_such_function  # noqa: B018
    import rankscope
    assert rankscope.numpy.linalg is rl


# ---- singular values -----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("batch,m,n", SHAPES)
def test_svdvals_against_numpy_float64(rng, engine, dtype, kind, batch, m, n):
    x = stack(rng, batch, m, n, kind).astype(dtype)
    keep = x.copy()
    ref = ref_svdvals(x)
    tol = sv_tolerance(route(dtype, m, n), m, n, ref, dtype)
    for fn in (lambda a: rl.svd(a, compute_uv=False), lambda a: rl.svd(a, False, False), rl.svdvals):
        del engine[:]
        s = fn(x)
        assert type(s) is np.ndarray and s.dtype == x.dtype and s.shape == (*batch, min(m, n))
        err = np.abs(s.astype(np.float64) - ref)
        assert np.all(err <= tol), f"max err {err.max():.3e}, tol {tol[err > tol].min():.3e}"
        assert bool(engine) == _engine_expected(dtype, batch, m, n), engine
        if not engine:
            _assert_identical(s, rl.ORIGINALS["svd"](x, compute_uv=False), "forwarded")
    np.testing.assert_array_equal(x, keep)


@pytest.mark.parametrize("view", ["transposed", "reversed", "broadcast", "strided"])
def test_svdvals_of_views(rng, engine, view):
    base = rng.standard_normal((6, 9, 7)).astype(np.float32)
    x = {"transposed": base.transpose(0, 2, 1), "reversed": base[::-1, ::-1, ::2],
         "broadcast": np.broadcast_to(base[0], (4, 9, 7)), "strided": base[::2, 1:, ::3]}[view]
    s = rl.svdvals(x)
    *_, m, n = x.shape
    ref = ref_svdvals(x)
    assert engine and np.all(np.abs(s - ref) <= sv_tolerance(route("float32", m, n), m, n, ref, "float32"))


@pytest.mark.parametrize("k", [rl._SINGLE_F64_MAX_K, rl._SINGLE_F64_MAX_K + 1])
def test_single_float64_matrices_above_the_limit_are_numpys(rng, engine, k):
    x = rng.standard_normal((k, k + 3))
    s = rl.svd(x, compute_uv=False)
    if k > rl._SINGLE_F64_MAX_K:
        assert not engine
        _assert_identical(s, rl.ORIGINALS["svd"](x, compute_uv=False))
    else:
        assert engine == ["exact"]
    assert rl.svd(x[None], compute_uv=False).shape == (1, k) and engine[-1] == "exact"  # a batch of one


def test_float32_takes_the_gram_route_float64_the_exact_one(rng, engine):
    rl.svdvals(rng.standard_normal((3, 5, 4)).astype(np.float32))
    rl.svdvals(rng.standard_normal((3, 5, 4)))
    assert engine == ["gram", "exact"]


# ---- matrix_rank ---------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("batch,m,n", [((), 8, 8), ((), 33, 31), ((), 5, 97), ((6,), 16, 12), ((3, 2), 9, 9),
                                       ((50,), 4, 4)])
def test_matrix_rank_of_rank_deficient_matrices(rng, engine, dtype, batch, m, n):
    k = min(m, n)
    count = int(np.prod(batch, dtype=int))
    ranks = rng.integers(0, k + 1, size=count)
    # r values in [0.1, 1] and exact zeros: after rounding to float32 the zeros become ~eps32·s₁,
    # below numpy's tolerance max(m, n)·eps32·s₁ by the margin the test needs
    mats = [engineered(rng, m, n, np.concatenate([np.linspace(1, 0.1, r), np.zeros(k - r)])) for r in ranks]
    x = np.array(mats).reshape(*batch, m, n).astype(dtype)
    got = rl.matrix_rank(x)
    assert bool(engine) == _engine_expected(dtype, batch, m, n)
    assert_like_numpy(got, x, "matrix_rank")
    np.testing.assert_array_equal(got, rl.ORIGINALS["matrix_rank"](x))
    np.testing.assert_array_equal(got, ranks.reshape(batch))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_matrix_rank_tol_and_rtol(rng, engine, dtype):
    # s = 10^0 … 10^-e exactly: tolerances half a decade between two values decide the rank
    e = 12 if dtype == "float64" else 4
    k = e + 1
    x = stack(rng, (4,), k + 2, k, np.logspace(0, -e, k)).astype(dtype)
    cut = rng.integers(0, k, size=4)
    rtol = 10.0 ** -(cut + 0.5)
    expect = cut + 1
    for got in (rl.matrix_rank(x, rtol=rtol), rl.matrix_rank(x, tol=rtol), rl.matrix_rank(x, None, False, rtol=rtol)):
        np.testing.assert_array_equal(got, expect)
    np.testing.assert_array_equal(rl.matrix_rank(x, rtol=rtol), rl.ORIGINALS["matrix_rank"](x, rtol=rtol))
    assert rl.matrix_rank(x[0], tol=10.0 ** -(cut[0] + 0.5)) == cut[0] + 1
    assert rl.matrix_rank(x[0], 0.5 * 10.0 ** -e) == k
    assert len(engine) == 6


# ---- cond and the singular-value norms -----------------------------------------------------------


def _rel_tol(dtype, m, n, kappa):
    """Relative error allowed in s₁/s_k against numpy's float64 values of the same data.

    float64 (exact route): each value within 2·max(m, n)·eps64·s₁ (conftest.sv_tolerance), so the
    ratio within that times (1 + κ). float32: the same where s_k is recomputed on the exact route
    (κ above 1/_refine_below), else the Gram route's bound at s_k, (k + √L)·eps64·κ² relative; plus
    the float32 rounding of both values and of their quotient, 3·eps32.
    """
    tol = 2 * max(m, n) * EPS64 * (1 + kappa)
    if dtype == "float64":
        return tol
    k, L = min(m, n), max(m, n)
    if kappa * rl._refine_below(k, L) < 1:
        tol += (k + np.sqrt(L)) * EPS64 * kappa**2
    return tol + 3 * EPS32


@pytest.mark.parametrize("dtype,kappa", [("float32", 10.0), ("float32", 1e3), ("float32", 1e6), ("float64", 10.0),
                                         ("float64", 1e12)])
@pytest.mark.parametrize("batch,m,n", [((), 12, 12), ((), 40, 31), ((9,), 6, 6), ((2, 3), 33, 33)])
def test_cond_against_numpy_float64(rng, engine, dtype, kappa, batch, m, n):
    k = min(m, n)
    x = stack(rng, batch, m, n, np.logspace(0, -np.log10(kappa), k)).astype(dtype)
    ref = ref_svdvals(x)
    want = ref[..., 0] / ref[..., -1]
    for p in (None, 2, 2.0, -2):
        del engine[:]
        got = rl.cond(x, p)
        assert bool(engine) == _engine_expected(dtype, batch, m, n), p
        assert_like_numpy(got, x, "cond", p)
        rel = got * want - 1 if p == -2 else got / want - 1
        assert np.all(np.abs(rel) <= _rel_tol(dtype, m, n, kappa)), (p, np.abs(rel).max())
    if dtype == "float32" and kappa > 1 / rl._refine_below(k, max(m, n)):
        assert engine == ["gram", "exact"]  # the small end recomputed on the exact route


def test_cond_of_singular_matrices(rng, engine):
    for dtype in ("float32", "float64"):
        x = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
        x[0, 1] = 0
        x[1, 2, :, 0] = 0
        for p in (None, 2, -2):
            c = rl.cond(x, p)
            assert c.dtype == dtype and engine
            want = np.float32(0) if p == -2 else np.inf
            assert c[0, 1] == np.inf  # the zero matrix: numpy turns 0/0 into inf, for p = -2 as well
            assert c[1, 2] == want
            mask = np.ones((2, 3), bool)
            mask[0, 1] = mask[1, 2] = False
            assert np.all(np.isfinite(c[mask]))
        z = rl.cond(np.zeros((3, 3), dtype))
        assert type(z) is np.dtype(dtype).type and z == np.inf
    assert rl.cond(np.ones((3, 3))) > 1e15  # numpy's test: exactly singular, rounding noise aside


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("ord", [2, -2, "nuc", 2.0])
@pytest.mark.parametrize("shape,axis", [((7, 5), None), ((7, 5), (1, 0)), ((3, 7, 5), (1, 2)), ((3, 7, 5), (2, 0)),
                                        ((4, 3, 6, 5), (-1, -3)), ((2, 40, 33), (-2, -1))])
@pytest.mark.parametrize("keepdims", [False, True])
def test_norm_against_numpy_float64(rng, engine, dtype, ord, shape, axis, keepdims):
    x = rng.standard_normal(shape)
    x[..., 0] *= 1e-4  # a small end for ord=-2
    x = x.astype(dtype)
    got = rl.norm(x, ord, axis, keepdims)
    assert engine
    assert_like_numpy(got, x, "norm", ord, axis, keepdims)
    want = np.linalg.norm(x.astype(np.float64), ord, axis, keepdims)
    row, col = axis or (0, 1)
    m, n = shape[row], shape[col]
    # the nuclear norm's error is the sum of the values' errors (k of them), 2 and -2 are one value's
    tol = 2 * max(m, n) * EPS64 * (min(m, n) if ord == "nuc" else 1) * np.linalg.norm(x.astype(np.float64), 2, axis,
                                                                                      keepdims)
    if dtype == "float32":
        tol = tol + 2 * EPS32 * want * (min(m, n) if ord == "nuc" else 1)
    assert np.all(np.abs(got - want) <= tol)
    if ord in (2, "nuc"):
        mn = rl.matrix_norm(np.moveaxis(x, (row, col), (-2, -1)), ord=ord, keepdims=keepdims)
        assert_like_numpy(mn, np.moveaxis(x, (row, col), (-2, -1)), "matrix_norm", ord=ord, keepdims=keepdims)


def test_norm_minus_two_keeps_the_small_end_float32(rng, engine):
    """ord=-2 of float32 data with s_k = 1e-6·s₁: relative accuracy, as numpy's (Gram alone: ~1e-4)."""
    x = stack(rng, (8,), 20, 20, np.logspace(0, -6, 20)).astype(np.float32)
    want = ref_svdvals(x)[..., -1]
    got = rl.matrix_norm(x, ord=-2)
    assert got.dtype == np.float32 and engine == ["gram", "exact"]
    assert np.all(np.abs(got / want - 1) <= 3 * EPS32)


# ---- what is forwarded ---------------------------------------------------------------------------


def _inputs(rng):
    a = rng.standard_normal((4, 3))
    nan = a.copy()
    nan[1, 1] = np.nan
    inf = np.broadcast_to(a, (3, 4, 3)).copy()
    inf[2, 0, 0] = np.inf
    return {
        "complex128": a + 1j * rng.standard_normal((4, 3)),
        "complex64": (a + 1j).astype(np.complex64),
        "int64": rng.integers(-5, 5, (2, 4, 3)),
        "bool": a > 0,
        "float16": a.astype(np.float16),
        "longdouble": a.astype(np.longdouble),
        "big-endian": a.astype(">f8"),
        "matrix": a.view(np.matrix),
        "list": a.tolist(),
        "empty 0x3": np.zeros((0, 3)),
        "empty 3x0": np.zeros((3, 0), np.float32),
        "empty batch": np.zeros((0, 3, 3)),
        "empty in batch": np.zeros((2, 0, 4)),
        "vector": a[0],
        "scalar": np.float64(2.0),
        "nan": nan,
        "inf in a batch": inf,
        "nan float32": nan.astype(np.float32),
    }


CALLS = [
    ("svd", (), {}), ("svd", (), {"compute_uv": False}), ("svd", (False, False, True), {}),
    ("svd", (), {"full_matrices": False}), ("svdvals", (), {}),
    ("matrix_rank", (), {}), ("matrix_rank", (1e-3,), {}), ("matrix_rank", (), {"rtol": 1e-3}),
    ("matrix_rank", (None, True), {}),
    ("norm", (), {}), ("norm", (2,), {}), ("norm", ("nuc",), {}), ("norm", (-2, (0, 1)), {}),
    ("matrix_norm", (), {"ord": 2}), ("matrix_norm", (), {"ord": "nuc", "keepdims": True}),
    ("cond", (), {}), ("cond", (-2,), {}),
]


@pytest.mark.parametrize("kind", list(_inputs(np.random.default_rng(0))))
@pytest.mark.parametrize("name,args,kwargs", CALLS, ids=[f"{c[0]}{c[1]}{c[2]}" for c in CALLS])
def test_other_inputs_are_numpys(rng, engine, kind, name, args, kwargs):
    if kind.startswith("inf") and name == "svd" and (args[1:2] or (kwargs.get("compute_uv", True),))[0]:
        pytest.skip("numpy's own svd(compute_uv=True) of a matrix holding Inf does not return (OpenBLAS dgesdd)")
    assert_forwarded(engine, name, _inputs(rng)[kind], *args, tried="nan" in kind or "inf" in kind, **kwargs)


@pytest.mark.parametrize("name,args,kwargs", [
    ("svd", (), {}), ("svd", (True, True, False), {}), ("svd", (), {"full_matrices": False}),
    ("svd", (), {"compute_uv": False, "hermitian": True}),
    ("matrix_rank", (), {"hermitian": True}), ("matrix_rank", (0.1,), {"rtol": 0.1}),
    ("norm", (), {}), ("norm", ("fro",), {}), ("norm", ("f",), {}), ("norm", (1,), {}), ("norm", (-1,), {}),
    ("norm", (np.inf,), {}), ("norm", (-np.inf,), {}), ("norm", (3,), {}), ("norm", (0,), {}),
    ("norm", ("nuc", 1), {}), ("norm", (2, 0), {}), ("norm", (2, (0, 0)), {}), ("norm", (2, (0, 5)), {}),
    ("norm", (2, [0, 1]), {}), ("norm", (2, (0, 1, 2)), {}), ("norm", (2, "x"), {}), ("norm", (True,), {}),
    ("norm", (np.float64(2), (0, 1)), {}), ("norm", ("bad",), {}),
    ("matrix_norm", (), {}), ("matrix_norm", (), {"ord": 1}), ("matrix_norm", (), {"ord": np.inf}),
    ("matrix_norm", (), {"ord": "bad"}),
    ("cond", (1,), {}), ("cond", (-1,), {}), ("cond", (np.inf,), {}), ("cond", ("fro",), {}), ("cond", (3,), {}),
])
def test_other_arguments_are_numpys(rng, engine, name, args, kwargs):
    x = rng.standard_normal((4, 4)).astype(np.float32)
    assert_forwarded(engine, name, x, *args, **kwargs)
    if not (name == "norm" and args and args[1:] and args[1] is not None):
        assert_forwarded(engine, name, np.stack([x, x.T]), *args, **kwargs)


def test_norm_of_three_dimensions_without_axis_is_numpys_error(rng, engine):
    assert_forwarded(engine, "norm", rng.standard_normal((2, 3, 3)), 2)
    assert_forwarded(engine, "norm", rng.standard_normal(3), 2)


def test_nan_inside_a_large_batch_gives_numpys_answer(rng, engine):
    x = rng.standard_normal((50, 6, 6)).astype(np.float32)
    x[17, 2, 3] = np.nan
    for name, args in (("svdvals", ()), ("cond", ()), ("matrix_rank", ()), ("norm", (2, (1, 2)))):
        got, err = _call(getattr(rl, name), (x, *args), {})
        want, want_err = _call(rl.ORIGINALS[name], (x, *args), {})
        assert engine  # tried, found the NaN, handed the call to numpy
        if want_err is not None:
            assert type(err) is type(want_err) and str(err) == str(want_err)
        else:
            _assert_identical(got, want, name)


def test_threads_share_the_functions(rng):
    """Concurrent calls from several threads (the engine releases the GIL) each get their own answer."""
    from concurrent.futures import ThreadPoolExecutor

    xs = [rng.standard_normal((20, 12, 9)).astype(np.float32) for _ in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(rl.svdvals, xs))
    for s, x in zip(got, xs):
        ref = ref_svdvals(x)
        assert np.all(np.abs(s - ref) <= sv_tolerance(route("float32", 12, 9), 12, 9, ref, "float32"))


def test_spectrum_kinds_cover_the_generator():
    assert set(KINDS) <= {"logspace", "rank_deficient", "repeated", "clustered", "zero", "gaussian"}
    assert prescribed("zero", 3, np.random.default_rng(0)).sum() == 0
