"""MCL-OKD's multi-view contrastive loss and memory update, as pure tensor functions.

Notation (docs/reference-spec.md §4.7): N peers ("views"), a memory bank M_i [num_data, D] per view, the
L2-normalised live embeddings e_j [B, D], and ``contrast_idx`` [B, K+1] (column 0 the positive,
the sample itself; columns 1..K negatives). For every ordered pair i != j the directed output is
O_{i->j}[b, k] = exp(M_i[contrast_idx[b, k]] . e_j[b] / tau), normalised to P = O / Z with
Z = mean(O) * num_data, and scored with CRD's binary NCE loss. L_MCL sums the N(N-1) outputs.

Efficient form: every bank's rows are gathered once per step and all other views are scored
against them in one batched product, so autograd keeps N gathered [B, K+1, D] tensors instead of
N(N-1) (the per-pair form, kept here as ``multiview_nce_loss_pairwise`` for tests and
benchmarks). Scores are computed in float32 even under autocast: exp(s / tau) with tau = 0.07
leaves bfloat16's useful range of relative precision.
"""

from __future__ import annotations

import math

import torch

NCE_EPS = 1e-7  # CRD's eps inside the NCE logs


def l2_normalise(x: torch.Tensor) -> torch.Tensor:
    """x / ||x||_2 over the last dimension, without eps (as the reference's embedding head)."""
    return x / x.norm(dim=-1, keepdim=True)


def nce_loss(probs: torch.Tensor, num_data: int, eps: float = NCE_EPS) -> torch.Tensor:
    """CRD's binary NCE loss with uniform noise, one value per leading index.

    ``probs`` is [..., B, K+1] with column 0 the positive. With m = K noise samples and noise
    probability Pn = 1/num_data:

        -(1/B) [ sum_b log(P_b0 / (P_b0 + m Pn + eps)) + sum_b sum_k log(m Pn / (P_bk + m Pn + eps)) ]

    Returns a tensor of shape ``probs.shape[:-2]`` (a 0-d tensor for a single [B, K+1] input).
    """
    batch, m = probs.shape[-2], probs.shape[-1] - 1
    noise = m / num_data
    positive, negative = probs[..., 0], probs[..., 1:]
    log_pos = torch.log(positive / (positive + noise + eps))
    log_neg = torch.log(noise / (negative + noise + eps))
    return -(log_pos.sum(-1) + log_neg.sum((-2, -1))) / batch


def nce_init_value(k: int) -> float:
    """The NCE loss of one output when every P equals 1/num_data (eps ignored): a sanity check."""
    return math.log(k + 1) + k * math.log1p(1.0 / k)


def gather_rows(bank: torch.Tensor, contrast_idx: torch.Tensor) -> torch.Tensor:
    """[B, K+1, D] bank rows for ``contrast_idx`` [B, K+1], detached (banks never get gradient)."""
    rows = bank.detach().index_select(0, contrast_idx.reshape(-1))
    return rows.view(*contrast_idx.shape, bank.shape[-1])


def view_scores(rows: torch.Tensor, embeddings: torch.Tensor, temperature: float) -> torch.Tensor:
    """exp(rows . e / tau) of one bank's rows [B, K+1, D] against M views' embeddings [M, B, D].

    One batched product per bank: returns [M, B, K+1].
    """
    logits = torch.bmm(rows, embeddings.permute(1, 2, 0))  # [B, K+1, M]
    return torch.exp(logits / temperature).permute(2, 0, 1)


def other_views(num_views: int, i: int) -> list[int]:
    """The views contrasted against bank i, in order (column order of every [N, N-1] result)."""
    return [j for j in range(num_views) if j != i]


def multiview_scores(
    banks: torch.Tensor, embeddings: torch.Tensor, contrast_idx: torch.Tensor, temperature: float
) -> torch.Tensor:
    """All N(N-1) directed outputs O, shape [N, N-1, B, K+1]; O[i, c] is bank i vs view other_views(N, i)[c].

    ``banks`` [N, num_data, D], ``embeddings`` [N, B, D]. Float32 regardless of autocast.
    """
    num_views = embeddings.shape[0]
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        embeddings = embeddings.float()
        outputs = []
        for i in range(num_views):
            rows = gather_rows(banks[i], contrast_idx).float()
            others = torch.cat([embeddings[:i], embeddings[i + 1 :]])  # other_views(N, i), no index upload
            outputs.append(view_scores(rows, others, temperature))
        return torch.stack(outputs)


def batch_normaliser(scores: torch.Tensor, num_data: int) -> torch.Tensor:
    """Z = mean(O) * num_data over each output's B*(K+1) entries, detached: [..., B, K+1] -> [...]."""
    return scores.detach().mean(dim=(-2, -1)) * num_data


def multiview_nce_loss(
    banks: torch.Tensor,
    embeddings: torch.Tensor,
    contrast_idx: torch.Tensor,
    temperature: float,
    num_data: int,
    normaliser: torch.Tensor | None = None,
) -> torch.Tensor:
    """L_MCL: plain sum of the N(N-1) directed NCE losses (0-d). Z per batch unless ``normaliser`` [N, N-1]."""
    scores = multiview_scores(banks, embeddings, contrast_idx, temperature)
    z = batch_normaliser(scores, num_data) if normaliser is None else normaliser
    return nce_loss(scores / z[..., None, None], num_data).sum()


def multiview_nce_loss_pairwise(
    banks: torch.Tensor,
    embeddings: torch.Tensor,
    contrast_idx: torch.Tensor,
    temperature: float,
    num_data: int,
) -> torch.Tensor:
    """Reference form of ``multiview_nce_loss`` (per-batch Z): one gather per ordered pair.

    Kept only to show equality in tests and to measure the memory the batched form saves.
    """
    num_views = embeddings.shape[0]
    total = embeddings.new_zeros((), dtype=torch.float32)
    with torch.autocast(device_type=embeddings.device.type, enabled=False):
        for i in range(num_views):
            for j in other_views(num_views, i):
                rows = gather_rows(banks[i], contrast_idx).float()
                scores = torch.exp(torch.bmm(rows, embeddings[j].float()[:, :, None]).squeeze(-1) / temperature)
                z = scores.detach().mean() * num_data
                total = total + nce_loss(scores / z, num_data)
    return total


def last_occurrence(indices: torch.Tensor) -> torch.Tensor:
    """For each position, the position of the last occurrence of the same value (no host sync).

    Lets a scatter with repeated indices write identical values everywhere, so the result does
    not depend on which write the device happens to apply last.
    """
    size = indices.shape[0]
    values, perm = torch.sort(indices, stable=True)
    is_last = torch.ones(size, dtype=torch.bool, device=indices.device)
    is_last[:-1] = values[1:] != values[:-1]
    positions = torch.arange(size, device=indices.device)
    run_end = torch.where(is_last, positions, size).flip(0).cummin(0).values.flip(0)
    return torch.empty_like(perm).index_copy_(0, perm, perm.index_select(0, run_end))


@torch.no_grad()
def momentum_update_(banks: torch.Tensor, indices: torch.Tensor, embeddings: torch.Tensor, momentum: float) -> None:
    """M_i[y] <- normalise(m * M_i[y] + (1 - m) * e_i) for every view i, in place.

    ``banks`` [N, num_data, D], ``indices`` [B], ``embeddings`` [N, B, D] (this step's, pre-update).
    A sample repeated in the batch (e.g. padding of a distributed sampler) gets its last
    occurrence's embedding.
    """
    embeddings = embeddings.detach().to(banks.dtype).index_select(1, last_occurrence(indices))
    old = banks.index_select(1, indices)
    banks.index_copy_(1, indices, l2_normalise(old * momentum + embeddings * (1.0 - momentum)))


def embed(heads: "torch.nn.ModuleList", features: "list[torch.Tensor]") -> torch.Tensor:
    """Each peer's L2-normalised embedding of its pooled feature, in float32: [N, B, D]."""
    return torch.stack([l2_normalise(head(torch.flatten(f, 1)).float()) for head, f in zip(heads, features)])
