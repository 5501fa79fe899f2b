"""VGG with batch norm for CIFAR (RepDistiller's ``vgg8`` ... ``vgg16``: ``vgg*_bn``, classifier without FC stack).

Parameter names follow RepDistiller's ``models/vgg.py`` (``block0.0.weight`` ...
``classifier.weight``). Five conv groups; max-pooling after the first three,
none after the fourth at 32x32 (RepDistiller pools there only for 64x64 inputs).
``blocks`` are the outputs of every conv layer after its ReLU;
``preact_stages`` the last conv + BN output of groups 1-4 before the ReLU the
network applies to it (RepDistiller's ``f1_pre`` ... ``f4_pre``, as
mdistiller's ``preact_feats``: megvii-research/mdistiller a08d46f1,
``mdistiller/models/cifar/vgg.py``).
"""

from __future__ import annotations

import math

import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features
from .registry import register_model

_CONFIGS = {
    "vgg8": [[64], [128], [256], [512], [512]],
    "vgg11": [[64], [128], [256, 256], [512, 512], [512, 512]],
    "vgg13": [[64, 64], [128, 128], [256, 256], [512, 512], [512, 512]],
    "vgg16": [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]],
}


def _group(widths: list[int], in_channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.BatchNorm2d(width), nn.ReLU()]
        in_channels = width
    return nn.Sequential(*layers[:-1])  # the group's last ReLU is applied by the network (RepDistiller layout)


@torch.fx.wrap  # a leaf for fx tracing (models.fold): the branch depends on the input's size
def _pool_before(x: Tensor, index: int, height: int) -> Tensor:
    return F.max_pool2d(x, kernel_size=2, stride=2) if index < 4 or height == 64 else x


class VGG(nn.Module):
    block0: nn.Sequential  # added by add_module: block0 ... block4

    def __init__(self, config: list[list[int]], num_classes: int):
        super().__init__()
        in_channels = 3
        for index, widths in enumerate(config):
            self.add_module(f"block{index}", _group(widths, in_channels))
            in_channels = widths[-1]
        self.classifier = nn.Linear(512, num_classes)
        self.afd_candidates = list(range(sum(len(widths) for widths in config)))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels
                module.weight.data.normal_(0, math.sqrt(2.0 / fan_out))
                assert module.bias is not None  # _group builds its convolutions with a bias
                module.bias.data.zero_()
            elif isinstance(module, nn.BatchNorm2d):
                module.weight.data.fill_(1)
                module.bias.data.zero_()
            elif isinstance(module, nn.Linear):
                module.weight.data.normal_(0, 0.01)
                module.bias.data.zero_()

    def _run_group(self, group: nn.Sequential, x: Tensor, blocks: list[Tensor]) -> tuple[Tensor, Tensor]:
        """(the group's output, that output before its final ReLU)."""
        for layer in group:
            x = layer(x)
            if isinstance(layer, nn.ReLU):
                blocks.append(x)
        out = F.relu(x)  # not in place: x is the pre-activation feature
        blocks.append(out)
        return out, x

    def forward(self, x: Tensor, with_features: bool = False):
        height = x.shape[2]
        blocks: list[Tensor] = []
        stages: list[Tensor] = []
        preact_stages: list[Tensor] = []
        out, _ = self._run_group(self.block0, x, blocks)
        stem = out
        for index in range(1, 5):
            out = _pool_before(out, index, height)
            out, preact = self._run_group(getattr(self, f"block{index}"), out, blocks)
            stages.append(out)
            preact_stages.append(preact)
        pooled = out.mean((2, 3))
        logits = self.classifier(pooled)
        if not with_features:
            return logits
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=preact_stages
        )


@register_model
def vgg8(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg8"], num_classes)


@register_model
def vgg11(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg11"], num_classes)


@register_model
def vgg13(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg13"], num_classes)


@register_model
def vgg16(num_classes: int) -> VGG:
    return VGG(_CONFIGS["vgg16"], num_classes)
