"""Pretrained weights for external backbones, from local caches only: okd never downloads.

A training run must not depend on the network (and a cluster node often has none), so
``--pretrained`` uses weights a user fetched beforehand, and names every place it looked otherwise.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from okd.errors import OKDUserError


def torch_hub_checkpoint(url: str) -> Path:
    """Where ``torch.hub.load_state_dict_from_url`` keeps the file of ``url`` (honours $TORCH_HOME)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, resolved from the environment as huggingface_hub does."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "huggingface")
    return Path(home) / "hub"


def _from_hf_cache(repo_id: str, filenames: list[str]) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in filenames:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_hub_cache()))
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def _missing(okd_name: str, looked: list[str], fetch: str) -> OKDUserError:
    return OKDUserError(f"--pretrained: no local weights for {okd_name} (looked for {' and '.join(looked)}); "
                        f"okd never downloads: fetch them once with {fetch}, or drop --pretrained")


def timm_weights_file(okd_name: str, model_name: str, cfg: dict) -> str:
    """A local file holding timm's pretrained weights for ``model_name``, or a clear error."""
    looked: list[str] = []
    if cfg.get("file"):
        if os.path.isfile(cfg["file"]):
            return str(cfg["file"])
        looked.append(str(cfg["file"]))
    if cfg.get("hf_hub_id"):
        names = [cfg["hf_hub_filename"]] if cfg.get("hf_hub_filename") else ["model.safetensors", "pytorch_model.bin"]
        found = _from_hf_cache(cfg["hf_hub_id"], names)
        if found is not None:
            return str(found)
        looked.append(f"{hf_hub_cache()}/models--{cfg['hf_hub_id'].replace('/', '--')}")
    if cfg.get("url"):
        path = torch_hub_checkpoint(cfg["url"])
        if path.is_file():
            return str(path)
        looked.append(str(path))
    if not looked:
        raise OKDUserError(f"--pretrained: timm has no pretrained weights for {model_name}; drop --pretrained")
    raise _missing(okd_name, looked, f"python -c \"import timm; timm.create_model('{model_name}', pretrained=True)\"")


def load_torchvision_weights(okd_name: str, model_name: str, model: nn.Module, url: str, weight_classes: int,
                             classifier: str) -> None:
    """Load torchvision's default weights from torch hub's cache; a classifier of another size keeps its fresh init."""
    path = torch_hub_checkpoint(url)
    if not path.is_file():
        fetch = f"python -c \"import torchvision; torchvision.models.get_model('{model_name}', weights='DEFAULT')\""
        raise _missing(okd_name, [str(path)], fetch)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise OKDUserError(f"--pretrained: cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    head = f"{classifier}."
    own_classes = model.get_submodule(classifier).weight.shape[0]
    if own_classes != weight_classes:  # as timm does: the new task's classifier starts from scratch
        state = {k: v for k, v in state.items() if not k.startswith(head)}
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise OKDUserError(f"--pretrained: {path} does not fit torchvision's {model_name}: {str(exc).splitlines()[0][:200]}") from None
    missing = [k for k in result.missing_keys if not (own_classes != weight_classes and k.startswith(head))]
    if missing or result.unexpected_keys:
        detail = ", ".join((missing + result.unexpected_keys)[:3])
        raise OKDUserError(f"--pretrained: {path} does not fit torchvision's {model_name} ({detail})")
