"""Knowledge review (Chen, Liu, Zhao & Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021).

The student's stage outputs and its pooled embedding (as a 1x1 map) are fused
from the deepest to the shallowest by attention-based fusion (ABF, Sec. 3.3,
Fig. 3): each level's map goes through a 1x1 conv + BN to ``mid`` channels;
below the deepest, it is mixed with the fused map of the level above
(nearest-upsampled to its size) by two spatial attention maps that a 1x1 conv
+ sigmoid predicts from both; the mix, resized (nearest) to the teacher's map
size, is handed to the next level and projected by a 3x3 conv + BN to the
teacher's channels. Each projection is compared with the teacher's feature at
the same level by the hierarchical context loss (HCL, Sec. 3.3): the MSE of
the maps plus the MSEs of their 4x4, 2x2 and 1x1 average poolings (only the
sizes smaller than the map), weighted 1, 1/2, 1/4, 1/8 and normalised by the
weights' sum; the levels' losses are summed (eq. 5).

Following mdistiller's ``ReviewKD`` (CIFAR; megvii-research/mdistiller at
commit a08d46f10d6102bd6e3f258ca5ac880b020ea259,
``mdistiller/distillers/ReviewKD.py`` and ``mdistiller/engine/cfg.py``):
``mid = min(512, student's pooled width)``; the ABF convs start from
Kaiming-uniform with a = 1; the loss weight (``beta``; mdistiller's default 1,
5 in its ResNet32x4 -> ResNet8x4 config) is multiplied by
``min(epoch / warmup_epochs, 1)`` over 20 epochs; CE weight 1 and no Hinton KD
term.

Which features: the student's side is its stage outputs as the next layer
sees them (:attr:`Features.stages <afdistill.models.Features>`) and its pooled
embedding, mdistiller's ``feats`` with ``STU_PREACT = False`` (its default;
its ``feats[0]``, the stem, gets no ABF: the zip with the ABFs drops it). The
teacher's side is its *pre-activation* stage outputs
(:attr:`Features.preact_stages <afdistill.models.Features>`: before the
stage's last ReLU; for WRNs the next BN's output before its ReLU) and its
pooled embedding, mdistiller's ``feature_teacher["preact_feats"][1:] +
[pooled_feat]``, as the authors' code does (dvlab-research/ReviewKD at commit
cede6ea6387ae9b6127de0e561507177bf19c11e, ``CIFAR-100/train.py``:
``teacher(images, is_feat=True, preact=True)``, features from index 1).

The ABF modules are trained with the student by the engine's optimiser. The
warm-up factor is a buffer updated in place: the step runs as a CUDA graph.
"""

from __future__ import annotations

from typing import Annotated, Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Capabilities, Context, KDOnTop, Method, Range, register_method

MAX_MID_CHANNELS = 512
HCL_POOL_SIZES = (4, 2, 1)


class AttentionFusion(nn.Module):
    """One ABF: reduce to ``mid`` channels, fuse with the level above by attention, project to the teacher's."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.project = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        # (the casts: indexing a Sequential gives a Module; both first layers are the Conv2d built above)
        nn.init.kaiming_uniform_(cast(nn.Conv2d, self.reduce[0]).weight, a=1)
        nn.init.kaiming_uniform_(cast(nn.Conv2d, self.project[0]).weight, a=1)

    def forward(self, x: Tensor, above: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(projection for the loss, fused map handed to the level below)."""
        x = self.reduce(x)
        if self.attention is not None:
            assert above is not None  # a fusing level has a level above it
            above = F.interpolate(above, size=x.shape[-2:], mode="nearest")
            weights = self.attention(torch.cat([x, above], dim=1))
            x = x * weights[:, 0:1] + above * weights[:, 1:2]
        if tuple(x.shape[-2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.project(x), x


def _mse(student: Tensor, teacher: Tensor) -> Tensor:
    # Written as a difference, not F.mse_loss: the teacher's features come from inference mode, and
    # mse_loss would save them for its backward pass, which inference tensors refuse.
    return (student - teacher).pow(2).mean()


def hierarchical_context_loss(student: list[Tensor], teacher: list[Tensor]) -> Tensor:
    total = student[0].new_zeros(())
    for s, t in zip(student, teacher):
        loss, weight, weights = _mse(s, t), 1.0, 1.0
        for size in HCL_POOL_SIZES:
            if size >= s.shape[-2]:
                continue
            weight /= 2.0
            loss = loss + weight * _mse(F.adaptive_avg_pool2d(s, size), F.adaptive_avg_pool2d(t, size))
            weights += weight
        total = total + loss / weights
    return total


def review_levels(features: Features) -> list[Tensor]:
    """The student's levels: stage outputs, then the pooled embedding as a 1x1 map (mdistiller's
    ``feats[1:] + [pooled_feat]``)."""
    return [*features.stages, features.pooled[:, :, None, None]]


def teacher_levels(features: Features) -> list[Tensor]:
    """The teacher's levels: pre-activation stage outputs, then the pooled embedding as a 1x1 map
    (mdistiller's ``preact_feats[1:] + [pooled_feat]``)."""
    if features.preact_stages is None:
        raise ValueError(
            "methods.reviewkd: the teacher's features have no pre-activation stage outputs "
            "(Features.preact_stages), which ReviewKD compares with"
        )
    return [*features.preact_stages, features.pooled[:, :, None, None]]


@register_method("reviewkd")
class ReviewKD(Method):
    label = "ReviewKD"
    declared_capabilities = Capabilities(cuda_graphs=True, kd_on_top=True, fuses=True, relative_cost=3.8)
    warmup: Tensor  # a buffer (register_buffer: mypy would see Tensor | Module)

    def __init__(
        self,
        context: Context,
        beta: Annotated[float, Range(ge=0)] = 1.0,
        warmup_epochs: Annotated[int, Range(ge=0, integer=True)] = 20,
        alpha: Annotated[float, Range(ge=0)] = 0.0,
        temperature: Annotated[float, Range(gt=0)] = 4.0,
        **base,
    ):
        super().__init__(context, **base)
        self.kd = KDOnTop(alpha, temperature)
        self.beta, self.warmup_epochs = float(beta), int(warmup_epochs)
        self.check_fit({}, context, f"methods.{self.method_name}", 0)
        assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
        student, teacher = review_levels(context.student_sample), teacher_levels(context.teacher_sample)
        mid = min(MAX_MID_CHANNELS, student[-1].shape[1])
        last = len(student) - 1
        # built shallow to deep, stored deep to shallow (the fusion order)
        self.fusions = nn.ModuleList(
            AttentionFusion(s.shape[1], mid, t.shape[1], fuse=index < last)
            for index, (s, t) in enumerate(zip(student, teacher))
        )[::-1]
        self.out_sizes = [tuple(t.shape[-2:]) for t in teacher][::-1]
        self.register_buffer("warmup", torch.tensor(self.warmup_factor(0)))

    @classmethod
    def check_fit(cls, params: dict[str, Any], context: Context, where: str, n_train: int) -> None:
        assert context.student_sample is not None and context.teacher_sample is not None  # it needs both networks
        student, teacher = review_levels(context.student_sample), teacher_levels(context.teacher_sample)
        if len(student) != len(teacher):
            assert context.student is not None and context.teacher is not None  # the networks of those samples
            raise ValueError(
                f"{where}: {context.student.arch} has {len(student) - 1} stages and "
                f"{context.teacher.arch} {len(teacher) - 1}; ReviewKD pairs them level by level, so "
                f"it needs networks with as many stages (leave it out of this pair's runs)"
            )

    def warmup_factor(self, epoch: int) -> float:
        return 1.0 if self.warmup_epochs == 0 else min(epoch / self.warmup_epochs, 1.0)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.warmup.fill_(self.warmup_factor(epoch))

    def review(self, student: Features) -> list[Tensor]:
        """The fused projections, shallow to deep (the order of :func:`review_levels`)."""
        levels = review_levels(student)[::-1]
        projections: list[Tensor]
        projections, above = [], None
        for x, fusion, out_size in zip(levels, self.fusions, self.out_sizes):
            projection, above = fusion(x, above, out_size)
            projections.insert(0, projection)
        return projections

    def distill(self, student: Features, teacher: Features | None, batch: Batch) -> dict[str, Tensor]:
        assert teacher is not None  # it distils from a teacher (needs_teacher)
        loss = hierarchical_context_loss(self.review(student), teacher_levels(teacher))
        return {"reviewkd": self.beta * self.warmup * loss}
