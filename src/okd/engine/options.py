"""Options -> the resolved TrainConfig: the one path ``okd train`` and ``okd.train()`` both take.

Precedence: defaults < ``--config`` YAML < the options given < the recipe (filled only where
nothing was given). The plugins are imported before the recipe resolves ``arch`` and ``method``,
which may be the plugins' own; on ``--resume`` the run's saved plugins must be among those given
(a run folder never imports code by itself).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

import yaml

from okd.engine.config import TrainConfig, config_from_mapping, load_yaml_config, normalise_key
from okd.errors import OKDUserError
from okd.plugins import allow_saved_plugins, import_plugins

OPTION_NAMES = tuple(f.name for f in fields(TrainConfig))


def check_option_names(options: Mapping[str, Any]) -> dict[str, Any]:
    """Option names (aliases such as ``init_lr`` allowed) -> TrainConfig field names; a typo is a user error."""
    checked = {}
    for key, value in options.items():
        name = normalise_key(key)
        if name not in OPTION_NAMES:
            close = difflib.get_close_matches(name, OPTION_NAMES, n=3, cutoff=0.6)
            hint = f"did you mean {' or '.join(close)}?" if close else f"known options: {', '.join(OPTION_NAMES)}"
            raise OKDUserError(f"unknown option {key!r}; {hint}")
        checked[name] = value
    return checked


def saved_plugins(run_folder: str | Path) -> list[str] | None:
    """The plugins of the run in ``run_folder`` (its config.yaml), or None when it names none."""
    path = Path(run_folder) / "config.yaml"
    try:
        saved = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return None
    plugins = saved.get("plugins") if isinstance(saved, dict) else None
    return config_from_mapping({"plugins": plugins}).plugins


def given_config(options: Mapping[str, Any], config_file: str | Path | None = None) -> TrainConfig:
    """Defaults < the YAML file < ``options``, coerced and type-checked; the recipe is not filled yet."""
    values: dict[str, Any] = load_yaml_config(config_file) if config_file else {}
    values.update(check_option_names(options))
    return config_from_mapping(values)


def train_config(options: Mapping[str, Any], *, config_file: str | Path | None = None,
                 resume_from: str | Path | None = None) -> TrainConfig:
    """The validated config of a run from its options (TrainConfig field names) and an optional YAML file."""
    from okd.engine.recipe import resolve_config

    cfg = given_config(options, config_file)
    if resume_from is not None:
        previous = saved_plugins(resume_from)
        import_plugins(cfg.plugins)
        allow_saved_plugins(previous, cfg.plugins, f"run folder {resume_from}")
        if cfg.plugins is None:
            cfg.plugins = previous
    import_plugins(cfg.plugins)
    return resolve_config(cfg)


def default_run_folder(cfg: TrainConfig, root: str | Path = "runs", fresh: bool = False) -> Path:
    """``runs/<method>_<arch>_<dataset>_s<seed>``; with ``fresh``, the first of it, ``…-2``, ``…-3`` not yet there."""
    from okd.models import arch_label

    arch = arch_label(cfg.arch).replace(":", "-")  # resnet32+resnet110, timm-resnet18
    base = Path(root) / f"{cfg.method}_{arch}_{cfg.dataset}_s{cfg.seed}"
    if not fresh:
        return base
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{base.name}-{n}")
    return candidate
