"""Preparers for the large-scale datasets, reading each official archive exactly as it unpacks.

``--root`` is the folder the archive was extracted into (or the archive's own
top folder, for the two that have one). Class lists come from the archive's
own files, so a subset in the same format prepares the same way:

``tinyimagenet`` (``tiny-imagenet-200.zip``, http://cs231n.stanford.edu/tiny-imagenet-200.zip)
    ``tiny-imagenet-200/wnids.txt``, ``train/<wnid>/images/*.JPEG``,
    ``val/images/*.JPEG`` + ``val/val_annotations.txt``. Classes: the wnids
    of ``wnids.txt`` in sorted order (the labels torchvision's ImageFolder
    would give). The official validation set is the test split (the test
    set's labels are not published). Stored device-resident: ``train.npz`` /
    ``test.npz``, 64x64 uint8 (any image of another size is resized to 64x64,
    bilinear; the official archive has none). Training augmentation as the AFD
    paper and MHGD's supplementary state it: zero-pad to 72, random 64 crop,
    horizontal flip, normalised with ImageNet's mean and std (the paper gives none).
``tinyimagenet_mhgd``
    The same archive and arrays, with MHGD's supplementary preprocessing:
    zero-pad 8 (to 80), random 64 crop, flip, pixels scaled to [-0.5, 0.5]
    (mean 0.5, std 1).
``imagenet`` (ILSVRC2012, https://image-net.org/challenges/LSVRC/2012/)
    ``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG`` (the validation images
    sorted into class folders, e.g. with the ``valprep.sh`` script of
    pytorch/examples' ImageNet README). Classes: the sorted wnid folders of
    ``train/``, the order torchvision's pretrained weights use.
``cub200`` (``CUB_200_2011.tgz``, https://www.vision.caltech.edu/datasets/cub_200_2011/)
    ``CUB_200_2011/classes.txt``, ``images.txt``, ``image_class_labels.txt``,
    ``train_test_split.txt`` (1 = train) and ``images/``.
``mit67`` (``indoorCVPR_09.tar``, ``TrainImages.txt``, ``TestImages.txt``: https://web.mit.edu/torralba/www/indoor.html)
    ``Images/<category>/*.jpg``; classes: the categories the two lists name, sorted.
``stanford40`` (``JPEGImages.zip`` + ``ImageSplits.zip``, http://vision.stanford.edu/Datasets/40actions.html)
    ``JPEGImages/*.jpg``, ``ImageSplits/actions.txt`` (header line, then
    ``<action> <count>``), ``ImageSplits/<action>_train.txt`` / ``_test.txt``;
    classes in ``actions.txt``'s order.
``stanford_dogs`` (``images.tar`` + ``lists.tar``, http://vision.stanford.edu/aditya86/ImageNetDogs/)
    ``Images/<breed>/*.jpg``, ``train_list.mat`` / ``test_list.mat``
    (``file_list``, ``labels``). Classes: the breed folders the lists name,
    sorted (for the full archive, the lists' own 1..120 labels; the two are
    checked against each other).

ImageNet and the four transfer sets are stored for streaming
(:mod:`afdistill.streaming`): ``<split>.tsv`` (image path relative to
``meta["image_root"]``, tab, label) pointing at the original files, which
are decoded in loader workers: by default nothing is re-encoded and accuracy
is that of the original JPEGs (``prepare_archive``'s ``stored_shorter_side``
stores a smaller copy instead; its docstring says what that changes). Every image is converted to RGB when it
is decoded (real archives hold grayscale and CMYK JPEGs, and ImageNet one PNG
under a ``.JPEG`` name).

Validation splits. L2T-ww carves a validation set from the training set for
CUB and Stanford Dogs and publishes none for MIT67 and Stanford40; the
transfer sets therefore get one defined here, for all four: from each class's
training images (sorted by path) a random 10% (rounded, at least one when the
class has two or more) drawn with ``numpy.random.default_rng(0)``, classes in
label order. ``val.tsv`` holds it and ``train_without_val.tsv`` the rest;
``train.tsv`` stays the archive's full training split. The same archive gives
the same split on every machine.

What is read how is each dataset's record in :data:`afdistill.data.DATASETS`
(its :class:`Archive`, its lister, its storage, whether it is a transfer set,
the dataset whose archive it reads); this module holds the listers, one per
archive, and the steps every archive shares, and imports nothing from the
package (``afdistill.data`` imports it). A new archive is its ``list_<name>``
function here and its one entry in ``DATASETS``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
VALIDATION_FRACTION = 0.1
VALIDATION_SEED = 0


class ArchiveError(RuntimeError):
    """A file the archive should hold is missing or malformed; the message says which and where to get it."""


class _MissingFile(ArchiveError):
    """A file a lister needs is absent; :func:`list_archive` names the archive it belongs to."""

    def __init__(self, path: Path, what: str = ""):
        super().__init__(f"{path} is missing{f' ({what})' if what else ''}")
        self.path, self.what = path, what


@dataclass(frozen=True)
class Archive:
    """Where an archive is published, for the messages that name a missing file (a dataset record's ``archive``)."""

    name: str
    files: str  # what to download
    url: str
    top_folder: str | None = None  # folder the archive unpacks into, when it has one


@dataclass
class Listing:
    """An archive's classes and its splits as (path relative to ``image_root``, label) pairs."""

    classes: list[str]
    image_root: Path
    splits: dict[str, list[tuple[str, int]]] = field(default_factory=dict)


# ---------------------------------------------------------------- helpers


def _owner(dataset: str, info) -> str:
    """The dataset whose archive ``dataset`` reads (its record's ``reads``), the name messages use."""
    return info.reads or dataset


def _missing(dataset: str, archive: Archive, path: Path, what: str = "") -> ArchiveError:
    hint = f" ({what})" if what else ""
    return ArchiveError(
        f"{dataset}: {path} is missing{hint}. It belongs to {archive.name}: download {archive.files} from "
        f"{archive.url} and extract it so that {path.name} lies at {path}."
    )


def _need(path: Path, what: str = "") -> Path:
    if not path.exists():
        raise _MissingFile(path, what)
    return path


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in _need(path).read_text().splitlines() if line.strip()]


def _base(archive: Archive, root: Path) -> Path:
    """The archive's top folder: ``root/<top>`` when present, else ``root`` itself."""
    top = archive.top_folder
    if top and (root / top).is_dir():
        return root / top
    return root


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _check_files(dataset: str, archive: Archive, listing: Listing) -> None:
    for split, samples in listing.splits.items():
        for relative, _ in samples:
            path = listing.image_root / relative
            if not path.is_file():
                raise _missing(dataset, archive, path, f"listed in the {split} split")


def load_rgb(path: str | os.PathLike):
    """Any image file as an RGB PIL image (grayscale, CMYK, palette, PNG under a .JPEG name ...)."""
    from PIL import Image

    with Image.open(path) as image:
        return image.convert("RGB")


def carve_validation(
    samples: list[tuple[str, int]], num_classes: int, fraction: float = VALIDATION_FRACTION, seed: int = VALIDATION_SEED
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(validation, rest): per class, a random ``fraction`` of its samples (sorted by path), seeded."""
    rng = np.random.default_rng(seed)
    by_class: dict[int, list[tuple[str, int]]] = {c: [] for c in range(num_classes)}
    for sample in samples:
        by_class[sample[1]].append(sample)
    chosen = set()
    for label in range(num_classes):
        members = sorted(by_class[label])
        count = int(round(fraction * len(members)))
        if len(members) >= 2:
            count = min(max(count, 1), len(members) - 1)
        else:
            count = 0
        for index in rng.permutation(len(members))[:count]:
            chosen.add(members[index][0])
    validation = [s for s in samples if s[0] in chosen]
    rest = [s for s in samples if s[0] not in chosen]
    return validation, rest


# ---------------------------------------------------------------- listings, one per archive
#
# A lister takes the archive's top folder (``root/<top_folder>`` when the archive has one and it is there,
# else ``root``) and returns its Listing; a file it needs and lacks raises through ``_need``.


def list_tinyimagenet(base: Path) -> Listing:
    classes = sorted(set(_lines(base / "wnids.txt")))
    label = {wnid: i for i, wnid in enumerate(classes)}
    train = []
    for wnid in classes:
        folder = _need(base / "train" / wnid / "images", f"training images of class {wnid}")
        train += [(str(p.relative_to(base)), label[wnid]) for p in _images_in(folder)]
    test = []
    annotations = base / "val" / "val_annotations.txt"
    for number, line in enumerate(_lines(annotations), 1):
        parts = line.split("\t")
        if len(parts) < 2 or parts[1] not in label:
            raise ArchiveError(
                f"tinyimagenet: {annotations} line {number}: expected '<file>\\t<wnid>...' with a "
                f"wnid from wnids.txt, got {line!r}"
            )
        test.append((f"val/images/{parts[0]}", label[parts[1]]))
    return Listing(classes, base, {"train": train, "test": test})


def list_imagenet(root: Path) -> Listing:
    train_dir = _need(root / "train", "training images, train/<wnid>/*.JPEG")
    val_dir = _need(root / "val", "validation images sorted into val/<wnid>/*.JPEG")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir())
    if not classes:
        raise ArchiveError(f"imagenet: {train_dir} has no class folders (expected train/<wnid>/*.JPEG)")
    label = {wnid: i for i, wnid in enumerate(classes)}
    unknown = sorted(p.name for p in val_dir.iterdir() if p.is_dir() and p.name not in label)
    if unknown:
        raise ArchiveError(f"imagenet: {val_dir} has class folders absent from {train_dir}: {', '.join(unknown[:5])}")
    if not any(p.is_dir() for p in val_dir.iterdir()):
        raise ArchiveError(
            f"imagenet: {val_dir} has no class folders: sort the validation images into "
            f"val/<wnid>/ first (pytorch/examples' imagenet README links valprep.sh)"
        )
    splits = {}
    for split, folder in (("train", train_dir), ("test", val_dir)):
        splits[split] = [
            (str(p.relative_to(root)), label[wnid])
            for wnid in classes
            if (folder / wnid).is_dir()
            for p in _images_in(folder / wnid)
        ]
    return Listing(classes, root, splits)


def list_cub200(base: Path) -> Listing:
    read = lambda name: [line.split(maxsplit=1) for line in _lines(base / name)]  # noqa: E731
    class_rows = read("classes.txt")
    class_ids = [int(cid) for cid, _ in class_rows]
    classes = [name for _, name in class_rows]
    label_of_class = {cid: i for i, cid in enumerate(class_ids)}
    paths = dict(read("images.txt"))
    labels = {image: int(cid) for image, cid in read("image_class_labels.txt")}
    is_train = {image: flag.strip() == "1" for image, flag in read("train_test_split.txt")}
    splits: dict[str, list] = {"train": [], "test": []}
    for image_id in sorted(paths, key=int):
        if image_id not in labels or image_id not in is_train:
            raise ArchiveError(
                f"cub200: image {image_id} of images.txt has no row in image_class_labels.txt or "
                f"train_test_split.txt under {base}"
            )
        if labels[image_id] not in label_of_class:
            raise ArchiveError(f"cub200: image {image_id} has class {labels[image_id]}, absent from classes.txt")
        sample = (f"images/{paths[image_id]}", label_of_class[labels[image_id]])
        splits["train" if is_train[image_id] else "test"].append(sample)
    return Listing(classes, base, splits)


def list_mit67(root: Path) -> Listing:
    lists = {split: _lines(root / f"{name}Images.txt") for split, name in (("train", "Train"), ("test", "Test"))}
    _need(root / "Images", "the image folders, Images/<category>/")
    classes = sorted({line.split("/")[0] for lines in lists.values() for line in lines})
    label = {c: i for i, c in enumerate(classes)}
    splits = {
        split: [(f"Images/{line}", label[line.split("/")[0]]) for line in lines] for split, lines in lists.items()
    }
    return Listing(classes, root, splits)


def list_stanford40(root: Path) -> Listing:
    splits_dir = _need(root / "ImageSplits")
    actions_file = splits_dir / "actions.txt"
    if not actions_file.is_file() and (root / "actions.txt").is_file():
        actions_file = root / "actions.txt"
    rows = [line.split() for line in _lines(actions_file)]
    classes = [row[0] for row in rows if row[0] != "action_name"]  # the real file opens with a header line
    _need(root / "JPEGImages")
    splits: dict[str, list] = {"train": [], "test": []}
    for label, action in enumerate(classes):
        for split in splits:
            names = _lines(splits_dir / f"{action}_{split}.txt")
            splits[split] += [(f"JPEGImages/{name}", label) for name in names]
    return Listing(classes, root, splits)


def _mat_list(dataset: str, path: Path) -> tuple[list[str], list[int]]:
    from scipy.io import loadmat

    content = loadmat(str(_need(path)))
    if "file_list" not in content or "labels" not in content:
        found = sorted(k for k in content if not k.startswith("__"))
        raise ArchiveError(f"{dataset}: {path} lacks 'file_list' or 'labels' (found: {found})")
    files = [str(np.asarray(cell).ravel()[0]) for cell in np.asarray(content["file_list"], dtype=object).ravel()]
    labels = [int(v) for v in np.asarray(content["labels"]).ravel()]
    if len(files) != len(labels):
        raise ArchiveError(f"{dataset}: {path} has {len(files)} files but {len(labels)} labels")
    return files, labels


def list_stanford_dogs(root: Path) -> Listing:
    lists = {split: _mat_list("stanford_dogs", root / f"{split}_list.mat") for split in ("train", "test")}
    _need(root / "Images", "the image folders, Images/<breed>/")
    breed_of_label: dict[int, str] = {}
    for files, labels in lists.values():
        for name, mat_label in zip(files, labels):
            breed = name.split("/")[0]
            if breed_of_label.setdefault(mat_label, breed) != breed:
                raise ArchiveError(
                    f"stanford_dogs: label {mat_label} names both {breed_of_label[mat_label]} and "
                    f"{breed} in {root}'s train_list.mat / test_list.mat"
                )
    classes = sorted(set(breed_of_label.values()))
    if len(classes) != len(breed_of_label):
        raise ArchiveError(f"stanford_dogs: one breed folder has two labels in {root}'s lists")
    label = {breed: i for i, breed in enumerate(classes)}
    splits = {
        split: [(f"Images/{name}", label[name.split("/")[0]]) for name in files] for split, (files, _) in lists.items()
    }
    return Listing(classes, root, splits)


def check_present(dataset: str, root: str | os.PathLike, info) -> None:
    """A cheap look before any job (``afdistill check``): the folder the archive was extracted into exists and
    is not empty. The data stage lists and decodes the rest. ``info`` is the dataset's
    :class:`afdistill.data.DatasetInfo`."""
    root = Path(root)
    dataset, archive = _owner(dataset, info), info.archive
    if not root.is_dir():
        raise _missing(dataset, archive, root, "the folder the archive was extracted into")
    if not any(root.iterdir()):
        raise ArchiveError(
            f"{dataset}: {root} is empty; it should hold the extracted {archive.name} "
            f"({archive.files}, from {archive.url})"
        )


def list_archive(dataset: str, root: str | os.PathLike, info) -> Listing:
    """Classes and splits of an extracted archive, as ``info.lister`` reads them (``info``: the dataset's
    :class:`afdistill.data.DatasetInfo`); every listed file is checked to exist, and a transfer set
    (``info.transfer``) gets its validation split."""
    root = Path(root)
    dataset, archive = _owner(dataset, info), info.archive
    if not root.is_dir():
        raise _missing(dataset, archive, root, "the folder the archive was extracted into")
    try:
        listing = info.lister(_base(archive, root))
    except _MissingFile as missing:
        raise _missing(dataset, archive, missing.path, missing.what) from None
    for split, samples in listing.splits.items():
        if not samples:
            raise ArchiveError(f"{dataset}: the {split} split under {listing.image_root} is empty")
    counts = np.bincount([label for _, label in listing.splits["train"]], minlength=len(listing.classes))
    empty = [listing.classes[i] for i in np.flatnonzero(counts == 0)]
    if empty:
        raise ArchiveError(
            f"{dataset}: {len(empty)} class(es) have no training images under {listing.image_root}: "
            f"{', '.join(empty[:5])}{' ...' if len(empty) > 5 else ''}; the archive is incomplete: "
            f"extract it again"
        )
    _check_files(dataset, archive, listing)
    if info.transfer:
        val, rest = carve_validation(listing.splits["train"], len(listing.classes))
        listing.splits["val"], listing.splits["train_without_val"] = val, rest
    return listing


# ---------------------------------------------------------------- decode check

#: the data stage's list of images that do not decode (path, split, error), beside meta.json
CORRUPT_REPORT = "corrupt_images.tsv"


def _decode_problem(path: str) -> str | None:
    """Why an image file cannot be decoded, or None: the whole image is decoded, as training will."""
    try:
        load_rgb(path)
    except Exception as error:  # PIL raises many kinds (UnidentifiedImageError, OSError "truncated", ...)
        return f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}".rstrip(": ")
    return None


def _splits_holding(listing: Listing, relative: str) -> list[str]:
    """The splits of ``listing`` that hold the image at ``relative``."""
    return [split for split, samples in listing.splits.items() if any(path == relative for path, _ in samples)]


def check_decoding(
    dataset: str, listing: Listing, out: Path, skip_corrupt: bool, workers: int | None = None
) -> dict[str, int]:
    """Decode every listed image once; those that fail are written to ``out/corrupt_images.tsv`` and either
    refused (the default: an :class:`ArchiveError` naming the count, the first files and the report) or, with
    ``skip_corrupt``, left out of every split. Returns the count left out per split."""
    from multiprocessing import get_context

    relatives = sorted({relative for samples in listing.splits.values() for relative, _ in samples})
    paths = [str(listing.image_root / r) for r in relatives]
    if workers == 0 or len(paths) < 256:
        problems = [_decode_problem(path) for path in paths]
    else:
        with get_context("fork").Pool(workers or os.cpu_count()) as pool:
            problems = pool.map(_decode_problem, paths, chunksize=64)
    bad = {relative: problem for relative, problem in zip(relatives, problems) if problem}
    report = out / CORRUPT_REPORT
    if not bad:
        report.unlink(missing_ok=True)
        return {}
    report.write_text(
        "path\tsplits\terror\n"
        + "".join(
            f"{listing.image_root / r}\t{','.join(_splits_holding(listing, r))}\t{problem}\n"
            for r, problem in bad.items()
        )
    )
    if not skip_corrupt:
        first = ", ".join(str(listing.image_root / r) for r in list(bad)[:3])
        raise ArchiveError(
            f"{dataset}: {len(bad)} image(s) do not decode ({first}{' ...' if len(bad) > 3 else ''}; "
            f"all listed in {report}); replace them from the archive, or set data.skip_corrupt: true "
            f"in the grid to leave them out (counted in meta.json)"
        )
    skipped = {}
    for split, samples in listing.splits.items():
        kept = [(p, label) for p, label in samples if p not in bad]
        skipped[split] = len(samples) - len(kept)
        listing.splits[split] = kept
    return skipped


# ---------------------------------------------------------------- writing the prepared dataset


def _decode_to_array(paths: list[Path], size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = load_rgb(path)
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(image)
    return out


def _write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as handle:
        np.savez(handle, images=images, labels=labels)
    os.replace(tmp, path)


def _write_tsv(path: Path, samples: list[tuple[str, int]]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("".join(f"{relative}\t{label}\n" for relative, label in samples))
    os.replace(tmp, path)


def read_tsv(path: str | os.PathLike) -> tuple[list[str], np.ndarray]:
    """A streaming split's relative paths and labels."""
    paths, labels = [], []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line:
            continue
        relative, _, label = line.rpartition("\t")
        if not relative:
            raise ArchiveError(f"{path} line {number}: expected '<path>\\t<label>', got {line!r}")
        paths.append(relative)
        labels.append(int(label))
    return paths, np.asarray(labels, dtype=np.int64)


STORED_QUALITY = 95


def _store_resized(job: tuple[str, str, int]) -> None:
    """Copy one image as an RGB JPEG whose shorter side is at most ``shorter`` (an RGB JPEG already small: as is)."""
    import shutil

    from PIL import Image

    source, target, shorter = job
    image: Image.Image  # an ImageFile as opened, a plain Image once converted
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with Image.open(source) as image:
        if image.format == "JPEG" and image.mode == "RGB" and min(image.size) <= shorter:
            shutil.copyfile(source, target)
            return
        image = image.convert("RGB")
    width, height = image.size
    if min(width, height) > shorter:  # torchvision Resize(shorter)'s output size
        scale = shorter / min(width, height)
        size = (shorter, int(shorter * height / width)) if width <= height else (int(shorter * width / height), shorter)
        image = image.resize(size, Image.Resampling.BILINEAR)
        assert min(image.size) == shorter and abs(max(image.size) - max(width, height) * scale) < 1
    image.save(target, format="JPEG", quality=STORED_QUALITY)


def store_resized_copy(listing: Listing, folder: Path, shorter: int, workers: int | None = None) -> None:
    """Every listed image as an RGB JPEG with its shorter side at most ``shorter``, under ``folder``, in parallel."""
    from multiprocessing import get_context

    relatives = sorted({relative for samples in listing.splits.values() for relative, _ in samples})
    jobs = [(str(listing.image_root / r), str(folder / r), shorter) for r in relatives]
    if workers == 0 or len(jobs) < 64:
        for job in jobs:
            _store_resized(job)
        return
    with get_context("fork").Pool(workers or os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_store_resized, jobs, chunksize=64):
            pass


def prepare_archive(
    dataset: str,
    root: str | os.PathLike,
    out_dir: str | os.PathLike,
    info,
    stored_shorter_side: int | None = None,
    skip_corrupt: bool = False,
) -> dict:
    """Prepare one archive dataset under ``out_dir``; ``info`` is its :class:`afdistill.data.DatasetInfo`.

    ``stored_shorter_side`` (streamed datasets only): instead of pointing at the
    archive's files, store a copy of each image under ``out_dir/images/`` as an
    RGB JPEG (quality 95) whose shorter side is at most that many pixels, resized
    as torchvision's ``Resize`` does. Smaller files decode faster. Effect on
    accuracy: at 256 the test transform changes only by the re-encoding (its
    Resize(256) becomes the identity); training crops come from fewer source
    pixels, so crops that covered more than 224 pixels of the original are
    downsampled less and small crops are upsampled from a coarser image.
    Not measured here; the paper's figures are for the original files (the default).

    Every image is decoded once here (:func:`check_decoding`), so a corrupt file stops this stage, not a
    teacher's training; ``skip_corrupt`` leaves such files out instead, counted in ``meta.json``.
    """
    listing = list_archive(dataset, root, info)
    if stored_shorter_side is not None:
        if info.storage != "stream":
            raise ValueError(f"{dataset}: stored_shorter_side applies to streamed datasets, not to {dataset}'s arrays")
        if stored_shorter_side < info.image_size:
            raise ValueError(
                f"stored_shorter_side must be at least the crop size {info.image_size}, got {stored_shorter_side}"
            )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    skipped = check_decoding(dataset, listing, out, skip_corrupt)
    archive = info.archive
    meta = {
        "dataset": dataset,
        "format": info.storage,
        "num_classes": len(listing.classes),
        "classes": listing.classes,
        "image_size": info.image_size,
        "mean": list(info.mean),
        "std": list(info.std),
        "pad": info.pad,
        "pad_mode": info.pad_mode,
        "flip": info.flip,
        "n_train": len(listing.splits["train"]),
        "n_test": len(listing.splits["test"]),
        "source": f"{archive.name}: {archive.files} ({archive.url})",
    }
    if skipped:
        meta["skipped_corrupt"] = {**skipped, "report": CORRUPT_REPORT}
    if info.storage == "device":
        for split in ("train", "test"):
            samples = listing.splits[split]
            images = _decode_to_array([listing.image_root / p for p, _ in samples], info.image_size)
            _write_npz(out / f"{split}.npz", images, np.asarray([label for _, label in samples], dtype=np.int64))
    else:
        if stored_shorter_side is not None:
            store_resized_copy(listing, out / "images", stored_shorter_side)
            meta["stored"] = {
                "shorter_side": stored_shorter_side,
                "format": "JPEG",
                "quality": STORED_QUALITY,
                "from": str(listing.image_root.resolve()),
            }
            listing.image_root = out / "images"
        meta["image_root"] = str(listing.image_root.resolve())
        meta["resize"] = 256  # test: Resize(256) + CenterCrop(image_size); train: RandomResizedCrop(image_size)
        meta["splits"] = {split: len(samples) for split, samples in listing.splits.items()}
        if "val" in listing.splits:
            meta["n_val"] = len(listing.splits["val"])
            meta["validation"] = (
                f"per class, round({VALIDATION_FRACTION} x its training images) (at least 1 when it "
                f"has 2 or more) drawn with numpy.random.default_rng({VALIDATION_SEED}) from its "
                f"training images sorted by path; val.tsv, the rest in train_without_val.tsv"
            )
        for split, samples in listing.splits.items():
            _write_tsv(out / f"{split}.tsv", samples)
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
