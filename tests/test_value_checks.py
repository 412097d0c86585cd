"""Every numeric option has a finite, sane range and every value is checked the same way from the CLI, a
YAML file and ``okd.train``: an invalid one is exit 2 (OKDUserError) with one line, and no run folder.
The method options' invalid values are drawn from their own declarations."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import okd
from okd.cli.main import main
from okd.errors import OKDUserError
from okd.methods import Option, all_options, get_method_class, list_methods

TINY = {"dataset": "synthetic", "synthetic_train": 8, "synthetic_test": 4, "synthetic_classes": 2, "synthetic_size": 8,
        "epochs": 1, "limit_batches": 1, "device": "cpu", "quiet": True}
_bad_float = st.sampled_from([math.nan, math.inf, -math.inf])
ENGINE_INVALID: dict[str, st.SearchStrategy[Any]] = {
    "lr": st.one_of(st.floats(max_value=0.0), st.floats(min_value=10.001, allow_infinity=False), _bad_float),
    "wd": st.one_of(st.floats(max_value=-1e-9, allow_infinity=False), st.floats(min_value=1.0, allow_infinity=False), _bad_float),
    "momentum": st.one_of(st.floats(min_value=1.001, allow_infinity=False), st.floats(max_value=-1e-9, allow_infinity=False)),
    "seed": st.one_of(st.integers(max_value=-1), st.integers(min_value=2**32, max_value=2**70)),
    "lr_gamma": st.one_of(st.floats(max_value=0.0, allow_infinity=False), _bad_float),
    "epochs": st.integers(max_value=0),
    "sampler": st.text("xyz", min_size=1, max_size=5),
}


def invalid_for(option: Option) -> st.SearchStrategy[Any]:
    """Values the declaration forbids: past a bound, not finite, not a choice, not of its type."""
    if option.choices:
        return st.text("xyzq", min_size=1, max_size=6)
    if option.type is bool:
        return st.sampled_from(["maybe", "2"])
    bad = [st.sampled_from(["x1", "1e"])]
    if option.type is float:
        bad.append(_bad_float)
    if option.minimum is not None:
        low = option.minimum if option.exclusive_minimum else option.minimum - (1 if option.type is int else 1e-6)
        bad.append(st.integers(max_value=int(math.floor(low))) if option.type is int else st.floats(max_value=low, allow_infinity=False))
    if option.maximum is not None:
        high = option.maximum if option.exclusive_maximum else option.maximum + 1e-6
        bad.append(st.floats(min_value=high, allow_infinity=False))
    return st.one_of(*bad)


METHOD_INVALID = {name: invalid_for(o) for name, o in all_options().items() if o.minimum is not None or o.maximum is not None
                  or o.choices or o.type is bool}
OWNER = {name: next(m for m in list_methods() if name in {o.name for o in get_method_class(m).declared_options()}) for name in METHOD_INVALID}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), source=st.sampled_from(["cli", "yaml", "api"]),
       name=st.sampled_from(sorted(ENGINE_INVALID) + sorted(METHOD_INVALID)))
def test_invalid_values_are_one_line_and_leave_no_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], data: st.DataObject,
                                                         source: str, name: str) -> None:
    value = data.draw(ENGINE_INVALID[name] if name in ENGINE_INVALID else METHOD_INVALID[name], label=name)
    method = OWNER.get(name, "dml")
    options = {**TINY, "method": method, "num_peers": 1 if method == "baseline" else 2, name: value}
    out = tmp_path / f"run{abs(hash((source, name, repr(value))))}"
    if source == "api":
        with pytest.raises(OKDUserError) as error:
            okd.train(out, **options)
        message = str(error.value)
    else:
        flags = ["--quiet"]
        if source == "yaml":
            config = tmp_path / "c.yaml"
            config.write_text(yaml.safe_dump({k: v for k, v in options.items() if k != "quiet"}))
            flags += ["--config", str(config)]
        else:
            for key, v in options.items():
                if key != "quiet":
                    flags += [f"--{key.replace('_', '-')}", str(v)]
        try:
            code = main(["train", *flags, "--out", str(out)])
        except SystemExit as exc:  # argparse's own usage errors (a value after an on/off flag): usage + one error line
            code = exc.code
        message = capsys.readouterr().err.strip()
        assert code == 2, message
        message = message.splitlines()[-1] if message.startswith("usage:") else message
    assert message and "\n" not in message and "Traceback" not in message
    assert not out.exists()


@pytest.mark.parametrize("content", [b"\x00\x01\x02binary", b"\xff\xfe not utf-8", b"a: &x [1]\nb: *x\n"])
def test_config_files_that_are_not_small_text_are_refused(tmp_path: Path, content: bytes) -> None:
    config = tmp_path / "c.yaml"
    config.write_bytes(content)
    for path in (config, tmp_path, Path("/dev/zero")):
        with pytest.raises(OKDUserError, match="config file"):
            okd.train(tmp_path / "run", config=path, **{k: v for k, v in TINY.items() if k != "quiet"})
    big = tmp_path / "big.yaml"
    big.write_text("# " + "x" * (1 << 20) + "\n")
    with pytest.raises(OKDUserError, match="at most"):
        okd.train(tmp_path / "run", config=big)
    assert not (tmp_path / "run").exists()


def test_choices_are_case_insensitive() -> None:
    from okd.engine.options import train_config

    cfg = train_config({"method": "KDCL", "dataset": "Synthetic", "sampler": "RANDOM", "kdcl_rule": "Linear",
                        "nan_policy": "Skip-Step", "num_peers": 2})
    assert (cfg.method, cfg.dataset, cfg.sampler, cfg.kdcl_rule, cfg.nan_policy) == ("kdcl", "synthetic", "random", "linear", "skip-step")


@pytest.mark.parametrize("method, flag", [("dml", "--kd-t"), ("mcl", "--mcl-tau"), ("mcl_okd", "--nce-t")])
def test_a_temperature_below_the_floor_is_one_line_and_no_run_folder(method: str, flag: str, tmp_path, capsys) -> None:
    out = tmp_path / "run"
    assert main(["train", "--method", method, "--dataset", "synthetic", flag, "0.001", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"{flag} must be >= 0.01" in err and "got 0.001" in err
    assert not out.exists()
    assert main(["train", "--method", method, "--dataset", "synthetic", flag, "0", "--out", str(out)]) == 2
    assert f"{flag} must be > 0" in capsys.readouterr().err  # zero and below keep the range rule's words
