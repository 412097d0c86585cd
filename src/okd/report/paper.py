"""The original paper's layout (row order, names) and figures, shipped as package data.

The figures live in ``paper_results.json`` (transcribed from the original README; the tests parse
the README text and compare every number), so they can be diffed and reused without importing
code, and a transcription error is a data change, not a code change.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

# The paper's row order of the CIFAR-100 tables, and ImageNet's one backbone.
CIFAR_ROWS: tuple[str, ...] = ("densenet40_12", "resnet32", "vgg16", "resnet110", "hcgnet_a1")
IMAGENET_ROWS: tuple[str, ...] = ("resnet34",)

MODEL_NAMES: dict[str, str] = {
    "densenet40_12": "DenseNet-40-12",
    "resnet32": "ResNet-32",
    "vgg16": "VGG-16",
    "resnet110": "ResNet-110",
    "hcgnet_a1": "HCGNet-A1",
    "resnet34": "ResNet-34",
    # backbones of the successors' published cells (the CIFAR zoo's names)
    "resnet56": "ResNet-56",
    "wrn_16_2": "WRN-16-2",
    "wrn_40_2": "WRN-40-2",
    "shufflenetv2_05x": "ShuffleNetV2 0.5×",
    "shufflenetv2_1x": "ShuffleNetV2 1×",
    "hcgnet_a2": "HCGNet-A2",
    "mobile_half": "MobileNetV2 0.5×",
}
METHOD_NAMES: dict[str, str] = {
    "baseline": "Baseline",
    "dml": "DML",
    "cl_ilr": "CL-ILR",
    "one": "ONE",
    "okddip": "OKDDip",
    "mcl_okd": "MCL-OKD",
    "kdcl": "KDCL",
    "pcl": "PCL",
    "mcl": "MCL",
    "lmcl": "L-MCL",
    "okdph": "OKDPH",
    "switokd": "SwitOKD",
}
# The methods that came after MCL-OKD, whose published CIFAR-100 cells form a table of their own.
SUCCESSOR_METHODS: tuple[str, ...] = ("kdcl", "pcl", "mcl", "lmcl", "okdph", "switokd")
DATASET_NAMES: dict[str, str] = {"cifar100": "CIFAR-100", "imagenet": "ImageNet"}
# Which dataset each table's published figures were measured on.
PAPER_DATASET: dict[str, str] = {"main": "cifar100", "ablation": "cifar100", "imagenet": "imagenet", "successors": "cifar100"}


def model_name(arch: str) -> str:
    """The paper's name of a backbone; a cohort of different backbones joins its peers' ("ResNet-32+ResNet-110")."""
    return "+".join(MODEL_NAMES.get(name, name) for name in arch.split(","))


def dataset_name(dataset: str) -> str:
    return DATASET_NAMES.get(dataset, dataset)


@functools.lru_cache(maxsize=1)
def paper_results() -> dict[str, Any]:
    """The parsed ``paper_results.json`` (cached; treat as read-only)."""
    text = resources.files("okd.report").joinpath("paper_results.json").read_text(encoding="utf-8")
    return json.loads(text)


def paper_figures(kind: str, arch: str, key: str) -> tuple[float | None, float | None]:
    """(single, ens) top-1 error of a cell of table ``kind`` ("main", "imagenet", "ablation", "successors"); None where absent.

    ``key`` is a method name for "main"/"imagenet" and "baseline" | "mcl" | "mcl_dot" for "ablation".
    """
    data = paper_results()
    if kind == "ablation":
        value = data["ablation"].get(arch, {}).get(key)
        return (float(value) if value is not None else None), None
    section = data[{"main": "cifar100", "imagenet": "imagenet", "successors": "successors"}[kind]]
    cell = section.get(arch, {}).get(key)
    if not isinstance(cell, dict):
        return None, None
    return cell.get("single"), cell.get("ens")


def paper_complexity(arch: str) -> tuple[str | None, str | None]:
    """The paper's Params and FLOPs strings of a CIFAR-100 backbone (e.g. "0.47M", "0.07G")."""
    row = paper_results()["cifar100"].get(arch, {})
    return row.get("params"), row.get("flops")


def published_peers(method: str) -> int | None:
    """How many peers the published figure of a successor method was measured with (its source's)."""
    return paper_results()["successors"]["peers"].get(method)


def successor_cells() -> list[tuple[str, str]]:
    """(arch, method) of every published successor figure that okd can run, in the paper's row order
    and then the file's.

    A cell whose backbones or method this installation lacks (the CIFAR zoo's WRN-16-2, a method
    from a plugin) is left out until they are registered: its figure stays in paper_results.json.
    """
    section = paper_results()["successors"]
    rows = list(CIFAR_ROWS) + [a for a, v in section.items() if isinstance(v, dict) and "model" in v and a not in CIFAR_ROWS]
    return [(a, m) for a in rows for m in SUCCESSOR_METHODS if m in section.get(a, {}) and _runnable(a, m)]


def _runnable(arch: str, method: str) -> bool:
    from okd.errors import OKDUserError
    from okd.methods import list_methods
    from okd.models import parse_arch

    try:
        parse_arch(arch)
    except OKDUserError:
        return False
    return method in list_methods()
