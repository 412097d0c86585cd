"""Backbones (registry + definitions) and the generic cohort builder."""

from okd.models import resnet, densenet, vgg, hcgnet  # noqa: F401,I001  (register, in the paper's order)
from okd.models import zoo  # noqa: F401,I001  (register the KD literature's CIFAR zoo after the paper's)
from okd.models.base import Backbone, BackboneSpec, map_state_keys
from okd.models.cohort import SHARE_MODES, Cohort, CohortOutput, average_gradient
from okd.models.complexity import count_macs, count_params
from okd.models.registry import (
    BackboneOptions,
    backbone_options,
    arch_label,
    backbone_source,
    create_backbone,
    create_plain_network,
    default_num_classes,
    is_external,
    format_arch,
    list_backbones,
    parse_arch,
    register_backbone,
    resolve_backbone_name,
)

__all__ = [
    "Backbone",
    "BackboneOptions",
    "BackboneSpec",
    "Cohort",
    "CohortOutput",
    "SHARE_MODES",
    "arch_label",
    "average_gradient",
    "backbone_source",
    "backbone_options",
    "count_macs",
    "count_params",
    "create_backbone",
    "create_plain_network",
    "default_num_classes",
    "format_arch",
    "is_external",
    "list_backbones",
    "map_state_keys",
    "parse_arch",
    "register_backbone",
    "resolve_backbone_name",
]
