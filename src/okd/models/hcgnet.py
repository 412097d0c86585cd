"""HCGNet-A1 as the reference defines it (reference-spec §3.5): 1,102,651 params, 0.155 GMac.

Hybrid blocks densely concatenate SMG modules (global dense connectivity); inside each SMG a
forget gate rescales the bottleneck output channel-wise and an update gate adds a per-channel
global context vector (residual-style gated connectivity). Transitions use the same two gates
on a stride-2 3x3 conv instead of pooling. No explicit weight init: every layer keeps PyTorch's
default, as the reference does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from okd.models.base import Backbone, BackboneSpec
from okd.models.registry import register_backbone


class BasicConv(nn.Sequential):
    """Pre-activation conv: BN(in) -> ReLU -> conv (no bias), the reference's ``BasicConv``."""

    def __init__(
        self,
        cin: int,
        cout: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__(
            nn.BatchNorm2d(cin),
            nn.ReLU(inplace=True),
            nn.Conv2d(cin, cout, kernel_size, stride, padding, dilation, groups, bias=False),
        )


class AttentionPool(nn.Module):
    """Global context [B, C, 1, 1]: a sum over H*W weighted by a softmax of a 1x1 conv's scores.

    Used three times per gated unit (forget gate, both update-gate branches); a learned spatial
    weighting instead of plain average pooling, so the context can focus on salient positions.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.score = nn.Conv2d(channels, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        weights = torch.softmax(self.score(x).flatten(1), dim=1)  # [B, H*W]
        context = torch.bmm(x.flatten(2), weights.unsqueeze(2))  # [B, C, 1]
        return context.unsqueeze(3)


class ForgetGate(nn.Module):
    """Channel gate in (0, 1) from the global context: sigmoid(fc2(tanh(BN1d(fc1(context)))))."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.pool = AttentionPool(channels)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.bn = nn.BatchNorm1d(hidden)  # on [B, hidden]: needs batch > 1 in train mode
        self.fc2 = nn.Conv2d(hidden, channels, 1)

    def forward(self, s: Tensor) -> Tensor:
        h = torch.tanh(self.bn(self.fc1(self.pool(s)).flatten(1)))
        return torch.sigmoid(self.fc2(h[:, :, None, None]))


class UpdateGate(nn.Module):
    """New per-channel information [B, C, 1, 1] fused from two receptive fields.

    A depthwise 3x3 and a dilated depthwise 3x3 (5x5 field) give two attention-pooled contexts;
    a selective-kernel-like softmax over the two branches, per channel, mixes them. The result is
    a global vector (broadcast over H x W by the caller), not a spatial map.
    """

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.conv3x3 = BasicConv(channels, channels, 3, padding=1, groups=channels)
        self.conv5x5 = BasicConv(channels, channels, 3, padding=2, groups=channels, dilation=2)
        self.pool3x3 = AttentionPool(channels)
        self.pool5x5 = AttentionPool(channels)
        self.fuse = nn.Conv2d(2 * channels, hidden, 1)
        self.bn = nn.BatchNorm1d(hidden)  # on [B, hidden]: needs batch > 1 in train mode
        self.fc3x3 = nn.Conv2d(hidden, channels, 1)
        self.fc5x5 = nn.Conv2d(hidden, channels, 1)

    def forward(self, s: Tensor) -> Tensor:
        c3 = self.pool3x3(self.conv3x3(s))
        c5 = self.pool5x5(self.conv5x5(s))
        u = torch.tanh(self.bn(self.fuse(torch.cat([c3, c5], 1)).flatten(1)))[:, :, None, None]
        w = torch.softmax(torch.stack([self.fc3x3(u), self.fc5x5(u)]), dim=0)  # across branches
        return w[0] * c3 + w[1] * c5


class GatedConv(nn.Module):
    """Two BasicConvs giving s, then ``s * forget(s) + update(s)``: the core of SMG and Transition."""

    def __init__(self, conv: nn.Sequential, channels: int, forget_hidden: int, update_hidden: int) -> None:
        super().__init__()
        self.conv = conv
        self.forget = ForgetGate(channels, forget_hidden)
        self.update = UpdateGate(channels, update_hidden)

    def forward(self, x: Tensor) -> Tensor:
        s = self.conv(x)
        return s * self.forget(s) + self.update(s)


class SMG(GatedConv):
    """Selective-memory-gated module: bottleneck 1x1 (4g) + 4-group 3x3 (g), gated, concatenated to x."""

    def __init__(self, cin: int, growth: int, bn_size: int = 4, groups: int = 4) -> None:
        width = bn_size * growth
        conv = nn.Sequential(
            BasicConv(cin, width, 1), BasicConv(width, growth, 3, padding=1, groups=groups)
        )
        # forget_factor 2 -> hidden g/2; reduction_factor 2 on the 2g concat -> hidden g
        super().__init__(conv, growth, growth // 2, 2 * growth // 2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, super().forward(x)], 1)


class Transition(GatedConv):
    """Downsampling by a gated stride-2 3x3 conv (no pooling, no dense concatenation)."""

    def __init__(self, cin: int, cout: int) -> None:
        mid = cin - (cin - cout) // 2
        conv = nn.Sequential(BasicConv(cin, mid, 1), BasicConv(mid, cout, 3, stride=2, padding=1))
        # forget_factor 4 -> hidden out/4; reduction_factor 4 on the 2*out concat -> hidden out/2
        super().__init__(conv, cout, cout // 4, 2 * cout // 4)


def _hybrid_block(cin: int, modules: int, growth: int) -> tuple[nn.Sequential, int]:
    block = nn.Sequential(*[SMG(cin + j * growth, growth) for j in range(modules)])
    return block, cin + modules * growth


def build_hcgnet(growth_rates: tuple[int, int, int], num_classes: int, modules: tuple[int, int, int] = (8, 8, 8)) -> Backbone:
    """A CIFAR HCGNet: three hybrid blocks of the given growth rates, two gated transitions halving the width."""
    c = 2 * growth_rates[0]
    stages: list[tuple[str, nn.Module]] = [("conv0", nn.Conv2d(3, c, 3, padding=1, bias=False))]
    for i, (growth, n) in enumerate(zip(growth_rates, modules)):
        block, c = _hybrid_block(c, n, growth)
        stages.append((f"block{i + 1}", block))
        if i < len(growth_rates) - 1:
            stages.append((f"trans{i + 1}", Transition(c, c // 2)))
            c = c // 2
    head = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
    stages += [("head", head), ("fc", nn.Linear(c, num_classes))]
    return Backbone(stages, BackboneSpec(early="block2", late="block3", input_size=32), c, num_classes)


@register_backbone("hcgnet_a1", aliases=("hcgnet_A1", "hcgnet"), source="MCL-OKD")
def hcgnet_a1(num_classes: int = 100) -> Backbone:
    return build_hcgnet((12, 24, 36), num_classes)
