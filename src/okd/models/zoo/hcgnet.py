"""L-MCL's HCGNet-A2 (growth rates 24/36/64), built by okd's HCGNet, and both HCGNets' key maps.

okd's HCGNet modules name the gates by role (``forget``, ``update``), the source names every layer
flat inside ``features``; the map below pairs them, one prefix per layer.
"""

from __future__ import annotations

from okd.models.base import Backbone
from okd.models.hcgnet import build_hcgnet
from okd.models.registry import register_backbone
from okd.models.zoo.keys import KeyMap, register_key_map

_GATED = {  # okd suffix inside an SMG / Transition -> the source's
    "conv.0.0.": "conv1_1x1.norm.", "conv.0.2.": "conv1_1x1.conv.",
    "conv.1.0.": "conv2_3x3.norm.", "conv.1.2.": "conv2_3x3.conv.",
    "forget.pool.score.": "global_forget_context.", "forget.fc1.": "fc1.", "forget.bn.": "bn_forget.", "forget.fc2.": "fc2.",
    "update.conv3x3.0.": "conv_3x3.norm.", "update.conv3x3.2.": "conv_3x3.conv.",
    "update.conv5x5.0.": "conv_5x5.norm.", "update.conv5x5.2.": "conv_5x5.conv.",
    "update.pool3x3.score.": "global_context3x3.", "update.pool5x5.score.": "global_context5x5.",
    "update.fuse.": "fcall.", "update.bn.": "bn_attention.", "update.fc3x3.": "fc3x3.", "update.fc5x5.": "fc5x5.",
}


def hcgnet_key_map(backbone: Backbone) -> KeyMap:
    """okd HCGNet -> winycg's ``HCGNet`` (as in L-MCL's ``models/hcgnet_cifar.py``)."""
    units: dict[str, str] = {}
    for stage in backbone.stage_names:
        if stage.startswith("block"):
            for j in range(len(backbone.stage(stage))):
                units[f"{stage}.{j}."] = f"features.HybridBlock{stage[5:]}.SMG{j + 1}."
        elif stage.startswith("trans"):
            units[f"{stage}."] = f"features.Transition{stage[5:]}."
    keys = {ours + suffix: theirs + source for ours, theirs in units.items() for suffix, source in _GATED.items()}
    return keys | {"conv0.": "features.conv0.", "head.0.": "features.norm5.", "fc.": "classifier."}


@register_backbone("hcgnet_a2", aliases=("hcgnet_A2",), source="L-MCL")
def hcgnet_a2(num_classes: int = 100) -> Backbone:
    """L-MCL's hcgnet_A2_cifar: HCGNet with growth rates 24/36/64, 8 SMG modules per hybrid block."""
    return build_hcgnet((24, 36, 64), num_classes)


register_key_map("hcgnet_a1", "L-MCL", hcgnet_key_map)
register_key_map("hcgnet_a2", "L-MCL", hcgnet_key_map)
