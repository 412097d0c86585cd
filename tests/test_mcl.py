"""MCL as a method: cohort and heads, the loss terms and their weights, the logit-distillation quirk,
real optimisation, and the CLI (2 and 4 peers, bit-identical resume, bad options exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from okd.cli.main import main
from okd.data.batch import Batch
from okd.engine.checkpoint import load_checkpoint
from okd.losses.mcl import mcl_terms
from okd.methods import build_method, get_method_class
from okd.models import count_params

HEAD = 64 * 128 + 128 + 128 * 128 + 128  # Linear(64, 128) + Linear(128, 128) on ResNet-32's 64-d feature
TINY = ["--method", "mcl", "--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "8",
        "--synthetic-classes", "4", "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8",
        "--quiet", "--device", "cpu"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add spinning (conftest.py)


def mcl(num_peers: int = 2, classes: int = 4, **options) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_method("mcl", "resnet32", classes, num_peers, **options)


def paired_batch(size: int = 8, classes: int = 4, seed: int = 0) -> Batch:
    g = torch.Generator().manual_seed(seed)
    targets = torch.arange(size // 2).repeat_interleave(2) % classes  # m-per-class layout
    return Batch(torch.randn(size, 3, 16, 16, generator=g), targets, torch.arange(size))


# -- construction -----------------------------------------------------------------------------
def test_cohort_follows_the_official_code_and_heads_are_counted() -> None:
    with torch.device("meta"):  # sizes and structure only: no weights to initialise
        two, four = build_method("mcl", "resnet32", 4, 2), build_method("mcl", "resnet32", 4, 4)
        assert two.cohort.share == "none" and four.cohort.share == "early"
        assert build_method("mcl", "resnet32", 4, 4, share="none").cohort.share == "none"
        for m, n, share in ((two, 2, "none"), (four, 4, "early")):
            assert len(m.embed) == n
            assert count_params(m) == count_params(build_method("dml", "resnet32", 4, n, share=share)) + n * HEAD
        assert two.deployed_peer == 0 and four.deployed_peer == 0
        assert build_method("mcl", "resnet32", 4, 4, mcl_logit_distill=True).deployed_peer == 3
        assert build_method("mcl", "resnet32", 4, 2, mcl_logit_distill=True).deployed_peer == 0
    assert get_method_class("mcl").train_sampler == "m_per_class" and get_method_class("dml").train_sampler == "random"


def test_forward_gives_unit_embeddings_per_peer() -> None:
    m = mcl(3)
    out = m(paired_batch().images)
    emb = out.extras["embeddings"]
    assert emb.shape == (3, 8, 128) and emb.dtype == torch.float32
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(3, 8))
    assert m.ensemble_logits(out).shape == (8, 4)
    torch.testing.assert_close(m.ensemble_logits(out), torch.stack(out.logits).mean(0))


# -- losses -----------------------------------------------------------------------------------
def test_loss_terms_are_weighted_unweighted_terms() -> None:
    batch = paired_batch()
    m = mcl(2, mcl_vcl=0.3, mcl_icl=0.2, mcl_soft_vcl=0.5, mcl_soft_icl=2.0, mcl_tau=0.2, kd_t=4.0)
    out = m(batch.images)
    losses = m.losses(out, batch, 0)
    assert set(losses) == {"ce", "vcl", "icl", "soft_vcl", "soft_icl"}
    raw = mcl_terms(list(out.extras["embeddings"]), batch.targets, 0.2, 4.0)
    for name, weight in (("vcl", 0.3), ("icl", 0.2), ("soft_vcl", 0.5), ("soft_icl", 2.0)):
        torch.testing.assert_close(losses[name], weight * raw[name])
    ce = sum(torch.nn.functional.cross_entropy(z, batch.targets) for z in out.logits)
    torch.testing.assert_close(losses["ce"], ce)


def test_default_weights_are_the_official_scripts() -> None:
    m = mcl(2)
    assert m.weights == {"vcl": 0.1, "icl": 0.1, "soft_vcl": 1.0, "soft_icl": 1.0}
    assert (m.tau, m.kd_t, m.feat_dim, m.logit_distill, m.same_instance) == (0.1, 3.0, 128, False, False)


@pytest.mark.parametrize("num_peers, students", [(2, [0, 1]), (4, [3])])
def test_logit_distillation_reaches_both_of_two_peers_but_only_the_last_of_four(num_peers: int, students: list[int]) -> None:
    batch = paired_batch()
    m = mcl(num_peers, mcl_logit_distill=True)
    out = m(batch.images)
    losses = m.losses(out, batch, 0)
    grads = torch.autograd.grad(losses["kd"], out.logits, allow_unused=True)
    reached = [i for i, g in enumerate(grads) if g is not None and g.abs().sum() > 0]
    assert reached == students  # the mean-logit teacher is detached
    from okd.losses.distill import kl_div_t

    teacher = torch.stack(out.logits).mean(0).detach()
    torch.testing.assert_close(losses["kd"], sum(kl_div_t(out.logits[i], teacher, 3.0) for i in students))


def test_every_head_and_peer_gets_gradient() -> None:
    batch = paired_batch()
    m = mcl(4)
    sum(m.losses(m(batch.images), batch, 0).values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in m.embed.parameters())
    assert all(p.grad is not None for p in m.cohort.parameters())


def test_a_few_sgd_steps_lower_the_loss() -> None:
    batch = paired_batch(seed=1)
    m = mcl(2)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    totals = []
    for _ in range(6):
        losses = m.losses(m(batch.images), batch, 0)
        total = sum(losses.values())
        totals.append({k: v.item() for k, v in losses.items()} | {"total": total.item()})
        opt.zero_grad()
        total.backward()
        opt.step()
    assert totals[-1]["total"] < 0.8 * totals[0]["total"], totals
    assert totals[-1]["vcl"] + totals[-1]["icl"] < totals[0]["vcl"] + totals[0]["icl"], totals


# -- the CLI ----------------------------------------------------------------------------------
def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


@pytest.mark.parametrize("num_peers, share", [(2, "none"), (4, "early")])
def test_cli_trains_two_steps_and_evaluates(tmp_path: Path, capsys: pytest.CaptureFixture[str], num_peers: int, share: str) -> None:
    out = tmp_path / "run"
    assert train(out, "--num-peers", str(num_peers), "--epochs", "1", "--limit-batches", "2") == 0
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["train"]) == {"ce", "vcl", "icl", "soft_vcl", "soft_icl", "total"}
    assert all(v > 0 for v in record["train"].values())
    assert set(record["test"]) == {f"peer{i}" for i in range(num_peers)} | {"peer_mean", "deployed", "ensemble"}
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["sampler"] == "auto" and state["config"]["m_per_class"] == 2
    assert sum(key.startswith("embed.") for key in state["model"]) == 4 * num_peers
    assert (share == "none") == (not any(key.startswith("cohort.trunk.") for key in state["model"]))
    assert "sampler m_per_class: every batch holds 4 random classes x 2 samples" in (out / "train.log").read_text()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["errors"] == record["test"]


def test_resume_is_bit_identical_to_an_uninterrupted_run(tmp_path: Path) -> None:
    args = ("--num-peers", "2", "--synthetic-size", "8", "--mcl-logit-distill")
    assert train(tmp_path / "full", *args, "--epochs", "2") == 0
    assert train(tmp_path / "split", *args, "--epochs", "1") == 0
    assert train(tmp_path / "split", *args, "--epochs", "2", "--resume") == 0
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["epoch"] == split["epoch"] == 2 and set(full["model"]) == set(split["model"])
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    records = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and "kd" in records[-1]["train"]


def test_random_sampler_can_be_forced(tmp_path: Path) -> None:
    """--sampler random trains MCL on shuffled batches (anchors without a partner are left out)."""
    out = tmp_path / "run"
    assert train(out, "--num-peers", "2", "--sampler", "random", "--epochs", "1", "--limit-batches", "1",
                 "--synthetic-size", "8") == 0
    assert load_checkpoint(out / "last.pt")["config"]["sampler"] == "random"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--mcl-tau", "0"], "--mcl-tau must be > 0"),
        (["--mcl-icl", "-1"], "--mcl-icl must be >= 0"),
        (["--kd-t", "nan"], "--kd-t must be > 0"),
        (["--m-per-class", "3"], "--batch-size 8 is not divisible by --m-per-class 3"),
        (["--batch-size", "16"], "needs 8 classes per batch, but the training set has 4"),
        (["--sampler", "balanced"], "--sampler must be auto, random or m_per_class"),
        (["--m-per-class", "0"], "--m-per-class must be > 0"),
    ],
)
def test_bad_options_exit_2_with_one_line_and_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    out = tmp_path / "run"
    assert train(out, "--num-peers", "2", "--epochs", "1", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize(
    "given, batch_size, lr",
    [
        (dict(), 20, 0.05 * 20 / 64),  # digits: 10 classes x 2 fit in a batch, the recipe's lr/batch kept
        (dict(dataset="synthetic", synthetic_classes=4), 8, 0.05 * 8 / 32),
        (dict(dataset="cifar100", download=True), 128, 0.1),  # the official recipe, untouched
        (dict(dataset="synthetic", batch_size=16), 16, 0.05),  # the user's batch is kept (and checked later)
        (dict(dataset="synthetic", sampler="random"), 32, 0.05),
    ],
)
def test_recipe_batch_fits_the_m_per_class_sampler(given: dict, batch_size: int, lr: float) -> None:
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import resolve_config

    cfg = resolve_config(TrainConfig(method="mcl", **given))
    assert (cfg.batch_size, cfg.lr) == (batch_size, pytest.approx(lr))
    dml = resolve_config(TrainConfig(method="dml", **given))
    assert dml.batch_size == given.get("batch_size", {"synthetic": 32, "cifar100": 128}.get(given.get("dataset"), 64))
