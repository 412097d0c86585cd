"""HCGNet-A1: exact sizes per part (docs/reference-spec.md §3.5), MACs, shapes, cohorts, peer extraction."""

from __future__ import annotations

import pytest
import torch

from okd.models import Cohort, count_macs, count_params, create_backbone, resolve_backbone_name

PARTS = {
    "conv0": 648,
    "block1": 46_440,
    "trans1": 70_638,
    "block2": 185_208,
    "trans2": 306_213,
    "block3": 451_176,
    "head": 828,
    "fc": 41_500,
}


@pytest.fixture(scope="module", autouse=True)
def _fast_cpu():
    """Keep this module a few seconds: HCGNet runs many tiny convs on batches of 2.

    oneDNN JIT-compiles a kernel per conv shape (~100 distinct ones here), and intra-op threads
    mostly spin on ops this small, badly so on a shared CPU; both are restored afterwards.
    """
    enabled, threads = torch.backends.mkldnn.enabled, torch.get_num_threads()
    torch.backends.mkldnn.enabled = False
    torch.set_num_threads(1)
    yield
    torch.backends.mkldnn.enabled = enabled
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_backbone("hcgnet_a1")


def test_aliases() -> None:
    for alias in ("hcgnet_A1", "HCGNet_A1", "hcgnet"):
        assert resolve_backbone_name(alias) == "hcgnet_a1"


def test_params_per_part_and_total(model) -> None:
    assert model.stage_names == tuple(PARTS)
    assert {name: count_params(model.stage(name)) for name in model.stage_names} == PARTS
    assert count_params(model) == 1_102_651
    assert count_params(model.block1[0]) == 3_705  # first SMG of block1 (in 24, g 12)
    assert model.feature_dim == 414


def test_macs(model) -> None:
    assert count_macs(model, 32) == pytest.approx(0.1547e9, rel=0.01)


def test_forward_backward_shapes(model) -> None:
    x = torch.randn(2, 3, 32, 32)  # batch > 1: the gates' BN1d needs it in train mode
    model.train()
    out = model(x)
    assert out.shape == (2, 100)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 100)
        assert model.forward_features(x).shape == (2, 414)


def test_cohort_sizes() -> None:
    expected = {"early": 4_057_426, "late": 2_583_163, "tree": 3_074_584}
    for share, size in expected.items():
        cohort = Cohort(lambda: create_backbone("hcgnet_a1"), 4, share)
        assert count_params(cohort) == size, share


def test_peer_extraction() -> None:
    """A peer of the MCL-OKD (``early``) cohort is a plain HCGNet-A1: same names, same logits."""
    torch.manual_seed(0)
    cohort = Cohort(lambda: create_backbone("hcgnet_a1"), 4, "early")
    x = torch.randn(2, 3, 32, 32)
    cohort.train()
    cohort(x)  # one train step of BN running stats, so the extracted buffers are not all defaults
    cohort.eval()
    with torch.no_grad():
        logits = cohort(x).logits
    for peer in (1, 3):
        plain = create_backbone("hcgnet_a1")
        plain.load_state_dict(cohort.peer_state_dict(peer), strict=True)
        plain.eval()
        with torch.no_grad():
            torch.testing.assert_close(plain(x), logits[peer])
