"""SwitOKD: the switch on constructed gaps at and around its threshold, the gap/label distances and
the KL term against plain formulas, the paused teacher left untouched by the optimiser step, and
the CLI (teacher/student pair, equal backbones, bad options, resume, export of the student)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from cli_method_helpers import assert_one_line_error, assert_same_models, exported_and_model_logits
from okd.cli.main import main
from okd.data.batch import Batch
from okd.engine.step import train_step
from okd.errors import OKDUserError
from okd.losses.switokd import adaptive_threshold, expert_mode, switch_sums, switokd_kl
from okd.methods import build_method
from plain_math import kl_t, softmax

pytestmark = pytest.mark.usefixtures("one_thread")


def sums(gap: float, s_err: float, t_err: float, count: float = 4.0) -> torch.Tensor:
    return torch.tensor([gap * count, s_err * count, t_err * count, count], dtype=torch.float64)


def test_adaptive_threshold_is_the_papers_delta() -> None:
    assert adaptive_threshold(1.2, 0.4) == pytest.approx(1.2 - math.exp(-0.4 / 1.6) * 0.4)


@pytest.mark.parametrize("offset, expert", [(-1e-6, False), (0.0, False), (1e-6, True), (0.3, True)])
def test_switch_at_and_around_the_adaptive_threshold(offset: float, expert: bool) -> None:
    s_err, t_err = 1.2, 0.4
    delta = 1.2 - math.exp(-0.4 / 1.6) * 0.4
    assert expert_mode(sums(delta + offset, s_err, t_err)) is expert  # strictly above delta pauses the teacher


@pytest.mark.parametrize("offset, expert", [(-1e-6, False), (0.0, False), (1e-6, True)])
def test_switch_at_and_around_a_fixed_threshold(offset: float, expert: bool) -> None:
    assert expert_mode(sums(0.7 + offset, 1.0, 0.5), threshold=0.7) is expert


def test_a_teacher_no_better_than_the_student_never_pauses() -> None:
    assert not expert_mode(sums(1.9, 0.5, 0.5)) and not expert_mode(sums(1.9, 0.5, 0.6), threshold=0.0)


def test_switch_sums_against_plain_formulas() -> None:
    t = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    s = torch.tensor([[0.5, 0.5, 0.0], [1.0, -1.0, 2.0]])
    y = torch.tensor([0, 2])
    tau = 2.0

    def l1(p: list[float], q: list[float]) -> float:
        return sum(abs(a - b) for a, b in zip(p, q))

    onehot = [[1.0, 0, 0], [0, 0, 1.0]]
    gap = sum(l1(softmax(a, tau), softmax(b, tau)) for a, b in zip(s.tolist(), t.tolist()))
    s_err = sum(l1(softmax(a, 1.0), o) for a, o in zip(s.tolist(), onehot))
    t_err = sum(l1(softmax(a, 1.0), o) for a, o in zip(t.tolist(), onehot))
    assert switch_sums(t, s, y, tau).tolist() == pytest.approx([gap, s_err, t_err, 2.0], rel=1e-6)


def test_kl_has_no_temperature_squared_and_only_trains_the_non_detached_side() -> None:
    target = torch.tensor([[1.0, 0.0, 2.0]], requires_grad=True)
    logits = torch.tensor([[0.0, 1.0, -1.0]], requires_grad=True)
    loss = switokd_kl(target.detach(), logits, 2.0)
    assert loss.item() == pytest.approx(kl_t(logits.tolist(), target.tolist(), 2.0) / 4.0, rel=1e-5)
    loss.backward()
    assert logits.grad.abs().sum() > 0 and target.grad is None


def _method(**opts):
    torch.manual_seed(0)
    return build_method("switokd", "resnet32", 4, 2, **opts)


@pytest.mark.parametrize("expert", [True, False])
def test_a_paused_teacher_is_left_untouched_by_the_step_and_its_momentum(expert: bool, monkeypatch) -> None:
    method = _method()
    method.train()
    opt = torch.optim.SGD(method.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    monkeypatch.setattr(type(method), "_switch", lambda self, *a: expert)
    batch = Batch(torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3]), torch.arange(4))
    teacher, student = method.cohort.branches
    train_step(method, method, opt, batch, 0, device=torch.device("cpu"))  # two steps: the second one uses momentum
    t0 = [p.detach().clone() for p in teacher.parameters()]
    s0 = [p.detach().clone() for p in student.parameters()]
    result = train_step(method, method, opt, batch, 0, device=torch.device("cpu"))
    teacher_ce = float(result.losses["ce_teacher"].detach())
    assert teacher_ce == 0.0 if expert else teacher_ce > 0
    teacher_same = all(torch.equal(a, b) for a, b in zip(t0, teacher.parameters()))
    assert teacher_same is expert and not all(torch.equal(a, b) for a, b in zip(s0, student.parameters()))
    assert all((p in opt.state) is not expert for p in teacher.parameters())  # no momentum buffer was ever made
    assert int(method.mode_steps[0]) == 2 and int(method.mode_steps[1]) == (2 if expert else 0)


@pytest.mark.parametrize("value", ["2.5", "-0.1", "fast"])
def test_switch_threshold_out_of_range_is_a_user_error(value: str) -> None:
    with pytest.raises(OKDUserError, match=r"--switch-threshold must be 'adaptive' or a number in \[0, 2\]"):
        _method(switch_threshold=value)


# -- CLI ------------------------------------------------------------------------------------------
TINY = ["--method", "switokd", "--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8",
        "--synthetic-classes", "4", "--synthetic-size", "16", "--batch-size", "4", "--limit-batches", "2",
        "--quiet", "--device", "cpu"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def test_cli_teacher_student_pair_resumes_bit_identically(tmp_path: Path) -> None:
    pair = ["--arch", "resnet110,resnet32", "--student-lr-scale", "0.5", "--lr", "0.2", "--lr-schedule", "constant"]
    assert train(tmp_path / "full", "--epochs", "2", *pair) == 0
    assert train(tmp_path / "split", "--epochs", "1", *pair) == 0
    assert train(tmp_path / "split", "--epochs", "2", *pair, "--resume") == 0
    model = assert_same_models(tmp_path / "full" / "last.pt", tmp_path / "split" / "last.pt")
    assert int(model["mode_steps"][0]) == 4
    record = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"ce_student", "kd_student", "ce_teacher", "kd_teacher"} <= set(record["train"])
    assert record["test"]["deployed"] == record["test"]["peer1"]  # the student is reported
    from okd.engine.checkpoint import load_checkpoint

    groups = load_checkpoint(tmp_path / "full" / "last.pt")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.2, 0.1]  # the student's group at --student-lr-scale times --lr


def test_recipe_gives_two_networks_and_the_cifar100_student_rate() -> None:
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import resolve_config

    cfg = resolve_config(TrainConfig(method="switokd", arch="resnet32", dataset="cifar100", data="/x"))
    assert (cfg.num_peers, cfg.student_lr_scale) == (2, 0.1)
    cfg = resolve_config(TrainConfig(method="switokd", arch="resnet110,resnet32", dataset="synthetic"))
    assert (cfg.num_peers, cfg.student_lr_scale) == (2, None)


def test_cli_equal_backbones_export_the_student(tmp_path: Path) -> None:
    assert train(tmp_path / "run", "--epochs", "1", "--arch", "resnet32", "--switch-threshold", "0.5") == 0
    exported, output = exported_and_model_logits(tmp_path / "run", tmp_path)
    assert torch.equal(exported, output.logits[1]) and not torch.equal(exported, output.logits[0])


@pytest.mark.parametrize("args, message", [
    (["--arch", "resnet110,resnet_nope"], "resnet_nope"),
    (["--arch", "resnet110,resnet32,resnet32"], "trains one teacher and one student"),
    (["--switch-threshold", "2.5"], "--switch-threshold must be 'adaptive' or a number in [0, 2]"),
    (["--student-lr-scale", "0"], "--student-lr-scale must be > 0"),
])
def test_cli_bad_switokd_option_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                      args: list[str], message: str) -> None:
    assert_one_line_error(train(tmp_path / "run", "--epochs", "1", *args), capsys, message)
