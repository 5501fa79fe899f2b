"""Data: digits preparation, CIFAR through torchvision on real-format files, batch augmentation."""

import json
import pickle

import numpy as np
import pytest
import torch
import torchvision.transforms.functional as TF
from torchvision import transforms

from afdistill.data import DataError, DeviceData, prepare


def test_digits_are_prepared_deterministically_with_a_stratified_split(tmp_path):
    meta = prepare("digits", tmp_path / "a")
    prepare("digits", tmp_path / "b")
    assert meta["n_train"] == 1437 and meta["n_test"] == 360 and meta["image_size"] == 16
    for split in ("train", "test"):
        a, b = np.load(tmp_path / "a" / f"{split}.npz"), np.load(tmp_path / "b" / f"{split}.npz")
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
        assert a["images"].dtype == np.uint8 and a["images"].shape[1:] == (16, 16, 3)
        # gray digits repeated over RGB
        assert np.array_equal(a["images"][..., 0], a["images"][..., 2])
    test_counts = np.bincount(np.load(tmp_path / "a" / "test.npz")["labels"])
    assert test_counts.min() >= 35 and test_counts.max() <= 37  # stratified: 36 per class
    assert json.loads((tmp_path / "a" / "meta.json").read_text()) == meta


def _write_cifar100(root, n_train=20, n_test=10, seed=0):
    """Tiny files in the official cifar-100-python pickle format."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    splits = {}
    for name, n in (("train", n_train), ("test", n_test)):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = rng.integers(0, 100, n).tolist()
        entry = {
            "filenames": [f"img{i}.png" for i in range(n)],
            "batch_label": f"{name} batch",
            "fine_labels": fine,
            "coarse_labels": [f // 5 for f in fine],
            "data": data,
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
        splits[name] = (data, fine)
    with open(folder / "meta", "wb") as handle:
        pickle.dump(
            {"fine_label_names": [f"c{i}" for i in range(100)], "coarse_label_names": [f"s{i}" for i in range(20)]},
            handle,
        )
    return splits


def _write_cifar10(root, per_batch=4):
    rng = np.random.default_rng(1)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        entry = {
            "batch_label": name,
            "labels": rng.integers(0, 10, per_batch).tolist(),
            "data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
            "filenames": [f"{name}_{i}.png" for i in range(per_batch)],
        }
        with open(folder / name, "wb") as handle:
            pickle.dump(entry, handle)
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)], "num_cases_per_batch": per_batch}, handle)


def test_cifar100_files_in_the_official_format_load_through_torchvision(tmp_path):
    splits = _write_cifar100(tmp_path / "raw")
    meta = prepare("cifar100", tmp_path / "out", root=tmp_path / "raw", verify_checksums=False)
    assert (meta["n_train"], meta["n_test"], meta["num_classes"]) == (20, 10, 100)
    assert meta["pad"] == 4 and meta["flip"] is True
    train = np.load(tmp_path / "out" / "train.npz")
    data, labels = splits["train"]
    # The pickle rows are CHW planes; torchvision turns them into HWC images.
    assert np.array_equal(train["images"], data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    assert train["labels"].tolist() == labels


def test_cifar10_files_load_too(tmp_path):
    _write_cifar10(tmp_path / "raw")
    meta = prepare("cifar10", tmp_path / "out", root=tmp_path / "raw", verify_checksums=False)
    assert (meta["n_train"], meta["n_test"]) == (20, 4)


def test_cifar_files_that_differ_from_the_official_archive_are_refused_by_default(tmp_path):
    _write_cifar100(tmp_path / "raw")
    with pytest.raises(DataError, match="checksums"):
        prepare("cifar100", tmp_path / "out", root=tmp_path / "raw")


def test_missing_cifar_names_the_path_and_how_to_get_it(tmp_path):
    with pytest.raises(DataError) as error:
        prepare("cifar100", tmp_path / "out", root=tmp_path / "nowhere")
    message = str(error.value)
    assert str(tmp_path / "nowhere" / "cifar-100-python") in message
    assert "--download" in message and "cs.toronto.edu" in message
    assert not (tmp_path / "out").exists()


def test_batch_augmentation_is_torchvisions_crop_and_flip(tmp_path):
    """Every augmented image equals RandomCrop(32, padding=4) + RandomHorizontalFlip for some draw."""
    _write_cifar100(tmp_path / "raw", n_train=64)
    prepare("cifar100", tmp_path / "out", root=tmp_path / "raw", verify_checksums=False)
    data = DeviceData(tmp_path / "out")
    generator = torch.Generator().manual_seed(0)
    images, labels, index = next(data.train_batches(64, generator))
    normalize = transforms.Normalize(data.meta["mean"], data.meta["std"])
    flips = 0
    for image, i in zip(images, index):
        source = TF.to_tensor(TF.to_pil_image(data.train.images[i]))  # ToTensor of the stored uint8 image
        padded = TF.pad(source, [4])
        matches = [
            (top, left, flip)
            for top in range(9)
            for left in range(9)
            for flip in (False, True)
            if torch.allclose(
                normalize(TF.hflip(TF.crop(padded, top, left, 32, 32)) if flip else TF.crop(padded, top, left, 32, 32)),
                image,
                atol=1e-6,
            )
        ]
        assert matches, f"image {int(i)} is no crop/flip of its source"
        flips += matches[0][2]
    assert 10 < flips < 54  # about half are mirrored
    assert sorted(index.tolist()) == list(range(64))


def test_an_epoch_visits_every_training_image_once_in_seeded_order(small_data):
    data = DeviceData(small_data)

    def order(seed):
        return torch.cat([i for _, _, i in data.train_batches(64, torch.Generator().manual_seed(seed))])

    assert sorted(order(0).tolist()) == list(range(400))
    assert torch.equal(order(0), order(0)) and not torch.equal(order(0), order(1))
    assert data.num_train_batches(64) == 7


def test_unprepared_directory_is_reported(tmp_path):
    with pytest.raises(DataError, match="afdistill prepare"):
        DeviceData(tmp_path)
