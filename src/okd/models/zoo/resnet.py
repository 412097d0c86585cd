"""RepDistiller's CIFAR ResNets (resnet8 ... resnet110, resnet8x4, resnet32x4): basic blocks, 3 stages.

The same network as RepDistiller's ``models/resnet.py`` with okd's blocks (identical modules and
keys): a 3x3 stem, ``n = (depth - 2) / 6`` post-activation basic blocks per stage, a 1x1 conv + BN
projection wherever the shape changes, global average pooling (RepDistiller's ``AvgPool2d(8)`` on the
8x8 map of a 32x32 image), kaiming fan_out init, Linear left at PyTorch's default.
Its resnet32 is okd's ``resnet32``; its basic-block resnet110 is ``resnet110_basic`` here, since okd's
``resnet110`` is MCL-OKD's bottleneck net.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from okd.models.base import Backbone, BackboneSpec
from okd.models.resnet import BasicBlock, resnet_backbone
from okd.models.zoo.keys import register_key_map, stage_key_map, zoo_backbone

SOURCE = "RepDistiller"
SLIM, WIDE = (16, 16, 32, 64), (32, 64, 128, 256)  # stem width, then the three stages' widths


def rd_resnet(depth: int, widths: tuple[int, int, int, int], num_classes: int) -> Backbone:
    if (depth - 2) % 6:
        raise ValueError(f"a basic-block CIFAR ResNet has depth 6n+2, got {depth}")
    blocks = (depth - 2) // 6
    stem = nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(3, widths[0], 3, padding=1, bias=False), bn1=nn.BatchNorm2d(widths[0]), relu=nn.ReLU(inplace=True)))
    plan = [(f"layer{i + 1}", planes, blocks, stride) for i, (planes, stride) in enumerate(zip(widths[1:], (1, 2, 2)))]
    return resnet_backbone(stem, widths[0], BasicBlock, plan, BackboneSpec(early="layer2", late="layer3", input_size=32), num_classes)


def _register(name: str, depth: int, widths: tuple[int, int, int, int], source_name: str = "", aliases: tuple[str, ...] = ()) -> None:
    def factory(num_classes: int = 100) -> Backbone:
        return rd_resnet(depth, widths, num_classes)

    factory.__doc__ = f"RepDistiller's {source_name or name}: depth {depth}, widths {widths}."
    zoo_backbone(name, SOURCE, {"stem": ""}, aliases)(factory)


for _name, _depth in (("resnet8", 8), ("resnet14", 14), ("resnet20", 20), ("resnet44", 44), ("resnet56", 56)):
    _register(_name, _depth, SLIM)
_register("resnet110_basic", 110, SLIM, "resnet110", aliases=("repdistiller_resnet110",))
_register("resnet8x4", 8, WIDE)
_register("resnet32x4", 32, WIDE)

# L-MCL's resnet56_cifar is RepDistiller's resnet56 with its Linear named ``classifier``.
register_key_map("resnet56", "L-MCL", lambda backbone: stage_key_map(backbone, {"stem": "", "fc": "classifier."}))

# okd's resnet32 is RepDistiller's and L-MCL's resnet32, okd's resnet110 is L-MCL's resnet110_cifar (bottleneck),
# under MCL-OKD's stage names: their checkpoints load through these maps.
_MCL_OKD_STAGES = {"stem": "", "stage1": "layer1.", "stage2": "layer2.", "stage3": "layer3."}
_STEM = {"stem.0.": "conv1.", "stem.1.": "bn1."}
register_key_map("resnet32", "RepDistiller", lambda backbone: stage_key_map(backbone, _MCL_OKD_STAGES) | _STEM)
for _name in ("resnet32", "resnet110"):
    register_key_map(_name, "L-MCL", lambda backbone: stage_key_map(backbone, _MCL_OKD_STAGES | {"fc": "classifier."}) | _STEM)
