"""``--data PATH`` without ``--dataset``: the dataset follows from what PATH holds, or the run is refused
with one line (it used to train on the embedded digits and ignore PATH)."""

from __future__ import annotations

from pathlib import Path

import pytest
from datasets_helpers import write_cifar10, write_cifar100, write_imagenet_tree

from okd.cli.main import main
from okd.data import DATASETS
from okd.data.infer import infer_dataset
from okd.engine.options import given_config
from okd.engine.recipe import resolve_config
from okd.errors import OKDUserError

IDX_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")


def _image_folder(root: Path) -> Path:
    for split in ("train", "val"):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
    return root


def _idx_folder(root: Path) -> Path:
    root.mkdir(parents=True)
    for name in IDX_NAMES:
        (root / name).write_bytes(b"\x00\x00\x08\x01")
    return root


def test_each_layout_names_its_dataset(tmp_path: Path) -> None:
    assert infer_dataset(write_cifar100(tmp_path / "c100"), DATASETS) == "cifar100"  # the unpacked folder
    assert infer_dataset(tmp_path / "c100", DATASETS) == "cifar100"  # its parent
    assert infer_dataset(write_cifar100(tmp_path / "a100", archive=True, folder=False), DATASETS) == "cifar100"
    assert infer_dataset(write_cifar10(tmp_path / "c10", archive=True, folder=False), DATASETS) == "cifar10"
    assert infer_dataset(write_cifar10(tmp_path / "f10").parent, DATASETS) == "cifar10"
    assert infer_dataset(_image_folder(tmp_path / "pets"), DATASETS) == "folder"
    assert infer_dataset(write_imagenet_tree(tmp_path / "tiny_imagenet", classes=2, per_class=1, size=8), DATASETS) == "folder"


def test_imagenet_is_1000_wordnet_folders(tmp_path: Path) -> None:
    for c in range(1000):
        (tmp_path / "train" / f"n{c:08d}").mkdir(parents=True)
    assert infer_dataset(tmp_path, DATASETS) == "imagenet"


def test_idx_files_name_their_release_by_folder(tmp_path: Path) -> None:
    known = (*DATASETS, "mnist", "fashion-mnist", "kmnist")
    assert infer_dataset(_idx_folder(tmp_path / "fashion-mnist"), known) == "fashion-mnist"
    assert infer_dataset(_idx_folder(tmp_path / "KMNIST"), known) == "kmnist"
    assert infer_dataset(_idx_folder(tmp_path / "mnist_raw") / IDX_NAMES[0], known) == "mnist"
    with pytest.raises(OKDUserError, match=r"--dataset fashion-mnist \| kmnist \| mnist"):
        infer_dataset(_idx_folder(tmp_path / "downloads"), known)
    with pytest.raises(OKDUserError, match="IDX files, which this version of okd does not read"):
        infer_dataset(tmp_path / "fashion-mnist", ("digits", "folder"))


@pytest.mark.parametrize("layout", ["empty", "missing", "download"])
def test_unknown_layouts_are_refused_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], layout: str) -> None:
    data = tmp_path / "data"
    if layout == "empty":
        (data / "images").mkdir(parents=True)
    args = ["train", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "run")]
    code = main(args + (["--download"] if layout == "download" else []))
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    expected = {"empty": "cannot tell which dataset", "missing": "does not exist", "download": "--download needs --dataset"}
    assert expected[layout] in err and not (tmp_path / "run").exists()


def test_resolved_config_takes_the_inferred_dataset_and_digits_without_data(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path / "pets")
    assert resolve_config(given_config({"data": str(folder)})).dataset == "folder"
    assert resolve_config(given_config({})).dataset == "digits"
    assert resolve_config(given_config({"dataset": "synthetic", "data": str(folder)})).dataset == "synthetic"  # given wins
