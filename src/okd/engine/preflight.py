"""Resource preflight: estimate the memory of what a run is about to build, refuse what cannot fit.

Without it, ``--num-peers 5000``, ``--synthetic-train 10000000`` or a memory bank over a huge
dataset grow until the machine swaps or the kernel kills the process, long after the command was
accepted. Here the large things are sized first and compared with the memory free where they will
live (host RAM, within the container's limit, or the GPU's free memory):

* the cohort (parameters and buffers, memory banks included, plus the gradient and momentum of
  every parameter): the method is built once on PyTorch's ``meta`` device, which allocates
  nothing, so the count is exact for any method and backbone;
* synthetic data, and decoded image stores (the data layer asks ``okd.data.memory.check_fits`` itself).

The estimates are lower bounds (activations are not counted), so a refusal is always right.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from okd.data.memory import check_fits

try:  # the factory functions torch's own `with torch.device(...)` redirects
    from torch.utils._device import _device_constructors

    _FACTORIES = frozenset(_device_constructors())
except ImportError:  # pragma: no cover - a torch without it: the common factories
    _FACTORIES = frozenset({torch.empty, torch.zeros, torch.ones, torch.full, torch.rand, torch.randn, torch.randint,
                            torch.arange, torch.empty_like, torch.zeros_like, torch.ones_like, torch.tensor, torch.as_tensor})

__all__ = ["check_fits", "cohort_bytes"]

SGD_COPIES = 2  # per parameter, besides the weights: its gradient and its momentum buffer


class _MetaFactories(TorchFunctionMode):
    """New tensors (parameters, buffers, banks) on ``meta``; tensors made from existing data (a
    method indexing the training labels) stay where that data is, as in the real build."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = dict(kwargs or {})
        if func in _FACTORIES and func not in (torch.as_tensor, torch.tensor) and kwargs.get("device") is None:
            kwargs["device"] = "meta"
        return func(*args, **kwargs)


def cohort_bytes(build: Callable[[], nn.Module]) -> int | None:
    """Training memory of the module ``build`` makes: its state, plus SGD's copies of its parameters.

    ``build`` runs under the ``meta`` device (nothing is allocated); None where the module cannot
    be built there (a method that reads values while it is built), and then no estimate is made.
    """
    try:
        with _MetaFactories():
            module = build()
    except Exception:  # noqa: BLE001 - an unsupported op on meta tensors: build it for real, unchecked
        return None
    params = sum(p.numel() * p.element_size() for p in module.parameters())
    buffers = sum(b.numel() * b.element_size() for b in module.buffers())
    return params * (1 + SGD_COPIES) + buffers
