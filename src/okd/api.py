"""okd from Python (notebooks, scripts): the same runs as the ``okd`` command, in-process.

Every function takes what the matching command takes, resolves it through the same code, writes
the same run folder, and raises :class:`okd.OKDUserError` (one line naming the problem and the fix)
where the command would exit with code 2.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn


def train(out: str | Path | None = None, *, resume: bool = False, overwrite: bool = False, quiet: bool = True,
          config: str | Path | None = None, **options: Any) -> dict[str, Any]:
    """Train a cohort, like ``okd train``; returns the run's summary (what ``summary.json`` holds) plus
    ``run_folder``, the folder the run was written to.

    ``options`` are ``okd train``'s options by their TrainConfig names (``method="dml"``,
    ``arch="resnet32"``, ``epochs=2``, ``limit_batches=1``, ``plugins=["my_models"]``, ...); unset
    ones come from the method's recipe, as on the command line. ``config`` is a YAML file of options
    (keyword arguments win). Without ``out`` the run goes to a folder not used yet:
    ``runs/<method>_<arch>_<dataset>_s<seed>``, or that name with ``-2``, ``-3``, ... appended.
    A SIGINT/SIGTERM (a notebook's interrupt) stops after the current step, saves ``last.pt``
    and raises ``okd.engine.trainer.TrainingInterrupted``; ``resume=True`` continues the run.
    """
    from okd.engine import distributed as okd_dist
    from okd.engine.options import default_run_folder, train_config
    from okd.engine.trainer import Trainer
    from okd.errors import OKDUserError

    if resume and out is None:
        raise OKDUserError("resume=True needs out=<the run folder to continue>")
    cfg = train_config(options, config_file=config, resume_from=out if resume else None)
    folder = Path(out) if out is not None else default_run_folder(cfg, fresh=True)
    with okd_dist.process_group(cfg.device):
        summary = Trainer(cfg, folder, resume=resume, overwrite=overwrite, quiet=quiet).fit()
    return {**summary, "run_folder": str(folder)}


def evaluate(checkpoint: str | Path, *, dataset: str | None = None, data: str | None = None, device: str = "auto",
             batch_size: int | None = None, limit_batches: int | None = None, workers: int | None = None) -> dict[str, Any]:
    """Evaluate ``best.pt``/``last.pt`` like ``okd eval --format json``: the top-1/top-5 error (%) of
    every peer, the peer mean, the deployed peer and the ensemble, under ``result["errors"]``.
    ``checkpoint`` may be a run folder: its best.pt is used (``result["checkpoint"]`` names the file).

    ``dataset``/``data`` evaluate on another dataset with the same classes, or where the data moved.
    """
    from okd.cli.evaluate import evaluate_checkpoint

    return evaluate_checkpoint(str(checkpoint), data, device, batch_size, limit_batches, dataset, workers)


def load_peer(checkpoint: str | Path, peer: int | str | None = None) -> nn.Module:
    """One trained peer as the plain backbone (``create_backbone(arch)`` with its weights), in eval
    mode on the CPU: ``peer`` is an index, or None for the peer the method deploys.

    It expects images normalised as in training (``okd export`` writes the mean/std next to the weights).
    """
    from okd.errors import OKDUserError
    from okd.report.export import load_method, peer_module

    if isinstance(peer, bool) or not (peer is None or isinstance(peer, (int, str))):
        raise OKDUserError(f"peer must be a peer index or None (the deployed peer), got {peer!r}")
    return peer_module(load_method(checkpoint), "deployed" if peer is None else str(peer))


def predict(images: str | Path | list[str | Path], *, checkpoint: str | Path | None = None, model: str | Path | None = None,
            peer: int | str | None = None, top_k: int = 1) -> list[dict[str, Any]]:
    """Classify image files (or the images under folders) like ``okd predict --format json``: one dict per
    image with ``image``, ``class`` (the saved class name), ``index``, ``probability`` and ``top`` (the
    ``top_k`` best). Give ``checkpoint`` (a run folder or .pt; ``peer`` as in :func:`load_peer`, or
    "ensemble") or ``model`` (a file from ``okd export``); images are prepared as the run's evaluation was.
    """
    from okd.errors import OKDUserError
    from okd.report.predict import classify, from_checkpoint, from_model

    if (checkpoint is None) == (model is None):
        raise OKDUserError("give exactly one of checkpoint= (a run folder or .pt) and model= (an exported file)")
    if model is not None and peer is not None:
        raise OKDUserError("peer= applies to checkpoint=, not to an exported model (it holds one network)")
    predictor = from_model(model) if model is not None else from_checkpoint(checkpoint, "deployed" if peer is None else str(peer))
    return classify(predictor, [images] if isinstance(images, (str, Path)) else list(images), top_k)
