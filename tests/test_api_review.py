"""Inputs a demanding numpy/PyTorch/JAX user passes to the array API, checked against numpy or closed forms."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import rankscope as rs
import torch
from rankscope import metrics

# ---- options a function does not take are refused, not ignored ------------------------------------


@pytest.mark.parametrize("fn", [rs.sv_min, rs.sv_max, rs.log10_sv_min, rs.condition_number, rs.stable_rank,
                                rs.nuclear_ratio])
@pytest.mark.parametrize("kw", [{"atol": 0.5}, {"policy": "junk"}, {"tau": 0.5}, {"on": "s2"}, {"foo": 1}])
def test_simple_metrics_refuse_options_they_do_not_take(fn, kw):
    """sv_max(x, atol=0.5) returned s₁ as if atol meant something; foo=1 raised 'evaluate() got ...'."""
    (name,) = kw
    with pytest.raises(TypeError, match=rf"{fn.__name__}\(\) got an unexpected keyword argument '{name}'"):
        fn(np.eye(3), **kw)


# ---- tau, eps, threshold: wrong types name the argument ------------------------------------------


@pytest.mark.parametrize(
    "call, name",
    [
        (lambda v: rs.energy_rank(np.eye(3), tau=v), "tau"),
        (lambda v: metrics.energy_rank([3.0, 1.0], tau=v), "tau"),
        (lambda v: rs.rankme(np.eye(3), eps=v), "eps"),
        (lambda v: metrics.rankme([3.0, 1.0], eps=v), "eps"),
        (lambda v: rs.weak_rank_loss(np.eye(3), threshold=v), "threshold"),
        (lambda v: metrics.weak_rank_loss([3.0, 1.0], threshold=v), "threshold"),
        (lambda v: rs.spectrum_report(np.eye(3), tau=v), "tau"),
        (lambda v: metrics.report([3.0, 1.0], shape=(2, 2), threshold=v), "threshold"),
    ],
)
@pytest.mark.parametrize("bad", [None, "0.5", [0.5], np.array([0.5, 0.9]), True, 1j])
def test_metric_parameters_of_the_wrong_type(call, name, bad):
    """Was: "float() argument must be ... not 'NoneType'", "could not convert string to float",
    "only 0-dimensional arrays ...", and tau="0.5" was accepted as 0.5."""
    with pytest.raises(TypeError, match=rf"^{name} must be a real number, got "):
        call(bad)


def test_metric_parameters_of_numeric_types_still_work():
    s = np.array([3.0, 1.0])
    assert metrics.energy_rank(s, tau=np.float32(0.5)) == 1
    assert metrics.energy_rank(s, tau=1) == 2
    assert metrics.weak_rank_loss(s, threshold=np.int64(2)) == 1
    p = np.array([0.75, 0.25]) + 1e-3
    assert metrics.rankme(s, eps=np.float64(1e-3)) == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)


def test_rankme_infinite_eps_is_refused():
    """eps=inf gave rankme 0.0 (p = inf, exp(-inf))."""
    with pytest.raises(ValueError, match="eps must be a finite non-negative number, got inf"):
        metrics.rankme([3.0, 1.0], eps=float("inf"))
    with pytest.raises(ValueError, match="eps must be a finite"):
        rs.rankme(np.eye(3), eps=np.inf)


# ---- torch tensors that are not plain strided data ---------------------------------------------


def _neg_bit(values: torch.Tensor) -> torch.Tensor:
    """A real tensor equal to `values` whose memory holds −values and whose negative bit is set: what
    complex_tensor.conj().imag gives."""
    out = torch.complex(torch.zeros_like(values), -values).conj().imag
    assert out.is_neg() and torch.equal(out, values)
    return out


def test_negative_bit_tensors_are_read_by_value(rng):
    """Was: RuntimeError "Can't call numpy() on Tensor that has negative bit set" from the metrics
    and participation_ratio (svdvals, whose values do not depend on the sign, already worked)."""
    s = _neg_bit(torch.tensor([3.0, 1.0], dtype=torch.float64))
    assert float(metrics.stable_rank(s)) == pytest.approx(10 / 9, rel=1e-15)
    assert float(metrics.sv_max(s)) == 3.0
    with pytest.raises(ValueError, match="non-negative"):
        metrics.sv_max(_neg_bit(torch.tensor([-3.0, -1.0])))
    x = torch.from_numpy(rng.standard_normal((7, 4)))
    ref = rs.participation_ratio(x.numpy())
    assert float(rs.participation_ratio(_neg_bit(x))) == pytest.approx(ref, rel=1e-13)
    assert float(rs.participation_ratio(_neg_bit(x), center=False)) == pytest.approx(
        rs.participation_ratio(x.numpy(), center=False), rel=1e-13)
    np.testing.assert_allclose(rs.svdvals(_neg_bit(x)).numpy(), np.linalg.svd(x.numpy(), compute_uv=False),
                               rtol=1e-13)


@pytest.mark.parametrize(
    "make, fragment",
    [
        (lambda: torch.eye(3).to_sparse(), r"x: sparse tensors \(torch.sparse_coo\) are not supported; pass x.to_dense\(\)"),
        (lambda: torch.eye(3).to_sparse_csr(), r"x: sparse tensors \(torch.sparse_csr\) are not supported"),
        (lambda: torch.nested.nested_tensor([torch.ones(2, 3), torch.ones(3, 3)]),
         r"x: nested tensors are not supported; pass list\(x.unbind\(\)\)"),
        (lambda: torch.quantize_per_tensor(torch.eye(3), 0.1, 0, torch.quint8),
         r"x: quantized tensors \(torch.quint8\) are not supported; pass x.dequantize\(\)"),
    ],
    ids=["coo", "csr", "nested", "quantized"],
)
def test_unsupported_torch_layouts_are_named(make, fragment):
    """Was: BufferError "Can't export tensors with layout other than torch.strided" (sparse),
    RuntimeError "Internal error: NestedTensorImpl doesn't support sizes" (nested), RuntimeError
    "Creation of quantized tensor requires quantized dtype" (quantized)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nested tensors are a prototype
        x = make()
    for fn in (rs.svdvals, rs.matrix_rank, rs.participation_ratio):
        with pytest.raises(TypeError, match=fragment):
            fn(x)
    with pytest.raises(TypeError, match=r"x\[0\]: " + fragment[3:].split(";")[0]):
        rs.svdvals([x])


# ---- JAX bfloat16 singular values ------------------------------------------------------------------


def test_jax_bfloat16_singular_values():
    """Was: TypeError "bfloat16 singular values from a DLPack-only object; convert them to float32",
    though JAX bfloat16 matrices are read and float16 values work."""
    jnp = pytest.importorskip("jax.numpy")
    s = jnp.array([3.0, 1.0, 0.5], dtype=jnp.bfloat16)  # exact in bfloat16
    assert float(metrics.stable_rank(s)) == pytest.approx(10.25 / 9, rel=1e-7)
    assert float(metrics.sv_min(s)) == 0.5
    # the stored dtype sets the rank tolerance 3 · eps(bfloat16) = 3 · 2**-7, which 2**-7 and 0.5 straddle
    assert int(metrics.matrix_rank(jnp.array([3.0, 2**-7], dtype=jnp.bfloat16))) == 1
    assert int(metrics.matrix_rank(jnp.array([3.0, 0.5], dtype=jnp.bfloat16))) == 2
    assert [float(v) for v in metrics.sv_max([s, s[:1]])] == [3.0, 3.0]


# ---- numpy masked arrays and frames --------------------------------------------------------------


def test_masked_entries_are_refused(rng):
    """Was: the values under the mask were used silently (sv_max of [3 (masked), 1] gave 3.0)."""
    s = np.ma.masked_array([3.0, 1.0], mask=[True, False])
    with pytest.raises(ValueError, match=r"s: masked array with 1 masked entries; pass s.filled\(\.\.\.\) or "):
        metrics.sv_max(s)
    x = np.ma.masked_array(rng.standard_normal((4, 3)), mask=np.eye(4, 3, dtype=bool))
    for fn in (rs.svdvals, rs.matrix_rank, rs.participation_ratio):
        with pytest.raises(ValueError, match=r"x: masked array with 3 masked entries"):
            fn(x)
    with pytest.raises(ValueError, match=r"x\[1\]: masked array"):
        rs.svdvals([x.data, x])


def test_masked_arrays_without_masked_entries_are_read_in_place(rng):
    a = rng.standard_normal((5, 4))
    for x in (np.ma.masked_array(a), np.ma.masked_array(a, mask=np.zeros(a.shape, bool))):
        np.testing.assert_allclose(rs.svdvals(x), np.linalg.svd(a, compute_uv=False), rtol=1e-13)
        assert type(rs.svdvals(x)) is np.ndarray
    assert metrics.sv_max(np.ma.masked_array([3.0, 1.0])) == 3.0


def test_frame_of_non_numbers_names_the_dtype():
    """Was: "x: expected an array, got DataFrame" (nothing about why)."""
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame({"a": [1.0, 2.0], "b": ["x", "y"]})
    with pytest.raises(TypeError, match=r"x: expected an array of numbers, got DataFrame \(numpy reads it as "
                                        r"dtype object\)"):
        rs.svdvals(frame)
    np.testing.assert_allclose(rs.svdvals(pd.DataFrame({"a": [1, 2], "b": [3.0, 4.0]})),
                               np.linalg.svd(np.array([[1.0, 3.0], [2.0, 4.0]]), compute_uv=False), rtol=1e-14)


# ---- participation_ratio of a list names the item ---------------------------------------------


def test_participation_ratio_list_errors_name_the_item(rng):
    """Was: "x must have at least 2 dimensions", "x contains NaN or Inf", "x: complex input" for the
    second item of a list, as if the list itself were wrong (svdvals says "matrix x[1]")."""
    good = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"^x\[1\] must have at least 2 dimensions \(\.\.\., m, n\), got shape \(3,\)"):
        rs.participation_ratio([good, np.ones(3)])
    with pytest.raises(ValueError, match=r"^x\[1\] contains NaN or Inf; pass check_finite=False"):
        rs.participation_ratio([good, np.full((2, 2), np.nan)])
    with pytest.raises(TypeError, match=r"^x\[1\]: complex input"):
        rs.participation_ratio([good, np.ones((2, 2), complex)])
    with pytest.raises(ValueError, match=r"^x\[1\] is on device 'meta'"):
        rs.participation_ratio([torch.ones(3, 3), torch.ones(2, 2, device="meta")])
    # the values: each item's own PR, as for the item alone
    items = [good, torch.from_numpy(rng.standard_normal((5, 2))), rng.standard_normal((2, 6, 3))]
    got = rs.participation_ratio(items)
    for g, a in zip(got, items):
        np.testing.assert_allclose(np.asarray(g), np.asarray(rs.participation_ratio(a)), rtol=1e-15)
    assert isinstance(got[1], torch.Tensor) and got[2].shape == (2,)
    c = good - good.mean(0)
    ev = np.linalg.eigvalsh(c.T @ c)
    assert float(got[0]) == pytest.approx(ev.sum() ** 2 / np.sum(ev**2), rel=1e-12)
