"""`okd train` and `okd eval` through the CLI on the on-disk formats users bring: the official
CIFAR-100 python release (folder and .tar.gz) and an ImageNet-style JPEG tree.

The data are tiny files in the exact official layouts (tests/datasets_helpers.py), so these runs
exercise the real readers end to end; `okd eval` of the saved checkpoint must print the same
figures the training run logged for its last epoch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from datasets_helpers import cifar_split, py2_pickle, write_cifar100, write_imagenet_tree
from okd.cli.main import main
from okd.data.augment import CIFAR100_MEAN, CIFAR100_STD
from okd.engine.checkpoint import load_checkpoint, save_checkpoint
from okd.methods import build_method

N_TRAIN, N_TEST = 40, 24


def _last_test_record(out: Path) -> dict:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1]
    return json.loads(lines[-1])["test"]


def _eval_json(checkpoint: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> dict:
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(checkpoint), "--device", "cpu", "--format", "json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _assert_eval_matches_run(out: Path, result: dict, heads: set[str]) -> None:
    logged = _last_test_record(out)
    assert set(result["errors"]) == set(logged) == heads
    for head, figures in logged.items():
        assert result["errors"][head]["top1"] == pytest.approx(figures["top1"], abs=1e-9), head
        assert result["errors"][head]["top5"] == pytest.approx(figures["top5"], abs=1e-9), head
    assert result["epoch"] == 1


def _torchvision_test_images(folder_parent: Path, monkeypatch: pytest.MonkeyPatch) -> torch.Tensor:
    """The test split as torchvision reads and normalises it: independent of okd's reader and loader."""
    import torchvision
    import torchvision.datasets.cifar as tv_cifar
    from torchvision import transforms

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # tiny files, other MD5s
    to_tensor = transforms.Compose([transforms.ToTensor(), transforms.Normalize(CIFAR100_MEAN, CIFAR100_STD)])
    reference = torchvision.datasets.CIFAR100(str(folder_parent), train=False, download=False, transform=to_tensor)
    return torch.stack([reference[i][0] for i in range(len(reference))])


def _calibrated_copy(checkpoint: Path, images: torch.Tensor, target: Path) -> torch.Tensor:
    """Save ``checkpoint`` with BN statistics of ``images`` and a centred classifier; return the
    deployed peer's predictions.

    After one step every image gets the same class (BN running statistics still those of the
    initialisation, a large common feature component), which would make a check of per-image
    predictions powerless.
    """
    state = load_checkpoint(checkpoint)
    cfg = state["config"]
    method = build_method(cfg["method"], cfg["arch"], 100, cfg["num_peers"])
    method.load_state_dict(state["model"])
    for module in method.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative average: the statistics of exactly these images
    peer = method.deployed_peer
    fc = list(method.cohort.branches[peer].values())[-1]
    with torch.no_grad():
        method.train()(images)
        features = method.eval()(images).features[peer]
        fc.bias -= fc.weight @ features.mean(0)  # centre the logits: pooled ReLU features share a large mean
        predicted = method(images).logits[peer].argmax(1)
    save_checkpoint(target, {**{k: v for k, v in state.items() if k != "format"}, "model": method.state_dict()})
    return predicted


@pytest.mark.parametrize(
    "layout, method",
    [("folder", "baseline"), ("parent", "baseline"), ("archive", "dml")],
)
def test_cifar100_official_layout_trains_and_evals(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, layout: str, method: str
) -> None:
    root = tmp_path / "data"
    written = write_cifar100(root, N_TRAIN, N_TEST, archive=layout == "archive", folder=layout != "archive")
    data = {"folder": written, "parent": root, "archive": written}[layout]
    assert layout != "archive" or written.name == "cifar-100-python.tar.gz"
    out = tmp_path / "run"
    args = ["train", "--method", method, "--arch", "resnet32", "--dataset", "cifar100", "--data", str(data),
            "--epochs", "1", "--batch-size", "8", "--eval-batch-size", str(N_TEST), "--limit-batches", "1",
            "--device", "cpu", "--quiet", "--out", str(out)]
    if method == "dml":
        args += ["--num-peers", "2"]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "cifar100" and summary["finished"]
    assert summary["params"]["deployed"] == 472_756  # 100 classes: read from the files' fine labels
    state = load_checkpoint(out / "last.pt")
    assert state["config"]["dataset"] == "cifar100" and state["config"]["data"] == str(data)

    heads = {"peer0", "peer_mean", "deployed", "ensemble"} | ({"peer1"} if method == "dml" else set())
    result = _eval_json(out / "best.pt", capsys)
    assert result["dataset"] == "cifar100" and result["method"] == method
    _assert_eval_matches_run(out, result, heads)
    if layout == "folder":
        # Independent of okd's reader and eval loader: relabel the test split so that torchvision's
        # pipeline would score exactly half of it right, then `okd eval --data` must say 50 %.
        relabelled = tmp_path / "relabelled" / "cifar-100-python"
        relabelled.mkdir(parents=True)
        for name in ("train", "meta"):
            (relabelled / name).write_bytes((written / name).read_bytes())
        test = cifar_split(N_TEST, 1, "testing")
        coarse = np.random.RandomState(5).randint(0, 256, size=(N_TEST, 3, 4, 4)).astype(np.uint8)
        test["data"] = np.ascontiguousarray(coarse.repeat(8, 2).repeat(8, 3).reshape(N_TEST, 3072))  # varied images
        (relabelled / "test").write_bytes(py2_pickle(test))
        calibrated = tmp_path / "calibrated.pt"
        predicted = _calibrated_copy(out / "best.pt", _torchvision_test_images(relabelled.parent, monkeypatch), calibrated)
        assert len(set(predicted.tolist())) >= 4  # per-image predictions, not one class for all
        test["fine_labels"] = [int(p) if i % 2 == 0 else (int(p) + 1) % 100 for i, p in enumerate(predicted)]
        (relabelled / "test").write_bytes(py2_pickle(test))
        again = _eval_json(calibrated, capsys, "--data", str(relabelled))
        assert again["errors"]["deployed"]["top1"] == pytest.approx(50.0)
    # An error is a multiple of 1/24 of the test set: eval saw the whole (one-batch) test split.
    for figures in result["errors"].values():
        assert (figures["top1"] * N_TEST / 100) == pytest.approx(round(figures["top1"] * N_TEST / 100), abs=1e-6)


def test_cifar100_eval_with_moved_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`okd eval --data` finds the data set where it lives now; the figures stay those of the run."""
    first = write_cifar100(tmp_path / "a", N_TRAIN, N_TEST)
    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar100", "--data", str(first), "--epochs", "1", "--batch-size", "8",
                 "--eval-batch-size", str(N_TEST), "--limit-batches", "1", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    moved = tmp_path / "b"
    first.parent.rename(moved)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu"]) == 2
    assert "Traceback" not in capsys.readouterr().err
    result = _eval_json(out / "last.pt", capsys, "--data", str(moved))
    _assert_eval_matches_run(out, result, {"peer0", "peer_mean", "deployed", "ensemble"})


def test_imagenet_tree_trains_and_evals_resnet34(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The ImageNet path (ImageFolder + reference transforms at 224 px) with resnet34.

    In-process loading (--workers 0): worker processes are tested in test_data_imagenet.py and
    would add seconds of start-up here.
    """
    tree = write_imagenet_tree(tmp_path / "imagenet", classes=3, per_class=2, size=24, val_per_class=1)
    out = tmp_path / "run"
    assert main(["train", "--arch", "resnet34", "--dataset", "imagenet", "--data", str(tree), "--epochs", "1",
                 "--batch-size", "2", "--eval-batch-size", "3", "--limit-batches", "1", "--workers", "0",
                 "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["dataset"] == "imagenet" and summary["arch"] == "resnet34" and summary["finished"]
    assert summary["params"]["deployed"] == 21_797_672 - 997 * 513  # 3 class folders: Linear(512, 3)
    result = _eval_json(out / "best.pt", capsys, "--batch-size", "3")
    assert result["dataset"] == "imagenet" and result["arch"] == "resnet34"
    _assert_eval_matches_run(out, result, {"peer0", "peer_mean", "deployed", "ensemble"})
    for figures in result["errors"].values():  # 3 val images, one per class
        assert any(figures["top1"] == pytest.approx(v) for v in (0.0, 100 / 3, 200 / 3, 100.0)), figures
