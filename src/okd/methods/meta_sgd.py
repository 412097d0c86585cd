"""A hypergradient through a few virtual SGD steps, as L-MCL's ``MetaSGD`` computes it.

Why: L-MCL learns the weights of its contrastive terms by asking how they would change the
classification loss after a few SGD steps. The networks take ``len(objectives)`` virtual SGD
steps (momentum from zero, L2 weight decay, no Nesterov), the last objective is evaluated once
more at the end, and the gradient of that final value with respect to the ``hyper`` tensors (the
weight network's parameters, which only the objectives see) is propagated back through the
recorded steps. Afterwards the networks are back at the state before the first virtual step, as
the code leaves them (``rollback=True``).

The backward recursion is the code's, kept exactly (adjoints a0 of the parameters, a1 of the
momentum, Hessian-vector products by double backward):

    b   = -lr * a0 + a1                     (the adjoint of step t's momentum buffer)
    h   = d/d(theta, hyper) <grad L_t(theta_t), b>
    a0 <- a0 * (1 - lr * wd) + a1 + h_theta,   a1 <- momentum * b,   hyper_grad += h_hyper

The exact adjoint of the momentum step would add ``wd * a1`` where the code adds ``a1``. a1 is
zero while the last step is replayed, so with two recorded steps (one inner step) this is the exact
hypergradient; with the code's three (two inner steps) the first step's share differs slightly
(docs/methods/lmcl.md).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def _grads_or_zeros(grads: Sequence[torch.Tensor | None], like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """A parameter an objective does not use gets a zero gradient, as PyTorch 1.7's zero_grad() left it."""
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, like)]


@torch.no_grad()
def virtual_sgd_step(
    params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], buffers: Sequence[torch.Tensor], lr: float,
    momentum: float, weight_decay: float,
) -> None:
    """torch.optim.SGD's update (dampening 0, no Nesterov) with momentum buffers that start at zero."""
    for p, g, buf in zip(params, grads, buffers):
        d = g.add(p, alpha=weight_decay)
        buf.mul_(momentum).add_(d)
        p.add_(buf, alpha=-lr)


def meta_hypergradient(
    params: Sequence[torch.Tensor],
    hyper: Sequence[torch.Tensor],
    objectives: Sequence[Callable[[], torch.Tensor]],
    snapshot: Callable[[], object],
    restore: Callable[[object], None],
    *,
    lr: float,
    momentum: float,
    weight_decay: float,
) -> list[torch.Tensor]:
    """d(last objective after the virtual steps) / d(hyper), through one virtual step per objective.

    ``params`` are updated in place and end restored by ``restore`` to the first ``snapshot``
    (which should hold every parameter and buffer the objectives touch); ``hyper`` must require grad.
    """
    params, hyper = list(params), list(hyper)
    buffers = [torch.zeros_like(p) for p in params]
    states = []
    for objective in objectives:
        states.append(snapshot())
        grads = torch.autograd.grad(objective(), params, allow_unused=True)
        virtual_sgd_step(params, _grads_or_zeros(grads, params), buffers, lr, momentum, weight_decay)
    final = torch.autograd.grad(objectives[-1](), params, allow_unused=True)
    a0 = [g.detach() for g in _grads_or_zeros(final, params)]
    a1 = [torch.zeros_like(p) for p in params]
    hyper_grad = [torch.zeros_like(h) for h in hyper]
    for state, objective in zip(reversed(states), reversed(objectives)):
        restore(state)
        grads = torch.autograd.grad(objective(), params, create_graph=True, allow_unused=True)
        adjoint = [a.mul(-lr).add(b) for a, b in zip(a0, a1)]
        terms = [(g * adj).sum() for g, adj in zip(grads, adjoint) if g is not None and g.requires_grad]
        if terms:
            second = torch.autograd.grad(torch.stack(terms).sum(), params + hyper, allow_unused=True)
        else:
            second = [None] * (len(params) + len(hyper))
        h_theta = _grads_or_zeros(second[: len(params)], params)
        for acc, h in zip(hyper_grad, second[len(params):]):
            if h is not None:
                acc.add_(h)
        a0, a1 = (
            [a.mul(1 - lr * weight_decay).add(b).add(h) for a, b, h in zip(a0, a1, h_theta)],
            [b.mul(momentum).add(a, alpha=-lr * momentum) for a, b in zip(a0, a1)],
        )
    return hyper_grad
