"""Classify image files with a trained run or an exported model (``okd predict``, ``okd.predict``).

The images go through ``Preprocessing.load``: the same resize, crop and mean/std as the run's own
evaluation, read from the checkpoint's config or from the metadata every export carries, so a
deployed file and the checkpoint it came from give the same classes.
"""

from __future__ import annotations

import json
import os
import warnings
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from okd.data.preprocess import Preprocessing
from okd.errors import OKDUserError

BATCH = 64  # images decoded and classified at once: bounds memory for a long file list


@dataclass
class Predictor:
    """A network (float batch -> logits), how its input must be prepared, and its class names."""

    forward: Callable[[torch.Tensor], torch.Tensor]
    preprocessing: Preprocessing
    class_names: list[str] | None
    source: str  # what was loaded, for messages


def from_checkpoint(checkpoint: str | Path, peer: str = "deployed") -> Predictor:
    """The deployed peer (or ``peer``: an index, or ``ensemble``) of a checkpoint or run folder."""
    from okd.report.export import EnsembleNet, load_method, peer_index, peer_network

    loaded = load_method(checkpoint)
    index = peer_index(loaded.method, peer)
    net = EnsembleNet(loaded.method).eval() if index is None else peer_network(loaded.method, index, loaded.num_classes)
    return Predictor(net, loaded.preprocessing, loaded.class_names, str(loaded.path))


def from_model(path: str | Path) -> Predictor:
    """A file written by ``okd export``: ONNX, TorchScript or a state dict, told apart by content."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise OKDUserError(f"model file {path} does not exist")
    if not zipfile.is_zipfile(path):
        return _onnx(path)
    with zipfile.ZipFile(path) as archive:
        scripted = any(name.endswith("extra/okd.json") for name in archive.namelist())
    return _torchscript(path) if scripted else _state_dict(path)


def _predictor(forward: Callable[[torch.Tensor], torch.Tensor], meta: dict[str, Any], source: str) -> Predictor:
    names = meta.get("class_names")
    return Predictor(forward, Preprocessing.from_meta(meta, source), names if isinstance(names, list) else None, source)


def _state_dict(path: Path) -> Predictor:
    from okd.report.export_formats import load_state_dict_file

    net, meta = load_state_dict_file(path)
    return _predictor(net, meta, str(path))


def _torchscript(path: Path) -> Predictor:
    extra = {"okd.json": ""}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
        try:
            net = torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except RuntimeError as exc:
            raise OKDUserError(f"cannot load TorchScript model {path}: {str(exc).splitlines()[0][:200]}") from None
    return _predictor(net, json.loads(extra["okd.json"] or "{}"), str(path))


def _onnx(path: Path) -> Predictor:
    try:
        import onnxruntime as ort
    except ImportError:
        raise OKDUserError(f"{path} is not a PyTorch file, and running an ONNX model needs onnxruntime: "
                           "pip install 'okd[export]'") from None
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise OKDUserError(f"{path} is neither an okd export (ONNX, TorchScript, state dict) nor a readable file: "
                           f"{str(exc).splitlines()[0][:200]}") from None
    stored = session.get_modelmeta().custom_metadata_map
    meta = {key: json.loads(value) for key, value in stored.items()}

    def forward(images: torch.Tensor) -> torch.Tensor:
        (logits,) = session.run(["logits"], {"images": images.numpy()})
        return torch.from_numpy(logits)

    return _predictor(forward, meta, str(path))


def image_files(inputs: Sequence[str | Path]) -> list[str]:
    """The given files, and the images under any given folder (sorted); each must exist."""
    from okd.data.folder import list_images

    found: list[str] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            inside = list_images(path)
            if not inside:
                raise OKDUserError(f"folder {path} holds no image files")
            found += [str(path / rel) for rel in inside]
        elif path.is_file():
            found.append(str(path))
        else:
            raise OKDUserError(f"image {path} does not exist")
    if not found:
        raise OKDUserError("give at least one image file or folder to classify")
    return found


@torch.no_grad()
def classify(predictor: Predictor, images: Sequence[str | Path], top_k: int = 1) -> list[dict[str, Any]]:
    """One entry per image: its path, the predicted class (name and index), and the ``top_k`` classes with
    their softmax probabilities."""
    if top_k < 1:
        raise OKDUserError(f"--top-k must be at least 1, got {top_k}")
    paths = image_files(images)
    results: list[dict[str, Any]] = []
    for start in range(0, len(paths), BATCH):
        chunk = paths[start:start + BATCH]
        logits = predictor.forward(predictor.preprocessing.load(chunk)).float()
        probs = logits.softmax(dim=1)
        values, indices = probs.topk(min(top_k, probs.shape[1]), dim=1)
        for path, vals, idxs in zip(chunk, values.tolist(), indices.tolist(), strict=True):
            top = [{"class": _name(predictor, i), "index": i, "probability": v} for v, i in zip(vals, idxs, strict=True)]
            results.append({"image": os.fspath(path), **top[0], "top": top})
    return results


def _name(predictor: Predictor, index: int) -> str:
    names = predictor.class_names
    return names[index] if names is not None and index < len(names) else str(index)
