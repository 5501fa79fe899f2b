"""Spatial maps shared by the attention-style methods (AFD, AT).

Channel-wise poolings of an N x C x H x W map (AFD's phi^C of eq. 3 and its
Table 7; each is AT's mapping function up to a constant factor):

``a2``  mean_c h_c^2 (the default, what AFD and AT use)
``a1``  mean_c |h_c|
``max`` max_c |h_c|
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_to(maps: Tensor, size: tuple[int, ...]) -> Tensor:
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
    return F.adaptive_avg_pool2d(maps, cast(tuple[int, int], size))  # two entries: unpacked above


def energy_map(features: Tensor) -> Tensor:
    """Channel mean of squared activations, N x 1 x H x W (AT's F_sum^2 up to a constant, AFD's phi^C)."""
    return features.pow(2).mean(1, keepdim=True)


class _EnergyAndMean(torch.autograd.Function):
    """Both reductions of one map in fp32, with one fused backward pass writing the gradient in the map's dtype.

    The same values and gradients as ``energy_map(f.float())`` and
    ``f.float().mean((2, 3))`` through autograd; it saves the fp32 copy's
    backward conversion and the accumulation of two separate gradients.
    """

    @staticmethod
    def forward(ctx, features: Tensor):
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(features)
        full = features.float()
        return full.square().mean(1, keepdim=True), full.mean((2, 3))

    @staticmethod
    def backward(ctx, grad_energy: Tensor | None, grad_mean: Tensor | None):
        (features,) = ctx.saved_tensors
        channels, positions = features.shape[1], features.shape[2] * features.shape[3]
        grad = torch.zeros((), device=features.device) if grad_energy is None else None
        if grad_energy is not None:
            grad = features * (grad_energy * (2.0 / channels))  # d/df mean_c f^2 = 2 f / C
        if grad_mean is not None:
            grad = grad + (grad_mean / positions)[:, :, None, None]
        assert grad is not None  # zeros without grad_energy, else set from it
        return grad.expand_as(features).to(features.dtype)


def energy_and_mean(features: Tensor) -> tuple[Tensor, Tensor]:
    """``(energy_map(f), f.mean((2, 3)))`` in fp32 from an N x C x H x W map of any precision."""
    if torch.is_grad_enabled() and features.requires_grad:
        return _EnergyAndMean.apply(features)
    full = features.float()
    return full.square().mean(1, keepdim=True), full.mean((2, 3))


POOLINGS = ("a2", "a1", "max")


def channel_pool(features: Tensor, pooling: str) -> Tensor:
    """The channel-wise pooling ``pooling`` (see the module docstring) of an N x C x H x W map: N x 1 x H x W."""
    if pooling == "a2":
        return energy_map(features)
    if pooling == "a1":
        return features.abs().mean(1, keepdim=True)
    if pooling == "max":
        return features.abs().amax(1, keepdim=True)
    raise ValueError(f"pooling {pooling!r} is not allowed; allowed: {', '.join(POOLINGS)}")


def pooled_and_mean(features: Tensor, pooling: str) -> tuple[Tensor, Tensor]:
    """``(channel_pool(f, pooling), f.mean((2, 3)))`` in fp32; ``a2`` takes :func:`energy_and_mean`'s fused path."""
    if pooling == "a2":
        return energy_and_mean(features)
    full = features.float()
    return channel_pool(full, pooling), full.mean((2, 3))
