"""Every metric against closed forms and float64 numpy re-implementations of METRICS.md §1–2."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rankscope as rs
from conftest import EPS, EPS64, as_numpy, engineered, to_framework, torch
from rankscope import metrics

NAMES = (
    "matrix_rank",
    "rank_loss",
    "weak_rank_loss",
    "sv_min",
    "sv_max",
    "log10_sv_min",
    "condition_number",
    "effective_rank",
    "rankme",
    "stable_rank",
    "participation_ratio",
    "nuclear_ratio",
    "energy_rank",
    "tol",
)
COUNTS = {"matrix_rank", "rank_loss", "weak_rank_loss", "energy_rank"}
W = np.array([[3.0, 0.0], [0.0, 1.0], [0.0, 0.0]])


# ---- the reference: METRICS.md formulas, written out in numpy float64 ----------------------------


def ref_tol(s1: float, m: int, n: int, dtype: str, policy="auto", atol=None, rtol=None) -> float:
    if atol is not None or rtol is not None:  # torch.linalg.matrix_rank: a missing one is 0
        return max(atol or 0.0, (rtol or 0.0) * s1)
    eps = EPS[dtype]
    if policy == "auto":
        policy = "data" if dtype in ("float16", "bfloat16") else "numpy"
    rt = {
        "numpy": max(m, n) * eps,
        "data": eps,
        "nr": 0.5 * math.sqrt(m + n + 1) * eps,
        "ww": max(m, n) * EPS64,
    }[policy]
    return rt * s1


def _entropy(p):
    p = p[p > 0]
    return -np.sum(p * np.log(p))


def ref_report(
    s,
    m=None,
    n=None,
    dtype="float64",
    policy="auto",
    atol=None,
    rtol=None,
    tau=0.99,
    eps=1e-7,
    on="s",
    threshold=1e-6,
) -> dict:
    s = np.sort(np.asarray(s, dtype=np.float64))[::-1]
    k = s.size
    if k and not np.all(np.isfinite(s)):
        return {name: (-1 if name in COUNTS else np.nan) for name in NAMES}
    if k == 0:
        out = {name: 0 for name in NAMES}
        out.update(
            sv_min=np.nan, sv_max=np.nan, log10_sv_min=np.nan, condition_number=np.nan, tol=0.0
        )
        return out
    s1, sk = s[0], s[-1]
    tol = ref_tol(s1, m, n, dtype, policy, atol, rtol)
    rank = int(np.sum(s > tol))
    l = s**2
    out = {
        "matrix_rank": rank,
        "rank_loss": k - rank,
        "weak_rank_loss": int(np.sum(l < threshold)),
        "sv_min": sk,
        "sv_max": s1,
        "log10_sv_min": np.log10(sk) if sk > 0 else -np.inf,
        "condition_number": s1 / sk if sk > 0 else np.inf,
        "tol": tol,
    }
    if s1 == 0:  # zero matrix: every rank-type metric is 0
        out.update(
            effective_rank=0.0,
            rankme=0.0,
            stable_rank=0.0,
            participation_ratio=0.0,
            nuclear_ratio=0.0,
            energy_rank=0,
        )
        return out
    p = s / s.sum() if on == "s" else l / l.sum()
    pm = s / np.sum(np.abs(s)) + eps
    cum = np.cumsum(l) / l.sum()
    out.update(
        effective_rank=float(np.exp(_entropy(p))),
        rankme=float(np.exp(_entropy(pm))),
        stable_rank=l.sum() / l[0],
        participation_ratio=l.sum() ** 2 / np.sum(l**2),
        nuclear_ratio=s.sum() / s1,
        energy_rank=int(np.argmax(cum >= tau * (1 - 1e-15)) + 1),
    )
    return out


def assert_report_matches(got: dict, ref: dict, rtol=1e-12, msg=""):
    for name in NAMES:
        g, r = got[name], ref[name]
        if name in COUNTS:
            assert int(g) == r, f"{name}: {g} != {r} {msg}"
        else:
            assert np.isclose(float(g), float(r), rtol=rtol, atol=0, equal_nan=True) or float(
                g
            ) == float(r), f"{name}: {g!r} != {r!r} {msg}"


def _ri(x):
    """A 0-d result as a Python number."""
    return np.asarray(x).item()


# ---- closed forms --------------------------------------------------------------------------------


def test_worked_example_W():
    """METRICS.md §2: W = [[3,0],[0,1],[0,0]], s = (3, 1)."""
    p = np.array([0.75, 0.25])
    h = -(p * np.log(p)).sum()
    q = np.array([0.9, 0.1])
    h2 = -(q * np.log(q)).sum()
    for fn_s, fn_x in ((metrics.effective_rank, rs.effective_rank),):
        assert _ri(fn_s([3.0, 1.0])) == pytest.approx(1.7547654, abs=5e-8)
        assert _ri(fn_x(W)) == pytest.approx(math.exp(h), rel=1e-14)
        assert _ri(fn_s(np.array([1.0, 3.0]), on="s2")) == pytest.approx(1.3841455, abs=5e-8)
        assert _ri(fn_x(W, on="s2")) == pytest.approx(math.exp(h2), rel=1e-14)
    assert _ri(rs.stable_rank(W)) == pytest.approx(10 / 9, rel=1e-14)
    assert _ri(rs.nuclear_ratio(W)) == pytest.approx(4 / 3, rel=1e-14)
    assert _ri(rs.condition_number(W)) == pytest.approx(3.0, rel=1e-14)
    assert _ri(rs.sv_max(W)) == pytest.approx(3.0, rel=1e-15)
    assert _ri(rs.sv_min(W)) == pytest.approx(1.0, rel=1e-14)
    assert _ri(rs.log10_sv_min(W)) == pytest.approx(0.0, abs=1e-14)
    assert _ri(rs.matrix_rank(W)) == 2 and _ri(rs.rank_loss(W)) == 0
    assert _ri(rs.energy_rank(W, tau=0.85)) == 1 and _ri(rs.energy_rank(W, tau=0.95)) == 2
    assert _ri(metrics.participation_ratio([3.0, 1.0])) == pytest.approx(100 / 82, rel=1e-14)
    pm = np.array([0.75, 0.25]) + 1e-7
    assert _ri(rs.rankme(W)) == pytest.approx(math.exp(-(pm * np.log(pm)).sum()), rel=1e-14)
    assert _ri(rs.weak_rank_loss(W)) == 0 and _ri(rs.weak_rank_loss(W, threshold=1.5)) == 1
    for bad in (float("nan"), -1.0):
        with pytest.raises(ValueError, match="threshold must be non-negative"):
            rs.weak_rank_loss(W, threshold=bad)
    with pytest.raises(TypeError, match="method must be"):
        rs.svdvals(W, method=None)


def test_tolerance_and_shape_arguments_are_checked():
    """atol/rtol: real numbers (numpy scalars too), finite and >= 0; shape=: whole numbers >= 0 whose
    smaller side holds the values given (a truncated spectrum may have fewer)."""
    A = np.diag([1.0, 0.5, 1e-3, 1e-9])
    for bad in ("x", np.array([1.0, 2.0]), 1j, True):
        with pytest.raises(TypeError, match="atol must be a real number"):
            rs.matrix_rank(A, atol=bad)
    for bad in (10**400, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="rtol must be a finite non-negative"):
            rs.matrix_rank(A, rtol=bad)
    assert int(rs.matrix_rank(A, atol=np.float32(1e-6))) == 3
    s = np.array([1.0, 1e-14])
    for bad in ((-100, -100), (2.5, 3), (np.inf, 3), (2, 1), "ab", [(4, 4)] * 3):
        with pytest.raises(ValueError, match="shape"):
            metrics.matrix_rank(s, shape=bad)
    assert int(metrics.matrix_rank(s, shape=(100, 100))) == 1  # a truncated spectrum of a 100 x 100


def test_uniform_spectrum_closed_forms():
    """k equal values: every soft rank is k, energy_rank is ceil(tau·k)."""
    for k in (1, 2, 7, 64):
        s = np.full(k, 2.5)
        r = metrics.report(s, shape=(k, k + 3))
        for name in ("effective_rank", "stable_rank", "participation_ratio", "nuclear_ratio"):
            assert r[name] == pytest.approx(k, rel=1e-13), name
        q = 1 / k + 1e-7  # rankme's eps shifts every probability
        assert r["rankme"] == pytest.approx(math.exp(-k * q * math.log(q)), rel=1e-13)
        assert r["matrix_rank"] == k and r["condition_number"] == pytest.approx(1.0)
        assert _ri(metrics.effective_rank(s, on="s2")) == pytest.approx(k, rel=1e-13)
        for tau in (0.3, 0.55, 0.99):
            assert _ri(metrics.energy_rank(s, tau=tau)) == math.ceil(tau * k - 1e-9)
        assert _ri(metrics.energy_rank(s, tau=1.0)) == k


# ---- against the numpy reference -----------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 3, 10, 97])
@pytest.mark.parametrize("kind", ["uniform", "logspace", "rank_deficient", "repeated"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("policy", ["auto", "numpy", "data", "nr", "ww"])
def test_report_against_reference(rng, k, kind, dtype, policy):
    if kind == "uniform":
        s = rng.random(k) * 3
    elif kind == "logspace":
        s = np.logspace(0, -14, k) * 7.0
    elif kind == "rank_deficient":
        s = np.concatenate([rng.random(k - k // 2) + 0.5, np.zeros(k // 2)])
    else:
        s = np.repeat([2.0, 1.0, 1e-9], k)[:k]
    m, n = k + int(rng.integers(0, 50)), k
    if rng.random() < 0.5:
        m, n = n, m
    tau, eps, thr = (
        float(rng.uniform(0.05, 1.0)),
        float(rng.choice([0.0, 1e-7, 1e-3])),
        float(rng.choice([1e-6, 0.5])),
    )
    for on in ("s", "s2"):
        got = metrics.report(
            s, shape=(m, n), dtype=dtype, policy=policy, tau=tau, eps=eps, on=on, threshold=thr
        )
        ref = ref_report(s, m, n, dtype, policy, tau=tau, eps=eps, on=on, threshold=thr)
        assert_report_matches(got, ref, msg=f"s={s!r} tau={tau} eps={eps} on={on}")


def test_report_batched_rows_independent(rng):
    s = rng.random((4, 3, 6)) * np.array([1, 1, 1, 1, 0, 0])  # trailing zeros
    s[1, 2] = 0.0  # a zero spectrum in the batch
    got = metrics.report(s, shape=(6, 9))
    for name in NAMES:
        assert got[name].shape == (4, 3)
        assert got[name].dtype == (np.int64 if name in COUNTS else np.float64)
    for i in np.ndindex(4, 3):
        ref = ref_report(s[i], 6, 9)
        assert_report_matches({k: v[i] for k, v in got.items()}, ref, msg=str(i))


# ---- conventions: zero, empty, NaN ---------------------------------------------------------------


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (70, 66), (130, 140)])
@pytest.mark.parametrize("method", ["auto", "exact", "gram"])
def test_zero_matrix(framework, shape, method):
    x = to_framework(np.zeros((2, *shape)), framework, "float32")
    r = rs.spectrum_report(x, method=method)
    k = min(shape)
    for name in (
        "matrix_rank",
        "effective_rank",
        "rankme",
        "stable_rank",
        "participation_ratio",
        "nuclear_ratio",
        "energy_rank",
        "sv_min",
        "sv_max",
        "tol",
    ):
        assert np.all(as_numpy(r[name]) == 0), name
    assert np.all(as_numpy(r["rank_loss"]) == k)
    assert np.all(as_numpy(r["weak_rank_loss"]) == k)
    assert np.all(as_numpy(r["condition_number"]) == np.inf)
    assert np.all(as_numpy(r["log10_sv_min"]) == -np.inf)
    assert np.all(as_numpy(rs.participation_ratio(x)) == 0)
    assert np.all(as_numpy(rs.participation_ratio(x, center=False)) == 0)
    assert np.all(as_numpy(rs.effective_rank(x, on="s2")) == 0)
    # "never NaN for this"
    for v in r.values():
        assert not np.any(np.isnan(as_numpy(v).astype(float)))


def test_zero_spectrum_with_atol():
    r = metrics.report(np.zeros(4), atol=0.5)
    assert r["tol"] == 0.5 and r["matrix_rank"] == 0 and r["rank_loss"] == 4


@pytest.mark.parametrize("shape", [(0, 0), (0, 4), (4, 0), (3, 0, 5)])
def test_empty(framework, shape):
    x = to_framework(np.zeros(shape), framework, "float64")
    r = rs.spectrum_report(x)
    for name in ("matrix_rank", "rank_loss", "weak_rank_loss", "energy_rank"):
        assert np.all(as_numpy(r[name]) == 0), name
    for name in ("sv_min", "sv_max", "log10_sv_min", "condition_number"):
        assert np.all(np.isnan(as_numpy(r[name]))), name
    assert np.all(as_numpy(rs.matrix_rank(x)) == 0)
    assert tuple(as_numpy(rs.matrix_rank(x)).shape) == shape[:-2]
    m = metrics.report(np.zeros((2, 0)), shape=(0, 3))
    assert np.all(m["matrix_rank"] == 0) and np.all(np.isnan(m["sv_min"]))


def test_nan_and_inf_spectra():
    s = np.array([[1.0, 0.5, 0.1], [1.0, np.nan, 0.2], [np.inf, 1.0, 0.0], [2.0, 1.0, 0.0]])
    r = metrics.report(s, shape=(3, 4))
    for name in NAMES:
        v = r[name]
        if name in COUNTS:
            assert v[1] == -1 and v[2] == -1, name
        else:
            assert np.isnan(v[1]) and np.isnan(v[2]), name
        for i in (0, 3):
            ref = ref_report(s[i], 3, 4)[name]
            assert np.isclose(v[i], ref, rtol=1e-13) or v[i] == ref, (name, i)
    # a NaN spectrum, unsorted, through every single function
    bad = np.array([0.3, np.nan, 2.0])
    assert _ri(metrics.matrix_rank(bad, shape=(3, 3))) == -1
    assert _ri(metrics.energy_rank(bad)) == -1
    assert np.isnan(_ri(metrics.effective_rank(bad)))
    assert np.isnan(_ri(metrics.sv_max(bad)))


def test_negative_singular_values_rejected():
    with pytest.raises(ValueError, match="non-negative"):
        metrics.stable_rank(np.array([1.0, -0.5]))


# ---- rank policies -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("policy", ["auto", "numpy", "data", "nr", "ww"])
@pytest.mark.parametrize("shape", [(5, 5), (20, 300), (1100, 8)])
def test_policy_tolerances_and_strictness(dtype, policy, shape):
    """tol column = the METRICS.md rule; values just above it count, values at or below do not."""
    m, n = shape
    tol = ref_tol(2.0, m, n, dtype, policy)
    r = metrics.report(np.array([2.0]), shape=shape, dtype=dtype, policy=policy)
    assert r["tol"] == pytest.approx(tol, rel=1e-15)
    if tol >= 2.0:  # numpy's rule on narrow dtypes: the largest value itself is below tol
        assert r["matrix_rank"] == 0
        return
    above, below = tol * (1 + 1e-9), tol * (1 - 1e-9)
    s = np.array([2.0, above, below, r["tol"]])
    got = metrics.report(s, shape=shape, dtype=dtype, policy=policy)
    assert got["matrix_rank"] == 2 and got["rank_loss"] == 2


def test_auto_policy_by_stored_dtype():
    s = np.array([1.0, 0.5])
    expect = {
        "float16": 2**-10,
        "bfloat16": 2**-7,  # "data": eps alone
        "float32": 300 * EPS["float32"],
        "float64": 300 * EPS64,  # "numpy": max(m, n)·eps
    }
    for dt, tol in expect.items():
        assert _ri(metrics.report(s, shape=(20, 300), dtype=dt)["tol"]) == pytest.approx(
            tol, rel=1e-15
        )
        assert _ri(
            metrics.report(s.astype(np.float32), shape=(20, 300), dtype=dt)["tol"]
        ) == pytest.approx(tol, rel=1e-15)
    # default stored dtype: that of s
    assert _ri(metrics.report(s.astype(np.float16), shape=(20, 300))["tol"]) == pytest.approx(
        2**-10, rel=1e-15
    )
    assert _ri(metrics.report(torch.tensor(s).bfloat16(), shape=(20, 300))["tol"]) == pytest.approx(
        2**-7, rel=1e-15
    )
    assert _ri(metrics.report(s.astype(np.float32), shape=(20, 300))["tol"]) == pytest.approx(
        300 * EPS["float32"], rel=1e-15
    )


def _low_rank(rng, m, n, r, dtype, framework="torch"):
    s = np.concatenate([np.linspace(1.0, 0.3, r), np.zeros(min(m, n) - r)])
    return to_framework(engineered(rng, m, n, s), framework, dtype)


@pytest.mark.parametrize("dtype,wide", [("float16", 1100), ("bfloat16", 130)])
def test_narrow_dtype_rules(rng, dtype, wide):
    """METRICS.md §1: numpy's rule calls any float16 layer wider than 1024 (bfloat16: 128) rank 0;
    "data" (the auto rule) finds the planted rank."""
    x = _low_rank(rng, 8, wide, 3, dtype)
    assert _ri(rs.matrix_rank(x, policy="numpy")) == 0
    assert _ri(rs.matrix_rank(x)) == 3
    assert _ri(rs.matrix_rank(x, policy="data")) == 3
    assert _ri(rs.rank_loss(x)) == 5
    s = rs.svdvals(x, dtype="float64")
    assert _ri(metrics.matrix_rank(s, shape=(8, wide), dtype=dtype)) == 3
    assert _ri(metrics.matrix_rank(s, dtype=x.dtype)) == 3  # "data" needs no shape


@pytest.mark.parametrize("dtype,shape", [("float16", (8, 300)), ("bfloat16", (8, 130))])
def test_upcast_narrow_data_hides_rank_loss(rng, dtype, shape):
    """Upcasting narrow data and applying float32's eps counts its rounding noise as rank (measured:
    the largest noise value is > 2.5× (float16) and > 30× (bfloat16) float32's numpy tolerance
    here),
    so a genuinely rank-3 layer shows no or little rank loss; the stored dtype's eps does not."""
    x = _low_rank(rng, *shape, 3, dtype)
    assert _ri(rs.matrix_rank(x)) == 3
    up = x.float()
    assert _ri(rs.matrix_rank(up)) > 3
    assert _ri(metrics.matrix_rank(rs.svdvals(up), shape=shape, dtype=dtype)) == 3


def test_ww_policy_uses_float64_eps(rng):
    """WeightWatcher ranks float32 weights with float64's eps: rounding noise counts as rank."""
    x = _low_rank(rng, 40, 60, 5, "float32", "numpy")
    assert _ri(rs.matrix_rank(x)) == 5
    assert _ri(rs.matrix_rank(x, policy="ww", method="exact")) == 40
    s = rs.svdvals(x, method="exact", dtype="float64")
    assert _ri(metrics.matrix_rank(s, shape=x.shape, policy="ww")) == 40
    assert _ri(metrics.report(s, shape=x.shape, policy="ww")["tol"]) == pytest.approx(
        60 * EPS64 * s[0], rel=1e-15
    )


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", [(20, 20), (30, 45), (60, 25), (3, 97, 64), (2, 128, 130)])
def test_matrix_rank_equals_numpy_with_clear_gap(rng, framework, dtype, shape):
    """Engineered spectra: r values in [0.1, 1], the rest exactly 0 before rounding. The rounding
    noise (~eps·s₁) is far below numpy's tol max(m, n)·eps·s₁, the kept values far above."""
    *batch, m, n = shape
    k = min(m, n)
    mats, ranks = [], []
    for _ in range(int(np.prod(batch, dtype=int))):
        r = int(rng.integers(0, k + 1))
        s = np.concatenate([np.linspace(1.0, 0.1, r), np.zeros(k - r)]) * float(
            rng.uniform(0.1, 100)
        )
        mats.append(engineered(rng, m, n, s))
        ranks.append(r)
    a = np.stack(mats).reshape(*batch, m, n).astype(dtype)
    x = to_framework(a, framework, dtype)
    got = as_numpy(rs.matrix_rank(x))
    assert np.array_equal(got, np.linalg.matrix_rank(a))
    assert np.array_equal(got, np.array(ranks).reshape(batch))
    assert np.array_equal(as_numpy(rs.rank_loss(x)), k - np.array(ranks).reshape(batch))
    if framework == "torch":
        assert np.array_equal(got, torch.linalg.matrix_rank(x).numpy())


@pytest.mark.parametrize("shape", [(6, 6), (9, 14), (30, 12)])
def test_atol_rtol_equal_torch(rng, shape):
    """atol/rtol: torch.linalg.matrix_rank semantics, tolerances placed midway between values."""
    a = rng.standard_normal((5, *shape))
    t = torch.from_numpy(a)
    s = np.linalg.svd(a, compute_uv=False)
    for trial in range(6):
        i = int(rng.integers(0, s.shape[1] - 1))
        mid = np.sqrt(s[:, i] * s[:, i + 1])  # per matrix; choose one and apply to all
        atol = float(mid[0])
        rtol = float(mid[1] / s[1, 0])
        for kw in (
            {"atol": atol},
            {"rtol": rtol},
            {"atol": atol, "rtol": rtol},
            {"atol": 0.0, "rtol": rtol},
            {"atol": atol, "rtol": 0.0},
            {},
        ):
            got = rs.matrix_rank(t, **kw)
            ref = torch.linalg.matrix_rank(t, **kw)
            assert torch.equal(got, ref), (kw, got, ref)
            ms = metrics.matrix_rank(torch.from_numpy(s), shape=shape, **kw)
            assert torch.equal(ms, ref), kw


def test_atol_is_strict():
    s = np.array([1.0, 0.5, 0.25])
    assert _ri(metrics.matrix_rank(s, atol=0.5)) == 1
    assert _ri(metrics.matrix_rank(s, rtol=0.25)) == 2
    assert _ri(metrics.matrix_rank(s, atol=0.5, rtol=0.25)) == 1
    assert _ri(metrics.matrix_rank(s, atol=0.1, rtol=0.5)) == 1
    assert _ri(metrics.matrix_rank(s, atol=0.0)) == 3
    d = torch.diag(torch.tensor(s))
    assert _ri(torch.linalg.matrix_rank(d, atol=0.5)) == _ri(rs.matrix_rank(d, atol=0.5)) == 1


def test_policy_argument_errors():
    s = np.array([1.0, 0.5])
    with pytest.raises(ValueError, match="policy"):
        metrics.matrix_rank(s, shape=(2, 2), policy="lapack")
    with pytest.raises(ValueError, match="policy"):
        rs.matrix_rank(np.eye(3), policy="scipy")
    with pytest.raises(ValueError):
        rs.matrix_rank(np.eye(3), policy="numpy", atol=0.1)
    for bad in (-1.0, np.nan, np.inf):
        with pytest.raises(ValueError, match="atol"):
            rs.matrix_rank(np.eye(3), atol=bad)
        with pytest.raises(ValueError, match="rtol"):
            metrics.rank_loss(s, rtol=bad)


# ---- spectra given by the user -------------------------------------------------------------------


def test_shape_required():
    s = np.array([1.0, 0.5, 1e-20])
    for policy in ("auto", "numpy", "nr", "ww"):
        with pytest.raises(ValueError, match="shape"):
            metrics.matrix_rank(s, policy=policy)
        with pytest.raises(ValueError, match="shape"):
            metrics.report(s, policy=policy)
    # not needed: "data", atol/rtol, and "auto" on narrow stored dtypes
    assert _ri(metrics.matrix_rank(s, policy="data")) == 2
    assert _ri(metrics.matrix_rank(s, atol=1e-3)) == 2
    assert _ri(metrics.matrix_rank(s, dtype="float16")) == 2
    assert _ri(metrics.matrix_rank(s, dtype=torch.bfloat16)) == 2
    # shape itself must be (m, n) or one per spectrum
    with pytest.raises(ValueError, match="shape"):
        metrics.matrix_rank(s, shape=(3, 4, 5))
    with pytest.raises(ValueError, match="shape"):
        metrics.matrix_rank(np.ones((3, 2)), shape=[(2, 2), (2, 3)])
    got = metrics.matrix_rank(np.array([[1.0, 1e-14], [1.0, 1e-14]]), shape=[(2, 2), (2, 1000)])
    assert list(got) == [2, 1]  # 1e-14 > 2·eps64 but < 1000·eps64
    with pytest.raises(TypeError, match="dtype"):
        metrics.matrix_rank(s, policy="data", dtype="int8")


def test_ragged_spectra():
    spectra = [np.array([3.0, 1.0]), np.array([1.0, 1e-13, 0.0]), np.array([2.0]), np.zeros(0)]
    shapes = [(3, 2), (3, 3), (1, 4), (0, 2)]
    got = metrics.matrix_rank(spectra, shape=shapes)
    assert isinstance(got, list) and [int(v) for v in got] == [2, 2, 1, 0]  # 1e-13 > 3·eps64
    rep = metrics.report(spectra, shape=shapes)
    for i, s in enumerate(spectra):
        ref = ref_report(s, *shapes[i])
        assert_report_matches({k: v[i] for k, v in rep.items()}, ref, msg=str(i))
    tl = metrics.effective_rank([torch.tensor([3.0, 1.0]), torch.tensor([1.0])])
    assert all(isinstance(v, torch.Tensor) and v.ndim == 0 for v in tl)


@pytest.mark.parametrize("method", ["auto", "exact", "gram"])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
def test_metrics_on_spectra_equal_matrix_versions(rng, method, dtype):
    a = np.concatenate(
        [rng.standard_normal((3, 12, 9)), engineered(rng, 12, 9, "rank_deficient")[None]]
    )
    x = to_framework(a, "torch", dtype)
    s = rs.svdvals(x, method=method, dtype="float64")
    shape, kw = (12, 9), {"method": method}
    checks = {
        "matrix_rank": ({}, {"shape": shape, "dtype": x.dtype}),
        "rank_loss": ({"policy": "nr"}, {"shape": shape, "dtype": x.dtype, "policy": "nr"}),
        "weak_rank_loss": ({"threshold": 0.3}, {"threshold": 0.3}),
        "sv_min": ({}, {}),
        "sv_max": ({}, {}),
        "log10_sv_min": ({}, {}),
        "condition_number": ({}, {}),
        "effective_rank": ({"on": "s2"}, {"on": "s2"}),
        "rankme": ({"eps": 1e-3}, {"eps": 1e-3}),
        "stable_rank": ({}, {}),
        "nuclear_ratio": ({}, {}),
        "energy_rank": ({"tau": 0.7}, {"tau": 0.7}),
    }
    for name, (mkw, skw) in checks.items():
        from_x = getattr(rs, name)(x, **kw, **mkw)
        from_s = getattr(metrics, name)(s, **skw)
        assert torch.equal(from_x, from_s), name
    rep = rs.spectrum_report(x, method=method, policy="nr", tau=0.7)
    mrep = metrics.report(s, shape=shape, dtype=x.dtype, policy="nr", tau=0.7)
    for name in NAMES:
        assert torch.equal(rep[name], mrep[name]), name


def test_unsorted_spectra(rng):
    s = np.abs(rng.standard_normal((5, 17)))
    s[:, 3] = 0.0
    shuffled = np.stack([rng.permutation(row) for row in s])
    a = metrics.report(np.sort(s)[:, ::-1], shape=(17, 20))
    b = metrics.report(shuffled, shape=(17, 20))
    for name in NAMES:
        assert np.array_equal(a[name], b[name]), name
    ascending = np.sort(s[0])
    assert _ri(metrics.sv_max(ascending)) == s[0].max() and _ri(metrics.sv_min(ascending)) == 0.0
    assert _ri(metrics.condition_number(ascending)) == np.inf


def test_spectrum_input_types(rng):
    s = np.sort(rng.random(6))[::-1]
    ref = ref_report(s, 6, 8)["effective_rank"]
    assert isinstance(metrics.effective_rank(s), np.float64)
    assert metrics.effective_rank(s) == pytest.approx(ref, rel=1e-14)
    assert isinstance(metrics.effective_rank(s.tolist()), float)
    assert metrics.effective_rank(s.tolist()) == pytest.approx(ref, rel=1e-14)
    t = metrics.effective_rank(torch.from_numpy(s.copy()))
    assert isinstance(t, torch.Tensor) and t.ndim == 0 and t.dtype == torch.float64
    ints = metrics.matrix_rank(np.array([3, 1, 0]), shape=(3, 3))
    assert ints.dtype == np.int64 and ints == 2
    # float16 spectra are read as their (exact) float32 values, eps from float16
    s16 = s.astype(np.float16)
    r16 = metrics.report(s16)
    assert r16["sv_max"] == float(s16.max())
    with pytest.raises(ValueError):
        metrics.sv_max(np.float64(3.0))  # a scalar is not a spectrum


def test_report_keys():
    r = rs.spectrum_report(W)
    assert set(r) == set(NAMES) == set(metrics.NAMES)
    assert set(metrics.report(np.array([1.0]), shape=(1, 1))) == set(NAMES)


@pytest.mark.parametrize("framework", ["numpy", "torch"])
def test_spectrum_report_consistent_with_single_functions(rng, framework):
    x = to_framework(
        np.concatenate(
            [rng.standard_normal((3, 30, 20)), engineered(rng, 30, 20, "logspace")[None]]
        ),
        framework,
        "float32",
    )
    kw = {"tau": 0.8, "eps": 1e-5, "on": "s2", "threshold": 0.05}
    r = rs.spectrum_report(x, **kw)
    single = {
        "matrix_rank": rs.matrix_rank(x),
        "rank_loss": rs.rank_loss(x),
        "weak_rank_loss": rs.weak_rank_loss(x, threshold=0.05),
        "sv_min": rs.sv_min(x),
        "sv_max": rs.sv_max(x),
        "log10_sv_min": rs.log10_sv_min(x),
        "condition_number": rs.condition_number(x),
        "effective_rank": rs.effective_rank(x, on="s2"),
        "rankme": rs.rankme(x, eps=1e-5),
        "stable_rank": rs.stable_rank(x),
        "nuclear_ratio": rs.nuclear_ratio(x),
        "energy_rank": rs.energy_rank(x, tau=0.8),
    }
    for name, v in single.items():
        assert np.array_equal(as_numpy(r[name]), as_numpy(v)), name
        assert type(r[name]) is type(v)
    s = as_numpy(rs.svdvals(x, dtype="float64"))
    for i in range(4):
        ref = ref_report(s[i], 30, 20, "float32", **kw)
        assert_report_matches({k: as_numpy(v)[i] for k, v in r.items()}, ref, rtol=1e-12)
    # the report's participation_ratio is that of the uncentred spectrum
    pr = as_numpy(rs.participation_ratio(x, center=False))
    assert np.allclose(as_numpy(r["participation_ratio"]), pr, rtol=1e-9, atol=0)


# ---- participation ratio -------------------------------------------------------------------------


def ref_participation_ratio(a: np.ndarray, center: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if center:
        a = a - a.mean(axis=-2, keepdims=True)
    lam = np.linalg.eigvalsh(np.swapaxes(a, -1, -2) @ a)
    tot = lam.sum(-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tot > 0, tot**2 / np.sum(lam**2, -1), 0.0)


@pytest.mark.parametrize("center", [True, False])
@pytest.mark.parametrize("shape", [(50, 7), (7, 50), (1, 5), (5, 1), (4, 30, 12), (2, 3, 9, 9)])
@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_participation_ratio_vs_eigvalsh(rng, center, shape, dtype):
    base = rng.standard_normal(shape) * rng.uniform(0.1, 3, size=shape[-1]) + rng.standard_normal(
        shape[-1]
    )
    x = to_framework(base, "torch", dtype)
    ref = ref_participation_ratio(x.double().numpy(), center)
    got = rs.participation_ratio(x, center=center)
    assert (
        isinstance(got, torch.Tensor)
        and got.dtype == torch.float64
        and tuple(got.shape) == shape[:-2]
    )
    assert np.allclose(got.numpy(), ref, rtol=1e-9, atol=1e-12)
    if dtype != "bfloat16":
        got_np = rs.participation_ratio(x.numpy(), center=center)
        assert np.array_equal(np.asarray(got_np), got.numpy())
    # the same from the singular values of the (centred) data
    a = x.double().numpy()
    if center:
        a = a - a.mean(axis=-2, keepdims=True)
    sp = metrics.participation_ratio(np.linalg.svd(a, compute_uv=False))
    assert np.allclose(sp, ref, rtol=1e-9, atol=1e-12)


def test_participation_ratio_constant_rows_and_ragged(rng):
    const = np.tile(rng.standard_normal(6), (10, 1))
    assert _ri(rs.participation_ratio(const)) == 0.0
    assert _ri(rs.participation_ratio(const, center=False)) == pytest.approx(1.0, rel=1e-12)
    mats = [rng.standard_normal((20, 5)), rng.standard_normal((8, 11))]
    got = rs.participation_ratio(mats)
    assert isinstance(got, list) and len(got) == 2
    for g, a in zip(got, mats):
        assert g == pytest.approx(float(ref_participation_ratio(a, True)), rel=1e-10)


# ---- parameters ----------------------------------------------------------------------------------


def test_energy_rank_tau():
    s = np.array([3.0, 1.0, 0.0, 0.0])
    assert _ri(metrics.energy_rank(s, tau=1.0)) == 2  # zeros never needed
    assert _ri(metrics.energy_rank(s, tau=1e-12)) == 1
    for bad in (0.0, -0.5, 1.5, np.nan):
        with pytest.raises(ValueError, match="tau"):
            metrics.energy_rank(s, tau=bad)
        with pytest.raises(ValueError, match="tau"):
            rs.energy_rank(W, tau=bad)


def test_rankme_eps():
    s = np.array([3.0, 1.0, 0.0])
    # eps = 0: rankme is the effective rank (0 ln 0 = 0 for the zero value)
    assert _ri(metrics.rankme(s, eps=0.0)) == pytest.approx(
        _ri(metrics.effective_rank(s)), rel=1e-15
    )
    big = _ri(metrics.rankme(s, eps=0.1))
    p = s / s.sum() + 0.1
    assert big == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-14)
    with pytest.raises(ValueError, match="eps"):
        metrics.rankme(s, eps=-1e-7)


def test_on_argument():
    with pytest.raises(ValueError, match="on"):
        metrics.effective_rank(np.array([1.0]), on="l")
    with pytest.raises(ValueError, match="on"):
        rs.effective_rank(W, on="S")


def test_weak_rank_loss_threshold():
    s = np.array([1.0, 1e-3, 9e-4, 1e-9, 0.0])
    assert _ri(metrics.weak_rank_loss(s)) == 3  # l = 1e-6 is not < 1e-6; 8.1e-7, 1e-18, 0 are
    assert _ri(metrics.weak_rank_loss(s, threshold=1.0 + 1e-12)) == 5
    assert _ri(metrics.weak_rank_loss(s, threshold=0.0)) == 0


def test_log10_and_condition_of_singular_spectra():
    s = np.array([[4.0, 1e-9, 0.0], [4.0, 2.0, 1e-9]])
    assert np.array_equal(metrics.log10_sv_min(s), [-np.inf, -9.0])
    c = metrics.condition_number(s)
    assert c[0] == np.inf and c[1] == pytest.approx(4e9, rel=1e-15)
