"""The evaluation preprocessing of a trained run, as data a deployer can read and code can replay.

A network only classifies correctly when its input is prepared as in training: the same side,
the same resize and crop, the same mean/std. ``Preprocessing`` records that for every dataset
(it is written into every export) and applies it to image files with the very code the training
evaluation runs (``EvalFolder``'s resize + centre crop, then ``Normalizer``), so ``okd predict``
and ``okd eval`` cannot drift apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from okd.errors import OKDUserError

INTERPOLATION = "bilinear, antialiased"


@dataclass(frozen=True)
class Preprocessing:
    """RGB image -> shorter side resized to ``resize`` -> centre crop -> ``pad`` zeros each side -> (x/255 - mean)/std.

    The crop is ``size - 2 * pad`` square; ``pad`` is 0 except for the IDX sets (28x28 images
    trained with a 2-pixel zero border at 32x32, data/idx.py).
    """

    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    pad: int = 0

    def to_meta(self) -> dict[str, Any]:
        """Plain JSON: what a deployer (or ``from_meta``) needs to feed the exported network."""
        return {
            "input_size": self.size,
            "mean": list(self.mean),
            "std": list(self.std),
            "preprocessing": {
                "color": "RGB",
                "resize_shorter_side": self.resize,
                "interpolation": INTERPOLATION,
                "center_crop": self.size - 2 * self.pad,
                **({"zero_pad": self.pad} if self.pad else {}),
                "normalize": "(pixel / 255 - mean) / std per channel",
                "layout": "float32 [batch, 3, input_size, input_size]",
            },
        }

    @classmethod
    def from_meta(cls, meta: dict[str, Any], source: str) -> Preprocessing:
        try:
            steps = meta["preprocessing"]
            return cls(int(meta["input_size"]), int(steps["resize_shorter_side"]),
                       tuple(float(v) for v in meta["mean"]), tuple(float(v) for v in meta["std"]), int(steps.get("zero_pad", 0)))
        except (KeyError, TypeError, ValueError):
            raise OKDUserError(f"{source} carries no preprocessing metadata (input size, resize, mean/std); "
                               "re-export it with this okd: `okd export --checkpoint RUN ...`") from None

    def load(self, paths: Sequence[str]) -> torch.Tensor:
        """float32 [N, 3, size, size]: the files decoded and prepared exactly as the run's evaluation set."""
        from okd.data.augment import Normalizer
        from okd.data.folder import SampleList
        from okd.data.imagenet import EvalFolder

        images = EvalFolder(SampleList([(p, 0) for p in paths]), 0, len(paths), size=self.size - 2 * self.pad, resize=self.resize)
        batch = torch.nn.functional.pad(torch.stack([images[i][0] for i in range(len(images))]), (self.pad,) * 4)
        return Normalizer(self.mean, self.std)(batch)


def preprocessing_for(dataset: str, image_size: int | None = None, synthetic_size: int = 32) -> Preprocessing:
    """What the evaluation loader of ``dataset`` does to an image (data/folder.py, imagenet.py, build.py).

    The in-memory sets (CIFAR, digits, synthetic) are stored at their side already, so resizing an
    image of that side is the identity; an image of another side is resized and centre-cropped to it.
    """
    from okd.data.augment import CIFAR10_MEAN, CIFAR10_STD, CIFAR100_MEAN, CIFAR100_STD, IMAGENET_MEAN, IMAGENET_STD
    from okd.data.digits import DIGITS_MEAN, DIGITS_STD
    from okd.data.imagenet import INPUT_SIZE, RESIZE
    from okd.data.synthetic import SYNTHETIC_MEAN, SYNTHETIC_STD

    if dataset == "folder":
        side = image_size or 32  # build_folder's own fallback
        return Preprocessing(side, side, IMAGENET_MEAN, IMAGENET_STD)
    if dataset == "imagenet":
        return Preprocessing(INPUT_SIZE, RESIZE, IMAGENET_MEAN, IMAGENET_STD)
    table = {"cifar100": (32, CIFAR100_MEAN, CIFAR100_STD), "cifar10": (32, CIFAR10_MEAN, CIFAR10_STD),
             "digits": (32, DIGITS_MEAN, DIGITS_STD), "synthetic": (synthetic_size, SYNTHETIC_MEAN, SYNTHETIC_STD)}
    from okd.data.idx import IDX_DATASETS, PADDED, SIDE

    if dataset in IDX_DATASETS:  # grey repeated over RGB, 28x28 with a zero border to 32x32
        idx = IDX_DATASETS[dataset]
        return Preprocessing(PADDED, SIDE, (idx.mean,) * 3, (idx.std,) * 3, (PADDED - SIDE) // 2)
    if dataset not in table:
        raise OKDUserError(f"no known preprocessing for dataset {dataset!r}")
    side, mean, std = table[dataset]
    return Preprocessing(side, side, mean, std)
