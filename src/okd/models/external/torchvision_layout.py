"""Where to cut a torchvision classifier: a declared layout per family, feature stages found by probing.

torchvision has no ``feature_info``, and its forwards pool and flatten with functions, so each family
declares its module sequence, its pooling steps (functional ones included, exactly as its forward
does them) and its classifier. Feature stages are then found the way timm defines them: a stage ends
at the last module before the spatial resolution changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch
from torch import nn

from okd.errors import OKDUserError
from okd.models.external.stages import (
    LibraryLayout,
    Step,
    flatten,
    global_avg_pool,
    probe_input,
    refuse,
    relu,
    spatial_mean,
)

INPUT_SIZE = 224  # every torchvision classifier is trained and evaluated at 224 px


@dataclass(frozen=True)
class Family:
    pattern: str  # regular expression over the torchvision model name
    body: tuple[str, ...]  # module paths; "x.*" stands for the children of x, in order
    pool: tuple[Step, ...]
    classifier: str


_RESNET_BODY = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
FAMILIES = (
    Family(r"(resnet|resnext|wide_resnet)\d", _RESNET_BODY, ("avgpool", flatten), "fc"),
    Family(r"mobilenet_v2$", ("features.*",), (global_avg_pool, flatten, "classifier.0"), "classifier.1"),
    Family(r"mobilenet_v3_", ("features.*",), ("avgpool", flatten, "classifier.0", "classifier.1", "classifier.2"), "classifier.3"),
    Family(r"efficientnet_", ("features.*",), ("avgpool", flatten, "classifier.0"), "classifier.1"),
    Family(r"convnext_", ("features.*",), ("avgpool", "classifier.0", "classifier.1"), "classifier.2"),
    Family(r"regnet_", ("stem", "trunk_output.*"), ("avgpool", flatten), "fc"),
    Family(r"vgg\d", ("features.*",), ("avgpool", flatten, *(f"classifier.{i}" for i in range(6))), "classifier.6"),
    Family(r"densenet\d", ("features.*",), (relu, global_avg_pool, flatten), "classifier"),
    Family(r"shufflenet_v2_", ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5"), (spatial_mean,), "fc"),
)
KNOWN = "resnet, resnext, wide_resnet, mobilenet_v2/v3, efficientnet, convnext, regnet, vgg, densenet, shufflenet_v2"


def _models() -> object:
    import torchvision.models

    return torchvision.models


def check_name(model_name: str) -> None:
    models = _models()
    if model_name not in models.list_models(module=models):  # type: ignore[attr-defined]
        raise OKDUserError(f"unknown torchvision classification model {model_name!r}; "
                           "list them with python -c \"import torchvision; print(torchvision.models.list_models())\"")


def family_of(okd_name: str, model_name: str) -> Family:
    """The declared layout of ``model_name``'s family; refused by name, before a (maybe huge) model is built."""
    for family in FAMILIES:
        if re.match(family.pattern, model_name):
            return family
    raise refuse(okd_name, [], f"torchvision's {model_name} is not a family it knows ({KNOWN}), "
                               "and torchvision declares no feature stages")


def create_model(model_name: str, num_classes: int) -> nn.Module:
    return _models().get_model(model_name, weights=None, num_classes=num_classes)  # type: ignore[attr-defined]


def weights_url(model_name: str) -> tuple[str, int]:
    """URL of torchvision's default weights for ``model_name`` and their class count."""
    weights = _models().get_model_weights(model_name).DEFAULT  # type: ignore[attr-defined]
    return weights.url, len(weights.meta["categories"])


def _expand(model: nn.Module, body: tuple[str, ...]) -> list[str]:
    paths: list[str] = []
    for entry in body:
        if entry.endswith(".*"):
            parent = entry[:-2]
            paths += [f"{parent}.{name}" for name, _ in model.get_submodule(parent).named_children()]
        else:
            paths.append(entry)
    return paths


_FEATURE_ENDS: dict[str, list[str]] = {}  # probing runs once per model name


@torch.no_grad()
def _feature_ends(okd_name: str, model: nn.Module, body: list[str]) -> list[str]:
    """The last module of each resolution: run the body on a probe image and watch the spatial size."""
    was_training = model.training
    model.eval()
    x = probe_input(INPUT_SIZE)
    sizes: list[tuple[int, ...]] = []
    try:
        for path in body:
            x = model.get_submodule(path)(x)
            if x.dim() != 4:
                raise refuse(okd_name, [], f"its module {path} does not return an image-shaped tensor")
            sizes.append(tuple(x.shape[-2:]))
    finally:
        model.train(was_training)
    ends = [path for i, path in enumerate(body) if i + 1 == len(body) or sizes[i + 1] != sizes[i]]
    return _merge_parameter_free(model, body, ends)


def _merge_parameter_free(model: nn.Module, body: list[str], ends: list[str]) -> list[str]:
    """A stage of only pooling (ShuffleNet's maxpool, VGG's last max-pool) joins its neighbour:
    into the next stage, or the previous one at the end, so every stage a peer may own has weights."""
    def has_weights(segment: list[str]) -> bool:
        return any(True for path in segment for _ in model.get_submodule(path).parameters())

    kept = list(ends)
    start = 0
    for end in ends:
        stop = body.index(end) + 1
        if not has_weights(body[start:stop]) and len(kept) > 1:
            position = kept.index(end)
            kept.pop(position if position + 1 < len(kept) else position - 1)
        start = stop
    return kept


def layout(okd_name: str, model_name: str, model: nn.Module) -> LibraryLayout:
    family = family_of(okd_name, model_name)
    try:
        body = _expand(model, family.body)
    except AttributeError as exc:
        raise refuse(okd_name, [], f"its modules do not match the {family.pattern} layout okd declares ({exc})") from None
    if okd_name not in _FEATURE_ENDS:
        _FEATURE_ENDS[okd_name] = _feature_ends(okd_name, model, body)
    return LibraryLayout(
        name=okd_name,
        model=model,
        body=body,
        feature_ends=list(_FEATURE_ENDS[okd_name]),
        pool=list(family.pool),
        classifier=family.classifier,
        input_size=INPUT_SIZE,
    )

