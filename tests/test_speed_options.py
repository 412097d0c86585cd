"""Speed options must not change what is learned beyond float rounding (docs/design.md §5).

A few real training steps through the CLI with and without each option testable on CPU; weights,
BN statistics, optimiser state and logged losses must agree to ~1e-5.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dist_worker import float64_mode

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.step import sgd_kwargs
from okd.errors import OKDUserError

TINY = ["--dataset", "synthetic", "--synthetic-train", "48", "--synthetic-test", "16", "--synthetic-classes", "5",
        "--batch-size", "16", "--eval-batch-size", "16", "--epochs", "1", "--quiet", "--device", "cpu",
        "--arch", "resnet32", "--num-peers", "2"]


def _train(out: Path, *extra: str) -> dict:
    assert main(["train", *TINY, "--out", str(out), *extra]) == 0
    state = load_checkpoint(out / "last.pt")
    state["train"] = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["train"]
    return state


def _assert_same_run(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        other = b["model"][key]
        if value.is_floating_point():
            torch.testing.assert_close(value, other, atol=atol, rtol=1e-4, msg=key)
        else:
            assert torch.equal(value, other), key
    buffers = lambda s: [v["momentum_buffer"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    for x, y in zip(buffers(a), buffers(b), strict=True):
        torch.testing.assert_close(x, y, atol=atol, rtol=1e-4)
    assert a["train"].keys() == b["train"].keys()
    for name, value in a["train"].items():
        assert value == pytest.approx(b["train"][name], abs=atol, rel=1e-5), name


@pytest.mark.parametrize("method", ["dml", "mcl_okd"])
def test_channels_last_changes_nothing_beyond_rounding(tmp_path: Path, method: str) -> None:
    """float64, 3 steps: the layout plumbing (loader, normaliser, model) changes nothing at all."""
    extra = ["--nce-k", "16"] if method == "mcl_okd" else []
    with float64_mode():
        plain = _train(tmp_path / "plain", "--method", method, "--no-channels-last", *extra)
        fast = _train(tmp_path / "cl", "--method", method, "--channels-last", *extra)
    assert fast["config"]["channels_last"] is True and plain["config"]["channels_last"] is False
    _assert_same_run(plain, fast, atol=1e-9)


def test_channels_last_float32_step_is_within_rounding(tmp_path: Path) -> None:
    """float32 (oneDNN kernels): the same losses, and one SGD step's weights within gradient rounding.

    The float32 gradients of the first conv, back through 31 training-mode BatchNorms, carry ~1e-3
    relative rounding error in either layout (measured against float64: 6e-4 contiguous, 2.5e-3
    channels_last, on |g| ~0.46); after one step (lr 0.05, nesterov) the two runs' weights were
    measured up to 1e-3 apart; the tolerance is 2e-3, far below what a wrong layout gives (O(1)).
    """
    plain = _train(tmp_path / "plain", "--method", "dml", "--no-channels-last", "--limit-batches", "1")
    fast = _train(tmp_path / "cl", "--method", "dml", "--channels-last", "--limit-batches", "1")
    for name, value in plain["train"].items():
        assert value == pytest.approx(fast["train"][name], abs=1e-5), name
    for key, value in plain["model"].items():
        if value.is_floating_point():
            torch.testing.assert_close(value, fast["model"][key], atol=2e-3, rtol=0, msg=key)


def test_foreach_sgd_matches_the_per_parameter_loop(tmp_path: Path) -> None:
    loop = _train(tmp_path / "loop", "--method", "dml", "--sgd-impl", "loop")
    foreach = _train(tmp_path / "foreach", "--method", "dml", "--sgd-impl", "foreach")
    _assert_same_run(loop, foreach)
    assert foreach["config"]["sgd_impl"] == "foreach"


def test_sgd_impl_choice() -> None:
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert sgd_kwargs("auto", cpu) == {"foreach": True}
    assert sgd_kwargs("auto", cuda) == {"fused": True}
    assert sgd_kwargs("loop", cpu) == {"foreach": False}
    with pytest.raises(OKDUserError):
        sgd_kwargs("fast", cpu)
