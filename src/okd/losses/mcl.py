"""MCL's in-batch contrastive terms (Yang et al., AAAI 2022), as the official CIFAR code computes them.

Notation: N networks, E_i [B, D] the L2-normalised embeddings of network i, labels y [B], and the
similarity logits S_ij = E_i E_j^T / tau (row a: anchor a of network i against every sample of
network j). Every term is a sum over networks (or network pairs) of batch-mean quantities:

- ``vcl``  (intra-network):  sum_i SupCon(S_ii)
- ``icl``  (inter-network):  sum_{i<j} [SupCon(S_ij) + SupCon(S_ji)]
- ``soft_vcl``:              sum_{i != j} KL_T(S_ii || sg(S_jj))
- ``soft_icl``:              sum_{i<j} [KL_T(S_ij || sg(S_ji)) + KL_T(S_ji || sg(S_ij))]

SupCon(S) = mean over anchors a of -(1/|P(a)|) sum_{p in P(a)} [S(a,p) - log sum_{k != a} exp S(a,k)],
P(a) = the other samples with a's label. The CIFAR code uses this same mask for the inter-network
matrices too, so there the same image seen by the other network is neither a positive nor in the
denominator; its ImageNet code counts it as a positive and in the denominator
(``same_instance_positive=True``). KL_T is okd's ``kl_div_t`` (T^2-scaled, batch-mean, rows over the
full B x B matrix, diagonal included). Only the soft terms' targets are detached, as in the code.

One deliberate difference: an anchor without any positive (impossible with the m-per-class sampler,
m >= 2) makes the code's mean NaN (0/0); here it is left out of the mean, and a batch without any
positive gives 0.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from okd.losses.distill import kl_div_t


def similarity_logits(anchors: torch.Tensor, contrast: torch.Tensor, tau: float) -> torch.Tensor:
    """S = anchors @ contrast^T / tau, in float32 (exp(S) spans e^{+-1/tau}: too wide for bfloat16)."""
    return anchors.float() @ contrast.float().t() / tau


def supervised_contrastive(logits: torch.Tensor, labels: torch.Tensor, same_instance_positive: bool = False) -> torch.Tensor:
    """SupCon of one [B, B] logit matrix whose row a and column a are the same image.

    ``same_instance_positive=False`` (MCL's CIFAR code): the diagonal is excluded from the positives
    and from the denominator. True (its ImageNet code, inter-network only): the diagonal is a
    positive and part of the denominator.
    """
    if labels.numel() < 2 and not same_instance_positive:
        return logits.sum() * 0.0  # nothing to contrast with (a 1-sample rank slice); keeps the graph
    same_class = labels[:, None] == labels[None, :]
    diagonal = torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    if same_instance_positive:
        positives, denominator = same_class, torch.ones_like(same_class)
    else:
        positives, denominator = same_class & ~diagonal, ~diagonal
    log_norm = torch.logsumexp(logits.masked_fill(~denominator, float("-inf")), dim=1, keepdim=True)
    log_prob = (logits - log_norm).masked_fill(~positives, 0.0)
    num_positives = positives.sum(1)
    has_positive = num_positives > 0
    per_anchor = -log_prob.sum(1) / num_positives.clamp_min(1)
    # anchors without a positive are left out (the code's 0/0); their rows still join the graph as 0
    return (per_anchor * has_positive).sum() / has_positive.sum().clamp_min(1)


def intra_logits(embeddings: Sequence[torch.Tensor], tau: float) -> list[torch.Tensor]:
    """[S_ii for every network i]."""
    return [similarity_logits(e, e, tau) for e in embeddings]


def inter_logits(embeddings: Sequence[torch.Tensor], tau: float) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(S_ij, S_ji) for every pair i < j], in the code's order."""
    n = len(embeddings)
    return [
        (similarity_logits(embeddings[i], embeddings[j], tau), similarity_logits(embeddings[j], embeddings[i], tau))
        for i in range(n)
        for j in range(i + 1, n)
    ]


def vcl_loss(intra: Sequence[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """sum_i SupCon(S_ii): each network's embeddings contrasted among themselves."""
    return torch.stack([supervised_contrastive(s, labels) for s in intra]).sum()


def icl_loss(
    inter: Sequence[tuple[torch.Tensor, torch.Tensor]], labels: torch.Tensor, same_instance_positive: bool = False
) -> torch.Tensor:
    """sum_{i<j} SupCon(S_ij) + SupCon(S_ji): anchors of one network against the other's embeddings."""
    terms = [supervised_contrastive(s, labels, same_instance_positive) for pair in inter for s in pair]
    return torch.stack(terms).sum()


def soft_vcl_loss(intra: Sequence[torch.Tensor], T: float) -> torch.Tensor:
    """sum_{i != j} KL_T(S_ii || sg(S_jj)): each network's similarity distribution mimics the others'."""
    n = len(intra)
    terms = [kl_div_t(intra[i], intra[j].detach(), T) for i in range(n) for j in range(n) if i != j]
    return torch.stack(terms).sum()


def soft_icl_loss(inter: Sequence[tuple[torch.Tensor, torch.Tensor]], T: float) -> torch.Tensor:
    """sum_{i<j} KL_T(S_ij || sg(S_ji)) + KL_T(S_ji || sg(S_ij))."""
    terms = [kl_div_t(a, b.detach(), T) + kl_div_t(b, a.detach(), T) for a, b in inter]
    return torch.stack(terms).sum()


def mcl_terms(
    embeddings: Sequence[torch.Tensor], labels: torch.Tensor, tau: float, T: float, same_instance_positive: bool = False
) -> dict[str, torch.Tensor]:
    """The four unweighted terms {vcl, icl, soft_vcl, soft_icl} of N >= 2 networks' embeddings."""
    if len(embeddings) < 2:
        raise ValueError("MCL's terms need at least two networks")
    intra, inter = intra_logits(embeddings, tau), inter_logits(embeddings, tau)
    return {
        "vcl": vcl_loss(intra, labels),
        "icl": icl_loss(inter, labels, same_instance_positive),
        "soft_vcl": soft_vcl_loss(intra, T),
        "soft_icl": soft_icl_loss(inter, T),
    }
