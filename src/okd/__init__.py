"""okd: online knowledge distillation for PyTorch.

Train a cohort of peer networks that teach each other (DML, CL-ILR, ONE, OKDDip, MCL-OKD and their
successors KDCL, PCL, MCL, SwitOKD, OKDPH, L-MCL) with one generic engine over the MCL-OKD paper's
backbones, the CIFAR model zoo of the KD literature, any timm or torchvision classifier, or your own module.

From Python (the same runs as the ``okd`` command)::

    import okd
    summary = okd.train("runs/dml", method="dml", epochs=2, limit_batches=1)
    result = okd.evaluate("runs/dml/best.pt")
    net = okd.load_peer("runs/dml/best.pt")  # the deployed peer as a plain nn.Module
    okd.predict(["cat.jpg"], checkpoint="runs/dml")  # class names, with the run's own preprocessing

Your own networks and methods: subclass :class:`okd.Backbone` / :class:`okd.OKDMethod` and register
them with :func:`okd.register_backbone` / :func:`okd.register_method` (README: "Your own model and data").
The names below are imported on first use, so ``import okd`` itself stays cheap (no torch).
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "train": "okd.api",
    "evaluate": "okd.api",
    "load_peer": "okd.api",
    "predict": "okd.api",
    "register_backbone": "okd.models",
    "Backbone": "okd.models",
    "BackboneSpec": "okd.models",
    "create_backbone": "okd.models",
    "register_method": "okd.methods",
    "OKDMethod": "okd.methods",
    "Option": "okd.methods",
    "OKDUserError": "okd.errors",
    "OKDWarning": "okd.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'okd' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
