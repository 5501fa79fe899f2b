"""Network-in-Network (Lin et al. 2014) students and teachers of the AT paper's CIFAR-10 table.

The AT paper (Zagoruyko & Komodakis, ICLR 2017, Table 1; the slides in
``/work/shared/papers/002_*.txt``) names only "NIN-thin, 0.2M" (student) and
"NIN-wide, 1M" (teacher); szagoruyko/attention-transfer (893df548) has no NIN.
The first author's NIN for CIFAR of the same period is
szagoruyko/wide-residual-networks@6034f9ba1fe45051dbf0df6bd78e4251b1551a1b,
``models/nin.lua`` ("a modified version of NIN network in
szagoruyko/cifar.torch: removed dropout, added BatchNorm, the last layer
changed from avg-pooling to linear"):

    conv 5x5 192, conv 1x1 160, conv 1x1 96, max pool 3x3/2 (ceil)
    conv 5x5 192, conv 1x1 192, conv 1x1 192, avg pool 3x3/2 (ceil)
    conv 3x3 192, conv 1x1 192, conv 1x1 192, avg pool 8x8, linear

each convolution without bias, followed by BN (epsilon 1e-5) and ReLU. With
10 classes that has 1,005,642 parameters: the AT paper's 1M, so ``nin_wide``
is this network. ``nin_thin`` is our choice: the same layout with every width
scaled by 7/16 (192, 160, 96 -> 84, 70, 42; the one simple factor that keeps
the widths integer and proportional and lands on the paper's count):
197,298 parameters, "0.2M" (halving the widths would give 256,298, which the
paper's rounding, e.g. WRN-16-1's 175k printed as 0.2M, would print 0.3M).
``width`` (an option of both factories) sets the factor: ``round(c x width)``.

Pooling: max pooling 3x3 stride 2 with ceil mode takes 32x32 to 16x16, average
pooling 3x3 stride 2 (ceil mode, the overhanging window averaged over its
pixels inside the image, as Torch's ``SpatialAveragePooling:ceil()``) 16x16 to
8x8; the last 8x8 average pooling is a global average here (so other sizes
work). Initialisation as ``nin.lua``'s (whose ``utils.testModel`` resets the
network between ``FCinit`` and ``MSRinit``): convolutions normal with standard
deviation sqrt(2 / (k x k x out)) (He, fan-out), the linear layer Torch's
(= PyTorch's) default, BN scale 1 and offset 0 (Torch 7's reset would draw
the scale uniformly in [0, 1]; we keep PyTorch's and every other model's 1).

Interface (:mod:`.features`): ``blocks`` every convolution's output after its
ReLU (nine, all AFD candidates); ``stages`` the three mlpconv groups'
outputs before their pooling (96@32, 192@16, 192@8 for ``nin_wide``; the
resolutions of the WRNs' groups), where attention transfer compares them;
``preact_stages`` each group's last BN output before its ReLU; ``stem`` the
first convolution's output; ``pooled`` the globally averaged last map, the
input of the classifier ``fc``.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features
from .registry import register_model


class NINUnit(nn.Module):
    """A bias-free k x k convolution and its BN; the network applies the ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        return self.bn(self.conv(x))


class NIN(nn.Module):
    def __init__(self, num_classes: int, width: float = 1.0):
        super().__init__()
        if not width > 0:
            raise ValueError(f"width: must be positive, got {width!r}")
        wide, middle, narrow = (max(1, round(c * width)) for c in (192, 160, 96))
        self.block1 = nn.Sequential(NINUnit(3, wide, 5), NINUnit(wide, middle, 1), NINUnit(middle, narrow, 1))
        self.block2 = nn.Sequential(NINUnit(narrow, wide, 5), NINUnit(wide, wide, 1), NINUnit(wide, wide, 1))
        self.block3 = nn.Sequential(NINUnit(wide, wide, 3), NINUnit(wide, wide, 1), NINUnit(wide, wide, 1))
        self.fc = nn.Linear(wide, num_classes)
        self.afd_candidates = list(range(9))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):  # MSRinit
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, with_features: bool = False):
        blocks, stages, preact_stages = [], [], []
        out = x
        for index, block in enumerate((self.block1, self.block2, self.block3)):
            for unit in block:
                preact = unit(out)
                out = F.relu(preact)  # not in place: preact is the pre-activation feature
                blocks.append(out)
            stages.append(out)
            preact_stages.append(preact)
            if index == 0:
                out = F.max_pool2d(out, kernel_size=3, stride=2, ceil_mode=True)
            elif index == 1:
                out = F.avg_pool2d(out, kernel_size=3, stride=2, ceil_mode=True)
        pooled = out.mean((2, 3))
        logits = self.fc(pooled)
        if not with_features:
            return logits
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=blocks[0], pooled=pooled, preact_stages=preact_stages
        )


@register_model
def nin_wide(num_classes: int, width: float = 1.0) -> NIN:
    """AT's NIN-wide teacher (1M parameters on CIFAR-10): wide-residual-networks' ``models/nin.lua``."""
    return NIN(num_classes, width)


@register_model
def nin_thin(num_classes: int, width: float = 0.4375) -> NIN:
    """AT's NIN-thin student (0.2M parameters on CIFAR-10): ``nin_wide`` with widths x 7/16 (our choice)."""
    return NIN(num_classes, width)
