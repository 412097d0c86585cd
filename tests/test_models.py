"""Backbones: exact sizes from the paper's table, shapes, cohorts and peer extraction."""

from __future__ import annotations

import json

import pytest
import torch

from okd.cli.main import main
from okd.models import Cohort, count_macs, count_params, create_backbone, list_backbones, resolve_backbone_name

PAPER = {  # name: (params, MACs in G) — reference-spec §3 / the original README's table
    "resnet32": (472_756, 0.0691),
    "resnet110": (1_170_868, 0.1675),
    "densenet40_12": (188_092, 0.0724),
    "vgg16": (14_774_436, 0.3132),
    "hcgnet_a1": (1_102_651, 0.1547),
    "resnet34": (21_797_672, 3.66),
}

# 4-peer cohorts without method heads (reference-spec §4.1; DenseNet tree without the 14,880 unused).
COHORTS = {
    "resnet32": {"early": 1_819_552, "late": 1_553_248, "tree": 1_642_016},
    "resnet110": {"early": 4_517_344, "late": 3_857_632, "tree": 4_077_536},
    "densenet40_12": {"early": 592_384, "late": 404_824, "tree": 482_224 - 14_880},
    "vgg16": {"early": 53_884_368, "late": 36_175_824, "tree": 42_078_672},
    "hcgnet_a1": {"early": 4_057_426, "late": 2_583_163, "tree": 3_074_584},
    "resnet34": {"early": 83_146_976},
}


def _require(name: str) -> None:
    if name not in list_backbones():
        pytest.skip(f"{name} not registered")


@pytest.mark.parametrize("name", list(PAPER))
def test_params_and_macs_match_the_paper(name: str) -> None:
    _require(name)
    params, gmacs = PAPER[name]
    model = create_backbone(name)
    assert count_params(model) == params
    assert count_macs(model, model.spec.input_size) == pytest.approx(gmacs * 1e9, rel=0.01)


@pytest.mark.parametrize("name", list(COHORTS))
def test_cohort_sizes_match_reference(name: str) -> None:
    _require(name)
    for share, expected in COHORTS[name].items():
        cohort = Cohort(lambda: create_backbone(name), 4, share)
        assert count_params(cohort) == expected, share


@pytest.mark.parametrize("name", ["resnet32", "resnet110", "densenet40_12", "vgg16", "hcgnet_a1"])
def test_forward_shapes_and_peer_extraction(name: str) -> None:
    _require(name)
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    plain = create_backbone(name, num_classes=7)
    assert plain(x).shape == (2, 7)
    share = "tree" if name in ("resnet32", "densenet40_12") else "early"
    cohort = Cohort(lambda: create_backbone(name, num_classes=7), 4, share).eval()
    with torch.no_grad():
        out = cohort(x)
    assert len(out.logits) == 4 and all(z.shape == (2, 7) for z in out.logits)
    assert all(f.shape == (2, plain.feature_dim) for f in out.features)
    peer = 3
    fresh = create_backbone(name, num_classes=7).eval()
    fresh.load_state_dict(cohort.peer_state_dict(peer), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh(x), out.logits[peer])


def test_resnet34_imagenet_shape() -> None:
    model = create_backbone("resnet34").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_peers_start_from_independent_weights() -> None:
    cohort = Cohort(lambda: create_backbone("resnet32"), 2, "early")
    a, b = (dict(cohort.branches[i].named_parameters()) for i in range(2))
    assert not torch.equal(a["fc.weight"], b["fc.weight"])


def test_reference_aliases() -> None:
    assert resolve_backbone_name("densenetd40k12") == "densenet40_12"
    if "hcgnet_a1" in list_backbones():
        assert resolve_backbone_name("hcgnet_A1") == "hcgnet_a1"


def test_models_cli_json_and_cohort(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--arch", "resnet32", "--num-peers", "4", "--share", "late", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["params"] == 472_756 and rows[0]["cohort"]["params"] == 1_553_248


def test_models_cli_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--arch", "densenetd40k12"]) == 0
    out = capsys.readouterr().out
    assert "densenet40_12" in out and "188,092" in out and "0.0724G" in out


def test_unknown_backbone_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models", "--arch", "resnet9000"]) == 2
    err = capsys.readouterr().err
    assert "unknown backbone 'resnet9000'" in err and "resnet32" in err and "Traceback" not in err
