"""min-l2: double backpropagation (Drucker & LeCun, 1992), the AT paper's "min-l2" row.

The AT paper (Zagoruyko & Komodakis, ICLR 2017) compares gradient-based
regularisers on CIFAR-10 (the slides' table: baseline 13.5% error, min-l2
12.5, grad-based AT 12.1, KD 12.1, symmetry norm 11.8, activation-based AT
11.2), where min-l2 uses the L2 norm of the gradient of the loss with respect
to the input as a regulariser. Drucker & LeCun's double backpropagation
penalises half its square, the input-gradient energy E_b = 1/2 ||dE/dx||^2,
weighted by a constant; hence

    L = gamma CE + beta/2 mean_i ||J_i||_2^2,   J = d/dx sum_i CE(f(x_i), y_i)

a function of the student's weights alone: no teacher, no KD. Training
through J needs the second derivative (the engine makes the images require
grad: ``needs_input_grad``, as for gradient-based AT, whose per-image gradient
convention this follows: J_i is the gradient of the batch's summed
cross-entropy with respect to image i, so beta does not depend on the batch
size).

Where we had to choose: no code was released, and neither the slides nor
the paper's table give the weight; beta = 1 (gradient-based AT's default
here). "l2 norm" is read, with Drucker & LeCun, as the squared norm.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Features
from .base import Batch, Capabilities, Context, Method, Range, register_method


def input_gradient(logits: Tensor, labels: Tensor, images: Tensor) -> Tensor:
    """d/dx of the batch's summed cross-entropy, each image's slice its own gradient; kept in the autograd graph."""
    return torch.autograd.grad(F.cross_entropy(logits, labels, reduction="sum"), images, create_graph=True)[0]


@register_method("min_l2")
class MinL2(Method):
    label = "min-l2"
    declared_capabilities = Capabilities(needs_teacher=False, needs_input_grad=True, relative_cost=4.1)

    def __init__(
        self, context: Context, beta: Annotated[float, Range(ge=0)] = 1.0, gamma: Annotated[float, Range(ge=0)] = 1.0
    ):
        super().__init__(context, gamma=gamma)
        self.beta = float(beta)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        gradient = input_gradient(student.logits, batch.labels, batch.images)
        return {"min_l2": self.beta / 2 * gradient.flatten(1).pow(2).sum(1).mean()}
