"""Turn a library's classifier (timm, torchvision) into an okd :class:`Backbone` without copying it.

A library model is cut into okd stages by module paths: each stage keeps the library's own
submodules under their library paths (``stages_2.stages.2.blocks.0...``), so the key map from okd
keys to library keys only strips the stage name, and a peer's weights load into the library's model.

Cutting a model by its modules assumes its forward runs those modules in registration order (the
assumption timm's ``features_only`` makes). It is checked, not trusted: the assembled stages must
cover every parameter and buffer and reproduce the library model's logits, or the model is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from okd.errors import OKDUserError
from okd.models.base import Backbone, BackboneSpec

Step = str | Callable[[torch.Tensor], torch.Tensor]  # a library module path, or a stateless op of the library's forward


def flatten(x: torch.Tensor) -> torch.Tensor:
    """``torch.flatten(x, 1)``: torchvision's forwards flatten the pooled map outside any module."""
    return torch.flatten(x, 1)


def global_avg_pool(x: torch.Tensor) -> torch.Tensor:
    """``F.adaptive_avg_pool2d(x, 1)``, the functional pooling of torchvision's MobileNetV2 and DenseNet."""
    return nn.functional.adaptive_avg_pool2d(x, 1)


def relu(x: torch.Tensor) -> torch.Tensor:
    """The functional ReLU torchvision's DenseNet applies after its last norm."""
    return nn.functional.relu(x)


def spatial_mean(x: torch.Tensor) -> torch.Tensor:
    """``x.mean([2, 3])``: torchvision's ShuffleNetV2 pools this way."""
    return x.mean([2, 3])


class LibraryStage(nn.Module):
    """Some submodules of a library model, registered under their library paths and run in order."""

    def __init__(self, model: nn.Module, steps: Sequence[Step]) -> None:
        super().__init__()
        self.steps = tuple(steps)
        for step in self.steps:
            if isinstance(step, str):
                _attach(self, step, model.get_submodule(step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # resolved per call, so a module swapped in later (SyncBatchNorm conversion) is the one that runs
        for step in self.steps:
            x = self.get_submodule(step)(x) if isinstance(step, str) else step(x)
        return x


def _attach(root: nn.Module, path: str, module: nn.Module) -> None:
    """Register ``module`` at dotted ``path`` under ``root``, creating bare holder modules on the way."""
    *parents, leaf = path.split(".")
    node = root
    for name in parents:
        child = node._modules.get(name)
        if child is None:
            child = nn.Module()
            node.add_module(name, child)
        node = child
    node.add_module(leaf, module)


@dataclass
class LibraryLayout:
    """Where to cut a library model: what a builder (timm, torchvision) declares; the rest is generic."""

    name: str  # the okd name, e.g. "timm:resnet18"
    model: nn.Module  # a freshly built library model; its modules move into the okd stages
    body: list[str]  # module paths before pooling, in forward order
    feature_ends: list[str]  # the paths of ``body`` that end a feature stage (one per resolution)
    pool: list[Step]  # from the last feature map to the pooled feature [B, d]
    classifier: str  # the module path mapping the pooled feature to logits
    input_size: int
    stage_names: list[str] = field(default_factory=list)  # filled by stage_plan()


def stage_plan(layout: LibraryLayout) -> list[tuple[str, list[Step]]]:
    """Feature stages (each named after the library module ending it, dots as underscores), ``pool``, ``fc``.

    Body modules after the last feature end belong to the pooling stage (timm's conv_head / norm_pre).
    """
    plan: list[tuple[str, list[Step]]] = []
    start = 0
    for end in layout.feature_ends:
        stop = layout.body.index(end) + 1
        plan.append((end.replace(".", "_"), list(layout.body[start:stop])))
        start = stop
    plan.append(("pool", [*layout.body[start:], *layout.pool]))
    plan.append(("fc", [layout.classifier]))
    layout.stage_names = [name for name, _ in plan]
    return plan


def default_branch_points(feature_stages: Sequence[str]) -> tuple[str, str]:
    """``late`` = the last feature stage, ``early`` = the one before it (one stage: both are that stage).

    This matches okd's own nets: CIFAR ResNets stage2 / stage3 of 3, ResNet-34 layer3 / layer4 of 4.
    """
    return (feature_stages[-2] if len(feature_stages) > 1 else feature_stages[-1]), feature_stages[-1]


def refuse(name: str, stages: Sequence[str], reason: str) -> OKDUserError:
    seen = ", ".join(stages) if stages else "none"
    return OKDUserError(
        f"okd cannot split {name} into stages for a cohort: {reason}; stages it sees: {seen} "
        f"(--early/--late can only choose among stages of a model okd can split)"
    )


NOT_SEQUENTIAL = "its forward is not a sequence of its modules"


@dataclass(frozen=True)
class Verified:
    """What the check of a layout found (the same for every peer of a name, so computed once)."""

    feature_dim: int


_VERIFIED: dict[str, Verified] = {}


def assemble(layout: LibraryLayout, num_classes: int) -> Backbone:
    """The okd backbone of ``layout``; the first build of each name is checked against the library's forward."""
    library_keys = set(layout.model.state_dict())
    verified = _VERIFIED.get(layout.name)
    if verified is None:
        reference = _reference_logits(layout)  # before the modules move: the library's own forward
    plan = stage_plan(layout)
    names = layout.stage_names
    try:
        stages = [(name, LibraryStage(layout.model, steps)) for name, steps in plan]
    except AttributeError as exc:  # a declared path does not exist in this variant of the family
        raise refuse(layout.name, names, f"{NOT_SEQUENTIAL} as okd expects ({exc})") from None
    covered = {key for name, stage in stages for key in stage.state_dict()}
    if covered != library_keys:
        outside = sorted(library_keys - covered)
        raise refuse(layout.name, names, f"{NOT_SEQUENTIAL}: {', '.join(outside[:4])} lie outside them")
    if verified is None:
        verified = _verify(layout, stages, reference)
        _VERIFIED[layout.name] = verified
    feature_stages = list(names[:-2])
    early, late = default_branch_points(feature_stages)
    spec = BackboneSpec(early=early, late=late, input_size=layout.input_size)
    key_map = {f"{name}.": "" for name in names}
    backbone = Backbone(stages, spec, verified.feature_dim, num_classes, key_map=key_map)
    backbone.train(layout.model.training)
    return backbone


def probe_input(size: int) -> torch.Tensor:
    """A fixed random image batch that leaves the global RNG (and so the peers' initialisation) untouched."""
    return torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))


@torch.no_grad()
def _reference_logits(layout: LibraryLayout) -> torch.Tensor | Exception:
    was_training = layout.model.training
    layout.model.eval()
    try:
        return layout.model(probe_input(layout.input_size))
    except Exception as exc:  # noqa: BLE001  (the library's own model cannot run the probe: reported below)
        return exc
    finally:
        layout.model.train(was_training)


@torch.no_grad()
def _verify(layout: LibraryLayout, stages: list[tuple[str, nn.Module]], reference: torch.Tensor | Exception) -> Verified:
    """Run the stages in order on the probe (eval mode) and compare with the library's logits."""
    names = layout.stage_names
    if isinstance(reference, Exception):
        raise refuse(layout.name, names, f"the library model does not run on a {layout.input_size}px image ({reference})")
    modes = [stage.training for _, stage in stages]
    x = probe_input(layout.input_size)
    try:
        for _, stage in stages:
            stage.eval()
        for _, stage in stages[:-1]:
            x = stage(x)
        pooled = x
        logits = stages[-1][1](pooled)
    except Exception as exc:  # noqa: BLE001  (any failure means the modules do not chain as assumed)
        raise refuse(layout.name, names, f"{NOT_SEQUENTIAL} ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})") from None
    finally:
        for (_, stage), mode in zip(stages, modes):
            stage.train(mode)
    if pooled.dim() != 2:
        raise refuse(layout.name, names, f"the pooling stage gives shape {list(pooled.shape)}, not [batch, features]")
    if logits.shape != reference.shape or not torch.allclose(logits, reference, rtol=1e-5, atol=1e-5):
        raise refuse(layout.name, names, f"{NOT_SEQUENTIAL} (running its modules in order changes the logits)")
    return Verified(feature_dim=int(pooled.shape[1]))
