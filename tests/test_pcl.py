"""PCL as a method: its cohort and frozen EMA shadow, losses against plain formulas, the EMA step,
per-view trunk calls, and the CLI (train, bad options, resume, export of the EMA peer)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from plain_math import ce_tensor as _ce, kl_t_tensor as _kl
from okd.cli.main import main
from okd.data.batch import Batch
from okd.errors import OKDUserError
from okd.losses.pcl import pcl_rampup
from okd.methods import build_method
from okd.models import CohortOutput, count_params


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add spinning (conftest.py)


def pcl(num_peers: int = 3, classes: int = 5, **opts):
    torch.manual_seed(0)
    return build_method("pcl", "resnet32", classes, num_peers, **opts)


def test_cohort_fusion_head_and_frozen_shadow_sizes() -> None:
    method = pcl(num_peers=3, classes=5)
    assert method.cohort.share == "late" and method.train_views == 3
    assert tuple(method.fuse.weight.shape) == (5, 3 * 64)  # Linear(N d, C) on ResNet-32's 64-d features
    trainable = sum(p.numel() for p in method.trainable_parameters())
    assert trainable == count_params(method.cohort) + 5 * 192 + 5
    assert count_params(method.shadow) == trainable and count_params(method) == 2 * trainable
    assert not any(p.requires_grad for p in method.shadow.parameters())
    assert method.deployed_head == "ema0" and method.deployed_peer == 0
    keys = method.state_dict()
    assert "ema_steps" in keys and any(k.startswith("shadow.cohort.") for k in keys) and "shadow.fuse.weight" in keys


@pytest.mark.parametrize(
    "opts, message",
    [({"ema_decay": 1.0}, "--ema-decay must be in [0, 1)"), ({"ema_decay": -0.5}, "--ema-decay must be in [0, 1)"),
     ({"pcl_rampup": "bug"}, "--pcl-rampup must be intended or reimpl")],
)
def test_bad_options_are_user_errors(opts: dict, message: str) -> None:
    with pytest.raises(OKDUserError, match=message.replace("[", r"\[").replace(")", r"\)")):
        pcl(**opts)


@pytest.mark.parametrize("mode, epoch", [("intended", 0), ("intended", 40), ("reimpl", 1), ("reimpl", 5)])
def test_losses_match_plain_formulas(mode: str, epoch: int) -> None:
    torch.manual_seed(1)
    n, T = 3, 3.0
    logits = [torch.randn(4, 5, requires_grad=True) for _ in range(n)]
    fused = torch.randn(4, 5, requires_grad=True)
    ema = torch.randn(n, 4, 5)
    y = torch.tensor([0, 3, 1, 4])
    output = CohortOutput(logits=logits, features=[], trunk=torch.zeros(1), extras={"fused": fused, "ema": ema})
    method = pcl(num_peers=n, pcl_rampup=mode)
    losses = method.losses(output, Batch(torch.zeros(4, 3, 8, 8), y, torch.arange(4)), epoch)
    w = pcl_rampup(epoch, 80, mode)
    expected = {
        "ce": sum(_ce(z, y) for z in logits),
        "ce_fuse": _ce(fused, y),
        "pe": w * sum(_kl(z, fused, T) for z in logits),
        "pm": w * sum(sum(_kl(logits[i], ema[j], T) for j in range(n) if j != i) / (n - 1) for i in range(n)),
    }
    assert set(losses) == set(expected)
    for name, value in expected.items():
        assert losses[name].item() == pytest.approx(value.item(), rel=1e-5, abs=1e-12), name
    sum(losses.values()).backward()
    hand_fused_grad = torch.autograd.grad(_ce(fused, y), fused)[0]
    torch.testing.assert_close(fused.grad, hand_fused_grad)  # pe sends nothing into the fused logits


def _batch(method, views: int, size: int = 16, b: int = 4) -> Batch:
    g = torch.Generator().manual_seed(3)
    images = torch.randn(views, b, 3, size, size, generator=g) if views > 1 else torch.randn(b, 3, size, size, generator=g)
    return Batch(images, torch.tensor([0, 1, 2, 3]) % method.cohort.num_classes, torch.arange(b))


def test_trunk_runs_once_per_view_for_students_and_shadow() -> None:
    method = pcl(num_peers=3)
    calls = {"student": 0, "shadow": 0}
    method.cohort.trunk["stem"].register_forward_hook(lambda *_: calls.__setitem__("student", calls["student"] + 1))
    method.shadow["cohort"].trunk["stem"].register_forward_hook(lambda *_: calls.__setitem__("shadow", calls["shadow"] + 1))
    batch = _batch(method, views=3)
    output = method(batch.images)
    assert calls == {"student": 3, "shadow": 3}
    assert output.extras["ema"].shape == (3, 4, 5) and output.extras["fused"].shape == (4, 5)
    # Peer i reads view i: changing view 2 leaves peers 0, 1 (and their EMA twins) unchanged.
    moved = batch.images.clone()
    moved[2] += 1.0
    method.eval()
    a, b = method(batch.images), method(moved)
    for i in (0, 1):
        assert torch.equal(a.logits[i], b.logits[i]) and torch.equal(a.extras["ema"][i], b.extras["ema"][i])
    assert not torch.equal(a.logits[2], b.logits[2])


def test_shadow_bn_statistics_come_from_its_own_train_mode_passes() -> None:
    method = pcl(num_peers=2)
    shadow_bn = [m for m in method.shadow["cohort"].modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    before = shadow_bn.running_mean.clone()
    method.train()(_batch(method, views=2).images)
    assert not torch.equal(shadow_bn.running_mean, before)  # updated by the shadow's own forward
    after_train = shadow_bn.running_mean.clone()
    method.eval()(_batch(method, views=1).images)
    assert torch.equal(shadow_bn.running_mean, after_train)  # eval mode reads them only


def test_after_step_copies_then_averages_and_counts_in_a_buffer() -> None:
    method = pcl(num_peers=2)
    opt = torch.optim.SGD(list(method.trainable_parameters()), lr=0.1)
    student = lambda: [*method.cohort.parameters(), *method.fuse.parameters()]  # noqa: E731
    shadow = lambda: [*method.shadow["cohort"].parameters(), *method.shadow["fuse"].parameters()]  # noqa: E731
    buffers_before = {k: v.clone() for k, v in method.shadow.named_buffers()}
    expected = None
    for step in range(3):
        batch = _batch(method, views=2)
        output = method(batch.images)
        if step == 0:
            buffers_before = {k: v.clone() for k, v in method.shadow.named_buffers()}
        opt.zero_grad()
        sum(method.losses(output, batch, 0).values()).backward()
        opt.step()
        method.after_step(output, batch)
        a = min(1 - 1 / (step + 1), 0.999)
        current = [p.detach().clone() for p in student()]
        expected = current if expected is None else [a * e + (1 - a) * p for e, p in zip(expected, current)]
        if step == 0:
            assert all(torch.equal(s, p) for s, p in zip(shadow(), student()))
            assert all(torch.equal(v, buffers_before[k]) for k, v in method.shadow.named_buffers())  # params only
        assert int(method.ema_steps) == step + 1
    for s, e in zip(shadow(), expected):
        torch.testing.assert_close(s.detach(), e, rtol=1e-6, atol=1e-7)


def test_loaded_step_counter_drives_the_next_update() -> None:
    source = pcl(num_peers=2)
    source.ema_steps.fill_(3)  # the next update uses a_3 = 0.75
    target = pcl(num_peers=2)
    target.after_step(None, None)  # caches t = 0 on the host ...
    target.load_state_dict(source.state_dict())  # ... which loading must forget
    before = [p.clone() for p in target.shadow.parameters()]
    with torch.no_grad():
        for p in target.cohort.parameters():
            p.add_(1.0)
    target.after_step(None, None)
    student = [*target.cohort.parameters(), *target.fuse.parameters()]
    for s, b, p in zip(target.shadow.parameters(), before, student):
        torch.testing.assert_close(s, 0.75 * b + 0.25 * p.detach())
    assert int(target.ema_steps) == 4


def test_deployable_peer_is_the_ema_peer() -> None:
    from okd.models import create_backbone

    method = pcl(num_peers=2)
    with torch.no_grad():
        for p in method.shadow.parameters():
            p.mul_(0.5)
    method.eval()
    images = _batch(method, views=1).images
    output = method(images)
    for i in range(2):
        net = create_backbone("resnet32", 5)
        net.load_state_dict(method.peer_state_dict(i), strict=True)
        torch.testing.assert_close(net.eval()(images), method.peer_logits(output, i))
        torch.testing.assert_close(method.peer_logits(output, i), method.eval_heads(output)[f"ema{i}"])
    assert set(method.eval_heads(output)) == {"ema0", "ema1", "fused", "ema_fused"}
    torch.testing.assert_close(method.ensemble_logits(output), output.extras["ema"].mean(0))


# -- CLI ------------------------------------------------------------------------------------------
TINY = ["--method", "pcl", "--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8",
        "--synthetic-classes", "4", "--synthetic-size", "16", "--batch-size", "4", "--limit-batches", "2",
        "--quiet", "--device", "cpu", "--num-peers", "2"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def test_cli_trains_and_reports_every_head(tmp_path: Path) -> None:
    assert train(tmp_path / "run", "--epochs", "1", "--ema-decay", "0.5", "--pcl-rampup", "reimpl") == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ce", "ce_fuse", "pe", "pm", "total"} <= set(record["train"])
    assert {"peer0", "peer1", "ema0", "ema1", "fused", "ema_fused", "ensemble", "deployed"} <= set(record["test"])
    assert record["test"]["deployed"] == record["test"]["ema0"]
    from okd.engine.checkpoint import load_checkpoint

    saved = load_checkpoint(tmp_path / "run" / "last.pt")
    assert saved["config"]["ema_decay"] == 0.5 and saved["config"]["pcl_rampup"] == "reimpl"
    assert saved["config"]["num_peers"] == 2 and int(saved["model"]["ema_steps"]) == 2


def test_recipe_gives_pcl_three_peers() -> None:
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import resolve_config

    assert resolve_config(TrainConfig(method="pcl", dataset="synthetic")).num_peers == 3
    assert resolve_config(TrainConfig(method="dml", dataset="synthetic")).num_peers == 4


@pytest.mark.parametrize("args, message", [(["--ema-decay", "1"], "--ema-decay must be in [0, 1)"),
                                           (["--pcl-rampup", "paper"], "--pcl-rampup must be intended or reimpl")])
def test_cli_bad_pcl_option_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert train(tmp_path / "run", "--epochs", "1", *args) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").iterdir())


def test_cli_resume_restores_the_ema_state_bit_identically(tmp_path: Path) -> None:
    from okd.engine.checkpoint import load_checkpoint

    assert train(tmp_path / "full", "--epochs", "2") == 0
    assert train(tmp_path / "split", "--epochs", "1") == 0
    assert train(tmp_path / "split", "--epochs", "2", "--resume") == 0
    full = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    split = load_checkpoint(tmp_path / "split" / "last.pt")["model"]
    assert int(full["ema_steps"]) == 4
    shadow_keys = [k for k in full if k.startswith("shadow.")]
    assert shadow_keys
    for key, value in full.items():
        assert torch.equal(value, split[key]), key


def test_cli_export_ships_the_ema_peer(tmp_path: Path) -> None:
    from cli_method_helpers import exported_and_model_logits

    assert train(tmp_path / "run", "--epochs", "1") == 0
    exported, output = exported_and_model_logits(tmp_path / "run", tmp_path)  # the export is in eval mode
    assert torch.equal(exported, output.extras["ema"][0])
    assert not torch.equal(exported, output.logits[0])  # the student peer differs: this really is the EMA peer
