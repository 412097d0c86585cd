"""The contract every registered method keeps, run over the registry as timm runs its tests over
list_models(): a new method (or a plugin's, here examples/my_models.py's avg_teacher) gets these for free.
On the tiny plugin backbone: 2 steps train; stopping after the first and resuming gives bit-identical
weights and optimiser state; the deployable peer exports and gives the method's own logits; the run reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import okd
from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.methods import get_method_class, list_methods

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))
import my_models  # noqa: E402,F401  (the plugin method is part of the registry under test)

TINY = dict(arch="small_cnn", plugins=["my_models"], dataset="synthetic", synthetic_train=16, synthetic_test=8,
            synthetic_classes=4, synthetic_size=8, batch_size=8, eval_batch_size=8, limit_batches=1, device="cpu",
            workers=0, seed=5)
SMALL = {"nce_k": 4}  # options sized to the tiny data, for the methods that have them

pytestmark = pytest.mark.usefixtures("one_thread")


def peers(method: str) -> int:
    return max(get_method_class(method).min_peers, 2)


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_method_contract(method: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    own = {o.name for o in get_method_class(method).declared_options()}
    run = dict(TINY, method=method, num_peers=peers(method), **{k: v for k, v in SMALL.items() if k in own})
    okd.train(tmp_path / "full", epochs=2, **run)
    okd.train(tmp_path / "split", epochs=1, **run)
    okd.train(tmp_path / "split", epochs=2, resume=True, **run)
    full, split = (load_checkpoint(tmp_path / name / "last.pt") for name in ("full", "split"))
    assert full["model"].keys() == split["model"].keys()
    assert all(torch.equal(full["model"][k], split["model"][k]) for k in full["model"]), "resume is not bit-identical"
    for a, b in zip(full["optimizer"]["state"].values(), split["optimizer"]["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a if isinstance(a[k], torch.Tensor))

    peer = okd.load_peer(tmp_path / "full" / "last.pt")  # the deployable peer as a plain backbone
    from okd.report.export import load_method

    loaded = load_method(tmp_path / "full" / "last.pt")
    images = torch.randn(3, 3, 8, 8)
    with torch.no_grad():
        expected = loaded.method.peer_logits(loaded.method(images), loaded.method.deployed_peer)
        assert torch.allclose(peer(images), expected, atol=1e-5)

    assert main(["report", str(tmp_path / "full"), "--format", "json"]) == 0
    assert method in capsys.readouterr().out
    assert json.loads((tmp_path / "full" / "summary.json").read_text())["epochs_done"] == 2
