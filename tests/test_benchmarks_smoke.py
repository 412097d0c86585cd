"""The benchmark scripts start, reject bad input with one line and exit 2, and write what they claim.

Fast checks only (no timing is asserted): --help, the error paths, a tiny data-pipeline run and the
synthetic CIFAR-100 that benchmarks/original_throughput.py feeds the original code.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import data_pipeline  # noqa: E402
import original_throughput  # noqa: E402
import train_throughput  # noqa: E402


def _exit_code(main, argv: list[str]) -> int:
    with pytest.raises(SystemExit) as info:
        main(argv)
    return info.value.code


@pytest.mark.parametrize("module", [train_throughput, data_pipeline, original_throughput])
def test_help(module, capsys) -> None:
    assert _exit_code(module.main, ["--help"]) == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--archs", "nope"], "unknown backbone 'nope'"),
    (["--device", "bogus"], "--device must be cpu, cuda or cuda:N"),
    (["--steps", "0"], "--steps must be >= 1"),
])
def test_train_throughput_bad_input_is_one_line_exit_2(argv, message, capsys) -> None:
    assert _exit_code(train_throughput.main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("train_throughput.py: error: ") and message in err[0]


def test_train_throughput_cuda_without_gpu(capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert _exit_code(train_throughput.main, ["--device", "cuda"]) == 2
    assert "no CUDA device is available" in capsys.readouterr().err


def test_original_throughput_rejects_a_folder_that_is_not_the_clone(tmp_path, capsys) -> None:
    assert _exit_code(original_throughput.main, ["--original-repo", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a clone of winycg/MCL-OKD" in err[0] and "main_cifar_mcl_okd.py" in err[0]


def test_original_throughput_needs_balanced_classes(tmp_path, capsys) -> None:
    for name in ["main_cifar_baseline.py", "models/__init__.py", "utils.py"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("")
    argv = ["--original-repo", str(tmp_path), "--methods", "baseline", "--num-train", "150"]
    assert _exit_code(original_throughput.main, argv) == 2
    assert "multiple of 100" in capsys.readouterr().err


def test_synthetic_cifar100_reads_with_torchvision_balanced(tmp_path, monkeypatch) -> None:
    import numpy as np
    import torchvision.datasets.cifar as cifar

    original_throughput.write_synthetic_cifar100(tmp_path, 300, 100)
    monkeypatch.setattr(cifar, "check_integrity", lambda fpath, md5=None: Path(fpath).is_file())
    train = cifar.CIFAR100(str(tmp_path), train=True)
    assert train.data.shape == (300, 32, 32, 3) and len(train.classes) == 100
    assert np.bincount(train.targets, minlength=100).tolist() == [3] * 100
    assert len(cifar.CIFAR100(str(tmp_path), train=False)) == 100


def test_data_pipeline_records_threads_and_load(tmp_path, capsys) -> None:
    out = tmp_path / "dp.json"
    data_pipeline.main(["--steps", "2", "--warmup", "1", "--num-images", "256", "--batch-size", "16", "--pil-workers", "0",
                        "--threads", "1", "--json", str(out)])
    report = json.loads(out.read_text())
    assert report["torch_threads"] == 1 and "load_average_1min_after" in report
    assert [r["images"] for r in report["results"]] == [32, 32]
    assert all("load_average_1min_before" in r and r["cpu_busy_before"] is None for r in report["results"])
    table = capsys.readouterr().out
    assert "| torch threads | 1-min load avg before |" in table


def test_timm_dml_runs_every_case_and_rejects_bad_input(tmp_path: Path, capsys) -> None:
    import timm_dml

    out = tmp_path / "timm.json"
    result = timm_dml.main(["--model", "test_resnet", "--batch-size", "4", "--image-size", "16", "--steps", "1",
                            "--warmup", "0", "--json", str(out)])
    assert json.loads(out.read_text()) == result
    cases = result["cases"]
    assert [c["networks"] for c in cases.values()] == [2, 2, 4, 4]
    assert all(c["img_s"] > 0 and c["network_img_s"] == pytest.approx(c["img_s"] * c["networks"]) for c in cases.values())
    assert "| plain loop, 2 networks | 2 |" in capsys.readouterr().out
    with pytest.raises(Exception, match="unknown timm model 'nope'"):
        timm_dml.main(["--model", "nope"])
