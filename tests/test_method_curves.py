"""okd plot --by-method: one line per method, the mean over seeds of the deployed test error per epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from okd.cli.main import main
from okd.report.method_curves import method_curves


def fake_run(folder: Path, method: str, errors: list[float], alpha: float | None = None) -> Path:
    folder.mkdir(parents=True)
    config = f"method: {method}\nseed: 0\n" + (f"alpha: {alpha}\n" if alpha is not None else "")
    (folder / "config.yaml").write_text(config)
    lines = [json.dumps({"epoch": i + 1, "test": {"deployed": {"top1": e}, "peer0": {"top1": e + 1}}}) for i, e in enumerate(errors)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_mean_and_std_over_seeds_per_method(tmp_path: Path) -> None:
    folders = [
        fake_run(tmp_path / "dml" / "s0", "dml", [50.0, 20.0, 10.0]),
        fake_run(tmp_path / "dml" / "s1", "dml", [40.0, 30.0]),  # unfinished: the line stops at epoch 2
        fake_run(tmp_path / "baseline" / "s0", "baseline", [60.0, 40.0, 30.0]),
        fake_run(tmp_path / "mcl" / "s0", "mcl_okd", [70.0, 35.0, 25.0], alpha=0.0),
    ]
    curves = {c.label: c for c in method_curves(folders)}
    assert [c.label for c in method_curves(folders)][0] == "baseline"
    dml = curves["dml"]
    assert (dml.runs, dml.epochs, dml.mean) == (2, [1, 2], [45.0, 25.0])
    assert dml.std == pytest.approx([50 ** 0.5, 50 ** 0.5])
    assert curves["mcl_okd (alpha 0)"].mean == [70.0, 35.0, 25.0] and curves["baseline"].std == [0.0, 0.0, 0.0]


def test_cli_writes_one_png(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    fake_run(tmp_path / "runs" / "a", "dml", [50.0, 20.0])
    fake_run(tmp_path / "runs" / "b", "kdcl", [55.0, 25.0])
    target = tmp_path / "cmp.png"
    assert main(["plot", str(tmp_path / "runs"), "--by-method", str(target)]) == 0
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and str(target) in capsys.readouterr().out
    assert not (tmp_path / "runs" / "a" / "test_error.png").exists()  # one figure instead of per-run ones


def test_twelve_methods_never_share_a_line_style_and_a_short_line_says_where_it_ends(tmp_path: Path,
                                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    import okd.report.method_curves as module

    figures = []
    real_save = module.save
    monkeypatch.setattr(module, "save", lambda fig, path: (figures.append(fig), real_save(fig, path))[1])
    folders = [fake_run(tmp_path / f"m{i}", f"plugin_method_{i}", [50.0 - i, 40.0 - i]) for i in range(12)]
    folders.append(fake_run(tmp_path / "baseline", "baseline", [60.0, 45.0]))
    folders.append(fake_run(tmp_path / "cut", "dml", [55.0]))
    module.plot_method_curves(folders, tmp_path / "cmp.png")
    lines = figures[0].axes[0].get_lines()
    assert len(lines) == 14
    looks = [(line.get_color(), line.get_linestyle()) for line in lines]
    assert len(set(looks)) == 14
    labels = [line.get_label() for line in lines]
    assert labels[0] == "baseline: 45.00% (n=1)" and "dml: 55.00% (n=1, epoch 1)" in labels
    assert "plugin_method_0: 40.00% (n=1)" in labels
