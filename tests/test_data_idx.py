"""IDX data sets (Fashion-MNIST, MNIST, KMNIST): reader, layouts, download, errors, CIFAR-path equality, resume."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

import okd.data.build as build_module
from datasets_helpers import IDX_STEMS, idx_arrays, idx_bytes, py2_pickle, write_idx_release, write_release
from okd.cli.main import main
from okd.data import DataConfig, build_data
from okd.data.idx import FASHION_MNIST, IDX_DATASETS, KMNIST, MNIST, load_idx, read_idx
from okd.engine.checkpoint import load_checkpoint
from okd.errors import OKDUserError

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def expected_cifar_shape(images: np.ndarray) -> np.ndarray:
    """28x28 grey -> 32x32 with a 2-pixel zero border, repeated over 3 channels (numpy, independently)."""
    padded = np.zeros((len(images), 32, 32), np.uint8)
    padded[:, 2:30, 2:30] = images
    return np.repeat(padded[:, None], 3, axis=1)


@pytest.mark.parametrize("gz", [True, False])
def test_reads_the_official_files_gz_or_raw(tmp_path: Path, gz: bool) -> None:
    train_x, train_y, test_x, test_y = load_idx(FASHION_MNIST, write_idx_release(tmp_path, gz=gz))
    arrays = idx_arrays()
    assert train_x.shape == (40, 3, 32, 32) and train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert np.array_equal(train_x.numpy(), expected_cifar_shape(arrays[0])) and train_y.tolist() == arrays[1].tolist()
    assert np.array_equal(test_x.numpy(), expected_cifar_shape(arrays[2])) and test_y.tolist() == arrays[3].tolist()


def test_same_pixels_as_torchvision(tmp_path: Path) -> None:
    import torchvision

    write_idx_release(tmp_path / "FashionMNIST" / "raw", gz=False)
    ours = load_idx(FASHION_MNIST, tmp_path / "FashionMNIST" / "raw")
    for train, images, labels in ((True, ours[0], ours[1]), (False, ours[2], ours[3])):
        reference = torchvision.datasets.FashionMNIST(str(tmp_path), train=train, download=False)
        assert torch.equal(reference.data, images[:, 0, 2:30, 2:30]) and torch.equal(reference.targets, labels)
    assert list(FASHION_MNIST.class_names) == torchvision.datasets.FashionMNIST.classes


def test_named_subfolder_and_prefers_raw(tmp_path: Path) -> None:
    write_idx_release(tmp_path / "kmnist", gz=True)
    assert torch.equal(load_idx(KMNIST, tmp_path)[1], torch.from_numpy(idx_arrays()[1].astype(np.int64)))
    other = idx_arrays(seed=1)
    write_idx_release(tmp_path / "kmnist", gz=False, arrays=other)  # raw beside .gz: the raw file is read
    assert torch.equal(load_idx(KMNIST, tmp_path)[1], torch.from_numpy(other[1].astype(np.int64)))


def corrupt(root: Path, stem: str, blob: bytes) -> Path:
    path = root / stem
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize(
    ("stem", "make", "says"),
    [
        ("train-images-idx3-ubyte", lambda b: b[:-100], "is truncated"),
        ("t10k-images-idx3-ubyte", lambda b: b + b"\0", "longer than its header says"),
        ("train-labels-idx1-ubyte", lambda b: idx_bytes(np.zeros((4, 28, 28), np.uint8)), "expected magic 00000801"),
        ("train-images-idx3-ubyte", lambda b: idx_bytes(np.zeros((40, 32, 32), np.uint8)), "shape [32, 32], expected [28, 28]"),
        ("t10k-labels-idx1-ubyte", lambda b: idx_bytes(np.zeros(19, np.uint8)), "holds 19 labels but"),
        ("train-labels-idx1-ubyte", lambda b: idx_bytes(np.full(40, 10, np.uint8)), "has label 10"),
        ("train-images-idx3-ubyte", lambda b: b[:3], "found 3 bytes"),
    ],
)
def test_bad_files_name_the_file(tmp_path: Path, stem: str, make, says: str) -> None:
    root = write_idx_release(tmp_path, gz=False)
    path = corrupt(root, stem, make((root / stem).read_bytes()))
    with pytest.raises(OKDUserError, match="ubyte") as info:
        load_idx(FASHION_MNIST, root)
    assert says in str(info.value) and str(path.parent) in str(info.value)


def test_corrupt_gzip_and_missing_files(tmp_path: Path) -> None:
    root = write_idx_release(tmp_path / "gz")
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(OKDUserError, match=r"cannot read IDX file .*t10k-images-idx3-ubyte\.gz: BadGzipFile"):
        load_idx(MNIST, root)
    truncated = gzip.compress(idx_bytes(idx_arrays()[2]))[:-5000]  # a download cut short
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(truncated)
    with pytest.raises(OKDUserError, match=r"t10k-images-idx3-ubyte\.gz"):
        load_idx(MNIST, root)
    (root / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(OKDUserError, match=r"incomplete MNIST folder .*missing t10k-labels-idx1-ubyte\[\.gz\]"):
        load_idx(MNIST, root)
    with pytest.raises(OKDUserError, match="no MNIST found at .*pass --data DIR holding them, or --download to fetch them into"):
        load_idx(MNIST, tmp_path / "empty")
    uninstalled = dataclasses.replace(FASHION_MNIST, default_dir=str(tmp_path / "usr-share"))  # no --data: the package's folder
    with pytest.raises(OKDUserError, match=r"no Fashion-MNIST found at .*usr-share: .*apt-get install dataset-fashion-mnist"):
        load_idx(uninstalled, None)


def release_server(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A file:// 'mirror' holding the .gz files, and their MD5s."""
    mirror = write_idx_release(tmp_path / "mirror")
    return mirror, {f"{s}.gz": hashlib.md5((mirror / f"{s}.gz").read_bytes()).hexdigest() for s in IDX_STEMS}


def test_download_checks_every_md5(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mirror, md5 = release_server(tmp_path)
    local = dataclasses.replace(FASHION_MNIST, mirror=mirror.as_uri() + "/", md5=md5)
    monkeypatch.setitem(IDX_DATASETS, "fashion-mnist", local)
    cfg = DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "got"), download=True, batch_size=8)
    spec, _, _ = build_data(cfg)
    assert (spec.num_train, spec.num_test) == (40, 20) and sorted(p.name for p in (tmp_path / "got").iterdir()) == sorted(md5)
    wrong = dataclasses.replace(local, md5={**md5, "t10k-labels-idx1-ubyte.gz": "0" * 32})
    with pytest.raises(OKDUserError, match=r"t10k-labels-idx1-ubyte\.gz has MD5 [0-9a-f]{32}, the published .* has 0{32}"):
        load_idx(wrong, tmp_path / "again", download=True)
    assert not (tmp_path / "again" / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list((tmp_path / "again").glob("*.part"))
    gone = dataclasses.replace(local, mirror=(tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(OKDUserError, match="could not download Fashion-MNIST from file://"):
        load_idx(gone, tmp_path / "third", download=True)


def write_as_cifar10(root: Path, arrays) -> None:
    """The same pixels (already 3x32x32) as an official CIFAR-10 python release."""
    train_x, train_y, test_x, test_y = (a.numpy() for a in arrays)
    chunks = np.array_split(np.arange(len(train_x)), 5)
    members = {
        f"data_batch_{i + 1}": py2_pickle({"data": train_x[c].reshape(len(c), -1), "labels": [int(v) for v in train_y[c]]})
        for i, c in enumerate(chunks)
    }
    members["test_batch"] = py2_pickle({"data": test_x.reshape(len(test_x), -1), "labels": [int(v) for v in test_y]})
    members["batches.meta"] = py2_pickle({"label_names": [f"c{i}" for i in range(10)]})
    root.mkdir(parents=True)
    write_release(root, "cifar-10-batches-py", "cifar-10-python.tar.gz", members, archive=False, folder=True)


def test_in_memory_batches_equal_the_cifar_path_on_the_same_pixels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_idx_release(tmp_path / "fm")
    write_as_cifar10(tmp_path / "c10", load_idx(FASHION_MNIST, root))
    stats = ((FASHION_MNIST.mean,) * 3, (FASHION_MNIST.std,) * 3)
    monkeypatch.setattr(build_module, "CIFAR10_MEAN", stats[0])  # the same normalisation, so batches compare exactly
    monkeypatch.setattr(build_module, "CIFAR10_STD", stats[1])
    common = {"batch_size": 8, "eval_batch_size": 7, "seed": 5}
    fm = build_data(DataConfig(dataset="fashion-mnist", data_dir=str(root), **common))
    c10 = build_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path / "c10"), **common))
    for epoch in (0, 1):
        pairs = list(zip(fm[1].epoch(epoch), c10[1].epoch(epoch), strict=True))
        assert len(pairs) == 5
        for a, b in pairs:
            assert torch.equal(a.images, b.images) and torch.equal(a.targets, b.targets) and torch.equal(a.indices, b.indices)
    for a, b in zip(fm[2], c10[2], strict=True):
        assert torch.equal(a.images, b.images)
    assert fm[0].class_names == FASHION_MNIST.class_names and fm[0].manifest == {"class_names": list(FASHION_MNIST.class_names)}


def test_digit_sets_are_not_mirrored(tmp_path: Path) -> None:
    root = write_idx_release(tmp_path)
    _, train, _ = build_data(DataConfig(dataset="mnist", data_dir=str(root), batch_size=40, seed=0))
    assert not train.flip and train.pad == 4  # crop only: a mirrored 2 or 7 is not a digit
    _, fm_train, _ = build_data(DataConfig(dataset="fashion-mnist", data_dir=str(root), batch_size=40, seed=0))
    assert fm_train.flip


TINY = ["--arch", "resnet32", "--batch-size", "20", "--eval-batch-size", "20", "--quiet", "--device", "cpu"]


def test_resume_on_fashion_mnist_is_bit_identical(tmp_path: Path) -> None:
    data = str(write_idx_release(tmp_path / "data"))
    run = lambda out, *extra: main(["train", "--dataset", "fashion-mnist", "--data", data, "--method", "dml", "--num-peers", "2",  # noqa: E731
                                    *TINY, "--out", str(tmp_path / out), *extra])
    assert run("full", "--epochs", "2") == 0
    assert run("split", "--epochs", "1") == 0
    assert run("split", "--epochs", "2", "--resume") == 0
    full, split = load_checkpoint(tmp_path / "full" / "last.pt"), load_checkpoint(tmp_path / "split" / "last.pt")
    assert full["model"].keys() == split["model"].keys()
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    assert json.loads((tmp_path / "split" / "data.json").read_text())["class_names"][0] == "T-shirt/top"


def test_cli_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = write_idx_release(tmp_path / "data", gz=False)
    (root / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(39, np.uint8)))
    assert main(["train", "--dataset", "mnist", "--data", str(root), *TINY, "--epochs", "1", "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "train-labels-idx1-ubyte holds 39 labels" in err and "Traceback" not in err
    good = str(write_idx_release(tmp_path / "good"))
    assert main(["train", "--dataset", "mnist", "--data", good, "--test-per-class", "3", *TINY, "--out", str(tmp_path / "s")]) == 2
    assert "--test-per-class must be in [1, 2] (the smallest class has 2 test images), got 3" in capsys.readouterr().err


def test_recipe_and_test_subset(tmp_path: Path) -> None:
    from okd.engine.config import TrainConfig
    from okd.engine.recipe import resolve_config

    cfg = resolve_config(TrainConfig(dataset="fashion-mnist", method="dml"))
    assert (cfg.epochs, cfg.batch_size, cfg.lr, cfg.wd) == (100, 128, 0.1, 5e-4)
    mcl = resolve_config(TrainConfig(dataset="kmnist", method="mcl"))
    assert (mcl.batch_size, mcl.lr) == (20, pytest.approx(0.1 * 20 / 128))  # m-per-class: 2 x 10 classes
    root = str(write_idx_release(tmp_path))
    spec, _, test = build_data(DataConfig(dataset="kmnist", data_dir=root, batch_size=8, eval_batch_size=100, test_per_class=1))
    labels = torch.cat([b.targets for b in test])
    assert spec.num_test == 10 and sorted(labels.tolist()) == list(range(10))
    first_of_each = np.sort(np.unique(idx_arrays()[3], return_index=True)[1])  # in test-set order
    assert labels.tolist() == idx_arrays()[3][first_of_each].tolist()


@pytest.mark.skipif(not DEBIAN.is_dir(), reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
def test_the_real_package_files(tmp_path: Path) -> None:
    pixels = torch.from_numpy(read_idx(DEBIAN / "train-images-idx3-ubyte.gz", 0x0803, (28, 28)))
    labels = torch.from_numpy(read_idx(DEBIAN / "t10k-labels-idx1-ubyte.gz", 0x0801, ()).astype(np.int64))
    assert len(pixels) == 60_000 and torch.bincount(labels).tolist() == [1000] * 10
    values = torch.bincount(pixels.flatten(), minlength=256).double()  # the declared statistics are the training set's own
    levels = torch.arange(256, dtype=torch.float64) / 255
    mean = (values * levels).sum() / values.sum()
    std = ((values * (levels - mean) ** 2).sum() / (values.sum() - 1)).sqrt()
    assert mean.item() == pytest.approx(FASHION_MNIST.mean, abs=5e-5) and std.item() == pytest.approx(FASHION_MNIST.std, abs=5e-5)
    out = tmp_path / "run"
    args = ["train", "--dataset", "fashion-mnist", "--method", "dml", "--num-peers", "2", "--train-per-class", "4",
            "--test-per-class", "5", "--epochs", "2", "--lr", "0.05", *TINY, "--out", str(out)]
    assert main(args) == 0
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2] and all(np.isfinite(r["train"]["total"]) for r in records)
    assert json.loads((out / "data.json").read_text())["class_names"] == list(FASHION_MNIST.class_names)


def test_deployed_preprocessing_replays_the_eval_loader_on_a_grey_png(tmp_path: Path) -> None:
    from PIL import Image

    from okd.data.preprocess import Preprocessing, preprocessing_for

    root = write_idx_release(tmp_path / "data")
    _, _, test = build_data(DataConfig(dataset="fashion-mnist", data_dir=str(root), batch_size=8, eval_batch_size=20))
    expected = next(iter(test)).images[:2]
    paths = []
    for i, image in enumerate(idx_arrays()[2][:2]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(image, mode="L").save(paths[-1])  # a 28x28 grey file, as a user would have it
    prep = preprocessing_for("fashion-mnist")
    assert torch.equal(prep.load(paths), expected)
    meta = prep.to_meta()
    assert (meta["input_size"], meta["preprocessing"]["center_crop"], meta["preprocessing"]["zero_pad"]) == (32, 28, 2)
    assert Preprocessing.from_meta(meta, "x") == prep
