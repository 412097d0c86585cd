"""Writers and readers of the three export formats; each reader re-runs the file for the export check.

Writers serialise into memory (``out`` is a binary buffer): the caller writes the bytes to disk with
Python's own file calls, because torch's native writers abort the whole process on a full disk.
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from okd.errors import OKDUserError

EXPORT_HINT = "pip install 'okd-torch[export]'"


# -- state dict: tensors + plain metadata, opened with weights_only=True ---------------------------
def save_state_dict(net: nn.Module, _example: torch.Tensor, meta: dict[str, Any], out: BinaryIO) -> None:
    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    torch.save({"state_dict": state, "meta": meta}, out)


def load_state_dict_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    from okd.models import create_plain_network

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as exc:
        raise OKDUserError(f"cannot read {path}: {str(exc).splitlines()[0][:200]}") from None
    meta = blob.get("meta", {}) if isinstance(blob, dict) else {}
    if meta.get("format") != "okd-backbone-v1":
        raise OKDUserError(f"{path} is not a backbone exported by `okd export --format state_dict`")
    net = create_plain_network(meta["arch"], meta["num_classes"])  # timm:/tv: archs: the library's own model
    try:
        net.load_state_dict(blob["state_dict"], strict=True)
    except RuntimeError as exc:
        raise OKDUserError(f"{path} does not load into {meta['arch']}: {str(exc).splitlines()[0][:200]}") from None
    return net.eval(), meta


@torch.no_grad()
def run_state_dict(path: Path, example: torch.Tensor) -> torch.Tensor:
    return load_state_dict_file(path)[0](example)


# -- TorchScript: a traced graph that runs without okd -------------------------------------------
def save_torchscript(net: nn.Module, example: torch.Tensor, meta: dict[str, Any], out: BinaryIO) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
        traced = torch.jit.trace(net.eval(), example, check_trace=False)
        torch.jit.save(traced, out, _extra_files={"okd.json": json.dumps(meta)})


@torch.no_grad()
def run_torchscript(path: Path, example: torch.Tensor) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated")
        return torch.jit.load(str(path), map_location="cpu")(example)


# -- ONNX: dynamic batch, metadata in the model's metadata_props ---------------------------------
def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise OKDUserError(f"ONNX export needs the {module} package: {EXPORT_HINT}") from None


def _onnx_legacy(net: nn.Module, example: torch.Tensor) -> Any:
    """torch's TorchScript-based exporter: ~30x faster than the dynamo one on these CNNs, needs only onnx."""
    import onnx

    scratch = io.BytesIO()
    torch.onnx.export(net, (example,), scratch, input_names=["images"], output_names=["logits"], dynamo=False,
                      dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}})
    return onnx.load_model_from_string(scratch.getvalue())


def _onnx_dynamo(net: nn.Module, example: torch.Tensor) -> Any:
    """torch's torch.export-based exporter (needs onnxscript); used where the legacy one is gone or fails."""
    _need("onnxscript")
    # onnxruntime fuses BN etc. itself when it loads the model; onnxscript's optimiser pass costs ~10x the export
    program = torch.onnx.export(net, (example,), None, input_names=["images"], output_names=["logits"], dynamo=True,
                                dynamic_shapes=({0: torch.export.Dim("batch", min=1)},), optimize=False, verbose=False)
    assert program is not None  # f=None returns the program
    return program.model_proto


def save_onnx(net: nn.Module, example: torch.Tensor, meta: dict[str, Any], out: BinaryIO) -> None:
    """ONNX with a dynamic batch dimension; the okd metadata goes into the model's metadata_props."""
    onnx = _need("onnx")
    net = net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            model = _onnx_legacy(net, example)
        except Exception:  # noqa: BLE001  (removed in this torch, or an op it cannot trace)
            try:
                model = _onnx_dynamo(net, example)
            except OKDUserError:
                raise
            except Exception as exc:  # the exporter raises many types; the user needs one line
                raise OKDUserError(f"ONNX export failed: {str(exc).splitlines()[0][:300]}") from None
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, json.dumps(value)
    try:
        out.write(model.SerializeToString())
    except ValueError as exc:  # a model over protobuf's 2 GiB limit
        raise OKDUserError(f"cannot serialise the ONNX model: {exc}") from None


def run_onnx(path: Path, example: torch.Tensor) -> torch.Tensor | None:
    try:
        import onnxruntime as ort
    except ImportError:
        return None  # written but not checked; the caller says so
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"images": example.numpy()})
    return torch.from_numpy(logits)
