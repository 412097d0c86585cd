"""okd export reproduces the checkpoint's logits: plain state dict and TorchScript exactly, ONNX to round-off."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from okd.cli.main import main

TINY = ["--dataset", "synthetic", "--synthetic-train", "32", "--synthetic-test", "16", "--synthetic-classes", "5",
        "--synthetic-size", "16", "--batch-size", "16", "--epochs", "1", "--quiet", "--device", "cpu", "--num-peers", "2"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: threads only add spinning (conftest.py)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """1-epoch ONE (gated ensemble, peer 0 deployed) and MCL-OKD (memory banks, last peer deployed) runs."""
    root = tmp_path_factory.mktemp("export_runs")
    for method, extra in (("one", []), ("mcl_okd", ["--nce-k", "8"])):
        assert main(["train", *TINY, *extra, "--method", method, "--out", str(root / method)]) == 0
    return {m: root / m / "best.pt" for m in ("one", "mcl_okd")}


def _reference(checkpoint: Path) -> tuple[torch.nn.Module, torch.Tensor]:
    """The trained method rebuilt the way `okd eval` does (with its data), eval mode, and a test batch."""
    from okd.engine.checkpoint import load_checkpoint
    from okd.engine.config import config_from_mapping, replace
    from okd.engine.distributed import current
    from okd.engine.trainer import build_for_config

    state = load_checkpoint(checkpoint)
    cfg = replace(config_from_mapping(state["config"]), device="cpu")
    _spec, _train, eval_loader, method = build_for_config(cfg, torch.device("cpu"), current())
    method.load_state_dict(state["model"])
    images = next(iter(eval_loader)).images
    return method.eval(), images


def _export(checkpoint: Path, peer: str, fmt: str, out: Path) -> None:
    assert main(["export", "--checkpoint", str(checkpoint), "--peer", peer, "--format", fmt, "--out", str(out)]) == 0


@torch.no_grad()
def test_state_dict_is_the_plain_backbone(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from okd.models import create_backbone
    from okd.report.export import load_exported_backbone

    method, images = _reference(checkpoints["mcl_okd"])
    _export(checkpoints["mcl_okd"], "deployed", "state_dict", tmp_path / "peer.pt")
    blob = torch.load(tmp_path / "peer.pt", weights_only=True)
    meta = blob["meta"]
    assert meta["peer"] == method.deployed_peer == 1 and meta["arch"] == "resnet32" and meta["num_classes"] == 5
    assert meta["input_size"] == 16 and len(meta["mean"]) == len(meta["std"]) == 3
    net = create_backbone(meta["arch"], meta["num_classes"])
    net.load_state_dict(blob["state_dict"], strict=True)
    expected = method(images).logits[1]
    assert torch.equal(net.eval()(images), expected)
    assert torch.equal(load_exported_backbone(tmp_path / "peer.pt")(images), expected)
    _export(checkpoints["mcl_okd"], "0", "state_dict", tmp_path / "peer0.pt")
    net.load_state_dict(torch.load(tmp_path / "peer0.pt", weights_only=True)["state_dict"], strict=True)
    assert torch.equal(net(images), method(images).logits[0])


@torch.no_grad()
def test_torchscript_peer_and_gated_ensemble(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    from okd.engine.checkpoint import load_checkpoint, save_checkpoint

    state = load_checkpoint(checkpoints["one"])  # after one short epoch the gate may still be uniform: skew it
    state["model"]["gate.1.bias"] = torch.tensor([3.0, 0.5])
    skewed = tmp_path / "skewed.pt"
    save_checkpoint(skewed, {k: v for k, v in state.items() if k != "format"})
    method, images = _reference(skewed)
    _export(skewed, "1", "torchscript", tmp_path / "peer1.ts")
    _export(skewed, "ensemble", "torchscript", tmp_path / "ens.ts")
    output = method(images)
    assert torch.equal(torch.jit.load(str(tmp_path / "peer1.ts"))(images), output.logits[1])
    ensemble = method.ensemble_logits(output)
    assert not torch.allclose(ensemble, torch.stack(output.logits).mean(0))  # the gate matters
    assert torch.equal(torch.jit.load(str(tmp_path / "ens.ts"))(images), ensemble)


@torch.no_grad()
def test_torchscript_ensemble_drops_training_state(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    method, images = _reference(checkpoints["mcl_okd"])
    _export(checkpoints["mcl_okd"], "ensemble", "torchscript", tmp_path / "ens.ts")
    module = torch.jit.load(str(tmp_path / "ens.ts"))
    assert torch.equal(module(images), method.ensemble_logits(method(images)))
    banks = {name: b.numel() for name, b in module.named_buffers() if "memory" in name}
    assert banks and not any(banks.values())  # memory banks are emptied, not shipped


def _onnx_session(checkpoint: Path, peer: str, out: Path):
    """Export ``peer`` to ONNX and return a function running it in onnxruntime (skips without it)."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    _export(checkpoint, peer, "onnx", out)
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda images: torch.from_numpy(session.run(["logits"], {"images": images.numpy()})[0])


def _assert_within_round_off(got: torch.Tensor, expected: torch.Tensor) -> None:
    scale = max(1.0, float(expected.abs().max()))  # float32 round-off grows with the logits' size
    assert got.shape == expected.shape and float((got - expected).abs().max()) <= 1e-4 * scale


@torch.no_grad()
def test_onnx_matches_within_round_off(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    method, images = _reference(checkpoints["one"])
    run = _onnx_session(checkpoints["one"], "ensemble", tmp_path / "ens.onnx")
    _assert_within_round_off(run(images), method.ensemble_logits(method(images)))
    assert run(images[:1]).shape == (1, 5)  # dynamic batch


@torch.no_grad()
def test_onnx_single_peer_is_the_plain_backbone(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    method, images = _reference(checkpoints["mcl_okd"])
    run = _onnx_session(checkpoints["mcl_okd"], "deployed", tmp_path / "peer.onnx")
    expected = method(images).logits[method.deployed_peer]
    assert method.deployed_peer == 1 and not torch.allclose(expected, method(images).logits[0])  # not any peer
    _assert_within_round_off(run(images), expected)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "peer.onnx")).metadata_props}
    assert meta["peer"] == "1" and meta["arch"] == '"resnet32"'


@pytest.mark.parametrize("fmt, relative_error", [("state_dict", 0.0), ("torchscript", 1e-4), ("onnx", 1e-2)])
def test_logit_mismatch_exits_2_and_writes_nothing(fmt: str, relative_error: float, checkpoints: dict[str, Path],
                                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """The exported file is re-run before it is moved into place; a perturbed re-run must fail the export."""
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    from okd.report import export_formats

    run_file = getattr(export_formats, f"run_{fmt}")

    def perturbed(path: Path, example: torch.Tensor) -> torch.Tensor:
        logits = run_file(path, example).clone()
        if relative_error == 0.0:  # one float32 ulp: a state dict must give bit-identical logits
            logits[0, 0] = torch.nextafter(logits[0, 0], torch.tensor(float("inf")))
        else:
            logits[0, 0] += relative_error * max(1.0, float(logits.abs().max()))
        return logits

    monkeypatch.setattr(export_formats, f"run_{fmt}", perturbed)
    out = tmp_path / "exports" / f"model.{fmt}"
    code = main(["export", "--checkpoint", str(checkpoints["mcl_okd"]), "--format", fmt, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "does not reproduce the checkpoint's logits" in err and err.count("\n") == 1
    assert list(out.parent.iterdir()) == []  # neither the file nor its temporary copy


def test_onnx_within_round_off_passes_and_reports_the_check(checkpoints: dict[str, Path], tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from okd.report import export_formats

    run_onnx = export_formats.run_onnx
    monkeypatch.setattr(export_formats, "run_onnx", lambda path, x: run_onnx(path, x) * (1 + 2e-5))
    _export(checkpoints["one"], "0", "onnx", tmp_path / "m.onnx")
    out = capsys.readouterr().out
    assert "checked: max |logit difference|" in out and (tmp_path / "m.onnx").stat().st_size > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_onnx_without_onnxruntime_warns_it_is_unchecked(checkpoints: dict[str, Path], tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    _export(checkpoints["one"], "0", "onnx", tmp_path / "m.onnx")
    out, err = capsys.readouterr()
    assert "NOT checked" in out and (tmp_path / "m.onnx").is_file()
    warning = err.strip()
    assert "\n" not in warning and "onnxruntime is not installed" in warning and "not compared" in warning
    assert "pip install 'okd-torch[export]'" in warning


@pytest.mark.parametrize("args, message", [
    (["--peer", "7"], "peers 0..1"),
    (["--peer", "ensemble", "--format", "state_dict"], "torchscript or onnx"),
    (["--peer", "last"], "--peer must be"),
])
def test_bad_peer_exits_2(args: list[str], message: str, checkpoints: dict[str, Path], tmp_path: Path,
                          capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["export", "--checkpoint", str(checkpoints["one"]), "--out", str(tmp_path / "x"), *args])
    assert code == 2 and message in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_not_a_checkpoint_and_missing_onnx(checkpoints: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    assert main(["export", "--checkpoint", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "y")]) == 2
    monkeypatch.setitem(sys.modules, "onnx", None)
    code = main(["export", "--checkpoint", str(checkpoints["one"]), "--format", "onnx", "--out", str(tmp_path / "z.onnx")])
    assert code == 2 and "pip install 'okd-torch[export]'" in capsys.readouterr().err


def test_export_difference_counts_matching_overflow_as_equal_and_any_other_non_finite_as_a_mismatch() -> None:
    from okd.report.export import _difference

    inf, nan = float("inf"), float("nan")
    reference = torch.tensor([[1.0, inf, nan, -inf]])
    assert _difference(reference.clone(), reference) == 0.0  # a barely trained net overflowing identically
    assert _difference(torch.tensor([[1.25, inf, nan, -inf]]), reference) == 0.25
    for produced in ([1.0, -inf, nan, -inf], [1.0, inf, 0.0, -inf], [nan, inf, nan, -inf]):
        assert _difference(torch.tensor([produced]), reference) == inf
    assert _difference(torch.zeros(1, 3), reference) == inf  # another shape
