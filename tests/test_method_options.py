"""Method options are declared once (okd.methods.Option) and work alike from the CLI, a YAML file and
``okd.train``: every option of every registered method round-trips, ``--help`` shows the method's own,
and a plugin method's option (examples/my_models.py) trains, resumes and evaluates like a built-in one."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

import okd
from okd.cli.main import main
from okd.engine.options import train_config
from okd.errors import OKDUserError
from okd.methods import Option, get_method_class, list_methods

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
BASE = {"dataset": "synthetic", "synthetic_train": 16, "synthetic_test": 8, "synthetic_classes": 4, "synthetic_size": 8,
        "batch_size": 8, "eval_batch_size": 8, "epochs": 1, "limit_batches": 1, "device": "cpu", "workers": 0}

pytestmark = pytest.mark.usefixtures("one_thread")
sys.path.insert(0, str(EXAMPLES))
import my_models  # noqa: E402,F401  (registers small_cnn and avg_teacher: a plugin method is tested like the built-in ones)


# Valid non-default values of the string options whose values are a pattern, not a list of choices.
FREE_STRINGS = {"fusion_interval": "2_batch", "switch_threshold": "0.5"}


def other_value(option: Option) -> Any:
    """A valid value that is not the default, so a lost value shows."""
    if option.type is str and not option.choices:
        return FREE_STRINGS[option.name]  # a new free-form string option needs its example here
    if option.type is bool:
        return not option.default
    if option.choices:
        return next(c for c in reversed(option.choices) if c != option.default)
    if option.maximum is not None:
        return (option.default + (option.minimum or 0.0)) / 2 if option.default else option.maximum / 2
    return option.default + 1 if option.type is int else option.default * 1.5


def cli_args(values: dict[str, Any], options: tuple[Option, ...]) -> list[str]:
    by_name = {o.name: o for o in options}
    args: list[str] = []
    for name, value in values.items():
        option = by_name[name]
        if option.type is bool:
            args.append(option.flag if value else f"--no-{option.flag[2:]}")
        else:
            args += [option.flag, str(value)]
    return args


def parsed(argv: list[str]) -> Any:
    from okd.cli.main import build_parser
    from okd.cli.train import _resolved_config

    return _resolved_config(build_parser(argv).parse_args(argv))


@pytest.mark.parametrize("method", sorted(list_methods()))
def test_every_option_round_trips_through_cli_yaml_and_api(method: str, tmp_path: Path) -> None:
    options = get_method_class(method).declared_options()
    values = {o.name: other_value(o) for o in options}
    peers = 1 if method == "baseline" else 2
    common = {**BASE, "method": method, "num_peers": peers, "plugins": ["my_models"]}
    arch = {"arch": "small_cnn"} if method == "avg_teacher" else {}
    via_api = train_config({**common, **arch, **values})
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({**common, **arch, **values}))
    via_yaml = train_config({}, config_file=config)
    argv = ["train", "--plugin", "my_models", "--method", method, "--num-peers", str(peers), "--dataset", "synthetic",
            *(["--arch", "small_cnn"] if arch else []), *cli_args(values, options)]
    via_cli = parsed(argv)
    assert via_api.method_options == via_yaml.method_options == via_cli.method_options == values
    assert {k: v for k, v in okd_saved(via_api).items() if k in values} == values


def okd_saved(cfg: Any) -> dict[str, Any]:
    from okd.engine.config import config_from_mapping, to_plain

    plain = yaml.safe_load(yaml.safe_dump(to_plain(cfg)))  # what config.yaml holds
    return to_plain(config_from_mapping(plain))


def test_help_shows_the_named_methods_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["train", "--method", "KDCL", "--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0 and "kdcl options" in out and "--kdcl-rule" in out and "--nce-k" not in out
    with pytest.raises(SystemExit):
        main(["train", "--plugin", "my_models", "--method", "avg_teacher", "--help"])
    out = capsys.readouterr().out
    assert "avg_teacher options" in out and "distillation temperature (> 0; default 3.0)" in out


def test_the_same_name_is_each_methods_own() -> None:
    kdcl, mcl_okd = (train_config({**BASE, "method": m, "num_peers": 2, "alpha": 0.9, **extra})
                     for m, extra in (("kdcl", {}), ("mcl_okd", {"nce_k": 4})))
    assert kdcl.alpha == mcl_okd.alpha == 0.9
    with pytest.raises(OKDUserError, match=r"^--alpha must be in \[0, 1\], got 1.5$"):
        train_config({**BASE, "method": "kdcl", "num_peers": 2, "alpha": 1.5})
    assert train_config({**BASE, "method": "mcl_okd", "num_peers": 2, "nce_k": 4, "alpha": 1.5}).alpha == 1.5


def test_a_plugin_methods_option_trains_resumes_and_reports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = ["--plugin", "my_models", "--method", "avg_teacher", "--arch", "small_cnn", "--num-peers", "2",
            "--dataset", "synthetic", "--synthetic-train", "16", "--synthetic-test", "8", "--synthetic-classes", "4",
            "--synthetic-size", "8", "--batch-size", "8", "--limit-batches", "1", "--device", "cpu", "--quiet"]
    out = tmp_path / "run"
    assert main(["train", *mine, "--kd-t", "1.5", "--epochs", "1", "--out", str(out)]) == 0
    assert yaml.safe_load((out / "config.yaml").read_text())["kd_t"] == 1.5
    assert main(["train", *mine, "--kd-t", "1.5", "--epochs", "2", "--out", str(out), "--resume"]) == 0
    assert main(["train", *mine, "--kd-t", "2.5", "--epochs", "3", "--out", str(out), "--resume"]) == 2  # another value
    capsys.readouterr()
    assert main(["train", *mine, "--kd-t", "0", "--out", str(tmp_path / "bad")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["okd train: error: --kd-t must be > 0, got 0.0"]
    assert not (tmp_path / "bad").exists()
    assert main(["report", str(out), "--format", "json"]) == 0
    assert "avg_teacher" in capsys.readouterr().out
    assert okd.evaluate(out / "last.pt", limit_batches=1)["method"] == "avg_teacher"
    assert json.loads((out / "summary.json").read_text())["epochs_done"] == 2


def test_readme_add_a_method_is_the_tested_example() -> None:
    readme = (EXAMPLES.parent / "README.md").read_text()
    block = readme.split("### Add a method", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    source = (EXAMPLES / "my_models.py").read_text().splitlines()
    assert [line for line in block.splitlines() if line not in source] == []


def test_mcl_on_cifar10_fits_its_batch_to_the_data_layers_class_count() -> None:
    """The class count comes from the dataset's declaration (okd.data), so CIFAR-10 is not left out."""
    cfg = train_config({"method": "mcl", "dataset": "cifar10", "download": True, "data": "/nonexistent"})
    assert (cfg.batch_size, cfg.lr) == (20, pytest.approx(0.1 * 20 / 128))


def test_an_option_of_another_method_is_ignored_with_one_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.warns(okd.OKDWarning,
                      match=r"^method 'dml' has no option nce_k \(an option of mcl_okd\): ignored$"):
        cfg = train_config({**BASE, "method": "dml", "num_peers": 2, "nce_k": 4})
    assert "nce_k" not in cfg.method_options
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the method's own options and unset foreign ones warn nothing
        train_config({**BASE, "method": "mcl_okd", "num_peers": 2, "nce_k": 4, "rampup_epochs": None})
    argv = ["train", "--method", "dml", "--num-peers", "2", "--rampup-epochs", "3", "--quiet", "--out", str(tmp_path / "run")]
    argv += [f"--{k.replace('_', '-')}={v}" for k, v in BASE.items()]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert err.splitlines() == ["okd train: warning: method 'dml' has no option rampup_epochs (an option of okddip, pcl): ignored"]
    assert "rampup_epochs" not in yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
