"""SpectralMonitor, capture, writers and the framework callbacks in the situations of real training
loops: autocast, frozen sub-modules, lazy modules, reused callbacks, vanished log folders, bad
arguments."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from rankscope.torch import SpectralMonitor, capture


def _mlp(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 96), torch.nn.ReLU(), torch.nn.Linear(96, 32))


def _s(w: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(w.detach().double().numpy(), compute_uv=False)


def test_float32_route_ignores_an_enclosing_autocast():
    """mon.step() inside the training step's autocast region: the float32 Gram route must not run its
    matmul in bfloat16 (sv_max was off by 2e-5 and stable_rank by 4e-4 relative)."""
    net = _mlp()
    mon = SpectralMonitor(net, metrics=["sv_max", "stable_rank"])
    assert mon.precision == "float32"
    mon.measure()
    outside = mon.latest
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mon.measure()
    inside = mon.latest
    assert inside == outside
    for name, p in (("0.weight", net[0].weight), ("2.weight", net[2].weight)):
        s = _s(p)
        assert inside[name]["sv_max"] == pytest.approx(s[0], rel=1e-6)
        assert inside[name]["stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-5)


def _with_frozen_bn():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16), torch.nn.Linear(16, 4))
    m.train()
    m[1].eval()  # fine-tuning with frozen BatchNorm statistics
    return m


def test_capture_restores_each_submodule_mode():
    m = _with_frozen_bn()
    capture(m, [torch.randn(32, 8)], progress=False)
    assert [x.training for x in m] == [True, False, True]
    m.eval()
    m[0].train()
    capture(m, [torch.randn(32, 8)], progress=False)
    assert [m.training] + [x.training for x in m] == [False, True, False, False]


def test_monitor_activations_keep_a_frozen_batchnorm_frozen():
    m = _with_frozen_bn()
    mon = SpectralMonitor(m, activations=True, probe=torch.randn(32, 8), metrics=["alpha", "rankme"])
    mon.step()
    assert [x.training for x in m] == [True, False, True]
    mean = m[1].running_mean.clone()
    m(torch.randn(32, 8) + 5)  # the next training forward: a frozen BN does not update its statistics
    assert torch.equal(m[1].running_mean, mean)


def test_lazy_modules_are_measured_once_initialised():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.LazyLinear(24), torch.nn.ReLU(), torch.nn.Linear(24, 6))
    mon = SpectralMonitor(m, metrics=["sv_max"])
    mon.measure()  # before the first forward: the lazy weight has no shape yet
    assert list(mon.latest) == ["2.weight"]
    m(torch.randn(4, 40))
    mon.measure()
    got = mon.latest
    assert list(got) == ["0.weight", "2.weight"]
    assert got["0.weight"]["sv_max"] == pytest.approx(_s(m[0].weight)[0], rel=1e-6)


def test_a_one_shot_probe_is_refused():
    """A generator probe is used up by the first measurement: later ones had no activation values at
    all, silently (the docstring asks for a re-iterable)."""
    net = _mlp()
    with pytest.raises(TypeError, match="re-iterable"):
        SpectralMonitor(net, activations=True, metrics=["rankme"], probe=(torch.randn(8, 64) for _ in range(2)))
    with pytest.raises(TypeError, match="re-iterable"):
        SpectralMonitor(net, activations=True, metrics=["rankme"], probe=iter([torch.randn(8, 64)]))
    batches = [(torch.randn(8, 64), torch.zeros(8)) for _ in range(2)]
    mon = SpectralMonitor(net, activations=True, metrics=["rankme"], probe=batches)  # a list is fine
    mon.step()
    mon.step()
    assert mon.latest["0"]["rankme"] > 1


def test_layers_matching_nothing_is_an_error():
    net = _mlp()
    mon = SpectralMonitor(net, layers="fc", metrics=["alpha"])  # a Sequential's names are 0, 2
    with pytest.raises(ValueError, match=r"layers='fc' matches no parameter.*0\.weight, 0\.bias"):
        mon.step()


@pytest.mark.parametrize("kwargs, err, match", [
    ({"alpha_range": 5}, ValueError, "alpha_range"),
    ({"alpha_range": (1, 2, 3)}, ValueError, "alpha_range"),
    ({"on_event": 3}, TypeError, "on_event"),
    ({"forward": "model"}, TypeError, "forward"),
])
def test_bad_arguments_say_which(kwargs, err, match):
    with pytest.raises(err, match=match):
        SpectralMonitor(_mlp(), metrics=["alpha"], **kwargs)


def test_csv_writer_creates_and_recreates_its_folder(tmp_path):
    pd = pytest.importorskip("pandas")
    folder = tmp_path / "runs" / "exp"
    path = folder / "monitor.csv"
    net = _mlp()
    mon = SpectralMonitor(net, metrics=["sv_max"], log=path)  # the run's folder is not there yet
    mon.step()
    shutil.rmtree(tmp_path / "runs")  # a clean-up removes it mid-run
    mon.step()
    mon.close()
    df = pd.read_csv(path)
    h = mon.history
    h2 = h[h["step"] == 2]
    assert df["step"].tolist() == [2, 2]
    assert df["layer"].tolist() == h2["layer"].tolist()
    np.testing.assert_allclose(df["value"], h2["value"], rtol=1e-15)


