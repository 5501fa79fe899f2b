"""CIFAR ResNets (He et al. 2016, the 6n+2 family) and the CIFAR variants of ResNet18/34/50.

Parameter names and shapes follow HobbitLong/RepDistiller's ``models/resnet.py``
and ``models/resnetv2.py`` so its published teacher checkpoints load with
``strict=True``. The official AFD code moves each block's final ReLU to the
start of the next block; that computes the same function, so we keep
RepDistiller's arrangement and tap the post-ReLU block outputs, which are the
tensors AFD's ``f*_act`` lists hold.

Each block returns its output and its residual sum before the final ReLU (a
tensor it computes anyway; the ReLU is not in place); the last block's sum is
the stage's ``preact_stages`` entry, RepDistiller's and mdistiller's
``preact`` (megvii-research/mdistiller a08d46f1, ``mdistiller/models/cifar/
resnet.py`` and ``resnetv2.py``: ``preact = out`` after ``out += residual``).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features, run_stages
from .registry import register_model


def _conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def _projection(in_planes: int, out_planes: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_planes),
    )


class BasicBlock(nn.Module):
    """conv-bn-relu-conv-bn, plus shortcut, then ReLU (post-activation)."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_name: str = "downsample"):
        super().__init__()
        self.conv1 = _conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        projection = _projection(in_planes, planes, stride) if stride != 1 or in_planes != planes else None
        # RepDistiller names the projection `downsample` in resnet.py (absent when
        # not needed) and `shortcut` in resnetv2.py (an empty Sequential then).
        self.shortcut_name = shortcut_name
        if shortcut_name == "shortcut":
            self.shortcut = projection if projection is not None else nn.Sequential()
        else:
            self.downsample = projection

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the residual sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = getattr(self, self.shortcut_name)
        residual = x if shortcut is None else shortcut(x)
        preact = out + residual
        return F.relu(preact), preact


class Bottleneck(nn.Module):
    """RepDistiller's ``resnetv2.Bottleneck``: 1x1 -> 3x3 (stride) -> 1x1 (x4 channels), plus shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, stride: int = 1, shortcut_name: str = "shortcut"):
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        needs_projection = stride != 1 or in_planes != out_planes
        self.shortcut = _projection(in_planes, out_planes, stride) if needs_projection else nn.Sequential()

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(output, the residual sum before the final ReLU)."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        preact = out + self.shortcut(x)
        return F.relu(preact), preact


class ResNet(nn.Module):
    """Stem conv-bn-relu, stages of residual blocks, global average pool, linear classifier."""

    def __init__(
        self,
        blocks_per_stage: list[int],
        widths: list[int],
        num_classes: int,
        classifier_name: str = "fc",
        shortcut_name: str = "downsample",
        afd_candidate_stride: int = 1,
        block: type[BasicBlock] | type[Bottleneck] = BasicBlock,
    ):
        super().__init__()
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        in_planes = widths[0]
        self.stage_names = []
        for index, (count, planes) in enumerate(zip(blocks_per_stage, widths[1:])):
            stride = 1 if index == 0 else 2
            layers = []
            for block_index in range(count):
                layers.append(block(in_planes, planes, stride if block_index == 0 else 1, shortcut_name))
                in_planes = planes * block.expansion
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
        self.classifier_name = classifier_name
        self.add_module(classifier_name, nn.Linear(in_planes, num_classes))
        n_blocks = sum(blocks_per_stage)
        # AFD taps every block, except ResNet110 where it takes every second one
        # (paper: "skip one for every two residual blocks"; code: LAYER['resnet110']).
        self.afd_candidates = list(range(afd_candidate_stride - 1, n_blocks, afd_candidate_stride))

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, with_features: bool = False):
        out = F.relu(self.bn1(self.conv1(x)))
        stem = out
        out, blocks, stages, preact_stages = run_stages([getattr(self, name) for name in self.stage_names], out)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = getattr(self, self.classifier_name)(pooled)
        if not with_features:
            return logits
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=preact_stages
        )


def _cifar_resnet(depth: int, widths: list[int], num_classes: int, afd_candidate_stride: int = 1) -> ResNet:
    assert (depth - 2) % 6 == 0, "CIFAR ResNet depth must be 6n+2"
    n = (depth - 2) // 6
    return ResNet([n, n, n], widths, num_classes, afd_candidate_stride=afd_candidate_stride)


_NARROW = [16, 16, 32, 64]
_WIDE = [32, 64, 128, 256]


@register_model
def resnet8(num_classes: int) -> ResNet:
    return _cifar_resnet(8, _NARROW, num_classes)


@register_model
def resnet14(num_classes: int) -> ResNet:
    return _cifar_resnet(14, _NARROW, num_classes)


@register_model
def resnet20(num_classes: int) -> ResNet:
    return _cifar_resnet(20, _NARROW, num_classes)


@register_model
def resnet32(num_classes: int) -> ResNet:
    return _cifar_resnet(32, _NARROW, num_classes)


@register_model
def resnet44(num_classes: int) -> ResNet:
    return _cifar_resnet(44, _NARROW, num_classes)


@register_model
def resnet56(num_classes: int) -> ResNet:
    return _cifar_resnet(56, _NARROW, num_classes)


@register_model
def resnet110(num_classes: int) -> ResNet:
    return _cifar_resnet(110, _NARROW, num_classes, afd_candidate_stride=2)


@register_model
def resnet8x4(num_classes: int) -> ResNet:
    return _cifar_resnet(8, _WIDE, num_classes)


@register_model
def resnet32x4(num_classes: int) -> ResNet:
    return _cifar_resnet(32, _WIDE, num_classes)


# ImageNet-style ResNets with a 3x3 stem and no max-pool, for 32x32 inputs
# (RepDistiller/AFD `resnetv2.py`); the paper's ResNet34 -> WRN-28-2 pair uses these.
_IMAGENET_WIDTHS = [64, 64, 128, 256, 512]


@register_model
def resnet18(num_classes: int) -> ResNet:
    return ResNet([2, 2, 2, 2], _IMAGENET_WIDTHS, num_classes, classifier_name="linear", shortcut_name="shortcut")


@register_model
def resnet34(num_classes: int) -> ResNet:
    return ResNet([3, 4, 6, 3], _IMAGENET_WIDTHS, num_classes, classifier_name="linear", shortcut_name="shortcut")


@register_model
def resnet50(num_classes: int) -> ResNet:
    """RepDistiller's ``ResNet50`` (resnetv2.py): Bottleneck blocks [3, 4, 6, 3], 3x3 stem, no max-pool."""
    return ResNet(
        [3, 4, 6, 3],
        _IMAGENET_WIDTHS,
        num_classes,
        classifier_name="linear",
        shortcut_name="shortcut",
        block=Bottleneck,
    )
