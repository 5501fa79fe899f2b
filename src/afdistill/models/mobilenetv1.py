"""MobileNet (Howard et al. 2017) as the MHGD paper's Table 3 student for CIFAR-100 (WRResNet teacher).

Layout from the MHGD supplementary's Figure 1, "MobileNet-Student" (read from
the same diagram in sseung0703/MHGD@75e25d880aa350adbbbea9b8a23ae82a09a30f68:
Oral_presentation.pdf, slide "Experimental Results (2/6)"; see
:mod:`.mhgd_nets`): CONV 3x3x16 | DSC 64 | DSC 128,2, DSC 128 | DSC 256,2,
DSC 256 | global average pooling, FC; DSC D,s = depth-wise conv 3x3 (stride
s), conv 1x1 with D filters. That is a MobileNet cut after its 256-channel
layers and started with 16 instead of 32 filters, adapted to 32x32 images by
a stride-1 stem (Howard et al.'s has stride 2, and four more strided layers):
its three stage outputs, 64@32, 128@16, 256@8, have the sizes of the
WRResNet-22-4 teacher's (``wrn_22_4``), which MHGD compares channel by channel.

Each convolution is followed by BN and ReLU, as in Howard et al. and in the
authors' earlier TF MobileNet for CIFAR-100 (sseung0703/SSKD_SVD@59184b48a338a223366ace2e9912b05ea86524d8,
``nets/MobileNet.py``: ``_depthwise_separable_conv`` = depth-wise conv, BN+ReLU,
1x1 conv, BN+ReLU; no biases); KD_methods_with_TF has no MobileNet. The figure
draws no BN; this is our choice. ``width_multiplier`` (Howard et al.'s alpha,
default 1 = the figure) scales every layer's width: ``int(width x alpha)``.
Initialisation: the MHGD code's He initialisation (:func:`.mhgd_nets.tf_he_init_`).

Interface (:mod:`.features`): ``blocks`` are the five separable blocks'
outputs (all AFD candidates); ``stages`` the outputs of the three groups above
(``layer1``, ``layer2``, ``layer3``), the points the figure senses for MHGD;
``preact_stages`` each group's last 1x1 conv + BN output before its ReLU;
``stem`` the first convolution's output after BN+ReLU; ``pooled`` the globally
averaged last map (the classifier ``fc``'s input).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features, run_stages
from .mhgd_nets import tf_he_init_
from .registry import register_model


class DepthwiseSeparable(nn.Module):
    """Depth-wise 3x3 conv (stride s) + BN + ReLU, then 1x1 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.dw_conv = nn.Conv2d(
            in_channels, in_channels, kernel_size=3, stride=stride, padding=1, groups=in_channels, bias=False
        )
        self.dw_bn = nn.BatchNorm2d(in_channels)
        self.pw_conv = nn.Conv2d(in_channels, out_channels, kernel_size=1, bias=False)
        self.pw_bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the 1x1 conv + BN output before the final ReLU)."""
        x = F.relu(self.dw_bn(self.dw_conv(x)))
        preact = self.pw_bn(self.pw_conv(x))
        return F.relu(preact), preact


class MobileNetV1(nn.Module):
    # per group: (width, stride) of its separable blocks
    SETTINGS = [[(64, 1)], [(128, 2), (128, 1)], [(256, 2), (256, 1)]]
    STEM = 16

    def __init__(self, num_classes: int, width_multiplier: float = 1.0):
        super().__init__()
        if not width_multiplier > 0:
            raise ValueError(f"width_multiplier: must be positive, got {width_multiplier!r}")

        def width(channels: int) -> int:
            return max(1, int(channels * width_multiplier))

        in_channels = width(self.STEM)
        self.conv1 = nn.Conv2d(3, in_channels, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.stage_names = []
        for index, group in enumerate(self.SETTINGS):
            layers = []
            for channels, stride in group:
                layers.append(DepthwiseSeparable(in_channels, width(channels), stride))
                in_channels = width(channels)
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
        self.fc = nn.Linear(in_channels, num_classes)
        self.afd_candidates = list(range(sum(len(group) for group in self.SETTINGS)))
        tf_he_init_(self)

    def forward(self, x: Tensor, with_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        stem = out
        out, blocks, stages, preact_stages = run_stages([getattr(self, name) for name in self.stage_names], out)
        pooled = out.mean((2, 3))
        logits = self.fc(pooled)
        if not with_features:
            return logits
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=preact_stages
        )


@register_model
def mobilenetv1(num_classes: int, width_multiplier: float = 1.0) -> MobileNetV1:
    """MHGD's MobileNet-Student (Table 3): 16-filter stem, separable blocks 64 | 128/2, 128 | 256/2, 256."""
    return MobileNetV1(num_classes, width_multiplier)
