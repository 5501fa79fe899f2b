"""Relational knowledge distillation (Park et al., CVPR 2019) as RepDistiller computes it.

On the pooled embeddings of a batch: the distance-wise term compares
pairwise Euclidean distances, each normalised by the batch's mean non-zero
distance; the angle-wise term compares the cosines of the angles formed by
every triplet. Both use the Huber (smooth L1) loss; RepDistiller's weights
are 25 (distance) and 50 (angle), with beta = 1.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method


def pairwise_distances(embeddings: Tensor, eps: float = 1e-12) -> Tensor:
    squared = embeddings.pow(2).sum(1)
    distances = (squared.unsqueeze(1) + squared.unsqueeze(0) - 2 * embeddings @ embeddings.t()).clamp(min=eps).sqrt()
    return distances * (1 - torch.eye(len(embeddings), device=embeddings.device, dtype=embeddings.dtype))


def normalised_distances(embeddings: Tensor) -> Tensor:
    distances = pairwise_distances(embeddings)
    return distances / (distances.sum() / (distances > 0).sum())  # mean over non-zero distances, without a sync


def triplet_angles(embeddings: Tensor) -> Tensor:
    directions = F.normalize(embeddings.unsqueeze(0) - embeddings.unsqueeze(1), p=2, dim=2)
    return torch.bmm(directions, directions.transpose(1, 2)).flatten()


@register_method("rkd")
class RKD(Method):
    label = "RKD"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        distance_weight: Annotated[float, Range(ge=0)] = 25.0,
        angle_weight: Annotated[float, Range(ge=0)] = 50.0,
        alpha: Annotated[float, Range(ge=0)] = 0.9,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta, self.distance_weight, self.angle_weight = float(beta), float(distance_weight), float(angle_weight)

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        s, t = student.pooled.flatten(1), teacher.pooled.flatten(1)
        with torch.no_grad():
            t_distance, t_angle = normalised_distances(t), triplet_angles(t)
        loss = self.distance_weight * F.smooth_l1_loss(
            normalised_distances(s), t_distance
        ) + self.angle_weight * F.smooth_l1_loss(triplet_angles(s), t_angle)
        return {"rkd": self.beta * loss}
