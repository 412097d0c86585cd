"""The effective configuration of a run: defaults, YAML file, command line, per-method recipe.

Precedence (lowest to highest): dataclass defaults < recipe (method x dataset x backbone, filled
only where nothing was given) < ``--config`` YAML < explicit command-line flags. The resolved
config is saved as ``config.yaml`` in the run folder and inside every checkpoint.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from okd.common.values import coerce
from okd.errors import OKDUserError
from okd.methods import DEFAULT_METHOD, all_options


@dataclass
class TrainConfig:
    # what to train
    method: str = DEFAULT_METHOD
    arch: str = "resnet32"
    num_peers: int | None = None  # recipe: the method's cohort size (4 unless its recipe says otherwise)
    share: str | None = None  # none | early | late | tree; default: the method's own
    early: str | None = None  # stage where --share early peers stop sharing; default: the backbone's
    late: str | None = None  # stage where --share late peers stop sharing; default: the backbone's
    pretrained: bool = False  # timm:/tv: backbones: start every peer from locally cached weights
    plugins: list[str] | None = None  # modules imported first: they register the user's backbones/methods
    # data
    dataset: str | None = None  # default: what --data holds (okd.data.infer), the embedded digits without --data
    data: str | None = None
    download: bool = False
    workers: int = field(default_factory=lambda: default_workers())  # the CPUs this process may use, at most 8
    synthetic_train: int = 512
    synthetic_test: int = 256
    synthetic_classes: int = 10
    synthetic_size: int = 32
    train_per_class: int | None = None  # keep the first K training images of each class
    test_per_class: int | None = None  # evaluate on the first K test images of each class
    image_size: int | None = None  # --dataset folder: square side in pixels; default: the backbone's input size
    val_split: float | None = None  # --dataset folder: hold out this fraction of train/ per class (no val/ needed)
    in_memory: str = "auto"  # --dataset folder: auto | yes (decode once, CIFAR augmentation) | no (stream)
    sampler: str = "auto"  # auto (the method's train_sampler) | random | m_per_class
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
    warmup_epochs: int | None = None  # linear lr warm-up per step; recipe: 0 on the paper datasets, 5 on a folder
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
    # the method's own options (its declarations in okd/methods/<method>.py), checked by the recipe; unset: its default
    method_options: dict[str, Any] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        """``cfg.kd_t``: a method option's value, None when not set (or not an option of this method)."""
        if name != "method_options" and name in all_options():
            return self.__dict__.get("method_options", {}).get(name)
        raise AttributeError(f"TrainConfig has no field {name!r}")


_FIELD_NAMES = {f.name for f in fields(TrainConfig)} - {"method_options"}
_dataclass_init = TrainConfig.__init__


def _init(self: TrainConfig, method_options: dict[str, Any] | None = None, **values: Any) -> None:
    """``TrainConfig(method="kdcl", alpha=0.3)``: keywords that are not engine fields are method options."""
    extra = {name: values.pop(name) for name in list(values) if name not in _FIELD_NAMES}
    _dataclass_init(self, method_options={**(method_options or {}), **extra}, **values)


TrainConfig.__init__ = _init  # type: ignore[method-assign]

# Fields that may change between a run and its --resume without changing what is computed.
RESUMABLE_CHANGES = {"epochs", "workers", "device", "compile", "sgd_impl", "tensorboard", "log_interval", "download", "data"}

MAX_CONFIG_BYTES = 1 << 20


def default_workers() -> int:
    """Decoding processes by default: the CPUs this process may run on, capped at 8."""
    try:
        return max(1, min(8, len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return max(1, min(8, os.cpu_count() or 1))


_KEY_ALIASES = {
    "init_lr": "lr",
    "weight_decay": "wd",
    "num_branches": "num_peers",
    "manual_seed": "seed",
    "num_workers": "workers",
}


def normalise_key(key: str) -> str:
    """An option's name from any of its spellings: hyphens, the reference's names, a method's aliases."""
    if key in _KEY_ALIASES:
        return _KEY_ALIASES[key]
    for option in all_options().values():
        if f"--{key}" in option.flags:
            return option.name
    key = key.replace("-", "_")
    return _KEY_ALIASES.get(key, key)


def known_names() -> list[str]:
    """What a config file or ``okd.train()`` may name: the engine's fields and every method's options."""
    return [f.name for f in fields(TrainConfig) if f.name != "method_options"] + [n for n in all_options() if n not in _FIELD_NAMES]


def read_yaml_config(path: str | Path) -> dict[str, Any]:
    """A ``--config`` YAML file as ``{key: value}`` (not checked yet: the file's plugins may declare
    some of its options). A nested ``method_options:`` mapping is flattened."""
    path = Path(path)
    text = _small_text(path)
    try:
        if any(isinstance(event, yaml.AliasEvent) for event in yaml.parse(text, Loader=yaml.SafeLoader)):
            raise OKDUserError(f"config file {path} uses YAML aliases (*name); write each value out")
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise OKDUserError(f"config file {path} is not valid YAML: {str(exc).splitlines()[0]}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise OKDUserError(f"config file {path} must hold a mapping of option: value, got {type(raw).__name__}")
    nested = raw.pop("method_options", None)
    if isinstance(nested, dict):
        raw.update(nested)
    return {str(key): value for key, value in raw.items()}


def _small_text(path: Path) -> str:
    """The file's text, if it is a regular file of at most 1 MB of UTF-8 (never reads a device or a huge file)."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise OKDUserError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise OKDUserError(f"config file {path} cannot be read: {exc.strerror}") from None
    if not path.is_file():
        raise OKDUserError(f"config file {path} is not a regular file; give a YAML file of options")
    if info.st_size > MAX_CONFIG_BYTES:
        raise OKDUserError(f"config file {path} is {info.st_size} bytes; a config file holds at most {MAX_CONFIG_BYTES} (1 MB)")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_CONFIG_BYTES + 1)
        if len(data) > MAX_CONFIG_BYTES or b"\0" in data:
            raise UnicodeDecodeError("utf-8", data[:1], 0, 1, "binary")
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise OKDUserError(f"config file {path} is not UTF-8 text; give a YAML file of options") from None
    except OSError as exc:
        raise OKDUserError(f"config file {path} cannot be read: {exc.strerror}") from None


def check_names(values: dict[str, Any], where: str = "") -> dict[str, Any]:
    """``values`` by their options' names; every key must be (a spelling of) an engine field or some
    method's option, a typo is one line with the closest names."""
    known = known_names()
    checked = {}
    for key, value in values.items():
        name = normalise_key(str(key))
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"known options: {', '.join(known)}"
            raise OKDUserError(f"unknown option {key!r}{where}; {hint}")
        checked[name] = value
    return checked


def config_from_mapping(values: dict[str, Any]) -> TrainConfig:
    """Build a TrainConfig from plain data (YAML, checkpoint), coercing and checking the engine's types.

    Method options go to ``method_options`` as given (the recipe checks them against the method's
    declarations); ``None`` is "unset", so the flat ``kd_t: null, alpha: null, ...`` of every method in
    the config.yaml of runs before method-owned options maps onto the same config as before.
    """
    cfg = TrainConfig()
    for f in fields(TrainConfig):
        if f.name in values and f.name != "method_options":
            setattr(cfg, f.name, coerce(f.name, str(f.type), values[f.name]))
    nested = values.get("method_options") or {}
    flat = {k: v for k, v in values.items() if k not in _FIELD_NAMES and k != "method_options"}
    cfg.method_options = {k: v for k, v in {**flat, **nested}.items() if v is not None}
    return cfg


def to_plain(cfg: TrainConfig) -> dict[str, Any]:
    """The config as saved (config.yaml, checkpoints): engine fields, then the method's options, one flat mapping."""
    plain = asdict(cfg)
    plain.update(plain.pop("method_options"))
    return plain


def diff_configs(old: TrainConfig, new: TrainConfig, ignore: set[str] = RESUMABLE_CHANGES) -> list[str]:
    """Names of the fields whose values differ, except those a resume may change."""
    a, b = to_plain(old), to_plain(new)
    return [k for k in dict.fromkeys([*a, *b]) if k not in ignore and a.get(k) != b.get(k)]


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
