"""Contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020) as RepDistiller runs it.

Student and teacher pooled embeddings go through linear heads to 128-d unit
vectors. Two memory banks hold one slowly updated (momentum 0.5) vector per
training image for each network. For every image, its own slot (the
positive) and ``nce_k`` slots of images of *other classes* (RepDistiller's
"exact" sampling) are scored against the other network's embedding,
exp(v . m / T) normalised by a constant Z fixed on the first batch, and a
noise-contrastive loss (eq. 18 of the paper, uniform noise 1/N) is summed
for both anchors. RepDistiller's default is 16,384 negatives; the AFD paper
sets their number to the batch size, which the paper grids do.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import Features
from .base import Batch, Context, Method, register_method

EPS = 1e-7


class Embed(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


def contrast_loss(scores: Tensor, n_data: int) -> Tensor:
    """NCE loss with K negatives: column 0 holds the positive's score."""
    negatives = scores.shape[1] - 1
    noise = negatives / n_data
    positive = torch.log(scores[:, 0] / (scores[:, 0] + noise + EPS))
    negative = torch.log(noise / (scores[:, 1:] + noise + EPS))
    return -(positive.sum() + negative.sum()) / scores.shape[0]


@register_method("crd")
class CRD(Method):
    label = "CRD"

    def __init__(self, context: Context, beta: float = 0.8, nce_k: int = 16384, nce_t: float = 0.07,
                 nce_m: float = 0.5, feat_dim: int = 128, alpha: float = 0.9, **base):
        super().__init__(context, alpha=alpha, **base)
        self.beta, self.nce_k, self.nce_t, self.nce_m = float(beta), int(nce_k), float(nce_t), float(nce_m)
        if self.nce_k < 1:
            raise ValueError(f"methods.crd.nce_k: must be at least 1, got {nce_k}")
        self.embed_s = Embed(context.student_sample.pooled.shape[1], feat_dim)
        self.embed_t = Embed(context.teacher_sample.pooled.shape[1], feat_dim)
        labels = context.train_labels
        self.n_data = len(labels)
        self.register_buffer("train_labels", labels.clone(), persistent=False)
        self.smallest_pool = int(self.n_data - torch.bincount(labels).max())  # fewest images of other classes
        bound = 1.0 / math.sqrt(feat_dim / 3)
        self.register_buffer("memory_s", torch.rand(self.n_data, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("memory_t", torch.rand(self.n_data, feat_dim).mul_(2 * bound).sub_(bound))
        self.register_buffer("z", torch.full((2,), -1.0))  # normalisation constants, set on the first batch
        self.seed = context.seed
        self.generator: torch.Generator | None = None
        self._z_ready = False  # checked once per process, not once per step (a device sync)

    def begin_epoch(self, epoch: int) -> None:
        super().begin_epoch(epoch)
        self.generator = torch.Generator(device=self.memory_s.device).manual_seed(self.seed * 7_919 + epoch)

    def sample_contrast(self, labels: Tensor, indices: Tensor) -> Tensor:
        """B x (1 + K): each image's own index, then K images of other classes."""
        allowed = (self.train_labels.unsqueeze(0) != labels.unsqueeze(1)).float()
        replace = self.nce_k > self.smallest_pool
        negatives = torch.multinomial(allowed, self.nce_k, replacement=replace, generator=self.generator)
        return torch.cat([indices.unsqueeze(1), negatives], dim=1)

    def distill(self, student: Features, teacher: Features, batch: Batch) -> dict[str, Tensor]:
        v_s = self.embed_s(student.pooled)
        v_t = self.embed_t(teacher.pooled.clone())  # a normal tensor: the head's backward keeps its input
        contrast = self.sample_contrast(batch.labels, batch.indices)
        # student anchor against the teacher memory, teacher anchor against the student memory
        scores_s = torch.exp(torch.bmm(self.memory_t[contrast].detach(), v_s.unsqueeze(2)).squeeze(2) / self.nce_t)
        scores_t = torch.exp(torch.bmm(self.memory_s[contrast].detach(), v_t.unsqueeze(2)).squeeze(2) / self.nce_t)
        if not self._z_ready:
            if bool(self.z[0] < 0):
                self.z.copy_(torch.stack([scores_s.mean(), scores_t.mean()]).detach() * self.n_data)
            self._z_ready = True
        scores_s, scores_t = scores_s / self.z[0], scores_t / self.z[1]
        with torch.no_grad():
            for memory, fresh in ((self.memory_s, v_s), (self.memory_t, v_t)):
                updated = memory[batch.indices] * self.nce_m + fresh.detach() * (1 - self.nce_m)
                memory.index_copy_(0, batch.indices, F.normalize(updated, dim=1))
        loss = contrast_loss(scores_s, self.n_data) + contrast_loss(scores_t, self.n_data)
        return {"crd": self.beta * loss}
