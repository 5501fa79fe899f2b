"""DIST (Huang et al., "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022), as hunto/DIST_KD.

The student matches the teacher's *relations* rather than its probabilities:
with Y = softmax(Z / tau) row-wise (B x C),

    inter = 1 - mean_i pearson(Y_s[i, :], Y_t[i, :])      (eq. 5, each sample's class ranking)
    intra = 1 - mean_j pearson(Y_s[:, j], Y_t[:, j])      (eq. 6, each class's spread over the batch)
    DIST  = tau^2 * (inter_weight * inter + intra_weight * intra)   (eq. 7, beta and gamma in the paper)

Pearson correlation is the cosine similarity of the mean-centred vectors with
1e-8 added to the product of norms, as in DIST_KD's ``pearson_correlation``.
The CIFAR-100 setting of the paper (and our defaults): tau = 4, beta = gamma
= 2, CE weight 1, no Hinton KD term. No state, no random numbers: a CUDA graph.
"""

from __future__ import annotations

from typing import Annotated

import torch.nn.functional as F
from torch import Tensor

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method

PEARSON_EPS = 1e-8


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(inter, intra) relation losses, each scaled by tau^2."""
    y_s, y_t = F.softmax(student_logits / tau, dim=1), F.softmax(teacher_logits / tau, dim=1)
    inter = 1 - pearson_rows(y_s, y_t).mean()
    intra = 1 - pearson_rows(y_s.t(), y_t.t()).mean()
    return tau**2 * inter, tau**2 * intra


@register_method("dist")
class DIST(Method):
    label = "DIST"
    declared_capabilities = Capabilities(cuda_graphs=True, reads_teacher_logits=True, kd_on_top=True, fuses=True)

    def __init__(
        self,
        context: Context,
        inter_weight: Annotated[float, Range(ge=0)] = 2.0,
        intra_weight: Annotated[float, Range(ge=0)] = 2.0,
        tau: Annotated[float, Range(gt=0)] = 4.0,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.inter_weight, self.intra_weight, self.tau = float(inter_weight), float(intra_weight), float(tau)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        inter, intra = dist_terms(student.logits, teacher.logits, self.tau)
        return {"dist": self.inter_weight * inter + self.intra_weight * intra}
