"""torchrun with 2 CPU processes (gloo) computes what one process computes, and fails fast.

One torchrun launch (tests/dist_worker.py) runs every distributed job inside one process group;
the single-process references run here. With --sync-bn, 2 ranks x 4 samples see exactly the
single process's batches of 8 (the loader splits each global batch, BatchNorm uses the global
batch), so weights, BatchNorm statistics, MCL-OKD memory banks and test errors agree up to
rounding. Those comparisons train in float64 (dist_worker.float64_mode): in float32 these tiny
noisy runs are chaotic, and two single-process runs whose initial weights differ by 1e-7 are
1e-1 apart after 8 steps. The float32 path is covered by the BatchNorm check, the resume test
(DDP against DDP, bit for bit) and the failure tests.

MCL-OKD's negatives are drawn per rank from the per-rank RNG, so single vs DDP contrastive losses
differ by sampling: the single-vs-DDP comparison runs MCL-OKD with --beta 0 (its banks are still
updated from the live embeddings, which depend on the weights), and the full method is checked
against itself (the ranks agree; a resumed run equals an uninterrupted one).
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
from torch import nn

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.distributed import collective_timeout
from okd.engine.sync_batchnorm import SyncBatchNorm, convert_sync_batchnorm
from okd.errors import OKDUserError
from okd.methods import build_method

pytestmark = pytest.mark.slow  # two-process end-to-end runs: ~30-60 s for the whole file on 2 cores

REPO = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("dist_worker.py")
WORLD = 2
TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-size", "16", "--synthetic-classes", "4",
        "--synthetic-test", "21", "--batch-size", "8", "--eval-batch-size", "4", "--device", "cpu"]  # shards of 11 and 10
MCL = ["--method", "mcl_okd", "--num-peers", "2", "--nce-k", "8"]
SINGLE_VS_DDP = {  # name: options; each compared single process vs 2 ranks with --sync-bn
    "baseline": ["--epochs", "2"],
    "mcl_okd": [*MCL, "--beta", "0", "--epochs", "1"],
    "dml": ["--method", "dml", "--num-peers", "2", "--epochs", "1"],
    "cl_ilr": ["--method", "cl_ilr", "--num-peers", "2", "--epochs", "1"],
    "one": ["--method", "one", "--num-peers", "2", "--epochs", "1"],
    "okddip": ["--method", "okddip", "--num-peers", "3", "--epochs", "1"],
    "kdcl": ["--method", "kdcl", "--num-peers", "2", "--epochs", "1"],  # one augmented view per peer
    "pcl": ["--method", "pcl", "--num-peers", "2", "--epochs", "1"],  # views, fused head, EMA peers
    # L-MCL without its in-batch contrast (weights 0): auxiliary heads, aggregators, KD, and a meta step
    # per epoch that must roll back exactly (SyncBN statistics included) and leave the weight network alike
    "lmcl": ["--method", "lmcl", "--epochs", "1", "--mcl-vcl", "0", "--mcl-icl", "0", "--mcl-soft-vcl", "0",
             "--mcl-soft-icl", "0", "--lmcl-meta-steps", "1"],
}
# MCL's contrastive terms are in-batch, so 2 ranks x 4 samples compute other terms than 1 x 8: it is
# checked to train under torchrun with its m-per-class batches split pair-preserving, ranks in step.
MCL_DDP = ["--method", "mcl", "--num-peers", "2", "--epochs", "1"]
# the full L-MCL: its weight network learns from each rank's hypergradient, averaged over the ranks
LMCL_DDP = ["--method", "lmcl", "--epochs", "1", "--lmcl-meta-freq", "1", "--lmcl-meta-steps", "1"]
ATOL = 1e-8  # float64 runs agree to ~1e-13 (float32 single-process noise alone would be ~1e-7 per step)


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
    for dump, out, extra in (("mcl_full", "mcl_full", ["--epochs", "2"]), ("mcl_split1", "mcl_split", ["--epochs", "1"]),
                             ("mcl_split", "mcl_split", ["--epochs", "2", "--resume"])):
        jobs.append({"kind": "train", "argv": [*full, *extra, "--out", str(base / "ddp" / out)], "dump": str(base / "dump" / dump)})
    for name, options in (("mcl", MCL_DDP), ("lmcl_full", LMCL_DDP)):
        jobs.append({"kind": "train", "argv": [*TINY, *options, "--quiet", "--out", str(base / "ddp" / name)],
                     "dump": str(base / "dump" / name)})
    checkpoint = str(base / "single" / "baseline" / "last.pt")
    jobs.append({"kind": "eval", "checkpoint": checkpoint, "eval_batch_size": 4, "dump": str(base / "dump" / "eval")})
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
        assert {"bn2d_out_1", "bn1d_grad_input_1", "bn2d_running_var", "bn1d_eval_out"} <= diffs.keys()
        assert max(diffs.values()) < 1e-4, {k: v for k, v in diffs.items() if v >= 1e-4}
        assert diffs["bn2d_batches_tracked"] == 0 and diffs["bn1d_batches_tracked"] == 0


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
        assert b["train"] == pytest.approx(a["train"], rel=1e-5, abs=1e-6)


def test_mcl_okd_banks_are_gathered_from_every_rank(runs: Path) -> None:
    for name in ("mcl_okd", "mcl_full", "mcl_split"):  # identical on both ranks, bit for bit
        banks = [dump["state"]["memory"] for dump in dumps(runs / "dump" / name)]
        assert torch.equal(banks[0], banks[1]), name
    single = load_checkpoint(runs / "single" / "mcl_okd" / "last.pt")["model"]["memory"]
    ddp = dumps(runs / "dump" / "mcl_okd")[1]["state"]["memory"]  # rank 1's own copy
    assert float((ddp - single).abs().max()) < ATOL


def test_mcl_trains_under_torchrun_with_ranks_in_step(runs: Path) -> None:
    per_rank = dumps(runs / "dump" / "mcl")
    assert all(dump["rc"] == 0 and dump["optimiser_sees_model"] for dump in per_rank)
    assert max_diff(per_rank[0]["state"], per_rank[1]["state"]) == 0  # DDP kept the ranks' models identical
    summary = json.loads((runs / "ddp" / "mcl" / "summary.json").read_text())
    assert summary["finished"] and summary["method"] == "mcl"
    assert all(v > 0 for v in records(runs / "ddp" / "mcl")[-1]["train"].values())


def test_lmcl_meta_steps_keep_the_ranks_in_step(runs: Path) -> None:
    per_rank = dumps(runs / "dump" / "lmcl_full")
    assert all(dump["rc"] == 0 and dump["optimiser_sees_model"] for dump in per_rank)
    assert max_diff(per_rank[0]["state"], per_rank[1]["state"]) == 0  # weight network and its momentum included
    before = build_method("lmcl", "resnet32", 4, 2).state_dict()  # shapes only: the weight network moved from init
    assert per_rank[0]["state"].keys() == before.keys()
    assert any(float(per_rank[0]["state"][k].abs().sum()) > 0 for k in before if k.startswith("weight_net_momentum"))


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
    momentum = lambda s: [v["momentum_buffer"] for v in s["optimizer"]["state"].values()]
    assert all(torch.equal(a, b) for a, b in zip(momentum(full), momentum(split)))
    key = lambda r: (r["epoch"], r["lr"], r["train"], r["test"])
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


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _start_and_wait_for_training(out: Path, marker: str, timeout_s: str) -> subprocess.Popen:
    """A long ``okd train`` under torchrun, returned once it trains (rank 0 logs its banner after set-up)."""
    proc = torchrun("-m", "okd", "train", *TINY, "--epochs", "200", "--quiet", "--out", str(out),
                    env={"OKD_TEST_LAUNCH": marker, "OKD_DIST_TIMEOUT_S": timeout_s})
    deadline = time.monotonic() + 120
    while not ((out / "train.log").exists() and (out / "train.log").read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"the run did not start:\n{proc.communicate()[1][-3000:]}")
        time.sleep(0.2)
    return proc


def _finish(proc: subprocess.Popen) -> str:
    try:
        return proc.communicate(timeout=90)[1]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


needs_proc = pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the workers through /proc")


@needs_proc
def test_a_killed_rank_stops_the_run_within_seconds(tmp_path: Path) -> None:
    out, marker = tmp_path / "run", uuid.uuid4().hex
    proc = _start_and_wait_for_training(out, marker, "30")
    try:
        pid = _rank_pid(marker, 1)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)  # like the OOM killer: no chance to clean up
        killed = time.monotonic()
        proc.wait(timeout=90)
        elapsed = time.monotonic() - killed
    finally:
        stderr = _finish(proc)
    assert proc.returncode != 0
    assert elapsed < 60, f"the surviving rank took {elapsed:.0f} s to stop"
    assert "Connection closed by peer" in stderr or "Connection reset by peer" in stderr, stderr[-3000:]
    assert "Signal 9 (SIGKILL)" in stderr, stderr[-3000:]  # torchrun names the rank that died
    assert not (out / "metrics.jsonl").exists() or len(records(out)) < 200
    print(f"surviving rank stopped {elapsed:.1f} s after rank 1 was killed")


@needs_proc
def test_a_hung_rank_makes_the_others_time_out(tmp_path: Path) -> None:
    out, marker = tmp_path / "run", uuid.uuid4().hex
    proc = _start_and_wait_for_training(out, marker, "6")  # OKD_DIST_TIMEOUT_S
    try:
        hung, survivor = _rank_pid(marker, 1), _rank_pid(marker, 0)
        assert hung is not None and survivor is not None
        os.kill(hung, signal.SIGSTOP)  # alive, sockets open, never answers: only the timeout helps
        stopped = time.monotonic()
        while _alive(survivor) and time.monotonic() - stopped < 90:
            time.sleep(0.2)
        elapsed = time.monotonic() - stopped
        os.kill(hung, signal.SIGKILL)  # a stopped process ignores torchrun's SIGTERM until killed
    finally:
        stderr = _finish(proc)
    assert proc.returncode != 0
    assert 6 <= elapsed < 40, f"rank 0 stopped {elapsed:.0f} s after rank 1 hung (timeout 6 s)"
    assert "Timed out" in stderr or "timed out" in stderr, stderr[-3000:]
    print(f"rank 0 gave up {elapsed:.1f} s after rank 1 hung (OKD_DIST_TIMEOUT_S=6)")


def test_collective_timeout_can_be_lowered(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OKD_DIST_TIMEOUT_S", raising=False)
    assert collective_timeout().total_seconds() == 1800
    monkeypatch.setenv("OKD_DIST_TIMEOUT_S", "12.5")
    assert collective_timeout().total_seconds() == 12.5
    for bad in ("soon", "0"):
        monkeypatch.setenv("OKD_DIST_TIMEOUT_S", bad)
        with pytest.raises(OKDUserError, match="OKD_DIST_TIMEOUT_S"):
            collective_timeout()


def test_conversion_keeps_names_and_tensors() -> None:
    method = build_method("one", "resnet32", 10, 2)  # conv BatchNorm2d and the gate's BatchNorm1d
    before = method.state_dict(keep_vars=True)
    params = list(method.parameters())
    converted = convert_sync_batchnorm(method, "cpu")
    assert converted is method
    kinds = {type(m) for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)}
    assert kinds == {SyncBatchNorm}
    after = method.state_dict(keep_vars=True)
    assert list(after) == list(before) and all(after[k] is before[k] for k in before)  # same tensors, same names
    assert all(a is b for a, b in zip(method.parameters(), params))  # an optimiser built before still applies
    plain = build_method("one", "resnet32", 10, 2)
    plain.load_state_dict(method.state_dict())  # checkpoints load into plain models
    cuda = convert_sync_batchnorm(build_method("dml", "resnet32", 10, 2), "cuda")  # conversion needs no GPU
    assert {type(m) for m in cuda.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)} == {nn.SyncBatchNorm}


def test_without_a_process_group_it_is_batchnorm() -> None:
    torch.manual_seed(0)
    plain = nn.BatchNorm2d(3, momentum=None)  # cumulative averaging, the other running-stats rule
    sync = convert_sync_batchnorm(nn.Sequential(nn.BatchNorm2d(3, momentum=None)), "cpu")[0]
    x = torch.randn(4, 3, 5, 5, requires_grad=True)
    for module in (plain, sync):
        for _ in range(2):
            module(x).square().sum().backward()
    assert torch.equal(plain.running_var, sync.running_var) and torch.equal(plain.weight.grad, sync.weight.grad)
    with pytest.raises(ValueError, match="2D"):
        sync(torch.randn(3))
