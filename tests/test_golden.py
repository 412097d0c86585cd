"""Bit-identical before/after: every method's 2-step weights and optimiser state, every recipe, and a
run folder written by the older option format (tests/fixtures/old_run) resuming, evaluating, exporting."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

import okd

HERE = Path(__file__).parent
sys.path.insert(0, str(HERE))
from make_golden import FIXTURE, RUNS, _digest_tree, compute, resolved_recipes  # noqa: E402

GOLDEN = json.loads(FIXTURE.read_text())
OLD_RUN = HERE / "fixtures" / "old_run"
RESUMED_DIGEST = "bf9edadcf6ae49cfc318c5767cd7741d2f09cd6a987e875db0044f157c7ae6c0"
# values that are allowed to differ from the stored recipes: the worker count follows the machine
MACHINE_DEPENDENT = {"workers"}

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("method", list(RUNS))
def test_two_steps_are_bit_identical(method: str) -> None:
    assert compute([method])[method] == GOLDEN["digests"][method]


def test_recipes_fill_the_same_values() -> None:
    """Every stored value is filled again; values stored as unset may now show the method's default."""
    now = resolved_recipes()
    assert sorted(now) == sorted(GOLDEN["recipes"])
    for case, before in GOLDEN["recipes"].items():
        after = {k: v for k, v in now[case].items() if k not in MACHINE_DEPENDENT}
        expected = {k: v for k, v in before.items() if k not in MACHINE_DEPENDENT}
        assert {k: after.get(k) for k in expected} == expected, case


@pytest.fixture()
def old_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.syspath_prepend(str(HERE.parent / "examples"))  # the run's plugin backbone
    folder = tmp_path / "old_run"
    shutil.copytree(OLD_RUN, folder)
    return folder


def test_old_run_resumes_evaluates_and_exports(old_run: Path, tmp_path: Path) -> None:
    okd.train(old_run, resume=True, epochs=2, config=old_run / "config.yaml")
    state = torch.load(old_run / "last.pt", map_location="cpu", weights_only=True)
    hasher = hashlib.sha256()
    _digest_tree(state["model"], hasher)
    assert hasher.hexdigest() == RESUMED_DIGEST
    errors = okd.evaluate(old_run / "last.pt", limit_batches=1)["errors"]
    assert {"peer0", "peer1", "deployed", "ensemble"} <= set(errors)
    peer = okd.load_peer(OLD_RUN / "last.pt")
    assert peer(torch.zeros(1, 3, 8, 8)).shape == (1, 3)
