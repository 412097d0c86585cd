"""The method-protocol extensions P1-P5 (multi-view batches, trainable parameters, extra evaluated
heads, the export hook, option plumbing), each checked on the engine's real code paths.

``ShadowMethod`` below is a test-only method that uses every hook at once: a frozen copy of the
cohort (requires_grad=False) that follows the students after every step, is evaluated as extra
heads, is the deployed head, and is what ``okd export`` writes.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from datasets_helpers import write_imagenet_tree
from okd.cli.main import main
from okd.data import DataConfig, build_data
from okd.data.batch import Batch
from okd.engine.checkpoint import load_checkpoint
from okd.errors import OKDUserError
from okd.losses.distill import sum_cross_entropy
from okd.methods import OKDMethod, build_method
from okd.methods import registry as method_registry
from okd.models import Cohort, CohortOutput, create_backbone


def synthetic(**kw) -> DataConfig:
    base = dict(dataset="synthetic", batch_size=8, eval_batch_size=8, synthetic_train=20, synthetic_test=8,
                synthetic_size=32, seed=5)  # 32 px: random crop and flip
    base.update(kw)
    return DataConfig(**base)


def views_loader(views: int, **kw):
    loader = build_data(synthetic(**kw))[1]
    loader.set_views(views)
    return loader


# -- P1: multi-view batches -------------------------------------------------------------------------

def test_view_zero_is_the_one_view_batch_and_the_other_views_differ() -> None:
    one = list(views_loader(1).epoch(1))
    three = list(views_loader(3).epoch(1))
    assert len(one) == len(three) == 3
    for plain, multi in zip(one, three):
        size = plain.targets.shape[0]
        assert multi.images.shape == (3, size, 3, 32, 32)
        assert torch.equal(multi.images[0], plain.images)  # bit-identical to today's batch
        assert torch.equal(multi.targets, plain.targets) and torch.equal(multi.indices, plain.indices)
    stacked = torch.cat([b.images for b in three], dim=1)  # every sample of the epoch, per view
    for a, b in ((0, 1), (1, 2), (0, 2)):
        differs = (stacked[a] != stacked[b]).flatten(1).any(1)
        assert differs.float().mean() > 0.8, (a, b)  # independent crop+flip draws: almost all differ


def test_views_are_a_pure_function_of_seed_epoch_and_step() -> None:
    first = list(views_loader(2).epoch(3))
    again = list(views_loader(2).epoch(3))
    tail = list(views_loader(2).epoch(3, start_step=1))
    assert all(torch.equal(a.images, b.images) for a, b in zip(first, again))
    assert len(tail) == 2 and all(torch.equal(a.images, b.images) for a, b in zip(first[1:], tail))
    other_seed = list(views_loader(2, seed=6).epoch(3))
    assert not torch.equal(first[0].images[1], other_seed[0].images[1])


def test_multi_view_ranks_split_the_single_process_batch_and_keep_channels_last() -> None:
    whole = list(views_loader(2).epoch(0))
    ranks = [list(views_loader(2, world_size=2, rank=r, channels_last=True).epoch(0)) for r in (0, 1)]
    for k, batch in enumerate(whole):
        assert torch.equal(torch.cat([ranks[0][k].images, ranks[1][k].images], dim=1), batch.images)
        assert torch.equal(torch.cat([ranks[0][k].targets, ranks[1][k].targets]), batch.targets)
        assert ranks[0][k].images[1].is_contiguous(memory_format=torch.channels_last)


def test_imagenet_folder_loader_makes_views_with_view_zero_unchanged(tmp_path: Path) -> None:
    root = write_imagenet_tree(tmp_path, classes=2, per_class=2, size=40, val_per_class=1)
    cfg = DataConfig(dataset="imagenet", data_dir=str(root), batch_size=4, eval_batch_size=2, workers=0, seed=1)
    plain = next(build_data(cfg)[1].epoch(0))
    loader = build_data(cfg)[1]
    loader.set_views(2)
    multi = next(loader.epoch(0))
    assert multi.images.shape == (2, 4, 3, 224, 224) and multi.targets.shape == (4,)
    assert torch.equal(multi.images[0], plain.images)
    assert not torch.equal(multi.images[1], multi.images[0])


def test_a_shared_trunk_runs_once_per_view_with_per_view_batch_statistics() -> None:
    torch.manual_seed(0)
    cohort = Cohort(lambda: create_backbone("resnet32", 5), num_peers=2, share="early")
    calls: list[int] = []
    first_stage = cohort.trunk[next(iter(cohort.trunk))]
    first_stage.register_forward_hook(lambda module, inputs, output: calls.append(inputs[0].shape[0]))
    views = torch.randn(2, 4, 3, 16, 16)
    reference = Cohort(lambda: create_backbone("resnet32", 5), num_peers=2, share="early")
    reference.load_state_dict(cohort.state_dict())

    output = cohort(views)
    assert calls == [4, 4]  # two separate trunk calls of B images, not one of 2B
    assert len(output.logits) == 2 and output.logits[0].shape == (4, 5)
    for peer in (0, 1):  # peer i saw view i, normalised by that view's own batch statistics
        alone = reference(views[peer])
        torch.testing.assert_close(output.logits[peer], alone.logits[peer], rtol=0, atol=0)
    trunk_bn = [m for m in cohort.trunk.modules() if isinstance(m, torch.nn.BatchNorm2d)][0]
    assert int(trunk_bn.num_batches_tracked) == 2


def test_multi_view_input_needs_one_view_per_peer_and_no_tree() -> None:
    cohort = Cohort(lambda: create_backbone("resnet32", 5), num_peers=2, share="none")
    with pytest.raises(ValueError, match="one view per peer"):
        cohort(torch.randn(3, 2, 3, 16, 16))
    tree = Cohort(lambda: create_backbone("resnet32", 5), num_peers=2, share="tree")
    with pytest.raises(ValueError, match="tree"):
        tree(torch.randn(2, 2, 3, 16, 16))


# -- P2-P5: a test-only method that uses every hook -------------------------------------------------

class ShadowMethod(OKDMethod):
    """Students trained by CE; a frozen shadow cohort follows them (decay ``alpha``) and is deployed."""

    name = "test_shadow"
    default_share = "none"
    allowed_shares = ("none",)

    def __init__(self, backbone: str, num_classes: int, num_peers: int, share: str | None = None,
                 alpha: float = 0.5) -> None:
        super().__init__(backbone, num_classes, num_peers, share)
        if not 0 <= alpha < 1:
            raise OKDUserError(f"--alpha must be in [0, 1) for test_shadow, got {alpha}")
        self.decay = alpha
        self.shadow = Cohort(lambda: create_backbone(backbone, num_classes), num_peers, "none")
        self.shadow.load_state_dict(self.cohort.state_dict())
        self.shadow.requires_grad_(False)
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))
        self.epochs_seen: list[int] = []

    @property
    def train_views(self) -> int:
        return self.num_peers

    @property
    def deployed_head(self) -> str:
        return "shadow0"

    def forward(self, images: torch.Tensor) -> CohortOutput:
        output = self.cohort(images)
        with torch.no_grad():
            shadow = self.shadow(images)
        output.extras.update({f"shadow{i}": z for i, z in enumerate(shadow.logits)})
        return output

    def losses(self, output: CohortOutput, batch: Batch, epoch: int) -> dict[str, torch.Tensor]:
        self.epochs_seen.append(epoch)
        return {"ce": sum_cross_entropy(output.logits, batch.targets)}

    def eval_heads(self, output: CohortOutput) -> dict[str, torch.Tensor]:
        return {name: z for name, z in output.extras.items() if name.startswith("shadow")}

    def peer_state_dict(self, peer: int) -> dict[str, torch.Tensor]:
        return self.shadow.peer_state_dict(peer)

    def peer_logits(self, output: CohortOutput, peer: int) -> torch.Tensor:
        return output.extras[f"shadow{peer}"]

    @torch.no_grad()
    def after_step(self, output: CohortOutput, batch: Batch) -> None:
        for shadow, student in zip(self.shadow.parameters(), self.cohort.parameters()):
            shadow.mul_(self.decay).add_(student, alpha=1 - self.decay)
        self.steps += 1


@pytest.fixture
def shadow_method() -> Iterator[type[ShadowMethod]]:
    method_registry.register_method(ShadowMethod)
    yield ShadowMethod
    method_registry._METHODS.pop(ShadowMethod.name)


TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8", "--arch", "resnet32",
        "--num-peers", "2", "--device", "cpu", "--quiet"]


def test_p2_the_optimiser_skips_frozen_parameters_that_the_checkpoint_keeps(shadow_method, tmp_path: Path) -> None:
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import resolve_config
    from okd.engine.trainer import Trainer

    cfg = resolve_config(TrainConfig(method="test_shadow", arch="resnet32", num_peers=2, dataset="synthetic",
                                     synthetic_train=16, synthetic_test=8, synthetic_classes=4, synthetic_size=16,
                                     batch_size=8, eval_batch_size=8, epochs=1, device="cpu"))
    trainer = Trainer(cfg, tmp_path / "run", quiet=True)
    trainer.fit()  # sets up (and holds the run folder's lock) once
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert optimised == {id(p) for p in trainer.method.cohort.parameters()}
    assert not optimised & {id(p) for p in trainer.method.shadow.parameters()}
    state = load_checkpoint(tmp_path / "run" / "last.pt")
    assert int(state["model"]["steps"]) == 2 and trainer.method.epochs_seen == [0, 0]
    for key, value in trainer.method.shadow.state_dict().items():
        assert torch.equal(state["model"][f"shadow.{key}"], value), key
    assert len(state["optimizer"]["state"]) == sum(1 for _ in trainer.method.cohort.parameters())


def test_p3_extra_heads_are_scored_logged_and_deployed(shadow_method, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "test_shadow", "--epochs", "1", "--out", str(out)]) == 0
    test = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    assert list(test) == ["peer0", "peer1", "ensemble", "shadow0", "shadow1", "peer_mean", "deployed"]
    assert test["deployed"] == test["shadow0"]
    assert test["peer_mean"]["top1"] == pytest.approx((test["peer0"]["top1"] + test["peer1"]["top1"]) / 2)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["deployed_head"] == "shadow0" and summary["best"]["shadow1"]["epoch"] == 1
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "(deployed: shadow0)" in printed and "shadow1" in printed
    assert main(["report", str(out)]) == 0  # no paper column for this method: listed with every head
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("| test_shadow"))
    assert f"{test['deployed']['top1']:.2f} (shadow0)" in line
    assert f"shadow0 {test['shadow0']['top1']:.2f}, shadow1 {test['shadow1']['top1']:.2f}" in line
    assert main(["report", str(out), "--format", "json"]) == 0
    other = json.loads(capsys.readouterr().out)["other_runs"]
    assert [r["deployed_head"] for r in other] == ["shadow0"]
    assert list(other[0]["top1"]) == ["deployed", "peer_mean", "ensemble", "shadow0", "shadow1"]


def test_p4_export_writes_the_methods_deployable_peer(shadow_method, tmp_path: Path) -> None:
    from okd.report.export import load_exported_backbone

    out = tmp_path / "run"
    assert main(["train", *TINY, "--method", "test_shadow", "--epochs", "1", "--out", str(out)]) == 0
    assert main(["export", "--checkpoint", str(out / "last.pt"), "--peer", "1", "--out", str(tmp_path / "p1.pt")]) == 0
    exported = load_exported_backbone(tmp_path / "p1.pt").state_dict()
    model = load_checkpoint(out / "last.pt")["model"]
    shadow = {k[len("shadow.branches.1."):]: v for k, v in model.items() if k.startswith("shadow.branches.1.")}
    student = {k[len("cohort.branches.1."):]: v for k, v in model.items() if k.startswith("cohort.branches.1.")}
    assert shadow.keys() == exported.keys()
    assert all(torch.equal(exported[k], shadow[k]) for k in shadow)
    assert any(not torch.equal(exported[k], student[k]) for k in student)  # not the student peer


def test_p5_options_reach_only_methods_that_take_them_and_bad_values_exit_2(
    shadow_method, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    method = build_method("test_shadow", "resnet32", 4, 2, alpha=0.25, kd_t=9.0, nce_k=3)  # kd_t, nce_k: not its knobs
    assert method.decay == 0.25
    assert main(["train", *TINY, "--method", "test_shadow", "--alpha", "1.5", "--out", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["okd train: error: --alpha must be in [0, 1) for test_shadow, got 1.5"]
    assert not (tmp_path / "bad").exists()
