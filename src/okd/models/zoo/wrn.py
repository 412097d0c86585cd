"""Wide ResNets for CIFAR: RepDistiller's wrn_16_1/16_2/40_1/40_2 and L-MCL's wrn_28_4 (same code).

Pre-activation blocks (BN-ReLU-conv twice); where the width changes, the shortcut is a 1x1 conv of
the *activated* input. After the last stage BN-ReLU and global average pooling (the source's
``avg_pool2d(8)`` of the 8x8 map of a 32x32 image). Init as the source: conv N(0, 2/(k*k*out)), i.e.
kaiming fan_out; BN 1/0; Linear with zero bias. No dropout (the source's default of 0).
"""

from __future__ import annotations

from collections import OrderedDict

from torch import Tensor, nn

from okd.models.base import Backbone, BackboneSpec
from okd.models.weight_init import init_weights
from okd.models.zoo.keys import register_key_map, stage_key_map, zoo_backbone


class WideBasicBlock(nn.Module):
    """The source's ``BasicBlock`` (same attribute names, so the same state-dict keys)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.convShortcut = None if cin == cout else nn.Conv2d(cin, cout, 1, stride=stride, bias=False)  # noqa: N815

    def forward(self, x: Tensor) -> Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        return (x if self.convShortcut is None else self.convShortcut(activated)) + out


def wide_resnet(depth: int, widen: int, num_classes: int) -> Backbone:
    if (depth - 4) % 6:
        raise ValueError(f"a Wide ResNet has depth 6n+4, got {depth}")
    n = (depth - 4) // 6
    widths = (16, 16 * widen, 32 * widen, 64 * widen)
    stages: list[tuple[str, nn.Module]] = [("conv1", nn.Conv2d(3, widths[0], 3, padding=1, bias=False))]
    for i, stride in enumerate((1, 2, 2)):
        blocks = [WideBasicBlock(widths[i] if j == 0 else widths[i + 1], widths[i + 1], stride if j == 0 else 1) for j in range(n)]
        stages.append((f"block{i + 1}", nn.Sequential(*blocks)))
    head = nn.Sequential(OrderedDict(bn1=nn.BatchNorm2d(widths[3]), relu=nn.ReLU(inplace=True),
                                     pool=nn.AdaptiveAvgPool2d(1), flatten=nn.Flatten(1)))
    stages += [("head", head), ("fc", nn.Linear(widths[3], num_classes))]
    model = Backbone(stages, BackboneSpec(early="block2", late="block3", input_size=32), widths[3], num_classes)
    init_weights(model, linear_zero_bias=True)
    return model


_RENAMES = {"block1": "block1.layer.", "block2": "block2.layer.", "block3": "block3.layer.", "head": ""}

for _name, _depth, _widen, _source in (("wrn_16_1", 16, 1, "RepDistiller"), ("wrn_16_2", 16, 2, "RepDistiller"),
                                      ("wrn_40_1", 40, 1, "RepDistiller"), ("wrn_40_2", 40, 2, "RepDistiller"),
                                      ("wrn_28_4", 28, 4, "L-MCL")):
    def _factory(num_classes: int = 100, depth: int = _depth, widen: int = _widen) -> Backbone:
        return wide_resnet(depth, widen, num_classes)

    _factory.__doc__ = f"WRN-{_depth}-{_widen} ({_source}'s {_name})."
    zoo_backbone(_name, _source, _RENAMES)(_factory)


for _name in ("wrn_16_2", "wrn_40_2"):  # L-MCL's wrn_cifar.py is RepDistiller's wrn.py: the same keys
    register_key_map(_name, "L-MCL", lambda backbone: stage_key_map(backbone, _RENAMES))
