"""The networks of the MHGD paper (Lee & Song, BMVC 2019) and of its code, sseung0703/KD_methods_with_TF.

Sources
-------
* The supplementary material, section 1 and its Figure 1 (block diagrams of
  every network). The plain-text copy (``/work/shared/papers/003_*.txt``) lost
  the figure; it is read here from the same diagram in the authors' slides,
  sseung0703/MHGD@75e25d880aa350adbbbea9b8a23ae82a09a30f68:Oral_presentation.pdf
  (slide "Experimental Results (2/6)": "Sensing feature map from bold arrow of
  each architecture. For TinyImageNet, we added pooling layer that is marked
  redbox"), which draws, per network (``CONV 3x3xD`` = a 3x3 convolution with
  D filters, ``/2`` or ``, 2`` = stride 2):

  ==============  ============================================================
  VGG-Teacher     CONV64 x2, pool | CONV128 x2, pool | CONV256 x3, pool |
                  CONV512 x3, *pool* | CONV512 x3, pool | FC 1024, FC 1024, FC
  VGG-Student     CONV64, pool | CONV128, pool | CONV256, pool | CONV512,
                  *pool* | CONV512, pool | FC 1024, FC
  VGG (modified)  CONV16, CONV64, CONV64 | CONV128/2, CONV128 | CONV256/2,
                  CONV256 | global average pooling, FC
  ResNet-Student  CONV16, ResBlock 64,1 | ResBlock 128,2 | ResBlock 256,2 |
                  global average pooling, FC; ResBlock D,s = CONV 3x3xD,s/BN,
                  CONV 3x3xD/BN, plus the shortcut
  ==============  ============================================================

  Every max pooling is 2x2 with stride 2; the pooling in *italics* (red in the
  figure) exists only in the Tiny ImageNet networks ("max pooling was added
  after the fourth convolutional layer block in the VGG architecture").
  ``|`` ends a group: the figure boxes every group but the first with dotted
  lines, and the features MHGD compares are sensed "at the front and back of
  the dotted box", i.e. at the output of every group. The MobileNet is in
  :mod:`afdistill.models.mobilenetv1`; the WRResNets are ``wrn_22_4`` /
  ``wrn_10_4`` (``stem_stride=2`` on Tiny ImageNet) in :mod:`.wrn`.
* sseung0703/KD_methods_with_TF@9fb54144fe6a80edd94259d4ba42995b594c91a0,
  ``nets/ResNet.py`` (the MHGD code: its README's ResNet32 teacher and ResNet8
  student, "implemented ResNet has doubled depth"), for ``resnet32_mhgd`` and
  ``resnet8_mhgd``, and its ``ResNet_arg_scope`` for the initialisation.

Interface (:mod:`.features`)
----------------------------
``stages`` are the sensing points: the output of every ``|`` group above, so
consecutive stages are the front and back of each dotted box (MHGD relates
consecutive stages). For the two VGGs that is *after* each group's max
pooling: 64@16, 128@8, 256@4, 512@4, 512@2 on 32x32 images, and 64@32,
128@16, 256@8, 512@4, 512@2 on 64x64 images with ``max_pool_after_block4``. The
group's last convolution (+BN) output is pooled before its ReLU instead of
after (the same numbers: max pooling and ReLU commute), so ``preact_stages``
(the pooled map before the ReLU) is a tensor the forward pass computes anyway.
``blocks`` are every convolution's output after its ReLU, the last one of a
pooled group after the pooling (as the next layer sees it); ``stem`` is the
first convolution's output after its ReLU (for ``vgg7_mhgd``, whose first group
is a single convolution followed by pooling, that is the same tensor as
``stages[0]``). ``pooled`` is the classifier's input: the last FC-1024 output
after its ReLU (VGG16/VGG7), the globally averaged last map (modified VGG).
All blocks are AFD candidates. The ResNets are :class:`.resnet.ResNet`
instances: their interface is the CIFAR ResNets'.

Where the sources are silent, what we chose
-------------------------------------------
* Batch normalisation in the VGGs: Figure 1 draws BN only inside the residual
  blocks. ``batch_norm=True`` (default) puts BN between every convolution and
  its ReLU, as every convolution of the MHGD code base is built
  (``ResNet_arg_scope``: ``batch_norm`` with ReLU after each ``conv2d``);
  ``batch_norm=False`` gives plain convolutions with biases, as the authors'
  earlier VGGs for CIFAR-100 (sseung0703/SSKD_SVD@59184b48a338a223366ace2e9912b05ea86524d8,
  ``nets/VGG.py`` and ``nets/VGG_teacher.py``, the KD-SVD paper's) were. The
  supplementary's lower learning rate for VGG (0.01, against 0.1 for WRResNet)
  and the teacher's 67.99% would fit either. The FC-1024 layers have a ReLU
  and no BN; no dropout (the figure draws none; SSKD_SVD's VGGs had 0.5).
* The VGGs' classifier head flattens the last 2x2x512 map (the figure has no
  global pooling for them, unlike the other networks): 32x32 inputs, or 64x64
  with ``max_pool_after_block4=True``, the only sizes they take.
* Initialisation: "weights of all networks were initialized with He's
  initialization". We use the MHGD code's (``ResNet_arg_scope``):
  ``tf.contrib.layers.variance_scaling_initializer(mode='FAN_OUT')`` (factor 2,
  a normal truncated at two standard deviations with the TF1 1.3 correction,
  so the drawn standard deviation is about sqrt(2 / fan_out)) for every
  convolution *and* fully connected weight, fan-out = kernel area x output
  channels / groups (x output features for FC); zero biases; BN scale 1, offset
  0, epsilon 1e-5, decay 0.9 (PyTorch momentum 0.1).

The ResNets of the code
-----------------------
``nets/ResNet.py``: a 3x3 stem convolution + BN + ReLU, then ``NetworkBlock``s
of ``ResBlock``s (conv 3x3 stride s + BN + ReLU, conv 3x3 + BN, a 1x1 conv + BN
projection when the stride or width changes, add, ReLU), global average
pooling and a fully connected layer with bias. On 32x32 images the widths are
[32, 64, 128, 256] (stem, stages) with strides [1, 2, 2]; otherwise [16, 32,
64, 128, 256, 512] with strides [1, 2, 2, 2, 2] (``image_size=64`` here).
Blocks per stage: ``n = 1`` for the student (``resnet8_mhgd``: 1 + 3x2 + 1 =
8 layers), ``n = 5`` for the teacher (``resnet32_mhgd``: 32 layers), i.e. the
6n+2 depths with 2x (stem) / 4x (stages) the widths of He et al.'s CIFAR
ResNets; on 32x32 images these are exactly the shapes (and, built on
:class:`.resnet.ResNet`, the parameter names) of RepDistiller's ``resnet8x4``
and ``resnet32x4``: only the initialisation differs. The code taps the last
block of every ``NetworkBlock`` for MHGD (``feat``), which are ``stages`` here.
``narrow_stem=True`` (``resnet8_mhgd``) gives the 16-channel stem Figure 1
draws for the ResNet-Student of the paper's Table 3 (the code's has 32; the
64-pixel layout's stem has 16 channels either way).
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features
from .registry import register_model
from .resnet import ResNet

_M = TypeVar("_M", bound=nn.Module)


def tf_he_init_(module: _M) -> _M:
    """Every convolution and fully connected weight as TF1's ``variance_scaling_initializer(factor=2.0,
    mode='FAN_OUT', uniform=False)`` draws it: a normal with standard deviation sqrt(1.3 * 2 / fan_out)
    truncated at two of those standard deviations; zero biases, BN scale 1 and offset 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_out = m.kernel_size[0] * m.kernel_size[1] * m.out_channels // m.groups
        elif isinstance(m, nn.Linear):
            fan_out = m.out_features
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            continue
        else:
            continue
        _truncated_normal_(m.weight, math.sqrt(1.3 * 2.0 / fan_out))
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    return module


@torch.no_grad()
def _truncated_normal_(weight: Tensor, std: float) -> None:
    """TF's ``truncated_normal``: a normal(0, std) draw, values beyond two standard deviations drawn again
    (about 5% per round; faster on CPU than ``nn.init.trunc_normal_``'s inverse-CDF sampling)."""
    weight.normal_(0.0, std)
    if weight.is_meta:
        return
    flat = weight.view(-1)
    outside = (flat.abs() > 2.0 * std).nonzero().squeeze(1)
    while outside.numel():
        draws = torch.randn(outside.numel(), dtype=weight.dtype, device=weight.device) * std
        flat[outside] = draws
        outside = outside[draws.abs() > 2.0 * std]


class ConvUnit(nn.Module):
    """A 3x3 convolution and its BN (or its bias without BN); the network applies the ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, batch_norm: bool = True):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=not batch_norm)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        return x if self.bn is None else self.bn(x)


class MHGDVGG(nn.Module):
    """Groups of 3x3 conv(+BN)+ReLU units, each optionally followed by 2x2 max pooling, then either
    flatten + hidden FC layers (the VGGs) or global average pooling (the modified VGG), and ``classifier``.

    ``groups``: per group, the (width, stride) of its units; ``pool_after``: per group, whether a 2x2 max
    pooling ends it; ``hidden``: the widths of the FC layers between the flattened 2x2 map and the classifier
    (``None``: global average pooling instead).
    """

    def __init__(
        self,
        groups: list[list[tuple[int, int]]],
        pool_after: list[bool],
        hidden: list[int] | None,
        num_classes: int,
        batch_norm: bool = True,
    ):
        super().__init__()
        in_channels = 3
        for index, units in enumerate(groups):
            layers = []
            for width, stride in units:
                layers.append(ConvUnit(in_channels, width, stride, batch_norm))
                in_channels = width
            self.add_module(f"group{index + 1}", nn.Sequential(*layers))
        self.pool_after = list(pool_after)
        self.global_pool = hidden is None
        features = in_channels if hidden is None else in_channels * 2 * 2  # flattened 2x2 map
        self.fc = nn.ModuleList()
        for width in hidden or []:
            self.fc.append(nn.Linear(features, width))
            features = width
        self.classifier = nn.Linear(features, num_classes)
        self.afd_candidates = list(range(sum(len(units) for units in groups)))
        tf_he_init_(self)

    def groups(self) -> list[nn.Sequential]:
        return [getattr(self, f"group{index + 1}") for index in range(len(self.pool_after))]

    def forward(self, x: Tensor, with_features: bool = False):
        blocks, stages, preact_stages = [], [], []
        out, stem = x, None
        for group, pool in zip(self.groups(), self.pool_after):
            last = len(group) - 1
            for position, unit in enumerate(group):
                z = unit(out)
                if position == last:
                    if pool:  # pooled before the ReLU: the same values, and the pre-activation stage for free
                        z = F.max_pool2d(z, kernel_size=2, stride=2)
                    preact_stages.append(z)
                out = F.relu(z)  # not in place: z is the pre-activation feature
                blocks.append(out)
                if stem is None:
                    stem = out
            stages.append(out)
        if self.global_pool:
            pooled = out.mean((2, 3))
        else:
            pooled = out.flatten(1)
            for layer in self.fc:
                pooled = F.relu(layer(pooled))
        logits = self.classifier(pooled)
        if not with_features:
            return logits
        assert stem is not None  # set by the first group's last unit
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=preact_stages
        )


def _vgg_groups(repeats: list[int]) -> list[list[tuple[int, int]]]:
    return [[(width, 1)] * count for width, count in zip((64, 128, 256, 512, 512), repeats)]


@register_model
def vgg16_mhgd(num_classes: int, max_pool_after_block4: bool = False, batch_norm: bool = True) -> MHGDVGG:
    """MHGD's VGG-Teacher ("VGG16"): 13 convolutions in groups of 2, 2, 3, 3, 3 (64 ... 512 filters), max
    pooling after groups 1, 2, 3, 5 (and 4 with ``max_pool_after_block4``: Tiny ImageNet), FC 1024, FC 1024,
    classifier. Stages: the five group outputs (64@16, 128@8, 256@4, 512@4, 512@2 on 32x32 images)."""
    return MHGDVGG(
        _vgg_groups([2, 2, 3, 3, 3]),
        [True, True, True, max_pool_after_block4, True],
        [1024, 1024],
        num_classes,
        batch_norm,
    )


@register_model
def vgg7_mhgd(num_classes: int, max_pool_after_block4: bool = False, batch_norm: bool = True) -> MHGDVGG:
    """MHGD's VGG-Student ("VGG7"): one convolution per group (64, 128, 256, 512, 512 filters), the teacher's
    pooling, FC 1024, classifier. Its stages have the teacher's shapes."""
    return MHGDVGG(
        _vgg_groups([1, 1, 1, 1, 1]), [True, True, True, max_pool_after_block4, True], [1024], num_classes, batch_norm
    )


@register_model
def vgg_mhgd_modified(num_classes: int, batch_norm: bool = True) -> MHGDVGG:
    """The "modified VGG" student of MHGD's Table 3, whose feature maps have the WRResNet teacher's sizes:
    conv 16, conv 64, conv 64 | conv 128 (stride 2), conv 128 | conv 256 (stride 2), conv 256, global average
    pooling, classifier. Stages 64@32, 128@16, 256@8 (``wrn_22_4``'s); stem: the 16-filter convolution."""
    groups = [[(16, 1), (64, 1), (64, 1)], [(128, 2), (128, 1)], [(256, 2), (256, 1)]]
    return MHGDVGG(groups, [False, False, False], None, num_classes, batch_norm)


def _mhgd_resnet(n: int, num_classes: int, image_size: int, stem_width: int) -> ResNet:
    if image_size == 32:
        blocks, widths = [n] * 3, [stem_width, 64, 128, 256]
    elif image_size == 64:
        blocks, widths = [n] * 5, [16, 32, 64, 128, 256, 512]
    else:
        raise ValueError(
            f"image_size: {image_size!r} is not allowed; allowed: 32 (the code's CIFAR layout), "
            f"64 (its layout for larger images, e.g. Tiny ImageNet)"
        )
    return tf_he_init_(ResNet(blocks, widths, num_classes))


@register_model
def resnet32_mhgd(num_classes: int, image_size: int = 32) -> ResNet:
    """KD_methods_with_TF's teacher ResNet (``n = 5`` blocks per stage): RepDistiller's ``resnet32x4`` shapes
    on 32x32 images; ``image_size=64``: the code's five-stage layout (16 | 32, 64, 128, 256, 512)."""
    return _mhgd_resnet(5, num_classes, image_size, 32)


@register_model
def resnet8_mhgd(num_classes: int, image_size: int = 32, narrow_stem: bool = False) -> ResNet:
    """KD_methods_with_TF's student ResNet (``n = 1``): RepDistiller's ``resnet8x4`` shapes on 32x32 images.
    ``narrow_stem=True``: a 16-channel stem, MHGD's Table 3 ResNet-Student as its supplementary's Figure 1
    draws it; ``image_size=64``: the code's five-stage layout."""
    return _mhgd_resnet(1, num_classes, image_size, 16 if narrow_stem else 32)
