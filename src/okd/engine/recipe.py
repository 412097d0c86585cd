"""Per-method / per-dataset default recipes (design.md §3) and config validation.

The recipe only fills values the user left unset, so every number stays overridable.
"""

from __future__ import annotations

from dataclasses import replace

from okd.data import DATASETS
from okd.data.config import check_folder_options
from okd.data.idx import IDX_DATASETS, recipe_for
from okd.data.sampling import SAMPLERS
from okd.engine.config import TrainConfig, check_device_name, check_positive
from okd.errors import OKDUserError
from okd.methods import get_method_class, resolve_method_name, split_arch
from okd.models import SHARE_MODES, create_backbone, format_arch

# The original README's --nce_k per backbone (CIFAR) and the reference default elsewhere.
# Cohort size when --num-peers is not given: the reference's 4, except where a method's paper uses another.
DEFAULT_PEERS = {"baseline": 1, "pcl": 3, "lmcl": 2}

NCE_K_BY_BACKBONE = {"resnet32": 256, "resnet110": 256, "densenet40_12": 256, "vgg16": 16384, "hcgnet_a1": 16384, "resnet34": 16384}


def _optimisation_recipe(method: str, dataset: str) -> dict[str, float | int]:
    if dataset == "imagenet":
        if method == "mcl_okd":  # reference-spec §2.4
            return {"epochs": 100, "batch_size": 128, "lr": 0.05, "wd": 1e-4}
        # design.md §3: 100 epochs, one cosine (not the reference's accidental 300-epoch restart)
        return {"epochs": 100, "batch_size": 256, "lr": 0.1, "wd": 1e-4}
    if dataset in ("cifar100", "cifar10", "folder"):  # a folder of your own images starts from CIFAR's recipe
        if method == "mcl_okd":
            return {"epochs": 300, "batch_size": 64, "lr": 0.05, "wd": 5e-4}
        return {"epochs": 300, "batch_size": 128, "lr": 0.1, "wd": 5e-4}
    idx = recipe_for(dataset)  # IDX data sets declare their own (data/idx.py)
    if idx is not None:
        return idx
    if dataset == "digits":  # the embedded quick-start set: same lr/batch ratio as the reference
        return {"epochs": 30, "batch_size": 64, "lr": 0.05, "wd": 5e-4}
    return {"epochs": 2, "batch_size": 32, "lr": 0.05, "wd": 5e-4}  # synthetic smoke runs


def _fit_batch_to_sampler(cfg: TrainConfig, method_sampler: str, recipe: dict) -> dict:
    """An m-per-class batch holds at most m x (number of classes) samples: a recipe batch larger than
    that (digits: 64 > 2 x 10) shrinks to fit, with the recipe's lr scaled alike (same lr/batch ratio).
    A batch the user set is left as given (and refused later if it does not fit)."""
    sampler = method_sampler if cfg.sampler == "auto" else cfg.sampler
    classes = {"digits": 10, "cifar100": 100, "synthetic": cfg.synthetic_classes}.get(cfg.dataset)
    if cfg.dataset in IDX_DATASETS:
        classes = IDX_DATASETS[cfg.dataset].num_classes
    if sampler != "m_per_class" or "batch_size" not in recipe or classes is None or cfg.m_per_class < 1:
        return {}
    fitted = min(recipe["batch_size"], cfg.m_per_class * classes)
    if fitted == recipe["batch_size"]:
        return {}
    changes = {"batch_size": fitted}
    if "lr" in recipe:
        changes["lr"] = recipe["lr"] * fitted / recipe["batch_size"]
    return changes


def resolve_config(cfg: TrainConfig) -> TrainConfig:
    """Fill the recipe into ``cfg`` and validate it; raises OKDUserError with one clear message.

    ``--arch a,b`` (one backbone per peer) sets the default --num-peers to the number of names; the
    only backbone-keyed recipe value (MCL-OKD's nce_k) follows peer 0's backbone.
    """
    method_from_arch, backbone = split_arch(cfg.arch)
    names = backbone.split(",")
    method = resolve_method_name(cfg.method)
    if method_from_arch is not None:
        if cfg.method not in ("baseline", method_from_arch) and method != method_from_arch:
            raise OKDUserError(f"--arch {cfg.arch} selects method {method_from_arch!r} but --method is {cfg.method!r}")
        method = method_from_arch
    if cfg.dataset not in DATASETS:
        raise OKDUserError(f"unknown dataset {cfg.dataset!r}; known datasets: {', '.join(DATASETS)}")
    cls = get_method_class(method)
    changes: dict = {"method": method, "arch": format_arch(names)}
    for key, value in _optimisation_recipe(method, cfg.dataset).items():
        if getattr(cfg, key) is None:
            changes[key] = value
    changes.update(_fit_batch_to_sampler(cfg, cls.train_sampler, changes))
    if cfg.num_peers is None:
        changes["num_peers"] = len(names) if len(names) > 1 else DEFAULT_PEERS.get(method, 4)
    if cfg.eval_batch_size is None:
        changes["eval_batch_size"] = 500 if cfg.dataset != "imagenet" else 256
    if method == "mcl_okd":
        if cfg.nce_k is None:
            changes["nce_k"] = NCE_K_BY_BACKBONE.get(names[0], 256) if cfg.dataset in ("cifar100", "cifar10", "imagenet") else 256
        if cfg.nce_t is None:
            changes["nce_t"] = 0.07 if cfg.dataset == "imagenet" else 0.1
    if cfg.dataset == "folder" and cfg.image_size is None:
        changes["image_size"] = create_backbone(names[0], 2).spec.input_size
    if cfg.lr_schedule == "multistep" and cfg.milestones is None:
        epochs = changes.get("epochs", cfg.epochs)
        changes["milestones"] = [epochs // 2, epochs * 3 // 4]
    resolved = replace(cfg, **changes)
    validate(resolved, cls.min_peers, cls.allowed_shares)
    cls.plan_cohort(names, resolved.num_peers, resolved.share)  # one backbone per peer: refused combinations
    return resolved


def validate(cfg: TrainConfig, min_peers: int, allowed_shares: tuple[str, ...]) -> None:
    for name in ("epochs", "batch_size", "eval_batch_size", "lr", "num_peers", "log_interval"):
        check_positive(name, getattr(cfg, name))
    for name in ("wd", "momentum", "workers", "seed"):
        check_positive(name, getattr(cfg, name), strict=False)
    for name in ("kd_t", "nce_k", "nce_t", "feat_dim"):
        check_positive(name, getattr(cfg, name))
    for name in ("alpha", "beta", "gamma", "rampup_epochs"):
        check_positive(name, getattr(cfg, name), strict=False)
    if cfg.nce_m is not None and not 0 <= cfg.nce_m < 1:
        raise OKDUserError(f"--nce-m must be in [0, 1), got {cfg.nce_m}")
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
