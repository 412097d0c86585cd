"""MCL's contrastive terms against element-by-element loop formulas and against the official code's
masked-matrix form, on a hand-built batch (6 samples, 2 classes, 3 networks); which inputs the
gradient reaches; and the two deliberate edge cases (no positive, the ImageNet same-instance flag)."""

from __future__ import annotations

import pytest
import torch

from okd.losses.mcl import (
    icl_loss,
    inter_logits,
    intra_logits,
    mcl_terms,
    similarity_logits,
    soft_icl_loss,
    soft_vcl_loss,
    supervised_contrastive,
    vcl_loss,
)

TAU, T = 0.1, 3.0
LABELS = torch.tensor([0, 1, 0, 1, 1, 0])


def embeddings(seed: int = 0, n: int = 3, batch: int = 6, dim: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.functional.normalize(torch.randn(batch, dim, generator=g, dtype=torch.float64), dim=1) for _ in range(n)]


def leaves(embs: list[torch.Tensor]) -> list[torch.Tensor]:
    return [e.clone().requires_grad_(True) for e in embs]


# -- independent references: one scalar at a time ------------------------------------------------
def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return sum(a[k] * b[k] for k in range(a.numel()))


def ref_sim(ei: torch.Tensor, ej: torch.Tensor) -> list[list[torch.Tensor]]:
    return [[dot(ei[a], ej[k]) / TAU for k in range(len(ej))] for a in range(len(ei))]


def ref_supcon(s: list[list[torch.Tensor]], labels: list[int], same_instance: bool = False) -> torch.Tensor:
    """mean over anchors with a positive of -(1/|P|) sum_p [s(a,p) - log sum_{k in D(a)} exp s(a,k)]."""
    total, anchors = 0.0, 0
    for a, row in enumerate(s):
        keep = [k for k in range(len(row)) if same_instance or k != a]
        positives = [p for p in keep if labels[p] == labels[a]]
        if not positives:
            continue
        log_denominator = torch.log(sum(torch.exp(row[k]) for k in keep))
        total = total - sum(row[p] - log_denominator for p in positives) / len(positives)
        anchors += 1
    return total / anchors


def ref_kl(student: list[list[torch.Tensor]], target: list[list[torch.Tensor]]) -> torch.Tensor:
    """T^2 * mean over rows of sum_k p_t log(p_t / p_s), softmax at temperature T, written out."""
    total = 0.0
    for s_row, t_row in zip(student, target):
        zs = sum(torch.exp(v / T) for v in s_row)
        zt = sum(torch.exp(v / T) for v in t_row)
        for s, t in zip(s_row, t_row):
            pt, ps = torch.exp(t / T) / zt, torch.exp(s / T) / zs
            total = total + pt * torch.log(pt / ps)
    return T * T * total / len(student)


def detached(s: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    return [[v.detach() for v in row] for row in s]


def ref_terms(embs: list[torch.Tensor], labels: list[int], same_instance: bool = False) -> dict[str, torch.Tensor]:
    n = len(embs)
    intra = [ref_sim(e, e) for e in embs]
    pairs = [(ref_sim(embs[i], embs[j]), ref_sim(embs[j], embs[i])) for i in range(n) for j in range(i + 1, n)]
    return {
        "vcl": sum(ref_supcon(s, labels) for s in intra),
        "icl": sum(ref_supcon(s, labels, same_instance) for pair in pairs for s in pair),
        "soft_vcl": sum(ref_kl(intra[i], detached(intra[j])) for i in range(n) for j in range(n) if i != j),
        "soft_icl": sum(ref_kl(a, detached(b)) + ref_kl(b, detached(a)) for a, b in pairs),
    }


def code_form_supcon(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The official CIFAR code's masked-matrix expression, transcribed (valid when every anchor has a positive)."""
    eye = torch.eye(len(labels), dtype=logits.dtype)
    same = (labels[None, :] == labels[:, None]).to(logits.dtype)
    positives, keep = same - eye, 1.0 - eye
    log_prob = logits - torch.log((torch.exp(logits) * keep).sum(1, keepdim=True))
    return -((positives * log_prob).sum(1) / positives.sum(1)).mean()


# -- values -------------------------------------------------------------------------------------
def test_similarity_logits_are_scaled_dot_products() -> None:
    a, b = embeddings(1, n=2)
    s = similarity_logits(a, b, TAU)
    assert s.dtype == torch.float32 and s.shape == (6, 6)
    torch.testing.assert_close(s, (a @ b.t() / TAU).float())
    assert torch.allclose(torch.diagonal(similarity_logits(a, a, TAU)), torch.full((6,), 1 / TAU))


@pytest.mark.parametrize("same_instance", [False, True])
def test_every_term_matches_the_loop_formula(same_instance: bool) -> None:
    embs = embeddings(2)
    got = mcl_terms(embs, LABELS, TAU, T, same_instance)
    want = ref_terms([e.float() for e in embs], LABELS.tolist(), same_instance)
    assert set(got) == {"vcl", "icl", "soft_vcl", "soft_icl"}
    for name in got:
        torch.testing.assert_close(got[name], want[name].float(), rtol=1e-5, atol=1e-5, msg=name)
    assert all(v > 0 for v in got.values())


def test_cifar_form_matches_the_official_masked_expression() -> None:
    embs = embeddings(3)
    for i in range(3):
        for j in range(3):
            s = similarity_logits(embs[i], embs[j], TAU)
            torch.testing.assert_close(supervised_contrastive(s, LABELS), code_form_supcon(s, LABELS))


def test_identical_networks_cifar_icl_is_twice_vcl_and_the_imagenet_form_differs() -> None:
    """With identical networks S_01 = S_00, so the CIFAR ICL (same instance excluded, as in VCL) is
    twice one network's VCL; the ImageNet form (same instance a positive) is not."""
    e = embeddings(4, n=1)[0]
    cifar = icl_loss(inter_logits([e, e], TAU), LABELS)
    imagenet = icl_loss(inter_logits([e, e], TAU), LABELS, same_instance_positive=True)
    torch.testing.assert_close(cifar, 2 * vcl_loss(intra_logits([e], TAU), LABELS))
    assert abs(float(imagenet - cifar)) > 0.1


def test_two_peers_term_counts() -> None:
    embs = embeddings(5, n=2)
    intra, inter = intra_logits(embs, TAU), inter_logits(embs, TAU)
    assert len(intra) == 2 and len(inter) == 1
    torch.testing.assert_close(inter[0][1], inter[0][0].t())
    torch.testing.assert_close(
        soft_icl_loss(inter, T), soft_icl_loss([(inter[0][1], inter[0][0])], T)
    )  # symmetric in the pair


def test_anchor_without_positive_is_left_out_and_none_gives_zero() -> None:
    labels = torch.tensor([0, 0, 1, 2])  # samples 2 and 3 have no partner: the code's mean would be 0/0
    s = similarity_logits(*embeddings(6, n=2, batch=4), TAU)
    want = ref_supcon([[v for v in row] for row in s], labels.tolist())
    torch.testing.assert_close(supervised_contrastive(s, labels), want)
    alone = torch.tensor([0, 1, 2, 3])
    leaf = s.clone().requires_grad_(True)
    value = supervised_contrastive(leaf, alone)
    value.backward()
    assert value.item() == 0.0 and torch.equal(leaf.grad, torch.zeros_like(leaf))
    one = similarity_logits(*embeddings(6, n=2, batch=1), TAU).requires_grad_(True)
    assert supervised_contrastive(one, torch.tensor([0])).item() == 0.0


# -- gradients ----------------------------------------------------------------------------------
def grads(value: torch.Tensor, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    return list(torch.autograd.grad(value, xs, allow_unused=False))


@pytest.mark.parametrize("name", ["vcl", "icl", "soft_vcl", "soft_icl"])
def test_gradients_match_the_loop_formula_with_its_detaches(name: str) -> None:
    embs = embeddings(7)
    ours, theirs = leaves(embs), leaves(embs)
    got = grads(mcl_terms(ours, LABELS, TAU, T)[name], ours)
    want = grads(ref_terms(theirs, LABELS.tolist())[name], theirs)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)
        assert g.abs().sum() > 0  # every network's embedding learns from every term


def test_soft_terms_targets_are_detached() -> None:
    """soft_vcl's gradient on E_0 comes only from network 0's own S_00 as the student: making the
    other networks' embeddings constants changes nothing."""
    embs = embeddings(8)
    live = leaves(embs)
    frozen = [live[0]] + [e.detach() for e in live[1:]]
    g_live = grads(soft_vcl_loss(intra_logits(live, TAU), T), [live[0]])[0]
    g_frozen = grads(soft_vcl_loss(intra_logits(frozen, TAU), T), [live[0]])[0]
    torch.testing.assert_close(g_live, g_frozen)
    # soft_icl: KL(S_01 || sg(S_10)) + KL(S_10 || sg(S_01)): both students reach both embeddings,
    # so the gradient equals the sum over the two students with a constant target each
    a, b = leaves(embeddings(9, n=2))
    total = soft_icl_loss(inter_logits([a, b], TAU), T)
    s01, s10 = similarity_logits(a, b, TAU), similarity_logits(b, a, TAU)
    from okd.losses.distill import kl_div_t

    by_hand = kl_div_t(s01, s10.detach(), T) + kl_div_t(s10, s01.detach(), T)
    for x, y in zip(grads(total, [a, b]), grads(by_hand, [a, b])):
        torch.testing.assert_close(x, y)


def test_needs_two_networks() -> None:
    with pytest.raises(ValueError, match="two networks"):
        mcl_terms(embeddings(0, n=1), LABELS, TAU, T)
