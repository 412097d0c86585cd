"""DML, CL-ILR, ONE and OKDDip: losses against independent formulas, gradient flow, the CL-ILR
tree's gradient averaging, exact training-graph sizes (docs/reference-spec.md §4.1) and a few real steps."""

from __future__ import annotations

import pytest
import torch

from plain_math import ce_tensor as ce, kl_t_tensor as kl, softmax_t_tensor as softmax_t
from okd.data.batch import Batch
from okd.methods import DatasetInfo, build_method, split_arch
from okd.models import CohortOutput, count_params, list_backbones

METHODS = ("dml", "cl_ilr", "one", "okddip")

# 4-peer training graphs with their heads, docs/reference-spec.md §4.1 (DenseNet CL-ILR without its 14,880 dead params).
SIZES = {
    "resnet32": (1_819_552, 1_642_016, 1_553_388, 1_554_272),
    "resnet110": (4_517_344, 4_077_536, 3_858_156, 3_874_016),
    "densenet40_12": (592_384, 482_224 - 14_880, 405_076, 409_048),
    "vgg16": (53_884_368, 42_078_672, 36_177_884, 36_241_360),
    "hcgnet_a1": (4_057_426, 3_074_584, 2_583_679, 2_625_391),
}

# Three peers, batch 2, 3 classes.
Z = [
    [[1.0, 2.0, 0.5], [0.1, -0.3, 0.8]],
    [[0.3, -1.0, 2.0], [1.5, 0.2, -0.5]],
    [[-0.7, 0.4, 0.0], [0.9, 1.1, -1.2]],
]
Y = torch.tensor([1, 2])
BATCH = Batch(torch.zeros(2, 3, 32, 32), Y, torch.arange(2))


# -- hand-made cohort outputs (the formulas: tests/plain_math.py) -----------------------------------
def leaves() -> list[torch.Tensor]:
    return [torch.tensor(z, requires_grad=True) for z in Z]


def hand_output(logits: list[torch.Tensor], **extras: torch.Tensor) -> CohortOutput:
    return CohortOutput(logits=logits, features=[], trunk=torch.zeros(1), extras=dict(extras))


def method(name: str, num_peers: int = 3, backbone: str = "resnet32", classes: int = 3, **opts):
    return build_method(name, backbone, classes, num_peers, **opts)


# -- losses on fixed logits ------------------------------------------------------------------------
def test_dml_losses_and_detached_targets() -> None:
    z = leaves()
    out = method("dml").losses(hand_output(z), BATCH, epoch=0)
    T = 2.0
    with torch.no_grad():
        assert out["ce"].item() == pytest.approx(sum(ce(a, Y) for a in z).item(), rel=1e-5)
        hand_kd = sum(kl(z[i], z[j], T) for i in range(3) for j in range(3) if j != i) / 2
        assert out["kd"].item() == pytest.approx(hand_kd.item(), rel=1e-5)
    grads = torch.autograd.grad(out["kd"], z)
    # Student-only gradient: d KL_T(s||t)/ds = T (p_s - p_t) / B; any gradient into targets would add to it.
    for i in range(3):
        expected = sum(T * (softmax_t(z[i], T) - softmax_t(z[j], T)) for j in range(3) if j != i) / (2 * 2)
        torch.testing.assert_close(grads[i], expected.detach())


def test_cl_ilr_losses_and_detached_targets() -> None:
    z = leaves()
    out = method("cl_ilr").losses(hand_output(z), BATCH, epoch=0)
    T = 2.0
    others = [(z[1] + z[2]) / 2, (z[0] + z[2]) / 2, (z[0] + z[1]) / 2]
    with torch.no_grad():
        assert out["ce"].item() == pytest.approx(0.5 * sum(ce(a, Y) for a in z).item(), rel=1e-5)
        hand_kd = 0.5 * sum(kl(z[i], others[i], T) for i in range(3))
        assert out["kd"].item() == pytest.approx(hand_kd.item(), rel=1e-5)
    grads = torch.autograd.grad(out["kd"], z)
    for i in range(3):
        expected = 0.5 * T * (softmax_t(z[i], T) - softmax_t(others[i], T)) / 2
        torch.testing.assert_close(grads[i], expected.detach())


def test_one_losses_teacher_gets_gradient_from_ce_only() -> None:
    z = leaves()
    teacher = torch.tensor([[0.2, 0.9, 0.1], [0.4, 0.3, -0.2]], requires_grad=True)
    out = method("one").losses(hand_output(z, teacher=teacher), BATCH, epoch=0)
    T = 3.0
    with torch.no_grad():
        assert out["ce"].item() == pytest.approx(sum(ce(a, Y) for a in z).item(), rel=1e-5)
        assert out["teacher_ce"].item() == pytest.approx(ce(teacher, Y).item(), rel=1e-5)
        assert out["kd"].item() == pytest.approx(sum(kl(a, teacher, T) for a in z).item(), rel=1e-5)
    *grads, teacher_grad = torch.autograd.grad(out["kd"], [*z, teacher], allow_unused=True)
    assert teacher_grad is None
    for i in range(3):
        torch.testing.assert_close(grads[i], (T * (softmax_t(z[i], T) - softmax_t(teacher, T)) / 2).detach())
    (teacher_grad,) = torch.autograd.grad(out["teacher_ce"], [teacher])
    assert teacher_grad.abs().sum() > 0


@pytest.mark.parametrize("epoch", [0, 40, 100])
def test_okddip_losses_and_undetached_targets(epoch: int) -> None:
    z = leaves()  # peers 0, 1 and leader 2
    x_hat = torch.tensor(
        [[[0.5, 0.5, 0.0], [0.1, 0.2, 0.3]], [[1.0, -1.0, 0.0], [0.0, 0.7, 0.1]]], requires_grad=True
    )  # [B, P, C]
    out = method("okddip").losses(hand_output(z, peer_targets=x_hat), BATCH, epoch=epoch)
    T = 3.0
    w = torch.exp(torch.tensor(-5.0 * (1 - min(epoch, 80) / 80) ** 2))
    hand_ce = sum(ce(a, Y) for a in z)
    hand_kd = w * (kl(z[0], x_hat[:, 0], T) + kl(z[1], x_hat[:, 1], T) + kl(z[2], (z[0] + z[1]) / 2, T))
    assert out["ce"].item() == pytest.approx(hand_ce.item(), rel=1e-5)
    assert out["kd"].item() == pytest.approx(hand_kd.item(), rel=1e-5)
    # Same gradients as the formula with nothing detached: x_hat and the leader's target (the peers) get gradient.
    got = torch.autograd.grad(out["kd"], [*z, x_hat])
    want = torch.autograd.grad(hand_kd, [*z, x_hat])
    for g, h in zip(got, want):
        torch.testing.assert_close(g, h)
    assert got[-1].abs().sum() > 0
    student_only = w * T * (softmax_t(z[0], T) - softmax_t(x_hat[:, 0], T)) / 2
    assert not torch.allclose(got[0], student_only.detach())  # the leader's target pulls on peer 0 too


def test_ensembles_and_deployed_peers() -> None:
    z = [torch.tensor(a) for a in Z]
    stacked = torch.stack(z)
    torch.testing.assert_close(method("dml").ensemble_logits(hand_output(z)), stacked.mean(0))
    torch.testing.assert_close(method("cl_ilr").ensemble_logits(hand_output(z)), stacked.mean(0))  # all N, not N-1
    teacher = torch.randn(2, 3)
    assert method("one").ensemble_logits(hand_output(z, teacher=teacher)) is teacher
    torch.testing.assert_close(method("okddip").ensemble_logits(hand_output(z)), stacked.sum(0))
    assert method("okddip", num_peers=4).deployed_peer == 3
    assert method("dml").deployed_peer == 0


# -- heads on a real cohort ------------------------------------------------------------------------
def test_one_gate_and_teacher() -> None:
    torch.manual_seed(0)
    m = method("one", num_peers=3, classes=5)
    out = m(torch.randn(4, 3, 32, 32))
    g = out.extras["gate"]
    assert g.shape == (4, 3)
    torch.testing.assert_close(g.sum(1), torch.ones(4))
    torch.testing.assert_close(out.extras["teacher"], (g.unsqueeze(-1) * torch.stack(out.logits, 1)).sum(1))
    losses = m.losses(out, Batch(torch.zeros(4), torch.tensor([0, 1, 2, 3]), torch.arange(4)), 0)
    losses["kd"].backward(retain_graph=True)
    assert all(p.grad is None for p in m.gate.parameters())  # the KD target is detached
    losses["teacher_ce"].backward()
    assert m.gate[0].weight.grad is not None and m.gate[0].weight.grad.abs().sum() > 0


def test_one_gate_input_size_is_found_generically() -> None:
    sizes = {"resnet32": 32, "resnet110": 128, "densenet40_12": 60}
    for backbone, channels in sizes.items():
        with torch.device("meta"):
            m = method("one", num_peers=4, backbone=backbone, classes=100)
        assert m.gate[0].in_features == channels
        assert m.training and m.cohort.training


def test_okddip_attention_and_projections_get_gradient() -> None:
    torch.manual_seed(0)
    m = method("okddip", num_peers=4, classes=5)
    assert m.query.weight.shape == (8, 64) and m.query.bias is None
    out = m(torch.randn(4, 3, 32, 32))
    a, x_hat = out.extras["attention"], out.extras["peer_targets"]
    assert a.shape == (4, 3, 3) and x_hat.shape == (4, 3, 5)
    torch.testing.assert_close(a.sum(-1), torch.ones(4, 3))
    q = m.query(out.features[1][0])
    k = torch.stack([m.key(out.features[j][0]) for j in range(3)])
    torch.testing.assert_close(a[0, 1], torch.softmax(k @ q, 0))  # unscaled, self included
    torch.testing.assert_close(x_hat[0, 1], sum(a[0, 1, j] * out.logits[j][0] for j in range(3)))
    a.retain_grad()
    losses = m.losses(out, Batch(torch.zeros(4), torch.tensor([0, 1, 2, 3]), torch.arange(4)), 80)
    losses["kd"].backward()
    for grad in (a.grad, m.query.weight.grad, m.key.weight.grad):
        assert grad is not None and grad.abs().sum() > 0


# -- CL-ILR tree: each shared tensor gets the mean of its children's gradients --------------------
@pytest.mark.parametrize("num_peers", [4, 3])
def test_cl_ilr_tree_averages_children_gradients(num_peers: int) -> None:
    from okd.models.cohort import average_gradient

    torch.manual_seed(0)
    m = method("cl_ilr", num_peers=num_peers, classes=5)
    cohort = m.cohort
    x = torch.randn(4, 3, 32, 32)
    batch = Batch(x, torch.tensor([0, 1, 2, 3]), torch.arange(4))

    # Real cohort: record the gradients arriving at the trunk output and at each sub-trunk output.
    sub_outputs: dict[int, torch.Tensor] = {}

    def keep(g: int):
        def hook(_module, _inp, out: torch.Tensor) -> None:
            out.retain_grad()
            sub_outputs[g] = out

        return hook

    handles = [list(sub.values())[-1].register_forward_hook(keep(g)) for g, sub in enumerate(cohort.subtrunks)]
    out = m(x)
    for h in handles:
        h.remove()
    out.trunk.retain_grad()
    sum(m.losses(out, batch, 0).values()).backward()

    # Same network, every consumer of a shared tensor reading its own copy: the children's gradients.
    trunk = cohort.forward_trunk(x).detach().requires_grad_()
    group_inputs, peer_inputs, logits = [], [], []
    for g, sub in enumerate(cohort.subtrunks):
        t = trunk.view_as(trunk)
        t.retain_grad()
        group_inputs.append(t)
        s = t
        for stage in sub.values():
            s = stage(s)
        s = average_gradient(s, min(2, num_peers - 2 * g))
        for _ in range(min(2, num_peers - 2 * g)):
            h = s.view_as(s)
            h.retain_grad()
            peer_inputs.append(h)
            logits.append(cohort.forward_branch(len(logits), h)[1])
    manual = CohortOutput(logits=logits, features=[], trunk=trunk)
    sum(m.losses(manual, batch, 0).values()).backward()

    children = [t.grad for t in group_inputs]
    torch.testing.assert_close(out.trunk.grad, torch.stack(children).mean(0), rtol=1e-4, atol=1e-7)
    assert not torch.allclose(out.trunk.grad, torch.stack(children).sum(0))
    for g in range(cohort.num_groups):
        kids = [peer_inputs[p].grad for p in range(num_peers) if cohort.group_of(p) == g]
        torch.testing.assert_close(sub_outputs[g].grad, torch.stack(kids).mean(0), rtol=1e-4, atol=1e-7)


# -- sizes -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("backbone", list(SIZES))
def test_training_graph_sizes_match_reference(backbone: str) -> None:
    if backbone not in list_backbones():
        pytest.skip(f"{backbone} not registered yet")
    with torch.device("meta"):  # sizes only: skip allocating and initialising ~190M parameters
        counts = tuple(count_params(build_method(name, backbone, 100, 4)) for name in METHODS)
    assert counts == SIZES[backbone]


# Pooled-feature size d of each backbone (docs/reference-spec.md §4.1: MCL-OKD's heads are Linear(d, 128)).
FEATURE_DIMS = {"resnet32": 64, "resnet110": 256, "densenet40_12": 132, "vgg16": 512, "hcgnet_a1": 414, "resnet34": 512}


@pytest.mark.parametrize("backbone", list(FEATURE_DIMS))
def test_mcl_okd_sizes_are_dml_plus_one_embedding_head_per_peer(backbone: str) -> None:
    if backbone not in list_backbones():
        pytest.skip(f"{backbone} not registered yet")
    dml = SIZES[backbone][0] if backbone in SIZES else 83_146_976  # docs/reference-spec.md §4.1 (resnet34: ImageNet, 1000 classes)
    classes = 1000 if backbone == "resnet34" else 100
    d = FEATURE_DIMS[backbone]
    m = build_method("mcl_okd", backbone, classes, 4, dataset=DatasetInfo(64, classes, torch.arange(64) % classes), nce_k=8)
    assert m.cohort.feature_dim == d
    assert [tuple(h.weight.shape) for h in m.embed] == [(128, d)] * 4
    assert count_params(m) == dml + 4 * (d * 128 + 128)
    assert count_params(m.cohort) == dml


def test_head_sizes_on_resnet32() -> None:
    base = count_params(build_method("one", "resnet32", 100, 4).cohort)
    assert count_params(build_method("one", "resnet32", 100, 4)) - base == 140  # Linear(32, 4) + BN1d(4)
    assert count_params(build_method("okddip", "resnet32", 100, 4)) - base == 1_024  # 2 x Linear(64, 8)


def test_dml_independent_networks() -> None:
    with torch.device("meta"):
        m = build_method("dml", "resnet32", 100, 4, share="none")
    assert count_params(m) == 4 * 472_756


def test_options_by_name_and_defaults() -> None:
    m = build_method("okddip", "resnet32", 10, 3, kd_t=None, rampup_epochs=5, beta=0.025, alpha=None)
    assert m.kd_t == 3.0 and m.rampup_epochs == 5
    assert build_method("dml", "resnet32", 10, 2).kd_t == 2.0
    assert build_method("cl_ilr", "resnet32", 10, 2, kd_t=4.0).kd_t == 4.0
    assert build_method("one", "resnet32", 10, 2).kd_t == 3.0
    assert build_method("cl_ilr", "resnet32", 10, 2).cohort.share == "tree"
    assert build_method("one", "resnet32", 10, 2).cohort.share == "late"
    assert build_method("dml", "resnet32", 10, 2).cohort.share == "early"


def test_split_arch_reference_spellings() -> None:
    assert split_arch("okddip_densenetd40k12") == ("okddip", "densenet40_12")
    assert split_arch("dml_resnet32") == ("dml", "resnet32")
    assert split_arch("cl_ilr_resnet110") == ("cl_ilr", "resnet110")
    assert split_arch("one_vgg16") == ("one", "vgg16")
    assert split_arch("mcl_okd_resnet32") == ("mcl_okd", "resnet32")
    if "hcgnet_a1" in list_backbones():
        assert split_arch("one_hcgnet_A1") == ("one", "hcgnet_a1")
        assert split_arch("mcl_okd_hcgnet_A1") == ("mcl_okd", "hcgnet_a1")


# -- forward / backward on any N and backbone, and real optimisation -------------------------------
@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("num_peers", [2, 3, 5])
def test_any_number_of_peers(name: str, num_peers: int) -> None:
    torch.manual_seed(0)
    m = method(name, num_peers=num_peers, classes=7)
    out = m(torch.randn(2, 3, 32, 32))
    assert len(out.logits) == num_peers and all(z.shape == (2, 7) for z in out.logits)
    losses = m.losses(out, Batch(torch.zeros(2), torch.tensor([1, 6]), torch.arange(2)), 3)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert m.ensemble_logits(out).shape == (2, 7)
    assert 0 <= m.deployed_peer < num_peers


def _forward_backward_every_method(backbone: str) -> None:
    if backbone not in list_backbones():
        pytest.skip(f"{backbone} not registered yet")
    torch.manual_seed(0)
    side = 64 if backbone == "resnet34" else 32
    x = torch.randn(2, 3, side, side)
    dataset = DatasetInfo(16, 4, torch.arange(16) % 4)  # MCL-OKD's banks: 16 samples, 12 negatives each
    batch = Batch(x, torch.tensor([0, 3]), torch.tensor([4, 7]))  # labels as the dataset's
    for name in (*METHODS, "mcl_okd"):
        opts = {"dataset": dataset, "nce_k": 4} if name == "mcl_okd" else {}
        m = method(name, num_peers=2, backbone=backbone, classes=4, **opts)
        out = m(x)
        losses = m.losses(out, batch, 0)
        assert all(torch.isfinite(v) for v in losses.values()), (name, losses)
        sum(losses.values()).backward()
        assert m.ensemble_logits(out).shape == (2, 4)
        if name == "mcl_okd":
            assert set(losses) == {"ce", "dot", "mcl"} and losses["mcl"] > 0
            assert all(h.weight.grad is not None and h.weight.grad.abs().sum() > 0 for h in m.embed)
            before = m.memory.clone()
            m.after_step(out, batch)
            changed = (m.memory != before).any(-1).any(0)
            assert changed.nonzero().flatten().tolist() == [4, 7]


@pytest.mark.parametrize("backbone", ["resnet110", "densenet40_12"])
def test_every_backbone(backbone: str) -> None:
    _forward_backward_every_method(backbone)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vgg16", "hcgnet_a1", "resnet34"])
def test_every_backbone_large(backbone: str) -> None:
    _forward_backward_every_method(backbone)


@pytest.mark.parametrize("name", METHODS)
def test_a_few_sgd_steps_lower_the_loss(name: str) -> None:
    torch.manual_seed(0)
    m = method(name, num_peers=4, classes=10)
    x = torch.randn(8, 3, 32, 32)
    batch = Batch(x, torch.tensor([0, 1, 2, 3, 4, 5, 6, 7]), torch.arange(8))
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9)
    totals = []
    for _ in range(6):
        total = sum(m.losses(m(x), batch, 80).values())
        totals.append(total.item())
        opt.zero_grad()
        total.backward()
        opt.step()
    assert totals[-1] < 0.8 * totals[0], totals


def test_baseline_sgd_steps_on_real_digits_lower_the_loss() -> None:
    """20 steps of the engine's digits recipe (SGD 0.05, Nesterov, wd 5e-4) over 4 real batches of
    the embedded digits, augmentation included: the cross-entropy falls clearly (from ~log 10)."""
    import itertools

    from okd.data import DataConfig, build_data

    torch.manual_seed(0)
    _spec, train, _test = build_data(DataConfig(dataset="digits", batch_size=16, seed=0))
    batches = list(itertools.islice(train.epoch(0), 4))
    assert all(b.images.shape == (16, 3, 32, 32) for b in batches) and len({int(i) for b in batches for i in b.indices}) == 64
    m = build_method("baseline", "resnet32", 10, 1)
    opt = torch.optim.SGD(m.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    totals = []
    for batch in batches * 5:
        total = sum(m.losses(m(batch.images), batch, 0).values())
        opt.zero_grad()
        total.backward()
        opt.step()
        totals.append(total.item())
    first, last = sum(totals[:4]) / 4, sum(totals[-4:]) / 4
    assert first > 2.0 and last < 0.7 * first, totals
