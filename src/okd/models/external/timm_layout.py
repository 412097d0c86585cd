"""Where to cut a timm model: its ``feature_info`` gives the feature stages, ``get_classifier()`` the head.

The modules are taken in registration order up to the last feature module, exactly what timm's own
``features_only`` wrapper assumes; the modules left before the classifier form the pooling stage,
which is what ``forward_head(pre_logits=True)`` computes (EfficientNet's conv_head/bn2, ConvNeXt's
norm_pre + head.norm, MobileNetV3's pooling + conv_head/norm_head/act2).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from okd.errors import OKDUserError
from okd.models.external.stages import NOT_SEQUENTIAL, LibraryLayout, refuse

INSTALL_HINT = "pip install 'okd-torch[timm]' (or pip install timm)"


def import_timm() -> Any:
    try:
        import timm
    except ImportError:
        raise OKDUserError(f"timm: backbones need the timm package: {INSTALL_HINT}") from None
    return timm


def check_name(model_name: str) -> None:
    timm = import_timm()
    if not timm.is_model(model_name):
        raise OKDUserError(f"unknown timm model {model_name!r}; list them with python -c \"import timm; print(timm.list_models())\"")


def pretrained_cfg(model_name: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(model_name)
    return cfg.to_dict() if cfg is not None else {}


def input_size(model_name: str) -> int:
    return int(pretrained_cfg(model_name).get("input_size", (3, 224, 224))[-1])


def default_num_classes(model_name: str) -> int:
    return int(pretrained_cfg(model_name).get("num_classes") or 1000)


def create_model(model_name: str, num_classes: int, weights_file: str | None = None) -> nn.Module:
    """The timm model itself (what an exported peer loads into); ``weights_file`` is a local pretrained file."""
    timm = import_timm()
    if weights_file is None:
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    # a 'file' overlay makes timm load exactly that file (no hub access) and re-initialise a classifier
    # whose class count differs from the weights'
    return timm.create_model(model_name, pretrained=True, num_classes=num_classes,
                             pretrained_cfg_overlay={"file": weights_file, "source": ""})


def _ordered_paths(model: nn.Module, cut_points: list[str]) -> list[str]:
    """Module paths in registration order, descending into every module that contains a cut point."""
    paths: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for child_name, child in module.named_children():
            path = f"{prefix}{child_name}"
            if any(point.startswith(path + ".") for point in cut_points):
                visit(child, path + ".")
            else:
                paths.append(path)

    visit(model, "")
    return paths


def layout(okd_name: str, model_name: str, model: nn.Module) -> LibraryLayout:
    feature_info = getattr(model, "feature_info", None)
    if not feature_info:
        raise refuse(okd_name, [], "timm declares no feature_info (feature stages) for it")
    feature_ends = [str(info["module"]) for info in feature_info]
    try:
        head = model.get_classifier()
    except (AttributeError, NotImplementedError):
        head = None
    classifier = next((path for path, module in model.named_modules() if module is head and path), None)
    if classifier is None:
        raise refuse(okd_name, [], "timm gives no classifier module for it")
    paths = _ordered_paths(model, [*feature_ends, classifier])
    missing = [end for end in (*feature_ends, classifier) if end not in paths]
    if missing:
        raise refuse(okd_name, [end.replace(".", "_") for end in feature_ends], f"its modules {', '.join(missing)} are not in its module sequence")
    last_feature = paths.index(feature_ends[-1])
    head_index = paths.index(classifier)
    order = [paths.index(end) for end in feature_ends]
    if order != sorted(order) or order[-1] > head_index:  # modules after the classifier: the coverage check decides
        names = [end.replace(".", "_") for end in feature_ends]
        raise refuse(okd_name, names, f"{NOT_SEQUENTIAL} (its feature stages and classifier {classifier} are registered out of order)")
    return LibraryLayout(
        name=okd_name,
        model=model,
        body=paths[: last_feature + 1],
        feature_ends=feature_ends,
        pool=list(paths[last_feature + 1 : head_index]),
        classifier=classifier,
        input_size=input_size(model_name),
    )
