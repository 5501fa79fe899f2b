"""Datasets: preparation into one on-disk format, and batches on the training device.

Every dataset is prepared once (a pipeline stage) into ``<dir>/train.npz``,
``<dir>/test.npz`` (``images``: uint8 N x H x W x 3, ``labels``: int64) and
``<dir>/meta.json`` (classes, normalisation, augmentation). Training then
holds the whole split as one uint8 tensor on the training device and does
crop, flip and normalisation on whole batches there: no per-sample Python in
the hot loop. The result matches torchvision's ``RandomCrop(size, padding)``
(zero padding in pixel space), ``RandomHorizontalFlip()``, ``ToTensor()`` and
``Normalize(mean, std)`` sample for sample; only the random stream differs.

Datasets:

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1,797 images, 10 classes;
    ships with the package, no network). Each image (values 0-16) is
    upsampled to 16x16 with bilinear interpolation, scaled to 0-255, rounded
    to uint8 and repeated over the three RGB channels. Fixed stratified split:
    360 test images, the rest for training (``random_state=0``). Augmentation:
    pad 2 + random 16x16 crop, no flip (mirrored digits are other symbols).
``cifar10`` / ``cifar100``
    Read through torchvision's ``CIFAR10`` / ``CIFAR100`` classes from the
    official pickle files under ``<root>/cifar-10-batches-py`` or
    ``<root>/cifar-100-python``. Downloaded only when asked
    (``download=True``). Augmentation: pad 4 + random 32x32 crop + horizontal
    flip, as in the AFD and RepDistiller code (CIFAR-100, zero padding) and the
    attention-transfer code (CIFAR-10, reflection padding).
``tinyimagenet``, ``tinyimagenet_mhgd``, ``imagenet``, ``cub200``, ``mit67``, ``stanford40``, ``stanford_dogs``
    Read from the official archives as they unpack by :mod:`afdistill.archives`
    (formats, class lists, validation splits). Tiny ImageNet is stored as the
    npz arrays above; the others are streamed (:mod:`afdistill.streaming`).

Each dataset is one :class:`DatasetInfo` record in :data:`DATASETS`, the one
registry every reader asks: its classes, sizes, augmentation and normalisation,
its storage, and how it is prepared (a loader here, or an official archive with
its lister in :mod:`afdistill.archives`). Adding a dataset is its loader (in
this module) or its archive's ``list_<name>`` function (in
:mod:`afdistill.archives`), plus its one entry in ``DATASETS``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO, Callable, cast

import numpy as np
import torch
import torch.nn.functional as F

from . import archives
from .archives import Archive
from .models.registry import UnknownNameError

#: What a loader returns: train images, train labels, test images, test labels
#: (images uint8 N x H x W x 3, labels int64).
Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclass(frozen=True)
class DatasetInfo:
    """Everything about one dataset: one entry of :data:`DATASETS`.

    Prepared by exactly one of ``load`` (``load(name, root, download, verify_checksums)`` returns its
    :data:`Arrays`: digits, CIFAR) or ``archive`` + ``lister`` (an official archive, listed by
    ``lister(top_folder)`` in :mod:`afdistill.archives`, which prepares it: Tiny ImageNet, ImageNet, the
    transfer sets).
    """

    num_classes: int
    image_size: int
    pad: int
    pad_mode: str  # "zeros" (torchvision RandomCrop's default) or "reflect"
    flip: bool
    mean: tuple[float, float, float] | None  # None: computed from the training split
    std: tuple[float, float, float] | None
    source: str
    storage: str = "device"  # "device": npz arrays held on the device (DeviceData); "stream": afdistill.streaming
    n_train: int = 0  # training images of the full archive (grid checks: CRD's negatives); a subset has fewer
    archive: Archive | None = None  # the official archive it is read from (None: ``load`` prepares it)
    lister: Callable[[Path], archives.Listing] | None = None  # the archive's classes and splits
    reads: str | None = None  # the dataset whose archive it reads and names in messages (None: itself)
    transfer: bool = False  # a transfer set: a validation split is carved from its training split
    load: Callable[[str, Path, bool, bool], Arrays] | None = None  # (name, root, download, verify) -> Arrays

    def __post_init__(self):
        if (self.load is None) == (self.archive is None) or (self.archive is None) != (self.lister is None):
            raise ValueError(f"{self.source}: a dataset has either a loader or an archive with its lister")


CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
REPREPARE = "delete the prepared dataset's folder and run its data stage again (`afdistill prepare`)"


class DataError(RuntimeError):
    """Missing or malformed dataset files; the message says where and what to do."""


def dataset_info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        raise UnknownNameError(f"unknown dataset {name!r}; allowed: {', '.join(sorted(DATASETS))}")
    return DATASETS[name]


# ---------------------------------------------------------------- preparation


def _digits(name: str, root: Path, download: bool, verify_checksums: bool) -> Arrays:
    """The digits ship with scikit-learn: only ``name`` (for the image size) is read."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    size = DATASETS[name].image_size
    small = torch.from_numpy(digits.images).float().unsqueeze(1)  # N x 1 x 8 x 8, values 0..16
    big = F.interpolate(small, size=(size, size), mode="bilinear", align_corners=False)
    gray = (big * (255.0 / 16.0)).round().clamp(0, 255).to(torch.uint8)
    images = gray.repeat(1, 3, 1, 1).permute(0, 2, 3, 1).contiguous().numpy()
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(images, labels, test_size=360, stratify=labels, random_state=0)
    return train_x, train_y, test_x, test_y


def _cifar(torchvision_class: str, name: str, root: Path, download: bool, verify_checksums: bool) -> Arrays:
    """A CIFAR archive through torchvision's reader ``torchvision.datasets.<torchvision_class>``."""
    from torchvision import datasets

    base = getattr(datasets, torchvision_class)
    cls = base
    if not verify_checksums:
        # Same reader, existence check only: for copies whose md5 differs from the
        # official archive (and for the tests' small files in the same format).
        cls = type(
            base.__name__,
            (base,),
            {
                "train_list": [[f, None] for f, _ in base.train_list],
                "test_list": [[f, None] for f, _ in base.test_list],
                "meta": {**base.meta, "md5": None},
            },
        )
    folder = root / base.base_folder
    files = [f for f, _ in base.train_list + base.test_list] + [base.meta["filename"]]
    if not download:
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise DataError(
                f"{name}: {folder} lacks {', '.join(missing)}. Download the python version from {CIFAR_URL} and "
                f"extract it under {root}, or allow the download: `afdistill prepare --dataset {name} "
                f"--root {root} --download` (or `data: {{download: true}}` in the params file)."
            )
    try:
        train = cls(root=str(root), train=True, download=download)
        test = cls(root=str(root), train=False, download=download)
    except RuntimeError as error:
        raise DataError(
            f"{name}: the files under {folder} do not match the official archive's checksums ({error}). "
            f"Re-download from {CIFAR_URL}, or pass --no-verify to read them anyway."
        ) from error

    def as_arrays(split):
        return (np.ascontiguousarray(split.data, dtype=np.uint8), np.asarray(split.targets, np.int64))

    return (*as_arrays(train), *as_arrays(test))


_IMAGENET_NORM = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))

_TINY_IMAGENET = Archive(
    "Tiny ImageNet", "tiny-imagenet-200.zip", "http://cs231n.stanford.edu/tiny-imagenet-200.zip", "tiny-imagenet-200"
)

#: The registry: every dataset's record, by name. Adding a dataset is its loader (above) or its archive's lister
#: (``afdistill.archives.list_<name>``) plus its one entry here; nothing else names datasets.
DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(
        10,
        16,
        2,
        "zeros",
        False,
        None,
        None,
        "sklearn.datasets.load_digits (bundled with scikit-learn)",
        n_train=1437,
        load=_digits,
    ),
    # Normalisation and padding as in the reference code bases: RepDistiller/AFD for
    # CIFAR-100, szagoruyko/attention-transfer (reflection padding) for CIFAR-10.
    "cifar10": DatasetInfo(
        10,
        32,
        4,
        "reflect",
        True,
        (125.3 / 255, 123.0 / 255, 113.9 / 255),
        (63.0 / 255, 62.1 / 255, 66.7 / 255),
        "torchvision.datasets.CIFAR10",
        n_train=50000,
        load=partial(_cifar, "CIFAR10"),
    ),
    "cifar100": DatasetInfo(
        100,
        32,
        4,
        "zeros",
        True,
        (0.5071, 0.4867, 0.4408),
        (0.2675, 0.2565, 0.2761),
        "torchvision.datasets.CIFAR100",
        n_train=50000,
        load=partial(_cifar, "CIFAR100"),
    ),
    # CIFAR-10 with horizontal flips as the only augmentation (no padding, no crop): the AT paper's
    # gradient-attention table ("we use only horizontal flip augmentation"); the same archive as cifar10.
    "cifar10_flip": DatasetInfo(
        10,
        32,
        0,
        "zeros",
        True,
        (125.3 / 255, 123.0 / 255, 113.9 / 255),
        (63.0 / 255, 62.1 / 255, 66.7 / 255),
        "torchvision.datasets.CIFAR10",
        n_train=50000,
        load=partial(_cifar, "CIFAR10"),
    ),
    # The official archives, read by afdistill.archives (its docstring lists each format).
    # Tiny ImageNet: zero-pad 64 -> 72, random 64 crop, flip (AFD paper; MHGD supplementary).
    # The AFD paper gives no normalisation: ImageNet's mean and std.
    "tinyimagenet": DatasetInfo(
        200,
        64,
        4,
        "zeros",
        True,
        *_IMAGENET_NORM,
        "tiny-imagenet-200.zip",
        n_train=100000,
        archive=_TINY_IMAGENET,
        lister=archives.list_tinyimagenet,
    ),
    # MHGD's supplementary: zero-pad 8, random 64 crop, flip, values in [-0.5, 0.5]; Tiny ImageNet's archive.
    "tinyimagenet_mhgd": DatasetInfo(
        200,
        64,
        8,
        "zeros",
        True,
        (0.5,) * 3,
        (1.0,) * 3,
        "tiny-imagenet-200.zip",
        n_train=100000,
        archive=_TINY_IMAGENET,
        lister=archives.list_tinyimagenet,
        reads="tinyimagenet",
    ),
    # Streamed at 224: RandomResizedCrop(224) + flip to train, Resize(256) + CenterCrop(224) to test.
    "imagenet": DatasetInfo(
        1000,
        224,
        0,
        "zeros",
        True,
        *_IMAGENET_NORM,
        "ILSVRC2012",
        "stream",
        n_train=1281167,
        archive=Archive(
            "ImageNet (ILSVRC2012)",
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar (validation images sorted into val/<wnid>/)",
            "https://image-net.org/challenges/LSVRC/2012/",
        ),
        lister=archives.list_imagenet,
    ),
    # The transfer sets: a validation split carved from the training split (afdistill.archives says how).
    "cub200": DatasetInfo(
        200,
        224,
        0,
        "zeros",
        True,
        *_IMAGENET_NORM,
        "CUB_200_2011.tgz",
        "stream",
        n_train=5994,
        archive=Archive(
            "Caltech-UCSD Birds-200-2011",
            "CUB_200_2011.tgz",
            "https://www.vision.caltech.edu/datasets/cub_200_2011/",
            "CUB_200_2011",
        ),
        lister=archives.list_cub200,
        transfer=True,
    ),
    "mit67": DatasetInfo(
        67,
        224,
        0,
        "zeros",
        True,
        *_IMAGENET_NORM,
        "indoorCVPR_09.tar",
        "stream",
        n_train=5360,
        archive=Archive(
            "MIT Indoor Scenes (MIT67)",
            "indoorCVPR_09.tar, TrainImages.txt and TestImages.txt",
            "https://web.mit.edu/torralba/www/indoor.html",
        ),
        lister=archives.list_mit67,
        transfer=True,
    ),
    "stanford40": DatasetInfo(
        40,
        224,
        0,
        "zeros",
        True,
        *_IMAGENET_NORM,
        "Stanford 40 Actions",
        "stream",
        n_train=4000,
        archive=Archive(
            "Stanford 40 Actions",
            "JPEGImages.zip and ImageSplits.zip",
            "http://vision.stanford.edu/Datasets/40actions.html",
        ),
        lister=archives.list_stanford40,
        transfer=True,
    ),
    "stanford_dogs": DatasetInfo(
        120,
        224,
        0,
        "zeros",
        True,
        *_IMAGENET_NORM,
        "Stanford Dogs",
        "stream",
        n_train=12000,
        archive=Archive(
            "Stanford Dogs", "images.tar and lists.tar", "http://vision.stanford.edu/aditya86/ImageNetDogs/"
        ),
        lister=archives.list_stanford_dogs,
        transfer=True,
    ),
}


def prepare(
    name: str,
    out_dir: str | os.PathLike,
    root: str | os.PathLike = "data/raw",
    download: bool = False,
    verify_checksums: bool = True,
    stored_shorter_side: int | None = None,
    skip_corrupt: bool = False,
) -> dict:
    """Write ``train.npz``, ``test.npz`` and ``meta.json`` for one dataset; returns the meta record.

    Streamed datasets write file lists instead (:func:`afdistill.archives.prepare_archive`, which
    says what ``stored_shorter_side`` does).
    """
    info = dataset_info(name)
    if info.archive is not None:
        return archives.prepare_archive(name, root, out_dir, info, stored_shorter_side, skip_corrupt)
    assert info.load is not None  # a dataset without an archive has a loader (DatasetInfo.__post_init__)
    train_x, train_y, test_x, test_y = info.load(name, Path(root), download, verify_checksums)
    if info.mean is None:
        pixels = train_x.reshape(-1, 3).astype(np.float64) / 255.0
        mean, std = tuple(pixels.mean(0).tolist()), tuple(pixels.std(0).tolist())
    else:
        assert info.std is not None  # a dataset that gives its mean gives its std
        mean, std = info.mean, info.std
    meta = {
        "dataset": name,
        "num_classes": info.num_classes,
        "image_size": int(train_x.shape[1]),
        "mean": list(mean),
        "std": list(std),
        "pad": info.pad,
        "pad_mode": info.pad_mode,
        "flip": info.flip,
        "n_train": int(len(train_y)),
        "n_test": int(len(test_y)),
        "source": info.source,
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from .files import atomic_write

    for split, (x, y) in {"train": (train_x, train_y), "test": (test_x, test_y)}.items():
        atomic_write(
            out / f"{split}.npz",
            # cast: mypy cannot infer a lambda with default arguments against Callable[[BinaryIO], Any]
            cast(Callable[[BinaryIO], None], lambda handle, x=x, y=y: np.savez(handle, images=x, labels=y)),
        )
    text = json.dumps(meta, indent=2) + "\n"
    atomic_write(out / "meta.json", lambda handle: handle.write(text.encode()))
    return meta


# ---------------------------------------------------------------- loading


def _reflect(index: torch.Tensor, size: int) -> torch.Tensor:
    """Reflection about the border pixels (torchvision's padding_mode='reflect'), for |overhang| < size."""
    index = torch.where(index < 0, -index, index)
    return torch.where(index >= size, 2 * (size - 1) - index, index)


@dataclass
class Split:
    images: torch.Tensor  # uint8, N x 3 x H x W, on the training device
    labels: torch.Tensor  # int64, N


class DeviceData:
    """A prepared dataset held on one device, served as normalised float batches."""

    def __init__(self, data_dir: str | os.PathLike, device: torch.device | str = "cpu"):
        from .files import load_json

        data_dir = Path(data_dir)
        meta_path = data_dir / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{data_dir} is not a prepared dataset (no meta.json); run `afdistill prepare` first")
        self.meta = load_json(meta_path, "the prepared dataset's description", fix=REPREPARE)
        self.device = torch.device(device)
        self.num_classes = int(self.meta["num_classes"])
        self.pad = int(self.meta["pad"])
        self.pad_mode = self.meta.get("pad_mode", "zeros")
        self.flip = bool(self.meta["flip"])
        self.mean = torch.tensor(self.meta["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.meta["std"], device=self.device).view(1, 3, 1, 1)
        self.train = self._load(data_dir / "train.npz")
        self.test = self._load(data_dir / "test.npz")

    def _load(self, path: Path) -> Split:
        """One split, checked once here (shapes, dtype, label range) so bad data never reaches a training step."""
        from .files import load_npz

        arrays = load_npz(path, "a prepared split", ("images", "labels"), fix=REPREPARE)
        images, labels = arrays["images"], arrays["labels"]
        size = int(self.meta.get("image_size", images.shape[1] if images.ndim == 4 else 0))
        problem = None
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            problem = f"images are {images.dtype} of shape {images.shape}; expected uint8 N x H x W x 3"
        elif images.shape[1:3] != (size, size):
            problem = f"images are {images.shape[1]}x{images.shape[2]}; meta.json says {size}x{size}"
        elif labels.ndim != 1 or len(labels) != len(images):
            problem = f"{len(labels)} labels of shape {labels.shape} for {len(images)} images"
        elif len(labels) and (labels.min() < 0 or labels.max() >= self.num_classes):
            problem = (
                f"labels range over {int(labels.min())}..{int(labels.max())}; meta.json says "
                f"{self.num_classes} classes (0..{self.num_classes - 1})"
            )
        if problem:
            raise DataError(f"{path}: {problem}; {REPREPARE}")
        images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
        return Split(images.to(self.device), torch.from_numpy(labels).long().to(self.device))

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float as ToTensor() then Normalize(mean, std)."""
        return images.float().div_(255).sub_(self.mean).div_(self.std)

    def augment(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop of the padded image and random horizontal flip, for a whole uint8 batch.

        The padded image is never built: each output pixel reads its source pixel
        (reflected at the border, or zero outside it) through one gather.
        """
        n, _, height, width = images.shape
        pad = self.pad
        if pad == 0 and not self.flip:
            return images
        top = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=generator.device).to(images.device)
        left = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=generator.device).to(images.device)
        rows = top - pad + torch.arange(height, device=images.device)  # source rows, may fall outside the image
        cols = left - pad + torch.arange(width, device=images.device)
        if self.flip:
            flipped = torch.rand(n, 1, generator=generator, device=generator.device).to(images.device) < 0.5
            cols = torch.where(flipped, cols.flip(1), cols)
        if self.pad_mode == "reflect":
            rows, cols = _reflect(rows, height), _reflect(cols, width)
            inside = None
        else:
            inside = ((rows >= 0) & (rows < height)).unsqueeze(2) & ((cols >= 0) & (cols < width)).unsqueeze(1)
            rows, cols = rows.clamp(0, height - 1), cols.clamp(0, width - 1)
        batch = torch.arange(n, device=images.device).view(n, 1, 1)
        # Advanced indexing around the channel slice yields N x H x W x C, i.e. channels-last memory.
        out = images[batch, :, rows.view(n, height, 1), cols.view(n, 1, width)]
        if inside is not None:
            out = out * inside.unsqueeze(3).to(out.dtype)
        return out.permute(0, 3, 1, 2)

    def train_batches(self, batch_size: int, generator: torch.Generator):
        """One epoch of shuffled, augmented batches: (images, labels, dataset indices)."""
        n = len(self.train.labels)
        order = torch.randperm(n, generator=generator, device=generator.device).to(self.device)
        starts = range(0, n, batch_size)
        for start in starts:
            index = order[start : start + batch_size]
            if len(index) == 1 and n > 1:
                break  # a batch of one would break BatchNorm; the reference never meets one on CIFAR
            images = self.augment(self.train.images[index], generator)
            yield self.normalize(images), self.train.labels[index], index

    def strong_batch(self, indices: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A second view of the training images at ``indices``: its own crop and flip, then MLKD's strong
        augmentation (:mod:`afdistill.augment`), normalised."""
        from .augment import strong_augment

        return self.normalize(strong_augment(self.augment(self.train.images[indices], generator), generator))

    def num_train_batches(self, batch_size: int) -> int:
        n = len(self.train.labels)
        full, rest = divmod(n, batch_size)
        return full + (1 if rest > 1 else 0)

    def eval_batches(self, split: str = "test", batch_size: int = 500):
        data = self.test if split == "test" else self.train
        for start in range(0, len(data.labels), batch_size):
            yield self.normalize(data.images[start : start + batch_size]), data.labels[start : start + batch_size]
