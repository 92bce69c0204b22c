"""rankscope.torch.capture: hooks stream activations into the accumulators; results equal the
one-shot diagnostics on the activations collected by hand; hooks never outlive the call."""

from __future__ import annotations

import numpy as np
import pytest
import rankscope.collapse as collapse
import torch
from rankscope.torch import capture


class _Net(torch.nn.Module):
    def __init__(self, d_in=12, h=16, k=4):
        super().__init__()
        self.fc1 = torch.nn.Linear(d_in, h)
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(h, h)
        self.head = torch.nn.Linear(h, k)

    def forward(self, x):
        return self.head(self.act(self.fc2(self.act(self.fc1(x)))))


def _data(rng, n=96, d_in=12, k=4, batch=32):
    x = torch.from_numpy(rng.standard_normal((n, d_in))).float()
    y = torch.from_numpy(rng.integers(0, k, n))
    y[:k] = torch.arange(k)  # every class present
    return [(x[i:i + batch], y[i:i + batch]) for i in range(0, n, batch)], x, y


def test_capture_equals_one_shot(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    net = _Net()
    loader, x, y = _data(rng)
    df = capture(net, loader, labels=False, progress=False)
    assert list(df["layer"]) == ["fc1", "fc2", "head"] and (df["status"] == "success").all()
    with torch.no_grad():
        acts = {"fc1": net.fc1(x), "fc2": net.fc2(net.act(net.fc1(x))), "head": net(x)}
    for _, r in df.iterrows():
        z = acts[r["layer"]].double().numpy()
        assert r["n_samples"] == len(x) and r["d"] == z.shape[1]
        fs = collapse.feature_std(z)
        assert r["mean_std"] == pytest.approx(float(np.asarray(fs["mean_std"])), rel=1e-9)
        assert r["std_of_l2_normalized"] == pytest.approx(float(collapse.std_of_l2_normalized(z)), rel=1e-9)
        assert r["mean_pairwise_cosine"] == pytest.approx(float(collapse.mean_pairwise_cosine(z)), rel=1e-9,
                                                          abs=1e-12)
        s = np.linalg.svd(z, compute_uv=False)
        p = s / s.sum() + 1e-7
        # ActivationStats takes RankMe's σ from the eigenvalues of the accumulated ZᵀZ: each σ is off
        # by up to √(2·d·eps64)·σ₁, so exp(H) by the bound test_collapse.py derives (here ~1e-6;
        # measured up to 1.6e-8, e.g. at ReLU-dead features, whose σ come out of the Gram at ~1e-8·σ₁)
        tol = len(s) * np.sqrt(2 * z.shape[1] * np.finfo(np.float64).eps) * s[0] / s.sum() * (1 + np.log(1e7))
        assert r["rankme"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=tol)
    assert not net._forward_hooks and not any(m._forward_hooks for m in net.modules())


def test_capture_input_and_patterns(rng):
    net = _Net()
    loader, x, _ = _data(rng)
    df = capture(net, loader, layers="head", where="input", labels=False, progress=False)
    assert list(df["layer"]) == ["head"] and df["d"].iloc[0] == 16
    df = capture(net, loader, layers=["fc*"], labels=False, progress=False, max_batches=2)
    assert list(df["layer"]) == ["fc1", "fc2"] and (df["n_samples"] == 64).all()
    with pytest.raises(ValueError, match="no module"):
        capture(net, loader, layers="nope", progress=False)
    with pytest.raises(ValueError, match="where"):
        capture(net, loader, where="grad", progress=False)


def test_capture_token_and_conv_rows(rng):
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU())
    xs = [torch.from_numpy(rng.standard_normal((10, 3, 9, 9))).float() for _ in range(2)]
    df = capture(conv, xs, layers="0", progress=False)
    assert df["d"].iloc[0] == 8 and df["n_samples"].iloc[0] == 20  # global average pooled
    df = capture(conv, xs, layers="0", spatial="flatten", progress=False)
    assert df["d"].iloc[0] == 8 * 7 * 7
    tok = torch.nn.Sequential(torch.nn.Linear(6, 5))
    ts = [torch.from_numpy(rng.standard_normal((4, 7, 6))).float()]
    assert capture(tok, ts, progress=False)["n_samples"].iloc[0] == 4
    assert capture(tok, ts, tokens="flatten", progress=False)["n_samples"].iloc[0] == 28


def test_hooks_removed_and_mode_restored_on_error(rng):
    net = _Net()
    net.train()

    def bad():
        yield torch.zeros(4, 12)
        raise RuntimeError("loader broke")

    with pytest.raises(RuntimeError, match="loader broke"):
        capture(net, bad(), labels=False, progress=False)
    assert net.training and not any(m._forward_hooks for m in net.modules())


def test_capture_neural_collapse(rng):
    """With labels: the NC metrics of the captured penultimate features equal the one-shot ones."""
    nc = pytest.importorskip("rankscope.neural_collapse")
    torch.manual_seed(int(rng.integers(1 << 31)))
    net = _Net()
    loader, x, y = _data(rng)
    df = capture(net, loader, layers="head", where="input", num_classes=4, classifier=net.head, progress=False)
    with torch.no_grad():
        h = net.act(net.fc2(net.act(net.fc1(x)))).double().numpy()
    r = df.iloc[0]
    assert r["status"] == "success"
    assert r["nc1"] == pytest.approx(float(np.asarray(nc.nc1(h, y.numpy()))), rel=1e-6)
    with pytest.raises(ValueError, match="num_classes"):
        capture(net, loader, layers="head", progress=False)


def test_capture_two_passes_gives_nc4(rng):
    nc = pytest.importorskip("rankscope.neural_collapse")
    torch.manual_seed(int(rng.integers(1 << 31)))
    net = _Net()
    loader, x, y = _data(rng)
    one = capture(net, loader, layers="head", where="input", num_classes=4, classifier=net.head, progress=False)
    two = capture(net, loader, layers="head", where="input", num_classes=4, classifier=net.head, passes=2,
                  progress=False)
    assert two["nc1"].iloc[0] == pytest.approx(one["nc1"].iloc[0], rel=1e-9)
    with torch.no_grad():
        h = net.act(net.fc2(net.act(net.fc1(x)))).double().numpy()
    ref = nc.nc4(h, y.numpy(), net.head.weight.detach().double().numpy(), net.head.bias.detach().double().numpy())
    assert "nc4" in two.columns and two["nc4"].iloc[0] == pytest.approx(float(np.asarray(ref)), abs=1e-12)
    with pytest.raises(ValueError, match="passes=2"):
        capture(net, loader, labels=False, passes=2, progress=False)


def test_capture_float_labels(rng):
    """Float labels holding whole numbers are labels when num_classes is given (same NC metrics as
    integer ones); fractional ones are a ValueError naming the batch; without num_classes a float
    second element is regression targets, ignored as before."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    net = _Net()
    loader, _, _ = _data(rng)
    ref = capture(net, loader, layers="head", where="input", num_classes=4, progress=False)
    fl = capture(net, [(a, b.float()) for a, b in loader], layers="head", where="input", num_classes=4,
                 progress=False)
    assert fl["status"].iloc[0] == "success" and "nc1" in fl.columns
    assert fl["nc1"].iloc[0] == ref["nc1"].iloc[0]
    bad = [(a, b.float()) for a, b in loader]
    bad[1] = (bad[1][0], bad[1][1] + 0.5)
    with pytest.raises(ValueError, match="batch 1: labels must be integers"):
        capture(net, bad, layers="head", where="input", num_classes=4, progress=False)
    reg = capture(net, bad, layers="head", where="input", progress=False)
    assert reg["status"].iloc[0] == "success" and "nc1" not in reg.columns


def test_capture_empty_batch(rng):
    """A batch of 0 rows is skipped (results as without it), also for 4-d activations; all-empty
    loaders say so in the status."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    net = _Net()
    loader, x, y = _data(rng)
    empty = (x[:0], y[:0])
    ref = capture(net, loader, num_classes=4, layers="head", where="input", progress=False)
    got = capture(net, [loader[0], empty, *loader[1:]], num_classes=4, layers="head", where="input",
                  progress=False)
    assert got["status"].iloc[0] == "success"
    assert got["n_samples"].iloc[0] == ref["n_samples"].iloc[0]
    assert got["nc1"].iloc[0] == ref["nc1"].iloc[0]
    conv = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3))
    xs = torch.from_numpy(rng.standard_normal((5, 3, 7, 7))).float()
    df = capture(conv, [xs[:0], xs], layers="0", spatial="flatten", progress=False)
    assert df["status"].iloc[0] == "success" and df["n_samples"].iloc[0] == 5
    df = capture(net, [empty], progress=False)
    assert (df["status"] == "every batch was empty (0 rows)").all()
