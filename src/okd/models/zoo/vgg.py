"""RepDistiller's CIFAR VGGs with BatchNorm (vgg8/11/13/19; its ``model_dict`` maps these names to ``*_bn``).

Five conv blocks (3x3 conv with bias, BN, ReLU), max-pooled after the first three only: RepDistiller
pools after the fourth only for 64x64 inputs, so on 32x32 the last two blocks both see 4x4 maps;
then global average pooling and one Linear(512, C). Its own VGG-16 is not here: okd's ``vgg16`` is
MCL-OKD's (a different net). Init as the source: conv N(0, 2/(k*k*out)) with zero bias, BN 1/0,
Linear N(0, 0.01) with zero bias.
"""

from __future__ import annotations

from torch import nn

from okd.models.base import Backbone, BackboneSpec, global_pool
from okd.models.weight_init import init_weights
from okd.models.zoo.keys import zoo_backbone

CONFIGS = {  # widths of the convs of each of the five blocks
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg19": ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def _block(cin: int, widths: tuple[int, ...], pool: bool) -> nn.Sequential:
    """conv-BN-ReLU per width (the source's block ends at the last BN; its ReLU and pool follow at the
    same indices, so the keys match)."""
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(cin, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        cin = width
    if pool:
        layers.append(nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def rd_vgg(config: tuple[tuple[int, ...], ...], num_classes: int) -> Backbone:
    stages: list[tuple[str, nn.Module]] = []
    cin = 3
    for i, widths in enumerate(config):
        stages.append((f"block{i}", _block(cin, widths, pool=i < 3)))
        cin = widths[-1]
    stages += [("pool", global_pool()), ("fc", nn.Linear(512, num_classes))]
    model = Backbone(stages, BackboneSpec(early="block3", late="block4", input_size=32), 512, num_classes)
    init_weights(model, conv_zero_bias=True, linear_std=0.01, linear_zero_bias=True)
    return model


for _name, _config in CONFIGS.items():
    def _factory(num_classes: int = 100, config: tuple[tuple[int, ...], ...] = _config) -> Backbone:
        return rd_vgg(config, num_classes)

    _factory.__doc__ = f"RepDistiller's {_name} ({_name}_bn): {sum(map(len, _config))} convs + 1 Linear."
    zoo_backbone(_name, "RepDistiller", {"fc": "classifier."}, aliases=(f"{_name}_bn",))(_factory)
