"""The one weight-initialisation loop every built-in backbone runs after it is built.

The backbones' source codes initialise in slightly different ways, and a cohort must start from
their exact weights, so the differences are keyword options rather than separate loops. Whatever
the options, the modules are visited in ``model.modules()`` order and each draw comes from the
global generator in the same sequence as the source's own loop: the same seed gives the same bits.
"""

from __future__ import annotations

from typing import Literal

from torch import nn


def init_weights(
    model: nn.Module,
    *,
    conv_mode: Literal["fan_in", "fan_out"] = "fan_out",
    conv_zero_bias: bool = False,
    linear_std: float | None = None,
    linear_zero_bias: bool = False,
) -> None:
    """Kaiming-normal (ReLU gain) Conv2d weights, BatchNorm2d 1/0, then the Linear layers as asked.

    ``conv_mode``: fan_out (torchvision's ResNet, VGG, MobileNetV2, WRN) or fan_in (PyTorch's default
    mode, DenseNet). ``conv_zero_bias`` zeroes the conv biases (only VGG's convs have one).
    ``linear_std`` draws Linear weights from N(0, std) instead of keeping PyTorch's default;
    ``linear_zero_bias`` zeroes their bias. With neither, Linear layers keep their default init.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode=conv_mode, nonlinearity="relu")
            if conv_zero_bias:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0, linear_std)
            if linear_zero_bias:
                nn.init.zeros_(m.bias)
