"""The training monitor inside Lightning's Trainer and the Hugging Face Trainer (tested when installed)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rankscope.torch


def _data(n=96, d=12, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = (x[:, :k].argmax(dim=1)).long()
    return x, y


def _svals(w: torch.Tensor) -> np.ndarray:
    return np.linalg.svd(w.detach().double().cpu().numpy(), compute_uv=False)


def test_lightning_callback(tmp_path):
    L = pytest.importorskip("lightning.pytorch", reason="needs lightning (pip install 'rankscope[lightning]')")
    from rankscope.torch.lightning import SpectralMonitorCallback

    x, y = _data()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(torch.nn.Linear(12, 24), torch.nn.ReLU(), torch.nn.Linear(24, 3))
            self.seen = []

        def forward(self, xb):
            return self.net(xb)

        def training_step(self, batch, i):
            xb, yb = batch
            return torch.nn.functional.cross_entropy(self.net(xb), yb)

        def on_train_batch_end(self, outputs, batch, i):
            self.seen.append(_svals(self.net[0].weight)[0])  # after this batch's optimizer step

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    torch.manual_seed(0)
    module = Module()
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    cb = SpectralMonitorCallback(every=2, metrics=["sv_max", "rankme"], activations="net.0", precision="float64")
    logger = L.loggers.CSVLogger(tmp_path)
    trainer = L.Trainer(max_epochs=1, callbacks=[cb], logger=logger, log_every_n_steps=1, enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, accelerator="cpu", devices=1)
    trainer.fit(module, loader)
    h = cb.monitor.history
    assert sorted(set(h["step"])) == [1, 3, 5]  # six batches, every=2, from the first optimizer step
    got = h[(h["layer"] == "net.0.weight") & (h["metric"] == "sv_max")]["value"].to_numpy()
    np.testing.assert_allclose(got, [module.seen[0], module.seen[2], module.seen[4]], rtol=1e-12)
    assert set(h[h["layer"] == "net.0"]["metric"]) == {"rankme"}  # on the training batches
    import pandas as pd

    logged = pd.read_csv(logger.log_dir + "/metrics.csv")
    col = "spectral/sv_max/net.0.weight"
    assert col in logged.columns
    vals = logged.dropna(subset=[col])
    np.testing.assert_allclose(vals[col].to_numpy(), got, rtol=1e-6)
    assert vals["step"].tolist() == [1, 3, 5]


def test_lightning_gradient_accumulation_counts_optimizer_steps(tmp_path):
    L = pytest.importorskip("lightning.pytorch", reason="needs lightning")
    from rankscope.torch.lightning import SpectralMonitorCallback

    x, y = _data()

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(12, 3)

        def training_step(self, batch, i):
            return torch.nn.functional.cross_entropy(self.lin(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cb = SpectralMonitorCallback(every=1, metrics=["alpha"], log_to_logger=False)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    trainer = L.Trainer(max_epochs=1, callbacks=[cb], logger=False, accumulate_grad_batches=2,
                        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
                        accelerator="cpu", devices=1, default_root_dir=tmp_path)
    trainer.fit(Module(), loader)
    assert sorted(set(cb.monitor.history["step"])) == [1, 2, 3]  # 6 batches, 3 optimizer steps


def test_hf_trainer_callback(tmp_path):
    pytest.importorskip("transformers", reason="needs transformers (pip install 'rankscope[hf]')")
    pytest.importorskip("accelerate", reason="the Trainer needs accelerate (pip install 'rankscope[hf]')")
    from rankscope.torch.hf import SpectralMonitorCallback
    from transformers import Trainer, TrainingArguments

    x, y = _data()

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(12, 16)
            self.out = torch.nn.Linear(16, 3)

        def forward(self, x, labels=None):
            logits = self.out(torch.relu(self.fc(x)))
            loss = torch.nn.functional.cross_entropy(logits, labels) if labels is not None else None
            return {"loss": loss, "logits": logits}

    class DS(torch.utils.data.Dataset):
        def __len__(self):
            return len(x)

        def __getitem__(self, i):
            return {"x": x[i], "labels": y[i]}

    torch.manual_seed(0)
    model = Model()
    cb = SpectralMonitorCallback(every=2, metrics=["sv_max", "stable_rank"], probe=x[:32],
                                 activations="fc", )
    with pytest.raises(ValueError, match="no activation metric"):
        SpectralMonitorCallback(activations="fc", metrics=["sv_max"]).on_train_begin(None, None, None, model=model)
    cb.monitor_kwargs["metrics"] = ["sv_max", "stable_rank", "rankme"]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=1,
                             learning_rate=0.05, logging_steps=1, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=DS(), callbacks=[cb])
    trainer.train()
    h = cb.monitor.history
    assert sorted(set(h["step"])) == [1, 3, 5]
    entries = [e for e in trainer.state.log_history if "spectral/sv_max/fc.weight" in e]
    assert [e["step"] for e in entries] == [1, 3, 5]
    got = h[(h["layer"] == "fc.weight") & (h["metric"] == "sv_max")]["value"].tolist()
    assert [e["spectral/sv_max/fc.weight"] for e in entries] == got
    # the last measurement is of the final weights (steps 5 and 6: the last step is 6, not measured)
    assert cb.monitor.latest["fc"]["rankme"] > 1


def test_missing_extra_names_it(monkeypatch):
    import builtins
    import importlib
    import sys

    real = builtins.__import__

    def fake(name, *a, **k):
        if name.split(".")[0] in ("lightning", "pytorch_lightning", "transformers"):
            raise ImportError(f"No module named {name!r}")
        return real(name, *a, **k)

    for mod in ("rankscope.torch.lightning", "rankscope.torch.hf"):
        monkeypatch.delitem(sys.modules, mod, raising=False)
    monkeypatch.setattr(builtins, "__import__", fake)
    with pytest.raises(ImportError, match=r'pip install "rankscope\[lightning\]"'):
        importlib.import_module("rankscope.torch.lightning")
    with pytest.raises(ImportError, match=r'pip install "rankscope\[hf\]"'):
        importlib.import_module("rankscope.torch.hf")


def test_missing_tensorboard_names_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard now raises ImportError
    with pytest.raises(ImportError, match=r'rankscope.torch needs tensorboard .*"rankscope\[tensorboard\]"'):
        rankscope.torch.TensorBoardWriter(tmp_path)
