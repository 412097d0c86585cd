"""timm and torchvision classifiers as okd backbones: ``timm:NAME``, ``tv:NAME`` (or ``torchvision:NAME``).

The library's model is cut into okd stages in place (see ``stages``), so every method runs on it
through the generic Cohort, and a peer's state dict loads with ``strict=True`` into the library's
own model (``create_library_model``). Models are built with ``pretrained=False`` unless asked, and
pretrained weights come from local caches only (``weights``).
"""

from __future__ import annotations

from torch import nn

from okd.models.base import Backbone
from okd.models.external import timm_layout, torchvision_layout, weights
from okd.models.external.stages import LibraryLayout, assemble, default_branch_points, refuse

LIBRARIES = {"timm": "timm", "tv": "tv", "torchvision": "tv"}  # spelled prefix -> canonical prefix


def split_name(name: str) -> tuple[str, str] | None:
    """``'torchvision:resnet18'`` -> ``('tv', 'resnet18')``; None for a name without a library prefix."""
    prefix, sep, model_name = name.partition(":")
    library = LIBRARIES.get(prefix.strip().lower())
    if not sep or library is None:
        return None
    return library, model_name.strip().lower()


def canonical_name(name: str) -> str:
    """``timm:NAME`` / ``tv:NAME`` after checking that the library has that model."""
    parts = split_name(name)
    assert parts is not None, name
    library, model_name = parts
    (timm_layout if library == "timm" else torchvision_layout).check_name(model_name)
    return f"{library}:{model_name}"


def default_num_classes(canonical: str) -> int:
    library, model_name = _parts(canonical)
    return timm_layout.default_num_classes(model_name) if library == "timm" else 1000


def create_library_model(canonical: str, num_classes: int, pretrained: bool = False) -> nn.Module:
    """The library's own model: what an exported peer's state dict loads into, strictly."""
    library, model_name = _parts(canonical)
    if library == "timm":
        weights_file = None
        if pretrained:
            weights_file = weights.timm_weights_file(canonical, model_name, timm_layout.pretrained_cfg(model_name))
        return timm_layout.create_model(model_name, num_classes, weights_file)
    model = torchvision_layout.create_model(model_name, num_classes)
    if pretrained:
        family = torchvision_layout.family_of(canonical, model_name)
        url, weight_classes = torchvision_layout.weights_url(model_name)
        weights.load_torchvision_weights(canonical, model_name, model, url, weight_classes, family.classifier)
    return model


def create_external_backbone(canonical: str, num_classes: int, pretrained: bool = False) -> Backbone:
    """A freshly built library model as an okd backbone, its stages checked against the library's forward."""
    library, model_name = _parts(canonical)
    if library == "tv":
        torchvision_layout.family_of(canonical, model_name)  # an unknown family is refused before it is built
    model = create_library_model(canonical, num_classes, pretrained)
    layout: LibraryLayout = (timm_layout if library == "timm" else torchvision_layout).layout(canonical, model_name, model)
    return assemble(layout, num_classes)


def _parts(canonical: str) -> tuple[str, str]:
    parts = split_name(canonical)
    assert parts is not None, canonical
    return parts


__all__ = [
    "LIBRARIES",
    "canonical_name",
    "create_external_backbone",
    "create_library_model",
    "default_branch_points",
    "default_num_classes",
    "refuse",
    "split_name",
]
