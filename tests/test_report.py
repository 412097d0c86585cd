"""okd report / reproduce / plot on short real runs: cells must equal the runs' summary.json."""

from __future__ import annotations

import csv
import io
import json
import re
import shlex
import shutil
import statistics
from pathlib import Path

import pytest

from okd.cli.main import build_parser, main
from okd.report.paper import paper_results
from okd.report.reproduce import Job, command_lines, run_jobs, table_jobs

TINY = ["--synthetic-train", "32", "--synthetic-test", "16", "--synthetic-classes", "5", "--synthetic-size", "16",
        "--batch-size", "16", "--epochs", "1", "--quiet", "--device", "cpu"]
PEERS = ["--num-peers", "2"]

# The results tables of the original README (/work/shared/seed/original-readme.txt), verbatim.
README_TABLES = """\
DenseNet-40-12 | 0.19M | 0.07G | 29.17 | 27.34 (26.02) | 27.38 (26.19) | 29.01 (28.67) | 28.75 (27.51) | 26.04 (23.55) |
ResNet-32 | 0.47M | 0.07G | 28.91 | 24.92 (22.97) | 25.40 (24.03) | 25.74 (24.03) | 25.76 (23.73) | 24.52 (22.00) |
VGG-16 | 14.77M | 0.31G | 25.18 | 24.14 (23.27) | 23.58 (22.96) | 25.22 (25.12) | 24.86 (24.52) | 23.11 (22.36) |
ResNet-110 | 1.17M | 0.17G | 23.62 | 21.51 (19.12) | 21.16 (18.66) | 22.19 (20.23) | 21.05 (19.40) | 20.39 (18.29) |
HCGNet-A1 | 1.10M | 0.15G | 22.46 | 18.98 (17.86) | 19.04 (18.35) | 22.30 (21.64) | 21.54 (20.97) | 18.72 (17.54) |
ResNet-34 | 25.43 | 24.64 | 23.26 |
DenseNet-40-12 | 29.17 | 28.07 | 26.04 |
ResNet-32 | 28.91 | 27.29 | 24.52 |
VGG-16 | 25.18 | 23.86 | 23.11 |
ResNet-110 | 23.62 | 21.65 | 20.39 |
HCGNet-A1 | 22.46 | 20.76 | 18.72 |
"""
README_FILE = Path(__file__).resolve().parents[2] / "shared" / "seed" / "original-readme.txt"
ARCH_OF = {"DenseNet-40-12": "densenet40_12", "ResNet-32": "resnet32", "VGG-16": "vgg16", "ResNet-110": "resnet110",
           "HCGNet-A1": "hcgnet_a1", "ResNet-34": "resnet34"}


def _numbers(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"\d+\.\d+", cell)]


def test_paper_json_matches_readme_tables() -> None:
    if README_FILE.is_file():  # the verbatim copy above must be the README's own lines
        readme = {line.strip() for line in README_FILE.read_text(encoding="utf-8").splitlines()}
        assert all(line in readme for line in README_TABLES.splitlines())
    paper = paper_results()
    methods = ("dml", "cl_ilr", "one", "okddip", "mcl_okd")
    lines = README_TABLES.splitlines()
    for line in lines[:5]:
        name, params, flops, base, *cells = [c.strip() for c in line.split("|") if c.strip()]
        row = paper["cifar100"][ARCH_OF[name]]
        assert (row["model"], row["params"], row["flops"]) == (name, params, flops)
        assert row["baseline"] == {"single": float(base)}
        for method, cell in zip(methods, cells, strict=True):
            single, ens = _numbers(cell)
            assert row[method] == {"single": single, "ens": ens}, (name, method)
    name, base, mcl, mcl_ens = [c.strip() for c in lines[5].split("|") if c.strip()]
    assert paper["imagenet"]["resnet34"]["baseline"] == {"single": float(base)}
    assert paper["imagenet"]["resnet34"]["mcl_okd"] == {"single": float(mcl), "ens": float(mcl_ens)}
    for line in lines[6:]:
        name, base, mcl, full = [c.strip() for c in line.split("|") if c.strip()]
        row = paper["ablation"][ARCH_OF[name]]
        assert (row["baseline"], row["mcl"], row["mcl_dot"]) == (float(base), float(mcl), float(full))
        assert row["mcl_dot"] == paper["cifar100"][ARCH_OF[name]]["mcl_okd"]["single"]  # the same experiment
    assert len(paper["ablation"]) == 5 and len(paper["cifar100"]) == 5


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add spinning (conftest.py)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real 1-epoch runs in reproduce's folder layout: baseline, DML, MCL-OKD x2 seeds, +MCL; one unfinished copy."""
    root = tmp_path_factory.mktemp("runs")
    jobs = table_jobs("cifar100", [0], "synthetic", ["resnet32"], ["baseline", "dml", "mcl_okd"])
    jobs += [Job("mcl_okd", "resnet32", "synthetic", 1)]
    jobs += [j for j in table_jobs("ablation", [0], "synthetic", ["resnet32"], ["mcl_okd"]) if j.alpha0]
    for job in jobs:
        extra = TINY + ([] if job.method == "baseline" else PEERS) + (["--nce-k", "8"] if job.method == "mcl_okd" else [])
        assert main(job.train_args(root, None, extra)) == 0
    unfinished = root / "synthetic" / "resnet32" / "dml" / "seed7"
    shutil.copytree(Job("dml", "resnet32", "synthetic", 0).out(root), unfinished)
    summary = json.loads((unfinished / "summary.json").read_text())
    (unfinished / "summary.json").write_text(json.dumps({**summary, "finished": False, "seed": 7}))
    return root


def _summary(root: Path, method: str, seed: int = 0, alpha0: bool = False) -> dict:
    return json.loads((Job(method, "resnet32", "synthetic", seed, alpha0).out(root) / "summary.json").read_text())


def _report(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(["report", *map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


def _cells(tables: list[dict], kind: str, arch: str = "resnet32") -> dict:
    table = next(t for t in tables if t["table"] == kind)
    return next(r for r in table["rows"] if r["arch"] == arch)["cells"]


def test_json_cells_equal_the_summaries(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _report(capsys, runs, "--format", "json")
    assert code == 0
    assert "skipped" in err and "seed7" in err and "unfinished" in err
    data = json.loads(out)
    assert [s["reason"] for s in data["skipped"]] == ["unfinished (1/1 epochs)"]
    assert {t["table"] for t in data["tables"]} == {"main", "ablation"} and data["tables"][0]["dataset"] == "synthetic"
    cells = _cells(data["tables"], "main")
    base, dml = _summary(runs, "baseline"), _summary(runs, "dml")
    assert cells["baseline"]["top1_mean"] == base["last"]["deployed"]["top1"] and cells["baseline"]["n"] == 1
    assert cells["dml"]["top1_mean"] == dml["last"]["deployed"]["top1"]
    assert cells["dml"]["ens_top1_mean"] == dml["last"]["ensemble"]["top1"]
    mcl = [_summary(runs, "mcl_okd", s) for s in (0, 1)]
    single = [s["last"]["deployed"]["top1"] for s in mcl]
    ens = [s["last"]["ensemble"]["top1"] for s in mcl]
    assert mcl[0]["deployed_peer"] == 1  # MCL-OKD ships the last peer
    assert cells["mcl_okd"]["n"] == 2 and cells["mcl_okd"]["seeds"] == [0, 1]
    assert cells["mcl_okd"]["top1_mean"] == pytest.approx(statistics.fmean(single))
    assert cells["mcl_okd"]["top1_std"] == pytest.approx(statistics.stdev(single))
    assert cells["mcl_okd"]["ens_top1_mean"] == pytest.approx(statistics.fmean(ens))
    for missing in ("cl_ilr", "one", "okddip"):
        assert cells[missing]["n"] == 0 and cells[missing]["top1_mean"] is None
    ablation = _cells(data["tables"], "ablation")
    assert ablation["mcl"]["top1_mean"] == _summary(runs, "mcl_okd", alpha0=True)["last"]["deployed"]["top1"]
    assert ablation["mcl_dot"]["top1_mean"] == cells["mcl_okd"]["top1_mean"]  # alpha 0 is not in MCL-OKD
    row = next(r for r in data["tables"][0]["rows"] if r["arch"] == "resnet32")
    assert (row["params"], row["macs"]) == (base["params"]["deployed"], base["macs_per_image"])


def test_markdown_cells(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _report(capsys, runs)
    assert code == 0
    header = next(line for line in out.splitlines() if line.startswith("| Model") and "DML (Ens)" in line)
    names = [c.strip() for c in header.strip("|").split("|")]
    assert names == ["Model", "Params", "FLOPs", "Baseline", "DML (Ens)", "CL-ILR (Ens)", "ONE (Ens)", "OKDDip (Ens)",
                     "MCL-OKD (Ens)"]
    line = next(line for line in out.splitlines() if line.startswith("| ResNet-32") and line.count("|") == len(names) + 1)
    cells = dict(zip(names, [c.strip() for c in line.strip("|").split("|")]))
    base, dml = _summary(runs, "baseline"), _summary(runs, "dml")
    assert cells["Baseline"] == f"{base['last']['deployed']['top1']:.2f}"
    assert cells["DML (Ens)"] == f"{dml['last']['deployed']['top1']:.2f} ({dml['last']['ensemble']['top1']:.2f})"
    assert cells["CL-ILR (Ens)"] == "—" and cells["ONE (Ens)"] == "—"
    assert re.fullmatch(r"\d+\.\d\d ± \d+\.\d\d \(\d+\.\d\d ± \d+\.\d\d\) \(n=2\)", cells["MCL-OKD (Ens)"])
    assert cells["Params"] == f"{base['params']['deployed'] / 1e6:.2f}M"
    assert re.search(r"^\| DenseNet-40-12 +\| ", out, re.M) and re.search(r"^\| HCGNet-A1 +\| ", out, re.M)
    assert out.index("DenseNet-40-12") < out.index("ResNet-32") < out.index("VGG-16") < out.index("ResNet-110")
    assert "Ablation on synthetic" in out and "+MCL+DOT (MCL-OKD)" in out


def test_csv_parses_and_best_epoch(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _report(capsys, runs, "--format", "csv", "--epoch", "best", "--table", "main")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert len(rows) == 5 * 6  # every backbone x every method, empty or not
    dml = next(r for r in rows if r["arch"] == "resnet32" and r["method"] == "dml")
    summary = _summary(runs, "dml")
    assert float(dml["top1_mean"]) == summary["best"]["deployed"]["top1"] and dml["epoch"] == "best"
    assert float(dml["ens_top1_mean"]) == summary["best"]["ensemble"]["top1"]
    assert next(r for r in rows if r["arch"] == "vgg16" and r["method"] == "dml")["top1_mean"] == ""
    code, out, _ = _report(capsys, runs, "--epoch", "best")
    assert "selected on the test set" in out and "optimistic" in out


def test_paper_columns(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _report(capsys, runs, "--paper")
    assert code == 0 and "not comparable" in out and "Δ" not in out
    assert "24.52 (22.00)" in out  # the paper's MCL-OKD ResNet-32 figures, beside ours
    # The same run relabelled as CIFAR-100 is compared: paper figures and ours - paper.
    src = Job("dml", "resnet32", "synthetic", 0).out(runs)
    dst = tmp_path / "cifar_dml"
    shutil.copytree(src, dst)
    summary = json.loads((dst / "summary.json").read_text())
    (dst / "summary.json").write_text(json.dumps({**summary, "dataset": "cifar100"}))
    code, out, _ = _report(capsys, dst, "--paper", "--format", "json")
    cell = _cells(json.loads(out)["tables"], "main")["dml"]
    assert (cell["paper_top1"], cell["paper_ens_top1"]) == (24.92, 22.97)
    assert cell["diff_top1"] == pytest.approx(summary["last"]["deployed"]["top1"] - 24.92)
    code, out, _ = _report(capsys, dst, "--paper")
    assert "Δ DML (Ens)" in out and "CIFAR-100" in out and "not comparable" not in out
    assert f"{summary['last']['deployed']['top1'] - 24.92:+.2f}" in out


def test_imagenet_table(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Real summaries relabelled as ResNet-34 on ImageNet fill the ImageNet table; DML there is in no table."""
    for method in ("baseline", "mcl_okd", "dml"):
        dst = tmp_path / method
        shutil.copytree(Job(method, "resnet32", "synthetic", 0).out(runs), dst)
        summary = json.loads((dst / "summary.json").read_text())
        (dst / "summary.json").write_text(json.dumps({**summary, "dataset": "imagenet", "arch": "resnet34"}))
    code, out, err = _report(capsys, tmp_path, "--paper", "--format", "json")
    assert code == 0 and "dml resnet34 on imagenet) is in none of the tables" in err
    (table,) = json.loads(out)["tables"]
    assert table["table"] == "imagenet" and [c["header"] for c in table["columns"]] == ["Baseline", "MCL-OKD", "MCL-OKD (Ens)"]
    cells = table["rows"][0]["cells"]
    mcl = _summary(runs, "mcl_okd")
    assert cells["mcl_okd"]["top1_mean"] == mcl["last"]["deployed"]["top1"] and cells["mcl_okd"]["paper_top1"] == 24.64
    assert cells["mcl_okd_ens"]["diff_ens_top1"] == pytest.approx(mcl["last"]["ensemble"]["top1"] - 23.26)
    assert cells["baseline"]["paper_top1"] == 25.43


@pytest.mark.parametrize("make", ["missing", "empty", "only-unfinished", "other-dataset"])
def test_bad_input_exits_2(make: str, runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = {"missing": [tmp_path / "nope"], "empty": [tmp_path],
            "only-unfinished": [runs / "synthetic" / "resnet32" / "dml" / "seed7"],
            "other-dataset": [runs, "--dataset", "cifar100"]}[make]
    code, out, err = _report(capsys, *args)
    assert code == 2 and out == "" and err.count("error") == 1


def test_plots(runs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    code, _, err = _report(capsys, runs, "--plot", tmp_path / "table.png")
    assert code == 0 and (tmp_path / "table.png").read_bytes()[:4] == b"\x89PNG"
    mcl = runs / "synthetic" / "resnet32" / "mcl_okd"
    assert main(["plot", str(mcl), "--out", str(tmp_path / "curves")]) == 0
    pngs = sorted(str(p.relative_to(tmp_path / "curves")) for p in (tmp_path / "curves").rglob("*.png"))
    assert pngs == [f"seed{s}/{name}.png" for s in (0, 1) for name in ("test_error", "train_loss")]
    assert main(["plot", str(mcl / "seed0")]) == 0 and (mcl / "seed0" / "test_error.png").is_file()


def _captured_figures(monkeypatch: pytest.MonkeyPatch, module: object) -> list:
    """Figures the plotting code saves, kept for inspection (the PNG is still written)."""
    figures: list = []
    save = module.save  # type: ignore[attr-defined]
    monkeypatch.setattr(module, "save", lambda fig, path: figures.append(fig) or save(fig, path))
    return figures


def test_bar_chart_leaves_out_columns_without_runs(runs: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("matplotlib")
    import okd.report.plots as plots

    figures = _captured_figures(monkeypatch, plots)
    code, _, _ = _report(capsys, runs, "--plot", tmp_path / "table.png")
    assert code == 0 and len(figures) == 1
    main_ax, ablation_ax = figures[0].axes[:2]
    legend = [t.get_text() for t in main_ax.get_legend().get_texts()]
    assert {"Baseline", "DML", "MCL-OKD"} <= set(legend) and not {"CL-ILR", "ONE", "OKDDip"} & set(legend)
    from matplotlib.container import BarContainer

    assert sum(isinstance(c, BarContainer) for c in main_ax.containers) == 3
    bars = sorted((p.get_x() + p.get_width() / 2, p.get_height()) for p in main_ax.patches)
    expected = [_summary(runs, m)["last"]["deployed"]["top1"] for m in ("baseline", "dml")]
    assert [h for _, h in bars[:2]] == expected  # baseline, DML side by side, no empty slot between
    assert bars[1][0] - bars[0][0] == pytest.approx(0.8 / 3)
    assert [t.get_text() for t in ablation_ax.get_xticklabels()] == ["ResNet-32"]


def test_error_curves_keep_small_errors_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors falling from 90% to ~1% (and a 0 on the way) are drawn on a log axis that shows the last epochs."""
    pytest.importorskip("matplotlib")
    import okd.report.curves as curves

    run = tmp_path / "run"
    run.mkdir()
    errors = [[90.0, 88.0], [30.0, 25.0], [5.0, 0.0], [1.39, 1.11], [1.11, 0.83]]
    records = [{"epoch": e + 1, "lr": 0.1, "train": {"ce": 2.3 / 10 ** e, "total": 2.3 / 10 ** e - 5.0},
                "test": {"peer0": {"top1": a}, "peer1": {"top1": b}, "ensemble": {"top1": min(a, b)}}}
               for e, (a, b) in enumerate(errors)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    figures = _captured_figures(monkeypatch, curves)
    curves.plot_run(run, tmp_path / "out")
    error_ax = figures[0].axes[0]
    assert error_ax.get_yscale() == "log"
    low, high = error_ax.get_ylim()
    assert 0 < low < 0.83 and high >= 90.0 and low > 0.83 / 2  # the floor sits just below the smallest error
    peer1 = error_ax.get_lines()[1]
    assert list(peer1.get_ydata()) == [88.0, 25.0, low, 1.11, 0.83]  # the zero is drawn on the floor, not dropped
    assert [t.get_text() for t in error_ax.get_legend().get_texts()] == ["peer0: 1.11%", "peer1: 0.83%",
                                                                           "ensemble: 0.83%"]
    ce_ax, total_ax = figures[1].axes[:2]
    assert ce_ax.get_yscale() == "log" and total_ax.get_yscale() == "linear"  # a negative loss stays linear


def test_plot_without_matplotlib(runs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    monkeypatch.setitem(__import__("sys").modules, "matplotlib.figure", None)
    code, _, err = _report(capsys, runs, "--plot", "x.png")
    assert code == 2 and "pip install 'okd-torch[plot]'" in err


def _commands(capsys: pytest.CaptureFixture[str], *args: str) -> list[str]:
    assert main(["reproduce", *args]) == 0
    return capsys.readouterr().out.splitlines()


def test_reproduce_prints_a_parsable_command_per_cell(capsys: pytest.CaptureFixture[str]) -> None:
    from okd.cli.train import config_from_args
    from okd.engine.recipe import resolve_config

    lines = _commands(capsys, "--table", "cifar100", "--seeds", "0", "1", "2", "--data", "/data/c100", "--out-root", "out")
    commands = [line for line in lines if not line.startswith("#")]
    assert len(commands) == 5 * 6 * 3 and len({c.split("--out ")[1] for c in commands}) == 90
    parser = build_parser()
    seen = set()
    for command in commands:
        argv = shlex.split(command)
        assert argv[:2] == ["okd", "train"]
        cfg = resolve_config(config_from_args(parser.parse_args(argv[1:])))
        seen.add((cfg.method, cfg.arch, cfg.seed))
        assert cfg.dataset == "cifar100" and cfg.data == "/data/c100" and cfg.alpha is None
        assert argv[-1] == str(Job(cfg.method, cfg.arch, "cifar100", cfg.seed).out("out"))
    assert len(seen) == 90
    ablation = [line for line in _commands(capsys, "--table", "ablation") if not line.startswith("#")]
    assert len(ablation) == 15 and sum("--alpha 0" in line for line in ablation) == 5
    imagenet = _commands(capsys, "--table", "imagenet", "--", "--amp")
    assert sum(line.startswith("okd train") for line in imagenet) == 2
    assert sum(line.startswith("# torchrun --nproc_per_node 8 -m okd train") for line in imagenet) == 2
    assert all(line.endswith("--amp") for line in imagenet[1:])


def test_reproduce_pins_the_recipe_values(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Recipe-filled values are written into each command, from okd train's own recipe code."""
    from okd.methods import mcl_okd
    from okd.cli.train import config_from_args
    from okd.engine.recipe import resolve_config

    lines = _commands(capsys, "--table", "ablation", "--arch", "vgg16", "--data", "/d")
    assert lines[1:] == [
        "okd train --method baseline --arch vgg16 --dataset cifar100 --data /d --epochs 300 --batch-size 128 --lr 0.1 "
        "--wd 0.0005 --num-peers 1 --seed 0 --out runs/cifar100/vgg16/baseline/seed0",
        "okd train --method mcl_okd --arch vgg16 --dataset cifar100 --data /d --alpha 0 --epochs 300 --batch-size 64 "
        "--lr 0.05 --wd 0.0005 --num-peers 4 --nce-k 16384 --seed 0 --out runs/cifar100/vgg16/mcl_okd-alpha0/seed0",
        "okd train --method mcl_okd --arch vgg16 --dataset cifar100 --data /d --epochs 300 --batch-size 64 --lr 0.05 "
        "--wd 0.0005 --num-peers 4 --nce-k 16384 --seed 0 --out runs/cifar100/vgg16/mcl_okd/seed0",
    ]
    parser = build_parser()
    recipe_flag_names = {"--epochs", "--batch-size", "--lr", "--wd", "--num-peers", "--nce-k"}
    for line in lines[1:]:  # each pinned value is what okd train would have chosen without it
        argv = shlex.split(line)[1:]
        pinned = resolve_config(config_from_args(parser.parse_args(argv)))
        bare = [a for i, a in enumerate(argv) if not (a in recipe_flag_names or argv[i - 1] in recipe_flag_names)]
        assert resolve_config(config_from_args(parser.parse_args(bare))) == pinned
    # flags the user passes after `--` are theirs, not pinned twice
    (line,) = _commands(capsys, "--table", "imagenet", "--method", "mcl_okd", "--", "--epochs", "5", "--num-peers", "2")[1::2]
    assert line.count("--epochs") == line.count("--num-peers") == 1 and line.endswith("--epochs 5 --num-peers 2")
    # a later change of okd train's recipe changes the commands with it (no duplicated defaults)
    monkeypatch.setattr(mcl_okd, "NCE_K_BY_BACKBONE", {**mcl_okd.NCE_K_BY_BACKBONE, "vgg16": 4096})  # MCL-OKD's own recipe
    assert "--nce-k 4096" in _commands(capsys, "--table", "ablation", "--arch", "vgg16")[-1]


def test_reproduce_run_stops_at_first_failure(tmp_path: Path) -> None:
    jobs = table_jobs("imagenet", [0, 1])
    calls: list[list[str]] = []
    code = run_jobs(jobs, tmp_path, "/in", runner=lambda argv: calls.append(argv) or (3 if len(calls) == 2 else 0),
                    log=lambda _line: None)
    assert code == 3 and len(calls) == 2 and calls[0][1:4] == ["-m", "okd", "train"]
    finished = jobs[0].out(tmp_path)
    finished.mkdir(parents=True)
    (finished / "summary.json").write_text(json.dumps({"finished": True}))
    calls.clear()
    assert run_jobs(jobs, tmp_path, "/in", runner=lambda argv: calls.append(argv) or 0, log=lambda _line: None) == 0
    assert len(calls) == 3  # the finished run is not started again
    assert command_lines(jobs[:1], tmp_path, "/in")[0].startswith("okd train --method baseline --arch resnet34")


def test_reproduce_cli_run_returns_the_failing_exit_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    import okd.report.reproduce as reproduce

    calls: list[list[str]] = []
    monkeypatch.setattr(reproduce, "_subprocess_runner", lambda argv: calls.append(argv) or (0 if len(calls) < 2 else 5))
    assert main(["reproduce", "--table", "imagenet", "--run", "--out-root", str(tmp_path)]) == 5
    out, err = capsys.readouterr()
    assert len(calls) == 2 and "exit code 5" in err and out.count("# [") == 2 and "failed with exit code 5" in out


def test_reproduce_unknown_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["reproduce", "--table", "cifar10"]) == 2
    assert "unknown table" in capsys.readouterr().err


def test_arch_filter_keeps_only_those_rows(runs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = _report(capsys, runs, "--arch", "resnet32", "--table", "main")
    assert code == 0
    models = [line.split("|")[1].strip() for line in out.splitlines() if line.startswith("| ") and "Model" not in line]
    assert models == ["ResNet-32"]
    code, _, err = _report(capsys, runs, "--arch", "resnet33")
    assert code == 2 and "resnet33" in err and "resnet32" in err


def test_report_skips_a_run_it_cannot_read_with_a_note(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unreadable, binary or damaged summaries are each a note; the report of the other runs goes on."""
    good = tmp_path / "good"
    good.mkdir()
    summary = {"finished": True, "method": "dml", "arch": "resnet32", "dataset": "synthetic", "num_peers": 2, "seed": 0,
               "epochs": 1, "epochs_done": 1, "config": {}, "best": {},
               "last": {"deployed": {"top1": 10.0, "top5": 1.0}, "peer_mean": {"top1": 11.0, "top5": 1.0},
                        "ensemble": {"top1": 9.0, "top5": 1.0}}}
    (good / "summary.json").write_text(json.dumps(summary))
    for name, content in {"binary": b"\xff\xfe\x00garbage", "wrong_types": json.dumps({**summary, "last": {"deployed": {"top1": "x"}}}).encode(),
                          "config_list": json.dumps({**summary, "config": [1]}).encode()}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_bytes(content)
    (tmp_path / "folder_named_summary" / "summary.json").mkdir(parents=True)
    assert main(["report", str(tmp_path), "--format", "json"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for name in ("binary", "wrong_types", "config_list"):
        assert f"okd report: skipped {tmp_path / name}:" in err, err
