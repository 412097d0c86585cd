"""Shared checks for a method's CLI runs: one-line user errors, resume bit-identity, export of the deployed peer."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from okd.cli.main import main


def assert_one_line_error(code: int, capsys: pytest.CaptureFixture[str], message: str) -> None:
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and len(err.splitlines()) == 1 and "Traceback" not in err, err


def assert_same_models(a: Path, b: Path) -> dict[str, torch.Tensor]:
    from okd.engine.checkpoint import load_checkpoint

    full, split = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert full.keys() == split.keys()
    for key, value in full.items():
        assert torch.equal(value, split[key]), key
    return full


def exported_and_model_logits(run: Path, tmp_path: Path) -> tuple[torch.Tensor, object]:
    """The exported deployed network's logits on a test batch, and the method's output on it."""
    from okd.engine.checkpoint import load_checkpoint
    from okd.engine.config import config_from_mapping, replace
    from okd.engine.distributed import current
    from okd.engine.trainer import build_for_config
    from okd.report.export import load_exported_backbone

    out = tmp_path / "deployed.pt"
    assert main(["export", "--checkpoint", str(run / "last.pt"), "--peer", "deployed", "--format", "state_dict",
                 "--out", str(out)]) == 0
    state = load_checkpoint(run / "last.pt")
    cfg = replace(config_from_mapping(state["config"]), device="cpu")
    _spec, _train, eval_loader, method = build_for_config(cfg, torch.device("cpu"), current())
    method.load_state_dict(state["model"])
    method.eval()
    images = next(iter(eval_loader)).images
    with torch.no_grad():
        return load_exported_backbone(out)(images), method(images)
