"""rankscope: singular values, rank estimates and collapse metrics for many matrices at once.

Functions take numpy arrays, torch tensors, anything with ``__dlpack__`` or the buffer protocol,
nested lists, or a list of 2-D matrices of different shapes, and return results in the caller's
framework. Metrics on precomputed singular values live in :mod:`rankscope.metrics`; the model-zoo
scanner is ``rankscope.scan(model_or_path, ...)`` (imported on first use).
"""

# _backend first: it loads OpenBLAS (and the CUDA libraries) before any extension module.
from ._backend import _core, build_info

# isort: split
from . import metrics
from ._api import (
    condition_number,
    effective_rank,
    energy_rank,
    log10_sv_min,
    matrix_rank,
    nuclear_ratio,
    participation_ratio,
    rank_loss,
    rankme,
    spectrum_report,
    stable_rank,
    sv_max,
    sv_min,
    svdvals,
    weak_rank_loss,
)
from ._errors import CudaError, LinAlgError
from ._patch import patch
from .collapse import (
    ActivationStats,
    attention_entropy,
    dimensional_collapse_spectrum,
    feature_std,
    mean_pairwise_cosine,
    std_of_l2_normalized,
    token_rank_collapse,
)
from .neural_collapse import (
    NeuralCollapse,
    cdnv,
    class_mean_rank,
    deep_neural_collapse,
    nc1,
    nc1_quotient,
    nc2_equiangularity,
    nc2_equinorm,
    nc2_etf_error,
    nc3,
    nc4,
)
from .penalties import (
    barlow_twins_loss,
    covariance_loss,
    invariance_loss,
    variance_loss,
    vicreg_loss,
)

__version__ = "0.1.0"

__all__ = [
    "ActivationStats",
    "CudaError",
    "LinAlgError",
    "NeuralCollapse",
    "attention_entropy",
    "barlow_twins_loss",
    "build_info",
    "cdnv",
    "class_mean_rank",
    "condition_number",
    "covariance_loss",
    "deep_neural_collapse",
    "dimensional_collapse_spectrum",
    "effective_rank",
    "energy_rank",
    "feature_std",
    "get_num_threads",
    "invariance_loss",
    "log10_sv_min",
    "matrix_rank",
    "mean_pairwise_cosine",
    "metrics",
    "nc1",
    "nc1_quotient",
    "nc2_equiangularity",
    "nc2_equinorm",
    "nc2_etf_error",
    "nc3",
    "nc4",
    "nuclear_ratio",
    "participation_ratio",
    "patch",
    "rank_loss",
    "rankme",
    "set_num_threads",
    "spectrum_report",
    "stable_rank",
    "std_of_l2_normalized",
    "sv_max",
    "sv_min",
    "svdvals",
    "token_rank_collapse",
    "variance_loss",
    "vicreg_loss",
    "weak_rank_loss",
]


def __getattr__(name: str):
    # rankscope.scan (the model-zoo scanner, a callable subpackage) is imported on first use only, so
    # that the array API never imports it (nor pandas, safetensors or tqdm). rankscope.numpy (the
    # numpy.linalg drop-in) likewise: importing it costs ~1.4 ms (measured), 1% of `import rankscope`.
    if name in ("scan", "numpy"):
        import importlib

        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | {"scan", "numpy"})


def set_num_threads(n: int) -> None:
    """Threads rankscope's CPU engine uses (the calling thread included), and the CUDA backend for
    copying host batches into its staging buffers; n <= 0 restores the default (the CPUs this process
    may run on, or the RANKSCOPE_NUM_THREADS environment variable)."""
    if not isinstance(n, int):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    n = max(min(n, 2**31 - 1), 0)  # into C int range: the core names its limit (far below 2³¹); <= 0 is the default
    _core.set_num_threads(n)
    from ._backend import cuda_module

    cuda = cuda_module()
    if cuda is not None:
        cuda.set_num_threads(n)


def get_num_threads() -> int:
    """Threads rankscope's CPU engine uses."""
    return _core.get_num_threads()
