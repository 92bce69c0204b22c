"""The scanner's readers: one small adapter per checkpoint format, listing tensors lazily.

:func:`open_sources` turns what a user hands to the scanner (an ``nn.Module``, a state dict, a file,
a model folder or a folder of many models) into :class:`ModelSource` objects. A source lists its
tensors as :class:`TensorInfo` records, metadata first (name, shape, stored dtype); the data is read
only when ``info.load()`` is called, one tensor at a time and memory-mapped where the format allows,
so scanning a 7B checkpoint never materialises it. Everything after the sources (layer policy,
batching, the report) is shared by all formats.

Formats (``ModelSource.kind``) and what ``load()`` returns:

- ``nn.Module`` ("module"): each parameter and persistent buffer, ``.detach()``-ed, on its device.
- a state dict, any Mapping of names to tensors/arrays ("state_dict"): the tensor or array as given.
  A tensor stored under two names (tied weights: the same memory, dtype, shape and strides) is
  listed once, under its first name, as for modules; so it is in checkpoint files.
- ``*.safetensors`` ("safetensors"): numpy, a read-only view of the file's memory map.
- a folder with a sharded checkpoint's ``*.index.json`` ("sharded"): as the shards' format.
- a Hugging Face model folder ("hf"): as its weight files' format.
- ``*.pt``, ``*.pth``, ``*.bin``, ``*.ckpt`` ("torch"): the torch tensor, memory-mapped for
  zipfile checkpoints (``torch.load(weights_only=True, mmap=True)``). Objects of classes that
  unpickler refuses (a timm checkpoint's argparse.Namespace) load as inert placeholders, never
  imported nor called (an entry of the state dict itself is listed with dtype "pickled <class>", so
  the scan reports it skipped); numpy arrays load as arrays; tensors of a refused torch.Tensor
  subclass and TorchScript archives make the file an error saying so.
- ``*.npz`` ("npz"): numpy, read from the archive per key.
- ``*.gguf`` ("gguf"): numpy; F32/F16/F64 views of the memory map, quantised types dequantised.
- ``*.onnx`` ("onnx"): numpy, from the graph's initializers (external data read per tensor).
- any other folder (a zoo): one source per model file or model folder inside.

bfloat16 (and the float8 formats float8_e4m3fn, float8_e5m2) have no numpy dtype: numpy readers
widen them to float32, exactly. torch readers return them as stored. Importing this module imports
neither torch, gguf nor onnx; each is imported by the reader that needs it.
"""

from __future__ import annotations

import importlib
import json
import os
import pickle
import stat
import struct
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import cache, partial
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .._arrays import _torch, is_torch

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "ModelSource",
    "SourceError",
    "TensorInfo",
    "open_sources",
    "optional_import",
    "unwrap_state_dict",
]

#: File suffixes that hold weights, and the reader (``ModelSource.kind``) each goes to.
WEIGHT_SUFFIXES = {
    ".safetensors": "safetensors",
    ".pt": "torch",
    ".pth": "torch",
    ".bin": "torch",
    ".ckpt": "torch",
    ".npz": "npz",
    ".gguf": "gguf",
    ".onnx": "onnx",
}
#: Keys under which training checkpoints nest their state dict (Lightning, plain PyTorch, DeepSpeed,
#: the PyTorch tutorials), unwrapped in this order.
WRAPPER_KEYS = ("state_dict", "model", "module", "model_state_dict")
#: Weight files of a Hugging Face folder, in the order transformers / diffusers / peft look for them.
HF_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.safetensors.index.json",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.bin.index.json",
    "adapter_model.safetensors",
    "adapter_model.bin",
)
HF_CONFIG_FILES = ("config.json", "adapter_config.json")
#: Files with a weight suffix that training runs write next to the weights and that are not models.
_NOT_WEIGHTS = frozenset(
    {"training_args.bin", "optimizer.pt", "optimizer.bin", "scheduler.pt", "scaler.pt"}
)
_INDEX_SUFFIX = ".index.json"
#: config.json keys copied into ``ModelSource.meta`` for a Hugging Face folder.
_HF_META_KEYS = ("_name_or_path", "architectures", "model_type", "torch_dtype")


# ---- public records ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TensorInfo:
    """One stored tensor: its metadata, and ``load()`` to read its data.

    ``shape`` is in numpy/torch order (out, in, kh, kw); GGUF's reversed ggml order is turned around
    so that it matches the loaded array. ``dtype`` is the stored dtype ("float32", "float16",
    "bfloat16", "float64", "int64", "int32", "int8", "uint8", "bool", ...) or, for GGUF, the
    quantisation type's name ("Q8_0", "Q4_K", ...). ``load()`` returns an array of shape ``shape``:
    numpy (float16/32/64 as stored; bfloat16, float8 and GGUF quantised types as float32) or, for
    torch sources, the torch tensor as stored, on its device. It may raise for a dtype that cannot
    be decoded (e.g. a GGUF quantisation gguf cannot dequantise), or once the source is closed.
    ``module_type`` is the owning module's class name ("Linear", "Conv2d", ...) for ``nn.Module``
    sources, else None.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    load: Callable[[], Any] = field(repr=False, compare=False)
    module_type: str | None = None


@dataclass
class ModelSource:
    """One model: where it came from, and its tensors, listed lazily.

    ``name`` is the file stem, the folder name, the path relative to a zoo's root, or for in-memory
    objects ``"model"`` (or the name given to :func:`open_sources`). ``path`` is absolute (None in
    memory); ``size`` is the bytes on disk of the weight files, ``mtime`` the latest modification
    time of the files read (both None in memory). ``kind`` names the reader (see the module doc).
    ``meta`` carries what the format says about the model: a Hugging Face config's
    ``_name_or_path``/``architectures``/``model_type``, GGUF's ``general.*`` keys, safetensors'
    ``__metadata__``, ONNX's producer.

    ``tensors()`` may be called more than once; each call lists the tensors again from metadata.
    ``close()`` releases the source's handles and memory maps (arrays already loaded stay valid); a
    source is also a context manager that closes itself.
    """

    name: str
    path: str | None
    size: int | None
    mtime: float | None
    kind: str
    meta: dict = field(default_factory=dict)

    # the format's reader (tensors(), close()); set by open_sources, not a dataclass field
    _reader = None

    def tensors(self) -> Iterator[TensorInfo]:
        """The model's tensors, metadata only; ``info.load()`` reads one tensor's data."""
        if self._reader is None:
            return iter(())
        return self._reader.tensors()

    def close(self) -> None:
        """Release memory maps and file handles; safe to call more than once."""
        if self._reader is not None:
            self._reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class SourceError:
    """A file or folder that could not be opened; ``error`` names it and says why."""

    name: str
    path: str | None
    error: str


# ---- helpers -------------------------------------------------------------------------------------


def optional_import(module: str, extra: str | None, what: str | None = None, *, who: str = "rankscope.scan"):
    """Import an optional dependency, or raise one ImportError naming the extra that installs it.

    ``optional_import("gguf", "gguf", "GGUF files")`` returns the ``gguf`` module or raises
    ``ImportError('rankscope.scan needs gguf for GGUF files: pip install "rankscope[gguf]"')``.
    With ``extra=None`` the message says ``pip install <module>`` (for torch, which has no extra);
    `who` names the part of rankscope that needs it.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        install = f'pip install "rankscope[{extra}]"' if extra else f"pip install {top}"
        purpose = f" for {what}" if what else ""
        raise ImportError(f"{who} needs {top}{purpose}: {install}") from e


def unwrap_state_dict(obj: Any) -> Any:
    """The state dict inside a training checkpoint.

    While ``obj`` is a Mapping whose ``"state_dict"``, ``"model"``, ``"module"`` or
    ``"model_state_dict"`` entry (tried in that order) is itself a Mapping, descend into it:
    ``{"epoch": 3, "state_dict": {"model": sd}}`` gives ``sd``. Anything else is returned as is.
    """
    while isinstance(obj, Mapping):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, Mapping):
                obj = inner
                break
        else:
            return obj
    return obj


def _describe(e: BaseException) -> str:
    msg = str(e).strip()
    return f"{type(e).__name__}: {msg}" if msg else type(e).__name__


# torch if it is already imported (an nn.Module or tensor can only exist if it is), else None
_torch_module = _torch
_is_torch_tensor = is_torch


def _is_module(x: Any) -> bool:
    torch = _torch_module()
    return torch is not None and isinstance(x, torch.nn.Module)


def _torch_dtype_name(t) -> str:
    return str(t.dtype).removeprefix("torch.")


def _widen_bf16(u16: np.ndarray) -> np.ndarray:
    """bfloat16 bit patterns (uint16) as float32, exactly: bfloat16 is float32's upper half."""
    out = u16.astype(np.uint32)
    out <<= 16
    return out.view(np.float32)


@cache
def _fp8_table(kind: str) -> np.ndarray:
    """float32 value of each of the 256 bit patterns of an 8-bit float (exact)."""
    bits = np.arange(256, dtype=np.uint16)
    if kind == "float8_e5m2":  # float16's upper byte: 1 sign, 5 exponent (bias 15), 2 mantissa
        return (bits << 8).view(np.float16).astype(np.float32)
    # float8_e4m3fn: 1 sign, 4 exponent (bias 7), 3 mantissa; no infinities, S.1111.111 is NaN
    sign = np.where(bits & 0x80, -1.0, 1.0)
    exp = (bits >> 3) & 0xF
    man = (bits & 0x7).astype(np.float64)
    val = np.where(exp == 0, man / 8 * 2.0**-6, (1 + man / 8) * 2.0 ** (exp.astype(np.int64) - 7))
    val = np.where((exp == 0xF) & ((bits & 0x7) == 0x7), np.nan, val)
    return (sign * val).astype(np.float32)


def _stat(paths: list[str], weights: list[str]) -> tuple[int, float]:
    """(bytes of the weight files, latest mtime of all the files)."""
    return (
        sum(os.stat(p).st_size for p in weights),
        max(os.stat(p).st_mtime for p in paths),
    )


_FILE_TYPES = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_regular(mode: int) -> str:
    why = next((what for test, what in _FILE_TYPES if test(mode)), "not a plain file")
    return f"not a regular file ({why})"


def _check_regular(path: str) -> None:
    """Raise unless `path` (after symlinks) is a regular file: reading a FIFO blocks, a device such
    as /dev/zero never ends, so neither is ever opened."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise ValueError(_not_regular(mode))


def _strip_weight_suffix(path: str) -> str:
    for suffix in (_INDEX_SUFFIX, *WEIGHT_SUFFIXES):
        if path.endswith(suffix):
            return path[: -len(suffix)]
    return path


class _Closable:
    """Readers share the closed check: loads after close() raise instead of touching freed maps."""

    label = "source"
    closed = False

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError(f"{self.label} is closed")

    def close(self) -> None:
        self.closed = True


class _SizeGuard:
    """Memory-mapped files must not shrink under their map.

    Touching a mapped page past a file's new end kills the process with SIGBUS, so each tensor's
    load calls ``check()`` first: it raises OSError when the file at ``path`` is still the one
    opened (same device and inode) and now shorter than it was. A file replaced by a new one (a
    rename) is fine: the map keeps the old file's pages. This narrows the window to the time the
    engine reads one tensor; it cannot close it (no reader of memory maps can, short of copying).
    """

    def __init__(self, path: str):
        st = os.stat(path)
        self.path = path
        self._id = (st.st_dev, st.st_ino)
        self._size = st.st_size

    def check(self) -> None:
        try:
            st = os.stat(self.path)
        except OSError:
            return  # removed: an unlinked file's pages stay readable through the map
        if (st.st_dev, st.st_ino) == self._id and st.st_size < self._size:
            raise OSError(
                f"{self.path} shrank from {self._size} to {st.st_size} bytes while it was being "
                "scanned (truncated or being rewritten in place); scan it again once it is complete"
            )


# ---- safetensors ---------------------------------------------------------------------------------

#: safetensors dtype code → (our dtype name, little-endian numpy dtype it is viewed as).
_ST_DTYPES = {
    "F64": ("float64", "<f8"),
    "F32": ("float32", "<f4"),
    "F16": ("float16", "<f2"),
    "BF16": ("bfloat16", "<u2"),
    "F8_E4M3": ("float8_e4m3fn", "u1"),
    "F8_E5M2": ("float8_e5m2", "u1"),
    "I64": ("int64", "<i8"),
    "I32": ("int32", "<i4"),
    "I16": ("int16", "<i2"),
    "I8": ("int8", "i1"),
    "U64": ("uint64", "<u8"),
    "U32": ("uint32", "<u4"),
    "U16": ("uint16", "<u2"),
    "U8": ("uint8", "u1"),
    "BOOL": ("bool", "?"),
    "C64": ("complex64", "<c8"),
}


def read_safetensors_header(path: str) -> tuple[dict, int]:
    """(header, offset of the data section) of a safetensors file.

    The header is the file's JSON table: tensor name → {"dtype", "shape", "data_offsets": [begin,
    end]} (offsets relative to the data section), plus an optional "__metadata__" dict of strings.
    """
    _check_regular(path)
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError("file too short for a safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > os.fstat(f.fileno()).st_size - 8:
            raise ValueError(f"header length {n} exceeds the file")
        header = json.loads(f.read(n))
    if not isinstance(header, dict):
        raise ValueError("header is not a JSON object")  # noqa: TRY004 (a corrupt file)
    return header, 8 + n


class _SafetensorsFile(_Closable):
    """One safetensors file: validated by the safetensors library, read through one memory map.

    safetensors' ``safe_open(framework="numpy")`` validates the file (header, offsets covering the
    data exactly) and lists it; the data is then a zero-copy view of a read-only ``np.memmap`` rather
    than ``get_tensor``'s copy, which also covers the dtypes numpy lacks (bfloat16, float8) with one
    code path.
    """

    def __init__(self, path: str):
        from safetensors import safe_open

        self.path = path
        self.label = f"safetensors file {path}"
        # our own read first: safe_open reports every failure to open (permission denied, ELOOP...)
        # as "No such file or directory", Python's open raises the real OSError
        self._guard = _SizeGuard(path)  # before the header: what safe_open validates is this size
        header, self._start = read_safetensors_header(path)
        with safe_open(path, framework="numpy") as f:
            names = set(f.keys())
        self.metadata = header.pop("__metadata__", None) or {}
        entries = []
        for name, e in header.items():
            if name not in names:  # cannot happen after safe_open's validation; be safe
                continue
            begin, end = (int(o) for o in e["data_offsets"])
            entries.append((begin, end, name, e["dtype"], tuple(int(d) for d in e["shape"])))
        # file order: a scan that loads tensors in this order reads the file front to back
        entries.sort()
        self._entries = {
            name: (begin, end, code, shape) for begin, end, name, code, shape in entries
        }
        self._map: np.ndarray | None = None

    def names(self) -> list[str]:
        return list(self._entries)

    def info(self, name: str) -> TensorInfo:
        _, _, code, shape = self._entries[name]
        dtype = _ST_DTYPES.get(code, (code.lower(), None))[0]
        return TensorInfo(name, shape, dtype, lambda: self.load(name))

    def load(self, name: str) -> np.ndarray:
        self._check_open()
        self._guard.check()
        begin, end, code, shape = self._entries[name]
        if code not in _ST_DTYPES:
            raise NotImplementedError(
                f"{self.path}: {name}: cannot decode safetensors dtype {code}"
            )
        if self._map is None:
            self._map = np.asarray(np.memmap(self.path, dtype=np.uint8, mode="r"))
        dtype, view = _ST_DTYPES[code]
        a = self._map[self._start + begin : self._start + end].view(view).reshape(shape)
        if dtype == "bfloat16":
            return _widen_bf16(a)
        if dtype.startswith("float8"):
            return _fp8_table(dtype)[a]
        return a

    def close(self) -> None:
        # loaded arrays keep their own reference to the map; this only drops the source's
        self._map = None
        super().close()


class _SafetensorsReader:
    """One or more safetensors files (the shards of one model), each tensor listed once."""

    def __init__(self, files: list[_SafetensorsFile], owner: dict[str, str] | None = None):
        self._files = files
        self._owner = owner  # name → shard path (a sharded index's weight_map); None: all names

    def tensors(self) -> Iterator[TensorInfo]:
        for f in self._files:
            f._check_open()
            for name in f.names():
                if self._owner is None or self._owner.get(name) == f.path:
                    yield f.info(name)

    def close(self) -> None:
        for f in self._files:
            f.close()


# ---- in-memory objects and torch checkpoints ----------------------------------------------------


def _is_array(v: Any) -> bool:
    return (isinstance(v, np.ndarray) and not v.dtype.hasobject) or _is_torch_tensor(v)


def _array_info(name: str, v: Any, check: Callable[[], None]) -> TensorInfo:
    if isinstance(v, np.ndarray):
        dtype = v.dtype.name

        def load():
            check()
            if dtype == "bfloat16":  # ml_dtypes' bfloat16 in a numpy state dict
                return _widen_bf16(v.view(np.uint16))
            return v

        return TensorInfo(name, tuple(v.shape), dtype, load)

    def load_tensor():
        check()
        return v.detach()

    return TensorInfo(name, tuple(v.shape), _torch_dtype_name(v), load_tensor)


def _no_tensors_error(obj: Any) -> str | None:
    """Why a state-dict-like object yields nothing, or None if it holds tensors (or is empty)."""
    if not isinstance(obj, Mapping):
        return f"holds a {type(obj).__name__}, not a state dict (a mapping of names to tensors)"
    if obj and not any(_is_array(v) for v in obj.values()):
        keys = ", ".join(repr(k) for k in list(obj)[:8]) + (", ..." if len(obj) > 8 else "")
        return f"no tensors found (top-level keys: {keys})"
    return None


def _same_tensor_key(v: Any) -> tuple | None:
    """What two names of one stored tensor share (memory, dtype, shape, strides); None for tensors
    without memory of their own to compare (empty, sparse, meta)."""
    if isinstance(v, np.ndarray):
        addr = v.__array_interface__["data"][0]
        return ("numpy", addr, v.dtype.str, v.shape, v.strides) if v.size and addr else None
    if v.layout != _torch_module().strided or v.numel() == 0 or v.device.type == "meta":
        return None
    return ("torch", str(v.device), v.data_ptr(), v.dtype, tuple(v.shape), v.stride())


class _MappingReader(_Closable):
    """A state dict: names → torch tensors or numpy arrays; other entries are skipped."""

    def __init__(self, sd: Mapping, label: str, guard: _SizeGuard | None = None):
        self._sd = sd
        self.label = label
        self._guard = guard  # the memory-mapped checkpoint's, if any

    def _check(self) -> None:
        self._check_open()
        if self._guard is not None:
            self._guard.check()

    def tensors(self) -> Iterator[TensorInfo]:
        self._check_open()
        seen: set[tuple] = set()
        for k, v in self._sd.items():
            if isinstance(v, _Placeholder):  # an object the unpickler refused: a row saying so
                yield TensorInfo(str(k), (), f"pickled {v.refused}", partial(_refused_load, str(k), v.refused))
                continue
            if not _is_array(v):
                continue
            same = _same_tensor_key(v)
            if same is not None:
                if same in seen:  # tied weights: one tensor, listed once under its first name
                    continue
                seen.add(same)
            yield _array_info(str(k), v, self._check)

    def close(self) -> None:
        self._sd = {}
        super().close()


class _ModuleReader(_Closable):
    """An nn.Module: its parameters and persistent buffers under their state_dict() names (a tied
    tensor once, under its first name), each with its owning submodule's class name."""

    def __init__(self, module):
        self._module = module
        self.label = f"module {type(module).__name__}"

    def tensors(self) -> Iterator[TensorInfo]:
        self._check_open()
        seen: set[int] = set()
        for prefix, mod in self._module.named_modules():
            owner = type(mod).__name__
            skip = getattr(mod, "_non_persistent_buffers_set", set())
            items = [*mod._parameters.items()]
            items += [(n, b) for n, b in mod._buffers.items() if n not in skip]
            for pname, t in items:
                # tied weights are listed once, under their first name
                if t is None or id(t) in seen:
                    continue
                seen.add(id(t))
                info = _array_info(f"{prefix}.{pname}" if prefix else pname, t, self._check_open)
                yield TensorInfo(info.name, info.shape, info.dtype, info.load, owner)

    def close(self) -> None:
        self._module = None
        super().close()


def _check_torch_format(path: str, is_zip: bool) -> None:
    """Refuse, in plain words, files torch.load would fail on with its internals' messages: a zip
    archive without a checkpoint's data.pkl, or a file that is neither a zip archive nor a pickle."""
    if is_zip:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            raise ValueError("a zip archive but not a PyTorch checkpoint (no data.pkl in it)")
        if any(n.endswith("/constants.pkl") for n in names):  # torch's own test for TorchScript
            raise ValueError(
                "a TorchScript archive (torch.jit.save), not a checkpoint: rankscope reads state "
                "dicts; save model.state_dict() with torch.save, or scan the loaded module"
            )
        return
    with open(path, "rb") as f:
        if f.read(1) != b"\x80":  # every pickle protocol ≥ 2 (torch's legacy format too) starts so
            raise ValueError("not a PyTorch checkpoint (neither a zip archive nor a pickle; truncated?)")


def _torch_load(path: str) -> tuple[Any, _SizeGuard | None]:
    """(object, its memory map's guard) of a torch checkpoint; only zipfile checkpoints are mapped
    (the guard is None for the others, read whole)."""
    torch = optional_import("torch", None, "PyTorch checkpoints")
    _check_regular(path)
    if os.path.getsize(path) == 0:
        raise ValueError("file is empty")
    guard = _SizeGuard(path) if zipfile.is_zipfile(path) else None
    _check_torch_format(path, guard is not None)
    load = partial(torch.load, path, map_location="cpu", weights_only=True, mmap=guard is not None)
    try:
        return load(), guard
    except pickle.UnpicklingError:
        if guard is None:  # torch lists the refused globals of zipfile checkpoints only
            raise
        refused = torch.serialization.get_unsafe_globals_in_checkpoint(path)
        if not refused:
            raise
    # objects next to the tensors that the weights-only unpickler refuses (argparse.Namespace
    # args, a pickled nn.Module): each becomes an inert placeholder of that name, never imported
    # nor called; numpy's array and scalar machinery is let through as itself (it rebuilds arrays
    # from their bytes), so that numpy arrays in a checkpoint are weights, not placeholders
    allowed: list = [(_numpy_global(n) or type(n, (_Placeholder,), {"refused": n}), n) for n in refused]
    if any(n.startswith("numpy.") for n in refused):  # the dtype classes an array's BUILD names
        allowed += [c for c in vars(np.dtypes).values() if isinstance(c, type) and issubclass(c, np.dtype)]
    try:
        with torch.serialization.safe_globals(allowed):
            return load(), guard
    except TypeError as e:
        if "Tensor subclass" not in str(e):
            raise
        raise ValueError(
            f"holds tensors of a torch.Tensor subclass the weights-only unpickler refuses (one of "
            f"{', '.join(refused)}); rankscope does not import it: save plain tensors "
            "(t.as_subclass(torch.Tensor)) or scan the loaded module"
        ) from e


def _numpy_global(name: str) -> Any:
    """numpy's own object for the globals a pickled numpy array or scalar names, else None."""
    module, _, attr = name.rpartition(".")
    if module in ("numpy.core.multiarray", "numpy._core.multiarray") and attr in ("_reconstruct", "scalar"):
        return getattr(np._core.multiarray if hasattr(np, "_core") else np.core.multiarray, attr)
    if module == "numpy" and attr in ("ndarray", "dtype"):
        return getattr(np, attr)
    if module == "numpy.dtypes":
        obj = getattr(np.dtypes, attr, None)
        return obj if isinstance(obj, type) and issubclass(obj, np.dtype) else None
    return None


class _Placeholder:
    """What a checkpoint's non-tensor object of a refused class loads as: nothing. In a state dict it
    is listed as a tensor of dtype "pickled <class>", which the scan reports skipped."""

    refused = "?"  # the class's name in the pickle (set on each placeholder type)

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


def _refused_load(name: str, cls: str) -> Any:
    raise ValueError(f"{name}: an object of class {cls}, which the weights-only unpickler refuses; not loaded")


def _state_dict_of_file(path: str) -> tuple[Mapping, _SizeGuard | None]:
    """The state dict in a torch checkpoint, and its memory map's guard (None: read whole)."""
    obj, guard = _torch_load(path)
    sd = unwrap_state_dict(obj)
    why = _no_tensors_error(sd)
    if why:
        raise ValueError(why)
    return sd, guard


class _TorchShardsReader(_Closable):
    """The .bin shards of one model; each shard loaded (memory-mapped) when first needed.

    Memory-mapped shards are kept (they cost address space, not memory); shards of the old
    non-zipfile format are read whole, so only the last one used is kept.
    """

    def __init__(self, shards: dict[str, list[str]], label: str):
        self._shards = shards  # shard path → tensor names it owns, in index order
        self._cache: dict[str, tuple[Mapping, _SizeGuard | None]] = {}
        self.label = label

    def _shard(self, path: str) -> Mapping:
        self._check_open()
        cached = self._cache.get(path)
        if cached is None:
            cached = _state_dict_of_file(path)
            if cached[1] is None:  # read whole: keep only this one
                self._cache.clear()
            self._cache[path] = cached
        elif cached[1] is not None:
            cached[1].check()
        return cached[0]

    def tensors(self) -> Iterator[TensorInfo]:
        for path, names in self._shards.items():
            sd = self._shard(path)
            for name in names:
                if name not in sd:
                    raise KeyError(f"{path}: no tensor {name!r} (named in the index)")
                info = _array_info(name, sd[name], self._check_open)

                def load(path=path, name=name):
                    return self._shard(path)[name].detach()

                yield TensorInfo(info.name, info.shape, info.dtype, load)

    def close(self) -> None:
        self._cache.clear()
        super().close()


# ---- npz -----------------------------------------------------------------------------------------


class _NpzReader(_Closable):
    """numpy's lazy NpzFile: shapes and dtypes from each member's .npy header, data per key."""

    def __init__(self, path: str):
        self.label = f"npz file {path}"
        if not zipfile.is_zipfile(path):  # np.load would read it as a pickle or .npy and say so
            raise ValueError("not an .npz archive (not a zip file; truncated?)")
        self._npz = np.load(path, allow_pickle=False)
        if not isinstance(self._npz, np.lib.npyio.NpzFile):
            raise ValueError("not an .npz archive (a single .npy array?)")  # noqa: TRY004
        self._headers = []
        members = dict.fromkeys(self._npz.zip.namelist())  # a name stored twice: read once
        for member in members:
            # np.load's key: the name less ".npy", unless another member has that very name
            key = member.removesuffix(".npy")
            if key in members and key != member:
                key = member
            with self._npz.zip.open(member) as fp:
                if fp.read(6) != np.lib.format.MAGIC_PREFIX:
                    continue  # a README or folder entry: not an array (np.load gives its bytes)
                fp.seek(0)
                version = np.lib.format.read_magic(fp)
                read = (
                    np.lib.format.read_array_header_1_0
                    if version == (1, 0)
                    else np.lib.format.read_array_header_2_0
                )
                shape, _, dtype = read(fp)
            # listed, so that the scan reports them skipped ("object tensor"); loading one raises
            # (allow_pickle=False)
            self._headers.append((key, tuple(shape), dtype.name))

    def tensors(self) -> Iterator[TensorInfo]:
        self._check_open()
        for key, shape, dtype in self._headers:
            yield TensorInfo(key, shape, dtype, lambda key=key: self._load(key))

    def _load(self, key: str) -> np.ndarray:
        self._check_open()
        return self._npz[key]

    def close(self) -> None:
        if not self.closed:
            self._npz.close()
        super().close()


# ---- GGUF ----------------------------------------------------------------------------------------

_GGUF_PLAIN = {
    "F32": "float32",
    "F16": "float16",
    "F64": "float64",
    "BF16": "bfloat16",
    "I8": "int8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
}


class _GGUFReader(_Closable):
    """gguf's GGUFReader (which memory-maps the file); quantised tensors dequantised per load."""

    def __init__(self, path: str):
        self._gguf = optional_import("gguf", "gguf", "GGUF files")
        self.label = f"GGUF file {path}"
        self.path = path
        self._guard = _SizeGuard(path)
        try:
            self._reader = self._gguf.GGUFReader(path, "r")
        except OSError:
            raise
        except Exception as e:  # the gguf package's own words are internals (IndexError, reshape)
            if "magic" in str(e).lower():
                raise ValueError("not a GGUF file (no GGUF magic number)") from e
            raise ValueError(
                f"truncated or corrupt GGUF file ({os.path.getsize(path)} bytes; the gguf "
                f"package says {type(e).__name__}: {e})"
            ) from e
        self.meta = {}
        for key, fld in self._reader.fields.items():
            if key.startswith("general.") and len(fld.types) == 1:  # scalars and strings only
                try:
                    self.meta[key] = fld.contents()
                except (ValueError, TypeError, IndexError):
                    continue  # a field gguf cannot render is not worth failing the file for

    def tensors(self) -> Iterator[TensorInfo]:
        self._check_open()
        for t in self._reader.tensors:
            qtype = t.tensor_type.name
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            yield TensorInfo(
                t.name, shape, _GGUF_PLAIN.get(qtype, qtype), lambda t=t: self._load(t)
            )

    def _load(self, t) -> np.ndarray:
        self._check_open()
        self._guard.check()
        shape = tuple(int(d) for d in reversed(t.shape.tolist()))
        qtype = t.tensor_type.name
        if qtype == "BF16":
            return _widen_bf16(t.data.view(np.uint16).reshape(shape))
        if qtype in _GGUF_PLAIN:
            return t.data.reshape(shape)  # a view of the memory map
        try:
            return self._gguf.quants.dequantize(t.data, t.tensor_type).reshape(shape)
        except NotImplementedError as e:
            raise NotImplementedError(f"{self.path}: {t.name}: {e}") from e

    def close(self) -> None:
        # views already loaded keep the map alive; the reader's own reference goes now
        self._reader = None
        super().close()


# ---- ONNX ----------------------------------------------------------------------------------------

_ONNX_DTYPES = {
    "FLOAT": "float32",
    "DOUBLE": "float64",
    "FLOAT16": "float16",
    "BFLOAT16": "bfloat16",
    "FLOAT8E4M3FN": "float8_e4m3fn",
    "FLOAT8E4M3FNUZ": "float8_e4m3fnuz",
    "FLOAT8E5M2": "float8_e5m2",
    "FLOAT8E5M2FNUZ": "float8_e5m2fnuz",
    "FLOAT8E8M0": "float8_e8m0fnu",
    "FLOAT4E2M1": "float4_e2m1fn",
    "COMPLEX64": "complex64",
    "COMPLEX128": "complex128",
}
_NATIVE_FLOATS = frozenset({"float16", "float32", "float64"})


class _OnnxReader(_Closable):
    """An ONNX model's graph initializers; tensors stored as external data are read one at a time."""

    def __init__(self, path: str):
        self._onnx = optional_import("onnx", "onnx", "ONNX models")
        self.label = f"ONNX model {path}"
        self.path = path
        self._base = os.path.dirname(path)
        self._model = self._onnx.load(path, load_external_data=False)
        if not self._model.ir_version and not self._model.HasField("graph"):
            raise ValueError("not an ONNX model (no IR version, no graph)")
        m = self._model
        self.meta = {
            k: getattr(m, k) for k in ("producer_name", "producer_version") if getattr(m, k)
        }
        if m.graph.name:
            self.meta["graph"] = m.graph.name

    def tensors(self) -> Iterator[TensorInfo]:
        self._check_open()
        names = self._onnx.TensorProto.DataType
        for t in self._model.graph.initializer:
            code = names.Name(t.data_type)
            dtype = _ONNX_DTYPES.get(code, code.lower())
            yield TensorInfo(
                t.name, tuple(int(d) for d in t.dims), dtype, lambda t=t: self._load(t)
            )

    def _load(self, t) -> np.ndarray:
        self._check_open()
        onnx = self._onnx
        if onnx.external_data_helper.uses_external_data(t):
            # older onnx writes the data it reads back into the proto: read from a copy
            c = onnx.TensorProto()
            c.CopyFrom(t)
            t = c
        try:
            a = onnx.numpy_helper.to_array(t, base_dir=self._base)
        except Exception as e:  # onnx's words name neither the model nor (always) the tensor
            raise ValueError(f"{self.path}: initializer {t.name!r}: {_describe(e)}") from e
        name = a.dtype.name
        if name == "bfloat16":
            return _widen_bf16(a.view(np.uint16))
        if name.startswith("float") and name not in _NATIVE_FLOATS:
            return a.astype(np.float32)  # ml_dtypes' float8/float4: widening is exact
        return a

    def close(self) -> None:
        self._model = None
        super().close()


# ---- paths ---------------------------------------------------------------------------------------


def _is_weight_file(filename: str) -> bool:
    if filename in _NOT_WEIGHTS or filename.startswith("rng_state"):
        return False
    return os.path.splitext(filename)[1].lower() in WEIGHT_SUFFIXES


def _load_index(path: str) -> dict[str, str]:
    """A sharded checkpoint index's weight_map (tensor → shard file name); raises saying why not."""
    _check_regular(path)
    with open(path, encoding="utf-8") as f:
        try:
            index = json.load(f)
        except RecursionError:  # '[' * 100000: json's decoder recurses per level
            raise ValueError("JSON nested too deeply") from None
    wm = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wm, dict) or not all(isinstance(v, str) for v in wm.values()):
        raise ValueError("not a sharded checkpoint index (no weight_map of file names)")
    return wm


def _read_index(path: str) -> dict[str, str] | None:
    """A sharded checkpoint index's weight_map, or None if `path` is not a readable one."""
    try:
        return _load_index(path)
    except (OSError, ValueError):
        return None


def _classify_folder(folder: str) -> tuple[str, str, str | None] | None:
    """(kind, weights, config) if `folder` holds one model, else None (a zoo).

    One model: a Hugging Face folder (a config.json or adapter_config.json next to model.safetensors,
    pytorch_model.bin, a sharded index of either, the diffusers/peft equivalents, or a single weight
    file of any other name), kind "hf"; or, without a config, a folder with a sharded checkpoint's
    ``*.index.json``, kind "sharded". `weights` is the weight file or index to read.
    """
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return None
    present = set(names)
    config = next((c for c in HF_CONFIG_FILES if c in present), None)
    config_path = os.path.join(folder, config) if config else None
    for w in HF_WEIGHT_FILES:
        if w in present:
            p = os.path.join(folder, w)
            if not w.endswith(_INDEX_SUFFIX):
                if config:
                    return "hf", p, config_path
                continue  # model.safetensors alone (maybe next to other files): not a model folder
            if _read_index(p) is not None:
                return ("hf" if config else "sharded"), p, config_path
    # other sharded indices: safetensors ones first
    indices = [n for n in names if n.endswith(_INDEX_SUFFIX)]
    indices.sort(key=lambda n: (".safetensors" not in n, n))
    for n in indices:
        p = os.path.join(folder, n)
        if _read_index(p) is not None:
            return ("hf" if config else "sharded"), p, config_path
    if config:
        weights = [
            n for n in names if _is_weight_file(n) and os.path.isfile(os.path.join(folder, n))
        ]
        if len(weights) == 1:
            return "hf", os.path.join(folder, weights[0]), config_path
    return None


def _make(name: str, path: str, kind: str, reader, paths: list[str], weights: list[str], meta):
    size, mtime = _stat(paths, weights)
    src = ModelSource(name=name, path=path, size=size, mtime=mtime, kind=kind, meta=dict(meta))
    src._reader = reader
    return src


class _Unreadable(Exception):
    """A file that cannot be opened; the message names the file and says why."""


def _open_file(path: str, name: str) -> ModelSource:
    """A single weight file (or a sharded index file) as one source; raises _Unreadable."""
    try:
        return _open_file_unguarded(path, name)
    except _Unreadable:
        raise
    except Exception as e:
        msg = _describe(e)
        raise _Unreadable(msg if path in msg else f"{path}: {msg}") from e


def _open_file_unguarded(path: str, name: str) -> ModelSource:
    _check_regular(path)
    if path.endswith(_INDEX_SUFFIX):
        return _open_sharded(path, name, "sharded", None)
    suffix = os.path.splitext(path)[1].lower()
    kind = WEIGHT_SUFFIXES.get(suffix)
    if kind is None:
        raise ValueError(
            f"unsupported file type {suffix or '(no suffix)'!r}; expected one of "
            f"{', '.join(WEIGHT_SUFFIXES)} or a sharded checkpoint's {_INDEX_SUFFIX}"
        )
    meta: dict = {}
    if kind == "safetensors":
        f = _SafetensorsFile(path)
        reader: Any = _SafetensorsReader([f])
        if f.metadata:
            meta["metadata"] = dict(f.metadata)
    elif kind == "torch":
        sd, guard = _state_dict_of_file(path)
        reader = _MappingReader(sd, f"PyTorch checkpoint {path}", guard)
    elif kind == "npz":
        reader = _NpzReader(path)
    elif kind == "gguf":
        reader = _GGUFReader(path)
        meta.update(reader.meta)
    else:
        reader = _OnnxReader(path)
        meta.update(reader.meta)
    if next(iter(reader.tensors()), None) is None:
        # a source without tensors would give the scan no row at all: report it instead
        reader.close()
        raise ValueError("the file holds no tensors")
    return _make(name, path, kind, reader, [path], [path], meta)


def _open_sharded(index: str, name: str, kind: str, config: str | None) -> ModelSource:
    weight_map = _load_index(index)
    if not weight_map:
        raise ValueError(f"{index}: the index's weight_map names no tensors")
    folder = os.path.dirname(index)
    # normalised: "./s1" and "sub/../s1" are the shard "s1", opened and counted once
    owner = {t: os.path.normpath(os.path.join(folder, s)) for t, s in weight_map.items()}
    shards: dict[str, list[str]] = {}
    for tensor, shard in owner.items():
        shards.setdefault(shard, []).append(tensor)
    missing = [p for p in shards if not os.path.exists(p)]
    if missing:
        raise FileNotFoundError(f"shard {missing[0]} named in {index} does not exist")
    for p in shards:
        try:
            _check_regular(p)
        except ValueError as e:
            raise ValueError(f"shard {p} named in {index}: {e}") from None
    files = sorted(shards)
    if all(p.endswith(".safetensors") for p in files):
        opened = [_SafetensorsFile(p) for p in files]
        for f in opened:
            lost = set(shards[f.path]) - set(f.names())
            if lost:
                raise KeyError(f"{f.path}: no tensor {min(lost)!r} (named in {index})")
        reader: Any = _SafetensorsReader(opened, owner)
    elif all(WEIGHT_SUFFIXES.get(os.path.splitext(p)[1].lower()) == "torch" for p in files):
        reader = _TorchShardsReader({p: shards[p] for p in files}, f"checkpoint {index}")
    else:
        raise ValueError(f"{index}: shards must all be .safetensors or all PyTorch files")
    meta = _hf_meta(config) if config else {}
    meta["weights"] = [os.path.basename(index), *(os.path.relpath(p, folder) for p in files)]
    paths = [index, *files] + ([config] if config else [])
    return _make(name, folder, kind, reader, paths, files, meta)


def _hf_meta(config: str) -> dict:
    try:
        _check_regular(config)
        with open(config, encoding="utf-8") as f:
            cfg = json.load(f)
    except (OSError, ValueError, RecursionError):
        return {}
    return {k: cfg[k] for k in _HF_META_KEYS if isinstance(cfg, dict) and k in cfg}


def _open_model_folder(folder: str, name: str, how: tuple[str, str, str | None]) -> ModelSource:
    kind, weights, config = how
    if weights.endswith(_INDEX_SUFFIX):
        return _open_sharded(weights, name, kind, config)
    inner = _open_file(weights, name)
    meta = _hf_meta(config) if config else {}
    meta.update(inner.meta)
    meta["weights"] = [os.path.basename(weights)]
    paths = [weights] + ([config] if config else [])
    return _make(name, folder, kind, inner._reader, paths, [weights], meta)


def _entry_error(root: str, path: str, e: OSError) -> SourceError:
    """The error row of a zoo entry that cannot be examined (a symlink loop, a dangling symlink)."""
    why = f"{type(e).__name__}: {e.strerror}" if e.strerror else _describe(e)
    if isinstance(e, FileNotFoundError) and os.path.islink(path):
        why = f"dangling symlink to {os.readlink(path)!r}"
    rel = os.path.relpath(path, root).replace(os.sep, "/")
    return SourceError(rel, path, f"{path}: {why}")


def _zoo_entries(root: str) -> tuple[list[tuple[str, tuple | None]], list[SourceError]]:
    """Model files and model folders under `root`, sorted by path; unreadable folders as errors."""
    found: list[tuple[str, tuple | None]] = []
    errors: list[SourceError] = []

    # depth first, with a stack rather than recursion: a tree thousands of folders deep must not
    # exhaust Python's stack
    stack = [(root, os.path.realpath(root), frozenset({os.path.realpath(root)}))]
    while stack:
        folder, folder_real, seen = stack.pop()
        try:
            entries = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as e:
            rel = os.path.relpath(folder, root).replace(os.sep, "/")
            errors.append(SourceError(rel, folder, f"{folder}: cannot list folder: {_describe(e)}"))
            continue
        subfolders = []
        for e in entries:
            if e.name.startswith("."):
                continue
            try:
                mode = e.stat().st_mode  # follows symlinks: ELOOP, a dangling link... raise here
            except OSError as ex:
                errors.append(_entry_error(root, e.path, ex))
                continue
            if stat.S_ISDIR(mode):
                # realpath costs a stat per component: only symlinks need it
                real = os.path.realpath(e.path) if e.is_symlink() else os.path.join(folder_real, e.name)
                if real in seen:  # a symlink loop
                    continue
                how = _classify_folder(e.path)
                if how is not None:
                    found.append((e.path, how))
                else:
                    subfolders.append((e.path, real, seen | {real}))
            elif _is_weight_file(e.name) or e.name.endswith(_INDEX_SUFFIX):
                if not stat.S_ISREG(mode):  # a FIFO or a device: never opened
                    rel = os.path.relpath(e.path, root).replace(os.sep, "/")
                    errors.append(SourceError(rel, e.path, f"{e.path}: {_not_regular(mode)}"))
                    continue
                # an index left here is one _classify_folder rejected: opening it says why
                found.append((e.path, None))
        stack.extend(reversed(subfolders))

    found = _drop_onnx_external_data(found)
    found.sort(key=lambda item: os.path.relpath(item[0], root).replace(os.sep, "/"))
    return found, errors


def _onnx_external_data(path: str) -> set[str]:
    """Normalised paths of the files an ONNX model keeps initializers in (external data); empty if
    the model cannot be read (opening it then reports why)."""
    try:
        onnx = importlib.import_module("onnx")
        _check_regular(path)
        model = onnx.load(path, load_external_data=False)
    except Exception:  # noqa: BLE001 (the .onnx itself gets the error row)
        return set()
    folder = os.path.dirname(path)
    return {
        os.path.normpath(os.path.join(folder, e.value))
        for t in model.graph.initializer
        for e in t.external_data
        if e.key == "location"
    }


def _drop_onnx_external_data(found: list[tuple[str, tuple | None]]) -> list[tuple[str, tuple | None]]:
    """`found` less the weight-suffixed files (``weights.bin``) that an .onnx next to or above them
    stores its tensors in: they are part of that model, not models of their own. Only .onnx files
    with another weight file under their folder are parsed."""
    files = [p for p, how in found if how is None]
    others = [p for p in files if not p.lower().endswith(".onnx")]
    if not others:
        return found
    data: set[str] = set()
    for p in files:
        if p.lower().endswith(".onnx"):
            folder = os.path.dirname(p) + os.sep
            if any(o.startswith(folder) for o in others):
                data |= _onnx_external_data(p)
    if not data:
        return found
    return [(p, how) for p, how in found if how is not None or os.path.normpath(p) not in data]


def _zoo_names(root: str, paths: list[str]) -> list[str]:
    """Path relative to the root, "/"-separated, without the weight suffix unless that collides."""
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    short = [_strip_weight_suffix(r) if os.path.isfile(p) else r for r, p in zip(rel, paths)]
    counts: dict[str, int] = {}
    for s in short:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else r for s, r in zip(short, rel)]


def _open_path(p: str | os.PathLike, name: str | None) -> Iterator[ModelSource | SourceError]:
    path = os.path.abspath(os.fspath(p))
    base = os.path.basename(path.rstrip(os.sep)) or path
    if not os.path.exists(path):
        yield SourceError(name or base, path, f"{path}: no such file or directory")
        return
    mode = os.stat(path).st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        yield SourceError(name or base, path, f"{path}: {_not_regular(mode)}")
        return
    if os.path.isfile(path):
        if path.endswith(_INDEX_SUFFIX):
            default = os.path.basename(os.path.dirname(path))
        else:
            default = _strip_weight_suffix(base) if _is_weight_file(base) else base
        yield _guarded(lambda: _open_file(path, name or default), name or default, path)
        return
    how = _classify_folder(path)
    if how is not None:
        yield _guarded(lambda: _open_model_folder(path, name or base, how), name or base, path)
        return
    found, errors = _zoo_entries(path)
    if not found and not errors:
        yield SourceError(
            name or base,
            path,
            f"{path}: no model files or model folders found "
            f"(looked for {', '.join(WEIGHT_SUFFIXES)} files and Hugging Face / sharded folders)",
        )
        return
    yield from errors
    names = _zoo_names(path, [p for p, _ in found])
    for (entry, how), rel in zip(found, names):
        model = f"{name}/{rel}" if name else rel
        if how is None:
            yield _guarded(partial(_open_file, entry, model), model, entry)
        else:
            yield _guarded(partial(_open_model_folder, entry, model, how), model, entry)


def _guarded(open_: Callable[[], ModelSource], name: str, path: str) -> ModelSource | SourceError:
    try:
        return open_()
    except Exception as e:  # noqa: BLE001 (one unreadable file must not stop a scan: report it)
        msg = str(e) if isinstance(e, _Unreadable) else _describe(e)
        return SourceError(name, path, msg if path in msg else f"{path}: {msg}")


def _open_object(obj: Any, name: str) -> ModelSource | SourceError:
    if _is_module(obj):
        src = ModelSource(name=name, path=None, size=None, mtime=None, kind="module")
        src._reader = _ModuleReader(obj)
        return src
    sd = unwrap_state_dict(obj)
    why = _no_tensors_error(sd)
    if why:
        return SourceError(name, None, f"state dict {name!r}: {why}")
    src = ModelSource(name=name, path=None, size=None, mtime=None, kind="state_dict")
    src._reader = _MappingReader(sd, f"state dict {name!r}")
    return src


def _check_item(x: Any, where: str) -> str:
    if isinstance(x, (str, os.PathLike)):
        return "path"
    if _is_module(x) or isinstance(x, Mapping):
        return "object"
    raise TypeError(
        f"{where} must be a path (str or os.PathLike), a torch nn.Module or a state dict "
        f"(a mapping of names to tensors or arrays), or a list of them; got {type(x).__name__}"
    )


def open_sources(source: Any, *, name: str | None = None) -> Iterator[ModelSource | SourceError]:
    """The models in `source`, one :class:`ModelSource` each, opened one at a time as iterated.

    `source` is one item or a list/tuple of items, each an ``nn.Module``, a state dict (a Mapping of
    names to torch tensors or numpy arrays; checkpoint wrappers are unwrapped by
    :func:`unwrap_state_dict` and non-array entries skipped), or a path: a weight file
    (.safetensors, .pt/.pth/.bin/.ckpt, .npz, .gguf, .onnx, or a sharded ``*.index.json``), a model
    folder (Hugging Face or sharded checkpoint: one model) or any other folder (a zoo: one model per
    weight file or model folder inside, searched recursively, hidden entries skipped, sorted by
    path and named by the path relative to the folder, weight suffix dropped unless two would then
    share a name).

    A file or folder that cannot be read (missing, corrupt, truncated, an optional package absent)
    yields a :class:`SourceError` in its place, and the other items still yield. Only an argument of
    an unsupported type raises (TypeError), and it does so here, before iteration.

    `name` renames a single item's model (the default is the file stem, the folder name, or
    ``"model"`` for objects); for a zoo it prefixes the relative names (``name/relative``). In a
    list, in-memory items are named ``f"{name or 'model'}_{i}"`` with `i` their list index.
    Close each source (or use it as a context manager) to release its memory maps early.
    """
    if name is not None and not isinstance(name, str):
        raise TypeError(f"name must be a str or None, got {type(name).__name__}")
    if isinstance(source, (list, tuple)):
        items = list(source)
        kinds = [_check_item(x, f"source[{i}]") for i, x in enumerate(items)]
        many = True
    else:
        items, kinds, many = [source], [_check_item(source, "source")], False
    return _iter_sources(items, kinds, many, name)


def _iter_sources(items, kinds, many, name) -> Iterator[ModelSource | SourceError]:
    for i, (x, kind) in enumerate(zip(items, kinds)):
        if kind == "path":
            yield from _open_path(x, None if many else name)
        else:
            yield _open_object(x, f"{name or 'model'}_{i}" if many else (name or "model"))
