"""ShuffleNetV1 and V2 for CIFAR, as HobbitLong/RepDistiller defines ``ShuffleV1`` and ``ShuffleV2``.

Parameter names and shapes follow RepDistiller's ``models/ShuffleNetv1.py``
and ``models/ShuffleNetv2.py`` (1x1 stem of 24 channels, three stages,
``linear`` classifier), so its published checkpoints load with
``strict=True``. ``stages`` are the stage outputs after their final ReLU
(RepDistiller's ``feat[1:4]`` without ``preact``), ``blocks`` every block's
output (AFD's candidates: all of them), ``pooled`` the pooled embedding before
``linear``. RepDistiller pools with ``avg_pool2d(out, 4)``, which is the
global average on 32x32 inputs; we pool globally, so smaller inputs work too.

``preact_stages`` are the official models' ``preact`` features (RepDistiller
b84f547c ``models/ShuffleNetv1.py`` / ``ShuffleNetv2.py``, the same in
megvii-research/mdistiller a08d46f1 ``mdistiller/models/cifar/ShuffleNetv1.py``
/ ``ShuffleNetv2.py``), from each stage's last block. V1: the sum (or, in a
block that halves the resolution, the concatenation) before the final ReLU,
the tensor the block computes anyway. V2: ``cat([kept half, branch BN
output])``, i.e. before the branch's last ReLU *and before the channel
shuffle*, so its channels are in the unshuffled order; that concatenation is
made only for the stages' last blocks and only when features are asked for.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features
from .registry import register_model


def _shuffle(x: Tensor, groups: int) -> Tensor:
    """Channel shuffle: [N, g*c, H, W] -> [N, c*g, H, W] (groups interleaved)."""
    n, channels, h, w = x.shape
    return x.view(n, groups, channels // groups, h, w).transpose(1, 2).reshape(n, channels, h, w)


def _through_stages(out: Tensor, layers) -> tuple[Tensor, list[Tensor], list[Tensor], list]:
    """Every block of every stage in order: the last output, each block's output, each stage's output, and
    what each stage's last block returns about its pre-activation."""
    blocks, stages, preacts = [], [], []
    for stage in layers:
        for block in stage:
            out, preact = block(out)
            blocks.append(out)
        stages.append(out)
        preacts.append(preact)
    return out, blocks, stages, preacts


def _output(logits: Tensor, blocks, stages, stem: Tensor, pooled: Tensor, with_features: bool, preact_stages=None):
    if not with_features:
        return logits
    preact_stages = preact_stages() if callable(preact_stages) else preact_stages
    return Features(logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=preact_stages)


class ShuffleV1Block(nn.Module):
    """Grouped 1x1 -> shuffle -> depthwise 3x3 -> grouped 1x1; added to the input, or concatenated with its
    3x3 average pool when the block halves the resolution; then ReLU."""

    def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int):
        super().__init__()
        self.stride = stride
        mid_planes = out_planes // 4
        self.first_groups = 1 if in_planes == 24 else groups  # the stem's 24 channels are not grouped
        self.conv1 = nn.Conv2d(in_planes, mid_planes, kernel_size=1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid_planes)
        self.conv2 = nn.Conv2d(
            mid_planes, mid_planes, kernel_size=3, stride=stride, padding=1, groups=mid_planes, bias=False
        )
        self.bn2 = nn.BatchNorm2d(mid_planes)
        self.conv3 = nn.Conv2d(mid_planes, out_planes, kernel_size=1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.shortcut = nn.Sequential(nn.AvgPool2d(3, stride=2, padding=1)) if stride == 2 else nn.Sequential()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the sum or concatenation before the final ReLU)."""
        out = _shuffle(F.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = self.shortcut(x)
        preact = torch.cat([out, residual], 1) if self.stride == 2 else out + residual
        return F.relu(preact), preact


class ShuffleNetV1(nn.Module):
    def __init__(self, out_planes: list[int], num_blocks: list[int], groups: int, num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_planes = 24
        for index, (planes, count) in enumerate(zip(out_planes, num_blocks)):
            layers = []
            for block_index in range(count):
                # the first block concatenates its input: it adds only the missing channels
                added = planes - in_planes if block_index == 0 else planes
                layers.append(ShuffleV1Block(in_planes, added, 2 if block_index == 0 else 1, groups))
                in_planes = planes
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
        self.linear = nn.Linear(in_planes, num_classes)
        self.afd_candidates = list(range(sum(num_blocks)))

    def forward(self, x: Tensor, with_features: bool = False):
        stem = F.relu(self.bn1(self.conv1(x)))
        out, blocks, stages, preacts = _through_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return _output(self.linear(pooled), blocks, stages, stem, pooled, with_features, preacts)


class ShuffleV2Block(nn.Module):
    """Half the channels pass through; the other half goes 1x1 -> depthwise 3x3 -> 1x1; concatenated, shuffled."""

    def __init__(self, channels: int):
        super().__init__()
        half = channels // 2
        self.conv1 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(half)
        self.conv2 = nn.Conv2d(half, half, kernel_size=3, padding=1, groups=half, bias=False)
        self.bn2 = nn.BatchNorm2d(half)
        self.conv3 = nn.Conv2d(half, half, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(half)

    def forward(self, x: Tensor) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """(output, (kept half, branch output before its ReLU)): the official ``preact`` is their concatenation."""
        half = x.shape[1] // 2
        kept, branch = x[:, :half], x[:, half:]
        out = F.relu(self.bn1(self.conv1(branch)))
        out = self.bn2(self.conv2(out))
        preact = self.bn3(self.conv3(out))
        return _shuffle(torch.cat([kept, F.relu(preact)], 1), 2), (kept, preact)


class ShuffleV2Down(nn.Module):
    """Both branches halve the resolution (depthwise stride 2) and give half the output channels each."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.conv1 = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=2, padding=1, groups=in_channels, bias=False
        )
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv2 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(in_channels, mid, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, kernel_size=3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, kernel_size=1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: Tensor) -> tuple[Tensor, None]:
        """(output, None): never a stage's last block, it has no ``preact`` in the official code."""
        left = F.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = F.relu(self.bn3(self.conv3(x)))
        right = F.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return _shuffle(torch.cat([left, right], 1), 2), None


class ShuffleNetV2(nn.Module):
    def __init__(self, out_channels: list[int], num_blocks: list[int], num_classes: int):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 24, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(24)
        in_channels = 24
        for index, (channels, count) in enumerate(zip(out_channels[:3], num_blocks)):
            layers = [ShuffleV2Down(in_channels, channels)] + [ShuffleV2Block(channels) for _ in range(count)]
            self.add_module(f"layer{index + 1}", nn.Sequential(*layers))
            in_channels = channels
        self.conv2 = nn.Conv2d(in_channels, out_channels[3], kernel_size=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels[3])
        self.linear = nn.Linear(out_channels[3], num_classes)
        self.afd_candidates = list(range(sum(num_blocks) + len(num_blocks)))

    def forward(self, x: Tensor, with_features: bool = False):
        stem = F.relu(self.bn1(self.conv1(x)))
        out, blocks, stages, preacts = _through_stages(stem, (self.layer1, self.layer2, self.layer3))
        pooled = F.adaptive_avg_pool2d(F.relu(self.bn2(self.conv2(out))), 1).flatten(1)

        def preact_stages() -> list[Tensor]:  # the one copy: made only when features are asked for
            return [torch.cat(halves, 1) for halves in preacts]

        return _output(self.linear(pooled), blocks, stages, stem, pooled, with_features, preact_stages)


@register_model
def shufflev1(num_classes: int) -> ShuffleNetV1:
    """RepDistiller's ``ShuffleV1``: groups 3, stages of 240/480/960 channels with 4/8/4 blocks."""
    return ShuffleNetV1([240, 480, 960], [4, 8, 4], groups=3, num_classes=num_classes)


@register_model
def shufflev2(num_classes: int) -> ShuffleNetV2:
    """RepDistiller's ``ShuffleV2`` (net size 1): 116/232/464 channels, 3/7/3 blocks, a 1024-channel head."""
    return ShuffleNetV2([116, 232, 464, 1024], [3, 7, 3], num_classes=num_classes)
