"""Cohorts of different backbones (``--arch resnet32,resnet110``): one backbone per peer, sharing nothing."""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path

import pytest
import torch

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.config import TrainConfig
from okd.engine.recipe import resolve_config
from okd.errors import OKDUserError
from okd.methods import build_method, split_arch
from okd.models import Cohort, count_params, create_backbone
from okd.report.export import load_exported_backbone, load_method

RESNET32, RESNET110 = 472_756, 1_170_868  # 100 classes
TINY = ["--dataset", "synthetic", "--synthetic-size", "16", "--synthetic-train", "16", "--synthetic-test", "16",
        "--synthetic-classes", "5", "--batch-size", "4", "--eval-batch-size", "8", "--limit-batches", "2",
        "--lr", "0.01", "--device", "cpu", "--quiet"]
HETERO = ["--method", "dml", "--arch", "resnet32,resnet110"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def two_backbones(share: str = "none") -> Cohort:
    return Cohort([partial(create_backbone, "resnet32"), partial(create_backbone, "resnet110")], share=share)


def test_cohort_of_two_backbones_is_exactly_both_networks() -> None:
    cohort = two_backbones()
    assert cohort.heterogeneous and cohort.num_peers == 2 and cohort.share == "none"
    assert count_params(cohort) == RESNET32 + RESNET110
    assert [count_params(branch) for branch in cohort.branches] == [RESNET32, RESNET110]
    assert cohort.feature_dims == [64, 256]  # the reference's ResNet-110 is a bottleneck net
    with pytest.raises(ValueError, match="feature_dims"):
        cohort.feature_dim
    cohort.eval()
    images = torch.randn(2, 3, 16, 16)
    logits = cohort(images).logits
    for peer, name in enumerate(("resnet32", "resnet110")):
        plain = create_backbone(name)
        plain.load_state_dict(cohort.peer_state_dict(peer), strict=True)
        assert torch.equal(plain.eval()(images), logits[peer])


def test_shared_layers_need_one_backbone() -> None:
    with pytest.raises(ValueError, match="share must be 'none'"):
        two_backbones("early")


def test_one_factory_per_peer_equals_the_single_factory_form() -> None:
    torch.manual_seed(0)
    single = Cohort(lambda: create_backbone("resnet32", 5), 3, "early")
    torch.manual_seed(0)
    listed = Cohort([partial(create_backbone, "resnet32", 5)] * 3, share="early")
    assert not listed.heterogeneous and listed.feature_dim == 64
    assert single.state_dict().keys() == listed.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(single.state_dict().values(), listed.state_dict().values()))


def test_dml_defaults_to_share_none_and_accepts_a_list() -> None:
    method = build_method("dml", ["resnet32", "resnet110"], 5, 2)
    assert method.cohort.share == "none" and method.backbone_names == ["resnet32", "resnet110"]
    assert method.backbone_name == "resnet32,resnet110"
    assert build_method("dml", "resnet32,resnet32", 5, 2).cohort.share == "early"  # one backbone: the usual default


def test_recipe_counts_peers_and_keeps_the_reference_spelling() -> None:
    assert split_arch("dml_resnet32,resnet110") == ("dml", "resnet32,resnet110")
    assert split_arch("dml_resnet32") == ("dml", "resnet32")
    cfg = resolve_config(TrainConfig(method="dml", arch="ResNet32, resnet110", dataset="synthetic"))
    assert (cfg.arch, cfg.num_peers, cfg.share) == ("resnet32,resnet110", 2, None)
    same = resolve_config(TrainConfig(method="dml", arch="resnet32,resnet32", dataset="synthetic"))
    assert (same.arch, same.num_peers) == ("resnet32", 2)
    reference = resolve_config(TrainConfig(arch="dml_resnet32,resnet110", dataset="synthetic"))
    assert (reference.method, reference.arch, reference.num_peers) == ("dml", "resnet32,resnet110", 2)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--arch", "resnet32,resnet110"], "method 'baseline' cannot train peers of different backbones"),
        (["--method", "one", "--arch", "resnet32,resnet110"], "method 'one' cannot train peers of different backbones"),
        (["--method", "okddip", "--arch", "resnet32,resnet110"], "method 'okddip' cannot train"),
        (["--method", "cl_ilr", "--arch", "resnet32,resnet110"], "method 'cl_ilr' cannot train"),
        (["--method", "mcl_okd", "--arch", "resnet32,resnet110"], "method 'mcl_okd' cannot train"),
        ([*HETERO, "--share", "early"], "use --share none"),
        ([*HETERO, "--num-peers", "3"], "gives 2 backbones for --num-peers 3"),
        (["--method", "dml", "--arch", "resnet32,resnet9"], "unknown backbone 'resnet9'"),
        (["--method", "dml", "--arch", "resnet32,"], "empty backbone name"),
        (["--method", "dml", "--arch", "resnet32,resnet34"], "different input sizes (by peer: 32px, 224px)"),
    ],
)
def test_refused_cohorts_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                             message: str) -> None:
    out = tmp_path / "run"
    assert train(out, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0 and "Traceback" not in err
    assert not out.exists()  # nothing half-written


def test_refusal_names_the_methods_that_can() -> None:
    with pytest.raises(OKDUserError, match=r"independent peers \(.*dml"):
        build_method("one", "resnet32,resnet110", 5, 2)


@pytest.fixture(scope="module")
def hetero_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hetero") / "run"
    assert train(out, *HETERO, "--share", "none", "--epochs", "2") == 0
    return out


@pytest.mark.slow  # trains ResNet-32 + ResNet-110 end to end
def test_training_records_each_peers_backbone_and_size(hetero_run: Path) -> None:
    summary = json.loads((hetero_run / "summary.json").read_text())
    assert summary["finished"] and summary["arch"] == "resnet32,resnet110" and summary["num_peers"] == 2
    classes = 5
    sizes = [RESNET32 - 95 * 65, RESNET110 - 95 * 257]  # 5 classes instead of 100: 95 fewer fc rows of features + 1
    assert [(p["arch"], p["params"]) for p in summary["peers"]] == [("resnet32", sizes[0]), ("resnet110", sizes[1])]
    assert summary["params"] == {"deployed": sizes[0], "training": sum(sizes)}
    assert summary["macs_per_image"] == summary["peers"][0]["macs_per_image"] < summary["peers"][1]["macs_per_image"]
    state = load_checkpoint(hetero_run / "last.pt")
    assert state["model"]["cohort.branches.1.fc.weight"].shape == (classes, 256)
    assert not any(key.startswith("cohort.trunk.") for key in state["model"])  # nothing shared


@pytest.mark.slow  # trains ResNet-32 + ResNet-110 end to end
def test_resume_is_bit_identical(hetero_run: Path, tmp_path: Path) -> None:
    split = tmp_path / "split"
    assert train(split, *HETERO, "--epochs", "1") == 0
    assert train(split, *HETERO, "--epochs", "2", "--resume") == 0
    full, resumed = load_checkpoint(hetero_run / "last.pt"), load_checkpoint(split / "last.pt")
    assert full["model"].keys() == resumed["model"].keys()
    for key, value in full["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    momentum = lambda s: [v["momentum_buffer"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(momentum(full), momentum(resumed), strict=True))


@pytest.mark.slow
@torch.no_grad()
def test_each_peer_exports_as_its_own_backbone(hetero_run: Path, tmp_path: Path) -> None:
    method = load_method(hetero_run / "last.pt").method
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    logits = method(images).logits
    for peer, name in enumerate(("resnet32", "resnet110")):
        out = tmp_path / f"peer{peer}.pt"
        assert main(["export", "--checkpoint", str(hetero_run / "last.pt"), "--peer", str(peer), "--out", str(out)]) == 0
        blob = torch.load(out, weights_only=True)
        assert blob["meta"]["arch"] == name and blob["meta"]["cohort_arch"] == "resnet32,resnet110"
        plain = create_backbone(name, 5)
        plain.load_state_dict(blob["state_dict"], strict=True)
        assert torch.equal(plain.eval()(images), logits[peer])
        assert torch.equal(load_exported_backbone(out)(images), logits[peer])


@pytest.mark.slow  # trains ResNet-32 + ResNet-110 end to end
def test_eval_labels_peers_with_their_backbones(hetero_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["eval", "--checkpoint", str(hetero_run / "last.pt"), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "dml resnet32+resnet110" in out and "peer0 (resnet32)" in out and "peer1 (resnet110)" in out
    assert main(["eval", "--checkpoint", str(hetero_run / "last.pt"), "--device", "cpu", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    logged = json.loads((hetero_run / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    assert result["peer_archs"] == ["resnet32", "resnet110"] and result["errors"]["peer1"] == pytest.approx(logged["peer1"])


@pytest.mark.slow  # trains ResNet-32 + ResNet-110 end to end
def test_report_shows_the_cohort_and_every_peer(hetero_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["report", str(hetero_run)]) == 0
    out = capsys.readouterr().out
    assert "| ResNet-32+ResNet-110 |" in out
    assert "DML peer 0: ResNet-32" in out and "DML peer 1: ResNet-110" in out
    assert main(["report", str(hetero_run), "--table", "peers", "--format", "json"]) == 0
    (table,) = json.loads(capsys.readouterr().out)["tables"]
    last = json.loads((hetero_run / "summary.json").read_text())["last"]
    cells = table["rows"][0]["cells"]
    assert [cells[f"dml_peer{i}"]["top1_mean"] for i in range(2)] == [last["peer0"]["top1"], last["peer1"]["top1"]]
    assert cells["dml_ens"]["ens_top1_mean"] == last["ensemble"]["top1"]
    assert main(["report", str(hetero_run), "--arch", "resnet32", "--table", "peers"]) == 0
    assert "cohort" not in capsys.readouterr().out  # --arch keeps only that backbone's rows


def test_models_sizes_each_peer_and_the_cohort(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--arch", "resnet32,resnet110", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    cohort = row["cohort"]
    assert (cohort["num_peers"], cohort["share"], cohort["params"]) == (2, "none", RESNET32 + RESNET110)
    assert [(p["name"], p["params"]) for p in cohort["peers"]] == [("resnet32", RESNET32), ("resnet110", RESNET110)]
    assert cohort["macs"] == sum(p["macs"] for p in cohort["peers"])
    assert main(["models", "--arch", "resnet32,resnet110"]) == 0
    out = capsys.readouterr().out
    assert "cohort resnet32+resnet110: 2 peers, share none" in out and "| total" in out and "1,643,624" in out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--share", "early"], "use --share none"),
        (["--num-peers", "3"], "gives 2 backbones for --num-peers 3"),
    ],
)
def test_models_refuses_impossible_cohorts(capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["models", "--arch", "resnet32,resnet110", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
