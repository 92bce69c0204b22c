"""Writes a bfloat16 safetensors checkpoint with a Llama-style decoder's shapes and one planted
collapsed layer, streaming tensor by tensor (memory: one tensor at a time).

    python benchmarks/make_synthetic_llm.py OUT.safetensors [--shapes tinyllama-1.1b|llama-7b|tiny]

Weights are N(0, 0.02²) (Llama's init), rounded to bfloat16 (round to nearest even). The planted
layer is ``model.layers.{L//3}.mlp.down_proj.weight``: three quarters of its input columns (FFN
neurons) are exactly zero, dead units as heavy regularisation leaves them, so its rank is at most
ff/4 < hidden and its smallest singular value is 0; rounding to bfloat16 keeps zeros zero. No numpy
bfloat16 and no torch needed: the file is written in the safetensors format directly (8-byte header
length, JSON header, raw little-endian data).
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import time

import numpy as np


def planted_name(shapes: dict) -> str:
    n = sum(1 for k in shapes if k.endswith("mlp.down_proj.weight"))
    return f"model.layers.{n // 3}.mlp.down_proj.weight"


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 bit patterns (uint16), round to nearest even (finite inputs)."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def tensor(name: str, shape: tuple, rng: np.random.Generator, planted: str) -> np.ndarray:
    if len(shape) == 1:
        return np.ones(shape, dtype=np.float32)
    w = rng.standard_normal(shape, dtype=np.float32)
    w *= 0.02
    if name == planted:
        w[:, shape[1] // 4:] = 0.0
    return w


def _torch_tensor(name: str, shape: tuple, gen, planted: str, device: str) -> np.ndarray:
    """The same recipe drawn by torch on `device` (a GPU makes a 7B checkpoint in seconds), as bf16 bits."""
    import torch

    if len(shape) == 1:
        w = torch.ones(shape, dtype=torch.bfloat16)
    else:
        w = (torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02)
        if name == planted:
            w[:, shape[1] // 4:] = 0.0
        w = w.to(torch.bfloat16).cpu()
    return w.view(torch.int16).numpy().view(np.uint16)


def write(path: str, shapes: dict, seed: int = 0, torch_device: str | None = None) -> dict:
    rng = np.random.default_rng(seed)
    gen = None
    if torch_device is not None:
        import torch

        gen = torch.Generator(device=torch_device).manual_seed(seed)
    planted = planted_name(shapes)
    header, offset = {}, 0
    for name, shape in shapes.items():
        nbytes = int(np.prod(shape)) * 2
        header[name] = {"dtype": "BF16", "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header["__metadata__"] = {"format": "pt", "planted_collapsed": planted}
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # align the data to 8 bytes
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in shapes.items():
            if gen is not None:
                f.write(_torch_tensor(name, shape, gen, planted, torch_device).tobytes())
            else:
                f.write(to_bf16_bits(tensor(name, shape, rng, planted)).tobytes())
    return {"path": path, "bytes": 8 + len(blob) + offset, "tensors": len(shapes), "planted": planted,
            "seconds": time.perf_counter() - t0}


def main(argv=None) -> int:
    from rankscope.scan.examples import DECODERS, decoder_shapes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--shapes", default="tinyllama-1.1b", choices=sorted(DECODERS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--torch-device", help="draw the weights with torch on this device (e.g. cuda) instead of numpy")
    args = ap.parse_args(argv)
    info = write(args.out, decoder_shapes(args.shapes), args.seed, args.torch_device)
    print(json.dumps(info))
    return 0


if __name__ == "__main__":
    sys.exit(main())
