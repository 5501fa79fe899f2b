"""Streaming throughput against the decode limit of the same JPEGs.

    PYTHONPATH=src python benchmarks/streaming.py --images 400 --workers 2

Writes ``--images`` synthetic ImageNet-like JPEGs (500x375 and 375x500 photos'
sizes, smooth content plus grain, quality 90: about the ImageNet training
set's mean file size) into ``--dir`` in ImageNet's layout, prepares them with
``afdistill prepare``'s code, and times, each with the same number of loader
worker processes:

- ``decode``: open + decode + convert to RGB, nothing else (the limit any
  JPEG pipeline on PIL meets on this machine);
- ``stream train``: :class:`afdistill.streaming.StreamingData.train_batches`
  (RandomResizedCrop(224) + flip, batches on ``--device``, normalised);
- ``stream eval``: ``eval_batches`` (Resize(256) + CenterCrop(224));
- ``stream train, stored copy``: the same on a copy ``prepare`` stored with
  ``stored_shorter_side`` (``--stored-shorter-side``, 256 by default; 0: skip);
- ``torchvision``: ``ImageFolder`` + ``RandomResizedCrop`` + flip +
  ``PILToTensor`` through a ``DataLoader``, the usual reference pipeline.

Each figure is the median of ``--repeats`` passes over all images, in images/s.
The ``stream`` rows include what the engine receives: batches moved to
``--device`` and normalised to float there (on a CPU that work shares the
cores with the workers); the torchvision row stops at uint8 tensors.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from afdistill.archives import load_rgb  # noqa: E402
from afdistill.data import prepare  # noqa: E402
from afdistill.streaming import StreamingData, _default_workers  # noqa: E402


def synthetic_imagenet(root: Path, n_images: int, classes: int = 10) -> Path:
    """``train/<wnid>/*.JPEG`` and ``val/<wnid>/*.JPEG``; ``n_images`` training images and a quarter as many to test."""
    from PIL import Image

    marker = root / f".complete-{n_images}"
    if marker.exists():
        return root
    rng = np.random.default_rng(0)
    for split, count in (("train", n_images), ("val", max(classes, n_images // 4))):
        for i in range(count):
            width, height = (500, 375) if i % 3 else (375, 500)
            coarse = rng.integers(0, 256, (height // 25 + 1, width // 25 + 1, 3), dtype=np.uint8)
            smooth = np.asarray(
                Image.fromarray(coarse).resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16
            )
            grain = rng.integers(-20, 21, (height, width, 3), dtype=np.int16)
            pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
            path = root / split / f"n{i % classes:08d}" / f"{split}_{i:06d}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    marker.touch()
    return root


class _DecodeOnly(torch.utils.data.Dataset):
    def __init__(self, paths):
        self.paths = paths

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        return load_rgb(self.paths[index]).size  # decoded; only its size travels back


def _rate(run, n: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        times.append(time.perf_counter() - started)
    return n / statistics.median(times)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--dir", default="/tmp/afdistill-streaming-bench")
    parser.add_argument("--workers", type=int, default=_default_workers())
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--stored-shorter-side", type=int, default=256)
    args = parser.parse_args(argv)

    root = synthetic_imagenet(Path(args.dir) / "raw", args.images)
    prepared = Path(args.dir) / f"prepared-{args.images}"
    prepare("imagenet", prepared, root=root)
    data = StreamingData(prepared, args.device, workers=args.workers)
    paths = [data.root / p.decode() for p in data.train.dataset.paths]
    n = len(paths)
    sizes = [p.stat().st_size for p in paths]
    print(
        f"{n} JPEGs, mean {np.mean(sizes) / 1024:.0f} KiB; {args.workers} workers; batch {args.batch_size}; "
        f"device {args.device}; torch {torch.__version__}; median of {args.repeats}",
        flush=True,
    )

    def drain(batches):
        for batch in batches:
            pass
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()

    decode_loader = lambda workers: torch.utils.data.DataLoader(  # noqa: E731
        _DecodeOnly(paths), batch_size=args.batch_size, num_workers=workers, collate_fn=list
    )
    results = {
        "decode, 1 process": _rate(lambda: drain(decode_loader(0)), n, args.repeats),
        f"decode, {args.workers} workers": _rate(lambda: drain(decode_loader(args.workers)), n, args.repeats),
    }
    generator = torch.Generator().manual_seed(0)
    results["stream train"] = _rate(lambda: drain(data.train_batches(args.batch_size, generator)), n, args.repeats)
    n_test = len(data.test.labels)
    results["stream eval"] = _rate(lambda: drain(data.eval_batches(batch_size=args.batch_size)), n_test, args.repeats)

    if args.stored_shorter_side:
        copy_dir = Path(args.dir) / f"prepared-{args.images}-stored-{args.stored_shorter_side}"
        prepare("imagenet", copy_dir, root=root, stored_shorter_side=args.stored_shorter_side)
        stored = StreamingData(copy_dir, args.device, workers=args.workers)
        results[f"stream train, stored copy ({args.stored_shorter_side})"] = _rate(
            lambda: drain(stored.train_batches(args.batch_size, generator)), n, args.repeats
        )
        results[f"stream eval, stored copy ({args.stored_shorter_side})"] = _rate(
            lambda: drain(stored.eval_batches(batch_size=args.batch_size)), n_test, args.repeats
        )

    from torchvision import datasets, transforms

    folder = datasets.ImageFolder(
        str(root / "train"),
        transforms.Compose(
            [transforms.RandomResizedCrop(224), transforms.RandomHorizontalFlip(), transforms.PILToTensor()]
        ),
    )

    def loader():
        return torch.utils.data.DataLoader(
            folder,
            batch_size=args.batch_size,
            shuffle=True,  # noqa: E731
            num_workers=args.workers,
        )

    results["torchvision ImageFolder train"] = _rate(lambda: drain(loader()), n, args.repeats)

    limit = results[f"decode, {args.workers} workers"]
    for name, rate in results.items():
        print(f"{name:32s} {rate:9.1f} images/s  ({rate / limit:.2f} of the decode limit)")


if __name__ == "__main__":
    main()
