"""Runs survive SIGTERM, SIGKILL (even mid-save), NaN losses and hostile input, and never leak memory."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
import yaml
from hypothesis import strategies as st

from process_helpers import okd_process as run_in_child
from process_helpers import pause_prelude, wait_for

from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint
from okd.engine.rundir import read_metrics

TINY = ["--dataset", "synthetic", "--synthetic-train", "64", "--synthetic-test", "16", "--synthetic-classes", "4",
        "--batch-size", "8", "--eval-batch-size", "16", "--quiet", "--device", "cpu", "--method", "dml", "--num-peers", "2"]


def okd_process(out: Path, *extra: str, prelude: str = "") -> subprocess.Popen:
    return run_in_child([*TINY, "--out", str(out), *extra], prelude=prelude)


def assert_same_weights(a: Path, b: Path) -> None:
    left, right = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reliability") / "full"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3"]) == 0
    return out


def test_sigterm_mid_epoch_saves_and_resumes_exactly(tmp_path: Path, uninterrupted: Path) -> None:
    out = tmp_path / "run"
    proc = okd_process(out, "--epochs", "3", prelude=pause_prelude(tmp_path, epoch=1, step=2))
    wait_for(lambda: (tmp_path / "paused").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)  # pending before the step runs: it finishes that step, then saves
    (tmp_path / "go").touch()
    stdout, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Resume with: okd train --out" in stdout
    state = load_checkpoint(out / "last.pt")
    assert (state["epoch"], state["step"]) == (1, 3), "expected the checkpoint of epoch 2 after its third step"
    assert not (out / ".okd.lock").exists()  # the stopped run released its folder
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3", "--resume"]) == 0
    assert_same_weights(out / "last.pt", uninterrupted / "last.pt")
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


# Child-process patches that stall the second save of last.pt (end of epoch 2) and mark the moment,
# so the test can kill -9 it there: during the rename, or with half the bytes written to the temp file.
_STALL_PRELUDE = """
import os, time, okd.engine.checkpoint as c
_replace, _fdopen, _saves = os.replace, os.fdopen, [0]
def _stall(target):
    open(os.path.join(os.path.dirname(target), 'stalled'), 'w').close()
    time.sleep(120)
"""
_STALL = {
    "rename": _STALL_PRELUDE + """
def _slow_replace(src, dst):
    if os.path.basename(dst) == 'last.pt':
        _saves[0] += 1
        if _saves[0] == 2:
            _stall(dst)
    _replace(src, dst)
c.os.replace = _slow_replace
""",
    "write": _STALL_PRELUDE + """
class _HalfWriter:
    def __init__(self, handle, path):
        self.handle, self.path = handle, path
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)
    def write(self, data):
        self.handle.write(data[: len(data) // 2])
        self.handle.flush()
        _stall(self.path)
def _fdopen_half(fd, *args, **kwargs):
    handle = _fdopen(fd, *args, **kwargs)
    path = os.readlink(f'/proc/self/fd/{fd}')
    if os.path.basename(path).startswith('.last.pt.'):
        _saves[0] += 1
        if _saves[0] == 2:
            return _HalfWriter(handle, path)
    return handle
c.os.fdopen = _fdopen_half
""",
}


@pytest.mark.parametrize("moment", sorted(_STALL))
def test_sigkill_during_checkpoint_write_leaves_a_loadable_run(tmp_path: Path, uninterrupted: Path, moment: str) -> None:
    out = tmp_path / "run"
    proc = okd_process(out, "--epochs", "3", prelude=_STALL[moment])
    wait_for(lambda: (out / "stalled").exists() or proc.poll() is not None)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    (out / "stalled").unlink()
    if moment == "write":
        assert [p.stat().st_size for p in out.glob(".last.pt.*.tmp")], "expected the half-written temp file"
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the previous checkpoint, intact
    lines = (out / "metrics.jsonl").read_text()
    assert lines.endswith("\n") and [json.loads(line)["epoch"] for line in lines.splitlines()] == [1, 2]
    assert (out / ".okd.lock").exists()  # a killed run cannot release its folder...
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3", "--resume"]) == 0
    assert f"took over the lock of a run that is no longer alive (pid {proc.pid}@" in (out / "train.log").read_text()
    assert not (out / ".okd.lock").exists()  # ...the resumed run took it over and released it
    assert_same_weights(out / "last.pt", uninterrupted / "last.pt")
    assert [r["epoch"] for r in read_metrics(out / "metrics.jsonl")] == [1, 2, 3]


def test_sigkill_at_a_random_moment(tmp_path: Path, uninterrupted: Path) -> None:
    out = tmp_path / "run"
    proc = okd_process(out, "--epochs", "3")
    wait_for(lambda: (out / "last.pt").exists() or proc.poll() is not None)
    time.sleep(0.3)  # some moment after the first save; the assertions hold wherever it lands, even after the end
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    load_checkpoint(out / "last.pt")
    read_metrics(out / "metrics.jsonl")
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3", "--resume"]) == 0
    assert_same_weights(out / "last.pt", uninterrupted / "last.pt")


def poison_dml_term(monkeypatch: pytest.MonkeyPatch, term: str, epoch: int = 1) -> None:
    """DML's loss term ``term`` is NaN in every step of the 0-based ``epoch``."""
    import okd.methods.dml as dml

    original = dml.DML.losses

    def poisoned(self, output, batch, current):
        losses = original(self, output, batch, current)
        if current == epoch:
            losses[term] = losses[term] * float("nan")
        return losses

    monkeypatch.setattr(dml.DML, "losses", poisoned)


def test_non_finite_loss_stops_with_a_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    poison_dml_term(monkeypatch, "kd")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "non-finite loss at epoch 2, step 0 (term: kd)" in err
    assert load_checkpoint(out / "last.pt")["epoch"] == 1  # the last good checkpoint is kept


def test_skip_step_policy_skips_non_finite_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import okd.methods.dml as dml

    original = dml.DML.losses
    calls = {"n": 0}

    def sometimes_nan(self, output, batch, epoch):
        losses = original(self, output, batch, epoch)
        calls["n"] += 1
        if calls["n"] == 2:
            losses["ce"] = losses["ce"] * float("inf")
        return losses

    monkeypatch.setattr(dml.DML, "losses", sometimes_nan)
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "1", "--nan-policy", "skip-step"]) == 0
    state = load_checkpoint(out / "last.pt")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert "skipped step 1 of epoch 1" in (out / "train.log").read_text()


INVALID = {
    "--lr": ["0", "-1", "nan", "inf", "abc"],
    "--epochs": ["0", "-3", "1.5", "x"],
    "--batch-size": ["0", "-8"],
    "--num-peers": ["0", "1"],
    "--nce-k": ["0", "-5", "100000"],
    "--nce-m": ["1", "-0.1", "2"],
    "--wd": ["-1", "nan"],
    "--momentum": ["-0.5"],
    "--share": ["sideways", "tree"],
    "--method": ["distill", ""],
    "--arch": ["resnet0", "dml_"],
    "--dataset": ["cifar10"],
    "--limit-batches": ["0", "-1"],
    "--seed": ["-1", "one"],
    "--kd-t": ["0", "-2"],
    "--device": ["tpu", "cuda:x"],
    "--nan-policy": ["ignore"],
}

# Random values that are invalid by construction, per option (the fixed cases above stay as examples).
_junk = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_:.,/ ", max_size=12).map(lambda s: "x" + s)
_not_positive = st.one_of(st.floats(max_value=0.0), st.just(float("nan")), st.just(float("inf")))
_negative = st.one_of(st.floats(max_value=-1e-9, allow_infinity=True), st.just(float("nan")))
_non_positive_int = st.integers(max_value=0)
_RANDOM_INVALID = {
    "lr": st.one_of(_not_positive, _junk),
    "kd_t": st.one_of(_not_positive, _junk),
    "nce_t": st.one_of(_not_positive, _junk),
    "wd": st.one_of(_negative, _junk),
    "momentum": st.one_of(_negative, _junk),
    "epochs": st.one_of(_non_positive_int, st.floats(0.01, 1e6).filter(lambda v: not v.is_integer()), _junk),
    "batch_size": st.one_of(_non_positive_int, _junk),
    "limit_batches": st.one_of(_non_positive_int, _junk),
    "num_peers": st.one_of(st.integers(max_value=1), _junk),
    "nce_k": st.one_of(_non_positive_int, st.integers(min_value=100, max_value=10**9), _junk),
    "nce_m": st.one_of(st.floats(min_value=1.0), st.floats(max_value=-1e-9), _junk),
    "seed": st.one_of(st.integers(max_value=-1), _junk),
    "method": _junk,
    "arch": _junk,
    "dataset": _junk,
    "share": _junk,
    "device": _junk,
    "nan_policy": _junk,
    "lr_schedule": _junk,
    "sgd_impl": _junk,
}


def _run_expecting_usage_error(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    try:
        code = main(args)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert code == 2, (args, err)
    assert "Traceback" not in err and err.strip(), (args, err)
    return err


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(INVALID)), data=st.data())
def test_listed_invalid_values_never_give_a_traceback(tmp_path: Path, capsys: pytest.CaptureFixture[str], option: str, data: st.DataObject) -> None:
    value = data.draw(st.sampled_from(INVALID[option]))
    out = tmp_path / f"run{abs(hash((option, value)))}"
    _run_expecting_usage_error(["train", *TINY, "--method", "mcl_okd", "--epochs", "1", "--out", str(out), option, value], capsys)
    assert not (out / "last.pt").exists()


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(values=st.dictionaries(st.sampled_from(sorted(_RANDOM_INVALID)), st.none(), min_size=1, max_size=3), data=st.data(),
       via_config=st.booleans())
def test_random_invalid_values_on_the_command_line_or_in_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], values: dict, data: st.DataObject, via_config: bool
) -> None:
    """Any mix of invalid values, as flags or as a --config YAML file: exit 2, one message, no run left behind."""
    chosen = {name: data.draw(_RANDOM_INVALID[name], label=name) for name in values}
    out = tmp_path / f"run{abs(hash(repr(sorted(chosen.items()))))}"
    args = ["train", *TINY, "--method", "mcl_okd", "--epochs", "1", "--nce-k", "8", "--out", str(out)]
    if via_config:
        config = out.with_suffix(".yaml")
        config.write_text(yaml.safe_dump(chosen))
        # the config file's values must win over TINY's flags for the options it sets
        args = [a for i, a in enumerate(args) if not _is_flag_or_value_of(args, i, chosen)] + ["--config", str(config)]
    else:
        for name, value in chosen.items():
            args += [f"--{name.replace('_', '-')}={value}"]
    _run_expecting_usage_error(args, capsys)
    assert not (out / "last.pt").exists()


def _is_flag_or_value_of(args: list[str], i: int, names: dict) -> bool:
    flags = {f"--{name.replace('_', '-')}" for name in names}
    return args[i] in flags or (i > 0 and args[i - 1] in flags)


def test_invalid_config_file_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for text, message in [("lr: -1\n", "--lr must be > 0"), ("epochs: many\n", "option epochs has an invalid value"),
                          ("- a\n- b\n", "must hold a mapping"), ("nce_k: [1\n", "not valid YAML")]:
        config = tmp_path / "c.yaml"
        config.write_text(text)
        assert main(["train", *TINY, "--out", str(tmp_path / "r"), "--config", str(config)]) == 2
        assert message in capsys.readouterr().err


def test_memory_does_not_grow_across_epochs(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "6", "--method", "mcl_okd", "--num-peers", "2", "--nce-k", "16"]) == 0
    rss = [r["rss_mb"] for r in read_metrics(out / "metrics.jsonl")]
    # From epoch 2: epoch 1 also holds one-off allocations (the first eval's buffers, allocator arenas
    # opened by threads a busy machine wakes late); a leak grows every epoch and still shows over four.
    assert len(rss) == 6 and rss[5] - rss[1] < 8, rss


def test_disk_full_mid_run_keeps_the_previous_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC from the second checkpoint write on: a clear error, epoch 1's last.pt intact, no temp files."""
    import errno

    import okd.engine.checkpoint as checkpoint

    real_save = checkpoint.save_checkpoint
    saves = {"n": 0}

    def full_disk_fsync(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def counting_save(path: Path, state: dict, **kwargs) -> None:
        saves["n"] += 1
        if saves["n"] > 1:  # the first epoch's checkpoints get through, then the disk is full
            monkeypatch.setattr(checkpoint.os, "fsync", full_disk_fsync)
        real_save(path, state, **kwargs)

    import okd.engine.trainer as trainer

    monkeypatch.setattr(trainer, "save_checkpoint", counting_save)
    out = tmp_path / "run"
    code = main(["train", *TINY, "--out", str(out), "--epochs", "3"])
    err = capsys.readouterr().err
    monkeypatch.undo()
    assert code == 2
    assert "No space left on device" in err and "traceback" not in err.lower()
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert not list(out.glob(".*.tmp"))
    assert all(json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines())


@contextlib.contextmanager
def read_only(folder: Path):
    """Make ``folder`` really read-only: a read-only bind mount as root (who ignores mode bits), else chmod."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0
    if mounted and subprocess.run(["mount", "-o", "remount,bind,ro", str(folder)], capture_output=True).returncode != 0:
        subprocess.run(["umount", str(folder)], check=True)
        mounted = False
    if not mounted:
        pytest.skip("running as root without permission to mount: cannot make a read-only folder")
    try:
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def test_read_only_output_folder_gives_a_clear_error_and_keeps_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "1"]) == 0
    before = (out / "last.pt").read_bytes()
    with read_only(out):
        with pytest.raises(OSError):
            (out / "probe").write_text("")  # the folder really is read-only
        assert main(["train", *TINY, "--out", str(out), "--epochs", "2", "--resume"]) == 2
        err = capsys.readouterr().err
        assert f"cannot write to output folder {out}" in err and "Traceback" not in err
        assert main(["train", *TINY, "--out", str(out), "--epochs", "1", "--overwrite"]) == 2
        assert f"cannot write to output folder {out}" in capsys.readouterr().err
        assert main(["train", *TINY, "--out", str(out / "nested"), "--epochs", "1"]) == 2
        assert "cannot write to output folder" in capsys.readouterr().err
    assert (out / "last.pt").read_bytes() == before
    assert load_checkpoint(out / "last.pt")["epoch"] == 1
    assert main(["train", *TINY, "--out", str(out), "--epochs", "2", "--resume"]) == 0  # writable again: it continues


def test_skip_step_policy_survives_an_epoch_where_every_step_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    poison_dml_term(monkeypatch, "ce")
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "3", "--nan-policy", "skip-step", "--limit-batches", "2"]) == 0
    records = read_metrics(out / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2, 3] and records[1]["train"] == {} and "total" in records[2]["train"]
    assert "epoch 2/3  loss n/a (every step skipped)" in (out / "train.log").read_text()
    assert load_checkpoint(out / "last.pt")["epoch"] == 3
