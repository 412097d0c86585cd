"""Backbones (registry + definitions) and the generic cohort builder."""

from okd.models import densenet, hcgnet, resnet, vgg  # noqa: F401  (register the backbones)
from okd.models.base import Backbone, BackboneSpec
from okd.models.cohort import SHARE_MODES, Cohort, CohortOutput, average_gradient
from okd.models.complexity import count_macs, count_params
from okd.models.registry import (
    create_backbone,
    default_num_classes,
    list_backbones,
    register_backbone,
    resolve_backbone_name,
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Cohort",
    "CohortOutput",
    "SHARE_MODES",
    "average_gradient",
    "count_macs",
    "count_params",
    "create_backbone",
    "default_num_classes",
    "list_backbones",
    "register_backbone",
    "resolve_backbone_name",
]
