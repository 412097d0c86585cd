"""Exports at the size a run trained at, with what a deployer needs, and ``okd predict`` on image files.

One tiny folder run at a non-default --image-size (40; resnet32's own size is 32), images of many
sizes: each export must run at 40 px (and only there, for ONNX), carry the class names and the
preprocessing, and give the checkpoint's logits; ``okd predict`` must prepare image files exactly as
the run's evaluation loader did and print the checkpoint's classes.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from okd.cli.main import main

CLASSES = ("ant", "bee", "cow")
SIZE = 40

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models (conftest.py)


def write_images(root: Path) -> Path:
    """root/{train,val}/<class>/NN.(png|jpg), random RGB of varied sides: the resize and crop matter."""
    rng = np.random.RandomState(0)
    for split, count in (("train", 4), ("val", 2)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                h, w = rng.randint(30, 70, size=2)
                image = Image.fromarray(rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8))
                image.save(folder / f"{i:02d}.{'png' if i % 2 else 'jpg'}")
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("predict")
    data = write_images(root / "data")
    out = root / "run"
    assert main(["train", "--dataset", "folder", "--data", str(data), "--image-size", str(SIZE), "--method", "dml",
                 "--arch", "resnet32", "--num-peers", "2", "--batch-size", "6", "--epochs", "1", "--limit-batches", "1",
                 "--workers", "0", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    return out


@torch.no_grad()
def _checkpoint_view(run: Path) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The val image paths in loader order, the run's own evaluation batch of them, and the deployed peer's logits."""
    from okd.engine.checkpoint import load_checkpoint
    from okd.engine.config import config_from_mapping, replace
    from okd.engine.distributed import current
    from okd.engine.trainer import build_for_config

    state = load_checkpoint(run / "best.pt")
    cfg = replace(config_from_mapping(state["config"]), device="cpu", eval_batch_size=64)
    _spec, _train, loader, method = build_for_config(cfg, torch.device("cpu"), current(), state["data"], eval_only=True)
    method.load_state_dict(state["model"])
    method.eval()
    images = torch.cat([batch.images for batch in loader])
    paths = sorted(str(p) for p in (Path(cfg.data) / "val").rglob("*.*"))  # class-major, by path within a class
    return paths, images, method.peer_logits(method(images), method.deployed_peer)


def _export(run: Path, fmt: str, out: Path) -> None:
    assert main(["export", "--checkpoint", str(run), "--format", fmt, "--out", str(out)]) == 0


def test_exports_run_at_the_trained_size_and_carry_the_preprocessing(run: Path, tmp_path: Path, capsys) -> None:
    import onnxruntime as ort

    _paths, images, logits = _checkpoint_view(run)
    assert images.shape[-1] == SIZE
    capsys.readouterr()
    for fmt, name in (("onnx", "m.onnx"), ("torchscript", "m.ts"), ("state_dict", "m.pt")):
        _export(run, fmt, tmp_path / name)
    captured = capsys.readouterr()
    assert f"using {run / 'best.pt'}" in captured.err and f"{SIZE}px" in captured.out

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    meta = {k: json.loads(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    assert meta["class_names"] == list(CLASSES) and meta["input_size"] == SIZE
    assert meta["preprocessing"]["resize_shorter_side"] == SIZE and meta["preprocessing"]["center_crop"] == SIZE
    assert meta["mean"] == pytest.approx([0.485, 0.456, 0.406]) and meta["std"] == pytest.approx([0.229, 0.224, 0.225])
    (onnx_logits,) = session.run(["logits"], {"images": images.numpy()})  # the whole val set: a dynamic batch of 6
    assert torch.allclose(torch.from_numpy(onnx_logits), logits, atol=1e-4, rtol=1e-4)
    assert onnx_logits.argmax(1).tolist() == logits.argmax(1).tolist()
    with pytest.raises(Exception, match="(?i)dimension|shape"):  # the graph is fixed at the trained side
        session.run(["logits"], {"images": np.zeros((1, 3, 32, 32), dtype=np.float32)})

    extra = {"okd.json": ""}
    with warnings.catch_warnings():  # torch.jit.load says it is deprecated; it still loads what okd wrote
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(tmp_path / "m.ts"), _extra_files=extra)
    assert json.loads(extra["okd.json"])["class_names"] == list(CLASSES)
    assert torch.allclose(scripted(images), logits, atol=1e-5)
    beside = json.loads((tmp_path / "m.pt.json").read_text())
    assert beside == torch.load(tmp_path / "m.pt", weights_only=True)["meta"] and beside["input_size"] == SIZE


def test_predict_prepares_files_as_evaluation_and_prints_the_checkpoints_classes(run: Path, tmp_path: Path, capsys) -> None:
    import okd
    from okd.data.preprocess import preprocessing_for

    paths, images, logits = _checkpoint_view(run)
    assert torch.equal(preprocessing_for("folder", SIZE).load(paths), images)  # bit-identical to the eval loader
    expected = [CLASSES[i] for i in logits.argmax(1).tolist()]
    _export(run, "onnx", tmp_path / "m.onnx")
    _export(run, "state_dict", tmp_path / "m.pt")
    _export(run, "torchscript", tmp_path / "m.ts")
    models = [["--model", str(tmp_path / name)] for name in ("m.onnx", "m.pt", "m.ts")]
    for source in (["--checkpoint", str(run)], *models):
        capsys.readouterr()
        assert main(["predict", *source, "--format", "json", *paths]) == 0
        result = json.loads(capsys.readouterr().out)
        assert [r["image"] for r in result] == paths and [r["class"] for r in result] == expected
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run / "best.pt"), "--top-k", "2", paths[0]]) == 0
    table = capsys.readouterr().out
    assert paths[0] in table and expected[0] in table and "next 1" in table
    folder = okd.predict(str(run.parent / "data" / "val"), checkpoint=run)  # a folder of images, from Python
    assert [r["class"] for r in folder] == expected


def test_predict_and_eval_refuse_bad_inputs_in_one_line(run: Path, tmp_path: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), str(tmp_path / "nope.png")]) == 2
    assert capsys.readouterr().err.strip().endswith(f"image {tmp_path / 'nope.png'} does not exist")
    (tmp_path / "empty").mkdir()
    assert main(["eval", "--checkpoint", str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "without best.pt or last.pt" in err
    assert main(["eval", "--checkpoint", str(run), "--workers", "0", "--device", "cpu", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert json.loads(captured.out)["checkpoint"] == str(run / "best.pt") and "using" in captured.err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main(["predict", "--model", str(tmp_path / "junk.onnx"), str(run.parent / "data" / "val")]) == 2
    assert "neither an okd export" in capsys.readouterr().err
