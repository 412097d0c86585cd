"""Backbones: exact sizes from the paper's table, shapes, cohorts and peer extraction."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from okd.cli.main import main
from okd.models import Cohort, count_macs, count_params, create_backbone, list_backbones, resolve_backbone_name

PAPER = {  # name: (params, MACs in G) — docs/reference-spec.md §3 / the original README's table
    "resnet32": (472_756, 0.0691),
    "resnet110": (1_170_868, 0.1675),
    "densenet40_12": (188_092, 0.0724),
    "vgg16": (14_774_436, 0.3132),
    "hcgnet_a1": (1_102_651, 0.1547),
    "resnet34": (21_797_672, 3.66),
}

# 4-peer cohorts without method heads (docs/reference-spec.md §4.1; DenseNet tree without the 14,880 unused).
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


CIFAR_NETS = ["resnet32", "resnet110", "densenet40_12", "vgg16", "hcgnet_a1"]
SHARES = ("early", "late", "tree", "none")


def _check_cohort_and_peers(name: str, share: str, num_peers: int, side: int) -> None:
    """Cohort forward shapes; every peer extracted from it is a plain backbone with the same logits."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, side, side)
    plain = create_backbone(name, num_classes=7).eval()
    with torch.no_grad():
        assert plain(x).shape == (2, 7)
    cohort = Cohort(lambda: create_backbone(name, num_classes=7), num_peers, share).eval()
    with torch.no_grad():
        out = cohort(x)
    assert len(out.logits) == num_peers and all(z.shape == (2, 7) for z in out.logits)
    assert all(f.shape == (2, plain.feature_dim) for f in out.features)
    expected_keys = set(plain.state_dict())
    for peer in range(num_peers):
        state = cohort.peer_state_dict(peer)
        assert set(state) == expected_keys, peer
        plain.load_state_dict(state, strict=True)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), out.logits[peer])


@pytest.mark.parametrize("share", SHARES)
@pytest.mark.parametrize("name", CIFAR_NETS)
def test_forward_shapes_and_peer_extraction(name: str, share: str) -> None:
    _require(name)
    _check_cohort_and_peers(name, share, 4 if share != "none" else 3, 32)


def test_tree_with_an_odd_number_of_peers() -> None:
    _check_cohort_and_peers("densenet40_12", "tree", 3, 32)


def test_resnet34_imagenet_shape() -> None:
    model = create_backbone("resnet34").eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


@pytest.mark.parametrize("share", SHARES)
def test_resnet34_cohort_and_peer_extraction(share: str) -> None:
    _check_cohort_and_peers("resnet34", share, 3, 32)  # small input: the net is size-agnostic (GAP)


# -- weight initialisation: docs/reference-spec.md §3 ---------------------------------------------------
# conv: "fan_out" / "fan_in" kaiming normal (ReLU gain), or "default" (PyTorch's kaiming uniform,
# a=sqrt(5): U(+-1/sqrt(fan_in))); fc: "default", "default_zero_bias" or "normal_0.01".
INIT = {
    "resnet32": ("fan_out", "default"),
    "resnet110": ("fan_out", "default"),
    "densenet40_12": ("fan_in", "default_zero_bias"),
    "vgg16": ("fan_out", "normal_0.01"),
    "hcgnet_a1": ("default", "default"),
    "resnet34": ("fan_out", "default"),
}
LARGE = 2000  # tensors with at least this many values get their own statistical check


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    receptive = weight[0, 0].numel() if weight.dim() > 2 else 1
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _check_uniform(w: torch.Tensor, bound: float, what: str) -> None:
    assert w.abs().max() <= bound * (1 + 1e-6), what
    if w.numel() >= LARGE:
        assert w.std().item() == pytest.approx(bound / 3**0.5, rel=0.1), what
        assert w.abs().max() > 0.95 * bound, what  # spread over the whole interval


@pytest.mark.parametrize("name", list(INIT))
def test_weight_initialisation_matches_reference(name: str) -> None:
    _require(name)
    torch.manual_seed(0)
    model = create_backbone(name)
    conv_mode, fc_mode = INIT[name]
    normalised = []
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    for i, conv in enumerate(convs):
        w = conv.weight.detach()
        fan_in, fan_out = _fans(w)
        if conv_mode == "default":
            _check_uniform(w, 1 / fan_in**0.5, f"conv {i}")
            if conv.bias is not None:
                _check_uniform(conv.bias.detach(), 1 / fan_in**0.5, f"conv {i} bias")
            continue
        std = (2 / (fan_out if conv_mode == "fan_out" else fan_in)) ** 0.5
        normalised.append((w / std).flatten())
        if w.numel() >= LARGE:
            assert w.std().item() == pytest.approx(std, rel=0.1), f"conv {i} {tuple(w.shape)}"
            assert abs(w.mean().item()) < 5 * std / w.numel() ** 0.5, f"conv {i}"
            assert w.abs().max() > 2.5 * std, f"conv {i}: normal, not uniform"
        if conv.bias is not None:  # VGG's conv biases
            assert torch.count_nonzero(conv.bias) == 0, f"conv {i} bias"
    if normalised:  # every conv together, small ones included: unit std once scaled by its own fan
        pooled = torch.cat(normalised)
        assert pooled.std().item() == pytest.approx(1.0, rel=0.03)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert norms and all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in norms)
    assert all(torch.all(m.running_mean == 0) and torch.all(m.running_var == 1) for m in norms)
    assert all(m.eps == 1e-5 and m.momentum == 0.1 for m in norms)
    (fc,) = [m for m in model.modules() if isinstance(m, nn.Linear)]
    bound = 1 / fc.in_features**0.5
    if fc_mode == "normal_0.01":
        assert fc.weight.std().item() == pytest.approx(0.01, rel=0.05) and abs(fc.weight.mean().item()) < 1e-3
        assert fc.weight.abs().max() > 0.025
    else:
        _check_uniform(fc.weight.detach(), bound, "fc")
    if fc_mode == "default":  # left at PyTorch's default, bias included
        _check_uniform(fc.bias.detach(), bound, "fc bias")
        assert torch.count_nonzero(fc.bias) == fc.bias.numel()
    else:
        assert torch.count_nonzero(fc.bias) == 0


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
