"""timm / torchvision classifiers as okd backbones: stages, branch points, training, export, refusals."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from okd.cli.main import main
from okd.errors import OKDUserError
from okd.methods import get_method_class, list_methods
from okd.models import BackboneOptions, Cohort, count_params, create_backbone, create_plain_network, map_state_keys

timm = pytest.importorskip("timm")
torchvision = pytest.importorskip("torchvision")

TINY_TIMM = "timm:test_resnet"  # 0.37M parameters
TINY_TV = "tv:mobilenet_v3_small"  # the smallest torchvision classifier okd can split (2.5M)
TINY_RUN = ["--dataset", "synthetic", "--synthetic-size", "32", "--synthetic-train", "8", "--synthetic-test", "4",
            "--synthetic-classes", "4", "--batch-size", "4", "--epochs", "1", "--limit-batches", "1", "--device", "cpu",
            "--quiet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add spinning (conftest.py)


def library_model(name: str, num_classes: int) -> nn.Module:
    """The library's own model, built the way a user would, independently of okd."""
    library, model_name = name.split(":")
    if library == "timm":
        return timm.create_model(model_name, pretrained=False, num_classes=num_classes)
    return torchvision.models.get_model(model_name, weights=None, num_classes=num_classes)


# -- stages and branch points ------------------------------------------------------------------------
FOUND = {  # name: (stages before pool/fc, library modules the pooling stage runs)
    "timm:test_resnet": (["act1", "layer1", "layer2", "layer3", "layer4"], ["global_pool"]),
    "timm:test_convnext": (["stages_0", "stages_1", "stages_2", "stages_3"],
                           ["norm_pre", "head.global_pool", "head.norm", "head.flatten", "head.pre_logits", "head.drop"]),
    "timm:test_efficientnet": (["blocks_0", "blocks_1", "blocks_2", "blocks_3", "blocks_4"], ["conv_head", "bn2", "global_pool"]),
    "timm:mobilenetv3_small_050": (["bn1", "blocks_0", "blocks_1", "blocks_3", "blocks_5"],
                                   ["global_pool", "conv_head", "norm_head", "act2", "flatten"]),
    "tv:resnet18": (["relu", "layer1", "layer2", "layer3", "layer4"], ["avgpool"]),
    "tv:mobilenet_v3_small": (["features_0", "features_1", "features_3", "features_8", "features_12"],
                              ["avgpool", "classifier.0", "classifier.1", "classifier.2"]),
    "tv:efficientnet_b0": (["features_1", "features_2", "features_3", "features_5", "features_8"], ["avgpool", "classifier.0"]),
}


@pytest.mark.parametrize("name", list(FOUND))
def test_stages_and_branch_points_found(name: str) -> None:
    feature_stages, pool_modules = FOUND[name]
    backbone = create_backbone(name, 7)
    library = library_model(name, 7)
    assert list(backbone.stage_names) == [*feature_stages, "pool", "fc"]
    assert (backbone.spec.early, backbone.spec.late) == (feature_stages[-2], feature_stages[-1])
    assert [step for step in backbone.stage("pool").steps if isinstance(step, str)] == pool_modules
    assert count_params(backbone) == count_params(library)
    classifier = library.get_classifier() if name.startswith("timm:") else library.get_submodule(backbone.fc.steps[0])
    assert backbone.feature_dim == classifier.in_features and backbone.num_classes == 7


@pytest.mark.parametrize("share", ["early", "late", "tree", "none"])
@torch.no_grad()
def test_every_peer_is_the_library_model(share: str) -> None:
    name = "timm:test_convnext"  # the classifier sits inside a head module: keys head.fc.*, head.norm.*
    cohort = Cohort(lambda: create_backbone(name, 5), 3, share).eval()
    images = torch.randn(2, 3, 32, 32)
    logits = cohort(images).logits
    for peer in range(3):
        state = cohort.peer_state_dict(peer)
        assert "head.fc.weight" in state and "stages.3.blocks.0.conv_dw.weight" in state
        net = library_model(name, 5)
        net.load_state_dict(state, strict=True)
        assert torch.equal(net.eval()(images), logits[peer])


def test_own_backbones_keep_their_keys() -> None:
    cohort = Cohort(lambda: create_backbone("resnet32", 10), 2, "tree")
    assert cohort.key_maps == [{}, {}]
    assert list(cohort.peer_state_dict(1)) == list(create_backbone("resnet32", 10).state_dict())
    state = {"stage3.0.conv1.weight": torch.zeros(1), "fc.bias": torch.ones(1)}
    assert list(map_state_keys(state, {"stage3.": "", "fc.": "head.fc."})) == ["0.conv1.weight", "head.fc.bias"]


def test_modules_that_do_not_chain_are_refused() -> None:
    from okd.models.external.stages import LibraryLayout, assemble

    class Residual(nn.Module):  # its forward adds the input back: not a sequence of its modules
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3, padding=1)
            self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1))
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.pool(self.conv(x) + x))

    layout = LibraryLayout(name="toy", model=Residual(), body=["conv"], feature_ends=["conv"], pool=["pool"],
                           classifier="fc", input_size=8)
    with pytest.raises(OKDUserError, match=r"not a sequence of its modules.*stages it sees: conv, pool, fc.*--early/--late"):
        assemble(layout, 2)


# -- training and export, every method ----------------------------------------------------------------
METHODS = [m for m in list_methods() if get_method_class(m).__module__.startswith("okd.methods.")]  # the built-in ones
# what a method cannot do on a library model: the one line it exits 2 with
CANNOT = {("lmcl", TINY_TV): "backbone tv:mobilenet_v3_small uses aten::hardsigmoid_backward, which PyTorch cannot "
                             "differentiate twice: use another backbone, or --lmcl-meta-freq 0"}


@pytest.mark.parametrize(("method", "name"), [(m, n) for m in METHODS for n in (TINY_TIMM, TINY_TV) if (m, n) not in CANNOT])
@torch.no_grad()
def test_every_method_trains_and_exports_a_library_model(method: str, name: str, tmp_path: Path) -> None:
    from okd.engine.checkpoint import load_checkpoint
    from okd.engine.config import config_from_mapping
    from okd.engine.distributed import current
    from okd.engine.trainer import build_for_config

    peers = "1" if method == "baseline" else "2"
    extra = ["--nce-k", "4"] if method == "mcl_okd" else []
    out = tmp_path / "run"
    with torch.enable_grad():
        assert main(["train", *TINY_RUN, *extra, "--method", method, "--arch", name, "--num-peers", peers, "--out", str(out)]) == 0
    assert (out / "last.pt").is_file()
    assert main(["export", "--checkpoint", str(out / "last.pt"), "--format", "state_dict", "--out", str(tmp_path / "peer.pt")]) == 0

    state = load_checkpoint(out / "last.pt")
    cfg = config_from_mapping(state["config"])
    _spec, _train, eval_loader, trained = build_for_config(cfg, torch.device("cpu"), current())
    trained.load_state_dict(state["model"])
    trained.eval()
    images = next(iter(eval_loader)).images
    blob = torch.load(tmp_path / "peer.pt", weights_only=True)
    assert blob["meta"]["arch"] == name
    net = library_model(name, 4)
    net.load_state_dict(blob["state_dict"], strict=True)
    deployed = trained.peer_logits(trained(images), trained.deployed_peer)  # PCL: its EMA peer
    assert torch.equal(net.eval()(images), deployed)


@pytest.mark.parametrize(("method", "name"), list(CANNOT))
def test_what_a_method_cannot_do_on_a_library_model_exits_2(method: str, name: str, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    """L-MCL's meta step (on the first step) differentiates twice; MobileNetV3's hardsigmoid has no double backward."""
    out = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--method", method, "--arch", name, "--num-peers", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert CANNOT[method, name] in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err


# -- --early / --late -----------------------------------------------------------------------------
def test_early_and_late_override_the_branch_points(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["train", *TINY_RUN, "--method", "cl_ilr", "--arch", TINY_TIMM, "--num-peers", "2", "--early", "layer2",
            "--late", "layer3", "--out", str(out)]
    assert main(args) == 0
    model = torch.load(out / "last.pt", weights_only=True)["model"]
    def stages(part: str) -> list[str]:  # cohort.trunk.<stage>... / cohort.branches.<peer>.<stage>...
        depth = 2 if part == "trunk" else 3
        return sorted({k.split(".")[depth] for k in model if k.startswith(f"cohort.{part}.")})

    assert stages("trunk") == ["act1", "layer1"]
    assert stages("subtrunks") == ["layer2"]
    assert stages("branches") == ["fc", "layer3", "layer4"]  # pool has no weights
    assert "early: layer2" in (out / "config.yaml").read_text()
    # the branch points are part of what was trained: a resume with others is refused
    assert main([*args[:-2], "--early", "layer1", "--out", str(out), "--resume", "--epochs", "2"]) == 2


def test_early_applies_to_okd_backbones() -> None:
    backbone = create_backbone("resnet32", 10, BackboneOptions(early="stage1"))
    assert (backbone.spec.early, backbone.spec.late) == ("stage1", "stage3")
    cohort = Cohort(lambda: create_backbone("resnet32", 10, BackboneOptions(early="stage1")), 2, "early")
    assert list(cohort.trunk) == ["stem"]


@pytest.mark.parametrize(("flags", "message"), [
    (["--early", "layer9"], "--early 'layer9' is not a stage of timm:test_resnet; its stages are: act1, layer1, layer2, "
                            "layer3, layer4, pool, fc"),
    (["--early", "layer4", "--late", "layer2"], "--early 'layer4' comes after --late 'layer2'"),
])
def test_bad_branch_points_exit_2_listing_the_stages(flags: list[str], message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY_RUN, "--method", "dml", "--arch", TINY_TIMM, *flags, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()


# -- models okd cannot split -------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "reason"), [
    ("tv:vit_b_16", "torchvision's vit_b_16 is not a family it knows"),
    ("timm:test_vit", "its forward is not a sequence of its modules: cls_token, pos_embed lie outside them; "
                      "stages it sees: blocks_0, blocks_1, blocks_2, blocks_3, blocks_4, blocks_5, pool, fc"),
])
def test_unsplittable_models_exit_2(name: str, reason: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", *TINY_RUN, "--method", "dml", "--arch", name, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert reason in err and "--early/--late" in err and "stages it sees" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and not (tmp_path / "run").exists()


def test_unknown_library_model_and_missing_timm(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--arch", "timm:no_such_net"]) == 2
    assert "unknown timm model 'no_such_net'" in capsys.readouterr().err
    assert main(["models", "--arch", "torchvision:no_such_net"]) == 2
    assert "unknown torchvision classification model 'no_such_net'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    assert main(["models", "--arch", "timm:resnet18"]) == 2
    assert "pip install 'okd-torch[timm]'" in capsys.readouterr().err


# -- --pretrained: local files only ---------------------------------------------------------------------
@pytest.fixture
def empty_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


@pytest.mark.parametrize(("name", "looked_for"), [
    (TINY_TIMM, "hf/models--timm--test_resnet.r160_in1k"),
    (TINY_TV, "torch/hub/checkpoints/mobilenet_v3_small-047dcff4.pth"),
])
def test_pretrained_without_local_weights_exits_2(name: str, looked_for: str, empty_caches: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = empty_caches / "run"
    assert main(["train", *TINY_RUN, "--arch", name, "--pretrained", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"no local weights for {name}" in err and str(empty_caches / looked_for) in err and not out.exists()


def test_pretrained_is_refused_for_okd_backbones(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["train", *TINY_RUN, "--arch", "resnet32", "--pretrained", "--out", str(tmp_path / "run")]) == 2
    assert "--pretrained needs a timm:NAME or tv:NAME backbone" in capsys.readouterr().err


def _assert_starts_from(backbone_name: str, weights: dict[str, torch.Tensor], classifier: str) -> None:
    """Every peer holds the file's weights except the re-initialised classifier (4 classes, not 1000)."""
    options = BackboneOptions(pretrained=True)
    cohort = Cohort(lambda: create_backbone(backbone_name, 4, options), 2, "early")
    for peer in range(2):
        state = cohort.peer_state_dict(peer)
        assert state.keys() == weights.keys()
        for key, value in state.items():
            if key.startswith(classifier):
                assert value.shape[0] == 4 if key.endswith(("weight", "bias")) else True
            else:
                assert torch.equal(value, weights[key]), key


def test_pretrained_torchvision_weights_from_the_torch_hub_cache(empty_caches: Path) -> None:
    torch.manual_seed(1)
    weights = torchvision.models.mobilenet_v3_small(num_classes=1000).state_dict()
    url = torchvision.models.get_model_weights("mobilenet_v3_small").DEFAULT.url
    target = empty_caches / "torch" / "hub" / "checkpoints" / Path(url).name
    target.parent.mkdir(parents=True)
    torch.save(weights, target)
    _assert_starts_from(TINY_TV, weights, "classifier.3.")


def test_pretrained_timm_weights_from_the_hugging_face_cache(empty_caches: Path) -> None:
    safetensors = pytest.importorskip("safetensors.torch")
    torch.manual_seed(1)
    weights = timm.create_model("test_resnet", num_classes=1000).state_dict()
    repo = empty_caches / "hf" / "models--timm--test_resnet.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    (repo / "snapshots" / ("0" * 40)).mkdir(parents=True)
    safetensors.save_file({k: v.contiguous() for k, v in weights.items()}, str(repo / "snapshots" / ("0" * 40) / "model.safetensors"))
    _assert_starts_from(TINY_TIMM, weights, "fc.")


# -- okd models --------------------------------------------------------------------------------------
def test_models_lists_the_stages_of_a_library_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--arch", TINY_TIMM, "--num-classes", "10"]) == 0
    out = capsys.readouterr().out
    assert "timm:test_resnet stages at 160px (early: layer3, late: layer4" in out
    for row in ("| act1   | 32x80x80     |", "| layer4 | 96x5x5       |", "| pool   | 96           | 0 ", "| fc     | 10           | 970 "):
        assert row in out, row
    assert main(["models", "--arch", TINY_TIMM, "--num-classes", "10", "--format", "json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert [s["name"] for s in row["stages"]] == ["act1", "layer1", "layer2", "layer3", "layer4", "pool", "fc"]
    assert sum(s["params"] for s in row["stages"]) == row["params"] == count_params(create_plain_network(TINY_TIMM, 10))
    assert row["branch_points"] == {"early": "layer3", "late": "layer4"} and row["input_size"] == 160
