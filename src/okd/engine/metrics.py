"""Top-k errors accumulated on the device (no host sync per batch) and reduced exactly across ranks."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.distributed as dist

from okd.engine.distributed import is_distributed

TOPK = (1, 5)


def topk_correct(logits: torch.Tensor, targets: torch.Tensor, ks: Sequence[int] = TOPK) -> torch.Tensor:
    """Number of samples whose target is among the top-k logits, for each k; a [len(ks)] tensor."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices
    hits = top.eq(targets.unsqueeze(1))
    return torch.stack([hits[:, : min(k, kmax)].any(1).sum() for k in ks])


class ErrorMeter:
    """Correct counts of several heads (each peer, the ensemble) over a whole evaluation."""

    def __init__(self, heads: Sequence[str], device: torch.device) -> None:
        self.heads = list(heads)
        self.correct = torch.zeros(len(self.heads), len(TOPK), dtype=torch.long, device=device)
        self.count = torch.zeros((), dtype=torch.long, device=device)

    def update(self, logits: Sequence[torch.Tensor], targets: torch.Tensor) -> None:
        for i, z in enumerate(logits):
            self.correct[i] += topk_correct(z, targets)
        self.count += targets.shape[0]

    def errors(self) -> dict[str, dict[str, float]]:
        """Top-1/top-5 error in percent per head; sums over all ranks first so shards add up exactly."""
        correct, count = self.correct.clone(), self.count.clone()
        if is_distributed():
            dist.all_reduce(correct)
            dist.all_reduce(count)
        correct, total = correct.cpu().tolist(), max(int(count.item()), 1)
        return {
            head: {f"top{k}": 100.0 * (1 - c[j] / total) for j, k in enumerate(TOPK)}
            for head, c in zip(self.heads, correct)
        }


STANDARD_HEADS = ("ensemble", "peer_mean", "deployed")


def extra_heads(per_head: dict[str, dict[str, float]], num_peers: int) -> list[str]:
    """A method's own evaluated heads (``eval_heads``: EMA peers, fusion heads), in their order."""
    plain = {f"peer{i}" for i in range(num_peers)} | set(STANDARD_HEADS)
    return [head for head in per_head if head not in plain]


def summarise_errors(per_head: dict[str, dict[str, float]], num_peers: int, deployed: str) -> dict[str, dict[str, float]]:
    """Add the peer mean and the deployed head to the per-head errors (docs/design.md §3).

    ``peer_mean`` is over the student peers peer0..N-1 only; ``deployed`` copies the head the
    method ships (``OKDMethod.deployed_head``: a peer, or one of its extra heads).
    """
    peers = [per_head[f"peer{i}"] for i in range(num_peers)]
    out = dict(per_head)
    out["peer_mean"] = {key: sum(p[key] for p in peers) / num_peers for key in peers[0]}
    out["deployed"] = dict(per_head[deployed])
    return out
