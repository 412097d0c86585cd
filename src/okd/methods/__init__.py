"""Online-distillation methods: one small module each, behind the protocol in ``base``."""

from okd.methods import baseline, cl_ilr, dml, kdcl, lmcl, mcl, mcl_okd, okddip, one, pcl  # noqa: F401  (register the methods)
from okd.methods.base import DatasetInfo, OKDMethod
from okd.methods.registry import (
    build_method,
    get_method_class,
    list_methods,
    register_method,
    resolve_method_name,
    split_arch,
)

__all__ = [
    "DatasetInfo",
    "OKDMethod",
    "build_method",
    "get_method_class",
    "list_methods",
    "register_method",
    "resolve_method_name",
    "split_arch",
]
