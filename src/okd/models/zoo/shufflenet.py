"""CIFAR ShuffleNets: RepDistiller's ShuffleV1 and ShuffleV2, L-MCL's ShuffleNetV2 0.5x and 1x.

All keep 32x32 inputs at full resolution through the stem (no max-pool) and downsample three times
(32 -> 4), then global average pooling (the source's ``avg_pool2d(4)``) and one Linear. The two
codebases' ShuffleNetV2 differ in the stem only: RepDistiller's is a 1x1 conv, L-MCL's a 3x3 conv,
so RepDistiller's ShuffleV2 and L-MCL's 1x are separate backbones. No explicit init (PyTorch's
defaults), as the sources.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from okd.models.base import Backbone, BackboneSpec, global_pool
from okd.models.zoo.keys import zoo_backbone


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """[N, g*c, H, W] -> interleave the g groups' channels, so grouped convs see every group next."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _stem(kernel: int) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, 24, kernel, padding=kernel // 2, bias=False),
                                     bn1=nn.BatchNorm2d(24), relu=nn.ReLU(inplace=True)))


def _backbone(stem: nn.Module, layers: list[nn.Module], head: nn.Module, width: int, num_classes: int) -> Backbone:
    stages = [("stem", stem), *((f"layer{i + 1}", layer) for i, layer in enumerate(layers)), ("head", head),
              ("fc", nn.Linear(width, num_classes))]
    return Backbone(stages, BackboneSpec(early="layer2", late="layer3", input_size=32), width, num_classes)


# --- ShuffleNet V1 (groups 3) -------------------------------------------------------------------------

class ShuffleV1Unit(nn.Module):
    """Grouped 1x1 - shuffle - depthwise 3x3 - grouped 1x1; stride 2 concatenates an avg-pooled input."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int) -> None:
        super().__init__()
        mid = cout // 4
        self.first_groups = 1 if cin == 24 else groups  # the stem's 24 channels are not grouped (as the source)
        self.stride = stride
        self.conv1 = nn.Conv2d(cin, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, cout, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(cout)

    def forward(self, x: Tensor) -> Tensor:
        out = channel_shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.stride == 2:
            return F.relu(torch.cat([out, F.avg_pool2d(x, 3, stride=2, padding=1)], 1))
        return F.relu(out + x)


def shufflenet_v1(num_classes: int, widths: tuple[int, int, int] = (240, 480, 960), blocks: tuple[int, int, int] = (4, 8, 4),
                  groups: int = 3) -> Backbone:
    layers: list[nn.Module] = []
    cin = 24
    for width, n in zip(widths, blocks):
        # the first unit of a stage concatenates its pooled input, so its own branch makes width - cin channels
        units = [ShuffleV1Unit(cin if j == 0 else width, width - cin if j == 0 else width, 2 if j == 0 else 1, groups) for j in range(n)]
        layers.append(nn.Sequential(*units))
        cin = width
    return _backbone(_stem(1), layers, global_pool(), widths[-1], num_classes)


@zoo_backbone("shufflev1", "RepDistiller", {"stem": "", "fc": "linear."}, aliases=("shufflenetv1",))
def shufflev1(num_classes: int = 100) -> Backbone:
    """RepDistiller's ShuffleV1: groups 3, widths 240/480/960, units 4/8/4, 1x1 stem."""
    return shufflenet_v1(num_classes)


# --- ShuffleNet V2 -----------------------------------------------------------------------------------

class ShuffleV2Unit(nn.Module):
    """Split channels in half; one half passes, the other goes 1x1 - depthwise 3x3 - 1x1; concat, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, 3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> Tensor:
        c = x.shape[1] // 2
        kept, branch = x[:, :c], x[:, c:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = F.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride-2 unit: both branches see the whole input (depthwise-pointwise | pointwise-depthwise-pointwise)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        mid = cout // 2
        self.conv1 = nn.Conv2d(cin, cin, 3, stride=2, padding=1, groups=cin, bias=False)
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv2 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> Tensor:
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = self.bn4(self.conv4(F.relu(self.bn3(self.conv3(x)))))
        right = F.relu(self.bn5(self.conv5(right)))
        return channel_shuffle(torch.cat([left, right], 1), 2)


def shufflenet_v2(widths: tuple[int, int, int, int], num_classes: int, stem_kernel: int, blocks: tuple[int, int, int] = (3, 7, 3)) -> Backbone:
    """``widths``: the three stages' and the last 1x1 conv's channels; each stage is a stride-2 unit + ``blocks``."""
    layers: list[nn.Module] = []
    cin = 24
    for width, n in zip(widths[:3], blocks):
        layers.append(nn.Sequential(ShuffleV2Down(cin, width), *(ShuffleV2Unit(width) for _ in range(n))))
        cin = width
    head = nn.Sequential(OrderedDict(conv2=nn.Conv2d(cin, widths[3], 1, bias=False), bn2=nn.BatchNorm2d(widths[3]),
                                     relu=nn.ReLU(inplace=True), pool=global_pool()))
    return _backbone(_stem(stem_kernel), layers, head, widths[3], num_classes)


_V2_KEYS = {"stem": "", "head": "", "fc": "linear."}


@zoo_backbone("shufflev2", "RepDistiller", _V2_KEYS, aliases=("repdistiller_shufflenetv2",))
def shufflev2(num_classes: int = 100) -> Backbone:
    """RepDistiller's ShuffleV2: net size 1 (116/232/464, 1024), 1x1 stem."""
    return shufflenet_v2((116, 232, 464, 1024), num_classes, stem_kernel=1)


@zoo_backbone("shufflenetv2_1x", "L-MCL", _V2_KEYS, aliases=("shufflenetv2_1x_cifar",))
def shufflenetv2_1x(num_classes: int = 100) -> Backbone:
    """L-MCL's ShuffleNetV2_1x_cifar: 116/232/464, 1024, 3x3 stem."""
    return shufflenet_v2((116, 232, 464, 1024), num_classes, stem_kernel=3)


@zoo_backbone("shufflenetv2_05x", "L-MCL", _V2_KEYS, aliases=("shufflenetv2_05x_cifar", "shufflenetv2_0.5x"))
def shufflenetv2_05x(num_classes: int = 100) -> Backbone:
    """L-MCL's ShuffleNetV2_05x_cifar: 48/96/192, 1024, 3x3 stem."""
    return shufflenet_v2((48, 96, 192, 1024), num_classes, stem_kernel=3)
