"""PyTorch integration: differentiable penalties with closed-form gradients (`penalties`) and
activation capture through forward hooks (`capture`).

Importing this package imports torch; ``import rankscope`` imports neither (import
``rankscope.torch`` explicitly). Each submodule holds one capability; this file only re-exports.
"""

from .capture import capture
from .penalties import (
    VICRegLoss,
    barlow_twins_loss,
    covariance_loss,
    invariance_loss,
    variance_loss,
    vicreg_loss,
)

__all__ = [
    "VICRegLoss",
    "barlow_twins_loss",
    "capture",
    "covariance_loss",
    "invariance_loss",
    "variance_loss",
    "vicreg_loss",
]
