"""SpectralMonitor, capture, writers and the framework callbacks in the situations of real training
loops: autocast, frozen sub-modules, lazy modules, reused callbacks, vanished log folders, bad
arguments."""

from __future__ import annotations

import shutil
from types import SimpleNamespace

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


def test_hf_callback_follows_a_new_model():
    """The same callback in a second Trainer (hyperparameter search, model_init): the monitor must
    measure the new model, not keep measuring the first one."""
    pytest.importorskip("transformers")
    from rankscope.torch.hf import SpectralMonitorCallback
    from transformers import TrainerState

    cb = SpectralMonitorCallback(metrics=["sv_max"])
    first, second = _mlp(0), _mlp(1)
    s1 = TrainerState()
    cb.on_train_begin(None, s1, None, model=first)
    s1.global_step = 1
    cb.on_step_end(None, s1, None)
    mon1 = cb.monitor
    cb.on_train_begin(None, s1, None, model=first)  # train() again on the same model: same monitor
    assert cb.monitor is mon1
    s2 = TrainerState()
    cb.on_train_begin(None, s2, None, model=second)
    s2.global_step = 1
    cb.on_step_end(None, s2, None)
    assert cb.monitor.model is second
    assert cb.monitor.latest["0.weight"]["sv_max"] == pytest.approx(_s(second[0].weight)[0], rel=1e-6)
    assert [e["step"] for e in s2.log_history] == [1]


def test_lightning_callback_follows_a_new_module_and_trainer():
    pytest.importorskip("lightning.pytorch")
    from rankscope.torch.lightning import SpectralMonitorCallback

    class Logger:
        def __init__(self):
            self.steps = []

        def log_metrics(self, metrics, step):
            self.steps.append((step, metrics["spectral/sv_max/0.weight"]))

    cb = SpectralMonitorCallback(metrics=["sv_max"])
    first, second = _mlp(0), _mlp(1)
    for module in (first, second):
        trainer = SimpleNamespace(global_step=0, loggers=[Logger()])
        cb.setup(trainer, module, "fit")
        cb.on_train_start(trainer, module)
        trainer.global_step = 1
        cb.on_train_batch_end(trainer, module, None, None, 0)
        cb.on_train_end(trainer, module)
        want = _s(module[0].weight)[0]
        assert cb.monitor.model is module
        assert [st for st, _ in trainer.loggers[0].steps] == [1]
        assert trainer.loggers[0].steps[0][1] == pytest.approx(want, rel=1e-6)


def test_a_failed_measurement_does_not_count_as_one():
    """A measurement that raised (no batch for the activations, caught by the loop) left the step
    marked as measured: the next step() skipped the due measurement for `every` steps."""
    net = _mlp()
    mon = SpectralMonitor(net, every=3, activations=True, metrics=["sv_max", "rankme"])
    with pytest.raises(ValueError, match="need a batch"):
        mon.step()
    assert mon.records == 0
    assert mon.step(torch.randn(16, 64))  # step 2: the first measurement is still due
    assert mon.records == 1 and sorted(set(mon.history["step"])) == [2]
    assert [mon.step(torch.randn(16, 64)) for _ in range(3)] == [False, False, True]
