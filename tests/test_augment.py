"""MLKD's strong augmentation against PIL itself, the way the official code applies it per image."""

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

from afdistill import augment
from afdistill.augment import CUTOUT_FILL, NAMES, OPERATIONS, apply_operations, cutout, strong_augment


def pil_operation(image: Image.Image, name: str, v: float) -> Image.Image:
    """The official code's operations (mdistiller/dataset/cifar100.py), written out with PIL."""
    affine = lambda coefficients: image.transform(image.size, Image.Transform.AFFINE, coefficients)  # noqa: E731
    return {
        "auto_contrast": lambda: ImageOps.autocontrast(image),
        "brightness": lambda: ImageEnhance.Brightness(image).enhance(v),
        "color": lambda: ImageEnhance.Color(image).enhance(v),
        "contrast": lambda: ImageEnhance.Contrast(image).enhance(v),
        "equalize": lambda: ImageOps.equalize(image),
        "identity": lambda: image,
        "posterize": lambda: ImageOps.posterize(image, max(1, int(v))),
        "rotate": lambda: image.rotate(v),
        "sharpness": lambda: ImageEnhance.Sharpness(image).enhance(v),
        "shear_x": lambda: affine((1, v, 0, 0, 1, 0)),
        "shear_y": lambda: affine((1, 0, 0, v, 1, 0)),
        "solarize": lambda: ImageOps.solarize(image, v),  # type: ignore[arg-type]  # a float, as the official code
        "translate_x": lambda: affine((1, 0, v * image.size[0], 0, 1, 0)),
        "translate_y": lambda: affine((1, 0, 0, 0, 1, v * image.size[1])),
    }[name]()


def images(n=10, height=20, width=17, seed=0):
    """Photographs are not uniform noise: a base colour per image, narrow noise, a few at full range."""
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (n, 3, 1, 1))
    spread = rng.choice([10, 60, 255], size=(n, 1, 1, 1))
    noise = rng.integers(-1, 2, (n, 3, height, width)) * rng.integers(0, 256, (n, 3, height, width)) % (spread + 1)
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def to_pil(array: np.ndarray) -> Image.Image:
    return Image.fromarray(array.transpose(1, 2, 0))


@pytest.mark.parametrize("k", range(len(OPERATIONS)), ids=NAMES)
def test_each_operation_is_pils_pixel_for_pixel(k):
    name, low, high = OPERATIONS[k]
    batch = images(seed=k)
    magnitudes = low + (high - low) * np.random.default_rng(100 + k).random(len(batch))
    ours = apply_operations(torch.from_numpy(batch), torch.full((len(batch),), k), torch.from_numpy(magnitudes))
    expected = np.stack(
        [
            np.asarray(pil_operation(to_pil(image), name, float(v))).transpose(2, 0, 1)
            for image, v in zip(batch, magnitudes)
        ]
    )
    assert ours.dtype == torch.uint8
    np.testing.assert_array_equal(ours.numpy(), expected)


def test_each_image_gets_its_own_operation_in_one_call():
    batch = images(n=len(OPERATIONS), seed=3)
    choice = torch.randperm(len(OPERATIONS), generator=torch.Generator().manual_seed(1))
    magnitudes = torch.tensor(
        [OPERATIONS[c][1] + 0.3 * (OPERATIONS[c][2] - OPERATIONS[c][1]) for c in choice.tolist()], dtype=torch.float64
    )
    ours = apply_operations(torch.from_numpy(batch), choice, magnitudes).numpy()
    for i, c in enumerate(choice.tolist()):
        expected = np.asarray(pil_operation(to_pil(batch[i]), NAMES[c], float(magnitudes[i]))).transpose(2, 0, 1)
        np.testing.assert_array_equal(ours[i], expected, err_msg=NAMES[c])


def pil_cutout(image: Image.Image, side: float, x: float, y: float) -> Image.Image:
    """The official CutoutAbs with its centre given instead of drawn."""
    w, h = image.size
    x0, y0 = int(max(0, x - side / 2.0)), int(max(0, y - side / 2.0))
    image = image.copy()
    ImageDraw.Draw(image).rectangle((x0, y0, min(w, x0 + side), min(h, y0 + side)), CUTOUT_FILL)
    return image


def test_cutout_is_the_official_filled_rectangle():
    batch = images(n=6, height=16, width=16, seed=5)
    side = torch.tensor([0.0, 1.0, 3.7, 8.0, 5.2, 7.9], dtype=torch.float64)
    x = torch.tensor([3.0, 0.2, 15.9, 8.0, 1.1, 12.5], dtype=torch.float64)
    y = torch.tensor([4.0, 9.9, 0.0, 8.0, 15.0, 2.25], dtype=torch.float64)
    ours = cutout(torch.from_numpy(batch), side, x, y).numpy()
    for i in range(len(batch)):
        expected = (
            batch[i]
            if side[i] == 0
            else np.asarray(pil_cutout(to_pil(batch[i]), float(side[i]), float(x[i]), float(y[i]))).transpose(2, 0, 1)
        )
        np.testing.assert_array_equal(ours[i], expected)


def test_a_seed_fixes_the_strong_view_and_another_seed_changes_it():
    batch = torch.from_numpy(images(n=32, seed=7))
    first = strong_augment(batch, torch.Generator().manual_seed(0))
    assert torch.equal(first, strong_augment(batch, torch.Generator().manual_seed(0)))
    assert not torch.equal(first, strong_augment(batch, torch.Generator().manual_seed(1)))
    assert first.shape == batch.shape and first.dtype == torch.uint8
    changed = (first != batch).flatten(1).any(dim=1).float().mean().item()
    assert changed > 0.8  # only two identities and no cutout leave an image as it was


def test_two_operations_are_drawn_with_replacement_uniformly(monkeypatch):
    seen = []
    real = augment.apply_operations
    monkeypatch.setattr(
        augment,
        "apply_operations",
        lambda im, choice, magnitude: (seen.append((choice, magnitude)), real(im, choice, magnitude))[1],
    )
    strong_augment(torch.from_numpy(images(n=4000, height=4, width=4)), torch.Generator().manual_seed(0))
    assert len(seen) == 2
    counts = torch.bincount(seen[0][0], minlength=len(OPERATIONS)).double()
    assert (counts / counts.sum() - 1 / len(OPERATIONS)).abs().max() < 0.02
    for k, (_, low, high) in enumerate(OPERATIONS):
        values = seen[0][1][seen[0][0] == k]
        assert values.min() >= low and values.max() <= high
