"""L-MCL: its loss terms against plain formulas (and which inputs get gradient), one meta step against
a hand-computed update, and the method through the CLI (2 steps, exact resume, export, bad options)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from plain_math import softmax

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.losses.lmcl import (
    aggregate_logits,
    head_pairs,
    lmcl_terms,
    pair_terms,
    pair_weights,
    weighted_kl_t,
    weighted_supervised_contrastive,
)
from okd.losses.mcl import mcl_terms, similarity_logits
from okd.methods import build_method
from okd.methods.meta_sgd import meta_hypergradient

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--method", "lmcl", "--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8",
        "--synthetic-classes", "4", "--synthetic-size", "8", "--batch-size", "8", "--eval-batch-size", "8",
        "--quiet", "--device", "cpu", "--lmcl-meta-freq", "2", "--lmcl-meta-steps", "1"]
LABELS = torch.tensor([0, 0, 1, 1, 2, 0])  # anchor 4 has no positive: left out of the mean


def fixed(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


# -- pure loss functions against plain Python --------------------------------------------------
def plain_weighted_supcon(S: list[list[float]], labels: list[int], w: list[float]) -> float:
    terms = []
    for a, row in enumerate(S):
        positives = [p for p in range(len(row)) if p != a and labels[p] == labels[a]]
        if not positives:
            continue
        log_norm = math.log(sum(math.exp(v) for k, v in enumerate(row) if k != a))
        terms.append(-w[a] * sum(row[p] - log_norm for p in positives) / len(positives))
    return sum(terms) / len(terms)


def plain_weighted_kl(s: list[list[float]], t: list[list[float]], w: list[float], T: float) -> float:
    total = 0.0
    for a, (srow, trow) in enumerate(zip(s, t)):
        p_s, p_t = softmax(srow, T), softmax(trow, T)
        total += w[a] * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s))
    return T * T * total / len(s)


def test_weighted_supcon_matches_the_formula_and_sends_gradient_to_logits_and_weights() -> None:
    S, w = fixed(6, 6, seed=1).requires_grad_(), torch.rand(6, dtype=torch.float64).requires_grad_()
    value = weighted_supervised_contrastive(S, LABELS, w)
    assert value.item() == pytest.approx(plain_weighted_supcon(S.tolist(), LABELS.tolist(), w.tolist()), rel=1e-12)
    value.backward()
    assert S.grad.abs().sum() > 0 and w.grad[4] == 0 and (w.grad[[0, 1, 2, 3, 5]] != 0).all()


def test_weighted_kl_matches_the_formula_and_the_weight_is_per_row() -> None:
    s, t = fixed(5, 7, seed=2).requires_grad_(), fixed(5, 7, seed=3)
    w = torch.tensor([0.1, 0.5, 0.9, 0.3, 0.7], dtype=torch.float64, requires_grad=True)
    value = weighted_kl_t(s, t, w, 3.0)
    assert value.item() == pytest.approx(plain_weighted_kl(s.tolist(), t.tolist(), w.tolist(), 3.0), rel=1e-12)
    value.backward()
    assert s.grad.abs().sum() > 0 and (w.grad > 0).all()


def test_pair_terms_detach_only_the_soft_targets() -> None:
    a = torch.nn.functional.normalize(fixed(6, 4, seed=4), dim=1).requires_grad_()
    b = torch.nn.functional.normalize(fixed(6, 4, seed=5), dim=1).requires_grad_()
    w = torch.rand(6, dtype=torch.float64)
    terms = pair_terms(a, b, LABELS, w, 0.1, 3.0)
    # soft_vcl: a's similarities learn from b's and b's from a's, each target detached
    ga, gb = torch.autograd.grad(terms["soft_vcl"], (a, b))
    saa, sbb = similarity_logits(a, a, 0.1), similarity_logits(b, b, 0.1)  # float32, as pair_terms computes them
    ref_a = torch.autograd.grad(weighted_kl_t(saa, sbb.detach(), w, 3.0), a)[0]
    ref_b = torch.autograd.grad(weighted_kl_t(sbb, saa.detach(), w, 3.0), b)[0]
    torch.testing.assert_close(ga, ref_a)
    torch.testing.assert_close(gb, ref_b)
    # icl's SupCon sends gradient to both sides of S_ab
    ga, gb = torch.autograd.grad(weighted_supervised_contrastive(a @ b.t() / 0.1, LABELS, w), (a, b))
    assert ga.abs().sum() > 0 and gb.abs().sum() > 0


def test_with_unit_weights_and_one_head_each_the_terms_are_twice_mcls() -> None:
    """Two networks give the ordered pairs (0, 1) and (1, 0): every MCL term counted twice."""
    emb = [torch.nn.functional.normalize(fixed(6, 8, seed=s), dim=1) for s in (6, 7)]
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    ours = lmcl_terms([[emb[0]], [emb[1]]], labels, [torch.ones(6)] * 2, 0.1, 3.0)
    reference = mcl_terms(emb, labels, 0.1, 3.0)
    for name, value in reference.items():
        torch.testing.assert_close(ours[name], 2 * value)


def test_pair_weights_are_sigmoid_cosines_in_the_codes_order() -> None:
    assert head_pairs([2, 1]) == [(0, 1, 0, 0), (0, 1, 1, 0), (1, 0, 0, 0), (1, 0, 0, 1)]
    p = [[fixed(3, 4, seed=10), fixed(3, 4, seed=11)], [fixed(3, 4, seed=12)]]
    weights = pair_weights(p)
    for (i, j, k, z), w in zip(head_pairs([2, 1]), weights):
        for row in range(3):
            u, v = p[i][k][row].tolist(), p[j][z][row].tolist()
            cos = sum(x * y for x, y in zip(u, v)) / math.sqrt(sum(x * x for x in u) * sum(y * y for y in v))
            assert w[row].item() == pytest.approx(1 / (1 + math.exp(-cos)), rel=1e-12)


def test_aggregate_is_the_softmax_gated_sum() -> None:
    z = [fixed(2, 3, seed=20), fixed(2, 3, seed=21)]
    gate = fixed(2, 2, seed=22)
    g = gate.softmax(1)
    torch.testing.assert_close(aggregate_logits(z, gate), z[0] * g[:, :1] + z[1] * g[:, 1:])


# -- the meta step ------------------------------------------------------------------------------
def test_one_meta_step_matches_a_hand_computed_update() -> None:
    """theta in R^2, hyper lam: inner = sum lam*theta^2, outer = sum c*theta; two inner steps + one outer.

    Every gradient and Hessian is closed-form, and the code's recursion is written out by hand."""
    lr, mu, wd = 0.1, 0.9, 0.01
    lam0, c, th0 = [0.5, 2.0], [1.0, -3.0], [1.0, 2.0]
    theta = torch.tensor(th0, dtype=torch.float64)
    lam = torch.tensor(lam0, dtype=torch.float64, requires_grad=True)
    outer_c = torch.tensor(c, dtype=torch.float64)
    inner = lambda: (lam * theta**2).sum()  # noqa: E731
    outer = lambda: (outer_c * theta).sum()  # noqa: E731
    theta.requires_grad_()
    grad = meta_hypergradient([theta], [lam], [inner, inner, outer], lambda: theta.detach().clone(),
                              lambda s: theta.data.copy_(s), lr=lr, momentum=mu, weight_decay=wd)[0]
    expected = []
    for n in range(2):  # the coordinates are independent
        L, cn = lam0[n], c[n]
        th, buf, traj = th0[n], 0.0, []
        for g_of in (lambda t: 2 * L * t, lambda t: 2 * L * t, lambda t: cn):
            traj.append(th)
            buf = mu * buf + g_of(th) + wd * th
            th = th - lr * buf
        a0, a1, hyper = cn, 0.0, 0.0
        # replay backwards; inner's gradient 2*lam*t has d/dt = 2*lam and d/dlam = 2*t, outer's is constant
        for t, is_inner in zip(reversed(traj), (False, True, True)):
            b = -lr * a0 + a1
            hyper += 2 * t * b if is_inner else 0.0
            h_theta = 2 * L * b if is_inner else 0.0
            a0, a1 = a0 * (1 - lr * wd) + a1 + h_theta, mu * a1 - lr * mu * a0
        expected.append(hyper)
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=1e-14)
    assert theta.tolist() == th0  # rolled back


def test_with_one_inner_step_the_hypergradient_is_exact() -> None:
    """Against autograd through the unrolled SGD (momentum, weight decay) of a small non-quadratic problem."""
    lr, mu, wd = 0.2, 0.9, 5e-4
    theta0, lam = fixed(3, seed=30), fixed(3, seed=31).requires_grad_()
    inner_f = lambda t, l: (torch.sigmoid(l) * torch.cos(t) * t**2).sum()  # noqa: E731
    outer_f = lambda t: (t**3).sum() + (t[0] * t[1])  # noqa: E731
    theta = theta0.clone().requires_grad_()
    grad = meta_hypergradient([theta], [lam], [lambda: inner_f(theta, lam), lambda: outer_f(theta)],
                              lambda: theta.detach().clone(), lambda s: theta.data.copy_(s), lr=lr, momentum=mu, weight_decay=wd)[0]
    t = theta0.clone().requires_grad_()
    b1 = torch.autograd.grad(inner_f(t, lam), t, create_graph=True)[0] + wd * t
    t1 = t - lr * b1
    b2 = mu * b1 + torch.autograd.grad(outer_f(t1), t1, create_graph=True)[0] + wd * t1
    t2 = t1 - lr * b2
    torch.testing.assert_close(grad, torch.autograd.grad(outer_f(t2), lam)[0], rtol=1e-10, atol=1e-12)


def test_method_meta_update_trains_only_the_weight_network_and_restores_the_networks() -> None:
    from okd.data.batch import Batch

    torch.manual_seed(0)
    m = build_method("lmcl", "resnet32", 4, 2, lmcl_meta_steps=1)
    assert m.cohort.share == "none" and len(m.aux[0]) == 2  # ResNet's two branch points: 3 heads per network
    assert not any(p.requires_grad for p in m.weight_net.parameters())
    assert {id(p) for p in m.weight_net.parameters()}.isdisjoint(id(p) for p in m.trainable_parameters())
    images, targets = fixed(8, 3, 8, 8, seed=40).float(), torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    m.train()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    m.meta_update(Batch(images, targets, torch.arange(8)), 0, 1, opt)  # step 1: not a meta step
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    m.meta_update(Batch(images, targets, torch.arange(8)), 0, 0, opt)
    after = m.state_dict()
    for key, value in before.items():
        if key.startswith("weight_net") or "running" in key or "num_batches" in key:
            continue  # BatchNorm: the code's quirk, one extra update from the replayed forward
        assert torch.equal(value, after[key]), key
    assert all(not torch.equal(before[k], after[k]) for k in before if k.startswith("weight_net.") and k.endswith("weight"))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("weight_net_momentum"))


# -- through the CLI ------------------------------------------------------------------------------
def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def test_cli_trains_two_steps_resumes_bit_identically_and_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert train(tmp_path / "full", "--epochs", "2") == 0
    assert train(tmp_path / "split", "--epochs", "1") == 0
    assert train(tmp_path / "split", "--epochs", "2", "--resume") == 0
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["config"]["num_peers"] == 2 and set(full["model"]) == set(split["model"])
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    record = json.loads((tmp_path / "full" / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(record["train"]) == {"ce", "kd", "vcl", "icl", "soft_vcl", "soft_icl", "total"}
    assert {"peer0", "peer1", "peer0_aux0", "peer1_aux1", "ensemble"} <= set(record["test"])
    capsys.readouterr()
    exported = tmp_path / "peer.pt"
    assert main(["export", "--checkpoint", str(tmp_path / "full" / "last.pt"), "--peer", "deployed",
                 "--format", "state_dict", "--out", str(exported)]) == 0
    from okd.report.export import load_exported_backbone

    method = build_method("lmcl", "resnet32", 4, 2)
    method.load_state_dict(full["model"])
    images = fixed(4, 3, 8, 8, seed=50).float()
    with torch.no_grad():
        assert torch.equal(load_exported_backbone(exported)(images), method.eval()(images).logits[0])


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--lmcl-meta-steps", "0"], "--lmcl-meta-steps must be >= 1"),
        (["--lmcl-meta-freq", "-1"], "--lmcl-meta-freq must be >= 0"),
        (["--mcl-tau", "0"], "--mcl-tau must be > 0"),
        (["--share", "early"], "supports --share none, got 'early'"),
        (["--num-peers", "1"], "needs --num-peers >= 2, got 1"),
    ],
)
def test_bad_options_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", *extra) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and err.count("\n") == 1, err
    assert not out.exists()


def test_a_backbone_without_second_derivatives_is_a_user_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """MobileNetV3's hardsigmoid has no double backward in PyTorch: the meta step names the op and the way out."""
    from okd.data.batch import Batch
    from okd.errors import OKDUserError
    from okd.methods import lmcl

    def no_double_backward(*args, **kwargs):
        raise RuntimeError("derivative for aten::hardsigmoid_backward is not implemented")

    monkeypatch.setattr(lmcl, "meta_hypergradient", no_double_backward)
    m = build_method("lmcl", "resnet32", 4, 2)
    opt = torch.optim.SGD(m.trainable_parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    batch = Batch(torch.zeros(2, 3, 8, 8), torch.tensor([0, 0]), torch.arange(2))
    with pytest.raises(OKDUserError, match=r"uses aten::hardsigmoid_backward.*--lmcl-meta-freq 0"):
        m.meta_update(batch, 0, 0, opt)


def test_a_pair_of_different_backbones_trains_with_its_own_heads() -> None:
    """The code's heterogeneous pairs (ResNet-32 & ResNet-110): each network's heads are its own backbone's."""
    from okd.data.batch import Batch

    torch.manual_seed(0)
    m = build_method("lmcl", "resnet32,resnet110", 4, 2, lmcl_meta_steps=1)
    assert [len(a) for a in m.aux] == [2, 2] and m.cohort.feature_dims == [64, 256]
    assert [linear.in_features for linear in m.weight_net[1]] == [256, 256, 256]
    images, targets = fixed(4, 3, 8, 8, seed=60).float(), torch.tensor([0, 0, 1, 1])
    out = m(images)
    assert out.extras["head_logits"].shape == (2, 3, 4, 4) and out.extras["loss_weights"].shape == (18, 4)
    losses = m.losses(out, Batch(images, targets, torch.arange(4)), 0)
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())


# Computed once by the official code (winycg/L-MCL at 2c0901e: MetaSGD with rollback over two steps on
# the inner objective and one on the outer, then meta_backward; SupMCL summed over the 18 head pairs of
# two networks with three heads) on the inputs that official_inputs() draws. Stored, not recomputed.
OFFICIAL_HYPERGRADIENT = [-0.012180807415087714, -0.0005725584100294507, 0.0018064000869512614, 5.899645916075724e-05,
                          -0.0017308327357378867, -0.000587213442565336, 0.0010351024529928173]
OFFICIAL_TERMS = {"vcl": 112.85516887589665, "soft_vcl": 66.47076071828113, "icl": 99.28422292798628,
                  "soft_icl": 144.1537222443545}


def official_inputs() -> dict:
    gen = torch.Generator().manual_seed(18)
    draw = lambda *shape: torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    net = [draw(7, 5) * 0.5, draw(7) * 0.5, draw(3, 7) * 0.5, draw(3) * 0.5]
    lam = torch.rand(7, generator=gen, dtype=torch.float64)
    x, y = draw(16, 5), torch.randint(0, 3, (16,), generator=gen)
    emb = [[torch.nn.functional.normalize(draw(8, 8), dim=1) for _ in range(3)] for _ in range(2)]
    weights = [torch.rand(8, generator=gen, dtype=torch.float64) for _ in range(18)]
    return dict(net=net, lam=lam, x=x, y=y, emb=emb, weights=weights)


def test_the_meta_step_and_the_terms_reproduce_the_official_codes_stored_values() -> None:
    data = official_inputs()
    params = [p.clone().requires_grad_() for p in data["net"]]
    lam = data["lam"].clone().requires_grad_()
    x, y = data["x"], data["y"]
    hidden = lambda: torch.tanh(x @ params[0].t() + params[1])  # noqa: E731
    inner = lambda: (torch.sigmoid(lam) * hidden() ** 2).mean() * 3  # noqa: E731  (the last layer unused: it still decays)
    outer = lambda: torch.nn.functional.cross_entropy(hidden() @ params[2].t() + params[3], y)  # noqa: E731
    grad = meta_hypergradient(params, [lam], [inner, inner, outer], lambda: [p.detach().clone() for p in params],
                              lambda s: [p.data.copy_(t) for p, t in zip(params, s)], lr=0.1, momentum=0.9, weight_decay=5e-4)[0]
    torch.testing.assert_close(grad, torch.tensor(OFFICIAL_HYPERGRADIENT, dtype=torch.float64), rtol=1e-9, atol=1e-12)
    assert all(torch.equal(p, q) for p, q in zip(params, data["net"]))
    terms = lmcl_terms(data["emb"], torch.arange(4).repeat_interleave(2), data["weights"], 0.1, 3.0)
    for name, value in OFFICIAL_TERMS.items():  # similarities in float32, as okd computes them
        assert terms[name].item() == pytest.approx(value, rel=1e-7), name
