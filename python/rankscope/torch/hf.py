"""A Hugging Face ``TrainerCallback`` that runs a :class:`~rankscope.torch.SpectralMonitor`.

Needs ``transformers`` (and ``accelerate``, which its Trainer needs): ``pip install "rankscope[hf]"``.
"""

from __future__ import annotations

from typing import Any

from .monitor import MonitorRecord, SpectralMonitor, monitor_with_writer

try:
    from transformers import TrainerCallback
except ImportError as e:
    raise ImportError('rankscope.torch.hf needs transformers: pip install "rankscope[hf]"') from e

__all__ = ["SpectralMonitorCallback"]


class SpectralMonitorCallback(TrainerCallback):
    """Measures the Trainer's model every `every` optimizer steps (``state.global_step``).

    The monitor is built when training begins (``self.monitor``, with every keyword argument of
    :class:`SpectralMonitor`; built again when a later training begins on another model).
    Activation diagnostics need `probe` (the Trainer does not hand batches to callbacks). With
    `log_history`, each measurement is appended to ``state.log_history`` (saved in
    ``trainer_state.json``) as ``{"step": s, "{prefix}/{metric}/{layer}": v}`` once read back; for
    TensorBoard pass ``log=args.logging_dir``-style writers through the monitor
    (``log=rankscope.torch.TensorBoardWriter(dir)``).
    """

    def __init__(self, *, log_history: bool = True, prefix: str = "spectral", **monitor_kwargs: Any):
        self.monitor_kwargs = monitor_kwargs
        self.log_history = bool(log_history)
        self.prefix = prefix
        self.monitor: SpectralMonitor | None = None
        self._state = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._state = state
        if model is None and self.monitor is None:
            raise ValueError("the Trainer passed no model to the callback")
        # a new model (the callback reused by another Trainer, hyperparameter search's model_init): a
        # new monitor; train() again on the same model keeps the history
        if self.monitor is None or (model is not None and model is not self.monitor.model):
            self.monitor = monitor_with_writer(model, self.monitor_kwargs,
                                               self._to_history if self.log_history else None)

    def on_step_end(self, args, state, control, **kwargs):
        self.monitor.step(step=int(state.global_step))

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:
            self.monitor.flush()

    def _to_history(self, record: MonitorRecord) -> None:
        if self._state is not None:
            self._state.log_history.append({**record.scalars(self.prefix), "step": record.step})
