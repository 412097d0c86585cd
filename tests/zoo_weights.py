"""One deterministic rule for every tensor of a network, by its key and shape: how the model-zoo fixture
(tests/data/zoo_source_outputs.json, made by tests/make_zoo_fixture.py from the source code) and
tests/test_zoo.py (okd's backbones, through their source key maps) fill the same weights.

Plain sin() of arange, not a random generator, so the values cannot change with the torch version;
a key-dependent phase and frequency make every tensor different. Scales keep activations of order
one through deep nets: conv/linear weights ~ 1/sqrt(fan_in), BN weights near 1, variances in [0.5, 1.5].
"""

from __future__ import annotations

import hashlib
import math
import zlib
from collections.abc import Mapping

import torch
from torch import nn

BATCH, CLASSES, SIDE = 2, 10, 32


def fill_value(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    h = zlib.crc32(key.encode())
    phase, freq = (h % 6283) / 1000, 0.1 + (h // 6283 % 1000) / 1000
    v = torch.sin(torch.arange(math.prod(shape), dtype=torch.float64) * freq + phase).reshape(shape)
    if key.endswith("running_var"):
        return 1.0 + 0.5 * v
    if len(shape) >= 2:
        return v * math.sqrt(3.0 / math.prod(shape[1:]))
    if key.endswith("weight"):
        return 1.0 + 0.2 * v
    return 0.1 * v


def fill_(model: nn.Module, source_keys: Mapping[str, str] | None = None) -> None:
    """Set every floating tensor of ``model`` (made float64 first) from its (source) key."""
    model.double()
    with torch.no_grad():
        for key, tensor in model.state_dict().items():
            if tensor.is_floating_point():
                tensor.copy_(fill_value((source_keys or {}).get(key, key), tuple(tensor.shape)))


def fixed_input() -> torch.Tensor:
    """One key per image, so the images differ (train-mode BN statistics of near-equal images are ill-conditioned)."""
    return torch.stack([fill_value(f"input{i}", (3, SIDE, SIDE)) * 2.0 for i in range(BATCH)])


def layout_digest(shapes: Mapping[str, tuple[int, ...]]) -> str:
    """sha256 of every key with its shape: equal iff two state dicts have the same names and shapes."""
    text = "\n".join(f"{key}:{tuple(shape)}" for key, shape in sorted(shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()


def logits(model: nn.Module, train: bool) -> torch.Tensor:
    """Logits of the fixed input in eval mode (BN running statistics) or train mode (batch statistics)."""
    model.train(train)
    with torch.no_grad():
        out = model(fixed_input())
    return out[1] if isinstance(out, tuple) else out  # L-MCL's models return (embedding, logits)
