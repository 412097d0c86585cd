"""Evaluating a checkpoint: what ``okd eval`` prints and ``okd.evaluate`` returns."""

from __future__ import annotations

import os

from okd.engine.checkpoint_path import resolve_checkpoint
from okd.plugins import allow_saved_plugins


def evaluate_checkpoint(path: str, data: str | None = None, device: str = "auto", batch_size: int | None = None,
                        limit_batches: int | None = None, dataset: str | None = None, workers: int | None = None,
                        plugins: list[str] | None = None) -> dict:
    """The errors of every peer, the peer mean, the deployed peer and the ensemble (``okd eval``, ``okd.evaluate``);
    the run's plugins are imported only where ``plugins`` names them."""
    from okd.engine.checkpoint import load_checkpoint, state_dict_mismatch
    from okd.engine.config import check_positive, config_from_mapping, replace
    from okd.engine.distributed import current
    from okd.engine.trainer import build_for_config, evaluate, resolve_device
    from okd.errors import OKDUserError

    check_positive("limit_batches", limit_batches)  # 0 would report 100% error having evaluated nothing
    check_positive("batch_size", batch_size)
    if workers is not None and workers < 0:
        raise OKDUserError(f"--workers must be 0 (decode in the main process) or more, got {workers}")
    dev = resolve_device(device)
    path = str(resolve_checkpoint(path)[0])  # a run folder: its best.pt
    state = load_checkpoint(path)
    cfg = config_from_mapping(state["config"])
    allow_saved_plugins(cfg.plugins, plugins, f"checkpoint {path}")
    changes = {"download": False, "device": device, "pretrained": False}  # the weights come from the checkpoint
    if dataset is not None:
        from okd.data import DATASETS

        if dataset not in DATASETS:
            raise OKDUserError(f"unknown dataset {dataset!r}; known datasets: {', '.join(DATASETS)}")
        changes["dataset"] = dataset
    if data is not None:
        changes["data"] = data
    if batch_size is not None:
        changes["eval_batch_size"] = batch_size
    changes["workers"] = workers if workers is not None else min(int(cfg.workers), os.cpu_count() or 1)
    cfg = replace(cfg, **changes)
    spec, _train, eval_loader, method = build_for_config(cfg, dev, current(), state.get("data"), eval_only=True)
    try:
        method.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise OKDUserError(
            f"checkpoint {path} does not fit the {cfg.method} {cfg.arch} model its config and the data "
            f"({spec.num_classes} classes) describe: {state_dict_mismatch(exc)}"
        ) from None
    errors = evaluate(method, method, eval_loader, dev, limit=limit_batches)
    return {"checkpoint": str(path), "method": cfg.method, "arch": cfg.arch, "dataset": cfg.dataset,
            "epoch": state["epoch"], "deployed_peer": method.deployed_peer, "deployed_head": method.deployed_head,
            "peer_archs": list(method.backbone_names),
            "errors": errors}
