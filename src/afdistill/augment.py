"""MLKD's strong augmentation (RandAugment(2, 10) then Cutout), batched on uint8 tensors.

The official MLKD code (Jin-Ying/Multi-Level-Logit-Distillation,
``mdistiller/dataset/cifar100.py``) applies, per image and with PIL, after
the usual random crop and flip:

* two operations drawn with replacement from fourteen, each with a magnitude
  drawn uniformly from its range (the ``m = 10`` of ``RandAugment(2, 10)`` is
  unused there): AutoContrast, Brightness, Color, Contrast and Sharpness
  (factors in [0.05, 0.95]), Equalize, Identity, Posterize ([4, 8] bits,
  truncated to an integer), Rotate ([-30, 30] degrees), ShearX and ShearY
  ([-0.3, 0.3]), Solarize (threshold in [0, 256]), TranslateX and TranslateY
  ([-0.3, 0.3] of the image size);
* then Cutout: a square of side ``u * 0.5 * width`` (u uniform) around a
  uniformly drawn centre, filled with (125, 123, 114).

Here the whole batch is augmented at once on its device, with PIL's
arithmetic: every operation is one of three kinds, each applied to all images
with the identity for the images that drew another operation:

* a per-image, per-channel lookup table (AutoContrast, Equalize, Posterize,
  Solarize, Identity), as ``ImageOps`` builds them;
* a blend with a degenerate image (Brightness: black; Color: the luma image;
  Contrast: the mean luma; Sharpness: the 3x3 SMOOTH filter), as
  ``ImageEnhance`` does;
* an affine resampling (Rotate, Shear, Translate) with PIL's pixel-centre
  convention, nearest neighbour, black outside.

``tests/test_augment.py`` checks each against PIL itself. Random numbers
come from the given generator, so a seed fixes them (they are not PIL's
stream: the official code draws from Python's ``random`` per image).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

#: (name, low, high) in the official code's order
OPERATIONS = (
    ("auto_contrast", 0.0, 1.0),
    ("brightness", 0.05, 0.95),
    ("color", 0.05, 0.95),
    ("contrast", 0.05, 0.95),
    ("equalize", 0.0, 1.0),
    ("identity", 0.0, 1.0),
    ("posterize", 4.0, 8.0),
    ("rotate", -30.0, 30.0),
    ("sharpness", 0.05, 0.95),
    ("shear_x", -0.3, 0.3),
    ("shear_y", -0.3, 0.3),
    ("solarize", 0.0, 256.0),
    ("translate_x", -0.3, 0.3),
    ("translate_y", -0.3, 0.3),
)
NAMES = tuple(name for name, _, _ in OPERATIONS)
CUTOUT_FILL = (125, 123, 114)
CUTOUT_MAX = 0.5  # of the width


def strong_augment(images: Tensor, generator: torch.Generator, num_operations: int = 2) -> Tensor:
    """RandAugment's ``num_operations`` random operations, then Cutout, for a uint8 N x 3 x H x W batch."""
    n = len(images)
    for _ in range(num_operations):
        choice = _draw(torch.randint, len(OPERATIONS), (n,), generator=generator).to(images.device)
        fraction = _draw(torch.rand, n, generator=generator).to(images.device, torch.float64)
        low = torch.tensor([o[1] for o in OPERATIONS], dtype=torch.float64, device=images.device)
        high = torch.tensor([o[2] for o in OPERATIONS], dtype=torch.float64, device=images.device)
        images = apply_operations(images, choice, low[choice] + (high[choice] - low[choice]) * fraction)
    side = _draw(torch.rand, n, generator=generator).to(images.device, torch.float64) * CUTOUT_MAX * images.shape[3]
    centre_x = _draw(torch.rand, n, generator=generator).to(images.device, torch.float64) * images.shape[3]
    centre_y = _draw(torch.rand, n, generator=generator).to(images.device, torch.float64) * images.shape[2]
    return cutout(images, side, centre_x, centre_y)


def _draw(function, *args, generator: torch.Generator):
    return function(*args, generator=generator, device=generator.device)


def apply_operations(images: Tensor, choice: Tensor, magnitude: Tensor) -> Tensor:
    """Image i gets operation ``OPERATIONS[choice[i]]`` at ``magnitude[i]`` (float64)."""
    index = {name: i for i, name in enumerate(NAMES)}
    is_ = lambda name: choice == index[name]  # noqa: E731
    images = _lookup(images, _tables(images, choice, magnitude, index))
    factor = torch.where(
        is_("brightness") | is_("color") | is_("contrast") | is_("sharpness"), magnitude, torch.ones_like(magnitude)
    )
    images = _blend(images, choice, factor, index)
    return _affine(images, _matrices(images, choice, magnitude, index))


# ---------------------------------------------------------------- lookup tables


def _tables(images: Tensor, choice: Tensor, magnitude: Tensor, index: dict) -> Tensor:
    """N x 3 x 256 lookup tables: identity except for the images that drew a table operation."""
    n = len(images)
    values = torch.arange(256, device=images.device)
    tables = values.expand(n, 3, 256).clone()
    histogram = _histograms(images)
    present = histogram > 0
    # AutoContrast (cutoff 0): the channel's [min, max] stretched to [0, 255], truncated as PIL does
    low = torch.where(present, values, 256).min(dim=2, keepdim=True).values
    high = torch.where(present, values, -1).max(dim=2, keepdim=True).values
    # (tensor / tensor: a Python scalar over a tensor multiplies by the reciprocal, one ulp off PIL's division)
    scale = torch.full_like(high, 255, dtype=torch.float64) / (high - low).clamp(min=1).double()
    stretched = (values.double() * scale - low.double() * scale).trunc().clamp(0, 255).long()
    auto_contrast = torch.where(high > low, stretched, values)
    # Equalize: PIL's step from the histogram without its last occupied bin
    last = histogram.gather(2, high.clamp(min=0))
    step = (histogram.sum(dim=2, keepdim=True) - last) // 255
    before = histogram.cumsum(dim=2) - histogram
    equalized = torch.where(step > 0, (step // 2 + before) // step.clamp(min=1), values).clamp(0, 255)
    # Posterize: keep the top int(v) bits; Solarize: invert at or above the threshold
    bits = magnitude.long().clamp(1, 8).view(n, 1, 1)
    posterized = values & ~((1 << (8 - bits)) - 1)
    solarized = torch.where(values.double() < magnitude.view(n, 1, 1), values, 255 - values)
    for name, table in (
        ("auto_contrast", auto_contrast),
        ("equalize", equalized),
        ("posterize", posterized),
        ("solarize", solarized),
    ):
        tables = torch.where((choice == index[name]).view(n, 1, 1), table.expand(n, 3, 256), tables)
    return tables


def _histograms(images: Tensor) -> Tensor:
    n, channels = images.shape[:2]
    flat = images.reshape(n * channels, -1).long()
    counts = torch.zeros(n * channels, 256, dtype=torch.long, device=images.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts.view(n, channels, 256)


def _lookup(images: Tensor, tables: Tensor) -> Tensor:
    n, channels, height, width = images.shape
    return tables.gather(2, images.reshape(n, channels, -1).long()).view(n, channels, height, width).to(images.dtype)


# ---------------------------------------------------------------- blends (ImageEnhance)


def _luma(images: Tensor) -> Tensor:
    """PIL's RGB -> L: (R*19595 + G*38470 + B*7471 + 2^15) >> 16."""
    r, g, b = images.long().unbind(1)
    return ((r * 19595 + g * 38470 + b * 7471 + (1 << 15)) >> 16).unsqueeze(1)


def _blend(images: Tensor, choice: Tensor, factor: Tensor, index: dict) -> Tensor:
    n = len(images)
    pick = lambda name: (choice == index[name]).view(n, 1, 1, 1)  # noqa: E731
    luma = _luma(images)
    mean_luma = (luma.double().mean(dim=(2, 3), keepdim=True) + 0.5).trunc()
    degenerate = torch.zeros_like(images, dtype=torch.float64)  # Brightness: black
    degenerate = torch.where(pick("color"), luma.double().expand_as(degenerate), degenerate)
    degenerate = torch.where(pick("contrast"), mean_luma.expand_as(degenerate), degenerate)
    degenerate = torch.where(pick("sharpness"), _smooth(images), degenerate)
    # Image.blend: (UINT8)(in1 + alpha * (in2 - in1)) in C floats (alpha is a float), truncated
    alpha = factor.float().view(n, 1, 1, 1)
    blended = (degenerate.float() + alpha * (images.float() - degenerate.float())).trunc().clamp(0, 255)
    return torch.where(factor.view(n, 1, 1, 1) == 1, images, blended.to(torch.uint8))


def _clip8(values: Tensor) -> Tensor:
    """PIL's float -> 8-bit conversion in its filters: round half up, then clip."""
    return (values + 0.5).floor().clamp(0, 255).to(torch.uint8)


def _smooth(images: Tensor) -> Tensor:
    """ImageFilter.SMOOTH (3x3, centre 5, others 1, over 13); border pixels are copied, as PIL does."""
    n, channels, height, width = images.shape
    kernel = torch.ones(3, 3, dtype=torch.float64, device=images.device)
    kernel[1, 1] = 5
    kernel = (kernel / 13).expand(channels, 1, 3, 3)
    inner = torch.nn.functional.conv2d(images.double(), kernel, groups=channels)
    smoothed = images.double().clone()
    smoothed[:, :, 1:-1, 1:-1] = _clip8(inner).double()
    return smoothed


# ---------------------------------------------------------------- affine resampling


def _matrices(images: Tensor, choice: Tensor, magnitude: Tensor, index: dict) -> Tensor:
    """N x 6 PIL affine coefficients (a, b, c, d, e, f): output (x, y) reads input (a x + b y + c, d x + e y + f)."""
    n, _, height, width = images.shape
    one, zero = torch.ones_like(magnitude), torch.zeros_like(magnitude)
    matrix = torch.stack([one, zero, zero, zero, one, zero], dim=1)
    pick = lambda name: (choice == index[name]).view(n, 1)  # noqa: E731
    v = magnitude
    # Image.rotate(v): counter-clockwise about the centre; PIL rounds the cosines to 15 places
    theta = -v * math.pi / 180
    cos, sin = torch.round(torch.cos(theta), decimals=15), torch.round(torch.sin(theta), decimals=15)
    cx, cy = width / 2.0, height / 2.0
    rotate = torch.stack([cos, sin, cos * -cx + sin * -cy + cx, -sin, cos, -sin * -cx + cos * -cy + cy], dim=1)
    for name, coefficients in (
        ("rotate", rotate),
        ("shear_x", torch.stack([one, v, zero, zero, one, zero], dim=1)),
        ("shear_y", torch.stack([one, zero, zero, v, one, zero], dim=1)),
        ("translate_x", torch.stack([one, zero, v * width, zero, one, zero], dim=1)),
        ("translate_y", torch.stack([one, zero, zero, zero, one, v * height], dim=1)),
    ):
        matrix = torch.where(pick(name), coefficients, matrix)
    return matrix


def _affine(images: Tensor, matrix: Tensor) -> Tensor:
    """Nearest-neighbour ``Image.transform(AFFINE)``: pixel centres mapped, floored, black outside."""
    n, channels, height, width = images.shape
    a, b, c, d, e, f = (matrix[:, i].view(n, 1, 1) for i in range(6))
    y = torch.arange(height, dtype=torch.float64, device=images.device).view(1, height, 1) + 0.5
    x = torch.arange(width, dtype=torch.float64, device=images.device).view(1, 1, width) + 0.5
    source_x = (a * x + b * y + c).floor().long()
    source_y = (d * x + e * y + f).floor().long()
    inside = (source_x >= 0) & (source_x < width) & (source_y >= 0) & (source_y < height)
    flat = (source_y.clamp(0, height - 1) * width + source_x.clamp(0, width - 1)).view(n, 1, -1)
    out = images.reshape(n, channels, -1).gather(2, flat.expand(n, channels, -1)).view(n, channels, height, width)
    return out * inside.unsqueeze(1).to(out.dtype)


# ---------------------------------------------------------------- Cutout


def cutout(images: Tensor, side: Tensor, centre_x: Tensor, centre_y: Tensor) -> Tensor:
    """The official ``CutoutAbs``: a square from (int(max(0, x - side/2)), same for y) to min(size, that + side),
    both corners included (``ImageDraw.rectangle``), filled with ``CUTOUT_FILL``; none where side is 0."""
    n, _, height, width = images.shape
    x0 = (centre_x - side / 2).clamp(min=0).trunc()
    y0 = (centre_y - side / 2).clamp(min=0).trunc()
    x1 = torch.minimum(x0 + side, torch.full_like(x0, width))
    y1 = torch.minimum(y0 + side, torch.full_like(y0, height))
    columns = torch.arange(width, device=images.device, dtype=torch.float64).view(1, 1, width)
    rows = torch.arange(height, device=images.device, dtype=torch.float64).view(1, height, 1)
    box = (
        (columns >= x0.view(n, 1, 1))
        & (columns <= x1.view(n, 1, 1).floor())
        & (rows >= y0.view(n, 1, 1))
        & (rows <= y1.view(n, 1, 1).floor())
        & (side > 0).view(n, 1, 1)
    )
    fill = torch.tensor(CUTOUT_FILL, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return torch.where(box.unsqueeze(1), fill, images)
