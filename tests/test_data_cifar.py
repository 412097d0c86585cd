"""CIFAR-100 reader: official format, every path form, clear errors, and no code execution."""

from __future__ import annotations

import gzip
import pickle

import numpy as np
import pytest
import torch

from datasets_helpers import cifar_expected, cifar_split, python3_pickle, write_cifar100
from okd.data import CIFAR100_MEAN, CIFAR100_STD, DataConfig, build_data
from okd.data.cifar import MD5, URL, load_cifar100
from okd.errors import OKDUserError


def as_numpy(arrays):
    train_x, train_y, test_x, test_y = arrays
    return train_x.reshape(-1, 3072).numpy(), train_y.tolist(), test_x.reshape(-1, 3072).numpy(), test_y.tolist()


def assert_matches_expected(arrays, **kw):
    got, expected = as_numpy(arrays), cifar_expected(**kw)
    assert np.array_equal(got[0], expected[0]) and got[1] == expected[1]
    assert np.array_equal(got[2], expected[2]) and got[3] == expected[3]


def test_same_as_torchvision(tmp_path, monkeypatch):
    torchvision = pytest.importorskip("torchvision")
    import torchvision.datasets.cifar as tv_cifar

    write_cifar100(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *a, **k: True)  # tiny files, other MD5s
    train_x, train_y, test_x, test_y = load_cifar100(tmp_path)
    for train, images, labels in ((True, train_x, train_y), (False, test_x, test_y)):
        reference = torchvision.datasets.CIFAR100(str(tmp_path), train=train, download=False)
        assert np.array_equal(reference.data, images.permute(0, 2, 3, 1).numpy())  # HWC there, CHW here
        assert reference.targets == labels.tolist()
    assert train_x.dtype == torch.uint8 and train_x.shape == (40, 3, 32, 32) and train_y.dtype == torch.int64


def test_archive_folder_and_parent_paths(tmp_path):
    folder = write_cifar100(tmp_path / "both", archive=True)
    for path in (folder, folder.parent, folder.parent / "cifar-100-python.tar.gz"):
        assert_matches_expected(load_cifar100(path))
    archive = write_cifar100(tmp_path / "only_archive", archive=True, folder=False)
    assert archive.name == "cifar-100-python.tar.gz" and not (archive.parent / "cifar-100-python").exists()
    assert_matches_expected(load_cifar100(archive))
    assert_matches_expected(load_cifar100(archive.parent))


def test_prefers_the_unpacked_folder(tmp_path):
    write_cifar100(tmp_path, archive=True, folder=False, seed=7)
    write_cifar100(tmp_path, seed=0)
    assert_matches_expected(load_cifar100(tmp_path), seed=0)


@pytest.mark.parametrize("protocol", [2, 4, 5])
@pytest.mark.parametrize("bytes_keys", [False, True])
def test_python3_pickles(tmp_path, protocol, bytes_keys):
    folder = write_cifar100(tmp_path)
    for name, split in (("train", cifar_split(40, 0, "training")), ("test", cifar_split(24, 1, "testing"))):
        if bytes_keys:
            split = {k.encode(): v for k, v in split.items()}
        (folder / name).write_bytes(python3_pickle(split, protocol))
    assert_matches_expected(load_cifar100(tmp_path))


def test_missing(tmp_path):
    with pytest.raises(OKDUserError, match="no CIFAR-100 found at .*nowhere.*--download") as info:
        load_cifar100(tmp_path / "nowhere")
    assert "\n" not in str(info.value)
    with pytest.raises(OKDUserError, match=f"no CIFAR-100 found at {tmp_path}"):
        load_cifar100(tmp_path)


def test_incomplete_folder(tmp_path):
    folder = write_cifar100(tmp_path)
    (folder / "meta").unlink()
    with pytest.raises(OKDUserError, match="incomplete CIFAR-100 folder .*cifar-100-python: missing meta"):
        load_cifar100(tmp_path)


def test_truncated_and_garbage_files(tmp_path):
    folder = write_cifar100(tmp_path / "a")
    blob = (folder / "train").read_bytes()
    (folder / "train").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(OKDUserError, match=f"cannot read CIFAR-100 file {folder / 'train'}"):
        load_cifar100(folder)
    (folder / "train").write_bytes(b"this is not a pickle at all")
    with pytest.raises(OKDUserError, match=str(folder / "train")):
        load_cifar100(folder)

    archive = write_cifar100(tmp_path / "b", archive=True, folder=False)
    blob = archive.read_bytes()
    archive.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(OKDUserError, match=f"cannot read CIFAR-100 archive {archive}"):
        load_cifar100(archive)
    archive.write_bytes(gzip.compress(b"garbage" * 100))
    with pytest.raises(OKDUserError, match=str(archive)):
        load_cifar100(archive)
    archive.write_bytes(b"\x00" * 10)
    with pytest.raises(OKDUserError, match=str(archive)):
        load_cifar100(archive.parent)


def test_wrong_format_pickles(tmp_path):
    folder = write_cifar100(tmp_path)
    split = cifar_split(40, 0, "training")
    (folder / "train").write_bytes(python3_pickle({**split, "data": split["data"].astype(np.float32)}))
    with pytest.raises(OKDUserError, match="train is not a CIFAR-100 pickle: expected 'data' uint8"):
        load_cifar100(folder)
    (folder / "train").write_bytes(python3_pickle({**split, "fine_labels": split["fine_labels"][:-1]}))
    with pytest.raises(OKDUserError, match="expected 'fine_labels' with 40 labels"):
        load_cifar100(folder)
    (folder / "train").write_bytes(python3_pickle([1, 2, 3]))
    with pytest.raises(OKDUserError, match="expected a dict"):
        load_cifar100(folder)


class Payload:
    """Unpickling this creates a file: what a crafted dataset could do with plain pickle.load."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_malicious_pickle_is_refused(tmp_path):
    canary = tmp_path / "proof"
    pickle.loads(pickle.dumps(Payload(str(canary))))  # the payload is real: plain pickle runs it
    assert canary.exists()
    canary.unlink()

    folder = write_cifar100(tmp_path / "data")
    split = cifar_split(40, 0, "training")
    (folder / "train").write_bytes(pickle.dumps({**split, "batch_label": Payload(str(canary))}, protocol=2))
    with pytest.raises(OKDUserError, match="refused to load global"):
        load_cifar100(folder)
    assert not canary.exists()


def test_download_uses_torchvision_with_the_md5(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kw):
        calls.append((url, filename, md5))
        write_cifar100(download_root, archive=True, folder=True)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    target = tmp_path / "new" / "dir"
    assert_matches_expected(load_cifar100(target, download=True))
    assert calls == [(URL, "cifar-100-python.tar.gz", MD5)] and MD5 == "eb9058c3a382ffc7106e4002c42a8d85"
    load_cifar100(target, download=True)  # already there: no second download
    assert len(calls) == 1

    def failing(*a, **k):
        raise RuntimeError("File not found or corrupted.")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", failing)
    with pytest.raises(OKDUserError, match="could not download CIFAR-100 .* corrupted"):
        load_cifar100(tmp_path / "other", download=True)


def test_build_data_cifar(tmp_path):
    write_cifar100(tmp_path, n_train=40, n_test=24)
    cfg = DataConfig(dataset="cifar100", data_dir=str(tmp_path), batch_size=16, eval_batch_size=10)
    spec, train, test = build_data(cfg)
    assert (spec.num_classes, spec.num_train, spec.num_test, spec.input_size) == (100, 40, 24, 32)
    assert spec.train_targets.tolist() == cifar_expected()[1]
    assert len(train) == 3 and len(test) == 3
    test_x = torch.from_numpy(cifar_expected()[2]).view(-1, 3, 32, 32).float() / 255
    expected = (test_x - torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    assert torch.allclose(torch.cat([b.images for b in test]), expected, atol=1e-5)
    batches = list(train.epoch(0))
    assert [b.images.shape[0] for b in batches] == [16, 16, 8]
    # crop + flip are on: with 40 samples some are shifted or mirrored
    train_x = torch.from_numpy(cifar_expected()[0]).view(-1, 3, 32, 32).float() / 255
    plain = (train_x - torch.tensor(CIFAR100_MEAN).view(1, 3, 1, 1)) / torch.tensor(CIFAR100_STD).view(1, 3, 1, 1)
    changed = [not torch.allclose(img, plain[i], atol=1e-5) for b in batches for i, img in zip(b.indices.tolist(), b.images)]
    assert sum(changed) > 30


def test_errors_inside_the_archive_name_the_member(tmp_path):
    import io
    import tarfile

    archive = tmp_path / "cifar-100-python.tar.gz"
    split = cifar_split(4, 0, "training")
    members = {"train": python3_pickle({**split, "data": split["data"][:, :100]}), "test": b"junk", "meta": b"junk"}
    with tarfile.open(archive, "w:gz") as tar:
        for name, blob in members.items():
            info = tarfile.TarInfo(f"cifar-100-python/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    with pytest.raises(OKDUserError, match=f"cannot read CIFAR-100 file {archive}:cifar-100-python/test"):
        load_cifar100(tmp_path)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-100-python/train")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(OKDUserError, match=f"{archive} has no cifar-100-python/test"):
        load_cifar100(archive)
