"""The small protocol between the engine and an online-distillation method.

The engine only ever calls ``forward`` (through DDP when distributed), ``losses``,
``ensemble_logits``, ``eval_heads``, ``held_parameters``, ``after_step``, ``meta_update`` and
``start_epoch``, and reads ``train_views``,
``parameter_groups``, ``deployed_head`` and the export hooks; it never asks which method it runs. A method only sees its
backbone through the generic :class:`~okd.models.Cohort` (stages, pooled features, logits), so
every method runs on every backbone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from collections.abc import Iterator
from functools import partial
from typing import Any, ClassVar

import torch
from torch import nn

from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.methods.options import Option, OptionValues, check_values, signature_options
from okd.models import Cohort, CohortOutput, create_backbone, format_arch, parse_arch


@dataclass(frozen=True)
class DatasetInfo:
    """What a method may know about its training set (MCL-OKD sizes its memory banks from it)."""

    num_train: int
    num_classes: int
    train_targets: torch.Tensor  # [num_train] int64 labels, in training-index order

    @classmethod
    def balanced(cls, num_classes: int, per_class: int) -> "DatasetInfo":
        """``per_class`` labels of each class (labels 0, 1, ..., C-1, 0, 1, ...): a stand-in training set."""
        targets = torch.arange(num_classes * per_class) % num_classes
        return cls(num_train=targets.numel(), num_classes=num_classes, train_targets=targets)


class OKDMethod(nn.Module):
    """A cohort plus whatever heads its method needs; ``forward`` runs all trainable parts.

    Subclasses set ``name``, ``default_share``, ``min_peers``, declare their ``options`` (and may give
    a ``recipe``) and implement ``losses``. Extra heads
    (ONE's gate, OKDDip's projections, MCL-OKD's embeddings) run inside ``forward`` so that DDP sees
    every parameter used by the loss, and put their outputs into ``output.extras``.
    """

    name: ClassVar[str] = ""
    default_share: ClassVar[str] = "early"
    allowed_shares: ClassVar[tuple[str, ...]] = ("none", "early", "late", "tree")
    min_peers: ClassVar[int] = 2
    # how the engine draws training batches unless --sampler says otherwise (okd.data.sampling.SAMPLERS)
    train_sampler: ClassVar[str] = "random"
    supports_heterogeneous: ClassVar[bool] = False  # peers may be different backbones (they then share nothing)
    # The method's knobs: flags, YAML keys, okd.train() keywords, --help and checks all come from here.
    options: ClassVar[tuple[Option, ...]] = ()

    def __init__(self, backbone: str | Sequence[str], num_classes: int, num_peers: int, share: str | None = None,
                 dataset: DatasetInfo | None = None, **options: Any) -> None:
        """``backbone``: one name for every peer, or one per peer (a list, or ``"resnet32,resnet110"``).
        ``options``: values of the declared options (unset ones take their defaults), checked into ``self.opt``."""
        super().__init__()
        self.opt: OptionValues = check_values(self.name, self.options, options, fill=True)
        names, share = self.plan_cohort(backbone, num_peers, share)
        self.backbone_names = names  # peer i is a ``create_backbone(backbone_names[i])``
        self.backbone_name = format_arch(names)
        self.cohort = Cohort([partial(create_backbone, name, num_classes) for name in names], num_peers, share)

    @classmethod
    def declared_options(cls) -> tuple[Option, ...]:
        """``options``, or for a method that declares none, the keywords its ``__init__`` takes (older plugins)."""
        if cls.options or cls.__init__ is OKDMethod.__init__:
            return cls.options
        return signature_options(cls.__init__)

    @classmethod
    def recipe(cls, dataset: str, backbones: list[str]) -> dict[str, Any]:
        """Defaults that depend on the data or the backbone: engine values (``num_peers``, ``epochs``,
        ``lr``, ``batch_size``, ``wd``...) and this method's own options. They fill only what the user
        left unset; the engine's dataset recipe fills the rest."""
        return {}

    @classmethod
    def run_label(cls, config: dict[str, Any]) -> str:
        """How a run with the saved flat ``config`` (its method options among the keys) is named where
        methods are compared: the method's name, or a variant compared as a method of its own."""
        return cls.name

    @classmethod
    def stand_in_per_class(cls, num_classes: int, options: OptionValues) -> int:
        """Training samples per class of the smallest stand-in set this method can be built on (with
        these checked ``options``), so a trained method is rebuilt without its data: its training-set
        sized state is not loaded. Two by default (every sample has a same-class partner)."""
        return 2

    @classmethod
    def plan_cohort(cls, backbone: str | Sequence[str], num_peers: int, share: str | None) -> tuple[list[str], str]:
        """Each peer's backbone and the share mode, or the user error that forbids the combination.

        Peers of different backbones have no common layers, so they need a method whose peers are
        independent networks, and share "none" (their default; another explicit --share is refused).
        """
        names = parse_arch(backbone)
        if len(names) == 1:
            names = names * num_peers
        elif len(names) != num_peers:
            raise OKDUserError(f"--arch {','.join(names)} gives {len(names)} backbones for --num-peers {num_peers}: "
                               "give one backbone per peer, or leave --num-peers out")
        if len(set(names)) == 1:
            return names, share or cls.default_share
        if not cls.supports_heterogeneous:
            able = [name for name, method in REGISTRY.items() if method.supports_heterogeneous]
            raise OKDUserError(f"method {cls.name!r} cannot train peers of different backbones ({'+'.join(names)}): "
                               f"give one --arch, or use a method with independent peers ({', '.join(able)})")
        if share not in (None, "none"):
            raise OKDUserError(f"--share {share}: peers of different backbones ({'+'.join(names)}) share no layers; "
                               "use --share none (the default for a cohort of different backbones)")
        return names, "none"

    @property
    def num_peers(self) -> int:
        return self.cohort.num_peers

    @property
    def deployed_peer(self) -> int:
        """The peer a user ships. Symmetric methods: peer 0; MCL-OKD and OKDDip override it (last)."""
        return 0

    @property
    def deployed_head(self) -> str:
        """The evaluated head reported as "deployed": a peer, or one of ``eval_heads`` (PCL: its EMA peer)."""
        return f"peer{self.deployed_peer}"

    @property
    def train_views(self) -> int:
        """Augmented views per training sample; V > 1 gives ``forward`` [V, B, C, H, W] (one view per peer)."""
        return 1

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """What the optimiser updates: frozen parts (EMA shadows) set requires_grad=False and stay in the state dict."""
        return (p for p in self.parameters() if p.requires_grad)

    def parameter_groups(self) -> list[dict[str, Any]]:
        """The optimiser's parameter groups. A group may carry ``lr_scale``: the engine sets its learning
        rate to the schedule's value times that factor (SwitOKD's student learns at a tenth of the
        teacher's rate in its CIFAR-100 code). One group of ``trainable_parameters`` by default."""
        return [{"params": list(self.trainable_parameters())}]

    @property
    def deployable_peers(self) -> int:
        """How many peers ``okd export`` can write as a plain backbone."""
        return self.num_peers

    def peer_state_dict(self, peer: int) -> dict[str, torch.Tensor]:
        """Deployable peer ``peer`` as the plain backbone's state dict (loads strict into ``create_backbone``)."""
        return self.cohort.peer_state_dict(peer)

    def peer_logits(self, output: CohortOutput, peer: int) -> torch.Tensor:
        """The logits the network of ``peer_state_dict(peer)`` gives; exports are checked against them."""
        return output.logits[peer]

    def forward(self, images: torch.Tensor) -> CohortOutput:
        return self.cohort(images)

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        """Named scalar loss terms; the engine sums them and logs each. ``epoch`` is 0-based."""
        raise NotImplementedError

    def ensemble_logits(self, output: CohortOutput) -> torch.Tensor:
        """The method's own "Ens": by default the mean of all peers' logits."""
        return torch.stack(output.logits).mean(0)

    def eval_heads(self, output: CohortOutput) -> dict[str, torch.Tensor]:
        """Extra named logits scored beside peer0..N-1 and "ensemble" (e.g. EMA peers, a fusion head)."""
        return {}

    @torch.no_grad()
    def after_step(self, output: CohortOutput, batch: Batch) -> None:
        """State updates after the optimiser step (MCL-OKD's memory banks); nothing by default."""

    def meta_update(self, batch: Batch, epoch: int, step: int, optimizer: torch.optim.Optimizer) -> None:
        """A second optimisation after ``after_step``, with gradients enabled (L-MCL's meta step).

        For parts the engine's optimiser must not train (their parameters set requires_grad=False):
        the method may run its own forwards and virtual updates here, but must leave the trainable
        parameters as it found them. ``step`` is the 0-based step within ``epoch``; ``optimizer``
        gives the current lr, momentum and weight decay. Nothing by default.
        """

    def held_parameters(self) -> Iterator[nn.Parameter]:
        """Parameters the coming optimiser step must leave untouched (SwitOKD's paused teacher).

        Asked after backward: the engine drops their gradients (``grad = None``), and SGD skips a
        parameter without a gradient entirely (no momentum, no weight decay), as if that network's
        own optimiser had not been stepped. Nothing by default.
        """
        return iter(())

    def start_epoch(self, epoch: int) -> None:
        """Called before the first step of each 0-based ``epoch`` (not when a run resumes mid-epoch);
        state changed here (OKDPH's epoch-level fusion) is checkpointed like any other."""


# Registered methods by name (filled by ``okd.methods.registry.register_method``); here, below the
# registry, so that the protocol can name the methods able to do something without importing upward.
REGISTRY: dict[str, type[OKDMethod]] = {}
