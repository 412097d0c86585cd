"""`okd train --method M --arch A` for every method x CIFAR backbone, through the CLI.

One step and one evaluation batch of tiny synthetic data per run (8x8 images; VGG-16 needs 32x32
for its five pools), two peers (three for CL-ILR once, an odd tree). Every run must finish, log
every head (each peer, peer mean, deployed, ensemble) and build the cohort the method asks for.
A representative subset runs by default: each method on resnet32 and each backbone at least once;
the rest is marked slow (CI runs it too; the whole file takes well under a minute on 2 cores).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from okd.cli.main import main
from okd.methods import build_method
from okd.models import Cohort, count_params, create_backbone

METHODS = ("baseline", "dml", "cl_ilr", "one", "okddip", "mcl_okd", "kdcl", "pcl", "mcl", "lmcl")
BACKBONES = ("resnet32", "resnet110", "densenet40_12", "vgg16", "hcgnet_a1")
CLASSES, FEAT_DIM = 3, 128
PEERS = {method: 1 if method == "baseline" else 2 for method in METHODS}
FAST = {
    *((method, "resnet32", PEERS[method]) for method in METHODS),
    ("okddip", "resnet110", 2),
    ("cl_ilr", "densenet40_12", 3),
    ("dml", "vgg16", 2),
    ("mcl_okd", "hcgnet_a1", 2),
    ("kdcl", "densenet40_12", 2),
    ("pcl", "hcgnet_a1", 2),
    ("mcl", "resnet110", 2),
}
SLOW = {(method, arch, PEERS[method]) for method in METHODS for arch in BACKBONES if (method, arch, 3) not in FAST} - FAST


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add spinning (conftest.py)


def expected_training_params(method: str, arch: str, num_peers: int) -> int:
    """The cohort with its heads the method builds, from the cohort alone plus each method's heads:
    MCL-OKD: DML's cohort + one Linear(d, 128) per peer; KDCL: independent peers; PCL: (ONE's late-shared
    cohort + the fused Linear(N*d, C)) twice, students and their frozen EMA copy; MCL: independent peers
    for 2 (early-shared otherwise) + a Linear(d,128)-ReLU-Linear(128,128) head per peer; L-MCL: independent
    peers, each with fresh copies of its stages from each branch point (early, late) on, and per head
    (H = branch points + 1) MCL's embedding head and a Linear(d, 128) of the weight network, plus a
    Linear(H*d, d)-ReLU-Linear(d, H) aggregator per peer."""
    with torch.device("meta"):
        d = create_backbone(arch, CLASSES).feature_dim
        cohort = lambda share: count_params(Cohort(lambda: create_backbone(arch, CLASSES), num_peers, share))  # noqa: E731
        if method == "mcl_okd":
            return cohort("early") + num_peers * (d * FEAT_DIM + FEAT_DIM)
        if method == "kdcl":
            return cohort("none")
        if method == "pcl":
            return 2 * (cohort("late") + num_peers * d * CLASSES + CLASSES)
        if method == "mcl":
            head = d * FEAT_DIM + FEAT_DIM + FEAT_DIM * FEAT_DIM + FEAT_DIM
            return cohort("none" if num_peers == 2 else "early") + num_peers * head
        if method == "lmcl":
            backbone = create_backbone(arch, CLASSES)
            names, points = backbone.stage_names, dict.fromkeys([backbone.spec.early, backbone.spec.late])
            aux = sum(count_params(backbone.stage(s)) for p in points for s in names[names.index(p):])
            heads = len(points) + 1
            head = d * FEAT_DIM + FEAT_DIM + FEAT_DIM * FEAT_DIM + FEAT_DIM
            gate = heads * d * d + d + d * heads + heads
            return cohort("none") + num_peers * (aux + heads * (head + d * 128 + 128) + gate)
        return count_params(build_method(method, arch, CLASSES, num_peers))


def train(out: Path, arch: str, *extra: str) -> dict:
    size = "32" if "vgg16" in arch else "8"
    args = ["train", "--arch", arch, "--dataset", "synthetic", "--synthetic-train", "8", "--synthetic-test", "4",
            "--synthetic-classes", str(CLASSES), "--synthetic-size", size, "--batch-size", "4", "--eval-batch-size", "4",
            "--epochs", "1", "--limit-batches", "1", "--nce-k", "4", "--device", "cpu", "--quiet", "--out", str(out), *extra]
    assert main(args) == 0, args
    return json.loads((out / "summary.json").read_text())


def check_run(out: Path, summary: dict, method: str, arch: str, num_peers: int) -> None:
    assert summary["finished"] and (summary["method"], summary["arch"], summary["num_peers"]) == (method, arch, num_peers)
    record = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert math.isfinite(record["train"]["total"]) and record["train"]["total"] > 0
    heads = {f"peer{i}" for i in range(num_peers)} | {"peer_mean", "deployed", "ensemble"}
    if method == "pcl":  # its EMA peers (the deployed networks) and fused heads
        heads |= {f"ema{i}" for i in range(num_peers)} | {"fused", "ema_fused"}
    if method == "lmcl":  # each peer's auxiliary heads (two branch points on every CIFAR backbone)
        heads |= {f"peer{i}_aux{k}" for i in range(num_peers) for k in range(2)}
    assert set(record["test"]) == heads
    assert all(0 <= e["top1"] <= 100 for e in record["test"].values())
    assert summary["params"]["deployed"] == count_params(create_backbone(arch, CLASSES))
    assert summary["params"]["training"] == expected_training_params(method, arch, num_peers)
    assert (out / "last.pt").stat().st_size > 0 and (out / "best.pt").stat().st_size > 0


def run_case(tmp_path: Path, method: str, arch: str, num_peers: int) -> None:
    out = tmp_path / f"{method}_{arch}"
    extra = ["--lmcl-meta-steps", "1"] if method == "lmcl" else []  # one virtual step: the meta step stays cheap
    summary = train(out, arch, "--method", method, "--num-peers", str(num_peers), *extra)
    check_run(out, summary, method, arch, num_peers)


@pytest.mark.parametrize("method, arch, num_peers", sorted(FAST))
def test_train_every_method_and_backbone(tmp_path: Path, method: str, arch: str, num_peers: int) -> None:
    run_case(tmp_path, method, arch, num_peers)


@pytest.mark.slow
@pytest.mark.parametrize("method, arch, num_peers", sorted(SLOW))
def test_train_every_method_and_backbone_rest(tmp_path: Path, method: str, arch: str, num_peers: int) -> None:
    run_case(tmp_path, method, arch, num_peers)


def test_matrix_covers_every_method_and_backbone() -> None:
    assert {(m, a) for m, a, _ in FAST | SLOW} == {(m, a) for m in METHODS for a in BACKBONES}


@pytest.mark.parametrize("alias, method, arch", [("okddip_densenetd40k12", "okddip", "densenet40_12"), ("mcl_okd_vgg16", "mcl_okd", "vgg16")])
def test_reference_arch_spellings_select_method_and_backbone(tmp_path: Path, capsys: pytest.CaptureFixture[str], alias: str, method: str, arch: str) -> None:
    out = tmp_path / "run"
    summary = train(out, alias, "--num-peers", "2")
    check_run(out, summary, method, arch, 2)
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["method"], result["arch"]) == (method, arch)
    assert result["errors"] == json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test"]
