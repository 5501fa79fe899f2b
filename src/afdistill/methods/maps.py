"""Spatial maps shared by the attention-style methods (AFD, AT)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def resize_to(maps: Tensor, size: tuple[int, int]) -> Tensor:
    """``AdaptiveAvgPool2d(size)`` for N x C x H x W maps, using deterministic kernels for integer ratios.

    Shrinking by an integer factor is average pooling; growing by one repeats
    each cell (what adaptive average pooling computes then). Both have
    deterministic CUDA backward passes, unlike ``adaptive_avg_pool2d``.
    """
    height, width = maps.shape[-2:]
    target_h, target_w = size
    if (height, width) == (target_h, target_w):
        return maps
    if height % target_h == 0 and width % target_w == 0:
        return F.avg_pool2d(maps, kernel_size=(height // target_h, width // target_w))
    if target_h % height == 0 and target_w % width == 0:
        return maps.repeat_interleave(target_h // height, dim=-2).repeat_interleave(target_w // width, dim=-1)
    return F.adaptive_avg_pool2d(maps, size)


def energy_map(features: Tensor) -> Tensor:
    """Channel mean of squared activations, N x 1 x H x W (AT's F_sum^2 up to a constant, AFD's phi^C)."""
    return features.pow(2).mean(1, keepdim=True)
