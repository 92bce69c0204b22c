"""A Lightning callback that runs a :class:`~rankscope.torch.SpectralMonitor` during ``fit``.

Needs ``lightning`` (or the older ``pytorch_lightning``): ``pip install "rankscope[lightning]"``.
"""

from __future__ import annotations

from typing import Any

from .monitor import MonitorRecord, SpectralMonitor, monitor_with_writer

try:
    from lightning.pytorch import Callback
except ImportError:  # pragma: no cover - the older package name
    try:
        from pytorch_lightning import Callback
    except ImportError as e:
        raise ImportError('rankscope.torch.lightning needs lightning: pip install "rankscope[lightning]"') from e

__all__ = ["SpectralMonitorCallback"]


class SpectralMonitorCallback(Callback):
    """Measures the LightningModule's spectra every `every` optimizer steps during ``trainer.fit``.

    The monitor is built on the module at setup (``self.monitor``, with every keyword argument of
    :class:`SpectralMonitor`; built again when a later fit is of another module) and stepped after
    each optimizer step with the trainer's ``global_step`` (batches that only accumulate gradients
    are not counted). Activation diagnostics run on `probe` when given, else on the current
    training batch. With `log_to_logger`, every value reaches the trainer's loggers as
    ``{prefix}/{metric}/{layer}`` at its step, once read back (lazily on CUDA: a step never waits
    for it).
    """

    def __init__(self, *, log_to_logger: bool = True, prefix: str = "spectral", **monitor_kwargs: Any):
        super().__init__()
        self.monitor_kwargs = monitor_kwargs
        self.log_to_logger = bool(log_to_logger)
        self.prefix = prefix
        self.monitor: SpectralMonitor | None = None
        self._trainer = None
        self._seen: int | None = None

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage != "fit":
            return
        self._trainer = trainer  # its loggers: a later fit may be another Trainer's
        if self.monitor is not None and self.monitor.model is pl_module:
            return
        self.monitor = monitor_with_writer(pl_module, self.monitor_kwargs,
                                           self._to_loggers if self.log_to_logger else None)

    def on_train_start(self, trainer, pl_module) -> None:
        self._seen = int(trainer.global_step)  # a resumed fit starts at its checkpoint's step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = int(trainer.global_step)
        if step == self._seen:  # no optimizer step in this batch (gradient accumulation)
            return
        self._seen = step
        mon = self.monitor
        use_batch = mon.activations is not None and mon.probe is None
        mon.step(batch if use_batch else None, step=step)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:
            self.monitor.flush()

    def _to_loggers(self, record: MonitorRecord) -> None:
        metrics = record.scalars(self.prefix)
        for lg in getattr(self._trainer, "loggers", []) or []:
            lg.log_metrics(metrics, step=record.step)
