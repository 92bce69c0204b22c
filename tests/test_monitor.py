"""rankscope.torch.SpectralMonitor: values against numpy float64 and the scanner, scheduling, events,
history, writers, layer-wise schedules."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rankscope
from rankscope.torch import (
    MonitorEvent,
    SpectralMonitor,
    SpectralMonitorWarning,
    TableWriter,
    apply_multipliers,
    layer_param_groups,
    tempbalance_multipliers,
)
from rankscope.torch.monitor import WEIGHT_METRICS

F64 = np.finfo(np.float64).eps


class Net(torch.nn.Module):
    """A conv layer, an embedding, linear layers of two shapes (two of one shape), a 1-D bias."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 12, 3)
        self.emb = torch.nn.Embedding(50, 16)
        self.fc1 = torch.nn.Linear(16, 40)
        self.fc2 = torch.nn.Linear(40, 40)
        self.fc3 = torch.nn.Linear(40, 40)
        self.head = torch.nn.Linear(40, 7)

    def forward(self, x):
        return self.head(torch.relu(self.fc3(torch.relu(self.fc2(torch.relu(self.fc1(x)))))))


def _planted(n_out: int, n_in: int, s: np.ndarray, rng) -> torch.Tensor:
    u, _ = np.linalg.qr(rng.standard_normal((n_out, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((n_in, len(s))))
    return torch.from_numpy(((u * s) @ v.T).astype(np.float32))


def _hill_median(s: np.ndarray) -> float:
    lam = np.sort(s.astype(np.float64) ** 2)
    i = len(lam) // 2
    n = len(lam) - i
    return 1 + n / np.sum(np.log(lam[i:] / lam[i]))


@pytest.fixture
def net():
    torch.manual_seed(0)
    return Net()


def test_values_equal_numpy_float64(net):
    rng = np.random.default_rng(1)
    with torch.no_grad():  # a planted rank-deficient layer: rank 25 of 40, the rest at 1e-9 relative
        net.fc2.weight.copy_(_planted(40, 40, np.concatenate([np.linspace(2, 1, 25), np.full(15, 2e-9)]), rng))
    mon = SpectralMonitor(net, layers=r"fc\d|head", metrics=["alpha", "stable_rank", "rank_loss", "log10_sv_min",
                                                             "sv_max", "effective_rank", "log_norm",
                                                             "log_spectral_norm"])
    assert mon.step()
    got = mon.latest
    assert set(got) == {"fc1.weight", "fc2.weight", "fc3.weight", "head.weight"}
    for name in got:
        W = dict(net.named_parameters())[name].detach().numpy().astype(np.float64)
        s = np.linalg.svd(W, compute_uv=False)
        v = got[name]
        assert v["sv_max"] == pytest.approx(s[0], rel=1e-12)
        # the float32 data's own floor: values are those of the stored weights, to 1e-9·s1 absolute
        assert 10 ** v["log10_sv_min"] == pytest.approx(s[-1], rel=1e-6, abs=1e-9 * s[0])
        assert v["stable_rank"] == pytest.approx(np.sum(s**2) / s[0] ** 2, rel=1e-12)
        assert v["log_norm"] == pytest.approx(np.log10(np.sum(s**2)), rel=1e-12)
        assert v["log_spectral_norm"] == pytest.approx(np.log10(s[0] ** 2), rel=1e-12)
        assert v["alpha"] == pytest.approx(_hill_median(s), rel=1e-9)
        p = s / s.sum()
        assert v["effective_rank"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)
        tol = s[0] * max(W.shape) * np.finfo(np.float32).eps  # numpy's rank rule at the stored dtype
        assert v["rank_loss"] == min(W.shape) - np.count_nonzero(s > tol)
    assert got["fc2.weight"]["rank_loss"] == 15
    assert got["fc1.weight"]["rank_loss"] == 0


@pytest.mark.parametrize("estimator", ["median", "ww", "xmin_peak"])
def test_values_equal_the_scanner(net, estimator):
    mon = SpectralMonitor(net, metrics=list(WEIGHT_METRICS), estimator=estimator)
    mon.step()
    rep = rankscope.scan(net, estimator=estimator, progress=False)
    rows = rep.layers[rep.layers["status"] == "success"].set_index("name")
    assert set(mon.latest) == set(rows.index)  # conv, embedding, every linear; no bias
    for name, vals in mon.latest.items():
        for metric, v in vals.items():
            want = float(rows.loc[name, metric])
            assert v == pytest.approx(want, rel=1e-12, abs=1e-300) or (math.isnan(v) and math.isnan(want)), \
                (name, metric)


def test_every_and_explicit_steps(net):
    mon = SpectralMonitor(net, every=3, metrics=["alpha"])
    measured = [mon.step() for _ in range(8)]
    assert measured == [True, False, False, True, False, False, True, False]
    assert sorted(set(mon.history["step"])) == [1, 4, 7]
    mon2 = SpectralMonitor(net, every=10, metrics=["alpha"])
    got = [s for s in (0, 5, 9, 10, 19, 25, 26, 40) if mon2.step(step=s)]
    assert got == [0, 10, 25, 40]  # at least `every` steps since the last measurement
    assert mon2.records == 4
    assert [mon2.step(step=s) for s in (3, 5, 13)] == [True, False, True]  # a restart from step 3


def test_measures_the_parameters_in_place(net):
    mon = SpectralMonitor(net, layers="fc2", metrics=["sv_max"])
    mon.step()
    with torch.no_grad():
        net.fc2.weight.mul_(3.0)
    mon.measure()
    h = mon.history
    first, second = h["value"].tolist()
    assert second == pytest.approx(3 * first, rel=1e-6)


def test_replans_when_parameters_change(net):
    mon = SpectralMonitor(net, metrics=["sv_max"], precision="float64")
    mon.step()
    net.fc3 = torch.nn.Linear(40, 24)
    net.extra = torch.nn.Linear(24, 5)
    mon.measure()
    last = mon.latest
    assert "extra.weight" in last
    s = np.linalg.svd(net.fc3.weight.detach().double().numpy(), compute_uv=False)
    assert last["fc3.weight"]["sv_max"] == pytest.approx(s[0], rel=1e-12)


def test_tied_weights_once():
    torch.manual_seed(0)
    m = torch.nn.Module()
    m.a = torch.nn.Linear(20, 30, bias=False)
    m.b = torch.nn.Linear(20, 30, bias=False)
    m.b.weight = m.a.weight
    mon = SpectralMonitor(m, metrics=["alpha"])
    mon.step()
    assert list(mon.latest) == ["a.weight"]


def test_split_qkv_as_the_scanner():
    torch.manual_seed(0)
    mha = torch.nn.MultiheadAttention(32, 4)
    fused = SpectralMonitor(mha, metrics=["sv_max"], precision="float64")
    split = SpectralMonitor(mha, metrics=["sv_max"], precision="float64", split_qkv=True)
    fused.step()
    split.step()
    assert "in_proj_weight" in fused.latest and "in_proj_weight" not in split.latest
    rows = rankscope.scan(mha, split_qkv=True, progress=False).layers.set_index("name")
    qkv = [n for n in split.latest if n != "out_proj.weight"]
    assert len(qkv) == 3
    W = mha.in_proj_weight.detach().double().numpy()
    for i, name in enumerate(qkv):  # the q, k, v blocks in order
        assert split.latest[name]["sv_max"] == pytest.approx(float(rows.loc[name, "sv_max"]), rel=1e-12)
        assert split.latest[name]["sv_max"] == pytest.approx(np.linalg.norm(W[32 * i:32 * (i + 1)], 2), rel=1e-12)


def test_history_and_pivot(net):
    mon = SpectralMonitor(net, metrics=["alpha", "rank_loss"])
    for _ in range(3):
        mon.step()
    h = mon.history
    assert list(h.columns) == ["step", "layer", "metric", "value"]
    n_layers = len(mon.latest)
    assert len(h) == 3 * n_layers * 2
    p = mon.pivot("alpha")
    assert list(p.index) == [1, 2, 3] and p.shape[1] == n_layers
    with pytest.raises(KeyError, match="stable_rank"):
        mon.pivot("stable_rank")


def _collapse(layer: torch.nn.Linear, keep: int, rng) -> None:
    out, inp = layer.weight.shape
    s = np.concatenate([np.linspace(1, 0.5, keep), np.full(min(out, inp) - keep, 1e-10)])
    with torch.no_grad():
        layer.weight.copy_(_planted(out, inp, s, rng))


def test_rank_loss_rise_fires_once_and_rearms(net):
    rng = np.random.default_rng(2)
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, layers="fc", metrics=["rank_loss"], on_event=events.append)
    mon.step()
    assert events == []
    saved = net.fc2.weight.detach().clone()
    _collapse(net.fc2, 10, rng)
    mon.step()
    mon.step()  # still collapsed: no second event
    assert [(e.layer, e.kind, e.value, e.reference) for e in events] == [("fc2.weight", "rank_loss_rise", 30, 0)]
    assert events[0].step == 2 and "fc2.weight" in events[0].message
    with torch.no_grad():
        net.fc2.weight.copy_(saved)
    mon.step()
    _collapse(net.fc2, 10, rng)
    mon.step()  # recovered in between: it fires again
    assert len(events) == 2 and events[1].step == 5


def test_events_warn_without_a_callback(net):
    rng = np.random.default_rng(3)
    mon = SpectralMonitor(net, layers="fc2", metrics=["rank_loss"])
    mon.step()
    _collapse(net.fc2, 5, rng)
    with pytest.warns(SpectralMonitorWarning, match="fc2.weight.*rank loss rose from 0 to 35") as rec:
        mon.step()
    assert rec[0].filename == __file__  # attributed to the caller's step()


def test_alpha_leaving_the_range(net):
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, layers="fc2", metrics=["alpha"], alpha_range=(2.0, 20.0), min_evals=1,
                          on_event=events.append)
    mon.step()
    assert 2 < mon.latest["fc2.weight"]["alpha"] < 20 and events == []
    # a power-law spectrum s_j = j^-2 (λ_j = j^-4): a density exponent 1 + 1/4, far below 2
    with torch.no_grad():
        net.fc2.weight.copy_(_planted(40, 40, np.arange(1, 41, dtype=np.float64) ** -2.0, np.random.default_rng(6)))
    mon.step()
    a = mon.latest["fc2.weight"]["alpha"]
    assert a < 2
    assert [(e.kind, e.value, e.reference, e.step) for e in events] == [("alpha_out_of_range", a, 2.0, 2)]
    mon.step()
    assert len(events) == 1


def test_alpha_outside_from_the_start_is_not_an_event(net):
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, layers="fc2", metrics=["alpha"], alpha_range=(1.5, 2.0), min_evals=1,
                          on_event=events.append)
    mon.step()
    mon.step()
    assert mon.latest["fc2.weight"]["alpha"] > 2.0 and events == []


def test_alpha_events_need_min_evals(net):
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, layers="fc2", metrics=["alpha", "num_evals"], alpha_range=(2.0, 20.0),
                          on_event=events.append)  # default min_evals=50; fc2 has 40 eigenvalues
    mon.step()
    assert mon.latest["fc2.weight"]["num_evals"] == 40
    with torch.no_grad():
        net.fc2.weight.copy_(_planted(40, 40, np.arange(1, 41, dtype=np.float64) ** -2.0, np.random.default_rng(6)))
    mon.step()
    assert mon.latest["fc2.weight"]["alpha"] < 2 and events == []


def test_hysteresis_and_warmup(net):
    rng = np.random.default_rng(8)
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, layers="fc2", metrics=["rank_loss"], rank_loss_rise=0.25, on_event=events.append,
                          warmup=2)
    mon.step()  # step 1: before warm-up, not a reference
    _collapse(net.fc2, 36, rng)  # rank loss 4 at step 2: the reference
    mon.step()
    # threshold: 10 above the reference 4. 14 fires; 11 (rise 7 > 10/2) does not re-arm, so 14 again
    # does not fire; 5 (rise 1 <= 5) re-arms; 16 fires again
    for keep, want in [(26, 1), (29, 1), (26, 1), (35, 1), (24, 2)]:
        _collapse(net.fc2, keep, rng)
        mon.step()
        assert len(events) == want, (keep, [(e.step, e.value) for e in events])
    assert [(e.step, e.value, e.reference) for e in events] == [(3, 14, 4), (7, 16, 4)]


def test_measure_is_complete_on_the_cpu(net):
    mon = SpectralMonitor(net, metrics=["alpha"])
    mon.measure()
    assert len(mon.seconds) == mon.records == 1 and mon._pending == []


def test_probe_as_a_list_of_batches(net):
    torch.manual_seed(9)
    batches = [(torch.randn(32, 16), torch.randint(0, 7, (32,))) for _ in range(3)]
    mon = SpectralMonitor(net, weights=False, activations="fc1", probe=batches, metrics=["mean_std"])
    mon.step()
    with torch.no_grad():
        h = torch.cat([net.fc1(x) for x, _ in batches]).double()
    assert mon.latest["fc1"]["mean_std"] == pytest.approx(float(h.std(dim=0).mean()), rel=1e-6)


def test_non_finite_weights_become_nan_and_an_event(net):
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, layers="fc", metrics=["alpha", "rank_loss"], on_event=events.append)
    with torch.no_grad():
        net.fc2.weight[3, 4] = float("nan")
    mon.step()
    v = mon.latest
    assert math.isnan(v["fc2.weight"]["alpha"]) and math.isnan(v["fc2.weight"]["rank_loss"])
    assert math.isfinite(v["fc1.weight"]["alpha"])
    assert [(e.layer, e.kind) for e in events] == [("fc2.weight", "non_finite")]


def test_a_failed_fit_on_finite_weights_is_not_non_finite():
    """A layer whose power-law fit fails (more than half its singular values exactly 0) keeps its
    other metrics and checks; only NaN/Inf weights are a non_finite event."""
    torch.manual_seed(0)
    m = torch.nn.Linear(40, 40, bias=False)
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(m, metrics=["alpha", "rank_loss"], on_event=events.append)
    mon.step()
    with torch.no_grad():
        m.weight[5:] = 0
        m.weight[:, 5:] = 0
    mon.step()
    v = mon.latest["weight"]
    assert math.isnan(v["alpha"]) and v["rank_loss"] == 35
    assert [(e.kind, e.value) for e in events] == [("rank_loss_rise", 35)]


def test_activations_rankme_drop(net):
    torch.manual_seed(4)
    x = torch.randn(256, 16)
    y = torch.randint(0, 7, (256,))
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, weights=False, activations=["fc2", "head"], probe=(x, y), num_classes=7,
                          on_event=events.append)
    mon.step()
    first = mon.latest
    # the oracle: RankMe of fc2's outputs on the probe, in float64 (eps 1e-7 as RankMe's paper)
    with torch.no_grad():
        h = net.fc2(torch.relu(net.fc1(x))).double().numpy()
    s = np.linalg.svd(h, compute_uv=False)
    p = s / s.sum() + 1e-7
    assert first["fc2"]["rankme"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-6)
    assert set(first["fc2"]) == {"rankme", "mean_std", "mean_pairwise_cosine", "nc1"}
    _collapse(net.fc2, 2, np.random.default_rng(5))  # fc2's outputs now span 2 directions (+ bias)
    mon.step()
    kinds = [(e.layer, e.kind) for e in events]
    assert kinds == [("fc2", "rankme_drop")]
    assert mon.latest["fc2"]["rankme"] < 0.5 * first["fc2"]["rankme"]


def test_activations_on_the_step_batch(net):
    x = torch.randn(64, 16)
    mon = SpectralMonitor(net, weights=False, activations="fc1", metrics=["mean_std"])
    with pytest.raises(ValueError, match="need a batch"):
        mon.step()
    mon.step(x)
    with torch.no_grad():
        want = torch.relu(torch.zeros(1)) + net.fc1(x).double().std(dim=0).mean()
    assert mon.latest["fc1"]["mean_std"] == pytest.approx(float(want), rel=1e-6)


def test_float32_precision(net):
    with pytest.raises(ValueError, match="rank_loss"):
        SpectralMonitor(net, precision="float32", metrics=["alpha", "rank_loss"])
    m64 = SpectralMonitor(net, metrics=["alpha", "stable_rank"])
    m32 = SpectralMonitor(net, metrics=["alpha", "stable_rank"], precision="float32")
    m64.step()
    m32.step()
    for name, v in m64.latest.items():
        w = m32.latest[name]
        # float32 Gram eigenvalues: relative error ~ k·eps32 on the large end; alpha's own standard
        # error (alpha - 1)/sqrt(n) is far larger
        assert w["stable_rank"] == pytest.approx(v["stable_rank"], rel=1e-4)
        assert abs(w["alpha"] - v["alpha"]) < 0.01 * (v["alpha"] - 1)


def test_auto_precision_and_the_float32_fallback(net):
    assert SpectralMonitor(net, metrics=["alpha", "stable_rank"]).precision == "float32"
    assert SpectralMonitor(net, metrics=["alpha", "rank_loss"]).precision == "float64"
    assert SpectralMonitor(net, metrics=["alpha", "effective_rank"]).precision == "float64"
    with pytest.raises(ValueError, match="effective_rank"):
        SpectralMonitor(net, metrics=["effective_rank"], precision="float32")
    # a collapsing layer: 30 of 40 singular values at 1e-9 relative; its median eigenvalue is far below
    # what float32 Gram eigenvalues resolve, so it takes the float64 route (then the exact one)
    rng = np.random.default_rng(7)
    _collapse(net.fc2, 10, rng)
    mon = SpectralMonitor(net, layers="fc", metrics=["alpha", "stable_rank"])
    mon.step()
    rep = rankscope.scan(net, layers="fc", estimator="median", progress=False).layers.set_index("name")
    a = mon.latest["fc2.weight"]["alpha"]
    assert a == pytest.approx(float(rep.loc["fc2.weight", "alpha"]), rel=1e-9)
    s = np.linalg.svd(net.fc2.weight.detach().double().numpy(), compute_uv=False)
    assert a == pytest.approx(_hill_median(s), rel=1e-6)  # the stored weights' float64 SVD


def test_non_finite_weights_in_float32(net):
    events: list[MonitorEvent] = []
    mon = SpectralMonitor(net, layers="fc", metrics=["alpha", "stable_rank"], on_event=events.append)
    assert mon.precision == "float32"
    with torch.no_grad():
        net.fc3.weight[0, 0] = float("inf")
    mon.step()
    assert math.isnan(mon.latest["fc3.weight"]["alpha"]) and math.isfinite(mon.latest["fc2.weight"]["alpha"])
    assert [(e.layer, e.kind) for e in events] == [("fc3.weight", "non_finite")]


def test_cuda_device_without_a_gpu(net):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="no CUDA GPU"):
        SpectralMonitor(net, device="cuda")


def test_table_writers(net, tmp_path):
    pytest.importorskip("pyarrow")
    csv, pq = tmp_path / "m.csv", tmp_path / "m.parquet"
    records = []
    with SpectralMonitor(net, metrics=["alpha", "rank_loss"], log=[str(csv), pq, records.append]) as mon:
        for _ in range(3):
            mon.step()
        h = mon.history
    import pandas as pd

    for df in (pd.read_csv(csv), pd.read_parquet(pq)):
        assert len(df) == len(h)
        np.testing.assert_array_equal(df["step"], h["step"])
        assert df["layer"].tolist() == h["layer"].tolist()
        np.testing.assert_allclose(df["value"], h["value"], rtol=1e-15)
    assert [r.step for r in records] == [1, 2, 3]
    s = records[0].spectra["fc2.weight"]
    np.testing.assert_allclose(s, np.linalg.svd(net.fc2.weight.detach().double().numpy(), compute_uv=False),
                               rtol=1e-10)
    with pytest.raises(ValueError, match=r"\.csv or \.parquet"):
        TableWriter(tmp_path / "m.txt")


def test_tensorboard_writer(net, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    mon = SpectralMonitor(net, layers="fc", metrics=["alpha"], log=rankscope.torch.TensorBoardWriter(tmp_path))
    mon.step()
    mon.step()
    mon.close()
    acc = EventAccumulator(str(tmp_path), size_guidance={"histograms": 0, "scalars": 0})
    acc.Reload()
    tags = acc.Tags()
    assert "rankscope/alpha/fc2.weight" in tags["scalars"]
    ev = acc.Scalars("rankscope/alpha/fc2.weight")
    h = mon.history
    want = h[(h["layer"] == "fc2.weight")]["value"].to_numpy()
    assert [e.step for e in ev] == [1, 2]
    np.testing.assert_allclose([e.value for e in ev], want, rtol=1e-6)  # TensorBoard stores float32
    assert "rankscope/log10_s/fc2.weight" in tags["histograms"]
    hist = acc.Histograms("rankscope/log10_s/fc2.weight")[0].histogram_value
    assert hist.num == 40


@pytest.mark.parametrize("kwargs, match", [
    ({"every": 0}, "every"), ({"every": 1.5}, "every"), ({"estimator": "hill"}, "estimator"),
    ({"precision": "float16"}, "precision"), ({"metrics": ["alpah"]}, "unknown metric"),
    ({"alpha_range": (6, 2)}, "alpha_range"), ({"rankme_drop": 1.5}, "rankme_drop"),
    ({"num_classes": 1}, "num_classes"), ({"conv": "pool"}, "conv"),
    ({"activations": "fc1", "metrics": ["alpha"]}, "no activation metric"),
])
def test_bad_arguments(net, kwargs, match):
    with pytest.raises(ValueError, match=match):
        SpectralMonitor(net, **kwargs)


def test_bad_model_and_log():
    with pytest.raises(TypeError, match="nn.Module"):
        SpectralMonitor({"w": torch.zeros(3, 3)})
    with pytest.raises(TypeError, match="log must be"):
        SpectralMonitor(torch.nn.Linear(3, 3), log=42)


# ---- layer-wise schedules ------------------------------------------------------------------------


def test_tempbalance_multipliers():
    alpha = {"a": 2.0, "b": 3.0, "c": 6.0, "d": float("nan")}
    m = tempbalance_multipliers(alpha, min_ratio=0.5, max_ratio=1.5)
    # lr_i = min + (a_i - a_min) / (a_max - a_min) * (max - min), failed fits unchanged
    assert m == {"a": 0.5, "b": pytest.approx(0.75), "c": 1.5, "d": 1.0}
    assert tempbalance_multipliers({"x": 3.0, "y": 3.0}) == {"x": 1.5, "y": 1.5}
    with pytest.raises(ValueError, match="min_ratio"):
        tempbalance_multipliers(alpha, min_ratio=2, max_ratio=1)


def test_param_groups_and_apply(net):
    groups = layer_param_groups(net, lr=0.1, momentum=0.9)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in net.parameters())  # every parameter exactly once
    layers = [g["layer"] for g in groups]
    assert layers == ["conv.weight", "emb.weight", "fc1.weight", "fc2.weight", "fc3.weight", "head.weight"]
    assert any(p is net.fc2.bias for g in groups if g["layer"] == "fc2.weight" for p in g["params"])
    opt = torch.optim.SGD(groups)
    mon = SpectralMonitor(net, metrics=["alpha"])
    mon.step()
    mult = tempbalance_multipliers({k: v["alpha"] for k, v in mon.latest.items()})
    assert apply_multipliers(opt, mult) == 6
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.1 * mult[g["layer"]])
    apply_multipliers(opt, mult)  # from the recorded base, not compounding
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(0.1 * mult[g["layer"]])
    apply_multipliers(opt, mult, base=0.01)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.01 * mult["conv.weight"])


def test_monitor_in_a_training_loop_with_schedules():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    opt = torch.optim.SGD(layer_param_groups(model, lr=0.05))
    mon = SpectralMonitor(model, every=5, metrics=["alpha", "stable_rank"])
    x, y = torch.randn(128, 10), torch.randint(0, 3, (128,))
    changed = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpectralMonitorWarning)
        for _ in range(12):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if mon.step():
                changed += apply_multipliers(opt, tempbalance_multipliers(
                    {k: v["alpha"] for k, v in mon.latest.items()}))
    assert changed == 3 * 2  # steps 1, 6, 11; two layers
    assert sorted({g["lr"] for g in opt.param_groups}) == pytest.approx([0.025, 0.075])


@pytest.mark.cuda
def test_monitor_on_cuda_equals_cpu():
    if not torch.cuda.is_available():
        pytest.skip("needs torch with a CUDA GPU")
    torch.manual_seed(0)
    net = Net()
    cpu = SpectralMonitor(net, metrics=["alpha", "stable_rank", "rank_loss", "log10_sv_min"])
    cpu.step()
    gnet = Net().cuda()
    gnet.load_state_dict(net.state_dict())
    gpu = SpectralMonitor(gnet, metrics=["alpha", "stable_rank", "rank_loss", "log10_sv_min"])
    gpu.step()
    assert gpu.records == 1
    got, want = gpu.latest, cpu.latest
    assert set(got) == set(want)
    for name in want:
        for k in want[name]:
            assert got[name][k] == pytest.approx(want[name][k], rel=1e-9, abs=1e-12), (name, k)
