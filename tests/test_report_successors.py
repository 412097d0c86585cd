"""The successors' table: KDCL, PCL and MCL runs in `okd report`, their published cells, `okd reproduce`."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from okd.cli.main import build_parser, main
from okd.report.paper import paper_figures, published_peers
from okd.report.reproduce import Job

# Published top-1 accuracies (%), transcribed from the sources paper_results.json names:
# PCL's paper table (KDCL, PCL) and winycg/MCL's README (MCL x4).
PUBLISHED_ACCURACY = {
    ("densenet40_12", "kdcl"): 72.52, ("resnet32", "kdcl"): 73.76, ("vgg16", "kdcl"): 75.67, ("resnet110", "kdcl"): 78.28,
    ("densenet40_12", "pcl"): 73.09, ("resnet32", "pcl"): 74.14, ("vgg16", "pcl"): 76.89, ("resnet110", "pcl"): 79.98,
    ("resnet32", "mcl"): 74.04, ("resnet110", "mcl"): 78.82, ("hcgnet_a1", "mcl"): 79.50,
}
# winycg/L-MCL's README (two networks) and SwitOKD's Table 4 (the student; its README's results image).
# The rows after hcgnet_a1 need the CIFAR zoo's backbones: reproduce lists them once those are registered.
LATER_ACCURACY = {
    ("resnet32", "lmcl"): 75.82, ("resnet110", "lmcl"): 79.48, ("hcgnet_a1", "lmcl"): 81.66,
    ("resnet56", "lmcl"): 77.51, ("wrn_16_2", "lmcl"): 77.31, ("wrn_40_2", "lmcl"): 80.96,
    ("shufflenetv2_05x", "lmcl"): 72.61, ("shufflenetv2_1x", "lmcl"): 77.25, ("hcgnet_a2", "lmcl"): 83.14,
    ("wrn_16_2,mobile_half", "switokd"): 67.24,
}
TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--epochs", "1", "--device", "cpu", "--quiet"]


def test_published_cells_are_the_error_of_the_published_accuracy() -> None:
    for arch in ("densenet40_12", "resnet32", "vgg16", "resnet110", "hcgnet_a1"):
        for method in ("kdcl", "pcl", "mcl"):
            single, ens = paper_figures("successors", arch, method)
            accuracy = PUBLISHED_ACCURACY.get((arch, method))
            assert ens is None
            assert single == (None if accuracy is None else pytest.approx(100 - accuracy, abs=1e-9)), (arch, method)
    assert (published_peers("kdcl"), published_peers("pcl"), published_peers("mcl")) == (3, 3, 4)


def registered(arch: str) -> bool:
    from okd.errors import OKDUserError
    from okd.models import parse_arch

    try:
        parse_arch(arch)
    except OKDUserError:
        return False
    return True


def test_later_successors_cells_are_the_error_of_their_published_accuracy() -> None:
    for (arch, method), accuracy in LATER_ACCURACY.items():
        single, ens = paper_figures("successors", arch, method)
        assert ens is None and single == pytest.approx(100 - accuracy, abs=1e-9), (arch, method)
    assert (published_peers("lmcl"), published_peers("switokd"), published_peers("okdph")) == (2, 2, None)
    from okd.report.paper import paper_results

    teacher = paper_results()["successors"]["wrn_16_2,mobile_half"]["switokd"]
    assert (teacher["teacher"], teacher["std"], teacher["teacher_std"]) == (pytest.approx(100 - 73.90), 0.04, 0.40)


def test_reproduce_successors_prints_every_published_cell_with_its_peer_count(capsys: pytest.CaptureFixture[str]) -> None:
    from okd.cli.train import config_from_args
    from okd.engine.recipe import resolve_config

    assert main(["reproduce", "--table", "successors", "--seeds", "0", "1", "--data", "/data/c100"]) == 0
    lines = capsys.readouterr().out.splitlines()
    runnable = {**PUBLISHED_ACCURACY, **{cell: v for cell, v in LATER_ACCURACY.items() if registered(cell[0])}}
    rows = {a for a, _ in runnable}
    assert lines[0].startswith(f"# {2 * (len(runnable) + len(rows))} runs for table successors") and "--table successors" in lines[0]
    parser = build_parser()
    cells = set()
    for command in lines[1:]:
        cfg = resolve_config(config_from_args(parser.parse_args(shlex.split(command)[1:])))
        cells.add((cfg.arch, cfg.method, cfg.seed))
        expected = len(cfg.arch.split(",")) if cfg.method == "baseline" else published_peers(cfg.method)
        assert cfg.num_peers == expected and cfg.dataset == "cifar100"
    assert {(a, m) for a, m, _ in cells} == set(runnable) | {(a, "baseline") for a in rows}
    assert main(["reproduce", "--table", "successors", "--method", "one"]) == 2
    assert "not in table successors" in capsys.readouterr().err


def test_report_shows_the_successors_table_from_real_runs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "runs"
    for method, peers in (("baseline", 1), ("kdcl", 2), ("pcl", 2), ("mcl", 2)):
        assert main(Job(method, "resnet32", "synthetic", 0, num_peers=peers).train_args(root, None, TINY)) == 0
    capsys.readouterr()
    assert main(["report", str(root), "--format", "json", "--arch", "resnet32"]) == 0
    tables = json.loads(capsys.readouterr().out)["tables"]
    successors = next(t for t in tables if t["table"] == "successors")
    cells = next(r for r in successors["rows"] if r["arch"] == "resnet32")["cells"]
    for method in ("kdcl", "pcl", "mcl"):
        summary = json.loads((Job(method, "resnet32", "synthetic", 0).out(root) / "summary.json").read_text())
        assert cells[method]["top1_mean"] == summary["last"]["deployed"]["top1"]
        assert cells[method]["ens_top1_mean"] == summary["last"]["ensemble"]["top1"] and cells[method]["n"] == 1
    assert main(["report", str(root), "--table", "successors", "--arch", "resnet32", "--paper"]) == 0
    out = capsys.readouterr().out
    assert "Methods after MCL-OKD" in out and "PCL (Ens) paper" in out and "not comparable" in out
