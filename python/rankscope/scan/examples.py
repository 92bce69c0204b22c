"""Built-in models: the CLI's example (numpy only) and reference architectures in plain torch.

The reference architectures (ResNet-18/50, BERT-base, decoder shapes) have the layer shapes of the
published models with random weights; they serve the tests and benchmarks (no torchvision, no hub).
"""

from __future__ import annotations

from typing import Any

import numpy as np

#: The planted rank-collapsed layer of :func:`example_model`.
EXAMPLE_COLLAPSED = "blocks.1.mlp.fc2.weight"


def example_model(seed: int = 0) -> dict[str, np.ndarray]:
    """A small transformer-shaped float32 model; ``blocks.1.mlp.fc2.weight`` is planted rank-collapsed
    (rank 6 of 64, the rest at 1e-9 relative: what heavy weight decay drives a layer to). Norm weights
    and biases are included (the scanner skips them, with the reason)."""
    rng = np.random.default_rng(seed)
    d, ff, vocab, layers = 64, 256, 1000, 2

    def dense(out, inp):
        return (rng.standard_normal((out, inp)) / np.sqrt(inp)).astype(np.float32)

    model = {"embed.weight": dense(vocab, d)}
    for i in range(layers):
        for name in ("q", "k", "v", "o"):
            model[f"blocks.{i}.attn.{name}.weight"] = dense(d, d)
        model[f"blocks.{i}.norm.weight"] = np.ones(d, dtype=np.float32)
        model[f"blocks.{i}.mlp.fc1.weight"] = dense(ff, d)
        model[f"blocks.{i}.mlp.fc1.bias"] = np.zeros(ff, dtype=np.float32)
        model[f"blocks.{i}.mlp.fc2.weight"] = dense(d, ff)
    u, _ = np.linalg.qr(rng.standard_normal((d, d)))
    v, _ = np.linalg.qr(rng.standard_normal((ff, d)))
    s = np.concatenate([np.linspace(1.0, 0.5, 6), np.full(d - 6, 1e-9)])
    model[EXAMPLE_COLLAPSED] = ((u * s) @ v.T).astype(np.float32)
    model["head.weight"] = dense(10, d)
    return model


# ---- reference architectures (plain torch) ------------------------------------------------------


def resnet(depth: int = 18, num_classes: int = 1000) -> Any:
    """A ResNet-18/34/50/101-shaped torch model (torchvision's layer shapes, random init)."""
    from torch import nn

    bottleneck = depth >= 50
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    expansion = 4 if bottleneck else 1

    class Block(nn.Module):
        def __init__(self, cin, width, stride):
            super().__init__()
            cout = width * expansion
            if bottleneck:
                self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
                self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
                self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
                self.bn3 = nn.BatchNorm2d(cout)
            else:
                self.conv1 = nn.Conv2d(cin, width, 3, stride, 1, bias=False)
                self.conv2 = nn.Conv2d(width, width, 3, 1, 1, bias=False)
            self.bn1, self.bn2 = nn.BatchNorm2d(width), nn.BatchNorm2d(width)
            self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
                               if stride != 1 or cin != cout else None)

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            cin, layers = 64, []
            for i, (n, width) in enumerate(zip(blocks, (64, 128, 256, 512))):
                stage = []
                for j in range(n):
                    stage.append(Block(cin, width, 2 if (j == 0 and i > 0) else 1))
                    cin = width * expansion
                layers.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.fc = nn.Linear(cin, num_classes)

    return ResNet()


def bert(layers: int = 12, d: int = 768, ff: int = 3072, vocab: int = 30522, positions: int = 512) -> Any:
    """A BERT-base-shaped torch encoder (embeddings, attention, MLP, pooler; random init)."""
    from torch import nn

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.query, self.key, self.value, self.output = (nn.Linear(d, d) for _ in range(4))
            self.attention_norm = nn.LayerNorm(d)
            self.intermediate, self.out = nn.Linear(d, ff), nn.Linear(ff, d)
            self.output_norm = nn.LayerNorm(d)

    class Bert(nn.Module):
        def __init__(self):
            super().__init__()
            self.word_embeddings = nn.Embedding(vocab, d)
            self.position_embeddings = nn.Embedding(positions, d)
            self.token_type_embeddings = nn.Embedding(2, d)
            self.norm = nn.LayerNorm(d)
            self.layer = nn.ModuleList(Layer() for _ in range(layers))
            self.pooler = nn.Linear(d, d)

    return Bert()


#: Decoder shapes (hidden, intermediate, layers, heads, kv heads, vocab).
DECODERS = {
    "tinyllama-1.1b": (2048, 5632, 22, 32, 4, 32000),
    "llama-7b": (4096, 11008, 32, 32, 32, 32000),
    "tiny": (256, 688, 4, 8, 2, 4096),
}


def decoder_shapes(name: str = "tinyllama-1.1b") -> dict[str, tuple[int, ...]]:
    """Tensor name → shape of a Llama-style decoder checkpoint (Hugging Face names)."""
    d, ff, n, heads, kv, vocab = DECODERS[name]
    hd = d // heads
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, d)}
    for i in range(n):
        p = f"model.layers.{i}."
        shapes[p + "self_attn.q_proj.weight"] = (d, d)
        shapes[p + "self_attn.k_proj.weight"] = (kv * hd, d)
        shapes[p + "self_attn.v_proj.weight"] = (kv * hd, d)
        shapes[p + "self_attn.o_proj.weight"] = (d, d)
        shapes[p + "mlp.gate_proj.weight"] = (ff, d)
        shapes[p + "mlp.up_proj.weight"] = (ff, d)
        shapes[p + "mlp.down_proj.weight"] = (d, ff)
        shapes[p + "input_layernorm.weight"] = (d,)
        shapes[p + "post_attention_layernorm.weight"] = (d,)
    shapes["model.norm.weight"] = (d,)
    shapes["lm_head.weight"] = (vocab, d)
    return shapes
