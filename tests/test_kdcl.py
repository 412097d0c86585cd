"""KDCL end to end: every rule trains through the CLI, resume is exact, the loss and its gradients."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from okd.cli.main import main
from okd.data import DataConfig, build_data
from okd.data.batch import Batch
from okd.engine.checkpoint import load_checkpoint
from okd.engine.step import make_optimizer, train_step
from okd.losses.ensemble_targets import ENSEMBLE_RULES
from okd.methods import build_method
from okd.models import CohortOutput

TINY = ["--method", "kdcl", "--arch", "resnet32", "--num-peers", "2", "--dataset", "synthetic", "--synthetic-size", "16",
        "--synthetic-train", "16", "--synthetic-test", "8", "--batch-size", "4", "--eval-batch-size", "8",
        "--limit-batches", "2", "--device", "cpu", "--quiet"]


@pytest.mark.parametrize("rule", list(ENSEMBLE_RULES))
def test_every_rule_trains_two_steps_through_the_cli(rule: str, tmp_path: Path) -> None:
    out = tmp_path / rule
    assert main(["train", *TINY, "--kdcl-rule", rule, "--epochs", "1", "--out", str(out)]) == 0
    assert load_checkpoint(out / "last.pt")["config"]["kdcl_rule"] == rule
    record = json.loads((out / "metrics.jsonl").read_text())
    assert set(record["train"]) == {"ce", "kd", "total"} and all(math.isfinite(v) for v in record["train"].values())
    assert {"peer0", "peer1", "ensemble", "deployed"} <= set(record["test"])


def test_resume_is_bit_identical(tmp_path: Path) -> None:
    assert main(["train", *TINY, "--epochs", "2", "--out", str(tmp_path / "full")]) == 0
    assert main(["train", *TINY, "--epochs", "1", "--out", str(tmp_path / "split")]) == 0
    assert main(["train", *TINY, "--epochs", "2", "--resume", "--out", str(tmp_path / "split")]) == 0
    full, split = (load_checkpoint(tmp_path / name / "last.pt") for name in ("full", "split"))
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    for a, b in zip(full["optimizer"]["state"].values(), split["optimizer"]["state"].values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])


def test_unknown_rule_exits_2_naming_the_valid_ones(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY, "--kdcl-rule", "median", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "okd train: error: unknown --kdcl-rule 'median'; choose one of minlogit, naive, linear, mean"
    ]
    assert main(["train", *TINY, "--kdcl-rule", "general", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "okd train: error: --kdcl-rule general is not implemented (it needs a held-out split of the training set, "
        "see docs/methods/kdcl.md); choose one of minlogit, naive, linear, mean"
    ]
    assert not (tmp_path / "run").exists()


def test_loss_values_and_no_gradient_through_the_target() -> None:
    method = build_method("kdcl", "resnet32", 3, 2, kd_t=2.0, alpha=0.25)
    generator = torch.Generator().manual_seed(0)
    logits = [torch.randn(4, 3, generator=generator, requires_grad=True) for _ in range(2)]
    labels = torch.tensor([0, 1, 2, 1])
    output = CohortOutput(logits=logits, features=[], trunk=torch.empty(0))
    losses = method.losses(output, Batch(torch.empty(0), labels, torch.arange(4)), epoch=0)
    target = ENSEMBLE_RULES["minlogit"](torch.stack([z.detach() for z in logits]), labels)
    ce = sum(torch.nn.functional.cross_entropy(z, labels) for z in logits)
    assert losses["ce"].item() == pytest.approx(0.75 * ce.item())
    q = torch.softmax(target / 2, 1)
    kl = sum((q * (q.log() - torch.log_softmax(z.detach() / 2, 1))).sum(1).mean() * 4 for z in logits)
    assert losses["kd"].item() == pytest.approx(0.25 * kl.item(), rel=1e-5)
    losses["kd"].backward()
    for z in logits:  # only the student side: d/dz alpha*T^2*KL = alpha*T*(softmax(z/T) - q)/B
        expected = 0.25 * 2 * (torch.softmax(z.detach() / 2, 1) - q) / 4
        torch.testing.assert_close(z.grad, expected, rtol=1e-5, atol=1e-7)


def test_a_few_steps_lower_the_loss_with_one_view_per_peer() -> None:
    cfg = DataConfig(dataset="synthetic", batch_size=8, eval_batch_size=8, synthetic_train=8, synthetic_test=8,
                     synthetic_size=16, synthetic_classes=4, seed=0)
    _, loader, _ = build_data(cfg)
    torch.manual_seed(0)
    method = build_method("kdcl", "resnet32", 4, 2)
    loader.set_views(method.train_views)
    batch = next(loader.epoch(0))
    assert batch.images.shape == (2, 8, 3, 16, 16)
    optimizer = make_optimizer(method.trainable_parameters(), torch.device("cpu"), lr=0.01, momentum=0.9,
                               nesterov=True, weight_decay=0.0)
    totals = [float(train_step(method, method, optimizer, batch, 0, device=torch.device("cpu")).total.detach())
              for _ in range(5)]
    assert totals[-1] < totals[0] * 0.5, totals
