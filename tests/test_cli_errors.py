"""Robustness of `okd train` / `okd eval`: bad input, malformed checkpoints and stray files give one
clear line and exit code 2 (never a traceback), a refused run leaves no folder behind, and a run
stopped under DDP stops on every rank together."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint, save_checkpoint
from okd.engine.rundir import read_metrics

TINY = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8", "--quiet", "--device", "cpu"]


def train(out: Path, *extra: str) -> int:
    return main(["train", *TINY, "--out", str(out), *extra])


def one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 1-epoch baseline run (2 steps) to derive checkpoints from."""
    out = tmp_path_factory.mktemp("cli_errors") / "run"
    assert train(out, "--epochs", "1", "--limit-batches", "2") == 0
    return out


def rewrite(src: Path, dst: Path, change) -> Path:
    """A copy of checkpoint ``src`` at ``dst`` with ``change(state)`` applied (still a valid okd file)."""
    state = load_checkpoint(src)
    state.pop("format")
    change(state)
    dst.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dst, state)
    return dst


# -- 1: corrupt images ------------------------------------------------------------------------------
@pytest.mark.parametrize("workers", ["0", "1"])
def test_corrupt_jpeg_names_the_file_and_a_rerun_is_not_blocked(tmp_path: Path, capsys: pytest.CaptureFixture[str], workers: str) -> None:
    from datasets_helpers import write_imagenet_tree

    root = write_imagenet_tree(tmp_path / "imagenet", classes=2, per_class=2, size=16, val_per_class=1)
    bad = sorted((root / "train").rglob("*.JPEG"))[1]
    bad.write_bytes(b"this is not a JPEG")
    argv = ["train", "--dataset", "imagenet", "--data", str(root), "--batch-size", "4", "--eval-batch-size", "2",
            "--epochs", "1", "--workers", workers, "--quiet", "--device", "cpu", "--out", str(tmp_path / "run")]
    for _attempt in range(2):  # the failed run left no folder that blocks the same command
        assert main(argv) == 2
        err = one_line_error(capsys)
        assert f"cannot decode image {bad}" in err and "already holds a run" not in err


def test_run_that_failed_before_its_first_checkpoint_is_replaced(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.yaml").write_text("seed: 5\n")
    (out / "train.log").write_text("okd train: started, then crashed in its first epoch\n")
    assert train(out, "--epochs", "1", "--limit-batches", "1") == 0
    assert "seed: 0" in (out / "config.yaml").read_text() and "crashed" not in (out / "train.log").read_text()


# -- 2: malformed checkpoints -----------------------------------------------------------------------
MALFORMED = {
    "no epoch": (lambda s: s.pop("epoch"), "no 'epoch'"),
    "config not a dict": (lambda s: s.update(config=["resnet32"]), "'config' is a list"),
    "model not a dict": (lambda s: s.update(model=[torch.zeros(2)]), "'model' is a list"),
    "model of non-tensors": (lambda s: s.update(model={"w": 1.0}), "not tensors"),
    "negative epoch": (lambda s: s.update(epoch=-1), "'epoch' is int -1"),
}


@pytest.mark.parametrize("name", sorted(MALFORMED))
def test_malformed_checkpoint_in_eval(tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str], name: str) -> None:
    change, message = MALFORMED[name]
    path = rewrite(trained / "best.pt", tmp_path / "bad.pt", change)
    assert main(["eval", "--checkpoint", str(path), "--device", "cpu"]) == 2
    err = one_line_error(capsys)
    assert "is malformed" in err and message in err


@pytest.mark.parametrize("key, message", [("step", "no 'step'"), ("optimizer", "no 'optimizer'"), ("partial", "'partial' is")])
def test_malformed_last_pt_in_resume(tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str], key: str, message: str) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    rewrite(trained / "last.pt", out / "last.pt", (lambda s: s.update(partial=[1])) if key == "partial" else (lambda s: s.pop(key)))
    assert train(out, "--epochs", "2", "--limit-batches", "2", "--resume") == 2
    err = one_line_error(capsys)
    assert "is malformed" in err and message in err


# -- 3, 4: eval options -----------------------------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--device", "nope"], "--device must be auto, cpu, cuda or cuda:N, got 'nope'"),
    (["--device", "cuda:x"], "--device must be auto, cpu, cuda or cuda:N"),
    (["--limit-batches", "0"], "--limit-batches must be > 0, got 0"),
    (["--limit-batches", "-1"], "--limit-batches must be > 0, got -1"),
    (["--batch-size", "0"], "--batch-size must be > 0, got 0"),
])
def test_bad_eval_options(trained: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    assert main(["eval", "--checkpoint", str(trained / "best.pt"), *args]) == 2
    assert message in one_line_error(capsys)


def test_train_and_eval_share_the_device_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from okd.engine.trainer import resolve_device
    from okd.errors import OKDUserError

    with pytest.raises(OKDUserError, match="--device must be"):
        resolve_device("nope")
    assert train(tmp_path / "run", "--device", "nope") == 2
    assert "--device must be auto, cpu, cuda or cuda:N, got 'nope'" in one_line_error(capsys)
    assert not (tmp_path / "run").exists()


# -- 5: mismatched checkpoints ----------------------------------------------------------------------
@pytest.mark.parametrize("change, message", [
    ({"synthetic_classes": 5}, "size mismatch for cohort."),  # the data now has another class count
    ({"arch": "densenet40_12"}, "Missing key(s) in state_dict: "),  # config and weights disagree on the backbone
])
def test_mismatched_checkpoint_names_the_keys(tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str],
                                              change: dict, message: str) -> None:
    path = rewrite(trained / "best.pt", tmp_path / "other.pt", lambda s: s["config"].update(change))
    assert main(["eval", "--checkpoint", str(path), "--device", "cpu"]) == 2
    err = one_line_error(capsys)
    assert "does not fit" in err and message in err and len(err) < 700, err


def test_resume_from_mismatched_weights_names_the_keys(tmp_path: Path, trained: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    dropped = sorted(load_checkpoint(trained / "last.pt")["model"])[0]
    rewrite(trained / "last.pt", out / "last.pt", lambda s: s["model"].pop(dropped))
    assert train(out, "--epochs", "2", "--limit-batches", "2", "--resume") == 2
    err = one_line_error(capsys)
    assert "does not match this model" in err and f'Missing key(s) in state_dict: "{dropped}"' in err


# -- 6: config checks before any folder exists ------------------------------------------------------
def test_nce_k_beyond_the_negatives_creates_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert train(out, "--method", "mcl_okd", "--num-peers", "2", "--nce-k", "100000") == 2
    assert "nce_k=100000 is larger than the" in one_line_error(capsys)
    assert not out.exists()


def test_batch_not_divisible_by_the_ranks_creates_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    from okd.engine import trainer
    from okd.engine.distributed import DistInfo

    monkeypatch.setattr(trainer.okd_dist, "current", lambda: DistInfo(rank=0, world_size=3))
    out = tmp_path / "run"
    assert train(out) == 2
    assert "not divisible by the 3 processes" in one_line_error(capsys)
    assert not out.exists()


# -- 7: the first non-finite step is still found without a per-step copy ----------------------------
def test_first_non_finite_step_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import okd.methods.baseline as baseline

    original, calls = baseline.Baseline.losses, {"n": 0}

    def poisoned(self, output, batch, epoch):
        losses = original(self, output, batch, epoch)
        calls["n"] += 1
        return {k: v * float("nan") for k, v in losses.items()} if calls["n"] >= 3 else losses

    monkeypatch.setattr(baseline.Baseline, "losses", poisoned)
    assert train(tmp_path / "run", "--epochs", "1") == 2
    assert "non-finite loss at epoch 1, step 2 (term: ce)" in one_line_error(capsys)


# -- 9: temp files of a killed checkpoint write -----------------------------------------------------
def test_resume_deletes_stale_temp_files_only(tmp_path: Path, trained: Path) -> None:
    out = tmp_path / "run"
    shutil.copytree(trained, out)
    stale = [out / ".last.pt.k3j9x_2a.tmp", out / ".best.pt.q0w1e2r3.tmp", out / ".metrics.jsonl.abcdefgh.tmp"]
    kept = [out / "notes.tmp", out / ".mine.txt.abcdefgh.tmp", out / "last.pt.backup"]
    for path in stale + kept:
        path.write_bytes(b"x")
    assert train(out, "--epochs", "2", "--limit-batches", "2", "--resume") == 0
    assert not any(path.exists() for path in stale)
    assert all(path.exists() for path in kept)


# -- 10, 11: --amp on the CPU, --help ---------------------------------------------------------------
def test_amp_on_cpu_is_noted(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert train(out, "--epochs", "1", "--limit-batches", "1", "--amp") == 0
    assert "--amp (bf16 autocast) is CUDA-only; training in float32 on cpu" in (out / "train.log").read_text()


def test_help_lists_the_negative_switches(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    listed = {line.split()[0].rstrip(",") for line in capsys.readouterr().out.splitlines() if line.startswith("  -")}
    assert {"--no-channels-last", "--no-nesterov", "--no-fixed-z", "--synthetic-classes"} <= listed


# -- 8: a signal that reaches one DDP rank stops every rank after the same step ----------------------
WORKER = """
import os, signal, sys
import torch
from okd.cli.main import main
from okd.engine import distributed as okd_dist
import okd.methods.baseline as baseline

torch.set_num_threads(1)
full, split, tiny = sys.argv[1], sys.argv[2], sys.argv[3:]
with okd_dist.process_group("cpu") as info:
    codes = [main(["train", *tiny, "--out", full])]
    original, calls = baseline.Baseline.losses, [0]
    def signalled(self, *args):
        calls[0] += 1
        if info.rank == 1 and calls[0] == 2:  # only rank 1 is told to stop, during step 1 of epoch 1
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, *args)
    baseline.Baseline.losses = signalled
    codes.append(main(["train", *tiny, "--out", split]))
    baseline.Baseline.losses = original
    okd_dist.barrier()
    codes.append(main(["train", *tiny, "--out", split, "--resume"]))
    print(f"rank {info.rank} codes {codes}", flush=True)
"""


def test_sigterm_on_one_ddp_rank_stops_all_and_resumes_exactly(tmp_path: Path) -> None:
    worker = tmp_path / "worker.py"
    worker.write_text(textwrap.dedent(WORKER))
    full, split = tmp_path / "full", tmp_path / "split"
    tiny = [*TINY, "--epochs", "1"]  # 32 images / batch 8 = 4 steps, ranks of 4 images each
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OKD_DIST_TIMEOUT_S": "30",
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parents[1] / "src"), os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(worker), str(full), str(split), *tiny]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    interrupted = 128 + signal.SIGTERM
    assert f"rank 0 codes [0, {interrupted}, 0]" in proc.stdout and f"rank 1 codes [0, {interrupted}, 0]" in proc.stdout
    assert "Resume with: okd train --out" in proc.stdout
    a, b = load_checkpoint(full / "last.pt"), load_checkpoint(split / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    # the epoch loss of the resumed run covers both ranks' steps before the stop, not rank 0's alone
    assert read_metrics(split / "metrics.jsonl")[0]["train"] == pytest.approx(read_metrics(full / "metrics.jsonl")[0]["train"], rel=1e-6)
    assert "interrupted by SIGTERM at epoch 1, step 2" in proc.stdout
