"""The effective configuration of a run: defaults, YAML file, command line, per-method recipe.

Precedence (lowest to highest): dataclass defaults < recipe (method x dataset x backbone, filled
only where nothing was given) < ``--config`` YAML < explicit command-line flags. The resolved
config is saved as ``config.yaml`` in the run folder and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import yaml

from okd.errors import OKDUserError


@dataclass
class TrainConfig:
    # what to train
    method: str = "baseline"
    arch: str = "resnet32"
    num_peers: int | None = None  # recipe: 1 for baseline, 3 for pcl, 4 for every other OKD method
    share: str | None = None  # none | early | late | tree; default: the method's own
    early: str | None = None  # stage where DML/MCL-OKD peers stop sharing; default: the backbone's
    late: str | None = None  # stage where ONE/OKDDip peers stop sharing; default: the backbone's
    pretrained: bool = False  # timm:/tv: backbones: start every peer from locally cached weights
    plugins: list[str] | None = None  # modules imported first: they register the user's backbones/methods
    # data
    dataset: str = "digits"
    data: str | None = None
    download: bool = False
    workers: int = 8
    synthetic_train: int = 512
    synthetic_test: int = 256
    synthetic_classes: int = 10
    synthetic_size: int = 32
    train_per_class: int | None = None  # keep the first K training images of each class
    test_per_class: int | None = None  # evaluate on the first K test images of each class
    image_size: int | None = None  # --dataset folder: square side in pixels; default: the backbone's input size
    val_split: float | None = None  # --dataset folder: hold out this fraction of train/ per class (no val/ needed)
    in_memory: str = "auto"  # --dataset folder: auto | yes (decode once, CIFAR augmentation) | no (stream)
    sampler: str = "auto"  # auto (the method's: m_per_class for MCL, else random) | random | m_per_class
    m_per_class: int = 2  # samples of each class in a batch with the m_per_class sampler
    # optimisation (None = the recipe's value, see recipe())
    epochs: int | None = None
    batch_size: int | None = None  # global: split across distributed ranks
    eval_batch_size: int | None = None
    lr: float | None = None
    wd: float | None = None
    momentum: float = 0.9
    nesterov: bool = True
    lr_schedule: str = "cosine"  # cosine (the reference's SGDR with T0 = epochs) | multistep | constant
    milestones: list[int] | None = None
    lr_gamma: float = 0.1
    # method options (None = the method's own default)
    kd_t: float | None = None
    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    nce_k: int | None = None
    nce_t: float | None = None
    nce_m: float | None = None
    feat_dim: int | None = None
    fixed_z: bool | None = None
    rampup_epochs: int | None = None
    mcl_tau: float | None = None
    mcl_vcl: float | None = None
    mcl_icl: float | None = None
    mcl_soft_vcl: float | None = None
    mcl_soft_icl: float | None = None
    mcl_logit_distill: bool | None = None
    mcl_icl_same_instance: bool | None = None
    kdcl_rule: str | None = None  # KDCL's soft target: minlogit | naive | linear | mean
    pcl_rampup: str | None = None  # PCL: intended | reimpl (the re-implementation's ramp-up bug)
    ema_decay: float | None = None  # PCL: EMA decay bound of the peer mean teachers, in [0, 1)
    lmcl_meta_freq: int | None = None  # L-MCL: a meta step every N steps of an epoch (50; 0 = never)
    lmcl_meta_steps: int | None = None  # L-MCL: virtual SGD steps on the contrastive loss per meta step (2)
    # execution
    seed: int = 0
    device: str = "auto"
    amp: bool = False
    channels_last: bool | None = None  # default: on (CPU and CUDA)
    compile: bool = False
    sgd_impl: str = "auto"  # auto (fused on CUDA, foreach on CPU) | fused | foreach | loop
    deterministic: bool = False
    sync_bn: bool = False
    limit_batches: int | None = None
    nan_policy: str = "stop"  # stop | skip-step
    log_interval: int = 50
    tensorboard: bool = False


# Fields that may change between a run and its --resume without changing what is computed.
RESUMABLE_CHANGES = {"epochs", "workers", "device", "compile", "sgd_impl", "tensorboard", "log_interval", "download", "data"}

METHOD_OPTIONS = (
    "kd_t", "alpha", "beta", "gamma", "nce_k", "nce_t", "nce_m", "feat_dim", "fixed_z", "rampup_epochs",
    "mcl_tau", "mcl_vcl", "mcl_icl", "mcl_soft_vcl", "mcl_soft_icl", "mcl_logit_distill", "mcl_icl_same_instance",
    "kdcl_rule", "pcl_rampup", "ema_decay", "lmcl_meta_freq", "lmcl_meta_steps",
)

_FIELD_NAMES = {f.name for f in fields(TrainConfig)}
_KEY_ALIASES = {
    "init_lr": "lr",
    "weight_decay": "wd",
    "num_branches": "num_peers",
    "manual_seed": "seed",
    "kd_T": "kd_t",
    "num_workers": "workers",
}


def normalise_key(key: str) -> str:
    key = key.replace("-", "_")
    return _KEY_ALIASES.get(key, key)


def load_yaml_config(path: str | Path) -> dict[str, Any]:
    """Read a ``--config`` YAML file: a flat mapping of TrainConfig fields (hyphens allowed)."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise OKDUserError(f"config file {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise OKDUserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OKDUserError(f"config file {path} must hold a mapping of option: value, got {type(raw).__name__}")
    values = {}
    for key, value in raw.items():
        name = normalise_key(str(key))
        if name not in _FIELD_NAMES:
            raise OKDUserError(f"unknown option {key!r} in config file {path}; known options: {', '.join(sorted(_FIELD_NAMES))}")
        values[name] = value
    return values


def config_from_mapping(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from plain data (YAML, checkpoint), coercing and checking types."""
    cfg = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in values:
            setattr(cfg, f.name, _coerce(f.name, f.type, values[f.name]))
    return cfg


def _coerce(name: str, annotation: Any, value: Any) -> Any:
    kind = str(annotation)
    if value is None:
        if "None" in kind:
            return None
        raise OKDUserError(f"option {name} must not be empty")
    try:
        if kind.startswith("bool"):
            if isinstance(value, bool):
                return value
            if str(value).lower() in ("true", "yes", "1", "on"):
                return True
            if str(value).lower() in ("false", "no", "0", "off"):
                return False
            raise ValueError
        if kind.startswith("int"):
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if kind.startswith("float"):
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if kind.startswith("list"):
            if isinstance(value, str):
                value = value.replace(",", " ").split()
            if not isinstance(value, (list, tuple)):
                raise ValueError
            item = re.match(r"list\[(\w+)\]", kind)
            return [_coerce(name, item.group(1) if item else "str", v) for v in value]
        return str(value)
    except (TypeError, ValueError):
        raise OKDUserError(f"option {name} has an invalid value {value!r} (expected {kind})") from None


def to_plain(cfg: TrainConfig) -> dict[str, Any]:
    return asdict(cfg)


def diff_configs(old: TrainConfig, new: TrainConfig, ignore: set[str] = RESUMABLE_CHANGES) -> list[str]:
    """Names of the fields whose values differ, except those a resume may change."""
    a, b = asdict(old), asdict(new)
    return [k for k in a if k not in ignore and a[k] != b[k]]


def replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)


def check_positive(name: str, value: float | int | None, strict: bool = True) -> None:
    if value is None:
        return
    bad = (value <= 0) if strict else (value < 0)
    if bad or (isinstance(value, float) and not math.isfinite(value)):
        need = "> 0" if strict else ">= 0"
        raise OKDUserError(f"--{name.replace('_', '-')} must be {need}, got {value}")


def check_device_name(name: str) -> None:
    """The device names okd accepts (train and eval check them the same way, before any work)."""
    if not isinstance(name, str) or (name not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", name)):
        raise OKDUserError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
