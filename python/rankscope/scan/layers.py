"""Layer policy: which tensors of a checkpoint are scanned, and as which matrices.

A tensor becomes a :class:`Layer`: one matrix (Linear, Embedding, any 2-D weight, a real Conv1d as
out × in·k), kh·kw slices of out × in whose eigenvalues are pooled (Conv2d, WeightWatcher's way), or
several layers (the E matrices of a 3-D expert tensor, the three blocks of a fused QKV weight). Tensors
that are not matrices (1-D biases and norms, integer and bool buffers, 5-D and up) become skipped
layers with the reason. Nothing here reads tensor data: a Layer knows how to cut its matrices out of
the array once it is loaded, as views (no copies).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
#: Names that mark a 3-D tensor as a stack of expert matrices (Mixtral "experts", GGUF "ffn_*_exps").
_EXPERT = re.compile(r"expert|_exps\b|\.exps\.|moe", re.IGNORECASE)
#: Names of fused query/key/value projections (GPT-2 c_attn, BLOOM/NeoX query_key_value, MPT Wqkv,
#: torch MultiheadAttention in_proj_weight, Phi-3 qkv_proj).
_QKV = re.compile(r"qkv|query_key_value|c_attn|in_proj_weight", re.IGNORECASE)
CONV_MODES = ("slices", "flatten")


@dataclass
class Layer:
    """One row of the report: a tensor (or a part of one) and the matrices that represent it.

    `cut(array)` returns the layer's matrices as views of the loaded tensor; `kind` is one of dense,
    embedding, conv2d, conv1d, expert, qkv; N ≥ M are WeightWatcher's dimensions and rf its receptive
    field (kh·kw for pooled Conv2d slices, else 1). A skipped layer has `skip` set and no matrices.
    """

    name: str
    tensor: str
    kind: str
    shape: tuple[int, ...]
    dtype: str
    N: int = 0
    M: int = 0
    rf: int = 1
    matrix_shape: tuple[int, int] = (0, 0)
    count: int = 0  # matrices cut from the tensor for this layer
    cut: Callable[[Any], list[Any]] | None = field(default=None, repr=False)
    skip: str | None = None
    part: int | None = None  # expert index or q/k/v block
    info: Any = field(default=None, repr=False, compare=False)  # the TensorInfo it was planned from

    @property
    def num_evals(self) -> int:
        return self.M * self.count


def _matrix(kind: str, info, name: str, rows: int, cols: int, cut, count: int = 1, rf: int = 1,
            part: int | None = None) -> Layer:
    return Layer(name=name, tensor=info.name, kind=kind, shape=tuple(info.shape), dtype=info.dtype,
                 N=max(rows, cols), M=min(rows, cols), rf=rf, matrix_shape=(rows, cols), count=count, cut=cut,
                 part=part, info=info)


def scannable_dtype(dtype: str) -> bool:
    """Whether a stored dtype holds float weights the readers decode: numpy/torch float names
    (float8 formats included, widened to float32) or GGUF's quantised types (upper-case names such as
    "Q8_0", "IQ2_XS", dequantised). Not torch's quantised integers ("qint8"), numpy's longdouble
    ("float128"), integers or bool."""
    return dtype in FLOAT_DTYPES or dtype.startswith("float8") or dtype[:1].isupper()


def _skipped(info, reason: str) -> Layer:
    return Layer(name=info.name, tensor=info.name, kind="skipped", shape=tuple(info.shape), dtype=info.dtype,
                 skip=reason)


def _qkv_axis(shape: tuple[int, ...]) -> int | None:
    """The axis of a 2-D fused QKV weight holding three equal blocks (one side 3× the other)."""
    r, c = shape
    if r == 3 * c:
        return 0
    if c == 3 * r:
        return 1
    return None


def plan_tensor(info, *, conv: str = "slices", split_qkv: bool = False) -> list[Layer]:
    """The layers one tensor contributes (one, or several for experts and split QKV; skipped ones too)."""
    shape = tuple(int(d) for d in info.shape)
    dt = info.dtype
    if not scannable_dtype(dt):
        kind = "bool" if dt == "bool" else "integer" if dt.startswith(("int", "uint")) else dt
        return [_skipped(info, f"{kind} tensor")]
    if len(shape) < 2:
        return [_skipped(info, f"{len(shape)}-D tensor (bias, norm or scalar)")]
    if 0 in shape:
        return [_skipped(info, "empty tensor")]
    mtype = (info.module_type or "").lower()
    if len(shape) == 2:
        r, c = shape
        if split_qkv and _QKV.search(info.name):
            axis = _qkv_axis(shape)
            if axis is not None:
                rows, cols = (r // 3, c) if axis == 0 else (r, c // 3)
                return [
                    _matrix("qkv", info, f"{info.name}[{part}]", rows, cols,
                            (lambda a, i=i, ax=axis: [a[i * rows:(i + 1) * rows] if ax == 0
                                                      else a[:, i * cols:(i + 1) * cols]]), part=i)
                    for i, part in enumerate("qkv")
                ]
        kind = "embedding" if ("embedding" in mtype or re.search(r"embed|wte|wpe|tok_embeddings|token_embd",
                                                                  info.name)) else "dense"
        return [_matrix(kind, info, info.name, r, c, lambda a: [a])]
    if len(shape) == 3:
        a0, a1, a2 = shape
        conv1d = "conv1d" in mtype or (not _EXPERT.search(info.name) and "conv" in info.name.lower()) or (
            not mtype and not _EXPERT.search(info.name) and a2 < min(a0, a1) and a2 <= 31
        )
        if conv1d:  # (out, in, k) -> out × in·k
            return [_matrix("conv1d", info, info.name, a0, a1 * a2, lambda a, s=(a0, a1 * a2): [a.reshape(s)])]
        return [  # (E, out, in): one matrix, one row per expert
            _matrix("expert", info, f"{info.name}[{e}]", a1, a2, (lambda a, e=e: [a[e]]), part=e)
            for e in range(a0)
        ]
    if len(shape) == 4:
        # (out, in, kh, kw), the layout of every format read (torch, safetensors, ONNX) whatever the
        # sizes. WeightWatcher reads torch layers so too; its out + in < kh + kw test for Keras'
        # (kh, kw, in, out) misread small-channel torch convs (the tutorial CNN's Conv2d(3, 6, 5))
        o, i, kh, kw = shape
        if conv not in CONV_MODES:
            raise ValueError(f"conv must be one of {CONV_MODES}, got {conv!r}")
        if conv == "flatten":
            return [_matrix("conv2d", info, info.name, o, i * kh * kw,
                            lambda a, s=(o, i * kh * kw): [a.reshape(s)])]
        cut = (lambda a, kh=kh, kw=kw: [a[:, :, p, q] for p in range(kh) for q in range(kw)])
        return [_matrix("conv2d", info, info.name, o, i, cut, count=kh * kw, rf=kh * kw)]
    return [_skipped(info, f"{len(shape)}-D tensor (not a matrix, a Conv1d, a Conv2d or an expert stack)")]


def name_filter(layers: str | Sequence[str] | None) -> Callable[[str], bool]:
    """A predicate on tensor names: True when any pattern matches (all names when `layers` is None).

    A pattern is a regular expression searched in the name (``"attn"``, ``r"layers\\.[0-3]\\."``) or a
    shell glob matched against the whole name (``"*.q_proj.weight"``); a pattern that is not a valid
    regular expression is taken as a glob only.
    """
    if layers is None:
        return lambda name: True
    pats = [layers] if isinstance(layers, str) else list(layers) if isinstance(layers, (list, tuple)) else None
    if not pats or not all(isinstance(p, str) for p in pats):
        raise TypeError(f"layers must be a pattern string or a list of them, got {layers!r}")
    compiled = []
    for p in pats:
        try:
            compiled.append((p, re.compile(p)))
        except re.error:
            compiled.append((p, None))

    def keep(name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, p) or (rx is not None and rx.search(name)) for p, rx in compiled)

    return keep


def plan(tensors: Iterable, *, conv: str = "slices", split_qkv: bool = False, layers=None,
         min_dim: int | None = None, max_dim: int | None = None) -> list[Layer]:
    """Layers of a model's tensors, in order; filtered tensors are dropped, unsupported ones skipped.

    `layers` filters by tensor name (see :func:`name_filter`); `min_dim` and `max_dim` skip matrices
    whose smaller side M is below min_dim or whose larger side N is above max_dim (reported as skipped,
    with the reason). There are no other size limits: embeddings and LM heads are scanned.
    """
    keep = name_filter(layers)
    out: list[Layer] = []
    for info in tensors:
        if not keep(info.name):
            continue
        for layer in plan_tensor(info, conv=conv, split_qkv=split_qkv):
            if layer.skip is None and min_dim is not None and layer.M < min_dim:
                layer = _skip_size(layer, f"M = {layer.M} < min_dim = {min_dim}")
            elif layer.skip is None and max_dim is not None and layer.N > max_dim:
                layer = _skip_size(layer, f"N = {layer.N} > max_dim = {max_dim}")
            out.append(layer)
    return out


def _skip_size(layer: Layer, reason: str) -> Layer:
    layer.skip, layer.cut, layer.count = reason, None, 0
    return layer
