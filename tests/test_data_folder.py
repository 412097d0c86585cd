"""``--dataset folder``: layout and robustness checks, the seeded split, both storage paths, resume, eval.

The folders are tiny PIL-written trees in tmp_path. The in-memory path must give exactly the
CIFAR loader's batches on the same pixels; the CLI runs check what a user sees (exit 2 with one
line and no run folder on bad input, resume equal to an uninterrupted run, eval by class name).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from okd.cli.main import main
from okd.data import IMAGENET_MEAN, IMAGENET_STD, DataConfig, build_data
from okd.data.build import in_memory
from okd.data.folder import load_rgb, scan, split_class
from okd.data.imagenet import FolderTrainLoader
from okd.data.loaders import TensorTrainLoader
from okd.engine.checkpoint import load_checkpoint
from okd.errors import OKDUserError

CLASSES = ("cat", "dog", "eel")


def random_images(n: int, size: int, seed: int) -> np.ndarray:
    return np.random.RandomState(seed).randint(0, 256, size=(n, size, size, 3)).astype(np.uint8)


def write_folder(root: Path, per_class: int = 8, val_per_class: int | None = 3, size: int | tuple[int, int] = 20, seed: int = 0) -> Path:
    """``root/train/<class>/NN.png`` (+ ``val``), random RGB of ``size`` (one int: square; a pair: varied)."""
    rng = np.random.RandomState(seed)
    for split, count in (("train", per_class), ("val", val_per_class)):
        if count is None:
            continue
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = (size, size) if isinstance(size, int) else rng.randint(size[0], size[1] + 1, size=2)
                Image.fromarray(rng.randint(0, 256, size=(h, w, 3)).astype(np.uint8)).save(folder / f"{i:02d}.png")
    return root


def folder_config(root: Path, **kw) -> DataConfig:
    base = dict(dataset="folder", data_dir=str(root), batch_size=8, eval_batch_size=5, workers=0, seed=3, image_size=16)
    base.update(kw)
    return DataConfig(**base)


def train_cli(root: Path, out: Path, *extra: str) -> int:
    return main(["train", "--dataset", "folder", "--data", str(root), "--method", "baseline", "--arch", "resnet32",
                 "--batch-size", "8", "--eval-batch-size", "6", "--device", "cpu", "--image-size", "16", "--workers", "0",
                 "--quiet", "--out", str(out), *extra])


def refused(capsys: pytest.CaptureFixture[str], code: int, out: Path) -> str:
    """The CLI's one-line error (exit 2, no traceback, no run folder left behind)."""
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and not out.exists(), err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


def test_in_memory_batches_equal_the_cifar_loaders_bit_for_bit(tmp_path: Path) -> None:
    """Same uint8 pixels as PNG files: the folder path yields the CIFAR path's batches exactly."""
    train_x, val_x = random_images(24, 32, 1), random_images(9, 32, 2)
    train_y, val_y = np.repeat(np.arange(3), 8), np.repeat(np.arange(3), 3)
    for split, images, labels in (("train", train_x, train_y), ("val", val_x, val_y)):
        for i, (pixels, label) in enumerate(zip(images, labels)):
            folder = tmp_path / split / CLASSES[label]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    cfg = folder_config(tmp_path, image_size=32, in_memory="yes", channels_last=True)
    spec, train, test = build_data(cfg)
    assert isinstance(train, TensorTrainLoader) and (train.pad, train.flip) == (4, True)
    as_chw = lambda a: torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    arrays = (as_chw(train_x), torch.from_numpy(train_y), as_chw(val_x), torch.from_numpy(val_y))
    _, cifar_train, cifar_test = in_memory("cifar10", arrays, 3, IMAGENET_MEAN, IMAGENET_STD, 4, True, cfg, torch.device("cpu"))
    assert spec.train_targets.tolist() == train_y.tolist() and spec.class_names == CLASSES
    for epoch in (0, 1):
        for ours, theirs in zip(train.epoch(epoch), cifar_train.epoch(epoch), strict=True):
            assert torch.equal(ours.indices, theirs.indices) and torch.equal(ours.targets, theirs.targets)
            assert torch.equal(ours.images, theirs.images)
            assert ours.images.is_contiguous(memory_format=torch.channels_last)
    for ours, theirs in zip(test, cifar_test, strict=True):
        assert torch.equal(ours.images, theirs.images) and torch.equal(ours.targets, theirs.targets)


def test_decoding_converts_modes_resizes_and_skips_non_images(tmp_path: Path) -> None:
    rng = np.random.RandomState(0)
    train = tmp_path / "train"
    for name in CLASSES:
        (train / name).mkdir(parents=True)
    rgb = rng.randint(0, 256, size=(13, 37, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(train / "cat" / "wide.JPG", quality=95)  # upper-case extension, odd size
    Image.fromarray(rgb[..., 0]).save(train / "cat" / "gray.jpeg")
    Image.fromarray(rgb).convert("CMYK").save(train / "dog" / "cmyk.jpg")
    Image.fromarray(np.dstack([rgb, rgb[..., :1]])).save(train / "dog" / "alpha.png")
    Image.fromarray(rgb).quantize(16).save(train / "eel" / "palette.png", transparency=0)
    Image.fromarray(rgb).save(train / "eel" / "bitmap.bmp")
    (train / "eel" / "notes.txt").write_text("not an image")
    (train / "eel" / ".DS_Store").write_bytes(b"\x00\x01")
    for name in CLASSES:
        (tmp_path / "val" / name).mkdir(parents=True)
        Image.fromarray(rgb).save(tmp_path / "val" / name / "v.png")
    spec, loader, test = build_data(folder_config(tmp_path, in_memory="yes", image_size=12))
    assert (spec.num_train, spec.num_test) == (6, 3) and spec.train_targets.tolist() == [0, 0, 1, 1, 2, 2]
    assert loader.images.shape == (6, 3, 12, 12) and loader.images.dtype == torch.uint8
    # the documented rule: shorter side to 12 (bilinear, antialiased), centre crop 12 x 12
    expected = Image.open(train / "eel" / "bitmap.bmp").resize((34, 12), Image.BILINEAR).crop((11, 0, 23, 12))
    assert torch.equal(loader.images[4], torch.from_numpy(np.array(expected)).permute(2, 0, 1))  # eel: bitmap, palette
    assert torch.equal(test.images[0], loader.images[4])  # the same pixels, decoded the same way
    assert load_rgb(str(train / "cat" / "gray.jpeg")).mode == "RGB"


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5])
def test_split_is_seeded_stratified_and_a_pure_function_of_the_file_list(tmp_path: Path, fraction: float) -> None:
    files = [f"{i:03d}.png" for i in range(40)]
    held = split_class(files, fraction, 7, "cat")
    assert len(held) == round(fraction * 40) and held == split_class(list(files), fraction, 7, "cat")
    assert held != split_class(files, fraction, 8, "cat")
    assert split_class(files[:1], fraction, 7, "cat") == set() and len(split_class(files[:2], 0.1, 7, "cat")) == 1
    root = write_folder(tmp_path, per_class=10, val_per_class=None)
    first = scan(root, folder_config(root, val_split=fraction), None)
    again = scan(root, folder_config(root, val_split=fraction), None)
    assert first.val == again.val and first.val_files == again.val_files
    per_class = int(fraction * 10 + 0.5)  # halves round up: 2.5 -> 3
    assert [label for _, label in first.val] == [c for c in range(3) for _ in range(per_class)]
    assert first.train_counts == [10 - per_class] * 3
    assert not {path for path, _ in first.train} & {path for path, _ in first.val}


def test_streamed_path_uses_the_imagenet_loaders_and_the_same_eval_images(tmp_path: Path) -> None:
    root = write_folder(tmp_path, per_class=4, val_per_class=2, size=(12, 40))
    spec, train, test = build_data(folder_config(root, in_memory="no"))
    assert isinstance(train, FolderTrainLoader) and spec.manifest["in_memory"] is False
    batches = list(train.epoch(0))
    assert [tuple(b.images.shape) for b in batches] == [(8, 3, 16, 16), (4, 3, 16, 16)]
    assert torch.equal(torch.cat([b.indices for b in batches]).sort().values, torch.arange(12))
    _, _, memory_test = build_data(folder_config(root, in_memory="yes"))
    for streamed, decoded in zip(test, memory_test, strict=True):
        assert torch.equal(streamed.images, decoded.images) and torch.equal(streamed.targets, decoded.targets)


def test_auto_decodes_into_memory_only_under_the_budget(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import okd.data.folder as folder

    root = write_folder(tmp_path, per_class=2, val_per_class=1)
    needed = 9 * 3 * 16 * 16
    monkeypatch.setattr(folder, "memory_budget", lambda device: needed)
    assert isinstance(build_data(folder_config(root))[1], TensorTrainLoader)
    monkeypatch.setattr(folder, "memory_budget", lambda device: needed - 1)
    assert isinstance(build_data(folder_config(root))[1], FolderTrainLoader)


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("storage", ["yes", "no"])
def test_an_undecodable_file_is_named(tmp_path: Path, workers: int, storage: str) -> None:
    root = write_folder(tmp_path, per_class=3, val_per_class=1)
    broken = root / "train" / "dog" / "01.png"
    broken.write_bytes(b"\x89PNG but not really")
    with pytest.raises(OKDUserError, match=f"cannot decode image {broken}") as info:
        _, train, _ = build_data(folder_config(root, in_memory=storage, workers=workers))
        list(train.epoch(0))
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda root: (root / "train").rename(root / "training"), "no image folder at {root}: {root}/train is missing"),
        (lambda root: (root / "train" / "fox").mkdir(), "class folder {root}/train/fox holds no images"),
        (lambda root: (root / "val" / "yak").mkdir(), "validation class folder {root}/val/yak has no counterpart"),
        (lambda root: (root / "val").rename(root / "v"), "no validation folder {root}/val: add it, or pass --val-split"),
    ],
)
def test_layout_problems_exit_2_naming_the_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str], change, message: str) -> None:
    root = write_folder(tmp_path / "data", per_class=2, val_per_class=1)
    change(root)
    out = tmp_path / "run"
    line = refused(capsys, train_cli(root, out, "--epochs", "1"), out)
    assert message.format(root=root) in line


@pytest.mark.parametrize(
    "args, message",
    [
        (["--val-split", "1.5"], "--val-split must be a fraction strictly between 0 and 1"),
        (["--image-size", "4"], "--image-size must be at least 8 pixels"),
        (["--dataset", "digits"], "--image-size only apply to --dataset folder"),
    ],
)
def test_bad_options_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str) -> None:
    root = write_folder(tmp_path / "data", per_class=2, val_per_class=1)
    out = tmp_path / "run"
    line = refused(capsys, train_cli(root, out, *args), out)
    assert message in line


def test_an_undecodable_file_through_the_cli_leaves_no_run_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "data", per_class=2, val_per_class=1)
    (root / "val" / "eel" / "00.png").write_text("plain text in a png")
    out = tmp_path / "run"
    assert f"cannot decode image {root}/val/eel/00.png" in refused(capsys, train_cli(root, out, "--epochs", "1"), out)


def test_resume_in_memory_is_bit_identical_and_refuses_changed_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "data", per_class=5, val_per_class=None)
    args = ("--val-split", "0.25", "--in-memory", "yes")
    assert train_cli(root, tmp_path / "full", *args, "--epochs", "2") == 0
    assert train_cli(root, tmp_path / "split", *args, "--epochs", "1") == 0
    assert train_cli(root, tmp_path / "split", *args, "--epochs", "2", "--resume") == 0
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert all(torch.equal(value, split["model"][key]) for key, value in full["model"].items())
    assert full["data"] == split["data"] and len(full["data"]["val_files"]) == 3  # round(0.25 * 5) = 1 per class
    saved = json.loads((tmp_path / "split" / "data.json").read_text())
    assert saved["val_files"] == full["data"]["val_files"] and saved["class_names"] == list(CLASSES)
    summary = json.loads((tmp_path / "split" / "summary.json").read_text())
    assert summary["class_names"] == list(CLASSES) and summary["finished"]

    Image.fromarray(random_images(1, 20, 9)[0]).save(root / "train" / "dog" / "new.png")
    before = (tmp_path / "split" / "last.pt").read_bytes()
    capsys.readouterr()
    assert train_cli(root, tmp_path / "split", *args, "--epochs", "3", "--resume") == 2
    err = capsys.readouterr().err
    assert f"--resume: {root}/train/dog changed since the run began (5 images then, 6 now)" in err
    assert (tmp_path / "split" / "last.pt").read_bytes() == before


def test_eval_follows_the_saved_split_and_maps_classes_by_name(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_folder(tmp_path / "data", per_class=4, val_per_class=2)
    out = tmp_path / "run"
    assert train_cli(root, out, "--epochs", "1", "--limit-batches", "1") == 0
    logged = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])["test"]
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--format", "json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["errors"]["deployed"] == pytest.approx(logged["deployed"])

    # another folder with only val/, fewer classes: labels follow the saved names, not the folder's order
    other = tmp_path / "other"
    for name in ("eel", "cat"):
        (other / "val" / name).mkdir(parents=True)
        for image in (root / "val" / name).iterdir():
            (other / "val" / name / image.name).write_bytes(image.read_bytes())
    state = load_checkpoint(out / "last.pt")
    cfg = folder_config(other, manifest=state["data"], eval_only=True)
    spec, train, test = build_data(cfg)
    assert train is None and spec.class_names == CLASSES and spec.num_train == 12
    assert torch.cat([b.targets for b in test]).tolist() == [0, 0, 2, 2]
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--data", str(other)]) == 0
    (other / "val" / "yak").mkdir()
    capsys.readouterr()
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu", "--data", str(other)]) == 2
    assert f"validation class folder {other}/val/yak has no counterpart" in capsys.readouterr().err


def test_streamed_training_through_the_cli(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "data", per_class=3, val_per_class=1, size=(10, 30))
    out = tmp_path / "run"
    assert train_cli(root, out, "--epochs", "1", "--in-memory", "no", "--limit-batches", "1") == 0
    state = load_checkpoint(out / "last.pt")
    assert state["data"]["in_memory"] is False and state["config"]["image_size"] == 16


def test_image_size_defaults_to_the_backbones(tmp_path: Path) -> None:
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import resolve_config

    cfg = resolve_config(TrainConfig(dataset="folder", data=str(tmp_path), arch="resnet32"))
    assert cfg.image_size == 32 and cfg.in_memory == "auto" and cfg.val_split is None
    assert resolve_config(TrainConfig(dataset="folder", data=str(tmp_path), arch="resnet34")).image_size == 224
