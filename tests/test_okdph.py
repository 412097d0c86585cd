"""OKDPH: hybridisation, fusion and distillation against plain formulas (values and which inputs get
gradient), the code's and the paper's hybrid-loss gradient, fusion timing, and the CLI (train, bad
options, resume, export)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cli_method_helpers import assert_one_line_error, assert_same_models, exported_and_model_logits
from okd.cli.main import main
from okd.data.batch import Batch
from okd.losses.okdph import fuse_, hybrid_tensors, okdph_distill
from okd.methods import build_method
from plain_math import kl_t

pytestmark = pytest.mark.usefixtures("one_thread")


def test_hybrid_tensors_is_the_weighted_sum_and_sends_r_i_times_the_gradient_to_each_student() -> None:
    a = [torch.tensor([1.0, -2.0], requires_grad=True), torch.tensor([[3.0]], requires_grad=True)]
    b = [torch.tensor([5.0, 4.0], requires_grad=True), torch.tensor([[-1.0]], requires_grad=True)]
    h = hybrid_tensors([a, b], [0.25, 0.75])
    assert h[0].tolist() == [0.25 * 1 + 0.75 * 5, 0.25 * -2 + 0.75 * 4] and h[1].tolist() == [[0.25 * 3 - 0.75]]
    (h[0] * torch.tensor([2.0, 3.0])).sum().add(h[1].sum() * 7).backward()
    assert a[0].grad.tolist() == [0.5, 0.75] and b[0].grad.tolist() == [1.5, 2.25]
    assert a[1].grad.tolist() == [[1.75]] and b[1].grad.tolist() == [[5.25]]


def test_fuse_moves_each_student_gamma_of_the_way_to_the_hybrid() -> None:
    student, hybrid = [torch.tensor([1.0, 2.0])], [torch.tensor([3.0, -2.0])]
    fuse_(student, hybrid, 0.25)
    assert student[0].tolist() == [0.25 * 3 + 0.75 * 1, 0.25 * -2 + 0.75 * 2]
    fuse_(student, hybrid, 0.0)
    assert student[0].tolist() == [1.5, 1.0]
    fuse_(student, hybrid, 1.0)
    assert student[0].tolist() == [3.0, -2.0]


def test_distillation_targets_the_detached_mean_of_all_networks_including_the_hybrid() -> None:
    z1 = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], requires_grad=True)
    z2 = torch.tensor([[0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]], requires_grad=True)
    zh = torch.tensor([[2.0, 0.0, 1.0], [0.0, 0.0, 3.0]], requires_grad=True)
    T = 4.0
    target = [[(x + y + w) / 3 for x, y, w in zip(r1, r2, rh)] for r1, r2, rh in zip(z1.tolist(), z2.tolist(), zh.tolist())]
    loss = okdph_distill([z1, z2], zh, T)
    assert loss.item() == pytest.approx(kl_t(z1.tolist(), target, T) + kl_t(z2.tolist(), target, T), rel=1e-5)
    loss.backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0 and zh.grad is None


def _method(**opts):
    torch.manual_seed(0)
    return build_method("okdph", "resnet32", 4, 2, **opts)


def _batch(views: int = 3) -> Batch:
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(views, 4, 3, 16, 16, generator=g), torch.tensor([0, 1, 2, 3]), torch.arange(4))


def _flat(module: torch.nn.Module) -> torch.Tensor:
    return torch.cat([t.detach().flatten().float() for t in module.state_dict().values() if t.is_floating_point()])


def test_students_start_equal_and_the_hybrid_is_their_mean_at_each_training_forward() -> None:
    method = _method()
    assert method.train_views == 3 and not any(p.requires_grad for p in method.hybrid.parameters())
    assert torch.equal(_flat(method.cohort.branches[0]), _flat(method.cohort.branches[1]))
    with torch.no_grad():
        for p in method.cohort.branches[1].parameters():
            p.add_(torch.randn_like(p))
    method.train()
    method(_batch().images)
    # the hybrid's BN statistics moved in its own forward since; its parameters are the plain mean
    students = [dict(b.named_parameters()) for b in method.cohort.branches]
    for name, p in method.hybrid.branches[0].named_parameters():
        assert torch.equal(p, students[0][name] * 0.5 + students[1][name] * 0.5), name


def test_code_mode_hybrid_loss_trains_nothing_and_paper_mode_sends_it_through_the_mean() -> None:
    omega = 0.5
    batch = _batch()
    grads = {}
    for mode in ("code", "paper"):
        method = _method(hybrid_grad=mode, omega=omega, fusion_interval="off")
        method.train()
        out = method(batch.images)
        losses = method.losses(out, batch, 0)
        assert losses["ce_hybrid"].requires_grad == (mode == "paper")  # code: a logged constant
        sum(losses.values()).backward()
        grads[mode] = [torch.cat([p.grad.flatten() for p in b.parameters()]) for b in method.cohort.branches]
    # independent: the hybrid network's own gradient of (1 - omega) N CE, with its parameters trainable
    method = _method(fusion_interval="off")
    method.train()
    out = method(batch.images)  # rebuilds the hybrid; its BN statistics now moved once, so reset them
    method.hybrid.load_state_dict(_method(fusion_interval="off").hybrid.state_dict())
    method.hybrid.requires_grad_(True)
    hybrid_ce = (1 - omega) * 2 * F.cross_entropy(method.hybrid(batch.images[2]).logits[0], batch.targets)
    hybrid_ce.backward()
    g_h = torch.cat([p.grad.flatten() for p in method.hybrid.parameters()])
    for peer in range(2):
        torch.testing.assert_close(grads["paper"][peer] - grads["code"][peer], 0.5 * g_h, rtol=1e-4, atol=1e-6)


def test_batch_fusion_uses_the_hybrid_of_the_step_and_follows_the_interval() -> None:
    method = _method(fusion_interval="2_batch", gamma=0.25)
    method.train()
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.1)
    method.start_epoch(0)
    for step in range(3):
        batch = _batch()
        out = method(batch.images)
        hybrid = _flat(method.hybrid.branches[0])
        opt.zero_grad()
        sum(method.losses(out, batch, 0).values()).backward()
        opt.step()
        stepped = [_flat(b) for b in method.cohort.branches]
        method.after_step(out, batch)
        for peer, branch in enumerate(method.cohort.branches):
            expected = 0.25 * hybrid + 0.75 * stepped[peer] if step % 2 == 0 else stepped[peer]
            torch.testing.assert_close(_flat(branch), expected, rtol=0, atol=1e-6)
    assert int(method.fuse_step) == 3
    method.start_epoch(1)  # a new epoch restarts the batch count
    assert int(method.fuse_step) == 0


def test_epoch_fusion_happens_before_the_epoch_after_each_interval() -> None:
    method = _method(fusion_interval="2_epoch", gamma=1.0)
    with torch.no_grad():
        for p in method.cohort.branches[1].parameters():
            p.add_(1.0)
    method.train()
    method(_batch().images)  # the hybrid of these students
    before = [_flat(b) for b in method.cohort.branches]
    method.start_epoch(0)
    method.start_epoch(2)  # (2 - 1) % 2 != 0: no fusion
    assert all(torch.equal(_flat(b), x) for b, x in zip(method.cohort.branches, before))
    method.start_epoch(1)
    hybrid = _flat(method.hybrid.branches[0])
    assert all(torch.equal(_flat(b), hybrid) for b in method.cohort.branches)


# -- CLI ------------------------------------------------------------------------------------------
TINY = ["--method", "okdph", "--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8",
        "--synthetic-classes", "4", "--synthetic-size", "16", "--batch-size", "4", "--limit-batches", "2",
        "--quiet", "--device", "cpu"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def test_cli_resume_is_bit_identical_across_an_epoch_fusion(tmp_path: Path) -> None:
    opts = ["--fusion-interval", "1_epoch", "--gamma", "0.5", "--hybrid-grad", "paper"]
    assert train(tmp_path / "full", "--epochs", "2", *opts) == 0
    assert train(tmp_path / "split", "--epochs", "1", *opts) == 0
    assert train(tmp_path / "split", "--epochs", "2", *opts, "--resume") == 0
    model = assert_same_models(tmp_path / "full" / "last.pt", tmp_path / "split" / "last.pt")
    assert any(k.startswith("hybrid.") for k in model)
    record = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ce", "ce_hybrid", "kd", "total"} <= set(record["train"])
    assert {"peer0", "peer1", "hybrid", "ensemble", "deployed"} <= set(record["test"])


def test_cli_export_of_the_deployed_student_reproduces_its_logits(tmp_path: Path) -> None:
    assert train(tmp_path / "run", "--epochs", "1", "--fusion-interval", "1_batch") == 0
    exported, output = exported_and_model_logits(tmp_path / "run", tmp_path)
    assert torch.equal(exported, output.logits[0])


@pytest.mark.parametrize("args, message", [
    (["--gamma", "1.5"], "--gamma must be in [0, 1] (for okdph, the fusion ratio)"),
    (["--omega", "-0.1"], "--omega must be in [0, 1]"),
    (["--fusion-interval", "3_steps"], "--fusion-interval must look like 5_batch or 1_epoch"),
    (["--arch", "resnet32,resnet110"], "cannot train peers of different backbones"),
])
def test_cli_bad_okdph_option_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                    args: list[str], message: str) -> None:
    assert_one_line_error(train(tmp_path / "run", "--epochs", "1", *args), capsys, message)


def test_recipe_fills_the_official_cifar100_values_and_two_students() -> None:
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import resolve_config

    cfg = resolve_config(TrainConfig(method="okdph", arch="resnet32", dataset="cifar100", data="/x"))
    assert (cfg.num_peers, cfg.omega, cfg.beta, cfg.gamma, cfg.fusion_interval) == (2, 1.0, 0.5, 1.0, "5_batch")
    cfg = resolve_config(TrainConfig(method="okdph", arch="resnet32", dataset="cifar100", data="/x", gamma=0.2))
    assert cfg.gamma == 0.2 and cfg.omega == 1.0
