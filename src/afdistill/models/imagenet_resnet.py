"""ImageNet ResNet18/34 with torchvision's parameter names, and their Tiny ImageNet variants.

``resnet18_imagenet`` / ``resnet34_imagenet`` are torchvision's ``resnet18`` /
``resnet34`` (7x7 stride-2 stem, 3x3 max-pool, four stages of BasicBlocks,
``fc`` classifier): a torchvision weights file (``resnet34-b627a593.pth`` from
https://download.pytorch.org/models/, or ``torchvision.models.resnet34(weights=
"IMAGENET1K_V1").state_dict()`` saved with ``torch.save``) loads with
``strict=True``. The official AFD code's ``models/resnet_im.py`` is the same
network (it loads the same files).

``resnet18_tiny`` / ``resnet34_tiny`` are the Tiny ImageNet variants of the AFD
paper for 64x64 inputs: the stem is a 3x3 convolution ("we resize the first
convolutional filter size from 7 to 3"); the paper states neither its stride
nor the max-pool, and we take stride 1 without max-pool (as the CIFAR
ResNet18/34 of the official code do), so the last stage sees 8x8 maps. The
rest, and the parameter names, are unchanged.

Features (``model(x, with_features=True)``) as the official code returns them
for ``resnet34im`` / ``resnet18im``: the stem after BN+ReLU (before the
max-pool; the official code moves that ReLU past the max-pool, which computes
the same tensor it feeds on), every block's output after its final ReLU, the
stage outputs, and the pooled embedding; ``preact_stages`` are the stage
outputs before the last block's final ReLU (mdistiller's ImageNet ResNet,
megvii-research/mdistiller a08d46f1 ``mdistiller/models/imagenet/resnet.py``,
moves that ReLU into the next block and returns the sums as ``preact_feats``).
``afd_candidates`` is every block
(16 for ResNet34, 8 for ResNet18), the official code's
``LAYER['resnet34im'] = np.arange(1, 17)`` over ``[stem] + blocks + [pooled]``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .features import Features, run_stages
from .registry import register_model
from .resnet import BasicBlock

_WIDTHS = (64, 128, 256, 512)


class ImageNetResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks; ``stem="tiny"`` swaps in a 3x3 stride-1 stem without max-pool."""

    def __init__(self, blocks_per_stage: list[int], num_classes: int, stem: str = "imagenet"):
        super().__init__()
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        elif stem == "tiny":
            self.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"stem must be 'imagenet' or 'tiny', not {stem!r}")
        self.bn1 = nn.BatchNorm2d(64)
        in_planes = 64
        self.stage_names = []
        for index, (count, planes) in enumerate(zip(blocks_per_stage, _WIDTHS)):
            stride = 1 if index == 0 else 2
            layers = []
            for block_index in range(count):
                # BasicBlock with shortcut_name="downsample" has torchvision's names:
                # conv1, bn1, conv2, bn2, downsample.0 (1x1 conv), downsample.1 (BN).
                layers.append(BasicBlock(in_planes, planes, stride if block_index == 0 else 1, "downsample"))
                in_planes = planes
            name = f"layer{index + 1}"
            self.add_module(name, nn.Sequential(*layers))
            self.stage_names.append(name)
        self.fc = nn.Linear(in_planes, num_classes)
        self.afd_candidates = list(range(sum(blocks_per_stage)))

        # torchvision's initialisation (zero_init_residual=False); Linear keeps PyTorch's default.
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, x: Tensor, with_features: bool = False):
        stem = F.relu(self.bn1(self.conv1(x)))
        out = self.maxpool(stem)
        out, blocks, stages, preact_stages = run_stages([getattr(self, name) for name in self.stage_names], out)
        pooled = F.adaptive_avg_pool2d(out, 1).flatten(1)
        logits = self.fc(pooled)
        if not with_features:
            return logits
        return Features(
            logits=logits, blocks=blocks, stages=stages, stem=stem, pooled=pooled, preact_stages=preact_stages
        )


@register_model
def resnet18_imagenet(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet([2, 2, 2, 2], num_classes)


@register_model
def resnet34_imagenet(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet([3, 4, 6, 3], num_classes)


@register_model
def resnet18_tiny(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet([2, 2, 2, 2], num_classes, stem="tiny")


@register_model
def resnet34_tiny(num_classes: int) -> ImageNetResNet:
    return ImageNetResNet([3, 4, 6, 3], num_classes, stem="tiny")
