"""Wide Residual Networks (Zagoruyko & Komodakis 2016), pre-activation, CIFAR layout.

Parameter names follow HobbitLong/RepDistiller's ``models/wrn.py``
(``block1.layer.0.bn1`` ... ``convShortcut`` ... ``bn1``, ``fc``).

AFD's per-block candidates are each block's output after the BN+ReLU that the
*next* block (or the head) applies; we take them from inside that next block
instead of recomputing them. The official AFD code (clovaai/attention-feature-
distillation, ``models/wrn.py``, which produced the paper's Table 1 WRN rows)
calls every block's ``bn1`` twice, once for its feature list and once for the
residual path, so in training those BNs update their running statistics twice
per step. By default we call it once, as RepDistiller does (same features and
gradients; only the running statistics of those BNs differ), so RepDistiller's
checkpoints load and behave as published. ``double_bn_update=True`` (an option of
every WRN factory) reproduces the official AFD behaviour: the extra call only
updates the running statistics (in training its output equals the first's, and
the gradient through two identical batch-statistics BNs equals that through
one), and ``num_batches_tracked`` counts both. Parameter and buffer names are
the same either way.

``stem_stride=2`` (also an option of every WRN factory) gives the first
convolution a stride of 2: MHGD's WRResNet on Tiny ImageNet (its supplementary:
"the stride of the first convolutional layer was set to 2"), 64x64 images
reaching the blocks at 32x32 as CIFAR's do. Parameters are the same.

``preact_stages`` (the pre-activation stage outputs) are, as in mdistiller's
WRN (megvii-research/mdistiller a08d46f1, ``mdistiller/models/cifar/wrn.py``:
``f1_pre = self.block2.layer[0].bn1(f1)`` ... ``f3_pre = self.bn1(f3)``), each
stage's raw output after the BN that the next layer applies to it, before that
layer's ReLU: the next group's first ``bn1`` output, the head's ``bn1`` output
for the last stage. mdistiller applies those BNs a second time to get them; we
keep the outputs the forward pass computes anyway (the same tensors in eval
mode, and no extra running-statistics update in training).
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features
from .registry import register_model


class WideBlock(nn.Module):
    """bn-relu-conv-bn-relu-conv with identity or 1x1-projection shortcut."""

    def __init__(
        self, in_planes: int, out_planes: int, stride: int, drop_rate: float = 0.0, double_bn_update: bool = False
    ):
        super().__init__()
        self.double_bn_update = double_bn_update
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, kernel_size=3, stride=1, padding=1, bias=False)
        self.drop_rate = drop_rate
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = (
            None
            if self.equal_in_out
            else nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, padding=0, bias=False)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Returns (block output, the activated input this block saw, that input before its ReLU)."""
        if self.double_bn_update and self.training:
            with torch.no_grad():  # the official AFD code's feature-list call: one more running-statistics update
                self.bn1(x)
        normalized = self.bn1(x)
        activated = F.relu(normalized)
        out = F.relu(self.bn2(self.conv1(activated)))
        if self.drop_rate > 0:
            out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        # A projection shortcut reads the activated input, an identity one the raw input.
        shortcut = x if self.equal_in_out else cast(nn.Conv2d, self.convShortcut)(activated)  # built if not equal
        return out + shortcut, activated, normalized


class WideGroup(nn.Module):
    def __init__(
        self, count: int, in_planes: int, out_planes: int, stride: int, drop_rate: float, double_bn_update: bool = False
    ):
        super().__init__()
        self.layer = nn.Sequential(
            *[
                WideBlock(
                    in_planes if i == 0 else out_planes,
                    out_planes,
                    stride if i == 0 else 1,
                    drop_rate,
                    double_bn_update,
                )
                for i in range(count)
            ]
        )


class WideResNet(nn.Module):
    def __init__(
        self,
        depth: int,
        widen_factor: int,
        num_classes: int,
        drop_rate: float = 0.0,
        double_bn_update: bool = False,
        stem_stride: int = 1,
    ):
        super().__init__()
        assert (depth - 4) % 6 == 0, "WRN depth must be 6n+4"
        if stem_stride not in (1, 2):
            raise ValueError(
                f"stem_stride: {stem_stride!r} is not allowed; allowed: 1 (CIFAR), 2 (MHGD's Tiny ImageNet WRResNet)"
            )
        n = (depth - 4) // 6
        channels = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(3, channels[0], kernel_size=3, stride=stem_stride, padding=1, bias=False)
        self.block1 = WideGroup(n, channels[0], channels[1], 1, drop_rate, double_bn_update)
        self.block2 = WideGroup(n, channels[1], channels[2], 2, drop_rate, double_bn_update)
        self.block3 = WideGroup(n, channels[2], channels[3], 2, drop_rate, double_bn_update)
        self.bn1 = nn.BatchNorm2d(channels[3])
        self.fc = nn.Linear(channels[3], num_classes)
        self.afd_candidates = list(range(3 * n))

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.data.fill_(1)
                module.bias.data.zero_()
            elif isinstance(module, nn.Linear):
                module.bias.data.zero_()

    def forward(self, x: Tensor, with_features: bool = False):
        out = self.conv1(x)
        stem = out
        activated_inputs, stages, preact_stages = [], [], []
        for index, group in enumerate((self.block1, self.block2, self.block3)):
            for position, block in enumerate(group.layer):
                out, activated, normalized = block(out)
                activated_inputs.append(activated)
                if index > 0 and position == 0:  # the previous stage's output after this block's bn1
                    preact_stages.append(normalized)
            stages.append(out)
        normalized = self.bn1(out)
        final = F.relu(normalized)
        preact_stages.append(normalized)
        pooled = F.adaptive_avg_pool2d(final, 1).flatten(1)
        logits = self.fc(pooled)
        if not with_features:
            return logits
        # Block k's output as the next layer sees it is block k+1's activated input
        # (the head's BN+ReLU for the last block).
        blocks = activated_inputs[1:] + [final]
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=preact_stages
        )


@register_model
def wrn_16_1(num_classes: int, double_bn_update: bool = False, stem_stride: int = 1) -> WideResNet:
    return WideResNet(16, 1, num_classes, double_bn_update=double_bn_update, stem_stride=stem_stride)


@register_model
def wrn_16_2(num_classes: int, double_bn_update: bool = False, stem_stride: int = 1) -> WideResNet:
    return WideResNet(16, 2, num_classes, double_bn_update=double_bn_update, stem_stride=stem_stride)


@register_model
def wrn_28_2(num_classes: int, double_bn_update: bool = False, stem_stride: int = 1) -> WideResNet:
    return WideResNet(28, 2, num_classes, double_bn_update=double_bn_update, stem_stride=stem_stride)


@register_model
def wrn_10_4(num_classes: int, double_bn_update: bool = False, stem_stride: int = 1) -> WideResNet:
    """MHGD's student (WRN-10-4)."""
    return WideResNet(10, 4, num_classes, double_bn_update=double_bn_update, stem_stride=stem_stride)


@register_model
def wrn_22_4(num_classes: int, double_bn_update: bool = False, stem_stride: int = 1) -> WideResNet:
    """MHGD's teacher (WRN-22-4)."""
    return WideResNet(22, 4, num_classes, double_bn_update=double_bn_update, stem_stride=stem_stride)


@register_model
def wrn_40_1(num_classes: int, double_bn_update: bool = False, stem_stride: int = 1) -> WideResNet:
    return WideResNet(40, 1, num_classes, double_bn_update=double_bn_update, stem_stride=stem_stride)


@register_model
def wrn_40_2(num_classes: int, double_bn_update: bool = False, stem_stride: int = 1) -> WideResNet:
    return WideResNet(40, 2, num_classes, double_bn_update=double_bn_update, stem_stride=stem_stride)
