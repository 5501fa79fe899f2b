"""MobileNetV2 for CIFAR as RepDistiller's ``MobileNetV2`` (``mobile_half``: expansion 6, width 0.5).

Parameter names follow RepDistiller's ``models/mobilenetv2.py`` (``conv1.0``,
``blocks.<i>.<j>.conv.<k>``, ``conv2.0``, ``classifier.0``). Its stem has stride
2, so a 32x32 image is 16x16 after it. ``blocks`` are the inverted-residual
outputs; ``stages`` are RepDistiller's taps after block groups 1, 2, 4 and 6.
No ReLU ends a stage (the blocks end in a linear bottleneck), and the official
models return the same taps whether or not pre-activation features are asked
for (RepDistiller b84f547c ``models/mobilenetv2.py`` ignores ``preact``;
mdistiller's has no ``preact_feats``): ``preact_stages`` holds the same tensors.
"""

from __future__ import annotations

import math
from typing import cast

from torch import Tensor, nn

from .features import Features
from .registry import register_model


def _conv_bn_relu(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(),
    )


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int):
        super().__init__()
        hidden = inp * expand_ratio
        self.use_residual = stride == 1 and inp == oup
        self.conv = nn.Sequential(
            nn.Conv2d(inp, hidden, 1, 1, 0, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(),
            nn.Conv2d(hidden, oup, 1, 1, 0, bias=False),
            nn.BatchNorm2d(oup),
        )

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # expansion t, channels c, repeats n, first stride s
    SETTINGS = [
        (1, 16, 1, 1),
        (None, 24, 2, 1),
        (None, 32, 3, 2),
        (None, 64, 4, 2),
        (None, 96, 3, 1),
        (None, 160, 3, 2),
        (None, 320, 1, 1),
    ]
    STAGE_TAPS = (1, 2, 4, 6)  # block groups after which RepDistiller taps a feature

    def __init__(self, expansion: int, width_mult: float, num_classes: int):
        super().__init__()
        channels = int(32 * width_mult)
        self.conv1 = _conv_bn_relu(3, channels, 3, 2)
        self.blocks = nn.ModuleList()
        for t, c, n, s in self.SETTINGS:
            out_channels = int(c * width_mult)
            layers = []
            for i in range(n):
                layers.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, t or expansion))
                channels = out_channels
            self.blocks.append(nn.Sequential(*layers))
        last = int(1280 * width_mult) if width_mult > 1.0 else 1280
        self.conv2 = _conv_bn_relu(channels, last, 1, 1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        self.afd_candidates = list(range(sum(n for _, _, n, _ in self.SETTINGS)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.data.fill_(1)
                module.bias.data.zero_()
            elif isinstance(module, nn.Linear):
                module.weight.data.normal_(0, 0.01)
                module.bias.data.zero_()

    def forward(self, x: Tensor, with_features: bool = False):
        out = self.conv1(x)
        stem = out
        blocks, stages = [], []
        for index, group in enumerate(self.blocks):
            for block in cast(nn.Sequential, group):  # self.blocks holds Sequentials
                out = block(out)
                blocks.append(out)
            if index in self.STAGE_TAPS:
                stages.append(out)
        pooled = self.conv2(out).mean((2, 3))
        logits = self.classifier(pooled)
        if not with_features:
            return logits
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=list(stages)
        )


@register_model
def mobilenetv2(num_classes: int) -> MobileNetV2:
    """RepDistiller's ``MobileNetV2`` (its ``mobile_half``)."""
    return MobileNetV2(expansion=6, width_mult=0.5, num_classes=num_classes)
