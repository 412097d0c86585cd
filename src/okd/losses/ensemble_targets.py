"""KDCL's soft targets: ways to combine N peers' logits (and the labels) into one teacher.

Every rule takes the peers' logits stacked as ``[N, B, C]`` and the labels ``[B]`` and returns
target logits ``[B, C]``. The rules that use the label (naive, linear, minlogit) exist only
during training: at test time there is no label, so KDCL's ensemble is the mean of the logits.
No rule detaches its result; the method does, because the target must not train the peers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

LINEAR_STEPS = 100  # exponentiated-gradient iterations of the linear rule's weight fit
LINEAR_DECAY = 0.9  # each iteration's step is this factor of the previous one (the first moves log-weights by 1)


def mean_target(logits: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """The mean of the peers' logits (the public KDCL re-implementation's teacher)."""
    return logits.mean(0)


def naive_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per sample, the logits of the peer with the lowest cross-entropy on that sample (KDCL-Naive)."""
    num_peers, size, classes = logits.shape
    ce = F.cross_entropy(logits.reshape(-1, classes).float(), targets.repeat(num_peers), reduction="none")
    best = ce.view(num_peers, size).argmin(0)  # [B]; ties go to the lower peer index
    return logits[best, torch.arange(size, device=logits.device)]


def minlogit_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KDCL-MinLogit: shift each peer's logits so its true-class logit is 0, then take the
    element-wise minimum over peers.

    Softmax is shift-invariant per sample, so each shifted row is the same prediction; the minimum
    keeps, for every wrong class, the smallest margin below the true class any peer achieved. The
    result's true-class logit is exactly 0 and its cross-entropy is no higher than any peer's.
    """
    index = targets.view(1, -1, 1).expand(logits.shape[0], -1, 1)
    shifted = logits - logits.gather(2, index)
    return shifted.min(0).values


def linear_weights(logits: torch.Tensor, targets: torch.Tensor, steps: int = LINEAR_STEPS) -> torch.Tensor:
    """Weights ``w`` on the simplex minimising the batch-mean CE of ``sum_i w_i z_i`` (KDCL-Linear).

    The problem is convex in ``w``; it is solved by a fixed number of exponentiated-gradient
    (mirror-descent) steps from the uniform weights. Each step moves the log-weights by at most
    ``LINEAR_DECAY**t`` (the gradient is centred and divided by its largest entry), so the fit does
    not depend on the logits' scale and settles geometrically. Deterministic, no autograd, no host sync.
    """
    z = logits.detach().float()
    num_peers = z.shape[0]
    onehot = F.one_hot(targets, z.shape[2]).to(z.dtype)
    log_w = torch.full((num_peers,), -math.log(num_peers), device=z.device)
    for step in range(steps):
        w = log_w.softmax(0)
        mixed = torch.einsum("n,nbc->bc", w, z)
        residual = mixed.softmax(1) - onehot  # d CE / d mixed, per sample
        grad = torch.einsum("bc,nbc->n", residual, z) / z.shape[1]
        grad = grad - grad.mean()  # a shift common to all log-weights does not change w
        log_w = log_w - LINEAR_DECAY**step * grad / grad.abs().max().clamp_min(1e-12)
    return log_w.softmax(0)


def linear_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KDCL-Linear: the convex combination of the peers' logits with the lowest batch CE."""
    weights = linear_weights(logits, targets).to(logits.dtype)
    return torch.einsum("n,nbc->bc", weights, logits)


ENSEMBLE_RULES = {
    "minlogit": minlogit_target,
    "naive": naive_target,
    "linear": linear_target,
    "mean": mean_target,
}
