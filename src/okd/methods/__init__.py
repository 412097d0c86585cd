"""Online-distillation methods: one small module each, behind the protocol in ``base``."""

from okd.methods import baseline, cl_ilr, dml, kdcl, lmcl, mcl, mcl_okd, okddip, okdph, one, pcl, switokd  # noqa: F401  (register the methods)
from okd.methods.base import DatasetInfo, OKDMethod
from okd.methods.options import Option, OptionValues
from okd.methods.registry import (
    DEFAULT_METHOD,
    all_options,
    build_method,
    get_method_class,
    list_methods,
    option_owners,
    register_method,
    resolve_method_name,
    split_arch,
    stand_in_dataset,
)

__all__ = [
    "DEFAULT_METHOD",
    "DatasetInfo",
    "OKDMethod",
    "Option",
    "OptionValues",
    "all_options",
    "build_method",
    "get_method_class",
    "list_methods",
    "option_owners",
    "register_method",
    "resolve_method_name",
    "split_arch",
    "stand_in_dataset",
]
