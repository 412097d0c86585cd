"""A refused command never destroys anything: every check that can refuse ``okd train --overwrite``
(or ``--resume``) runs before the run folder is cleared, truncated or written."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from okd.cli.main import main
from okd.engine.runlock import RunLock

TINY = ["--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
        "--synthetic-size", "16", "--batch-size", "8", "--eval-batch-size", "8", "--quiet", "--device", "cpu",
        "--method", "dml", "--num-peers", "2"]


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("refusals") / "run"
    assert main(["train", *TINY, "--out", str(out), "--epochs", "2"]) == 0
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _missing_tensorboard(patch: pytest.MonkeyPatch, _out: Path) -> None:
    for module in ("tensorboard", "torch.utils.tensorboard"):
        patch.setitem(sys.modules, module, None)  # `import` of a None entry raises ImportError


def _live_lock(patch: pytest.MonkeyPatch, out: Path) -> None:
    lock = RunLock(out)
    lock.acquire()  # this (live) process holds the folder
    patch.setattr(lock, "held", True)
    patch.setattr(lock, "release", lock.release)


# Each refusal of the train path: the extra flags, an optional fault to set up, and what the error names.
REFUSALS = {
    "optional package": (["--tensorboard"], _missing_tensorboard, "--tensorboard needs the tensorboard package"),
    "option value": (["--lr", "-1"], None, "--lr"),
    "method option": (["--method", "mcl_okd", "--nce-k", "100000"], None, "nce"),
    "data": (["--dataset", "folder", "--data", "/nonexistent/okd-data"], None, "/nonexistent/okd-data"),
    "device": (["--device", "cuda:99"], None, "cuda"),
    "plugin": (["--plugin", "no_such_plugin_mod_refusal"], None, "no_such_plugin_mod_refusal"),
    "lock": ([], _live_lock, "in use"),
    "another config": (["--lr", "0.5"], None, "holds a run with another config"),  # --resume only
}
CASES = [(refusal, mode) for refusal in sorted(REFUSALS) for mode in ("--overwrite", "--resume")
         if (refusal, mode) not in {("another config", "--overwrite"), ("data", "--resume")}]  # not refusals there


@pytest.mark.parametrize("refusal, mode", CASES)
def test_a_refused_command_leaves_the_run_untouched(finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    capsys: pytest.CaptureFixture[str], refusal: str, mode: str) -> None:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    before = snapshot(out)
    flags, fault, named = REFUSALS[refusal]
    if fault is not None:
        fault(monkeypatch, out)
    code = main(["train", *TINY, "--epochs", "3", "--out", str(out), mode, *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and named in err, err
    lock = out / ".okd.lock"
    after = snapshot(out)
    if refusal == "lock":
        after.pop(lock.name)
        lock.unlink()
    assert after == before
    if refusal == "optional package":  # the case: once the package is there, the same command works
        monkeypatch.undo()
        pytest.importorskip("tensorboard")
        assert main(["train", *TINY, "--epochs", "3", "--out", str(out), mode, *flags]) == 0
