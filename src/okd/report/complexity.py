"""Params and FLOPs of a table row: from the runs when there are any, else computed from okd.models.

The paper's "FLOPs" are conv + linear multiply-adds per image (``okd.models.count_macs``). Class
count and image size change both numbers, so a row with no run of its own is sized for the
table's dataset, and left empty when that dataset's shape is unknown.
"""

from __future__ import annotations

import functools

from okd.report.collect import RunRecord

_KNOWN_CLASSES = {"cifar100": 100, "imagenet": 1000, "digits": 10}


def complexity(arch: str, dataset: str, runs: list[RunRecord]) -> tuple[int | None, int | None]:
    """(params, macs) of the deployed single network of ``arch`` on ``dataset``."""
    for run in runs:
        if run.arch == arch and run.summary.get("params") and run.summary.get("macs_per_image"):
            return int(run.summary["params"]["deployed"]), int(run.summary["macs_per_image"])
    num_classes, size = _KNOWN_CLASSES.get(dataset), None
    if dataset == "synthetic":
        configs = [r.config for r in runs if r.dataset == dataset]
        if configs:
            num_classes, size = configs[0].get("synthetic_classes"), configs[0].get("synthetic_size")
    if num_classes is None:
        return None, None
    return _computed(arch, int(num_classes), size)


@functools.lru_cache(maxsize=64)
def _computed(arch: str, num_classes: int, size: int | None) -> tuple[int | None, int | None]:
    from okd.errors import OKDUserError
    from okd.models import count_macs, count_params, create_backbone

    try:
        backbone = create_backbone(arch, num_classes)
        return count_params(backbone), count_macs(backbone, size or backbone.spec.input_size)
    except (OKDUserError, RuntimeError):  # a backbone this version does not know, or too small an image for it
        return None, None
