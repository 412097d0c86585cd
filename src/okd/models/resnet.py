"""ResNets: CIFAR ResNet-32 (BasicBlock 5-5-5), ResNet-110 (Bottleneck 12-12-12), ImageNet ResNet-34.

Exactly the reference's definitions (docs/reference-spec.md §3.1, §3.2, §3.6): post-activation blocks,
projection shortcut (conv1x1 + BN) wherever the shape changes, kaiming fan_out init, Linear left
at PyTorch's default.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

from okd.models.base import Backbone, BackboneSpec, global_pool
from okd.models.registry import register_backbone
from okd.models.weight_init import init_weights


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _projection(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, planes, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + shortcut)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        width = planes * self.expansion
        self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)  # stride on the 3x3, as the reference
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, width, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _projection(cin, width, stride)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + shortcut)


def _stage(block: type[BasicBlock] | type[Bottleneck], cin: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    layers = []
    for i in range(blocks):
        layers.append(block(cin, planes, stride if i == 0 else 1))
        cin = planes * block.expansion
    return nn.Sequential(*layers), cin


def resnet_backbone(
    stem: nn.Module,
    cin: int,
    block: type[BasicBlock] | type[Bottleneck],
    plan: Sequence[tuple[str, int, int, int]],
    spec: BackboneSpec,
    num_classes: int,
) -> Backbone:
    """Stem, one stage per ``(name, planes, blocks, stride)`` of ``plan``, pooling and ``fc``; kaiming fan_out.

    The MCL-OKD and RepDistiller ResNets differ only in stem, widths and stage names, so they share
    this builder; modules are created in the same order as in the sources, for the same initial weights.
    """
    stages: list[tuple[str, nn.Module]] = [("stem", stem)]
    for name, planes, blocks, stride in plan:
        stage, cin = _stage(block, cin, planes, blocks, stride)
        stages.append((name, stage))
    stages += [("pool", global_pool()), ("fc", nn.Linear(cin, num_classes))]
    model = Backbone(stages, spec, cin, num_classes)
    init_weights(model)  # kaiming fan_out, Linear at PyTorch's default
    return model


def _cifar_resnet(block: type[BasicBlock] | type[Bottleneck], blocks: list[int], num_classes: int) -> Backbone:
    stem = nn.Sequential(_conv3x3(3, 16), nn.BatchNorm2d(16), nn.ReLU(inplace=True))
    plan = [(f"stage{i + 1}", planes, n, stride) for i, (planes, n, stride) in enumerate(zip((16, 32, 64), blocks, (1, 2, 2)))]
    return resnet_backbone(stem, 16, block, plan, BackboneSpec(early="stage2", late="stage3", input_size=32), num_classes)


@register_backbone("resnet32", source="MCL-OKD")
def resnet32(num_classes: int = 100) -> Backbone:
    """CIFAR ResNet-32: BasicBlock [5, 5, 5], widths 16/32/64 (0.47M params)."""
    return _cifar_resnet(BasicBlock, [5, 5, 5], num_classes)


@register_backbone("resnet110", source="MCL-OKD")
def resnet110(num_classes: int = 100) -> Backbone:
    """The reference's ResNet-110: Bottleneck [12, 12, 12] (1.17M params), not the 18-18-18 BasicBlock net."""
    return _cifar_resnet(Bottleneck, [12, 12, 12], num_classes)


@register_backbone("resnet34", default_num_classes=1000, source="MCL-OKD")
def resnet34(num_classes: int = 1000) -> Backbone:
    """torchvision's ImageNet ResNet-34 (v1), with stages named so a cohort can branch it."""
    stem = nn.Sequential(
        nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(64),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )
    plan = [(f"layer{i + 1}", planes, n, stride) for i, (planes, n, stride) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3), (1, 2, 2, 2)))]
    return resnet_backbone(stem, 64, BasicBlock, plan, BackboneSpec(early="layer3", late="layer4", input_size=224), num_classes)
