"""Options -> the resolved TrainConfig: the one path ``okd train`` and ``okd.train()`` both take.

Precedence: defaults < ``--config`` YAML < the options given < the recipe (filled only where
nothing was given). The plugins are imported before the recipe resolves ``arch`` and ``method``,
which may be the plugins' own; on ``--resume`` the run's saved plugins must be among those given
(a run folder never imports code by itself).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from okd.engine.config import TrainConfig, check_names, config_from_mapping, normalise_key, read_yaml_config
from okd.plugins import allow_saved_plugins, import_plugins


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
    """Defaults < the YAML file < ``options``, coerced and type-checked; the recipe is not filled yet.

    The plugins named there are imported first: their methods' options are names the file may use.
    """
    raw_file: dict[str, Any] = read_yaml_config(config_file) if config_file else {}
    given = {normalise_key(key): value for key, value in options.items()}
    import_plugins(config_from_mapping({"plugins": given.get("plugins", raw_file.get("plugins"))}).plugins)
    from_file = check_names(raw_file, f" in config file {config_file}")
    given = check_names(dict(options))
    return config_from_mapping({**from_file, **given})


def train_config(options: Mapping[str, Any], *, config_file: str | Path | None = None,
                 resume_from: str | Path | None = None) -> TrainConfig:
    """The validated config of a run from its options (TrainConfig field names) and an optional YAML file."""
    from okd.engine.recipe import resolve_config

    cfg = given_config(options, config_file)  # imports the plugins named in options or the file, nothing else
    if resume_from is not None:
        previous = saved_plugins(resume_from)
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
