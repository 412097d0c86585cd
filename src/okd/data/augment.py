"""Batched crop/flip/normalise on the data's own device: one gather per batch, no per-image loop.

The crop is torchvision's ``RandomCrop(size, padding=pad)`` with zero padding applied to the
uint8 image (before normalisation), followed by ``RandomHorizontalFlip``: sample b is padded
with ``pad`` zeros on every side, its window at (dy_b, dx_b) of the input's size is kept, and
it is mirrored left-right if flip_b is 1. Parameters are drawn by the caller (see loaders.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

CIFAR100_MEAN: tuple[float, float, float] = (0.5071, 0.4867, 0.4408)
CIFAR100_STD: tuple[float, float, float] = (0.2675, 0.2565, 0.2761)
# CIFAR-10: per-channel mean and standard deviation of the 50,000 training images' pixels in [0, 1]
# (the commonly used values, computed the same way as CIFAR-100's above; not the also-copied
# std (0.2023, 0.1994, 0.2010), which averages per-image deviations).
CIFAR10_MEAN: tuple[float, float, float] = (0.4914, 0.4822, 0.4465)
CIFAR10_STD: tuple[float, float, float] = (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


class Normalizer:
    """uint8 -> float ``(x/255 - mean)/std`` as one multiply-add with precomputed per-channel terms."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device | str = "cpu") -> None:
        mean_t = torch.tensor(mean, dtype=torch.float64)
        std_t = torch.tensor(std, dtype=torch.float64)
        self.mean, self.std = tuple(mean), tuple(std)
        self.scale = (1.0 / (255.0 * std_t)).float().to(device)
        self.shift = (-mean_t / std_t).float().to(device)

    def __call__(self, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        """Normalise a uint8 [B, C, H, W] batch; ``channels_last`` picks the output memory format."""
        shape = (1, -1, 1, 1)
        out = torch.addcmul(self.shift.view(shape), images, self.scale.view(shape))  # uint8 promoted in-kernel: one pass
        if channels_last:
            out = out.contiguous(memory_format=torch.channels_last)
        return out

    def channels_minor(self, images_bhwc: torch.Tensor) -> torch.Tensor:
        """Normalise a uint8 [B, H, W, C] tensor (channel innermost), keeping that layout."""
        return torch.addcmul(self.shift, images_bhwc, self.scale)


def crop_flip(batch: torch.Tensor, pad: int = 0, offsets: torch.Tensor | None = None, flips: torch.Tensor | None = None) -> torch.Tensor:
    """Crop (zero padding ``pad``) and mirror a uint8 [b, C, H, W] batch, per-sample parameters.

    ``offsets`` is [b, 2] int64 (dy, dx) in ``[0, 2*pad]`` or None (no crop); ``flips`` is [b]
    in {0, 1} or None. Crop and flip together are one source pixel per output pixel, so the
    padded batch is read by a single ``gather`` with per-sample [H, W] indices: one pass over the
    output whatever the batch size, on any device (about twice as fast on CPU as a window view
    followed by a separate flip).
    """
    crop = offsets is not None and pad > 0
    if not crop and flips is None:
        return batch
    size, channels, height, width = batch.shape
    device = batch.device
    if crop:
        batch = F.pad(batch, (pad, pad, pad, pad))  # zeros, in uint8: torchvision pads the image
        dy, dx = offsets[:, 0:1], offsets[:, 1:2]
    else:
        dy = dx = torch.zeros(size, 1, dtype=torch.long, device=device)
    cols = torch.arange(width, device=device).expand(size, width)
    if flips is not None:
        cols = torch.where(flips.bool()[:, None], (width - 1) - cols, cols)
    rows = dy + torch.arange(height, device=device)  # [b, H] rows of the padded image
    index = rows[:, :, None] * batch.shape[-1] + (dx + cols)[:, None, :]  # [b, H, W] flat positions
    index = index.view(size, 1, height * width).expand(size, channels, height * width)
    return batch.flatten(2).gather(2, index).view(size, channels, height, width)


def augment_batch(
    store: torch.Tensor,
    indices: torch.Tensor,
    normalizer: Normalizer,
    pad: int = 0,
    offsets: torch.Tensor | None = None,
    flips: torch.Tensor | None = None,
    channels_last: bool = False,
) -> torch.Tensor:
    """Gather samples ``indices`` of ``store`` (uint8 [N, C, H, W]), crop, flip, normalise.

    Everything runs on ``store.device``; the result is float32 [b, C, H, W], in channels_last
    memory format if asked (the layout change is done on uint8, before the float conversion).
    """
    batch = crop_flip(store.index_select(0, indices), pad, offsets, flips)
    if channels_last:
        return normalizer.channels_minor(batch.permute(0, 2, 3, 1).contiguous()).permute(0, 3, 1, 2)
    return normalizer(batch)
