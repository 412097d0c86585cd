"""CIFAR-10 through the same reader as CIFAR-100: official layouts, class names, download, errors, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from datasets_helpers import CIFAR10_NAMES, cifar10_batch, cifar10_expected, py2_pickle, write_cifar10, write_cifar100
from okd.cli.main import main
from okd.data import CIFAR10_MEAN, CIFAR10_STD, DataConfig, build_data
from okd.data.cifar import CIFAR10, load_cifar10
from okd.errors import OKDUserError


def assert_matches_expected(arrays) -> None:
    train_x, train_y, test_x, test_y = arrays
    expected = cifar10_expected()
    assert train_x.shape == (30, 3, 32, 32) and train_x.dtype == torch.uint8 and train_y.dtype == torch.int64
    assert np.array_equal(train_x.reshape(-1, 3072).numpy(), expected[0]) and train_y.tolist() == expected[1]
    assert np.array_equal(test_x.reshape(-1, 3072).numpy(), expected[2]) and test_y.tolist() == expected[3]


def test_same_as_torchvision(tmp_path, monkeypatch):
    import torchvision
    import torchvision.datasets.cifar as tv_cifar

    write_cifar10(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # tiny files, other MD5s
    train_x, train_y, test_x, test_y = load_cifar10(tmp_path)
    for train, images, labels in ((True, train_x, train_y), (False, test_x, test_y)):
        reference = torchvision.datasets.CIFAR10(str(tmp_path), train=train, download=False)
        assert np.array_equal(reference.data, images.permute(0, 2, 3, 1).numpy())
        assert reference.targets == labels.tolist()
        assert reference.classes == CIFAR10_NAMES


def test_every_path_form(tmp_path):
    folder = write_cifar10(tmp_path / "both", archive=True)
    for path in (folder, folder.parent, folder.parent / "cifar-10-python.tar.gz"):
        assert_matches_expected(load_cifar10(path))
    archive = write_cifar10(tmp_path / "only_archive", archive=True, folder=False)
    assert_matches_expected(load_cifar10(archive.parent))


def test_build_data_spec_names_and_normalisation(tmp_path):
    write_cifar10(tmp_path)
    spec, train, test = build_data(DataConfig(dataset="cifar10", data_dir=str(tmp_path), batch_size=8, eval_batch_size=4))
    assert (spec.name, spec.num_classes, spec.num_train, spec.num_test, spec.input_size) == ("cifar10", 10, 30, 10, 32)
    assert spec.class_names == tuple(CIFAR10_NAMES) and spec.manifest == {"class_names": CIFAR10_NAMES}
    assert len(train) == 4 and [b.images.shape[0] for b in train.epoch(0)] == [8, 8, 8, 6]
    test_x = torch.from_numpy(cifar10_expected()[2]).view(-1, 3, 32, 32).float() / 255
    expected = (test_x - torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    assert torch.allclose(torch.cat([b.images for b in test]), expected, atol=1e-5)


def test_cifar100_exposes_its_fine_label_names(tmp_path):
    write_cifar100(tmp_path)
    spec = build_data(DataConfig(dataset="cifar100", data_dir=str(tmp_path), batch_size=8))[0]
    assert spec.class_names == tuple(f"fine{i}" for i in range(100))


def test_errors_name_the_release_and_member(tmp_path):
    folder = write_cifar10(tmp_path)
    (folder / "data_batch_3").unlink()
    with pytest.raises(OKDUserError, match="incomplete CIFAR-10 folder .*cifar-10-batches-py: missing data_batch_3"):
        load_cifar10(tmp_path)
    (folder / "data_batch_3").write_bytes(py2_pickle({**cifar10_batch(6, 3, "x"), "labels": [10] * 6}))
    with pytest.raises(OKDUserError, match="data_batch_3 is not a CIFAR-10 pickle: expected 'labels' with 6 labels in 0..9"):
        load_cifar10(tmp_path)
    (folder / "batches.meta").write_bytes(py2_pickle({"label_names": CIFAR10_NAMES[:9]}))
    with pytest.raises(OKDUserError, match="batches.meta is not CIFAR-10 metadata: expected 'label_names' listing 10 classes"):
        load_cifar10(folder)
    with pytest.raises(OKDUserError, match="no CIFAR-10 found at .*elsewhere.*--download"):
        load_cifar10(tmp_path / "elsewhere")


def test_download_uses_the_published_md5(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kw):
        calls.append((url, filename, md5))
        write_cifar10(download_root, archive=True)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    assert_matches_expected(load_cifar10(tmp_path / "new", download=True))
    assert calls == [(CIFAR10.url, "cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a")]


def test_cli_trains_on_cifar10(tmp_path, capsys):
    write_cifar10(tmp_path / "data")
    out = tmp_path / "run"
    assert main(["train", "--dataset", "cifar10", "--data", str(tmp_path / "data"), "--epochs", "1", "--batch-size", "8",
                 "--limit-batches", "1", "--device", "cpu", "--quiet", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_names"] == CIFAR10_NAMES and summary["params"]["deployed"] == 472_756 - 90 * 65  # 10 classes
    assert json.loads((out / "data.json").read_text()) == {"class_names": CIFAR10_NAMES}
    assert main(["train", "--dataset", "cifar10", "--data", str(tmp_path / "data"), "--image-size", "16", "--out", str(tmp_path / "x")]) == 2
    assert "--image-size only apply to --dataset folder" in capsys.readouterr().err
