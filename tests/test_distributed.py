"""torchrun with 2 CPU processes (gloo) computes what one process computes, and fails fast.

One torchrun launch (tests/dist_worker.py) runs every distributed job inside one process group;
the single-process references run here. With --sync-bn, 2 ranks x 4 samples see exactly the
single process's batches of 8 (the loader splits each global batch, BatchNorm uses the global
batch), so weights, BatchNorm statistics, MCL-OKD memory banks and test errors agree up to
rounding. Those comparisons train in float64 (dist_worker.float64_mode): in float32 these tiny
noisy runs are chaotic, and two single-process runs whose initial weights differ by 1e-7 are
1e-1 apart after 8 steps. The float32 path is covered by the BatchNorm check, the resume test
(DDP against DDP, bit for bit) and the failure test. MCL-OKD's negatives are drawn per rank from the per-rank RNG, so single vs DDP
contrastive losses differ by sampling: the single-vs-DDP comparison runs MCL-OKD with --beta 0
(its banks are still updated from the live embeddings, which depend on the weights), and the
full method is checked against itself (ranks agree; resume equals an uninterrupted DDP run).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import torch
from dist_worker import float64_mode

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.distributed import collective_timeout
from okd.errors import OKDUserError

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
WORLD = 2
TINY = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "21", "--synthetic-classes", "4",
        "--batch-size", "8", "--eval-batch-size", "4", "--device", "cpu"]  # 21 test images: shards of 11 and 10
MCL = ["--method", "mcl_okd", "--num-peers", "2", "--nce-k", "8"]
SINGLE_VS_DDP = {  # name: options; each compared single process vs 2 ranks with --sync-bn
    "baseline": ["--epochs", "2"],
    "mcl_okd": [*MCL, "--beta", "0", "--epochs", "1"],
    "dml": ["--method", "dml", "--num-peers", "2", "--epochs", "1"],
    "cl_ilr": ["--method", "cl_ilr", "--num-peers", "2", "--epochs", "1"],
    "one": ["--method", "one", "--num-peers", "2", "--epochs", "1"],
    "okddip": ["--method", "okddip", "--num-peers", "3", "--epochs", "1"],
}
ATOL = 1e-5


def torchrun(*args: str, env: dict[str, str] | None = None, **kwargs: Any) -> subprocess.Popen:
    """``python -m torch.distributed.run --standalone`` (it picks a free port) with 2 CPU workers."""
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "OKD_DIST_TIMEOUT_S": "60", **(env or {})}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(WORLD), *args]
    return subprocess.Popen(command, cwd=REPO, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def dumps(path: Path) -> list[dict[str, Any]]:
    return [torch.load(path / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in zip(a.values(), (b[k] for k in a)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Single-process references here, then every distributed job in one torchrun launch."""
    base = tmp_path_factory.mktemp("dist")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # like the torchrun workers (and far faster on a busy 2-core machine)
    try:
        with float64_mode():
            for name, options in SINGLE_VS_DDP.items():
                assert main(["train", *TINY, *options, "--quiet", "--out", str(base / "single" / name)]) == 0
    finally:
        torch.set_num_threads(threads)
    jobs: list[dict[str, Any]] = [{"kind": "bn", "dump": str(base / "dump" / "bn")}]
    for name, options in SINGLE_VS_DDP.items():
        quiet = [] if name == "baseline" else ["--quiet"]  # the baseline also checks what each rank prints
        argv = [*TINY, *options, "--sync-bn", *quiet, "--out", str(base / "ddp" / name)]
        jobs.append({"kind": "train", "argv": argv, "dump": str(base / "dump" / name), "float64": True})
    # full MCL-OKD (contrastive term on), without --sync-bn: uninterrupted vs stopped after 1 epoch + resumed
    full = [*TINY, *MCL, "--quiet"]
    jobs.append({"kind": "train", "argv": [*full, "--epochs", "2", "--out", str(base / "ddp" / "mcl_full")], "dump": str(base / "dump" / "mcl_full")})
    jobs.append({"kind": "train", "argv": [*full, "--epochs", "1", "--out", str(base / "ddp" / "mcl_split")], "dump": str(base / "dump" / "mcl_split1")})
    jobs.append({"kind": "train", "argv": [*full, "--epochs", "2", "--resume", "--out", str(base / "ddp" / "mcl_split")], "dump": str(base / "dump" / "mcl_split")})
    jobs.append({"kind": "eval", "checkpoint": str(base / "single" / "baseline" / "last.pt"), "eval_batch_size": 4, "dump": str(base / "dump" / "eval")})
    (base / "jobs.json").write_text(json.dumps(jobs))
    proc = torchrun(str(WORKER), str(base / "jobs.json"))
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
        pytest.fail(f"the distributed jobs hung:\n{stderr[-3000:]}")
    assert proc.returncode == 0, f"torchrun failed:\n{stdout[-2000:]}\n{stderr[-4000:]}"
    return base


def test_sync_batchnorm_equals_batchnorm_on_the_global_batch(runs: Path) -> None:
    # inputs of mean 100 split 7 + 4 rows; outputs, input/weight gradients and running stats agree
    for dump in dumps(runs / "dump" / "bn"):
        diffs = dump["diffs"]
        assert {"2d_out_1", "0d_grad_input_1", "2d_running_var", "0d_eval_out"} <= diffs.keys()
        assert max(diffs.values()) < 1e-4, {k: v for k, v in diffs.items() if v >= 1e-4}
        assert diffs["2d_batches_tracked"] == 0 and diffs["0d_batches_tracked"] == 0


@pytest.mark.parametrize("name", list(SINGLE_VS_DDP))
def test_ddp_with_sync_bn_equals_one_process(runs: Path, name: str) -> None:
    single = load_checkpoint(runs / "single" / name / "last.pt")
    ddp = load_checkpoint(runs / "ddp" / name / "last.pt")
    assert max_diff(single["model"], ddp["model"]) < ATOL  # weights, BN statistics, MCL-OKD memory banks
    per_rank = dumps(runs / "dump" / name)
    for dump in per_rank:
        assert dump["rc"] == 0 and dump["optimiser_sees_model"]
        assert dump["bn_types"] == ["SyncBatchNorm"]  # every BatchNorm converted, ONE's gate BN1d included
    assert max_diff(per_rank[0]["state"], per_rank[1]["state"]) == 0  # the ranks hold identical models
    assert single["model"].keys() == ddp["model"].keys()  # checkpoints load into plain backbones
    # evaluation over shards of 11 and 10 images: exactly the single process's errors
    single_records, ddp_records = records(runs / "single" / name), records(runs / "ddp" / name)
    assert [r["test"] for r in ddp_records] == [r["test"] for r in single_records]
    for a, b in zip(single_records, ddp_records):  # logged losses describe the global batch
        assert b["train"] == pytest.approx(a["train"], rel=1e-4, abs=1e-6)


def test_mcl_okd_banks_are_gathered_from_every_rank(runs: Path) -> None:
    for name in ("mcl_okd", "mcl_full", "mcl_split"):  # identical on both ranks, bit for bit
        banks = [dump["state"]["memory"] for dump in dumps(runs / "dump" / name)]
        assert torch.equal(banks[0], banks[1]), name
    single = load_checkpoint(runs / "single" / "mcl_okd" / "last.pt")["model"]["memory"]
    ddp = dumps(runs / "dump" / "mcl_okd")[1]["state"]["memory"]  # rank 1's own copy
    assert float((ddp - single).abs().max()) < ATOL


def test_evaluation_shards_cover_the_test_set_exactly(runs: Path) -> None:
    per_rank = dumps(runs / "dump" / "eval")
    assert [d["shard"] for d in per_rank] == [[0, 11], [11, 21]]
    assert [d["batches"] for d in per_rank] == [6, 5]  # ranks need not run the same number of batches
    assert per_rank[0]["errors"] == per_rank[1]["errors"] == records(runs / "single" / "baseline")[-1]["test"]


def test_resume_under_torchrun_equals_an_uninterrupted_run(runs: Path) -> None:
    full = load_checkpoint(runs / "ddp" / "mcl_full" / "last.pt")
    split = load_checkpoint(runs / "ddp" / "mcl_split" / "last.pt")
    assert full["epoch"] == split["epoch"] == 2
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    momentum = lambda s: [v["momentum_buffer"] for v in s["optimizer"]["state"].values()]  # noqa: E731
    assert all(torch.equal(a, b) for a, b in zip(momentum(full), momentum(split)))
    key = lambda r: (r["epoch"], r["lr"], r["train"], r["test"])  # noqa: E731
    assert [key(r) for r in records(runs / "ddp" / "mcl_split")] == [key(r) for r in records(runs / "ddp" / "mcl_full")]
    for name in ("mcl_full", "mcl_split"):  # without --sync-bn: rank 0's BN statistics are shared before evaluation
        per_rank = dumps(runs / "dump" / name)
        assert per_rank[0]["bn_types"] == ["BatchNorm2d"]
        assert max_diff(per_rank[0]["state"], per_rank[1]["state"]) == 0


def test_only_rank_zero_writes(runs: Path) -> None:
    for name in SINGLE_VS_DDP:
        single, ddp = runs / "single" / name, runs / "ddp" / name
        assert sorted(p.name for p in ddp.iterdir()) == sorted(p.name for p in single.iterdir()), name
        single_log, ddp_log = (single / "train.log").read_text().splitlines(), (ddp / "train.log").read_text().splitlines()
        assert [line.split()[:2] for line in ddp_log] == [line.split()[:2] for line in single_log], name
        assert len(records(ddp)) == len(records(single))
        assert json.loads((ddp / "summary.json").read_text())["finished"]
    rank0, rank1 = dumps(runs / "dump" / "baseline")
    assert rank1["stdout"] == "" and rank1["stderr"] == ""
    lines = rank0["stdout"].splitlines()
    assert len(lines) == 4 and lines[0].startswith("okd train: baseline") and " x2; " in lines[0]
    assert [line.split()[0] for line in lines[1:]] == ["epoch", "epoch", "done:"]


def _rank_pid(marker: str, rank: int) -> int | None:
    """The pid of the torchrun worker of ``rank`` in the launch tagged with ``marker``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"OKD_TEST_LAUNCH={marker}".encode() in env and f"RANK={rank}".encode() in env:
            return int(entry.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the worker's pid through /proc")
def test_a_killed_rank_stops_the_run_within_seconds(tmp_path: Path) -> None:
    out = tmp_path / "run"
    marker = uuid.uuid4().hex
    proc = torchrun("-m", "okd", "train", *TINY, "--epochs", "200", "--quiet", "--out", str(out),
                    env={"OKD_TEST_LAUNCH": marker, "OKD_DIST_TIMEOUT_S": "30"})
    try:
        deadline = time.monotonic() + 120
        while not ((out / "metrics.jsonl").exists() and (out / "metrics.jsonl").read_text()):  # training is under way
            assert proc.poll() is None, proc.communicate()[1][-3000:]
            assert time.monotonic() < deadline, "the run did not start"
            time.sleep(0.2)
        pid = _rank_pid(marker, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        _, stderr = proc.communicate(timeout=90)
        elapsed = time.monotonic() - killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert elapsed < 60, f"the surviving rank took {elapsed:.0f} s to stop"
    assert "Signal 9 (SIGKILL)" in stderr or "exitcode  : -9" in stderr, stderr[-3000:]
    assert len(records(out)) < 200 and not json.loads((out / "summary.json").read_text())["finished"]
    print(f"surviving rank stopped {elapsed:.1f} s after rank 1 was killed")


def test_collective_timeout_can_be_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OKD_DIST_TIMEOUT_S", raising=False)
    assert collective_timeout().total_seconds() == 1800
    monkeypatch.setenv("OKD_DIST_TIMEOUT_S", "12.5")
    assert collective_timeout().total_seconds() == 12.5
    for bad in ("soon", "0"):
        monkeypatch.setenv("OKD_DIST_TIMEOUT_S", bad)
        with pytest.raises(OKDUserError, match="OKD_DIST_TIMEOUT_S"):
            collective_timeout()
