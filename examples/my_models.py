"""An okd plugin: your own backbone and your own online-distillation method, registered on import.

From the command line (run from this folder, or with it on PYTHONPATH)::

    okd models --plugin my_models --arch small_cnn
    okd train --plugin my_models --arch small_cnn --method avg_teacher --epochs 5 --out runs/mine

The run saves the plugin's name, so ``okd eval``, ``okd export`` and ``--resume`` import it again.
"""

from __future__ import annotations

import torch
from torch import nn

import okd
from okd.losses.distill import kl_to_targets, sum_cross_entropy


def conv_block(cin: int, cout: int) -> nn.Sequential:
    """conv-BN-ReLU, then halve the image."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.MaxPool2d(2))


@okd.register_backbone("small_cnn", default_num_classes=10)
def small_cnn(num_classes: int = 10) -> okd.Backbone:
    """A 3-block CNN for 32x32 images, as named stages a cohort can split.

    The peers share the stages before a branch point and each get their own copy of the rest:
    ``early`` (DML, MCL-OKD) is where the peers part, ``late`` (ONE, OKDDip) a later stage. The stage
    before ``fc`` must return the pooled feature [B, feature_dim]; ``fc`` maps it to the logits.
    """
    stages = [
        ("block1", conv_block(3, 16)),  # 32 -> 16 px
        ("block2", conv_block(16, 32)),  # 16 -> 8
        ("block3", conv_block(32, 64)),  # 8 -> 4
        ("pool", nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))),  # [B, 64]
        ("fc", nn.Linear(64, num_classes)),
    ]
    spec = okd.BackboneSpec(early="block2", late="block3", input_size=32)
    return okd.Backbone(stages, spec, feature_dim=64, num_classes=num_classes)


@okd.register_method
class AvgTeacher(okd.OKDMethod):
    """Every peer learns from the labels and from the cohort's mean prediction, detached.

    L = sum_i CE(z_i, y) + sum_i KL_T(z_i || stopgrad(mean_j z_j)).
    """

    name = "avg_teacher"
    default_share = "early"
    allowed_shares = ("none", "early")
    # One declaration gives --kd-t, the YAML key kd_t, okd.train(kd_t=...), --help and the check
    options = (okd.Option("kd_t", float, 3.0, "distillation temperature", minimum=0.0, exclusive_minimum=True),)

    def losses(self, output, batch, epoch: int) -> dict[str, torch.Tensor]:
        teacher = torch.stack(output.logits).mean(0).detach()
        return {
            "ce": sum_cross_entropy(output.logits, batch.targets),
            "kd": kl_to_targets(output.logits, [teacher] * len(output.logits), self.opt.kd_t),
        }
