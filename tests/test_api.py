"""The Python API (okd.train / evaluate / load_peer) computes what the commands compute, and the
plugin option fails clearly. Plugins that register something run in child processes
(tests/test_examples.py): a registration would outlive the test in this process."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

import okd
from okd.cli.main import main
from okd.engine.checkpoint import load_checkpoint, save_checkpoint
from okd.engine.config import config_from_mapping
from okd.errors import OKDUserError
from okd.report.export import load_method

OPTIONS = {"dataset": "synthetic", "synthetic_train": 16, "synthetic_test": 8, "synthetic_classes": 4, "synthetic_size": 16,
           "batch_size": 8, "eval_batch_size": 8, "device": "cpu", "method": "dml", "num_peers": 2, "epochs": 1}
FLAGS = [f"--{k.replace('_', '-')}={v}" for k, v in OPTIONS.items()]


@pytest.fixture(scope="module")
def api_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict]]:
    """Two okd.train calls without ``out``, from a fresh working folder."""
    root = tmp_path_factory.mktemp("api")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        return root, [okd.train(**OPTIONS), okd.train(**OPTIONS)]


def test_train_writes_fresh_folders_and_returns_the_summary(api_runs: tuple[Path, list[dict]]) -> None:
    root, (first, second) = api_runs
    assert first["run_folder"] == "runs/dml_resnet32_synthetic_s0" and second["run_folder"] == "runs/dml_resnet32_synthetic_s0-2"
    for summary in (first, second):
        written = json.loads((root / summary["run_folder"] / "summary.json").read_text())
        assert {k: v for k, v in summary.items() if k != "run_folder"} == written
        assert written["finished"] and written["epochs_done"] == 1 and written["config"]["batch_size"] == 8
        assert written["config"]["lr"] == 0.05  # the recipe filled what was not given, as on the command line


def test_train_equals_the_command(api_runs: tuple[Path, list[dict]], tmp_path: Path) -> None:
    root, (first, _) = api_runs
    assert main(["train", *FLAGS, "--quiet", "--out", str(tmp_path / "cli")]) == 0
    api, cli = load_checkpoint(root / first["run_folder"] / "last.pt"), load_checkpoint(tmp_path / "cli" / "last.pt")
    assert api["config"] == cli["config"]
    assert all(torch.equal(api["model"][k], cli["model"][k]) for k in cli["model"])


def test_unknown_or_misspelt_options(tmp_path: Path) -> None:
    with pytest.raises(OKDUserError, match=r"unknown option 'epoch'; did you mean epochs\?"):
        okd.train(tmp_path / "r", epoch=1)
    with pytest.raises(OKDUserError, match="unknown option 'colour'; known options: method, arch"):
        okd.train(tmp_path / "r", colour="red")
    with pytest.raises(OKDUserError, match="resume=True needs out"):
        okd.train(resume=True)
    with pytest.raises(OKDUserError, match="--lr must be > 0"):
        okd.train(tmp_path / "r", **{**OPTIONS, "lr": -1})
    assert not (tmp_path / "r").exists()


def test_evaluate_equals_okd_eval(api_runs: tuple[Path, list[dict]], capsys: pytest.CaptureFixture[str]) -> None:
    root, (first, _) = api_runs
    best = root / first["run_folder"] / "best.pt"
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(best), "--device", "cpu", "--format", "json"]) == 0
    assert okd.evaluate(best, device="cpu") == json.loads(capsys.readouterr().out)
    assert okd.evaluate(best, device="cpu")["errors"]["deployed"] == first["last"]["deployed"]
    with pytest.raises(OKDUserError, match="unknown dataset 'svhn'"):
        okd.evaluate(best, dataset="svhn")


def test_load_peer_is_the_peer_as_a_plain_backbone(api_runs: tuple[Path, list[dict]]) -> None:
    root, (first, _) = api_runs
    last = root / first["run_folder"] / "last.pt"
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        cohort_logits = load_method(last).method(images).logits
        for peer, expected in ((None, 0), (1, 1), ("1", 1)):  # DML deploys peer 0
            net = okd.load_peer(last, peer)
            assert isinstance(net, okd.Backbone) and not net.training
            assert all(p.device.type == "cpu" for p in net.parameters())
            assert torch.equal(net(images), cohort_logits[expected])
    with pytest.raises(OKDUserError, match=r"the cohort has deployable peers 0\.\.1"):
        okd.load_peer(last, 2)
    with pytest.raises(OKDUserError, match="the ensemble is not one network"):
        okd.load_peer(last, "ensemble")


def test_import_okd_loads_neither_torch_nor_the_engine() -> None:
    code = ("import sys, okd; assert 'torch' not in sys.modules, 'torch'; "
            "assert {'train', 'evaluate', 'load_peer', 'register_backbone', 'register_method'} <= set(dir(okd)); "
            "okd.register_method; assert 'okd.methods' in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_list_options_are_typed() -> None:
    cfg = config_from_mapping({"plugins": "pkg.a, b", "milestones": ["3", 5]})
    assert cfg.plugins == ["pkg.a", "b"] and cfg.milestones == [3, 5]
    assert config_from_mapping({"plugins": ["x"]}).plugins == ["x"]
    for bad in ({"milestones": ["x"]}, {"milestones": [1.5]}, {"plugins": 5}, {"plugins": [None]}):
        with pytest.raises(OKDUserError, match="option (milestones|plugins)"):
            config_from_mapping(bad)


@pytest.mark.parametrize("plugin, message", [
    ("no_such_plugin_mod", "cannot import plugin 'no_such_plugin_mod': No module named 'no_such_plugin_mod' (install it"),
    ("broken_plugin_mod", "cannot import plugin 'broken_plugin_mod': No module named 'a_missing_dependency'"),
    ("json", "--plugin 'json' is part of Python or okd, not a plugin"),
    ("my-models", "--plugin 'my-models' is not a Python module name"),
])
def test_a_plugin_that_cannot_be_imported_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture[str], plugin: str, message: str) -> None:
    (tmp_path / "broken_plugin_mod.py").write_text("import a_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--plugin", plugin, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    config = tmp_path / "c.yaml"
    config.write_text(f"plugins: [{plugin}]\n")  # the same from a --config file
    assert main(["train", *FLAGS, "--config", str(config), "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_checkpoint_never_imports_its_plugins_by_itself(api_runs: tuple[Path, list[dict]], tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint naming a module that would run code on import: eval, export, load_peer, evaluate and --resume
    refuse, naming it and --plugin, and the module never runs; named with --plugin, it is imported (here it fails)."""
    root, (first, _) = api_runs
    run = tmp_path / "run"
    shutil.copytree(root / first["run_folder"], run)
    monkeypatch.chdir(tmp_path)  # the folder a plugin is looked up in last
    (tmp_path / "planted_plugin_mod.py").write_text("open('ran', 'w').close()\nraise ImportError('planted')\n")
    state = load_checkpoint(run / "last.pt")
    state["config"]["plugins"] = ["planted_plugin_mod"]
    save_checkpoint(run / "last.pt", {k: v for k, v in state.items() if k != "format"})
    (run / "config.yaml").write_text((run / "config.yaml").read_text().replace("plugins: null", "plugins:\n- planted_plugin_mod"))
    refusal = "was trained with plugin 'planted_plugin_mod'; a saved run never imports code by itself"
    last = str(run / "last.pt")
    image = tmp_path / "image.png"
    Image.new("RGB", (16, 16)).save(image)
    for args in (["eval", "--checkpoint", last, "--device", "cpu"], ["export", "--checkpoint", last, "--out", str(tmp_path / "m.pt")],
                 ["predict", "--checkpoint", last, str(image)], ["train", *FLAGS, "--epochs", "2", "--out", str(run), "--resume"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert refusal in err and "--plugin planted_plugin_mod" in err and len(err.strip().splitlines()) == 1, err
    for call in (lambda: okd.load_peer(last), lambda: okd.evaluate(last, device="cpu"), lambda: okd.predict(image, checkpoint=last)):
        with pytest.raises(OKDUserError, match=refusal):
            call()
    assert not (tmp_path / "ran").exists() and not (tmp_path / "m.pt").exists()
    message = "cannot import plugin 'planted_plugin_mod': planted"
    assert main(["eval", "--checkpoint", last, "--device", "cpu", "--plugin", "planted_plugin_mod"]) == 2
    assert message in capsys.readouterr().err and (tmp_path / "ran").exists()
    with pytest.raises(OKDUserError, match=message):
        okd.load_peer(last, plugins=["planted_plugin_mod"])
    summary = json.loads((run / "summary.json").read_text())
    summary["config"]["plugins"] = ["planted_plugin_mod"]
    (run / "summary.json").write_text(json.dumps(summary))
    (tmp_path / "ran").unlink()
    assert main(["report", str(run), "--format", "json"]) == 0
    assert "okd report: note: runs name plugin 'planted_plugin_mod', not imported" in capsys.readouterr().err
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name, body, message", [  # one module name each: a folder once searched stays on sys.path
    ("raising_plugin_mod", "raise ValueError('bad config')\n", "plugin 'raising_plugin_mod' raised ValueError: bad config while being imported"),
    ("exiting_plugin_mod", "import sys\nsys.exit(3)\n", "plugin 'exiting_plugin_mod' called sys.exit(3) while being imported"),
])
def test_a_plugin_that_raises_or_exits_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str], name: str, body: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{name}.py").write_text(body)
    out = tmp_path / "run"
    assert main(["train", *FLAGS, "--plugin", name, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not out.exists()
