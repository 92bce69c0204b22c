"""PyTorch integration: differentiable penalties with closed-form gradients (`penalties`),
activation capture through forward hooks (`capture`), the training monitor (`monitor`, with its
`writers` and layer-wise `schedules`; Lightning and Hugging Face callbacks in `rankscope.torch.lightning`
and `rankscope.torch.hf`, imported on demand).

Importing this package imports torch; ``import rankscope`` imports neither (import
``rankscope.torch`` explicitly). Each submodule holds one capability; this file only re-exports.
"""

from . import linalg
from .capture import capture
from .monitor import MonitorEvent, MonitorRecord, SpectralMonitor, SpectralMonitorWarning
from .penalties import (
    VICRegLoss,
    barlow_twins_loss,
    covariance_loss,
    invariance_loss,
    variance_loss,
    vicreg_loss,
)
from .schedules import apply_multipliers, layer_param_groups, tempbalance_multipliers
from .writers import TableWriter, TensorBoardWriter

__all__ = [
    "MonitorEvent",
    "MonitorRecord",
    "SpectralMonitor",
    "SpectralMonitorWarning",
    "TableWriter",
    "TensorBoardWriter",
    "VICRegLoss",
    "apply_multipliers",
    "barlow_twins_loss",
    "capture",
    "covariance_loss",
    "invariance_loss",
    "layer_param_groups",
    "linalg",
    "tempbalance_multipliers",
    "variance_loss",
    "vicreg_loss",
]
