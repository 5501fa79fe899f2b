"""Symmetry norm: horizontal-flip invariance of gradient attention (the AT slides' eq. 6).

The AT slides (Zagoruyko & Komodakis, ICLR 2017) "enforce horizontal flip
invariance" of the gradient-based attention map J = dL/dx:

    L_sym(W, x) = L(W, x) + beta/2 || dL(W, x)/dx - flip( dL(W, flip(x))/dx ) ||_2        (eq. 6)

i.e. the network's input gradient at an image should be the mirror image of
its input gradient at the mirrored image. It involves the trained network
alone (no teacher, no KD); in the CIFAR-10 comparison of gradient-based
regularisers it scores 11.8% error (baseline 13.5, min-l2 12.5, grad-based AT
12.1). Both gradients depend on the weights, so training through them needs
second derivatives (``needs_input_grad``, as gradient-based AT).

What eq. 6 leaves open, and what we chose:

* the batch: as for gradient-based AT here, J is the gradient of the batch's
  summed cross-entropy (each image's slice its own gradient), and the L2 norm
  of eq. 6 (not squared) is taken per image and averaged over the batch, so
  beta does not depend on the batch size;
* the flipped images go through the student in a second forward pass in its
  current mode (training: batch statistics of the flipped batch); its
  BatchNorm running statistics are restored afterwards, so that they follow
  the training batches only, as for every other method;
* flip(.) mirrors the width axis, for the images and for the gradient;
* beta = 1: no code was released and no weight published (gradient-based
  AT's default here).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Iterator, cast

import torch
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, Method, Range, register_method
from .min_l2 import input_gradient


@contextlib.contextmanager
def running_statistics_kept(network: nn.Module) -> Iterator[None]:
    """Every BatchNorm's running statistics and batch count are as they were when the block ends.

    By a momentum of 0 inside (the statistics are then updated to themselves), not by restoring copies:
    the forward passes' autograd records hold the running buffers, and writing them back would invalidate
    those records.
    """
    norms = [m for m in network.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [(m.momentum, None if m.num_batches_tracked is None else m.num_batches_tracked.clone()) for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, (momentum, count) in zip(norms, saved):
            m.momentum = momentum
            if count is not None:
                assert m.num_batches_tracked is not None  # count was cloned from it
                with torch.no_grad():
                    m.num_batches_tracked.copy_(count)


def flip(x: Tensor) -> Tensor:
    """Mirror N x C x H x W tensors left to right."""
    return x.flip(-1)


@register_method("symmetry_norm")
class SymmetryNorm(Method):
    label = "Symmetry norm"
    declared_capabilities = Capabilities(needs_teacher=False, needs_input_grad=True, relative_cost=8.3)

    def __init__(
        self, context: Context, beta: Annotated[float, Range(ge=0)] = 1.0, gamma: Annotated[float, Range(ge=0)] = 1.0
    ):
        super().__init__(context, gamma=gamma)
        self.beta = float(beta)
        # a reference, not a submodule: the engine trains it (and builds this method with it)
        self._student = (cast(nn.Module, context.student),)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        gradient = input_gradient(student.logits, batch.labels, batch.images)
        mirrored = flip(batch.images.detach()).requires_grad_(True)
        with running_statistics_kept(self._student[0]):
            logits = self._student[0](mirrored)
        mirrored_gradient = flip(input_gradient(logits, batch.labels, mirrored))
        distance = (gradient - mirrored_gradient).flatten(1).norm(dim=1).mean()
        return {"symmetry_norm": self.beta / 2 * distance}
