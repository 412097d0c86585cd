"""Test-only entry point for tests/test_distributed.py, run under torchrun (gloo, CPU).

One launch runs many jobs inside ONE process group (re-initialising a group in the same process
is not reliable, and every launch costs seconds of interpreter start-up):

* ``bn``: our SyncBatchNorm across ranks, with unequal shares, against nn.BatchNorm on the whole batch;
* ``train``: ``okd train ...`` through the real CLI, then each rank dumps its own state (weights,
  memory banks, what it printed) to ``<dump>/rank<r>.pt``, so the test can check the ranks agree;
  ``"float64": true`` runs it under :func:`float64_mode`;
* ``eval``: a checkpoint evaluated with the rank-sharded test loader, plus each rank's shard bounds.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 tests/dist_worker.py JOBS.json
"""

from __future__ import annotations

import contextlib
import io
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from okd.engine import distributed as okd_dist
from okd.engine import trainer as trainer_module
from okd.engine.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm


@contextlib.contextmanager
def float64_mode() -> Iterator[None]:
    """Build models and normalise images in float64 (test-only).

    Training a ReLU net on 8-image batches of noise is chaotic in float32: rounding flips the sign
    of an activation near zero now and then, each flip moves a gradient by ~1e-2, and a 1e-7
    perturbation of one process's initial weights grows to ~1e-1 within 8 steps. No distributed
    implementation can match one process to 1e-5 there, so the single-vs-DDP comparisons run in
    float64, where rounding is ~1e-16 and the runs agree to far better than 1e-5.
    """
    from okd.data import augment

    dtype, call, minor = torch.get_default_dtype(), augment.Normalizer.__call__, augment.Normalizer.channels_minor

    def call_float64(self: augment.Normalizer, images: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
        return call(self, images, channels_last).double()

    def minor_float64(self: augment.Normalizer, images_bhwc: torch.Tensor) -> torch.Tensor:
        return minor(self, images_bhwc).double()

    torch.set_default_dtype(torch.float64)
    augment.Normalizer.__call__ = call_float64  # type: ignore[method-assign]
    augment.Normalizer.channels_minor = minor_float64  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.set_default_dtype(dtype)
        augment.Normalizer.__call__ = call  # type: ignore[method-assign]
        augment.Normalizer.channels_minor = minor  # type: ignore[method-assign]


def bn_check(job: dict[str, Any], rank: int, world: int) -> None:
    """Max |difference| between our SyncBatchNorm on each rank's share and BatchNorm on the global batch."""
    diffs: dict[str, float] = {}
    for shape in ([11, 3, 4, 5], [11, 6]):  # conv BN2d and the gate's BN1d; 11 rows split unequally
        gen = torch.Generator().manual_seed(7)
        x = torch.randn(*shape, generator=gen) * 3 + 100  # a large mean: cancellation would show
        upstream = torch.randn(*shape, generator=gen)
        channels = shape[1]
        plain = (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(channels)
        with torch.no_grad():
            plain.weight.uniform_(0.5, 1.5, generator=gen)
            plain.bias.uniform_(-0.5, 0.5, generator=gen)
        sync = convert_sync_batchnorm(nn.Sequential(_copy(plain)), "cpu")[0]
        assert isinstance(sync, SyncBatchNorm)
        lo, hi = (0, 7) if rank == 0 else (7, 11)
        key = "bn2d" if len(shape) == 4 else "bn1d"
        for step in range(2):
            xg = x.clone().requires_grad_(True)
            ref = plain(xg)
            (ref * upstream).sum().backward()
            xl = x[lo:hi].clone().requires_grad_(True)
            out = sync(xl)
            (out * upstream[lo:hi]).sum().backward()
            diffs[f"{key}_out_{step}"] = float((out - ref[lo:hi]).detach().abs().max())
            diffs[f"{key}_grad_input_{step}"] = float((xl.grad - xg.grad[lo:hi]).abs().max())
            for name in ("weight", "bias"):
                grad = getattr(sync, name).grad.clone()
                dist.all_reduce(grad)  # what DDP does (up to its 1/world, which cancels the world's copies)
                diffs[f"{key}_grad_{name}_{step}"] = float((grad - getattr(plain, name).grad).abs().max())
                getattr(sync, name).grad = None
                getattr(plain, name).grad = None
        for name in ("running_mean", "running_var"):
            diffs[f"{key}_{name}"] = float((getattr(sync, name) - getattr(plain, name)).abs().max())
        diffs[f"{key}_batches_tracked"] = float(sync.num_batches_tracked - plain.num_batches_tracked)
        sync.eval()
        plain.eval()
        diffs[f"{key}_eval_out"] = float((sync(x[lo:hi]) - plain(x)[lo:hi]).abs().max())
    _save(job, rank, {"diffs": diffs})


def _copy(bn: nn.Module) -> nn.Module:
    clone = type(bn)(bn.num_features)
    clone.load_state_dict(bn.state_dict())
    return clone


def train_job(job: dict[str, Any], rank: int) -> None:
    """``okd train ARGV`` via the CLI; dump this rank's trainer state and its stdout/stderr."""
    from okd.cli.main import main

    seen: list[trainer_module.Trainer] = []
    original = trainer_module.Trainer.setup

    def recording_setup(self: trainer_module.Trainer) -> None:
        seen.append(self)
        original(self)

    trainer_module.Trainer.setup = recording_setup  # type: ignore[method-assign]
    out, err = io.StringIO(), io.StringIO()
    precision = float64_mode() if job.get("float64") else contextlib.nullcontext()
    try:
        with precision, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(["train", *job["argv"]])
    finally:
        trainer_module.Trainer.setup = original  # type: ignore[method-assign]
    trainer = seen[-1]
    state = {k: v.detach().clone() for k, v in trainer.method.state_dict().items()}
    bn_types = sorted({type(m).__name__ for m in trainer.method.modules() if "BatchNorm" in type(m).__name__})
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    _save(job, rank, {
        "rc": rc,
        "state": state,
        "stdout": out.getvalue(),
        "stderr": err.getvalue(),
        "bn_types": bn_types,
        "optimiser_sees_model": optimised == {id(p) for p in trainer.method.trainable_parameters()},
    })
    okd_dist.barrier()  # the next job must not start before every rank has finished this one


def eval_job(job: dict[str, Any], rank: int) -> None:
    """Evaluate a checkpoint on this rank's shard; the ErrorMeter sums the shards."""
    from okd.engine.checkpoint import load_checkpoint
    from okd.engine.config import config_from_mapping, replace

    state = load_checkpoint(job["checkpoint"])
    cfg = replace(config_from_mapping(state["config"]), device="cpu", eval_batch_size=job["eval_batch_size"])
    device = torch.device("cpu")
    _spec, _train, loader, method = trainer_module.build_for_config(cfg, device, okd_dist.current())
    method.load_state_dict(state["model"])
    errors = trainer_module.evaluate(method, method, loader, device)
    _save(job, rank, {"errors": errors, "shard": [loader.start, loader.stop], "batches": len(loader)})


def _save(job: dict[str, Any], rank: int, payload: dict[str, Any]) -> None:
    dump = Path(job["dump"])
    dump.mkdir(parents=True, exist_ok=True)
    torch.save(payload, dump / f"rank{rank}.pt")


def main(argv: list[str]) -> int:
    jobs = json.loads(Path(argv[0]).read_text())
    with okd_dist.process_group("cpu") as info:
        assert info.world_size > 1, "run me under torchrun"
        for job in jobs:
            began = time.perf_counter()
            if job["kind"] == "bn":
                bn_check(job, info.rank, info.world_size)
            elif job["kind"] == "train":
                train_job(job, info.rank)
            elif job["kind"] == "eval":
                eval_job(job, info.rank)
            else:
                raise ValueError(f"unknown job kind {job['kind']!r}")
            if info.rank == 0:
                print(f"{job['kind']} {Path(job['dump']).name}: {time.perf_counter() - began:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    torch.set_num_threads(1)
    raise SystemExit(main(sys.argv[1:]))
