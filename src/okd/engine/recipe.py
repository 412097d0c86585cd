"""The recipe (docs/design.md §3) and config validation: unset values filled, every value checked.

The recipe only fills values the user left unset, so every number stays overridable. Three layers,
later ones winning: the dataset's optimisation recipe (here), the method's ``recipe(dataset,
backbones)`` (its own file), then what the user gave. The engine names no method and no method option.
"""

from __future__ import annotations

import warnings
from typing import Any

from okd.common.values import check_range
from okd.data import DATASETS
from okd.data.build import known_num_classes
from okd.data.config import check_folder_options
from okd.data.folder import count_train_images
from okd.data.idx import recipe_for as idx_recipe
from okd.data.infer import infer_dataset
from okd.data.sampling import SAMPLERS
from okd.engine.config import TrainConfig, check_device_name, check_positive, replace
from okd.engine.data_recipe import own_data_recipe
from okd.errors import OKDUserError, OKDWarning
from okd.methods import DEFAULT_METHOD, OKDMethod, all_options, get_method_class, option_owners, resolve_method_name, split_arch
from okd.methods.options import check_values
from okd.models import SHARE_MODES, create_backbone, format_arch

DEFAULT_PEERS = 4  # the reference's cohort, unless the method's recipe or --arch a,b says otherwise


def dataset_recipe(dataset: str) -> dict[str, float | int]:
    """Epochs, batch size, lr and weight decay of the reference on ``dataset`` (a method's recipe may override them)."""
    if dataset == "imagenet":  # docs/design.md §3: 100 epochs, one cosine (not the reference's accidental 300-epoch restart)
        return {"epochs": 100, "batch_size": 256, "lr": 0.1, "wd": 1e-4}
    if dataset in ("cifar100", "cifar10", "folder"):  # a folder of your own images starts from CIFAR's recipe, then fits it
        return {"epochs": 300, "batch_size": 128, "lr": 0.1, "wd": 5e-4}
    idx = idx_recipe(dataset)  # IDX data sets declare their own (data/idx.py)
    if idx is not None:
        return idx
    if dataset == "digits":  # the embedded quick-start set: same lr/batch ratio as the reference
        return {"epochs": 30, "batch_size": 64, "lr": 0.05, "wd": 5e-4}
    return {"epochs": 2, "batch_size": 32, "lr": 0.05, "wd": 5e-4}  # synthetic smoke runs


def recipe_for(method: str, dataset: str, backbones: list[str]) -> dict[str, Any]:
    """What the recipe fills for ``method`` on ``dataset``: the dataset's values, then the method's own."""
    return {**dataset_recipe(dataset), **get_method_class(method).recipe(dataset, backbones)}


def _fit_batch_to_sampler(cfg: TrainConfig, method_sampler: str, recipe: dict) -> dict:
    """An m-per-class batch holds at most m x (number of classes) samples: a recipe batch larger than
    that (digits: 64 > 2 x 10) shrinks to fit, with the recipe's lr scaled alike (same lr/batch ratio).
    A batch the user set is left as given (and refused later if it does not fit)."""
    sampler = method_sampler if cfg.sampler == "auto" else cfg.sampler
    classes = known_num_classes(cfg.dataset, cfg.synthetic_classes)
    if sampler != "m_per_class" or "batch_size" not in recipe or classes is None or cfg.m_per_class < 1:
        return {}
    fitted = min(recipe["batch_size"], cfg.m_per_class * classes)
    if fitted == recipe["batch_size"]:
        return {}
    changes = {"batch_size": fitted}
    if "lr" in recipe:
        changes["lr"] = recipe["lr"] * fitted / recipe["batch_size"]
    return changes


def method_options(cls: type[OKDMethod], given: dict[str, Any], recipe: dict[str, Any]) -> dict[str, Any]:
    """The method's options as given, checked against its declarations, with its recipe's values where
    unset. An option that only other methods declare is dropped with an OKDWarning."""
    declared = {option.name for option in cls.declared_options()}
    others = set(all_options()) - declared
    unknown = sorted(set(given) - declared - others)
    if unknown:
        raise OKDUserError(f"unknown option {unknown[0]!r}; method {cls.name!r} has the options: {', '.join(declared) or 'none'}")
    ignored = sorted(k for k, v in given.items() if k in others and v is not None)
    if ignored:  # a shared config file may carry them; a flag typed for the wrong method must not pass silently
        owners = option_owners()
        warnings.warn(OKDWarning(f"method {cls.name!r} has no option "
                                 + "; ".join(f"{name} (an option of {', '.join(owners[name])})" for name in ignored)
                                 + ": ignored"), stacklevel=2)
    wanted = {k: v for k, v in given.items() if k in declared and v is not None}
    for name in declared & set(recipe):
        wanted.setdefault(name, recipe[name])
    return dict(check_values(cls.name, cls.declared_options(), wanted, fill=False))


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the recipe into ``cfg`` and validate it; raises OKDUserError with one clear message.

    ``--arch a,b`` (one backbone per peer) sets the default --num-peers to the number of names; the
    backbone-keyed recipe values (MCL-OKD's nce_k) follow peer 0's backbone.
    """
    if cfg.dataset is None:
        cfg = replace(cfg, dataset="digits" if cfg.data is None else infer_dataset(cfg.data, DATASETS, cfg.download))
    method_from_arch, backbone = split_arch(cfg.arch)
    names = backbone.split(",")
    method = resolve_method_name(cfg.method)
    if method_from_arch is not None:
        if cfg.method not in (DEFAULT_METHOD, method_from_arch) and method != method_from_arch:
            raise OKDUserError(f"--arch {cfg.arch} selects method {method_from_arch!r} but --method is {cfg.method!r}")
        method = method_from_arch
    dataset = cfg.dataset.lower()
    if dataset not in DATASETS:
        raise OKDUserError(f"unknown dataset {cfg.dataset!r}; known datasets: {', '.join(DATASETS)}")
    cls = get_method_class(method)
    recipe = recipe_for(method, dataset, names)
    if dataset == "folder":  # no paper recipe: sized to the data (engine/data_recipe.py)
        num_train = count_train_images(cfg.data, cfg.val_split) if cfg.data is not None else None
        recipe = own_data_recipe(recipe, num_train, cfg.batch_size, cfg.lr, cfg.warmup_epochs)
    changes: dict = {"method": method, "arch": format_arch(names), "dataset": dataset}
    for name in ("share", "sampler", "lr_schedule", "sgd_impl", "nan_policy", "in_memory", "device"):  # any case
        if isinstance(getattr(cfg, name), str):
            changes[name] = getattr(cfg, name).lower()
    engine_recipe = {}
    for key, value in recipe.items():
        if key in _ENGINE_FIELDS and getattr(cfg, key) is None:
            engine_recipe[key] = value
    changes.update(engine_recipe)
    changes.update(_fit_batch_to_sampler(cfg, cls.train_sampler, engine_recipe))
    if cfg.num_peers is None and "num_peers" not in changes:
        changes["num_peers"] = len(names) if len(names) > 1 else DEFAULT_PEERS
    if cfg.eval_batch_size is None:
        changes["eval_batch_size"] = 500 if dataset != "imagenet" else 256
    if dataset == "folder" and cfg.image_size is None:
        changes["image_size"] = create_backbone(names[0], 2).spec.input_size
    if cfg.lr_schedule == "multistep" and cfg.milestones is None:
        epochs = changes.get("epochs", cfg.epochs)
        changes["milestones"] = [epochs // 2, epochs * 3 // 4]
    changes["method_options"] = method_options(cls, cfg.method_options, recipe)
    resolved = replace(cfg, **changes)
    validate(resolved, cls.min_peers, cls.allowed_shares)
    cls.plan_cohort(names, resolved.num_peers, resolved.share)  # one backbone per peer: refused combinations
    return resolved


_ENGINE_FIELDS = {"num_peers", "epochs", "batch_size", "eval_batch_size", "lr", "wd", "momentum", "share", "milestones",
                  "lr_schedule", "lr_gamma", "sampler", "m_per_class", "early", "late", "warmup_epochs"}


# Upper bounds past which a value is a mistake, not a choice (numpy's seeds stop below 2**32).
UPPER = {"lr": (10.0, False), "wd": (1.0, True), "momentum": (1.0, False), "seed": (2**32 - 1, False)}


def validate(cfg: TrainConfig, min_peers: int, allowed_shares: tuple[str, ...]) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size", "lr", "num_peers", "log_interval", "lr_gamma"):
        check_positive(name, getattr(cfg, name))
    for name in ("wd", "momentum", "workers", "seed", "warmup_epochs"):
        check_positive(name, getattr(cfg, name), strict=False)
    for name, (maximum, exclusive) in UPPER.items():
        check_range(name, getattr(cfg, name), maximum=maximum, exclusive_maximum=exclusive)
    for milestone in cfg.milestones or []:
        check_positive("milestones", milestone)
    check_positive("train_per_class", cfg.train_per_class)
    check_positive("test_per_class", cfg.test_per_class)
    if cfg.sampler not in ("auto", *SAMPLERS):
        raise OKDUserError(f"--sampler must be auto, {' or '.join(SAMPLERS)}, got {cfg.sampler!r}")
    check_positive("m_per_class", cfg.m_per_class)
    if cfg.limit_batches is not None:
        check_positive("limit_batches", cfg.limit_batches)
    if cfg.num_peers < min_peers:
        raise OKDUserError(f"method {cfg.method!r} needs --num-peers >= {min_peers}, got {cfg.num_peers}")
    if cfg.share is not None:
        if cfg.share not in SHARE_MODES:
            raise OKDUserError(f"--share must be one of {', '.join(SHARE_MODES)}, got {cfg.share!r}")
        if cfg.share not in allowed_shares:
            raise OKDUserError(f"method {cfg.method!r} supports --share {'|'.join(allowed_shares)}, got {cfg.share!r}")
    if cfg.lr_schedule not in ("cosine", "multistep", "constant"):
        raise OKDUserError(f"--lr-schedule must be cosine, multistep or constant, got {cfg.lr_schedule!r}")
    if cfg.sgd_impl not in ("auto", "fused", "foreach", "loop"):
        raise OKDUserError(f"--sgd-impl must be auto, fused, foreach or loop, got {cfg.sgd_impl!r}")
    if cfg.nan_policy not in ("stop", "skip-step"):
        raise OKDUserError(f"--nan-policy must be stop or skip-step, got {cfg.nan_policy!r}")
    check_device_name(cfg.device)
    if cfg.dataset in ("cifar100", "cifar10", "imagenet", "folder") and cfg.data is None and not cfg.download:
        raise OKDUserError(f"--data is required for --dataset {cfg.dataset} (or pass --download with --data DIR for CIFAR-10/100)")
    check_folder_options(cfg.dataset, cfg.image_size, cfg.val_split, cfg.in_memory)
    if cfg.dataset == "synthetic":
        for name in ("synthetic_train", "synthetic_test", "synthetic_classes", "synthetic_size"):
            check_positive(name, getattr(cfg, name))
