"""The CIFAR model zoo (okd.models.zoo): each backbone is the same function as its source code.

tests/data/zoo_source_outputs.json holds what RepDistiller's and L-MCL's own code gives (made once by
tests/make_zoo_fixture.py): parameter count, state-dict layout, and float64 logits with every tensor
filled by tests/zoo_weights.py's rule. Here okd's backbone is filled by the same rule through its key
map and must give the same. Tolerance: float64 with a relative 1e-9 of the largest logit; the two
codes order a few reductions differently (global pooling vs avg_pool2d, HCGNet's bmm vs pool*H*W), which
moves results by ~1e-15 per layer, while any real difference (a weight, a ReLU, a stride) moves them
by far more than 1e-9. One exception: HCGNet's gates batch-normalise (BatchNorm1d) global context vectors
that differ little between the two images, so in train mode a 1e-15 relative change of the input moves
its logits by up to 6e-5 (measured on hcgnet_a2; 2e-8 on hcgnet_a1): there train mode is held to 1e-4 of
the largest logit, eval mode (which pins every weight and layer) to 1e-9 as everywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from zoo_weights import CLASSES, fill_, layout_digest, logits

from okd.cli.main import main
from okd.errors import OKDUserError
from okd.models import Cohort, backbone_source, count_params, create_backbone, list_backbones, resolve_backbone_name
from okd.models.zoo import load_source_state_dict, source_codebases, source_key_map, to_source_state_dict

FIXTURE = json.loads((Path(__file__).parent / "data" / "zoo_source_outputs.json").read_text())
ZOO = [name for name in list_backbones() if backbone_source(name) in ("RepDistiller", "L-MCL")]
ILL_CONDITIONED_IN_TRAIN_MODE = {"hcgnet_a1", "hcgnet_a2"}
SLOW = {"resnet32x4", "wrn_28_4", "vgg11", "vgg13", "vgg19", "hcgnet_a2", "resnet110_basic", "wrn_40_2"}  # > 0.5 s each on 2 cores


def _marked(names: list[str], backbone=lambda key: key) -> list:
    return [pytest.param(name, marks=pytest.mark.slow) if backbone(name) in SLOW else name for name in names]


pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_zoo_backbone_has_source_outputs() -> None:
    checked = {(record["backbone"], record["codebase"]) for record in FIXTURE.values()}
    assert {(name, backbone_source(name)) for name in ZOO} <= checked
    assert {(name, codebase) for name in list_backbones() for codebase in source_codebases(name)} == checked  # every key map
    assert len(ZOO) == 23  # RepDistiller's 19 (its resnet32 is okd's, its vgg16 is not here) + L-MCL's 4 (its hcgnet_A1 is okd's)


def test_clashing_names_keep_okd_meaning() -> None:
    assert backbone_source("resnet110") == "MCL-OKD" and count_params(create_backbone("resnet110")) == 1_170_868
    assert resolve_backbone_name("repdistiller_resnet110") == "resnet110_basic"
    assert count_params(create_backbone("resnet110_basic")) == 1_736_564
    assert resolve_backbone_name("vgg13_bn") == "vgg13" and resolve_backbone_name("MobileNetV2") == "mobile_half"


def test_sources_of_library_and_user_backbones() -> None:
    from okd.models import registry

    assert [backbone_source(n) for n in ("tv:resnet18", "torchvision:resnet18", "timm:resnet18")] == ["tv", "tv", "timm"]
    tables = (registry._BACKBONES, registry._DEFAULT_CLASSES, registry._SOURCES)
    saved = [dict(table) for table in tables]
    try:
        registry.register_backbone("zoo_test_user_net")(lambda num_classes=100: create_backbone("resnet8", num_classes))
        registry.register_backbone("zoo_test_lab_net", source="our lab")(lambda num_classes=100: create_backbone("resnet8", num_classes))
        assert backbone_source("zoo_test_user_net") == "user" and backbone_source("zoo_test_lab_net") == "our lab"
    finally:  # the registry is process-wide: leave it as it was
        for table, before in zip(tables, saved):
            table.clear()
            table.update(before)


@pytest.mark.parametrize("key", _marked(sorted(FIXTURE), lambda key: FIXTURE[key]["backbone"]))
def test_same_function_as_source(key: str) -> None:
    expected = FIXTURE[key]
    name, codebase = expected["backbone"], expected["codebase"]
    with torch.device("meta"):  # the count needs no initialised weights
        assert count_params(create_backbone(name, 100)) == expected["params"]
    model = create_backbone(name, CLASSES)
    source_state = to_source_state_dict(name, model, codebase)
    assert len(source_state) == len(model.state_dict())  # the map renames one to one
    assert layout_digest({k: tuple(v.shape) for k, v in source_state.items()}) == expected["layout"]
    fill_(model, dict(zip(model.state_dict(), source_state)))
    for mode in ("eval", "train"):
        reference = torch.tensor(expected[mode], dtype=torch.float64)
        got = logits(model, train=mode == "train")
        tol = 1e-4 if mode == "train" and name in ILL_CONDITIONED_IN_TRAIN_MODE else 1e-9
        torch.testing.assert_close(got, reference, rtol=tol, atol=tol * reference.abs().max().item(), msg=f"{key} {mode}")


def test_source_checkpoint_loads_both_ways() -> None:
    model = create_backbone("wrn_16_1", CLASSES)
    state = to_source_state_dict("wrn_16_1", model)
    assert "block1.layer.0.bn1.weight" in state and "bn1.running_var" in state  # the source's own names
    fresh = create_backbone("wrn_16_1", CLASSES)
    load_source_state_dict("wrn_16_1", fresh, state)
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), model.state_dict().values()))
    state.pop("fc.bias")
    with pytest.raises(OKDUserError, match="missing"):
        load_source_state_dict("wrn_16_1", fresh, state)
    with pytest.raises(OKDUserError, match="no key map from densenet40_12"):
        source_key_map("densenet40_12", create_backbone("densenet40_12"))
    resnet32 = create_backbone("resnet32")
    with pytest.raises(OKDUserError, match="resnet32 checkpoints may come from RepDistiller or L-MCL: name the codebase"):
        source_key_map("resnet32", resnet32)
    with pytest.raises(OKDUserError, match="it has maps to: RepDistiller, L-MCL"):
        source_key_map("resnet32", resnet32, "CRD")
    assert source_key_map("resnet32", resnet32, "L-MCL")["fc."] == "classifier."
    resnet56 = create_backbone("resnet56")
    assert source_key_map("resnet56", resnet56)["fc."] == "fc."  # its own source, RepDistiller
    assert source_key_map("resnet56", resnet56, "L-MCL")["fc."] == "classifier."


@pytest.mark.parametrize("name", _marked(ZOO))
def test_cohort_early_late_and_peer_extraction(name: str) -> None:
    """Every zoo backbone branches at its early and late points; a peer taken out is the plain backbone."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    plain = create_backbone(name, 5).eval()
    for share in ("early", "late"):
        cohort = Cohort(lambda: create_backbone(name, 5), 2, share).eval()
        assert len(cohort.trunk) == plain.stage_names.index(getattr(plain.spec, share))
        with torch.no_grad():
            out = cohort(x)
            plain.load_state_dict(cohort.peer_state_dict(1), strict=True)
            torch.testing.assert_close(plain(x), out.logits[1])
        assert all(f.shape == (2, plain.feature_dim) for f in out.features)


@pytest.mark.parametrize("name", ["resnet8", "wrn_16_1", "vgg8", "mobile_half", "shufflev1", "shufflenetv2_05x"])
def test_tree_cohort_of_three(name: str) -> None:
    """CL-ILR's tree (shared trunk, two sub-trunks from early to late, three branches) on each family."""
    cohort = Cohort(lambda: create_backbone(name, 5), 3, "tree").eval()
    assert len(cohort.subtrunks) == 2
    with torch.no_grad():
        out = cohort(torch.randn(2, 3, 8, 8))
    assert [z.shape for z in out.logits] == [(2, 5)] * 3


@pytest.mark.parametrize("name", ["shufflenetv2_05x", pytest.param("shufflev1", marks=pytest.mark.slow)])
def test_onnx_export_of_channel_shuffle_keeps_a_dynamic_batch(tmp_path: Path, name: str) -> None:
    """The ShuffleNets reshape by the input's shape: exported at batch 1, they must still run batch 3."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from okd.report.export_formats import run_onnx, save_onnx

    model = create_backbone(name, 5).eval()
    x = torch.randn(3, 3, 16, 16)
    with open(tmp_path / "net.onnx", "wb") as out:  # save_onnx writes to an open binary file
        save_onnx(model, x[:1], {"arch": name}, out)
    with torch.no_grad():
        torch.testing.assert_close(run_onnx(tmp_path / "net.onnx", x), model(x), rtol=1e-4, atol=1e-5)


def test_okd_models_names_each_source(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--arch", "resnet8", "--arch", "resnet110", "--arch", "shufflenetv2_05x", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["name"], r["source"]) for r in rows] == [("resnet8", "RepDistiller"), ("resnet110", "MCL-OKD"), ("shufflenetv2_05x", "L-MCL")]
    assert main(["models", "--arch", "wrn_28_4"]) == 0
    header, _, row = capsys.readouterr().out.splitlines()[:3]
    assert [cell.strip() for cell in header.split("|")[1:3]] == ["backbone", "source"] and row.split("|")[2].strip() == "L-MCL"


@pytest.mark.parametrize("method, arch", [("dml", "resnet8"), ("one", "wrn_16_1"),
                                          pytest.param("cl_ilr", "shufflenetv2_05x", marks=pytest.mark.slow),
                                          pytest.param("okddip", "mobile_half", marks=pytest.mark.slow)])
def test_cli_trains_a_zoo_backbone(tmp_path: Path, method: str, arch: str) -> None:
    out = tmp_path / "run"
    args = ["train", "--method", method, "--arch", arch, "--num-peers", "2", "--dataset", "synthetic", "--synthetic-train", "8",
            "--synthetic-test", "4", "--synthetic-classes", "3", "--synthetic-size", "8", "--batch-size", "4",
            "--eval-batch-size", "4", "--epochs", "1", "--device", "cpu", "--quiet", "--out", str(out)]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["arch"] == arch
    assert summary["params"]["deployed"] == count_params(create_backbone(arch, 3))
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["test"]) >= {"peer0", "peer1", "ensemble"}


def test_readme_zoo_table_matches_the_models() -> None:
    """Every name and parameter count in README's zoo table, in order, is what okd builds."""
    text = (Path(__file__).parents[1] / "README.md").read_text()
    section = text.split("## The CIFAR model zoo of the KD literature", 1)[1]
    table = next(block for block in section.split("\n\n") if block.startswith("| `--arch`"))
    listed = {}
    for row in table.splitlines()[2:]:
        cells = row.split("|")
        names = [name.strip(" `") for name in cells[1].split(",")]
        listed.update(zip(names, (int(p.strip().replace(",", "")) for p in cells[3].split("/")), strict=True))
    assert set(listed) == set(ZOO)
    with torch.device("meta"):
        assert {name: count_params(create_backbone(name, 100)) for name in listed} == listed
