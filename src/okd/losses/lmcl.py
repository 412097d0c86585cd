"""L-MCL's loss terms (Yang et al., TPAMI 2023), as the official CIFAR code computes them.

L-MCL contrasts every head of one network with every head of another (the final classifier and
the auxiliary branches), and scales each contrast per anchor by a weight in (0, 1) that a small
meta-learned network produces. Notation as in ``okd.losses.mcl``: E [B, D] L2-normalised
embeddings, S_ab = E_a E_b^T / tau, labels y [B], w [B] one weight per anchor (row).

- weighted SupCon(S, w) = mean_a  -w_a / |P(a)| * sum_{p in P(a)} [S(a,p) - log sum_{k != a} exp S(a,k)]
- weighted KL_T(s || t, w) = T^2 / B * sum_a w_a * KL(softmax(t_a / T) || softmax(s_a / T))

``pair_terms`` is the code's ``SupMCL`` for one pair of heads (a of one network, b of another):
    vcl      = SupCon(S_aa, w) + SupCon(S_bb, w)
    icl      = SupCon(S_ab, w) + SupCon(S_ba, w)
    soft_vcl = KL_T(S_aa || sg S_bb, w) + KL_T(S_bb || sg S_aa, w)
    soft_icl = KL_T(S_ab || sg S_ba, w) + KL_T(S_ba || sg S_ab, w)
and ``lmcl_terms`` sums it over every ordered pair of networks (i, j), i != j, and every pair of
their heads (k, z), in the code's order, which is also the order of ``pair_weights``. As in MCL's
CIFAR code the diagonal of S_ab (the same image in the other network) is neither a positive nor in
the denominator, and an anchor without a positive (the code's 0/0) is left out of the mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from okd.losses.mcl import similarity_logits


def weighted_supervised_contrastive(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SupCon of one [B, B] logit matrix with anchor a's term scaled by ``weight[a]`` (gradient flows into it)."""
    same_class = labels[:, None] == labels[None, :]
    diagonal = torch.eye(labels.numel(), dtype=torch.bool, device=labels.device)
    positives = same_class & ~diagonal
    log_norm = torch.logsumexp(logits.masked_fill(diagonal, float("-inf")), dim=1, keepdim=True)
    log_prob = (logits - log_norm).masked_fill(~positives, 0.0)
    num_positives = positives.sum(1)
    has_positive = num_positives > 0
    per_anchor = -weight * log_prob.sum(1) / num_positives.clamp_min(1)
    return (per_anchor * has_positive).sum() / has_positive.sum().clamp_min(1)


def weighted_kl_t(student: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, T: float) -> torch.Tensor:
    """T^2 * sum_a w_a KL(softmax(target_a/T) || softmax(student_a/T)) / B; ``target`` is used as given (detach it)."""
    dtype = torch.promote_types(student.dtype, torch.float32)  # bfloat16 logits are widened, float64 kept
    log_p_s = F.log_softmax(student.to(dtype) / T, dim=1)
    log_p_t = F.log_softmax(target.to(dtype) / T, dim=1)
    per_row = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1)
    return T * T * (weight * per_row).sum() / student.shape[0]


def pair_terms(
    a: torch.Tensor, b: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, tau: float, T: float
) -> dict[str, torch.Tensor]:
    """The four weighted terms of one pair of heads' embeddings ``a`` and ``b`` (the code's SupMCL)."""
    s_ab, s_ba = similarity_logits(a, b, tau), similarity_logits(b, a, tau)
    s_aa, s_bb = similarity_logits(a, a, tau), similarity_logits(b, b, tau)
    return {
        "vcl": weighted_supervised_contrastive(s_aa, labels, weight) + weighted_supervised_contrastive(s_bb, labels, weight),
        "icl": weighted_supervised_contrastive(s_ab, labels, weight) + weighted_supervised_contrastive(s_ba, labels, weight),
        "soft_vcl": weighted_kl_t(s_aa, s_bb.detach(), weight, T) + weighted_kl_t(s_bb, s_aa.detach(), weight, T),
        "soft_icl": weighted_kl_t(s_ab, s_ba.detach(), weight, T) + weighted_kl_t(s_ba, s_ab.detach(), weight, T),
    }


def head_pairs(heads: Sequence[int]) -> list[tuple[int, int, int, int]]:
    """(i, j, k, z) for every ordered pair of networks i != j and heads k of i, z of j: the code's loop order."""
    n = len(heads)
    return [(i, j, k, z) for i in range(n) for j in range(n) if i != j for k in range(heads[i]) for z in range(heads[j])]


def pair_weights(projected: Sequence[Sequence[torch.Tensor]]) -> list[torch.Tensor]:
    """sigmoid(cos(P_ik, P_jz)) [B] for every (i, j, k, z) of ``head_pairs``; P: the weight network's projections."""
    pairs = head_pairs([len(p) for p in projected])
    return [
        torch.sigmoid((F.normalize(projected[i][k], dim=1) * F.normalize(projected[j][z], dim=1)).sum(1))
        for i, j, k, z in pairs
    ]


def lmcl_terms(
    embeddings: Sequence[Sequence[torch.Tensor]], labels: torch.Tensor, weights: Sequence[torch.Tensor], tau: float, T: float
) -> dict[str, torch.Tensor]:
    """The four unweighted sums {vcl, icl, soft_vcl, soft_icl} over every pair of heads of different networks.

    ``embeddings[i][k]``: head k of network i; ``weights`` in ``head_pairs`` order (one [B] tensor per pair).
    """
    pairs = head_pairs([len(e) for e in embeddings])
    if len(embeddings) < 2 or len(weights) != len(pairs):
        raise ValueError(f"L-MCL needs >= 2 networks and one weight per head pair ({len(pairs)}), got {len(weights)}")
    totals: dict[str, torch.Tensor] = {}
    for (i, j, k, z), weight in zip(pairs, weights):
        for name, value in pair_terms(embeddings[i][k], embeddings[j][z], labels, weight, tau, T).items():
            totals[name] = totals[name] + value if name in totals else value
    return totals


def aggregate_logits(stage_logits: Sequence[torch.Tensor], gate_logits: torch.Tensor) -> torch.Tensor:
    """sum_k softmax(gate)[:, k] * z_k: one network's heads mixed per sample (the code's ``Aggregator``)."""
    gates = F.softmax(gate_logits, dim=1)
    total = stage_logits[0] * gates[:, :1]
    for k in range(1, len(stage_logits)):
        total = total + stage_logits[k] * gates[:, k : k + 1]
    return total
