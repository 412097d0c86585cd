"""Parameter and multiply-add counts, as the paper's "Params" and "FLOPs" columns.

The reference counts, per image, only the weight multiply-adds of Conv2d and Linear layers (no BN,
activation or bias); we count the same thing with forward hooks on a batch of one.
"""

from __future__ import annotations

import torch
from torch import nn


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_macs(module: nn.Module, input_size: int, channels: int = 3) -> int:
    """Conv2d + Linear weight multiply-adds of one forward pass on one image."""
    total = 0

    def on_conv(m: nn.Conv2d, _inp, out: torch.Tensor) -> None:
        nonlocal total
        kh, kw = m.kernel_size
        total += out.numel() // out.shape[0] * (m.in_channels // m.groups) * kh * kw

    def on_linear(m: nn.Linear, _inp, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() // out.shape[0] * m.in_features

    hooks = []
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
    was_training = module.training
    module.eval()  # BN1d in some gates needs batch > 1 in train mode
    try:
        with torch.no_grad():
            module(torch.zeros(1, channels, input_size, input_size))
    finally:
        module.train(was_training)
        for h in hooks:
            h.remove()
    return total
