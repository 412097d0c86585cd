"""Golden digests: every registered method trained 2 steps, fingerprinted bit for bit.

A refactor of the option/recipe/engine plumbing must not change a single bit of what a step
computes. This script trains each built-in method through ``okd.train`` (the same path as
``okd train``: options -> recipe -> trainer) for 2 steps on tiny synthetic data with a fixed seed,
then hashes the saved model state dict and optimiser state. ``test_golden.py`` recomputes the
digests and compares them with ``fixtures/golden_digests.json``.

Regenerate (only when a step is *meant* to change, and say why in the commit)::

    PYTHONPATH=src python tests/make_golden.py            # every method
    PYTHONPATH=src python tests/make_golden.py okdph      # only these; the others' digests stay as stored
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

FIXTURE = Path(__file__).parent / "fixtures" / "golden_digests.json"

# The smallest settings that still run each method's distinctive parts: MCL-OKD's memory banks and
# class-aware negatives (nce_k 4 of 3 other classes' 12 samples), PCL's EMA shadow and views,
# KDCL's per-peer views and its soft-target rule, MCL's m-per-class batches, L-MCL's meta step on
# both steps (its weight network's momentum too), OKDPH's hybrid and its fusion after every batch,
# SwitOKD's two parameter groups and its switch (with this seed: one learning, one expert step).
COMMON: dict[str, Any] = dict(
    dataset="synthetic", synthetic_train=48, synthetic_test=16, synthetic_classes=4, synthetic_size=8,
    arch="resnet32", epochs=1, limit_batches=2, batch_size=8, eval_batch_size=16, seed=3, device="cpu",
    workers=0, log_interval=1,
)
RUNS: dict[str, dict[str, Any]] = {
    "baseline": {},
    "dml": {"num_peers": 2},
    "cl_ilr": {"num_peers": 3},
    "one": {"num_peers": 2},
    "okddip": {"num_peers": 3},
    "mcl_okd": {"num_peers": 2, "nce_k": 4, "fixed_z": True},
    "kdcl": {"num_peers": 2, "kdcl_rule": "linear"},
    "pcl": {"num_peers": 2, "rampup_epochs": 1},
    "mcl": {"num_peers": 2, "mcl_logit_distill": True},
    "lmcl": {"num_peers": 2, "lmcl_meta_freq": 1},
    "okdph": {"num_peers": 2, "fusion_interval": "1_batch"},
    "switokd": {"num_peers": 2, "student_lr_scale": 0.1},
}


def _digest_tree(value: Any, hasher: "hashlib._Hash", prefix: str = "") -> None:
    """Feed names, dtypes, shapes and raw bytes of every tensor (and plain values) in a stable order."""
    if isinstance(value, dict):
        for key in sorted(value, key=str):
            _digest_tree(value[key], hasher, f"{prefix}/{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _digest_tree(item, hasher, f"{prefix}/{i}")
    elif isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        hasher.update(f"{prefix}:{t.dtype}:{tuple(t.shape)}".encode())
        hasher.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        hasher.update(f"{prefix}={value!r}".encode())


def digest_run(method: str, folder: Path) -> dict[str, str]:
    """Train ``method`` 2 steps into ``folder``; sha256 of its weights and of its optimiser state."""
    import okd

    okd.train(folder, method=method, **COMMON, **RUNS[method])
    state = torch.load(folder / "last.pt", map_location="cpu", weights_only=True)
    out = {}
    for part in ("model", "optimizer"):
        hasher = hashlib.sha256()
        _digest_tree(state[part], hasher)
        out[part] = hasher.hexdigest()
    return out


RECIPE_CASES = [(d, a) for d in ("digits", "synthetic", "cifar100", "imagenet") for a in ("resnet32", "vgg16", "resnet34")]


def resolved_recipes(methods: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """The resolved config (every engine and method value, flat) of each method x dataset x backbone,
    so a change to how recipes are declared cannot change what they fill in."""
    from okd.engine.options import train_config

    out = {}
    for method in methods or RUNS:
        for dataset, arch in RECIPE_CASES:
            data = {"data": "/nonexistent"} if dataset in ("cifar100", "imagenet") else {}
            cfg = train_config({"method": method, "dataset": dataset, "arch": arch, **data})
            out[f"{method}/{dataset}/{arch}"] = flat_config(cfg)
    return out


def flat_config(cfg: Any) -> dict[str, Any]:
    """A config as one flat mapping of the values that were set (method options beside engine ones)."""
    plain = dict(vars(cfg))
    plain.update(plain.pop("method_options", None) or {})
    return {k: v for k, v in sorted(plain.items()) if v is not None}


def compute(methods: list[str] | None = None) -> dict[str, dict[str, str]]:
    torch.set_num_threads(1)  # the digests are of 1-thread CPU runs (reduction order)
    with tempfile.TemporaryDirectory() as tmp:
        return {m: digest_run(m, Path(tmp) / m) for m in (methods or list(RUNS))}


if __name__ == "__main__":
    named = sys.argv[1:]
    kept = json.loads(FIXTURE.read_text()) if named and FIXTURE.exists() else {"digests": {}, "recipes": {}}
    digests = {**kept["digests"], **compute(named or None)}
    recipes = {**kept["recipes"], **resolved_recipes(named or None)}
    FIXTURE.write_text(json.dumps({"torch": torch.__version__, "digests": digests, "recipes": recipes}, indent=1, sort_keys=True) + "\n")
    print(f"wrote {FIXTURE}: {len(digests)} methods")
