"""Backbones (registry + definitions) and the generic cohort builder."""

from okd.models import resnet, densenet, vgg, hcgnet  # noqa: F401,I001  (register, in the paper's order)
from okd.models.base import Backbone, BackboneSpec
from okd.models.cohort import SHARE_MODES, Cohort, CohortOutput, average_gradient
from okd.models.complexity import count_macs, count_params
from okd.models.registry import (
    arch_label,
    create_backbone,
    default_num_classes,
    format_arch,
    list_backbones,
    parse_arch,
    register_backbone,
    resolve_backbone_name,
)

__all__ = [
    "Backbone",
    "BackboneSpec",
    "Cohort",
    "CohortOutput",
    "SHARE_MODES",
    "arch_label",
    "average_gradient",
    "count_macs",
    "count_params",
    "create_backbone",
    "default_num_classes",
    "format_arch",
    "list_backbones",
    "parse_arch",
    "register_backbone",
    "resolve_backbone_name",
]
