"""RepDistiller's ``mobile_half``: MobileNetV2 at width 0.5, expansion 6, made for 32x32 CIFAR images.

Its stem is a stride-2 conv (32 -> 16), so the seven inverted-residual groups end at 2x2; the last
1x1 conv keeps 1280 channels (only widths > 1 widen it), then average pooling of the 2x2 map and
one Linear. Inverted residuals: 1x1 expand - depthwise 3x3 - linear 1x1, identity shortcut when the
shape is kept (even at expansion 1 the expand conv is there, as in the source). Init as the source:
conv N(0, 2/(k*k*out)), BN 1/0, Linear N(0, 0.01) with zero bias.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from okd.models.base import Backbone, BackboneSpec, global_pool
from okd.models.weight_init import init_weights
from okd.models.zoo.keys import zoo_backbone

# expansion, output channels, blocks, first stride (the source's setting for CIFAR)
SETTING = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = cin * expansion
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


def mobilenetv2(width: float, num_classes: int, expansion: int = 6) -> Backbone:
    cin = int(32 * width)
    stages: list[tuple[str, nn.Module]] = [("conv1", _conv_bn_relu(3, cin, 3, 2))]
    for i, (t, c, n, s) in enumerate(SETTING):
        cout = int(c * width)
        blocks = [InvertedResidual(cin if j == 0 else cout, cout, s if j == 0 else 1, expansion if t != 1 else 1) for j in range(n)]
        stages.append((f"blocks{i}", nn.Sequential(*blocks)))
        cin = cout
    last = int(1280 * width) if width > 1.0 else 1280
    stages += [("head", nn.Sequential(OrderedDict(conv2=_conv_bn_relu(cin, last, 1, 1), pool=global_pool()))),
               ("fc", nn.Linear(last, num_classes))]
    model = Backbone(stages, BackboneSpec(early="blocks3", late="blocks5", input_size=32), last, num_classes)
    init_weights(model, linear_std=0.01, linear_zero_bias=True)
    return model


_RENAMES = {f"blocks{i}": f"blocks.{i}." for i in range(len(SETTING))} | {"head": "", "fc": "classifier.0."}


@zoo_backbone("mobile_half", "RepDistiller", _RENAMES, aliases=("mobilenetv2",))
def mobile_half(num_classes: int = 100) -> Backbone:
    """RepDistiller's ``mobile_half`` (its ``MobileNetV2`` in ``model_dict``): MobileNetV2 x0.5, T=6."""
    return mobilenetv2(0.5, num_classes)
