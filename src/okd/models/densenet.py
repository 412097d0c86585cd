"""DenseNet-40-12 as the reference defines it: DenseNet-BC, growth 12, 3 blocks of 6 bottleneck layers.

(docs/reference-spec.md §3.3: stem conv 3->24 with no BN/pool after it, compression 0.5, 188,092 params.)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from okd.models.base import Backbone, BackboneSpec
from okd.models.registry import register_backbone
from okd.models.weight_init import init_weights


class DenseLayer(nn.Module):
    """Pre-activation bottleneck: BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3(k), concatenated to its input."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4) -> None:
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, padding=1, bias=False)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv1(self.relu(self.norm1(x)))
        out = self.conv2(self.relu(self.norm2(out)))
        return torch.cat([x, out], 1)


def _dense_block(cin: int, layers: int, growth: int) -> tuple[nn.Sequential, int]:
    block = nn.Sequential(*[DenseLayer(cin + i * growth, growth) for i in range(layers)])
    return block, cin + layers * growth


def _transition(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.BatchNorm2d(cin), nn.ReLU(inplace=True), nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2)
    )


@register_backbone("densenet40_12", aliases=("densenetd40k12", "densenet40"), source="MCL-OKD")
def densenet40_12(num_classes: int = 100) -> Backbone:
    growth, layers = 12, 6
    c = 2 * growth
    stages: list[tuple[str, nn.Module]] = [("conv0", nn.Conv2d(3, c, 3, padding=1, bias=False))]
    for i in range(3):
        block, c = _dense_block(c, layers, growth)
        stages.append((f"block{i + 1}", block))
        if i < 2:
            stages.append((f"trans{i + 1}", _transition(c, c // 2)))
            c = c // 2
    head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    stages += [("head", head), ("fc", nn.Linear(c, num_classes))]
    model = Backbone(stages, BackboneSpec(early="block2", late="block3", input_size=32), c, num_classes)
    init_weights(model, conv_mode="fan_in", linear_zero_bias=True)
    return model
