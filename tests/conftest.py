"""Shared fixtures: seeded random inputs, engineered spectra, frameworks, and the accuracy checks.

Every test that draws random numbers takes the ``rng`` fixture. Its seed is fresh for every run
(``np.random.SeedSequence().entropy``) unless ``RANKSCOPE_TEST_SEED`` is set, and a failing test's
report carries a "rankscope seed" section with the line that reproduces it::

    RANKSCOPE_TEST_SEED=<seed> python -m pytest tests/test_svdvals.py::test_x
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch  # a test dependency (pyproject's "test" extra pins the CPU build)
from rankscope import _core

EPS64 = float(np.finfo(np.float64).eps)
EPS32 = float(np.finfo(np.float32).eps)
#: eps of the dtype the data is stored in (METRICS.md §1).
EPS = {"float16": 2.0**-10, "bfloat16": 2.0**-7, "float32": EPS32, "float64": EPS64}
DTYPES = ("float16", "bfloat16", "float32", "float64")
#: (framework, dtype) pairs that exist: numpy has no bfloat16.
FW_DTYPES = [
    (fw, dt) for fw in ("numpy", "torch") for dt in DTYPES if (fw, dt) != ("numpy", "bfloat16")
]
COMPACT_MAX_K = int(_core.compact_max_k())


# ---- seeds ---------------------------------------------------------------------------------------


def _session_seed() -> int | None:
    env = os.environ.get("RANKSCOPE_TEST_SEED")
    return int(env) if env else None


@pytest.fixture
def seed(request) -> int:
    """A fresh 128-bit seed per test (or RANKSCOPE_TEST_SEED), shown in a failing test's report."""
    s = _session_seed()
    if s is None:
        s = int(np.random.SeedSequence().entropy)
    request.node._rankscope_seed = s
    return s


@pytest.fixture
def rng(seed) -> np.random.Generator:
    return np.random.default_rng(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    s = getattr(item, "_rankscope_seed", None)
    if s is not None and report.failed:
        report.sections.append(
            ("rankscope seed", f"RANKSCOPE_TEST_SEED={s} python -m pytest '{item.nodeid}'")
        )
    return report


# ---- frameworks ----------------------------------------------------------------------------------


@pytest.fixture(params=["numpy", "torch"])
def framework(request) -> str:
    return request.param


def to_framework(a: np.ndarray, framework: str, dtype: str | None = None):
    """A float64 numpy array as `framework` data of `dtype` (bfloat16 only exists in torch)."""
    dtype = dtype or a.dtype.name
    if framework == "torch":
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float64)).to(getattr(torch, dtype))
    if dtype == "bfloat16":
        pytest.skip("numpy has no bfloat16")
    return np.asarray(a).astype(dtype)


def stored64(x) -> np.ndarray:
    """The values the caller stored, exactly, as float64 numpy (float16/bfloat16 are exact)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to(torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().numpy()
    return np.asarray(x)


def dtype_name(x) -> str:
    if isinstance(x, torch.Tensor):
        return str(x.dtype).removeprefix("torch.")
    return np.asarray(x).dtype.name


# ---- engineered spectra --------------------------------------------------------------------------


def haar(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """n × k, orthonormal columns, Haar-distributed: QR of a Gaussian, R's signs moved into Q."""
    if k == 0:
        return np.zeros((n, 0))
    q, r = np.linalg.qr(rng.standard_normal((n, k)))
    return q * np.where(np.diag(r) < 0, -1.0, 1.0)


SPECTRA = ("logspace", "rank_deficient", "repeated", "clustered", "zero", "gaussian")


def prescribed(kind: str, k: int, rng: np.random.Generator) -> np.ndarray:
    """Descending singular values of a named kind, largest 1 (0 for "zero")."""
    if kind == "logspace":
        return np.logspace(0, -12, k)
    if kind == "rank_deficient":
        r = max(1, k // 2) if k > 1 else 1
        return np.concatenate([np.linspace(1.0, 0.1, r), np.zeros(k - r)])
    if kind == "repeated":
        return np.repeat([1.0, 0.5, 0.25, 1e-3], -(-k // 4))[:k]
    if kind == "clustered":
        return np.sort(
            np.concatenate(
                [1.0 + 1e-9 * rng.standard_normal(k - k // 2), 1e-3 + 1e-12 * rng.random(k // 2)]
            )
        )[::-1]
    if kind == "zero":
        return np.zeros(k)
    if kind == "gaussian":
        return np.sort(np.abs(rng.standard_normal(k)))[::-1] / max(
            1.0, np.abs(rng.standard_normal(k)).max()
        )
    raise ValueError(kind)


def engineered(rng: np.random.Generator, m: int, n: int, s) -> np.ndarray:
    """float64 m × n matrix U diag(s) Vᵀ with Haar U, V; `s` a kind name or min(m, n) values."""
    k = min(m, n)
    if isinstance(s, str):
        s = prescribed(s, k, rng)
    s = np.asarray(s, dtype=np.float64)
    assert s.shape == (k,)
    return (haar(rng, m, k) * s) @ haar(rng, n, k).T


def ref_svdvals(x) -> np.ndarray:
    """numpy's float64 singular values of the stored data (..., k)."""
    a = stored64(x)
    *batch, m, n = a.shape
    if min(m, n) == 0 or 0 in batch:
        return np.zeros((*batch, min(m, n)))
    return np.linalg.svd(a, compute_uv=False)


# ---- accuracy ------------------------------------------------------------------------------------


def route_of(dtype: str, m: int, n: int, method: str) -> str:
    return _core.route(dtype, m, n, method)


def sv_tolerance(route: str, m: int, n: int, ref: np.ndarray, out_dtype: str) -> np.ndarray:
    """Allowed |s − s_ref| for each value of a (..., k) reference from numpy's float64 SVD.

    exact (dgesdd in float64 on both sides): each side's error is backward stable, |δs| ≲
    p(m, n)·eps64·s₁ with p "modestly growing" (LAPACK's words); c·max(m, n) with c = 2. Measured
    against a 30-digit mpmath SVD, numpy's dgesdd is off by up to 1.5·max(m, n)·eps64·s₁ on the
    clustered spectrum (33 × 31, 1 draw in ~30 above 1·max(m, n)), and ours against numpy by up to
    1.33 (3 × 2, Gaussian; 1,500 draws per shape and spectrum): the two sides' errors are
    correlated (the same algorithm), and any real bug is off by far more.

    gram (float64 Gram of the smaller side, symmetric eigenvalues): |δ(s²)| ≲ c·(k + √L)·eps64·s₁²:
    the eigensolver's backward error O(k·eps)·‖G‖ plus the rounding of each Gram entry, a sum of L
    products whose error grows like √L·eps (measured ≤ 0.3 (k + √L)·eps64·s₁², worst at 3 × 1000
    where k·eps alone is exceeded 3×). c = 2. In s that is |δs| ≤ min(√T, T / (s + s_ref)):
    values below ~1.5e-8·s₁ are noise, as METRICS.md §0 says. The reference's own error (numpy's
    dgesdd) is added, bounded as on the exact route: 2·L·eps64·s₁. A smaller allowance failed
    where numpy was the one that was off: 2·(1 + √L)·eps64·s₁ let a 33 × 31 clustered spectrum
    fail at 51 ulps, where mpmath showed our value within 1 ulp and numpy's 50 ulps off (seed
    227658156758948282938138132895086970017 of test_engineered_spectra[shape4-clustered-gram]).

    float32 outputs add their own rounding, eps32·s_ref.
    """
    eps = EPS64
    k, L = min(m, n), max(m, n)
    s1 = ref[..., :1] if k else ref
    if route == "exact":
        tol = 2.0 * L * eps * s1 + np.zeros_like(ref)
    else:
        # T = c·s₁², written scale-free so that it cannot underflow:
        # min(√T, T/(2s)) = s₁·min(√c, c·s₁/(2s))
        c = 2.0 * (k + np.sqrt(L)) * eps
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            ratio = np.where(ref > 0, s1 / (2.0 * ref), np.inf)
        tol = s1 * (np.minimum(np.sqrt(c), c * ratio) + 2.0 * L * eps) + 0 * ref
    # results in float64's subnormal range are quantised to 5e-324 steps: allow a few of them
    tol = tol + 8 * np.finfo(np.float64).smallest_subnormal
    if out_dtype == "float32":
        tol = tol + EPS32 * ref + np.finfo(np.float32).smallest_subnormal
    return tol


def assert_sv_close(
    got, x, method: str = "auto", msg: str = "", ref: np.ndarray | None = None
) -> None:
    """`got` (svdvals(x, method=method)) against numpy's float64 SVD of x's stored values."""
    a = stored64(x)
    *_, m, n = a.shape
    route = route_of(dtype_name(x), m, n, method)
    g = as_numpy(got).astype(np.float64)
    ref = ref_svdvals(x) if ref is None else ref
    assert g.shape == ref.shape, f"shape {g.shape} != {ref.shape} {msg}"
    tol = sv_tolerance(route, m, n, ref, as_numpy(got).dtype.name)
    err = np.abs(g - ref)
    bad = ~(err <= tol)
    if bad.any():
        i = tuple(np.argwhere(bad)[0])
        raise AssertionError(
            f"{route} route, {m}×{n} {dtype_name(x)}: |s − s_ref| = {err[i]:.3e} > "
            f"tol {tol[i]:.3e} at {i} "
            f"(got {g[i]!r}, numpy {ref[i]!r}); {bad.sum()} of {bad.size} values off {msg}"
        )


def assert_descending(s) -> None:
    a = as_numpy(s).astype(np.float64)
    if a.shape[-1] > 1:
        d = np.diff(a, axis=-1)
        assert np.all(d <= 0), f"not descending: {a}"
