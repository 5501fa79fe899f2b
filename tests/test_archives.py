"""The archive preparers on tiny archives built in each official format, and the streaming loader."""

import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.io import savemat
from scipy.stats import ks_2samp

from afdistill import cli
from afdistill.archives import ArchiveError, carve_validation, read_tsv
from afdistill.data import DeviceData, prepare
from afdistill.streaming import StreamingData, eval_transform, open_prepared, random_resized_crop_box, train_transform

GRAY_VALUE = 77


def _color(seed: int) -> tuple[int, int, int]:
    return (37 * seed % 256, 91 * seed % 256, 53 * seed % 256)


def _write(path, kind: str = "rgb", size=(40, 30), seed: int = 0):
    """An image file: 'rgb' JPEG, 'gray' JPEG (mode L), 'cmyk' JPEG, or 'png' (PNG bytes, whatever the name)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "gray":
        Image.new("L", size, GRAY_VALUE).save(path, format="JPEG")
    elif kind == "cmyk":
        Image.new("CMYK", size, (10, 200, 30, 0)).save(path, format="JPEG")
    elif kind == "png":
        Image.new("RGBA", size, (*_color(seed), 255)).save(path, format="PNG")
    else:
        Image.new("RGB", size, _color(seed)).save(path, format="JPEG", quality=95)


ODD_KINDS = ["gray", "cmyk", "png"]


def _tiny_imagenet(root):
    base = root / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # not sorted, as in the real wnids.txt
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for c, wnid in enumerate(wnids):
        for i in range(4):
            kind = ODD_KINDS[c] if i == 0 else "rgb"
            _write(base / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", kind, (64, 64), seed=c)
        (base / "train" / wnid / f"{wnid}_boxes.txt").write_text("")
    rows = []
    for i in range(6):
        wnid = wnids[i % 3]
        _write(base / "val" / "images" / f"val_{i}.JPEG", "rgb", (64, 64), seed=i)
        rows.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(rows) + "\n")
    return root


def _imagenet(root):
    for split, count in (("train", 3), ("val", 2)):
        for c, wnid in enumerate(["n02", "n01"]):
            for i in range(count):
                kind = ODD_KINDS[i] if split == "train" and c == 0 else "rgb"
                _write(root / split / wnid / f"{wnid}_{i}.JPEG", kind, (300 + 20 * i, 260), seed=c)
    return root


def _cub(root):
    base = root / "CUB_200_2011"
    classes = ["001.Albatross", "002.Auklet", "003.Blackbird"]
    base.mkdir(parents=True)
    (base / "classes.txt").write_text("".join(f"{i + 1} {c}\n" for i, c in enumerate(classes)))
    images, labels, split = [], [], []
    image_id = 0
    for c, name in enumerate(classes):
        for i in range(6):
            image_id += 1
            relative = f"{name}/{name.split('.')[1]}_{i:04d}.jpg"
            _write(base / "images" / relative, ODD_KINDS[c] if i == 0 else "rgb", seed=c)
            images.append(f"{image_id} {relative}")
            labels.append(f"{image_id} {c + 1}")
            split.append(f"{image_id} {1 if i < 4 else 0}")
    for name, rows in (("images.txt", images), ("image_class_labels.txt", labels), ("train_test_split.txt", split)):
        (base / name).write_text("\n".join(rows) + "\n")
    return root


def _mit67(root):
    train, test = [], []
    for c, category in enumerate(["kitchen", "airport_inside", "bar"]):
        for i in range(6):
            relative = f"{category}/{category}_{i:04d}.jpg"
            _write(root / "Images" / relative, ODD_KINDS[c] if i == 0 else "rgb", seed=c)
            (train if i < 4 else test).append(relative)
    (root / "TrainImages.txt").write_text("\n".join(train) + "\n")
    (root / "TestImages.txt").write_text("\n".join(test) + "\n")
    return root


def _stanford40(root):
    actions = ["riding_a_bike", "applauding"]  # actions.txt's own order, not sorted
    (root / "ImageSplits").mkdir(parents=True)
    (root / "ImageSplits" / "actions.txt").write_text(
        "action_name\tnumber_of_images\n" + "".join(f"{a}\t6\n" for a in actions)
    )
    for c, action in enumerate(actions):
        names = [f"{action}_{i:03d}.jpg" for i in range(1, 7)]
        for i, name in enumerate(names):
            _write(root / "JPEGImages" / name, ODD_KINDS[c] if i == 0 else "rgb", seed=c)
        (root / "ImageSplits" / f"{action}_train.txt").write_text("\n".join(names[:4]) + "\n")
        (root / "ImageSplits" / f"{action}_test.txt").write_text("\n".join(names[4:]) + "\n")
    return root


def _stanford_dogs(root):
    breeds = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]
    lists = {"train": ([], []), "test": ([], [])}
    for c, breed in enumerate(breeds):
        for i in range(6):
            relative = f"{breed}/{breed.split('-')[0]}_{i}.jpg"
            _write(root / "Images" / relative, ODD_KINDS[c] if i == 0 else "rgb", seed=c)
            files, labels = lists["train" if i < 4 else "test"]
            files.append(relative)
            labels.append(c + 1)
    for split, (files, labels) in lists.items():
        cells = np.empty((len(files), 1), dtype=object)
        for i, f in enumerate(files):
            cells[i, 0] = np.array([f])
        savemat(
            root / f"{split}_list.mat",
            {"file_list": cells, "annotation_list": cells, "labels": np.array(labels, dtype=np.uint8).reshape(-1, 1)},
        )
    return root


BUILDERS = {"cub200": _cub, "mit67": _mit67, "stanford40": _stanford40, "stanford_dogs": _stanford_dogs}


def test_tiny_imagenet_prepares_every_image_rgb_with_sorted_wnid_labels(tmp_path):
    root = _tiny_imagenet(tmp_path / "raw")
    out = tmp_path / "prepared"
    cli.main(["prepare", "--dataset", "tinyimagenet", "--root", str(root), "--out", str(out)])
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["n_train"], meta["n_test"], meta["num_classes"]) == (12, 6, 3)
    assert meta["classes"] == ["n01", "n02", "n03"] and meta["pad"] == 4 and meta["flip"]
    with np.load(out / "train.npz") as train, np.load(out / "test.npz") as test:
        assert train["images"].shape == (12, 64, 64, 3) and train["images"].dtype == np.uint8
        # train/<wnid>/ in sorted-wnid order: n01 (class 0) holds the CMYK JPEG, n02 the PNG, n03 the grayscale one
        assert train["labels"].tolist() == [0] * 4 + [1] * 4 + [2] * 4
        assert test["labels"].tolist() == [2, 0, 1, 2, 0, 1]  # val_annotations.txt's wnids n03, n01, n02, ...
        gray = train["images"][8]
        assert np.abs(gray.astype(int) - GRAY_VALUE).max() <= 2  # grayscale replicated over the three channels
        png = train["images"][4]
        assert np.array_equal(png[0, 0], np.array(_color(2), dtype=np.uint8))  # PNG decoded despite its .JPEG name
        cmyk = train["images"][0].astype(int)
        # CMYK (10, 200, 30, 0) is RGB (255 - C, 255 - M, 255 - Y) with no black: all three channels kept
        assert np.abs(cmyk - np.array([245, 55, 225])).max() <= 3
    data = DeviceData(out)
    images, labels, _ = next(data.train_batches(5, torch.Generator().manual_seed(0)))
    assert images.shape == (5, 3, 64, 64) and data.num_classes == 3


def test_tinyimagenet_mhgd_is_the_same_arrays_with_mhgds_padding_and_range(tmp_path):
    root = _tiny_imagenet(tmp_path / "raw")
    afd = prepare("tinyimagenet", tmp_path / "afd", root=root)
    mhgd = prepare("tinyimagenet_mhgd", tmp_path / "mhgd", root=root)
    assert (afd["pad"], mhgd["pad"]) == (4, 8) and mhgd["mean"] == [0.5] * 3 and mhgd["std"] == [1.0] * 3
    assert mhgd["classes"] == afd["classes"] and "tiny-imagenet-200.zip" in mhgd["source"]
    with np.load(tmp_path / "afd" / "train.npz") as a, np.load(tmp_path / "mhgd" / "train.npz") as b:
        assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    values = DeviceData(tmp_path / "mhgd").normalize(torch.tensor([[[[0]], [[255]], [[0]]]], dtype=torch.uint8))
    assert values.flatten().tolist() == [-0.5, 0.5, -0.5]


def test_imagenet_lists_sorted_wnid_folders_and_streams_rgb_224(tmp_path):
    root = _imagenet(tmp_path / "raw")
    meta = prepare("imagenet", tmp_path / "prepared", root=root)
    assert (meta["n_train"], meta["n_test"], meta["num_classes"], meta["classes"]) == (6, 4, 2, ["n01", "n02"])
    paths, labels = read_tsv(tmp_path / "prepared" / "train.tsv")
    assert [p.split("/")[1] for p in paths] == ["n01"] * 3 + ["n02"] * 3 and labels.tolist() == [0] * 3 + [1] * 3
    data = open_prepared(tmp_path / "prepared", workers=0)
    assert isinstance(data, StreamingData) and data.num_train_batches(4) == 2
    ((images, labels),) = list(data.eval_batches(batch_size=10))
    assert images.shape == (4, 3, 224, 224) and labels.tolist() == [0, 0, 1, 1]
    raw = data.train.images[3:6]  # n02's grayscale, CMYK and PNG files, test-transformed, uint8
    assert raw.shape == (3, 3, 224, 224) and raw.dtype == torch.uint8
    assert (raw[0].float() - GRAY_VALUE).abs().max() <= 2
    batches = list(data.train_batches(4, torch.Generator().manual_seed(0)))
    assert [b[0].shape for b in batches] == [(4, 3, 224, 224), (2, 3, 224, 224)]
    assert sorted(torch.cat([b[2] for b in batches]).tolist()) == list(range(6))
    assert all(torch.equal(b[1], data.train.labels[b[2]]) for b in batches)


def test_a_stored_copy_is_rgb_jpeg_resized_as_torchvision_resize_and_streams_alike(tmp_path):
    root = _imagenet(tmp_path / "raw")
    _write(root / "train" / "n01" / "small.JPEG", "rgb", (200, 230), seed=9)  # already small: copied as it is
    original = prepare("imagenet", tmp_path / "original", root=root)
    stored = prepare("imagenet", tmp_path / "stored", root=root, stored_shorter_side=256)
    assert stored["stored"]["shorter_side"] == 256
    assert stored["image_root"] == str((tmp_path / "stored" / "images").resolve())
    assert read_tsv(tmp_path / "stored" / "train.tsv")[0] == read_tsv(tmp_path / "original" / "train.tsv")[0]
    assert stored["n_train"] == original["n_train"] == 7
    for relative in read_tsv(tmp_path / "stored" / "train.tsv")[0] + read_tsv(tmp_path / "stored" / "test.tsv")[0]:
        with Image.open(tmp_path / "stored" / "images" / relative) as image:
            source = Image.open(root / relative)
            width, height = source.size
            assert image.format == "JPEG" and image.mode == "RGB"
            if min(width, height) > 256:  # Resize(256): shorter side 256, the longer one truncated
                expected = (int(256 * width / height), 256) if height < width else (256, int(256 * height / width))
                assert image.size == expected
            else:
                assert image.size == (width, height)
    small = "train/n01/small.JPEG"
    assert (tmp_path / "stored" / "images" / small).read_bytes() == (root / small).read_bytes()
    a = next(StreamingData(tmp_path / "original", workers=0).eval_batches())[0]
    b = next(StreamingData(tmp_path / "stored", workers=0).eval_batches())[0]
    assert (a - b).abs().mean() < 0.05  # re-encoding at quality 95 only (normalised units)
    with pytest.raises(ValueError, match="at least the crop size 224"):
        prepare("imagenet", tmp_path / "bad", root=root, stored_shorter_side=200)


@pytest.mark.parametrize(
    "name, classes",
    [
        ("cub200", ["001.Albatross", "002.Auklet", "003.Blackbird"]),
        ("mit67", ["airport_inside", "bar", "kitchen"]),
        ("stanford40", ["riding_a_bike", "applauding"]),
        ("stanford_dogs", ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]),
    ],
)
def test_transfer_sets_prepare_with_a_reproducible_validation_split(tmp_path, name, classes):
    root = BUILDERS[name](tmp_path / "raw")
    first = prepare(name, tmp_path / "a", root=root)
    prepare(name, tmp_path / "b", root=root)
    n_classes = len(classes)
    assert (first["n_train"], first["n_test"], first["num_classes"]) == (4 * n_classes, 2 * n_classes, n_classes)
    assert first["classes"] == classes and first["format"] == "stream"
    train_paths, train_labels = read_tsv(tmp_path / "a" / "train.tsv")
    for path, label in zip(train_paths, train_labels):  # each file sits in its class's folder / carries its name
        assert classes[label].split(".")[-1].split("-")[0] in path
    val = read_tsv(tmp_path / "a" / "val.tsv")[0]
    rest = read_tsv(tmp_path / "a" / "train_without_val.tsv")[0]
    assert val == read_tsv(tmp_path / "b" / "val.tsv")[0]  # same archive, same split
    assert len(val) == n_classes and first["n_val"] == n_classes  # round(0.1 x 4) -> at least one per class
    assert sorted(val + rest) == sorted(train_paths) and not set(val) & set(rest)
    data = StreamingData(tmp_path / "a", train_split="train_without_val", test_split="val", workers=0)
    assert len(data.train.labels) == 3 * n_classes and sorted(data.test.labels.tolist()) == list(range(n_classes))
    images = data.train.images[:]  # includes the class-0 grayscale, class-1 CMYK and class-2 PNG files
    assert images.shape == (3 * n_classes, 3, 224, 224)


def test_validation_split_is_per_class_seeded_and_leaves_every_class_in_training():
    samples = [(f"c{c}/{i:03d}.jpg", c) for c in range(3) for i in range(25)] + [("c3/only.jpg", 3)]
    val, rest = carve_validation(samples, 4)
    assert [sum(1 for _, label in val if label == c) for c in range(4)] == [2, 2, 2, 0]  # round(2.5) == 2
    assert carve_validation(list(reversed(samples)), 4)[0] == list(reversed(val))  # order of listing is irrelevant
    assert carve_validation(samples, 4, seed=1)[0] != val


@pytest.mark.parametrize(
    "name, remove, expected",
    [
        ("mit67", "TrainImages.txt", "web.mit.edu/torralba/www/indoor.html"),
        ("mit67", "Images/bar/bar_0001.jpg", "listed in the train split"),
        ("cub200", "CUB_200_2011/train_test_split.txt", "CUB_200_2011.tgz"),
        ("stanford40", "ImageSplits/applauding_test.txt", "40actions.html"),
        ("stanford_dogs", "test_list.mat", "lists.tar"),
    ],
)
def test_a_missing_file_is_named_with_its_archive_and_where_it_is_published(tmp_path, name, remove, expected):
    root = BUILDERS[name](tmp_path / "raw")
    target = root / remove
    target.unlink()
    with pytest.raises(ArchiveError) as error:
        prepare(name, tmp_path / "out", root=root)
    assert str(target) in str(error.value) and expected in str(error.value)


def test_missing_tiny_imagenet_and_imagenet_folders_are_named(tmp_path):
    root = _tiny_imagenet(tmp_path / "tiny")
    shutil.rmtree(root / "tiny-imagenet-200" / "train" / "n02")
    with pytest.raises(ArchiveError, match=r"train/n02/images.*tiny-imagenet-200\.zip"):
        prepare("tinyimagenet", tmp_path / "out", root=root)
    with pytest.raises(ArchiveError, match=r"val.*image-net\.org"):
        (tmp_path / "inet" / "train" / "n01").mkdir(parents=True)
        prepare("imagenet", tmp_path / "out2", root=tmp_path / "inet")


# ---------------------------------------------------------------- streaming transforms


def test_random_resized_crop_boxes_follow_torchvisions_distribution():
    from torchvision.transforms import RandomResizedCrop

    for width, height in ((500, 375), (1000, 120)):  # a typical photo; a strip that often hits the fallback
        rng = np.random.default_rng(0)
        ours = np.array([random_resized_crop_box(width, height, rng) for _ in range(3000)], dtype=float)
        torch.manual_seed(0)
        image = torch.empty(1, height, width)
        theirs = np.array(
            [RandomResizedCrop.get_params(image, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(3000)], dtype=float
        )
        for statistic in (
            lambda b: b[:, 2] * b[:, 3] / (width * height),
            lambda b: np.log(b[:, 3] / b[:, 2]),
            lambda b: (b[:, 1] + b[:, 3] / 2) / width,
            lambda b: (b[:, 0] + b[:, 2] / 2) / height,
        ):
            assert ks_2samp(statistic(ours), statistic(theirs)).pvalue > 1e-3
        assert (ours[:, 0] >= 0).all() and (ours[:, 0] + ours[:, 2] <= height).all()
        assert (ours[:, 1] + ours[:, 3] <= width).all()


def test_transforms_match_torchvisions_pixels_for_the_same_parameters():
    import torchvision.transforms.functional as TF
    from torchvision import transforms

    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (300, 417, 3), dtype=np.uint8))
    expected = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])(image)
    assert np.array_equal(np.asarray(eval_transform(image, 224, 256)), np.asarray(expected))

    for seed in range(4):
        replay = np.random.default_rng(seed)  # the same stream: the box first, then the flip
        top, left, h, w = random_resized_crop_box(417, 300, replay)
        expected = TF.resized_crop(image, top, left, h, w, [224, 224], transforms.InterpolationMode.BILINEAR)
        if replay.uniform() < 0.5:
            expected = TF.hflip(expected)
        ours = train_transform(image, np.random.default_rng(seed), 224)
        assert np.array_equal(np.asarray(ours), np.asarray(expected))


def test_flip_happens_half_the_time():
    image = Image.fromarray(np.tile(np.arange(64, dtype=np.uint8), (64, 1))[..., None].repeat(3, 2))
    flips = 0
    for seed in range(400):
        out = np.asarray(train_transform(image, np.random.default_rng(seed), 32)).astype(int)
        flips += out[0, 0, 0] > out[0, -1, 0]
    assert abs(flips / 400 - 0.5) < 0.1  # binomial sd 0.025


def test_a_seed_fixes_order_and_augmentation_whatever_the_workers(tmp_path):
    prepare("mit67", tmp_path / "prepared", root=_mit67(tmp_path / "raw"))

    def epoch(seed, workers):
        data = StreamingData(tmp_path / "prepared", workers=workers)
        return list(data.train_batches(5, torch.Generator().manual_seed(seed)))

    a, b, c = epoch(0, 0), epoch(0, 2), epoch(1, 0)
    assert len(a) == len(b) == 3  # 12 images, batches of 5: 5, 5, 2
    for (xa, ya, ia), (xb, yb, ib) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    assert not torch.equal(torch.cat([x[2] for x in a]), torch.cat([x[2] for x in c]))
    assert math.isclose(a[0][0].mean().item(), b[0][0].mean().item())


def test_unknown_split_names_the_allowed_ones(tmp_path):
    prepare("mit67", tmp_path / "prepared", root=_mit67(tmp_path / "raw"))
    with pytest.raises(Exception, match="train_without_val"):
        StreamingData(tmp_path / "prepared", train_split="training")


def test_inconsistent_lists_are_refused_with_the_file_and_line(tmp_path):
    root = _tiny_imagenet(tmp_path / "tiny")
    annotations = root / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    annotations.write_text(annotations.read_text() + "val_9.JPEG\tn99\t0\t0\t63\t63\n")
    with pytest.raises(ArchiveError, match=r"val_annotations\.txt line 7.*wnids\.txt"):
        prepare("tinyimagenet", tmp_path / "out", root=root)
    dogs = _stanford_dogs(tmp_path / "dogs")
    cells = np.empty((1, 1), dtype=object)
    cells[0, 0] = np.array(["n02085620-Chihuahua/n02085620_0.jpg"])
    savemat(dogs / "test_list.mat", {"file_list": cells, "labels": np.array([[2]], dtype=np.uint8)})
    with pytest.raises(ArchiveError, match="label 2 names both"):
        prepare("stanford_dogs", tmp_path / "out", root=dogs)
