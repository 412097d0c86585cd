"""The released package works on its own: build the sdist and the wheel, install the wheel into a fresh
virtual environment and run the ``okd`` command from there.

Running from the source tree hides files that the wheel leaves out (package data, a module outside the
package list); this test runs the installed copy only, so such a gap fails here and not on a user's machine.
The venv sees the system's site-packages so that torch is not installed again; the wheel goes in with
``--no-deps --no-index`` and nothing is downloaded.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import okd

pytest.importorskip("build")
pytestmark = pytest.mark.slow  # 15 s on an idle 2-core machine, more when it is busy

ROOT = Path(__file__).resolve().parents[1]
DISTRIBUTION = "okd_torch"  # the wheel's file-name spelling of "okd-torch"


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{args} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _package_files() -> set[str]:
    """Every file of the import package in the source tree, as the wheel names it."""
    package = ROOT / "src" / "okd"
    return {
        str(path.relative_to(ROOT / "src")).replace(os.sep, "/")
        for path in package.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    }


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("packaging")
    source = tmp / "source"  # a clean copy, so the build writes no egg-info or build/ into the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "CHANGELOG.md"):
        shutil.copy2(ROOT / name, source / name)
    shutil.copytree(ROOT / "src", source / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    # --no-isolation: build with the setuptools already installed instead of downloading one
    _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp / "dist"), str(source)], tmp, env)
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], tmp, env)
    wheel = next((tmp / "dist").glob(f"{DISTRIBUTION}-{okd.__version__}-*.whl"))
    bindir = venv / ("Scripts" if os.name == "nt" else "bin")
    _run([str(bindir / "python"), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)], tmp, env)
    return tmp, bindir, env


def test_sdist_and_wheel_carry_every_package_file(installed: tuple[Path, Path, dict[str, str]]) -> None:
    tmp = installed[0]
    sdists = list((tmp / "dist").glob(f"{DISTRIBUTION}-{okd.__version__}.tar.gz"))
    assert len(sdists) == 1
    wheel = next((tmp / "dist").glob(f"{DISTRIBUTION}-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = _package_files() - names
    assert not missing, f"left out of the wheel: {sorted(missing)}"
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    text = zipfile.ZipFile(wheel).read(metadata).decode()
    assert "Name: okd-torch" in text and f"Version: {okd.__version__}" in text
    assert any(n.endswith(".dist-info/entry_points.txt") for n in names)


def test_installed_command_lists_models_and_trains(installed: tuple[Path, Path, dict[str, str]]) -> None:
    tmp, bindir, env = installed
    where = _run([str(bindir / "python"), "-c", "import okd; print(okd.__file__)"], tmp, env).strip()
    assert Path(where).resolve().is_relative_to((tmp / "venv").resolve()), f"okd imported from {where}, not the venv"
    okd_command = str(bindir / "okd")
    assert _run([okd_command, "--version"], tmp, env).strip() == f"okd {okd.__version__}"
    models = _run([okd_command, "models"], tmp, env)
    assert "resnet32" in models and "hcgnet_a1" in models
    out = tmp / "run"
    _run([okd_command, "train", "--method", "dml", "--arch", "resnet32", "--num-peers", "2", "--epochs", "1",
          "--limit-batches", "1", "--batch-size", "8", "--eval-batch-size", "8", "--workers", "0", "--out", str(out)], tmp, env)
    assert (out / "best.pt").is_file() and (out / "summary.json").is_file()
