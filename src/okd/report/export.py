"""Deployable models from an okd checkpoint: one peer as the plain backbone, or the method's ensemble.

A checkpoint holds the whole method (cohort, method heads, memory banks, optimiser). A user ships
one peer: trunk + its branch is exactly the plain network (same names, loads strict into
``create_plain_network``: okd's backbone, or for ``timm:`` / ``tv:`` archs the library's own model),
so the exported file needs no okd-specific module to run. The ensemble
needs the whole cohort and the method's own ensemble rule (ONE: its gate), so it is exported
as a traced graph (TorchScript or ONNX) only.

Rebuilding a method needs no data: class count comes from the classifier's weight, and methods
that size state by the training set get a small stand-in set of the size the method asks for
(``OKDMethod.stand_in_per_class``); that state is training-only, is not loaded, and is emptied
before export (a check proves the outputs unchanged).
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from okd.data.preprocess import Preprocessing, preprocessing_for
from okd.engine.checkpoint import TEMP_SUFFIX, atomic_write_bytes, temp_prefix
from okd.errors import OKDUserError

FORMATS = ("state_dict", "torchscript", "onnx")
STATE_DICT_FORMAT = "okd-backbone-v1"
_CLASSIFIER_STAGE = "cohort.branches.0.fc."  # okd's own nets: fc.weight; library nets: fc.<library path>.weight


@dataclass
class Loaded:
    method: Any  # okd.methods.OKDMethod, in eval mode, on the CPU
    config: Any  # okd.engine.config.TrainConfig
    epoch: int
    num_classes: int
    path: Path
    class_names: list[str] | None = None  # the run's saved class names, by label

    @property
    def preprocessing(self) -> Preprocessing:
        """The run's evaluation preprocessing: the network is exported and checked at its size."""
        cfg = self.config
        return preprocessing_for(cfg.dataset, cfg.image_size, int(cfg.synthetic_size))

    @property
    def input_size(self) -> int:
        return self.preprocessing.size


def load_method(path: str | Path, plugins: list[str] | None = None) -> Loaded:
    """The trained method of a checkpoint, on the CPU in eval mode, without touching the dataset.

    The run's plugins are imported only if ``plugins`` (the user's) names them: a checkpoint never runs code.
    """
    from okd.engine.checkpoint import load_checkpoint
    from okd.engine.config import config_from_mapping
    from okd.engine.trainer import backbone_options_of
    from okd.methods import build_method, stand_in_dataset
    from okd.models import backbone_options
    from okd.plugins import allow_saved_plugins

    from okd.engine.checkpoint_path import resolve_checkpoint

    path = resolve_checkpoint(path)[0]  # a run folder: its best.pt
    state = load_checkpoint(path)
    cfg = config_from_mapping(state["config"])
    allow_saved_plugins(cfg.plugins, plugins, f"checkpoint {path}")  # the user's backbones/methods the run was trained with
    weights: dict[str, torch.Tensor] = state["model"]
    classifier = [k for k in weights if k.startswith(_CLASSIFIER_STAGE) and k.endswith("weight") and weights[k].dim() == 2]
    if len(classifier) != 1:
        raise OKDUserError(f"{path}: no classifier weight under {_CLASSIFIER_STAGE!r} in the checkpoint's model")
    num_classes = int(weights[classifier[0]].shape[0])
    torch.manual_seed(0)  # the weights are overwritten; keep construction deterministic anyway
    with backbone_options(backbone_options_of(cfg, pretrained=False)):  # same branch points; weights from the file
        method = build_method(cfg.method, cfg.arch, num_classes, int(cfg.num_peers or 1), cfg.share,
                              dataset=stand_in_dataset(cfg.method, num_classes, **cfg.method_options), **cfg.method_options)
    _load_weights(method, weights, path)
    method.eval()
    return Loaded(method, cfg, int(state.get("epoch", 0)), num_classes, Path(path), saved_class_names(state, num_classes))


def saved_class_names(state: dict[str, Any], num_classes: int) -> list[str] | None:
    """The class names the run saved with its data record, if they are a list of ``num_classes`` strings."""
    data = state.get("data")
    names = data.get("class_names") if isinstance(data, dict) else None
    ok = isinstance(names, list) and len(names) == num_classes and all(isinstance(n, str) for n in names)
    return list(names) if ok else None


def _load_weights(method: nn.Module, weights: dict[str, torch.Tensor], path: str | Path) -> None:
    """All parameters must match exactly; only buffers sized by the training set may differ (not loaded)."""
    own = method.state_dict()
    params = {name for name, _ in method.named_parameters()}
    sized = {k for k, v in weights.items() if k in own and k not in params and own[k].shape != v.shape}
    result = method.load_state_dict({k: v for k, v in weights.items() if k not in sized}, strict=False)
    missing = set(result.missing_keys) - sized
    if missing or result.unexpected_keys:
        detail = ", ".join(sorted(missing)[:3] + sorted(result.unexpected_keys)[:3])
        raise OKDUserError(f"{path} does not match its own config's model ({detail})")
    for key in sized:  # training-only state of another size: never used for inference
        owner, _, name = key.rpartition(".")
        setattr(method.get_submodule(owner) if owner else method, name, torch.empty(0))


def peer_index(method: Any, peer: str) -> int | None:
    """"deployed" -> the method's deployed peer, "ensemble" -> None, "N" -> N (checked)."""
    if peer == "deployed":
        return int(method.deployed_peer)
    if peer == "ensemble":
        return None
    try:
        index = int(peer)
    except ValueError:
        raise OKDUserError(f"--peer must be deployed, ensemble or a peer index, got {peer!r}") from None
    if not 0 <= index < method.deployable_peers:
        raise OKDUserError(f"--peer {index}: the cohort has deployable peers 0..{method.deployable_peers - 1}")
    return index


def peer_network(method: Any, index: int, num_classes: int) -> nn.Module:
    """Deployable peer ``index`` (``method.peer_state_dict``: trunk + branch, or e.g. an EMA copy) as the plain network
    (peer ``index``'s own backbone in a heterogeneous cohort; for timm/tv archs the library's
    own model), in eval mode."""
    from okd.models import create_plain_network

    net = create_plain_network(method.backbone_names[index], num_classes)
    try:
        net.load_state_dict(method.peer_state_dict(index), strict=True)
    except RuntimeError as exc:
        from okd.engine.checkpoint import state_dict_mismatch

        raise OKDUserError(f"peer {index} does not load into {method.backbone_names[index]}: {state_dict_mismatch(exc)}") from None
    return net.eval()


def peer_module(loaded: Loaded, peer: str = "deployed") -> nn.Module:
    """One peer of a loaded checkpoint as the plain backbone, in eval mode on the CPU (``okd.load_peer``)."""
    index = peer_index(loaded.method, peer)
    if index is None:
        raise OKDUserError("the ensemble is not one network: pick a peer, or export it with "
                           "`okd export --peer ensemble --format torchscript`")
    return peer_network(loaded.method, index, loaded.num_classes)


class EnsembleNet(nn.Module):
    """The whole cohort plus the method's heads; returns the method's own ensemble logits."""

    def __init__(self, method: nn.Module) -> None:
        super().__init__()
        self.method: Any = method  # an OKDMethod: forward + ensemble_logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.ensemble_logits(self.method(images))


@torch.no_grad()
def _prune_unused_buffers(net: EnsembleNet, example: torch.Tensor) -> None:
    """Empty method-level buffers the ensemble does not read (memory banks, sampler indices).

    Whether a buffer is read is tested, not assumed: emptying it must leave the logits bit-identical.
    All candidates are tried at once first (one forward in the usual case), then one by one.
    """
    reference = net(example)
    candidates = [
        (module, name)
        for module_name, module in net.method.named_modules()
        if module_name != "cohort" and not module_name.startswith("cohort.")
        and not isinstance(module, nn.modules.batchnorm._NormBase)
        for name, buffer in module._buffers.items()
        if buffer is not None and buffer.numel() > 0
    ]

    def unchanged() -> bool:
        try:
            return torch.equal(net(example), reference)
        except (RuntimeError, IndexError, ValueError):
            return False

    saved = {(id(m), n): m._buffers[n] for m, n in candidates}
    for group in ([candidates], [[c] for c in candidates]):
        for subset in group:
            for module, name in subset:
                module._buffers[name] = saved[(id(module), name)].new_empty(0)
            if not unchanged():
                for module, name in subset:
                    module._buffers[name] = saved[(id(module), name)]
            elif subset is candidates:
                return


def metadata(loaded: Loaded, peer: int | None) -> dict[str, Any]:
    """``arch``: the exported peer's own backbone (what ``create_backbone`` rebuilds); ``cohort_arch``: the run's --arch."""
    cfg = loaded.config
    meta: dict[str, Any] = {
        "format": STATE_DICT_FORMAT,
        "arch": cfg.arch if peer is None else loaded.method.backbone_names[peer],
        "cohort_arch": cfg.arch,
        "num_classes": loaded.num_classes,
        "method": cfg.method,
        "dataset": cfg.dataset,
        "peer": "ensemble" if peer is None else peer,
        "num_peers": int(loaded.method.num_peers),
        "epoch": loaded.epoch,
    }
    meta["class_names"] = loaded.class_names  # None: the data had no names (synthetic); labels are indices
    meta.update(loaded.preprocessing.to_meta())  # input_size, mean, std, resize + crop
    return meta


# Allowed max |exported - checkpoint| logit difference, relative to max(1, max |logit|).
# state_dict re-runs the same PyTorch modules, so it must be bit-identical; the TorchScript trace runs
# the same kernels (identical in practice; 1e-6 leaves room for a fused op); ONNX Runtime fuses and
# reorders float32 arithmetic, whose round-off grows with the logits' size.
TOLERANCE = {"state_dict": 0.0, "torchscript": 1e-6, "onnx": 1e-4}


@dataclass
class ExportResult:
    path: Path
    meta: dict[str, Any]
    max_abs_diff: float | None  # exported vs checkpoint logits on a random batch (None: no runtime to check)
    logit_scale: float  # max |logit| of that batch: float32 round-off scales with it
    tolerance: float  # the largest max_abs_diff accepted for this format and logit scale


def export_checkpoint(checkpoint: str | Path, peer: str, fmt: str, out: str | Path, plugins: list[str] | None = None) -> ExportResult:
    """Write one peer or the ensemble in ``fmt`` to a temporary file, re-run that file, and move it to ``out``
    only if its logits match the checkpoint's (``TOLERANCE``); otherwise nothing is left behind."""
    if fmt not in FORMATS:
        raise OKDUserError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if peer == "ensemble" and fmt == "state_dict":
        raise OKDUserError("--peer ensemble needs --format torchscript or onnx: a plain state dict holds one network")
    loaded = load_method(checkpoint, plugins)
    index = peer_index(loaded.method, peer)
    size = loaded.input_size
    example = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))

    def checkpoint_logits(images: torch.Tensor) -> torch.Tensor:
        output = loaded.method(images)
        return loaded.method.ensemble_logits(output) if index is None else loaded.method.peer_logits(output, index)

    with torch.no_grad():  # the checkpoint's own logits, before anything is pruned or copied; two batch sizes,
        reference, reference_one = checkpoint_logits(example), checkpoint_logits(example[:1])  # as kernels differ by batch
        if index is None:
            ensemble = EnsembleNet(loaded.method).eval()
            _prune_unused_buffers(ensemble, example)
            net: nn.Module = ensemble
        else:
            net = peer_network(loaded.method, index, loaded.num_classes)
    meta = metadata(loaded, index)
    out = Path(out)
    if out.is_dir():
        raise OKDUserError(f"--out {out} is a folder; give a file name (e.g. {out / 'model.pt'})")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if fmt == "state_dict":
            _check_sidecar_fits(out)
        fd, name = tempfile.mkstemp(prefix=temp_prefix(out.name, out.parent), suffix=TEMP_SUFFIX, dir=out.parent)
        os.close(fd)
        os.chmod(name, 0o666 & ~_umask())  # mkstemp's 0600 would otherwise become the exported file's mode
    except OSError as exc:
        raise _cannot_write(out, exc) from None
    from okd.report import export_formats

    writer, runner = {"state_dict": (export_formats.save_state_dict, export_formats.run_state_dict),
                      "torchscript": (export_formats.save_torchscript, export_formats.run_torchscript),
                      "onnx": (export_formats.save_onnx, export_formats.run_onnx)}[fmt]
    finite = reference[reference.isfinite()]
    scale = float(finite.abs().max()) if finite.numel() else 0.0
    tolerance = TOLERANCE[fmt] * max(1.0, scale)
    temp = Path(name)
    try:
        buffer = io.BytesIO()
        writer(net, example, meta, buffer)
        _write_file(temp, buffer.getvalue(), out)
        produced, single = runner(temp, example), runner(temp, example[:1])  # two batch sizes: the batch is dynamic
        diff = None if produced is None or single is None else max(_difference(produced, reference), _difference(single, reference_one))
        if diff is not None and not diff <= tolerance:  # `not <=`: a NaN difference fails too
            raise OKDUserError(
                f"the exported {fmt} model does not reproduce the checkpoint's logits: max |difference| {diff:.3g} > "
                f"allowed {tolerance:.3g} (logits up to {scale:.3g}); {out} was not written")
        try:
            if fmt == "state_dict":  # the deployer's copy of the metadata, readable without torch
                atomic_write_bytes(sidecar(out), (json.dumps(meta, indent=2) + "\n").encode())
            os.replace(temp, out)
        except OSError as exc:
            raise _cannot_write(out, exc) from None
    finally:
        temp.unlink(missing_ok=True)
    return ExportResult(out, meta, diff, scale, tolerance)


def _write_file(temp: Path, data: bytes, out: Path) -> None:
    """``data`` to ``temp`` (synced); a failure, such as a full disk, is one line saying how to retry."""
    try:
        with open(temp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as exc:
        raise _cannot_write(out, exc) from None


def _cannot_write(out: Path, exc: OSError) -> OKDUserError:
    fix = "free space on its disk" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "make its folder writable"
    return OKDUserError(f"cannot write {out}: {exc.strerror or exc}; nothing was written: {fix}, then rerun the same command")


def _check_sidecar_fits(out: Path) -> None:
    """A state dict's metadata goes beside it as NAME.json: refuse, before any work, a name with no room for that."""
    try:
        limit = int(os.pathconf(out.parent, "PC_NAME_MAX"))
    except (OSError, ValueError):
        limit = 255
    over = len(os.fsencode(sidecar(out).name)) - limit
    if over > 0:
        raise OKDUserError(f"--out {out.name[:40]}…: its metadata file {sidecar(out).name[:20]}….json would pass this file "
                           f"system's {limit}-byte name limit; shorten the name by {over} bytes")


def sidecar(out: Path) -> Path:
    """``model.pt`` -> ``model.pt.json``: the JSON written beside an exported state dict."""
    return out.with_name(out.name + ".json")


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _difference(produced: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |difference|; entries that are the same non-finite value in both (a barely trained
    network can overflow on random input) count as equal, any other NaN or inf as a mismatch."""
    if produced.shape != reference.shape:
        return float("inf")
    produced = produced.to(reference.dtype)
    same = (produced == reference) | (produced.isnan() & reference.isnan())
    gap = torch.where(same, torch.zeros_like(reference), (produced - reference).abs().nan_to_num(nan=float("inf"), posinf=float("inf")))
    return float(gap.max())


def load_exported_backbone(path: str | Path) -> nn.Module:
    """The plain network saved by ``--format state_dict`` (eval mode), opened with weights_only=True:
    okd's backbone, or for ``timm:`` / ``tv:`` archs the library's own model."""
    from okd.report.export_formats import load_state_dict_file

    return load_state_dict_file(path)[0]
