"""Attention transfer (Zagoruyko & Komodakis, ICLR 2017): activation-based and gradient-based.

Activation-based (``at``): at the output of every group of residual blocks,
the spatial attention map Q = F(A) of a C x H x W activation A is flattened
and L2-normalised, and the student's map is pulled to the teacher's:

    L = CE + beta * sum_j mean (Q_S^j/||Q_S^j|| - Q_T^j/||Q_T^j||)^2

with the mapping functions of the paper's ablation: F_sum^p = sum_c |A_c|^p
(``mapping: sum``, ``p`` = 1, 2 (default) or 4) and F_max^p = max_c |A_c|^p
(``mapping: max``). As in both reference codes (szagoruyko/attention-transfer
and RepDistiller) the p-norm of eq. 2 is applied as a mean of squared
differences, and beta = 1000 weighs the sum over groups. When the two maps
differ in size, the larger activation is average-pooled first (RepDistiller).

Gradient-based (``at_grad``): attention is the gradient of the loss with
respect to the input, J = dL/dx (eq. 3), and the student minimises
beta/2 ||J_S - J_T||_2 (eq. 4), which needs a double backward pass. No
reference code was released for it; we take per-image gradients of the
summed cross-entropy and average the per-image L2 distances over the batch,
so beta does not depend on the batch size.
"""

from __future__ import annotations

from typing import Annotated, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Choice, Context, KDOnTop, Method, Range, register_method
from .maps import resize_to

MAPPINGS = ("sum", "max")


def attention_map(features: Tensor, p: float, mapping: str) -> Tensor:
    energy = features.abs().pow(p)
    energy = energy.mean(1) if mapping == "sum" else energy.amax(1)  # a mean is the sum up to the normalisation
    return F.normalize(energy.flatten(1))


@register_method("at")
class AttentionTransfer(Method):
    label = "ATT"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1000.0,
        p: Annotated[float, Range(gt=0)] = 2.0,
        mapping: Annotated[str, Choice(*MAPPINGS)] = "sum",
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        if mapping not in MAPPINGS:
            raise ValueError(f"methods.at.mapping: {mapping!r} is not allowed; allowed: {', '.join(MAPPINGS)}")
        if p <= 0:
            raise ValueError(f"methods.at.p: must be positive, got {p}")
        self.beta, self.p, self.mapping = float(beta), float(p), mapping

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        loss: float | Tensor = 0.0
        for f_s, f_t in zip(student.stages, teacher.stages):
            s_size, t_size = f_s.shape[-2:], f_t.shape[-2:]
            if s_size[0] > t_size[0]:
                f_s = resize_to(f_s, tuple(t_size))
            elif s_size[0] < t_size[0]:
                f_t = resize_to(f_t, tuple(s_size))
            difference = attention_map(f_s, self.p, self.mapping) - attention_map(f_t, self.p, self.mapping)
            loss = loss + difference.pow(2).mean()
        return {"at": cast(Tensor, self.beta * loss)}  # a tensor: there is at least one stage


@register_method("at_grad")
class GradientAttentionTransfer(Method):
    label = "Grad-AT"
    declared_capabilities = Capabilities(needs_input_grad=True, kd_on_top=True, relative_cost=6.8)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta = float(beta)
        # a reference, not a submodule: the teacher is not trained (a run of a method that needs one has one)
        self._teacher = (cast(nn.Module, context.teacher),)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        images, labels = batch.images, batch.labels
        loss_s = F.cross_entropy(student.logits, labels, reduction="sum")
        grad_s = torch.autograd.grad(loss_s, images, create_graph=True)[0]
        with torch.enable_grad():
            x = images.detach().requires_grad_(True)
            grad_t = torch.autograd.grad(F.cross_entropy(self._teacher[0](x), labels, reduction="sum"), x)[0]
        distance = (grad_s - grad_t).flatten(1).norm(dim=1).mean()
        return {"at_grad": self.beta / 2 * distance}
