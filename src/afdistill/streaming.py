"""Streaming data: JPEGs decoded and augmented in parallel loader workers, batches on the device.

For datasets too large to hold on the device (ImageNet) and for the transfer
sets at 224x224, :class:`StreamingData` serves the interface the engine uses
on :class:`afdistill.data.DeviceData` (``num_classes``, ``device``,
``train`` / ``test`` with ``labels`` and a sliceable ``images``,
``normalize``, ``train_batches``, ``num_train_batches``, ``eval_batches``).

Each worker process opens, decodes (PIL, any format, converted to RGB) and
transforms whole samples; the training loop only receives stacked uint8
batches (channels-last memory), copies them to the device and normalises
them there. Transforms are torchvision's, written out so that every random
number comes from a seeded per-sample stream:

- training: ``RandomResizedCrop(size)`` (scale (0.08, 1), ratio (3/4, 4/3),
  ten tries then the centre-crop fallback, bilinear with PIL's antialiasing)
  and ``RandomHorizontalFlip()``;
- test: ``Resize(resize)`` (shorter side, the longer one truncated as
  torchvision does) and ``CenterCrop(size)``.

Randomness: each epoch draws its sample order (``torch.randperm``) and one
64-bit epoch seed from the engine's generator; sample ``i`` then draws its
crop and flip from ``numpy.random.default_rng([epoch_seed, i])``. A seed
therefore fixes the order and every augmentation, whatever the number of
workers or how batches are scheduled among them. The random stream differs
from torchvision's (which draws from the global torch RNG), the distribution
does not.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .archives import load_rgb, read_tsv
from .data import DataError, DeviceData

SCALE = (0.08, 1.0)
RATIO = (3.0 / 4.0, 4.0 / 3.0)


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator, scale=SCALE, ratio=RATIO):
    """(top, left, crop height, crop width) as torchvision's ``RandomResizedCrop.get_params`` chooses them."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            return top, left, h, w
    in_ratio = width / height  # fallback: the whole image, cropped to the nearest allowed ratio
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def train_transform(image, rng: np.random.Generator, size: int):
    from PIL import Image

    top, left, h, w = random_resized_crop_box(image.width, image.height, rng)
    # crop, then resize (as torchvision): resize(box=...) would blend in pixels from outside the box
    out = image.crop((left, top, left + w, top + h)).resize((size, size), Image.Resampling.BILINEAR)
    if rng.uniform() < 0.5:  # drawn after the box: the crop, then the flip
        out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return out


def eval_transform(image, size: int, resize: int):
    from PIL import Image

    width, height = image.size
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = resize, int(resize * long / short)
    new_w, new_h = (new_short, new_long) if width <= height else (new_long, new_short)
    image = image.resize((new_w, new_h), Image.Resampling.BILINEAR)
    top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    return image.crop((left, top, left + size, top + size))


class _Decode(Dataset):
    """Sample ``(index, seed)`` -> (HxWx3 uint8 array, index); seed None means the test transform."""

    def __init__(self, root: Path, paths: list[str], size: int, resize: int):
        # One numpy bytes array, not a list of str: forked workers would otherwise copy
        # every page of 1.3M Python objects as reference counts touch them.
        self.root, self.size, self.resize = root, size, resize
        self.paths = np.array([path.encode() for path in paths], dtype=np.bytes_)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, key):
        index, seed = key
        image = load_rgb(self.root / self.paths[index].decode())
        if seed is None:
            image = eval_transform(image, self.size, self.resize)
        else:
            image = train_transform(image, np.random.default_rng([seed, index]), self.size)
        return np.asarray(image), index


def _collate(samples):
    images = torch.from_numpy(np.stack([s[0] for s in samples])).permute(0, 3, 1, 2)  # channels-last memory
    return images, torch.tensor([s[1] for s in samples], dtype=torch.long)


class _LazyImages:
    """``split.images[a:b]``: those samples through the test transform, uint8 on the device."""

    def __init__(self, owner: "StreamingData", split: "StreamSplit"):
        self.owner, self.split = owner, split

    def __len__(self) -> int:
        return len(self.split.labels)

    def __getitem__(self, index):
        indices = range(len(self))[index]
        if isinstance(indices, int):
            indices = [indices]
        dataset = self.split.dataset
        images, _ = _collate([dataset[(i, None)] for i in indices])
        return images.to(self.owner.device)


@dataclass
class StreamSplit:
    dataset: _Decode
    labels: torch.Tensor  # int64, on the device
    images: _LazyImages | None = None


def _default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class StreamingData:
    """A prepared streaming dataset (``meta["format"] == "stream"``), served like :class:`DeviceData`."""

    def __init__(
        self,
        data_dir: str | os.PathLike,
        device: torch.device | str = "cpu",
        train_split: str = "train",
        test_split: str = "test",
        workers: int | None = None,
    ):
        data_dir = Path(data_dir)
        meta_path = data_dir / "meta.json"
        if not meta_path.is_file():
            raise DataError(f"{data_dir} is not a prepared dataset (no meta.json); run `afdistill prepare` first")
        self.meta = json.loads(meta_path.read_text())
        if self.meta.get("format") != "stream":
            raise DataError(f"{data_dir} holds a device-resident dataset; open it with DeviceData")
        self.device = torch.device(device)
        self.num_classes = int(self.meta["num_classes"])
        self.size, self.resize = int(self.meta["image_size"]), int(self.meta["resize"])
        self.root = Path(self.meta["image_root"])
        env = os.environ.get("AFDISTILL_LOADER_WORKERS")
        self.workers = workers if workers is not None else int(env) if env else _default_workers()
        self.mean = torch.tensor(self.meta["mean"], device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(self.meta["std"], device=self.device).view(1, 3, 1, 1)
        self.train = self._split(data_dir, train_split)
        self.test = self._split(data_dir, test_split)

    def _split(self, data_dir: Path, name: str) -> StreamSplit:
        path = data_dir / f"{name}.tsv"
        if not path.is_file():
            allowed = ", ".join(sorted(self.meta.get("splits", {})))
            raise DataError(f"{data_dir} has no split {name!r} ({path} is missing); allowed: {allowed}")
        paths, labels = read_tsv(path)
        split = StreamSplit(_Decode(self.root, paths, self.size, self.resize), torch.from_numpy(labels).to(self.device))
        split.images = _LazyImages(self, split)
        return split

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 -> float as ToTensor() then Normalize(mean, std)."""
        return images.float().div_(255).sub_(self.mean).div_(self.std)

    def _loader(self, dataset: _Decode, batches: list[list[tuple[int, int | None]]]) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=batches,
            num_workers=self.workers,
            collate_fn=_collate,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=4 if self.workers else None,
        )

    def _batches(self, dataset: _Decode, loader_batches):
        for images, index in self._loader(dataset, loader_batches):
            yield images.to(self.device, non_blocking=True), index.to(self.device, non_blocking=True)

    def epoch_plan(self, batch_size: int, generator: torch.Generator) -> list[list[tuple[int, int]]]:
        """The epoch's batches as (sample index, epoch seed) lists, all drawn from ``generator``."""
        n = len(self.train.labels)
        order = torch.randperm(n, generator=generator, device=generator.device).cpu().tolist()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
        plan = [[(i, seed) for i in order[start : start + batch_size]] for start in range(0, n, batch_size)]
        if len(plan[-1]) == 1 and n > 1:
            plan.pop()  # a batch of one would break BatchNorm (as DeviceData)
        return plan

    def train_batches(self, batch_size: int, generator: torch.Generator):
        """One epoch of shuffled, augmented batches: (images, labels, dataset indices)."""
        for images, index in self._batches(self.train.dataset, self.epoch_plan(batch_size, generator)):
            yield self.normalize(images), self.train.labels[index], index

    def num_train_batches(self, batch_size: int) -> int:
        full, rest = divmod(len(self.train.labels), batch_size)
        return full + (1 if rest > 1 else 0)

    def eval_batches(self, split: str = "test", batch_size: int = 250):
        data = self.test if split == "test" else self.train
        n = len(data.labels)
        plan = [[(i, None) for i in range(start, min(start + batch_size, n))] for start in range(0, n, batch_size)]
        for images, index in self._batches(data.dataset, plan):
            yield self.normalize(images), data.labels[index]


def open_prepared(data_dir: str | os.PathLike, device: torch.device | str = "cpu", **streaming_options):
    """The right reader for a prepared dataset: :class:`DeviceData` or :class:`StreamingData`."""
    meta_path = Path(data_dir) / "meta.json"
    if not meta_path.is_file():
        raise DataError(f"{data_dir} is not a prepared dataset (no meta.json); run `afdistill prepare` first")
    if json.loads(meta_path.read_text()).get("format") == "stream":
        return StreamingData(data_dir, device, **streaming_options)
    return DeviceData(data_dir, device)
