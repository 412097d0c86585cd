"""VGG-16 for CIFAR as the reference defines it: 13 conv (bias) + BN + ReLU, 5 max-pools, one Linear."""

from __future__ import annotations

from torch import nn

from okd.models.base import Backbone, BackboneSpec, global_pool
from okd.models.registry import register_backbone
from okd.models.weight_init import init_weights


def _conv_bn_relu(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=True), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _vgg_stage(cin: int, cout: int, convs: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += _conv_bn_relu(cin if i == 0 else cout, cout)
    layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


@register_backbone("vgg16", source="MCL-OKD")
def vgg16(num_classes: int = 100) -> Backbone:
    """13 conv layers (64,64 | 128,128 | 256x3 | 512x3 | 512x3) and a single Linear(512, C): 14.77M params."""
    stages: list[tuple[str, nn.Module]] = [
        ("stem", _vgg_stage(3, 64, 2)),
        ("layer1", _vgg_stage(64, 128, 2)),
        ("layer2", _vgg_stage(128, 256, 3)),
        ("layer3", _vgg_stage(256, 512, 3)),
        ("layer4", _vgg_stage(512, 512, 3)),
        # On 32x32 inputs the map is 512x1x1 here, so pooling equals the reference's flatten.
        ("pool", global_pool()),
        ("fc", nn.Linear(512, num_classes)),
    ]
    model = Backbone(stages, BackboneSpec(early="layer3", late="layer4", input_size=32), 512, num_classes)
    init_weights(model, conv_zero_bias=True, linear_std=0.01, linear_zero_bias=True)
    return model
